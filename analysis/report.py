"""The sweep report: statistics tables, figures and timings in `<sweep>/report/report.md`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures
from analysis.columns import FINAL_CHECKPOINT, HYPERPARAMS, metric_columns
from analysis.correlations import DEFAULT_RESAMPLES, EXACT_P_MAX_NETWORKS, POOLED, correlations
from analysis.factors import FACTORS, factor_pairs, paired_factors
from analysis.findings import Finding, findings, markdown_rows, write_json
from analysis.granulated import PSI, granulated_kendall, varying_hyperparams
from analysis.per_point import per_point, summarize_per_point
from analysis.protocol import select
from analysis.robustness import conditional_mutual_information, robust_sign_error
from analysis.tables import Tables, load
from analysis.manifold import trajectory_profiles
from sweep.scoring.table_schemas import differing_settings, recorded_settings, setting_change

# Quantities shown in the paired-factor scatters, besides the gap, when present.
FACTOR_FIGURE_METRICS: tuple[str, ...] = ("jacobian_softmax", "transitions")


@dataclass(frozen=True, eq=False)
class Report:
    """What `build_report` computed and where it wrote it."""

    path: Path
    correlations: pd.DataFrame
    granulated: pd.DataFrame
    robustness: pd.DataFrame  # per metric: CMI (Jiang et al.) and robust sign-error (Dziugaite et al.)
    factors: pd.DataFrame
    per_point: pd.DataFrame
    per_point_summary: pd.DataFrame
    findings: tuple[Finding, ...]  # the paper's findings on this sweep (also findings.json)
    left_out: pd.DataFrame  # networks left out of the statistics, with a `reason`
    include_unconverged: bool
    figures: tuple[Path, ...]
    timings: dict[str, float]
    notes: tuple[str, ...] = ()  # what the statistics could not use, and what to do (report.md's header)


def build_report(sweep_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 bootstrap: bool = True, n_resamples: int = DEFAULT_RESAMPLES,
                 include_unconverged: bool = False) -> Report:
    """Load a sweep, compute every statistic, draw the figures and write the report.

    Correlations, granulated Kendall, paired factors and per-point statistics use the networks
    that reached 100% train accuracy, as the paper does (`analysis.protocol`; a pair counts only
    when both of its networks did); `include_unconverged` adds those stopped at the budget. The
    networks left out are counted and listed (`left_out.csv`). The report goes to `out_dir`, by
    default `<sweep>/report` for a local sweep and `./<sweep name>-report` for a remote (s3://,
    gs://) one.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    tables = load(sweep_path)
    timings["load tables"] = time.perf_counter() - start
    out = Path(out_dir) if out_dir is not None else default_out_dir(tables)
    figure_dir = out / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    wide, left_out = select(tables.wide, include_unconverged)

    clock = time.perf_counter()
    corr = correlations(wide, bootstrap=bootstrap, n_resamples=n_resamples)
    key = f"correlations with bootstrap ({n_resamples} resamples)" if bootstrap else "correlations"
    timings[key] = time.perf_counter() - clock

    clock = time.perf_counter()
    granulated = granulated_kendall(wide)
    robustness = conditional_mutual_information(wide).merge(robust_sign_error(wide), on="metric", how="left")
    factors = paired_factors(wide)
    points = per_point(tables.points[tables.points["network_id"].isin(wide["network_id"])])
    points_summary = summarize_per_point(points)
    profile = trajectory_profiles(tables.trajectories[tables.trajectories["network_id"].isin(wide["network_id"])],
                                  tables.networks)
    found = tuple(findings(wide, tables.scores, tables.trajectories, corr, points, every=tables.wide))
    write_json(list(found), out / "findings.json")
    timings["granulated Kendall, factors, per point, trajectories, findings"] = time.perf_counter() - clock

    clock = time.perf_counter()
    drawn = _draw_figures(tables, wide, corr, profile, figure_dir)
    sweep_figure = figures.parallel_coordinates(wide, varying_hyperparams(wide), figure_dir / "parallel_coordinates.png")
    drawn["sweep"] = [sweep_figure] if sweep_figure is not None else []
    psi = figures.psi_figure(granulated, figure_dir / "granulated_kendall.png", PSI)
    drawn["granulated"] = [psi] if psi is not None else []
    timings["figures"] = time.perf_counter() - clock

    left_out = left_out[[c for c in dict.fromkeys(("network_id", "reason", *HYPERPARAMS, "train_acc", "epochs",
                                                   "message"))
                         if c in left_out.columns]]
    for name, frame in (("correlations", corr), ("granulated_kendall", granulated), ("robustness", robustness),
                        ("paired_factors", factors), ("per_point", points),
                        ("per_point_summary", points_summary), ("left_out", left_out)):
        frame.to_csv(out / f"{name}.csv", index=False)
    timings["total"] = time.perf_counter() - start
    path = out / "report.md"
    notes = (*_unlisted_lines(tables), *_unscored_lines(tables, left_out), *_other_settings_lines(tables))
    report = Report(path, corr, granulated, robustness, factors, points, points_summary, found, left_out, include_unconverged,
                    tuple(p for paths in drawn.values() for p in paths), timings, tuple(note.rstrip() for note in notes))
    path.write_text(_markdown(tables, report, drawn, bootstrap), encoding="utf-8")
    return report


def default_out_dir(tables: Tables) -> Path:
    sweep_dir = tables.path.rstrip("/").rsplit("/", 1)[0].removeprefix("file://")
    if "://" in sweep_dir:  # object storage: beside where the command runs
        return Path.cwd() / f"{sweep_dir.rsplit('/', 1)[-1]}-report"
    return Path(sweep_dir) / "report"


def format_correlation_table(df: pd.DataFrame) -> str:
    """The correlation table as aligned text for the terminal."""
    if df.empty:
        return "no correlations: the sweep has no metric columns or no networks"
    text = _correlation_rows(df, target=True).astype(str)
    text["note"] = df["note"].astype("string").fillna("").to_numpy()
    return text.to_string(index=False, justify="left")


def _draw_figures(tables: Tables, wide: pd.DataFrame, corr: pd.DataFrame, profile: pd.DataFrame, out: Path
                  ) -> dict[str, list[Path]]:
    """The figures of the networks in the statistics (`wide`), and the trajectory and slice maps."""
    drawn: dict[str, list[Path]] = {"capacity": [], "metrics": [], "factors": [],
                                    "trajectories": [], "slices": []}
    drawn["capacity"].append(figures.gap_vs_capacity(wide, out / "gap_vs_capacity.png"))
    for metric in metric_columns(wide):
        if metric in ("param_count", "train_loss"):
            continue
        drawn["metrics"].append(
            figures.metric_vs_gap(wide, corr, metric, out / f"gap_vs_{_file_name(metric)}.png"))
    for factor in FACTORS:
        if factor.column not in wide.columns:
            continue
        for level in factor.levels(wide[factor.column]):
            pairs = factor_pairs(wide, factor, level)
            if pairs.empty:
                continue
            shown = ["gap", *[m for m in FACTOR_FIGURE_METRICS if m in wide.columns]]
            name = f"factor_{factor.column}_{_file_name(str(level))}.png"
            drawn["factors"].append(figures.factor_scatter(
                pairs, f"{factor.name}: {factor.describe(level)} ({len(pairs)} pairs)",
                factor.level_text(factor.good), factor.level_text(level),
                shown, out / name))
    for dataset in sorted(profile["dataset"].unique()) if not profile.empty else []:
        drawn["trajectories"].append(figures.trajectory_figure(
            profile, dataset, out / f"trajectories_{_file_name(dataset)}.png"))
    slice_path = figures.slice_figure(tables.slices, out / "slices.png")
    if slice_path is not None:
        drawn["slices"].append(slice_path)
    return drawn


def _markdown(tables: Tables, report: Report, drawn: dict[str, list[Path]], bootstrap: bool
              ) -> str:
    networks = tables.networks
    statuses = networks["status"].astype(str).value_counts() if "status" in networks else None
    datasets = sorted(networks["dataset"].astype(str).unique()) if "dataset" in networks else []
    lines = [
        f"# Sensitivity and generalization report: {Path(tables.path).parent.name}",
        "",
        f"Tables: `{tables.path}`  ",
        f"Networks: {len(networks)}"
        + (" (" + ", ".join(f"{n} {s}" for s, n in statuses.items()) + ")" if statuses is not None
           else "") + "  ",
        f"Data sets: {', '.join(datasets) or 'none'}  ",
        *_protocol_lines(report, len(networks)),
        *(f"{note}  " for note in report.notes),
        "",
        "## The paper's findings on this sweep",
        "",
        "Each effect with its 95% interval (bootstrap of the median over networks or pairs, or the "
        "correlation's own) and a verdict: the interval entirely on the paper's side of no effect is "
        "*reproduced*, entirely on the other *contradicted*, spanning it *inconclusive*; where the finding "
        "has a test of no effect (the correlation's p, a Wilcoxon signed-rank test of the values), a side "
        "also needs p < 0.05, and a correlation without an interval (`--no-bootstrap`) takes its side from "
        "that test alone. Also in `findings.json`.",
        "",
        _markdown_table(markdown_rows(list(report.findings))),
        "",
        *_left_out_lines(report),
        "## Rank correlation with the generalization gap",
        "",
        "Spearman ρ and Kendall τ across networks of each metric with the gap (train accuracy − "
        "test accuracy) and with the loss gap (test − train loss), per data set"
        + (" and pooled. " if (report.correlations.iloc[:, 0].astype(str) == POOLED).any() else ". ")
        + ("Intervals: 95% percentile bootstrap over networks. " if bootstrap else
           "Bootstrap intervals were skipped (`--no-bootstrap`). ")
        + f"p(ρ): exact over every pairing of up to {EXACT_P_MAX_NETWORKS} networks, else scipy's t "
          "approximation; p(τ): scipy's (exact for up to 33 networks without ties); neither below 1/n!.",
        "",
    ]
    for target in report.correlations["target"].unique():
        rows = report.correlations[report.correlations["target"] == target]
        lines += [f"### Target: `{target}`", "", _markdown_table(_correlation_rows(rows)), ""]
    lines += _figure_lines("Each metric against the gap", drawn["metrics"])
    lines += _figure_lines("The sweep at a glance: every network across its hyperparameters, the Jacobian norm and "
                           "the gap", drawn["sweep"])
    lines += [
        "## Capacity and fit",
        "",
        "The paper: bigger networks often generalize better; training loss does not track "
        "generalization. Both are also ranked as baselines in the tables above.",
        "",
    ]
    lines += _figure_lines(None, drawn["capacity"])
    lines += ["## Granulated Kendall coefficient", "",
              "ψ per hyperparameter: mean Kendall τ (metric vs gap) over groups of networks that "
              "share every other hyperparameter and the seed; Ψ: the mean over hyperparameters (seeds are "
              "samples, not one of them; Jiang et al., ICLR 2020). Group counts and notes are in "
              "`granulated_kendall.csv`.",
              ""]
    lines += [_markdown_table(_granulated_rows(report.granulated)), ""]
    lines += ["### Conditional mutual information and robust sign-error", "",
              "Over pairs of networks, how much the sign of a metric's difference tells of the sign of "
              "the gap's. CMI (Jiang et al., 2020): the least, over conditioning on at most two "
              "hyperparameters, of I(V_metric; V_gap | U_S) / H(V_gap | U_S) (1: determines it, 0: "
              "nothing beyond the hyperparameters). Robust sign-error (Dziugaite et al., 2020): over "
              "environments of two settings differing in one hyperparameter, the largest share of "
              "cross pairs where the metric and the gap move oppositely (0 is best; 0.5 is chance), "
              "pairs weighted by how surely their gaps differ given the test sets' size, and only "
              "environments with an effective sample of 12 pairs or more (theirs; more seeds per "
              "setting give more). Also in `robustness.csv`.", "",
              _markdown_table(_robustness_rows(report.robustness)), ""]
    lines += _figure_lines(None, drawn["granulated"])
    lines += ["## Paired factor studies", "",
              "Networks identical but for one factor. Δ = hurting level − helping level. "
              "`same direction`: share of pairs (where both change) in which the metric and the "
              "gap move the same way; `metric up` / `gap up`: share of pairs where the hurting "
              "level raises them; `median ratio`: metric(hurting) / metric(helping).", ""]
    lines += [_markdown_table(_factor_rows(report.factors)), ""]
    lines += _figure_lines("Pair scatters", drawn["factors"])
    lines += ["## Per point", ""]
    if report.per_point.empty:
        lines += ["The sweep has no per-point records (`points` table is empty).", ""]
    else:
        lines += ["Per network: AUROC of the metric for predicting that a test point is "
                  "misclassified, and Spearman ρ of the metric with the point's loss; summarised "
                  "across the networks in the statistics (per-network values, with points excluded "
                  "and why, in `per_point.csv`).", "",
                  _markdown_table(_per_point_rows(report.per_point_summary)), ""]
    lines += ["## Trajectory profiles", ""]
    if not drawn["trajectories"]:
        lines += ["The sweep has no trajectory records (`trajectories` table is empty).", ""]
    lines += _figure_lines(None, drawn["trajectories"])
    lines += ["## Slices", ""]
    if not drawn["slices"]:
        lines += ["The sweep has no slice records (`slices` table is empty).", ""]
    lines += _figure_lines(None, drawn["slices"])
    lines += ["## Timing", "", "| step | seconds |", "| --- | --- |"]
    lines += [f"| {step} | {seconds:.2f} |" for step, seconds in report.timings.items()]
    return "\n".join(lines) + "\n"


LEFT_OUT_LISTED = 50  # rows of the left-out list in report.md; left_out.csv has them all


def _protocol_lines(report: Report, total: int) -> list[str]:
    """Which networks the statistics use, how many were left out and why, and which."""
    left = report.left_out
    rule = ("networks that trained (diverged and failed ones left out; `--include-unconverged`)"
            if report.include_unconverged else
            "networks that reached 100% train accuracy, as in the paper (`sweep report "
            "--include-unconverged` adds those stopped at the budget)")
    reasons = left["reason"].value_counts()
    lines = [f"In the statistics: {total - len(left)} of {total} networks: {rule}; per statistic also "
             "leaving out those missing the metric (counted in each table).  ",
             f"Left out: {len(left)}" + (" (" + ", ".join(f"{n} {r}" for r, n in reasons.items()) + ")" if len(left)
                                         else "") + "."]
    return lines


def _unscored_lines(tables, left_out: pd.DataFrame) -> list[str]:
    """Networks in the statistics without scores at the final checkpoint: the statistics count
    them as missing their metrics, which says nothing of why or what to do."""
    kept = set(tables.networks["network_id"].astype(str)) - set(left_out["network_id"].astype(str))
    scored = pd.concat([tables.scores, tables.other_settings])  # those: `_other_settings_lines`
    unscored = kept - set(scored.loc[scored["checkpoint"].astype(str) == FINAL_CHECKPOINT, "network_id"].astype(str))
    if not unscored:
        return []
    return [f"Unscored: {len(unscored)} network(s) in the statistics have no scores at the `{FINAL_CHECKPOINT}` "
            "checkpoint (its scoring was cut short or has not run; the tables below count them as missing their "
            "metrics): score them with `sweep score` on the sweep.  "]


def _other_settings_lines(tables) -> list[str]:
    """Checkpoints scored with other settings than the sweep's: their values are not comparable
    with the rest, so `analysis.load` set them aside; said, with what differs."""
    other = tables.other_settings
    if other.empty:
        return []
    units = other.drop_duplicates(["network_id", "checkpoint"]).astype({"network_id": str, "checkpoint": str})
    bundles = units.merge(tables.networks[["network_id", "bundle_id"]].astype(str), on="network_id", how="left")
    checkpoints = bundles.assign(bundle_id=bundles["bundle_id"].fillna(bundles["network_id"]))  # no row: its own
    count = len(checkpoints.drop_duplicates(["bundle_id", "checkpoint"]))
    groups = [differing_settings(record, tables.settings) for record in other["settings"].dropna().astype(str).unique()]
    if other["settings"].isna().any() and tables.unrecorded_settings is not None:
        groups.append(differing_settings(recorded_settings(tables.unrecorded_settings), tables.settings))
    differences = sorted({", ".join(setting_change(name, then, now, "the sweep's:") for name, (then, now) in group.items())
                          for group in groups})
    return [f"Scored with other settings: {count} checkpoint(s), of {units['network_id'].nunique()} network(s), "
            f"were scored with other scoring settings than the sweep's ({'; or '.join(differences)}): a rescore "
            "with new settings cut short, or one that did not find their checkpoints. Their rows are left out of "
            "every statistic, as if unscored: `sweep score` on the sweep scores again those whose checkpoints it finds, "
            "and `sweep status` counts the others.  "]


def _unlisted_lines(tables) -> list[str]:
    """Networks with scores but no `networks` row (its bundle's file deleted or lost): they cannot
    enter the statistics, which need the row's gap, and would otherwise go unmentioned."""
    unlisted = set(tables.scores["network_id"].astype(str)) - set(tables.networks["network_id"].astype(str))
    if not unlisted:
        return []
    return [f"Not in the statistics either: {len(unlisted)} network(s) with scores but no row in the `networks` "
            "table (a bundle's `networks/<bundle>.parquet` is missing: copy it again from the sweep's storage, or run "
            "`sweep resume` where the bundle's checkpoints are, which writes it again from its end checkpoint)."]


def _left_out_lines(report: Report) -> list[str]:
    """The networks left out of the statistics, as a section."""
    left = report.left_out
    if not len(left):
        return []
    shown = left.head(LEFT_OUT_LISTED)
    shown = shown.assign(**{c: shown[c].round(4) for c in ("train_acc", "epochs") if c in shown})  # the csv: all digits
    text = pd.DataFrame({c: [str(v) for v in shown[c]] for c in shown.columns})
    lines = ["## Networks left out of the statistics", "", _markdown_table(text.rename(columns={"network_id": "network"})),
             ""]
    if len(left) > LEFT_OUT_LISTED:
        lines += [f"The first {LEFT_OUT_LISTED} are listed; all {len(left)} are in `left_out.csv`.", ""]
    return lines


def _figure_lines(title: str | None, paths: list[Path]) -> list[str]:
    lines = [f"### {title}", ""] if title and paths else []
    for path in paths:
        lines += [f"![{path.stem}](figures/{path.name})", ""]
    return lines


def _correlation_rows(df: pd.DataFrame, target: bool = False) -> pd.DataFrame:
    group = df.columns[0]
    ci = " [95% CI]" if df[["rho_lo", "tau_lo"]].notna().to_numpy().any() else ""  # none with --no-bootstrap
    return pd.DataFrame({
        group: df[group].astype(str),
        "metric": df["metric"],
        **({"target": df["target"]} if target else {}),
        "n": df["n"],
        "no value": df["n_excluded"],  # networks in the statistics missing the metric or the target
        f"Spearman ρ{ci}": [_estimate(r, "rho") for r in df.itertuples()],
        "p(ρ)": df["rho_p"].map(_p_value),
        f"Kendall τ{ci}": [_estimate(r, "tau") for r in df.itertuples()],
        "p(τ)": df["tau_p"].map(_p_value),
        "note": df["note"],
    })


def _granulated_rows(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame({"note": ["no metric columns"]})
    table = df.pivot(index="metric", columns="hyperparam", values="tau")
    order = [h for h in df["hyperparam"].unique() if h != PSI] + [PSI]
    table = table.reindex(index=df["metric"].unique(), columns=order)
    return table.map(_number).rename(columns={PSI: "Ψ"}).reset_index()


def _robustness_rows(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame({"note": ["no metric columns"]})
    return pd.DataFrame({
        "metric": df["metric"],
        "CMI": df["cmi"].map(_number),
        "least with": df["condition"].fillna(""),
        "pairs": df["n_pairs"].astype("Int64").astype(str),
        "robust sign-error": df["robust_sign_error"].map(_number),
        "90th percentile": df["p90_sign_error"].map(_number),
        "mean sign-error": df["mean_sign_error"].map(_number),
        "environments": df["n_environments"].astype("Int64").astype(str)
        + " (+" + df["n_environments_small"].astype("Int64").astype(str) + " too small)",
        "worst environment": df["worst_environment"].fillna(""),
        "note": df["sign_error_note"].fillna(""),
    })


def _factor_rows(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "factor": df["factor"],
        "comparison": df["comparison"],
        "metric": df["metric"].astype("string").fillna(""),
        "pairs": df["n_pairs"],
        "same direction": df["share_same_direction"].map(_share),
        "metric up": df["share_metric_up"].map(_share),
        "gap up": df["share_gap_up"].map(_share),
        "median ratio": df["median_ratio"].map(_number),
        "median Δgap": df["median_gap_change"].map(_number),
        "note": df["note"].astype("string").fillna(""),
    })


def _per_point_rows(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "metric": df["metric"],
        "networks": df["n_networks"],
        "AUROC median [IQR]": [f"{_number(r.auroc_median)} [{_number(r.auroc_q25)}, "
                               f"{_number(r.auroc_q75)}]" for r in df.itertuples()],
        "AUROC > 0.5": df["share_auroc_above_half"].map(_share),
        "ρ(loss) median [IQR]": [f"{_number(r.spearman_median)} [{_number(r.spearman_q25)}, "
                                 f"{_number(r.spearman_q75)}]" for r in df.itertuples()],
    })


def _markdown_table(df: pd.DataFrame) -> str:
    cells = df.astype(str).replace({"nan": "—", "None": "—"})
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |"
            for row in cells.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _estimate(row, name: str) -> str:
    value, low, high = (getattr(row, name), getattr(row, f"{name}_lo"), getattr(row, f"{name}_hi"))
    if not np.isfinite(value):
        return "—"
    interval = f" [{low:+.2f}, {high:+.2f}]" if np.isfinite(low) and np.isfinite(high) else ""
    return f"{value:+.3f}{interval}"


def _p_value(p: float) -> str:
    if not np.isfinite(p):
        return "—"
    return "<1e-300" if p == 0 else f"{p:.1e}"


def _number(value: float) -> str:
    return f"{value:.3g}" if np.isfinite(value) else "—"


def _share(value: float) -> str:
    return f"{value:.0%}" if np.isfinite(value) else "—"


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
