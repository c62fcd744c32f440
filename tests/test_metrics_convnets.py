"""Convolutional populations against independent references: each member run alone as an
nn.Sequential, float64 jacrev for Jacobian norms, a module-by-module walk for codes and
transitions, and the dense matrix of each convolution for its spectral norm."""

import copy
import math

import pytest
import torch
from torch import nn
from test_metrics_jacobian import assert_relative, reference_norms
from test_metrics_regions import brute_ellipse

from metrics_core import (codes, distance_from_init, jacobian_norms, margin, pacbayes_sigma, param_count, path_norm,
                          slice_codes, spectral_product, trajectory_profile, transition_counts, weight_norm_sq)
from metrics_core.baselines import operator_norms
from metrics_core.convnets import ConvNet, as_convnet, run, stack_convnets, unstack_convnet

SHAPE = (3, 8, 8)


def vgg(activation=nn.ReLU, norm=False, seed=0, classes=5):
    """conv–act–maxpool blocks, then flatten and a linear head."""
    torch.manual_seed(seed)
    extra = (lambda c: [nn.BatchNorm2d(c)]) if norm else (lambda c: [])
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=not norm), *extra(4), activation(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, bias=not norm), *extra(6), activation(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 7), activation(), nn.Linear(7, classes))
    if norm:
        for module in net:
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def nin(activation=nn.ReLU, seed=0, classes=5):
    """conv + 1×1 conv blocks, a strided conv and an average pool between stages, a 1×1 conv
    to the classes and a global average pool."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), activation(), nn.Conv2d(5, 5, 1), activation(),
        nn.Conv2d(5, 5, 3, stride=2, padding=1), activation(), nn.AvgPool2d(2),
        nn.Conv2d(5, 6, 3, padding=1), activation(), nn.Conv2d(6, classes, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


class OnePoint(nn.Module):
    """A network that also takes one image [C, H, W] (as vmap hands it over)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, z):
        return self.net(z) if z.dim() == 4 else self.net(z.unsqueeze(0)).squeeze(0)


FAMILIES = {"vgg": vgg, "vgg-bn": lambda **kw: vgg(norm=True, **kw), "nin": nin}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_population_forward_equals_each_network_alone(family):
    nets = [FAMILIES[family](seed=s).double() for s in range(3)]
    population = stack_convnets(nets, SHAPE)
    x = torch.randn(4, *SHAPE, dtype=torch.float64)
    logits, _ = run(population, x)
    per_member, _ = run(population, x.expand(3, *x.shape))
    with torch.no_grad():
        expected = torch.stack([net(x) for net in nets])
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(per_member, expected, rtol=1e-12, atol=1e-12)
    again = stack_convnets(unstack_convnet(population), SHAPE)
    torch.testing.assert_close(run(again, x)[0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("activation", [nn.ReLU, nn.Hardtanh, nn.Tanh])
def test_jacobian_norms_match_float64_jacrev(family, activation):
    nets = [FAMILIES[family](activation=activation, seed=s) for s in range(2)]
    population = stack_convnets(nets, SHAPE)
    x = torch.randn(6, *SHAPE) * 2
    soft, logit = jacobian_norms(population, x, "both", chunk_size=4)
    for member, net in enumerate(nets):
        soft_ref, logit_ref = reference_norms(OnePoint(net), x)
        assert_relative(soft[member], soft_ref, 1e-4)
        assert_relative(logit[member], logit_ref, 1e-4)
    alone = jacobian_norms(nets[1], x, "logits")
    torch.testing.assert_close(alone, logit[1], rtol=1e-5, atol=0)


def test_jacobian_norms_stay_exact_where_the_softmax_saturates():
    net = vgg(seed=3)
    with torch.no_grad():  # class 0 leads by ~40 logits: 1 − p₀ ≈ 1e-17, 0 in float32
        net[-1].bias[0] += 40.0
    x = torch.randn(5, *SHAPE)
    soft_ref, logit_ref = reference_norms(OnePoint(net), x)
    assert soft_ref.max() < 1e-12, "the test must reach the saturated regime"
    soft, logit = jacobian_norms(as_convnet(net, SHAPE), x, "both")
    assert_relative(soft[0], soft_ref, 1e-4)
    assert_relative(logit[0], logit_ref, 1e-4)


@pytest.mark.parametrize("activation, bias", [(nn.Tanh, 11.0), (nn.Sigmoid, 20.0), (nn.Tanh, 7.0)])
def test_jacobian_norms_stay_exact_where_smooth_units_saturate(activation, bias):
    # Every first-layer unit sits where autograd's 1 − tanh² (s(1 − s)) is 0 in float32 (or has
    # lost most of its digits, at 7): the norms are small but not 0.
    nets = [nin(activation=activation, seed=s) for s in range(2)]
    for net in nets:
        with torch.no_grad():
            net[0].weight.mul_(0.1)
            net[0].bias.fill_(bias)
    x = torch.randn(4, *SHAPE)
    soft, logit = jacobian_norms(stack_convnets(nets, SHAPE), x, "both")
    for member, net in enumerate(nets):
        soft_ref, logit_ref = reference_norms(OnePoint(net), x)
        assert logit_ref.min() > 0
        assert_relative(soft[member], soft_ref, 1e-4)
        assert_relative(logit[member], logit_ref, 1e-4)


def test_run_composes_with_torch_func_transforms_for_smooth_units():
    # The saturation-safe tanh derivative is a custom autograd function: vmap, jacrev, jacfwd and
    # hessian still go through it (STYLE: transforms compose).
    net = nin(activation=nn.Tanh, seed=1).double()
    population = as_convnet(net, SHAPE)
    x = torch.randn(3, math.prod(SHAPE), dtype=torch.float64)

    def logits(point):
        return run(population, point.reshape(1, *SHAPE))[0][0, 0]

    reference = torch.stack([torch.autograd.functional.jacobian(lambda p: net(p.reshape(1, *SHAPE))[0], point)
                             for point in x])
    torch.testing.assert_close(torch.func.vmap(torch.func.jacrev(logits))(x), reference)
    torch.testing.assert_close(torch.func.jacfwd(logits)(x[0]), reference[0])
    hessian = torch.func.hessian(lambda point: logits(point)[0])(x[0])
    expected = torch.autograd.functional.hessian(lambda point: net(point.reshape(1, *SHAPE))[0, 0], x[0])
    torch.testing.assert_close(hessian, expected)


def test_jacobian_norms_stay_exact_where_every_logit_shares_a_large_part():
    # The head's rows share a direction 100 times their differences, which the softmax ignores.
    nets = [vgg(activation=lambda: nn.LeakyReLU(0.1), seed=s) for s in range(2)]
    with torch.no_grad():
        for net in nets:
            last = net[-1].weight
            last += 100 * last.norm(dim=1).mean() * torch.nn.functional.normalize(torch.randn(last.shape[1]), dim=0)
    x = torch.randn(6, *SHAPE)
    soft, logit = jacobian_norms(stack_convnets(nets, SHAPE), x, "both")
    for member, net in enumerate(nets):
        soft_ref, logit_ref = reference_norms(OnePoint(net), x)
        assert_relative(soft[member], soft_ref, 1e-5)
        assert_relative(logit[member], logit_ref, 1e-5)


def brute_parts(net, point):
    """Every activated unit's piece and every max-pool window's first argmax, module by module
    (a ReLU's output is > 0 exactly where its input is; a hard-tanh's is at a bound exactly
    where its input is at or past it): one (module, code) part per activation and max-pool."""
    parts, a = [], point.unsqueeze(0)
    for module in net:
        if isinstance(module, nn.MaxPool2d):
            k, code = module.kernel_size, []
            _, c, h, w = a.shape
            for channel in range(c):
                for row in range(0, h - h % k, k):
                    for col in range(0, w - w % k, k):
                        window = a[0, channel, row:row + k, col:col + k].reshape(-1).tolist()
                        code.append(window.index(max(window)))
            parts.append((module, code))
        a = module(a)
        if isinstance(module, nn.Hardtanh):
            parts.append((module, [0 if v <= module.min_val else 2 if v >= module.max_val else 1
                                   for v in a.flatten().tolist()]))
        elif isinstance(module, nn.ReLU):
            parts.append((module, [1 if v > 0 else 0 for v in a.flatten().tolist()]))
    return parts


def brute_code(net, point, layers="all"):
    """The code of every layer, or of the last activated one and the max-pools after it."""
    parts = brute_parts(net, point)
    if layers == "last":
        last = max(i for i, (module, _) in enumerate(parts) if not isinstance(module, nn.MaxPool2d))
        parts = parts[last:]
    return [piece for _, code in parts for piece in code]


def pooled_last(pools=(2, 2), seed=0, classes=5):
    """conv–ReLU–max-pool blocks straight into the linear head: the last hidden layer's code
    holds the last pool's choices."""
    torch.manual_seed(seed)
    side = SHAPE[1] // pools[0] // pools[1]
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(pools[0]),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(pools[1]),
        nn.Flatten(), nn.Linear(6 * side * side, classes)).eval()


def test_codes_hold_every_unit_and_max_pool_choice():
    net = vgg(seed=1).double()
    population = as_convnet(net, SHAPE)
    x = torch.randn(3, *SHAPE, dtype=torch.float64)
    _, parts = run(population, x, codes=True)
    code = torch.cat(parts, -1)[0]
    assert code.shape[-1] == population.code_width()
    with torch.no_grad():
        expected = [brute_code(net, p) for p in x]
    assert code.tolist() == expected


def test_codes_refuse_max_pools_whose_choices_do_not_fit_a_byte():
    # 11×11 (121 positions) fits an int8; 12×12 would wrap to negative choices, read as non-finite
    for size in (11, 12):
        net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(size), nn.Flatten(),
                            nn.Linear(2, 3))
        x = torch.randn(4, 1, size, size)
        if size == 11:
            assert (codes(net, x) >= 0).all()
            continue
        with pytest.raises(ValueError, match="max-pool windows of at most 11×11"):
            codes(net, x)
        jacobian_norms(net, x)  # the norms need no code


@pytest.mark.parametrize("family", ["vgg", "nin", "pool3"])
def test_ellipse_transitions_match_brute_force(family):
    # 3×3 max-pools choose among 9: codes past 3 differ in a byte's upper bits only
    make = {**FAMILIES, "pool3": lambda seed: pooled_last(pools=(3, 2), seed=seed)}[family]
    nets = [make(seed=s).double() for s in range(2)]
    population = stack_convnets(nets, SHAPE)
    x = torch.randn(3, *SHAPE, dtype=torch.float64)
    partners = torch.randn(3, 2, *SHAPE, dtype=torch.float64)
    k = 24
    got = transition_counts(population, x, partners=partners, k=k, chunk_size=2)
    for member, net in enumerate(nets):
        with torch.no_grad():
            expected = []
            for i in range(3):
                points = brute_ellipse(x[i], partners[i, 0], partners[i, 1], k)
                codes = [brute_code(net, z) for z in points]
                expected.append(sum(sum(p != q for p, q in zip(codes[j], codes[(j + 1) % k])) for j in range(k)))
        assert got[member].tolist() == expected
        assert min(expected) > 0


@pytest.mark.parametrize("make", [vgg, pooled_last])
def test_last_layer_codes_and_slices_hold_the_max_pools_after_it(make):
    nets = [make(seed=s) for s in range(2)]
    population = stack_convnets(nets, SHAPE)
    x = torch.randn(4, *SHAPE)
    got = codes(population, x, layers="last")
    with torch.no_grad():
        for member, net in enumerate(nets):
            assert got[member].tolist() == [brute_code(net, p, "last") for p in x]
    assert_slice_regions_follow_the_codes(population, nets, *(torch.randn(*SHAPE) for _ in range(3)), "last")


def assert_slice_regions_follow_the_codes(population, nets, a, b, c, layers):
    """Each pixel's region id is the order in which its brute-force code first appears."""
    grid = 9
    sliced = slice_codes(population, a, b, c, grid=grid, layers=layers)
    origin, basis = sliced.origin.float(), sliced.basis.float()
    u = torch.linspace(float(sliced.extent[0]), float(sliced.extent[1]), grid)
    v = torch.linspace(float(sliced.extent[2]), float(sliced.extent[3]), grid)
    pixels = torch.stack([origin + uu * basis[0] + vv * basis[1] for vv in v for uu in u])
    for member, net in enumerate(nets):
        with torch.no_grad():
            found = [tuple(brute_code(net, p.view(SHAPE), layers)) for p in pixels]
        ids = {}
        assert sliced.region[member].flatten().tolist() == [ids.setdefault(code, len(ids)) for code in found]
        assert len(ids) > 1


def test_layer_list_errors_name_the_problem():
    net = as_convnet(vgg(), SHAPE)
    with pytest.raises(ValueError, match="input_shape"):
        as_convnet(vgg())
    with pytest.raises(ValueError, match="eval mode"):
        as_convnet(vgg(norm=True).train(), SHAPE)
    with pytest.raises(ValueError, match="empty feature map"):
        ConvNet(net.layers, net.activation, (3, 2, 2))
    with pytest.raises(ValueError, match=r"must be \[N, 3, 8, 8\]"):
        jacobian_norms(net, torch.randn(4, 3, 7, 7))
    with pytest.raises(ValueError, match="same-shape"):
        stack_convnets([vgg(), copy.deepcopy(nin())], SHAPE)
    with pytest.raises(ValueError, match="divisor_override is not supported"):
        as_convnet(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.AvgPool2d(2, divisor_override=3), nn.Flatten(),
                                 nn.Linear(2 * 3 * 3, 4)), SHAPE)



def dense_operator(conv, input_shape):
    """The matrix of a convolution (no bias) on inputs of `input_shape`, column by column."""
    basis = torch.eye(math.prod(input_shape), dtype=torch.float64).view(-1, *input_shape)
    with torch.no_grad():
        return torch.nn.functional.conv2d(basis, conv.weight.double(), None, conv.stride, conv.padding).flatten(1).T


def folded(net):
    """A copy with each BatchNorm2d folded into the convolution before it, as Jiang et al.'s
    code rewrites a network before measuring its weights."""
    layers = []
    for module in copy.deepcopy(net):
        if isinstance(module, nn.BatchNorm2d):
            conv_, scale = layers.pop(), module.weight / (module.running_var + module.eps).sqrt()
            bias = conv_.bias if conv_.bias is not None else torch.zeros_like(module.bias)
            fused = nn.Conv2d(conv_.in_channels, conv_.out_channels, conv_.kernel_size, conv_.stride, conv_.padding)
            with torch.no_grad():
                fused.weight.copy_(conv_.weight * scale[:, None, None, None])
                fused.bias.copy_(module.bias + scale * (bias - module.running_mean))
            layers.append(fused)
        else:
            layers.append(module)
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("family", ["vgg", "vgg-bn", "nin"])
def test_weight_baselines_match_references(family):
    nets = [FAMILIES[family](seed=s) for s in range(2)]
    population = stack_convnets(nets, SHAPE)
    norms = operator_norms(population)
    for member, original in enumerate(nets):
        params = [p for p in original.parameters()]
        assert param_count(population)[member] == param_count(original) == sum(p.numel() for p in params)
        net = folded(original)
        weights = [m.weight for m in net if isinstance(m, nn.Conv2d | nn.Linear)]
        torch.testing.assert_close(weight_norm_sq(population)[member], sum(w.square().sum() for w in weights))
        shape, expected = SHAPE, []
        for module in net:
            if isinstance(module, nn.Conv2d):
                expected.append(torch.linalg.matrix_norm(dense_operator(module, shape), ord=2))
            elif isinstance(module, nn.Linear):
                expected.append(torch.linalg.matrix_norm(module.weight.double(), ord=2))
            with torch.no_grad():
                shape = module(torch.zeros(1, *shape)).shape[1:] if len(shape) == 3 else shape
        torch.testing.assert_close(norms[:, member].double(), torch.stack(expected), rtol=1e-5, atol=0)
        torch.testing.assert_close(spectral_product(population)[member].double(), torch.stack(expected).prod(),
                                   rtol=1e-4, atol=0)


def test_conv_spectral_norms_of_diverged_and_zero_members():
    nets = [vgg(seed=s) for s in range(3)]
    with torch.no_grad():
        nets[1][0].weight[0, 0, 0, 0] = float("nan")  # diverged
        nets[2][0].weight.zero_()  # its operator is 0: the Krylov space ends at once
    norms = operator_norms(stack_convnets(nets, SHAPE))
    assert torch.isfinite(norms[:, 0]).all() and norms[0, 1].isnan() and norms[0, 2] == 0
    torch.testing.assert_close(norms[1:, 1:], operator_norms(stack_convnets(nets[1:], SHAPE))[1:])


@pytest.mark.parametrize("channels,stride,shape", [((3, 16), 1, (3, 32, 32)), ((16, 16), 2, (16, 16, 16))])
def test_conv_spectral_norms_on_large_maps_match_arpack(channels, stride, shape):
    # Large maps crowd the top singular values (within 1e-7 of each other here), where power
    # iteration stopped up to 2.5e-4 short. The reference: ARPACK's Lanczos on AᵀA, its adjoint
    # from autograd.
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    from metrics_core.baselines import conv_operator_norm
    from metrics_core.convnets import Conv

    torch.manual_seed(1)
    bound = 1 / math.sqrt(channels[0] * 9)
    weight = torch.empty(2, channels[1], channels[0], 3, 3, dtype=torch.float64).uniform_(-bound, bound)
    got = conv_operator_norm(Conv(weight, None, stride, 1), shape)
    for member in range(2):
        def gram(v, w=weight[member]):
            x = torch.from_numpy(np.asarray(v).reshape(1, *shape)).requires_grad_()
            y = torch.nn.functional.conv2d(x, w, None, stride, 1)
            return torch.autograd.grad(y, x, y)[0].numpy().ravel()

        size = math.prod(shape)
        top = eigsh(LinearOperator((size, size), matvec=gram, dtype=np.float64), k=1, which="LA", tol=1e-14,
                    return_eigenvectors=False)[0]
        assert got[member].item() == pytest.approx(math.sqrt(top), rel=1e-11)


def test_path_norm_is_jiangs_squared_network_at_ones():
    net = nin(seed=2)
    squared = copy.deepcopy(net).double()
    with torch.no_grad():
        for module in squared:
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.weight.square_()
                module.bias.zero_()
        # Jiang et al.'s f_{w²}(1): every parameter squared, the pools (no parameters) as they are.
        expected = squared(torch.ones(1, *SHAPE, dtype=torch.float64)).sum().sqrt()
    torch.testing.assert_close(path_norm(as_convnet(net, SHAPE))[0].double(), expected, rtol=1e-6, atol=0)


def test_output_measures_equal_each_member_alone():
    nets = [FAMILIES["vgg-bn"](seed=s) for s in range(3)]
    inits = [FAMILIES["vgg-bn"](seed=10 + s) for s in range(3)]
    population, start = stack_convnets(nets, SHAPE), stack_convnets(inits, SHAPE)
    x, y = torch.randn(40, *SHAPE), torch.randint(0, 5, (40,))
    got = margin(population, x, y)
    for member, net in enumerate(nets):
        with torch.no_grad():
            logits = net(x)
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        torch.testing.assert_close(got[member], true - other, rtol=1e-5, atol=1e-5)
        distance = sum((p - q).square().sum() for p, q in zip(population.select([member]).parameters(),
                                                               start.select([member]).parameters()))
        torch.testing.assert_close(distance_from_init(population, start)[member], distance.sqrt())
    generators = lambda: [torch.Generator().manual_seed(s) for s in range(3)]  # noqa: E731
    together = pacbayes_sigma(population, x, y, generator=generators(), samples=2, depth=4)
    for member in range(3):
        alone = pacbayes_sigma(population.select([member]), x, y, generator=generators()[member:member + 1],
                               samples=2, depth=4)
        torch.testing.assert_close(together[member:member + 1], alone)


def test_profiles_and_slices_follow_the_codes_and_norms_at_each_point():
    nets = [vgg(seed=s) for s in range(2)]
    population = stack_convnets(nets, SHAPE)
    a, b, c = (torch.randn(*SHAPE) for _ in range(3))
    z = torch.stack([torch.stack(brute_ellipse(a.flatten(), b.flatten(), c.flatten(), 12))])  # [1, 12, d]
    norms, density = trajectory_profile(population, z)
    expected_norms = jacobian_norms(population, z[0])
    torch.testing.assert_close(norms[:, 0], expected_norms, rtol=1e-5, atol=0)
    for member, net in enumerate(nets):
        with torch.no_grad():
            codes = [brute_code(net, p.view(SHAPE)) for p in z[0]]
        expected = [sum(p != q for p, q in zip(codes[i], codes[(i + 1) % 12])) for i in range(12)]
        assert density[member, 0].tolist() == expected
    assert_slice_regions_follow_the_codes(population, nets, a, b, c, "all")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    nets = [FAMILIES["vgg-bn"](seed=s) for s in range(3)]
    population = stack_convnets(nets, SHAPE)
    x, partners = torch.randn(20, *SHAPE), torch.randn(20, 2, *SHAPE)
    on_card = population.to("cuda")
    torch.testing.assert_close(jacobian_norms(on_card, x.cuda(), "both")[0].cpu(),
                               jacobian_norms(population, x, "both")[0], rtol=1e-4, atol=0)
    counts = transition_counts(on_card, x.cuda(), partners=partners.cuda(), k=32).cpu()
    # Rounding may move a unit across a threshold between two samples: at most a few changes.
    assert (counts - transition_counts(population, x, partners=partners, k=32)).abs().max() <= 4
    torch.testing.assert_close(spectral_product(on_card).cpu(), spectral_product(population), rtol=1e-5, atol=0)
