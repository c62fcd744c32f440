"""The networks a spec describes: one `NetworkConfig` per grid point, same-shape networks grouped
into a `BundleConfig` (one trial), their stable ids, and their sizes."""

from __future__ import annotations

import hashlib
import itertools
import json
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sweep.plan.spec import DataSpec, SweepSpec


@dataclass(frozen=True)
class NetworkConfig:
    dataset: DataSpec
    width: int
    depth: int  # hidden layers
    activation: str
    optimizer: str
    learning_rate: float
    batch_size: int | None  # None = full batch
    random_label_fraction: float
    augmentation: bool
    seed: int
    init: str
    precision: str = "fp32"  # training arithmetic (`training.precision`); scoring is always exact

    @property
    def network_id(self) -> str:
        identity = {**self.to_dict(), "dataset": self.dataset.identity()}
        if self.precision == "fp32":  # ids of sweeps from before the option stay what they were
            del identity["precision"]
        return _digest(identity)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        return cls(**{**d, "dataset": DataSpec(**d["dataset"])})

    def generator(self, purpose: str, *keys: int):
        """An independent CPU torch.Generator for one use of this network's seed.

        Purposes (``init``, ``labels``, ``order``, ``augment``) and keys (the epoch) get separate
        streams, so e.g. the data order of epoch 7 does not depend on how many random numbers
        earlier epochs drew: resuming at an epoch boundary needs no generator state.
        """
        import torch  # lazy: parsing and validating a spec must not pay for torch

        entropy = [self.seed, zlib.crc32(purpose.encode()), *keys]
        state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def row(self) -> dict:
        """Hyperparameter columns of the `networks` table.

        `train_size` and `batch_size` are None here when they mean "all of the split"; the
        trainer's rows fill in the resolved numbers.
        """
        return {
            "network_id": self.network_id,
            "dataset": self.dataset.name,
            "train_size": self.dataset.train_size,
            "random_label_fraction": float(self.random_label_fraction),
            "augmentation": bool(self.augmentation),
            "width": self.width,
            "depth": self.depth,
            "activation": self.activation,
            "optimizer": self.optimizer,
            "learning_rate": float(self.learning_rate),
            "batch_size": self.batch_size,
            "full_batch": self.batch_size is None,
            "seed": self.seed,
            "init": self.init,
            "precision": self.precision,
        }



NAN = float("nan")


def network_row(config: NetworkConfig, bundle_id: str, *, status: str, param_count: int | None,
                sweep: str | None = None, steps: int = 0, epochs: float = NAN, train: tuple[float, float] = (NAN, NAN),
                test: tuple[float, float] = (NAN, NAN), wall_time_s: float = NAN, message: str = "",
                resolved: dict | None = None) -> dict:
    """A row of the `networks` table (docs/tables.md): the network's hyperparameters (`resolved`
    replaces those the trainer resolved, e.g. "all of the split" as a number) and how its training
    ended; `train` and `test` are (loss, accuracy), the gaps follow from them."""
    (train_loss, train_acc), (test_loss, test_acc) = train, test
    return {
        **config.row(), **(resolved or {}),
        "bundle_id": bundle_id, "sweep": sweep, "param_count": param_count, "status": status,
        "steps": steps, "epochs": float(epochs),
        "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
        "gap": train_acc - test_acc, "loss_gap": test_loss - train_loss,
        "wall_time_s": float(wall_time_s), "message": message,
    }

SHARED_IN_BUNDLE = ("dataset", "width", "depth", "activation", "optimizer", "batch_size",
                    "augmentation", "precision")


@dataclass(frozen=True)
class BundleConfig:
    """Same-shape networks trained as one batched computation (one Ray Tune trial)."""

    members: tuple[NetworkConfig, ...]

    def __post_init__(self):
        if not self.members:
            raise ValueError("a bundle needs at least one member")
        first = self.members[0]
        for m in self.members[1:]:
            for key in SHARED_IN_BUNDLE:
                if getattr(m, key) != getattr(first, key):
                    raise ValueError(f"bundle members differ in {key!r}: "
                                     f"{getattr(first, key)!r} vs {getattr(m, key)!r}")
        ids = [m.network_id for m in self.members]
        if len(set(ids)) != len(ids):
            raise ValueError("a bundle holds the same network twice")

    @property
    def bundle_id(self) -> str:
        return _digest([m.network_id for m in self.members])

    @property
    def network_ids(self) -> list[str]:
        return [m.network_id for m in self.members]

    # What every member shares (checked above), read from the first member.
    @property
    def dataset(self) -> DataSpec:
        return self.members[0].dataset

    @property
    def width(self) -> int:
        return self.members[0].width

    @property
    def depth(self) -> int:
        return self.members[0].depth

    @property
    def activation(self) -> str:
        return self.members[0].activation

    @property
    def optimizer(self) -> str:
        return self.members[0].optimizer

    @property
    def batch_size(self) -> int | None:
        return self.members[0].batch_size

    @property
    def augmentation(self) -> bool:
        return self.members[0].augmentation

    @property
    def precision(self) -> str:
        return self.members[0].precision

    def to_dict(self) -> dict:
        # bundle_id is derived, carried along for trial names and readers of meta.json
        return {"bundle_id": self.bundle_id, "members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, d: dict) -> BundleConfig:
        bundle = cls(tuple(NetworkConfig.from_dict(m) for m in d["members"]))
        if d.get("bundle_id", bundle.bundle_id) != bundle.bundle_id:
            raise ValueError(f"bundle {d['bundle_id']} does not match its members (edited by hand?)")
        return bundle


def _digest(obj: Any) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def networks(spec: SweepSpec) -> list[NetworkConfig]:
    """Every network of the grid, in a fixed order (data set outermost, seed innermost)."""
    g = spec.grid
    out = []
    for data, width, depth, act, (opt, lrs), batch, rlf, aug, init in itertools.product(
            spec.datasets, g.widths, g.depths, g.activations, g.rates, g.batch_sizes,
            g.random_label_fractions, g.augmentation, g.inits):
        for lr, seed in itertools.product(lrs, g.seeds):
            out.append(NetworkConfig(data, width, depth, act, opt, lr, batch, rlf, aug, seed,
                                     init, spec.training.precision))
    return out


def limit_networks(bundles: list[BundleConfig], count: int) -> list[BundleConfig]:
    """The first `count` networks of a plan (for a quick partial run), last bundle trimmed."""
    out = []
    for bundle in bundles:
        if count <= 0:
            break
        out.append(BundleConfig(bundle.members[:count]))
        count -= len(out[-1].members)
    return out


def layer_sizes(net: NetworkConfig, input_dim: int, num_classes: int) -> list[int]:
    return [input_dim] + [net.width] * net.depth + [num_classes]


def param_count(net: NetworkConfig, input_dim: int, num_classes: int) -> int:
    sizes = layer_sizes(net, input_dim, num_classes)
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
