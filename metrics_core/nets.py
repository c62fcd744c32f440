"""Fully-connected networks as stacked populations: the MLP layout, conversion from and to
`nn.Sequential`, input validation, the batched forward pass and chunking of points."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .activations import Activation
from .convnets import ConvNet, as_convnet, images, run
from .precision import exact

# Floats one chunk of work may hold in its largest intermediate: 128 MiB of float32 on a
# CPU; 512 MiB on a GPU, where fewer, larger chunks keep kernel launches from dominating.
CHUNK_BUDGET_FLOATS = {"cpu": 1 << 23, "cuda": 1 << 27}


@dataclass(frozen=True, eq=False)  # tensors have no truth value: compare by identity
class MLP:
    """A population of M same-shape fully-connected networks with a leading model axis.

    Layer l has weights [M, out_l, in_l] and biases [M, out_l]; every hidden layer uses
    `activation`; the last layer has none (its outputs are the logits).
    """

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    activation: Activation

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "biases", tuple(self.biases))
        if not isinstance(self.activation, Activation):
            raise TypeError(
                f"activation must be an Activation, got {type(self.activation).__name__}; "
                "build one with Activation(name, params)"
            )
        if len(self.weights) < 2 or len(self.weights) != len(self.biases):
            raise ValueError(
                "an MLP needs at least one hidden layer and one bias per weight; got "
                f"{len(self.weights)} weights and {len(self.biases)} biases"
            )
        first = self.weights[0]
        if first.dim() != 3:
            raise ValueError(f"weights[0] must be [M, out, in], got shape {tuple(first.shape)}")
        if not first.is_floating_point():
            raise ValueError(f"weights must be floating point, got {first.dtype}")
        m, fan_in = first.shape[0], first.shape[2]
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            if w.dim() != 3 or w.shape[0] != m or w.shape[2] != fan_in:
                raise ValueError(
                    f"weights[{layer}] must be [{m}, out, {fan_in}], got {tuple(w.shape)}"
                )
            if tuple(b.shape) != (m, w.shape[1]):
                raise ValueError(
                    f"biases[{layer}] must be [{m}, {w.shape[1]}], got {tuple(b.shape)}"
                )
            for t in (w, b):
                if t.dtype != first.dtype or t.device != first.device:
                    raise ValueError(
                        f"layer {layer} is {t.dtype} on {t.device} but layer 0 is "
                        f"{first.dtype} on {first.device}; move the whole MLP with .to()"
                    )
            fan_in = w.shape[1]

    @property
    def num_models(self) -> int:
        return self.weights[0].shape[0]

    @property
    def input_dim(self) -> int:
        return self.weights[0].shape[2]

    @property
    def num_classes(self) -> int:
        return self.weights[-1].shape[1]

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return tuple(w.shape[1] for w in self.weights[:-1])

    @property
    def layout(self) -> tuple:
        """What populations must share to be stacked into one (`stack`): every layer's shape
        per member, and the activation."""
        return (self.activation, tuple(tuple(t.shape[1:]) for t in self.parameters()))

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    def parameters(self) -> list[Tensor]:
        """Every weight and bias, layer by layer (weight, then bias)."""
        return [t for pair in zip(self.weights, self.biases) for t in pair]

    def with_parameters(self, tensors: Sequence[Tensor]) -> MLP:
        """The same layout holding `tensors` (in `parameters` order; any model count)."""
        return MLP(tuple(tensors[0::2]), tuple(tensors[1::2]), self.activation)

    def map(self, fn) -> MLP:
        """The same layout with `fn` applied to every parameter tensor."""
        return self.with_parameters([fn(t) for t in self.parameters()])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MLP:
        return MLP(
            tuple(w.to(device=device, dtype=dtype) for w in self.weights),
            tuple(b.to(device=device, dtype=dtype) for b in self.biases),
            self.activation,
        )


Net = nn.Sequential | MLP | ConvNet


def is_conv(net: Net) -> bool:
    """A ConvNet, or an nn.Sequential holding a Conv2d."""
    return isinstance(net, ConvNet) or (
        isinstance(net, nn.Sequential) and any(isinstance(m, nn.Conv2d) for m in net))


def _parse_sequential(net: nn.Sequential) -> tuple[MLP, bool]:
    """The MLP (M = 1) of an nn.Sequential and whether it starts with a Flatten."""
    modules = list(net)
    flatten = bool(modules) and isinstance(modules[0], nn.Flatten)
    if flatten:
        if (modules[0].start_dim, modules[0].end_dim) != (1, -1):
            raise ValueError("only nn.Flatten() with the default start_dim=1, end_dim=-1 is supported")
        modules = modules[1:]
    linears, activations = modules[0::2], modules[1::2]
    for position, module in enumerate(modules):
        if isinstance(module, nn.Flatten):
            raise ValueError(f"nn.Flatten is supported only as the first module, found at {position}")
        if position % 2 == 0 and not isinstance(module, nn.Linear):
            raise ValueError(
                f"unsupported module {type(module).__name__} at position {position}: expected "
                "Linear and elementwise activations alternating, ending with a Linear"
            )
    if len(linears) < 2 or len(linears) != len(activations) + 1:
        raise ValueError(
            "expected nn.Sequential([Flatten,] Linear, activation, ..., Linear) with at least "
            f"one hidden layer; got {[type(m).__name__ for m in net]}"
        )
    kinds = {Activation.from_module(m) for m in activations}
    if len(kinds) != 1:
        raise ValueError(
            f"all hidden layers must use the same activation, got {sorted(a.name for a in kinds)}"
        )
    weights = tuple(layer.weight.detach().unsqueeze(0) for layer in linears)
    biases = tuple(
        (layer.bias.detach() if layer.bias is not None else layer.weight.new_zeros(layer.out_features)).unsqueeze(0)
        for layer in linears
    )
    return MLP(weights, biases, kinds.pop()), flatten


Population = MLP | ConvNet


def as_population(net: Net) -> Population:
    """An MLP or ConvNet as is; an nn.Sequential of linear layers as an MLP (M = 1)."""
    if isinstance(net, MLP | ConvNet):
        return net
    if is_conv(net):
        raise ValueError("a convolutional nn.Sequential does not say its input shape: convert it with "
                         "metrics_core.as_convnet(net, input_shape=(C, H, W))")
    return as_mlp(net)


def logits_of(net: Population, x: Tensor) -> Tensor:
    """Logits [M, n, C] at flat points x [n, d] or [M, n, d] (no chunking)."""
    if isinstance(net, ConvNet):
        return run(net, images(net, x))[0]
    return preactivations(net, x)[1]


def logit_floats(net: Population) -> int:
    """Floats held per point while `logits_of` runs (for chunk sizing)."""
    if isinstance(net, ConvNet):
        return 2 * net.num_models * net.widest()
    return net.num_models * (max(net.hidden_sizes) + net.num_classes)


def as_mlp(net: Net) -> MLP:
    """An nn.Sequential as an MLP with M = 1 (sharing its parameters' storage); an MLP as is."""
    if isinstance(net, MLP):
        return net
    if isinstance(net, nn.Sequential):
        return _parse_sequential(net)[0]
    raise TypeError(f"expected an nn.Sequential or an MLP, got {type(net).__name__}")


def stack(nets: Sequence[Net]) -> MLP:
    """One population of all members of `nets` (nn.Sequentials or MLPs), in order."""
    mlps = [as_mlp(net) for net in nets]
    if not mlps:
        raise ValueError("stack needs at least one network")
    first = mlps[0]
    for index, mlp in enumerate(mlps[1:], start=1):
        if mlp.layout != first.layout:
            shapes = [tuple(w.shape[1:]) for w in mlp.weights]
            expected = [tuple(w.shape[1:]) for w in first.weights]
            raise ValueError(
                f"network {index} has layers {shapes} and {mlp.activation}, but network 0 has "
                f"{expected} and {first.activation}; only same-shape networks can be stacked"
            )
    return MLP(
        tuple(torch.cat(layer) for layer in zip(*(m.weights for m in mlps))),
        tuple(torch.cat(layer) for layer in zip(*(m.biases for m in mlps))),
        first.activation,
    )


def unstack(mlp: MLP) -> list[nn.Sequential]:
    """Each member of the population as its own nn.Sequential (parameters copied)."""
    nets = []
    for member in range(mlp.num_models):
        modules: list[nn.Module] = []
        for layer, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
            linear = nn.Linear(w.shape[2], w.shape[1], device=w.device, dtype=w.dtype)
            with torch.no_grad():
                linear.weight.copy_(w[member])
                linear.bias.copy_(b[member])
            modules.append(linear)
            if layer < len(mlp.weights) - 1:
                modules.append(mlp.activation.module())
        nets.append(nn.Sequential(*modules))
    return nets


@dataclass(frozen=True)
class Batch:
    """Validated inputs: `x` is [N, d] (the same points for every model) or [M, N, d], images
    flattened; `single` means the caller passed an nn.Sequential, so results drop the model axis."""

    net: MLP | ConvNet
    x: Tensor
    single: bool

    @property
    def shared(self) -> bool:
        return self.x.dim() == 2

    @property
    def num_points(self) -> int:
        return self.x.shape[-2]

    def rows(self, start: int, stop: int) -> Tensor:
        return self.x[start:stop] if self.shared else self.x[:, start:stop]

    def output(self, result: Tensor) -> Tensor:
        """Drop the model axis of a [M, ...] result for an nn.Sequential."""
        return result.squeeze(0) if self.single else result


def check_tensor(mlp: MLP, t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device != mlp.device:
        raise ValueError(
            f"{name} is on {t.device} but the network is on {mlp.device}; move one of them"
        )
    if t.dtype != mlp.dtype:
        raise ValueError(
            f"{name} is {t.dtype} but the network is {mlp.dtype}; convert with .to({mlp.dtype})"
        )


def batch(net: Net, x: Tensor, name: str = "x") -> Batch:
    """Validate points for `net`: [N, d] for an nn.Sequential (any [N, ...] when it starts with
    Flatten); [N, d] or [M, N, d] for an MLP; for convolutional networks see `conv_batch`."""
    if is_conv(net):
        return conv_batch(net, x, name)
    if isinstance(net, MLP):
        mlp, single, flatten = net, False, False
    elif isinstance(net, nn.Sequential):
        (mlp, flatten), single = _parse_sequential(net), True
    else:
        raise TypeError(f"expected an nn.Sequential or an MLP, got {type(net).__name__}")
    check_tensor(mlp, x, name)
    if flatten and x.dim() > 2:
        x = x.flatten(1)
    d, m = mlp.input_dim, mlp.num_models
    if single:
        ok = x.dim() == 2 and x.shape[1] == d
        expected = f"[N, {d}]"
    else:
        ok = x.shape[-1] == d and (x.dim() == 2 or (x.dim() == 3 and x.shape[0] == m))
        expected = f"[N, {d}] or [{m}, N, {d}]"
    if not ok:
        raise ValueError(f"{name} must be {expected} for this network, got {tuple(x.shape)}")
    return Batch(mlp, x, single)


def conv_batch(net: nn.Sequential | ConvNet, x: Tensor, name: str = "x") -> Batch:
    """Validate images for a convolutional network: [N, C, H, W] for an nn.Sequential (its
    input shape is taken from x); [N, C, H, W] or [N, C·H·W] shared, or [M, N, C, H, W] or
    [M, N, C·H·W] per model, for a ConvNet. The batch holds them flattened."""
    single = not isinstance(net, ConvNet)
    if single:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be [N, C, H, W] images for a convolutional nn.Sequential, got {shape}")
        net = as_convnet(net, tuple(x.shape[1:]))
    check_tensor(net, x, name)
    m, d = net.num_models, net.input_dim
    if x.dim() >= 4 and tuple(x.shape[-3:]) == net.input_shape:
        lead = tuple(x.shape[:-3])
    else:
        lead = tuple(x.shape[:-1]) if x.dim() in (2, 3) and x.shape[-1] == d else ()
    if not (len(lead) == 1 or (len(lead) == 2 and lead[0] == m and not single)):
        c, h, w = net.input_shape
        raise ValueError(f"{name} must be [N, {c}, {h}, {w}] or [N, {d}] (or with a leading axis of "
                         f"{m} models) for this network, got {tuple(x.shape)}")
    return Batch(net, x.reshape(*lead, d), single)


def default_chunk_size(per_point_floats: int, device: torch.device | None = None) -> int:
    """Points per chunk that keep `per_point_floats` per point within the device's budget."""
    kind = "cpu" if device is None else device.type
    budget = CHUNK_BUDGET_FLOATS.get(kind, CHUNK_BUDGET_FLOATS["cpu"])
    return max(1, budget // max(1, per_point_floats))


def chunks(
    n: int, chunk_size: int | None, per_point_floats: int, device: torch.device
) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges of at most `chunk_size` points (default: sized to the budget)."""
    if chunk_size is None:
        chunk_size = default_chunk_size(per_point_floats, device)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of points, got {chunk_size}")
    for start in range(0, n, chunk_size):
        yield start, min(n, start + chunk_size)


def linear(mlp: MLP, layer: int, x: Tensor, *, bias: bool = True) -> Tensor:
    """x·Wᵀ (+ b) of one layer for every model: x [n, in] (shared) or [M, n, in] -> [M, n, out]."""
    w = mlp.weights[layer]
    m, out, fan_in = w.shape
    if x.dim() == 2:
        # One GEMM for all models instead of M copies of the shared points.
        flat = w.reshape(m * out, fan_in).T
        y = torch.addmm(mlp.biases[layer].reshape(m * out), x, flat) if bias else x @ flat
        return y.view(x.shape[0], m, out).transpose(0, 1)
    if bias:
        return torch.baddbmm(mlp.biases[layer].unsqueeze(1), x, w.transpose(1, 2))
    return torch.bmm(x, w.transpose(1, 2))


def propagate(
    mlp: MLP, first: Tensor, *, logits: bool = True, keep_first: bool = True
) -> tuple[list[Tensor], Tensor | None]:
    """From the first layer's pre-activations [M, n, h₁]: every hidden layer's pre-activations
    [M, n, h_l], and the logits [M, n, C] (or None). keep_first=False overwrites `first` with
    its activations and leaves it out of the list (saves a pass over the largest tensor when
    only deeper layers are wanted)."""
    h = first
    hidden = [h] if keep_first else []
    for layer in range(1, len(mlp.weights) - 1):
        h = linear(mlp, layer, mlp.activation.forward(h, inplace=layer == 1 and not keep_first))
        hidden.append(h)
    out = linear(mlp, len(mlp.weights) - 1, mlp.activation.forward(h)) if logits else None
    return hidden, out


def preactivations(mlp: MLP, x: Tensor, *, logits: bool = True) -> tuple[list[Tensor], Tensor | None]:
    """Pre-activations [M, n, h_l] of every hidden layer at x, and the logits [M, n, C] (or None)."""
    return propagate(mlp, linear(mlp, 0, x), logits=logits)


def planar_vectors(mlp: MLP, base: Tensor, directions: Tensor) -> Tensor:
    """First-layer pre-activations at `base` and their change along each direction,
    [M, n, 1+J, h₁] (the bias only in the first): the layer is affine, so at
    base + Σ_j s_j·directions[j] they are vectors[0] + Σ_j s_j·vectors[1+j].
    base [n, d] (shared) or [M, n, d]; directions [..., n, J, d] alike.
    """
    n = base.shape[-2]
    at_base = linear(mlp, 0, base)
    flat = directions.reshape(*directions.shape[:-3], -1, directions.shape[-1])
    along = linear(mlp, 0, flat, bias=False).reshape(mlp.num_models, n, directions.shape[-2], -1)
    return torch.cat([at_base.unsqueeze(2), along], dim=2)


def planar_first_layer(mlp: MLP, base: Tensor, directions: Tensor, coefficients: Tensor) -> Tensor:
    """First-layer pre-activations at the points base + Σ_j coefficients[i, j]·directions[j].

    Each point costs a combination of `planar_vectors` rather than a d-wide product: the
    saving that makes trajectories and slices cheap. coefficients [k, J] (the same for every
    point) -> [M, n·k, h₁], points in (n, k) order.
    """
    return planar_points(planar_vectors(mlp, base, directions), coefficients)


def planar_points(vectors: Tensor, coefficients: Tensor) -> Tensor:
    """`planar_vectors` [M, n, 1+J, h] at coefficients [k, J] -> [M, n·k, h]."""
    m, n = vectors.shape[:2]
    k = coefficients.shape[0]
    # One product with a column of ones writes the result once (no separate pass adding the base).
    weights = torch.cat([coefficients.new_ones(k, 1), coefficients], dim=1).to(vectors.dtype)
    return (weights @ vectors).reshape(m, n * k, -1)


@exact
def forward(net: Net, x: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """Logits: [N, C] for an nn.Sequential, [M, N, C] for an MLP or ConvNet."""
    b = batch(net, x)
    net = b.net
    out = x.new_empty(net.num_models, b.num_points, net.num_classes)
    for start, stop in chunks(b.num_points, chunk_size, logit_floats(net), net.device):
        out[:, start:stop] = logits_of(net, b.rows(start, stop))
    return b.output(out)
