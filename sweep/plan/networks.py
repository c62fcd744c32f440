"""The networks a spec describes: one `NetworkConfig` per grid point, same-shape networks grouped
into a `BundleConfig` (one trial), their stable ids, and their sizes."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import zlib
import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from sweep.plan.datasets import DATASETS, augmentation_pad, dataset_info
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
    # Convolutional networks (architecture "cnn"): `width` is the first stage's channels (doubled
    # at each later stage) and `depth` the blocks per stage; see `conv_layers`.
    architecture: str = "fc"
    family: str | None = None
    stages: int | None = None
    kernel_size: int | None = None
    pooling: str | None = None
    head: str | None = None
    batch_norm: bool = False
    # Networks with augmentation: the largest shift in pixels (None: the data set's usual one) and
    # whether natural images are flipped; without augmentation always None and True.
    augmentation_shift: int | None = None
    augmentation_flips: bool = True
    # Networks with random labels: how a replaced label is drawn (`training.random_labels`); without
    # random labels always "other_class", the only draw of sweeps before the option, so their ids stay.
    random_labels: str = "other_class"

    @property
    def network_id(self) -> str:
        identity = {**self.to_dict(), "dataset": self.dataset.identity()}
        # ids of sweeps from before an option stay what they were while it has its old value
        for key, old in _ID_DEFAULTS.items():
            if identity[key] == old:
                del identity[key]
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
        info = dataset_info(self.dataset)
        shift, flips = augmentation_of(self, info.image_shape, info.hflip)
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
            "architecture": self.architecture,
            "family": self.family,
            # 0 for fc networks: an int64 column with nulls would read as float64 in pandas
            "stages": self.stages or 0,
            "kernel_size": self.kernel_size or 0,
            "pooling": self.pooling,
            "head": self.head,
            "batch_norm": self.batch_norm,
            "augmentation_shift": shift,
            "augmentation_flips": flips,
            "random_labels": self.random_labels if self.random_label_fraction else None,
        }


_ID_DEFAULTS = {"precision": "fp32", "architecture": "fc", "family": None, "stages": None, "kernel_size": None,
                "pooling": None, "head": None, "batch_norm": False, "augmentation_shift": None,
                "augmentation_flips": True, "random_labels": "other_class"}



NAN = float("nan")


def augmentation_of(net: NetworkConfig, image_shape: tuple[int, int, int] | None, hflip: bool) -> tuple[int, bool]:
    """(largest shift in pixels, whether images are flipped) of a network's augmentation on images
    of `image_shape` (data that `hflip`s or not); (0, False) without augmentation, and a shift of 0
    where an image folder's shape is not known yet."""
    if not net.augmentation:
        return 0, False
    shift = net.augmentation_shift
    if shift is None:
        shift = augmentation_pad(image_shape) if image_shape else 0
    return shift, net.augmentation_flips and hflip


def network_row(config: NetworkConfig, bundle_id: str, *, status: str, param_count: int | None,
                sweep: str | None = None, steps: int = 0, epochs: float = NAN, train: tuple[float, float] = (NAN, NAN),
                test: tuple[float, float] = (NAN, NAN), wall_time_s: float = NAN, message: str = "",
                resolved: dict | None = None) -> dict:
    """A row of the `networks` table (docs/tables.md): the network's hyperparameters (`resolved`
    replaces those the trainer resolved, e.g. "all of the split" as a number) and how its training
    ended; `train` and `test` are (loss, accuracy), the gaps follow from them."""
    (train_loss, train_acc), (test_loss, test_acc) = train, test
    return {
        **config.row(), "test_size": None, **(resolved or {}),
        "bundle_id": bundle_id, "sweep": sweep, "param_count": param_count, "status": status,
        "steps": steps, "epochs": float(epochs),
        "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
        "gap": train_acc - test_acc, "loss_gap": test_loss - train_loss,
        "wall_time_s": float(wall_time_s), "message": message,
    }

SHARED_IN_BUNDLE = ("dataset", "width", "depth", "activation", "optimizer", "batch_size",
                    "augmentation", "precision", "architecture", "family", "stages", "kernel_size", "pooling",
                    "head", "batch_norm", "augmentation_shift", "augmentation_flips")


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

    def __getattr__(self, key: str):
        """What every member shares (`SHARED_IN_BUNDLE`, checked above), read from the first member."""
        if key in SHARED_IN_BUNDLE:
            return getattr(self.members[0], key)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

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
    for data in spec.datasets:
        for width, depth, shape, act, (opt, lrs), batch, rlf, aug, init in itertools.product(
                g.widths, g.depths, _conv_shapes(spec), g.activations, g.rates, _batch_sizes(spec, data),
                g.random_label_fractions, g.augmentation, g.inits):
            augmentation = _augmentation_keys(spec, data) if aug else {}
            labels = {"random_labels": spec.training.random_labels} if rlf else {}
            for lr, seed in itertools.product(lrs, g.seeds):
                out.append(NetworkConfig(data, width, depth, act, opt, lr, batch, rlf, aug, seed,
                                         init, spec.training.precision, **shape, **augmentation, **labels))
    return out


def _batch_sizes(spec: SweepSpec, data: DataSpec) -> list[int | None]:
    """The grid's batch sizes for `data`: one of at least its training examples is the full
    batch (None), as the trainer runs it, so its networks are full-batch ones in ids, tables and
    analysis; sizes that all mean the full batch give its networks once (`merged_batch_sizes`
    says so)."""
    n = dataset_info(data).train_size  # an image folder's counted from its files
    return list(dict.fromkeys(None if _full(b, n) else b for b in spec.grid.batch_sizes))


def _full(batch: int | None, train_size: int | None) -> bool:
    return batch is None or bool(train_size and batch >= train_size)


def merged_batch_sizes(spec: SweepSpec) -> list[str]:
    """A note for each data set where several of the grid's batch sizes are its full batch."""
    notes = []
    for data in spec.datasets:
        n = dataset_info(data).train_size
        full = [b for b in spec.grid.batch_sizes if _full(b, n)]
        if len(full) > 1:
            shown = " and ".join("full" if b is None else str(b) for b in full)
            notes.append(f"grid.batch_sizes: {shown} are each {data.name}'s full batch ({n} training examples), so "
                         "its networks train once at the full batch, not once for each")
    return notes


def _augmentation_keys(spec: SweepSpec, data: DataSpec) -> dict:
    """A network's augmentation settings as its id holds them: settings that train alike are
    written alike (a built-in data set's usual shift as None, flips of data that is never flipped
    as True), so that they give one id and one network, not two."""
    shift, flips = spec.training.augmentation_shift, spec.training.augmentation_flips
    info = DATASETS[data.name]  # not an image folder's: its shape is known only once it is read
    if shift is not None and info.image_shape and shift == augmentation_pad(info.image_shape):
        shift = None
    return {"augmentation_shift": shift, "augmentation_flips": flips or not info.hflip}


def _conv_shapes(spec: SweepSpec) -> list[dict]:
    """The convolutional keys of each shape in the grid; one empty shape for fc networks."""
    if spec.architecture == "fc":
        return [{}]
    g = spec.grid
    return [{"architecture": "cnn", "family": family, "stages": stages, "kernel_size": k, "pooling": pooling,
             "head": head, "batch_norm": norm}
            for family, stages, k, pooling, head, norm in itertools.product(
                g.families, g.stages, g.kernel_sizes, g.poolings, g.heads, g.batch_norm)]


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
    """A fully-connected network's layer widths, input to logits."""
    return [input_dim] + [net.width] * net.depth + [num_classes]


class DataShape(Protocol):
    """What the layout of a network needs of its data set (a DatasetInfo or a loaded Dataset)."""

    image_shape: tuple[int, int, int]
    input_dim: int
    num_classes: int


@dataclass(frozen=True)
class ConvLayer:
    """One layer of a convolutional network, as `conv_layers` lays it out: `kind` is conv, norm
    (batch normalisation), act, pool, gap (global average pool), flatten or dense; `shape` the
    per-example output shape."""

    kind: str
    shape: tuple[int, ...]
    fan_in: int = 0  # conv: input channels; dense: input features
    fan_out: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    pool: str = ""  # max or avg
    bias: bool = True  # conv: False before a batch normalisation


def conv_layers(net: NetworkConfig, image_shape: tuple[int, int, int], num_classes: int) -> list[ConvLayer]:
    """The layers of a convolutional network on images of `image_shape`.

    `stages` stages of `depth` blocks; a block is a k×k convolution (zero padding k//2) and the
    activation, and for the NiN family also a 1×1 convolution and the activation (with
    `batch_norm`, every convolution followed by the activation is normalised before it); stage s has
    width·2^s channels. After each stage the feature map halves: a 2×2 max or average pool, or a
    k×k convolution of stride 2 and the activation (pooling "conv"). Head "flatten": Flatten and
    a linear layer to the classes; "gap": a global average pool and a linear layer (VGG family),
    or a 1×1 convolution to the classes and a global average pool (NiN family).
    """
    channels, height, width = image_shape
    layers: list[ConvLayer] = []

    def conv(out: int, k: int, stride: int = 1) -> None:
        nonlocal channels, height, width
        pad = k // 2
        height, width = (height + 2 * pad - k) // stride + 1, (width + 2 * pad - k) // stride + 1
        layers.append(ConvLayer("conv", (out, height, width), channels, out, k, stride, pad))
        channels = out

    def act() -> None:
        if net.batch_norm:
            layers[-1] = dataclasses.replace(layers[-1], bias=False)
            layers.append(ConvLayer("norm", layers[-1].shape, fan_out=channels))
        layers.append(ConvLayer("act", layers[-1].shape))

    for stage in range(net.stages):
        for _ in range(net.depth):
            conv(net.width << stage, net.kernel_size)
            act()
            if net.family == "nin":
                conv(channels, 1)
                act()
        if net.pooling == "conv":
            conv(channels, net.kernel_size, stride=2)
            act()
        else:
            height, width = height // 2, width // 2
            layers.append(ConvLayer("pool", (channels, height, width), pool=net.pooling))
        if min(height, width) < 1:
            raise ValueError(f"{net.stages} stages leave no pixels of {image_shape[1]}×{image_shape[2]} images; "
                             "use fewer stages")
    if net.head == "gap" and net.family == "nin":
        conv(num_classes, 1)
        layers.append(ConvLayer("gap", (num_classes,)))
        return layers
    features = channels if net.head == "gap" else channels * height * width
    layers.append(ConvLayer("gap" if net.head == "gap" else "flatten", (features,)))
    layers.append(ConvLayer("dense", (num_classes,), features, num_classes))
    return layers


def parameter_shapes(net: NetworkConfig, data: DataShape) -> list[tuple[tuple[int, ...], ...]]:
    """The shapes of each layer's parameters, layer by layer: (weight [out, in] or [out, in, k, k],
    bias [out]) — a convolution before a batch normalisation has no bias, which the
    normalisation would cancel — or a batch normalisation's (γ [C], β [C])."""
    if net.architecture == "fc":
        sizes = layer_sizes(net, data.input_dim, data.num_classes)
        return [((b, a), (b,)) for a, b in zip(sizes[:-1], sizes[1:])]
    out = []
    for layer in conv_layers(net, data.image_shape, data.num_classes):
        if layer.kind == "conv":
            weight = (layer.fan_out, layer.fan_in, layer.kernel, layer.kernel)
            out.append((weight, (layer.fan_out,)) if layer.bias else (weight,))
        elif layer.kind == "dense":
            out.append(((layer.fan_out, layer.fan_in), (layer.fan_out,)))
        elif layer.kind == "norm":
            out.append(((layer.fan_out,), (layer.fan_out,)))
    return out


def activation_sizes(net: NetworkConfig, data: DataShape) -> list[int]:
    """Values per example of the input and of every layer's output (for memory estimates)."""
    if net.architecture == "fc":
        return layer_sizes(net, data.input_dim, data.num_classes)
    return [data.input_dim] + [math.prod(layer.shape) for layer in conv_layers(net, data.image_shape, data.num_classes)]


def forward_flops(net: NetworkConfig, data: DataShape) -> float:
    """Multiply-add FLOPs (2 per multiply-add) of one example's forward pass through the weights."""
    if net.architecture == "fc":
        sizes = layer_sizes(net, data.input_dim, data.num_classes)
        return 2.0 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 2.0 * sum(layer.fan_in * layer.fan_out * layer.kernel ** 2 * math.prod(layer.shape[1:])
                     if layer.kind == "conv" else layer.fan_in * layer.fan_out
                     for layer in conv_layers(net, data.image_shape, data.num_classes) if layer.kind in ("conv", "dense"))


def param_count(net: NetworkConfig, data: DataShape) -> int:
    """Weights and biases of one network."""
    return sum(math.prod(shape) for layer in parameter_shapes(net, data) for shape in layer)
