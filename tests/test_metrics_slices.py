"""Slice maps against brute-force region numbering and boundary loops."""

import pytest
import torch
from torch import nn

from metrics_core import codes, slice_codes, stack


def make_net(activation=nn.ReLU, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), activation(), nn.Linear(10, 8), activation(), nn.Linear(8, 3))


def brute_regions(net, points, layers):
    """Region ids by first appearance of each distinct code, with a dict."""
    seen, ids = {}, []
    for code in codes(net, points, layers=layers).tolist():
        ids.append(seen.setdefault(tuple(code), len(seen)))
    return ids


@pytest.mark.parametrize("layers", ["last", "all"])
@pytest.mark.parametrize("activation", [nn.ReLU, nn.Hardtanh])
def test_regions_and_boundaries_match_brute_force(layers, activation):
    net = make_net(activation)
    a, b, c = torch.randn(3, 6) * 2
    g = 14
    result = slice_codes(net, a, b, c, grid=g, layers=layers, chunk_size=17)
    assert result.region.shape == result.boundary.shape == (g, g)
    assert result.region.dtype == torch.int32 and result.boundary.dtype == torch.bool
    u_min, u_max, v_min, v_max = result.extent.tolist()
    us, vs = torch.linspace(u_min, u_max, g, dtype=torch.float64), torch.linspace(v_min, v_max, g, dtype=torch.float64)
    points = torch.stack(
        [result.origin + us[j] * result.basis[0] + vs[i] * result.basis[1] for i in range(g) for j in range(g)]
    ).float()
    expected = brute_regions(net, points, layers)
    assert result.region.flatten().tolist() == expected
    assert max(expected) > 0
    region = result.region.tolist()
    for i in range(g):
        for j in range(g):
            edge = (j + 1 < g and region[i][j] != region[i][j + 1]) or (i + 1 < g and region[i][j] != region[i + 1][j])
            assert bool(result.boundary[i, j]) == edge


def test_anchors_map_back_and_sit_inside_the_extent():
    net = make_net()
    a, b, c = torch.randn(3, 6, dtype=torch.float64)
    result = slice_codes(net.double(), a, b, c, grid=8, margin=0.5)
    uv = result.anchors.view(3, 2)
    for (u, v), point in zip(uv, (a, b, c)):
        torch.testing.assert_close(result.origin + u * result.basis[0] + v * result.basis[1], point)
    u_min, u_max, v_min, v_max = result.extent.tolist()
    assert (u_min < uv[:, 0]).all() and (uv[:, 0] < u_max).all()
    assert (v_min < uv[:, 1]).all() and (uv[:, 1] < v_max).all()
    assert u_max - u_min == pytest.approx(v_max - v_min)  # square pixels
    torch.testing.assert_close(result.basis @ result.basis.T, torch.eye(2, dtype=torch.float64))


def test_all_layers_refine_the_last_and_population_matches():
    nets = [make_net(seed=s) for s in range(2)]
    a, b, c = torch.randn(3, 6) * 2
    pop_last = slice_codes(stack(nets), a, b, c, grid=20)
    pop_all = slice_codes(stack(nets), a, b, c, grid=20, layers="all")
    assert pop_last.region.shape == (2, 20, 20)
    for m, net in enumerate(nets):
        assert torch.equal(pop_last.region[m], slice_codes(net, a, b, c, grid=20).region)
        # Pixels in one all-layer region share their last-layer region.
        pairs = set(zip(pop_all.region[m].flatten().tolist(), pop_last.region[m].flatten().tolist()))
        assert len({r for r, _ in pairs}) == len(pairs)


def test_errors():
    a, b, c = torch.randn(3, 6)
    with pytest.raises(ValueError, match="piecewise-linear"):
        slice_codes(make_net(nn.Tanh), a, b, c)
    with pytest.raises(ValueError, match="collinear"):
        slice_codes(make_net(), a, b, 2 * b - a)
    with pytest.raises(ValueError, match="one input point of 6 values"):
        slice_codes(make_net(), a, b, torch.randn(7))


def test_region_ids_by_first_appearance_survive_key_collisions():
    from metrics_core.slices import _MIX, first_appearance_ids

    def numbered(rows):
        seen = {}
        return [seen.setdefault(tuple(r), len(seen)) for r in rows.tolist()]

    g = torch.Generator().manual_seed(0)
    for width in (1, 3, 16):
        rows = torch.randint(-(2**62), 2**62, (40, width), generator=g)[torch.randint(40, (500,), generator=g)]
        assert first_appearance_ids(rows).tolist() == numbered(rows)
    # (5, 7) and (6, 7 − mix) fold into the same key: distinct rows must still get distinct ids.
    colliding = torch.tensor([[5, 7], [6, 7 - _MIX], [5, 7], [6, 7 - _MIX], [1, 1]])
    assert first_appearance_ids(colliding).tolist() == [0, 1, 0, 1, 2]
