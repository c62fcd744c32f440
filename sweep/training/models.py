"""The networks of a sweep as PyTorch objects: fully-connected ones (`width` × `depth` hidden
layers) and convolutional ones (`sweep.plan.networks.conv_layers`), with one activation.

Initial parameters come from the network's own ``init`` random stream, drawn on the CPU in a
fixed order (W₀, b₀, W₁, b₁, …), so a network built alone and the same network as a bundle
member start identical on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

import metrics_core as mc
from metrics_core import convnets
from sweep.plan.networks import ConvLayer, DataShape, NetworkConfig, conv_layers, parameter_shapes


def activation_of(config: NetworkConfig) -> mc.Activation:
    return mc.Activation(config.activation)  # default parameters: leaky slope 0.01, hard_tanh ±1


def init_parameters(config: NetworkConfig, data: DataShape) -> list[tuple[torch.Tensor, ...]]:
    """(weight, bias) per layer — weight [out, in] or [out, in, k, k]; a convolution before a batch
    normalisation has no bias — or a batch normalisation's (γ, β); float32 on the CPU.

    Schemes, with fan_in = in·k² and fan_out = out·k² (k = 1 for linear layers): ``torch_default``
    (nn.Linear's and nn.Conv2d's: weights and biases U(±1/√fan_in)), ``he_normal`` (N(0, 2/fan_in)),
    ``lecun_normal`` (N(0, 1/fan_in)), ``glorot_uniform`` (U(±√(6/(fan_in+fan_out)))); biases are
    zero except for torch_default. Batch normalisation starts as nn.BatchNorm2d does: γ = 1, β = 0
    (no random draw).
    """
    gen = config.generator("init")
    layers = []
    for shapes in parameter_shapes(config, data):
        shape = shapes[0]
        if len(shape) == 1:
            layers.append((torch.ones(shape), torch.zeros(shape)))
            continue
        receptive = math.prod(shape[2:])
        fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
        if config.init == "torch_default":
            bound = 1.0 / math.sqrt(fan_in)
            w = torch.empty(shape).uniform_(-bound, bound, generator=gen)
            b = torch.empty(shape[0]).uniform_(-bound, bound, generator=gen) if len(shapes) == 2 else None
        elif config.init == "glorot_uniform":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w = torch.empty(shape).uniform_(-bound, bound, generator=gen)
            b = torch.zeros(shape[0])
        else:
            gain = 2.0 if config.init == "he_normal" else 1.0
            w = torch.empty(shape).normal_(0.0, math.sqrt(gain / fan_in), generator=gen)
            b = torch.zeros(shape[0])
        layers.append((w, b) if len(shapes) == 2 else (w,))
    return layers


def population_of(config: NetworkConfig, data: DataShape, parameters: Sequence[torch.Tensor],
                  norm_stats: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> mc.MLP | mc.ConvNet:
    """The population (MLP or ConvNet) of `config`'s shape holding `parameters`: weight and bias
    stacks [M, ...], layer by layer (batch normalisation's γ and β among them).

    With `norm_stats`, the running (mean, var) [M, C] of each batch normalisation, the result is
    the networks in inference mode (each Norm's scale and shift folded from γ, β and the
    statistics); without, its Norm layers hold γ and β, for training (`convnets.run`'s
    `batch_stats`)."""
    activation = activation_of(config)
    if config.architecture == "fc":
        return mc.MLP(tuple(parameters[0::2]), tuple(parameters[1::2]), activation)
    given, stats = iter(parameters), iter(norm_stats or ())
    layers = []
    for layer in conv_layers(config, data.image_shape, data.num_classes):
        if layer.kind == "norm":
            gamma, beta = next(given), next(given)
            if norm_stats is not None:
                mean, var = next(stats)
                scale = gamma * torch.rsqrt(var + convnets.BN_EPS)
                gamma, beta = scale, beta - mean * scale
            layers.append(convnets.Norm(gamma, beta))
        elif layer.kind == "conv":
            layers.append(convnets.Conv(next(given), next(given) if layer.bias else None, layer.stride, layer.padding))
        elif layer.kind == "dense":
            layers.append(convnets.Dense(next(given), next(given)))
        elif layer.kind == "act":
            layers.append(convnets.Act())
        elif layer.kind == "pool":
            layers.append(convnets.Pool(layer.pool, 2))
        else:
            layers.append(convnets.GlobalAvgPool() if layer.kind == "gap" else convnets.Flatten())
    return mc.ConvNet(tuple(layers), activation, data.image_shape)


def initial_parameters(members: Sequence[NetworkConfig], data: DataShape) -> list[torch.Tensor]:
    """Every member's initial parameters stacked [M, ...], layer by layer (float32, CPU)."""
    per_member = [[t for layer in init_parameters(m, data) for t in layer] for m in members]
    return [torch.stack(column) for column in zip(*per_member)]


def initial_norm_stats(members: Sequence[NetworkConfig], data: DataShape) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batch normalisation's running (mean, var) [M, C] at initialisation (0 and 1), per norm layer."""
    return [(torch.zeros(len(members), layer.fan_out), torch.ones(len(members), layer.fan_out))
            for layer in (conv_layers(members[0], data.image_shape, data.num_classes)
                          if members[0].architecture == "cnn" else ()) if layer.kind == "norm"]


def initial_population(members: Sequence[NetworkConfig], data: DataShape) -> mc.MLP | mc.ConvNet:
    """Every member at initialisation, stacked in order (float32, CPU), in inference mode."""
    return population_of(members[0], data, initial_parameters(members, data), initial_norm_stats(members, data))


def build_network(config: NetworkConfig, data: DataShape) -> nn.Sequential:
    """The network trained alone: same seed ⇒ the same initial parameters as a bundle member
    (batch normalisation as nn.BatchNorm2d in training mode)."""
    parameters = [t[0] for t in initial_parameters([config], data)]
    with torch.random.fork_rng(devices=[]):  # the modules' own init must not advance the global RNG
        if config.architecture == "fc":
            net = mc.unstack(population_of(config, data, [t.unsqueeze(0) for t in parameters]))[0]
        else:
            net = nn.Sequential(*(module for layer in conv_layers(config, data.image_shape, data.num_classes)
                                  for module in _modules(layer, activation_of(config))))
        with torch.no_grad():
            for target, value in zip(net.parameters(), parameters, strict=True):
                target.copy_(value)
    return net


def _modules(layer: ConvLayer, activation: mc.Activation) -> list[nn.Module]:
    if layer.kind == "conv":
        return [nn.Conv2d(layer.fan_in, layer.fan_out, layer.kernel, layer.stride, layer.padding, bias=layer.bias)]
    if layer.kind == "norm":
        return [nn.BatchNorm2d(layer.fan_out, eps=convnets.BN_EPS, momentum=convnets.BN_MOMENTUM)]
    if layer.kind == "act":
        return [activation.module()]
    if layer.kind == "pool":
        return [nn.MaxPool2d(2) if layer.pool == "max" else nn.AvgPool2d(2)]
    if layer.kind == "gap":
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if layer.kind == "flatten":
        return [nn.Flatten()]
    return [nn.Linear(layer.fan_in, layer.fan_out)]
