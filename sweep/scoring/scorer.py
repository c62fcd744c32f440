"""Scoring checkpoints on the storage: reading them, the `Scorer` that keeps data sets and fixed
points on its device between checkpoints, and writing the rows.

No Ray: `ScoringActor` in `sweep.scoring.actors` wraps `Scorer`, and the benchmark and tests use
it directly.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import torch

import metrics_core as mc
from sweep.plan import storage
from sweep.plan.datasets import dataset_info
from sweep.plan.networks import BundleConfig
from sweep.scoring.inputs import ScoringInputs, scoring_inputs
from sweep.scoring.measure import score_checkpoints
from sweep.scoring.rows import failure_rows
from sweep.scoring.settings import ScoringSettings
from sweep.scoring.table_writer import TableWriter, checkpoint_key
from sweep.training.checkpoints import (POPULATION_FILE, CheckpointError, StorageUnavailable, label, locate, read_meta,
                                        stacked_parameters,
                                        unavailable)
from sweep.training.data import load_dataset
from sweep.training.models import population_of

log = logging.getLogger(__name__)


def load_checkpoint(source) -> tuple[mc.MLP | mc.ConvNet, dict]:
    """The stacked population and the metadata of a checkpoint; CheckpointError names the file
    when either cannot be read."""
    meta = read_meta(source)
    return _load_population(source, meta), meta


def _load_population(source, meta: dict) -> mc.MLP | mc.ConvNet:
    """The checkpoint's population: an MLP, or for convolutional networks (their layout follows
    from the bundle's config in `meta`) a ConvNet."""
    fs, path = locate(source)
    where = f"{path}/{POPULATION_FILE}"
    try:
        data = storage.read_bytes(fs, where)
    except FileNotFoundError:
        raise CheckpointError(f"cannot load {where}: the file is missing; re-run its trial, or leave the checkpoint "
                              "out of scoring") from None
    except OSError as error:
        raise unavailable(where, error) from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        activation = mc.Activation(state["activation"], state.get("activation_params") or {})
        members = meta.get("bundle", {}).get("members") or [{}]
        if members[0].get("architecture", "fc") == "cnn":
            config = BundleConfig.from_dict(meta["bundle"]).members[0]
            parameters = stacked_parameters(state)
            stats = [tuple(pair) for pair in state.get("norm_stats") or []]
            return population_of(config, dataset_info(config.dataset), parameters, stats or None)
        return mc.MLP(tuple(state["weights"]), tuple(state["biases"]), activation)
    except Exception as error:  # noqa: BLE001 - whatever the cause, the file cannot be used
        raise CheckpointError(
            f"cannot load {where}: {type(error).__name__}: {error}; the file is missing or corrupt: "
            "re-run its trial, or leave the checkpoint out of scoring"
        ) from None


def write_rows(writer: TableWriter, key: str, tables: Mapping[str, pa.Table], *, scored: bool = True) -> None:
    """Write a checkpoint's rows; `scores` last, so a checkpoint counts as scored only when
    everything else is on the storage. A `scored` one keeps its `scores` file even without rows
    (train-point measures alone say nothing at `init`); a failure without rows leaves it unscored."""
    for name in sorted(tables, key=lambda table: table == "scores"):
        writer.write(name, key, tables[name], keep_key=scored and name == "scores")


def record_failure(table_root: str, source, settings: ScoringSettings, message: str) -> str:
    """Record a checkpoint that could not be scored as failed `scores` rows (when its metadata
    can be read, else there are no network ids to record); returns a description."""
    try:
        meta = read_meta(source)
    except CheckpointError as error:
        return f"{label(source)}: {message} ({error})"
    key = checkpoint_key(meta["bundle_id"], meta["tag"])
    try:
        write_rows(TableWriter(table_root), key, failure_rows(meta, settings, message), scored=False)
    except OSError as error:
        return f"{key}: {message}; {_unwritten(error)}"
    return f"{key}: {message}"


def _unwritten(error: OSError) -> str:
    return (f"its rows could not be written ({error}), so the checkpoint is left unscored: `sweep score PATH` "
            "scores it once the storage takes them")


class Scorer:
    """Scores checkpoints and writes their rows; keeps data sets and fixed points on its device
    between checkpoints, so a checkpoint costs only loading its weights and computing."""

    def __init__(self, device: str | torch.device | None = None, threads: int | None = None):
        self.threads = threads
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._inputs: dict[tuple, tuple[object, ScoringInputs]] = {}
        self._preparing = threading.Lock()  # checkpoints may be scored in several threads at once

    def inputs(self, spec, settings: ScoringSettings):
        """A data set (its `DataSpec`) on this scorer's device and its scoring inputs, prepared
        once."""
        key = (spec, settings)
        with self._preparing:
            if key not in self._inputs:
                data = load_dataset(spec, device=self.device)
                self._inputs[key] = (data, scoring_inputs(data, settings))
        return self._inputs[key]

    def score(self, source, table_root: str, settings: ScoringSettings) -> dict:
        """Score one checkpoint and write its rows (`score_many` of one)."""
        return self.score_many([source], table_root, settings)[0]

    def score_many(self, sources: Sequence, table_root: str, settings: ScoringSettings) -> list[dict]:
        """Score checkpoints and write their rows, those of one data set in one batched call
        (`score_checkpoints`); never raises for a bad checkpoint or a failing network (those are
        recorded as failed rows). Returns a summary per checkpoint, in order, for progress."""
        if self.threads:  # torch's thread count is per thread, and an actor may call from several
            torch.set_num_threads(self.threads)
        started = time.perf_counter()
        summaries: list[dict] = []
        loaded: dict[object, list[tuple[int, mc.MLP | mc.ConvNet, dict]]] = {}
        for source in sources:
            summary = {"source": label(source), "key": None, "members": 0, "failed_members": 0, "points": 0, "message": ""}
            summaries.append(summary)
            try:
                meta = read_meta(source)
            except CheckpointError as error:
                summary["message"] = str(error)
                continue
            summary.update(key=checkpoint_key(meta["bundle_id"], meta["tag"]), members=len(meta["network_ids"]))
            try:
                population = _load_population(source, meta)
                data_spec = checkpoint_dataset(meta)
            except StorageUnavailable as error:  # no rows: the checkpoint stays unscored, to be scored later
                summary["message"] = str(error)
                continue
            except CheckpointError as error:
                summary["message"] = _failure(error)
                self._write(table_root, summary, failure_rows(meta, settings, summary["message"]), scored=False)
                continue
            loaded.setdefault(data_spec, []).append((len(summaries) - 1, population, meta))
        for data_spec, items in loaded.items():
            try:
                data, inputs = self.inputs(data_spec, settings)
                results = _score_together([(p, m) for _, p, m in items], data, settings, inputs)
            except Exception as error:  # noqa: BLE001 - the data set itself failed: every checkpoint of it
                results = [_failure(error)] * len(items)
            for (index, _, meta), result in zip(items, results):
                scored = not isinstance(result, str)
                if not scored:  # recorded as failed rows, never lost
                    summaries[index]["message"] = result
                    result = failure_rows(meta, settings, result)
                self._write(table_root, summaries[index], result, scored=scored)
        seconds = time.perf_counter() - started
        return [{**summary, "seconds": seconds} for summary in summaries]

    @staticmethod
    def _write(table_root: str, summary: dict, tables: Mapping[str, pa.Table], *, scored: bool = True) -> None:
        try:
            write_rows(TableWriter(table_root), summary["key"], tables, scored=scored)
        except OSError as error:  # never a task error: that would mark the other checkpoints of the call failed
            summary["message"] = "; ".join(filter(None, [summary["message"], _unwritten(error)]))
            return
        scores = tables["scores"]
        failed = pc.count_distinct(scores["network_id"].filter(pc.equal(scores["status"], "failed")))
        summary.update(failed_members=failed.as_py(), points=tables["points"].num_rows)


def _score_together(checkpoints: list, data, settings: ScoringSettings, inputs: ScoringInputs) -> list[dict | str]:
    """`score_checkpoints`, or where the batched call raises, each checkpoint alone, so that one
    bad checkpoint fails only itself: per checkpoint its tables or the failure's message."""
    try:
        return score_checkpoints(checkpoints, data, settings, inputs)
    except Exception as error:  # noqa: BLE001 - narrowed down checkpoint by checkpoint, then recorded
        if len(checkpoints) == 1:
            return [_failure(error)]
        log.warning("scoring %d checkpoints together raised %s: %s; scoring them one at a time", len(checkpoints),
                    type(error).__name__, error)
        return [result for checkpoint in checkpoints for result in _score_together([checkpoint], data, settings, inputs)]


def _failure(error: Exception) -> str:
    return f"scoring failed: {type(error).__name__}: {error}"


def checkpoint_dataset(meta: Mapping):
    """The data set a checkpoint's bundle was trained on (from its meta.json)."""
    if "bundle" not in meta:
        raise CheckpointError(
            f"checkpoint {meta['bundle_id']}/{meta['tag']}: meta.json has no 'bundle' (the BundleConfig "
            "naming its data set); it was not written by sweep.training.trainable"
        )
    return BundleConfig.from_dict(meta["bundle"]).dataset
