"""Two-dimensional slices: linear-region maps on the plane through three points."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .convnets import ConvNet
from .nets import MLP, Net, as_population, check_tensor, chunks, planar_first_layer, propagate
from .precision import exact
from .regions import Layers, as_words, check_layers, hidden_pieces, pieces_at


@dataclass(frozen=True)
class SliceMap:
    """Region map of a G×G grid on the plane through three anchors (rows follow v, columns u).

    region: int32 [G, G] ([M, G, G] for an MLP), id of each pixel's distinct code, numbered
    in order of first appearance (row-major); boundary: bool, like region, True where the
    code differs from the right or lower neighbour; anchors: float64 [6], the (u, v)
    coordinates of a, b, c; extent: float64 [4], u_min, u_max, v_min, v_max; origin [d] and
    basis [2, d] (float64) map (u, v) back to input space: origin + u·basis[0] + v·basis[1].
    """

    region: Tensor
    boundary: Tensor
    anchors: Tensor
    extent: Tensor
    origin: Tensor
    basis: Tensor
    grid: int
    layers: str


def plane(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Centroid and orthonormal basis [2, d] (float64) of the plane through a, b, c."""
    # Collinear up to the inputs' own rounding counts as collinear.
    tolerance = 100 * torch.finfo(a.dtype).eps
    a, b, c = (t.double() for t in (a, b, c))
    first = b - a
    if not first.norm() > 0:
        raise ValueError("the slice anchors a and b coincide: pick three distinct points")
    e1 = first / first.norm()
    rest = (c - a) - ((c - a) @ e1) * e1
    if not rest.norm() > tolerance * (c - a).norm():
        raise ValueError("the slice anchors are collinear: pick three points spanning a plane")
    return (a + b + c) / 3, torch.stack([e1, rest / rest.norm()])


_MIX = 0x9E3779B97F4A7C15 - (1 << 64)  # odd: mixing words into one int64 key loses no single word


def _first_positions(inverse: Tensor, count: int) -> Tensor:
    positions = torch.arange(inverse.shape[0], device=inverse.device)
    first = torch.full((count,), inverse.shape[0], device=inverse.device)
    return first.scatter_reduce_(0, inverse, positions, reduce="amin")


def first_appearance_ids(rows: Tensor) -> Tensor:
    """int32 id per row of [n, w], equal rows sharing an id, ids in order of first appearance."""
    # One int64 key per row and a 1-D unique (a sort): torch.unique(dim=0) compares row by row,
    # 5x slower here. Equal rows always share a key; rows that merely collide are caught by
    # comparing every row with its group's first, and then the exact row-wise unique decides.
    key = rows[:, 0]
    for column in rows.unbind(1)[1:]:
        key = key * _MIX + column
    _, inverse = torch.unique(key, return_inverse=True)
    first = _first_positions(inverse, int(inverse.max()) + 1)
    if not torch.equal(rows[first[inverse]], rows):
        _, inverse = torch.unique(rows, dim=0, return_inverse=True)
        first = _first_positions(inverse, int(inverse.max()) + 1)
    rank = torch.empty_like(first)
    rank[first.argsort()] = torch.arange(first.shape[0], device=rows.device)
    return rank[inverse].to(torch.int32)


def boundaries(region: Tensor) -> Tensor:
    """Pixels whose region differs from their right or lower neighbour: [..., G, G] bool."""
    edge = torch.zeros_like(region, dtype=torch.bool)
    edge[..., :, :-1] |= region[..., :, :-1] != region[..., :, 1:]
    edge[..., :-1, :] |= region[..., :-1, :] != region[..., 1:, :]
    return edge


@exact
def slice_codes(
    net: Net,
    a: Tensor,
    b: Tensor,
    c: Tensor,
    *,
    grid: int = 256,
    layers: Layers = "last",
    margin: float = 0.25,
    chunk_size: int | None = None,
) -> SliceMap:
    """Region map of the plane through a, b, c (each one input point) on a grid×grid square.

    The square is centred on the anchors' bounding box, its side that box's longer side
    plus `margin` of it on each end. Codes use the last hidden layer (layers="last"; in a
    convolutional network with the max-pool choices after it) or all of them ("all"). Raises
    for smooth activations, whose codes are undefined.
    """
    mlp = as_population(net)
    mlp.activation.require_piecewise_linear("slice maps (linear-region codes)")
    check_layers(layers)
    if grid < 2:
        raise ValueError(f"grid must be at least 2 pixels, got {grid}")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    for name, t in (("a", a), ("b", b), ("c", c)):
        check_tensor(mlp, t, name)
        if t.numel() != mlp.input_dim:
            raise ValueError(f"{name} must be one input point of {mlp.input_dim} values, got {tuple(t.shape)}")
    origin, basis = plane(a.reshape(-1), b.reshape(-1), c.reshape(-1))
    anchors = (torch.stack([a.reshape(-1), b.reshape(-1), c.reshape(-1)]).double() - origin) @ basis.T
    low, high = anchors.amin(0), anchors.amax(0)
    half = (high - low).max() * (0.5 + margin)
    centre = (low + high) / 2
    extent = torch.stack([centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half])
    us = torch.linspace(float(extent[0]), float(extent[1]), grid, dtype=torch.float64, device=origin.device)
    vs = torch.linspace(float(extent[2]), float(extent[3]), grid, dtype=torch.float64, device=origin.device)

    if isinstance(mlp, ConvNet):
        width = mlp.code_width(layers)
        per_pixel = mlp.num_models * (mlp.code_width() + 2 * mlp.widest())
    else:
        width = sum(mlp.hidden_sizes) if layers == "all" else mlp.hidden_sizes[-1]
        per_pixel = 2 * mlp.num_models * sum(mlp.hidden_sizes)
        # For the last layer's codes alone, the first layer's pre-activations need not be kept.
        keep = layers == "all" or len(mlp.hidden_sizes) == 1
    words = -(-width // 8)
    packed = torch.empty(mlp.num_models, grid * grid, words, dtype=torch.int64, device=mlp.device)
    base = origin.to(mlp.dtype).unsqueeze(0)
    directions = basis.to(mlp.dtype).unsqueeze(0)
    for start, stop in chunks(grid * grid, chunk_size, per_pixel, mlp.device):
        pixel = torch.arange(start, stop, device=origin.device)
        uv = torch.stack([us[pixel % grid], vs[pixel // grid]], dim=-1)
        if isinstance(mlp, ConvNet):  # its first layer's outputs outnumber the input: no planar shortcut
            pieces = pieces_at(mlp, (base + uv.to(mlp.dtype) @ directions[0]), layers)
        else:
            hidden, _ = propagate(mlp, planar_first_layer(mlp, base, directions, uv), logits=False, keep_first=keep)
            pieces = hidden_pieces(mlp, hidden, layers)
        packed[:, start:stop] = as_words(pieces)
    region = torch.stack([first_appearance_ids(p) for p in packed]).view(-1, grid, grid)
    single = not isinstance(net, MLP | ConvNet)
    return SliceMap(
        region=region[0] if single else region,
        boundary=boundaries(region[0] if single else region),
        anchors=anchors.reshape(-1).cpu(),
        extent=extent.cpu(),
        origin=origin.cpu(),
        basis=basis.cpu(),
        grid=grid,
        layers=layers,
    )
