"""Does scoring slow a sweep down? The same sweep with and without the scoring actors.

    python bench/sweep_overhead.py                 # the digits preset, 3 rounds, one Ray instance
    python bench/sweep_overhead.py SPEC --repeats 5
    python bench/sweep_overhead.py --command       # `sweep run` as a user runs it

Target (issue 4): on a 2-core CPU a `digits` sweep with scoring takes at most 1.3x the same
sweep without it. Two measures:

- default, the sweep alone: Ray's start is excluded (it is paid once either way), and so is
  the start of Ray's worker processes: an untimed warm-up sweep runs first, because the first
  sweep in a Ray instance pays it and whichever variant ran first would look slower. The two
  variants then alternate; wall time covers training and, with scoring, draining the actor
  pool. The stricter measure: everything that is the same either way is left out.
- `--command`: the README's command, `sweep run PRESET --no-report` against the same with
  `--no-score`, each a fresh process starting its own Ray, as a user sees it.

Each variant's time is also split where the overhead shows: until the first checkpoint,
training (first to last checkpoint) and after the last checkpoint (with scoring: the drain).
"""

from __future__ import annotations

import argparse
import contextlib
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
    parser.add_argument("--command", action="store_true", help="time `sweep run` in fresh processes")
    args = parser.parse_args()
    variants = {"without scoring": False, "with scoring": True}
    timer = command_timer if args.command else sweep_timer
    with tempfile.TemporaryDirectory() as storage, timer(args.source, storage) as sweep:
        times: dict[str, list[float]] = {label: [] for label in variants}
        parts: dict[str, list[tuple[float, float, float]]] = {label: [] for label in variants}
        for repeat in range(args.repeats):
            for label, score in variants.items():
                name, started = f"{'s' if score else 'n'}{repeat}", time.time()
                times[label].append(sweep(name, score))
                parts[label].append(phases(Path(storage) / name, started, time.time()))
    what = "`sweep run` in fresh processes" if args.command else "the sweep in one warm Ray instance"
    print(f"\n{args.source}: {what}, {os.cpu_count()} CPUs, {args.repeats} round(s)")
    for label, values in times.items():
        listed = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {label:16s} median {statistics.median(values):6.1f} s   best {min(values):6.1f} s   ({listed})")
        start, training, after = (statistics.median(phase) for phase in zip(*parts[label]))
        print(f"  {'':16s} until the first checkpoint {start:.1f} s, training {training:.1f} s, "
              f"after the last {after:.1f} s (medians)")
    median = statistics.median(times["with scoring"]) / statistics.median(times["without scoring"])
    best = min(times["with scoring"]) / min(times["without scoring"])
    print(f"  ratio            median {median:6.2f}x   best {best:6.2f}x  (target <= 1.3x)")


def phases(folder: Path, started: float, ended: float) -> tuple[float, float, float]:
    """Seconds until the first checkpoint was written, from it to the last (training), and from
    the last to the end (with scoring: the drain), from the checkpoints' file times."""
    from sweep.checkpoints import META_FILE

    landed = sorted(path.stat().st_mtime for path in folder.glob(f"*/*/{META_FILE}"))
    return landed[0] - started, landed[-1] - landed[0], ended - landed[-1]


@contextlib.contextmanager
def sweep_timer(source: str, storage: str):
    """Times `runner.run` in one Ray instance, after an untimed warm-up sweep."""
    import ray

    from sweep import runner
    from sweep.cli import _spec_text
    from sweep.spec import expand, limit_networks, load_spec

    spec = load_spec(source)
    bundles = expand(spec)
    text, suffix = _spec_text(source)
    ray.init(**runner.LOCAL_RAY)  # as `sweep run` starts it
    quiet = open(os.devnull, "w")

    def sweep(name: str, score: bool, plan_bundles=bundles) -> float:
        plan = runner.make_plan(spec, plan_bundles, name=name, storage=storage,
                                spec_source=source, spec_text=text, spec_suffix=suffix)
        start = time.perf_counter()
        runner.run(plan, score=score, progress_stream=quiet)
        return time.perf_counter() - start

    sweep("warm-up", True, limit_networks(bundles, 2 * len(bundles[0].members)))
    yield sweep
    ray.shutdown()


@contextlib.contextmanager
def command_timer(source: str, storage: str):
    """Times the `sweep` command in a fresh process (and Ray) per run."""

    def sweep(name: str, score: bool) -> float:
        command = [sys.executable, "-m", "sweep.cli", "run", source, "--no-report",
                   "--storage", storage, "--name", name] + ([] if score else ["--no-score"])
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    yield sweep


if __name__ == "__main__":
    main()
