"""A checkpoint on the sweep's storage: its two files, its metadata, and whether it is scored.
Without torch, so the driver and `sweep status` never import it."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence

from sweep.plan import storage
from sweep.plan.networks import BundleConfig
from sweep.scoring.table_writer import TableWriter, checkpoint_key

POPULATION_FILE = "population.pt"
META_FILE = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names its path."""


class StorageUnavailable(CheckpointError):
    """The storage did not answer while a checkpoint was read: the checkpoint may well be fine, so
    it is left unscored (not recorded as failed), and `sweep score` or `resume` scores it later."""


def parameters_entry(parameters: list, architecture: str) -> dict:
    """How `population.pt` (and the trainer's state) hold the stacked parameters: fully-connected
    networks as `weights` and `biases` (the format every sweep has used), convolutional ones
    (whose convolutions before a batch normalisation have no bias) as one `parameters` list in
    layer order."""
    if architecture == "fc":
        return {"weights": parameters[0::2], "biases": parameters[1::2]}
    return {"parameters": parameters}


def stacked_parameters(state: dict) -> list:
    """The stacked parameters of a `population.pt` or trainer state, layer by layer."""
    if "parameters" in state:
        return list(state["parameters"])
    return [t for pair in zip(state["weights"], state["biases"]) for t in pair]


def unavailable(where: str, error: OSError) -> StorageUnavailable:
    return StorageUnavailable(f"cannot read {where}: {error}; the storage did not answer, so the checkpoint is left "
                              "unscored: `sweep score PATH` (or `sweep resume PATH`) scores it once the storage answers")


def read_meta(source) -> dict:
    """meta.json of a checkpoint (a directory path or URI, or a `ray.tune.Checkpoint`)."""
    fs, path = locate(source)
    where = f"{path}/{META_FILE}"
    try:
        meta = json.loads(storage.read_bytes(fs, where))
    except FileNotFoundError:
        raise CheckpointError(f"{where} is missing: the checkpoint was not written completely; re-run its trial, or "
                              "leave it out of scoring") from None
    except OSError as error:
        raise unavailable(where, error) from None
    except ValueError as error:
        raise CheckpointError(
            f"cannot read checkpoint metadata {where}: {error}; the checkpoint is missing or was not "
            "written completely: re-run its trial, or leave it out of scoring"
        ) from None
    missing = [key for key in ("bundle_id", "network_ids", "tag", "step") if key not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata {where} lacks {missing} (see docs/architecture.md)")
    _check_consistent(meta, path, where)
    return meta


def _check_consistent(meta: dict, path: str, where: str) -> None:
    """A checkpoint's ids are hashes of its networks' settings, so an edited meta.json, or one
    copied from another bundle's folder, no longer matches itself or its folder."""
    edited = f"{where} does not match itself"
    if "bundle" in meta:
        try:
            bundle = BundleConfig.from_dict(meta["bundle"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{edited}: its bundle cannot be read ({error}); it was edited by hand or is "
                                  "damaged: re-run its trial, or leave it out of scoring") from None
        if bundle.bundle_id != meta["bundle_id"] or bundle.network_ids != list(meta["network_ids"]):
            raise CheckpointError(f"{edited}: its networks' settings give bundle {bundle.bundle_id} with networks "
                                  f"{bundle.network_ids}, not the ids it records; it was edited by hand or is damaged: "
                                  "re-run its trial, or leave it out of scoring")
    steps = meta.get("network_steps")
    if steps is not None and (len(steps) != len(meta["network_ids"])
                              or not all(isinstance(s, int) and 0 <= s <= meta["step"] for s in steps)):
        raise CheckpointError(f"{edited}: its network_steps {steps} are not one step count (at most its step "
                              f"{meta['step']}) per network; it was edited by hand or is damaged: re-run its trial, "
                              "or leave it out of scoring")
    folder = path.rstrip("/").rsplit("/", 2)
    if len(folder) == 3 and folder[1].startswith("bundle-") and folder[1] != f"bundle-{meta['bundle_id']}":
        raise CheckpointError(f"{where} belongs to bundle {meta['bundle_id']}, not to the folder {folder[1]} it "
                              "is in: it was copied from elsewhere; move it back, or leave it out of scoring")


def locate(source) -> tuple[storage.pafs.FileSystem, str]:
    """(file system, directory) of a checkpoint: a path or URI, or a `ray.tune.Checkpoint`."""
    # A ray.tune.Checkpoint carries its own file system; duck-typed so no Ray import is needed.
    if hasattr(source, "filesystem") and hasattr(source, "path"):
        return source.filesystem, source.path.rstrip("/")
    fs, path = storage.resolve(source)
    return fs, path.rstrip("/")


def local_size(source) -> int:
    """Bytes of a checkpoint's weights file, a stand-in for the cost of scoring it (which grows
    with the networks it holds); 0 where it cannot be found, and for checkpoints in an object
    store, where asking would cost a request per checkpoint."""
    try:
        fs, path = locate(source)
        if not isinstance(fs, storage.pafs.LocalFileSystem):
            return 0
        return fs.get_file_info(f"{path}/{POPULATION_FILE}").size or 0
    except (OSError, ValueError):  # scoring it will record why (pyarrow's errors are among these)
        return 0


def label(source) -> str:
    """A checkpoint source as text, for messages."""
    return str(getattr(source, "path", source))


def unscored(table_root: str, checkpoints: Sequence, *, failed: bool = False, stale: Collection[str] = (),
             keys: Sequence[str | None] | None = None) -> list:
    """The checkpoints whose key has no `scores` file yet (with `failed`, also those whose file
    holds a failed row), or is in `stale` (`TableWriter.stale_keys`: scored with other settings).
    Items are checkpoint sources (paths, URIs, `ray.tune.Checkpoint`s) or `(bundle_id, source)`
    pairs; they come back as given. `keys`: theirs (`table_keys`), where the caller has read them.
    A checkpoint whose metadata cannot be read counts as unscored (scoring then records why)."""
    tables = TableWriter(table_root)
    done = set(tables.keys("scores")) - set(tables.failed_keys() if failed else ()) - set(stale)
    keys = table_keys(checkpoints) if keys is None else keys
    return [item for item, key in zip(checkpoints, keys, strict=True) if key not in done]


def table_keys(checkpoints: Iterable) -> list[str | None]:
    """The key of each checkpoint's rows in the tables (items as `unscored` takes them), from its
    metadata; None where that cannot be read."""
    keys = []
    for item in checkpoints:
        try:
            meta = read_meta(item[1] if isinstance(item, tuple) else item)
        except CheckpointError:
            keys.append(None)
            continue
        keys.append(checkpoint_key(meta["bundle_id"], meta["tag"]))
    return keys
