"""The measures sensitivity is judged against (Jiang et al., ICLR 2020, "Fantastic
generalization measures and where to find them"): distance from initialization, margin-normalized
norm products, and PAC-Bayes sharpness and magnitude-aware flatness. Batched over a population;
results are [M] for an MLP and 0-dimensional for an nn.Sequential.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> float(distance_from_init(net, net))
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .baselines import _per_model, margin, operator_norms
from .nets import CHUNK_BUDGET_FLOATS, Net, Population, as_population, batch, chunks, logit_floats, logits_of
from .precision import exact

MARGIN_QUANTILE = 0.1  # Jiang et al.: the 10th percentile of the training margins
SIGMA_RANGE = (1e-6, 10.0)  # where σ′ is searched (log-bisection)
MAGNITUDE_EPS = 1e-3  # the magnitude-aware noise's floor: N(0, σ′²w² + ε²)


@exact
def distance_from_init(net: Net, init: Net) -> Tensor:
    """‖θ − θ₀‖₂ over every parameter, θ₀ the same networks at initialisation; a ConvNet's Norm
    layers count as they are evaluated (in inference mode: their scale and shift, with the
    running statistics folded in)."""
    now = as_population(net)
    start = as_population(init).to(device=now.device, dtype=now.dtype)
    if [t.shape for t in now.parameters()] != [t.shape for t in start.parameters()]:
        raise ValueError("init must hold the same networks (shapes) as net")
    total = sum((p.double() - q.double()).square().flatten(1).sum(1)
                for p, q in zip(now.parameters(), start.parameters()))
    return _per_model(net, total.sqrt().to(now.dtype))


@exact
def margin_quantile(net: Net, x: Tensor, y: Tensor, q: float = MARGIN_QUANTILE, *,
                    chunk_size: int | None = None) -> Tensor:
    """The q-quantile of the output margins (true logit − largest other) over the points x."""
    m = margin(net, x, y, chunk_size=chunk_size)
    return torch.quantile(m.double(), q, dim=-1).to(m.dtype)


def _log_margin_normalized(norms: Tensor, gamma: Tensor) -> Tensor:
    """log(Π_l ‖W_l‖² / γ²) per model; NaN where the margin γ is not positive."""
    value = 2 * norms.double().log().sum(0) - 2 * gamma.double().log()
    return value.masked_fill(~(gamma > 0), float("nan"))


@exact
def spectral_margin(net: Net, x: Tensor, y: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """log(Π_l ‖W_l‖₂² / γ²), γ the 10th percentile of the training margins (Jiang's
    margin-normalized spectral product)."""
    population = as_population(net)
    gamma = margin_quantile(population, x, y, chunk_size=chunk_size)
    norms = operator_norms(population.map(torch.nan_to_num))
    return _per_model(net, _log_margin_normalized(norms, gamma).to(population.dtype))


@exact
def frobenius_margin(net: Net, x: Tensor, y: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """log(Π_l ‖W_l‖_F² / γ²), γ as in `spectral_margin`."""
    population = as_population(net)
    gamma = margin_quantile(population, x, y, chunk_size=chunk_size)
    norms = torch.stack([w.flatten(1).norm(dim=1) for w in population.weights])
    return _per_model(net, _log_margin_normalized(norms, gamma).to(population.dtype))


def _accuracy(net: Population, x: Tensor, y: Tensor, chunk_size: int | None) -> Tensor:
    """[M] accuracy on x with labels y [N] (shared) or [M, N] (each model's own)."""
    correct = torch.zeros(net.num_models, dtype=torch.float64, device=net.device)
    b = batch(net, x)
    for start, stop in chunks(b.num_points, chunk_size, logit_floats(net), net.device):
        correct += (logits_of(net, b.rows(start, stop)).argmax(-1) == y[..., start:stop]).sum(-1)
    return correct / b.num_points


@exact
def pacbayes_sigma(net: Net, x: Tensor, y: Tensor, *, generator: torch.Generator | Sequence[torch.Generator],
                   magnitude_aware: bool = False,
                   samples: int = 10, depth: int = 15, target: float = 0.1, chunk_size: int | None = None) -> Tensor:
    """σ′: the largest noise scale whose perturbations lower the accuracy on (x, y) (labels [N],
    or [M, N] for each model's own, e.g. the labels it was trained on) by at most
    `target` on average over `samples` draws, found by `depth` bisections of log σ in SIGMA_RANGE
    (its lower end where even that is too much).

    Noise on every weight and bias: N(0, σ²) (PAC-Bayes sharpness) or, `magnitude_aware`,
    N(0, σ²w² + ε²) with ε = MAGNITUDE_EPS (Jiang's magnitude-aware flatness, as the paper writes
    it: a standard deviation of √(σ²w² + ε²); its published code hands torch.normal the variance).
    Each bisection step draws, per sample, one standard-normal vector per model over all its
    parameters (layer by layer, weights then bias): [M, P] at once from `generator`, or each
    model's [P] from its own when `generator` is a list of M of them (then a model's σ′ does not
    depend on which other models share the call).
    """
    population = as_population(net)
    if not 0 < target < 1 or samples < 1 or depth < 1:
        raise ValueError(f"need 0 < target < 1, samples >= 1 and depth >= 1; got {target}, {samples}, {depth}")
    y = y.long()
    base = _accuracy(population, x, y, chunk_size)
    low = torch.full_like(base, math.log(SIGMA_RANGE[0]))
    high = torch.full_like(base, math.log(SIGMA_RANGE[1]))
    params = population.parameters()
    sizes = [p[0].numel() for p in params]
    m = population.num_models
    # Samples evaluated together as one population of (samples × models), as many as the chunk
    # budget holds; drawn one sample after another, so the draws do not depend on the grouping.
    together = max(1, min(samples, CHUNK_BUDGET_FLOATS.get(population.device.type, CHUNK_BUDGET_FLOATS["cpu"])
                          // max(1, m * sum(sizes))))
    labels = y.expand(m, -1).repeat(together, 1) if y.dim() == 2 else y
    for _ in range(depth):
        sigma = ((low + high) / 2).exp()
        drop = torch.zeros_like(base)
        for first in range(0, samples, together):
            count = min(together, samples - first)
            noise = torch.cat([_noise(population, sum(sizes), generator) for _ in range(count)])  # [count·M, P]
            noisy = []
            for p, part in zip(params, noise.split(sizes, dim=1)):
                scale = sigma.to(p.dtype).view((-1,) + (1,) * (p.dim() - 1))
                scale = (scale * p).square().add(MAGNITUDE_EPS**2).sqrt() if magnitude_aware else scale
                noisy.append((p + scale * part.view(count, *p.shape)).flatten(0, 1))
            perturbed = population.with_parameters(noisy)
            accuracy = _accuracy(perturbed, x, labels[: count * m] if y.dim() == 2 else y, chunk_size)
            drop += (base - accuracy.view(count, m)).sum(0)
        ok = drop / samples <= target
        low, high = torch.where(ok, (low + high) / 2, low), torch.where(ok, high, (low + high) / 2)
    return _per_model(net, low.exp().to(population.dtype))


def _noise(population: Population, size: int, generator: torch.Generator | Sequence[torch.Generator]) -> Tensor:
    """[M, size] standard-normal noise from one generator, or each row from its model's own."""
    if isinstance(generator, torch.Generator):
        noise = torch.randn((population.num_models, size), generator=generator, device=generator.device, dtype=population.dtype)
        return noise.to(population.device)
    if len(generator) != population.num_models:
        raise ValueError(f"need one generator per model ({population.num_models}), got {len(generator)}")
    return torch.stack([torch.randn(size, generator=g, device=g.device, dtype=population.dtype) for g in generator]
                       ).to(population.device)


def pacbayes_sharpness(net: Net, x: Tensor, y: Tensor, **kwargs) -> Tensor:
    """1 / σ′² with plain Gaussian noise (`pacbayes_sigma`): larger is sharper."""
    return 1 / pacbayes_sigma(net, x, y, magnitude_aware=False, **kwargs).square()


def pacbayes_mag_flatness(net: Net, x: Tensor, y: Tensor, **kwargs) -> Tensor:
    """1 / σ′² with magnitude-aware noise (`pacbayes_sigma`): Jiang et al.'s best measure."""
    return 1 / pacbayes_sigma(net, x, y, magnitude_aware=True, **kwargs).square()
