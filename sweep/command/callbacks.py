"""Tune callbacks that run on the driver: progress, failure rows and scoring hand-off.

They are pickled into the experiment state with the run config, so they hold only plain
settings; the scoring pool is created in `setup` and never pickled.
"""

from __future__ import annotations

import sys
import time

from ray import tune

from sweep.command import interrupts
from sweep.plan.datasets import dataset_info
from sweep.plan.networks import BundleConfig, network_row, param_count
from sweep.scoring.actors import ScoringPool
from sweep.scoring.table_writer import TableWriter


class ProgressCallback(tune.Callback):
    """One line of progress: bundles done/running/left, networks converged/diverged, time left.

    Time left: the share of the sweep's work done, each bundle weighted by its projected training
    time and counted done in proportion to its epochs against those it is expected to train
    (`weights`: bundle_id -> (seconds, epochs), from `sweep.plan.costs.progress_weights`), and the
    rate at which that share has grown since this run's first progress line. Without weights, bundles count
    equally and only when finished.

    `finished` (bundle_id -> its networks' counts by status), for a resumed sweep: the bundles
    finished before, counted so from the first line, not once their trials (restored as Tune's
    last snapshot left them) have found their `end` checkpoints again."""

    # for callbacks pickled before these were arguments (a Ray Client's resume keeps them); never mutated
    quiet_s = 30.0
    finished: dict[str, dict[str, int]] = {}

    def __init__(self, total_bundles: int, total_networks: int, every_s: float = 5.0, stream=None,
                 weights: dict[str, tuple[float, float]] | None = None, quiet_s: float = 30.0,
                 finished: dict[str, dict[str, int]] | None = None):
        self.total_bundles = total_bundles
        self.finished = finished or {}
        self.total_networks = total_networks
        self.every_s = every_s
        self.quiet_s = quiet_s
        self.weights = weights or {}
        self._stream = stream
        self._last: dict[str, dict] = {}
        self._started = time.monotonic()
        self._printed = 0.0
        # (share done, seconds elapsed) at this run's first line: the rate is measured from there,
        # after Ray's start, and on a resumed sweep without the work done before
        self._baseline: tuple[float, float] | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_stream"] = None
        return state

    def setup(self, **info):
        self._started = time.monotonic()
        interrupts.tell_tune()  # Tune installed its handler just now: a signal before it still stops the run

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._last[trial.trial_id] = result
        self._print(trials)

    def on_step_end(self, iteration, trials, **info):
        # No trial reported for a while (long epochs, or none running): the line still comes, and
        # says when the sweep waits for Ray to give a trial its resources.
        if time.monotonic() - max(self._printed, self._started) >= self.quiet_s:
            self._print(trials, force=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trials, force=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A lost worker node or a crash: say so, since the retry itself is silent.
        checkpoint = trial.checkpoint
        start = f"its last checkpoint ({checkpoint.path.rstrip('/').rsplit('/', 1)[-1]})" if checkpoint else "the start"
        print(f"[sweep] bundle {trial.config['bundle']['bundle_id']}: {_error_message(trial)}; retrying from {start}",
              file=self._stream or sys.stdout, flush=True)

    def _print(self, trials, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._printed < self.every_s:
            return
        self._printed = now
        print(self.line(trials, now - self._started), file=self._stream or sys.stdout, flush=True)

    def _done(self, trial) -> bool:
        return trial.status in ("TERMINATED", "ERROR") or trial.config["bundle"]["bundle_id"] in self.finished

    def _result(self, trial) -> dict:
        return (self.finished.get(trial.config["bundle"]["bundle_id"]) or self._last.get(trial.trial_id)
                or trial.last_result or {})

    def line(self, trials, elapsed: float) -> str:
        done = sum(self._done(t) for t in trials)
        running = sum(t.status == "RUNNING" and not self._done(t) for t in trials)
        left = self.total_bundles - done - running
        totals = {"converged": 0, "diverged": 0, "budget": 0}
        for trial in trials:
            result = self._result(trial)
            for key in totals:
                totals[key] += int(result.get(key, 0) or 0)
        fraction = self.fraction_done(trials)
        if self._baseline is None:
            self._baseline = (fraction, elapsed)
        gained, since = fraction - self._baseline[0], elapsed - self._baseline[1]
        eta = f"{since * (1 - fraction) / gained:.0f}s" if gained > 0 else "?"
        stalled = (" | none running: waiting for Ray to give a trial its resources (other work on the cluster, "
                   "or no node large enough)") if left and not running else ""
        return (
            f"[sweep] bundles {done}/{self.total_bundles} done, {running} running, {left} waiting | "
            f"networks {totals['converged']} converged, {totals['diverged']} diverged, "
            f"{totals['budget']} at budget of {self.total_networks} | "
            f"elapsed {elapsed:.0f}s, about {eta} left{stalled}"
        )


    def fraction_done(self, trials) -> float:
        """The share of the sweep's work done (class docstring)."""
        total = sum(seconds for seconds, _ in self.weights.values()) or self.total_bundles
        done = 0.0
        for trial in trials:
            seconds, epochs = self.weights.get(trial.config["bundle"]["bundle_id"], (1.0, 0.0))
            if self._done(trial):
                done += seconds
            elif epochs:
                result = self._result(trial)
                # A bundle past its expected epochs is not done until it says so.
                done += seconds * min(0.99, float(result.get("epoch", 0) or 0) / epochs)
        return min(1.0, done / total)


class FailedTrialCallback(tune.Callback):
    """A trial that exhausted its retries still leaves one `networks` row per member."""

    def __init__(self, table_root: str, sweep: str):
        self.table_root = table_root
        self.sweep = sweep

    def on_trial_error(self, iteration, trials, trial, **info):
        bundle = BundleConfig.from_dict(trial.config["bundle"])
        message = _error_message(trial)
        rows = [failed_row(member, bundle.bundle_id, self.sweep, message) for member in bundle.members]
        try:
            TableWriter(self.table_root).write("networks", bundle.bundle_id, rows)
        except OSError as exc:  # the storage that failed the trial may fail this too: say so, go on
            print(f"[sweep] bundle {bundle.bundle_id}: its failure could not be recorded either ({exc}); "
                  "`sweep resume` trains it again", file=sys.stderr, flush=True)


def failed_row(member, bundle_id: str, sweep: str, message: str) -> dict:
    """The `networks` row of a network whose trial failed: its settings, no results."""
    info = dataset_info(member.dataset)
    params = None if info.image_shape is None else param_count(member, info)
    return network_row(member, bundle_id, sweep=sweep, status="failed", param_count=params, message=message)


def _error_message(trial) -> str:
    error_file = getattr(trial, "error_file", None)
    text = ""
    if error_file:
        try:
            with open(error_file) as f:
                text = f.read().strip().splitlines()[-1]
        except OSError:
            text = ""
    return f"trial failed after {trial.num_failures} attempt(s): {text or 'see the trial log'}"


class ScoringCallback(tune.Callback):
    """Hands every reported checkpoint to the scoring pool; never waits on scoring until the
    experiment ends, then drains the pool, saying how far it has got."""

    def __init__(self, pool_kwargs: dict, stream=None):
        self.pool_kwargs = pool_kwargs
        self.pool = None
        self._stream = stream

    def __getstate__(self):
        state = self.__dict__.copy()
        state["pool"] = None
        state["_stream"] = None
        return state

    def setup(self, **info):
        self.pool = ScoringPool(**self.pool_kwargs)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.pool.submit(checkpoint)

    def on_step_end(self, iteration, trials, **info):
        self.pool.poll()  # hands queued checkpoints to actors that finished, notices dead ones

    def on_experiment_end(self, trials, **info):
        stats = self.pool.drain(progress=drain_printer(self._stream))
        self.pool.shutdown()
        print(scoring_summary(stats), flush=True)


def drain_printer(stream=None):
    """A `ScoringPool.drain` progress callback printing one line per call to `stream` (stdout)."""
    started = time.monotonic()

    def report(stats: dict) -> None:
        print(drain_line(stats, time.monotonic() - started), file=stream or sys.stdout, flush=True)

    return report


def drain_line(stats: dict, elapsed: float) -> str:
    finished = stats["done"] + stats["failed"]
    return (f"[sweep] scoring: {finished} of {stats['submitted']} checkpoint(s) done ({stats['failed']} failed), "
            f"{stats['running']} running, {stats['queued']} waiting | {elapsed:.0f}s")


def scoring_summary(stats: dict) -> str:
    line = (f"[sweep] scored {stats['done']} checkpoint(s), {stats['failed']} failed, "
            f"{stats['retried']} retried after an actor was lost")
    return "\n".join([line, *(f"[sweep]   failed: {f}" for f in stats["failures"])])
