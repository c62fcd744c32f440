"""What scoring computes: `ScoringSettings` (a spec's `scoring` section, `sweep score`'s options
and the scoring actors' settings alike) and the metric names, without torch, so the sweep's
driver (which only hands checkpoints to the scoring actors) never imports it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, Strict, model_validator

from sweep.plan.schema import Count, Flag, PositiveInt, PositiveNumber, at_least, grid_list, invalid, section, validate

WEIGHT_METRICS = ("param_count", "weight_norm_sq", "spectral_product", "path_norm")
POINT_METRICS = ("jacobian_softmax", "jacobian_logits", "transitions", "margin", "loss", "accuracy")
# Jiang et al.'s measures: against the initial weights (split "weights"), and from the training
# points (split "train": one value per network, not a mean over points).
INIT_METRICS = ("distance_from_init",)
MARGIN_METRICS = ("spectral_margin", "frobenius_margin")
SHARPNESS_METRICS = ("pacbayes_sharpness", "pacbayes_mag_flatness")
TRAIN_METRICS = MARGIN_METRICS + SHARPNESS_METRICS
METRICS = POINT_METRICS[:3] + WEIGHT_METRICS + INIT_METRICS + TRAIN_METRICS + POINT_METRICS[3:]
# Checkpoints that get trajectory profiles and slices (the paper's before/after-training pictures).
PROFILE_TAGS = ("init", "end")
# Checkpoints of untrained networks: Jiang et al.'s train-point measures skip them (at `init` the
# accuracy is near chance, so the noise search and the margins say nothing).
UNTRAINED_TAGS = ("init",)
Metric = Literal[METRICS]


def _multiple_of_3(number: int) -> int:
    if number % 3:
        low = number - number % 3
        raise invalid(f"must be a multiple of 3, so that each ellipse's three anchor points are samples; "
                      f"got {number}, use {low} or {low + 3}")
    return number


@section
class ScoringSettings:
    """What to compute for every checkpoint."""

    points: PositiveInt = 1000
    """test points scored per network (the same points for every network of a data set)"""
    train_points: Count = 1000
    """training points scored per network the same way; 0: no train split (so none of the train-point
    measures: spectral_margin, frobenius_margin and the PAC-Bayes ones)"""
    transitions_k: at_least(3) = 256
    """points on each closed trajectory whose linear-region codes are compared (k)"""
    trajectory: Literal["ellipse", "circle"] = "ellipse"
    """ellipse: through the point and two others of its split; circle: of circle_radius through the point, in a
    random plane"""
    circle_radius: PositiveNumber = 1.0
    """the circle trajectory's radius, in input units"""
    metrics: grid_list(Metric) = METRICS
    """the metrics computed (default: all)"""
    trajectories: Flag = False
    """the paper's manifold experiment: profiles of Jacobian norm and transition density along ellipses"""
    ellipses_per_kind: PositiveInt = 16
    """profile ellipses of each kind (random, different classes, same class)"""
    profile_points: Annotated[int, Strict(), Field(ge=3), AfterValidator(_multiple_of_3)] = 258
    """points per profile ellipse: a multiple of 3, so that its three anchors are samples"""
    slices: Flag = False
    """2-D slices: region boundaries on the plane through three training points"""
    slice_count: PositiveInt = 2
    """slices per checkpoint"""
    slice_grid: at_least(2) = 256
    """pixels on each side of a slice's grid (G)"""
    slice_layers: Literal["last", "all"] = "last"
    """whose codes draw a slice's boundaries: the last hidden layer's (a convolutional network's with the
    max-pool choices after it), or all layers'"""
    sharpness_samples: PositiveInt = 10
    """PAC-Bayes sharpness and magnitude-aware flatness (Jiang et al. 2020): noise draws per bisection step"""
    sharpness_search_depth: PositiveInt = 15
    """bisection steps of log σ in [1e-6, 10]"""
    sharpness_target: Annotated[float, Strict(), Field(gt=0, lt=1, allow_inf_nan=False)] = 0.1
    """the train-accuracy drop the noise σ′ may cause"""
    chunk_size: PositiveInt | None = None
    """points per chunk, which bounds memory; null: sized to the device"""
    seed: Count = 0
    """chooses the scored points"""

    @model_validator(mode="after")
    def _something_to_measure(self) -> ScoringSettings:
        if not self.train_points and set(self.metrics) <= set(TRAIN_METRICS):  # no checkpoint would get a row
            raise invalid(f"0, but metrics asks only for {', '.join(self.metrics)}, which are measured on training "
                          "points; give train_points above 0, or add metrics of test points", "train_points")
        return self

    @classmethod
    def from_dict(cls, values: Mapping, where: str = "scoring") -> ScoringSettings:
        """From a mapping (a plan's `scoring`, command-line overrides); raises SpecError."""
        return validate(cls, dict(values), where)

    def replace(self, **changes: object) -> ScoringSettings:
        """A copy with `changes`, validated like a spec's; raises SpecError."""
        return self.from_dict({**dataclasses.asdict(self), **changes})
