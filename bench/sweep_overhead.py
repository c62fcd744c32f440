"""Does scoring slow a sweep down? The same sweep with and without the scoring actors.

    python bench/sweep_overhead.py                 # the digits preset, 3 rounds, one Ray instance
    python bench/sweep_overhead.py SPEC --repeats 5

Target (issue 4): on a 2-core CPU a `digits` sweep with scoring takes at most 1.3x the same
sweep without it. Ray's start is excluded (it is paid once either way), and so is the start
of Ray's worker processes: an untimed warm-up sweep runs first, because the first sweep in a
Ray instance pays it and whichever variant ran first would look slower. The two variants
then alternate; wall time covers training and, with scoring, draining the actor pool.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", default="digits", help="preset or spec file")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray

    from sweep import runner
    from sweep.cli import _spec_text
    from sweep.spec import expand, limit_networks, load_spec

    spec = load_spec(args.source)
    bundles = expand(spec)
    text, suffix = _spec_text(args.source)
    ray.init(**runner.LOCAL_RAY)  # as `sweep run` starts it
    times: dict[str, list[float]] = {"without scoring": [], "with scoring": []}
    quiet = open(os.devnull, "w")
    with tempfile.TemporaryDirectory() as storage:

        def sweep(name: str, plan_bundles, score: bool) -> float:
            plan = runner.make_plan(spec, plan_bundles, name=name, storage=storage,
                                    spec_source=args.source, spec_text=text, spec_suffix=suffix)
            start = time.perf_counter()
            runner.run(plan, score=score, progress_stream=quiet)
            return time.perf_counter() - start

        sweep("warm-up", limit_networks(bundles, 2 * len(bundles[0].members)), score=True)
        for repeat in range(args.repeats):
            for label, score in (("without scoring", False), ("with scoring", True)):
                times[label].append(sweep(f"{'s' if score else 'n'}{repeat}", bundles, score))
    ray.shutdown()
    networks = sum(len(b.members) for b in bundles)
    print(f"\n{args.source}: {networks} networks in {len(bundles)} bundles, {os.cpu_count()} CPUs, "
          f"{args.repeats} round(s)")
    for label, values in times.items():
        listed = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {label:16s} median {statistics.median(values):6.1f} s   best {min(values):6.1f} s   ({listed})")
    median = statistics.median(times["with scoring"]) / statistics.median(times["without scoring"])
    best = min(times["with scoring"]) / min(times["without scoring"])
    print(f"  ratio            median {median:6.2f}x   best {best:6.2f}x  (target <= 1.3x)")


if __name__ == "__main__":
    main()
