"""Jacobian norms against float64 torch.func.jacrev with a carefully formed softmax Jacobian."""

import copy
import gzip

import numpy as np
import pytest
import torch
from torch import nn

from metrics_core import MLP, as_mlp, jacobian_norms, stack

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "hard_tanh": nn.Hardtanh,
    "relu6": nn.ReLU6,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
# (input, hidden widths, classes): Gram route (d > h1) and direct route (d <= h1), depths 1-3.
SHAPES = [(24, (16,), 5), (12, (20, 16), 4), (30, (12, 12, 10), 10), (8, (8, 6), 3)]


def make_net(d, widths, classes, activation, seed=0):
    torch.manual_seed(seed)
    layers, fan_in = [], d
    for width in widths:
        layers += [nn.Linear(fan_in, width), ACTIVATIONS[activation]()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, classes))


def reference_norms(net, x):
    """(softmax, logit) Jacobian norms in float64: jacrev of the logits, then the softmax
    Jacobian diag(p) − ppᵀ with its diagonal formed as p_c·Σ_{j≠c} p_j."""
    net64 = copy.deepcopy(net).double()
    x64 = x.to(torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(net64))(x64).flatten(2)  # [N, C, d]
    logits = net64(x64)
    p = torch.softmax(logits, -1)
    c = p.shape[-1]
    eye = torch.eye(c, dtype=torch.bool)
    off_mass = p.unsqueeze(-2).expand(-1, c, c).masked_fill(eye, 0).sum(-1)
    a = -p.unsqueeze(-1) * p.unsqueeze(-2)
    a = torch.where(eye, (p * off_mass).unsqueeze(-1).expand(-1, c, c), a)
    return (a @ jac).flatten(1).norm(dim=1), jac.flatten(1).norm(dim=1)


def assert_relative(actual, expected, tol):
    rel = ((actual.double() - expected) / expected).abs()
    assert rel.max() < tol, f"max relative error {rel.max():.3g} > {tol}"


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}-{'x'.join(map(str, s[1]))}-{s[2]}")
def test_float32_matches_float64_reference(activation, shape):
    d, widths, classes = shape
    net = make_net(d, widths, classes, activation)
    x = torch.randn(33, d) * 2
    soft_ref, logit_ref = reference_norms(net, x)
    soft, logit = jacobian_norms(net, x, "both")
    assert soft.shape == logit.shape == (33,)
    assert soft.dtype == torch.float32
    assert_relative(soft, soft_ref, 1e-4)
    assert_relative(logit, logit_ref, 1e-4)
    assert torch.equal(jacobian_norms(net, x, "softmax"), soft)
    assert torch.equal(jacobian_norms(net, x, "logits"), logit)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_float64_route_agrees_to_rounding(activation):
    net = make_net(20, (16, 12), 6, activation).double()
    x = torch.randn(10, 20, dtype=torch.float64)
    soft_ref, logit_ref = reference_norms(net, x)
    soft, logit = jacobian_norms(net, x, "both")
    assert_relative(soft, soft_ref, 1e-11)
    assert_relative(logit, logit_ref, 1e-11)


def saturated_net(activation, d=16, widths=(64, 64), classes=10, n=20, seed=1):
    """A net whose last layer is fitted so that each point's true class has logit 0 and the
    others lie 27.6 … 62 below it, from point to point: p_c = 1 − O(1e-12) down to
    off-class probabilities of 1e-27."""
    net = make_net(d, widths, classes, activation, seed).double()
    gen = torch.Generator().manual_seed(seed)
    # Larger inputs and hidden weights spread the features out (sigmoid ones otherwise
    # crowd around 0.5), so the fit needs no huge weights.
    x = 3 * torch.randn(n, d, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        for layer in net[2:-1:2]:
            layer.weight.mul_(3)
    features = net[:-1](x)
    floor = torch.linspace(27.6, 60.0, n, dtype=torch.float64).unsqueeze(1)
    gaps = floor + 2 * torch.rand(n, classes, dtype=torch.float64, generator=gen)
    labels = torch.arange(n) % classes
    targets = -gaps
    targets[torch.arange(n), labels] = 0.0
    design = torch.cat([features, torch.ones(n, 1, dtype=torch.float64)], 1)
    # Exact fit (n < width); a wide last layer keeps the weights, and so the float32 logit
    # rounding that bounds any float32 method's accuracy, moderate.
    solution = torch.linalg.lstsq(design, targets).solution
    with torch.no_grad():
        net[-1].weight.copy_(solution[:-1].T)
        net[-1].bias.copy_(solution[-1])
    return net.float(), x.float()


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_saturated_softmax_down_to_1e25(activation):
    net, x = saturated_net(activation)
    soft_ref, logit_ref = reference_norms(net, x)
    assert soft_ref.min() < 1e-23 and soft_ref.max() < 1e-9, "the test must reach the saturated regime"
    soft, logit = jacobian_norms(net, x, "both")
    assert_relative(soft, soft_ref, 1e-4)
    assert_relative(logit, logit_ref, 1e-4)
    # Plain float32 autograd through softmax is what this guards against.
    naive = torch.func.vmap(torch.func.jacrev(lambda z: torch.softmax(net(z), -1)))(x)
    naive_error = ((naive.flatten(1).norm(dim=1).double() - soft_ref) / soft_ref).abs()
    assert naive_error.max() > 1e-2


def test_trained_on_real_digits_then_saturated(shared_data):
    with gzip.open(shared_data / "sklearn-digits" / "digits.csv.gz", "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    x = torch.tensor(data[:, :64] / 16.0, dtype=torch.float32)
    y = torch.tensor(data[:, 64], dtype=torch.long)
    net = make_net(64, (32, 32), 10, "relu", seed=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        top2 = net(x).topk(2, dim=1).values
        gap = top2[:, 0] - top2[:, 1]
        # Memorization-like saturation: scale the last layer so the typical point's
        # runner-up probability is e^-40; keep points whose true norm float32 can hold.
        scale = 40.0 / gap.median()
        net[-1].weight.mul_(scale)
        net[-1].bias.mul_(scale)
        points = x[(scale * gap < 60) & (net(x).argmax(1) == y)][:300]
    assert len(points) >= 100
    soft_ref, logit_ref = reference_norms(net, points)
    assert soft_ref.min() < 1e-20 and soft_ref.median() < 1e-12
    soft, logit = jacobian_norms(net, points, "both")
    assert_relative(soft, soft_ref, 1e-4)
    assert_relative(logit, logit_ref, 1e-4)


@pytest.mark.parametrize("shape", [(20, (32,), 10), (24, (16, 12), 5), (8, (8, 6), 3)],
                         ids=["gram-route", "gram-route-deep", "direct-route"])
def test_rows_with_a_large_common_part_stay_exact(shape):
    # Every logit also moves along one direction 100 times larger than the rows' differences
    # (the softmax ignores it): the float32 Gram of the raw rows loses the differences.
    d, widths, classes = shape
    nets = [make_net(d, widths, classes, "leaky_relu", seed=s) for s in range(3)]  # (no point with J = 0)
    with torch.no_grad():
        for net in nets:
            last = net[-1].weight
            common = torch.randn(last.shape[1])
            last += 100 * last.norm(dim=1).mean() * common / common.norm()
    x = torch.randn(40, d)
    soft, logit = jacobian_norms(stack(nets), x, "both")
    for i, net in enumerate(nets):
        expected_soft, expected_logit = reference_norms(net, x)
        assert_relative(soft[i], expected_soft, 1e-5)
        assert_relative(logit[i], expected_logit, 1e-5)


@pytest.mark.parametrize("hidden", [(12, 10), (12,), (24,)])  # one hidden layer: both routes
def test_population_equals_per_model_and_chunking(hidden):
    nets = [make_net(20, hidden, 5, "relu", seed=s) for s in range(3)]
    pop = stack(nets)
    x = torch.randn(17, 20)
    shared = jacobian_norms(pop, x, "both")
    per_model_x = torch.randn(3, 17, 20)
    separate = jacobian_norms(pop, per_model_x, "softmax", chunk_size=4)
    assert shared[0].shape == (3, 17)
    for m, net in enumerate(nets):
        soft, logit = jacobian_norms(net, x, "both")
        torch.testing.assert_close(shared[0][m], soft, rtol=1e-5, atol=0)
        torch.testing.assert_close(shared[1][m], logit, rtol=1e-5, atol=0)
        torch.testing.assert_close(separate[m], jacobian_norms(net, per_model_x[m]), rtol=1e-5, atol=0)
    chunked = jacobian_norms(pop, x, "both", chunk_size=5)
    torch.testing.assert_close(chunked[0], shared[0], rtol=1e-6, atol=0)


def test_flatten_images_and_single_model_mlp():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    images = torch.randn(5, 1, 4, 4)
    torch.testing.assert_close(jacobian_norms(net, images), jacobian_norms(net[1:], images.flatten(1)))
    assert jacobian_norms(as_mlp(net), images.flatten(1)).shape == (1, 5)


def test_non_finite_weights_give_nan_not_zero():
    net = make_net(10, (8,), 3, "relu")
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    soft, logit = jacobian_norms(net, torch.randn(4, 10), "both")
    assert soft.isnan().all() and logit.isnan().all()


def test_errors_name_the_problem():
    net = make_net(10, (8,), 3, "relu")
    with pytest.raises(ValueError, match=r"x must be \[N, 10\]"):
        jacobian_norms(net, torch.randn(4, 11))
    with pytest.raises(ValueError, match="float64"):
        jacobian_norms(net, torch.randn(4, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="output must be one of"):
        jacobian_norms(net, torch.randn(4, 10), "probabilities")
    with pytest.raises(ValueError, match=r"\[N, C, H, W\] images"):
        jacobian_norms(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(2, 2)), torch.randn(1, 2))
    with pytest.raises(ValueError, match="unsupported module Dropout"):
        jacobian_norms(nn.Sequential(nn.Linear(10, 4), nn.Dropout(), nn.Linear(4, 2)), torch.randn(1, 10))
    pop = stack([net, net])
    with pytest.raises(ValueError, match=r"\[2, N, 10\]"):
        jacobian_norms(pop, torch.randn(3, 4, 10))
    with pytest.raises(ValueError, match="chunk_size"):
        jacobian_norms(net, torch.randn(4, 10), chunk_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    net = make_net(30, (16, 16), 10, "relu")
    x = torch.randn(50, 30)
    cpu = jacobian_norms(net, x, "both")
    gpu = jacobian_norms(net.cuda(), x.cuda(), "both")
    assert gpu[0].device.type == "cuda"
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-4, atol=0)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-4, atol=0)
    assert isinstance(as_mlp(net.cuda()), MLP)
