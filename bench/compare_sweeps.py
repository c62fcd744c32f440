"""Are two sweeps' tables the same? For refactors that must not change results: run the same
spec before and after, then

    python bench/compare_sweeps.py SWEEP_DIR_BEFORE SWEEP_DIR_AFTER

Every table is compared row by row (sorted by its key columns), every column bit for bit except
the ones that measure time (`wall_time_s`) or name the sweep (`sweep`). Exit 0 when equal, 1 with
the differing columns otherwise.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

import analysis

UNCOMPARED = {"wall_time_s", "sweep"}
TABLES = ("networks", "scores", "points", "trajectories", "slices")


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.drop(columns=[c for c in UNCOMPARED if c in frame])
    frame = frame.astype({c: str for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)})
    keys = [c for c in frame.columns if not _holds_arrays(frame[c])]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def _holds_arrays(column: pd.Series) -> bool:
    return bool(column.map(lambda v: isinstance(v, (list, np.ndarray))).any())


def _same(a: pd.Series, b: pd.Series) -> bool:
    if _holds_arrays(a):
        return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    return a.equals(b)


def differences(before: str, after: str) -> list[str]:
    old, new = analysis.load(before), analysis.load(after)
    found = []
    for table in TABLES:
        a, b = _canonical(getattr(old, table)), _canonical(getattr(new, table))
        if list(a.columns) != list(b.columns) or len(a) != len(b):
            found.append(f"{table}: columns {list(a.columns)} / {list(b.columns)}, rows {len(a)} / {len(b)}")
            continue
        found += [f"{table}.{c}: differs" for c in a.columns if not _same(a[c], b[c])]
        print(f"{table}: {len(a)} rows, {len(a.columns)} columns compared")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args()
    found = differences(args.before, args.after)
    print("\n".join(found) if found else "the tables are the same")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
