"""Trajectory profiles: the Jacobian norm and the transition density at every point of
closed trajectories (the paper's manifold experiment)."""

from __future__ import annotations

import torch
from torch import Tensor

from .convnets import ConvNet, images, run
from .jacobian import conv_logit_gram, first_layer_gram, jacobian_floats, logit_gram, norms_from_gram
from .nets import MLP, Net, as_population, check_tensor, chunks, preactivations
from .precision import exact
from .regions import changes_along, code_changes


def region_gram(mlp: MLP, hidden: list[Tensor], first_gram: Tensor | None, starts: Tensor) -> Tensor:
    """The centred Gram of J [M, P, C+1, C+1] (`logit_gram`) at P points from their
    pre-activations (each [M, P, h_l]), formed only where `starts` [M, P] is True: a
    piecewise-linear net's Jacobian depends on the code alone, and every other point shares the
    code of the nearest start before it."""
    m, p = starts.shape
    width = int(starts.sum(1).max())
    if width > 0.9 * p:  # nearly every point starts a run (wide nets): picking them costs more than it saves
        return logit_gram(mlp, hidden, first_gram)
    # Each model's starts first, in order; models with fewer are padded with points never used.
    picked = torch.sort(starts.logical_not().to(torch.uint8), dim=1, stable=True).indices[:, :width]
    gram = logit_gram(mlp, [h.gather(1, picked.unsqueeze(-1).expand(-1, -1, h.shape[-1])) for h in hidden], first_gram)
    c = gram.shape[-1]
    region = (starts.cumsum(1) - 1).unsqueeze(-1).expand(-1, -1, c * c)
    return gram.flatten(2).gather(1, region).view(m, p, c, c)


@exact
def trajectory_profile(
    net: Net, z: Tensor, *, output: str = "softmax", chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """(Jacobian norm, transition density) at each of the k points of each trajectory.

    Density i counts the units that change piece between z_i and z_{(i+1) mod k}; NaN for
    smooth activations. z: [..., k, d] for an nn.Sequential (results [..., k]); [E, k, d]
    shared or [M, E, k, d] for an MLP (results [M, E, k]). `chunk_size` counts trajectories;
    output is "softmax" (the default) or "logits".

    One forward pass serves both; for piecewise-linear nets the Jacobian is formed once per
    run of points with the same code (most neighbours along a trajectory share one).
    """
    if output not in ("softmax", "logits"):
        raise ValueError(f"output must be 'softmax' or 'logits', got {output!r}")
    mlp = as_population(net)
    single = not isinstance(net, MLP | ConvNet)
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
    piecewise = mlp.activation.piecewise_linear
    norms = z.new_empty((mlp.num_models, e, k))
    density = z.new_full((mlp.num_models, e, k), float("nan"))
    if isinstance(mlp, ConvNet):
        # Codes of every point, and the batched backward's C cotangents of the widest layer (`conv_logit_gram`).
        per_trajectory = k * (d + mlp.num_models * (mlp.code_width() + 2 * mlp.num_classes * mlp.widest()))
    else:
        first_gram = first_layer_gram(mlp)
        per_trajectory = k * (d + mlp.num_models * sum(mlp.hidden_sizes) + jacobian_floats(mlp))
    for start, stop in chunks(e, chunk_size, per_trajectory, mlp.device):
        part = flat[start:stop] if flat.dim() == 3 else flat[:, start:stop]
        n = stop - start
        points = part.reshape(*part.shape[:-3], n * k, d)
        if isinstance(mlp, ConvNet):
            gram, logits = conv_logit_gram(mlp, points)
            if piecewise:
                density[:, start:stop] = code_changes(run(mlp, images(mlp, points), codes=True)[1], n, k).to(z.dtype)
            soft, logit = norms_from_gram(gram, logits, output)
            norms[:, start:stop] = (soft if output == "softmax" else logit).view(-1, n, k)
            continue
        hidden, logits = preactivations(mlp, points)
        if piecewise:
            changes = changes_along(mlp, hidden, n, k, z.dtype)
            density[:, start:stop] = changes
            starts = changes.roll(1, dims=2) != 0  # NaN (not finite) also starts a run
            starts[..., 0] = True
            gram = region_gram(mlp, hidden, first_gram, starts.flatten(1))
        else:
            gram = logit_gram(mlp, hidden, first_gram)
        soft, logit = norms_from_gram(gram, logits, output)
        norms[:, start:stop] = (soft if output == "softmax" else logit).view(-1, n, k)

    if single:
        return norms.reshape(*lead, k), density.reshape(*lead, k)
    return norms, density
