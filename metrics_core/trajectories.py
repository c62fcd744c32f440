"""Closed trajectories in input space: the ellipse through three points, random ellipses and
circles in random planes. Pure geometry, batched over leading dimensions."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def angles(k: int, like: Tensor) -> Tensor:
    """θ_i = 2πi/k, i = 0..k−1, in the dtype and on the device of `like`."""
    if k < 2:
        raise ValueError(f"a closed trajectory needs k >= 2 points, got k={k}")
    return torch.arange(k, dtype=torch.float64, device=like.device).mul_(2 * math.pi / k).to(like.dtype)


def anchored_axes(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centre m and axes u, v [..., d] of the ellipse z(θ) = m + u cos θ + v sin θ through a, b, c
    that starts at its first anchor: z(0) = a, z(2π/3) = b, z(4π/3) = c.

    SPEC's ellipse m + u₀ cos φ + v₀ sin φ (m = (a+b+c)/3, u₀ = m − b, v₀ = (a − c)/√3, through
    a, b, c at φ = π/3, π, 5π/3) with φ = θ + π/3: u = a − m, v = v₀/2 − (√3/2)·u₀.
    """
    m = (a + b + c) / 3
    return m, a - m, (a - c) / (2 * math.sqrt(3)) - (math.sqrt(3) / 2) * (m - b)


def anchor_positions(k: int) -> tuple[int, int, int]:
    """The samples of a k-point ellipse (`ellipse`) that are its anchors a, b, c."""
    if k < 3 or k % 3:
        raise ValueError(f"an ellipse through three anchors needs k a multiple of 3 (the anchors at samples "
                         f"0, k/3 and 2k/3), got k={k}; use {max(3, k - k % 3)} or {k - k % 3 + 3}")
    return 0, k // 3, 2 * k // 3


def ellipse(a: Tensor, b: Tensor, c: Tensor, k: int) -> Tensor:
    """k points z(θ_i), θ_i = 2πi/k, of the ellipse through a, b, c (`anchored_axes`): the anchors
    are samples 0, k/3 and 2k/3 (`anchor_positions`; k must be a multiple of 3), and exactly the
    given points there. a, b, c: [..., d] (broadcast) -> [..., k, d].
    """
    anchors = anchor_positions(k)
    a, b, c = torch.broadcast_tensors(a, b, c)
    m, u, v = anchored_axes(a, b, c)
    theta = angles(k, a).unsqueeze(-1)
    z = m.unsqueeze(-2) + u.unsqueeze(-2) * theta.cos() + v.unsqueeze(-2) * theta.sin()
    for position, point in zip(anchors, (a, b, c)):
        z[..., position, :] = point
    return z


def gaussian_points(
    mean: Tensor, std: Tensor, shape: tuple[int, ...], generator: torch.Generator
) -> Tensor:
    """mean + std·ε with ε ~ N(0, 1) of shape [*shape, d], drawn on the generator's device."""
    if mean.shape != std.shape or mean.dim() != 1:
        raise ValueError(
            f"mean and std must both be [d] (per-feature), got {tuple(mean.shape)} and {tuple(std.shape)}"
        )
    noise = torch.randn(*shape, mean.shape[0], generator=generator, device=generator.device)
    return mean + std * noise.to(device=mean.device, dtype=mean.dtype)


def random_ellipse(
    mean: Tensor, std: Tensor, k: int, generator: torch.Generator, n: int = 1
) -> Tensor:
    """n ellipses [n, k, d], each through three Gaussian points scaled to the data's mean and
    per-feature std (both [d])."""
    a, b, c = gaussian_points(mean, std, (3, n), generator)
    return ellipse(a, b, c, k)


def random_planes(x: Tensor, generator: torch.Generator) -> Tensor:
    """Two orthonormal random directions per point: x [..., d] -> [..., 2, d]."""
    g = torch.randn(*x.shape[:-1], x.shape[-1], 2, generator=generator, device=generator.device)
    q = torch.linalg.qr(g.to(device=x.device, dtype=torch.float64)).Q
    return q.transpose(-1, -2).to(x.dtype)


def circle(
    x: Tensor,
    radius: float,
    k: int,
    *,
    generator: torch.Generator | None = None,
    directions: Tensor | None = None,
) -> Tensor:
    """k points x + r(u (cos θ_i − 1) + v sin θ_i): the circle of radius r through x (its first
    point, θ_0 = 0; centred at x − r·u) in the plane through x spanned by orthonormal u, v
    (`directions` [..., 2, d], or drawn with `generator`). x [..., d] -> [..., k, d]."""
    if not radius > 0:
        raise ValueError(f"the circle radius must be positive, got {radius}")
    if (generator is None) == (directions is None):
        raise ValueError("pass exactly one of generator= (random plane) or directions=")
    if directions is None:
        directions = random_planes(x, generator)
    theta = angles(k, x).unsqueeze(-1)
    u, v = directions.unsqueeze(-3).unbind(-2)
    return x.unsqueeze(-2) + radius * (u * (theta.cos() - 1) + v * theta.sin())
