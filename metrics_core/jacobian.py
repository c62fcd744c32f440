"""Exact input-output Jacobian norms of fully-connected nets, batched over points and models.

Route (see docs/performance.md): the forward pass records D_l = σ'(h_l); the backward chain
G = W_L D_{L-1} W_{L-1} … D_1 is formed for all points of a chunk as one batched matmul per
layer; the per-point Gram matrix of the Jacobian's rows is G (W₁W₁ᵀ) Gᵀ when the input is wider
than the first hidden layer (never forming the C×d Jacobian), else J Jᵀ with J = G W₁. Both
norms follow from it: ‖J‖² = tr J Jᵀ and ‖A J‖² = Σ_i p_i² r_iᵀ (J Jᵀ) r_i for the softmax
Jacobian A = diag(p) − ppᵀ, whose row i is p_i·r_i with r_i = e_i − p.

The rows are centred first: the Gram is that of the C rows less their mean j̄, and of j̄ (the
"centred Gram", [C+1, C+1]). A annihilates a part common to all rows (r_i sums to 0), so the
softmax norm needs the centred rows only, and ‖J‖² = Σ_c ‖J_c − j̄‖² + C‖j̄‖² adds non-negative
terms. Without centring, a large common part (a direction every logit moves along: SGD on the
cross-entropy keeps the last layer's mean row, Adam and RMSprop can grow it) would cancel inside
r_iᵀ K r_i, and float32's error would grow with its square.

Convolutional networks (`ConvNet`) take the generic exact route: the C rows of J from C
vector-Jacobian products, batched over classes, points and models in one backward pass after
one forward pass, then the same K and the same softmax factor.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .convnets import ConvNet, run
from .nets import MLP, Net, batch, chunks, preactivations
from .precision import exact, float32_precision

Output = Literal["softmax", "logits", "both"]
_OUTPUTS = ("softmax", "logits", "both")


@float32_precision()
def softmax_jacobian_norm(logit_gram: Tensor, logits: Tensor) -> Tensor:
    """‖(diag(p) − ppᵀ) J‖_F from K = J Jᵀ [..., C, C] and the logits [..., C].

    Exact where the softmax saturates: the diagonal of r_i is Σ_{j≠i} p_j (not 1 − p_i, which
    is 0 in float32 once p_i > 1 − 6e-8), each r_i is scaled by its largest entry before the
    quadratic form, and rows are combined by a max-scaled sum, so no value of the size of the
    result (down to ~1e-30) is ever squared.
    """
    p = torch.softmax(logits, dim=-1)
    c = p.shape[-1]
    eye = torch.eye(c, dtype=torch.bool, device=p.device)
    others = p.unsqueeze(-2).expand(*p.shape, c).masked_fill(eye, 0)  # row i: p_j for j ≠ i
    off_diagonal_mass = others.sum(-1)
    # r_i = e_i·Σ_{j≠i} p_j − others_i; probabilities are >= 0, so its largest entry in size is
    # the larger of the diagonal and the largest other p_j.
    scale = torch.maximum(off_diagonal_mass, others.amax(-1)).unsqueeze(-1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    r_hat = others.div_(-safe)
    r_hat.diagonal(dim1=-2, dim2=-1).copy_(off_diagonal_mass / safe.squeeze(-1))
    quad = ((r_hat @ logit_gram) * r_hat).sum(-1).clamp_min(0)
    row_norms = p * scale.squeeze(-1) * quad.sqrt()
    top = row_norms.amax(-1, keepdim=True)
    relative = row_norms / torch.where(top > 0, top, torch.ones_like(top))
    return top.squeeze(-1) * relative.square().sum(-1).sqrt()


def uses_gram(mlp: MLP) -> bool:
    """Per point, G W₁W₁ᵀ Gᵀ costs ~C·h₁² and (G W₁)(G W₁)ᵀ ~C·h₁·d: take the smaller."""
    return mlp.input_dim > mlp.hidden_sizes[0]


def backward_chain(mlp: MLP, hidden: list[Tensor]) -> Tensor:
    """G = ∂logits/∂h₁ for every point: [M, n, C, h₁], from the hidden pre-activations."""
    m, n = hidden[0].shape[:2]
    act = mlp.activation
    g = mlp.weights[-1].unsqueeze(1) * act.derivative(hidden[-1]).unsqueeze(2)
    for layer in range(len(hidden) - 1, 0, -1):
        w = mlp.weights[layer]
        g = torch.bmm(g.reshape(m, -1, w.shape[1]), w).view(m, n, -1, w.shape[2])
        g.mul_(act.derivative(hidden[layer - 1]).unsqueeze(2))
    return g


def centred_rows(rows: Tensor) -> Tensor:
    """[..., C+1, h]: the C rows [..., C, h] less their mean, then the mean; written into one new
    tensor, so no more than the rows and it are alive at once."""
    c = rows.shape[-2]
    out = rows.new_empty(*rows.shape[:-2], c + 1, rows.shape[-1])
    mean = out[..., c:, :]
    torch.mean(rows, dim=-2, keepdim=True, out=mean)
    torch.sub(rows, mean, out=out[..., :c, :])
    return out


def logit_gram(mlp: MLP, hidden: list[Tensor], first_gram: Tensor | None) -> Tensor:
    """The centred Gram of J per point (see the module's docstring), [M, n, C+1, C+1];
    `first_gram` is W₁W₁ᵀ [M, h₁, h₁] on the Gram route."""
    g = centred_rows(backward_chain(mlp, hidden))
    m, n, c, h = g.shape
    flat = g.view(m, n * c, h)
    if first_gram is not None:
        left = torch.bmm(flat, first_gram).view(m, n, c, h)
        return left @ g.transpose(-1, -2)
    jac = torch.bmm(flat, mlp.weights[0]).view(m, n, c, -1)
    return jac @ jac.transpose(-1, -2)


def jacobian_floats(mlp: MLP) -> int:
    """Floats held per point while its Jacobian norms are computed (for chunk sizing)."""
    widest = max(mlp.hidden_sizes) if uses_gram(mlp) else max(*mlp.hidden_sizes, mlp.input_dim)
    return 2 * mlp.num_models * (mlp.num_classes + 1) * widest


def first_layer_gram(mlp: MLP) -> Tensor | None:
    """W₁W₁ᵀ [M, h₁, h₁] on the Gram route (see `uses_gram`), else None."""
    if not uses_gram(mlp):
        return None
    w1 = mlp.weights[0]
    return torch.bmm(w1, w1.transpose(1, 2))


def norms_from_gram(gram: Tensor, logits: Tensor, output: Output) -> tuple[Tensor | None, Tensor | None]:
    """(softmax, logit) Jacobian norms from the centred Gram [..., C+1, C+1] and the logits
    [..., C]; None where not asked for."""
    c = gram.shape[-1] - 1
    centred = gram[..., :c, :c]
    logit = None
    if output != "softmax":
        logit = (centred.diagonal(dim1=-2, dim2=-1).sum(-1) + c * gram[..., c, c]).clamp_min(0).sqrt()
    soft = softmax_jacobian_norm(centred, logits) if output != "logits" else None
    return soft, logit


@exact
def jacobian_norms(
    net: Net, x: Tensor, output: Output = "softmax", *, chunk_size: int | None = None
) -> Tensor | tuple[Tensor, Tensor]:
    """‖∂f_σ(x)/∂x‖_F (output="softmax") or ‖∂f(x)/∂x‖_F of the logits ("logits") per point;
    "both" returns (softmax, logits) from one pass.

    x: [N, d] for an nn.Sequential (results [N]); [N, d] shared or [M, N, d] for an MLP
    (results [M, N]); images as `conv_batch` takes them for a convolutional network.
    `chunk_size` bounds the points processed at once (memory ~ 2·chunk_size·M·(C+1)·h floats
    for an MLP, ~ 3·chunk_size·M·C·(all activations) for a ConvNet).
    """
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
    b = batch(net, x)
    net = b.net
    if isinstance(net, ConvNet):
        # The largest intermediate: the batched backward's C cotangents of the widest layer (the
        # forward's activations, M per layer, are C times smaller), as `jacobian_floats` counts.
        per_point = 2 * net.num_models * net.num_classes * net.widest()

        def gram_and_logits(rows: Tensor) -> tuple[Tensor, Tensor]:
            return conv_logit_gram(net, rows)
    else:
        first_gram, per_point = first_layer_gram(net), jacobian_floats(net)

        def gram_and_logits(rows: Tensor) -> tuple[Tensor, Tensor]:
            hidden, logits = preactivations(net, rows)
            return logit_gram(net, hidden, first_gram), logits
    shape = (net.num_models, b.num_points)
    soft, logit = x.new_empty(shape), x.new_empty(shape)
    for start, stop in chunks(b.num_points, chunk_size, per_point, net.device):
        soft_part, logit_part = norms_from_gram(*gram_and_logits(b.rows(start, stop)), output)
        if logit_part is not None:
            logit[:, start:stop] = logit_part
        if soft_part is not None:
            soft[:, start:stop] = soft_part
    if output == "both":
        return b.output(soft), b.output(logit)
    return b.output(soft if output == "softmax" else logit)


def conv_logit_gram(net: ConvNet, x: Tensor) -> tuple[Tensor, Tensor]:
    """(the centred Gram of J [M, n, C+1, C+1], logits [M, n, C]) of flat points x [n, d] or
    [M, n, d].

    One forward pass, then C vector-Jacobian products, one per class's one-hot cotangent, as one
    batched backward pass (`is_grads_batched`): row i of every member's Jacobian at every point.
    No layer mixes points (normalisation runs in inference mode), so each point's rows are its own.
    """
    m, c = net.num_models, net.num_classes
    n, d = x.shape[-2:]
    points = x.expand(m, n, d).reshape(m, n, *net.input_shape).detach().requires_grad_()
    with torch.enable_grad():
        logits, _ = run(net, points)
        cotangents = torch.eye(c, dtype=logits.dtype, device=logits.device).view(c, 1, 1, c).expand(c, m, n, c)
        (rows,) = torch.autograd.grad(logits, points, cotangents, is_grads_batched=True)
    jac = centred_rows(rows.reshape(c, m, n, d).permute(1, 2, 0, 3))  # [M, n, C+1, d]
    return jac @ jac.transpose(-1, -2), logits.detach()
