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


def augmentation_pad(image_shape: tuple[int, int, int]) -> int:
    """The usual largest translation in pixels: 1 for 8×8 digits, 3 for 28×28, 4 for 32×32 (as
    in the usual pad-4-and-crop CIFAR augmentation); `training.augmentation_shift` overrides it."""
    return max(1, image_shape[1] // 8)


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

