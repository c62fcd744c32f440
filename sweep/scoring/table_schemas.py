"""The five tables' Arrow schemas: the one definition that the writer (sweep.scoring.table_writer), the
analysis (analysis.columns) and docs/tables.md follow (tests/test_tables.py ties them together).
Only pyarrow: the analysis reads it without torch or Ray."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pyarrow as pa

CATEGORY = pa.dictionary(pa.int32(), pa.string())

TRAJECTORY_KINDS: tuple[str, ...] = ("random", "different_class", "same_class")  # the ellipses' kinds

SCHEMAS: dict[str, pa.Schema] = {
    "networks": pa.schema(
        [
            pa.field("network_id", pa.string(), nullable=False),
            pa.field("bundle_id", pa.string(), nullable=False),
            ("sweep", CATEGORY),
            ("dataset", CATEGORY),
            ("train_size", pa.int64()),
            ("test_size", pa.int64()),
            ("random_label_fraction", pa.float64()),
            ("augmentation", pa.bool_()),
            ("width", pa.int64()),
            ("depth", pa.int64()),
            ("activation", CATEGORY),
            ("optimizer", CATEGORY),
            ("learning_rate", pa.float64()),
            ("batch_size", pa.int64()),
            ("full_batch", pa.bool_()),
            ("seed", pa.int64()),
            ("init", CATEGORY),
            ("precision", CATEGORY),
            ("architecture", CATEGORY),
            ("family", CATEGORY),
            ("stages", pa.int64()),
            ("kernel_size", pa.int64()),
            ("pooling", CATEGORY),
            ("head", CATEGORY),
            ("batch_norm", pa.bool_()),
            ("augmentation_shift", pa.int64()),
            ("augmentation_flips", pa.bool_()),
            ("random_labels", CATEGORY),
            ("param_count", pa.int64()),
            pa.field("status", CATEGORY, nullable=False),
            ("steps", pa.int64()),
            ("epochs", pa.float64()),
            ("train_loss", pa.float64()),
            ("train_acc", pa.float64()),
            ("test_loss", pa.float64()),
            ("test_acc", pa.float64()),
            ("gap", pa.float64()),
            ("loss_gap", pa.float64()),
            ("wall_time_s", pa.float64()),
            ("message", pa.string()),
        ]
    ),
    "scores": pa.schema(
        [
            pa.field("network_id", pa.string(), nullable=False),
            pa.field("checkpoint", CATEGORY, nullable=False),
            ("step", pa.int64()),
            pa.field("split", CATEGORY, nullable=False),
            pa.field("metric", CATEGORY, nullable=False),
            ("mean", pa.float64()),
            ("median", pa.float64()),
            ("std", pa.float64()),
            ("n_points", pa.int64()),
            ("params", pa.string()),
            ("settings", CATEGORY),
            pa.field("status", CATEGORY, nullable=False),
            ("message", pa.string()),
        ]
    ),
    "points": pa.schema(
        [
            pa.field("network_id", pa.string(), nullable=False),
            pa.field("checkpoint", CATEGORY, nullable=False),
            pa.field("split", CATEGORY, nullable=False),
            pa.field("point_index", pa.int64(), nullable=False),
            ("label", pa.int64()),
            ("prediction", pa.int64()),
            ("loss", pa.float64()),
            ("jacobian_softmax", pa.float64()),
            ("jacobian_logits", pa.float64()),
            ("transitions", pa.float64()),
        ]
    ),
    "trajectories": pa.schema(  # kind: one of TRAJECTORY_KINDS
        [
            pa.field("network_id", pa.string(), nullable=False),
            pa.field("checkpoint", CATEGORY, nullable=False),
            pa.field("kind", CATEGORY, nullable=False),
            pa.field("ellipse", pa.int64(), nullable=False),
            pa.field("position", pa.int64(), nullable=False),
            ("anchor", pa.bool_()),
            ("jacobian_softmax", pa.float64()),
            ("transition_density", pa.float64()),
        ]
    ),
    "slices": pa.schema(
        [
            pa.field("network_id", pa.string(), nullable=False),
            pa.field("checkpoint", CATEGORY, nullable=False),
            pa.field("slice", pa.int64(), nullable=False),
            ("layers", CATEGORY),
            ("grid", pa.int64()),
            ("region", pa.list_(pa.int32())),
            ("boundary", pa.list_(pa.bool_())),
            ("anchors", pa.list_(pa.float64())),
            ("extent", pa.list_(pa.float64())),
        ]
    ),
}
TABLES = tuple(SCHEMAS)

# Scoring settings that change no value (chunk_size bounds memory alone): not in `settings`.
UNRECORDED_SETTINGS = frozenset({"chunk_size"})
# The key of a `scores` file's metadata that holds its settings too (a file without rows has them there).
SETTINGS_METADATA = b"settings"


def recorded_settings(settings: Mapping) -> str:
    """The scoring settings (a `ScoringSettings` as a mapping) as `scores.settings` records them:
    JSON, keys sorted."""
    # a list's order (the metrics') changes no value
    return json.dumps({name: sorted(value) if isinstance(value, (tuple, list)) else value
                       for name, value in settings.items() if name not in UNRECORDED_SETTINGS}, sort_keys=True)


def same_settings(record: str | None, settings: Mapping, unrecorded: Mapping | None = None) -> bool:
    """Whether rows whose `settings` column holds `record` were scored with `settings` (a sweep
    plan's `scoring`). Rows written before the column (null) were scored with `unrecorded` (the
    settings the sweep had when it was first given new ones), or with `settings` where that is
    None. A setting only one side names (one added since, at its default) is not compared."""
    if record is None:
        return unrecorded is None or not differing_settings(recorded_settings(unrecorded), settings)
    return not differing_settings(record, settings)


def setting_change(name: str, value, other, than: str) -> str:
    """A setting's `value` against `other` (`than` names it: "was", "the sweep's:"), as text; a
    list's as the items it has more (+) and fewer (-)."""
    if isinstance(value, list) and isinstance(other, list):
        return f"{name} " + ", ".join([*(f"+{item}" for item in value if item not in other),
                                       *(f"-{item}" for item in other if item not in value)])
    return f"{name} {value} ({than} {other})"


def differing_settings(record: str, settings: Mapping) -> dict[str, tuple]:
    """Setting → (recorded value, value in `settings`) for each setting both name with different values."""
    then, now = json.loads(record), json.loads(recorded_settings(settings))
    return {name: (then[name], now[name]) for name in sorted(then.keys() & now.keys()) if then[name] != now[name]}


def pandas_dtypes(table: str) -> dict[str, str]:
    """Column → the pandas dtype a table's column has when read (`analysis.load`)."""
    return {field.name: _pandas_dtype(field.type) for field in SCHEMAS[table]}


def _pandas_dtype(type_: pa.DataType) -> str:
    if pa.types.is_dictionary(type_):
        return "category"
    if pa.types.is_string(type_):
        return "str"
    if pa.types.is_list(type_):
        return "object"
    return type_.to_pandas_dtype().__name__
