"""Column names and dtypes of the sweep's tables (docs/tables.md), and how analysis groups them."""

from __future__ import annotations

NETWORK_COLUMNS: dict[str, str] = {
    "network_id": "str",
    "bundle_id": "str",
    "sweep": "category",
    "dataset": "category",
    "train_size": "int64",
    "random_label_fraction": "float64",
    "augmentation": "bool",
    "width": "int64",
    "depth": "int64",
    "activation": "category",
    "optimizer": "category",
    "learning_rate": "float64",
    "batch_size": "int64",
    "full_batch": "bool",
    "seed": "int64",
    "init": "category",
    "precision": "category",
    "param_count": "int64",
    "status": "category",
    "steps": "int64",
    "epochs": "float64",
    "train_loss": "float64",
    "train_acc": "float64",
    "test_loss": "float64",
    "test_acc": "float64",
    "gap": "float64",
    "loss_gap": "float64",
    "wall_time_s": "float64",
    "message": "str",
}

SCORE_COLUMNS: dict[str, str] = {
    "network_id": "str",
    "checkpoint": "category",
    "step": "int64",
    "split": "category",
    "metric": "category",
    "mean": "float64",
    "median": "float64",
    "std": "float64",
    "n_points": "int64",
    "params": "str",
    "status": "category",
    "message": "str",
}

POINT_COLUMNS: dict[str, str] = {
    "network_id": "str",
    "checkpoint": "category",
    "split": "category",
    "point_index": "int64",
    "label": "int64",
    "prediction": "int64",
    "loss": "float64",
    "jacobian_softmax": "float64",
    "jacobian_logits": "float64",
    "transitions": "float64",
}

TRAJECTORY_COLUMNS: dict[str, str] = {
    "network_id": "str",
    "checkpoint": "category",
    "kind": "category",
    "ellipse": "int64",
    "position": "int64",
    "anchor": "bool",
    "jacobian_softmax": "float64",
    "transition_density": "float64",
}

SLICE_COLUMNS: dict[str, str] = {
    "network_id": "str",
    "checkpoint": "category",
    "slice": "int64",
    "layers": "category",
    "grid": "int64",
    "region": "object",
    "boundary": "object",
    "anchors": "object",
    "extent": "object",
}

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
)

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
