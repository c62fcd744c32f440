"""Data sets: digits, image_folder on real CIFAR-10 JPEGs, random labels, augmentation,
and the offline error message."""

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from sweep.plan.spec import DataSpec
from sweep.plan.datasets import DataError, check_available
from sweep.training.data import augment, draw_augmentation, load_dataset, random_labels

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR = SHARED / "cifar10"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


def test_digits_shapes_split_and_standardisation():
    data = load_dataset(DataSpec("digits"))
    assert data.x_train.shape == (1297, 64) and data.x_test.shape == (500, 64)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.image_shape == (1, 8, 8) and data.num_classes == 10 and not data.hflip
    assert torch.bincount(torch.cat([data.y_train, data.y_test])).tolist() == [
        178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # Standardised per feature on the train split; raw pixels come back in [0, 1] as /16.
    raw = data.x_train * data.std + data.mean
    raw_std = raw.std(0)
    floor = 0.1 * raw_std.mean()
    assert torch.allclose(data.std, raw_std.clamp_min(floor), rtol=1e-4)
    assert data.x_train.mean(0).abs().max() < 1e-5
    varying = raw_std > floor
    assert 40 < int(varying.sum()) < 64  # digits has blank border pixels: those are floored
    assert torch.allclose(data.x_train[:, varying].std(0), torch.ones(int(varying.sum())),
                          atol=1e-4)
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = {tuple(row) for row in (digits.data / 16.0).round(4).tolist()}
    assert all(tuple(row) in pixels for row in raw[:50].double().round(decimals=4).tolist())


def test_digits_read_without_sklearn_equal_load_digits():
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from sweep.training.data import _digits_table

    digits = load_digits()
    table = _digits_table()
    assert np.array_equal(table[:, :64], digits.data) and np.array_equal(table[:, 64], digits.target)
    # The point of reading the file: a trial or scoring process never imports sklearn.
    code = "import sys; from sweep.training.data import _digits_table; _digits_table(); print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_digits_is_deterministic_and_cached():
    a = load_dataset(DataSpec("digits"))
    assert load_dataset(DataSpec("digits"), "cpu") is a  # one copy per process and device
    assert load_dataset(DataSpec("digits", train_size=300)) is not a
    small = load_dataset(DataSpec("digits", train_size=300, test_size=100))
    assert small.x_train.shape == (300, 64) and small.x_test.shape == (100, 64)
    again = load_dataset(DataSpec("digits", train_size=300, test_size=100, download=True))
    assert torch.equal(again.x_train, small.x_train) and torch.equal(again.y_test, small.y_test)


def test_other_class_random_labels_are_wrong_in_exactly_the_fraction_and_seeded():
    y = torch.arange(1000) % 10
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    for fraction in (0.0, 0.1, 0.25, 1.0):
        noisy = random_labels(y, fraction, 10, gen(0), "other_class")
        assert int((noisy != y).sum()) == round(fraction * 1000)
        assert noisy.min() >= 0 and noisy.max() < 10
    assert torch.equal(random_labels(y, 0.3, 10, gen(1), "other_class"), random_labels(y, 0.3, 10, gen(1), "other_class"))
    assert not torch.equal(random_labels(y, 0.3, 10, gen(1), "other_class"),
                           random_labels(y, 0.3, 10, gen(2), "other_class"))
    # New classes are spread over the other nine classes.
    noisy = random_labels(y, 1.0, 10, gen(3), "other_class")
    assert torch.bincount((noisy - y) % 10, minlength=10)[1:].min() > 60


def test_uniform_random_labels_are_independent_of_the_true_class():
    # Zhang et al.'s random labels: a replaced label is any class with probability 1/C, whatever
    # the true class, so about 1/C of the replaced labels are still right.
    n, classes = 20000, 10
    y = torch.arange(n) % classes
    gen = torch.Generator().manual_seed(4)
    noisy = random_labels(y, 0.5, classes, gen)
    replaced = torch.randperm(n, generator=torch.Generator().manual_seed(4))[:n // 2]
    assert torch.equal(noisy[~torch.isin(torch.arange(n), replaced)], y[~torch.isin(torch.arange(n), replaced)])
    counts = np.zeros((classes, classes))  # true class × drawn class, over the replaced labels
    np.add.at(counts, (y[replaced].numpy(), noisy[replaced].numpy()), 1)
    assert stats.chi2_contingency(counts).pvalue > 0.01  # the draw does not depend on the true class
    assert stats.chisquare(counts.sum(axis=0)).pvalue > 0.01  # and is uniform over the classes
    assert int((noisy[replaced] == y[replaced]).sum()) == pytest.approx(n // 2 / classes, rel=0.1)
    with pytest.raises(ValueError, match="unknown random-label draw 'flip': use uniform or other_class"):
        random_labels(y, 0.5, classes, gen, "flip")


@pytest.mark.parametrize("draw", ["uniform", "other_class"])
def test_a_network_learns_the_labels_its_spec_draws(draw):
    from sweep.plan.networks import networks
    from sweep.plan.spec import parse_spec
    from sweep.training.population import member_labels
    spec = parse_spec({"name": "labels", "datasets": ["digits"], "budget": {"max_epochs": 1},
                       "grid": {"widths": [8], "depths": [1], "learning_rates": [0.1], "random_label_fractions": [1.0]},
                       "training": {"random_labels": draw}})
    net, = networks(spec)
    data = load_dataset(net.dataset)
    labels = member_labels(net, data)
    assert torch.equal(labels, random_labels(data.y_train, 1.0, 10, net.generator("labels"), draw))
    right = float((labels == data.y_train).float().mean())
    assert right == 0.0 if draw == "other_class" else right == pytest.approx(0.1, abs=0.03)


def test_augment_matches_a_per_image_loop():
    gen = torch.Generator().manual_seed(0)
    c, h, w, pad = 3, 6, 5, 2
    raw = torch.rand(4, 7, c * h * w, generator=gen)
    shifts, flips = draw_augmentation(28, pad, True, gen)
    out = augment(raw, (c, h, w), shifts.view(4, 7, 2), flips.view(4, 7), pad)
    assert out.shape == raw.shape
    images = raw.reshape(28, c, h, w)
    for i in range(28):
        img = torch.nn.functional.pad(images[i], (pad, pad, pad, pad))
        dy, dx = shifts[i].tolist()
        crop = img[:, dy:dy + h, dx:dx + w]
        if flips[i]:
            crop = crop.flip(-1)
        assert torch.equal(out.reshape(28, c, h, w)[i], crop)
    assert flips.any() and not draw_augmentation(28, pad, False, gen)[1].any()


def test_missing_torchvision_data_offline(tmp_path):
    spec = DataSpec("mnist", data_root=str(tmp_path), download=False)
    with pytest.raises(DataError) as info:
        check_available(spec)
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "download: true" in message
    with pytest.raises(DataError, match="download: true"):
        load_dataset(spec)
    check_available(DataSpec("mnist", data_root=str(tmp_path), download=True))  # deferred


def test_image_folder_needs_train_and_test(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"test is missing or has no class folders"):
        check_available(DataSpec("image_folder", path=str(tmp_path)))


def test_image_folder_needs_two_classes_and_the_same_ones_in_both_splits(tmp_path):
    # ImageFolder numbers each split's classes alone: test/ without "bird" would shift its labels.
    for split, names in (("train", ("bird", "cat", "dog")), ("test", ("cat", "dog", "eel"))):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / "0.png").write_bytes(b"")
    spec = DataSpec("image_folder", path=str(tmp_path))
    with pytest.raises(DataError, match=r"only in train/: \['bird'\], only in test/: \['eel'\]"):
        check_available(spec)
    for split, name in (("test", "bird"), ("train", "eel")):
        (tmp_path / split / name).mkdir()
        (tmp_path / split / name / "0.png").write_bytes(b"")
    check_available(spec)
    # One class: random labels could not be drawn, and there is nothing to classify.
    one = tmp_path / "one"
    for split in ("train", "test"):
        (one / split / "cat").mkdir(parents=True)
        (one / split / "cat" / "0.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"one class folder \(cat\); a classifier needs two"):
        check_available(DataSpec("image_folder", path=str(one)))


def test_image_folder_refuses_a_class_without_images_before_training(tmp_path):
    from torchvision.datasets import ImageFolder

    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            if name == "cat":
                (tmp_path / split / name / "nested").mkdir()
                (tmp_path / split / name / "nested" / "0.PNG").write_bytes(b"")  # ImageFolder searches deep
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "test" / "dog" / "0.jpg").write_bytes(b"")
    spec = DataSpec("image_folder", path=str(tmp_path))
    with pytest.raises(DataError, match=r"1 class folder\(s\) of .*train hold no images \(dog\)"):
        check_available(spec)
    with pytest.raises(FileNotFoundError, match="dog"):  # what a trial would have met
        ImageFolder(str(tmp_path / "train"))
    (tmp_path / "train" / "dog" / "1.jpeg").write_bytes(b"")
    check_available(spec)
    assert len(ImageFolder(str(tmp_path / "train"))) == 2


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    if not CIFAR.is_dir():
        pytest.skip(f"real CIFAR-10 JPEGs not found at {CIFAR} (shared/data is absent)")
    root = tmp_path_factory.mktemp("cifar_jpg")
    for archive, keep in (("cifar10-train-jpg.tar.gz", 12), ("cifar10-test-jpg.tar.gz", 6)):
        with tarfile.open(CIFAR / archive) as tar:
            members = [m for m in tar if m.isfile() and int(Path(m.name).stem) < keep]
            tar.extractall(root, members=members, filter="data")
    return root


def test_image_folder_on_real_jpegs(cifar_folder):
    data = load_dataset(DataSpec("image_folder", path=str(cifar_folder)))
    assert data.x_train.shape == (120, 3072) and data.x_test.shape == (60, 3072)
    assert data.image_shape == (3, 32, 32) and data.num_classes == 10 and data.hflip
    assert torch.bincount(data.y_train).tolist() == [12] * 10
    # Independent decode with Pillow: image k of class c is train/<c>/000k.jpg (sorted order).
    raw = (data.x_train * data.std + data.mean).view(120, 3, 32, 32)
    for index in (0, 37, 119):
        cls, k = divmod(index, 12)
        path = cifar_folder / "train" / CLASSES[cls] / f"{k:04d}.jpg"
        expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        assert data.y_train[index] == cls
        assert np.abs(raw[index].permute(1, 2, 0).numpy() - expected).max() < 1e-5


def test_image_folder_subset_decodes_only_what_it_keeps(cifar_folder):
    data = load_dataset(DataSpec("image_folder", path=str(cifar_folder), train_size=30,
                                 test_size=20))
    assert data.x_train.shape == (30, 3072) and data.x_test.shape == (20, 3072)
    again = load_dataset(DataSpec("image_folder", path=str(cifar_folder), train_size=30,
                                  test_size=20, download=True))
    assert torch.equal(data.x_train, again.x_train)
