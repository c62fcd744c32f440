"""What a sweep has produced so far, read from its storage alone (no Ray needed)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

from sweep.plan import storage
from sweep.plan.sweep_plan import SWEEP_FILE, SweepPlan, foreign_message, own_checkpoints
from sweep.scoring.table_writer import TableWriter, checkpoint_key
from sweep.training.checkpoints import CheckpointError, read_meta, table_keys, unscored


class Scoring(NamedTuple):
    """The sweep's checkpoints, those without scores of the plan's settings (none, or of other
    settings), and the keys of `scores` files with failed rows (or unreadable) and of those
    scored with other settings: what `status` counts and `run`/`resume` report."""

    found: list
    waiting: list
    failed: list[str]
    stale: list[str]
    stale_gone: list[str]  # of `stale`, those whose checkpoint is not among `found`
    foreign: list[str]  # checkpoints of bundles the plan lacks (not in `found`)


def scoring_state(plan: SweepPlan) -> Scoring:
    found, foreign = own_checkpoints(plan)
    keys = table_keys(found)
    tables = TableWriter(plan.table_root)
    stale = tables.stale_keys(plan.scoring, plan.unrecorded_scoring)
    return Scoring(found, unscored(plan.table_root, found, stale=stale, keys=keys), tables.failed_keys(), stale,
                   sorted(set(stale) - set(keys)), foreign)


def describe(plan: SweepPlan, scoring: Scoring | None = None) -> str:
    """What `sweep status` prints; `scoring` when the caller has read it already."""
    networks = TableWriter(plan.table_root).read("networks")
    done_bundles = set(networks["bundle_id"]) if len(networks) else set()
    counts = networks["status"].value_counts() if len(networks) else {}
    found, waiting, failed, stale, stale_gone, foreign = scoring or scoring_state(plan)
    ended, copied = finished_without_rows(plan, done_bundles, found)
    started = len({bundle_id for bundle_id, _ in found} - done_bundles - ended)  # rows come when they finish
    lines = [
        f"sweep {plan.name} at {plan.sweep_dir}",
        f"  bundles: {len(done_bundles | ended | copied)} of {len(plan.bundles)} finished"
        + (f", {started} started (their networks are recorded when they finish)" if started else ""),
        f"  networks: {len(networks)} of {plan.networks} recorded"
        + "".join(f", {int(counts.get(s, 0))} {s}" for s in ("converged", "budget", "diverged", "failed"))
        + _full_at_budget(networks),
        f"  checkpoints: {len(found)} written, {len(found) - len(waiting)} scored"
        + (f" ({len(failed)} with a network whose scoring failed, or an unreadable scores file)" if failed else "")
        + _without_checkpoints(plan, found),
        *_stale_lines(plan, stale, stale_gone),
        *([f"  {foreign_message(foreign)}"] if foreign else []),
        f"  tables: {plan.table_root}",
    ]
    if ended:
        lines.append(f"  {len(ended)} finished bundle(s) have no networks file (deleted or not copied): `sweep resume "
                     f"{plan.sweep_dir}` writes it again from their end checkpoints")
    if copied:
        lines.append(f"  {len(copied)} finished bundle(s) have scores but neither a networks file nor their checkpoints "
                     "here: copy tables/networks/<bundle>.parquet again from the sweep's storage")
    return "\n".join(lines)


def _full_at_budget(networks) -> str:
    """Budget networks at 100% train accuracy (budget.stop_at_full_train_acc: false trains them on)."""
    if not len(networks):
        return ""
    full = int(((networks["status"] == "budget") & (networks["train_acc"] >= 1.0)).sum())
    return f" ({full} of the budget ones at 100% train accuracy)" if full else ""


def _stale_lines(plan: SweepPlan, stale: list[str], gone: list[str]) -> list[str]:
    """Scores of other settings than the plan's (a rescore with new settings cut short, or one that
    found a bundle's checkpoints gone) mix two sets of settings in one table."""
    lines = []
    if len(stale) > len(gone):
        lines.append(f"  {len(stale) - len(gone)} checkpoint(s) scored with other settings than {SWEEP_FILE}'s "
                     f"scoring (counted as not scored): `sweep score {plan.sweep_dir}` scores them again")
    if gone:
        lines.append(f"  {stale_without_checkpoints(plan, gone)}")
    return lines


def stale_without_checkpoints(plan: SweepPlan, keys: list[str]) -> str:
    """What to do about `scores` files of other settings whose checkpoints are not here to score again."""
    bundles = sorted({key.split("--", 1)[0] for key in keys})
    shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    return (f"{len(keys)} checkpoint(s) keep scores of other settings than {SWEEP_FILE}'s scoring, and are not here "
            f"to score again (their bundle folders: {', '.join(f'bundle-{b}' for b in bundles)}): copy those folders "
            f"back and run `sweep score {plan.sweep_dir}`, or delete their files tables/<table>/<key>.parquet "
            f"(scores, points, trajectories, slices; keys {shown})")


def finished_without_rows(plan: SweepPlan, recorded: set, found: list) -> tuple[set[str], set[str]]:
    """Finished bundles of the plan that the networks table lacks: (those with an `end` checkpoint
    here, those whose `end` checkpoint has scores but is not here)."""
    fs, root = storage.resolve(plan.sweep_dir)
    last = {bundle_id: uri.rstrip("/").rsplit("/", 1)[-1] for bundle_id, uri in found}  # `end` comes last
    ended = set()
    for bundle_id, checkpoint in last.items():
        if bundle_id in recorded:
            continue
        try:
            meta = read_meta(SimpleNamespace(filesystem=fs, path=f"{root}/bundle-{bundle_id}/{checkpoint}"))
        except CheckpointError:  # unreadable: not known to have finished
            continue
        if meta.get("tag") == "end":
            ended.add(bundle_id)
    scored = set(TableWriter(plan.table_root).keys("scores"))
    copied = {bundle["bundle_id"] for bundle in plan.bundles
              if bundle["bundle_id"] not in recorded | set(last) and checkpoint_key(bundle["bundle_id"], "end") in scored}
    return ended, copied


def _without_checkpoints(plan: SweepPlan, found: list) -> str:
    """A copy of a sweep without its bundle folders (README: `aws s3 sync … --exclude "bundle-*"`)
    has its scores but no checkpoints: said, rather than a bare "0 written, 0 scored"."""
    if found:
        return ""
    scored = len(TableWriter(plan.table_root).keys("scores"))
    return (f"; the tables hold the scores of {scored} checkpoint(s) whose files are not here (a copy without the "
            "bundle folders: `sweep report` works on it, `sweep score` needs them)") if scored else ""
