"""Where a population step's time goes: torch.profiler over eager steps of one bundle.

    python bench/profile_step.py --device cuda                    # 3072→512×4→10, M = 64, momentum
    python bench/profile_step.py --device cuda --width 256 --depth 3 --input 784
    python bench/profile_step.py --device cpu --members 4 --steps 3   # smoke run

Prints the wall time per step of the captured (CUDA graph) and eager steps, the device time per
step, and the kernels that take it, grouped by name (the top 15), with the FLOPs of the step's
matmuls against their time. Needs torch only (no Ray).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from training import BATCH, sync, synthetic  # noqa: E402

from sweep.plan import costs  # noqa: E402
from sweep.plan.networks import BundleConfig, NetworkConfig  # noqa: E402
from sweep.plan.spec import Budget, DataSpec  # noqa: E402
from sweep.training.population import PopulationTrainer  # noqa: E402


def trainer_for(args, device, cuda_graphs: bool) -> PopulationTrainer:
    channels, side = (3, 32) if args.input == 3072 else (1, int(args.input**0.5))
    name = "cifar10" if channels == 3 else "mnist"
    data = synthetic(name, (channels, side, side), args.steps, device)
    configs = [NetworkConfig(DataSpec(name), args.width, args.depth, "relu", args.optimizer, 0.01, BATCH, 0.0,
                             False, seed, "torch_default", args.precision) for seed in range(args.members)]
    budget = Budget(max_epochs=10**6, stop_at_full_train_acc=False)
    return PopulationTrainer(BundleConfig(tuple(configs)), data, budget, device=device, cuda_graphs=cuda_graphs)


def seconds_per_step(trainer: PopulationTrainer, device, epochs: int = 2) -> float:
    trainer.train_epoch()
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        trainer.train_epoch()
    sync(device)
    return (time.perf_counter() - start) / (epochs * trainer.steps_per_epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--input", type=int, default=3072)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--optimizer", default="momentum")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--steps", type=int, default=40, help="steps per epoch")
    args = parser.parse_args()
    device = torch.device(args.device)
    graphed = seconds_per_step(trainer_for(args, device, True), device) if device.type == "cuda" else None
    eager_trainer = trainer_for(args, device, False)
    eager = seconds_per_step(eager_trainer, device)
    flops = args.members * costs.step_flops(BundleConfig((eager_trainer.members[0],)))
    print(f"{args.input}→{args.width}×{args.depth}→10, M = {args.members}, {args.optimizer}, {args.precision}: "
          f"{flops / 1e9:.1f} GFLOP a step; eager {eager * 1e3:.3f} ms a step ({flops / eager / 1e12:.2f} TFLOP/s)"
          + (f", graphed {graphed * 1e3:.3f} ms ({flops / graphed / 1e12:.2f} TFLOP/s)" if graphed else ""))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        eager_trainer.train_epoch()
        sync(device)
    steps = eager_trainer.steps_per_epoch
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    kernels = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]  # on CUDA: the kernels
    total = sum(getattr(e, attr) for e in kernels)
    print(f"{'device' if device.type == 'cuda' else 'CPU self'} time {total / steps / 1e3:.3f} ms a step "
          f"(eager wall {eager * 1e3:.3f} ms); by kernel, per step:")
    for event in sorted(kernels, key=lambda e: -getattr(e, attr))[:15]:
        share = getattr(event, attr) / total
        print(f"  {getattr(event, attr) / steps / 1e3:8.3f} ms {share:5.1%} {event.count / steps:5.1f}x  {event.key[:90]}")


if __name__ == "__main__":
    main()
