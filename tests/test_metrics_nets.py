"""Networks, populations and activations: conversion, validation, derivatives."""

import pytest
import torch
from torch import nn

from metrics_core import MLP, Activation, as_mlp, forward, stack, unstack

MODULES = [
    nn.ReLU(),
    nn.LeakyReLU(0.2),
    nn.Hardtanh(-2.0, 0.5),
    nn.ReLU6(),
    nn.Tanh(),
    nn.Sigmoid(),
]


def make_net(activation=nn.ReLU, seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6, bias=bias), activation(), nn.Linear(6, 5), activation(), nn.Linear(5, 3))


@pytest.mark.parametrize("module", MODULES, ids=lambda m: type(m).__name__)
def test_activation_round_trip_and_forward(module):
    act = Activation.from_module(module)
    h = torch.linspace(-8, 8, 101)
    torch.testing.assert_close(act.forward(h), module(h))
    torch.testing.assert_close(act.module()(h), module(h))
    assert Activation.from_module(act.module()) == act


def test_activation_names_params_and_errors():
    assert Activation.from_module(nn.ReLU6()).name == "relu6"  # not hard_tanh, its base class
    assert Activation("leaky_relu").params_dict == {"negative_slope": 0.01}
    assert Activation("leaky_relu", {"negative_slope": 0.2}) == Activation("leaky_relu", (("negative_slope", 0.2),))
    assert len({Activation("relu"), Activation("relu")}) == 1
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        Activation("gelu")
    with pytest.raises(ValueError, match="unknown"):
        Activation("relu", {"negative_slope": 0.1})
    with pytest.raises(ValueError, match="min_val < max_val"):
        Activation("hard_tanh", {"min_val": 1.0, "max_val": -1.0})
    with pytest.raises(ValueError, match="GELU"):
        Activation.from_module(nn.GELU())
    assert not Activation("tanh").piecewise_linear and Activation("relu6").num_pieces == 3


@pytest.mark.parametrize("module", MODULES, ids=lambda m: type(m).__name__)
def test_derivative_matches_float64_reference_where_saturated(module):
    act = Activation.from_module(module)
    h32 = torch.linspace(-40, 40, 2001)
    h64 = h32.double()
    if act.name == "tanh":  # float64 autograd's 1 − tanh² is itself 0 beyond |h| ≈ 19
        reference = torch.cosh(h64) ** -2
    elif act.name == "sigmoid":
        reference = torch.exp(h64) / (1 + torch.exp(h64)) ** 2
    else:
        (reference,) = torch.autograd.grad(module(h64.requires_grad_()).sum(), h64)
    got = act.derivative(h32).double()
    nonzero = reference > 0
    rel = ((got - reference).abs() / reference)[nonzero]
    assert rel.max() < 1e-5, f"relative error {rel.max():.3g}"
    assert torch.equal(got[~nonzero], reference[~nonzero])


def test_as_mlp_stack_unstack_round_trip():
    nets = [make_net(seed=s) for s in range(3)] + [make_net(seed=3, bias=False)]
    pop = stack(nets)
    assert pop.num_models == 4 and pop.hidden_sizes == (6, 5) and pop.input_dim == 4 and pop.num_classes == 3
    x = torch.randn(7, 4)
    logits = forward(pop, x, chunk_size=3)
    assert logits.shape == (4, 7, 3)
    with torch.no_grad():
        for m, (net, back) in enumerate(zip(nets, unstack(pop))):
            torch.testing.assert_close(logits[m], net(x))
            torch.testing.assert_close(back(x), net(x))
            torch.testing.assert_close(forward(net, x), net(x))
    per_model = torch.randn(4, 7, 4)
    with torch.no_grad():
        torch.testing.assert_close(forward(pop, per_model)[2], nets[2](per_model[2]))
    mlp = as_mlp(nets[0])
    assert mlp.weights[0].data_ptr() == nets[0][0].weight.data_ptr()  # no copy
    assert as_mlp(mlp) is mlp and stack([pop, nets[0]]).num_models == 5


def test_unsupported_networks_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="Conv2d"):
        as_mlp(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="Dropout"):
        as_mlp(nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="same activation"):
        as_mlp(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="at least one hidden layer"):
        as_mlp(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="first module"):
        as_mlp(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="nn.Sequential or an MLP"):
        as_mlp(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="same-shape"):
        stack([make_net(), nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 3))])
    with pytest.raises(ValueError, match="same-shape"):
        stack([make_net(), make_net(nn.Tanh)])


def test_mlp_validation():
    w = (torch.randn(2, 5, 4), torch.randn(2, 3, 5))
    b = (torch.randn(2, 5), torch.randn(2, 3))
    relu = Activation("relu")
    assert MLP(list(w), list(b), relu).weights == w  # lists from a checkpoint become tuples
    with pytest.raises(ValueError, match=r"weights\[1\] must be \[2, out, 5\]"):
        MLP((w[0], torch.randn(2, 3, 6)), b, relu)
    with pytest.raises(ValueError, match=r"biases\[0\] must be \[2, 5\]"):
        MLP(w, (torch.randn(2, 4), b[1]), relu)
    with pytest.raises(ValueError, match="float64"):
        MLP((w[0], w[1].double()), b, relu)
    with pytest.raises(TypeError, match="Activation"):
        MLP(w, b, "relu")
