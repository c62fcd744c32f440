"""The report end to end on a synthetic sweep written as real Parquet files, and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

import analysis
from analysis.report import build_report, format_correlation_table
from analysis.synthetic import SyntheticSweep, write_synthetic_sweep

SMALL = SyntheticSweep(n_networks=48, points_per_network=30, ellipses=2, k=18, grid=32)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return write_synthetic_sweep(tmp_path_factory.mktemp("sweeps") / "small", SMALL)


@pytest.fixture(scope="module")
def report(sweep):
    return build_report(sweep, n_resamples=100)


def test_report_lands_in_the_sweep_and_every_figure_it_shows_is_a_png(sweep, report):
    assert report.path == sweep / "report" / "report.md"
    text = report.path.read_text()
    shown = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", text)
    assert {Path(p).name for p in shown} == {p.name for p in report.figures}
    assert {"gap_vs_capacity.png", "gap_vs_jacobian_softmax.png", "slices.png",
            "trajectories_digits.png", "factor_activation_tanh.png"} <= {Path(p).name
                                                                          for p in shown}
    for relative in shown:
        image = imread(report.path.parent / relative)
        assert image.shape[0] >= 400 and image.shape[1] >= 400
        assert image[..., :3].std() > 0.05  # not blank


def test_report_states_its_tables_and_the_bootstrap_time(report):
    text = report.path.read_text()
    for heading in ("## Rank correlation with the generalization gap", "### Target: `gap`",
                    "## Granulated Kendall coefficient", "## Paired factor studies",
                    "## Per point", "## Trajectory profiles", "## Slices", "## Timing"):
        assert heading in text
    assert re.search(r"\| correlations with bootstrap \(100 resamples\) \| \d+\.\d\d \|", text)
    assert len(json.loads((report.path.parent / "findings.json").read_text())) == len(report.findings) == 12
    assert "### Conditional mutual information and robust sign-error" in text
    robustness = pd.read_csv(report.path.parent / "robustness.csv")
    assert list(robustness["metric"]) == list(dict.fromkeys(report.correlations["metric"]))
    assert robustness["cmi"].between(0, 1).all()
    # one network a setting: no environment holds 12 pairs, and each row says so
    sign_error = robustness["robust_sign_error"]
    assert (sign_error.between(0, 1) | sign_error.isna()).all()
    assert robustness.loc[sign_error.isna(), "sign_error_note"].str.startswith("undefined: none of the").all()
    saved = pd.read_csv(report.path.parent / "correlations.csv")
    assert len(saved) == len(report.correlations)
    assert saved["rho_lo"].notna().any()


def test_report_numbers_agree_with_the_api(sweep, report):
    wide = analysis.load(sweep).wide
    direct = analysis.correlations(wide, bootstrap=False)
    pd.testing.assert_series_equal(report.correlations["rho"], direct["rho"])
    jacobian = direct[(direct.metric == "jacobian_softmax") & (direct.target == "gap")]
    assert (jacobian["rho"] > 0.5).all()  # the synthetic sweep tracks the gap by construction
    table = format_correlation_table(report.correlations)
    assert "jacobian_softmax" in table and "Spearman ρ [95% CI]" in table


def test_trajectory_profiles_equal_a_direct_pandas_computation(sweep):
    tables = analysis.load(sweep)
    profile = analysis.trajectory_profiles(tables.trajectories, tables.networks)
    merged = tables.trajectories.merge(tables.networks[["network_id", "dataset"]], on="network_id")
    for dataset, checkpoint, kind, position in [("digits", "end", "same_class", 3),
                                                ("mnist", "init", "random", 0)]:
        values = merged[(merged.dataset == dataset) & (merged.checkpoint == checkpoint)
                        & (merged.kind == kind) & (merged.position == position)]
        got = profile[(profile.dataset == dataset) & (profile.checkpoint == checkpoint)
                      & (profile.kind == kind) & (profile.phase == position / SMALL.k)]
        for value in ("jacobian_softmax", "transition_density"):
            row = got[got.value == value].iloc[0]
            column = values[value].dropna()
            assert row["n"] == len(column)
            assert row["median"] == pytest.approx(column.median())
            assert row["q75"] == pytest.approx(np.quantile(column, 0.75))


def test_cli_prints_the_table_and_fails_clearly_on_a_bad_path(sweep, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "analysis", str(sweep / "tables"), "--out", str(tmp_path / "cli"),
         "--no-bootstrap"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "jacobian_softmax" in done.stdout
    assert f"report: {tmp_path / 'cli' / 'report.md'}" in done.stdout
    assert "Bootstrap intervals were skipped" in (tmp_path / "cli" / "report.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2
    assert "does not exist" in bad.stderr and str(tmp_path / "missing") in bad.stderr
    assert "Traceback" not in bad.stderr
    assert "Spearman ρ " in done.stdout and "[95% CI]" not in done.stdout  # no intervals, no header for them
    few = subprocess.run([sys.executable, "-m", "analysis", str(sweep), "--resamples", "1"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert few.returncode == 2 and "--resamples must be at least 100, got 1" in few.stderr, few.stderr


def test_analysis_imports_neither_torch_nor_ray():
    """Of the sweep it uses only the tables' schemas and how a path or URI is opened (pyarrow
    alone), so it installs and runs where the sweep's machinery does not."""
    code = ("import sys, analysis, analysis.report, analysis.__main__; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'sweep', 'metrics_core')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == ("['sweep', 'sweep.plan', 'sweep.plan.storage', 'sweep.scoring', "
                                   "'sweep.scoring.table_schemas']")


def test_statistics_use_the_networks_at_full_train_accuracy_and_list_the_others(sweep, report, tmp_path):
    """The paper's protocol by default: networks stopped at the budget, diverged or failed are
    left out of correlations, granulated Kendall, factor pairs and per-point statistics, counted
    and listed; `include_unconverged` takes those at the budget back in."""
    from analysis.factors import FACTORS, factor_pairs
    from analysis.protocol import reached_full_train_accuracy

    wide = analysis.load(sweep).wide
    full = reached_full_train_accuracy(wide)
    assert 0 < (~full).sum() < len(wide)
    jac = report.correlations[(report.correlations.metric == "jacobian_softmax") & (report.correlations.target == "gap")]
    counted = (jac["n"] + jac["n_excluded"]).set_axis(jac["dataset"].astype(str))
    assert counted["pooled"] == counted.drop("pooled").sum() == full.sum()
    left = pd.read_csv(report.path.parent / "left_out.csv")
    assert sorted(left["network_id"]) == sorted(wide.loc[~full, "network_id"])
    assert dict(left["reason"].value_counts()) == dict(wide.loc[~full, "status"].astype(str).value_counts())
    # why a network diverged or failed is there too
    messages = wide.set_index("network_id")["message"].astype("string").fillna("")
    assert (left.set_index("network_id")["message"].astype("string").fillna("") == messages[left["network_id"]]).all()
    text = report.path.read_text()
    assert f"In the statistics: {full.sum()} of {len(wide)} networks" in text
    assert f"Left out: {(~full).sum()} (" in text and "`sweep report --include-unconverged`" in text
    # A pair counts only when both of its networks reached 100% train accuracy.
    converged = set(wide.loc[full, "network_id"])
    for factor in FACTORS:
        for level in factor.levels(wide[factor.column]):
            pairs = factor_pairs(wide, factor, level)
            both = pairs["network_id_good"].isin(converged) & pairs["network_id_bad"].isin(converged)
            got = report.factors[(report.factors.factor == factor.name) & (report.factors.metric == "jacobian_softmax")
                                 & (report.factors.comparison == factor.describe(level))]["n_pairs"]
            assert (got == both.sum()).all() and len(got)
    assert set(report.per_point["network_id"]) <= converged
    everyone = build_report(sweep, tmp_path / "all", bootstrap=False, include_unconverged=True)
    trained = ~wide["status"].astype(str).isin(["diverged", "failed"])
    jac = everyone.correlations[(everyone.correlations.metric == "jacobian_softmax")
                                & (everyone.correlations.target == "gap") & (everyone.correlations.dataset == "pooled")]
    assert (jac["n"] + jac["n_excluded"] == trained.sum()).all()
    assert set(everyone.left_out["reason"]) <= {"diverged", "failed"}


def copy_without_a_file(sweep: Path, tmp_path: Path, table: str, pattern: str) -> tuple[Path, set]:
    """A copy of the sweep whose first `table` file matching `pattern` is gone; its network ids."""
    import shutil

    import pyarrow.parquet as pq

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    lost = sorted((copy / "tables" / table).glob(pattern))[0]
    ids = set(pq.read_table(lost).column("network_id").to_pylist())
    lost.unlink()
    return copy, ids


def test_a_sweep_missing_a_networks_file_or_varying_only_seeds_still_gets_its_report(sweep, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    copy, lost_ids = copy_without_a_file(sweep, tmp_path, "networks", "*.parquet")
    text = build_report(copy, tmp_path / "lost", bootstrap=False).path.read_text()
    assert f"Not in the statistics either: {len(lost_ids)} network(s) with scores but no row" in text
    # One setting, its seeds only: no hyperparameter varies, so no ψ, Ψ or sign-error environment.
    from analysis.columns import HYPERPARAMS

    networks = pq.read_table(sweep / "tables" / "networks").to_pandas().iloc[:3]
    for column in set(HYPERPARAMS) - {"seed"}:
        if column in networks:
            networks[column] = networks[column].iloc[0]
    networks["seed"] = [0, 1, 2]
    seeds = tmp_path / "seeds"
    shutil.copytree(sweep, seeds)
    shutil.rmtree(seeds / "tables" / "networks")
    (seeds / "tables" / "networks").mkdir()
    networks.to_parquet(seeds / "tables" / "networks" / "one.parquet", index=False)
    report = build_report(seeds, tmp_path / "seeds-report", bootstrap=False, include_unconverged=True)
    assert report.robustness["n_environments"].eq(0).all()
    assert (report.granulated["note"] == "undefined: no hyperparameter varies").all()


def test_the_sweep_figure_draws_a_null_category_as_its_own_level(sweep, tmp_path):
    # As files written before a column mix with newer ones (pandas 3 keeps a null category a float).
    from analysis import figures

    wide = analysis.load(sweep).wide
    wide["optimizer"] = pd.Categorical([None] * 5 + wide["optimizer"].astype(str).tolist()[5:])
    path = figures.parallel_coordinates(wide, ["optimizer", "width"], tmp_path / "p.png")
    assert imread(path).shape[0] > 100


def test_trained_networks_without_final_scores_are_named_with_the_command_that_scores_them(sweep, tmp_path):
    copy, ids = copy_without_a_file(sweep, tmp_path, "scores", "*--end.parquet")
    report = build_report(copy, tmp_path / "out", bootstrap=False)
    kept = ids - set(report.left_out["network_id"])  # those at the budget are left out anyway
    assert 0 < len(kept) < len(ids)
    assert f"Unscored: {len(kept)} network(s) in the statistics have no scores at the `end` checkpoint" in \
        report.path.read_text()
    assert "Unscored" not in build_report(sweep, tmp_path / "whole", bootstrap=False).path.read_text()


def test_slices_without_regions_are_not_drawn(tmp_path):
    # A tanh network's slices, or a diverged one's end, have null regions; its id sorts first.
    from analysis import figures

    def row(network_id, checkpoint, region):
        return {"network_id": network_id, "checkpoint": checkpoint, "slice": 0, "layers": "last", "grid": 4,
                "region": region, "boundary": None if region is None else np.zeros(16, bool),
                "anchors": [0.0, 0.0, 1.0, 0.0, 0.0, 1.0], "extent": [-1.0, 2.0, -1.0, 2.0]}

    smooth = [row("a", checkpoint, None) for checkpoint in ("init", "end")]
    assert figures.slice_figure(pd.DataFrame(smooth), tmp_path / "none.png") is None
    relu = [row("b", checkpoint, np.arange(16, dtype=np.int32) // 8) for checkpoint in ("init", "end")]
    diverged = [row("a", "init", np.zeros(16, np.int32)), row("a", "end", None)]
    path = figures.slice_figure(pd.DataFrame(smooth + diverged + relu), tmp_path / "s.png")
    assert imread(path).shape[0] > 100


def test_a_slice_of_pixel_wide_regions_is_drawn_in_colours_not_black(tmp_path):
    # Nearly every pixel a boundary (a convolutional network's codes at a coarse grid): drawing them
    # black would leave black squares; the regions' colours are shown instead.
    from analysis import figures

    grid = 16
    rows = [{"network_id": "n0", "checkpoint": checkpoint, "slice": 0, "layers": "last", "grid": grid,
             "region": np.arange(grid * grid, dtype=np.int32), "boundary": np.ones(grid * grid, bool),
             "anchors": [0.0, 0.0, 1.0, 0.0, 0.0, 1.0], "extent": [-1.0, 2.0, -1.0, 2.0]}
            for checkpoint in ("init", "end")]
    pixels = imread(figures.slice_figure(pd.DataFrame(rows), tmp_path / "s.png"))[..., :3]
    black = (pixels < 0.05).all(-1).mean()
    assert black < 0.05, f"{black:.0%} of the figure is black"
