"""Per-point statistics: does a large Jacobian norm at a test point predict that it is wrong?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.columns import FINAL_CHECKPOINT, require_checkpoint, require_columns

# the points-table metrics whose skill at predicting a misclassified point is measured
PREDICTORS: tuple[str, ...] = ("jacobian_softmax", "jacobian_logits")
RESULT_COLUMNS: tuple[str, ...] = (
    "network_id", "metric", "n_points", "n_excluded", "n_misclassified", "auroc", "spearman_loss",
    "note",
)
SUMMARY_COLUMNS: tuple[str, ...] = (
    "metric", "n_networks", "n_auroc", "auroc_median", "auroc_q25", "auroc_q75",
    "share_auroc_above_half", "n_spearman", "spearman_median", "spearman_q25", "spearman_q75",
)


def per_point(
    points: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    checkpoint: str = FINAL_CHECKPOINT,
    split: str = "test",
) -> pd.DataFrame:
    """Per network and metric: AUROC of the metric for "the point is misclassified", and
    Spearman ρ of the metric with the point's loss.

    Points with a missing metric, loss, label or prediction are excluded and counted. AUROC is
    NaN where a network got every point right (or every point wrong); ρ is NaN where the metric
    or the loss is constant; `note` says which. Computed with grouped ranks (ties get the average
    rank, as in the Mann-Whitney U statistic), not a loop over networks. `metrics`: by default
    those of PREDICTORS the table has; one named that it lacks is a ValueError.
    """
    if metrics is None:
        metrics = [m for m in PREDICTORS if m in points.columns]
    else:
        require_columns(points, metrics)
    require_checkpoint(points, checkpoint)
    selected = points[(points["checkpoint"] == checkpoint) & (points["split"] == split)]
    frames = [_one_metric(selected, metric) for metric in metrics]
    if not frames or selected.empty:
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)]


def summarize_per_point(per_network: pd.DataFrame) -> pd.DataFrame:
    """Per metric: how many networks, median and quartiles of AUROC and ρ across networks."""
    if per_network.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    grouped = per_network.groupby("metric", sort=False)
    summary = pd.DataFrame({
        "n_networks": grouped.size(),
        "n_auroc": grouped["auroc"].count(),
        "auroc_median": grouped["auroc"].median(),
        "auroc_q25": grouped["auroc"].quantile(0.25),
        "auroc_q75": grouped["auroc"].quantile(0.75),
        "share_auroc_above_half": grouped["auroc"].apply(lambda a: (a.dropna() > 0.5).mean()),
        "n_spearman": grouped["spearman_loss"].count(),
        "spearman_median": grouped["spearman_loss"].median(),
        "spearman_q25": grouped["spearman_loss"].quantile(0.25),
        "spearman_q75": grouped["spearman_loss"].quantile(0.75),
    })
    return summary.reset_index()[list(SUMMARY_COLUMNS)]


def _one_metric(points: pd.DataFrame, metric: str) -> pd.DataFrame:
    code, network_ids = pd.factorize(points["network_id"], sort=True)
    n_networks = len(network_ids)
    n_total = np.bincount(code, minlength=n_networks)
    value = points[metric].to_numpy(float, na_value=np.nan)
    loss = points["loss"].to_numpy(float, na_value=np.nan)
    usable = (np.isfinite(value) & np.isfinite(loss) & points["label"].notna().to_numpy()
              & points["prediction"].notna().to_numpy())
    wrong = (points["label"] != points["prediction"]).to_numpy(bool)[usable]
    code, value, loss = code[usable], value[usable], loss[usable]
    n = np.bincount(code, minlength=n_networks).astype(float)
    n_wrong = np.bincount(code, weights=wrong, minlength=n_networks)
    rank = grouped_ranks(code, value)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Mann-Whitney U of the misclassified points' ranks, normalised: AUROC.
        wrong_rank_sum = np.bincount(code, weights=rank * wrong, minlength=n_networks)
        auroc = (wrong_rank_sum - n_wrong * (n_wrong + 1) / 2) / (n_wrong * (n - n_wrong))
        rho = _grouped_pearson(code, rank, grouped_ranks(code, loss), n, n_networks)
    result = pd.DataFrame({
        "network_id": network_ids.astype(str), "metric": metric, "n_points": n.astype("int64"),
        "n_excluded": (n_total - n).astype("int64"), "n_misclassified": n_wrong.astype("int64"),
        "auroc": auroc, "spearman_loss": rho,
    })
    result["note"] = _notes(result, metric)
    return result


def grouped_ranks(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rank of each value within its group, 1-based; ties get their average rank."""
    size = len(values)
    if size == 0:
        return np.zeros(0)
    by_value = np.argsort(values, kind="stable")
    order = by_value[np.argsort(group[by_value], kind="stable")]
    g, v = group[order], values[order]
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_run = new_group | np.r_[True, v[1:] != v[:-1]]
    position = np.arange(size) - np.maximum.accumulate(np.where(new_group, np.arange(size), 0)) + 1
    run = np.cumsum(new_run) - 1
    run_starts = np.flatnonzero(new_run)
    run_mean = np.add.reduceat(position, run_starts) / np.diff(np.r_[run_starts, size])
    ranks = np.empty(size)
    ranks[order] = run_mean[run]
    return ranks


def _grouped_pearson(group: np.ndarray, a: np.ndarray, b: np.ndarray, n: np.ndarray,
                     n_groups: int) -> np.ndarray:
    """Pearson correlation of rank arrays a and b within each group; NaN where one is constant.

    Ranks are half-integers, so a constant group's centred sum of squares is exactly 0.
    """
    def sums(weights: np.ndarray) -> np.ndarray:
        return np.bincount(group, weights=weights, minlength=n_groups)

    centred_a = a - (sums(a) / n)[group]
    centred_b = b - (sums(b) / n)[group]
    aa, bb = sums(centred_a**2), sums(centred_b**2)
    rho = sums(centred_a * centred_b) / np.sqrt(aa * bb)
    return np.where((aa == 0) | (bb == 0), np.nan, rho)


def _notes(result: pd.DataFrame, metric: str) -> pd.Series:
    few = result["n_points"] < 2
    no_auroc = result["auroc"].isna() & ~few
    all_right = result["n_misclassified"] == 0
    parts = zip(
        np.where(few, f"undefined: fewer than 2 points with {metric} and loss", ""),
        np.where(no_auroc & all_right, "no AUROC: no misclassified point",
                 np.where(no_auroc, "no AUROC: every point misclassified", "")),
        np.where(result["spearman_loss"].isna() & ~few, f"no ρ: {metric} or loss is constant", ""),
        np.where(result["n_excluded"] > 0,
                 result["n_excluded"].astype(str) + f" points missing {metric}, loss, label or prediction", ""),
    )
    return pd.Series(["; ".join(p for p in row if p) for row in parts], index=result.index,
                     dtype=object)
