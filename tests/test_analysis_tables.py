"""analysis.load: reading real Parquet table directories written by hand with pandas/pyarrow."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import analysis
from analysis.columns import NETWORK_COLUMNS, POINT_COLUMNS, SCORE_COLUMNS, SLICE_COLUMNS, TRAJECTORY_COLUMNS
from analysis.synthetic import SyntheticSweep, synthetic_networks
from analysis.tables import wide_table


def networks_frame(n: int = 4) -> pd.DataFrame:
    return synthetic_networks(SyntheticSweep(n_networks=n, diverged_share=0.0),
                               np.random.default_rng(0))


def score_rows(network_ids, checkpoint, split, metric, means, params="{}", settings=None) -> pd.DataFrame:
    n = len(network_ids)
    return pd.DataFrame({
        "network_id": list(network_ids), "checkpoint": checkpoint, "step": 10, "split": split,
        "metric": metric, "mean": means, "median": means, "std": 0.0, "n_points": 5,
        "params": params, "settings": settings, "status": "ok", "message": "",
    }).astype({**SCORE_COLUMNS, "mean": float}).iloc[:n]


def write(frame: pd.DataFrame, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


@pytest.fixture
def sweep(tmp_path):
    nets = networks_frame(4)
    ids = nets["network_id"].tolist()
    tables = tmp_path / "sweeps" / "demo" / "tables"
    write(nets.iloc[:2], tables / "networks" / "b0.parquet")
    write(nets.iloc[2:], tables / "networks" / "b1.parquet")
    scores = pd.concat([
        score_rows(ids, "end", "test", "jacobian_softmax", [1.0, 2.0, 3.0, 4.0]),
        score_rows(ids, "end", "train", "jacobian_softmax", [9.0, 9.0, 9.0, 9.0]),
        score_rows(ids, "init", "test", "jacobian_softmax", [7.0, 7.0, 7.0, 7.0]),
        score_rows(ids, "end", "weights", "path_norm", [5.0, 6.0, 7.0, 8.0]),
        score_rows(ids, "end", "weights", "param_count", [0.0, 0.0, 0.0, 0.0]),
        score_rows(ids, "end", "train", "train_only", [0.5, 0.6, np.nan, 0.8]),
        score_rows(ids, "end", "test", "transitions", [10.0, 11.0, 12.0, 13.0],
                   '{"trajectory": "ellipse"}'),
        score_rows(ids, "end", "test", "transitions", [20.0, 21.0, 22.0, 23.0],
                   '{"trajectory": "circle"}'),
    ])
    write(scores, tables / "scores" / "b0--end.parquet")
    return tmp_path / "sweeps" / "demo", nets


def test_the_reports_metrics_are_the_scored_ones_but_the_gaps_ingredients_and_the_count():
    # analysis lists them without importing the scoring settings: a metric added there must be added here
    from analysis.columns import BASELINE_COLUMNS, SCORE_METRICS, TARGET_INGREDIENTS
    from sweep.scoring.settings import METRICS

    assert sorted(SCORE_METRICS) == sorted(set(METRICS) - set(TARGET_INGREDIENTS) - set(BASELINE_COLUMNS))


def test_load_reads_every_file_and_accepts_the_tables_dir(sweep):
    path, nets = sweep
    for given in (path, path / "tables", str(path)):
        tables = analysis.load(given)
        assert sorted(tables.networks["network_id"]) == sorted(nets["network_id"])
        assert tables.path == str(path / "tables")


def test_networks_keep_their_documented_dtypes(sweep):
    tables = analysis.load(sweep[0])
    for column, dtype in NETWORK_COLUMNS.items():
        assert str(tables.networks[column].dtype) == dtype, column


def test_wide_takes_end_checkpoint_and_the_split_where_each_metric_lives(sweep):
    path, nets = sweep
    wide = analysis.load(path).wide.set_index("network_id").loc[nets["network_id"]]
    assert wide["jacobian_softmax"].tolist() == [1.0, 2.0, 3.0, 4.0]  # test split, end
    assert wide["path_norm"].tolist() == [5.0, 6.0, 7.0, 8.0]  # weights split
    np.testing.assert_array_equal(wide["train_only"], [0.5, 0.6, np.nan, 0.8])  # train only
    # param_count is a networks column: the networks value wins, not the score's 0.
    assert wide["param_count"].tolist() == nets["param_count"].tolist()
    # A metric measured two ways gets one column per parameter set.
    assert wide['transitions {"trajectory": "ellipse"}'].tolist() == [10.0, 11.0, 12.0, 13.0]
    assert wide['transitions {"trajectory": "circle"}'].tolist() == [20.0, 21.0, 22.0, 23.0]
    assert "transitions" not in wide.columns


def test_a_checkpoint_the_sweep_does_not_have_is_named_with_those_it_has(sweep):
    assert analysis.load(sweep[0], checkpoint="init").wide["jacobian_softmax"].notna().any()
    with pytest.raises(ValueError, match=r"no rows at checkpoint 'final'; this sweep's checkpoints: .*end"):
        analysis.load(sweep[0], checkpoint="final")
    # The final checkpoint may not be scored yet (only init is): no metric columns, no error.
    tables = analysis.load(sweep[0])
    scores = tables.scores[tables.scores["checkpoint"] == "init"]
    assert wide_table(tables.networks, scores).columns.tolist() == tables.networks.columns.tolist()


def test_wide_matches_the_documented_pandas_recipe(sweep):
    path, _ = sweep
    tables = analysis.load(path)
    end = tables.scores[(tables.scores.checkpoint == "end") & (tables.scores.split == "test")
                        & (tables.scores.metric == "jacobian_softmax")]
    recipe = end.pivot_table(index="network_id", columns="metric", values="mean", observed=True)
    joined = tables.networks.set_index("network_id").join(recipe)
    ours = tables.wide.set_index("network_id")
    pd.testing.assert_series_equal(ours["jacobian_softmax"], joined["jacobian_softmax"],
                                   check_names=False)


def test_missing_optional_tables_are_empty_with_documented_columns(sweep):
    tables = analysis.load(sweep[0])
    for frame, columns in ((tables.points, POINT_COLUMNS),
                           (tables.trajectories, TRAJECTORY_COLUMNS),
                           (tables.slices, SLICE_COLUMNS)):
        assert frame.empty
        assert list(frame.columns) == list(columns)


def test_no_scores_gives_wide_equal_to_networks(tmp_path):
    nets = networks_frame(3)
    write(nets, tmp_path / "tables" / "networks" / "b.parquet")
    tables = analysis.load(tmp_path)
    assert list(tables.scores.columns) == list(SCORE_COLUMNS)
    pd.testing.assert_frame_equal(tables.wide, tables.networks)


def test_missing_networks_table_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        analysis.load(tmp_path / "nowhere")
    (tmp_path / "tables" / "networks").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no Parquet files"):
        analysis.load(tmp_path)


def test_a_storage_folder_names_the_sweeps_it_holds(sweep):
    path, _ = sweep
    with pytest.raises(FileNotFoundError, match=rf"is a storage folder that holds the sweeps demo: pass one of them, "
                                                rf"e.g. {path}"):
        analysis.load(path.parent)


def test_damaged_file_names_the_file(tmp_path):
    write(networks_frame(2), tmp_path / "tables" / "networks" / "good.parquet")
    bad = tmp_path / "tables" / "networks" / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(OSError, match="bad.parquet"):
        analysis.load(tmp_path)


def test_a_network_in_two_files_or_a_file_of_another_table_is_named(sweep):
    # A copy would count the network twice (or, in the scores, its points); a stranger adds empty rows.
    path, nets = sweep
    tables = path / "tables"
    first = nets["network_id"].iloc[0]
    backup = tables / "networks" / "backup" / "b0.parquet"
    write(pd.read_parquet(tables / "networks" / "b0.parquet"), backup)
    with pytest.raises(OSError, match=rf"networks table holds network {first} twice, in .*b0.parquet and in "
                                      rf".*backup/b0.parquet: a copied or renamed file"):
        analysis.load(path)
    backup.unlink()
    write(pd.read_parquet(tables / "scores" / "b0--end.parquet").iloc[:3], tables / "scores" / "copy.parquet")
    with pytest.raises(OSError, match=rf"scores table holds network {first} at checkpoint end twice"):
        analysis.load(path)
    write(pd.DataFrame({"foo": [1, 2]}), tables / "scores" / "copy.parquet")
    with pytest.raises(OSError, match=r"copy.parquet is not a file of the scores table \(it has no network_id or "
                                      r"checkpoint column\); move it out"):
        analysis.load(path)
    (tables / "scores" / "copy.parquet").unlink()
    assert len(analysis.load(path).networks) == 4


def test_files_written_before_the_architecture_and_precision_columns_read_as_fc_fp32(sweep):
    path, nets = sweep
    old = path / "tables" / "networks" / "b0.parquet"
    write(pd.read_parquet(old).drop(columns=["architecture", "precision"]), old)
    loaded = analysis.load(path).networks.set_index("network_id")
    assert loaded["architecture"].dtype == "category" and loaded["precision"].dtype == "category"
    assert loaded["architecture"].tolist() == ["fc"] * 2 + nets["architecture"].iloc[2:].astype(str).tolist()
    assert loaded["precision"].tolist() == ["fp32"] * 2 + nets["precision"].iloc[2:].astype(str).tolist()


def test_temporary_files_are_skipped_and_null_columns_promoted(tmp_path):
    nets = networks_frame(3)
    directory = tmp_path / "tables" / "networks"
    write(nets.iloc[:2], directory / "b0.parquet")
    # A writer's half-written temporary file must not be read.
    (directory / ".b1.parquet.tmp").write_bytes(b"partial")
    (directory / "_b2.parquet").write_bytes(b"partial")
    # A file whose message column is all null (pyarrow null type) still joins the others.
    last = pa.Table.from_pandas(nets.iloc[2:], preserve_index=False)
    last = last.set_column(last.schema.get_field_index("message"), "message",
                           pa.nulls(1, pa.null()))
    pq.write_table(last, directory / "b3.parquet")
    tables = analysis.load(tmp_path)
    assert len(tables.networks) == 3
    assert tables.networks["message"].isna().sum() == 1


def test_remote_style_uri_with_a_local_scheme(sweep):
    path, nets = sweep
    tables = analysis.load(f"file://{path}")
    assert len(tables.networks) == len(nets)
    assert tables.path == f"file://{path / 'tables'}"


def test_networks_with_random_labels_from_before_the_draw_was_recorded_drew_other_classes(tmp_path):
    nets = networks_frame(8).assign(random_label_fraction=[0.0, 0.5] * 4)
    directory = tmp_path / "tables" / "networks"
    write(nets.iloc[:4].drop(columns="random_labels"), directory / "old.parquet")
    write(nets.iloc[4:].assign(random_labels=pd.Categorical([None, "uniform"] * 2)), directory / "new.parquet")
    loaded = analysis.load(tmp_path).networks.set_index("network_id").loc[nets["network_id"]]
    assert loaded["random_labels"].astype(object).where(loaded["random_labels"].notna(), None).tolist() == \
           [None, "other_class"] * 2 + [None, "uniform"] * 2


def test_checkpoints_scored_with_other_settings_are_set_aside_with_their_other_rows(sweep):
    # Network 0's end checkpoint and network 1's init were scored before a rescore with 500 points
    # that did not reach them; the sweep's sweep.json says 500, or (copied without it) most rows do.
    path, nets = sweep
    ids = nets["network_id"].tolist()
    old, new = (json.dumps({"points": points, "seed": 0}, sort_keys=True) for points in (1000, 500))
    (path / "tables" / "scores" / "b0--end.parquet").unlink()
    for name, frame in {
        "ends": score_rows(ids[1:], "end", "test", "jacobian_softmax", [2.0, 3.0, 4.0], settings=new),
        "old-end": score_rows(ids[:1], "end", "test", "jacobian_softmax", [1.0], settings=old),
        "inits": score_rows([ids[0], *ids[2:]], "init", "test", "jacobian_softmax", [7.0] * 3, settings=new),
        "old-init": score_rows(ids[1:2], "init", "test", "jacobian_softmax", [6.0], settings=old),
    }.items():
        write(frame, path / "tables" / "scores" / f"{name}.parquet")
    points = pd.DataFrame({"network_id": [ids[0], ids[0], ids[1]], "checkpoint": ["end", "init", "end"],
                           "split": "test", "point_index": [0, 0, 0], "label": 1, "prediction": 1, "loss": 0.5,
                           "jacobian_softmax": 1.0, "jacobian_logits": 2.0, "transitions": 3.0})
    write(points.astype({c: d for c, d in POINT_COLUMNS.items() if c in points}), path / "tables" / "points" / "p.parquet")

    for plan in ({"scoring": {"points": 500, "seed": 0, "chunk_size": 64}}, None):
        (path / "sweep.json").unlink(missing_ok=True)
        if plan is not None:
            (path / "sweep.json").write_text(json.dumps(plan))
        tables = analysis.load(path)
        assert tables.settings["points"] == 500
        aside = tables.other_settings
        assert sorted(zip(aside["network_id"], aside["checkpoint"].astype(str))) == sorted(
            [(ids[0], "end"), (ids[1], "init")])
        assert set(tables.scores["settings"].astype(str)) == {new}
        wide = tables.wide.set_index("network_id").loc[ids]
        np.testing.assert_array_equal(wide["jacobian_softmax"], [np.nan, 2.0, 3.0, 4.0])
        assert list(zip(tables.points["network_id"], tables.points["checkpoint"].astype(str))) == [
            (ids[0], "init"), (ids[1], "end")]
    # a damaged sweep.json is named, not read as absent (which would keep other scores)
    for damaged in ('{"scoring": {"points": 10', "[]", '{"name": "x"}'):
        (path / "sweep.json").write_text(damaged)
        with pytest.raises(ValueError, match=f"{path / 'sweep.json'} cannot be read .*move it aside"):
            analysis.load(path)
    # sweep.json asks for the settings fewer checkpoints have: those are kept
    (path / "sweep.json").write_text(json.dumps({"scoring": {"points": 1000, "seed": 0}}))
    tables = analysis.load(path)
    assert sorted(zip(tables.scores["network_id"], tables.scores["checkpoint"].astype(str))) == sorted(
        [(ids[0], "end"), (ids[1], "init")])
    # rows from before settings were recorded count as scored with the sweep's
    for name in ("ends", "old-end", "inits", "old-init"):
        file = path / "tables" / "scores" / f"{name}.parquet"
        pd.read_parquet(file).drop(columns="settings").to_parquet(file, index=False)
    tables = analysis.load(path)
    assert tables.other_settings.empty and len(tables.scores) == 8
    # ... unless the sweep has had new settings since: then they were scored with its first
    (path / "sweep.json").write_text(json.dumps({"scoring": {"points": 500, "seed": 0},
                                                 "unrecorded_scoring": {"points": 1000, "seed": 0}}))
    tables = analysis.load(path)
    assert tables.scores.empty and len(tables.other_settings) == 8 and tables.points.empty
