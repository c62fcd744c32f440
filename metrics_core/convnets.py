"""Convolutional networks as stacked populations: the layer list, conversion from and to
`nn.Sequential`, and the batched forward pass that also records each point's activation code.

A `ConvNet` holds M same-shape networks. Convolutions of all members run as one grouped
convolution on a *folded* layout, members side by side in the channel axis ([n, M·C, H, W]),
as HFTA and torch.func's vmap rule for conv2d do; pools act per channel, so they need no
change; linear layers run as batched matmuls [M, n, F] like the fully-connected path.

Example:

    >>> import copy
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    ...                     nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    >>> population = stack_convnets([net, copy.deepcopy(net)], input_shape=(1, 8, 8))
    >>> logits, _ = run(population, images(population, torch.randn(5, 64)))
    >>> logits.shape
    torch.Size([2, 5, 10])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import Activation

PoolKind = Literal["max", "avg"]
MAX_POOL_SIZE = 11  # 121 positions: the largest window whose choice fits an int8


@dataclass(frozen=True, eq=False)  # tensors have no truth value: compare by identity
class Conv:
    """A 2-D convolution per member: weight [M, out, in, k, k], bias [M, out] or None (as before
    a batch normalisation, which would cancel it); square kernel, the same stride and zero
    padding on both axes."""

    weight: Tensor
    bias: Tensor | None
    stride: int = 1
    padding: int = 0


@dataclass(frozen=True, eq=False)
class Norm:
    """Batch normalisation in inference mode, y = x·scale + shift per channel: scale and shift
    [M, C], from the running statistics (`scale = γ/√(var + eps)`, `shift = β − mean·scale`).
    In training (`run(..., batch_stats=...)`) the same two tensors are γ and β."""

    scale: Tensor
    shift: Tensor


@dataclass(frozen=True)
class Act:
    """The network's activation, elementwise (its units are the code's pieces)."""


@dataclass(frozen=True)
class Pool:
    """Max or average pooling over size×size windows with stride `size`. A max-pool window's
    choice (the first position holding the maximum, as PyTorch picks it) is part of the code."""

    kind: PoolKind
    size: int = 2


@dataclass(frozen=True)
class GlobalAvgPool:
    """The mean over the spatial axes: [n, C, H, W] -> [n, C]."""


@dataclass(frozen=True)
class Flatten:
    """[n, C, H, W] -> [n, C·H·W], channel-major as `nn.Flatten` orders it."""


@dataclass(frozen=True, eq=False)
class Dense:
    """A linear layer per member: weight [M, out, in], bias [M, out]."""

    weight: Tensor
    bias: Tensor


Layer = Conv | Norm | Act | Pool | GlobalAvgPool | Flatten | Dense
Shape = tuple[int, ...]


def _output_shape(layer: Layer, shape: Shape) -> Shape:
    """The per-member, per-point shape after `layer`: (C, H, W) or (F,)."""
    if isinstance(layer, Conv):
        c, h, w = shape
        k = layer.weight.shape[-1]
        size = lambda s: (s + 2 * layer.padding - k) // layer.stride + 1  # noqa: E731
        return layer.weight.shape[1], size(h), size(w)
    if isinstance(layer, Pool):
        c, h, w = shape
        return c, h // layer.size, w // layer.size
    if isinstance(layer, GlobalAvgPool):
        return shape[:1]
    if isinstance(layer, Flatten):
        return (shape[0] * shape[1] * shape[2],)
    if isinstance(layer, Dense):
        return (layer.weight.shape[1],)
    return shape


@dataclass(frozen=True, eq=False)
class ConvNet:
    """A population of M same-shape convolutional networks.

    `layers` run in order on inputs of `input_shape` (C, H, W): spatial layers (Conv, Norm,
    Act, Pool) first, then GlobalAvgPool or Flatten, then Dense and Act layers; the last layer
    is a Dense or (NiN-style, before a GlobalAvgPool) a Conv, and its outputs are the logits.
    Every nonlinearity is `activation`.
    """

    layers: tuple[Layer, ...]
    activation: Activation
    input_shape: Shape

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if not isinstance(self.activation, Activation):
            raise TypeError(f"activation must be an Activation, got {type(self.activation).__name__}")
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {self.input_shape}")
        params = [t for layer in self.layers for t in _tensors(layer)]
        if not params:
            raise ValueError("a ConvNet needs at least one Conv or Dense layer")
        first = params[0]
        m = first.shape[0]
        for t in params:
            if t.shape[0] != m or t.dtype != first.dtype or t.device != first.device:
                raise ValueError(
                    f"every parameter must be [{m}, ...] {first.dtype} on {first.device}, got "
                    f"{tuple(t.shape)} {t.dtype} on {t.device}; move the whole ConvNet with .to()"
                )
        if not first.is_floating_point():
            raise ValueError(f"parameters must be floating point, got {first.dtype}")
        shape = self.input_shape
        flat = False
        for position, layer in enumerate(self.layers):
            if isinstance(layer, Conv | Pool | Norm) and flat:
                raise ValueError(f"layer {position} ({type(layer).__name__}) needs a feature map, "
                                 "but the input was already flattened")
            if isinstance(layer, Conv) and (layer.weight.dim() != 5 or layer.weight.shape[2] != shape[0] or (
                    layer.bias is not None and tuple(layer.bias.shape) != (m, layer.weight.shape[1]))):
                raise ValueError(f"layer {position}: Conv weight must be [{m}, out, {shape[0]}, k, k] "
                                 f"and bias [{m}, out] or None, got {tuple(layer.weight.shape)} and "
                                 f"{None if layer.bias is None else tuple(layer.bias.shape)}")
            if isinstance(layer, Norm) and tuple(layer.scale.shape) != (m, shape[0]):
                raise ValueError(f"layer {position}: Norm scale must be [{m}, {shape[0]}], got "
                                 f"{tuple(layer.scale.shape)}")
            if isinstance(layer, Dense) and (not flat or tuple(layer.weight.shape[::2]) != (m, shape[0])):
                raise ValueError(f"layer {position}: Dense weight must be [{m}, out, {shape[0]}] after "
                                 f"a Flatten or GlobalAvgPool, got {tuple(layer.weight.shape)}")
            if isinstance(layer, GlobalAvgPool | Flatten):
                if flat:
                    raise ValueError(f"layer {position} flattens an input that is already flat")
                flat = True
            shape = _output_shape(layer, shape)
            if min(shape) < 1:
                raise ValueError(f"layer {position} ({type(layer).__name__}) leaves an empty "
                                 f"feature map {shape} for inputs {self.input_shape}")
        if not flat or len(shape) != 1:
            raise ValueError("the last layers must reduce the feature map to logits: end with "
                             "Flatten or GlobalAvgPool, then Dense layers (or a Conv then GlobalAvgPool)")
        if isinstance(self.layers[-1], Act):
            raise ValueError("the last layer's outputs are the logits: it cannot be an activation")

    @property
    def num_models(self) -> int:
        return next(t for layer in self.layers for t in _tensors(layer)).shape[0]

    @property
    def num_classes(self) -> int:
        return self.shapes()[-1][0]

    @property
    def input_dim(self) -> int:
        c, h, w = self.input_shape
        return c * h * w

    @property
    def device(self) -> torch.device:
        return next(t for layer in self.layers for t in _tensors(layer)).device

    @property
    def dtype(self) -> torch.dtype:
        return next(t for layer in self.layers for t in _tensors(layer)).dtype

    def shapes(self) -> list[Shape]:
        """Per-point output shape of each layer."""
        out, shape = [], self.input_shape
        for layer in self.layers:
            shape = _output_shape(layer, shape)
            out.append(shape)
        return out

    def code_widths(self) -> list[int]:
        """Units of each part of a point's activation code (see `run`), in layer order."""
        widths, shape = [], self.input_shape
        for layer in self.layers:
            shape = _output_shape(layer, shape)
            if isinstance(layer, Act) or (isinstance(layer, Pool) and layer.kind == "max"):
                widths.append(math.prod(shape))
        return widths

    def code_width(self, layers: str = "all") -> int:
        """Units in a point's activation code: every activated unit and every max-pool window, of
        all layers or (`layers="last"`) of the `last_layer_parts`."""
        widths = self.code_widths()
        return sum(widths if layers == "all" else widths[-self.last_layer_parts():])

    def last_layer_parts(self) -> int:
        """How many of the code's parts (the last ones) make the last hidden layer's code: its
        activation's pieces, and the choices of the max-pools after it, which pick among them."""
        coded = [layer for layer in self.layers if isinstance(layer, Act)
                 or (isinstance(layer, Pool) and layer.kind == "max")]
        return len(coded) - max(i for i, layer in enumerate(coded) if isinstance(layer, Act))

    @property
    def layout(self) -> tuple:
        """What populations must share to be stacked into one (`stack_convnets`): each layer's
        kind, pooling, strides, padding and shapes per member, the activation and the input shape
        (two layouts can hold the same parameter shapes: max and average pooling)."""
        return (self.activation, self.input_shape,
                tuple((type(layer).__name__, getattr(layer, "kind", None), getattr(layer, "size", None),
                       getattr(layer, "stride", None), getattr(layer, "padding", None),
                       tuple(tuple(t.shape[1:]) for t in _tensors(layer))) for layer in self.layers))

    def widest(self) -> int:
        """The largest per-point, per-member activation (for chunk sizing)."""
        return max(math.prod(self.input_shape), *(math.prod(s) for s in self.shapes()))

    @property
    def weights(self) -> tuple[Tensor, ...]:
        """The Conv and Dense weights, in order, each Norm right after a Conv folded into it
        (`folded`); biases excluded."""
        return tuple(layer.weight for layer in self.folded().layers if isinstance(layer, Conv | Dense))

    def folded(self) -> ConvNet:
        """The same function with each Norm that directly follows a Conv folded into it (weight
        times scale per output channel, bias·scale + shift), as Jiang et al. (2020) rewrite a
        network before every weight measure; a Norm elsewhere stays."""
        layers: list[Layer] = []
        for layer in self.layers:
            if isinstance(layer, Norm) and layers and isinstance(layers[-1], Conv):
                before = layers.pop()
                shift = layer.shift if before.bias is None else before.bias * layer.scale + layer.shift
                layers.append(Conv(before.weight * layer.scale[:, :, None, None, None], shift, before.stride,
                                   before.padding))
            else:
                layers.append(layer)
        return ConvNet(tuple(layers), self.activation, self.input_shape)

    def parameters(self) -> list[Tensor]:
        """Every trained tensor, in layer order: weights, biases, Norm scales and shifts."""
        return [t for layer in self.layers for t in _tensors(layer)]

    def with_parameters(self, tensors: Sequence[Tensor]) -> ConvNet:
        """The same layers holding `tensors` (in `parameters` order; any model count)."""
        given = iter(tensors)
        return self.map(lambda _: next(given))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ConvNet:
        return self.map(lambda t: t.to(device=device, dtype=dtype))

    def map(self, fn) -> ConvNet:
        """The same layers with `fn` applied to every parameter tensor."""
        return ConvNet(tuple(_map_layer(layer, fn) for layer in self.layers), self.activation,
                       self.input_shape)

    def select(self, members: Tensor | Sequence[int]) -> ConvNet:
        """The population of the given members, in that order."""
        index = torch.as_tensor(members, dtype=torch.int64, device=self.device)
        return self.map(lambda t: t.index_select(0, index))


def _tensors(layer: Layer) -> tuple[Tensor, ...]:
    if isinstance(layer, Conv | Dense):
        return (layer.weight,) if layer.bias is None else (layer.weight, layer.bias)
    if isinstance(layer, Norm):
        return layer.scale, layer.shift
    return ()


def _map_layer(layer: Layer, fn) -> Layer:
    if isinstance(layer, Conv):
        return Conv(fn(layer.weight), None if layer.bias is None else fn(layer.bias), layer.stride, layer.padding)
    if isinstance(layer, Dense):
        return Dense(fn(layer.weight), fn(layer.bias))
    if isinstance(layer, Norm):
        return Norm(fn(layer.scale), fn(layer.shift))
    return layer


# ---- the forward pass -----------------------------------------------------------------------


def fold(x: Tensor) -> Tensor:
    """Per-member feature maps [M, n, C, H, W] -> the folded layout [n, M·C, H, W]."""
    m, n, c, h, w = x.shape
    return x.transpose(0, 1).reshape(n, m * c, h, w)


def unfold(x: Tensor, m: int) -> Tensor:
    """The folded layout [n, M·C, H, W] -> [M, n, C, H, W]."""
    n, mc, h, w = x.shape
    return x.view(n, m, mc // m, h, w).transpose(0, 1)


def conv(layer: Conv, x: Tensor, *, shared: bool = False, bias: bool = True) -> Tensor:
    """Every member's convolution: x [n, M·C, H, W] (folded), or [n, C, H, W] the same for all
    members when `shared` (one ungrouped convolution with M·out filters) -> [n, M·out, H', W']."""
    m, out, fan_in, k, _ = layer.weight.shape
    weight = layer.weight.reshape(m * out, fan_in, k, k)
    with_bias = bias and layer.bias is not None
    return F.conv2d(x, weight, layer.bias.reshape(-1) if with_bias else None, layer.stride, layer.padding,
                    groups=1 if shared else m)


def _spatial(layer: Layer, h: Tensor, shared: bool, act) -> Tensor:
    if isinstance(layer, Conv):
        return conv(layer, h, shared=shared)
    if isinstance(layer, Norm):
        return torch.addcmul(layer.shift.reshape(1, -1, 1, 1), h, layer.scale.reshape(1, -1, 1, 1))
    if isinstance(layer, Act):
        return act(h)
    if layer.kind == "max":
        return F.max_pool2d(h, layer.size)
    return F.avg_pool2d(h, layer.size)


def window_choices(h: Tensor, size: int) -> Tensor:
    """The position (0 … size²−1, row-major) of each size×size window's first maximum, int8
    [n, C, H//size, W//size]; −1 where the window holds a NaN."""
    if size > MAX_POOL_SIZE:
        raise ValueError(f"linear-region codes take max-pool windows of at most {MAX_POOL_SIZE}×{MAX_POOL_SIZE} "
                         f"(a window's choice is one byte of the code), got {size}×{size}")
    n, c, height, width = h.shape
    windows = h[..., : height - height % size, : width - width % size]
    windows = windows.unfold(2, size, size).unfold(3, size, size).flatten(-2)
    choice = windows.argmax(-1).to(torch.int8)
    return choice.masked_fill_(torch.isnan(windows).any(-1), -1)


def images(net: ConvNet, x: Tensor) -> Tensor:
    """Flat points [..., C·H·W] as images [..., C, H, W]."""
    return x.reshape(*x.shape[:-1], *net.input_shape)


BN_MOMENTUM = 0.1  # nn.BatchNorm2d's defaults
BN_EPS = 1e-5


def run(net: ConvNet, x: Tensor, *, codes: bool = False,
        batch_stats: Sequence[tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, list[Tensor]]:
    """Logits [M, n, classes] of x ([n, C, H, W] shared by every member, or [M, n, C, H, W]),
    and, when `codes`, the code parts [M, n, units] int8 in layer order: the piece of every
    activated unit (−1 where its pre-activation is not finite) and every max-pool window's
    choice.

    `batch_stats` (training): the running (mean, var) [M·C] of each Norm layer, in order; the
    Norm layers then hold γ and β and normalise by each member's batch statistics, updating its
    running statistics in place, as `nn.BatchNorm2d` does in training mode.
    """
    m = net.num_models
    shared = x.dim() == 4
    h = x if shared else fold(x)
    # Measuring differentiates with the saturation-safe derivative; training keeps autograd's own.
    act = net.activation.forward if batch_stats is not None else net.activation.with_exact_grad
    parts: list[Tensor] = []
    stats = iter(batch_stats or ())
    for layer in net.layers:
        if batch_stats is not None and isinstance(layer, Norm):
            mean, var = next(stats)
            h = F.batch_norm(h, mean, var, layer.scale.reshape(-1), layer.shift.reshape(-1), training=True,
                             momentum=BN_MOMENTUM, eps=BN_EPS)
            continue
        if h.dim() == 4:  # folded feature maps
            if codes and isinstance(layer, Act):
                parts.append(_pieces(net.activation, unfold(h, m).flatten(2)))
            if codes and isinstance(layer, Pool) and layer.kind == "max":
                parts.append(unfold(window_choices(h, layer.size), m).flatten(2))
            if isinstance(layer, GlobalAvgPool | Flatten):
                reduced = h.mean((2, 3)) if isinstance(layer, GlobalAvgPool) else h
                h = reduced.reshape(h.shape[0], m, -1).transpose(0, 1)
            else:
                h = _spatial(layer, h, shared, act)
                shared = False
            continue
        if isinstance(layer, Dense):
            h = torch.baddbmm(layer.bias.unsqueeze(1), h, layer.weight.transpose(1, 2))
        else:  # Act on [M, n, F]
            if codes:
                parts.append(_pieces(net.activation, h))
            h = act(h)
    return h, parts


def _pieces(activation: Activation, h: Tensor) -> Tensor:
    pieces = activation.pieces(h)
    if not torch.isfinite(h.sum(-1)).all():
        pieces.masked_fill_(~torch.isfinite(h), -1)
    return pieces


# ---- conversion -----------------------------------------------------------------------------

_POOLS = {nn.MaxPool2d: "max", nn.AvgPool2d: "avg"}


def _pair(value) -> int:
    """A square kernel, stride or padding as one int; raises for a non-square one."""
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise ValueError(f"only square kernels, strides and paddings are supported, got {value}")
        value = value[0]
    if not isinstance(value, int):
        raise ValueError(f"only integer paddings are supported, got {value!r}")
    return value


def _layer_of(module: nn.Module, activations: set[Activation], position: int) -> Layer:
    one = lambda t: t.detach().unsqueeze(0)  # noqa: E731
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or _pair(module.dilation) != 1 or module.padding_mode != "zeros":
            raise ValueError(f"Conv2d at {position}: only groups=1, dilation=1, zero padding are supported")
        _pair(module.kernel_size)
        bias = None if module.bias is None else one(module.bias)
        return Conv(one(module.weight), bias, _pair(module.stride), _pair(module.padding))
    if isinstance(module, nn.BatchNorm2d):
        if module.training or not module.track_running_stats:
            raise ValueError(f"BatchNorm2d at {position} must be in eval mode with running statistics "
                             "(call net.eval()): the metrics use inference-mode normalisation")
        scale = torch.rsqrt(module.running_var + module.eps)
        shift = -module.running_mean * scale
        if module.affine:
            scale, shift = scale * module.weight, shift * module.weight + module.bias
        return Norm(one(scale), one(shift))
    if isinstance(module, tuple(_POOLS)):
        size = _pair(module.kernel_size)
        if _pair(module.stride) != size or _pair(module.padding) != 0 or getattr(module, "ceil_mode", False):
            raise ValueError(f"{type(module).__name__} at {position}: only kernel_size == stride, "
                             "no padding, floor mode is supported")
        if isinstance(module, nn.MaxPool2d) and _pair(module.dilation) != 1:
            raise ValueError(f"MaxPool2d at {position}: dilation is not supported")
        if getattr(module, "divisor_override", None) is not None:
            raise ValueError(f"AvgPool2d at {position}: divisor_override is not supported (the pool is a mean)")
        return Pool(_POOLS[type(module)], size)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        if _pair(module.output_size) != 1:
            raise ValueError(f"AdaptiveAvgPool2d at {position}: only output_size=1 (global average) is supported")
        return GlobalAvgPool()
    if isinstance(module, nn.Flatten):
        if (module.start_dim, module.end_dim) != (1, -1):
            raise ValueError("only nn.Flatten() with the default start_dim=1, end_dim=-1 is supported")
        return Flatten()
    if isinstance(module, nn.Linear):
        bias = module.bias if module.bias is not None else module.weight.new_zeros(module.out_features)
        return Dense(one(module.weight), one(bias))
    activations.add(Activation.from_module(module))
    return Act()


def as_convnet(net: nn.Sequential | ConvNet, input_shape: Shape | None = None) -> ConvNet:
    """An nn.Sequential of Conv2d, BatchNorm2d (eval), activations, MaxPool2d/AvgPool2d,
    AdaptiveAvgPool2d(1), Flatten and Linear as a ConvNet with M = 1 (a
    GlobalAvgPool is AdaptiveAvgPool2d(1) followed by Flatten); a ConvNet as is."""
    if isinstance(net, ConvNet):
        return net
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"expected an nn.Sequential or a ConvNet, got {type(net).__name__}")
    if input_shape is None:
        raise ValueError("converting an nn.Sequential needs input_shape=(C, H, W)")
    activations: set[Activation] = set()
    layers: list[Layer] = []
    for position, module in enumerate(net):
        layer = _layer_of(module, activations, position)
        if isinstance(layer, Flatten) and layers and isinstance(layers[-1], GlobalAvgPool):
            continue  # AdaptiveAvgPool2d(1) + Flatten is one global average pool
        layers.append(layer)
    if len(activations) > 1:
        raise ValueError(f"all hidden layers must use the same activation, got {sorted(a.name for a in activations)}")
    activation = activations.pop() if activations else Activation("relu")
    return ConvNet(tuple(layers), activation, input_shape)


def stack_convnets(nets: Sequence[nn.Sequential | ConvNet], input_shape: Shape | None = None) -> ConvNet:
    """One population of all members of `nets`, in order; all must have the same layers."""
    parts = [as_convnet(net, input_shape) for net in nets]
    if not parts:
        raise ValueError("stack_convnets needs at least one network")
    first = parts[0]
    for index, part in enumerate(parts[1:], start=1):
        if part.layout != first.layout:
            raise ValueError(f"network {index} differs from network 0 in its layers or activation; "
                             "only same-shape networks can be stacked")
    return first.with_parameters([torch.cat(column) for column in zip(*(p.parameters() for p in parts))])


def unstack_convnet(net: ConvNet) -> list[nn.Sequential]:
    """Each member as its own nn.Sequential (parameters copied; Norm layers as an eval-mode
    BatchNorm2d with mean 0, variance 1 − eps, so that it computes x·scale + shift)."""
    out = []
    for member in range(net.num_models):
        modules: list[nn.Module] = []
        shape = net.input_shape
        for layer in net.layers:
            modules += _modules_of(layer, net, member, shape)
            shape = _output_shape(layer, shape)
        out.append(nn.Sequential(*modules).eval())
    return out


def _modules_of(layer: Layer, net: ConvNet, member: int, shape: Shape) -> list[nn.Module]:
    kw = {"device": net.device, "dtype": net.dtype}
    if isinstance(layer, Conv):
        _, out, fan_in, k, _ = layer.weight.shape
        module = nn.Conv2d(fan_in, out, k, stride=layer.stride, padding=layer.padding, bias=layer.bias is not None,
                           **kw)
        with torch.no_grad():
            module.weight.copy_(layer.weight[member])
            if layer.bias is not None:
                module.bias.copy_(layer.bias[member])
        return [module]
    if isinstance(layer, Dense):
        module = nn.Linear(layer.weight.shape[2], layer.weight.shape[1], **kw)
        with torch.no_grad():
            module.weight.copy_(layer.weight[member])
            module.bias.copy_(layer.bias[member])
        return [module]
    if isinstance(layer, Norm):
        module = nn.BatchNorm2d(shape[0], eps=0.0, **kw)
        with torch.no_grad():
            module.weight.copy_(layer.scale[member])
            module.bias.copy_(layer.shift[member])
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
        return [module]
    if isinstance(layer, Act):
        return [net.activation.module()]
    if isinstance(layer, Pool):
        return [nn.MaxPool2d(layer.size) if layer.kind == "max" else nn.AvgPool2d(layer.size)]
    if isinstance(layer, GlobalAvgPool):
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return [nn.Flatten()]
