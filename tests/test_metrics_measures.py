"""Jiang et al.'s measures against independent references: float64 loops over nn.Sequential
copies, numpy norms and percentiles, and a per-network bisection in plain Python."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import metrics_core as mc
from metrics_core.measures import MAGNITUDE_EPS, SIGMA_RANGE


def make_net(seed: int, d: int = 6, width: int = 8, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, classes))


def data(n: int = 60, d: int = 6, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, torch.randint(classes, (n,), generator=g)


def trained(seed: int, x, y, steps: int = 200) -> nn.Sequential:
    net = make_net(seed)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def test_distance_from_init_is_the_parameter_distance():
    nets = [make_net(s) for s in range(3)]
    moved = [copy.deepcopy(n) for n in nets]
    with torch.no_grad():
        for i, net in enumerate(moved):
            for p in net.parameters():
                p.add_(0.1 * (i + 1))
    expected = [math.sqrt(sum(((a.double() - b.double()) ** 2).sum().item()
                              for a, b in zip(m.parameters(), n.parameters()))) for m, n in zip(moved, nets)]
    got = mc.distance_from_init(mc.stack(moved), mc.stack(nets))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert float(mc.distance_from_init(nets[0], nets[0])) == 0.0


def test_margin_normalized_products_match_numpy():
    x, y = data()
    nets = [trained(s, x, y) for s in range(2)]
    got_spectral = mc.spectral_margin(mc.stack(nets), x, y)
    got_frobenius = mc.frobenius_margin(mc.stack(nets), x, y)
    for i, net in enumerate(nets):
        with torch.no_grad():
            logits = copy.deepcopy(net).double()(x.double()).numpy()
        true = logits[np.arange(len(y)), y.numpy()]
        other = np.where(np.eye(3, dtype=bool)[y.numpy()], -np.inf, logits).max(1)
        gamma = np.quantile(true - other, 0.1)
        assert gamma > 0
        ws = [m.weight.detach().numpy() for m in net if isinstance(m, nn.Linear)]
        spectral = sum(2 * np.log(np.linalg.norm(w, 2)) for w in ws) - 2 * np.log(gamma)
        frobenius = sum(2 * np.log(np.linalg.norm(w)) for w in ws) - 2 * np.log(gamma)
        assert float(got_spectral[i]) == pytest.approx(spectral, rel=1e-4)
        assert float(got_frobenius[i]) == pytest.approx(frobenius, rel=1e-4)
    # Labels the network gets wrong: no positive margin at the 10th percentile, so NaN.
    with torch.no_grad():
        wrong = (nets[0](x).argmax(1) + 1) % 3
    assert float(mc.margin_quantile(nets[0], x, wrong)) < 0
    assert math.isnan(float(mc.spectral_margin(nets[0], x, wrong)))


def reference_sigma(net: nn.Sequential, x, y, draws, magnitude_aware: bool, samples: int, depth: int,
                    target: float) -> float:
    """One network: bisection of log σ in float64 with the same noise draws (draws[step][sample]
    is the list of its parameters' standard-normal noise)."""
    params = [p.detach().double() for p in net.parameters()]

    def accuracy(values):
        h = x.double()
        for i, (w, b) in enumerate(zip(values[0::2], values[1::2])):
            h = h @ w.T + b
            if i < len(values) // 2 - 1:
                h = h.clamp_min(0)
        return (h.argmax(1) == y).double().mean().item()

    base = accuracy(params)
    low, high = math.log(SIGMA_RANGE[0]), math.log(SIGMA_RANGE[1])
    for step in range(depth):
        sigma = math.exp((low + high) / 2)
        drop = 0.0
        for sample in range(samples):
            noisy = [p + ((sigma**2 * p**2 + MAGNITUDE_EPS**2).sqrt() if magnitude_aware else sigma) * e.double()
                     for p, e in zip(params, draws[step][sample])]
            drop += base - accuracy(noisy)
        if drop / samples <= target:
            low = (low + high) / 2
        else:
            high = (low + high) / 2
    return math.exp(low)


@pytest.mark.parametrize("magnitude_aware,scale", [(False, 1.0), (True, 1.0), (True, 0.03)])
def test_pacbayes_sigma_matches_a_per_network_bisection(magnitude_aware, scale):
    x, y = data()
    nets = [trained(s, x, y, steps=100 + 100 * s) for s in range(3)]
    with torch.no_grad():  # the same functions (ReLU is positively homogeneous), with first-layer
        for net in nets:   # weights where the magnitude-aware noise's floor ε counts (scale 0.03)
            net[0].weight.mul_(scale), net[0].bias.mul_(scale), net[2].weight.div_(scale)
    population = mc.stack(nets)
    samples, depth, target = 4, 8, 0.1
    got = mc.pacbayes_sigma(population, x, y, generator=torch.Generator().manual_seed(7),
                            magnitude_aware=magnitude_aware, samples=samples, depth=depth, target=target)
    # The same draws, in the documented order: per step and sample, one [M, P] draw over every
    # model's parameters, layer by layer, weights then bias.
    g = torch.Generator().manual_seed(7)
    shapes = [t.shape[1:] for pair in zip(population.weights, population.biases) for t in pair]
    sizes = [math.prod(s) for s in shapes]
    draws = [[torch.randn((len(nets), sum(sizes)), generator=g) for _ in range(samples)] for _ in range(depth)]
    for m, net in enumerate(nets):
        mine = [[[part.view(shape) for part, shape in zip(sample[m].split(sizes), shapes)] for sample in step]
                for step in draws]
        expected = reference_sigma(net, x, y, mine, magnitude_aware, samples, depth, target)
        assert float(got[m]) == pytest.approx(expected, rel=1e-5)
    assert (got > SIGMA_RANGE[0]).all()  # trained nets tolerate some noise
    flatness = mc.pacbayes_mag_flatness if magnitude_aware else mc.pacbayes_sharpness
    again = flatness(population, x, y, generator=torch.Generator().manual_seed(7), samples=samples, depth=depth)
    np.testing.assert_allclose(again.numpy(), 1 / got.numpy() ** 2, rtol=1e-5)
    with pytest.raises(ValueError, match="0 < target < 1"):
        mc.pacbayes_sigma(population, x, y, generator=g, target=0.0)
