"""Fully-connected networks per SPEC: `width` × `depth` hidden layers and one activation.

Initial parameters come from the network's own ``init`` random stream, drawn on the CPU in a
fixed order (W₀, b₀, W₁, b₁, …), so a network built alone and the same network as a bundle
member start identical on any device.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metrics_core.activations import Activation
from sweep.plan.networks import NetworkConfig, layer_sizes


def activation_of(config: NetworkConfig) -> Activation:
    return Activation(config.activation)  # default parameters: leaky slope 0.01, hard_tanh ±1


def init_parameters(config: NetworkConfig, input_dim: int,
                    num_classes: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight [out, in], bias [out]) per layer, float32 on the CPU.

    Schemes: ``torch_default`` (nn.Linear's: weights and biases U(±1/√fan_in)),
    ``he_normal`` (N(0, 2/fan_in)), ``lecun_normal`` (N(0, 1/fan_in)),
    ``glorot_uniform`` (U(±√(6/(fan_in+fan_out)))); biases are zero except for torch_default.
    """
    gen = config.generator("init")
    sizes = layer_sizes(config, input_dim, num_classes)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        if config.init == "torch_default":
            bound = 1.0 / math.sqrt(fan_in)
            w = torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=gen)
            b = torch.empty(fan_out).uniform_(-bound, bound, generator=gen)
        elif config.init == "glorot_uniform":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w = torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=gen)
            b = torch.zeros(fan_out)
        else:
            gain = 2.0 if config.init == "he_normal" else 1.0
            w = torch.empty(fan_out, fan_in).normal_(0.0, math.sqrt(gain / fan_in),
                                                     generator=gen)
            b = torch.zeros(fan_out)
        layers.append((w, b))
    return layers


def build_network(config: NetworkConfig, input_dim: int, num_classes: int) -> nn.Sequential:
    """The network trained alone: same seed ⇒ the same initial parameters as a bundle member."""
    act = activation_of(config)
    modules: list[nn.Module] = []
    params = init_parameters(config, input_dim, num_classes)
    for layer, (w, b) in enumerate(params):
        # skip_init: nn.Linear's own init would draw from (and advance) the global RNG
        linear = nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0])
        with torch.no_grad():
            linear.weight.copy_(w)
            linear.bias.copy_(b)
        modules.append(linear)
        if layer < len(params) - 1:
            modules.append(act.module())
    return nn.Sequential(*modules)
