"""Trajectory profiles: the Jacobian norm and the transition density at every point of
closed trajectories (the paper's manifold experiment)."""

from __future__ import annotations

import torch
from torch import Tensor

from .jacobian import jacobian_norms
from .nets import MLP, Net, as_mlp, check_tensor, chunks
from .regions import piece_changes


@torch.no_grad()
def trajectory_profile(
    net: Net, z: Tensor, *, output: str = "softmax", chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """(Jacobian norm, transition density) at each of the k points of each trajectory.

    Density i counts the units that change piece between z_i and z_{(i+1) mod k}; NaN for
    smooth activations. z: [..., k, d] for an nn.Sequential (results [..., k]); [E, k, d]
    shared or [M, E, k, d] for an MLP (results [M, E, k]). `chunk_size` counts trajectories;
    output is "softmax" (the default) or "logits".
    """
    if output not in ("softmax", "logits"):
        raise ValueError(f"output must be 'softmax' or 'logits', got {output!r}")
    mlp = as_mlp(net)
    single = not isinstance(net, MLP)
    check_tensor(mlp, z, "z")
    d = mlp.input_dim
    if single:
        if z.dim() < 2 or z.shape[-1] != d:
            raise ValueError(f"z must be [..., k, {d}] for this network, got {tuple(z.shape)}")
        lead, flat = z.shape[:-2], z.reshape(-1, *z.shape[-2:])
    else:
        m = mlp.num_models
        if z.shape[-1] != d or not (z.dim() == 3 or (z.dim() == 4 and z.shape[0] == m)):
            raise ValueError(f"z must be [E, k, {d}] or [{m}, E, k, {d}], got {tuple(z.shape)}")
        flat = z
    e, k = flat.shape[-3], flat.shape[-2]
    points = flat.reshape(*flat.shape[:-3], e * k, d)
    norms = jacobian_norms(mlp, points, output, chunk_size=None if chunk_size is None else chunk_size * k)
    density = z.new_full((mlp.num_models, e, k), float("nan"))
    if mlp.activation.piecewise_linear:
        per_trajectory = k * (d + 2 * mlp.num_models * sum(mlp.hidden_sizes))
        for start, stop in chunks(e, chunk_size, per_trajectory, mlp.device):
            part = flat[start:stop] if flat.dim() == 3 else flat[:, start:stop]
            density[:, start:stop] = piece_changes(mlp, part)

    norms = norms.reshape(mlp.num_models, e, k)
    if single:
        return norms.reshape(*lead, k), density.reshape(*lead, k)
    return norms, density
