"""A synthetic sweep with the documented tables, for benchmarks, demos and end-to-end tests.

The gap follows the paper's findings by construction (random labels, no augmentation, full batch
and tanh raise it; width lowers it) and the Jacobian norm tracks the gap with noise, so a report
over it shows the expected signs. It exercises the readers and the report, not the science.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.columns import NETWORK_COLUMNS, POINT_COLUMNS, SCORE_COLUMNS, TRAJECTORY_COLUMNS
from sweep.scoring.table_schemas import TRAJECTORY_KINDS

# The last key varies fastest, so a truncated grid still holds every data set and factor level.
GRID: dict[str, tuple] = {
    "width": (64, 128, 256, 512),
    "depth": (1, 2, 4),
    "activation": ("relu", "tanh"),
    "random_label_fraction": (0.0, 0.5),
    "augmentation": (False, True),
    "full_batch": (False, True),
    "dataset": ("digits", "mnist"),
}
INPUT_SIZE = {"digits": 64, "mnist": 784}


@dataclass(frozen=True)
class SyntheticSweep:
    """Sizes of the synthetic sweep."""

    n_networks: int = 96
    points_per_network: int = 50
    ellipses: int = 2
    k: int = 33  # a multiple of 3: the anchors are samples
    slice_networks: int = 1
    grid: int = 64
    bundle_size: int = 8
    diverged_share: float = 0.03
    seed: int = 0


def write_synthetic_sweep(sweep_dir: str | Path, spec: SyntheticSweep = SyntheticSweep()) -> Path:
    """Write `<sweep_dir>/tables/...` as a sweep would (one file per bundle); returns sweep_dir."""
    rng = np.random.default_rng(spec.seed)
    networks = synthetic_networks(spec, rng)
    tables = Path(sweep_dir) / "tables"
    for bundle_id, bundle in networks.groupby("bundle_id", sort=True):
        _write(bundle, tables / "networks" / f"{bundle_id}.parquet", NETWORK_COLUMNS)
        for checkpoint in ("init", "end"):
            scores = _scores(bundle, checkpoint, rng)
            _write(scores, tables / "scores" / f"{bundle_id}--{checkpoint}.parquet", SCORE_COLUMNS)
            trajectories = _trajectories(bundle, checkpoint, spec, rng)
            _write(trajectories, tables / "trajectories" / f"{bundle_id}--{checkpoint}.parquet",
                   TRAJECTORY_COLUMNS)
        _write(_points(bundle, spec, rng), tables / "points" / f"{bundle_id}--end.parquet",
               POINT_COLUMNS)
    for network_id in networks["network_id"].iloc[: spec.slice_networks]:
        for checkpoint, planes in (("init", 6), ("end", 24)):
            path = tables / "slices" / f"{network_id}--{checkpoint}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            _slices(network_id, checkpoint, planes, spec.grid, rng).to_parquet(path, index=False)
    return Path(sweep_dir)


def synthetic_networks(spec: SyntheticSweep, rng: np.random.Generator) -> pd.DataFrame:
    """The `networks` table: the grid × seeds, truncated to n_networks."""
    combos = list(itertools.product(*GRID.values()))
    seeds = -(-spec.n_networks // len(combos))
    rows = [dict(zip(GRID, combo), seed=seed) for seed in range(seeds) for combo in combos]
    df = pd.DataFrame(rows[: spec.n_networks])
    n = len(df)
    df["network_id"] = [f"net{i:06d}" for i in range(n)]
    df["bundle_id"] = [f"bundle{i // spec.bundle_size:05d}" for i in range(n)]
    df["sweep"] = "synthetic"
    df["train_size"] = 1000
    df["test_size"] = 10000
    df["optimizer"] = "sgd"
    df["learning_rate"] = 0.01
    df["batch_size"] = np.where(df["full_batch"], df["train_size"], 128)
    df["init"] = "he_normal"
    df["precision"] = "fp32"
    df["architecture"] = "fc"
    df[["stages", "kernel_size"]] = 0  # cnn only
    df["batch_norm"] = False
    df["augmentation_shift"] = np.where(df["augmentation"], 4, 0)  # a 32×32 image's usual shift
    df["augmentation_flips"] = df["augmentation"]
    df["random_labels"] = pd.Categorical(np.where(df["random_label_fraction"] > 0, "uniform", None))
    for column in ("family", "pooling", "head"):
        df[column] = pd.Categorical([None] * len(df), categories=["-"])  # a string dictionary, all null
    d = df["dataset"].map(INPUT_SIZE)
    w, depth = df["width"], df["depth"]
    df["param_count"] = d * w + w + (depth - 1) * (w * w + w) + w * 10 + 10
    gap = (0.15 + 0.4 * df["random_label_fraction"] + 0.05 * ~df["augmentation"]
           + 0.05 * df["full_batch"] + 0.06 * (df["activation"] == "tanh")
           - 0.02 * np.log2(w / 64) + rng.normal(0, 0.03, n)).clip(0.0, 0.95)
    df["train_acc"] = 1.0
    df["test_acc"] = 1.0 - gap
    df["train_loss"] = 10 ** rng.uniform(-6, -2, n)
    df["test_loss"] = df["train_loss"] + 3 * gap + rng.normal(0, 0.1, n).clip(-0.05)
    df["status"] = np.where(rng.random(n) < 0.9, "converged", "budget")
    diverged = rng.random(n) < spec.diverged_share
    df.loc[diverged, "status"] = "diverged"
    df.loc[diverged, ["train_loss", "test_loss", "train_acc", "test_acc"]] = np.nan
    df["gap"] = df["train_acc"] - df["test_acc"]
    df["loss_gap"] = df["test_loss"] - df["train_loss"]
    df["steps"] = rng.integers(1000, 20000, n)
    df["epochs"] = df["steps"] * df["batch_size"] / df["train_size"]
    df["wall_time_s"] = rng.uniform(10, 100, n)
    df["message"] = np.where(diverged, "loss became NaN at step 312", "")
    return _typed(df, NETWORK_COLUMNS)


def _scores(bundle: pd.DataFrame, checkpoint: str, rng: np.random.Generator) -> pd.DataFrame:
    n = len(bundle)
    trained = checkpoint == "end"
    gap = bundle["gap"].fillna(0.9).to_numpy() if trained else np.full(n, 0.05)
    jacobian = np.exp(3 * gap + rng.normal(0, 0.15, n)) * 0.05
    smooth = (bundle["activation"] == "tanh").to_numpy()
    diverged = (bundle["status"] == "diverged").to_numpy()
    values = {
        ("test", "jacobian_softmax"): jacobian,
        ("train", "jacobian_softmax"): jacobian * 0.3,
        ("test", "jacobian_logits"): jacobian * 20 * np.exp(rng.normal(0, 0.3, n)),
        ("test", "transitions"): np.where(smooth, np.nan, 200 * gap + rng.normal(40, 10, n)),
        ("weights", "param_count"): bundle["param_count"].to_numpy(float),
        ("weights", "weight_norm_sq"): bundle["width"].to_numpy() * rng.uniform(0.5, 2, n),
        ("weights", "spectral_product"): 10 ** rng.uniform(0, 3, n),
        ("weights", "path_norm"): 10 ** rng.uniform(1, 4, n),
        ("test", "margin"): rng.uniform(1, 10, n) - 5 * gap,
        ("test", "loss"): bundle["test_loss"].to_numpy(),
        ("test", "accuracy"): bundle["test_acc"].to_numpy(),
    }
    frames = []
    for (split, metric), mean in values.items():
        mean = np.where(diverged, np.nan, mean)
        frames.append(pd.DataFrame({
            "network_id": bundle["network_id"].to_numpy(), "checkpoint": checkpoint,
            "step": 0 if not trained else bundle["steps"].to_numpy(), "split": split,
            "metric": metric, "mean": mean, "median": mean, "std": np.abs(mean) * 0.1,
            "n_points": 0 if split == "weights" else 1000,
            "params": '{"k": 256, "trajectory": "ellipse"}' if metric == "transitions" else "{}",
            "settings": None,  # no sweep.json: scored with whatever settings
            "status": "ok", "message": "",
        }))
    return pd.concat(frames, ignore_index=True)


def _points(bundle: pd.DataFrame, spec: SyntheticSweep, rng: np.random.Generator) -> pd.DataFrame:
    p = spec.points_per_network
    n = len(bundle)
    error = np.repeat(bundle["gap"].fillna(0.9).clip(0.02, 0.95).to_numpy(), p)
    label = rng.integers(0, 10, n * p)
    wrong = rng.random(n * p) < error
    prediction = np.where(wrong, (label + rng.integers(1, 10, n * p)) % 10, label)
    jacobian = np.exp(rng.normal(-3, 0.7, n * p) + 1.0 * wrong)
    smooth = np.repeat((bundle["activation"] == "tanh").to_numpy(), p)
    return pd.DataFrame({
        "network_id": np.repeat(bundle["network_id"].to_numpy(), p),
        "checkpoint": "end", "split": "test",
        "point_index": np.tile(np.arange(p), n),
        "label": label, "prediction": prediction,
        "loss": np.exp(rng.normal(-2, 1, n * p) + 2.0 * wrong + 0.5 * np.log(jacobian + 1)),
        "jacobian_softmax": jacobian,
        "jacobian_logits": jacobian * 20,
        "transitions": np.where(smooth, np.nan, rng.poisson(60, n * p).astype(float)),
    })


def _trajectories(bundle: pd.DataFrame, checkpoint: str, spec: SyntheticSweep,
                  rng: np.random.Generator) -> pd.DataFrame:
    rows = len(bundle) * len(TRAJECTORY_KINDS) * spec.ellipses * spec.k
    network, kind, ellipse, position = (a.ravel() for a in np.meshgrid(
        bundle["network_id"].to_numpy(), np.array(TRAJECTORY_KINDS), np.arange(spec.ellipses),
        np.arange(spec.k), indexing="ij"))
    theta = 2 * np.pi * position / spec.k
    # Near the anchors (θ = 0, 2π/3, 4π/3) trained networks are less sensitive, most so on
    # same-class ellipses; random ellipses stay far from the data.
    near_data = np.cos(3 * theta)
    depth_of_dip = {"random": 0.0, "different_class": 0.6, "same_class": 1.0}
    dip = np.vectorize(depth_of_dip.get)(kind) * (1.0 if checkpoint == "end" else 0.1)
    level = np.exp(-2 - dip * (near_data + 1) / 2 + rng.normal(0, 0.3, rows))
    smooth = np.isin(network, bundle.loc[bundle["activation"] == "tanh", "network_id"])
    return pd.DataFrame({
        "network_id": network, "checkpoint": checkpoint, "kind": kind, "ellipse": ellipse,
        "position": position, "anchor": position % (spec.k // 3) == 0, "jacobian_softmax": level,
        "transition_density": np.where(smooth, np.nan, 3 * level / level.mean()
                                       + rng.poisson(1, rows)),
    })


def _slices(network_id: str, checkpoint: str, planes: int, grid: int, rng: np.random.Generator
            ) -> pd.DataFrame:
    """Regions cut by random lines, as the last ReLU layer cuts a plane."""
    u, v = np.meshgrid(np.linspace(-2, 2, grid), np.linspace(-2, 2, grid))
    normals = rng.normal(size=(planes, 2))
    offsets = rng.normal(scale=1.0, size=planes)
    bits = (normals[:, 0, None, None] * u + normals[:, 1, None, None] * v + offsets[:, None, None]
            ) > 0
    code = (bits * (2 ** np.arange(planes, dtype=np.int64))[:, None, None]).sum(axis=0)
    _, region = np.unique(code, return_inverse=True)
    region = region.reshape(grid, grid)
    boundary = np.zeros((grid, grid), bool)
    boundary[:, :-1] |= region[:, :-1] != region[:, 1:]
    boundary[:-1, :] |= region[:-1, :] != region[1:, :]
    return pd.DataFrame({
        "network_id": [network_id], "checkpoint": pd.Categorical([checkpoint]), "slice": [0],
        "layers": pd.Categorical(["last"]), "grid": [grid],
        "region": [region.ravel().astype(np.int32)], "boundary": [boundary.ravel()],
        "anchors": [np.array([0.0, 1.0, -0.87, -0.5, 0.87, -0.5])],
        "extent": [np.array([-2.0, 2.0, -2.0, 2.0])],
    })


def _typed(df: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    return df[list(columns)].astype(columns)


def _write(df: pd.DataFrame, path: Path, columns: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _typed(df, columns).to_parquet(path, index=False)
