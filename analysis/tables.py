"""Reading a sweep's Parquet tables into pandas (local paths, s3:// and gs:// alike)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from analysis.columns import (FINAL_CHECKPOINT, POINT_COLUMNS, SCORE_COLUMNS, SLICE_COLUMNS, TRAJECTORY_COLUMNS,
                              require_checkpoint)
from sweep.plan.storage import resolve

# Where a metric's network-level value lives, in order of preference.
SPLIT_PREFERENCE: tuple[str, ...] = ("test", "weights", "train")


@dataclass(frozen=True, eq=False)
class Tables:
    """A sweep's tables. `wide` is `networks` with one column per final-checkpoint metric."""

    path: str
    networks: pd.DataFrame
    scores: pd.DataFrame
    wide: pd.DataFrame
    points: pd.DataFrame
    trajectories: pd.DataFrame
    slices: pd.DataFrame


def empty_frame(columns: dict[str, str]) -> pd.DataFrame:
    """A frame with no rows and the documented columns and dtypes."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})


def tables_dir(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Find `tables/` given a sweep directory (`<storage>/<name>`) or the tables directory."""
    filesystem, base = resolve(path)
    for candidate in (f"{base.rstrip('/')}/tables", base.rstrip("/")):
        if _is_dir(filesystem, f"{candidate}/networks"):
            return filesystem, candidate
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
    scores = _read_or_empty(filesystem, f"{root}/scores", SCORE_COLUMNS)
    return Tables(
        path=_with_scheme(path, root),
        networks=networks,
        scores=scores,
        wide=wide_table(networks, scores, checkpoint),
        points=_read_or_empty(filesystem, f"{root}/points", POINT_COLUMNS),
        trajectories=_read_or_empty(filesystem, f"{root}/trajectories", TRAJECTORY_COLUMNS),
        slices=_read_or_empty(filesystem, f"{root}/slices", SLICE_COLUMNS),
    )


def read_table(filesystem: pafs.FileSystem, directory: str) -> pd.DataFrame | None:
    """All `*.parquet` files of a table directory as one frame; None when there are none.

    Files whose names start with `.` or `_` (writers' temporary files) are skipped. Files are
    read one by one and concatenated with permissive type promotion, so a file whose column is
    all null, or whose dictionary index type differs, still joins the others.
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
                f"cannot read {file}: {error}. The file is damaged or not Parquet; delete it and "
                "re-run the trial or `sweep score` that writes it."
            ) from error
    try:
        table = pa.concat_tables(parts, promote_options="permissive")
    except pa.ArrowException as error:
        raise OSError(f"the files under {directory} have incompatible columns: {error}") from error
    return table.to_pandas()


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
