"""Data sets as whole tensors on the device, plus seeded random labels and augmentation.

Every data set becomes flat float32 inputs standardised per feature with the training split's
mean and std, exactly what the networks see. Raw pixels are scaled to [0, 1] first;
`raw = x * std + mean` gives them back (augmentation works on raw pixels).

Splits:
- `digits`: scikit-learn's 1797 8×8 digits (offline), split by a fixed seeded permutation into
  1297 train / 500 test.
- `mnist`, `fashion_mnist`, `cifar10`, `cifar100`: torchvision's standard train/test splits.
- `image_folder`: `<path>/train/<class>/*` and `<path>/test/<class>/*` (torchvision.ImageFolder);
  all images must have one size.
`train_size` / `test_size` take the first examples of a fixed seeded permutation of a split.

Augmentation (per example, on the device): translations by up to a few pixels (zero padding,
then a crop; `sweep.plan.networks.augmentation_of`) and, for natural images only (cifar10,
cifar100, image_folder), horizontal flips. Digits, MNIST and Fashion-MNIST get no flips: a
mirrored 2, 5 or 7 is not a digit, and the paper flips natural images only.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sweep.plan.datasets import DATASETS, TORCHVISION, DataError, check_available, data_root, image_folder_splits
from sweep.plan.spec import DataSpec

_SPLIT_SEED = 0  # fixed: the digits split and train/test subsets never depend on a sweep
_STD_FLOOR = 0.1  # × the mean feature std: near-constant pixels must not blow up test inputs


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    x_train: torch.Tensor  # [N, d] float32, standardised
    y_train: torch.Tensor  # [N] int64 (the true labels)
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W); d = C·H·W
    mean: torch.Tensor  # [d] raw-pixel mean of the training split
    std: torch.Tensor  # [d] floored std used for standardising
    hflip: bool  # horizontal flips preserve labels (natural images; not digits)

    @property
    def input_dim(self) -> int:
        return self.x_train.shape[1]


def _subset(n: int, size: int | None) -> np.ndarray:
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(_SPLIT_SEED).permutation(n)[:size])


def _digits_table() -> np.ndarray:
    """The [1797, 65] table behind sklearn's load_digits (64 pixels 0..16, then the label).

    Read straight from the file scikit-learn ships: importing sklearn costs every trial and
    scoring process about a second and a half of CPU."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec and spec.submodule_search_locations) or ():
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return np.loadtxt(path, delimiter=",", dtype=np.float64)
    from sklearn.datasets import load_digits  # a layout we do not know: let sklearn find it

    digits = load_digits()
    return np.column_stack([digits.data, digits.target])


def _load_digits() -> tuple[np.ndarray, ...]:
    table = _digits_table()
    x = table[:, :64].astype(np.float32).reshape(-1, 1, 8, 8) / 16.0  # [1797, 1, 8, 8] in [0, 1]
    y = table[:, 64].astype(np.int64)
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(x))
    train, test = order[:1297], order[1297:]
    return x[train], y[train], x[test], y[test], 10


def _load_torchvision(spec: DataSpec) -> tuple[np.ndarray, ...]:
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION[spec.name][0])
    check_available(spec)
    try:
        splits = [cls(str(data_root(spec)), train=train, download=spec.download)
                  for train in (True, False)]
    except (RuntimeError, OSError) as exc:  # torchvision: files missing / download failed
        raise DataError(f"{spec.name}: could not load from {data_root(spec)} ({exc}); put the "
                        "files there in torchvision's layout or set download: true") from exc

    def images(ds) -> np.ndarray:
        data = np.asarray(ds.data, dtype=np.float32) / 255.0
        return data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # → NCHW

    (tr, te) = splits
    return (images(tr), np.asarray(tr.targets), images(te), np.asarray(te.targets),
            len(tr.classes))


def _load_image_folder(spec: DataSpec) -> tuple[np.ndarray, ...]:
    from torchvision.datasets import ImageFolder

    train_dir, test_dir = image_folder_splits(Path(spec.path))
    train, test = ImageFolder(str(train_dir)), ImageFolder(str(test_dir))
    mode = "L" if train.loader(train.samples[0][0]).mode == "L" else "RGB"

    def read(ds, size) -> tuple[np.ndarray, np.ndarray]:
        keep = _subset(len(ds.samples), size)
        arrays = []
        for i in keep:
            path = ds.samples[i][0]
            arr = np.asarray(ds.loader(path).convert(mode), dtype=np.float32) / 255.0
            if arrays and arr.shape != arrays[0].shape:
                raise DataError(f"image_folder: {path} is {arr.shape[:2]} but earlier images "
                                f"are {arrays[0].shape[:2]}; resize all images to one size")
            arrays.append(arr)
        x = np.stack(arrays)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return x, np.asarray([ds.targets[i] for i in keep])

    # Subset before decoding: a 500-image train_size must not decode 50,000 JPEGs.
    x_tr, y_tr = read(train, spec.train_size)
    x_te, y_te = read(test, spec.test_size)
    return x_tr, y_tr, x_te, y_te, len(train.classes)


def _load_host(spec: DataSpec) -> tuple:
    if spec.name == "digits":
        x_tr, y_tr, x_te, y_te, classes = _load_digits()
    elif spec.name == "image_folder":
        x_tr, y_tr, x_te, y_te, classes = _load_image_folder(spec)
    else:
        x_tr, y_tr, x_te, y_te, classes = _load_torchvision(spec)
    if spec.name != "image_folder":  # image_folder subsets before decoding
        tr, te = _subset(len(x_tr), spec.train_size), _subset(len(x_te), spec.test_size)
        x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_te[te], y_te[te]
    shape = tuple(x_tr.shape[1:])
    x_tr = torch.from_numpy(np.ascontiguousarray(x_tr.reshape(len(x_tr), -1)))
    x_te = torch.from_numpy(np.ascontiguousarray(x_te.reshape(len(x_te), -1)))
    mean = x_tr.mean(0)
    std = x_tr.std(0)
    std = std.clamp_min(_STD_FLOOR * std.mean())
    return (((x_tr - mean) / std), torch.as_tensor(y_tr, dtype=torch.int64),
            ((x_te - mean) / std), torch.as_tensor(y_te, dtype=torch.int64),
            classes, shape, mean, std)


@functools.lru_cache(maxsize=8)
def _load_on(spec: DataSpec, device: str) -> Dataset:
    x_tr, y_tr, x_te, y_te, classes, shape, mean, std = _load_host(spec)
    to = lambda t: t.to(device)  # noqa: E731
    return Dataset(spec.name, to(x_tr), to(y_tr), to(x_te), to(y_te), classes, shape,
                   to(mean), to(std), DATASETS[spec.name].hflip)


def load_dataset(spec: DataSpec, device: str | torch.device = "cpu") -> Dataset:
    """The data set on `device`, standardised; deterministic, and cached per process so every
    trainer and scorer in a process shares one copy on the device."""
    return _load_on(spec, str(torch.device(device)))


def random_labels(y: torch.Tensor, fraction: float, num_classes: int, generator: torch.Generator,
                  draw: str = "uniform") -> torch.Tensor:
    """A copy of `y` with exactly round(fraction·N) labels replaced by random classes.

    The replaced positions and their new classes come from `generator` (a network's own
    ``labels`` stream). `draw` "uniform": new classes uniform over all classes, independent of the
    image (about 1/C of them equal the true one); "other_class": uniform over the *other* classes,
    so exactly that many labels are wrong.
    """
    n = len(y)
    count = round(fraction * n)
    labels = y.clone()
    if count == 0:
        return labels
    where = torch.randperm(n, generator=generator)[:count].to(y.device)
    if draw == "uniform":
        labels[where] = torch.randint(0, num_classes, (count,), generator=generator).to(y.device)
    elif draw == "other_class":
        shift = torch.randint(1, num_classes, (count,), generator=generator).to(y.device)
        labels[where] = (y[where] + shift) % num_classes
    else:
        raise ValueError(f"unknown random-label draw {draw!r}: use uniform or other_class")
    return labels


def draw_augmentation(n: int, pad: int, hflip: bool, generator: torch.Generator):
    """Per-example shifts [n, 2] in [0, 2·pad] (row, column offset into the padded image) and
    flip flags [n]; all False when flips would change labels."""
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return shifts, flips & hflip


def augment(raw: torch.Tensor, image_shape: tuple[int, int, int], shifts: torch.Tensor,
            flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate (zero padding, i.e. black) and flip each image of `raw` [..., d] on its device.

    One gather for the whole batch: the output pixel (r, c) of an image comes from padded pixel
    (r + shift_row, c' + shift_col) where c' = W−1−c for flipped images.
    """
    c, h, w = image_shape
    lead = raw.shape[:-1]
    imgs = raw.reshape(-1, c, h, w)
    padded = torch.nn.functional.pad(imgs, (pad, pad, pad, pad))
    shifts = shifts.reshape(-1, 2)
    cols = torch.arange(w, device=raw.device)
    cols = torch.where(flips.reshape(-1, 1), w - 1 - cols, cols)  # [n, W]
    rows = torch.arange(h, device=raw.device) + shifts[:, :1]  # [n, H]
    cols = cols + shifts[:, 1:]
    n = imgs.shape[0]
    out = padded[torch.arange(n, device=raw.device)[:, None, None], :, rows[:, :, None],
                 cols[:, None, :]]  # [n, H, W, C]
    return out.permute(0, 3, 1, 2).reshape(*lead, c * h * w)
