"""The paper's findings, checked on a sweep: an effect, a 95% interval, n and a verdict each.

Each finding states its effect on a scale where "no effect" is a known value (`null`: 0 for log
ratios and correlations, 0.5 for an AUROC) and the direction the paper found (`expected`: +1 or
−1). The verdict compares the interval with the null: entirely on the paper's side is
`reproduced`, entirely on the other `contradicted`, spanning it `inconclusive`; where the finding
has a test of no effect (a correlation's p, exact over every pairing of a few networks; a Wilcoxon
signed-rank test of per-network values), a side also needs that test to reject it at 5%, since a
percentile bootstrap over a handful of networks is narrower than they warrant (four networks
ranked perfectly: [1, 1], while p = 2/4! = 0.083); a sweep without
the data a finding needs gives `not measured` and says which grid factor or score setting would
measure it. Intervals are 95% percentile bootstraps (scipy.stats.bootstrap, seed 0) of the median
over networks (or factor pairs), or the correlations' own intervals; a correlation without one
(`--no-bootstrap`) has its verdict from its test alone.

    >>> verdict(0.2, 0.5, null=0.0, expected=+1), verdict(-0.5, -0.1, 0.0, +1), verdict(-0.1, 0.3, 0.0, +1)
    ('reproduced', 'contradicted', 'inconclusive')
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.columns import FINAL_CHECKPOINT as FINAL
from analysis.correlations import MAX_UNDEFINED_SHARE, MIN_NETWORKS, POOLED, ResampleStatistics, percentile_intervals
from analysis.factors import FACTORS, factor_pairs

INITIAL = "init"
JACOBIAN = "jacobian_softmax"
N_RESAMPLES = 2000
JSON_KEYS = ("id", "claim", "effect", "ci_low", "ci_high", "n", "verdict")


@dataclass(frozen=True)
class Finding:
    id: str
    claim: str
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    verdict: str  # reproduced, contradicted, inconclusive, not measured
    scale: str  # what the effect measures
    note: str = ""  # for "not measured": what would measure it


ALPHA = 0.05


def verdict(ci_low: float, ci_high: float, null: float, expected: int, p: float = math.nan) -> str:
    """`reproduced` when the whole interval lies on the `expected` side of `null`, `contradicted`
    when it lies on the other, else `inconclusive` (the interval spans no effect); with a test's
    two-sided `p`, either side also needs p < ALPHA."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)) or p >= ALPHA:
        return "inconclusive"
    if ci_low > null:
        return "reproduced" if expected > 0 else "contradicted"
    if ci_high < null:
        return "reproduced" if expected < 0 else "contradicted"
    return "inconclusive"


def median_effect(id: str, claim: str, scale: str, values: np.ndarray, null: float, expected: int) -> Finding:
    """A finding from per-network (or per-pair) values: their median and its bootstrap interval."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 3:
        return not_measured(id, claim, scale, f"only {len(values)} finite value(s); the finding needs 3 or more")
    low, high = stats.bootstrap((values,), np.median, n_resamples=N_RESAMPLES, method="percentile",
                                random_state=np.random.default_rng(0)).confidence_interval
    low, high = (float(v) if np.isfinite(v) else float(np.median(values)) for v in (low, high))
    effect = float(np.median(values))
    differences = values - null
    p = stats.wilcoxon(differences).pvalue if differences.any() else 1.0
    return Finding(id, claim, effect, low, high, len(values), verdict(low, high, null, expected, p), scale,
                   untested(low, high, null, expected, p, len(values)))


def untested(low: float, high: float, null: float, expected: int, p: float, n: int) -> str:
    """The note of an interval that excludes no effect while the test over `n` does not."""
    if verdict(low, high, null, expected) != "inconclusive" and p >= ALPHA:
        return f"the interval excludes no effect, but its test over {n} does not (p = {p:.2g} ≥ {ALPHA:g})"
    return ""


def not_measured(id: str, claim: str, scale: str, how: str) -> Finding:
    return Finding(id, claim, None, None, None, 0, "not measured", scale, how)


# ---- the findings ---------------------------------------------------------------------------


def findings(wide: pd.DataFrame, scores: pd.DataFrame, trajectories: pd.DataFrame, correlations: pd.DataFrame,
             per_point: pd.DataFrame, every: pd.DataFrame | None = None) -> list[Finding]:
    """Every finding, in the report's order, on the networks in the statistics (`wide`); `every`
    (the sweep's networks, before the protocol left some out) lets an unmeasured one say so."""
    ids = set(wide["network_id"].astype(str))
    found = [
        train_below_test(scores, ids),
        dips_at_anchors(trajectories, ids),
        same_class_fewer_transitions(trajectories, ids),
        *(paired(wide, column, every) for column in PAIRED_TEXT),
        ranks_gap(correlations, JACOBIAN, "jacobian_ranks_gap",
                  "The test Jacobian norm rank-correlates positively with the gap across networks."),
        predicts_errors(per_point),
        ranks_gap(correlations, "transitions", "transitions_ranks_gap",
                  "Transitions along ellipses through test points rank-correlate positively with the gap."),
        ranks_gap(correlations, "param_count", "bigger_networks_generalize_better",
                  "Networks with more parameters have a smaller gap (their counts rank-correlate negatively "
                  "with it).", expected=-1),
        train_loss_tracks_less(wide),
    ]
    if not ids:  # whatever the spec asked for: the protocol left every network out
        found = [replace(f, note="no network is in the statistics (the report lists those left out and why); train "
                                 "them longer, or report them with `sweep report --include-unconverged`")
                 for f in found]
    elif not scores.loc[scores["checkpoint"].astype(str) == FINAL, "network_id"].astype(str).isin(ids).any():
        # unscored at the end (or scored with other settings, set aside): whatever the spec asked for
        found = [replace(f, note=f"no `{FINAL}` checkpoint of these networks has scores of the sweep's scoring "
                                 "settings yet; score them with `sweep score PATH`")
                 if f.verdict == "not measured" else f for f in found]
    return found


def _final_scores(scores: pd.DataFrame, ids: set[str], metric: str) -> pd.DataFrame:
    part = scores[(scores["checkpoint"].astype(str) == FINAL) & (scores["metric"].astype(str) == metric)
                  & scores["network_id"].astype(str).isin(ids)]
    return part.pivot_table(index="network_id", columns="split", values="mean", aggfunc="first", observed=True)


def train_below_test(scores: pd.DataFrame, ids: set[str]) -> Finding:
    claim = "The Jacobian norm is lower at training points than at test points."
    scale = "median log10(train / test Jacobian norm) over networks"
    table = _final_scores(scores, ids, JACOBIAN)
    if not {"train", "test"} <= set(table.columns):
        return not_measured("jacobian_train_below_test", claim, scale,
                            "score train points too (scoring.train_points > 0) with jacobian_softmax among the metrics")
    return median_effect("jacobian_train_below_test", claim, scale,
                         np.log10(table["train"] / table["test"]).to_numpy(), 0.0, -1)


def _ellipse_values(trajectories: pd.DataFrame, ids: set[str], value: str) -> pd.DataFrame:
    part = trajectories[trajectories["network_id"].astype(str).isin(ids)]
    return part.assign(network_id=part["network_id"].astype(str), checkpoint=part["checkpoint"].astype(str),
                       kind=part["kind"].astype(str))[["network_id", "checkpoint", "kind", "ellipse", "position",
                                                       *(c for c in ("anchor",) if c in part), value]]


def dips_at_anchors(trajectories: pd.DataFrame, ids: set[str]) -> Finding:
    claim = ("Along ellipses through training points, the Jacobian norm after training dips at the training "
             "points against the rest of the ellipse, and does not at init.")
    scale = ("orders of magnitude: median over networks of the dip after training minus the dip at init, a dip "
             "being log10(mean at anchors / mean elsewhere) over the data ellipses")
    if trajectories.empty or "anchor" not in trajectories or not trajectories["anchor"].notna().any():
        return not_measured("jacobian_dips_at_anchors", claim, scale,
                            "turn on scoring.trajectories (profiles along ellipses with their anchors marked)")
    part = _ellipse_values(trajectories, ids, JACOBIAN)
    part = part[part["kind"].isin(["different_class", "same_class"]) & part[JACOBIAN].gt(0)]
    mean = part.groupby(["network_id", "checkpoint", part["anchor"].astype(bool)])[JACOBIAN].mean().unstack()
    if True not in mean.columns or False not in mean.columns:
        return not_measured("jacobian_dips_at_anchors", claim, scale, "turn on scoring.trajectories")
    dip = np.log10(mean[True] / mean[False]).unstack()
    if not {FINAL, INITIAL} <= set(dip.columns):
        return not_measured("jacobian_dips_at_anchors", claim, scale,
                            "profiles at both the init and end checkpoints (scoring.trajectories)")
    return median_effect("jacobian_dips_at_anchors", claim, scale, (dip[FINAL] - dip[INITIAL]).to_numpy(), 0.0, -1)


def same_class_fewer_transitions(trajectories: pd.DataFrame, ids: set[str]) -> Finding:
    claim = "After training, same-class ellipses cross fewer linear-region boundaries than different-class and random ones."
    scale = ("median over networks of log10(transitions along same-class ellipses / along the other kind with "
             "fewer), after training")
    needed = {"same_class", "different_class", "random"}
    if trajectories.empty or not needed <= set(trajectories["kind"].astype(str)):
        return not_measured("same_class_fewer_transitions", claim, scale, "turn on scoring.trajectories")
    part = _ellipse_values(trajectories, ids, "transition_density")

    def ratios(checkpoint: str) -> pd.Series:
        at = part[part["checkpoint"] == checkpoint]
        per_ellipse = at.groupby(["network_id", "kind", "ellipse"])["transition_density"].sum(min_count=1)
        counts = per_ellipse.groupby(["network_id", "kind"]).mean().unstack()
        if counts.empty or not needed <= set(counts.columns):
            return pd.Series(dtype=float)
        other = np.minimum(counts["different_class"], counts["random"])
        return np.log10((counts["same_class"] + 1) / (other + 1))

    final = ratios(FINAL)
    if final.isna().all():
        return not_measured("same_class_fewer_transitions", claim, scale,
                            "piecewise-linear networks (transitions are undefined for smooth nonlinearities)")
    found = median_effect("same_class_fewer_transitions", claim, scale, final.to_numpy(), 0.0, -1)
    initial = ratios(INITIAL).dropna()
    if len(initial) and found.effect is not None:  # same-class points lie closer: part of it may be geometry
        before = f"at init the same median is {np.median(initial):+.3g}, so training's part is the difference"
        found = replace(found, note="; ".join(filter(None, [found.note, before])))
    return found


# The paired findings, by factor column (analysis.factors defines the pairs and the helping level).
PAIRED_TEXT = {
    "random_label_fraction": ("random_labels_raise_jacobian", "Random labels raise the Jacobian norm.",
                              "add random_label_fractions 0 and above 0 to the grid"),
    "augmentation": ("augmentation_lowers_jacobian", "Data augmentation lowers the Jacobian norm.",
                     "add augmentation [false, true] to the grid"),
    "full_batch": ("full_batch_raises_jacobian",
                   "Full-batch training raises the Jacobian norm (and the gap) against mini-batch SGD.",
                   "add a full batch (null or \"full\") beside a mini-batch size in grid.batch_sizes"),
    "activation": ("nonlinearity_raises_jacobian",
                   "Nonlinearities other than ReLU raise the Jacobian norm against ReLU.",
                   "add relu and another nonlinearity to grid.activations"),
}


def paired(wide: pd.DataFrame, column: str, every: pd.DataFrame | None = None) -> Finding:
    """Pairs identical but for one factor: log10(Jacobian with the hurting level / with the
    helping one); the paper found it positive. Where none is in the statistics, `every` (the
    sweep's networks) tells a grid without the factor from pairs the protocol broke up."""
    id, claim, how = PAIRED_TEXT[column]
    scale = "median log10(Jacobian norm hurting / helping level) over pairs of networks identical but for the factor"
    factor = next(f for f in FACTORS if f.column == column)
    if column not in wide or JACOBIAN not in wide:
        return not_measured(id, claim, scale, how)
    pairs = _pairs(wide, factor)
    if pairs.empty:
        grid = 0 if every is None or column not in every else len(_pairs(every, factor))
        if grid:
            return not_measured(id, claim, scale, f"the grid has {grid} pair(s), but none with both networks in the "
                                                  "statistics (a pair counts only then); train them longer, or "
                                                  "report with `sweep report --include-unconverged`")
        return not_measured(id, claim, scale, how + " (pairs count only when both networks are in the statistics)")
    ratio = pairs[f"{JACOBIAN}_bad"].to_numpy(float) / pairs[f"{JACOBIAN}_good"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return median_effect(id, claim, scale, np.log10(ratio), 0.0, +1)


def _pairs(wide: pd.DataFrame, factor) -> pd.DataFrame:
    pairs = [factor_pairs(wide, factor, level) for level in factor.levels(wide[factor.column])]
    return pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame()


def ranks_gap(correlations: pd.DataFrame, metric: str, id: str, claim: str, expected: int = +1) -> Finding:
    scale = "Spearman ρ with the gap across networks (pooled over data sets where there are several)"
    rows = correlations[(correlations["metric"] == metric) & (correlations["target"] == "gap")]
    if rows.empty:
        return not_measured(id, claim, scale, f"score {metric} (scoring.metrics)")
    group = correlations.columns[0]
    row = rows[rows[group].astype(str) == POOLED]
    row = (row if len(row) else rows).iloc[0]
    if not np.isfinite(row["rho"]):
        return not_measured(id, claim, scale, f"{row['note'] or 'too few networks'}")
    low, high = row["rho_lo"], row["rho_hi"]
    p = float(row.get("rho_p", math.nan))  # tables from before p entered the verdict have none
    if not (np.isfinite(low) and np.isfinite(high)):  # the verdict rests on the test alone, where there is one
        why = next((part for part in str(row["note"]).split("; ") if part.startswith("bootstrap interval")),
                   "the report was written with --no-bootstrap")
        rho = float(row["rho"])
        side = verdict(rho, rho, 0.0, expected, p) if np.isfinite(p) else "inconclusive"
        test = f"; the verdict rests on p(ρ) = {p:.2g} alone" if np.isfinite(p) else ""
        return Finding(id, claim, rho, None, None, int(row["n"]), side, scale, f"no interval ({why}){test}")
    return Finding(id, claim, float(row["rho"]), float(low), float(high), int(row["n"]),
                   verdict(low, high, 0.0, expected, p), scale, untested(low, high, 0.0, expected, p, int(row["n"])))


def train_loss_tracks_less(wide: pd.DataFrame) -> Finding:
    """ρ(test Jacobian norm, gap) − |ρ(train loss, gap)| over the same networks, with a paired
    bootstrap of networks: positive where the Jacobian norm ranks the gap better than the train
    loss does in either direction."""
    id = "train_loss_does_not_track_gap"
    claim = "The train loss tracks the gap less well than the test Jacobian norm does (the paper: not at all)."
    scale = ("Spearman ρ of the test Jacobian norm with the gap minus |ρ| of the train loss with it (tracking "
             "either way), over the same networks (pooled over data sets)")
    if JACOBIAN not in wide or "train_loss" not in wide:
        return not_measured(id, claim, scale, f"score {JACOBIAN} (scoring.metrics)")
    values = wide[[JACOBIAN, "train_loss", "gap"]].to_numpy(float, na_value=np.nan)
    jacobian, loss, gap = values[np.isfinite(values).all(axis=1)].T
    if len(gap) < MIN_NETWORKS or len(np.unique(gap)) < 2:
        return not_measured(id, claim, scale, f"{len(gap)} network(s) with a Jacobian norm, a train loss and a "
                                              f"gap that varies; the finding needs {MIN_NETWORKS} or more")
    with_jacobian, with_loss = ResampleStatistics(jacobian, gap), ResampleStatistics(loss, gap)

    def difference(index: np.ndarray, axis: int = -1) -> np.ndarray:
        return with_jacobian(index)[0] - np.abs(with_loss(index)[0])

    effect = float(difference(np.arange(len(gap))))
    if not np.isfinite(effect):
        return not_measured(id, claim, scale, "the Jacobian norm or the train loss is (nearly) constant over "
                                              "these networks")
    (low,), (high,), undefined = percentile_intervals(difference, len(gap), N_RESAMPLES, seed=0)
    if not (np.isfinite(low) and np.isfinite(high)):  # few networks: many resamples draw a constant column
        return Finding(id, claim, effect, None, None, len(gap), "inconclusive", scale,
                       f"no interval (bootstrap interval undefined: {undefined} of {N_RESAMPLES} resamples of the "
                       f"{len(gap)} networks drew a constant column, more than {MAX_UNDEFINED_SHARE:.0%})")
    return Finding(id, claim, effect, float(low), float(high), len(gap), verdict(low, high, 0.0, +1), scale)


def predicts_errors(per_point: pd.DataFrame) -> Finding:
    claim = "At single test points, a large Jacobian norm predicts that the point is misclassified."
    scale = "median over networks of the AUROC of the Jacobian norm for misclassification (0.5: no skill)"
    part = per_point[per_point["metric"] == JACOBIAN] if not per_point.empty else per_point
    if part.empty:
        return not_measured("jacobian_predicts_errors", claim, scale,
                            "score the test points' Jacobian norms (the points table) with jacobian_softmax")
    return median_effect("jacobian_predicts_errors", claim, scale, part["auroc"].to_numpy(float), 0.5, +1)


# ---- output ---------------------------------------------------------------------------------


def write_json(found: list[Finding], path: Path) -> None:
    """`findings.json`: a list of objects with the keys of JSON_KEYS (null where not measured)."""
    def clean(value):
        return None if isinstance(value, float) and not math.isfinite(value) else value

    records = [{key: clean(asdict(f)[key]) for key in JSON_KEYS} for f in found]
    path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")


def effect_text(f: Finding) -> str:
    """The effect and its interval with the same decimals, three significant digits of the largest.

    >>> effect_text(Finding("id", "claim", 0.92, 0.9021, 0.977, 19, "reproduced", "scale"))
    '+0.920 [+0.902, +0.977]'
    """
    values = [v for v in (f.effect, f.ci_low, f.ci_high) if v is not None]
    if not values:
        return ""
    largest = max((abs(v) for v in values if np.isfinite(v) and v), default=1.0)
    decimals = max(0, 2 - math.floor(math.log10(largest)))
    text = [f"{v:+.{decimals}f}" for v in values]
    return text[0] if len(text) == 1 else f"{text[0]} [{text[1]}, {text[2]}]"


def markdown_rows(found: list[Finding]) -> pd.DataFrame:
    return pd.DataFrame({
        "finding": [f"`{f.id}`: {f.claim}" for f in found],
        "effect [95% CI]": [effect_text(f) for f in found],
        "n": [str(f.n) if f.n else "" for f in found],
        "verdict": [f.verdict + (f": {f.note}" if f.note else "") for f in found],
        "effect measures": [f.scale for f in found],
    })
