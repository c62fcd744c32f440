"""Reading a sweep's Parquet tables into pandas (local paths, s3:// and gs:// alike)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from analysis.columns import (FINAL_CHECKPOINT, POINT_COLUMNS, SCORE_COLUMNS, SLICE_COLUMNS, TRAJECTORY_COLUMNS,
                              require_checkpoint)
from sweep.plan.storage import resolve
from sweep.scoring.table_schemas import same_settings

# Columns added since the first sweeps, null in (or absent from) the files those wrote: the value
# every network of theirs had, so that old and new bundles of one sweep group together.
LEGACY_VALUES = {"architecture": "fc", "precision": "fp32"}
# Where a metric's network-level value lives, in order of preference.
SPLIT_PREFERENCE: tuple[str, ...] = ("test", "weights", "train")


@dataclass(frozen=True, eq=False)
class Tables:
    """A sweep's tables. `wide` is `networks` with one column per final-checkpoint metric.

    `scores`, `points`, `trajectories` and `slices` hold what was scored with the sweep's scoring
    settings, `settings` (its sweep.json's; where there is none, those most checkpoints were scored
    with). `other_settings` holds the `scores` rows of checkpoints scored with others (a rescore
    with new settings cut short): their rows of the other tables are left out too."""

    path: str
    networks: pd.DataFrame
    scores: pd.DataFrame
    wide: pd.DataFrame
    points: pd.DataFrame
    trajectories: pd.DataFrame
    slices: pd.DataFrame
    settings: Mapping | None = None
    other_settings: pd.DataFrame = field(default_factory=pd.DataFrame)
    unrecorded_settings: Mapping | None = None  # those of rows from before rows recorded theirs, if known


def empty_frame(columns: dict[str, str]) -> pd.DataFrame:
    """A frame with no rows and the documented columns and dtypes."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})


def tables_dir(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Find `tables/` given a sweep directory (`<storage>/<name>`) or the tables directory."""
    try:
        return _tables_dir(path)
    except FileNotFoundError:
        raise
    except OSError as error:  # object storage: the region, the network, the credentials
        raise OSError(f"cannot reach the storage of {os.fspath(path)}: {error}; check its path, network and "
                      "credentials") from error


def _tables_dir(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    filesystem, base = resolve(path)
    for candidate in (f"{base.rstrip('/')}/tables", base.rstrip("/")):
        if _is_dir(filesystem, f"{candidate}/networks"):
            return filesystem, candidate
    kind = filesystem.get_file_info(base).type if os.fspath(path) else pafs.FileType.NotFound
    if kind in (pafs.FileType.NotFound, pafs.FileType.File):
        raise FileNotFoundError(f"{os.fspath(path)!r} {'is a file' if kind == pafs.FileType.File else 'does not exist'}: "
                                "pass the directory `sweep run` wrote (<storage>/<sweep name>, which holds sweep.json "
                                "and tables/)")
    if kind == pafs.FileType.Directory:
        sweeps = sorted(info.base_name for info in filesystem.get_file_info(pafs.FileSelector(base))
                        if _is_dir(filesystem, f"{info.path}/tables/networks"))
        if sweeps:
            raise FileNotFoundError(f"{os.fspath(path)!r} is a storage folder that holds the sweeps "
                                    f"{', '.join(sweeps)}: pass one of them, e.g. {os.fspath(path).rstrip('/')}/{sweeps[0]}")
    raise FileNotFoundError(
        f"no networks table at {os.fspath(path)!r}: expected {os.fspath(path)}/tables/networks/ "
        f"(a sweep directory) or {os.fspath(path)}/networks/ (its tables directory). "
        "Pass the directory `sweep run` wrote (<storage>/<sweep name>), or run the sweep first."
    )


def load(path: str | os.PathLike, checkpoint: str = FINAL_CHECKPOINT) -> Tables:
    """Load a sweep's tables. Missing optional tables come back empty with their columns.

    `path` is the sweep directory or its `tables/` directory, local or an s3:// / gs:// URI.
    """
    filesystem, root = tables_dir(path)
    networks = read_table(filesystem, f"{root}/networks")
    if networks is None:
        raise FileNotFoundError(
            f"the networks table at {root}/networks holds no Parquet files; "
            "the sweep has not finished any trial yet, or the path is wrong"
        )
    networks = with_legacy_values(networks)
    scores = _read_or_empty(filesystem, f"{root}/scores", SCORE_COLUMNS)
    scores = scores.assign(**{name: pd.Series(None, scores.index, dtype) for name, dtype in SCORE_COLUMNS.items()
                              if name not in scores})  # files from before a column
    settings, unrecorded = _plan_settings(filesystem, root)
    scores, other, settings = split_by_settings(scores, settings, unrecorded)
    aside = pd.MultiIndex.from_frame(other[["network_id", "checkpoint"]])

    def kept(frame: pd.DataFrame) -> pd.DataFrame:
        if aside.empty:
            return frame
        return frame[~pd.MultiIndex.from_frame(frame[["network_id", "checkpoint"]]).isin(aside)]

    return Tables(
        path=_with_scheme(path, root),
        networks=networks,
        scores=scores,
        wide=wide_table(networks, scores, checkpoint),
        points=kept(_read_or_empty(filesystem, f"{root}/points", POINT_COLUMNS)),
        trajectories=kept(_read_or_empty(filesystem, f"{root}/trajectories", TRAJECTORY_COLUMNS)),
        slices=kept(_read_or_empty(filesystem, f"{root}/slices", SLICE_COLUMNS)),
        settings=settings,
        other_settings=other,
        unrecorded_settings=unrecorded,
    )


def split_by_settings(scores: pd.DataFrame, settings: Mapping | None, unrecorded: Mapping | None = None
                      ) -> tuple[pd.DataFrame, pd.DataFrame, Mapping | None]:
    """(`scores` rows scored with `settings`, those scored with others, the settings kept).
    Without `settings` (no sweep.json), those that most checkpoints were scored with (of equally
    many, the first in JSON order). Rows that predate the `settings` column were scored with
    `unrecorded` (sweep.json's `unrecorded_scoring`), or with `settings` where that is None."""
    records = scores["settings"] if "settings" in scores else pd.Series(None, scores.index, object)
    records = records.astype(object)
    distinct = sorted(str(record) for record in records.dropna().unique())
    if settings is None and len(distinct) > 1:
        units = scores.assign(settings=records).dropna(subset=["settings"])
        counts = units.drop_duplicates(["network_id", "checkpoint"])["settings"].value_counts()
        settings = json.loads(min(distinct, key=lambda record: -counts[record]))
    if settings is None:
        return scores, scores.iloc[:0], None
    other = records.isin([record for record in distinct if not same_settings(record, settings)])
    if unrecorded is not None and not same_settings(None, settings, unrecorded):
        other |= records.isna()
    kept, aside = scores[~other], scores[other]
    if "settings" in kept and isinstance(kept["settings"].dtype, pd.CategoricalDtype):  # drop the set-aside ones
        kept = kept.assign(settings=kept["settings"].cat.remove_unused_categories())
    return kept, aside, settings


def _plan_settings(filesystem: pafs.FileSystem, root: str) -> tuple[Mapping | None, Mapping | None]:
    """(`scoring`, `unrecorded_scoring`) of the sweep.json beside `tables/`; Nones where there is
    none (tables copied alone). A damaged one is a ValueError naming it: read as absent, it would
    change which scores are kept without a word."""
    where = f"{root.rstrip('/').rsplit('/', 1)[0]}/sweep.json"
    try:
        with filesystem.open_input_stream(where) as stream:
            text = stream.read()
    except FileNotFoundError:
        return None, None
    try:
        plan = json.loads(text)
        return dict(plan["scoring"]), plan.get("unrecorded_scoring")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{where} cannot be read ({type(exc).__name__}: {exc}); copy it again from the sweep's "
                         "storage, or move it aside to read the tables as if copied alone") from None


def read_table(filesystem: pafs.FileSystem, directory: str) -> pd.DataFrame | None:
    """All `*.parquet` files of a table directory as one frame; None when there are none.

    Files whose names start with `.` or `_` (writers' temporary files) are skipped. Files are
    read one by one and concatenated with permissive type promotion, so a file whose column is
    all null, or whose dictionary index type differs, still joins the others. A sweep writes each
    network's rows of a checkpoint (`networks`: each network's row) into one file, so a network
    (and checkpoint) in two files, or a file without those columns, is a copy or a stranger that
    would count rows twice or add empty ones: an OSError names the files.
    """
    if not _is_dir(filesystem, directory):
        return None
    listing = filesystem.get_file_info(pafs.FileSelector(directory, recursive=True))
    files = sorted(
        info.path for info in listing
        if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
        and not info.base_name.startswith((".", "_"))
    )
    if not files:
        return None
    parts = []
    for file in files:
        try:
            parts.append(pq.read_table(file, filesystem=filesystem))
        except (OSError, pa.ArrowException) as error:
            raise OSError(
                f"cannot read {file}: {str(error).rstrip('.')}. The file is damaged or not Parquet; copy it again if it came "
                f"from another storage, or {_rewrite_advice(directory, file)}."
            ) from error
    _check_one_file_per_unit(directory, files, parts)
    try:
        table = pa.concat_tables(parts, promote_options="permissive")
    except pa.ArrowException as error:
        raise OSError(f"the files under {directory} have incompatible columns: {error}") from error
    return table.to_pandas()


def with_legacy_values(networks: pd.DataFrame) -> pd.DataFrame:
    """`networks` with the LEGACY_VALUES where its files predate their columns, and `other_class`
    as the random-label draw of networks with random labels from before it was recorded (the only
    draw there was)."""
    networks = networks.copy()

    def known(column: str) -> pd.Series:
        return networks[column].astype(object) if column in networks else pd.Series(None, networks.index, object)

    for column, value in LEGACY_VALUES.items():
        values = known(column)
        networks[column] = values.where(values.notna(), value).astype("category")
    if "random_label_fraction" in networks:
        drawn = known("random_labels")
        networks["random_labels"] = drawn.where(drawn.notna() | ~(networks["random_label_fraction"] > 0),
                                                "other_class").astype("category")
    return networks


def _rewrite_advice(directory: str, file: str) -> str:
    """How to have a table file written again: a checkpoint counts as scored while its `scores`
    file is there, so the other files of its scoring come back only with that one deleted too."""
    tables, table = directory.rstrip("/").rsplit("/", 1)
    if table in ("points", "trajectories", "slices"):
        return (f"delete it and its checkpoint's {tables}/scores/{file.rsplit('/', 1)[-1]}, then run `sweep resume` "
                "on the sweep, which scores the checkpoint again and writes both")
    return "delete it and run `sweep resume` on the sweep, which writes it again from the checkpoints"


def _check_one_file_per_unit(directory: str, files: list[str], parts: list[pa.Table]) -> None:
    unit = ["network_id"] if directory.rstrip("/").endswith("/networks") else ["network_id", "checkpoint"]
    table = directory.rstrip("/").rsplit("/", 1)[-1]
    first_file: dict[tuple, str] = {}
    for file, part in zip(files, parts):
        missing = [column for column in unit if column not in part.column_names]
        if missing:
            raise OSError(f"{file} is not a file of the {table} table (it has no {' or '.join(missing)} column); "
                          "move it out of the sweep's tables folder")
        for row in part.select(unit).group_by(unit).aggregate([]).to_pylist():
            key = tuple(str(row[column]) for column in unit)
            if key in first_file:
                raise OSError(
                    f"the {table} table holds network {' at checkpoint '.join(key)} twice, in {first_file[key]} and in {file}: a copied "
                    "or renamed file, or the tables of two sweeps in one folder; keep one of them (to study several "
                    "sweeps together, load each with analysis.load and concatenate the frames)")
            first_file[key] = file


def wide_table(networks: pd.DataFrame, scores: pd.DataFrame, checkpoint: str = FINAL_CHECKPOINT
               ) -> pd.DataFrame:
    """`networks` joined with one column per metric: the mean at `checkpoint`.

    Each metric is taken from the first split of SPLIT_PREFERENCE it was measured on (test points,
    else the weights alone, else train points). A metric measured with several parameter sets
    gets one column per set, named `<metric> <params JSON>`. Metrics that repeat a `networks`
    column (`param_count`) keep the `networks` value.
    """
    require_checkpoint(scores, checkpoint)
    rows = scores[(scores["checkpoint"] == checkpoint) & scores["split"].isin(SPLIT_PREFERENCE)]
    if rows.empty:
        return networks.copy()
    metric = rows["metric"].astype(str)
    rank = rows["split"].astype(str).map({s: i for i, s in enumerate(SPLIT_PREFERENCE)})
    keep = rank == rank.groupby(metric).transform("min")
    rows, metric = rows[keep], metric[keep]
    params = rows["params"].astype(str)
    variants = params.groupby(metric).transform("nunique")
    column = metric.where(variants <= 1, metric + " " + params)
    wide = (
        rows.assign(column=column.to_numpy(), network_id=rows["network_id"].astype(str))
        .pivot_table(index="network_id", columns="column", values="mean", aggfunc="first",
                     dropna=False)
    )
    wide = wide.drop(columns=[c for c in wide.columns if c in networks.columns])
    wide.columns.name = None
    return networks.join(wide, on="network_id")


def _read_or_empty(filesystem: pafs.FileSystem, directory: str, columns: dict[str, str]
                   ) -> pd.DataFrame:
    frame = read_table(filesystem, directory)
    return empty_frame(columns) if frame is None else frame


def _with_scheme(path: str | os.PathLike, root: str) -> str:
    text = os.fspath(path)
    return f"{text.split('://', 1)[0]}://{root}" if "://" in text else root


def _is_dir(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type == pafs.FileType.Directory
