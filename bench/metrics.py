"""Throughput of metrics_core's Jacobian norms and transitions against the usual alternatives.

    python bench/metrics.py [--device cuda] [--quick]
    python bench/metrics.py --arch cnn [--conv-members 4] [--conv-points 32]   # only the convolutional part

Needs torch, numpy and pydantic (the convolutional shapes are sweep's network configs; no Ray).
Everything is measured in one run on one device: our Jacobian norms, torch.func.vmap(jacrev), a
per-point autograd.grad loop and our transition counts on the reference nets 784→256×3→10 and
3072→512×4→10 (float32); then a stacked population of 64 nets 784→256×2→10 against the same nets
one at a time (`--arch fc`). Then, for the CIFAR-10-sized convolutional shapes of
bench/training.py (`CONV_SHAPES`: VGG-like and NiN-like), a population's exact softmax and logit
Jacobian norms (ours, `jacobian_norms(population, x, "both")`: C vector-Jacobian products
batched over classes, points and members) against `torch.func.vmap(jacrev)` of the logits one
member at a time, with the softmax Jacobian diag(p) − p pᵀ multiplied in; there the median and
range over the rounds are printed (`--arch cnn`; both parts by default). Before timing, our norms
are checked against a float64 reference (and, for the convolutional nets, against vmap(jacrev)).
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.training import CONV_IMAGE, CONV_SHAPES, conv_configs, sync  # noqa: E402
from metrics_core import as_mlp, jacobian_norms, stack, stack_convnets, transition_counts  # noqa: E402
from metrics_core.jacobian import uses_gram  # noqa: E402
from sweep.plan.datasets import DATASETS  # noqa: E402
from sweep.training.models import build_network  # noqa: E402

REFERENCE_NETS = [(784, 256, 3), (3072, 512, 4)]
CLASSES = 10
POPULATION_NET = (784, 256, 2)


def make_net(d: int, width: int, depth: int, device: torch.device, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = d
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, CLASSES)).to(device)


class OnePoint(nn.Module):
    """A network that also takes one image [C, H, W], as vmap hands it over (nn.Flatten needs a batch)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z) if z.dim() == 4 else self.net(z.unsqueeze(0)).squeeze(0)


MIN_ROUND_S = 0.05  # one sync per round: a GPU call of 1 ms timed alone measures its launch latency


def per_call(fn, calls: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


def round_times(fns: dict, device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Time per call of each function in each of `repeats` rounds. A round calls a function
    back to back for MIN_ROUND_S and syncs once, so every method is timed at its throughput
    alike; rounds interleave the functions, so load from other processes hits all alike."""
    calls = {}
    for name, fn in fns.items():  # warm-up (caches, kernels, allocator), then one call sets the count
        fn()
        calls[name] = max(1, math.ceil(MIN_ROUND_S / per_call(fn, 1, device)))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(per_call(fn, calls[name], device))
    return times


def best_times(fns: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """The best of `round_times`."""
    return {name: min(t) for name, t in round_times(fns, device, repeats).items()}


def jacrev_norms(net: nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    jac = torch.func.vmap(torch.func.jacrev(lambda z: torch.softmax(net(z), -1)))
    with torch.no_grad():
        return torch.cat([jac(x[i : i + chunk]).flatten(1).norm(dim=1) for i in range(0, len(x), chunk)])


def jacrev_both_norms(net: nn.Module, x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax, logit) Jacobian norms the straightforward way: J = vmap(jacrev) of the logits
    [n, C, d], then ‖(diag(p) − p pᵀ) J‖_F and ‖J‖_F."""
    def logits(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = net(z)
        return out, out  # the logits also as aux: p without a second forward pass

    jac = torch.func.vmap(torch.func.jacrev(logits, has_aux=True))
    soft, logit = [], []
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            j, out = jac(x[i : i + chunk])
            j = j.flatten(2)
            p = torch.softmax(out, -1)
            a = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
            soft.append((a @ j).flatten(1).norm(dim=1))
            logit.append(j.flatten(1).norm(dim=1))
    return torch.cat(soft), torch.cat(logit)


def autograd_loop_norms(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The usual public implementation: one backward pass per point and class."""
    norms = []
    for point in x:
        point = point.detach().requires_grad_()
        out = torch.softmax(net(point), -1)
        total = 0.0
        for c in range(out.shape[0]):
            (grad,) = torch.autograd.grad(out[c], point, retain_graph=True)
            total = total + grad.square().sum()
        norms.append(total.sqrt().detach())
    return torch.stack(norms)


def reference_norms(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """float64 jacrev of the logits times the softmax Jacobian with diagonal p_c·Σ_{j≠c} p_j."""
    net64 = copy.deepcopy(net).double()
    x64 = x.double()
    jac = torch.func.vmap(torch.func.jacrev(net64))(x64).flatten(2)  # [N, C, d]
    with torch.no_grad():
        p = torch.softmax(net64(x64), -1)
        eye = torch.eye(p.shape[-1], dtype=torch.bool, device=p.device)
        off = p.unsqueeze(-2).expand(-1, p.shape[-1], -1).masked_fill(eye, 0).sum(-1)
        a = torch.where(eye, (p * off).unsqueeze(-1), -p.unsqueeze(-1) * p.unsqueeze(-2))
        return (a @ jac).flatten(1).norm(dim=1)


def our_flops_per_point(net: nn.Sequential) -> float:
    """FLOPs our route must do per point: forward, backward chain, Gram (or direct J), softmax."""
    mlp = as_mlp(net)
    d, hidden, c = mlp.input_dim, mlp.hidden_sizes, mlp.num_classes
    sizes = (d, *hidden, c)
    forward = sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    chain = sum(2 * c * hidden[i] * hidden[i + 1] for i in range(len(hidden) - 1))
    h1 = hidden[0]
    gram = 2 * c * h1 * h1 + 2 * c * c * h1 if uses_gram(mlp) else 2 * c * h1 * d + 2 * c * c * d
    return forward + chain + gram + 4 * c**3


def matmul_probe(device: torch.device):
    """A large float32 matmul and its FLOPs: the device's attainable rate, timed in the same
    rounds as the methods."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return (lambda: a @ b), 2 * n**3


def verdict(value: float, target: float) -> str:
    return f"{'PASS' if value >= target else 'MISS'} (target {target:g}x)"


def bench_reference_net(d, width, depth, device, args) -> None:
    net = make_net(d, width, depth, device)
    x = torch.randn(args.points, d, device=device)
    label = f"{d}->{width}x{depth}->{CLASSES}"

    check = x[:64]
    ours = jacobian_norms(net, check)
    ref = reference_norms(net, check)
    error = ((ours.double() - ref) / ref).abs().max().item()
    jacrev_error = ((jacrev_norms(net, check).double() - ref) / ref).abs().max().item()
    if error > 1e-4:
        raise SystemExit(f"{label}: our norms differ from the float64 reference by {error:.2e}")
    print(f"\n{label}, {args.points} points: max relative error vs float64 {error:.1e} (jacrev float32: {jacrev_error:.1e})")

    loop_points = x[: args.loop_points]
    trans_points = x[: args.transition_points]
    generator = torch.Generator(device=device)
    matmul, matmul_flops = matmul_probe(device)
    t = best_times(
        {
            "matmul": matmul,
            "ours": lambda: jacobian_norms(net, x),
            "both": lambda: jacobian_norms(net, x, "both"),
            "jacrev": lambda: jacrev_norms(net, x),
            "loop": lambda: autograd_loop_norms(net, loop_points),
        },
        device,
        args.repeats,
    )
    t_ours, t_both, t_jacrev = t["ours"], t["both"], t["jacrev"]
    rate = matmul_flops / t["matmul"]
    t_loop = t["loop"] / len(loop_points) * len(x)
    t_trans = best_times(
        {"transitions": lambda: transition_counts(net, trans_points, pool=x, generator=generator.manual_seed(0), k=256)},
        device,
        1,
    )["transitions"]
    n = len(x)
    flops = our_flops_per_point(net) * n / t_ours
    print(f"  float32 matmul rate     {rate / 1e9:12.1f} GFLOP/s")
    print(f"  ours (softmax)          {n / t_ours:12.0f} points/s   {flops / 1e9:8.1f} GFLOP/s = {flops / rate:.0%} of matmul")
    print(f"  ours (softmax+logits)   {n / t_both:12.0f} points/s")
    print(f"  vmap(jacrev)            {n / t_jacrev:12.0f} points/s")
    print(f"  per-point autograd loop {n / t_loop:12.0f} points/s  (timed on {len(loop_points)} points)")
    print(f"  ours transitions k=256  {len(trans_points) / t_trans:12.0f} points/s  (timed on {len(trans_points)} points)")
    gpu = device.type == "cuda"
    print(f"  ratio ours / vmap(jacrev) = {t_jacrev / t_ours:6.2f}  {verdict(t_jacrev / t_ours, 2.5 if gpu else 1.2)}")
    print(f"  ratio ours / autograd loop = {t_loop / t_ours:6.0f}  {'' if gpu else verdict(t_loop / t_ours, 100)}")
    if gpu:
        print(f"  share of matmul rate = {flops / rate:.0%}  {'PASS' if flops / rate >= 0.6 else 'MISS'} (target 60%)")


def bench_population(device, args) -> None:
    d, width, depth = POPULATION_NET
    nets = [make_net(d, width, depth, device, seed=s) for s in range(args.models)]
    pop = stack(nets)
    x = torch.randn(args.population_points, d, device=device)
    stacked = jacobian_norms(pop, x)
    for m in (0, args.models - 1):
        torch.testing.assert_close(stacked[m], jacobian_norms(nets[m], x), rtol=1e-4, atol=0)

    t = best_times(
        {
            "stacked": lambda: jacobian_norms(pop, x),
            "single": lambda: [jacobian_norms(net, x) for net in nets],
            "jacrev": lambda: [jacrev_norms(net, x) for net in nets],
        },
        device,
        args.repeats,
    )
    t_stacked, t_single, t_jacrev = t["stacked"], t["single"], t["jacrev"]
    total = args.models * len(x)
    print(f"\npopulation of {args.models} nets {d}->{width}x{depth}->{CLASSES}, {len(x)} points each")
    print(f"  ours stacked              {total / t_stacked:12.0f} model-points/s")
    print(f"  ours one model at a time  {total / t_single:12.0f} model-points/s")
    print(f"  vmap(jacrev) one at a time {total / t_jacrev:11.0f} model-points/s")
    gpu = device.type == "cuda"
    print(f"  ratio stacked / ours one at a time = {t_single / t_stacked:6.2f}  {verdict(t_single / t_stacked, 3) if gpu else ''}")
    print(f"  ratio stacked / jacrev one at a time = {t_jacrev / t_stacked:6.2f}  {verdict(t_jacrev / t_stacked, 15) if gpu else ''}")


# Near a kink, a unit's activation or a max-pool's choice can differ between two float32 forward
# passes (or float32 and float64), and the exact Jacobian there with it, by ~1e-4 of its norm: up to
# 1% of the points (at least one) may be beyond the tolerance.
TOLERANCE = 1e-4


def agreement(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, int]:
    """(max relative difference, points beyond TOLERANCE)."""
    error = ((ours.double() - reference.double()) / reference.double()).abs()
    return error.max().item(), int((error > TOLERANCE).sum())


def agrees(ours: torch.Tensor, reference: torch.Tensor, what: str) -> str:
    """'softmax …, logits …' for (softmax, logit) pairs; stops the run if they disagree."""
    parts = []
    for name, a, b in zip(("softmax", "logits"), ours, reference):
        error, beyond = agreement(a, b)
        if beyond > max(1, b.numel() // 100):
            raise SystemExit(f"{what}, {name} norms: {beyond} of {b.numel()} points differ by more than {TOLERANCE:g} "
                             f"(max relative difference {error:.1e})")
        parts.append(f"{name} {error:.1e} ({beyond} of {b.numel()} beyond {TOLERANCE:g})")
    return ", ".join(parts)


def spread(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):12,.{digits}f}  (range {min(values):,.{digits}f}–{max(values):,.{digits}f})"


def bench_conv(family: str, width: int, depth: int, head: str, device, args) -> None:
    configs = conv_configs(family, width, depth, head, args.conv_models)
    nets = [build_network(config, DATASETS["cifar10"]).to(device).eval() for config in configs]
    pop = stack_convnets(nets, CONV_IMAGE)
    nets = [OnePoint(net) for net in nets]
    torch.manual_seed(0)
    x = torch.randn(args.conv_points, *CONV_IMAGE, device=device)
    label = f"{family} {width}c×{depth}b×3s {head}"

    ours = jacobian_norms(pop, x, "both", chunk_size=args.ours_chunk)
    theirs = [torch.stack(t) for t in zip(*(jacrev_both_norms(net, x, args.conv_chunk) for net in nets))]
    vs_jacrev = agrees(ours, theirs, f"{label}, ours vs vmap(jacrev)")
    few, ends = x[:8], (0, len(nets) - 1)
    ours_few = [norms[list(ends)] for norms in jacobian_norms(pop, few, "both")]
    float64 = [jacrev_both_norms(copy.deepcopy(nets[m]).double(), few.double(), len(few)) for m in ends]
    vs_float64 = agrees(ours_few, [torch.stack(t) for t in zip(*float64)], f"{label}, ours vs float64")

    t = round_times({"ours": lambda: jacobian_norms(pop, x, "both", chunk_size=args.ours_chunk),
                     "jacrev": lambda: [jacrev_both_norms(net, x, args.conv_chunk) for net in nets]},
                    device, args.conv_repeats)
    params = sum(p.numel() for p in nets[0].parameters())
    total = len(nets) * len(x)
    print(f"\n{label} on {CONV_IMAGE[0]}×{CONV_IMAGE[1]}×{CONV_IMAGE[2]} ({params:,} parameters), a population of "
          f"{len(nets)}, {len(x)} points each; softmax and logit Jacobian norms, median of {args.conv_repeats} rounds")
    print(f"  max relative difference vs vmap(jacrev): {vs_jacrev}")
    print(f"  vs float64 (members {ends[0]} and {ends[1]}, {len(few)} points): {vs_float64}")
    chunk = f"chunks of {args.ours_chunk} points" if args.ours_chunk else "metrics_core's chunks"
    print(f"  ours (population)          {spread([total / s for s in t['ours']])} model-points/s  ({chunk})")
    print(f"  vmap(jacrev) one at a time {spread([total / s for s in t['jacrev']])} model-points/s")
    ratios = [j / o for j, o in zip(t["jacrev"], t["ours"])]  # per round: load hits both alike
    ratio = statistics.median(ratios)
    print(f"  ratio ours / vmap(jacrev) {spread(ratios, 2)}  {verdict(ratio, 2) if device.type == 'cuda' else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (fewer points and repeats)")
    parser.add_argument("--arch", choices=("fc", "cnn", "all"), default="all",
                        help="the fully-connected part, the convolutional one, or both (default)")
    parser.add_argument("--conv-members", type=int,
                        help="convolutional population size (default 16 on CUDA, 4 on a CPU, 2 with --quick)")
    parser.add_argument("--conv-points", type=int,
                        help="points per convolutional member (default 1024 on CUDA, 32 on a CPU, 16 with --quick)")
    parser.add_argument("--ours-chunk", type=int,
                        help="points per chunk of our convolutional norms (default: metrics_core's, sized to its "
                             "memory budget)")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    torch.set_float32_matmul_precision("highest")  # true float32 throughout, no TF32
    args.points = 512 if args.quick else 4096
    args.repeats = 1 if args.quick else 5
    args.loop_points = 16 if args.quick else (256 if gpu else 32)
    args.transition_points = 16 if args.quick else (4096 if gpu else 256)
    args.models = 8 if args.quick else 64
    args.population_points = 200 if args.quick else 1000
    args.conv_models = args.conv_members or (2 if args.quick else (16 if gpu else 4))
    args.conv_points = args.conv_points or (16 if args.quick else (1024 if gpu else 32))
    args.conv_chunk = 256 if gpu else 64
    args.conv_repeats = 5 if gpu and not args.quick else 3  # at least 3 for a median

    name = torch.cuda.get_device_name(device) if gpu else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}); torch {torch.__version__}; float32 matmuls (no TF32)")
    if args.arch != "cnn":
        for d, width, depth in REFERENCE_NETS:
            bench_reference_net(d, width, depth, device, args)
        bench_population(device, args)
    if args.arch != "fc":
        for family, width, depth, head in CONV_SHAPES:
            bench_conv(family, width, depth, head, device, args)


if __name__ == "__main__":
    main()
