"""Throughput of metrics_core's Jacobian norms and transitions against the usual alternatives.

    python bench/metrics.py [--device cuda] [--quick]

Needs only torch and numpy (no Ray). Everything is measured in one run on one device:
our Jacobian norms, torch.func.vmap(jacrev), a per-point autograd.grad loop and our
transition counts on the reference nets 784→256×3→10 and 3072→512×4→10 (float32); then a
stacked population of 64 nets 784→256×2→10 against the same nets one at a time; then, for one
CIFAR-10-sized convolutional shape per family (VGG-like and NiN-like, `CONV_NETS`), a population's
exact Jacobian norms (ours: C vector-Jacobian products batched over classes, points and members)
against `torch.func.vmap(jacrev)` one member at a time. Before timing, our norms are checked
against a float64 reference.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics_core import as_mlp, jacobian_norms, stack, stack_convnets, transition_counts  # noqa: E402
from metrics_core.jacobian import uses_gram  # noqa: E402

REFERENCE_NETS = [(784, 256, 3), (3072, 512, 4)]
CLASSES = 10
IMAGE = (3, 32, 32)
# Convolutional shapes on CIFAR-10-sized images: (channels, kernel) per layer, "M" a 2×2 max-pool;
# VGG-like ends in Flatten and a linear layer, NiN-like in a 1×1 convolution and a global average.
CONV_NETS = {"vgg": [(32, 3), (32, 3), "M", (64, 3), (64, 3), "M", (128, 3), "M"],
             "nin": [(32, 3), (32, 1), "M", (64, 3), (64, 1), "M", (128, 3), (CLASSES, 1)]}
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


def make_conv_net(family: str, device: torch.device, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    channels, side = IMAGE[0], IMAGE[1]
    plan = CONV_NETS[family]
    for position, step in enumerate(plan):
        if step == "M":
            layers.append(nn.MaxPool2d(2))
            side //= 2
            continue
        out, k = step
        layers.append(nn.Conv2d(channels, out, k, padding=k // 2))
        if position < len(plan) - 1 or family == "vgg":
            layers.append(nn.ReLU())
        channels = out
    head = [nn.Flatten(), nn.Linear(channels * side * side, CLASSES)] if family == "vgg" else \
        [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, *head).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MIN_ROUND_S = 0.05  # one sync per round: a GPU call of 1 ms timed alone measures its launch latency


def per_call(fn, calls: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


def best_times(fns: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Best time per call of each function over `repeats` rounds. A round calls a function
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
    return {name: min(t) for name, t in times.items()}


def jacrev_norms(net: nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    jac = torch.func.vmap(torch.func.jacrev(lambda z: torch.softmax(net(z), -1)))
    with torch.no_grad():
        return torch.cat([jac(x[i : i + chunk]).flatten(1).norm(dim=1) for i in range(0, len(x), chunk)])


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


def bench_conv(family: str, device, args) -> None:
    nets = [make_conv_net(family, device, seed=s).eval() for s in range(args.conv_models)]
    pop = stack_convnets(nets, IMAGE)
    nets = [OnePoint(net) for net in nets]
    x = torch.randn(args.conv_points, *IMAGE, device=device)
    ours = jacobian_norms(pop, x)
    few = x[:8]
    for m in (0, len(nets) - 1):
        expected = reference_norms(nets[m], few).to(ours.dtype)
        torch.testing.assert_close(jacobian_norms(pop, few)[m], expected, rtol=1e-4, atol=0)
        torch.testing.assert_close(ours[m], jacrev_norms(nets[m], x), rtol=1e-3, atol=1e-7)
    t = best_times({"ours": lambda: jacobian_norms(pop, x),
                    "jacrev": lambda: [jacrev_norms(net, x, chunk=args.conv_chunk) for net in nets]},
                   device, args.repeats)
    params = sum(p.numel() for p in nets[0].parameters())
    total = len(nets) * len(x)
    print(f"\n{family}-like convolutional nets on {IMAGE[0]}×{IMAGE[1]}×{IMAGE[2]} ({params:,} parameters), "
          f"a population of {len(nets)}, {len(x)} points each; softmax Jacobian norms, checked against float64")
    print(f"  ours (population)          {total / t['ours']:12.0f} model-points/s")
    print(f"  vmap(jacrev) one at a time {total / t['jacrev']:12.0f} model-points/s")
    ratio = t["jacrev"] / t["ours"]
    print(f"  ratio ours / vmap(jacrev) = {ratio:6.2f}  {verdict(ratio, 2) if device.type == 'cuda' else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (fewer points and repeats)")
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
    args.conv_models = 2 if args.quick else (16 if gpu else 4)
    args.conv_points = 16 if args.quick else (1024 if gpu else 64)
    args.conv_chunk = 256 if gpu else 64

    name = torch.cuda.get_device_name(device) if gpu else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}); torch {torch.__version__}; float32 matmuls (no TF32)")
    for d, width, depth in REFERENCE_NETS:
        bench_reference_net(d, width, depth, device, args)
    bench_population(device, args)
    for family in CONV_NETS:
        bench_conv(family, device, args)


if __name__ == "__main__":
    main()
