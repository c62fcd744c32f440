"""Sweep specs: a validated schema, presets, and the grid's networks (bundled by `sweep.planner`).

A spec is a YAML or TOML file (or a preset name). Parsing is strict: an unknown key, a wrong
type, an empty grid list or an out-of-range number raises `SpecError` naming the key path, so the
CLI can refuse a bad spec before Ray starts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import re
import reprlib
import tomllib
import zlib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from sweep.score_settings import METRICS


# Beyond this a sweep's plan, trial table and driver state become unwieldy; split it instead.
MAX_NETWORKS = 50_000


class SpecError(ValueError):
    """A malformed sweep spec; the message names the key path and what was expected."""


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a data set before loading it (for validation and plan estimates)."""

    train_size: int | None
    test_size: int | None
    input_dim: int | None
    num_classes: int | None
    hflip: bool  # horizontal flips preserve labels (natural images, not digits)


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(1297, 500, 64, 10, hflip=False),
    "mnist": DatasetInfo(60000, 10000, 784, 10, hflip=False),
    "fashion_mnist": DatasetInfo(60000, 10000, 784, 10, hflip=False),
    "cifar10": DatasetInfo(50000, 10000, 3072, 10, hflip=True),
    "cifar100": DatasetInfo(50000, 10000, 3072, 100, hflip=True),
    "image_folder": DatasetInfo(None, None, None, None, hflip=True),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def dataset_info(data: DataSpec) -> DatasetInfo:
    """What is known of a data set before it is loaded, with its train/test sizes as used. An
    image folder's are counted from its files, one image opened for its shape; where the folder
    cannot be read they stay unknown (None), and loading it says why."""
    info = DATASETS[data.name]
    if data.name == "image_folder" and data.path:
        info = _image_folder_info(data.path)
    n, n_test = info.train_size, info.test_size
    return dataclasses.replace(
        info,
        train_size=min(n, data.train_size) if n and data.train_size else (data.train_size or n),
        test_size=min(n_test, data.test_size) if n_test and data.test_size else (data.test_size or n_test))


@functools.lru_cache(maxsize=16)
def _image_folder_info(path: str) -> DatasetInfo:
    def images(split: Path) -> list[Path]:
        return [f for c in sorted(split.iterdir()) if c.is_dir() for f in sorted(c.iterdir())
                if f.suffix.lower() in IMAGE_SUFFIXES]

    try:
        root = Path(path)
        train, test = images(root / "train"), images(root / "test")
        classes = [c for c in (root / "train").iterdir() if c.is_dir()]
        from PIL import Image  # only for an image folder's shape

        with Image.open(train[0]) as first:
            channels = 1 if first.mode == "L" else 3  # as sweep.data loads it
            width, height = first.size
    except (OSError, IndexError, ValueError):
        return DATASETS["image_folder"]
    return DatasetInfo(len(train), len(test), channels * width * height, len(classes), hflip=True)


ACTIVATIONS = ("relu", "leaky_relu", "hard_tanh", "relu6", "tanh", "sigmoid")
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
INITS = ("torch_default", "he_normal", "lecun_normal", "glorot_uniform")
PRECISIONS = ("fp32", "tf32", "bf16")
AUTO = "auto"


@dataclass(frozen=True)
class DataSpec:
    name: str
    data_root: str | None = None  # torchvision root; None = ~/.cache/sensitivity-sweep/data
    download: bool = False
    train_size: int | None = None  # None = the whole training split
    test_size: int | None = None
    path: str | None = None  # image_folder only: a root holding train/ and test/ class folders

    def identity(self) -> dict:
        """The fields that define the data (not where it is stored or how it was fetched)."""
        return {"name": self.name, "train_size": self.train_size,
                "test_size": self.test_size, "path": self.path}


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


@dataclass(frozen=True)
class GridSpec:
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    activations: tuple[str, ...] = ("relu",)
    optimizers: tuple[str, ...] = ("sgd",)
    # optimizer → learning rates (a plain list in the file applies to every optimizer)
    learning_rates: tuple[tuple[str, tuple[float, ...]], ...] = ()
    batch_sizes: tuple[int | None, ...] = (128,)
    random_label_fractions: tuple[float, ...] = (0.0,)
    augmentation: tuple[bool, ...] = (False,)
    seeds: tuple[int, ...] = (0,)
    inits: tuple[str, ...] = ("torch_default",)

    def size(self) -> int:
        per_optimizer = sum(len(lrs) for _, lrs in self.learning_rates)
        return (len(self.widths) * len(self.depths) * len(self.activations) * per_optimizer
                * len(self.batch_sizes) * len(self.random_label_fractions)
                * len(self.augmentation) * len(self.seeds) * len(self.inits))


@dataclass(frozen=True)
class Budget:
    max_epochs: int
    max_steps: int | None = None
    stop_at_full_train_acc: bool = True


@dataclass(frozen=True)
class TrainingSpec:
    # fp32: true float32 matmuls; tf32: TF32 tensor-core matmuls on GPUs that have them (float32
    # elsewhere); bf16: bfloat16 autocast for the matmuls, float32 weights and optimizer state.
    precision: str = "fp32"


@dataclass(frozen=True)
class CheckpointSpec:
    every_epochs: int | None = None  # besides `init` and `end`


@dataclass(frozen=True)
class ScoringSpec:
    points: int = 1000  # test points scored per network (the same points for a data set)
    train_points: int = 1000
    transitions_k: int = 256
    trajectory: str = "ellipse"  # or "circle"
    circle_radius: float = 1.0
    metrics: tuple[str, ...] = METRICS
    trajectories: bool = False  # the paper's manifold experiment (profiles along ellipses)
    ellipses_per_kind: int = 16
    profile_points: int = 258  # points per profile ellipse: a multiple of 3, its anchors are samples
    slices: bool = False
    slice_count: int = 2
    slice_grid: int = 256
    slice_layers: str = "last"  # or "all"
    # PAC-Bayes sharpness and magnitude-aware flatness (Jiang et al. 2020): noise draws per
    # bisection step, bisection steps of log σ in [1e-6, 10], and the accuracy drop σ′ may cause.
    sharpness_samples: int = 10
    sharpness_search_depth: int = 15
    sharpness_target: float = 0.1


@dataclass(frozen=True)
class Resources:
    # Most networks per bundle (trial), or "auto": sized to the card on GPUs (sweep.planner),
    # CPU_BUNDLE_SIZE on CPUs.
    bundle_size: int | str = AUTO
    cpus_per_trial: float = 1.0
    # A share of one card, or "auto": each bundle's share of the card's memory (sweep.planner).
    gpus_per_trial: float | str = 0.0
    scoring_actors: int | str = 1  # or "auto": one per GPU of the cluster when the sweep starts
    # Scoring comes in bursts at checkpoints: by default it shares the trials' cores rather than
    # reserving one that would idle in between (and hold back a trial on a small machine).
    cpus_per_scoring_actor: float = 0.0
    gpus_per_scoring_actor: float | str = 0.0
    max_concurrent_trials: int | None = None  # None = as many as resources allow
    gpu_memory_gib: float | None = None  # the cards' memory; None = the local card's

    @property
    def uses_gpus(self) -> bool:
        return self.gpus_per_trial == AUTO or self.gpus_per_trial > 0


@dataclass(frozen=True)
class SweepSpec:
    name: str
    datasets: tuple[DataSpec, ...]
    grid: GridSpec
    budget: Budget
    checkpoints: CheckpointSpec = field(default_factory=CheckpointSpec)
    scoring: ScoringSpec = field(default_factory=ScoringSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    storage: str | None = None  # local path, shared file system, s3:// or gs://
    resources: Resources = field(default_factory=Resources)
    description: str = ""


def _digest(obj: Any) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---- parsing -------------------------------------------------------------------------------

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 6, 6, 80, 80


def _shown(value: Any) -> str:
    """A bounded repr: a YAML alias bomb shares its parts, and a full repr would expand them all."""
    text = _SHORT.repr(value)
    return text if len(text) <= 200 else text[:199] + "…"


def _fail(path: str, expected: str, value: Any) -> SpecError:
    return SpecError(f"{path}: expected {expected}, got {_shown(value)}")


def _int(path: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise _fail(path, kind, value)
    return value


def _float(path: str, value: Any, low: float = 0.0, high: float = math.inf,
           low_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, "a number", value)
    if value < low or (low_open and value == low) or value > high:
        bracket = "(" if low_open else "["
        raise _fail(path, f"a number in {bracket}{low}, {high}]", value)
    return float(value)


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, "true or false", value)
    return value


SWEEP_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
SWEEP_NAME_MAX = 100
NAME_RULE = (f"letters, digits, '-', '_' and '.', not starting with '.', at most {SWEEP_NAME_MAX} "
             "characters (it names the sweep's folder under the storage)")
DATE_SUFFIX = len("-20261204-173757")  # what `sweep run` adds to a spec's name by default


def check_sweep_name(name: str, where: str = "--name", longest: int = SWEEP_NAME_MAX) -> str:
    """`name` if it is a valid sweep name, else SpecError naming `where` and the rule."""
    if not SWEEP_NAME.fullmatch(name) or len(name) > longest:
        rule = NAME_RULE if longest == SWEEP_NAME_MAX else NAME_RULE.replace(
            f"at most {SWEEP_NAME_MAX}", f"at most {longest} (the default sweep name adds the date)")
        raise SpecError(f"{where}: {_shown(name)} is not a sweep name; use {rule}")
    return name


def _sweep_name(path: str, value: Any) -> str:
    return check_sweep_name(_str(path, value), path or "name", SWEEP_NAME_MAX - DATE_SUFFIX)


def _str(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, "a non-empty string", value)
    return value


def _choice(path: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SpecError(f"{path}: unknown value {_shown(value)}; choose one of {', '.join(choices)}")
    return value


def _optional(parse: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda path, value: None if value is None else parse(path, value)


def _list(path: str, value: Any, item: Callable[[str, Any], Any]) -> tuple:
    if not isinstance(value, list):
        raise _fail(path, "a list", value)
    if not value:
        raise SpecError(f"{path}: must not be empty (give at least one value)")
    items = tuple(item(f"{path}[{i}]", v) for i, v in enumerate(value))
    if len(set(items)) != len(items):
        raise SpecError(f"{path}: duplicate values in {_shown(value)}")
    return items


def _mapping(path: str, value: Any, parsers: dict[str, Callable[[str, Any], Any]],
             required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise _fail(path or "spec", "a mapping of keys to values", value)
    prefix = f"{path}." if path else ""
    unknown = sorted(set(value) - set(parsers))
    if unknown:
        raise SpecError(f"{prefix}{unknown[0]}: unknown key; allowed keys: "
                        f"{', '.join(sorted(parsers))}")
    missing = [k for k in required if k not in value]
    if missing:
        raise SpecError(f"{prefix}{missing[0]}: required key is missing")
    return {k: parsers[k](f"{prefix}{k}", v) for k, v in value.items()}


def _multiple_of_3(path: str, value: Any) -> int:
    number = _int(path, value, minimum=3)
    if number % 3:
        raise SpecError(f"{path}: must be a multiple of 3, so that each ellipse's three anchor points are "
                        f"samples; got {number}, use {number - number % 3} or {number - number % 3 + 3}")
    return number


def _accuracy_drop(path: str, value: Any) -> float:
    drop = _float(path, value)
    if drop >= 1:
        raise _fail(path, "an accuracy drop in (0, 1)", value)
    return drop


def _or_auto(parse: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda path, value: AUTO if value == AUTO else parse(path, value)


def _gpu_share(path: str, value: Any) -> float:
    """A share of one card (0 = none) or a whole number of cards."""
    share = _float(path, value, 0.0, low_open=False)
    if share > 1 and share != int(share):
        raise _fail(path, "a share of one card (at most 1) or a whole number of cards", value)
    return share


def _batch_size(path: str, value: Any) -> int | None:
    if value is None or value == "full":  # TOML has no null: "full" means full batch too
        return None
    return _int(path, value)


def _dataset(path: str, value: Any) -> DataSpec:
    if isinstance(value, str):
        value = {"name": value}
    parsed = _mapping(path, value, {
        "name": lambda p, v: _choice(p, v, tuple(DATASETS)),
        "data_root": _optional(_str),
        "download": _bool,
        "train_size": _optional(_int),
        "test_size": _optional(_int),
        "path": _optional(_str),
    }, required=("name",))
    name = parsed["name"]
    if name == "image_folder" and not parsed.get("path"):
        raise SpecError(f"{path}.path: required for image_folder (a folder holding train/ and "
                        "test/, each with one sub-folder per class)")
    if name != "image_folder" and parsed.get("path"):
        raise SpecError(f"{path}.path: only image_folder takes a path; use data_root for {name}")
    info = DATASETS[name]
    for split in ("train_size", "test_size"):
        limit = getattr(info, split)
        if parsed.get(split) is not None and limit is not None and parsed[split] > limit:
            raise SpecError(f"{path}.{split}: {name} has {limit} examples in that split, "
                            f"got {parsed[split]}")
    for key in ("data_root", "path"):  # trials run in other working directories
        if parsed.get(key):
            parsed[key] = os.path.abspath(os.path.expanduser(parsed[key]))
    return DataSpec(**parsed)


def _learning_rates(path: str, value: Any) -> Any:
    rate = lambda p, v: _float(p, v)  # noqa: E731
    if isinstance(value, dict):
        return {_choice(f"{path}.{k}", k, OPTIMIZERS): _list(f"{path}.{k}", v, rate)
                for k, v in value.items()}
    return _list(path, value, rate)


def _grid(path: str, value: Any) -> GridSpec:
    parsed = _mapping(path, value, {
        "widths": lambda p, v: _list(p, v, _int),
        "depths": lambda p, v: _list(p, v, _int),
        "activations": lambda p, v: _list(p, v, lambda q, x: _choice(q, x, ACTIVATIONS)),
        "optimizers": lambda p, v: _list(p, v, lambda q, x: _choice(q, x, OPTIMIZERS)),
        "learning_rates": _learning_rates,
        "batch_sizes": lambda p, v: _list(p, v, _batch_size),
        "random_label_fractions": lambda p, v: _list(
            p, v, lambda q, x: _float(q, x, 0.0, 1.0, low_open=False)),
        "augmentation": lambda p, v: _list(p, v, _bool),
        "seeds": lambda p, v: _list(p, v, lambda q, x: _int(q, x, minimum=0)),
        "inits": lambda p, v: _list(p, v, lambda q, x: _choice(q, x, INITS)),
    }, required=("widths", "depths", "learning_rates"))
    optimizers = parsed.get("optimizers", GridSpec.optimizers)
    rates = parsed["learning_rates"]
    if isinstance(rates, dict):
        for opt in optimizers:
            if opt not in rates:
                raise SpecError(f"{path}.learning_rates.{opt}: missing; give learning rates for "
                                "every optimizer in grid.optimizers")
        extra = sorted(set(rates) - set(optimizers))
        if extra:
            raise SpecError(f"{path}.learning_rates.{extra[0]}: optimizer not in grid.optimizers")
        parsed["learning_rates"] = tuple((opt, rates[opt]) for opt in optimizers)
    else:
        parsed["learning_rates"] = tuple((opt, rates) for opt in optimizers)
    return GridSpec(**parsed)


def _section(cls: type, types: dict[str, Callable[[str, Any], Any]], required=()):
    return lambda path, value: cls(**_mapping(path, value, types, required))


_budget = _section(Budget, {
    "max_epochs": _int, "max_steps": _optional(_int), "stop_at_full_train_acc": _bool,
}, required=("max_epochs",))
_checkpoints = _section(CheckpointSpec, {"every_epochs": _optional(_int)})
_scoring = _section(ScoringSpec, {
    "points": _int, "train_points": lambda p, v: _int(p, v, minimum=0),
    "transitions_k": lambda p, v: _int(p, v, minimum=3),
    "trajectory": lambda p, v: _choice(p, v, ("ellipse", "circle")),
    "circle_radius": _float,
    "metrics": lambda p, v: _list(p, v, lambda q, x: _choice(q, x, METRICS)),
    "trajectories": _bool, "ellipses_per_kind": _int, "profile_points": _multiple_of_3,
    "slices": _bool, "slice_count": _int, "slice_grid": lambda p, v: _int(p, v, minimum=2),
    "slice_layers": lambda p, v: _choice(p, v, ("last", "all")),
    "sharpness_samples": _int, "sharpness_search_depth": _int,
    "sharpness_target": lambda p, v: _accuracy_drop(p, v),
})
_training = _section(TrainingSpec, {"precision": lambda p, v: _choice(p, v, PRECISIONS)})
_resources = _section(Resources, {
    "bundle_size": _or_auto(_int),
    "cpus_per_trial": lambda p, v: _float(p, v, 0.0, low_open=False),
    "gpus_per_trial": _or_auto(_gpu_share),
    "scoring_actors": _or_auto(lambda p, v: _int(p, v, minimum=0)),
    "cpus_per_scoring_actor": lambda p, v: _float(p, v, 0.0, low_open=False),
    "gpus_per_scoring_actor": _or_auto(_gpu_share),
    "max_concurrent_trials": _optional(_int),
    "gpu_memory_gib": _optional(_float),
})


def parse_spec(raw: Any) -> SweepSpec:
    """Validate a spec already read into Python values (a YAML/TOML document)."""
    parsed = _mapping("", raw, {
        "name": _sweep_name, "description": _str,
        "datasets": lambda p, v: _list(p, v, _dataset),
        "grid": _grid, "budget": _budget, "checkpoints": _checkpoints,
        "scoring": _scoring, "training": _training, "storage": _optional(_str),
        "resources": _resources,
    }, required=("name", "datasets", "grid", "budget"))
    resources = parsed.get("resources", Resources())
    if resources.gpus_per_scoring_actor == AUTO and not resources.uses_gpus:
        raise SpecError("resources.gpus_per_scoring_actor: auto sizes the actor to the trials' cards; "
                        "give resources.gpus_per_trial too (auto or a share), or a number here")
    total = parsed["grid"].size() * len(parsed["datasets"])
    if total > MAX_NETWORKS:
        raise SpecError(f"grid: {total:,} networks exceeds the limit of {MAX_NETWORKS:,} per sweep; "
                        "split the grid into several sweeps (each with its own name)")
    return SweepSpec(**parsed)


def _presets_dir():
    return resources.files("sweep") / "presets"


def preset_path(name: str):
    """The shipped preset file for `name` (it may not exist)."""
    return _presets_dir() / f"{name}.yaml"


def list_presets() -> list[tuple[str, str]]:
    """(name, one-line description with size and expected cost) for every shipped preset."""
    out = []
    for entry in sorted(_presets_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            doc = yaml.safe_load(entry.read_text())
            out.append((entry.name.removesuffix(".yaml"), " ".join(doc["description"].split())))
    return out


MAX_SPEC_BYTES = 1 << 20  # a spec is a few kilobytes of text


class _SpecLoader(yaml.SafeLoader):
    """YAML's safe subset, refusing a key given twice (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<" and key in seen:
                raise SpecError(f"line {key_node.start_mark.line + 1}: key {_shown(key)} appears twice in one "
                                "mapping; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _load_yaml(text: str) -> Any:
    loader = _SpecLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _spec_text(path: Path) -> str:
    """The file's text, or SpecError for what is not a small UTF-8 text file."""
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} " + ("is not a regular file" if path.exists() else "not found"))
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {size:,} bytes; a spec is a small YAML or TOML text file (at most "
                        f"{MAX_SPEC_BYTES:,} bytes)")
    data = path.read_bytes()[:MAX_SPEC_BYTES + 1]
    nul = data.find(b"\0")
    if nul >= 0:
        raise SpecError(f"{path}: binary data (a NUL byte at {nul}); a spec is a YAML or TOML text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                        "save it as UTF-8") from None


def load_spec(source: str | os.PathLike) -> SweepSpec:
    """Load a preset by name or a .yaml/.yml/.toml spec file; raises SpecError."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml", ".toml") or path.exists():
        text = _spec_text(path)
        origin = str(path)
    else:
        preset = preset_path(str(source))
        if not preset.is_file():
            names = ", ".join(name for name, _ in list_presets())
            raise SpecError(f"unknown preset {str(source)!r}; available presets: {names} "
                            "(or give a path to a .yaml/.yml/.toml spec file)")
        text = preset.read_text()
        origin = f"preset {source}"
    kind = "TOML" if path.suffix == ".toml" else "YAML"
    try:
        raw = tomllib.loads(text) if kind == "TOML" else _load_yaml(text)
        if raw is None or raw == {}:
            raise SpecError("the spec is empty; it needs name, datasets, grid and budget (start from "
                            "sweep/presets/digits.yaml)")
        return parse_spec(raw)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{origin}: not valid {kind}: {exc}") from None
    except SpecError as exc:
        raise SpecError(f"{origin}: {exc}") from None
    except RecursionError:
        raise SpecError(f"{origin}: nested too deeply for a spec (a spec is at most a few levels deep)") from None


# ---- expansion -----------------------------------------------------------------------------

def networks(spec: SweepSpec) -> list[NetworkConfig]:
    """Every network of the grid, in a fixed order (data set outermost, seed innermost)."""
    g = spec.grid
    out = []
    for data, width, depth, act, (opt, lrs), batch, rlf, aug, init in itertools.product(
            spec.datasets, g.widths, g.depths, g.activations, g.learning_rates, g.batch_sizes,
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
