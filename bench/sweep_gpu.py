"""The whole path on one GPU: a time-boxed slice of each paper preset through `sweep run`.

    python bench/sweep_gpu.py                                  # the four paper presets, 6 minutes in all
    python bench/sweep_gpu.py --minutes 3 --presets paper-capacity
    python bench/sweep_gpu.py --cpu --minutes 3                # a smoke run on a CPU: no GPU figures

Each preset runs as a user runs it (`python -m sweep run SPEC --no-report`: Ray's start, Ray
Tune trials, the scoring actors, Parquet), on a slice of its grid that fits its share of
`--minutes`: at most three widths and two depths (smallest, middle, largest), the first
activation, two seeds, every other factor whole (learning rates, label noise, augmentation and
batch size decide convergence), and an epoch budget that the cost model (sweep.plan.costs) expects to
fit. Data: CIFAR-10 from ../shared/data (JPEG, quality 75: close to, not exactly, the original
pixels) as an image folder, with the preset's training-set size; data sets not there are
synthetic images of the same shape and classes (6000 train / 1000 test), said so in the output.

Per preset it prints: networks finished and their statuses; model-steps/s per shape (each
bundle's own rate); achieved TFLOP/s of the training arithmetic over the training phase and its
share of the float32 matmul rate measured at the start of the same run; the GPU's busy share
while training (nvidia-smi, every 0.2 s); the scoring lag after the last trial; the share of
networks at 100% train accuracy within the slice and their epochs; and the projected GPU-hours
of the whole preset (method printed with it).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from sweep.plan import costs, planner  # noqa: E402
from sweep.plan.presets import preset_path  # noqa: E402
from sweep.plan.spec import Budget, parse_spec  # noqa: E402

PRESETS = ("paper-capacity", "paper-factors", "paper-datasets", "paper-trajectories")
SHARED_DATA = ROOT.parent / "shared" / "data"
SYNTHETIC = (6000, 1000)  # train / test images of a synthetic stand-in
SHAPES = {"mnist": ("L", 28, 10), "fashion_mnist": ("L", 28, 10), "cifar10": ("RGB", 32, 10), "cifar100": ("RGB", 32, 100)}
TRAINING_SHARE = 0.45  # of a preset's minutes: the rest is Ray's start, data loading and scoring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0, help="for all presets together, Ray's starts included")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--cpu", action="store_true", help="a smoke run without a GPU (CPU trials, small slices)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder (CIFAR-10 JPEGs)")
    args = parser.parse_args()
    presets = [p for p in args.presets.split(",") if p] or list(PRESETS)
    per_preset = args.minutes * 60 / len(presets)
    peak = matmul_peak(args.cpu)
    print(f"{'CPU' if args.cpu else gpu_name()}; float32 matmul {peak:.2f} TFLOP/s (measured now); "
          f"{per_preset / 60:.1f} min per preset", flush=True)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for preset in presets:
            run_preset(preset, work, per_preset, peak, args)


def gpu_name() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[0]


def matmul_peak(cpu: bool) -> float:
    import torch
    from calibrate import matmul_tflops

    return matmul_tflops(torch.device("cpu" if cpu else "cuda"))


# ---- data -----------------------------------------------------------------------------------


def image_folder(name: str, work: Path, data: Path) -> tuple[Path, str]:
    """An image folder standing in for data set `name`, and what it is."""
    folder = work / f"data-{name}"
    if name == "cifar10" and (data / "cifar10" / "cifar10-train-jpg.tar.gz").is_file():
        if not folder.is_dir():
            for part in ("train", "test"):
                with tarfile.open(data / "cifar10" / f"cifar10-{part}-jpg.tar.gz") as tar:
                    tar.extractall(folder, filter="data")
        return folder, "CIFAR-10 JPEGs from shared/data (real images, JPEG quality 75)"
    mode, size, classes = SHAPES[name]
    if not folder.is_dir():
        from PIL import Image

        rng = np.random.default_rng(0)
        for split, count in zip(("train", "test"), SYNTHETIC):
            for i in range(count):
                label = folder / split / f"c{i % classes:03d}"
                label.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (size, size, 3) if mode == "RGB" else (size, size), dtype=np.uint8)
                Image.fromarray(pixels, mode).save(label / f"{i:05d}.png")
    return folder, f"synthetic {mode} {size}x{size} images, {classes} classes, {SYNTHETIC[0]}/{SYNTHETIC[1]} (no {name} here)"


# ---- the slice ------------------------------------------------------------------------------


def spread(values: list, most: int) -> list:
    """At most `most` of `values`: the smallest, the middle and the largest."""
    ordered = sorted(values)
    picks = {0, len(values) // 2, len(values) - 1} if most >= 3 else {0, len(values) - 1}
    return [ordered[i] for i in sorted(picks)][:most]


def slice_doc(doc: dict, folders: dict, cpu: bool) -> dict:
    out = copy.deepcopy(doc)
    grid = out["grid"]
    grid["widths"] = spread(grid["widths"], 1 if cpu else 3)
    grid["depths"] = spread(grid["depths"], 1 if cpu else 2)
    for key, keep in (("activations", 1), ("seeds", 1 if cpu else 2)):
        if key in grid:
            grid[key] = grid[key][:keep]
    datasets = []
    for entry in out["datasets"]:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        path, _ = folders[entry["name"]]
        sized = {k: entry[k] for k in ("train_size", "test_size") if k in entry}
        if cpu:
            sized = {"train_size": min(sized.get("train_size", 2000), 2000), "test_size": 500}
        datasets.append({"name": "image_folder", "path": str(path), **sized})
    out["datasets"] = datasets
    out["name"] = f"{doc['name']}-slice"
    if cpu:
        out["resources"] = {"bundle_size": "auto", "cpus_per_trial": 1, "gpus_per_trial": 0, "scoring_actors": 1}
    return out


def fit_budget(doc: dict, seconds: float, cpu: bool) -> dict:
    """The slice with the largest epoch budget (at most the preset's) the cost model expects to
    train within `seconds`."""
    spec = parse_spec(doc)
    card = planner.card_for(spec, assume=True)
    bundles = planner.expand(spec, card)
    device = costs.reference_cpu() if cpu else costs.reference_gpu()
    per_card = planner.trials_per_card(planner.gpu_shares(spec, bundles, card)) if card else {}
    # One epoch each, with the stopping check's pass over the training set where the preset has one.
    one = costs.project(bundles, Budget(max_epochs=1, stop_at_full_train_acc=spec.budget.stop_at_full_train_acc),
                        spec.scoring, device, per_card)
    parallel = 1 if card else max(1, (os.cpu_count() or 1) // max(1, int(spec.resources.cpus_per_trial)))
    epochs = max(1, min(spec.budget.max_epochs, int(seconds * parallel / max(one.training_s, 1e-9))))
    out = copy.deepcopy(doc)
    out["budget"] = {**out["budget"], "max_epochs": epochs}
    return out


# ---- measuring ------------------------------------------------------------------------------


class BusySampler:
    """The GPU's utilization (share of time a kernel ran), sampled every 0.2 s with nvidia-smi."""

    def __init__(self, enabled: bool):
        self.samples: list[tuple[float, float]] = []
        self._process = None
        if enabled:
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._process.stdout:
            try:
                self.samples.append((time.time(), float(line.strip().split(",")[0])))
            except ValueError:
                continue

    def stop(self) -> None:
        if self._process:
            self._process.terminate()
            self._process.wait()

    def mean(self, start: float, end: float) -> float | None:
        inside = [u for t, u in self.samples if start <= t <= end]
        return statistics.mean(inside) / 100 if inside else None


def run_preset(preset: str, work: Path, seconds: float, peak: float, args) -> None:
    import pandas as pd

    doc = yaml.safe_load(preset_path(preset).read_text())
    names = sorted({(d if isinstance(d, str) else d["name"]) for d in doc["datasets"]})
    folders = {name: image_folder(name, work, args.data) for name in names}
    sliced = fit_budget(slice_doc(doc, folders, args.cpu), seconds * TRAINING_SHARE, args.cpu)
    spec_file = work / f"{preset}.yaml"
    spec_file.write_text(yaml.safe_dump(sliced))
    spec = parse_spec(sliced)
    storage = work / "sweeps"
    print(f"\n== {preset}: {len(planner.networks(spec))} networks (widths {spec.grid.widths}, depths "
          f"{spec.grid.depths}), budget {spec.budget.max_epochs} epochs (the preset's: {doc['budget']['max_epochs']})")
    for name, (_, what) in folders.items():
        print(f"   data {name}: {what}")
    sampler = BusySampler(not args.cpu)
    started = time.time()
    command = [sys.executable, "-m", "sweep", "run", str(spec_file), "--storage", str(storage), "--name", preset,
               "--no-report"]
    code, stderr = run_within(command, max(90.0, 1.6 * seconds))
    ended = time.time()
    sampler.stop()
    print_progress(storage / preset)
    if code != 0:
        print(f"   sweep run {'stopped at its time limit' if code is None else f'failed ({code})'}:\n{stderr[-3000:]}")
        return
    tables = storage / preset / "tables"
    networks = pd.read_parquet(tables / "networks")
    first_checkpoint = min(p.stat().st_mtime for p in (storage / preset).glob("bundle-*/checkpoint_*/meta.json"))
    trained = max(p.stat().st_mtime for p in (tables / "networks").glob("*.parquet"))
    scored = max(p.stat().st_mtime for p in (tables / "scores").glob("*.parquet"))
    training_s = trained - first_checkpoint
    report(preset, spec, doc, networks, training_s, scored - trained, ended - started, peak,
           sampler.mean(first_checkpoint, trained))


def run_within(command: list[str], limit_s: float) -> tuple[int | None, str]:
    """Run `command` (its own process group) for at most `limit_s`: (exit code or None when it
    was stopped, its stderr). Stopped with Ctrl-C first, so Ray shuts down and frees the card."""
    with tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, text=True, cwd=ROOT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            code = None
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        err.seek(0)
        return code, err.read()


def print_progress(sweep_dir: Path) -> None:
    """Each trial's last report to Tune: epochs done, and the share of its time spent inside
    train_epoch (the rest: data loading, checkpoints, Tune's report round trips)."""
    last = []
    for path in sweep_dir.glob("*/result.json"):
        lines = path.read_text().strip().splitlines()
        if lines:
            last.append(json.loads(lines[-1]))
    timed = [r for r in last if r.get("train_s") and r.get("time_total_s")]
    if not timed:
        print(f"   Tune: {len(last)} trials reported, none with timings")
        return
    epochs = [r["epoch"] for r in timed]
    per_epoch = [r["train_s"] / max(r["epoch"], 1) for r in timed]
    share = sum(r["train_s"] for r in timed) / sum(r["time_total_s"] for r in timed)
    print(f"   Tune: {len(timed)} trials reported; epochs {min(epochs)}-{max(epochs)} (median "
          f"{statistics.median(epochs):.0f}); seconds per epoch in train_epoch median {statistics.median(per_epoch):.3f} "
          f"({min(per_epoch):.3f}-{max(per_epoch):.3f}); {share:.0%} of the trials' time inside train_epoch")


def report(preset, spec, doc, networks, training_s, lag_s, wall_s, peak, busy) -> None:
    counts = networks["status"].value_counts().to_dict()
    print(f"   finished {len(networks)} networks in {wall_s:.0f} s ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
          f"training phase {training_s:.0f} s")
    info = {row.network_id: row for row in networks.itertuples()}
    by_id = {n.network_id: n for n in planner.networks(spec)}
    flops = {nid: costs.step_flops(planner.BundleConfig((by_id[nid],))) for nid in info}
    print(f"   {'shape':<22}{'bundles':>8}{'model-steps/s per bundle':>26}")
    for (width, depth), part in networks.groupby(["width", "depth"]):
        per_bundle = part.groupby("bundle_id").agg(steps=("steps", "sum"), wall=("wall_time_s", "max"))
        rate = per_bundle["steps"].sum() / max(per_bundle["wall"].sum(), 1e-9)
        print(f"   {f'{width}x{depth}':<22}{len(per_bundle):>8}{rate:>26,.0f}")
    done_flops = sum(info[nid].steps * flops[nid] for nid in info)
    achieved = done_flops / max(training_s, 1e-9) / 1e12
    print(f"   achieved {achieved:.2f} TFLOP/s over the training phase: {achieved / peak:.0%} of the float32 matmul "
          f"rate ({peak:.2f})" + (f"; GPU busy {busy:.0%} of the training phase" if busy is not None else ""))
    print(f"   scoring lag after the last trial: {lag_s:.1f} s ({lag_s / max(training_s, 1e-9):.0%} of training)")
    converged = networks[networks["status"] == "converged"]
    if len(converged):
        print(f"   at 100% train accuracy: {len(converged)} of {len(networks)} ({len(converged) / len(networks):.0%}), "
              f"epochs median {converged['epochs'].median():.0f} (range {converged['epochs'].min():.0f}-"
              f"{converged['epochs'].max():.0f})")
    else:
        print(f"   at 100% train accuracy: 0 of {len(networks)} within the slice's {spec.budget.max_epochs} epochs")
    project_whole(preset, doc, networks, done_flops, training_s + lag_s, "CPU" if busy is None else "GPU")


def project_whole(preset: str, doc: dict, networks, done_flops: float, seconds: float, device: str) -> None:
    """The whole preset's card-hours at the slice's measured card-seconds per training FLOP
    (scoring's share included: it ran on the same card)."""
    whole = parse_spec(doc)
    factor_key = ("optimizer", "learning_rate", "random_label_fraction", "augmentation", "full_batch")
    converged = networks[networks["status"] == "converged"]
    epochs_by_key = converged.groupby(list(factor_key))["epochs"].mean().to_dict()
    total, measured, at_budget = 0.0, 0, 0
    for net in planner.networks(whole):
        key = (net.optimizer, net.learning_rate, net.random_label_fraction, net.augmentation, net.batch_size is None)
        bundle = planner.BundleConfig((net,))
        n = costs.train_size(bundle)
        epochs = epochs_by_key.get(key)
        if epochs is None:
            epochs, at_budget = costs.expected_epochs(net, whole.budget)[0], at_budget + 1
        else:
            measured += 1
        total += epochs * math.ceil(n / min(net.batch_size or n, n)) * costs.step_flops(bundle)
    hours = total * seconds / max(done_flops, 1e-9) / 3600
    print(f"   projected for all {len(planner.networks(whole))} networks of {preset}: {hours:.2f} {device}-hours "
          f"(the slice's {seconds:.0f} s per {done_flops / 1e12:.1f} TFLOP of training, scoring included, times the "
          f"preset's training FLOPs; {measured} networks at the mean epochs the slice's converged networks with the "
          f"same optimizer, learning rate, label noise, augmentation and batch size took, {at_budget} with no such "
          "converged network at the cost model's expected epochs (the convergence table, else the preset's budget))")


if __name__ == "__main__":
    main()
