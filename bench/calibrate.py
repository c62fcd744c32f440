"""Calibrate the cost model (sweep.plan.costs) on this device: prints an entry for sweep/plan/calibration.json.

    python bench/calibrate.py --device cuda                 # a card: fp32, tf32, bf16
    python bench/calibrate.py --device cpu --threads 1      # one CPU thread, as a CPU trial runs
    python bench/calibrate.py --device cpu --quick          # smoke run
    python bench/calibrate.py --arch cnn                    # only the entry's `cnn` part

Training: `PopulationTrainer.train_epoch`, exactly as a trial runs it, on synthetic data for
two shapes and two bundle sizes each; t = overhead + M·per_member + M·F / rate is fitted by
non-negative least squares (relative errors) to the four (M, M·F, seconds per step) points, per
precision (the fit's largest relative residual is printed: a poor fit means the model does not
describe this device). Fully-connected and convolutional steps are fitted apart (the entry and
its `cnn` key): a convolution reuses each weight at every pixel, so its FLOPs per parameter and
its rate differ. Scoring: exact Jacobian norms and transition counts (k = 256) of a stacked
population, FLOPs counted by `sweep.plan.costs.point_flops`; for convolutional networks the two
apart (`conv_point_flops`; k = 64 forward passes whose activation codes are compared). The float32
matmul rate is measured in the same run. Needs torch, numpy, scipy and pydantic (no Ray).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profile_step import seconds_per_step  # noqa: E402
from training import BATCH, CONV_IMAGE, CONV_SHAPES, sync, synthetic  # noqa: E402

import metrics_core as mc  # noqa: E402
from sweep.plan import costs  # noqa: E402
from sweep.plan.datasets import dataset_info  # noqa: E402
from sweep.plan.networks import BundleConfig, NetworkConfig, forward_flops  # noqa: E402
from sweep.plan.spec import Budget, DataSpec  # noqa: E402
from sweep.training.population import PopulationTrainer  # noqa: E402

# (data set name, image shape, width, depth[, family, stages, head]), (bundle sizes) per device
# kind: on CPUs the digits-sized nets CPU sweeps train (a CPU's rate depends on the shape more
# than a card's does), the digits-cnn preset's for convolutional steps; on cards the paper's
# shapes and bench/training.py's CIFAR-10 convolutional ones.
SHAPES = {"cuda": ((("mnist", (1, 28, 28), 256, 3), (16, 64)), (("cifar10", (3, 32, 32), 512, 4), (16, 64))),
          "cpu": ((("digits", (1, 8, 8), 32, 1), (2, 16)), (("digits", (1, 8, 8), 128, 2), (2, 16)))}
CONV = {"cuda": tuple((("cifar10", CONV_IMAGE, width, depth, family, 3, head), (4, 16))
                      for family, width, depth, head in CONV_SHAPES),
        "cpu": ((("digits", (1, 8, 8), 16, 1, "vgg", 2, "flatten"), (2, 8)),
                (("digits", (1, 8, 8), 32, 1, "nin", 2, "flatten"), (2, 8)))}
PRECISIONS = {"cuda": ("fp32", "tf32", "bf16"), "cpu": ("fp32",)}


def matmul_tflops(device, seconds: float = 1.0) -> float:
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.backends.cuda.matmul.allow_tf32 = False
    a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        if device.type == "cuda" and count % 10:
            continue
        sync(device)
    sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e12


def configs(shape, members: int, precision: str = "fp32") -> list[NetworkConfig]:
    """`members` networks (seeds 0, 1, …) of a fully-connected or convolutional `shape`."""
    name, _, width, depth, *conv = shape
    layout = {}
    if conv:
        family, stages, head = conv
        layout = {"architecture": "cnn", "family": family, "stages": stages, "kernel_size": 3, "pooling": "max",
                  "head": head}
    return [NetworkConfig(DataSpec(name), width, depth, "relu", "momentum", 0.01, BATCH, 0.0, False, seed,
                          "torch_default", precision, **layout) for seed in range(members)]


def step_seconds(shape, members: int, precision: str, device, epochs: int, steps: int) -> tuple[int, float, float]:
    """(M, M·F, seconds per population step) for one bundle."""
    data = synthetic(shape[0], shape[1], steps, device)
    bundle = BundleConfig(tuple(configs(shape, members, precision)))
    trainer = PopulationTrainer(bundle, data, Budget(max_epochs=epochs + 1, stop_at_full_train_acc=False),
                                device=device)
    flops = costs.step_flops(BundleConfig(bundle.members[:1]))
    return members, members * flops, seconds_per_step(trainer, device, epochs)


def fit(points: list[tuple[int, float, float]]) -> tuple[float, float, float, float]:
    """(overhead s, per-member s, FLOP/s, largest relative residual) of
    t = overhead + M·per_member + M·F / rate, every coefficient ≥ 0 (relative least squares)."""
    m, mf, t = np.array(points).T
    design = np.stack([np.ones_like(t), m, mf], axis=1) / t[:, None]
    (overhead, member, inverse_rate), _ = nnls(design, np.ones_like(t))
    residual = np.max(np.abs(design @ [overhead, member, inverse_rate] - 1))
    return overhead, member, 1 / inverse_rate, residual


def rate(work, flops: float, device, seconds: float) -> float:
    """TFLOP/s of `work()`, `flops` each call, after one warm-up call, over at least `seconds`."""
    work()
    sync(device)
    count, start = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - start < seconds:
        work()
        count += 1
    sync(device)
    return count * flops / (time.perf_counter() - start) / 1e12


def scoring_tflops(device, points: int, seconds: float = 1.0) -> float:
    """Scoring FLOP/s of 8 fully-connected networks: Jacobian norms and transitions (k = 256)."""
    gen = torch.Generator().manual_seed(0)
    sizes = [784, 256, 256, 256, 10] if device.type == "cuda" else [64, 128, 128, 10]
    weights = tuple(torch.randn(8, o, i, generator=gen).div(i**0.5).to(device) for i, o in zip(sizes[:-1], sizes[1:]))
    biases = tuple(torch.zeros(8, o, device=device) for o in sizes[1:])
    net = mc.MLP(weights, biases, mc.Activation("relu"))
    x = torch.randn(points, sizes[0], generator=gen).to(device)
    partners = torch.randn(points, 2, sizes[0], generator=gen).to(device)

    def work():
        mc.jacobian_norms(net, x, output="both")
        mc.transition_counts(net, x, partners=partners, k=256)

    return rate(work, net.num_models * points * costs.point_flops(sizes, 256), device, seconds)


def conv_scoring_tflops(device, points: int, seconds: float = 1.0) -> tuple[float, float]:
    """(Jacobian norms', transitions' FLOP/s) of 4 convolutional networks of the first training
    shape: the two rates of the cost model (`sweep.plan.costs.conv_checkpoint_flops`)."""
    gen = torch.Generator().manual_seed(0)
    shape = CONV[device.type][0][0]
    nets = configs(shape, 4)
    net = PopulationTrainer(BundleConfig(tuple(nets)), synthetic(shape[0], shape[1], 1, device),
                            Budget(max_epochs=1)).population()
    info = dataset_info(nets[0].dataset)
    forward, d, k = forward_flops(nets[0], info), math.prod(shape[1]), 64
    x = torch.randn(points, d, generator=gen).to(device)
    partners = torch.randn(points, 2, d, generator=gen).to(device)
    jacobian = rate(lambda: mc.jacobian_norms(net, x, output="both"),
                    len(nets) * points * costs.conv_point_flops(forward, info.num_classes), device, seconds)
    codes = rate(lambda: mc.transition_counts(net, x, partners=partners, k=k),
                 len(nets) * points * k * forward, device, seconds)
    return jacobian, codes


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def fit_training(kind: str, shapes, device, epochs: int, steps: int, peak: float) -> dict:
    """The calibration's training rates per precision for `shapes`, printed as they are measured."""
    training = {}
    for precision in PRECISIONS[kind]:
        points = []
        for shape, sizes in shapes:
            for members in sizes:
                _, mf, seconds = point = step_seconds(shape, members, precision, device, epochs, steps)
                points.append(point)
                label = " ".join(str(part) for part in (shape[0], *shape[2:]))
                print(f"  {precision} {label} M={members}: {seconds * 1e3:.3f} ms/step, "
                      f"{members / seconds:,.0f} model-steps/s, {mf / seconds / 1e12:.3f} TFLOP/s", flush=True)
        overhead, member, rate, residual = fit(points)
        print(f"  {precision}: overhead {overhead * 1e3:.3f} ms/step + {member * 1e3:.4f} ms per member, rate "
              f"{rate / 1e12:.3f} TFLOP/s ({rate / 1e12 / peak:.0%} of matmul), largest residual {residual:.0%}",
              flush=True)
        training[precision] = {"step_overhead_ms": round(overhead * 1e3, 4), "member_ms": round(member * 1e3, 5),
                               "tflops": round(rate / 1e12, 4)}
    return training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch threads (CPU trials run with one per CPU)")
    parser.add_argument("--arch", choices=("fc", "cnn", "all"), default="all",
                        help="fully-connected steps (the entry), convolutional ones (its `cnn` key), or both")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer steps")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    kind = device.type
    epochs, steps = (1, 3) if args.quick else ((3, 40) if kind == "cuda" else (2, 6))
    name = torch.cuda.get_device_name(device) if kind == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    peak = matmul_tflops(device, 0.3 if args.quick else 1.0)
    print(f"device: {name}; torch {torch.__version__}; float32 matmul {peak:.3f} TFLOP/s", flush=True)
    how = (f"{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, commit {commit()}: "
           f"bench/calibrate.py --device {args.device}" + (f" --threads {args.threads}" if args.threads else ""))
    entry = {"name": name, "kind": "gpu" if kind == "cuda" else "cpu",
             "memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
             if kind == "cuda" else None,
             "matmul_tflops": round(peak, 4)}
    points = 64 if args.quick else (4096 if kind == "cuda" else 256)
    if args.arch in ("fc", "all"):
        entry["training"] = fit_training(kind, SHAPES[kind], device, epochs, steps, peak)
        entry["scoring_tflops"] = round(scoring_tflops(device, points), 4)
        print(f"  scoring (Jacobian norms + transitions, k = 256): {entry['scoring_tflops']:.3f} TFLOP/s", flush=True)
        entry["measured"] = how
    if args.arch in ("cnn", "all"):
        conv_epochs, conv_steps = (1, 2) if args.quick else ((3, 20) if kind == "cuda" else (2, 4))
        jacobian, codes = conv_scoring_tflops(device, max(8, points // 8))
        conv = {"training": fit_training(kind, CONV[kind], device, conv_epochs, conv_steps, peak),
                "scoring_tflops": round(jacobian, 4), "codes_tflops": round(codes, 4),
                "measured": how + " --arch cnn"}
        print(f"  convolutional scoring: Jacobian norms {jacobian:.3f} TFLOP/s, transitions (k = 64) {codes:.4f} "
              f"TFLOP/s", flush=True)
        entry["cnn"] = conv
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
