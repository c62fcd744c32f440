"""Turns a validated sweep spec into a Ray Tune experiment, and resumes one."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from sweep import storage
from sweep.planner import estimate_bundle_work
from sweep.spec import AUTO, BundleConfig, SweepSpec, check_sweep_name

SWEEP_FILE = "sweep.json"

# How a sweep starts Ray on this machine when no cluster is given. Ray starts workers at nice
# 15 by default; trials at the user's own priority keep background scoring (SCHED_IDLE, see
# sweep.scoring_actors) from taking the ~8% of their cores that the Linux scheduler grants an
# idle-class thread beside a nice-15 one.
LOCAL_RAY = {
    "address": "local",
    "include_dashboard": False,
    "log_to_driver": False,
    "_system_config": {"worker_niceness": 0},
}


@dataclass(frozen=True)
class SweepPlan:
    """Everything a run or a resume needs, saved beside the experiment as sweep.json."""

    name: str
    storage: str
    spec_source: str
    spec_text: str
    spec_suffix: str
    bundles: tuple[dict, ...]
    checkpoint_every_epochs: int | None
    budget: dict
    resources: dict
    scoring: dict
    # bundle_id -> the trial's share of one card (sweep.planner); empty in sweeps planned before
    # shares were per bundle, whose trials take resources["gpus_per_trial"]
    gpu_shares: dict = dataclasses.field(default_factory=dict)

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


def load_plan(sweep_dir: str) -> SweepPlan:
    """The plan saved in a sweep folder, placed where the folder is now: a copy fetched from a
    cluster's storage reads and writes its own tables, not the original's."""
    where = resolve_storage(sweep_dir).rstrip("/")
    try:
        fs, path = storage.resolve(where)
        plan = SweepPlan.from_json(storage.read_bytes(fs, f"{path}/{SWEEP_FILE}").decode())
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
    parent, _, name = where.rpartition("/")
    return dataclasses.replace(plan, storage=parent, name=name)


def make_plan(spec: SweepSpec, bundles: list[BundleConfig], *, name: str, storage: str,
              spec_source: str, spec_text: str, spec_suffix: str, gpu_shares: dict[str, float] | None = None,
              scoring_share: float | None = None) -> SweepPlan:
    """The plan of a run. Trials start in the plan's bundle order, so the costliest bundles go
    first: the trial slots then finish close together, and the checkpoints that take longest
    to score are scored while cheaper bundles still train, not after the last one ends.
    `gpu_shares` and `scoring_share` are the planner's (sweep.planner); CPU sweeps need neither."""
    bundles = sorted(bundles, key=lambda b: -estimate_bundle_work(b, spec.budget))
    resources = dataclasses.asdict(spec.resources)
    shares = gpu_shares or {b.bundle_id: float(resources["gpus_per_trial"]) for b in bundles}
    resources["gpus_per_trial"] = max(shares.values(), default=0.0)  # what the trials ask for at most
    resources["gpus_per_scoring_actor"] = float(
        resources["gpus_per_scoring_actor"] if scoring_share is None else scoring_share)
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


def param_space(plan: SweepPlan, extra: dict | None = None) -> dict:
    from ray import tune

    return {
        "bundle": tune.grid_search(list(plan.bundles)),
        "budget": plan.budget,
        "checkpoint_every_epochs": plan.checkpoint_every_epochs,
        "cpus_per_trial": plan.resources["cpus_per_trial"],
        "gpus_per_trial": plan.resources["gpus_per_trial"],
        "sweep": plan.name,
        "sweep_dir": plan.sweep_dir,
        "table_root": plan.table_root,
        **(extra or {}),
    }


def _trial_dirname(trial) -> str:
    return f"bundle-{trial.config['bundle']['bundle_id']}"


def trial_resources(plan: SweepPlan):
    """config -> the trial's resources: its CPUs and its bundle's share of a card (Ray never lets
    the shares on one card pass 1, so the planner's shares keep each card within its memory)."""
    from ray import tune

    cpus, shares, default = plan.resources["cpus_per_trial"], dict(plan.gpu_shares), plan.resources["gpus_per_trial"]

    def resources(config: dict):
        gpus = shares.get(config["bundle"]["bundle_id"], default)
        return tune.PlacementGroupFactory([{"CPU": cpus, "GPU": gpus}])

    return resources


def _trainable(plan: SweepPlan):
    from ray import tune

    from sweep.trainable import train_bundle

    return tune.with_resources(train_bundle, trial_resources(plan))


def _run_config(plan: SweepPlan, *, score: bool, max_failures: int, progress_stream=None):
    from ray import tune

    from sweep.callbacks import FailedTrialCallback, ProgressCallback, ScoringCallback

    callbacks = [
        ProgressCallback(len(plan.bundles), plan.networks, stream=progress_stream),
        FailedTrialCallback(plan.table_root, plan.name),
    ]
    if score and plan.resources["scoring_actors"] != 0:
        callbacks.append(ScoringCallback(scoring_pool_kwargs(plan), stream=progress_stream))
    return tune.RunConfig(
        name=plan.name,
        storage_path=plan.storage,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        callbacks=callbacks,
        verbose=0,
    )


def scoring_actor_count(plan: SweepPlan) -> int:
    """`resources.scoring_actors`, with `auto` one per GPU of the cluster Ray is connected to
    (on a GPU sweep; at least one, and one on CPUs)."""
    count = plan.resources["scoring_actors"]
    if count != AUTO:
        return max(1, count)
    if not plan.resources["gpus_per_scoring_actor"]:
        return 1
    import ray

    return max(1, int(ray.cluster_resources().get("GPU", 0)))


def scoring_pool_kwargs(plan: SweepPlan, settings=None) -> dict:
    from sweep.score_settings import ScoreSettings

    return {
        "num_actors": scoring_actor_count(plan),
        "cpus_per_actor": plan.resources["cpus_per_scoring_actor"],
        "gpus_per_actor": plan.resources["gpus_per_scoring_actor"],
        "table_root": plan.table_root,
        "settings": settings or ScoreSettings.from_spec(plan.scoring),
    }


def run(plan: SweepPlan, *, score: bool = True, max_failures: int = 2, extra_config: dict | None = None,
        progress_stream=None):
    """Run every bundle of the plan as a Tune trial; returns Tune's ResultGrid."""
    from ray import tune

    save_plan(plan)
    tuner = tune.Tuner(
        _trainable(plan),
        param_space=param_space(plan, extra_config),
        tune_config=tune.TuneConfig(trial_dirname_creator=_trial_dirname, reuse_actors=True),
        run_config=_run_config(plan, score=score, max_failures=max_failures, progress_stream=progress_stream),
    )
    return tuner.fit()


def score(plan: SweepPlan, settings, *, rescore: bool = False) -> dict:
    """Score the sweep's checkpoints that have no scores yet (all of them with `rescore`),
    printing progress every 10 s."""
    from ray import tune

    from sweep.callbacks import drain_printer
    from sweep.checkpoints import unscored
    from sweep.scoring_actors import ScoringPool

    found = checkpoints(plan)
    todo = found if rescore else unscored(plan.table_root, found)
    known = {bundle["bundle_id"] for bundle in plan.bundles}
    foreign = [uri for bundle_id, uri in todo if bundle_id not in known]
    todo = [(bundle_id, uri) for bundle_id, uri in todo if bundle_id in known]
    pool = ScoringPool(**scoring_pool_kwargs(plan, settings))
    for _, uri in todo:
        pool.submit(tune.Checkpoint(uri))
    stats = pool.drain(progress=drain_printer())
    pool.shutdown()
    stats["failed"] += len(foreign)
    stats["failures"] = [*stats["failures"], *(
        f"{uri}: its bundle is not in this sweep's plan ({SWEEP_FILE}): it comes from another sweep; move it "
        "to its own sweep's folder" for uri in foreign)]
    return {"checkpoints": len(found), "scored": len(todo), **stats}


def resume(plan: SweepPlan):
    """Continue an interrupted sweep: finished bundles are kept, the others continue from
    their last checkpoint, errored ones are retried from theirs."""
    from ray import tune

    if not tune.Tuner.can_restore(plan.sweep_dir):
        raise FileNotFoundError(
            f"{plan.sweep_dir} has no Ray Tune experiment state to resume (it was stopped before its "
            "first trial started); start it again with `sweep run`"
        )
    tuner = tune.Tuner.restore(plan.sweep_dir, trainable=_trainable(plan), resume_errored=True)
    return tuner.fit()


def checkpoints(plan: SweepPlan) -> list[tuple[str, str]]:
    """(bundle_id, checkpoint directory URI) for every checkpoint the sweep has written."""
    fs, root = storage.resolve(plan.sweep_dir)
    return [
        (bundle.removeprefix("bundle-"), storage.join(plan.sweep_dir, bundle, checkpoint))
        for bundle in storage.list_dirs(fs, root, "bundle-")
        for checkpoint in storage.list_dirs(fs, f"{root}/{bundle}", "checkpoint_")
    ]


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
