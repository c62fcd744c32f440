"""The Ray side of scoring: actors that keep the metric core and data on their device, and a
pool that hands them checkpoints as they land, without ever blocking its caller.

The pool is driven from the Tune driver's event loop (a callback's `on_checkpoint`), so
`submit` sends the checkpoint straight to the least-loaded actor (Ray queues it there) and
returns; actors write their own rows, so scoring progresses with no polling. Results, and
actor deaths, are collected by non-blocking polls in `submit`/`poll` and by `drain`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import ray

from sweep.scoring import Scorer, ScoreSettings, record_failure

ScoringActor = ray.remote(Scorer)


@dataclass
class _Job:
    source: object  # a checkpoint directory path / URI, or a ray.tune.Checkpoint
    attempts: int = 0


@dataclass(frozen=True)
class _Task:
    slot: int
    generation: int  # which actor of the slot ran it: a dead actor is replaced only once
    job: _Job


class ScoringPool:
    """`num_actors` scoring actors, each scoring its queued checkpoints one at a time.

    GPU actors take `gpus_per_actor` (a fraction when they share the card with trials); CPU
    actors take `cpus_per_actor` (default half a CPU, so they do not starve trials) and one
    torch thread per whole CPU. An actor that dies is replaced and each checkpoint it held is
    redone up to `max_retries` times, then recorded as failed rows.
    """

    def __init__(
        self,
        table_root: str,
        settings: ScoreSettings,
        num_actors: int = 1,
        cpus_per_actor: float = 0.5,
        gpus_per_actor: float = 0.0,
        max_retries: int = 1,
    ):
        if num_actors < 1:
            raise ValueError(f"resources.scoring_actors must be at least 1, got {num_actors}")
        self.table_root = table_root
        self.settings = settings
        self.max_retries = max_retries
        self._resources = {"num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor}
        self._actors = [self._start_actor() for _ in range(num_actors)]
        self._generation = [0] * num_actors
        self._load = [0] * num_actors
        self._running: dict[ray.ObjectRef, _Task] = {}
        self._counts: Counter[str] = Counter()
        self._failures: list[str] = []
        self._started: float | None = None

    def submit(self, checkpoint) -> None:
        """Send a checkpoint to the least-loaded actor; returns at once."""
        if self._started is None:
            self._started = time.monotonic()
        self._counts["submitted"] += 1
        self._dispatch(_Job(checkpoint))
        self.poll()

    def poll(self) -> None:
        """Collect finished work (replacing dead actors, redoing their work); never waits."""
        if self._running:
            ready, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
            for ref in ready:
                self._finish(ref)

    def drain(self, timeout: float | None = None) -> dict:
        """Wait until every submitted checkpoint is scored or recorded as failed (or `timeout`
        seconds pass: then `stats()["running"]` says how many are left)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._running:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(self._running), num_returns=1, timeout=remaining)
            if not ready:
                break
            self._finish(ready[0])
        return self.stats()

    def stats(self) -> dict:
        """Progress: counts, throughput since the first submit, and one line per failure."""
        elapsed = 0.0 if self._started is None else time.monotonic() - self._started
        rate = (lambda count: count / elapsed) if elapsed > 0 else (lambda count: 0.0)
        counts = {
            name: self._counts[name]
            for name in ("submitted", "done", "failed", "retried", "replaced", "members", "failed_members", "points")
        }
        return {
            **counts,
            "running": len(self._running),
            "elapsed_s": elapsed,
            "checkpoints_per_s": rate(counts["done"]),
            "points_per_s": rate(counts["points"]),
            "failures": list(self._failures),
        }

    def actors(self) -> list:
        """The current actor handles (for monitoring; replaced actors are not listed)."""
        return list(self._actors)

    def shutdown(self) -> None:
        """Stop the actors (work still running is lost; call `drain` first to finish it)."""
        for actor in self._actors:
            ray.kill(actor)
        self._actors.clear()
        self._running.clear()

    def _start_actor(self):
        threads = max(1, round(self._resources["num_cpus"]))
        # Ray restarts an actor lost with its node on a live node and re-runs its queued tasks
        # (scoring is idempotent, so a re-run is safe); a replacement made by the pool right away
        # could land on the dying node before Ray declares it dead.
        return ScoringActor.options(**self._resources, max_restarts=3, max_task_retries=3).remote(threads=threads)

    def _dispatch(self, job: _Job) -> None:
        slot = min(range(len(self._actors)), key=self._load.__getitem__)
        job.attempts += 1
        ref = self._actors[slot].score.remote(job.source, self.table_root, self.settings)
        self._running[ref] = _Task(slot, self._generation[slot], job)
        self._load[slot] += 1

    def _finish(self, ref: ray.ObjectRef) -> None:
        task = self._running.pop(ref)
        job = task.job
        self._load[task.slot] -= 1
        try:
            summary = ray.get(ref)
        except ray.exceptions.RayActorError as error:
            self._replace(task)
            if job.attempts <= self.max_retries:
                self._counts["retried"] += 1
                self._dispatch(job)
            else:
                self._fail(job, f"scoring actor died {job.attempts} time(s): {_first_line(error)}")
            return
        except ray.exceptions.RayError as error:
            self._fail(job, f"scoring task failed: {_first_line(error)}")
            return
        if summary["key"] is None:  # the checkpoint's metadata could not be read: no rows possible
            self._counts["failed"] += 1
            self._failures.append(summary["message"])
            return
        self._counts["done"] += 1
        for name in ("members", "failed_members", "points"):
            self._counts[name] += summary[name]
        if summary["message"]:
            self._failures.append(f"{summary['key']}: {summary['message']}")

    def _replace(self, task: _Task) -> None:
        if self._generation[task.slot] != task.generation:
            return  # another task of the same dead actor already replaced it
        ray.kill(self._actors[task.slot])  # make sure a half-dead actor does not linger
        self._actors[task.slot] = self._start_actor()
        self._generation[task.slot] += 1
        self._counts["replaced"] += 1

    def _fail(self, job: _Job, message: str) -> None:
        self._counts["failed"] += 1
        self._failures.append(record_failure(self.table_root, job.source, self.settings, message))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
