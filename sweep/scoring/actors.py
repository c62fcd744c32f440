"""The Ray side of scoring: actors that keep the metric core and data on their device, and a
pool that hands them checkpoints as they land, without ever blocking its caller.

The pool is driven from the Tune driver's event loop (callbacks), so `submit` queues the
checkpoint and returns. The pool keeps the queue and hands a checkpoint to an actor only when
that actor is free, so no actor sits idle while another holds a backlog (checkpoints differ
in cost by 10x or more). While trials run, a CPU actor scores one checkpoint at a time in the
background; once they are done (`drain`), it leaves the background where the system allows
and scores one per CPU of the cluster share it stands for, in threads of one process, largest first, so the catch-up uses every core
without starting another actor. Actors write their own rows. Results, actor deaths and
hand-outs are handled by non-blocking polls (`submit`, `poll`, called on every step of Tune's
loop) and by `drain`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
import ray

from sweep.command import interrupts
from sweep.plan.planner import SCORING_BATCH
from sweep.scoring.settings import ScoringSettings
from sweep.training.checkpoints import local_size

INTERRUPT_CHECK_S = 0.5  # how often a drain looks for an interrupt while it waits


def set_background(background: bool) -> bool:
    """Give this process only the CPU time nothing else wants (`background`), or its usual
    share again: Linux's SCHED_IDLE or not, for every thread (a policy is per thread; new ones
    inherit it); elsewhere the lowest nice level, which cannot be undone. Leaving SCHED_IDLE needs
    CAP_SYS_NICE or an RLIMIT_NICE that allows the process's nice level, so it may be refused.
    Whether the process is in the background now. (Ray starts workers at nice 15, so nice 19
    alone would still take ~30% of a trial's core.)"""
    if hasattr(os, "SCHED_IDLE") and os.path.isdir("/proc/self/task"):
        policy = os.SCHED_IDLE if background else os.SCHED_OTHER
        try:
            # Again while a pass finds threads of the other policy: one started meanwhile by a
            # thread not yet changed (Ray's and torch's start threads at any time) took its policy.
            for _ in range(10):
                changed = 0
                for thread in os.listdir("/proc/self/task"):
                    with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                        if os.sched_getscheduler(int(thread)) != policy:
                            os.sched_setscheduler(int(thread), policy, os.sched_param(0))
                            changed += 1
                if not changed:
                    break
        except PermissionError:
            return True
        return background
    if hasattr(os, "nice"):
        if background:
            os.nice(19)
        return background or os.getpriority(os.PRIO_PROCESS, 0) >= 19
    return False


@ray.remote
class ScoringActor:
    """A `sweep.scoring.scorer.Scorer` in its own process. A CPU actor made for the background
    takes the cycles training leaves idle, so trials are not slowed, from before the Scorer and
    torch are imported, so even its start spares the trials; each call says whether it still
    runs beside trials (a drain's catch-up does not)."""

    def __init__(self, threads: int, background: bool):
        self._background = set_background(True) if background else False
        from sweep.scoring.scorer import Scorer

        self._scorer = Scorer(threads=threads)

    def score(self, sources: list, table_root: str, settings: ScoringSettings, background: bool = False) -> list[dict]:
        if background != self._background:
            self._background = set_background(background)
        return self._scorer.score_many(sources, table_root, settings)

    def in_background(self) -> bool:
        return self._background


@dataclass
class _Job:
    source: object  # a checkpoint directory path / URI, or a ray.tune.Checkpoint
    attempts: int = 0


@dataclass(frozen=True)
class _Task:
    slot: int
    generation: int  # which actor of the slot ran it: a dead actor is replaced only once
    jobs: tuple[_Job, ...]  # scored in one call


class ScoringPool:
    """`num_actors` scoring actors, each given one checkpoint at a time from the pool's queue.

    GPU actors take `gpus_per_actor` (a fraction when they share the card with trials); CPU
    actors take `cpus_per_actor` and one torch thread per whole CPU, and run in the
    background (see `set_background`) outside `drain` unless `background` is false (no trials
    beside them). A CPU actor scores one checkpoint at a time, and during `drain` up to its
    share of the cluster's CPUs at once, in the foreground. An actor that dies is
    replaced and the checkpoint it held is redone up to `max_retries` times, then recorded as
    failed rows.
    """

    def __init__(
        self,
        table_root: str,
        settings: ScoringSettings,
        num_actors: int = 1,
        cpus_per_actor: float = 0.5,
        gpus_per_actor: float = 0.0,
        max_retries: int = 1,
        batch: int = SCORING_BATCH,
        background: bool = True,
    ):
        if num_actors < 1:
            raise ValueError(f"resources.scoring_actors must be at least 1, got {num_actors}")
        self.table_root = table_root
        self.settings = settings
        self.max_retries = max_retries
        # A GPU actor scores a checkpoint in a fraction of a second: look on every call, so it
        # never waits for its next one, and give it what is queued in one call (up to `batch`,
        # the planner's `scoring_batch`, which its memory is sized for), which it scores as one
        # stacked population per shape.
        self.poll_interval_s = 0.0 if gpus_per_actor else 0.2
        self._batch = batch if gpus_per_actor else 1
        self._resources = {"num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor}
        self._threads = max(1, round(cpus_per_actor))
        self._background = background and not gpus_per_actor
        self._draining = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self._drain_slots = 1 if gpus_per_actor else max(1, cpus // (num_actors * self._threads))
        self._slots = 1
        self._actors = [self._start_actor() for _ in range(num_actors)]
        self._generation = [0] * num_actors
        self._running: dict[ray.ObjectRef, _Task] = {}
        self._queue: deque[_Job] = deque()
        self._counts: Counter[str] = Counter()
        self._failures: list[str] = []
        self._started: float | None = None
        self._next_poll = 0.0

    def submit(self, checkpoint) -> None:
        """Queue a checkpoint for the next free actor; returns at once."""
        if self._started is None:
            self._started = time.monotonic()
        self._counts["submitted"] += 1
        self._queue.append(_Job(checkpoint))
        self._hand_out()

    def poll(self) -> None:
        """Collect finished work (replacing dead actors, redoing their work) and hand queued
        checkpoints to free actors; never waits. Looks at most every `poll_interval_s` (0.2 s for
        CPU actors): Tune calls it tens of times a second, and each look costs the driver ~0.3 ms
        of CPU that the trials need, while a CPU actor takes seconds per checkpoint."""
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + self.poll_interval_s
        if self._running:
            ready, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
            for ref in ready:
                self._finish(ref)
        self._hand_out()

    def drain(
        self,
        timeout: float | None = None,
        progress: Callable[[dict], None] | None = None,
        every_s: float = 10.0,
    ) -> dict:
        """Wait until every submitted checkpoint is scored or recorded as failed (or `timeout`
        seconds pass: then `stats()` says how many are running and queued). `progress`, if
        given, gets `stats()` as the drain starts and then every `every_s` seconds until it ends,
        so a long catch-up is never silent."""
        if not every_s > 0:
            raise ValueError(f"every_s must be a positive number of seconds, got {every_s}")
        deadline = None if timeout is None else time.monotonic() + timeout
        self._slots, self._draining = self._drain_slots, True  # nothing else to leave the CPUs to
        # Largest first, so the slots finish together rather than one scoring a big checkpoint
        # alone at the end (sizes are looked up here, not in `submit`, which must never wait on
        # storage; checkpoints in an object store keep the order they landed in).
        self._queue = deque(sorted(self._queue, key=lambda job: -local_size(job.source)))
        report = time.monotonic() if progress else None
        try:
            if not interrupts.requested():
                self._hand_out()
            # An interrupt (Ctrl-C, SIGTERM) ends the drain within INTERRUPT_CHECK_S: what is
            # queued or running stays unscored, for `sweep resume` or `sweep score`.
            while self._running and not interrupts.requested():
                now = time.monotonic()
                if report is not None and now >= report:
                    progress(self.stats())
                    report = now + every_s
                until = min(t for t in (deadline, report, now + INTERRUPT_CHECK_S) if t is not None)
                ready, _ = ray.wait(list(self._running), num_returns=1, timeout=max(0.0, until - now))
                if ready:
                    self._finish(ready[0])
                    if not interrupts.requested():
                        self._hand_out()
                elif deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            self._slots, self._draining = 1, False
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
            "queued": len(self._queue),
            "elapsed_s": elapsed,
            "checkpoints_per_s": rate(counts["done"]),
            "points_per_s": rate(counts["points"]),
            "failures": list(self._failures),
        }

    def actors(self) -> list:
        """The current actor handles (for monitoring; replaced actors are not listed)."""
        return list(self._actors)

    def shutdown(self) -> None:
        """Stop the actors (work still running or queued is lost; call `drain` first)."""
        for actor in self._actors:
            ray.kill(actor)
        self._actors.clear()
        self._running.clear()
        self._queue.clear()

    def _start_actor(self):
        # Ray restarts an actor lost with its node on a live node and re-runs its task (scoring
        # is idempotent, so a re-run is safe); a replacement made by the pool right away
        # could land on the dying node before Ray declares it dead.
        return ScoringActor.options(
            **self._resources, max_concurrency=self._drain_slots, max_restarts=3, max_task_retries=3
        ).remote(threads=self._threads, background=self._background)

    def _hand_out(self) -> None:
        load = Counter(task.slot for task in self._running.values())
        for slot in range(len(self._actors)):
            while self._queue and load[slot] < self._slots:
                jobs = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
                self._dispatch(jobs, slot)
                load[slot] += 1

    def _dispatch(self, jobs: list[_Job], slot: int) -> None:
        for job in jobs:
            job.attempts += 1
        ref = self._actors[slot].score.remote([job.source for job in jobs], self.table_root, self.settings,
                                              background=self._background and not self._draining)
        self._running[ref] = _Task(slot, self._generation[slot], tuple(jobs))

    def _finish(self, ref: ray.ObjectRef) -> None:
        task = self._running.pop(ref)
        try:
            summaries = ray.get(ref)
        except ray.exceptions.RayActorError as error:
            self._replace(task)
            for job in reversed(task.jobs):
                if job.attempts <= self.max_retries:
                    self._counts["retried"] += 1
                    self._queue.appendleft(job)
                else:
                    self._fail(job, f"scoring actor died {job.attempts} time(s): {_first_line(error)}")
            return
        except ray.exceptions.RayError as error:
            for job in task.jobs:
                self._fail(job, f"scoring task failed: {_first_line(error)}")
            return
        for summary in summaries:
            self._count(summary)

    def _count(self, summary: dict) -> None:
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
        from sweep.scoring.scorer import record_failure

        self._counts["failed"] += 1
        self._failures.append(record_failure(self.table_root, job.source, self.settings, message))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
