"""Rank correlation of each metric with the generalization gap, with bootstrap intervals."""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from analysis.columns import TARGETS, metric_columns, require_columns
from analysis.protocol import untrained

POOLED = "pooled"
MIN_NETWORKS = 3
DEFAULT_RESAMPLES = 1000
# Fewer leave a 95% interval's tails a resample or two, or none.
MIN_RESAMPLES = 100
CONFIDENCE = 0.95
# Resamples without a correlation (one value of a column drawn) beyond this share leave no interval.
MAX_UNDEFINED_SHARE = 0.05
# Spearman's p over every pairing of up to this many networks (9! = 362,880); beyond, scipy's t
# approximation, which says 0 for a perfect ranking.
EXACT_P_MAX_NETWORKS = 9
RESULT_COLUMNS: tuple[str, ...] = (
    "metric", "target", "n", "n_excluded", "rho", "rho_lo", "rho_hi", "rho_p",
    "tau", "tau_lo", "tau_hi", "tau_p", "note",
)

# scipy warns on constant or degenerate (re)samples; those become NaN with a note instead.
_QUIET = (stats.ConstantInputWarning, stats.DegenerateDataWarning, RuntimeWarning)


def correlations(
    df: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    targets: Sequence[str] = TARGETS,
    by: str | None = "dataset",
    bootstrap: bool = True,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Spearman ρ and Kendall τ of each metric with each target, per `by` group and pooled.

    One row per (group, metric, target); the group column is named `by` (or `dataset` when
    `by` is None, with only the pooled rows). Pooled rows appear when there is more than one
    group (or no grouping). Networks whose status is diverged or failed, and
    networks missing the metric or the target, are excluded and counted in `n_excluded`.
    Intervals are 95% percentile bootstrap intervals (scipy.stats.bootstrap, resampling networks
    in (metric, target) pairs, `n_resamples` resamples from `seed`). p(ρ) is exact over every
    pairing of up to EXACT_P_MAX_NETWORKS networks (`spearman_exact_p`), else scipy's t
    approximation; p(τ) is scipy's; neither is below 1/n!.
    Where a statistic is undefined (fewer than 3 networks, a constant column) it is NaN and
    `note` says why.
    """
    if bootstrap and n_resamples < MIN_RESAMPLES:
        raise ValueError(f"n_resamples must be at least {MIN_RESAMPLES}, got {n_resamples} (bootstrap=False skips "
                         "the intervals)")
    metrics = list(metric_columns(df) if metrics is None else metrics)
    require_columns(df, [*metrics, *targets])
    group_column = by or "dataset"
    groups: list[tuple[object, pd.DataFrame]] = []
    if by is not None:
        if by not in df.columns:
            raise ValueError(
                f"cannot group by {by!r}: no such column; use one of {list(df.columns)}")
        # by name: a category's own order is the order its Parquet files were read in
        groups = sorted(df.groupby(by, observed=True), key=lambda group: str(group[0]))
    # Pooled rows only where they pool something: with one group they would repeat its rows.
    pooled = [] if len(groups) == 1 and len(groups[0][1]) == len(df) else [(POOLED, df)]
    rows = []
    for key, part in [*groups, *pooled]:
        for metric in metrics:
            for target in targets:
                result = rank_correlation(part, metric, target, bootstrap, n_resamples, seed)
                rows.append({group_column: key, "metric": metric, "target": target, **result})
    return pd.DataFrame(rows, columns=[group_column, *RESULT_COLUMNS])


def rank_correlation(
    df: pd.DataFrame, metric: str, target: str, bootstrap: bool, n_resamples: int, seed: int
) -> dict[str, object]:
    """The statistics of one (metric, target) pair over the networks of `df`."""
    x, y, n_excluded, excluded_note = included_pairs(df, metric, target)
    result: dict[str, object] = dict.fromkeys(
        ("rho", "rho_lo", "rho_hi", "rho_p", "tau", "tau_lo", "tau_hi", "tau_p"), np.nan
    )
    result.update(n=len(x), n_excluded=n_excluded)
    notes = [excluded_note] if excluded_note else []
    problem = degenerate(x, y, metric, target)
    if problem:
        result["note"] = "; ".join([problem, *notes])
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _QUIET)
        rho = stats.spearmanr(x, y)
        tau = stats.kendalltau(x, y)
    # Neither p can be below 1/n!: the observed pairing is one of the n! a permutation test weighs.
    least = 1 / math.factorial(len(x))  # 0.0 where n! is beyond a float
    rho_p = spearman_exact_p(x, y) if len(x) <= EXACT_P_MAX_NETWORKS else max(rho.pvalue, least)
    result.update(rho=rho.statistic, rho_p=rho_p, tau=tau.statistic, tau_p=max(tau.pvalue, least))
    if bootstrap:
        (rho_lo, tau_lo), (rho_hi, tau_hi), undefined = bootstrap_intervals(x, y, n_resamples, seed)
        result.update(rho_lo=rho_lo, rho_hi=rho_hi, tau_lo=tau_lo, tau_hi=tau_hi)
        if len(x) <= EXACT_P_MAX_NETWORKS:  # e.g. four networks ranked perfectly: [1, 1], while p = 0.083
            notes.append(f"a bootstrap over {len(x)} networks is narrower than they warrant; p(ρ) is exact")
        if not np.isfinite([rho_lo, rho_hi, tau_lo, tau_hi]).all():
            notes.append(f"bootstrap interval undefined: {undefined} of {n_resamples} resamples drew a constant "
                         f"column (more than {MAX_UNDEFINED_SHARE:.0%})")
        elif undefined:
            notes.append(f"bootstrap interval over {n_resamples - undefined} of {n_resamples} resamples "
                         f"({undefined} drew a constant column)")
    result["note"] = "; ".join(notes)
    return result


def spearman_exact_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p of Spearman's ρ: the share of all n! pairings of x with y whose |ρ| is at
    least the observed one (ties kept as they are; with ties the null is not symmetric, so
    twice the nearer tail would be another number)."""
    x_ranks, y_ranks = stats.rankdata(x), stats.rankdata(y)
    x_centred, y_centred = x_ranks - x_ranks.mean(), y_ranks - y_ranks.mean()
    scale = np.linalg.norm(x_centred) * np.linalg.norm(y_centred)  # the same for every pairing
    every = np.abs(x_centred[_pairings(len(x))] @ y_centred) / scale
    observed = abs(x_centred @ y_centred) / scale
    return float(np.mean(every >= observed - 1e-12))


@functools.lru_cache(maxsize=EXACT_P_MAX_NETWORKS)
def _pairings(n: int) -> np.ndarray:
    """[n!, n] every order of n items."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8).reshape(-1, n)


def included_pairs(df: pd.DataFrame, metric: str, target: str
                   ) -> tuple[np.ndarray, np.ndarray, int, str]:
    """(metric, target) of the networks that enter the statistics, and what was excluded, why."""
    bad_status = untrained(df)
    x = df[metric].to_numpy(dtype=float, na_value=np.nan)
    y = df[target].to_numpy(dtype=float, na_value=np.nan)
    missing = ~bad_status & ~(np.isfinite(x) & np.isfinite(y))
    keep = ~bad_status & ~missing
    parts = []
    if bad_status.any():
        parts.append(f"{int(bad_status.sum())} diverged/failed")
    if missing.any():
        parts.append(f"{int(missing.sum())} missing {metric} or {target}")
    note = f"excluded {', '.join(parts)}" if parts else ""
    return x[keep], y[keep], int(bad_status.sum() + missing.sum()), note


def degenerate(x: np.ndarray, y: np.ndarray, metric: str, target: str) -> str:
    """Why a rank correlation of x and y is undefined, or '' when it is defined."""
    if len(x) < MIN_NETWORKS:
        return f"undefined: {len(x)} network(s) with values, need at least {MIN_NETWORKS}"
    if np.all(x == x[0]):
        return f"undefined: {metric} is constant over the {len(x)} networks"
    if np.all(y == y[0]):
        return f"undefined: {target} is constant over the {len(x)} networks"
    return ""


class _Ranking:
    """The distinct values of one variable, for ranking resamples given as draw counts."""

    def __init__(self, values: np.ndarray):
        order = np.argsort(values, kind="stable")
        distinct, self.group = np.unique(values, return_inverse=True)
        self.order = order
        self.starts = np.searchsorted(values[order], distinct)

    def per_value(self, counts: np.ndarray) -> np.ndarray:
        """[B, distinct values]: how many drawn networks have each value."""
        return np.add.reduceat(counts[:, self.order], self.starts, axis=1)

    def ranks(self, per_value: np.ndarray) -> np.ndarray:
        """[B, n]: each network's average rank within each resample (ties share their mean)."""
        below = np.cumsum(per_value, axis=1) - per_value
        return (below + (per_value + 1) / 2)[:, self.group]


class ResampleStatistics:
    """Spearman ρ and Kendall τ-b of (x, y) for resamples given as index arrays.

    ρ depends only on how often each network was drawn, so resamples are not sorted: ranks come
    from cumulative draw counts over the sorted distinct values (ties share their mean rank), and
    ρ is the count-weighted Pearson correlation of the ranks. τ is scipy's, along the last axis.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y
        self.rank_x, self.rank_y = _Ranking(x), _Ranking(y)

    def __call__(self, index: np.ndarray, axis: int = -1) -> np.ndarray:
        """[ρ, τ] for each resample; `index` is [..., n] (scipy.stats.bootstrap's layout)."""
        shape, n = index.shape[:-1], index.shape[-1]
        flat = index.reshape(-1, n)
        offsets = (np.arange(len(flat)) * n)[:, None]
        counts = np.bincount((flat + offsets).ravel(), minlength=flat.size).reshape(flat.shape)
        centre = (n + 1) / 2
        rx = self.rank_x.ranks(self.rank_x.per_value(counts)) - centre
        ry = self.rank_y.ranks(self.rank_y.per_value(counts)) - centre
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = (counts * rx * ry).sum(axis=1) / np.sqrt(
                (counts * rx * rx).sum(axis=1) * (counts * ry * ry).sum(axis=1))
        tau = stats.kendalltau(self.x[flat], self.y[flat], axis=-1).statistic
        return np.stack([rho.reshape(shape), tau.reshape(shape)])


def bootstrap_intervals(x: np.ndarray, y: np.ndarray, n_resamples: int, seed: int
                        ) -> tuple[tuple[float, float], tuple[float, float], int]:
    """95% percentile intervals of (ρ, τ), resampling networks ((x, y) pairs):
    ((ρ_lo, τ_lo), (ρ_hi, τ_hi), undefined), as `percentile_intervals`."""
    low, high, undefined = percentile_intervals(ResampleStatistics(x, y), len(x), n_resamples, seed)
    return (float(low[0]), float(low[1])), (float(high[0]), float(high[1])), undefined


def percentile_intervals(statistic, n: int, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """95% percentile intervals of the statistics `statistic(index)` returns ([k, ...] for index
    arrays [..., n]), resampling n networks with scipy.stats.bootstrap: (low[k], high[k],
    undefined). A resample that drew one value of a column has no correlation; the percentiles
    are taken over the others, and are NaN where more than MAX_UNDEFINED_SHARE of the resamples
    have none (`undefined` counts them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _QUIET)
        draws = stats.bootstrap(
            (np.arange(n),), statistic, vectorized=True,
            n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed),
        ).bootstrap_distribution
    draws = draws.reshape(-1, n_resamples)
    defined = np.isfinite(draws).all(axis=0)
    undefined = int((~defined).sum())
    if undefined > MAX_UNDEFINED_SHARE * n_resamples:
        return np.full(len(draws), np.nan), np.full(len(draws), np.nan), undefined
    alpha = (1 - CONFIDENCE) / 2  # as scipy's percentile method computes it
    low, high = np.percentile(draws[:, defined], [100 * alpha, 100 * (1 - alpha)], axis=1)
    return low, high, undefined
