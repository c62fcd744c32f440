"""Granulated Kendall coefficient (Jiang et al., ICLR 2020, "Fantastic generalization measures").

For hyperparameter h, ψ_h is the mean Kendall τ between metric and gap over the groups of networks
that share every other hyperparameter (so only h varies inside a group); Ψ is the mean of ψ_h over
the hyperparameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.columns import HYPERPARAMS, SAMPLE_COLUMN, metric_columns, require_columns
from analysis.protocol import untrained
from analysis.factors import FACTORS

PSI = "Ψ (mean over hyperparameters)"
RESULT_COLUMNS: tuple[str, ...] = (
    "metric", "hyperparam", "tau", "n_groups", "n_groups_undefined", "n_networks", "n_excluded",
    "note",
)


def as_settings(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with a full-batch network's batch_size read as "full", one setting whatever the
    training set's size (the table holds that size), so that full-batch networks of two training
    set sizes differ in train_size alone, as mini-batch ones do. A batch of the whole training
    set is the full batch too (sweeps before 2026-12-07 wrote full_batch false for it)."""
    if "batch_size" not in df.columns:
        return df
    full = np.zeros(len(df), bool)
    if "full_batch" in df.columns:
        full |= df["full_batch"].fillna(False).astype(bool).to_numpy()
    if "train_size" in df.columns:
        full |= (df["batch_size"] >= df["train_size"]).fillna(False).astype(bool).to_numpy()
    return df.assign(batch_size=df["batch_size"].astype(object).where(~full, "full"))


def varying_hyperparams(df: pd.DataFrame, candidates: Sequence[str] = HYPERPARAMS) -> list[str]:
    """The candidate hyperparameter columns that take more than one value in `df`."""
    return [c for c in candidates if c in df.columns and df[c].nunique(dropna=False) > 1]


def granulated_kendall(
    df: pd.DataFrame,
    hyperparams: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    target: str = "gap",
) -> pd.DataFrame:
    """ψ_h for every metric and hyperparameter, and Ψ per metric (rows with hyperparam == PSI).

    `hyperparams` defaults to the HYPERPARAMS columns that vary among the included networks, less
    the seed: seeds are samples, not a hyperparameter, so they get no ψ and stay out of Ψ (Jiang
    et al. average over hyperparameters), though networks of different seeds never share a group.
    Diverged/failed networks and networks missing the metric or target are excluded and counted.
    Groups (of networks with values) that have fewer than two networks, or where metric or
    target is constant, have no τ: they are counted in `n_groups_undefined` and left out of the
    mean. A hyperparameter with no group that has a τ gets NaN and a note. Ψ averages the
    hyperparameters that have a ψ; in its row `n_groups` counts those hyperparameters and
    `n_groups_undefined` the ones left out.
    """
    metrics = list(metric_columns(df) if metrics is None else metrics)
    require_columns(df, [*metrics, target, *(hyperparams or ())])
    bad_status = untrained(df)
    trained = as_settings(df[~bad_status])
    keys = list(varying_hyperparams(trained) if hyperparams is None else hyperparams)
    # by default the seed groups networks (only h varies in a group) but is no axis of Ψ
    hyperparams = [h for h in keys if h != SAMPLE_COLUMN] if hyperparams is None else keys
    independent = grouping_hyperparams(keys)
    values = trained[metrics].to_numpy(float, na_value=np.nan)
    gap = trained[target].to_numpy(float, na_value=np.nan)
    usable = np.isfinite(values) & np.isfinite(gap)[:, None]
    per_h = {h: _group_taus(trained, h, independent, values, gap, usable) for h in independent if h in hyperparams}
    rows = []
    for m, metric in enumerate(metrics):
        common = {"metric": metric, "n_networks": int(usable[:, m].sum()),
                  "n_excluded": int(bad_status.sum() + (~usable[:, m]).sum())}
        metric_rows = [{**common, "hyperparam": h,
                        **(_psi(*per_h[h], m, h, metric, target) if h in per_h else _tied(h))}
                       for h in hyperparams]
        rows += metric_rows
        rows.append({**common, "hyperparam": PSI, **_overall(metric_rows, len(trained))})
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def grouping_hyperparams(hyperparams: Sequence[str]) -> list[str]:
    """The hyperparameters that define groups: all of them, less a factor tied to another one
    among them (full_batch to batch_size: a full batch is one of the batch sizes), which would
    split its partner's groups and never varies alone. Nothing is dropped for how the networks
    at hand happen to fall: a hyperparameter that never varies alone in them has no ψ, and the
    others' groups still hold it fixed (learning rates listed per optimizer are compared within
    an optimizer)."""
    tied = {factor.column for factor in FACTORS for partner in factor.tied if partner in hyperparams}
    return [h for h in hyperparams if h not in tied]


def _tied(h: str) -> dict[str, object]:
    partners = next(factor.tied for factor in FACTORS if factor.column == h)
    return {"tau": np.nan, "n_groups": 0, "n_groups_undefined": 0,
            "note": f"undefined: {h} never varies alone (it is fixed by {', '.join(partners)}); its effect is in "
                    f"the ψ of {', '.join(partners)}"}


def _group_taus(df: pd.DataFrame, h: str, hyperparams: Sequence[str], values: np.ndarray,
                gap: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kendall τ-b of every metric in every group where only h varies, from all within-group
    pairs at once: τ-b = Σ sxᵢⱼ·syᵢⱼ / √(Σ sxᵢⱼ² · Σ syᵢⱼ²), sx = sign of the metric difference,
    over pairs of networks that both have values.

    Returns ([groups, metrics] τ, NaN where undefined; [groups, metrics] whether the group has
    any network with values).
    """
    others = [c for c in hyperparams if c != h]
    group = (df.groupby(others, observed=True, dropna=False, sort=False).ngroup().to_numpy()
             if others else np.zeros(len(df), np.int64))
    n_groups = int(group.max()) + 1 if len(group) else 0
    first, second = _pairs_within(group)
    pair_usable = usable[first] & usable[second]
    sx = np.where(pair_usable, np.sign(values[first] - values[second]), 0.0)
    sy = np.where(pair_usable, np.sign(gap[first] - gap[second])[:, None], 0.0)
    sums = np.zeros((3, n_groups, values.shape[1]))
    for k, term in enumerate((sx * sy, sx * sx, sy * sy)):
        np.add.at(sums[k], group[first], term)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = sums[0] / np.sqrt(sums[1] * sums[2])
    present = np.zeros((n_groups, values.shape[1]), bool)
    present[group[np.nonzero(usable)[0]], np.nonzero(usable)[1]] = True
    return tau, present


def _pairs_within(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j) of every unordered pair of rows with the same group id."""
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    sizes = np.diff(np.r_[starts, len(group)])
    end = np.repeat(starts + sizes, sizes)  # one past the last row of each row's group
    later = end - np.arange(len(group)) - 1  # rows after this one in its group
    first = np.repeat(np.arange(len(group)), later)
    offset = np.arange(len(first)) - np.repeat(np.cumsum(later) - later, later)
    second = first + 1 + offset
    return order[first], order[second]


def _psi(tau: np.ndarray, present: np.ndarray, m: int, h: str, metric: str, target: str
         ) -> dict[str, object]:
    defined = tau[:, m][np.isfinite(tau[:, m])]
    n_undefined = int(present[:, m].sum()) - len(defined)
    note = "" if len(defined) else (
        f"undefined: none of the {n_undefined} groups where only {h} varies has two networks "
        f"with different {metric} and {target}"
    )
    return {"tau": float(defined.mean()) if len(defined) else np.nan, "n_groups": len(defined),
            "n_groups_undefined": n_undefined, "note": note}


def _overall(metric_rows: list[dict[str, object]], n_trained: int) -> dict[str, object]:
    defined = [r for r in metric_rows if np.isfinite(r["tau"])]
    skipped = [r["hyperparam"] for r in metric_rows if not np.isfinite(r["tau"])]
    note = f"left out (no ψ): {', '.join(skipped)}" if skipped else ""
    if not defined:
        note = ("undefined: no hyperparameter has a ψ" if metric_rows else
                "undefined: no hyperparameter varies" if n_trained else
                "undefined: no trained networks (all diverged or failed)")
    return {"tau": float(np.mean([r["tau"] for r in defined])) if defined else np.nan,
            "n_groups": len(defined), "n_groups_undefined": len(skipped), "note": note}
