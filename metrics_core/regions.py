"""Linear-region codes and transition counts along closed trajectories."""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import Activation
from .convnets import ConvNet, images, run
from .nets import MLP, Batch, Net, batch, check_tensor, chunks, planar_points, planar_vectors, preactivations, propagate
from .precision import exact
from .trajectories import anchored_axes, angles, random_planes

Layers = Literal["all", "last"]
Trajectory = Literal["ellipse", "circle"]
_MAX_REDRAWS = 100


def check_layers(layers: str) -> None:
    if layers not in get_args(Layers):
        raise ValueError(f"layers must be 'all' or 'last', got {layers!r}")


def hidden_pieces(mlp: MLP, hidden: list[Tensor], layers: Layers = "all") -> Tensor:
    """int8 piece index of every unit of the chosen layers, concatenated in layer order; −1
    where the pre-activation is not finite (a diverged network)."""
    check_layers(layers)
    chosen = hidden if layers == "all" else hidden[-1:]
    pieces = [mlp.activation.pieces(h) for h in chosen]
    for p, h in zip(pieces, chosen):
        # A row sums to a finite value when all its units are finite (or past 3e38, a network
        # diverging anyway): the costly unit-by-unit test runs only when some row fails.
        if not torch.isfinite(h.sum(-1)).all():
            p.masked_fill_(~torch.isfinite(h), -1)
    return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]


@exact
def codes(net: Net, x: Tensor, *, layers: Layers = "all", chunk_size: int | None = None) -> Tensor:
    """Piece index (int8) of every hidden unit at each point: [N, H] for an nn.Sequential,
    [M, N, H] for an MLP; H counts the units of all hidden layers (or the last one).
    Raises for smooth activations, whose codes are undefined."""
    b = batch(net, x)
    mlp = b.net
    mlp.activation.require_piecewise_linear("linear-region codes")
    check_layers(layers)
    if isinstance(mlp, ConvNet):
        width = mlp.code_width(layers)
        per_point = mlp.num_models * (mlp.code_width() + 2 * mlp.widest())
    else:
        width = sum(mlp.hidden_sizes) if layers == "all" else mlp.hidden_sizes[-1]
        per_point = mlp.num_models * sum(mlp.hidden_sizes)
    out = torch.empty(mlp.num_models, b.num_points, width, dtype=torch.int8, device=x.device)
    for start, stop in chunks(b.num_points, chunk_size, per_point, mlp.device):
        out[:, start:stop] = pieces_at(mlp, b.rows(start, stop), layers)
    return b.output(out)


def pieces_at(net: MLP | ConvNet, x: Tensor, layers: Layers) -> Tensor:
    """The activation code at flat points x [n, d] (or [M, n, d]) -> int8 [M, n, H]: every
    hidden unit's piece, and for a ConvNet every max-pool window's choice, of all layers or
    the last hidden layer's (with the max-pool choices after it)."""
    if isinstance(net, ConvNet):
        _, parts = run(net, images(net, x), codes=True)
        return torch.cat(parts if layers == "all" else parts[-net.last_layer_parts():], -1)
    hidden, _ = preactivations(net, x, logits=False)
    return hidden_pieces(net, hidden, layers)


_BYTES_ONES = 0x0101010101010101  # a 1 in every byte of an int64 word


def as_words(pieces: Tensor) -> Tensor:
    """Pieces [..., H] (int8) as int64 words [..., ⌈H/8⌉], eight units per word (zero-padded):
    a lossless view, so codes compare and sort a word, not a unit, at a time."""
    pad = -pieces.shape[-1] % 8
    return (F.pad(pieces, (0, pad)) if pad else pieces.contiguous()).view(torch.int64)


def neighbour_changes(pieces: Tensor) -> Tensor:
    """Units whose piece differs between positions i and (i+1) mod k: int8 [..., k, w] ->
    int32 [..., k]. Eight units share an int64 word, so one XOR compares eight and one
    multiply adds their flags (each byte 0 or 1) into the word's top byte."""
    words = as_words(pieces)
    diff = torch.empty_like(words)
    torch.bitwise_xor(words[..., :-1, :], words[..., 1:, :], out=diff[..., :-1, :])
    torch.bitwise_xor(words[..., -1, :], words[..., 0, :], out=diff[..., -1, :])
    # A byte's flag is the OR of its eight bits (a max-pool choice of a 3×3 window runs to 8; −1
    # sets all eight), folded into its lowest bit: bits shifted in from the next byte never reach it.
    for shift in (4, 2, 1):
        diff.bitwise_or_(diff >> shift)
    diff.bitwise_and_(_BYTES_ONES)
    return diff.mul_(_BYTES_ONES).bitwise_right_shift_(56).sum(-1, dtype=torch.int32)


def changes_along(mlp: MLP, hidden: list[Tensor], n: int, k: int, dtype: torch.dtype) -> Tensor:
    """Units changing piece between positions i and (i+1) mod k of n closed trajectories,
    from the hidden pre-activations [M, n·k, h] -> [M, n, k]; NaN where either end is not
    finite."""
    m = mlp.num_models
    changes = sum(neighbour_changes(mlp.activation.pieces(h.reshape(m, n, k, -1))) for h in hidden)
    # A NaN or +inf pre-activation makes every unit of the next layer non-finite, so checking
    # the last hidden layer catches a non-finite network anywhere; its row sums are non-finite
    # exactly then (or past 3e38, a network diverging anyway), at a fraction of isfinite's cost.
    finite = torch.isfinite(hidden[-1].sum(-1)).view(m, n, k)
    finite &= finite.roll(-1, dims=2)
    return changes.to(dtype).masked_fill_(~finite, float("nan"))


def sampled_changes(net: ConvNet, centre: Tensor, axes: Tensor, coefficients: Tensor) -> Tensor:
    """Units changing piece between samples i and (i+1) mod k of closed trajectories
    centre + coefficients[i]·axes: centre [n, d] (shared) or [M, n, d], axes [..., n, 2, d],
    coefficients [k, 2] -> float64 [M, n, k]; NaN where either end has a non-finite unit.
    Every unit is compared at the samples: a convolutional network's activation code holds
    max-pool choices, which the planar first layer's crossings alone would not give."""
    (n, d), k = centre.shape[-2:], coefficients.shape[0]
    points = centre.unsqueeze(-2) + coefficients.to(centre.dtype) @ axes  # [..., n, k, d]
    _, parts = run(net, images(net, points.reshape(*points.shape[:-3], n * k, d)), codes=True)
    return code_changes(parts, n, k)


def code_changes(parts: list[Tensor], n: int, k: int) -> Tensor:
    """Units changing between positions i and (i+1) mod k of n closed trajectories, from the
    code parts [M, n·k, units] of their points -> float64 [M, n, k]; NaN where either end
    has a non-finite unit (piece −1)."""
    m = parts[0].shape[0]
    changes = torch.zeros(m, n, k, dtype=torch.float64, device=parts[0].device)
    finite = torch.ones(m, n, k, dtype=torch.bool, device=parts[0].device)
    for part in parts:
        pieces = part.view(m, n, k, -1)
        changes += neighbour_changes(pieces)
        finite &= (pieces >= 0).all(-1)
    finite &= finite.roll(-1, dims=2)
    return changes.masked_fill_(~finite, float("nan"))


def planar_changes(activation: Activation, vectors: Tensor, k: int) -> Tensor:
    """Σ_i (units changing piece between θ_i and θ_{i+1 mod k}), θ_i = 2πi/k, for units whose
    pre-activation along a closed trajectory is planar, c + a·cos θ + b·sin θ: vectors
    [..., 3, h] = (c, a, b) -> int64 [...].

    From the exact crossings instead of k samples: c + R·cos(θ − φ) meets a threshold t at
    θ = φ ± α, α = arccos((t − c)/R), and a unit's piece differs across every sample interval
    holding an odd number of crossings. In float64 from the coefficients the sampled route
    uses, this equals counting at the samples except where a crossing lies within rounding
    error of a sample angle, and costs O(h) per trajectory instead of O(k·h).
    """
    c, a, b = vectors.double().unbind(-2)
    radius, phase = torch.hypot(a, b), torch.atan2(b, a)
    crossed = []  # per threshold: units crossing it in two different intervals, and those intervals
    for t in activation.thresholds:
        cos_alpha = (t - c) / radius
        alpha = torch.arccos(cos_alpha.clamp(-1.0, 1.0))
        first, second = _interval(phase - alpha, k), _interval(phase + alpha, k)
        # A unit that only touches t (|cos α| = 1), or never reaches it, keeps its piece;
        # NaN (R = 0 or not finite) compares False.
        crossed.append(((cos_alpha.abs() < 1) & (first != second), first, second))
    count = sum(2 * changes.sum(-1) for changes, _, _ in crossed)
    if len(crossed) == 2:
        # Crossing both thresholds within one interval (a jump over the middle piece) is
        # still one unit changing piece: count such intervals once.
        (low, l1, l2), (high, h1, h2) = crossed
        both = low & high
        count = count - (both & ((l1 == h1) | (l1 == h2))).sum(-1) - (both & ((l2 == h1) | (l2 == h2))).sum(-1)
    return count


def _interval(angle: Tensor, k: int) -> Tensor:
    """Index i of the sample interval (θ_i, θ_{i+1}) holding each angle (radians, float64)."""
    return torch.remainder(angle, 2 * math.pi).mul_(k / (2 * math.pi)).floor_().clamp_(max=k - 1).long()


def _flat_points(b: Batch, t: Tensor, name: str, extra: tuple[int, ...]) -> Tensor:
    """`t` shaped [*x's leading dims, *extra, ...features] as [*lead, *extra, d]."""
    check_tensor(b.net, t, name)
    expected_lead = tuple(b.x.shape[:-1]) + extra
    features = t.shape[len(expected_lead):].numel()
    if tuple(t.shape[: len(expected_lead)]) != expected_lead or features != b.net.input_dim:
        raise ValueError(
            f"{name} must be [{', '.join(map(str, expected_lead))}, {b.net.input_dim}] to match "
            f"x {tuple(b.x.shape)}, got {tuple(t.shape)}"
        )
    return t.reshape(*expected_lead, b.net.input_dim)


def draw_partners(x: Tensor, pool: Tensor, generator: torch.Generator) -> Tensor:
    """Two pool points per point of x [..., d] -> [..., 2, d]: distinct draws, each different
    from x and from each other (redrawn where a pool point equals x, e.g. x is in the pool)."""
    size = pool.shape[0]
    if size < 3:
        raise ValueError(f"the partner pool needs at least 3 points, got {size}")
    shape = (*x.shape[:-1], 2)
    index = torch.randint(size, shape, generator=generator, device=generator.device)
    for _ in range(_MAX_REDRAWS):
        partners = pool[index.to(pool.device)]
        bad = (partners == x.unsqueeze(-2)).all(-1)
        bad |= (partners[..., 0, :] == partners[..., 1, :]).all(-1).unsqueeze(-1)
        if not bad.any():
            return partners
        redraw = torch.randint(size, shape, generator=generator, device=generator.device)
        index = torch.where(bad.to(index.device), redraw, index)
    raise ValueError(
        f"could not draw two partners different from x and from each other in {_MAX_REDRAWS} "
        "tries: the pool holds too few distinct points"
    )


def ellipse_axes(x: Tensor, partners: Tensor) -> tuple[Tensor, Tensor]:
    """Centre m and axes (u, v) [..., 2, d] of the ellipse through x, p₁, p₂ that starts at x
    (`trajectories.anchored_axes`)."""
    centre, u, v = anchored_axes(x, *partners.unbind(-2))
    return centre, torch.stack([u, v], dim=-2)


@exact
def transition_counts(
    net: Net,
    x: Tensor,
    *,
    partners: Tensor | None = None,
    pool: Tensor | None = None,
    generator: torch.Generator | None = None,
    k: int = 256,
    trajectory: Trajectory = "ellipse",
    radius: float | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """t(x) = Σ_i (units changing piece between z_i and z_{(i+1) mod k}) along a closed
    trajectory of k points z_i = centre + u cos θ_i + v sin θ_i, θ_i = 2πi/k.

    trajectory="ellipse": the ellipse through x (at θ = 0, the first sample) and two partners, given as
    `partners` [N, 2, d] ([M, N, 2, d] for per-model x) or drawn from `pool` [P, d] with
    `generator`. trajectory="circle": the circle of `radius` through x (at θ = 0) in a random
    plane through x drawn with `generator`. Results [N] or [M, N] in x's dtype; NaN for smooth activations
    and for points where the network is not finite.
    """
    b = batch(net, x)
    mlp = b.net
    if trajectory not in ("ellipse", "circle"):
        raise ValueError(f"trajectory must be 'ellipse' or 'circle', got {trajectory!r}")
    if trajectory == "ellipse":
        if (partners is None) == (pool is None):
            raise ValueError("the ellipse needs exactly one of partners= or pool= (with generator=)")
        if radius is not None:
            raise ValueError("radius= applies to trajectory='circle' only")
    elif radius is None or not radius > 0 or partners is not None or pool is not None:
        raise ValueError(
            f"trajectory='circle' needs a positive radius= (got {radius}) and generator=, "
            "not partners or pool"
        )
    if (pool is not None or trajectory == "circle") and generator is None:
        raise ValueError(
            "drawing partners or planes needs generator=torch.Generator().manual_seed(seed)"
        )
    theta = angles(k, x)
    if pool is not None:
        pool = pool.flatten(1) if pool.dim() > 2 else pool
        check_tensor(mlp, pool, "pool")
        if pool.dim() != 2 or pool.shape[1] != mlp.input_dim:
            raise ValueError(f"pool must be [P, {mlp.input_dim}], got {tuple(pool.shape)}")
    if partners is not None:
        partners = _flat_points(b, partners, "partners", (2,))
    out = x.new_full((mlp.num_models, b.num_points), float("nan"))
    if not mlp.activation.piecewise_linear:
        return b.output(out)
    if trajectory == "circle":
        planes = random_planes(b.x, generator) * radius
    elif pool is not None:
        partners = draw_partners(b.x, pool, generator)

    coefficients = torch.stack([theta.cos(), theta.sin()], dim=-1)
    if isinstance(mlp, ConvNet):
        per_point = mlp.num_models * k * (mlp.code_width() + 2 * mlp.widest())
    else:
        # The first layer is planar along the trajectory: its changes come from its exact
        # crossings, and only deeper layers are evaluated at the k points.
        deeper = mlp.hidden_sizes[1:]
        per_point = mlp.num_models * (16 * mlp.hidden_sizes[0] + (2 * k * sum(mlp.hidden_sizes) if deeper else 0))
    for start, stop in chunks(b.num_points, chunk_size, per_point + 3 * mlp.input_dim, mlp.device):
        xc = b.rows(start, stop)
        if trajectory == "circle":  # through x, at θ = 0, as `trajectories.circle`
            axes = planes[start:stop] if b.shared else planes[:, start:stop]
            centre = xc - axes[..., 0, :]
        else:
            centre, axes = ellipse_axes(xc, partners[start:stop] if b.shared else partners[:, start:stop])
        if isinstance(mlp, ConvNet):
            out[:, start:stop] = sampled_changes(mlp, centre, axes, coefficients).to(x.dtype).sum(-1)
            continue
        vectors = planar_vectors(mlp, centre, axes)
        counts = planar_changes(mlp.activation, vectors, k).to(x.dtype)
        # Finite coefficients whose absolute sum is finite keep every point of the trajectory finite.
        counts.masked_fill_(~torch.isfinite(vectors.abs().sum((-2, -1))), float("nan"))
        if deeper:
            hidden, _ = propagate(mlp, planar_points(vectors, coefficients), logits=False, keep_first=False)
            counts += changes_along(mlp, hidden, stop - start, k, x.dtype).sum(-1)
        out[:, start:stop] = counts
    return b.output(out)
