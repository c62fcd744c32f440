"""Training throughput: one bundle of M networks as a population vs the same M one at a time.

    python bench/training.py --device cuda            # M = 64, shapes 784→256×3→10, 3072→512×4→10
    python bench/training.py --device cuda --members 64,256 --alone 16
    python bench/training.py --device cpu --quick
    python bench/training.py --device cpu --arch cnn  # only the convolutional shapes, M = 4 (1–2 minutes)

Both sides run on the same device in the same process, on the same synthetic data (speed does
not depend on pixel values), batch 128, SGD with momentum 0.9, and the same batches: round r
visits epoch r's order of each member, after a warm-up. The population side is
`PopulationTrainer.train_epoch` exactly as a trial runs it (members that never stop: no
train-accuracy pass; on CUDA with its captured step, and again eagerly as `eager`); the
baseline is `build_network` + `torch.optim.SGD`, the way one net per process would train.
Prints model-steps/s of each and their ratio (`--arch fc`). Then the same for one
CIFAR-10-sized convolutional shape per family (`CONV_SHAPES`: VGG-like and NiN-like, members as
grouped convolutions), with a third side: `torch.func.vmap` over `functional_call` of the
members' stacked parameters, updated with the same momentum SGD (the other way to batch a
population in PyTorch); each rate there is the median over the timed rounds, with their range
(`--arch cnn`; both sections by default). A round is one epoch of `--steps` steps.
Needs torch, numpy and pydantic (the spec's types).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep.plan.networks import BundleConfig, NetworkConfig, param_count  # noqa: E402
from sweep.plan.spec import Budget, DataSpec  # noqa: E402
from sweep.training.data import Dataset  # noqa: E402
from sweep.training.models import build_network  # noqa: E402
from sweep.training.population import PopulationTrainer, epoch_order  # noqa: E402

SHAPES = (("mnist", (1, 28, 28), 256, 3), ("cifar10", (3, 32, 32), 512, 4))
# (family, first-stage channels, blocks per stage, head) on CIFAR-10-sized images, 3 stages of
# 3×3 convolutions and 2×2 max-pools: about 307k and 116k parameters.
CONV_SHAPES = (("vgg", 32, 2, "flatten"), ("nin", 32, 1, "gap"))
CONV_IMAGE = (3, 32, 32)
BATCH = 128


def conv_configs(family: str, width: int, depth: int, head: str, count: int) -> list[NetworkConfig]:
    """`count` networks (seeds 0, 1, …) of one of `CONV_SHAPES`; bench/metrics.py uses them too."""
    return [NetworkConfig(DataSpec("cifar10"), width, depth, "relu", "momentum", 0.01, BATCH, 0.0, False, seed,
                          "torch_default", architecture="cnn", family=family, stages=3, kernel_size=3,
                          pooling="max", head=head)
            for seed in range(count)]


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


def population_rates(configs, data, rounds: int, device, cuda_graphs: bool = True) -> list[float]:
    """Model-steps/s of each timed round (one epoch each) of `PopulationTrainer`."""
    budget = Budget(max_epochs=rounds + 1, stop_at_full_train_acc=False)
    trainer = PopulationTrainer(BundleConfig(tuple(configs)), data, budget, device=device, cuda_graphs=cuda_graphs)
    trainer.train_epoch()  # warm-up: allocations, kernels, autograd graph caches, the CUDA graph's capture
    rates = []
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        steps = trainer.train_epoch()["model_steps"]
        sync(device)
        rates.append(steps / (time.perf_counter() - start))
    return rates


def one_at_a_time_rates(configs, data, steps: int, rounds: int, device) -> list[float]:
    """Model-steps/s of each timed round: every network trains its round alone, one after another."""
    n = len(data.y_train)
    totals = [0.0] * rounds
    for config in configs:
        model = build_network(config, data).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=0.9)

        def step(order: torch.Tensor, i: int) -> None:
            idx = order[i * BATCH:(i + 1) * BATCH]
            loss = F.cross_entropy(model(inputs(config, data, idx)), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

        step(epoch_order(config, 0, n).to(device), 0)  # warm-up
        for r in range(rounds):
            order = epoch_order(config, r + 1, n).to(device)  # the population's round r is its epoch r + 1
            sync(device)
            start = time.perf_counter()
            for i in range(steps):
                step(order, i)
            sync(device)
            totals[r] += time.perf_counter() - start
    return [len(configs) * steps / t for t in totals]


def inputs(config: NetworkConfig, data: Dataset, idx: torch.Tensor) -> torch.Tensor:
    x = data.x_train[idx]
    return x.view(*x.shape[:-1], *data.image_shape) if config.architecture == "cnn" else x


def vmap_rates(configs, data, steps: int, rounds: int, device) -> list[float]:
    """torch.func.vmap over functional_call of one template network, with the members' stacked
    parameters and each member's own batches, and momentum SGD on the stacked tensors."""
    models = [build_network(config, data).to(device) for config in configs]
    params, buffers = torch.func.stack_module_state(models)
    template = build_network(configs[0], data).to("meta")
    names = list(params)
    weights = [params[name].detach().requires_grad_() for name in names]
    velocity = [torch.zeros_like(w) for w in weights]
    lr = torch.tensor([c.learning_rate for c in configs], device=device)
    lrs = [lr.view(-1, *[1] * (w.dim() - 1)) for w in weights]
    n = len(data.y_train)

    def loss(member_params, member_buffers, x, y):
        return F.cross_entropy(torch.func.functional_call(template, (member_params, member_buffers), (x,)), y)

    per_member = torch.vmap(loss)

    def step(orders: torch.Tensor, i: int) -> None:
        idx = orders[:, i * BATCH:(i + 1) * BATCH]
        x = inputs(configs[0], data, idx)
        total = per_member(dict(zip(names, weights)), buffers, x, data.y_train[idx]).sum()
        grads = torch.autograd.grad(total, weights)
        with torch.no_grad():
            torch._foreach_mul_(velocity, 0.9)
            torch._foreach_add_(velocity, grads)
            torch._foreach_sub_(weights, torch._foreach_mul(velocity, lrs))

    def epoch(e: int) -> torch.Tensor:
        return torch.stack([epoch_order(c, e, n) for c in configs]).to(device)

    step(epoch(0), 0)  # warm-up
    rates = []
    for r in range(rounds):
        orders = epoch(r + 1)
        sync(device)
        start = time.perf_counter()
        for i in range(steps):
            step(orders, i)
        sync(device)
        rates.append(len(configs) * steps / (time.perf_counter() - start))
    return rates


def spread(rates: list[float]) -> str:
    """The median and the range of per-round rates, to 3 significant digits."""
    def fmt(r: float) -> str:
        return f"{r:,.0f}" if r >= 100 else f"{r:#.3g}"

    return f"{fmt(statistics.median(rates))} ({fmt(min(rates))}–{fmt(max(rates))})"


def bench_conv(sizes: list[int], alone_count: int, steps: int, rounds: int, device) -> None:
    print(f"\nconvolutional shapes: model-steps/s, median (range) of {rounds} rounds of {steps} steps")
    print(f"{'shape':<34}{'M':>5}{'population':>24}{'vmap':>24}{'one at a time':>24}"
          f"{'pop/vmap':>10}{'pop/one':>9}")
    data = synthetic("cifar10", CONV_IMAGE, steps, device)
    for family, width, depth, head in CONV_SHAPES:
        configs = conv_configs(family, width, depth, head, max(sizes + [alone_count]))
        alone = one_at_a_time_rates(configs[:alone_count], data, steps, rounds, device)
        params = param_count(configs[0], data)
        shape = f"{family} {width}c×{depth}b×3s {head} ({params / 1e3:.0f}k)"
        for members in sizes:
            pop = population_rates(configs[:members], data, rounds, device)
            batched = vmap_rates(configs[:members], data, steps, rounds, device)
            pop_median = statistics.median(pop)
            print(f"{shape:<34}{members:>5}{spread(pop):>24}{spread(batched):>24}{spread(alone):>24}"
                  f"{pop_median / statistics.median(batched):>9.2f}×"
                  f"{pop_median / statistics.median(alone):>8.2f}×", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", choices=("fc", "cnn", "all"), default="all",
                        help="the fully-connected shapes, the convolutional ones, or both (default)")
    parser.add_argument("--members", help="bundle sizes, comma-separated (default 64; 16 with --quick)")
    parser.add_argument("--alone", type=int, help="networks trained one at a time for the baseline's rate "
                                                  "(default: all of the smallest bundle)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 16 members, 3 timed steps")
    parser.add_argument("--conv-members", help="bundle sizes of the convolutional shapes (default 16 on CUDA, "
                                               "4 on a CPU or with --quick)")
    parser.add_argument("--steps", type=int, help="steps per round (an epoch of the synthetic data; default "
                                                  "50 on CUDA; on a CPU 8, convolutional 2; 3 and 2 with --quick)")
    parser.add_argument("--rounds", type=int, help="timed rounds after the warm-up (default 4 on CUDA; on a "
                                                   "CPU 2, convolutional 3; 1 and 3 with --quick)")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 matmuls on CUDA (both sides); default: full float32")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    sizes = [int(m) for m in args.members.split(",")] if args.members else [16 if args.quick else 64]
    alone_count = args.alone or min(sizes)
    cuda = device.type == "cuda"
    steps, epochs = (3, 1) if args.quick else ((50, 4) if cuda else (8, 2))
    # A convolutional step of M = 4 takes about a second on 2 CPU cores: fewer steps, more rounds for a median.
    conv_steps, conv_rounds = (50, 4) if cuda and not args.quick else (2, 3)
    steps, conv_steps = args.steps or steps, args.steps or conv_steps
    epochs, conv_rounds = args.rounds or epochs, args.rounds or conv_rounds
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}; batch {BATCH}; tf32 {args.tf32}")
    if args.arch != "cnn":
        print(f"fully-connected shapes: M = {', '.join(map(str, sizes))}; {steps} steps per epoch, {epochs} epochs")
        print(f"{'shape':<20}{'M':>5}{'population':>14}" + (f"{'eager':>10}{'graphs/eager':>14}" if cuda else "")
              + f"{'one at a time':>16}{'ratio':>8}   (model-steps/s)")
        for dataset, image_shape, width, depth in SHAPES:
            data = synthetic(dataset, image_shape, steps, device)
            configs = [NetworkConfig(DataSpec(dataset), width, depth, "relu", "momentum", 0.01,
                                     BATCH, 0.0, False, seed, "torch_default")
                       for seed in range(max(sizes + [alone_count]))]
            alone = statistics.median(one_at_a_time_rates(configs[:alone_count], data, steps, epochs, device))
            shape = f"{data.input_dim}→{width}×{depth}→10"
            for members in sizes:
                pop = statistics.median(population_rates(configs[:members], data, epochs, device))
                eager = ""
                if cuda:
                    e = statistics.median(population_rates(configs[:members], data, epochs, device, False))
                    eager = f"{e:>10,.0f}{pop / e:>13.2f}×"
                print(f"{shape:<20}{members:>5}{pop:>14,.0f}{eager}{alone:>16,.0f}{pop / alone:>7.1f}×", flush=True)
    if args.arch != "fc":
        conv_sizes = [int(m) for m in args.conv_members.split(",")] if args.conv_members else (
            [16 if cuda and not args.quick else 4])
        bench_conv(conv_sizes, args.alone or min(conv_sizes), conv_steps, conv_rounds, device)


if __name__ == "__main__":
    main()
