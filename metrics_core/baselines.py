"""Baseline measures from the weights and outputs: parameter count, weight norms, the
spectral-norm product, the path norm and output margins. Results are [M] per model for an
MLP and 0-dimensional for an nn.Sequential; biases enter only the parameter count."""

from __future__ import annotations

import torch
from torch import Tensor

from .nets import MLP, Net, as_mlp, batch, chunks, preactivations


def _per_model(net: Net, values: Tensor) -> Tensor:
    return values if isinstance(net, MLP) else values.squeeze(0)


@torch.no_grad()
def param_count(net: Net) -> Tensor:
    """Weights and biases per network (int64)."""
    mlp = as_mlp(net)
    count = sum(w[0].numel() + b[0].numel() for w, b in zip(mlp.weights, mlp.biases))
    return _per_model(net, torch.full((mlp.num_models,), count, dtype=torch.int64))


@torch.no_grad()
def weight_norm_sq(net: Net) -> Tensor:
    """Σ_l ‖W_l‖²_F over the weight matrices."""
    mlp = as_mlp(net)
    return _per_model(net, sum(w.square().sum((1, 2)) for w in mlp.weights))


@torch.no_grad()
def spectral_product(net: Net) -> Tensor:
    """Π_l ‖W_l‖₂ (largest singular values); NaN for a network with non-finite weights."""
    mlp = as_mlp(net)
    product = torch.ones(mlp.num_models, dtype=mlp.dtype, device=mlp.device)
    finite = torch.ones(mlp.num_models, dtype=torch.bool, device=mlp.device)
    for w in mlp.weights:
        ok = torch.isfinite(w).all(-1).all(-1)
        # LAPACK's SVD fails on non-finite input; those networks get NaN instead.
        product *= torch.linalg.matrix_norm(torch.where(ok[:, None, None], w, 0), ord=2)
        finite &= ok
    return _per_model(net, product.masked_fill(~finite, float("nan")))


@torch.no_grad()
def path_norm(net: Net) -> Tensor:
    """sqrt(Σ over input→output paths of Π w²) = sqrt(1ᵀ|W_L|²…|W_1|² 1), biases excluded
    (the ℓ2 path norm of Neyshabur et al. 2015), accumulated in float64."""
    mlp = as_mlp(net)
    v = torch.ones(mlp.num_models, mlp.input_dim, 1, dtype=torch.float64, device=mlp.device)
    for w in mlp.weights:
        v = torch.bmm(w.double().square(), v)
    return _per_model(net, v.sum((1, 2)).sqrt().to(mlp.dtype))


@torch.no_grad()
def margin(net: Net, x: Tensor, y: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """True-class logit minus the largest other logit per point ([N] or [M, N]); negative
    where the point is misclassified. y: int labels [N] (or [M, N] per model)."""
    b = batch(net, x)
    mlp = b.mlp
    if y.device != mlp.device or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"y must be int64 labels on {mlp.device}, got {y.dtype} on {y.device}")
    n = b.num_points
    if tuple(y.shape) not in ((n,), (mlp.num_models, n)):
        raise ValueError(f"y must be [{n}] or [{mlp.num_models}, {n}] labels, got {tuple(y.shape)}")
    if n and not (0 <= int(y.min()) and int(y.max()) < mlp.num_classes):
        raise ValueError(f"labels must lie in [0, {mlp.num_classes}), got {int(y.min())}..{int(y.max())}")
    labels = y.long().expand(mlp.num_models, n)
    out = x.new_empty(mlp.num_models, n)
    per_point = mlp.num_models * (max(mlp.hidden_sizes) + mlp.num_classes)
    for start, stop in chunks(n, chunk_size, per_point, mlp.device):
        logits = preactivations(mlp, b.rows(start, stop))[1]
        label = labels[:, start:stop].unsqueeze(-1)
        true = logits.gather(-1, label).squeeze(-1)
        other = logits.scatter(-1, label, float("-inf")).amax(-1)
        out[:, start:stop] = true - other
    return b.output(out)
