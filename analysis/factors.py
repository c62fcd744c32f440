"""Paired factor studies: networks identical but for one two-level factor.

For each factor the paper names a level that helps generalization (true labels, augmentation on,
SGD, ReLU) and levels that hurt it. Each network at the helping level is paired with each network
at a hurting level that shares every other hyperparameter; the question is whether the metric
moves the same way as the gap across the pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.columns import HYPERPARAMS, metric_columns, require_columns
from analysis.protocol import untrained


@dataclass(frozen=True)
class Factor:
    """A factor column, its level that helps generalization, and columns tied to the factor."""

    column: str
    good: object
    name: str
    tied: tuple[str, ...] = ()  # differ along with the factor (full batch sets the batch size)

    def levels(self, values: pd.Series) -> list[object]:
        """The hurting levels present in `values`, sorted."""
        return sorted(v for v in values.dropna().unique() if v != self.good)

    def level_text(self, level: object) -> str:
        """A level in words (`true labels`, `augmentation off`, `tanh`)."""
        if self.column == "augmentation":
            return "augmentation on" if level else "augmentation off"
        if self.column == "full_batch":
            return "full batch" if level else "SGD (mini-batch)"
        if self.column == "random_label_fraction":
            return "true labels" if level == 0 else f"{level:g} random labels"
        return str(level)

    def describe(self, level: object) -> str:
        return f"{self.level_text(self.good)} → {self.level_text(level)}"


FACTORS: tuple[Factor, ...] = (
    Factor("random_label_fraction", 0.0, "random labels"),
    Factor("augmentation", True, "data augmentation"),
    Factor("full_batch", False, "full-batch training", tied=("batch_size",)),
    Factor("activation", "relu", "nonlinearity"),
)

RESULT_COLUMNS: tuple[str, ...] = (
    "factor", "comparison", "metric", "n_pairs", "n_moving", "share_same_direction",
    "share_metric_up", "share_gap_up", "median_ratio", "median_gap_change", "note",
)


def factor_pairs(df: pd.DataFrame, factor: Factor, level: object) -> pd.DataFrame:
    """Pairs (good, hurting level) identical in every other hyperparameter.

    Columns of the good network end in `_good`, of the other in `_bad`; the shared
    hyperparameters keep their names. Diverged/failed networks are not paired.
    """
    trained = df[~untrained(df)]
    keys = [c for c in HYPERPARAMS if c in df.columns and c != factor.column
            and c not in factor.tied]
    # Plain objects as keys: categoricals with different category sets would not merge.
    trained = trained.assign(**{k: trained[k].astype(object) for k in keys})
    values = trained[factor.column]
    good, bad = trained[values == factor.good], trained[values == level]
    return good.merge(bad, on=keys, suffixes=("_good", "_bad"))


def paired_factors(
    df: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    target: str = "gap",
    factors: Sequence[Factor] = FACTORS,
) -> pd.DataFrame:
    """One row per (factor, comparison, metric): how often metric and target move together.

    Δ = hurting level − good level within a pair. `share_same_direction` is the share of pairs,
    among those where both Δmetric and Δtarget are nonzero (`n_moving`), with equal signs;
    `share_metric_up` / `share_gap_up` the share of pairs where the hurting level raises the
    metric / target; `median_ratio` the median of metric(hurting) / metric(good).
    Factors whose column is absent or has no hurting level give one row with a note.
    """
    metrics = list(metric_columns(df) if metrics is None else metrics)
    require_columns(df, [*metrics, target])
    rows = []
    for factor in factors:
        base = {"factor": factor.name, "n_pairs": 0, "n_moving": 0}
        if factor.column not in df.columns:
            rows.append({**base, "comparison": "", "note": f"no {factor.column} column"})
            continue
        values = df.loc[~untrained(df), factor.column]
        levels = factor.levels(values)
        if not levels or not (values == factor.good).any():
            rows.append({**base, "comparison": "",
                         "note": f"{factor.column} does not take both {factor.good!r} and "
                                 "another value among trained networks"})
            continue
        for level in levels:
            pairs = factor_pairs(df, factor, level)
            comparison = factor.describe(level)
            rows += [{"factor": factor.name, "comparison": comparison, "metric": metric,
                      **pair_statistics(pairs, metric, target)} for metric in metrics]
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def pair_statistics(pairs: pd.DataFrame, metric: str, target: str) -> dict[str, object]:
    """The direction statistics of one metric over factor pairs."""
    m_good, m_bad = (_values(pairs, f"{metric}_{side}") for side in ("good", "bad"))
    g_good, g_bad = (_values(pairs, f"{target}_{side}") for side in ("good", "bad"))
    finite = np.isfinite(m_good) & np.isfinite(m_bad) & np.isfinite(g_good) & np.isfinite(g_bad)
    d_metric = (m_bad - m_good)[finite]
    d_target = (g_bad - g_good)[finite]
    moving = (d_metric != 0) & (d_target != 0)
    n_missing = int((~finite).sum())
    notes = [f"{n_missing} pairs missing {metric} or {target}"] if n_missing else []
    result: dict[str, object] = {
        "n_pairs": int(finite.sum()), "n_moving": int(moving.sum()),
        "share_same_direction": np.nan, "share_metric_up": np.nan, "share_gap_up": np.nan,
        "median_ratio": np.nan, "median_gap_change": np.nan,
    }
    if not finite.any():
        result["note"] = "; ".join(["undefined: no pairs with values", *notes])
        return result
    if moving.any():
        result["share_same_direction"] = float(
            np.mean(np.sign(d_metric[moving]) == np.sign(d_target[moving])))
    else:
        notes.append("undefined share: no pair where both metric and target change")
    nonzero = m_good[finite] != 0
    result.update(
        share_metric_up=float(np.mean(d_metric > 0)),
        share_gap_up=float(np.mean(d_target > 0)),
        median_ratio=float(np.median(m_bad[finite][nonzero] / m_good[finite][nonzero]))
        if nonzero.any() else np.nan,
        median_gap_change=float(np.median(d_target)),
    )
    if not nonzero.all():
        notes.append(f"{int((~nonzero).sum())} pairs with {metric} = 0 left out of the ratio")
    result["note"] = "; ".join(notes)
    return result


def _values(df: pd.DataFrame, column: str) -> np.ndarray:
    return df[column].to_numpy(float, na_value=np.nan)
