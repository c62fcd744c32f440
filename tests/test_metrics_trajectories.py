"""Ellipses, circles and trajectory profiles."""

import math

import pytest
import torch
from torch import nn

from metrics_core import (
    anchor_positions,
    circle,
    ellipse,
    jacobian_norms,
    random_ellipse,
    stack,
    trajectory_profile,
    transition_counts,
)


def make_net(activation=nn.ReLU, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 9), activation(), nn.Linear(9, 7), activation(), nn.Linear(7, 4))


def test_ellipse_passes_through_its_three_points_at_samples():
    a, b, c = torch.randn(3, 4, 2, 5)
    z = ellipse(a, b, c, 6)  # the anchors are samples 0, 2, 4, exactly
    assert z.shape == (4, 2, 6, 5) and anchor_positions(6) == (0, 2, 4)
    assert torch.equal(z[..., 0, :], a) and torch.equal(z[..., 2, :], b) and torch.equal(z[..., 4, :], c)
    # The points are SPEC's z(φ) = m + u cos φ + v sin φ (through a, b, c at φ = π/3, π, 5π/3) at
    # φ_i = π/3 + 2πi/k, checked one by one in float64.
    a, b, c = a.double(), b.double(), c.double()
    k = 12
    z = ellipse(a[0, 0], b[0, 0], c[0, 0], k)
    m = (a[0, 0] + b[0, 0] + c[0, 0]) / 3
    u, v = m - b[0, 0], (a[0, 0] - c[0, 0]) / math.sqrt(3)
    for i in range(k):
        phi = math.pi / 3 + 2 * math.pi * i / k
        torch.testing.assert_close(z[i], m + u * math.cos(phi) + v * math.sin(phi))
    with pytest.raises(ValueError, match=r"k a multiple of 3 .* got k=256; use 255 or 258"):
        ellipse(a, b, c, 256)


def test_random_ellipse_anchors_follow_mean_and_std():
    mean = torch.tensor([1.0, -2.0, 0.5])
    std = torch.tensor([0.1, 2.0, 1.0])
    z = random_ellipse(mean, std, 6, torch.Generator().manual_seed(0), n=4000)
    assert z.shape == (4000, 6, 3)
    anchors = z[:, 0::2].reshape(-1, 3)  # the three Gaussian points
    torch.testing.assert_close(anchors.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(anchors.std(0), std, rtol=0.05, atol=0)
    again = random_ellipse(mean, std, 6, torch.Generator().manual_seed(0), n=4000)
    assert torch.equal(z, again)


def test_circle_passes_through_x_at_radius_in_a_plane():
    x = torch.randn(3, 8, dtype=torch.float64)
    z = circle(x, 0.7, 16, generator=torch.Generator().manual_seed(1))
    assert z.shape == (3, 16, 8)
    torch.testing.assert_close(z[:, 0], x, rtol=0, atol=1e-15)  # SPEC: a closed trajectory through x
    centre = z.mean(1)  # of points evenly spaced in angle
    torch.testing.assert_close((z - centre.unsqueeze(1)).norm(dim=-1), torch.full((3, 16), 0.7, dtype=torch.float64))
    # opposite x, one diameter away
    torch.testing.assert_close((z[:, 8] - x).norm(dim=-1), torch.full((3,), 1.4, dtype=torch.float64))
    offsets = z - x.unsqueeze(1)
    assert torch.linalg.matrix_rank(offsets).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="positive"):
        circle(x, 0.0, 16, generator=torch.Generator())


def test_profile_matches_pointwise_metrics_and_transitions():
    net = make_net()
    x, partners = torch.randn(4, 5), torch.randn(4, 2, 5)
    k = 30
    z = ellipse(x, partners[:, 0], partners[:, 1], k)
    norms, density = trajectory_profile(net, z, chunk_size=3)
    assert norms.shape == density.shape == (4, k)
    torch.testing.assert_close(norms, jacobian_norms(net, z.reshape(-1, 5)).reshape(4, k))
    # Density at i counts changes between z_i and z_{i+1}: summed, the transition count.
    assert torch.equal(density.sum(-1), transition_counts(net, x, partners=partners, k=k))
    with torch.no_grad():
        pieces = [(h > 0) for h in (net[0](z), net[2](net[1](net[0](z))))]
    changes = sum((p != p.roll(-1, dims=1)).sum(-1) for p in pieces)
    assert torch.equal(density, changes.float())
    logits, _ = trajectory_profile(net, z, output="logits")
    torch.testing.assert_close(logits, jacobian_norms(net, z.reshape(-1, 5), "logits").reshape(4, k))


def test_profile_population_and_smooth_nets():
    nets = [make_net(seed=s) for s in range(2)]
    z = random_ellipse(torch.zeros(5), torch.ones(5), 12, torch.Generator().manual_seed(2), n=3)
    norms, density = trajectory_profile(stack(nets), z)
    assert norms.shape == (2, 3, 12)
    for m, net in enumerate(nets):
        single = trajectory_profile(net, z)
        torch.testing.assert_close(norms[m], single[0])
        assert torch.equal(density[m], single[1])
    smooth_norms, smooth_density = trajectory_profile(make_net(nn.Tanh), z)
    assert smooth_density.isnan().all() and torch.isfinite(smooth_norms).all()
    with pytest.raises(ValueError, match=r"z must be \[E, k, 5\] or \[2, E, k, 5\]"):
        trajectory_profile(stack(nets), torch.randn(3, 3, 12, 5))
    with pytest.raises(ValueError, match="output must be"):
        trajectory_profile(nets[0], z, output="both")
