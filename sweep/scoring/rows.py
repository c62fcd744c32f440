"""The rows: measured values as Arrow tables of the documented schemas (sweep.scoring.table_writer),
including the failed rows of what could not be measured."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

import metrics_core as mc
from sweep.scoring.settings import (INIT_METRICS, MARGIN_METRICS, POINT_METRICS, SHARPNESS_METRICS, TRAIN_METRICS,
                                    UNTRAINED_TAGS, WEIGHT_METRICS, ScoringSettings)
from sweep.scoring.table_schemas import SETTINGS_METADATA, recorded_settings
from sweep.scoring.table_writer import SCHEMAS, build


def is_trained(meta: Mapping) -> bool:
    """Whether a checkpoint holds trained networks: Jiang et al.'s train-point measures are for
    those (`UNTRAINED_TAGS`)."""
    return meta["tag"] not in UNTRAINED_TAGS


def _score_keys(settings: ScoringSettings, trained: bool = True) -> list[tuple[str, str]]:
    """(split, metric) of every `scores` row of a network; the train-point measures need train
    points (scoring.train_points > 0) and a trained checkpoint."""
    splits = ["test"] + (["train"] if settings.train_points else [])
    keys = [(split, m) for split in splits for m in POINT_METRICS if m in settings.metrics]
    keys += [("weights", m) for m in WEIGHT_METRICS + INIT_METRICS if m in settings.metrics]
    if settings.train_points and trained:
        keys += [("train", m) for m in TRAIN_METRICS if m in settings.metrics]
    return keys


def _params(metric: str, settings: ScoringSettings) -> str:
    if metric == "transitions":
        params = {"k": settings.transitions_k, "trajectory": settings.trajectory}
        if settings.trajectory == "circle":  # through the point: sweeps scored before had it centred there
            params.update(radius=settings.circle_radius, through="point")
        return json.dumps(params)
    if metric in SHARPNESS_METRICS:
        return json.dumps({"samples": settings.sharpness_samples, "depth": settings.sharpness_search_depth,
                           "target": settings.sharpness_target})
    if metric in MARGIN_METRICS:
        return json.dumps({"margin_quantile": mc.measures.MARGIN_QUANTILE})
    return "{}"


def _nan_stats(m: int) -> dict[str, np.ndarray]:
    nan = np.full(m, np.nan)
    return {"mean": nan, "median": nan, "std": nan, "n_points": np.zeros(m, dtype=np.int64)}


def _stats(values: Tensor) -> dict[str, np.ndarray]:
    """Mean, median and sample std over points of [M, n] values; NaN propagates (a diverged
    member keeps NaN rather than a statistic of its finite points)."""
    v = values.double()
    n = v.shape[1]
    std = v.std(dim=1) if n > 1 else torch.full_like(v[:, 0], math.nan)
    return {
        "mean": v.mean(dim=1).numpy(),
        "median": torch.quantile(v, 0.5, dim=1).numpy(),
        "std": std.numpy(),
        "n_points": np.full(len(v), n, dtype=np.int64),
    }


def _value_stats(values: Tensor, points: int = 0) -> dict[str, np.ndarray]:
    """One value per network (of the weights alone, or of `points` points as a whole): mean =
    median = the value; std is NaN."""
    value = values.numpy()
    return {"mean": value, "median": value, "std": np.full(len(value), np.nan),
            "n_points": np.full(len(value), points, dtype=np.int64)}


def network_steps(meta: Mapping, m: int) -> np.ndarray:
    """[m] each network's optimizer steps at the checkpoint: a network that stopped earlier holds
    the weights of its last step (a diverged one: its steps to its first non-finite loss, with the
    weights of that epoch's end; checkpoints written before meta.json listed them: the bundle's)."""
    return np.asarray(meta.get("network_steps") or [meta["step"]] * m, dtype=np.int64)


def _score_rows(meta, ids, keyed, settings, messages: Mapping[int, str], failed: set[int]) -> pa.Table:
    """One row per (split, metric, stats) of `keyed` × member, in that order; built as one
    table, since a table per metric costs more than its statistics."""
    m, r = len(ids), len(keyed)
    record = recorded_settings(dataclasses.asdict(settings))
    metadata = {SETTINGS_METADATA: record}  # what a file without rows was scored with
    if not r:  # only train-point measures, at `init`: nothing to say, and scored all the same
        return build("scores", {name: [] for name in SCHEMAS["scores"].names}, 0).replace_schema_metadata(metadata)
    splits, metrics, stats = zip(*keyed)
    columns = {
        "network_id": list(ids) * r,
        "checkpoint": meta["tag"],
        "step": np.tile(network_steps(meta, m), r),
        "split": np.repeat(splits, m),
        "metric": np.repeat(metrics, m),
        **{name: np.concatenate([s[name] for s in stats]) for name in ("mean", "median", "std", "n_points")},
        "params": np.repeat([_params(metric, settings) for metric in metrics], m),
        "settings": record,
        "status": ["failed" if i in failed else "ok" for i in range(m)] * r,
        "message": [messages.get(i, "") for i in range(m)] * r,
    }
    return build("scores", columns, m * r).replace_schema_metadata(metadata)


def _per_member(ids: Sequence[str], rows: int) -> pa.Array:
    """Each network id repeated for its `rows` consecutive rows, as one string column."""
    index = pa.array(np.repeat(np.arange(len(ids), dtype=np.int32), rows))
    return pa.DictionaryArray.from_arrays(index, pa.array(ids, pa.string())).cast(pa.string())


def _integers(values: Tensor) -> pa.Array:
    """int64 values from a float tensor whose NaN mark missing values (members not measured)."""
    v = values.numpy()
    missing = np.isnan(v)
    return pa.array(np.where(missing, 0, v).astype(np.int64), mask=missing)


def _gather(measured: Mapping[int, Mapping[str, Tensor]], m: int, name: str, shape: tuple) -> Tensor:
    """[m, *shape] float64 of one measure across members, NaN for members without it."""
    out = torch.full((m, *shape), math.nan, dtype=torch.float64)
    for member, values in measured.items():
        if name in values:
            out[member] = values[name].double()
    return out


def checkpoint_rows(meta, ids, inputs, settings, profiles, measured, errors, notes) -> dict[str, pa.Table]:
    m = len(ids)
    messages = {**notes, **errors}
    failed = set(errors)
    sizes = {probe.split: len(probe.index) for probe in inputs.probes}

    keyed = []
    for split, metric in _score_keys(settings, is_trained(meta)):
        if split == "weights" or metric in TRAIN_METRICS:  # a value per network, not per point
            values = _gather(measured, m, f"{split}/{metric}", ())
            keyed.append((split, metric, _value_stats(values, sizes.get(split, 0))))
        else:
            keyed.append((split, metric, _stats(_gather(measured, m, f"{split}/{metric}", (sizes[split],)))))
    tables = {"scores": _score_rows(meta, ids, keyed, settings, messages, failed)}

    test = inputs.probes[0]
    n = len(test.index)
    prediction = _gather(measured, m, "test/prediction", (n,))
    columns = {
        "network_id": _per_member(ids, n),
        "checkpoint": meta["tag"],
        "split": "test",
        "point_index": np.tile(test.index, m),
        "label": np.tile(test.y.cpu().numpy(), m),
        "prediction": _integers(prediction.flatten()),
        **{
            column: _gather(measured, m, f"test/{column}", (n,)).flatten().numpy()
            for column in ("loss", "jacobian_softmax", "jacobian_logits", "transitions")
        },
    }
    tables["points"] = build("points", columns, m * n)

    tables["trajectories"] = SCHEMAS["trajectories"].empty_table()
    if profiles and settings.trajectories:
        parts = []
        for kind, z in inputs.ellipses.items():
            e, k = z.shape[0], z.shape[1]
            columns = {
                "network_id": _per_member(ids, e * k),
                "checkpoint": meta["tag"],
                "kind": kind,
                "ellipse": np.tile(np.repeat(np.arange(e), k), m),
                "position": np.tile(np.arange(k), m * e),
                "anchor": np.tile(np.isin(np.arange(k), mc.anchor_positions(k)), m * e),
                **{
                    column: _gather(measured, m, f"trajectory/{kind}/{column}", (e, k)).flatten().numpy()
                    for column in ("jacobian_softmax", "transition_density")
                },
            }
            parts.append(build("trajectories", columns, m * e * k))
        tables["trajectories"] = pa.concat_tables(parts)

    tables["slices"] = SCHEMAS["slices"].empty_table()
    if profiles and settings.slices:
        count = len(inputs.slice_anchors)
        maps = {
            part: [measured.get(member, {}).get(f"slice/{s}/{part}") for s in range(count) for member in range(m)]
            for part in ("region", "boundary", "anchors", "extent")
        }
        columns = {
            "network_id": list(ids) * count,
            "checkpoint": meta["tag"],
            "slice": np.repeat(np.arange(count), m),
            "layers": settings.slice_layers,
            "grid": settings.slice_grid,
            **{part: [None if t is None else t.numpy() for t in values] for part, values in maps.items()},
        }
        tables["slices"] = build("slices", columns, m * count)
    return tables


def failure_rows(meta: Mapping, settings: ScoringSettings, message: str) -> dict[str, pa.Table]:
    """Rows that record a checkpoint that could not be scored at all: a failed `scores` row per
    member, split and metric; no rows in the other tables."""
    ids = list(meta["network_ids"])
    everyone = set(range(len(ids)))
    tables = {name: SCHEMAS[name].empty_table() for name in ("points", "trajectories", "slices")}
    nan = _nan_stats(len(ids))
    keyed = [(split, metric, nan) for split, metric in _score_keys(settings, is_trained(meta))]
    tables["scores"] = _score_rows(meta, ids, keyed, settings, dict.fromkeys(everyone, message), everyone)
    return tables
