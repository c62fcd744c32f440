"""`python -m analysis PATH`: write a sweep's report and print its correlation table."""

from __future__ import annotations

import argparse
import sys

from analysis.correlations import DEFAULT_RESAMPLES, MIN_RESAMPLES
from analysis.findings import N_RESAMPLES
from analysis.report import build_report, format_correlation_table



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Rank-correlate a sweep's metrics with the generalization gap and write "
                    "report/report.md with tables and figures.")
    parser.add_argument("path", help="sweep directory (<storage>/<name>) or its tables/ directory; "
                                     "local, s3:// or gs://")
    parser.add_argument("--out", help="report directory (default: <sweep>/report; ./<sweep name>-report for an "
                                      "s3:// or gs:// sweep)")
    parser.add_argument("--no-bootstrap", action="store_true",
                        help="skip the bootstrap confidence intervals (much faster)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                        help=f"bootstrap resamples of the correlations' intervals (default {DEFAULT_RESAMPLES}, at "
                             f"least {MIN_RESAMPLES}; the findings' intervals take {N_RESAMPLES})")
    parser.add_argument("--include-unconverged", action="store_true",
                        help="also networks stopped at the budget short of 100%% train accuracy (default: the "
                             "paper's protocol, networks at 100%%)")
    args = parser.parse_args(argv)
    if args.resamples < MIN_RESAMPLES:
        parser.error(f"--resamples must be at least {MIN_RESAMPLES}, got {args.resamples} (--no-bootstrap skips "
                     "the intervals)")
    try:
        report = build_report(args.path, args.out, bootstrap=not args.no_bootstrap,
                              n_resamples=args.resamples, include_unconverged=args.include_unconverged)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_correlation_table(report.correlations))
    print(f"\nreport: {report.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
