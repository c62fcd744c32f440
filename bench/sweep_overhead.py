"""Does scoring slow a sweep down? The same sweep with and without the scoring actors.

    python bench/sweep_overhead.py                 # the digits preset, both ways, one Ray instance
    python bench/sweep_overhead.py SPEC --repeats 2

Target (issue 4): on a 2-core CPU a `digits` sweep with scoring takes at most 1.3x the same
sweep without it. Wall time covers training and, with scoring, draining the actor pool; Ray's
start is excluded (it is paid once either way).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", default="digits", help="preset or spec file")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import ray

    from sweep import runner
    from sweep.cli import _spec_text
    from sweep.spec import expand, load_spec

    spec = load_spec(args.source)
    bundles = expand(spec)
    text, suffix = _spec_text(args.source)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    times: dict[str, list[float]] = {"without scoring": [], "with scoring": []}
    with tempfile.TemporaryDirectory() as storage:
        for repeat in range(args.repeats):
            for label, score in (("without scoring", False), ("with scoring", True)):
                plan = runner.make_plan(spec, bundles, name=f"{'s' if score else 'n'}{repeat}", storage=storage,
                                        spec_source=args.source, spec_text=text, spec_suffix=suffix)
                start = time.perf_counter()
                runner.run(plan, score=score, progress_stream=open(os.devnull, "w"))
                times[label].append(time.perf_counter() - start)
    ray.shutdown()
    networks = sum(len(b.members) for b in bundles)
    print(f"\n{args.source}: {networks} networks in {len(bundles)} bundles, {os.cpu_count()} CPUs")
    for label, values in times.items():
        print(f"  {label:16s} {min(values):7.1f} s (best of {len(values)})")
    ratio = min(times["with scoring"]) / min(times["without scoring"])
    print(f"  ratio            {ratio:7.2f}x  (target <= 1.3x)")


if __name__ == "__main__":
    main()
