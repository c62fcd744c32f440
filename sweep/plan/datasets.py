"""The data sets a spec can name, and what is known about each before it is loaded (for
validation and the plan's estimates)."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sweep.plan.spec import DataSpec


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a data set before loading it (for validation and plan estimates)."""

    train_size: int | None
    test_size: int | None
    image_shape: tuple[int, int, int] | None  # (C, H, W)
    num_classes: int | None
    hflip: bool  # horizontal flips preserve labels (natural images, not digits)

    @property
    def input_dim(self) -> int | None:
        return None if self.image_shape is None else self.image_shape[0] * self.image_shape[1] * self.image_shape[2]


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(1297, 500, (1, 8, 8), 10, hflip=False),
    "mnist": DatasetInfo(60000, 10000, (1, 28, 28), 10, hflip=False),
    "fashion_mnist": DatasetInfo(60000, 10000, (1, 28, 28), 10, hflip=False),
    "cifar10": DatasetInfo(50000, 10000, (3, 32, 32), 10, hflip=True),
    "cifar100": DatasetInfo(50000, 10000, (3, 32, 32), 100, hflip=True),
    "image_folder": DatasetInfo(None, None, None, None, hflip=True),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_DATA_ROOT = "~/.cache/sensitivity-sweep/data"


class DataError(RuntimeError):
    """A data set that cannot be loaded; the message says where the files go or how to fetch."""


# torchvision layouts: (class name, folder under data_root, files that must be there)
TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw",
                      ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)),
    "cifar100": ("CIFAR100", "cifar-100-python", ("train", "test")),
}


def data_root(spec: DataSpec) -> Path:
    return Path(os.path.expanduser(spec.data_root or DEFAULT_DATA_ROOT))


def check_available(spec: DataSpec) -> None:
    """Cheap presence check before any training; raises DataError with what to do."""
    if spec.name == "digits":
        return
    if spec.name == "image_folder":
        image_folder_splits(Path(spec.path))
        return
    if spec.download:
        return
    _, folder, files = TORCHVISION[spec.name]
    where = data_root(spec) / folder
    missing = [f for f in files if not (where / f).is_file()]
    if missing:
        raise DataError(
            f"{spec.name}: files not found in {where} (missing {', '.join(missing)}). Put the "
            f"data set there in torchvision's layout (data_root: {data_root(spec)}), point "
            f"data_root at a folder that has it, or set download: true in the spec's datasets "
            f"entry on a machine with internet.")


def image_folder_splits(root: Path) -> tuple[Path, Path]:
    splits = root / "train", root / "test"
    for split in splits:
        if not split.is_dir() or not any(p.is_dir() for p in split.iterdir()):
            raise DataError(f"image_folder: {split} is missing or has no class folders; the "
                            f"path must hold train/<class>/*.jpg and test/<class>/*.jpg")
    for split in splits:
        # torchvision's ImageFolder refuses a class without images, but only once a trial loads it
        empty = sorted(c.name for c in split.iterdir() if c.is_dir() and next(class_images(c), None) is None)
        if empty:
            raise DataError(f"image_folder: {len(empty)} class folder(s) of {split} hold no images "
                            f"({', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}); give each class "
                            f"images ({', '.join(IMAGE_SUFFIXES)}) or remove its folder from train/ and test/")
    # ImageFolder numbers each split's classes by their sorted names, so the splits must agree.
    train, test = (sorted(c.name for c in split.iterdir() if c.is_dir()) for split in splits)
    if train != test:
        raise DataError(f"image_folder: train/ and test/ of {root} have different class folders (only in "
                        f"train/: {sorted(set(train) - set(test))}, only in test/: {sorted(set(test) - set(train))}); "
                        "give both the same classes")
    if len(train) < 2:
        raise DataError(f"image_folder: {splits[0]} has one class folder ({train[0]}); a classifier needs two "
                        "or more")
    return splits


def augmentation_pad(image_shape: tuple[int, int, int]) -> int:
    """The usual largest translation in pixels: 1 for 8×8 digits, 3 for 28×28, 4 for 32×32 (as
    in the usual pad-4-and-crop CIFAR augmentation); `training.augmentation_shift` overrides it."""
    return max(1, image_shape[1] // 8)


def whole_dataset_info(data: DataSpec) -> DatasetInfo:
    """`dataset_info` of all of each split, whatever part the spec uses."""
    return _image_folder_info(data.path) if data.name == "image_folder" and data.path else DATASETS[data.name]


def dataset_info(data: DataSpec) -> DatasetInfo:
    """What is known of a data set before it is loaded, with its train/test sizes as used. An
    image folder's are counted from its files, one image opened for its shape; where the folder
    cannot be read they stay unknown (None), and loading it says why."""
    info = whole_dataset_info(data)
    n, n_test = info.train_size, info.test_size
    return dataclasses.replace(
        info,
        train_size=min(n, data.train_size) if n and data.train_size else (data.train_size or n),
        test_size=min(n_test, data.test_size) if n_test and data.test_size else (data.test_size or n_test))


def class_images(folder: Path) -> Iterator[Path]:
    """A class folder's images as torchvision's ImageFolder finds them: at any depth, through links;
    lazily, so that asking for the first stops there."""
    return (Path(root) / name for root, _, names in sorted(os.walk(folder, followlinks=True))
            for name in sorted(names) if Path(name).suffix.lower() in IMAGE_SUFFIXES)


@functools.lru_cache(maxsize=16)
def _image_folder_info(path: str) -> DatasetInfo:
    def images(split: Path) -> list[Path]:
        return [f for c in sorted(split.iterdir()) if c.is_dir() for f in class_images(c)]

    try:
        root = Path(path)
        train, test = images(root / "train"), images(root / "test")
        classes = [c for c in (root / "train").iterdir() if c.is_dir()]
        from PIL import Image  # only for an image folder's shape

        with Image.open(train[0]) as first:
            channels = 1 if first.mode == "L" else 3  # as sweep.training.data loads it
            width, height = first.size
    except (OSError, IndexError, ValueError):
        return DATASETS["image_folder"]
    return DatasetInfo(len(train), len(test), (channels, height, width), len(classes), hflip=True)

