"""The five Parquet tables (schemas in docs/tables.md) and their atomic, idempotent writer.

Each table is a directory; each writing unit (a bundle, or a bundle's checkpoint) owns one file
named after its key, so rewriting a key replaces its rows instead of adding to them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from sweep.plan import storage
from sweep.scoring.table_schemas import SCHEMAS, SETTINGS_METADATA, TABLES, same_settings


_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SUFFIX = ".parquet"

Rows = pa.Table | pd.DataFrame | Sequence[Mapping[str, object]]


class TableSchemaError(ValueError):
    """Rows that do not match a table's documented columns and types."""


def checkpoint_key(bundle_id: str, tag: str) -> str:
    """The key of a checkpoint's rows in scores, points, trajectories and slices."""
    return f"{bundle_id}--{tag}"


def build(table: str, columns: Mapping[str, object], num_rows: int) -> pa.Table:
    """A table of `num_rows` rows from its columns, each an array-like (numpy, a list, an Arrow
    array) or one value for every row, checked like any rows. Arrow builds it straight from
    numpy, with no pandas frame in between: the scoring actors' rows, 2-3x faster that way."""
    schema = _schema(table)
    _check_names(table, schema.names, list(columns))
    arrays = []
    for name in schema.names:
        values = columns[name]
        if isinstance(values, (str, int, float)) or values is None:
            values = pa.repeat(pa.scalar(values), num_rows)
        arrays.append(values if isinstance(values, pa.Array) else _array(table, schema.field(name), values))
    return to_arrow(table, pa.Table.from_arrays(arrays, names=schema.names))


def to_arrow(table: str, rows: Rows) -> pa.Table:
    """Check rows against the table's schema and convert them; TableSchemaError names the problem."""
    schema = _schema(table)
    if isinstance(rows, pa.Table):
        _check_names(table, schema.names, rows.column_names)
        arrays = [_fit(table, field, rows.column(field.name)) for field in schema]
    else:
        frame = rows if isinstance(rows, pd.DataFrame) else _frame_from_records(table, schema, rows)
        _check_names(table, schema.names, list(frame.columns))
        arrays = [_fit(table, field, _array(table, field, frame[field.name])) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _check_names(table: str, expected: list[str], given: list) -> None:
    missing = [name for name in expected if name not in given]
    extra = [str(name) for name in given if name not in expected]
    if missing or extra:
        raise TableSchemaError(
            f"{table}: columns do not match docs/tables.md"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
            + ". Give exactly the documented columns."
        )


class TableWriter:
    """Reads and writes the tables under `root` (`<storage>/<sweep>/tables`, a path or a URI)."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        self._fs, self._path = storage.resolve(self.root)

    def write(self, table: str, key: str, rows: Rows, *, keep_key: bool = False) -> int:
        """Replace the rows stored under `key` with `rows`, atomically; returns the row count.

        No rows removes the key's file, so a re-score that produces fewer tables leaves no stale
        rows; with `keep_key`, an empty file stays instead (the key is done, with nothing to say).
        """
        if not _KEY.fullmatch(key):
            raise ValueError(
                f"table key {key!r} is not a plain file name: use letters, digits, '_', '.', '-'"
                " and start with a letter or digit"
            )
        data = to_arrow(table, rows)
        if isinstance(rows, pa.Table) and rows.schema.metadata:  # e.g. a scores file's settings
            data = data.replace_schema_metadata(rows.schema.metadata)
        if data.num_rows == 0 and not keep_key:
            storage.delete(self._fs, self._file(table, key))
        else:
            storage.write_atomic(self._fs, self._file(table, key), lambda stream: pq.write_table(data, stream))
        return data.num_rows

    def read(self, table: str) -> pd.DataFrame:
        """All rows of a table (an empty frame with its columns when nothing was written yet)."""
        schema = _schema(table)
        files = [f"{self._dir(table)}/{name}" for name in storage.list_files(self._fs, self._dir(table), _SUFFIX)]
        dataset = pads.dataset(files, schema=schema, format="parquet", filesystem=self._fs)
        return dataset.to_table().to_pandas()

    def keys(self, table: str) -> list[str]:
        """Keys that have a file in the table, sorted."""
        _schema(table)
        return [name[: -len(_SUFFIX)] for name in storage.list_files(self._fs, self._dir(table), _SUFFIX)]

    def failed_keys(self) -> list[str]:
        """Keys of the `scores` files holding a failed row (a network whose scoring raised, or a
        checkpoint that could not be read) or that cannot be read themselves, sorted: what
        `sweep score` takes again."""
        return sorted(key for key, statuses in self._scores_values("status").items()
                      if statuses is None or "failed" in statuses)

    def stale_keys(self, settings: Mapping, unrecorded: Mapping | None = None) -> list[str]:
        """Keys of the `scores` files holding rows scored with other settings than `settings` (a
        sweep plan's `scoring`: a rescore with new settings cut short, or one that could not reach
        the checkpoint), sorted: what `sweep score` and `sweep resume` score again. Rows from before
        settings were recorded were scored with `unrecorded` (the plan's `unrecorded_scoring`), or
        with `settings` where that is None. A file without rows says its settings in its metadata."""
        stale = []
        for key, records in self._scores_values("settings").items():
            if records is not None and not records:
                records = {self._file_settings(key)}
            if records is not None and not all(same_settings(r, settings, unrecorded) for r in records):
                stale.append(key)
        return sorted(stale)

    def _file_settings(self, key: str) -> str | None:
        """The settings a `scores` file's metadata records (its rows' own where it has none)."""
        try:
            metadata = pq.read_schema(self._file("scores", key), filesystem=self._fs).metadata or {}
        except (OSError, pa.ArrowException):
            return None
        record = metadata.get(SETTINGS_METADATA)
        return None if record is None else record.decode()

    def _scores_values(self, column: str) -> dict[str, set | None]:
        """Key → the distinct values of `column` in its `scores` file (None: the file cannot be
        read). One streamed scan of every file (concurrent on object stores), a batch at a time,
        so that memory does not grow with the table; file by file only when a file is damaged. A
        file from before the column holds nulls."""
        directory = self._dir("scores")
        files = [f"{directory}/{name}" for name in storage.list_files(self._fs, directory, _SUFFIX)]
        key = {path: path.rsplit("/", 1)[1][: -len(_SUFFIX)] for path in files}
        scores = _schema("scores")
        try:
            dataset = pads.dataset(files, schema=scores, format="parquet", filesystem=self._fs)
            values = {key[path]: set() for path in files}
            for batch in dataset.to_batches(columns=["__filename", column]):
                names = batch.column("__filename")
                for path in names.unique().to_pylist():
                    rows = batch.column(column).filter(pc.equal(names, path))
                    values[key[path]].update(rows.unique().to_pylist())
            return values
        except (OSError, KeyError, pa.ArrowException):
            pass
        values = {}
        for path in files:
            try:
                read = pads.dataset([path], schema=scores, format="parquet", filesystem=self._fs)
                values[key[path]] = set(read.to_table(columns=[column])[column].unique().to_pylist())
            except (OSError, pa.ArrowException):
                values[key[path]] = None  # damaged: scoring it again writes it anew
        return values

    def _dir(self, table: str) -> str:
        return f"{self._path.rstrip('/')}/{table}"

    def _file(self, table: str, key: str) -> str:
        return f"{self._dir(table)}/{key}{_SUFFIX}"


def _schema(table: str) -> pa.Schema:
    try:
        return SCHEMAS[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}") from None


def _frame_from_records(table: str, schema: pa.Schema, rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    expected = set(schema.names)
    for index, row in enumerate(rows):
        if row.keys() != expected:
            missing = sorted(expected - row.keys())
            extra = sorted(map(str, row.keys() - expected))
            raise TableSchemaError(
                f"{table}: row {index} does not match docs/tables.md"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else "")
                + ". Give exactly the documented columns."
            )
    return pd.DataFrame.from_records(list(rows), columns=schema.names)


def _kind(type_: pa.DataType) -> str:
    if pa.types.is_null(type_):
        return "null"
    if pa.types.is_boolean(type_):
        return "bool"
    if pa.types.is_integer(type_):
        return "int"
    if pa.types.is_floating(type_):
        return "float"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    if pa.types.is_dictionary(type_):
        return _kind(type_.value_type)
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return f"list<{_kind(type_.value_type)}>"
    return str(type_)


# Which inferred kinds may be cast to a column's kind without changing meaning (ints widen to
# floats; nothing else converts: a float never truncates into an int column, a string is no number).
_ACCEPTS = {
    "int": {"int"},
    "float": {"int", "float"},
    "bool": {"bool"},
    "string": {"string"},
    "list<int>": {"list<int>", "list<null>"},
    "list<float>": {"list<int>", "list<float>", "list<null>"},
    "list<bool>": {"list<bool>", "list<null>"},
}


def _array(table: str, field: pa.Field, values) -> pa.Array:
    # from_pandas: NaN is stored as null (what pandas reads back as NaN), from frames and numpy alike.
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise TableSchemaError(
            f"{table}.{field.name}: values of mixed or unsupported types ({error}); expected {field.type}"
        ) from None


def _fit(table: str, field: pa.Field, array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The column in its documented type, if its values have that meaning (see _ACCEPTS)."""
    where = f"{table}.{field.name}"
    want, got = _kind(field.type), _kind(array.type)
    if field.nullable and len(array) and array.null_count == len(array):
        return pa.nulls(len(array), field.type)  # pandas gives a column of nulls as float NaN
    if got != "null" and got not in _ACCEPTS[want]:
        raise TableSchemaError(f"{where}: expected {field.type}, got values of type {array.type}")
    if not field.nullable and array.null_count:
        raise TableSchemaError(f"{where}: {array.null_count} missing values in a column that must always be set")
    if array.type == field.type:
        return array
    try:
        return array.cast(field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise TableSchemaError(f"{where}: cannot store as {field.type} ({error})") from None
