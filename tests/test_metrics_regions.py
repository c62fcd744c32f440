"""Codes and transition counts against brute-force per-point Python loops."""

import math

import pytest
import torch
from torch import nn

from metrics_core import Activation, codes, stack, transition_counts
from metrics_core.regions import draw_partners
from metrics_core.trajectories import random_planes

PIECEWISE = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.05),
    "hard_tanh": lambda: nn.Hardtanh(-0.5, 0.5),
    "relu6": nn.ReLU6,
}


def make_net(activation, d=6, widths=(7, 5), classes=3, seed=0):
    torch.manual_seed(seed)
    factory = PIECEWISE.get(activation) or {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[activation]
    layers, fan_in = [], d
    for width in widths:
        layers += [nn.Linear(fan_in, width), factory()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, classes))


def brute_code(net, point):
    """Piece of every hidden unit at one point, by walking the modules unit by unit."""
    code, a = [], point
    modules = list(net)
    for index, module in enumerate(modules):
        a = module(a)
        if isinstance(module, nn.Linear) and index < len(modules) - 1:
            act = modules[index + 1]
            for value in a.tolist():
                if isinstance(act, nn.Hardtanh):  # also ReLU6
                    code.append(0 if value <= act.min_val else 2 if value >= act.max_val else 1)
                else:
                    code.append(1 if value > 0 else 0)
    return code


def brute_transitions(net, trajectory):
    """Σ over neighbours (cyclic) of the number of units whose piece differs."""
    pieces = [brute_code(net, z) for z in trajectory]
    k = len(pieces)
    return sum(sum(p != q for p, q in zip(pieces[i], pieces[(i + 1) % k])) for i in range(k))


def brute_ellipse(a, b, c, k):
    """SPEC's ellipse through a, b, c (at φ = π/3, π, 5π/3), sampled from a: φ_i = π/3 + 2πi/k."""
    m = (a + b + c) / 3
    u, v = m - b, (a - c) / math.sqrt(3)
    phis = [math.pi / 3 + 2 * math.pi * i / k for i in range(k)]
    return [m + u * math.cos(phi) + v * math.sin(phi) for phi in phis]


@pytest.mark.parametrize("activation", list(PIECEWISE))
def test_codes_match_brute_force(activation):
    net = make_net(activation)
    x = torch.randn(25, 6) * (30 if activation == "relu6" else 3)  # reach every piece
    got = codes(net, x, chunk_size=7)
    assert got.dtype == torch.int8 and got.shape == (25, 12)
    with torch.no_grad():
        expected = torch.tensor([brute_code(net, p) for p in x], dtype=torch.int8)
    assert torch.equal(got, expected)
    assert torch.equal(codes(net, x, layers="last"), expected[:, 7:])
    if activation in ("hard_tanh", "relu6"):
        assert set(expected.unique().tolist()) == {0, 1, 2}


def test_piece_boundaries_follow_autograd_convention():
    assert Activation("relu").pieces(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 0, 1]
    hard = Activation("hard_tanh", {"min_val": -1.0, "max_val": 1.0})
    assert hard.pieces(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])).tolist() == [0, 0, 1, 2, 2]
    assert Activation("relu6").pieces(torch.tensor([0.0, 3.0, 6.0])).tolist() == [0, 1, 2]


@pytest.mark.parametrize("activation", list(PIECEWISE))
def test_ellipse_transitions_match_brute_force(activation):
    net = make_net(activation)
    x = torch.randn(5, 6) * 2
    partners = torch.randn(5, 2, 6) * 2
    k = 40
    got = transition_counts(net, x, partners=partners, k=k, chunk_size=2)
    with torch.no_grad():
        expected = [
            brute_transitions(net, brute_ellipse(x[i], partners[i, 0], partners[i, 1], k))
            for i in range(5)
        ]
    assert got.tolist() == expected
    assert max(expected) > 0


@pytest.mark.parametrize("activation", ["relu", "hard_tanh"])
def test_first_layer_crossings_match_the_sampled_codes(activation):
    # One hidden layer: counted from the exact crossing angles alone, never sampled. Weights
    # this large make hard_tanh units jump over the middle piece between two samples, which
    # is one unit changing piece, not two.
    net = make_net(activation, d=4, widths=(9,))
    with torch.no_grad():
        net[0].weight.mul_(400)
    x, partners, k = torch.randn(6, 4), torch.randn(6, 2, 4), 24
    got = transition_counts(net, x, partners=partners, k=k)
    ellipses = [brute_ellipse(x[i], partners[i, 0], partners[i, 1], k) for i in range(6)]
    with torch.no_grad():
        assert got.tolist() == [brute_transitions(net, e) for e in ellipses]
    if activation == "hard_tanh":
        pieces = codes(net, torch.stack(ellipses[0] + ellipses[1]).view(2, k, 4).flatten(0, 1)).view(2, k, 9)
        assert ((pieces - pieces.roll(-1, dims=1)).abs() == 2).any()


def test_circle_transitions_match_brute_force():
    net = make_net("relu")
    x = torch.randn(4, 6)
    got = transition_counts(
        net, x, trajectory="circle", radius=2.0, k=32, generator=torch.Generator().manual_seed(5)
    )
    planes = random_planes(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(planes @ planes.transpose(-1, -2), torch.eye(2).expand(4, 2, 2))
    with torch.no_grad():
        expected = []
        for i in range(4):
            u, v = planes[i]
            # through x: centred one radius from it along u
            circle = [x[i] + 2.0 * (u * (math.cos(2 * math.pi * j / 32) - 1) + v * math.sin(2 * math.pi * j / 32))
                      for j in range(32)]
            expected.append(brute_transitions(net, circle))
    assert got.tolist() == expected


def test_pool_draws_are_reproducible_chunk_invariant_and_avoid_x():
    net = make_net("relu")
    pool = torch.randn(4, 6)
    x = pool[:3]  # every point is in the pool: partners must still differ from it
    a = transition_counts(net, x, pool=pool, generator=torch.Generator().manual_seed(11), k=64)
    b = transition_counts(net, x, pool=pool, generator=torch.Generator().manual_seed(11), k=64, chunk_size=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, transition_counts(net, x, pool=pool, generator=torch.Generator().manual_seed(12), k=64))
    for trial in range(20):
        partners = draw_partners(x, pool, torch.Generator().manual_seed(trial))
        assert not (partners == x.unsqueeze(1)).all(-1).any()
        assert not (partners[:, 0] == partners[:, 1]).all(-1).any()


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_smooth_activations_give_nan_never_zero(activation):
    net = make_net(activation)
    x = torch.randn(4, 6)
    counts = transition_counts(net, x, partners=torch.randn(4, 2, 6))
    assert counts.shape == (4,) and counts.isnan().all()
    with pytest.raises(ValueError, match="piecewise-linear"):
        codes(net, x)


def test_population_equals_per_model():
    nets = [make_net("hard_tanh", seed=s) for s in range(3)]
    pop = stack(nets)
    x, partners = torch.randn(6, 6), torch.randn(6, 2, 6)
    shared = transition_counts(pop, x, partners=partners, k=48)
    assert shared.shape == (3, 6)
    assert torch.equal(codes(pop, x)[1], codes(nets[1], x))
    xm, pm = torch.randn(3, 6, 6), torch.randn(3, 6, 2, 6)
    separate = transition_counts(pop, xm, partners=pm, k=48, chunk_size=4)
    for m, net in enumerate(nets):
        assert torch.equal(shared[m], transition_counts(net, x, partners=partners, k=48))
        assert torch.equal(separate[m], transition_counts(net, xm[m], partners=pm[m], k=48))


def test_non_finite_network_gives_nan():
    net = make_net("relu")
    with torch.no_grad():
        net[2].weight[0, 0] = float("inf")
    counts = transition_counts(net, torch.randn(3, 6), partners=torch.randn(3, 2, 6), k=16)
    assert counts.isnan().all()
    assert (codes(net, torch.randn(3, 6))[:, 7] == -1).all()


def test_argument_errors():
    net = make_net("relu")
    x = torch.randn(3, 6)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="exactly one of partners= or pool="):
        transition_counts(net, x)
    with pytest.raises(ValueError, match="generator="):
        transition_counts(net, x, pool=torch.randn(5, 6))
    with pytest.raises(ValueError, match="positive radius"):
        transition_counts(net, x, trajectory="circle", generator=gen)
    with pytest.raises(ValueError, match=r"partners must be \[3, 2, 6\]"):
        transition_counts(net, x, partners=torch.randn(3, 6))
    with pytest.raises(ValueError, match=r"pool must be \[P, 6\]"):
        transition_counts(net, x, pool=torch.randn(5, 7), generator=gen)
    with pytest.raises(ValueError, match="k >= 2"):
        transition_counts(net, x, partners=torch.randn(3, 2, 6), k=1)
    with pytest.raises(ValueError, match="trajectory must be"):
        transition_counts(net, x, trajectory="line", partners=torch.randn(3, 2, 6))
    with pytest.raises(ValueError, match="layers must be 'all' or 'last', got 'first'"):
        codes(net, x, layers="first")
