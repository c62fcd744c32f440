"""Which networks enter the statistics: the paper compares networks at 100% train accuracy.

    >>> import pandas as pd
    >>> nets = pd.DataFrame({"network_id": ["a", "b", "c", "d"], "status": ["converged", "budget", "diverged", "budget"],
    ...                      "train_acc": [1.0, 0.93, float("nan"), 1.0]})
    >>> included, left_out = select(nets)
    >>> list(included["network_id"]), dict(left_out["reason"])
    (['a', 'd'], {1: 'budget', 2: 'diverged'})
    >>> list(select(nets, include_unconverged=True)[0]["network_id"])
    ['a', 'b', 'd']
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.columns import EXCLUDED_STATUSES


def untrained(df: pd.DataFrame) -> np.ndarray:
    """[n] bool: diverged or failed networks, which have no trained model and enter no statistic
    (none where `df` has no status column)."""
    if "status" not in df.columns:
        return np.zeros(len(df), bool)
    return df["status"].astype(str).isin(EXCLUDED_STATUSES).to_numpy()


def reached_full_train_accuracy(df: pd.DataFrame) -> np.ndarray:
    """[n] bool: converged, or stopped at the budget with 100% train accuracy (a sweep that did
    not stop there)."""
    status = df["status"].astype(str).to_numpy()
    full = df["train_acc"].to_numpy(dtype=float) >= 1.0 if "train_acc" in df else np.zeros(len(df), bool)
    return (status == "converged") | ((status == "budget") & full)


def select(df: pd.DataFrame, include_unconverged: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the networks of `df` that enter the statistics, those left out with a `reason` column).

    The paper's protocol (the default): networks that reached 100% train accuracy; the others are
    left out as `budget` (stopped short of it), `diverged` or `failed`. With
    `include_unconverged`, only diverged and failed networks (which have no trained model) are.
    """
    status = df["status"].astype(str)
    if include_unconverged:
        out = untrained(df)
    else:
        out = ~reached_full_train_accuracy(df)
    left_out = df[out].assign(reason=status[out])
    return df[~out], left_out
