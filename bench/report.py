"""Time `analysis.report.build_report` on a synthetic sweep, with and without the bootstrap.

    python bench/report.py [--networks 1000] [--points 1000] [--resamples 1000]

Prints the per-step timings of each run and the bootstrap's cost as a ratio to the run
without it. The acceptance bound: 1000 networks without the bootstrap under 30 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from analysis.report import build_report
from analysis.synthetic import SyntheticSweep, write_synthetic_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=1000)
    parser.add_argument("--points", type=int, default=1000, help="scored test points per network")
    parser.add_argument("--ellipses", type=int, default=2, help="ellipses per kind and network")
    parser.add_argument("--k", type=int, default=128, help="points per ellipse")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    spec = SyntheticSweep(n_networks=args.networks, points_per_network=args.points,
                          ellipses=args.ellipses, k=args.k, slice_networks=2, grid=256)
    with tempfile.TemporaryDirectory() as tmp:
        clock = time.perf_counter()
        sweep = write_synthetic_sweep(Path(tmp) / "bench", spec)
        print(f"synthetic sweep: {args.networks} networks, {args.points} points each, "
              f"{3 * 2 * args.ellipses * args.k} trajectory rows each "
              f"(written in {time.perf_counter() - clock:.1f} s)")
        totals = {}
        for bootstrap in (False, True):
            cpu = time.process_time()
            report = build_report(sweep, Path(tmp) / f"report-{bootstrap}", bootstrap=bootstrap,
                                  n_resamples=args.resamples)
            cpu = time.process_time() - cpu
            name = f"bootstrap ({args.resamples} resamples)" if bootstrap else "no bootstrap"
            print(f"\n{name}:")
            for step, seconds in report.timings.items():
                print(f"  {step:<55} {seconds:7.2f} s")
            # Wall time depends on what else shares the CPU; CPU time much less so.
            print(f"  {'CPU time of this process':<55} {cpu:7.2f} s  "
                  f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
            totals[bootstrap] = report.timings["total"]
        print(f"\nreport with bootstrap / without: {totals[True] / totals[False]:.2f}x")


if __name__ == "__main__":
    main()
