"""Scoring throughput: a bundle's checkpoint scored as one stacked population against the same
networks scored one at a time, then (where Ray is installed) the actor pool against a loop that
calls the metric core once per network.

    python bench/scoring.py --device cuda          # a GPU box; Ray optional
    python bench/scoring.py --quick                # a short CPU run

Prints checkpoints/s (one checkpoint = one bundle), networks/s and points/s (network × point
evaluations of every point metric), and the ratios, all measured in this run on this device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch

import metrics_core as mc
from sweep.plan.networks import BundleConfig, NetworkConfig
from sweep.plan.spec import DataSpec
from sweep.scoring.settings import TRAIN_METRICS, ScoringSettings
from sweep.scoring.inputs import scoring_inputs
from sweep.scoring.measure import score_checkpoint, score_checkpoints
from sweep.scoring.scorer import Scorer, checkpoint_dataset, load_checkpoint
from sweep.training.data import Dataset


def synthetic_data(d: int, classes: int, n_train: int, n_test: int, device: str) -> Dataset:
    """Standardised Gaussian inputs with random labels: the scoring cost depends on shapes only."""
    g = torch.Generator().manual_seed(0)
    x_train, x_test = torch.randn(n_train, d, generator=g), torch.randn(n_test, d, generator=g)
    y_train, y_test = torch.randint(classes, (n_train,), generator=g), torch.randint(classes, (n_test,), generator=g)
    side = int(d**0.5)
    to = lambda t: t.to(device)  # noqa: E731
    return Dataset("synthetic", to(x_train), to(y_train), to(x_test), to(y_test), classes, (1, side, side),
                   torch.zeros(d, device=device), torch.ones(d, device=device), False)


def population(members: int, sizes: list[int], device: str) -> mc.MLP:
    torch.manual_seed(0)
    nets = []
    for _ in range(members):
        layers = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
        nets.append(torch.nn.Sequential(*layers[:-1]))
    return mc.stack(nets).to(device)


TOLERANCE = 1e-3  # float32 on both sides, summed in different orders


def relative_differences(ours: pa.Table, reference: pa.Table) -> pd.Series:
    """Per metric, the largest |a − b| / max(|b|, 1e-30) of `mean` over rows both tables hold."""
    key = ["network_id", "split", "metric"]
    ours, reference = (t.select([*key, "mean"]).to_pandas().astype({"split": str, "metric": str}) for t in (ours, reference))
    both = ours.merge(reference, on=key, suffixes=("", "_ref"))
    if both.empty:
        raise SystemExit("no rows in common to compare")
    gap = (both["mean"] - both["mean_ref"]).abs() / both["mean_ref"].abs().clip(lower=1e-30)
    return gap.groupby(both["metric"].astype(str)).max()


def timed(fn, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def pure_path(args, settings: ScoringSettings) -> None:
    sizes = [args.input_dim] + [args.width] * args.depth + [10]
    data = synthetic_data(args.input_dim, 10, max(2000, settings.train_points), max(1000, settings.points), args.device)
    pop = population(args.members, sizes, args.device)
    inputs = scoring_inputs(data, settings)
    ids = [f"n{i}" for i in range(args.members)]
    meta = {"bundle_id": "bench", "network_ids": ids, "tag": "epoch-000001", "step": 0, "statuses": ["budget"] * len(ids)}
    one = [mc.MLP(tuple(w[i : i + 1] for w in pop.weights), tuple(b[i : i + 1] for b in pop.biases), pop.activation) for i in range(args.members)]

    def batched():
        return score_checkpoint(pop, meta, data, settings, inputs)["scores"]

    def per_network():
        return pa.concat_tables([score_checkpoint(net, {**meta, "network_ids": [ids[i]], "statuses": ["budget"]}, data, settings,
                                                  inputs)["scores"] for i, net in enumerate(one)])

    ours = batched()  # also the warm-up: caches, kernels, allocator
    references = {"one network at a time": per_network()}
    if args.device != "cpu":
        # The same first networks through the CPU path: the device's kernels against the CPU's.
        cpu_data = synthetic_data(args.input_dim, 10, max(2000, settings.train_points), max(1000, settings.points), "cpu")
        few = args.members // 8
        sub = mc.MLP(tuple(w[:few].cpu() for w in pop.weights), tuple(b[:few].cpu() for b in pop.biases), pop.activation)
        meta_few = {**meta, "network_ids": ids[:few], "statuses": ["budget"] * few}
        references[f"CPU, first {few} networks"] = score_checkpoint(sub, meta_few, cpu_data, settings)["scores"]
    for name, reference in references.items():
        print(f"batched {args.device} vs {name}: largest relative difference of each metric's mean")
        differences = relative_differences(ours, reference)
        print("  " + ", ".join(f"{metric} {value:.1e}" for metric, value in differences.items()))
        if (differences > TOLERANCE).any():
            raise SystemExit(f"scores differ by more than {TOLERANCE:g} (relative): {dict(differences[differences > TOLERANCE])}")

    # The same networks as 4 checkpoints (bundles of one shape): one call for all, or one each.
    parts = [(mc.MLP(tuple(w[c::4] for w in pop.weights), tuple(b[c::4] for b in pop.biases), pop.activation),
              {**meta, "bundle_id": f"bench{c}", "network_ids": ids[c::4], "statuses": ["budget"] * len(ids[c::4])})
             for c in range(4)]

    def together():
        return score_checkpoints(parts, data, settings, inputs)

    def each():
        return [score_checkpoint(p, m, data, settings, inputs) for p, m in parts]

    points = args.members * (settings.points + settings.train_points)
    t_batched, t_loop = timed(batched, args.repeats), timed(per_network, args.repeats)
    t_together, t_each = timed(together, args.repeats), timed(each, args.repeats)
    print(f"score_checkpoint, {args.members} nets {'-'.join(map(str, sizes))}, "
          f"{settings.points}+{settings.train_points} points, k={settings.transitions_k}:")
    for name, t in (("batched population", t_batched), ("4 checkpoints, one call", t_together),
                    ("4 checkpoints, one each", t_each), ("one network at a time", t_loop)):
        print(f"  {name:24s} {args.members / t:9.2f} networks/s {points / t:12.0f} points/s")
    print(f"  ratio batched / one at a time: {t_loop / t_batched:.2f}x; 4 checkpoints in one call / one network at a "
          f"time: {t_loop / t_together:.2f}x, / one call each: {t_each / t_together:.2f}x")

    # Jiang et al.'s train-point measures (PAC-Bayes searches, margins) are most of a trained
    # checkpoint's work, and a network alone already searches its noise samples as one population:
    # the same two sides without them, to see what the rest gains.
    rest = dataclasses.replace(settings, metrics=tuple(m for m in settings.metrics if m not in TRAIN_METRICS))
    rest_inputs = scoring_inputs(data, rest)
    t_rest = timed(lambda: score_checkpoint(pop, meta, data, rest, rest_inputs), args.repeats)
    t_rest_loop = timed(lambda: [score_checkpoint(net, {**meta, "network_ids": [ids[i]], "statuses": ["budget"]}, data,
                                                  rest, rest_inputs) for i, net in enumerate(one)], args.repeats)
    print(f"  without the train-point measures ({', '.join(TRAIN_METRICS)}): batched {args.members / t_rest:.2f} "
          f"networks/s, one at a time {args.members / t_rest_loop:.2f}, ratio {t_rest_loop / t_rest:.2f}x; "
          f"the measures took {1 - t_rest / t_batched:.0%} of the batched time")


def write_checkpoints(root: Path, count: int, members: int, width: int, depth: int) -> list[str]:
    sources = []
    for c in range(count):
        bundle = BundleConfig(tuple(
            NetworkConfig(dataset=DataSpec("digits"), width=width, depth=depth, activation="relu", optimizer="sgd",
                          learning_rate=0.1, batch_size=32, random_label_fraction=0.0, augmentation=False,
                          seed=c * members + s, init="torch_default")
            for s in range(members)
        ))
        pop = population(members, [64] + [width] * depth + [10], "cpu")
        directory = root / f"checkpoint-{c}"
        directory.mkdir(parents=True)
        torch.save({"weights": list(pop.weights), "biases": list(pop.biases), "activation": "relu",
                    "activation_params": {}}, directory / "population.pt")
        meta = {"bundle_id": bundle.bundle_id, "bundle": bundle.to_dict(), "network_ids": bundle.network_ids,
                "tag": "end", "step": 0, "epoch": 0, "statuses": ["converged"] * members}
        (directory / "meta.json").write_text(json.dumps(meta))
        sources.append(str(directory))
    return sources


def pool_path(args, settings: ScoringSettings) -> None:
    try:
        import ray
    except ImportError:
        print("actor pool: skipped (Ray is not installed)")
        return
    from sweep.scoring.actors import ScoringPool

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    gpus = 1.0 / args.actors if args.device == "cuda" else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = write_checkpoints(root / "checkpoints", args.checkpoints, args.pool_members, args.pool_width, 2)
        points = args.checkpoints * args.pool_members * (settings.points + settings.train_points)

        # Baseline: one process calls the metric core once per network (M = 1 populations).
        scorer = Scorer(args.device)
        started = time.perf_counter()
        for source in sources:
            pop, meta = load_checkpoint(source)
            data, inputs = scorer.inputs(checkpoint_dataset(meta), settings)
            for i, network_id in enumerate(meta["network_ids"]):
                single = mc.MLP(tuple(w[i : i + 1] for w in pop.weights), tuple(b[i : i + 1] for b in pop.biases), pop.activation)
                score_checkpoint(single, {**meta, "network_ids": [network_id], "statuses": ["converged"]}, data, settings, inputs)
        t_loop = time.perf_counter() - started

        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            cpus = max(1, (os.cpu_count() or 1) // args.actors)  # as many threads in all as the loop has
            pool = ScoringPool(str(root / "tables"), settings, num_actors=args.actors, cpus_per_actor=cpus, gpus_per_actor=gpus)
            pool.submit(sources[0])  # start the actors and load the data before timing
            pool.drain()
            started = time.perf_counter()
            for source in sources:
                pool.submit(source)
            stats = pool.drain()
            t_pool = time.perf_counter() - started
            pool.shutdown()
        finally:
            ray.shutdown()
    assert stats["failed"] == 0, stats["failures"]
    print(f"actor pool, {args.checkpoints} checkpoints of {args.pool_members} nets 64-{args.pool_width}-{args.pool_width}-10 "
          f"(digits), {args.actors} actor(s), tables written:")
    for name, t in ((f"actor pool ({'several checkpoints a call' if gpus else 'one checkpoint a call'})", t_pool),
                    ("loop, one net per call", t_loop)):
        print(f"  {name:24s} {args.checkpoints / t:8.3f} checkpoints/s {points / t:12.0f} points/s")
    print(f"  ratio pool / per-network loop: {t_loop / t_pool:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes for a CPU smoke run")
    parser.add_argument("--no-ray", action="store_true", help="only the pure scoring path")
    args = parser.parse_args()
    quick = args.quick
    args.members = 8 if quick else 32
    args.input_dim, args.width, args.depth = 784, 256, 3
    args.repeats = 1 if quick else 3
    args.checkpoints, args.pool_members, args.pool_width, args.actors = (6, 8, 64, 1) if quick else (16, 16, 256, 2)
    settings = ScoringSettings(points=200, train_points=200, transitions_k=64) if quick else ScoringSettings()
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    pure_path(args, settings)
    if not args.no_ray:
        pool_path(args, settings)


if __name__ == "__main__":
    main()
