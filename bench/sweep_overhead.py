"""Does scoring slow a sweep down? The same sweep with and without the scoring actors.

    python bench/sweep_overhead.py                     # `sweep run digits`, 3 rounds of each
    python bench/sweep_overhead.py SPEC --repeats 5
    python bench/sweep_overhead.py --address ADDRESS   # each run joins a running cluster
    python bench/sweep_overhead.py --in-process        # the sweep alone, in one warm Ray

Target (issue 4): on a 2-core CPU a `digits` sweep with scoring takes at most 1.3x the same
sweep without it, as a user runs it: the README's command, `sweep run PRESET --no-report`,
against the same with `--no-score`, each a fresh process starting its own Ray (the default)
or joining the cluster at `--address` (as after `ray start`: Ray's start is left out, the
driver's and the workers' are not).

`--in-process` is the diagnostic: one Ray instance in this process, an untimed warm-up sweep
first (the first sweep in a Ray instance starts its worker processes, and whichever variant
ran first would look slower), then the two variants alternate; wall time covers training
and, with scoring, draining the actor pool. Everything that is the same either way is left
out, so the scoring's cost is the largest share it can be of what is timed.

Each variant's time is also split where the overhead shows: until the first checkpoint,
training (first to last checkpoint) and after the last checkpoint (with scoring: the drain).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", default="digits", help="preset or spec file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--address", help="the Ray cluster each `sweep run` joins (default: its own)")
    parser.add_argument("--in-process", action="store_true", help="time the sweep alone, in one warm Ray")
    args = parser.parse_args()
    if args.address and args.in_process:
        parser.error("--address times `sweep run` joining a cluster; --in-process starts its own Ray")
    variants = {"without scoring": False, "with scoring": True}
    timer = sweep_timer if args.in_process else functools.partial(command_timer, address=args.address)
    with tempfile.TemporaryDirectory() as storage, timer(args.source, storage) as sweep:
        times: dict[str, list[float]] = {label: [] for label in variants}
        parts: dict[str, list[tuple[float, float, float]]] = {label: [] for label in variants}
        for repeat in range(args.repeats):
            for label, score in variants.items():
                name, started = f"{'s' if score else 'n'}{repeat}", time.time()
                times[label].append(sweep(name, score))
                parts[label].append(phases(Path(storage) / name, started, time.time()))
    what = "`sweep run` in fresh processes" + (f", joining {args.address}" if args.address else "")
    if args.in_process:
        what = "the sweep alone, in one warm Ray instance"
    print(f"\n{args.source}: {what}, {os.cpu_count()} CPUs, {args.repeats} round(s)")
    for label, values in times.items():
        listed = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {label:16s} median {statistics.median(values):6.1f} s   best {min(values):6.1f} s   ({listed})")
        start, training, after = (statistics.median(phase) for phase in zip(*parts[label]))
        print(f"  {'':16s} until the first checkpoint {start:.1f} s, training {training:.1f} s, "
              f"after the last {after:.1f} s (medians)")
    median = statistics.median(times["with scoring"]) / statistics.median(times["without scoring"])
    best = min(times["with scoring"]) / min(times["without scoring"])
    target = "the target (<= 1.3x) is judged on `sweep run`" if args.in_process else "target <= 1.3x"
    print(f"  ratio            median {median:6.2f}x   best {best:6.2f}x  ({target})")


def phases(folder: Path, started: float, ended: float) -> tuple[float, float, float]:
    """Seconds until the first checkpoint was written, from it to the last (training), and from
    the last to the end (with scoring: the drain), from the checkpoints' file times."""
    from sweep.training.checkpoints import META_FILE

    landed = sorted(path.stat().st_mtime for path in folder.glob(f"*/*/{META_FILE}"))
    return landed[0] - started, landed[-1] - landed[0], ended - landed[-1]


@contextlib.contextmanager
def sweep_timer(source: str, storage: str):
    """Times `runner.run` in one Ray instance, after an untimed warm-up sweep."""
    import ray

    from sweep.command import runner
    from sweep.plan import sweep_plan
    from sweep.plan.networks import limit_networks
    from sweep.plan.planner import expand
    from sweep.plan.spec import parse_spec_text, read_spec, spec_origin

    text, suffix = read_spec(source)
    spec = parse_spec_text(text, suffix, spec_origin(source))
    bundles = expand(spec)
    ray.init(**runner.LOCAL_RAY)  # as `sweep run` starts it
    quiet = open(os.devnull, "w")

    def sweep(name: str, score: bool, plan_bundles=bundles) -> float:
        plan = sweep_plan.make_plan(spec, plan_bundles, name=name, storage=storage,
                                spec_source=source, spec_text=text, spec_suffix=suffix)
        start = time.perf_counter()
        runner.run(plan, score=score, progress_stream=quiet)
        return time.perf_counter() - start

    sweep("warm-up", True, limit_networks(bundles, 2 * len(bundles[0].members)))
    yield sweep
    ray.shutdown()


@contextlib.contextmanager
def command_timer(source: str, storage: str, address: str | None = None):
    """Times the `sweep` command in a fresh process per run, each starting its own Ray or
    joining the cluster at `address`."""

    def sweep(name: str, score: bool) -> float:
        command = [sys.executable, "-m", "sweep", "run", source, "--no-report",
                   "--storage", storage, "--name", name] + ([] if score else ["--no-score"])
        command += ["--address", address] if address else []
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    yield sweep


if __name__ == "__main__":
    main()
