"""Epochs to 100% train accuracy (the paper's stopping rule) under augmentation settings and
learning rates: what a preset's budget, learning rates and augmentation need.

    python bench/convergence.py                                # paper-factors' smallest shape, 400 epochs
    python bench/convergence.py --widths 200,500 --depths 2,4 --activations relu,tanh --epochs 2000
    python bench/convergence.py --threads 1 --augmentations none,flips,shift2+flips --lrs 0.003,0.01
    python bench/convergence.py --batch full --random-labels 0,0.5 --augmentations none,flips --epochs 2000

Each (shape, activation, augmentation) is one population (`PopulationTrainer`, as a trial trains
it) whose members are the random-label shares × learning rates × seeds; a member stops at 100%
accuracy on its unaugmented training set and labels (as in a sweep) or at the epoch budget. Augmentations: `none`, `flips` (no shift),
`shiftN` (up to N pixels, no flips), `shiftN+flips`. Data: CIFAR-10 JPEGs from ../shared/data as an
image folder, the first `--train-size` training images as a sweep takes them (paper-factors uses
10 000). Prints each member's train accuracy every `--every` epochs, then each member's epochs to
100% (or its accuracy at the budget). Needs torch, pydantic and Pillow (no Ray).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sweep_gpu import SHARED_DATA, image_folder  # noqa: E402

from sweep.plan.networks import BundleConfig, NetworkConfig  # noqa: E402
from sweep.plan.spec import Budget, DataSpec  # noqa: E402
from sweep.training.data import load_dataset  # noqa: E402
from sweep.training.population import PopulationTrainer, evaluate  # noqa: E402


def augmentation(name: str) -> dict:
    """NetworkConfig's augmentation fields for `none`, `flips`, `shiftN` or `shiftN+flips`."""
    if name == "none":
        return {"augmentation": False}
    shift, plus, flips = name.partition("+")
    if name == "flips":
        return {"augmentation": True, "augmentation_shift": 0, "augmentation_flips": True}
    if not shift.startswith("shift") or not shift[5:].isdigit() or (plus and flips != "flips"):
        raise SystemExit(f"unknown augmentation {name!r}: use none, flips, shiftN or shiftN+flips")
    return {"augmentation": True, "augmentation_shift": int(shift[5:]), "augmentation_flips": bool(plus)}


def numbers(text: str, kind=float) -> list:
    return [kind(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch threads on a CPU")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder (CIFAR-10 JPEGs)")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--widths", default="200")
    parser.add_argument("--depths", default="2")
    parser.add_argument("--activations", default="relu")
    parser.add_argument("--optimizer", default="momentum")
    parser.add_argument("--lrs", default="0.003,0.01,0.03")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--batch", default="128", help="examples per step, or `full`")
    parser.add_argument("--random-labels", default="0", help="fractions of training labels replaced at random")
    parser.add_argument("--augmentations", default="none,flips,shift2+flips,shift4+flips")
    parser.add_argument("--epochs", type=int, default=400, help="the budget")
    parser.add_argument("--every", type=int, default=10, help="epochs between progress lines")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = None if args.batch == "full" else int(args.batch)
    with tempfile.TemporaryDirectory() as work:
        folder, what = image_folder("cifar10", Path(work), args.data, cpu=True)
        spec = DataSpec(name="image_folder", path=str(folder), train_size=args.train_size)
        data = load_dataset(spec, device=args.device)
        print(f"{what}: {len(data.y_train)} training images on {args.device}, {torch.get_num_threads()} thread(s); "
              f"{args.optimizer}, batch {args.batch}, budget {args.epochs} epochs", flush=True)
        runs = {}
        for width, depth, activation, aug in itertools.product(numbers(args.widths, int), numbers(args.depths, int),
                                                               args.activations.split(","),
                                                               args.augmentations.split(",")):
            members = tuple(NetworkConfig(spec, width, depth, activation, args.optimizer, lr, batch, random, seed=seed,
                                          init="torch_default", **augmentation(aug))
                            for random, lr, seed in itertools.product(numbers(args.random_labels), numbers(args.lrs),
                                                                      numbers(args.seeds, int)))
            budget = Budget(max_epochs=args.epochs, stop_at_full_train_acc=True)
            runs[f"{width}x{depth} {activation} {aug}"] = PopulationTrainer(BundleConfig(members), data, budget)
        started = time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            for trainer in runs.values():
                if not trainer.done:
                    trainer.train_epoch()
            finished = all(t.done for t in runs.values())
            if epoch % args.every == 0 or finished:
                print(f"epoch {epoch} ({time.perf_counter() - started:.0f} s):", flush=True)
                for name, trainer in runs.items():
                    print(f"  {name:28s} {accuracies(trainer)}", flush=True)
            if finished:
                break
        print("members: epochs to 100% train accuracy, or where they stood at the budget", flush=True)
        for name, trainer in runs.items():
            _, acc = evaluate(trainer.population(), data.x_train, trainer.labels)
            for i, config in enumerate(trainer.members):
                status, epochs = trainer.status[i], trainer.stopped_at[i][1]
                outcome = (f"converged in {epochs:.0f} epochs" if status == "converged" else
                           f"{status} at epoch {epochs:.0f}, train accuracy {acc[i]:.3f}")
                print(f"  {name:28s} {member(config):20s} seed {config.seed}: {outcome}", flush=True)


def accuracies(trainer: PopulationTrainer) -> str:
    """Each member's train accuracy on its labels now (lr [random-label share]: accuracy, * once
    converged)."""
    _, acc = evaluate(trainer.population(), trainer.data.x_train, trainer.labels)
    return "  ".join(f"{member(c)}: {a:.3f}{'*' if s == 'converged' else ''}"
                     for c, a, s in zip(trainer.members, acc.tolist(), trainer.status))


def member(config: NetworkConfig) -> str:
    noise = f" random {config.random_label_fraction:g}" if config.random_label_fraction else ""
    return f"lr {config.learning_rate:g}{noise}"


if __name__ == "__main__":
    main()
