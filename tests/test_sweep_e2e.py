"""End to end: a small sweep through Ray Tune, the scoring actors, Parquet and the report."""

import dataclasses
import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from specs import MINIMAL_SPEC

import analysis
import metrics_core as mc
from sweep.command import interrupts, runner
from sweep.plan import sweep_plan
from sweep.command.cli import main
from sweep.plan.networks import BundleConfig
from sweep.plan.planner import expand
from sweep.plan.spec import parse_spec
from sweep.scoring.inputs import fixed_points
from sweep.scoring.settings import ScoringSettings
from sweep.scoring.table_writer import TableWriter
from sweep.training.checkpoints import stacked_parameters
from sweep.training.data import load_dataset
from sweep.training.models import build_network

pytestmark = pytest.mark.ray

SPEC = """
name: tiny
datasets:
  - {name: digits, train_size: 300}
grid:
  widths: [16, 24]
  depths: [1]
  activations: [relu]
  optimizers: [momentum]
  learning_rates: [0.05, 0.1]
  batch_sizes: [50]
  seeds: [0, 1]
budget:
  max_epochs: 12
  stop_at_full_train_acc: true
checkpoints:
  every_epochs: 5
scoring:
  points: 60
  train_points: 40
  transitions_k: 24
  profile_points: 24
  trajectories: true
  ellipses_per_kind: 2
  slices: true
  slice_count: 1
  slice_grid: 12
resources:
  bundle_size: 4
  cpus_per_trial: 1
  scoring_actors: 1
"""

METRICS_PER_SPLIT = {"test", "train"}


@pytest.fixture(scope="module")
def sweep_dir(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    spec = root / "tiny.yaml"
    spec.write_text(SPEC)
    code = main(["run", str(spec), "--storage", str(root / "store"), "--name", "tiny"])
    assert code == 0
    return root / "store" / "tiny"


def _end_checkpoints(sweep_dir: Path) -> dict[str, Path]:
    out = {}
    for meta_file in sweep_dir.glob("bundle-*/checkpoint_*/meta.json"):
        meta = json.loads(meta_file.read_text())
        if meta["tag"] == "end":
            out[meta["bundle_id"]] = meta_file.parent
    return out


def test_networks_table_has_one_row_per_network(sweep_dir):
    nets = pd.read_parquet(sweep_dir / "tables" / "networks")
    assert len(nets) == 8
    assert nets["network_id"].is_unique
    assert set(nets["status"]) <= {"converged", "budget"}
    np.testing.assert_allclose(nets["gap"], nets["train_acc"] - nets["test_acc"])
    assert (nets["bundle_id"].value_counts() == 4).all()
    bundle = BundleConfig.from_dict(json.loads(next(sweep_dir.glob("bundle-*/checkpoint_*/meta.json")).read_text())["bundle"])
    assert (nets["test_size"] == len(load_dataset(bundle.members[0].dataset).x_test)).all()


def test_scores_cover_every_network_checkpoint_split_metric(sweep_dir):
    scores = pd.read_parquet(sweep_dir / "tables" / "scores")
    key = ["network_id", "checkpoint", "split", "metric"]
    assert not scores.duplicated(key).any()
    assert (scores["status"] == "ok").all(), scores.loc[scores["status"] != "ok", "message"].tolist()
    per_network = scores.groupby("network_id", observed=True)["checkpoint"].nunique()
    # init, end, and an epoch-5 / epoch-10 checkpoint for networks still training then
    assert len(per_network) == 8 and (per_network >= 2).all()
    for metric in ("jacobian_softmax", "jacobian_logits", "transitions"):
        got = scores[scores.metric == metric]
        assert set(got["split"]) == METRICS_PER_SPLIT
        assert (got.groupby(["network_id", "checkpoint"], observed=True).size() == 2).all()


def test_jacobian_means_match_metrics_core_on_the_checkpoint(sweep_dir):
    assert_jacobians_match_the_checkpoints(sweep_dir)


def assert_jacobians_match_the_checkpoints(sweep_dir: Path) -> None:
    """Each `end` checkpoint's softmax-Jacobian means, recomputed by metrics_core on the CPU."""
    scores = pd.read_parquet(sweep_dir / "tables" / "scores")
    settings = ScoringSettings(points=60)
    for bundle_id, directory in _end_checkpoints(sweep_dir).items():
        meta = json.loads((directory / "meta.json").read_text())
        state = torch.load(directory / "population.pt", weights_only=True)
        bundle = BundleConfig.from_dict(meta["bundle"])
        data = load_dataset(bundle.members[0].dataset)
        x = data.x_test[fixed_points(len(data.x_test), settings.points, settings.seed)]
        for i, network_id in enumerate(meta["network_ids"]):
            net = mc.MLP(tuple(w[i:i + 1] for w in state["weights"]),
                         tuple(b[i:i + 1] for b in state["biases"]),
                         mc.Activation(state["activation"], state["activation_params"]))
            expected = mc.jacobian_norms(net, x)[0].mean().item()
            row = scores[(scores.network_id == network_id) & (scores.checkpoint == "end")
                         & (scores.split == "test") & (scores.metric == "jacobian_softmax")]
            assert len(row) == 1
            assert row["mean"].iloc[0] == pytest.approx(expected, rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_sweep_trains_and_scores_on_the_card(ray_session, tmp_path):
    # Trials and the scoring actor share the card, as the paper presets ask for.
    spec = tmp_path / "gpu.yaml"
    spec.write_text(SPEC + "  gpus_per_trial: 0.25\n  gpus_per_scoring_actor: 0.25\n")
    assert main(["run", str(spec), "--storage", str(tmp_path / "store"), "--name", "gpu", "--no-report"]) == 0
    sweep_dir = tmp_path / "store" / "gpu"
    nets = pd.read_parquet(sweep_dir / "tables" / "networks")
    assert len(nets) == 8 and set(nets["status"]) <= {"converged", "budget"}
    scores = pd.read_parquet(sweep_dir / "tables" / "scores")
    assert (scores["status"] == "ok").all(), scores.loc[scores["status"] != "ok", "message"].tolist()
    assert set(scores["checkpoint"]) >= {"init", "end"}
    assert_jacobians_match_the_checkpoints(sweep_dir)


def test_per_point_trajectory_and_slice_tables(sweep_dir):
    points = pd.read_parquet(sweep_dir / "tables" / "points")
    assert not points.duplicated(["network_id", "checkpoint", "split", "point_index"]).any()
    end_test = points[(points.checkpoint == "end") & (points.split == "test")]
    assert end_test.groupby("network_id").size().eq(60).all()
    traj = pd.read_parquet(sweep_dir / "tables" / "trajectories")
    assert set(traj["kind"]) == {"random", "different_class", "same_class"}
    assert set(traj["checkpoint"]) == {"init", "end"}
    slices = pd.read_parquet(sweep_dir / "tables" / "slices")
    assert (slices["region"].map(len) == 12 * 12).all()


def test_rescoring_never_duplicates_rows(sweep_dir):
    before = pd.read_parquet(sweep_dir / "tables" / "scores")
    assert main(["score", str(sweep_dir), "--rescore"]) == 0
    after = pd.read_parquet(sweep_dir / "tables" / "scores")
    assert len(after) == len(before)
    merged = before.merge(after, on=["network_id", "checkpoint", "split", "metric"], suffixes=("", "_again"))
    np.testing.assert_allclose(merged["mean"], merged["mean_again"], rtol=1e-6)


def test_scoring_settings_given_to_score_are_the_sweeps_from_then_on(sweep_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(sweep_dir, copy)
    # 400 points: more than the 300 training examples the spec keeps, so all 300 of those are scored
    assert main(["score", str(copy), "--points", "400", "--metrics", "loss", "jacobian_softmax"]) == 0
    out = capsys.readouterr().out
    assert ("[sweep] note: scoring.train_points: 400 is more than the 300 training points of digits, so all 300 "
            "are scored") in out
    assert (f"[sweep] scoring settings saved to {copy}/sweep.json: metrics -accuracy, -distance_from_init, ") in out
    assert "points 400 (was 60), train_points 400 (was 40)" in out
    saved = json.loads((copy / "sweep.json").read_text())["scoring"]
    assert saved["points"] == saved["train_points"] == 400 and saved["metrics"] == ["loss", "jacobian_softmax"]
    # a checkpoint scored later (its file lost, as a resume would score a new one) gets them too
    lost = sorted((copy / "tables" / "scores").glob("*--end.parquet"))[0]
    lost.unlink()
    assert main(["score", str(copy)]) == 0
    rescored = pd.read_parquet(lost)
    assert set(rescored["metric"]) <= {"loss", "jacobian_softmax"} and "jacobian_softmax" in set(rescored["metric"])
    assert rescored.groupby("split")["n_points"].unique().to_dict() == {"test": [400], "train": [300]}
    everything = pd.read_parquet(copy / "tables" / "scores")
    assert set(everything["metric"]) == set(rescored["metric"])


def test_checkpoints_left_with_the_old_settings_by_a_rescore_cut_short_are_found_and_scored_again(
        sweep_dir, tmp_path, capsys):
    # What a `sweep score --points 30` killed part of the way (SIGKILL: no message) leaves: some
    # checkpoints' files of the new settings, the others' of the old; and one bundle's folder gone
    # before the rescore, so its end checkpoint keeps the old settings whatever is run.
    import shutil

    from analysis.report import build_report

    copy, rescored = tmp_path / "tiny", tmp_path / "rescored"
    shutil.copytree(sweep_dir, rescored)
    assert main(["score", str(rescored), "--points", "30"]) == 0
    shutil.copytree(rescored, copy)
    keys = sorted(path.stem for path in (copy / "tables" / "scores").glob("*.parquet"))
    bundles = sorted({key.split("--")[0] for key in keys})
    old = [f"{bundles[0]}--init", f"{bundles[1]}--init", f"{bundles[1]}--end"]
    for key in old:
        for table in ("scores", "points", "trajectories", "slices"):
            if (sweep_dir / "tables" / table / f"{key}.parquet").exists():
                shutil.copy(sweep_dir / "tables" / table / f"{key}.parquet", copy / "tables" / table)
    gone = [path for path in copy.glob("bundle-*/checkpoint_*") if json.loads((path / "meta.json").read_text())["tag"]
            == "end" and json.loads((path / "meta.json").read_text())["bundle_id"] == bundles[1]]
    assert len(gone) == 1
    shutil.rmtree(gone[0])
    capsys.readouterr()

    assert main(["status", str(copy)]) == 0
    status = capsys.readouterr().out
    assert f"checkpoints: {len(keys) - 1} written, {len(keys) - 3} scored" in status
    assert (f"2 checkpoint(s) scored with other settings than sweep.json's scoring (counted as not scored): "
            f"`sweep score {copy}` scores them again") in status
    gone_message = (f"1 checkpoint(s) keep scores of other settings than sweep.json's scoring, and are not here to "
                    f"score again (their bundle folders: bundle-{bundles[1]}): copy those folders back and run "
                    f"`sweep score {copy}`, or delete their files tables/<table>/<key>.parquet (scores, points, "
                    f"trajectories, slices; keys {bundles[1]}--end)")
    assert gone_message in status

    # The analysis leaves them out of every table, keeping their scores rows aside, and says so.
    tables = analysis.load(copy)
    aside = tables.other_settings.drop_duplicates(["network_id", "checkpoint"])
    assert len(aside) == 3 * 4  # 4 networks a bundle
    assert set(tables.other_settings["n_points"]) == {0, 40, 60}  # the weights', the old train and test points
    assert tables.settings["points"] == 30 and set(tables.scores["n_points"]) == {0, 30}
    for table in ("scores", "points", "trajectories", "slices"):
        frame = getattr(tables, table)
        units = set(zip(frame["network_id"].astype(str), frame["checkpoint"].astype(str)))
        assert not units & set(zip(aside["network_id"].astype(str), aside["checkpoint"].astype(str))), table
    reference = analysis.load(rescored)
    lost = aside.loc[aside["checkpoint"].astype(str) == "end", "network_id"]
    assert tables.wide.loc[tables.wide["network_id"].isin(lost), "jacobian_softmax"].isna().all()
    kept = ~reference.wide["network_id"].isin(lost)
    pd.testing.assert_frame_equal(tables.wide[kept].reset_index(drop=True), reference.wide[kept].reset_index(drop=True))
    report = build_report(copy, tmp_path / "report", bootstrap=False)
    text = report.path.read_text()
    assert ("Scored with other settings: 3 checkpoint(s), of 8 network(s), were scored with other scoring settings than "
            "the sweep's (points 60 (the sweep's: 30), train_points 40 (the sweep's: 30))") in text

    # A plain `sweep score` scores again the two whose checkpoints are here, and only those, and
    # says what to do about the third (exit 1).
    assert main(["score", str(copy)]) == 1
    out, err = capsys.readouterr()
    assert f"[sweep] scored 2 of {len(keys) - 1} checkpoint(s)" in out and gone_message in err
    for key in old[:2]:
        pd.testing.assert_frame_equal(pd.read_parquet(copy / "tables" / "scores" / f"{key}.parquet"),
                                      pd.read_parquet(rescored / "tables" / "scores" / f"{key}.parquet"))
    assert main(["status", str(copy)]) == 0
    out = capsys.readouterr().out
    assert gone_message in out and "scored with other settings than" not in out
    # done as it says (its files deleted), the tables hold one set of settings
    for table in ("scores", "points", "trajectories", "slices"):
        (copy / "tables" / table / f"{old[2]}.parquet").unlink(missing_ok=True)
    assert main(["status", str(copy)]) == 0
    assert "other settings" not in capsys.readouterr().out
    # the settings it has already, given again: nothing to score, and said so
    assert main(["score", str(copy), "--points", "30"]) == 0
    out = capsys.readouterr().out
    assert "[sweep] the scoring settings given are the sweep's already" in out
    assert f"[sweep] scored 0 of {len(keys) - 1} checkpoint(s)" in out
    assert f"every checkpoint has scores of these settings already; `sweep score {copy} --rescore`" in out


def test_a_bundle_whose_end_checkpoint_is_stored_is_not_trained_again(sweep_dir, tmp_path, capsys):
    # As after a driver killed before Tune's snapshot marked its bundles finished: here Tune's
    # state is gone altogether, so `sweep resume` starts every trial again.
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(sweep_dir, copy)
    for state in [*copy.glob("experiment_state-*.json"), *copy.glob("basic-variant-state-*.json"), copy / "tuner.pkl"]:
        state.unlink()
    tables = {path: path.read_bytes() for path in (copy / "tables").rglob("*.parquet")}
    stored = sorted(path.relative_to(copy) for path in copy.glob("bundle-*/checkpoint_*"))
    assert main(["resume", str(copy), "--no-report"]) == 0, capsys.readouterr().err
    # Its progress counts them finished from the first line, not once their trials have looked.
    counts = pd.read_parquet(copy / "tables" / "networks")["status"].value_counts()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[sweep] bundles ")]
    assert lines and all(line.startswith(
        f"[sweep] bundles 2/2 done, 0 running, 0 waiting | networks {counts.get('converged', 0)} converged, "
        f"0 diverged, {counts.get('budget', 0)} at budget of 8 |") for line in lines), lines
    assert sorted(path.relative_to(copy) for path in copy.glob("bundle-*/checkpoint_*")) == stored
    assert {path: path.read_bytes() for path in (copy / "tables").rglob("*.parquet")} == tables


def test_report_and_loader(sweep_dir):
    report = sweep_dir / "report" / "report.md"
    assert report.is_file()
    assert list((sweep_dir / "report").glob("**/*.png"))
    tables = analysis.load(str(sweep_dir))
    assert len(tables.wide) == 8
    assert "jacobian_softmax" in tables.wide.columns
    # The scorecard opens the report: every finding has a verdict or says what would measure it
    # (this sweep has no augmentation, full-batch, label-noise or nonlinearity pairs), and one data set
    # has no pooled rows.
    text = report.read_text()
    assert text.index("## The paper's findings on this sweep") < text.index("## Rank correlation")
    found = {f["id"]: f for f in json.loads((sweep_dir / "report" / "findings.json").read_text())}
    assert list(found) == ["jacobian_train_below_test", "jacobian_dips_at_anchors", "same_class_fewer_transitions",
                           "random_labels_raise_jacobian", "augmentation_lowers_jacobian",
                           "full_batch_raises_jacobian", "nonlinearity_raises_jacobian", "jacobian_ranks_gap",
                           "jacobian_predicts_errors", "transitions_ranks_gap", "bigger_networks_generalize_better",
                           "train_loss_does_not_track_gap"]
    assert all(set(f) == {"id", "claim", "effect", "ci_low", "ci_high", "n", "verdict"} for f in found.values())
    assert {f["verdict"] for f in found.values()} <= {"reproduced", "contradicted", "inconclusive", "not measured"}
    for absent in ("augmentation_lowers_jacobian", "full_batch_raises_jacobian", "random_labels_raise_jacobian",
                   "nonlinearity_raises_jacobian"):
        assert found[absent]["verdict"] == "not measured" and found[absent]["effect"] is None
    assert found["jacobian_train_below_test"]["verdict"] != "not measured" and found["jacobian_train_below_test"]["n"] > 0
    assert "pooled" not in set(pd.read_csv(sweep_dir / "report" / "correlations.csv")["dataset"])


def test_the_readmes_python_runs_on_a_sweep_and_on_both_kinds_of_network(sweep_dir):
    import re

    reading, metrics = re.findall(r"```python\n(.*?)```", (Path(__file__).parents[1] / "README.md").read_text(),
                                  re.DOTALL)
    found = {}
    exec(re.sub(r'"sweeps/[^"]+"', repr(str(sweep_dir)), reading), found)
    assert len(found["kept"]) + len(found["left_out"]) == len(found["t"].wide) == 8
    torch.manual_seed(0)
    nn = torch.nn
    fc = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    for net, shape in ((fc, (64,)), (cnn, (1, 8, 8))):
        exec(metrics, {"net": net, "x": torch.randn(6, *shape), "x_train": torch.randn(20, *shape)})


def test_failed_trial_resumes_exactly(ray_session, tmp_path):
    """A trial that fails after a checkpoint and is retried ends identical to an uninterrupted one."""
    from sweep.plan.planner import expand
    from sweep.plan.spec import load_spec

    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(SPEC.replace("widths: [16, 24]", "widths: [16]").replace("seeds: [0, 1]", "seeds: [0]"))
    spec = load_spec(spec_file)
    bundles = expand(spec)
    finals = {}
    for name, extra in (("clean", {}), ("faulty", {"fail_once_at_epoch": 7})):
        plan = sweep_plan.make_plan(spec, bundles, name=name, storage=str(tmp_path / "store"),
                                spec_source=str(spec_file), spec_text=spec_file.read_text(), spec_suffix=".yaml")
        results = runner.run(plan, score=False, extra_config=extra)
        assert not results.errors
        (directory,) = _end_checkpoints(Path(plan.sweep_dir)).values()
        finals[name] = torch.load(directory / "population.pt", weights_only=True)
    assert (tmp_path / "store" / "faulty" / "injected-faults").is_dir()
    for clean, faulty in zip(finals["clean"]["weights"], finals["faulty"]["weights"]):
        torch.testing.assert_close(clean, faulty, rtol=0, atol=0)
    nets = {n: pd.read_parquet(tmp_path / "store" / n / "tables" / "networks") for n in finals}
    assert len(nets["faulty"]) == len(nets["clean"]) == 2
    pd.testing.assert_series_equal(nets["clean"]["steps"], nets["faulty"]["steps"])


def test_a_checkpoint_from_another_sweep_is_left_out_of_scoring_with_a_message(sweep_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(sweep_dir, copy)
    # A bundle of another sweep (other widths), copied into this one's folder with its checkpoint.
    meta_file = next(copy.glob("bundle-*/checkpoint_*/meta.json"))
    meta = json.loads(meta_file.read_text())
    stranger = BundleConfig.from_dict(meta["bundle"])
    stranger = BundleConfig(tuple(dataclasses.replace(m, width=m.width + 1) for m in stranger.members))
    folder = copy / f"bundle-{stranger.bundle_id}" / "checkpoint_000000"
    shutil.copytree(meta_file.parent, folder)
    meta.update(bundle_id=stranger.bundle_id, bundle=stranger.to_dict(), network_ids=stranger.network_ids)
    (folder / "meta.json").write_text(json.dumps(meta))
    before = pd.read_parquet(copy / "tables" / "scores")
    code = main(["score", str(copy)])
    out, err = capsys.readouterr()
    said = (f"1 checkpoint(s) in 1 bundle folder(s) not in this sweep's plan (sweep.json), left out: {folder.parent}; "
            "they come from another sweep: move them to their own sweep's folder")
    assert code == 1 and said in err, err
    checkpoints = len(list(sweep_dir.glob("bundle-*/checkpoint_*")))
    assert f"[sweep] scored 0 of {checkpoints} checkpoint(s)" in out, out
    after = pd.read_parquet(copy / "tables" / "scores")
    assert len(after) == len(before) and not set(after["network_id"]) & set(stranger.network_ids)
    # Status counts the sweep's own bundles and checkpoints, and names the stranger.
    assert main(["status", str(copy)]) == 0
    out = capsys.readouterr().out
    bundles = len(list(sweep_dir.glob("bundle-*")))
    assert f"bundles: {bundles} of {bundles} finished\n" in out and said in out, out
    assert f"checkpoints: {checkpoints} written, {checkpoints} scored" in out and "no networks file" not in out, out


def test_status_counts_networks_trained_on_to_the_budget_at_full_train_accuracy(sweep_dir, tmp_path, capsys):
    # As budget.stop_at_full_train_acc: false records them: `budget`, though at 100% train accuracy.
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(sweep_dir, copy)
    writer = TableWriter(str(copy / "tables"))
    networks = writer.read("networks")
    full = int((networks["train_acc"] == 1.0).sum())
    assert full and (networks.loc[networks["train_acc"] == 1.0, "status"] == "converged").all()
    for bundle_id, rows in networks.assign(status="budget").groupby("bundle_id", observed=True):
        writer.write("networks", str(bundle_id), rows.to_dict("records"))
    assert main(["status", str(copy)]) == 0
    assert (f"networks: 8 of 8 recorded, 0 converged, 8 budget, 0 diverged, 0 failed ({full} of the budget ones at "
            "100% train accuracy)\n") in capsys.readouterr().out


def test_status_of_a_copy_without_the_bundle_folders_says_where_its_scores_are(sweep_dir, tmp_path, capsys):
    # README: `aws s3 sync … --exclude "bundle-*"` copies the tables but not the checkpoints
    import shutil

    copy = tmp_path / "tables-only"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("bundle-*"))
    keys = len(list((copy / "tables" / "scores").glob("*.parquet")))
    assert main(["status", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"checkpoints: 0 written, 0 scored; the tables hold the scores of {keys} checkpoint(s) whose files" in out
    assert main(["status", str(sweep_dir)]) == 0
    assert "whose files are not here" not in capsys.readouterr().out


def test_a_checkpoint_whose_scoring_failed_is_counted_and_scored_again(sweep_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(sweep_dir, copy)
    checkpoint = next(iter(_end_checkpoints(copy).values()))
    key = f"{json.loads((checkpoint / 'meta.json').read_text())['bundle_id']}--end"
    weights = (checkpoint / "population.pt").read_bytes()
    (checkpoint / "population.pt").write_bytes(b"damaged")
    (copy / "tables" / "scores" / f"{key}.parquet").unlink()
    # resume scores what is left, says what failed, and exits 1
    code = main(["resume", str(copy), "--no-report"])
    err = capsys.readouterr().err
    assert code == 1 and "sweep: scoring failed:" in err and "population.pt" in err, err
    assert "1 checkpoint(s) have networks whose scoring failed" in err
    assert main(["status", str(copy)]) == 0
    assert "(1 with a network whose scoring failed, or an unreadable scores file)" in capsys.readouterr().out
    # `sweep score` takes it again (no --rescore needed) once the checkpoint is whole
    (checkpoint / "population.pt").write_bytes(weights)
    before = pd.read_parquet(copy / "tables" / "scores")
    assert main(["score", str(copy)]) == 0, capsys.readouterr().err
    assert "scored 1 of" in capsys.readouterr().out
    after = pd.read_parquet(copy / "tables" / "scores")
    assert (after["status"] == "ok").all() and len(after) == len(before)
    # A report that cannot be made (a file where its folder goes) no longer hides the summary before it.
    shutil.rmtree(copy / "report", ignore_errors=True)
    (copy / "report").write_text("not a folder")
    code = main(["resume", str(copy)])
    captured = capsys.readouterr()
    assert code == 2 and "finished in" in captured.out and "the report could not be made" in captured.err


def test_scoring_stopped_by_a_signal_counts_only_what_it_scored(sweep_dir, tmp_path):
    # `sweep resume` printed "scored 16 checkpoint(s) left unscored" for a catch-up a signal cut short.
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(sweep_dir, copy)
    shutil.rmtree(copy / "tables" / "scores")
    plan = sweep_plan.load_plan(str(copy))
    with interrupts.catching():
        os.kill(os.getpid(), signal.SIGINT)
        summary = runner.score(plan, ScoringSettings.from_dict(plan.scoring))
    assert summary["checkpoints"] > 0 and summary["scored"] == 0, summary
    assert runner.score(plan, ScoringSettings.from_dict(plan.scoring))["scored"] == summary["checkpoints"]


def test_a_stop_asked_before_tunes_loop_starts_still_stops_it(ray_session, tmp_path):
    # Ctrl-C while torch is imported or the Tuner is built: Tune's handler is not there yet, so
    # the stop is passed on when its loop sets up its callbacks, and no bundle trains.
    spec = parse_spec(yaml.safe_load(MINIMAL_SPEC))
    plan = sweep_plan.make_plan(spec, expand(spec), name="early", storage=str(tmp_path), spec_source="-",
                                spec_text=MINIMAL_SPEC, spec_suffix=".yaml")
    before = signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # as in a fresh process: no Tune handler yet
    try:
        with interrupts.catching():
            os.kill(os.getpid(), signal.SIGINT)
            assert interrupts.requested() == signal.SIGINT
            runner.run(plan, score=False)
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert len(TableWriter(plan.table_root).read("networks")) == 0


def test_resume_starts_a_sweep_stopped_before_tune_wrote_its_state(ray_session, tmp_path, capsys):
    # The plan is saved, then the driver died before Ray Tune's first snapshot: `sweep run` refuses
    # the folder (it holds a sweep), so `sweep resume` must start it.
    spec = parse_spec(yaml.safe_load(MINIMAL_SPEC))
    plan = sweep_plan.make_plan(spec, expand(spec), name="unstarted", storage=str(tmp_path), spec_source="-",
                                spec_text=MINIMAL_SPEC, spec_suffix=".yaml")
    sweep_plan.save_plan(plan)
    assert main(["resume", plan.sweep_dir, "--no-report"]) == 0, capsys.readouterr().err
    assert len(TableWriter(plan.table_root).read("networks")) == plan.networks


CNN_SPEC = """
name: tiny-cnn
datasets:
  - {name: digits, train_size: 300}
architecture: cnn
grid:
  families: [vgg, nin]
  widths: [8]
  depths: [1]
  stages: [2]
  poolings: [max]
  heads: [flatten]
  batch_norm: [false, true]
  activations: [relu]
  optimizers: [momentum]
  learning_rates: [0.03]
  batch_sizes: [50]
  seeds: [0, 1]
budget:
  max_epochs: 40
scoring:
  points: 40
  train_points: 20
  transitions_k: 16
  profile_points: 15
  trajectories: true
  ellipses_per_kind: 1
  slices: true
  slice_count: 1
  slice_grid: 8
  sharpness_samples: 2
  sharpness_search_depth: 4
resources:
  bundle_size: 2
  cpus_per_trial: 1
  scoring_actors: 1
"""


def test_a_convolutional_sweep_trains_scores_and_reports(ray_session, tmp_path):
    spec = tmp_path / "tiny-cnn.yaml"
    spec.write_text(CNN_SPEC)
    assert main(["run", str(spec), "--storage", str(tmp_path / "store"), "--name", "tiny-cnn"]) == 0
    sweep_dir = tmp_path / "store" / "tiny-cnn"
    nets = pd.read_parquet(sweep_dir / "tables" / "networks")
    assert len(nets) == 8 and set(nets["architecture"]) == {"cnn"} and set(nets["family"]) == {"vgg", "nin"}
    assert nets["batch_norm"].sum() == 4
    scores = pd.read_parquet(sweep_dir / "tables" / "scores")
    assert (scores["status"] == "ok").all(), scores.loc[scores["status"] != "ok", "message"].tolist()
    assert {"jacobian_softmax", "transitions", "spectral_product", "path_norm"} <= set(scores["metric"])
    # The initial networks, rebuilt from their configs for the measure, are the `init` checkpoint's.
    at_init = scores[(scores.metric == "distance_from_init") & (scores.checkpoint == "init")]
    assert len(at_init) == 8 and (at_init["mean"] == 0).all()
    # Each end checkpoint's Jacobian means, recomputed on each member's lone nn.Sequential twin.
    for directory in _end_checkpoints(sweep_dir).values():
        meta = json.loads((directory / "meta.json").read_text())
        state = torch.load(directory / "population.pt", weights_only=True)
        members = BundleConfig.from_dict(meta["bundle"]).members
        data = load_dataset(members[0].dataset)
        x = data.x_test[fixed_points(len(data.x_test), 40, ScoringSettings().seed)].view(-1, *data.image_shape)
        tensors = stacked_parameters(state)
        for i, (config, network_id) in enumerate(zip(members, meta["network_ids"])):
            twin = build_network(config, data).eval()
            statistics = [t for pair in state["norm_stats"] for t in pair]
            running = [b for name, b in twin.named_buffers() if name.endswith(("running_mean", "running_var"))]
            with torch.no_grad():
                for target, stacked in [*zip(twin.parameters(), tensors, strict=True),
                                        *zip(running, statistics, strict=True)]:
                    target.copy_(stacked[i])
            row = scores[(scores.network_id == network_id) & (scores.checkpoint == "end")
                         & (scores.split == "test") & (scores.metric == "jacobian_softmax")]
            assert row["mean"].iloc[0] == pytest.approx(mc.jacobian_norms(twin, x).mean().item(), rel=1e-4)
    # The report ranks the networks that reached 100% train accuracy by their gap.
    report = (sweep_dir / "report" / "report.md").read_text()
    assert "jacobian_softmax" in report and (nets["status"] == "converged").sum() >= 4


def test_ray_retry_notices_go_to_the_sweep_log_and_other_errors_stay_in_the_terminal(ray_session, tmp_path, capsys):
    # A stopped sweep kills its scoring actors mid-task; Ray's driver prints what its raylets publish
    # about that ("Task … failed. There are 3 retries remaining") whatever log_to_driver says.
    import time

    import ray

    import logging

    from sweep.command.cli import route_ray_retries

    log = tmp_path / "sweep.log"
    logger = logging.getLogger("sweep-test-raylet")
    handler = logging.FileHandler(log)
    logger.addHandler(handler)
    route_ray_retries(logger)  # as `sweep run` does where it starts Ray itself (this session's Ray is started)

    @ray.remote(max_restarts=1, max_task_retries=3, num_cpus=0)
    class Slow:
        def work(self):
            time.sleep(3)
            return 1

    actor = Slow.remote()
    ray.get(actor.__ray_ready__.remote())
    pending = actor.work.remote()
    time.sleep(0.5)
    ray.kill(actor, no_restart=False)
    assert ray.get(pending, timeout=60) == 1  # retried on the restarted actor
    deadline = time.monotonic() + 30
    while "(raylet) Task Slow.work failed" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "(raylet) Task Slow.work failed" in log.read_text()
    assert "(raylet)" not in capsys.readouterr().out
    ray.kill(actor)
    # Any other error a raylet publishes (a node lost, a worker crashed) stays in the terminal.
    from ray._private import worker

    worker.print_to_stdstream({"lines": ["A worker died unexpectedly"], "pid": "raylet", "is_err": False},
                              ignore_prefix=False)
    assert "A worker died unexpectedly" in capsys.readouterr().out
    assert "A worker died" not in log.read_text()
    logger.removeHandler(handler)
    handler.close()
