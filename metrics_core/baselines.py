"""Baseline measures from the weights and outputs: parameter count, weight norms, the
spectral-norm product, the path norm and output margins. Results are [M] per model for an
MLP or ConvNet and 0-dimensional for an nn.Sequential; biases enter only the parameter count.
A convolution's spectral norm is that of the linear operator it applies to its input (zero
padding and stride included), found by Lanczos iteration, not the norm of its reshaped kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import Activation
from .convnets import Act, Conv, ConvNet, Dense, Norm, conv
from .nets import MLP, Net, Population, as_population, batch, chunks, logit_floats, logits_of
from .precision import exact

LANCZOS_STEPS = 2000  # at most; stops once every estimate changes by under LANCZOS_TOLERANCE (relative)
LANCZOS_CHECK = 10  # steps between estimates
LANCZOS_TOLERANCE = 1e-13


def _per_model(net: Net, values: Tensor) -> Tensor:
    return values if isinstance(net, MLP | ConvNet) else values.squeeze(0)


@exact
def param_count(net: Net) -> Tensor:
    """Weights and biases per network (int64): an nn.Module's own parameters (a layer without
    a bias adds none); a population's every weight, bias and batch-norm scale and shift, as the
    sweep's networks have them."""
    if isinstance(net, nn.Module):  # any module, convolutional too: its count needs no input shape
        return torch.tensor(sum(p.numel() for p in net.parameters()), dtype=torch.int64)
    count = sum(t[0].numel() for t in net.parameters())
    return torch.full((net.num_models,), count, dtype=torch.int64)


@exact
def weight_norm_sq(net: Net) -> Tensor:
    """Σ_l ‖W_l‖²_F over the weight matrices and convolution kernels (a batch norm right after
    a convolution folded into its kernel, as Jiang et al. 2020 do before every measure)."""
    return _per_model(net, sum(w.square().flatten(1).sum(1) for w in as_population(net).weights))


@exact
def operator_norms(net: Population) -> Tensor:
    """‖W_l‖₂ [L, M] of every weight layer: the largest singular value of a weight matrix, or
    of the linear operator a convolution applies to its input (a batch norm after it folded in,
    as for every weight measure); NaN for non-finite weights."""
    if isinstance(net, MLP):
        layers: list[tuple[Tensor, Conv | None, tuple]] = [(w, None, ()) for w in net.weights]
    else:  # each weight layer with its input's shape (a convolution's operator depends on it)
        net = net.folded()
        inputs = [net.input_shape, *net.shapes()]
        layers = [(layer.weight, layer if isinstance(layer, Conv) else None, inputs[i])
                  for i, layer in enumerate(net.layers) if isinstance(layer, Conv | Dense)]
    norms = []
    for w, conv_layer, input_shape in layers:
        ok = torch.isfinite(w).flatten(1).all(1)
        # LAPACK's SVD fails on non-finite input; those networks get NaN instead.
        safe = torch.where(ok.view(-1, *[1] * (w.dim() - 1)), w, 0)
        if conv_layer is None:
            norm = torch.linalg.matrix_norm(safe, ord=2)
        else:
            norm = conv_operator_norm(Conv(safe, None, conv_layer.stride, conv_layer.padding), input_shape)
        norms.append(norm.masked_fill(~ok, float("nan")))
    return torch.stack(norms)


def conv_operator_norm(layer: Conv, input_shape: tuple[int, int, int]) -> Tensor:
    """‖A‖₂ [M] of each member's convolution A (bias excluded) on inputs of `input_shape`: the
    square root of AᵀA's largest eigenvalue, by Lanczos in float64 from a fixed start (AᵀA is
    the transposed convolution of A's output). On large feature maps the top singular values
    crowd together, where power iteration would stop short (2.5e-4 below after 1000 steps on
    16×16 maps); Lanczos's largest Ritz value converges there in a few hundred steps, and never
    exceeds the eigenvalue (lost orthogonality only repeats converged values). Raises where an
    estimate is still moving after LANCZOS_STEPS."""
    m = layer.weight.shape[0]
    weight = layer.weight.double()
    operator = Conv(weight, None, layer.stride, layer.padding)
    c, h, w = input_shape
    flat_weight = weight.flatten(0, 1)
    k, stride, padding = weight.shape[-1], layer.stride, layer.padding
    # A strided convolution's output does not say how many input rows it skipped at the end.
    extra = tuple(size - ((size + 2 * padding - k) // stride * stride + k - 2 * padding) for size in (h, w))

    def gram(v: Tensor) -> Tensor:  # AᵀA v, members side by side: [m, c·h·w]
        u = conv(operator, v.view(1, m * c, h, w), bias=False)
        return F.conv_transpose2d(u, flat_weight, stride=stride, padding=padding, output_padding=extra,
                                  groups=m).view(m, -1)

    generator = torch.Generator(device=weight.device).manual_seed(0)
    q = torch.randn(m, c * h * w, dtype=torch.float64, device=weight.device, generator=generator)
    q = q / q.norm(dim=1, keepdim=True)
    previous = torch.zeros_like(q)
    alphas, betas = [], [torch.zeros(m, dtype=torch.float64, device=weight.device)]
    top = torch.zeros(m, dtype=torch.float64, device=weight.device)
    done = torch.zeros(m, dtype=torch.bool, device=weight.device)
    for step in range(1, LANCZOS_STEPS + 1):
        r = gram(q)
        alphas.append((r * q).sum(1))
        r = r - alphas[-1][:, None] * q - betas[-1][:, None] * previous
        betas.append(r.norm(dim=1))
        # A Krylov space that AᵀA maps into itself (a small operator) holds its top eigenvalue.
        exhausted = betas[-1] <= LANCZOS_TOLERANCE * alphas[0].abs().clamp_min(1e-300)
        if step % LANCZOS_CHECK == 0 or (exhausted & ~done).any() or step == LANCZOS_STEPS:
            off = torch.stack(betas[1:-1], 1) if step > 1 else alphas[0].new_zeros(m, 0)
            tridiagonal = torch.diag_embed(torch.stack(alphas, 1)) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
            estimate = torch.linalg.eigvalsh(tridiagonal)[:, -1]
            settled = (estimate - top).abs() <= LANCZOS_TOLERANCE * estimate.abs()
            top = torch.where(done, top, estimate)
            done |= settled | exhausted
            if done.all():
                break
        previous, q = q, r / betas[-1].clamp_min(1e-300)[:, None]
    if not done.all():
        raise RuntimeError(f"the spectral norm of a convolution on {input_shape} inputs did not settle in "
                           f"{LANCZOS_STEPS} Lanczos steps")
    return top.clamp_min(0).sqrt().to(layer.weight.dtype)


@exact
def spectral_product(net: Net) -> Tensor:
    """Π_l ‖W_l‖₂ over the weight layers (`operator_norms`); NaN for a network with
    non-finite weights."""
    return _per_model(net, operator_norms(as_population(net)).prod(0))


@exact
def path_norm(net: Net) -> Tensor:
    """sqrt(Σ over input→output paths of Π w²), biases excluded (the ℓ2 path norm of Neyshabur
    et al. 2015), accumulated in float64: the network with every parameter squared, no biases
    and no activation run on an input of ones (Jiang et al. 2020's f_{w²}(1)). For an MLP that
    is sqrt(1ᵀ|W_L|²…|W_1|² 1). A ConvNet squares a Norm layer's scale and keeps its pools, which
    hold no parameters, as they are (as Jiang et al. evaluate it): a max-pool takes its window's
    largest path sum, and an average pool's 1/s² weights stay unsquared, so with average pools
    this is Jiang's measure, not the sum over paths."""
    population = as_population(net)
    if isinstance(population, MLP):
        v = torch.ones(population.num_models, population.input_dim, 1, dtype=torch.float64, device=population.device)
        for w in population.weights:
            v = torch.bmm(w.double().square(), v)
        return _per_model(net, v.sum((1, 2)).sqrt().to(population.dtype))
    ones = torch.ones(1, population.input_dim, dtype=torch.float64, device=population.device)
    # Every value is >= 0, where the activation (a ReLU here) is the identity.
    relu = ConvNet(tuple(_squared(layer) for layer in population.layers), Activation("relu"), population.input_shape)
    return _per_model(net, logits_of(relu, ones).sum((1, 2)).sqrt().to(population.dtype))


def _squared(layer):
    if isinstance(layer, Conv):
        return Conv(layer.weight.double().square(), None, layer.stride, layer.padding)
    if isinstance(layer, Dense):
        return Dense(layer.weight.double().square(), torch.zeros_like(layer.bias, dtype=torch.float64))
    if isinstance(layer, Norm):
        return Norm(layer.scale.double().square(), torch.zeros_like(layer.shift, dtype=torch.float64))
    return Act() if isinstance(layer, Act) else layer


@exact
def margin(net: Net, x: Tensor, y: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """True-class logit minus the largest other logit per point ([N] or [M, N]); negative
    where the point is misclassified. y: int labels [N] (or [M, N] per model)."""
    b = batch(net, x)
    mlp = b.net
    if y.device != mlp.device or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"y must be int64 labels on {mlp.device}, got {y.dtype} on {y.device}")
    n = b.num_points
    if tuple(y.shape) not in ((n,), (mlp.num_models, n)):
        raise ValueError(f"y must be [{n}] or [{mlp.num_models}, {n}] labels, got {tuple(y.shape)}")
    if n and not (0 <= int(y.min()) and int(y.max()) < mlp.num_classes):
        raise ValueError(f"labels must lie in [0, {mlp.num_classes}), got {int(y.min())}..{int(y.max())}")
    labels = y.long().expand(mlp.num_models, n)
    out = x.new_empty(mlp.num_models, n)
    for start, stop in chunks(n, chunk_size, logit_floats(mlp), mlp.device):
        logits = logits_of(mlp, b.rows(start, stop))
        label = labels[:, start:stop].unsqueeze(-1)
        true = logits.gather(-1, label).squeeze(-1)
        other = logits.scatter(-1, label, float("-inf")).amax(-1)
        out[:, start:stop] = true - other
    return b.output(out)
