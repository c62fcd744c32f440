"""Sensitivity metrics of fully-connected and convolutional networks, exact and batched over
points and over populations of same-shape models. Pure PyTorch: no Ray, no files.

Every metric takes an `nn.Sequential` (one network), an `MLP` or a `ConvNet` (a population
with a leading model axis; build one with `stack` or `stack_convnets`)."""

from .activations import ACTIVATION_NAMES, PIECEWISE_LINEAR_NAMES, Activation
from .baselines import margin, operator_norms, param_count, path_norm, spectral_product, weight_norm_sq
from .convnets import ConvNet, as_convnet, stack_convnets, unstack_convnet
from .jacobian import jacobian_norms, softmax_jacobian_norm
from .measures import (distance_from_init, frobenius_margin, margin_quantile, pacbayes_mag_flatness,
                       pacbayes_sharpness, pacbayes_sigma, spectral_margin)
from .nets import MLP, Population, as_mlp, forward, stack, unstack
from .precision import exact, float32_precision
from .profiles import trajectory_profile
from .regions import codes, transition_counts
from .slices import SliceMap, slice_codes
from .trajectories import anchor_positions, circle, ellipse, random_ellipse

__all__ = [
    "ACTIVATION_NAMES",
    "Activation",
    "ConvNet",
    "MLP",
    "PIECEWISE_LINEAR_NAMES",
    "Population",
    "SliceMap",
    "anchor_positions",
    "as_convnet",
    "as_mlp",
    "circle",
    "codes",
    "distance_from_init",
    "ellipse",
    "exact",
    "float32_precision",
    "forward",
    "frobenius_margin",
    "jacobian_norms",
    "margin",
    "margin_quantile",
    "operator_norms",
    "pacbayes_mag_flatness",
    "pacbayes_sharpness",
    "pacbayes_sigma",
    "param_count",
    "path_norm",
    "random_ellipse",
    "slice_codes",
    "softmax_jacobian_norm",
    "spectral_margin",
    "spectral_product",
    "stack",
    "stack_convnets",
    "trajectory_profile",
    "transition_counts",
    "unstack",
    "unstack_convnet",
    "weight_norm_sq",
]
