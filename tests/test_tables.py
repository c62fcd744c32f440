"""The Parquet tables: schemas, atomic and idempotent writes, readers that never see partial files."""

from __future__ import annotations

import multiprocessing
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweep.plan.networks import NetworkConfig
from sweep.plan.spec import DataSpec
from sweep.scoring.table_schemas import pandas_dtypes
from sweep.scoring.table_writer import SCHEMAS, TableSchemaError, TableWriter, build, checkpoint_key, to_arrow


def score_rows(network_ids, checkpoint="end", metric="jacobian_softmax", mean=1.0):
    return [
        {
            "network_id": nid,
            "checkpoint": checkpoint,
            "step": 10,
            "split": "test",
            "metric": metric,
            "mean": mean + i,
            "median": mean,
            "std": float("nan"),
            "n_points": 100,
            "params": "{}",
            "settings": '{"points": 100}',
            "status": "ok",
            "message": "",
        }
        for i, nid in enumerate(network_ids)
    ]


def test_round_trip_keeps_values_and_dtypes(tmp_path):
    tables = TableWriter(tmp_path / "tables")
    rows = score_rows(["a", "b"])
    assert tables.write("scores", checkpoint_key("bundle1", "end"), rows) == 2
    for frame in (tables.read("scores"), pd.read_parquet(tmp_path / "tables" / "scores")):
        assert frame["mean"].tolist() == [1.0, 2.0]
        assert frame["std"].isna().all()
        for column in ("checkpoint", "split", "metric", "status"):
            assert isinstance(frame[column].dtype, pd.CategoricalDtype), column
        assert frame["step"].dtype == np.int64 and frame["n_points"].dtype == np.int64
        assert not (frame.dtypes == object).any(), frame.dtypes
    assert tables.keys("scores") == ["bundle1--end"]


def test_rewriting_a_key_replaces_its_rows(tmp_path):
    tables = TableWriter(tmp_path)
    tables.write("scores", "b1--end", score_rows(["a", "b"], mean=1.0))
    tables.write("scores", "b2--end", score_rows(["c"], mean=5.0))
    tables.write("scores", "b1--end", score_rows(["a", "b"], mean=3.0))  # a retried trial
    frame = tables.read("scores").sort_values("network_id")
    assert frame["network_id"].tolist() == ["a", "b", "c"]
    assert frame["mean"].tolist() == [3.0, 4.0, 5.0]
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == ["b1--end.parquet", "b2--end.parquet"]


def test_categories_from_different_files_are_unified(tmp_path):
    tables = TableWriter(tmp_path)
    tables.write("scores", "b1--init", score_rows(["a"], checkpoint="init", metric="loss"))
    tables.write("scores", "b1--end", score_rows(["a"], checkpoint="end", metric="accuracy"))
    frame = pd.read_parquet(tmp_path / "scores")
    assert sorted(frame["metric"].cat.categories) == ["accuracy", "loss"]
    assert sorted(frame["checkpoint"].astype(str)) == ["end", "init"]


def test_no_rows_removes_the_key(tmp_path):
    tables = TableWriter(tmp_path)
    tables.write("scores", "b1--end", score_rows(["a"]))
    assert tables.write("scores", "b1--end", []) == 0
    assert tables.keys("scores") == []
    assert len(tables.read("scores")) == 0


def test_reading_a_table_never_written_gives_typed_empty_frame(tmp_path):
    frame = TableWriter(tmp_path / "nothing-yet").read("points")
    assert list(frame.columns) == SCHEMAS["points"].names and len(frame) == 0
    assert isinstance(frame["checkpoint"].dtype, pd.CategoricalDtype)


def test_temporary_files_are_invisible_to_readers(tmp_path):
    tables = TableWriter(tmp_path)
    tables.write("scores", "b1--end", score_rows(["a"]))
    # What a writer killed between writing and renaming leaves behind.
    (tmp_path / "scores" / ".b2--end.parquet.0123.tmp").write_bytes(b"PAR1 half a file")
    assert tables.keys("scores") == ["b1--end"]
    assert tables.read("scores")["network_id"].tolist() == ["a"]
    assert pd.read_parquet(tmp_path / "scores")["network_id"].tolist() == ["a"]


def test_reader_never_sees_a_partial_or_doubled_file_while_a_key_is_rewritten(tmp_path):
    tables = TableWriter(tmp_path)
    ids = [f"net{i}" for i in range(500)]
    tables.write("scores", "b1--end", score_rows(ids))
    stop = threading.Event()
    errors: list[BaseException] = []

    def rewrite():
        try:
            for round_ in range(40):
                tables.write("scores", "b1--end", score_rows(ids, mean=float(round_)))
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)
        finally:
            stop.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads = 0
    while not stop.is_set():
        frame = tables.read("scores")
        assert len(frame) == len(ids) and frame["network_id"].is_unique
        assert frame["mean"].diff().dropna().eq(1.0).all()  # all rows from one write
        reads += 1
    writer.join()
    assert not errors and reads > 0
    assert [p.name for p in (tmp_path / "scores").iterdir()] == ["b1--end.parquet"]


def _write_many(root: str, keys: list[str], tag: float) -> None:
    tables = TableWriter(root)
    for key in keys:
        tables.write("scores", key, score_rows([f"{key}-x", f"{key}-y"], mean=tag))


def test_processes_writing_concurrently_lose_and_duplicate_nothing(tmp_path):
    root = str(tmp_path)
    own = [[f"p{p}-k{i}" for i in range(15)] for p in range(2)]
    shared = ["race--end"] * 15  # both processes write the same key over and over
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_write_many, [root, root], [own[0] + shared, own[1] + shared], [0.0, 100.0]))
    frame = TableWriter(root).read("scores")
    expected = {f"{key}-{s}" for keys in own for key in keys for s in "xy"} | {"race--end-x", "race--end-y"}
    assert set(frame["network_id"]) == expected and frame["network_id"].is_unique
    race = frame[frame["network_id"].str.startswith("race")].sort_values("network_id")["mean"].tolist()
    assert race in ([0.0, 1.0], [100.0, 101.0])  # one whole write won
    assert not [p for p in (tmp_path / "scores").iterdir() if p.name.startswith(".")]


def test_file_uri_root(tmp_path):
    tables = TableWriter(f"file://{tmp_path}/tables")
    tables.write("scores", "b1--end", score_rows(["a"]))
    assert pd.read_parquet(tmp_path / "tables" / "scores")["network_id"].tolist() == ["a"]


def test_slices_list_columns_round_trip(tmp_path):
    tables = TableWriter(tmp_path)
    region = np.arange(16, dtype=np.int32)
    boundary = np.tile([True, False], 8)
    row = {
        "network_id": "a", "checkpoint": "end", "slice": 0, "layers": "last", "grid": 4,
        "region": region, "boundary": boundary, "anchors": np.linspace(0, 1, 6), "extent": [0.0, 1.0, -1.0, 2.0],
    }
    tables.write("slices", "b1--end", [row, {**row, "network_id": "b", "region": None, "boundary": None}])
    frame = tables.read("slices")
    np.testing.assert_array_equal(frame["region"][0], region)
    np.testing.assert_array_equal(frame["boundary"][0], boundary)
    assert frame["region"][1] is None
    assert to_arrow("slices", frame).schema.equals(SCHEMAS["slices"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("mean"), r"missing \['mean'\]"),
        (lambda r: r.update(bundle_id="x"), r"unexpected \['bundle_id'\]"),
        (lambda r: r.update(step="ten"), r"scores\.step: .*int64"),
        (lambda r: r.update(step=1.5), r"scores\.step: expected int64, got values of type double"),
        (lambda r: r.update(mean="high"), r"scores\.mean: .*expected double"),
        (lambda r: r.update(network_id=None), r"scores\.network_id: 1 missing values"),
    ],
)
def test_schema_violations_name_the_column(tmp_path, change, message):
    rows = score_rows(["a", "b"])
    change(rows[1])
    if set(rows[0]) != set(rows[1]):
        rows = [rows[1]]  # a row whose keys are off is reported as such
    with pytest.raises(TableSchemaError, match=message):
        TableWriter(tmp_path).write("scores", "b1--end", rows)
    assert not (tmp_path / "scores").exists()


def test_mixed_types_in_one_column_are_refused():
    frame = pd.DataFrame(score_rows(["a", "b"]))
    frame["step"] = pd.Series([1, "2"], dtype=object)
    with pytest.raises(TableSchemaError, match=r"scores\.step: values of mixed or unsupported types"):
        to_arrow("scores", frame)


def test_built_columns_store_what_the_same_records_store(tmp_path):
    # `build` takes numpy columns and one value for a whole column; the records path is the reference.
    rows = score_rows(["a", "b"]) + score_rows(["a", "b"], metric="loss", mean=5.0)
    rows[3]["median"] = float("nan")  # a diverged network's
    columns = {name: np.array([row[name] for row in rows]) for name in ("network_id", "metric", "mean", "median", "n_points")}
    columns.update(checkpoint="end", step=10, split="test", std=None, params="{}", settings='{"points": 100}', status="ok", message="")
    tables = TableWriter(tmp_path)
    tables.write("scores", "built", build("scores", columns, len(rows)))
    tables.write("scores", "records", rows)
    frame = tables.read("scores")
    built, records = (frame.iloc[i : i + 4].reset_index(drop=True) for i in (0, 4))
    pd.testing.assert_frame_equal(built, records)
    for key in ("built", "records"):  # NaN is stored as null either way
        assert pq.read_table(tmp_path / "scores" / f"{key}.parquet")["median"].null_count == 1
    with pytest.raises(TableSchemaError, match=r"scores: columns do not match .*missing \['message'\]"):
        build("scores", {name: value for name, value in columns.items() if name != "message"}, len(rows))


def test_arrow_tables_are_checked_like_rows(tmp_path):
    good = to_arrow("scores", score_rows(["a", "b"]))
    assert to_arrow("scores", good.select(list(reversed(good.column_names)))).equals(good)  # column order
    as_strings = good.set_column(good.schema.get_field_index("step"), "step", pa.array(["10", "11"]))
    with pytest.raises(TableSchemaError, match=r"scores\.step: expected int64, got values of type string"):
        TableWriter(tmp_path).write("scores", "k", as_strings)
    no_id = good.set_column(0, pa.field("network_id", pa.string()), pa.array(["a", None]))
    with pytest.raises(TableSchemaError, match=r"scores\.network_id: 1 missing values"):
        TableWriter(tmp_path).write("scores", "k", no_id)
    with pytest.raises(TableSchemaError, match=r"unexpected \['extra'\]"):
        to_arrow("scores", good.append_column("extra", pa.array([1, 2])))
    assert not (tmp_path / "scores").exists()


def test_unknown_table_and_bad_keys_are_refused(tmp_path):
    tables = TableWriter(tmp_path)
    with pytest.raises(ValueError, match="unknown table 'score'; the tables are networks, scores"):
        tables.write("score", "k", [])
    for key in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(ValueError, match="not a plain file name"):
            tables.write("scores", key, score_rows(["a"]))


@pytest.mark.parametrize("dataset", [DataSpec("digits"), DataSpec("image_folder", path="/nowhere")])
def test_a_failed_trials_rows_are_networks_rows(dataset, tmp_path):
    # The rows FailedTrialCallback writes when a bundle fails for good: the documented columns
    # (a missing one once made the callback itself fail inside Tune's loop).
    from sweep.command.callbacks import failed_row

    member = NetworkConfig(dataset, 8, 2, "relu", "sgd", 0.1, 64, 0.0, False, 0, "torch_default")
    row = failed_row(member, "b" * 16, "s", "trial failed after 3 attempt(s): OSError")
    writer = TableWriter(str(tmp_path))
    assert writer.write("networks", "b" * 16, [row]) == 1
    got = writer.read("networks").iloc[0]
    assert got["status"] == "failed" and got["network_id"] == member.network_id
    if dataset.name == "digits":
        assert got["param_count"] == 65 * 8 + 9 * 8 + 9 * 10
    else:
        assert pd.isna(got["param_count"])  # the folder cannot be read: its size is unknown


def test_the_records_of_a_frame_read_back_write_the_same_rows(tmp_path):
    # docs/tables.md: rows may be a list of records; pandas gives a null category column as NaN.
    from sweep.command.callbacks import failed_row

    member = NetworkConfig(DataSpec("digits"), 8, 2, "relu", "sgd", 0.1, 64, 0.0, False, 0, "torch_default")
    first = TableWriter(str(tmp_path / "first"))
    first.write("networks", "b" * 16, [failed_row(member, "b" * 16, "s", "trial failed")])
    frame = first.read("networks")
    records = frame.to_dict("records")
    assert any(isinstance(value, float) and np.isnan(value) and isinstance(frame[key].dtype, pd.CategoricalDtype)
               for key, value in records[0].items())  # what the writer once refused
    second = TableWriter(str(tmp_path / "second"))
    assert second.write("networks", "b" * 16, records) == 1
    pd.testing.assert_frame_equal(second.read("networks"), frame)


def _documented_sections() -> dict[str, str]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "tables.md").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"^## (\w+)\n(.*?)(?=^## |\Z)", text, re.M | re.S)}


def test_the_schemas_are_the_one_definition_of_the_tables_columns():
    """analysis reads the columns the writer writes, and docs/tables.md names every column of each
    table in the schema's order (the networks and scores tables as one row per column, with its
    type)."""
    from analysis import columns

    assert {t: pandas_dtypes(t) for t in SCHEMAS} == {
        "networks": columns.NETWORK_COLUMNS, "scores": columns.SCORE_COLUMNS, "points": columns.POINT_COLUMNS,
        "trajectories": columns.TRAJECTORY_COLUMNS, "slices": columns.SLICE_COLUMNS}
    assert set(columns.HYPERPARAMS) <= set(SCHEMAS["networks"].names)
    sections = _documented_sections()
    assert set(SCHEMAS) <= set(sections)
    kinds = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
    for table in ("networks", "scores"):
        documented = {}
        for cell, kind in re.findall(r"^\| (`[^|]+) \| (\w+) \|", sections[table], re.M):
            documented.update(dict.fromkeys(re.findall(r"`(\w+)`", cell), kind))
        assert list(documented) == SCHEMAS[table].names, table
        for field in SCHEMAS[table]:
            kind = documented[field.name]
            assert (pa.types.is_dictionary(field.type) if kind == "category" else field.type == kinds[kind]), field
    for table in ("points", "trajectories", "slices"):
        named = [n for n in re.findall(r"`(\w+)`", sections[table]) if n in SCHEMAS[table].names]
        assert list(dict.fromkeys(named)) == SCHEMAS[table].names, table
