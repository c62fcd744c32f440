"""What scoring computes: `ScoreSettings` and the metric names, without torch, so the sweep's
driver (which only hands checkpoints to the scoring actors) never imports it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

WEIGHT_METRICS = ("param_count", "weight_norm_sq", "spectral_product", "path_norm")
POINT_METRICS = ("jacobian_softmax", "jacobian_logits", "transitions", "margin", "loss", "accuracy")
# Jiang et al.'s measures: against the initial weights (split "weights"), and from the training
# points (split "train": one value per network, not a mean over points).
INIT_METRICS = ("distance_from_init",)
TRAIN_METRICS = ("spectral_margin", "frobenius_margin", "pacbayes_sharpness", "pacbayes_mag_flatness")
METRICS = POINT_METRICS[:3] + WEIGHT_METRICS + INIT_METRICS + TRAIN_METRICS + POINT_METRICS[3:]
# Checkpoints that get trajectory profiles and slices (the paper's before/after-training pictures).
PROFILE_TAGS = ("init", "end")


@dataclass(frozen=True)
class ScoreSettings:
    """What to compute for every checkpoint: the fields of `SweepSpec.scoring` (same names and
    defaults) plus `chunk_size` (points per chunk, bounds memory) and the points' `seed`."""

    points: int = 1000
    train_points: int = 1000
    transitions_k: int = 256
    trajectory: str = "ellipse"
    circle_radius: float = 1.0
    metrics: tuple[str, ...] = METRICS
    trajectories: bool = False
    ellipses_per_kind: int = 16
    profile_points: int = 258
    slices: bool = False
    slice_count: int = 2
    slice_grid: int = 256
    slice_layers: str = "last"
    sharpness_samples: int = 10
    sharpness_search_depth: int = 15
    sharpness_target: float = 0.1
    chunk_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown or not self.metrics:
            raise ValueError(
                f"scoring.metrics: unknown {unknown or 'empty list'}; choose from {', '.join(METRICS)}"
            )
        if not 0 < self.sharpness_target < 1:
            raise ValueError(f"scoring.sharpness_target must be an accuracy drop in (0, 1), got {self.sharpness_target}")
        for name in ("points", "transitions_k", "ellipses_per_kind", "slice_count", "slice_grid", "sharpness_samples",
                     "sharpness_search_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"scoring.{name} must be at least 1, got {getattr(self, name)}")
        if self.profile_points < 3 or self.profile_points % 3:
            raise ValueError(f"scoring.profile_points must be a multiple of 3 (the ellipses' three anchors are "
                             f"samples), got {self.profile_points}")
        if self.train_points < 0:
            raise ValueError(f"scoring.train_points must be 0 (no train split) or more, got {self.train_points}")
        if self.trajectory not in ("ellipse", "circle"):
            raise ValueError(f"scoring.trajectory must be 'ellipse' or 'circle', got {self.trajectory!r}")
        if not self.circle_radius > 0:
            raise ValueError(f"scoring.circle_radius must be positive, got {self.circle_radius}")
        if self.slice_layers not in ("last", "all"):
            raise ValueError(f"scoring.slice_layers must be 'last' or 'all', got {self.slice_layers!r}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"scoring.chunk_size must be a positive number of points, got {self.chunk_size}")

    @classmethod
    def from_spec(cls, scoring: object) -> ScoreSettings:
        """From `SweepSpec.scoring` (the dataclass or its dict)."""
        values = dict(scoring) if isinstance(scoring, Mapping) else dataclasses.asdict(scoring)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"scoring settings {unknown} are not known to sweep.score_settings.ScoreSettings")
        return cls(**values)

    def replace(self, **changes: object) -> ScoreSettings:
        return dataclasses.replace(self, **changes)
