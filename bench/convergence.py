"""Epochs to 100% train accuracy (the paper's stopping rule) under augmentation settings and
learning rates: what a preset's budget, learning rates and augmentation need.

    python bench/convergence.py                                # paper-factors' smallest shape, 400 epochs
    python bench/convergence.py --widths 200,500 --depths 2,4 --activations relu,tanh --epochs 2000
    python bench/convergence.py --threads 1 --augmentations none,flips,shift2+flips --lrs 0.003,0.01
    python bench/convergence.py --batch full --random-labels 0,0.5 --augmentations none,flips --epochs 2000
    python bench/convergence.py --random-labels 0.5 --random-draws uniform,other_class --augmentations none --lrs 0.003
    python bench/convergence.py --preset cnn-factors --only seed=0 --only batch_size=128 --epochs 100

Each (shape, activation, augmentation) is one population (`PopulationTrainer`, as a trial trains
it) whose members are the random-label shares × learning rates × seeds; a member stops at 100%
accuracy on its unaugmented training set and labels (as in a sweep) or at the epoch budget. Augmentations: `none`, `flips` (no shift),
`shiftN` (up to N pixels, no flips), `shiftN+flips`. Data: CIFAR-10 JPEGs from ../shared/data as an
image folder, the first `--train-size` training images as a sweep takes them (paper-factors uses
10 000). Prints each member's train accuracy every `--every` epochs, then each member's epochs to
100% (or its accuracy at the budget), and the share that converged. `--preset` trains a preset's own
networks instead, one population per group the planner bundles (it may split a group in several
bundles; members train alike either way), CIFAR-10 again from the JPEGs. Needs torch,
pydantic and Pillow (no Ray).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sweep_gpu import SHARED_DATA, image_folder  # noqa: E402

from sweep.plan.networks import BundleConfig, NetworkConfig, networks  # noqa: E402
from sweep.plan.planner import layers_name  # noqa: E402
from sweep.plan.spec import Budget, DataSpec, SpecError, load_spec  # noqa: E402
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
    parser.add_argument("--preset", help="train this preset's own networks (its grid, augmentation and budget) "
                                         "instead of the options below; --only narrows them")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                        help="with --preset: keep the networks whose KEY (a NetworkConfig field: seed, "
                             "batch_size, family, depth, augmentation, ...) is one of the values (YAML "
                             "scalars; batch_size=full for full batch); repeatable")
    parser.add_argument("--train-size", type=int, help="training images (default 10000; with --preset, the preset's)")
    parser.add_argument("--widths", default="200")
    parser.add_argument("--depths", default="2")
    parser.add_argument("--activations", default="relu")
    parser.add_argument("--optimizer", default="momentum")
    parser.add_argument("--lrs", default="0.003,0.01,0.03")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--batch", default="128", help="examples per step, or `full`")
    parser.add_argument("--random-labels", default="0", help="fractions of training labels replaced at random")
    parser.add_argument("--random-draws", default="uniform",
                        help="how replaced labels are drawn (training.random_labels): uniform, other_class, or both")
    parser.add_argument("--augmentations", default="none,flips,shift2+flips,shift4+flips")
    parser.add_argument("--epochs", type=int, help="the epoch budget (default 400; with --preset, the preset's)")
    parser.add_argument("--every", type=int, default=10, help="epochs between progress lines")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        images = functools.cache(lambda: image_folder("cifar10", Path(work), args.data))

        def cifar10(train_size: int | None) -> DataSpec:
            """CIFAR-10 from the shared JPEGs, unpacked the first time a network needs it."""
            return DataSpec(name="image_folder", path=str(images()[0]), train_size=train_size)

        populations, budget = preset_populations(args, cifar10) if args.preset else grid_populations(args, cifar10)
        runs = {name: PopulationTrainer(BundleConfig(members), load_dataset(members[0].dataset, args.device), budget)
                for name, members in populations.items()}
        sources = {images()[1] if t.bundle.dataset.name == "image_folder" else t.bundle.dataset.name
                   for t in runs.values()}
        print(f"{'; '.join(sorted(sources))}; on {args.device}, {torch.get_num_threads()} thread(s); "
              f"{sum(len(t.members) for t in runs.values())} networks in {len(runs)} populations; budget "
              f"{budget.max_epochs} epochs" + (f" or {budget.max_steps} steps" if budget.max_steps else ""),
              flush=True)
        started = time.perf_counter()
        # A run cut off (gpu.sh's time limit sends SIGTERM, or Ctrl-C) still prints its summary.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            for epoch in range(1, budget.max_epochs + 1):
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
        except KeyboardInterrupt:
            print(f"cut off after {time.perf_counter() - started:.0f} s", flush=True)
        print("members: epochs to 100% train accuracy, or where they stood at the budget (or the cut-off)",
              flush=True)
        converged = 0
        for name, trainer in runs.items():
            _, acc = evaluate(trainer.population(), trainer.data.x_train, trainer.labels)
            for i, config in enumerate(trainer.members):
                status = trainer.status[i]
                epochs = trainer.epoch if status == "running" else trainer.stopped_at[i][1]
                converged += status == "converged"
                outcome = (f"converged in {epochs:.0f} epochs" if status == "converged" else
                           f"{status} at epoch {epochs:.0f}, train accuracy {acc[i]:.3f}")
                print(f"  {name:28s} {member(config):20s} seed {config.seed}: {outcome}", flush=True)
        total = sum(len(t.members) for t in runs.values())
        print(f"{converged} of {total} networks ({converged / total:.0%}) reached 100% train accuracy", flush=True)


def grid_populations(args, cifar10) -> tuple[dict[str, list[NetworkConfig]], Budget]:
    """One population per (shape, nonlinearity, augmentation) of the fully-connected options; its
    members are the random-label shares × learning rates × seeds."""
    batch = None if args.batch == "full" else int(args.batch)
    populations, data = {}, cifar10(args.train_size or 10000)
    for width, depth, activation, aug in itertools.product(numbers(args.widths, int), numbers(args.depths, int),
                                                           args.activations.split(","),
                                                           args.augmentations.split(",")):
        draws = args.random_draws.split(",")
        populations[f"{width}x{depth} {activation} {aug}"] = [
            NetworkConfig(data, width, depth, activation, args.optimizer, lr, batch, random, seed=seed,
                          init="torch_default", **augmentation(aug), **({"random_labels": draw} if random else {}))
            for random, draw, lr, seed in itertools.product(numbers(args.random_labels), draws, numbers(args.lrs),
                                                            numbers(args.seeds, int))
            if random or draw == draws[0]]  # true labels are drawn once
    return populations, Budget(max_epochs=args.epochs or 400, stop_at_full_train_acc=True)


def preset_populations(args, cifar10) -> tuple[dict[str, list[NetworkConfig]], Budget]:
    """The preset's networks that pass every --only, CIFAR-10 read from the shared JPEGs (at the
    preset's training-set size unless --train-size), one population per shape, optimizer, batch and
    augmentation (the planner's groups, whole); the preset's budget unless --epochs."""
    try:
        spec = load_spec(args.preset)
    except SpecError as exc:
        raise SystemExit(str(exc)) from None
    filters = {}
    for item in args.only:
        key, _, values = item.partition("=")
        if key not in NetworkConfig.__dataclass_fields__ or not values:
            raise SystemExit(f"--only {item!r}: use KEY=V1,V2 with KEY one of "
                             f"{', '.join(NetworkConfig.__dataclass_fields__)}")
        filters[key] = [None if key == "batch_size" and v == "full" else yaml.safe_load(v) for v in values.split(",")]
    populations: dict[str, list[NetworkConfig]] = {}
    for net in networks(spec):
        if any(getattr(net, key) not in values for key, values in filters.items()):
            continue
        if net.dataset.name == "cifar10":
            net = replace(net, dataset=cifar10(args.train_size or net.dataset.train_size))
        aug = ("none" if not net.augmentation else
               f"shift{'' if net.augmentation_shift is None else net.augmentation_shift}"
               + ("+flips" if net.augmentation_flips else ""))
        name = f"{layers_name(net)} {net.activation} {net.optimizer} batch {net.batch_size or 'full'} {aug}"
        populations.setdefault(name, []).append(net)
    if not populations:
        raise SystemExit(f"no network of preset {args.preset} passes {' '.join(args.only)}")
    budget = spec.budget if args.epochs is None else replace(spec.budget, max_epochs=args.epochs)
    return populations, budget


def accuracies(trainer: PopulationTrainer) -> str:
    """Each member's train accuracy on its labels now (lr [random-label share]: accuracy, * once
    converged)."""
    _, acc = evaluate(trainer.population(), trainer.data.x_train, trainer.labels)
    return "  ".join(f"{member(c)}: {a:.3f}{'*' if s == 'converged' else ''}"
                     for c, a, s in zip(trainer.members, acc.tolist(), trainer.status))


def member(config: NetworkConfig) -> str:
    noise = (f" random {config.random_label_fraction:g} {config.random_labels}" if config.random_label_fraction
             else "")
    return f"lr {config.learning_rate:g}{noise}"


if __name__ == "__main__":
    main()
