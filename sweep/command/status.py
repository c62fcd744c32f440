"""What a sweep has produced so far, read from its storage alone (no Ray needed)."""

from __future__ import annotations

from sweep.plan.sweep_plan import SweepPlan, checkpoints
from sweep.scoring.table_writer import TableWriter
from sweep.training.checkpoints import unscored


def describe(plan: SweepPlan) -> str:
    tables = TableWriter(plan.table_root)
    networks = tables.read("networks")
    done_bundles = set(networks["bundle_id"]) if len(networks) else set()
    counts = networks["status"].value_counts() if len(networks) else {}
    found = checkpoints(plan)
    waiting = unscored(plan.table_root, found)
    failed = len(tables.failed_keys())
    lines = [
        f"sweep {plan.name} at {plan.sweep_dir}",
        f"  bundles: {len(done_bundles)} of {len(plan.bundles)} finished",
        f"  networks: {len(networks)} of {plan.networks} recorded"
        + "".join(f", {int(counts.get(s, 0))} {s}" for s in ("converged", "budget", "diverged", "failed")),
        f"  checkpoints: {len(found)} written, {len(found) - len(waiting)} scored"
        + (f" ({failed} with a network whose scoring failed, or an unreadable scores file)" if failed else ""),
        f"  tables: {plan.table_root}",
    ]
    return "\n".join(lines)

