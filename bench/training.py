"""Training throughput: one bundle of M networks as a population vs the same M one at a time.

    python bench/training.py --device cuda            # M = 64, shapes 784→256×3→10, 3072→512×4→10
    python bench/training.py --device cuda --members 64,256 --alone 16
    python bench/training.py --device cpu --quick

Both sides run on the same device in the same process, on the same synthetic data (speed does
not depend on pixel values), batch 128, SGD with momentum 0.9. The population side is
`PopulationTrainer.train_epoch` exactly as a trial runs it (members that never stop: no
train-accuracy pass; on CUDA with its captured step, and again eagerly as `eager`); the baseline is `build_network` + `torch.optim.SGD`, the way one net per
process would train. Prints model-steps/s of each and their ratio. Needs torch and numpy only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep.plan.networks import BundleConfig, NetworkConfig  # noqa: E402
from sweep.plan.spec import Budget, DataSpec  # noqa: E402
from sweep.training.data import Dataset  # noqa: E402
from sweep.training.models import build_network  # noqa: E402
from sweep.training.population import PopulationTrainer  # noqa: E402

SHAPES = (("mnist", (1, 28, 28), 256, 3), ("cifar10", (3, 32, 32), 512, 4))
BATCH = 128


def synthetic(name: str, image_shape, steps: int, device) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    d = image_shape[0] * image_shape[1] * image_shape[2]
    n = steps * BATCH
    x = torch.randn(n, d, generator=gen).to(device)
    y = torch.randint(0, 10, (n,), generator=gen).to(device)
    return Dataset(name, x, y, x[:BATCH], y[:BATCH], 10, image_shape,
                   torch.zeros(d, device=device), torch.ones(d, device=device), False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def population_rate(configs, data, epochs: int, device, cuda_graphs: bool = True) -> float:
    budget = Budget(max_epochs=epochs + 1, stop_at_full_train_acc=False)
    trainer = PopulationTrainer(BundleConfig(tuple(configs)), data, budget, device=device, cuda_graphs=cuda_graphs)
    trainer.train_epoch()  # warm-up: allocations, kernels, autograd graph caches, the CUDA graph's capture
    sync(device)
    start = time.perf_counter()
    steps = sum(trainer.train_epoch()["model_steps"] for _ in range(epochs))
    sync(device)
    return steps / (time.perf_counter() - start)


def one_at_a_time_rate(configs, data, steps: int, device) -> float:
    total = 0.0
    for config in configs:
        model = build_network(config, data.input_dim, data.num_classes).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=0.9)
        order = torch.randperm(len(data.y_train), generator=config.generator("order", 0))
        order = order.to(device)

        def step(i: int) -> None:
            idx = order[(i % steps) * BATCH:(i % steps + 1) * BATCH]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

        step(0)  # warm-up, as for the population
        sync(device)
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        sync(device)
        total += time.perf_counter() - start
    return len(configs) * steps / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--members", help="bundle sizes, comma-separated (default 64; 16 with --quick)")
    parser.add_argument("--alone", type=int, help="networks trained one at a time for the baseline's rate "
                                                  "(default: all of the smallest bundle)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 16 members, 3 timed steps")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 matmuls on CUDA (both sides); default: full float32")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    sizes = [int(m) for m in args.members.split(",")] if args.members else [16 if args.quick else 64]
    alone_count = args.alone or min(sizes)
    steps, epochs = (3, 1) if args.quick else ((50, 4) if device.type == "cuda" else (8, 2))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads")
    print(f"device: {device} ({name}); torch {torch.__version__}; M = {', '.join(map(str, sizes))}; "
          f"batch {BATCH}; {steps} steps per epoch; tf32 {args.tf32}")
    graphs = device.type == "cuda"
    print(f"{'shape':<20}{'M':>5}{'population':>14}" + (f"{'eager':>10}{'graphs/eager':>14}" if graphs else "")
          + f"{'one at a time':>16}{'ratio':>8}   (model-steps/s)")
    for dataset, image_shape, width, depth in SHAPES:
        data = synthetic(dataset, image_shape, steps, device)
        configs = [NetworkConfig(DataSpec(dataset), width, depth, "relu", "momentum", 0.01,
                                 BATCH, 0.0, False, seed, "torch_default")
                   for seed in range(max(sizes + [alone_count]))]
        alone = one_at_a_time_rate(configs[:alone_count], data, steps * epochs, device)
        shape = f"{data.input_dim}→{width}×{depth}→10"
        for members in sizes:
            pop = population_rate(configs[:members], data, epochs, device)
            eager = (f"{(e := population_rate(configs[:members], data, epochs, device, False)):>10,.0f}"
                     f"{pop / e:>13.2f}×") if graphs else ""
            print(f"{shape:<20}{members:>5}{pop:>14,.0f}{eager}{alone:>16,.0f}{pop / alone:>7.1f}×", flush=True)


if __name__ == "__main__":
    main()
