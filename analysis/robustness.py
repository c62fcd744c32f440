"""Two more ways to judge a measure beside granulated Kendall: Jiang et al.'s (2020) conditional
mutual information and Dziugaite et al.'s (2020) robust sign-error over single-factor
environments. numpy/pandas only.

Both look at pairs of networks: V_g = sign(g₁ − g₂) of the gap and V_μ = sign(μ₁ − μ₂) of the
measure (pairs where a value is missing are left out).

- CMI: over pairs where both differences are nonzero, for every set S of at most two
  hyperparameters (S = ∅ included), I(V_μ; V_g | U_S) / H(V_g | U_S), U_S the values of S for
  both networks of a pair; the measure's score is the minimum over S (a measure whose link to
  the gap is explained by one or two hyperparameters scores low). In nats; 1 when V_μ
  determines V_g, 0 when independent.
- Robust sign-error (Dziugaite et al., 2020, as their code computes it): an environment is two
  hyperparameter settings that differ in exactly one hyperparameter (a full batch is one of the
  batch sizes, "full" at any training-set size, so `full_batch` is no hyperparameter of its
  own); each cross pair of their
  networks (which differ only in seed) has the sign-error (1 − sgn Δμ · sgn Δg) / 2 (a tie costs
  1/2) and a weight: Hoeffding's probability that the two gaps, each measured on n test points,
  truly differ, (1 − 2 exp(−n Δg² / 2))², less 1/2 and floored at 0, so that pairs whose gaps
  differ within the test sets' noise do not count. An environment's sign-error is the weighted
  mean; only environments whose effective number of pairs, (Σw)² / Σw², is at least `min_ess`
  (12, theirs) enter. Reported: the largest (the robust sign-error), the 90th percentile and the
  mean over those environments, how many entered and how many were too small. Without test
  sizes (sweeps written before the `networks` table recorded them), or for a target other than
  the accuracy gap, every pair weighs 1, said so.
  Each environment is counted once (their code lists it in both orders).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.columns import SAMPLE_COLUMN, metric_columns, require_columns
from analysis.granulated import as_settings, grouping_hyperparams, varying_hyperparams

CMI_COLUMNS = ("metric", "cmi", "condition", "n_pairs")
SIGN_ERROR_COLUMNS = ("metric", "robust_sign_error", "p90_sign_error", "mean_sign_error", "worst_environment",
                      "n_environments", "n_environments_small", "sign_error_note")
MIN_ESS = 12.0
TEST_SIZE_COLUMN = "test_size"


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, k=1)
    return i, j


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _conditional(v_metric: np.ndarray, v_gap: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """(I(V_μ; V_g | group), H(V_g | group)) from boolean signs and integer group codes."""
    cell = (groups * 2 + v_metric) * 2 + v_gap
    counts = np.bincount(cell, minlength=4 * (groups.max() + 1)).reshape(-1, 2, 2).astype(float)
    total = counts.sum()
    mi = entropy = 0.0
    for joint in counts[counts.sum((1, 2)) > 0]:
        weight = joint.sum() / total
        h_gap, h_metric = _entropy(joint.sum(0)), _entropy(joint.sum(1))
        mi += weight * (h_gap + h_metric - _entropy(joint.ravel()))
        entropy += weight * h_gap
    return mi, entropy


def conditional_mutual_information(df: pd.DataFrame, metrics: Sequence[str] | None = None, target: str = "gap",
                                   hyperparams: Sequence[str] | None = None, max_condition: int = 2) -> pd.DataFrame:
    """One row per metric: the minimum over S of I(V_μ; V_g | U_S) / H(V_g | U_S), the S that
    attains it, and the number of pairs (module docstring)."""
    metrics = list(metric_columns(df) if metrics is None else metrics)
    require_columns(df, [*metrics, target, *(hyperparams or ())])
    df = as_settings(df)
    hyperparams = [h for h in (varying_hyperparams(df) if hyperparams is None else hyperparams) if h != SAMPLE_COLUMN]
    codes = {h: pd.factorize(df[h].astype(str))[0] for h in hyperparams}
    i, j = _pairs(len(df))
    gap = df[target].to_numpy(float)
    rows = []
    for metric in metrics:
        values = df[metric].to_numpy(float)
        d_metric, d_gap = values[i] - values[j], gap[i] - gap[j]
        keep = np.isfinite(d_metric) & np.isfinite(d_gap) & (d_metric != 0) & (d_gap != 0)
        if keep.sum() < 2:
            rows.append({"metric": metric, "cmi": np.nan, "condition": "", "n_pairs": int(keep.sum())})
            continue
        v_metric, v_gap = (d_metric[keep] > 0).astype(int), (d_gap[keep] > 0).astype(int)
        best = (np.inf, "")
        for size in range(max_condition + 1):
            for subset in itertools.combinations(hyperparams, size):
                key = np.zeros(keep.sum(), dtype=np.int64)
                for h in subset:
                    levels = codes[h].max() + 1
                    key = (key * levels + codes[h][i][keep]) * levels + codes[h][j][keep]
                groups = pd.factorize(key)[0]
                mi, entropy = _conditional(v_metric, v_gap, groups)
                if entropy > 0 and mi / entropy < best[0]:
                    best = (mi / entropy, " & ".join(subset) or "∅")
        rows.append({"metric": metric, "cmi": best[0] if np.isfinite(best[0]) else np.nan, "condition": best[1],
                     "n_pairs": int(keep.sum())})
    return pd.DataFrame(rows, columns=list(CMI_COLUMNS))


def hoeffding_weight(gap_difference: np.ndarray, test_size: np.ndarray) -> np.ndarray:
    """The weight of a pair whose gaps differ by `gap_difference`, each measured on `test_size`
    points: max(0, 1 − 2 exp(−2n (Δg/2)²))², less 1/2 and floored at 0."""
    confidence = np.maximum(0.0, 1.0 - 2.0 * np.exp(-2.0 * test_size * (np.abs(gap_difference) / 2) ** 2)) ** 2
    return np.maximum(confidence - 0.5, 0.0)


def robust_sign_error(df: pd.DataFrame, metrics: Sequence[str] | None = None, target: str = "gap",
                      hyperparams: Sequence[str] | None = None, min_ess: float = MIN_ESS) -> pd.DataFrame:
    """One row per metric: the largest, 90th-percentile and mean sign-error over single-factor
    environments with an effective sample of at least `min_ess` pairs, the worst environment,
    how many environments entered and how many were too small (module docstring)."""
    metrics = list(metric_columns(df) if metrics is None else metrics)
    require_columns(df, [*metrics, target, *(hyperparams or ())])
    df = as_settings(df)
    hyperparams = grouping_hyperparams(
        [h for h in (varying_hyperparams(df) if hyperparams is None else hyperparams) if h != SAMPLE_COLUMN])
    # with no hyperparameter varying (only seeds) there is one setting and no environment
    settings = df.groupby(hyperparams, dropna=False, sort=False).indices if hyperparams else {}
    keys = list(settings)
    environments = []  # (description, networks of setting a, networks of setting b)
    for a, b in itertools.combinations(range(len(keys)), 2):
        ka, kb = (k if isinstance(k, tuple) else (k,) for k in (keys[a], keys[b]))
        differ = [h for h, x, y in zip(hyperparams, ka, kb) if not (x == y or (pd.isna(x) and pd.isna(y)))]
        if len(differ) == 1:
            environments.append((f"{differ[0]}: {ka[hyperparams.index(differ[0])]} vs {kb[hyperparams.index(differ[0])]}",
                                 settings[keys[a]], settings[keys[b]]))
    gap = df[target].to_numpy(float, na_value=np.nan)
    sizes = (df[TEST_SIZE_COLUMN].to_numpy(float, na_value=np.nan) if TEST_SIZE_COLUMN in df.columns
             else np.full(len(df), np.nan))
    # Hoeffding's bound is for accuracies measured on n points: a gap of them
    filtered = target == "gap" and bool(len(df)) and bool(np.isfinite(sizes).all())
    note = ("" if filtered else "no noise filter: test sizes unknown, every pair weighs 1" if target == "gap"
            else f"no noise filter: the weights are for an accuracy gap, not {target}; every pair weighs 1")
    # The gap's side of each environment's cross pairs is the same for every metric.
    gap_sides = []
    for _, first, second in environments:
        d_gap = gap[first][:, None] - gap[second][None, :]
        weight = (hoeffding_weight(d_gap, np.minimum.outer(sizes[first], sizes[second])) if filtered
                  else np.ones_like(d_gap))
        gap_sides.append((d_gap, weight))
    rows = []
    for metric in metrics:
        values = df[metric].to_numpy(float, na_value=np.nan)
        errors, small = [], 0
        for (description, first, second), (d_gap, all_weights) in zip(environments, gap_sides):
            d_metric = values[first][:, None] - values[second][None, :]
            known = np.isfinite(d_metric) & np.isfinite(d_gap)
            weight = all_weights[known]
            total = weight.sum()
            effective = total ** 2 / (weight ** 2).sum() if total > 0 else 0.0
            if total == 0 or (effective < min_ess and not np.isclose(effective, min_ess)):
                small += 1
                continue
            sign_error = (1 - np.sign(d_metric[known]) * np.sign(d_gap[known])) / 2
            errors.append((float((weight * sign_error).sum() / total), description))
        base = {"metric": metric, "n_environments": len(errors), "n_environments_small": small}
        if errors:
            worst = max(errors)
            shares = [e for e, _ in errors]
            rows.append({**base, "robust_sign_error": worst[0], "p90_sign_error": float(np.percentile(shares, 90)),
                         "mean_sign_error": float(np.mean(shares)), "worst_environment": worst[1],
                         "sign_error_note": note})
        else:
            why = (f"undefined: none of the {small} environments has an effective sample of {min_ess:g} pairs "
                   "(more seeds per setting, or gaps further apart than the test sets' noise)" if small else
                   "undefined: no two settings differ in one hyperparameter alone")
            rows.append({**base, "robust_sign_error": np.nan, "p90_sign_error": np.nan, "mean_sign_error": np.nan,
                         "worst_environment": "", "sign_error_note": "; ".join(filter(None, [why, note]))})
    return pd.DataFrame(rows, columns=list(SIGN_ERROR_COLUMNS))
