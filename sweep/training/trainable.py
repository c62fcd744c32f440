"""The Ray Tune trial: one bundle of same-shape networks trained as a population.

Checkpoints (docs/architecture.md) are reported at initialisation, every
`checkpoint_every_epochs` epochs and at the end, and progress between them at most every
`REPORT_EVERY_S` seconds: each `tune.report` waits for the driver to take the result, a round trip
that short GPU epochs would otherwise wait on once per epoch. A retried or resumed trial restores the
trainer's full state from the latest one and continues exactly where it stopped; a bundle whose
`end` checkpoint is already on the storage is not trained again.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from sweep.plan import storage
from sweep.plan.networks import BundleConfig
from sweep.plan.spec import Budget
from sweep.scoring.table_writer import TableWriter
from sweep.training.checkpoints import (META_FILE, POPULATION_FILE, CheckpointError, parameters_entry, read_meta,
                                        stacked_parameters)
from sweep.training.data import load_dataset
from sweep.training.population import PopulationTrainer

REPORT_EVERY_S = 2.0


def checkpoint_payload(trainer: PopulationTrainer, bundle: BundleConfig, tag: str) -> tuple[dict, dict]:
    """The two files of a checkpoint: tensors (weights_only-loadable) and JSON metadata."""
    state = trainer.state_dict()
    activation = trainer.activation
    # The trainer state's own tensors: torch.save writes each storage once, so the file holds the
    # weights once. A convolutional network's layout follows from its config in meta.json.
    population = {
        **parameters_entry(stacked_parameters(state), bundle.architecture),
        "norm_stats": state["norm_stats"],
        "activation": activation.name,
        "activation_params": dict(activation.params),
        "trainer": state,
    }
    meta = {
        "bundle_id": bundle.bundle_id,
        "bundle": bundle.to_dict(),
        "network_ids": [m.network_id for m in bundle.members],
        "tag": tag,
        "step": trainer.steps,
        "epoch": trainer.epoch,
        "statuses": list(trainer.status),
        "network_steps": [trainer.progress(i)[0] for i in range(len(bundle.members))],
    }
    return population, meta


def write_checkpoint(directory: Path, population: dict, meta: dict) -> None:
    torch.save(population, directory / POPULATION_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=1))


def _device(config: dict) -> str:
    return "cuda" if config.get("gpus_per_trial", 0) > 0 and torch.cuda.is_available() else "cpu"


def _maybe_inject_fault(config: dict, epoch: int, bundle_id: str) -> None:
    """Fail once at a chosen epoch (tests of retry and exact resume), marked on the storage."""
    fault = config.get("fail_once_at_epoch")
    if fault is None or epoch != fault:
        return
    marker = Path(config["sweep_dir"]) / "injected-faults" / bundle_id
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    raise RuntimeError(f"fault injected on purpose at epoch {epoch} (fail_once_at_epoch)")


def train_bundle(config: dict) -> None:
    """Tune function trainable; `config` is built by `sweep.command.runner.param_space`."""
    from ray import tune

    torch.set_num_threads(max(1, int(config.get("cpus_per_trial", 1))))
    bundle = BundleConfig.from_dict(config["bundle"])
    finished = finished_meta(config["sweep_dir"], bundle.bundle_id)
    if finished is not None:
        tune.report({"bundle_id": bundle.bundle_id, "members": len(bundle.members), "epoch": finished["epoch"],
                     "steps": finished["step"], "done": True, **_status_counts(finished["statuses"])})
        return
    budget = Budget(**config["budget"])
    every = config.get("checkpoint_every_epochs")
    device = _device(config)
    data = load_dataset(bundle.members[0].dataset, device=device)
    trainer = PopulationTrainer(bundle, data, budget, device=device)

    reported = time.monotonic()

    def report(tag: str | None) -> None:
        nonlocal reported
        reported = time.monotonic()
        metrics = {
            "bundle_id": bundle.bundle_id,
            "members": len(bundle.members),
            "epoch": trainer.epoch,
            "steps": trainer.steps,
            "train_s": trainer.elapsed,  # inside train_epoch; Tune's time_total_s is the whole trial
            "done": trainer.done,
            **_status_counts(trainer.status),
        }
        if tag is None:
            tune.report(metrics)
            return
        population, meta = checkpoint_payload(trainer, bundle, tag)
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(Path(tmp), population, meta)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        report("init")
    else:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / POPULATION_FILE, weights_only=True, map_location=device)
        trainer.load_state_dict(state["trainer"])

    while not trainer.done:
        trainer.train_epoch()
        _maybe_inject_fault(config, trainer.epoch, bundle.bundle_id)
        if trainer.done:
            rows = trainer.network_rows(config["sweep"])
            TableWriter(config["table_root"]).write("networks", bundle.bundle_id, rows)
            report("end")
        elif every and trainer.epoch % every == 0:
            report(f"epoch-{trainer.epoch:06d}")
        elif time.monotonic() - reported >= REPORT_EVERY_S:
            report(None)


def _status_counts(statuses: list[str]) -> dict:
    return {status: statuses.count(status) for status in ("running", "converged", "budget", "diverged")}


def finished_meta(sweep_dir: str, bundle_id: str) -> dict | None:
    """meta.json of the bundle's `end` checkpoint on the storage, if it has one.

    Tune snapshots its experiment state every 10 s or more, so a driver killed soon after a
    bundle ended leaves it marked running; `sweep resume` then restarts it, and it must not train
    (and write) again what is already on the storage.
    """
    try:
        found = end_checkpoint(sweep_dir, bundle_id)
    except CheckpointError:  # its weights unreadable (an upload cut short by the loss): train it again
        return None
    return None if found is None else found[0]


def end_checkpoint(sweep_dir: str, bundle_id: str) -> tuple[dict, dict] | None:
    """(meta.json, the population file's contents) of the bundle's `end` checkpoint; None where
    none is found (a checkpoint with unreadable metadata is not known to be it). CheckpointError
    where its population file cannot be read."""
    fs, path = storage.resolve(sweep_dir)
    bundle_dir = f"{path}/bundle-{bundle_id}"
    for checkpoint in storage.list_dirs(fs, bundle_dir, "checkpoint_"):
        directory = f"{bundle_dir}/{checkpoint}"
        try:
            meta = read_meta(SimpleNamespace(filesystem=fs, path=directory))
        except CheckpointError:
            continue
        if meta.get("tag") != "end":
            continue
        where = f"{directory}/{POPULATION_FILE}"
        try:  # files are copied one by one: an upload cut short leaves the metadata without the weights
            return meta, torch.load(io.BytesIO(storage.read_bytes(fs, where)), weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch.load's errors have no common type
            raise CheckpointError(f"{where} cannot be read ({type(exc).__name__}: {exc})") from None
    return None


def rebuild_network_rows(config: dict) -> int:
    """Write a finished bundle's `networks` file again from its `end` checkpoint (`config` as a
    trial's), which holds the trainer's whole state: the rows it wrote when it finished. A
    trial Tune has finished never runs again, so a lost or damaged file would stay lost.
    Returns the rows written (0 without an `end` checkpoint; CheckpointError where its weights
    cannot be read)."""
    bundle = BundleConfig.from_dict(config["bundle"])
    found = end_checkpoint(config["sweep_dir"], bundle.bundle_id)
    if found is None:
        return 0
    torch.set_num_threads(max(1, int(config.get("cpus_per_trial", 1))))
    device = _device(config)
    trainer = PopulationTrainer(bundle, load_dataset(bundle.members[0].dataset, device=device),
                                Budget(**config["budget"]), device=device)
    trainer.load_state_dict(found[1]["trainer"])
    return TableWriter(config["table_root"]).write("networks", bundle.bundle_id, trainer.network_rows(config["sweep"]))
