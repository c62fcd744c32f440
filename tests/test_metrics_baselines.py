"""Baseline measures against loops over layers, numpy SVDs and path enumeration."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from metrics_core import margin, param_count, path_norm, spectral_product, stack, weight_norm_sq


def make_net(seed=0, d=3, widths=(4, 4), classes=2):
    torch.manual_seed(seed)
    layers, fan_in = [], d
    for width in widths:
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, classes))


def linears(net):
    return [m for m in net if isinstance(m, nn.Linear)]


def test_weight_measures_match_references():
    net = make_net()
    ws = [m.weight.detach().double().numpy() for m in linears(net)]
    assert int(param_count(net)) == sum(p.numel() for p in net.parameters())
    bias_free = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3))
    assert int(param_count(bias_free)) == 6 * 5 + 5 * 3 + 3  # a missing bias is no parameter
    assert float(weight_norm_sq(net)) == pytest.approx(sum((w**2).sum() for w in ws), rel=1e-6)
    assert float(spectral_product(net)) == pytest.approx(np.prod([np.linalg.norm(w, 2) for w in ws]), rel=1e-5)
    total = 0.0
    for i, j, k, c in itertools.product(range(3), range(4), range(4), range(2)):
        total += (ws[0][j, i] * ws[1][k, j] * ws[2][c, k]) ** 2
    assert float(path_norm(net)) == pytest.approx(math.sqrt(total), rel=1e-6)


def test_population_results_per_model():
    nets = [make_net(seed=s, d=5, widths=(6,), classes=3) for s in range(3)]
    pop = stack(nets)
    for fn in (param_count, weight_norm_sq, spectral_product, path_norm):
        values = fn(pop)
        assert values.shape == (3,)
        for m, net in enumerate(nets):
            assert float(values[m]) == pytest.approx(float(fn(net)), rel=1e-6)


def test_margin_matches_loop():
    nets = [make_net(seed=s) for s in range(2)]
    x, y = torch.randn(9, 3), torch.randint(0, 2, (9,))
    got = margin(stack(nets), x, y, chunk_size=4)
    assert got.shape == (2, 9)
    with torch.no_grad():
        for m, net in enumerate(nets):
            logits = net(x)
            for i in range(9):
                others = [logits[i, c] for c in range(2) if c != y[i]]
                assert float(got[m, i]) == pytest.approx(float(logits[i, y[i]] - max(others)), abs=1e-6)
    per_model_labels = torch.stack([y, 1 - y])
    flipped = margin(stack(nets), x, per_model_labels)
    torch.testing.assert_close(flipped[1], -got[1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        margin(nets[0], x, y + 5)


def test_non_finite_weights_give_nan_without_crashing():
    good, bad = make_net(seed=0), make_net(seed=1)
    with torch.no_grad():
        linears(bad)[1].weight[0, 0] = float("nan")
    pop = stack([good, bad])
    spectral = spectral_product(pop)
    assert torch.isfinite(spectral[0]) and spectral[1].isnan()
    assert weight_norm_sq(pop)[1].isnan() and path_norm(pop)[1].isnan()
    assert margin(pop, torch.randn(4, 3), torch.zeros(4, dtype=torch.long))[1].isnan().all()
