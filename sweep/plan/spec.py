"""Sweep specs: the pydantic models of a spec file, and reading one.

A spec is a YAML or TOML file (or a preset name). Parsing is strict: an unknown key, a wrong
type, an empty grid list or an out-of-range number raises `SpecError` naming the key path and
what is allowed, so the CLI can refuse a bad spec before Ray starts. `sweep schema` prints the
models' JSON schema for editors.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import tomllib
import yaml
from pydantic import AfterValidator, Field, field_validator, model_validator

from sweep.plan.datasets import DATASETS, dataset_info
from sweep.plan.presets import list_presets, preset_path
from sweep.plan.schema import (AUTO, Count, Flag, Fraction, PositiveInt, PositiveNumber, Share, SpecError, Text,
                               WrittenNumber, grid_list, invalid, json_schema, one_of, or_auto, section, shown, validate)
from sweep.scoring.settings import ScoringSettings

MIN_SPLIT = 3  # examples a split needs for scoring's ellipses
MAX_GPU_MEMORY_GIB = 4096  # far above any card's: beyond it a typo

# Beyond this a sweep's plan, trial table and driver state become unwieldy; split it instead.
MAX_NETWORKS = 50_000

ACTIVATIONS = ("relu", "leaky_relu", "hard_tanh", "relu6", "tanh", "sigmoid")
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
INITS = ("torch_default", "he_normal", "lecun_normal", "glorot_uniform")
PRECISIONS = ("fp32", "tf32", "bf16")
RANDOM_LABELS = ("uniform", "other_class")
ARCHITECTURES = ("fc", "cnn")
FAMILIES = ("vgg", "nin")
POOLINGS = ("max", "avg", "conv")
HEADS = ("flatten", "gap")
CNN_KEYS = ("families", "stages", "kernel_sizes", "poolings", "heads", "batch_norm")

SWEEP_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
SWEEP_NAME_MAX = 100
NAME_RULE = (f"letters, digits, '-', '_' and '.', not starting with '.', at most {SWEEP_NAME_MAX} "
             "characters (it names the sweep's folder under the storage)")
DATE_SUFFIX = len("-20261204-173757")  # what `sweep run` adds to a spec's name by default


def _name_problem(name: str, longest: int) -> str | None:
    if SWEEP_NAME.fullmatch(name) and len(name) <= longest:
        return None
    rule = NAME_RULE if longest == SWEEP_NAME_MAX else NAME_RULE.replace(
        f"at most {SWEEP_NAME_MAX}", f"at most {longest} (the default sweep name adds the date)")
    return f"{shown(name)} is not a sweep name; use {rule}"


def check_sweep_name(name: str, where: str = "--name") -> str:
    """`name` if it is a valid sweep name, else SpecError naming `where` and the rule."""
    problem = _name_problem(name, SWEEP_NAME_MAX)
    if problem:
        raise SpecError(f"{where}: {problem}")
    return name


@section
class DataSpec:
    """A data set: a name, or a mapping with the name and where and how much of it to use."""

    name: Literal[tuple(DATASETS)]
    data_root: Text | None = None
    """torchvision's root folder; null: ~/.cache/sensitivity-sweep/data"""
    download: Flag = False
    train_size: PositiveInt | None = None
    """examples of the training split used; null: all"""
    test_size: PositiveInt | None = None
    path: Text | None = None
    """image_folder only: a folder holding train/ and test/, each with one sub-folder per class"""

    @model_validator(mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict:
        # the schema of what `_named` accepts: a name alone, or the mapping
        names = {"type": "string", "enum": list(DATASETS)}
        mapping = handler(core_schema)
        handler.resolve_ref_schema(mapping).update({
            "if": {"properties": {"name": {"const": "image_folder"}}},
            "then": {"required": ["path"]}, "else": {"properties": {"path": {"type": "null"}}}})
        return {"anyOf": [names, mapping]}

    @field_validator("data_root", "path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        # trials run in other working directories
        return value and os.path.abspath(os.path.expanduser(value))

    @model_validator(mode="after")
    def _consistent(self) -> DataSpec:
        if self.name == "image_folder" and not self.path:
            raise invalid("required for image_folder (a folder holding train/ and test/, each with one "
                          "sub-folder per class)", "path")
        if self.name != "image_folder" and self.path:
            raise invalid(f"only image_folder takes a path; use data_root for {self.name}", "path")
        info = DATASETS[self.name]
        for split in ("train_size", "test_size"):
            limit, given = getattr(info, split), getattr(self, split)
            if given is not None and given < MIN_SPLIT:
                raise invalid(f"at least {MIN_SPLIT}, got {given}: scoring draws each transition ellipse through a "
                              f"point and two others of its split", split)
            if given is not None and limit is not None and given > limit:
                raise invalid(f"{self.name} has {limit} examples in that split, got {given}", split)
            if given is not None and given == limit:  # all of it, as null says: one network id, one plan
                object.__setattr__(self, split, None)
        return self

    def identity(self) -> dict:
        """The fields that define the data (not where it is stored or how it was fetched)."""
        return {"name": self.name, "train_size": self.train_size,
                "test_size": self.test_size, "path": self.path}


Rates = grid_list(PositiveNumber)
BatchSize = Annotated[
    one_of(("integer", PositiveInt), ("null", None), ("string", Literal["full"]),
           choose=lambda v: "null" if v is None else "string" if isinstance(v, str) else "integer"),
    AfterValidator(lambda v: None if v == "full" else v)]  # TOML has no null: "full" means full batch too


@section
class GridSpec:
    """The hyperparameters crossed into networks: every combination is one network."""

    widths: grid_list(PositiveInt)
    depths: grid_list(PositiveInt)
    """hidden layers"""
    learning_rates: one_of(("object", dict[Literal[OPTIMIZERS], Rates]), ("array", Rates),
                           choose=lambda v: "object" if isinstance(v, dict) else "array")
    """a list for every optimizer, or a mapping from each optimizer in `optimizers` to its list"""
    activations: grid_list(Literal[ACTIVATIONS]) = ("relu",)
    optimizers: grid_list(Literal[OPTIMIZERS]) = ("sgd",)
    batch_sizes: grid_list(BatchSize) = (128,)
    """null or "full": the whole training split in one batch (as is a size of at least the split)"""
    random_label_fractions: grid_list(Fraction) = (0.0,)
    augmentation: grid_list(Flag) = (False,)
    seeds: grid_list(Count) = (0,)
    inits: grid_list(Literal[INITS]) = ("torch_default",)
    families: grid_list(Literal[FAMILIES]) = ("vgg",)
    """cnn only: vgg (blocks of a k×k convolution) or nin (blocks of a k×k and a 1×1 convolution)"""
    stages: grid_list(PositiveInt) = (2,)
    """cnn only: stages of `depths` blocks; stage s has widths·2^s channels, and the map halves after it"""
    kernel_sizes: grid_list(PositiveInt) = (3,)
    """cnn only"""
    poolings: grid_list(Literal[POOLINGS]) = ("max",)
    """cnn only: how the map halves after each stage: a 2×2 max or average pool, or a strided convolution"""
    heads: grid_list(Literal[HEADS]) = ("flatten",)
    """cnn only: flatten and a linear layer, or a global average pool (nin: after a 1×1 convolution to
    the classes; vgg: before a linear layer)"""
    batch_norm: grid_list(Flag) = (False,)
    """cnn only: batch normalisation after each convolution (the metrics use its inference mode)"""

    @model_validator(mode="after")
    def _rates_per_optimizer(self) -> GridSpec:
        if isinstance(self.learning_rates, dict):
            for opt in self.optimizers:
                if opt not in self.learning_rates:
                    raise invalid("missing; give learning rates for every optimizer in grid.optimizers",
                                  f"learning_rates.{opt}")
            extra = sorted(set(self.learning_rates) - set(self.optimizers))
            if extra:
                raise invalid("optimizer not in grid.optimizers", f"learning_rates.{extra[0]}")
        return self

    @property
    def rates(self) -> tuple[tuple[str, tuple[float, ...]], ...]:
        """(optimizer, its learning rates) for each optimizer, in the grid's order."""
        given = self.learning_rates
        return tuple((opt, given[opt] if isinstance(given, dict) else given) for opt in self.optimizers)

    def size(self) -> int:
        per_optimizer = sum(len(lrs) for _, lrs in self.rates)
        return (len(self.widths) * len(self.depths) * len(self.activations) * per_optimizer
                * len(self.batch_sizes) * len(self.random_label_fractions)
                * len(self.augmentation) * len(self.seeds) * len(self.inits))

    def conv_shapes(self) -> int:
        """Combinations of the cnn-only keys."""
        return (len(self.families) * len(self.stages) * len(self.kernel_sizes) * len(self.poolings)
                * len(self.heads) * len(self.batch_norm))


@section
class Budget:
    max_epochs: PositiveInt
    max_steps: PositiveInt | None = None
    stop_at_full_train_acc: Flag = True


@section
class TrainingSpec:
    precision: Literal[PRECISIONS] = "fp32"
    """fp32: true float32 matmuls; tf32: TF32 tensor-core matmuls on GPUs that have them (float32
    elsewhere); bf16: bfloat16 autocast for the matmuls, float32 weights and optimizer state"""
    random_labels: Literal[RANDOM_LABELS] = "uniform"
    """networks with random labels (grid.random_label_fractions above 0): how a replaced label is
    drawn. uniform: a uniformly random class, independent of the image (Zhang et al. 2017: about 1/C
    of the replaced labels are still right); other_class: a uniformly random other class (symmetric
    label noise: exactly the fraction is wrong, and the labels tell which class an image is not)"""
    augmentation_shift: Count | None = None
    """networks with augmentation: the largest translation in pixels (zero padding, then a crop);
    null: the data set's usual one (1 for 8×8 digits, 3 for 28×28 images, 4 for 32×32); 0: flips only"""
    augmentation_flips: Flag = True
    """networks with augmentation: random horizontal flips of natural images (never of digits,
    MNIST or Fashion-MNIST, whose labels a mirror would change)"""


@section
class CheckpointSpec:
    every_epochs: PositiveInt | None = None
    """besides `init` and `end`"""


def _whole_beyond_one(share: float) -> float:
    if share > 1 and share != int(share):
        raise invalid(f"expected a share of one card (at most 1) or a whole number of cards, got {share}")
    return share


GpuShare = or_auto(Annotated[Share, AfterValidator(_whole_beyond_one)], "number")


@section
class Resources:
    bundle_size: or_auto(PositiveInt, "integer") = AUTO
    """most networks per bundle (trial), or auto: sized to the card on GPUs, a fixed size on CPUs"""
    cpus_per_trial: Share = 1.0
    gpus_per_trial: GpuShare = 0.0
    """a share of one card, a whole number of cards, or auto: each bundle's share of the card's memory"""
    scoring_actors: or_auto(Count, "integer") = 1
    """or auto: one per GPU of the cluster when the sweep starts"""
    # Scoring comes in bursts at checkpoints: by default it shares the trials' cores rather than
    # reserving one that would idle in between (and hold back a trial on a small machine).
    cpus_per_scoring_actor: Share = 0.0
    gpus_per_scoring_actor: GpuShare = 0.0
    max_concurrent_trials: PositiveInt | None = None
    """null: as many as resources allow"""
    gpu_memory_gib: Annotated[PositiveNumber, Field(le=MAX_GPU_MEMORY_GIB)] | None = None
    """the cards' memory; null: the local card's"""

    @property
    def uses_gpus(self) -> bool:
        return self.gpus_per_trial == AUTO or self.gpus_per_trial > 0

    @model_validator(mode="after")
    def _trials_ask_for_something(self) -> Resources:
        if not self.cpus_per_trial and not self.uses_gpus:  # Ray cannot place a trial that asks for nothing
            raise invalid("0 with no GPU per trial: a trial needs a share of a CPU (e.g. 1) or of a GPU "
                          "(resources.gpus_per_trial)", "cpus_per_trial")
        return self


@section
class SweepSpec:
    """A sweep: the networks to train (datasets × grid), how long, and what to measure."""

    name: Text
    """the sweep's folder under the storage (the date is added unless --name is given)"""
    datasets: Annotated[tuple[DataSpec, ...], Field(min_length=1)]
    """distinct data sets (not two entries of one data set that differ only in data_root or download)"""
    grid: GridSpec
    budget: Budget
    architecture: Literal[ARCHITECTURES] = "fc"
    """fc: fully-connected networks (widths × depths hidden layers); cnn: convolutional ones (the grid's
    cnn-only keys; widths are the first stage's channels, depths the blocks per stage)"""
    checkpoints: CheckpointSpec = CheckpointSpec()
    scoring: ScoringSettings = ScoringSettings()
    training: TrainingSpec = TrainingSpec()
    storage: Text | None = None
    """a local path, a shared file system, s3:// or gs://; null: ./sweeps"""
    resources: Resources = Resources()
    description: Text = ""

    @field_validator("name")
    @classmethod
    def _sweep_name(cls, name: str) -> str:
        problem = _name_problem(name, SWEEP_NAME_MAX - DATE_SUFFIX)
        if problem:
            raise invalid(problem)
        return name

    @model_validator(mode="before")
    @classmethod
    def _cnn_keys_need_cnn(cls, raw: Any) -> Any:
        # on the document, not the parsed grid: a cnn-only key given at its default value would
        # otherwise be ignored without a word
        if isinstance(raw, dict) and raw.get("architecture", "fc") == "fc" and isinstance(raw.get("grid"), dict):
            given = [key for key in CNN_KEYS if key in raw["grid"]]
            if given:
                raise invalid("a cnn-only key; set architecture: cnn for convolutional networks, or remove it",
                              f"grid.{given[0]}")
        return raw

    @model_validator(mode="after")
    def _runnable(self) -> SweepSpec:
        if self.resources.gpus_per_scoring_actor == AUTO and not self.resources.uses_gpus:
            raise invalid("auto sizes the actor to the trials' cards; give resources.gpus_per_trial too (auto "
                          "or a share), or a number here", "resources.gpus_per_scoring_actor")
        self._check_distinct_datasets()
        total = self.grid.size() * len(self.datasets)
        if self.architecture == "cnn":
            total *= self.grid.conv_shapes()
            self._check_stages()
            self._check_kernels()
        if total > MAX_NETWORKS:
            raise invalid(f"{total:,} networks exceeds the limit of {MAX_NETWORKS:,} per sweep; split the grid "
                          "into several sweeps (each with its own name)", "grid")
        if True in self.grid.augmentation:
            self._check_augmentation()
        return self

    def _check_distinct_datasets(self) -> None:
        """Two entries of one data set would give their networks the same ids, folders and rows."""
        seen = set()
        for i, data in enumerate(self.datasets):
            key = tuple(data.identity().items())
            if key in seen:
                what = ", ".join(f"{k}: {v}" for k, v in data.identity().items() if v is not None)
                raise invalid(f"lists the same data twice ({what}); entries that differ only in data_root or "
                              "download train the same networks: keep one", f"datasets[{i}]")
            seen.add(key)

    def _check_augmentation(self) -> None:
        """Augmented networks must see their images change: a shift, or flips where they apply."""
        shift = self.training.augmentation_shift
        for data in self.datasets:
            info = dataset_info(data)
            if shift == 0 and not (self.training.augmentation_flips and info.hflip):
                why = "augmentation_flips is false" if info.hflip else f"{data.name}'s images are never flipped"
                raise invalid(f"0 leaves augmented networks unaugmented ({why}); give a shift of 1 or more, or "
                              "remove true from grid.augmentation", "training.augmentation_shift")
            side = min(info.image_shape[1:]) if info.image_shape else None
            if shift is not None and side is not None and shift >= side:
                raise invalid(f"{shift} pixels moves {data.name}'s {side}-pixel images out of view; use at most "
                              f"{side - 1}", "training.augmentation_shift")


    def _check_stages(self) -> None:
        """Each stage halves the map: 2×2 pools (rounding down) leave no pixels past log2 of the
        side; stride-2 convolutions (rounding up) reach 1×1 there (2×2 with even kernels, whose
        padding k//2 adds a pixel), and each stage after it would only double the channels."""
        stages = max(self.grid.stages)
        for data in self.datasets:
            shape = dataset_info(data).image_shape
            if shape is None:
                continue
            side, size = min(shape[1:]), f"{data.name}'s {shape[1]}×{shape[2]} images"
            if set(self.grid.poolings) - {"conv"} and stages > side.bit_length() - 1:
                raise invalid(f"{stages} stages of 2×2 pools leave no pixels of {size}; use at most "
                              f"{side.bit_length() - 1}", "grid.stages")
            if "conv" in self.grid.poolings and stages > (side - 1).bit_length():
                most = (side - 1).bit_length()
                raise invalid(f"{stages} stages of stride-2 convolutions shrink {size} to their smallest (1×1; 2×2 "
                              f"with even kernels) after {most}, and each "
                              "stage past that only doubles the channels; use at most "
                              f"{most}", "grid.stages")


    def _check_kernels(self) -> None:
        """A kernel's weights that never meet a pixel of the maps they slide over (only the zero
        padding, k//2 a side) never train, yet count in param_count and the weight norms (the
        sensitivity baselines): refused, for the networks whose maps are smallest."""
        for data, stages, depth, pooling in itertools.product(self.datasets, self.grid.stages, self.grid.depths,
                                                               self.grid.poolings):
            shape = dataset_info(data).image_shape
            if shape is None:
                continue
            for k in self.grid.kernel_sizes:
                side = _kernel_reaches(min(shape[1:]), k, stages, depth, pooling)
                if side is None:
                    continue
                largest = next(j for j in range(1, k + 1)
                               if _kernel_reaches(min(shape[1:]), j + 1, stages, depth, pooling) is not None)
                raise invalid(
                    f"{k} is larger than the {side}×{side} maps of {data.name}'s networks of {stages} stage(s) of "
                    f"depth {depth} with {pooling} pooling: some of its weights only ever meet the zero padding, so "
                    f"they never train but count in param_count and the weight norms; use at most {largest}, or "
                    "fewer stages", "grid.kernel_sizes")


def _kernel_reaches(side: int, k: int, stages: int, depth: int, pooling: str) -> int | None:
    """None when every weight of every k×k convolution (as `conv_layers` lays them out) meets a
    pixel of its input map; else the side of the first map where some do not."""

    def conv(side: int, stride: int = 1, pooled: bool = False) -> int | None:
        pad = k // 2
        out = (side + 2 * pad - k) // stride + 1
        used = out - out % 2 if pooled else out  # a 2×2 pool after it drops an odd last row
        # weight t meets input pixel i·stride − pad + t of some output position i < used
        meets = (max(0, -((t - pad) // stride)) <= min(used - 1, (side - 1 + pad - t) // stride) for t in range(k))
        return out if all(meets) else None

    for _ in range(stages):
        for block in range(depth):
            after = conv(side, pooled=pooling != "conv" and block == depth - 1)
            if after is None:
                return side
            side = after
        if pooling == "conv":
            after = conv(side, stride=2)
            if after is None:
                return side
            side = after
        else:
            side //= 2
    return None


def spec_schema() -> dict:
    """The JSON schema of a spec file (for editors: `sweep schema > sweep.schema.json`)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **json_schema(SweepSpec)}


def parse_spec(raw: Any) -> SweepSpec:
    """Validate a spec already read into Python values (a YAML/TOML document)."""
    return validate(SweepSpec, raw)


MAX_SPEC_BYTES = 1 << 20  # a spec is a few kilobytes of text


def _other_language(kind: str) -> str:
    other, suffix = ("TOML", ".toml") if kind == "YAML" else ("YAML", ".yaml")
    return (f"this reads as {other}, not {kind} (the file's suffix picks the parser); rename it to {suffix}, "
            f"or write it in {kind}")


def _looks_like_yaml(text: str, origin: str) -> bool:
    try:
        return isinstance(_load_yaml(text, origin), dict)
    except (yaml.YAMLError, SpecError, RecursionError):
        return False


def _looks_like_toml(text: str) -> bool:
    try:
        return bool(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        return False


class _SpecLoader(yaml.SafeLoader):
    """YAML's safe subset, refusing a key given twice (YAML would keep the last silently), and
    reading 1e-3 and 1.0e3 as numbers, as YAML 1.2 and TOML do (PyYAML's 1.1 rules read them as
    text, a learning rate the grid would refuse), that text fields take back as written."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<" and key in seen:
                raise SpecError(f"line {key_node.start_mark.line + 1}: key {shown(key)} appears twice in one "
                                "mapping; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


_EXPONENT = "tag:sensitivity-sweep,2026:exponent"
_SpecLoader.add_implicit_resolver(
    _EXPONENT, re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))
_SpecLoader.add_constructor(_EXPONENT, lambda loader, node: WrittenNumber(loader.construct_scalar(node)))


def _load_yaml(text: str, origin: str) -> Any:
    loader = _SpecLoader(text)
    loader.name = origin  # error marks name the file, not "<unicode string>"
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


def spec_origin(source: str | os.PathLike) -> str:
    """How messages name a spec: its file's path, or `preset NAME` (a file wins where it has a
    spec's suffix or exists; a folder named like a preset, say ./digits, does not hide the preset)."""
    path = Path(source)
    preset = preset_path(path.name) if str(source) == path.name else None
    is_preset = preset is not None and preset.is_file()
    if path.suffix.lower() in (".yaml", ".yml", ".toml") or path.is_file() or (path.exists() and not is_preset):
        return str(path)
    return f"preset {source}"


def read_spec(source: str | os.PathLike) -> tuple[str, str]:
    """(text, suffix) of a .yaml/.yml/.toml spec file, or of a preset by name (".yaml"): what
    `parse_spec_text` parses and sweep.json keeps as the spec that was run; raises SpecError."""
    path = Path(source)
    if spec_origin(source) == str(path):
        return _spec_text(path), path.suffix.lower()
    preset = preset_path(path.name)
    if str(source) != path.name or not preset.is_file():
        names = ", ".join(name for name, _ in list_presets())
        raise SpecError(f"unknown preset {str(source)!r}; available presets: {names} "
                        "(or give a path to a .yaml/.yml/.toml spec file)")
    return preset.read_text(), ".yaml"


def load_spec(source: str | os.PathLike) -> SweepSpec:
    """Load a preset by name or a .yaml/.yml/.toml spec file; raises SpecError."""
    return parse_spec_text(*read_spec(source), spec_origin(source))


def parse_spec_text(text: str, suffix: str, origin: str) -> SweepSpec:
    """The spec in `text` (TOML for suffix .toml, YAML otherwise); SpecError messages start with
    `origin` (`spec_origin`)."""
    kind = "TOML" if suffix == ".toml" else "YAML"
    try:
        raw = tomllib.loads(text) if kind == "TOML" else _load_yaml(text, origin)
        if raw is None or raw == {}:
            raise SpecError("the spec is empty; it needs name, datasets, grid and budget (start from "
                            "sweep/presets/digits.yaml)")
        if kind == "YAML" and isinstance(raw, str) and _looks_like_toml(text):  # YAML reads TOML as one string
            raise SpecError(_other_language(kind))
        return parse_spec(raw)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        other = _looks_like_toml(text) if kind == "YAML" else _looks_like_yaml(text, origin)
        raise SpecError(f"{origin}: " + (f"{_other_language(kind)} ({exc})" if other else f"not valid {kind}: {exc}")
                        ) from None
    except SpecError as exc:
        raise SpecError("\n".join(f"{origin}: {line}" for line in str(exc).splitlines())) from None
    except RecursionError:
        raise SpecError(f"{origin}: nested too deeply for a spec (a spec is at most a few levels deep)") from None

