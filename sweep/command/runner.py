"""Runs a sweep's plan as a Ray Tune experiment (and resumes one), with its scoring actors."""

from __future__ import annotations

import dataclasses
import functools

import pyarrow
import ray
from ray import tune

from sweep.command.callbacks import FailedTrialCallback, ProgressCallback, ScoringCallback, drain_printer
from sweep.command.status import finished_without_rows
from sweep.plan import costs
from sweep.plan.networks import BundleConfig
from sweep.plan.planner import SCORING_BATCH
from sweep.plan.spec import AUTO, Budget
from sweep.plan.sweep_plan import SweepPlan, own_checkpoints, save_plan
from sweep.scoring.actors import ScoringPool
from sweep.scoring.settings import ScoringSettings
from sweep.scoring.table_writer import TableWriter
from sweep.training.checkpoints import unscored

# How a sweep starts Ray on this machine when no cluster is given. Ray starts workers at nice
# 15 by default; trials at the user's own priority keep background scoring (SCHED_IDLE, see
# sweep.scoring.actors) from taking the ~8% of their cores that the Linux scheduler grants an
# idle-class thread beside a nice-15 one.
LOCAL_RAY = {
    "address": "local",
    "include_dashboard": False,
    "log_to_driver": False,
    "_system_config": {"worker_niceness": 0},
}


def param_space(plan: SweepPlan, extra: dict | None = None) -> dict:
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

    def resources(config: dict):
        cpus, gpus = bundle_resources(plan, config["bundle"]["bundle_id"])
        return tune.PlacementGroupFactory([{"CPU": cpus, "GPU": gpus}])

    return resources


def bundle_resources(plan: SweepPlan, bundle_id: str) -> tuple[float, float]:
    """(CPUs, share of a card) of the bundle's trial."""
    return plan.resources["cpus_per_trial"], plan.gpu_shares.get(bundle_id, plan.resources["gpus_per_trial"])


def unplaceable(plan: SweepPlan, *, trials: bool, scoring: bool) -> list[str]:
    """What no live node of the cluster Ray is connected to could give: a trial (with `trials`)
    or a scoring actor (with `scoring`: where the command starts one). Ray leaves such a one
    waiting, silently, until a node that can give it joins (an autoscaler's)."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    asks = []
    if trials:
        needs = {bundle_resources(plan, bundle["bundle_id"]) for bundle in plan.bundles}
        asks.append(("a trial", "resources.cpus_per_trial and gpus_per_trial", max(needs)))
    if scoring:
        asks.append(("a scoring actor", "resources.cpus_per_scoring_actor and gpus_per_scoring_actor",
                     (plan.resources["cpus_per_scoring_actor"], plan.resources["gpus_per_scoring_actor"])))
    problems = []
    for what, keys, (cpus, gpus) in asks:
        if any(node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus for node in nodes):
            continue
        most = {key: max((node.get(key, 0) for node in nodes), default=0) for key in ("CPU", "GPU")}
        problems.append(
            f"no node of the Ray cluster has the {cpus:g} CPU core(s) and {gpus:g} GPU(s) {what} asks ({keys}); "
            f"of its {len(nodes)} node(s), the most CPU cores one has are {most['CPU']:g}, the most GPUs "
            f"{most['GPU']:g}. Ray keeps it waiting until such a node joins (an "
            f"autoscaler's); if none will, stop with Ctrl-C and ask for less")
    return problems


def _trainable(plan: SweepPlan):
    # Imported here: the trainable imports torch, which `sweep score` and `status` never need.
    from sweep.training.trainable import train_bundle

    where = {"sweep": plan.name, "sweep_dir": plan.sweep_dir, "table_root": plan.table_root}

    @functools.wraps(train_bundle)  # Tune restores a trainable only under its first name
    def train(config: dict) -> None:
        # Where the sweep is now and its name there, not what Tune's saved trial configs say (a moved or copied sweep).
        train_bundle({**config, **where})

    return tune.with_resources(train, trial_resources(plan))


def progress_weights(plan: SweepPlan) -> dict[str, tuple[float, float]]:
    """The progress line's weights (`costs.progress_weights`) on the kind of device the trials use."""
    gpus = any(plan.gpu_shares.values()) or bool(plan.resources["gpus_per_trial"])
    device = costs.reference_gpu() if gpus else costs.reference_cpu()
    return costs.progress_weights([BundleConfig.from_dict(b) for b in plan.bundles], Budget(**plan.budget), device)


def finished_bundles(plan: SweepPlan) -> dict[str, dict[str, int]]:
    """Per bundle with `networks` rows, none failed: its networks' counts by status (the progress
    line's `finished`). A damaged networks file gives none here: resume names it at its end."""
    try:
        networks = TableWriter(plan.table_root).read("networks")
    except (OSError, pyarrow.ArrowException):
        return {}
    if not len(networks):
        return {}
    failed = set(networks.loc[networks["status"] == "failed", "bundle_id"])
    kept = networks[~networks["bundle_id"].isin(failed)]
    return {str(bundle): {str(status): int(n) for status, n in rows["status"].value_counts().items()}
            for bundle, rows in kept.groupby("bundle_id", observed=True)}


def _run_config(plan: SweepPlan, *, score: bool, max_failures: int, progress_stream=None):
    callbacks = [
        ProgressCallback(len(plan.bundles), plan.networks, stream=progress_stream, weights=progress_weights(plan),
                         finished=finished_bundles(plan)),
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
    return max(1, int(ray.cluster_resources().get("GPU", 0)))


def scoring_pool_kwargs(plan: SweepPlan, settings=None) -> dict:
    return {
        "num_actors": scoring_actor_count(plan),
        "cpus_per_actor": plan.resources["cpus_per_scoring_actor"],
        "gpus_per_actor": plan.resources["gpus_per_scoring_actor"],
        # sweeps planned before the batch was sized to the card took the most
        "batch": plan.resources.get("scoring_batch", SCORING_BATCH),
        "table_root": plan.table_root,
        "settings": settings or ScoringSettings.from_dict(plan.scoring),
    }


def run(plan: SweepPlan, *, score: bool = True, max_failures: int = 2, extra_config: dict | None = None,
        progress_stream=None):
    """Run every bundle of the plan as a Tune trial; returns Tune's ResultGrid."""
    save_plan(plan)
    tuner = tune.Tuner(
        _trainable(plan),
        param_space=param_space(plan, extra_config),
        tune_config=tune.TuneConfig(trial_dirname_creator=_trial_dirname, reuse_actors=True),
        run_config=_run_config(plan, score=score, max_failures=max_failures, progress_stream=progress_stream),
    )
    return tuner.fit()


def restore_network_rows(plan: SweepPlan) -> tuple[int, list[str]]:
    """Write again, from their `end` checkpoints, the `networks` files of finished bundles that
    have none (deleted as damaged, or lost with a copy): Tune never runs a finished trial again.
    One Ray task per such bundle, on one CPU whatever the trial had (the trainer's state is CPU
    tensors, and a card share the cluster no longer has would leave it waiting): its losses and
    accuracies then agree with a card's to float32 rounding. Returns (bundles restored, why
    others could not be)."""
    from sweep.training.trainable import rebuild_network_rows

    ended, _ = finished_without_rows(plan, set(TableWriter(plan.table_root).keys("networks")),
                                     own_checkpoints(plan)[0])
    lacking = [bundle for bundle in plan.bundles if bundle["bundle_id"] in ended]
    task = ray.remote(num_cpus=1, num_gpus=0)(rebuild_network_rows)
    config = {**param_space(plan), "cpus_per_trial": 1, "gpus_per_trial": 0}
    refs = {bundle["bundle_id"]: task.remote({**config, "bundle": bundle}) for bundle in lacking}
    restored, failures = 0, []
    for bundle_id, ref in refs.items():
        try:
            written = ray.get(ref)
        except ray.exceptions.RayError as exc:  # one bundle's: the others and the scoring go on
            failures.append(f"bundle {bundle_id}: {getattr(exc, 'cause', None) or exc}")
            continue
        if written:
            restored += 1
        else:  # its `end` checkpoint went between the look and the task
            failures.append(f"bundle {bundle_id}: its end checkpoint is no longer there")
    return restored, failures


def score(plan: SweepPlan, settings, *, rescore: bool = False) -> dict:
    """Score the sweep's checkpoints that have no scores yet, whose scoring failed for a network,
    or that were scored with other settings than `settings` (all of them with `rescore`),
    printing progress every 10 s. Checkpoints of bundles the plan lacks are left out, listed
    under "foreign"."""
    found, foreign = own_checkpoints(plan)
    if rescore:
        todo = found
    else:
        stale = TableWriter(plan.table_root).stale_keys(dataclasses.asdict(settings), plan.unrecorded_scoring)
        todo = unscored(plan.table_root, found, failed=True, stale=stale)
    pool = ScoringPool(**scoring_pool_kwargs(plan, settings), background=False)  # no trials to leave the CPUs to
    for _, uri in todo:
        pool.submit(tune.Checkpoint(uri))
    stats = pool.drain(progress=drain_printer())
    pool.shutdown()
    # scored, or recorded as failed: not those a signal left queued or running
    return {"checkpoints": len(found), "scored": stats["done"] + stats["failed"], "foreign": foreign, **stats}


def resume(plan: SweepPlan):
    """Continue an interrupted sweep: finished bundles are kept, the others continue from
    their last checkpoint, errored ones are retried from theirs. A sweep stopped before Ray Tune
    wrote its first snapshot is started (a bundle whose `end` checkpoint is on the storage is
    still not trained again)."""
    if not tune.Tuner.can_restore(plan.sweep_dir):
        return run(plan)
    tuner = tune.Tuner.restore(plan.sweep_dir, trainable=_trainable(plan), resume_errored=True)
    # Tune restores the callbacks it saved when the sweep started, with the tables' location and
    # scoring settings of then; they are made again from the plan as it is now (moved or copied,
    # or rescored with new settings), scoring during training as the run did or did not (--no-score).
    # Ray has no public way to (ray-project/ray#41364); a Ray Client tuner has no local one.
    if tuner._local_tuner is not None:
        run_config = tuner._local_tuner.get_run_config()
        score = any(isinstance(callback, ScoringCallback) for callback in run_config.callbacks or [])
        run_config.callbacks = _run_config(plan, score=score, max_failures=2).callbacks
    return tuner.fit()
