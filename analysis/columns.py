"""Column names and dtypes of the sweep's tables (docs/tables.md), and how analysis groups them."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from sweep.scoring.table_schemas import pandas_dtypes

# Read as pandas dtypes from the schemas the sweep writes (one definition; docs/tables.md).
NETWORK_COLUMNS: dict[str, str] = pandas_dtypes("networks")
SCORE_COLUMNS: dict[str, str] = pandas_dtypes("scores")
POINT_COLUMNS: dict[str, str] = pandas_dtypes("points")
TRAJECTORY_COLUMNS: dict[str, str] = pandas_dtypes("trajectories")
SLICE_COLUMNS: dict[str, str] = pandas_dtypes("slices")

# Hyperparameters that define a network (granulated Kendall groups, factor pairs).
HYPERPARAMS: tuple[str, ...] = (
    "dataset",
    "train_size",
    "random_label_fraction",
    "augmentation",
    "width",
    "depth",
    "activation",
    "optimizer",
    "learning_rate",
    "batch_size",
    "full_batch",
    "seed",
    "init",
    "architecture",
    "family",
    "stages",
    "kernel_size",
    "pooling",
    "head",
    "batch_norm",
)

# What varies among the networks of one setting: a sample, not a hyperparameter (granulated
# Kendall groups by it but gives it no ψ; the robustness measures compare settings across it).
SAMPLE_COLUMN = "seed"

# Each network's last checkpoint: the one the statistics read unless told otherwise.
FINAL_CHECKPOINT = "end"

# Networks that never produced a trained model; excluded from statistics and counted.
EXCLUDED_STATUSES: tuple[str, ...] = ("diverged", "failed")

# Sensitivity metrics and weight baselines of `scores`, in the order reports list them.
SCORE_METRICS: tuple[str, ...] = (
    "jacobian_softmax",
    "jacobian_logits",
    "transitions",
    "weight_norm_sq",
    "spectral_product",
    "path_norm",
    "margin",
    "distance_from_init",
    "spectral_margin",
    "frobenius_margin",
    "pacbayes_sharpness",
    "pacbayes_mag_flatness",
)

# `scores` metrics that are the gap's own ingredients (test loss, test accuracy): not ranked.
TARGET_INGREDIENTS: tuple[str, ...] = ("loss", "accuracy")

# `networks` columns the paper uses as baselines (bigger nets generalize better; train loss does
# not track generalization).
BASELINE_COLUMNS: tuple[str, ...] = ("param_count", "train_loss")

TARGETS: tuple[str, ...] = ("gap", "loss_gap")

# Quantities the paper plots on log axes.
LOG_SCALE: frozenset[str] = frozenset(
    {"jacobian_softmax", "jacobian_logits", "param_count", "train_loss", "weight_norm_sq",
     "spectral_product", "path_norm", "distance_from_init", "pacbayes_sharpness", "pacbayes_mag_flatness"}
)

LABELS: dict[str, str] = {
    "gap": "generalization gap (train acc − test acc)",
    "loss_gap": "loss gap (test − train cross-entropy, nats)",
    "jacobian_softmax": "Jacobian norm ‖∂softmax/∂x‖_F",
    "jacobian_logits": "logit Jacobian norm ‖∂f/∂x‖_F",
    "transitions": "transitions per trajectory (units changing piece)",
    "transition_density": "transition density (units changing piece per step)",
    "weight_norm_sq": "sum of squared weights",
    "spectral_product": "product of spectral norms",
    "path_norm": "path norm",
    "margin": "output margin (logits)",
    "distance_from_init": "distance from initialization ‖θ − θ₀‖₂",
    "spectral_margin": "log Π‖W‖₂² / γ² (margin-normalized spectral)",
    "frobenius_margin": "log Π‖W‖_F² / γ² (margin-normalized Frobenius)",
    "pacbayes_sharpness": "PAC-Bayes sharpness 1/σ′²",
    "pacbayes_mag_flatness": "PAC-Bayes magnitude-aware flatness 1/σ′²",
    "param_count": "number of parameters",
    "train_loss": "train cross-entropy (nats)",
}


def label(column: str) -> str:
    """Axis label for a column: its meaning where known, else its name."""
    return LABELS.get(column, column)


def metric_columns(df) -> list[str]:
    """The columns of a `load(...).wide`-style frame that are ranked against the gap.

    Score metrics in report order, then any other numeric column that is not a `networks`
    column (new metrics, or a metric measured with several parameter sets), then the baselines.
    The test loss and accuracy (`loss`, `accuracy`) are left out: they are the gap's ingredients.
    """
    numeric = set(df.select_dtypes("number").columns)
    known = [m for m in SCORE_METRICS if m in numeric]
    other = sorted(
        c for c in numeric
        if c not in NETWORK_COLUMNS and c not in SCORE_METRICS and c not in TARGET_INGREDIENTS
    )
    baselines = [c for c in BASELINE_COLUMNS if c in numeric]
    return known + other + baselines


def require_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    """ValueError naming the columns `df` lacks (a metric or target mistyped, or never scored)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"columns {missing} are not in the table; available: {list(df.columns)}. "
            "Pass metrics/targets that exist (analysis.load(path).wide has one column per metric)."
        )


def require_checkpoint(frame: pd.DataFrame, checkpoint: str) -> None:
    """ValueError when `frame` has rows but none at a `checkpoint` the caller named: a mistyped
    name would give statistics of nothing. The final one may just not be scored yet: its
    statistics then say not measured."""
    if checkpoint != FINAL_CHECKPOINT and len(frame) and not (frame["checkpoint"] == checkpoint).any():
        names = sorted(set(frame["checkpoint"].astype(str)))
        raise ValueError(f"no rows at checkpoint {checkpoint!r}; this sweep's checkpoints: {', '.join(names)} "
                         "('end' is each network's last)")
