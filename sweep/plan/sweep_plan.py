"""A sweep's plan: everything a run, a resume, `status` and `score` need, saved in the sweep's
folder as sweep.json, and where that folder is."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from sweep.plan import storage
from sweep.plan.networks import BundleConfig
from sweep.plan.planner import SCORING_BATCH, estimate_bundle_work
from sweep.plan.spec import SweepSpec, check_sweep_name


SWEEP_FILE = "sweep.json"

@dataclass(frozen=True)
class SweepPlan:
    """Everything a run or a resume needs, saved beside the experiment as sweep.json."""

    name: str
    storage: str
    spec_source: str
    spec_text: str  # the spec as it was run, and its suffix (how it parses): a record, for the user
    spec_suffix: str
    bundles: tuple[dict, ...]
    checkpoint_every_epochs: int | None
    budget: dict
    resources: dict
    scoring: dict
    # bundle_id -> the trial's share of one card (sweep.plan.planner); empty in sweeps planned before
    # shares were per bundle, whose trials take resources["gpus_per_trial"]
    gpu_shares: dict = dataclasses.field(default_factory=dict)
    # The scoring settings of `scores` rows written before rows recorded theirs: `scoring` as it was
    # when `sweep score` was first given new settings; None until then (such rows have `scoring`).
    unrecorded_scoring: dict | None = None

    @property
    def sweep_dir(self) -> str:
        return storage.join(self.storage, self.name)

    @property
    def table_root(self) -> str:
        return storage.join(self.sweep_dir, "tables")

    @property
    def networks(self) -> int:
        return sum(len(b["members"]) for b in self.bundles)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "SweepPlan":
        data = json.loads(text)
        data["bundles"] = tuple(data["bundles"])
        return cls(**data)


def resolve_storage(storage: str | None) -> str:
    """A URI stays as it is; a local path becomes absolute (Ray Tune needs that)."""
    if storage and "://" in storage:
        return storage
    return str(Path(storage or "sweeps").expanduser().resolve())


def save_plan(plan: SweepPlan) -> None:
    fs, path = storage.resolve(plan.sweep_dir)
    storage.write_atomic(fs, f"{path}/{SWEEP_FILE}", lambda stream: stream.write(plan.to_json().encode()))


def plan_bytes(sweep_dir: str) -> bytes | None:
    """The sweep.json a folder holds now, as it is; None when it holds none."""
    fs, path = storage.resolve(sweep_dir)
    try:
        return storage.read_bytes(fs, f"{path}/{SWEEP_FILE}")
    except FileNotFoundError:
        return None


def put_back_plan(sweep_dir: str, saved: bytes | None) -> None:
    """Undo a `save_plan` whose command could not start: the sweep.json read before it
    (`plan_bytes`) again, or none."""
    fs, path = storage.resolve(sweep_dir)
    if saved is None:
        storage.delete(fs, f"{path}/{SWEEP_FILE}")
    else:
        storage.write_atomic(fs, f"{path}/{SWEEP_FILE}", lambda stream: stream.write(saved))


def plan_exists(sweep_dir: str) -> bool:
    """Whether the folder already holds a sweep (its sweep.json)."""
    fs, path = storage.resolve(sweep_dir)
    return fs.get_file_info(f"{path.rstrip('/')}/{SWEEP_FILE}").type != storage.pafs.FileType.NotFound


def load_plan(sweep_dir: str) -> SweepPlan:
    """The plan saved in a sweep folder, placed where the folder is now: a copy fetched from a
    cluster's storage reads and writes its own tables, not the original's."""
    where = resolve_storage(sweep_dir).rstrip("/")
    try:
        fs, path = storage.resolve(where)
    except ValueError as exc:  # callers report what they cannot read as not found, with its message
        raise FileNotFoundError(str(exc)) from None
    except OSError as exc:
        raise FileNotFoundError(f"cannot reach the storage of {sweep_dir}: {exc}; check the path, and the network "
                                "and credentials for its storage") from None
    try:
        text = storage.read_bytes(fs, f"{path}/{SWEEP_FILE}")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{sweep_dir} is not a sweep directory (no {SWEEP_FILE}); pass the folder that "
            "`sweep run` printed, e.g. sweeps/digits-20261127-120000"
        ) from None
    except OSError as exc:  # callers report a missing sweep folder; an unreachable one reads the same
        raise FileNotFoundError(
            f"cannot read {sweep_dir}/{SWEEP_FILE}: {exc}; check the path, and the network and "
            "credentials for its storage"
        ) from None
    try:
        plan = SweepPlan.from_json(text.decode())
    except (ValueError, KeyError, TypeError) as exc:
        raise FileNotFoundError(
            f"{sweep_dir}/{SWEEP_FILE} is damaged ({type(exc).__name__}: {exc}); `sweep run` writes it "
            "before any trial starts (and `sweep score --points/--metrics` anew, whole or not at all): restore it "
            "from a copy of the sweep's folder"
        ) from None
    parent, _, name = where.rpartition("/")
    return dataclasses.replace(plan, storage=parent, name=name)


def make_plan(spec: SweepSpec, bundles: list[BundleConfig], *, name: str, storage: str,
              spec_source: str, spec_text: str, spec_suffix: str, gpu_shares: dict[str, float] | None = None,
              scoring_share: float | None = None, scoring_batch: int = SCORING_BATCH) -> SweepPlan:
    """The plan of a run. Trials start in the plan's bundle order, so the costliest bundles go
    first: the trial slots then finish close together, and the checkpoints that take longest
    to score are scored while cheaper bundles still train, not after the last one ends.
    `gpu_shares`, `scoring_share` and `scoring_batch` are the planner's (sweep.plan.planner); CPU
    sweeps need none of them."""
    bundles = sorted(bundles, key=lambda b: -estimate_bundle_work(b, spec.budget))
    resources = dataclasses.asdict(spec.resources)
    shares = gpu_shares or {b.bundle_id: float(resources["gpus_per_trial"]) for b in bundles}
    resources["gpus_per_trial"] = max(shares.values(), default=0.0)  # what the trials ask for at most
    resources["gpus_per_scoring_actor"] = float(
        resources["gpus_per_scoring_actor"] if scoring_share is None else scoring_share)
    resources["scoring_batch"] = scoring_batch
    return SweepPlan(
        name=check_sweep_name(name, "name"),
        storage=storage,
        spec_source=spec_source,
        spec_text=spec_text,
        spec_suffix=spec_suffix,
        bundles=tuple(b.to_dict() for b in bundles),
        checkpoint_every_epochs=spec.checkpoints.every_epochs,
        budget=dataclasses.asdict(spec.budget),
        resources=resources,
        scoring=dataclasses.asdict(spec.scoring),
        gpu_shares={b.bundle_id: shares[b.bundle_id] for b in bundles},
    )


def checkpoints(plan: SweepPlan) -> list[tuple[str, str]]:
    """(bundle_id, checkpoint directory URI) for every checkpoint the sweep has written."""
    fs, root = storage.resolve(plan.sweep_dir)
    return [
        (bundle.removeprefix("bundle-"), storage.join(plan.sweep_dir, bundle, checkpoint))
        for bundle in storage.list_dirs(fs, root, "bundle-")
        for checkpoint in storage.list_dirs(fs, f"{root}/{bundle}", "checkpoint_")
    ]


def own_checkpoints(plan: SweepPlan) -> tuple[list[tuple[str, str]], list[str]]:
    """`checkpoints(plan)` of the plan's bundles, and the URIs of the others: copied in from
    another sweep, they are never scored, counted or trained here."""
    known = {bundle["bundle_id"] for bundle in plan.bundles}
    found = checkpoints(plan)
    return [(b, uri) for b, uri in found if b in known], [uri for b, uri in found if b not in known]


def foreign_message(uris: list[str]) -> str:
    folders = sorted({uri.rstrip("/").rsplit("/", 1)[0] for uri in uris})
    return (f"{len(uris)} checkpoint(s) in {len(folders)} bundle folder(s) not in this sweep's plan ({SWEEP_FILE}), "
            f"left out: {', '.join(folders)}; they come from another sweep: move them to their own sweep's folder")


def local_write_problem(where: str) -> str | None:
    """Why a local storage folder could not take the sweep, found without writing anything (a
    dry run's look); None where it could, or for an object store (a dry run stays offline)."""
    if "://" in where:
        return None
    path = Path(where).absolute()
    existing = next(p for p in (path, *path.parents) if os.path.exists(p))  # False, not an error, where it may not look
    if not existing.is_dir():
        why = f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} does not let this user write"
    else:
        return None
    return f"storage {where} is not writable ({why}); pass --storage with a folder you can write to"


def ensure_writable(where: str) -> None:
    """Fail before Ray starts when the storage cannot take the sweep."""
    fs, path = storage.resolve(where)
    probe = f"{path}/.sweep-write-test-{os.getpid()}"
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except OSError as exc:
        raise PermissionError(
            f"storage {where} is not writable ({exc}); pass --storage with a folder or bucket you can write to"
        ) from None
