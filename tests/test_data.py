"""Dataset loading: image folders, .npz, IDX (Fashion-MNIST), and every kind of bad data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from tinyscale.errors import DataError
from tinyscale.training import data
from tinyscale.training.data import (
    Dataset,
    load_dataset,
    load_fashion_mnist,
    network_inputs,
    quantize,
    split,
)


def write_png(path: Path, image: np.ndarray) -> None:
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())


def make_image_folder(root: Path, classes=("cat", "dog"), per_class=4, size=12, channels=3) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        for i in range(per_class):
            image = rng.integers(0, 255, size=(size, size, channels), dtype=np.uint8)
            write_png(root / name / f"{i}.png", image)
    return root


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


# ---------------------------------------------------------------------------
# .npz


def test_npz_uint8_grey_images_and_integer_labels(tmp_path):
    x = np.arange(6 * 5 * 5, dtype=np.uint8).reshape(6, 5, 5)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    dataset = load_dataset(tmp_path / "d.npz")
    assert dataset.x.shape == (6, 5, 5, 1)
    assert dataset.classes == 3
    assert dataset.class_names == ("0", "1", "2")
    assert np.array_equal(dataset.y, y)


def test_npz_float_images_one_hot_labels_and_class_names(tmp_path):
    x = np.random.default_rng(0).random((4, 6, 6, 3)).astype(np.float32)
    y = np.eye(2)[[0, 1, 1, 0]]
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["no", "yes"]))
    dataset = load_dataset(tmp_path / "d.npz")
    assert dataset.x.dtype == np.float32 and dataset.channels == 3
    assert list(dataset.y) == [0, 1, 1, 0]
    assert dataset.class_names == ("no", "yes")


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((0, 4, 4), np.uint8), "y": np.zeros((0,), int)}, "empty"),
        ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.zeros((2,), int)}, "3 images but 2 labels"),
        ({"x": np.zeros((3, 4, 4), np.uint8)}, "missing y"),
        ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.array([0, -1, 1])}, "negative"),
        ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.array([0.5, 1, 0])}, "integers"),
        ({"x": np.zeros((3, 4, 4), np.uint8), "y": np.array([0, 0, 0])}, "at least 2 classes"),
        ({"x": np.zeros((3, 4, 4, 5), np.uint8), "y": np.array([0, 1, 0])}, "images must be"),
        ({"x": np.full((2, 4, 4), np.nan), "y": np.array([0, 1])}, "NaN"),
        ({"x": np.zeros((2, 4, 4)), "y": np.array([0, 5]), "class_names": np.array(["a", "b"])}, "class_names"),
    ],
)
def test_bad_npz_is_one_data_error(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "bad.npz")


def test_corrupt_npz_and_missing_path(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="no dataset"):
        load_dataset(tmp_path / "nothing-here")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported dataset"):
        load_dataset(tmp_path / "notes.txt")


# ---------------------------------------------------------------------------
# Image folder


def test_image_folder_classes_from_sub_folders(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=("cat", "dog", "emu"), per_class=3)
    dataset = load_dataset(root)
    assert dataset.class_names == ("cat", "dog", "emu")
    assert dataset.x.shape == (9, 12, 12, 3) and dataset.x.dtype == np.uint8
    assert sorted(np.bincount(dataset.y)) == [3, 3, 3]


def test_image_folder_mixed_sizes_and_grey_are_unified(tmp_path):
    root = tmp_path / "images"
    write_png(root / "a" / "0.png", np.zeros((10, 10, 1), np.uint8))
    write_png(root / "a" / "1.png", np.full((20, 16, 3), 200, np.uint8))
    write_png(root / "b" / "0.png", np.full((10, 10, 1), 255, np.uint8))
    dataset = load_dataset(root)
    assert dataset.x.shape == (3, 10, 10, 3)
    assert dataset.x[2].min() == 255  # grey promoted to RGB unchanged


def test_image_folder_bad_layouts(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="one sub-folder per class"):
        load_dataset(empty)
    root = make_image_folder(tmp_path / "images", per_class=1)
    (root / "ghost").mkdir()
    with pytest.raises(DataError, match="ghost.*no images"):
        load_dataset(root)
    broken = make_image_folder(tmp_path / "broken", per_class=1)
    (broken / "cat" / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="cannot decode image .*bad.png.*--strict"):
        load_dataset(broken, strict=True)


def test_image_folder_skips_unreadable_images_with_one_counting_warning(tmp_path, caplog):
    root = make_image_folder(tmp_path / "images", per_class=3)
    for i in range(5):  # more than the warning names
        (root / "dog" / f"broken{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "cat" / "0-empty.png").write_bytes(b"")  # sorts first: the image size comes from the next one
    with caplog.at_level("WARNING", logger="tinyscale"):
        dataset = load_dataset(root)
    assert len(dataset) == 6 and sorted(np.bincount(dataset.y)) == [3, 3]
    assert dataset.x.shape[1:] == (12, 12, 3)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "skipped 6 unreadable images" in warnings[0] and "0-empty.png" in warnings[0]
    assert "broken1.jpg" in warnings[0] and "broken4.jpg" not in warnings[0] and "and 3 more" in warnings[0]


def test_image_folder_class_without_a_readable_image_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=("cat",), per_class=2)
    (root / "dog").mkdir()
    (root / "dog" / "a.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"dog: no readable image \(1 could not be decoded, e.g. a.png\)"):
        load_dataset(root)


# ---------------------------------------------------------------------------
# IDX / Fashion-MNIST


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_gz_or_not(tmp_path, compress):
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    labels = np.array([1, 0, 9], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    dataset = load_fashion_mnist("test", directory=tmp_path)
    assert dataset.x.shape == (3, 4, 4, 1)
    assert np.array_equal(dataset.x[..., 0], images)
    assert list(dataset.y) == [1, 0, 9]
    assert dataset.classes == 10


def test_truncated_idx_and_missing_files(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3)), False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes((tmp_path / "train-images-idx3-ubyte").read_bytes()[:-4])
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2), False)
    with pytest.raises(DataError, match="IDX header promises"):
        load_fashion_mnist("train", directory=tmp_path)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", directory=tmp_path)


@pytest.mark.skipif(not (data.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists()
                    and not (data.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte").exists(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_test_split():
    dataset = load_dataset("fashion-mnist", "test")
    assert dataset.x.shape == (10_000, 28, 28, 1)
    assert np.array_equal(np.bincount(dataset.y), [1000] * 10)
    assert dataset.class_names[9] == "ankle boot"


# ---------------------------------------------------------------------------
# Shaping for a network


def _dataset(n=40, classes=4, channels=1) -> Dataset:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(n, 8, 8, channels), dtype=np.uint8)
    return Dataset(x, np.arange(n) % classes, tuple(str(i) for i in range(classes)), "test")


def test_network_inputs_resize_and_channels():
    x = np.full((2, 8, 8, 1), 255, np.uint8)
    rgb = network_inputs(x, 16, 3)
    assert rgb.shape == (2, 16, 16, 3) and rgb.dtype == np.float32
    assert np.allclose(rgb, 1.0)
    grey = network_inputs(np.full((1, 4, 4, 3), 0.5, np.float32), (6, 10), 1)
    assert grey.shape == (1, 6, 10, 1)
    assert np.allclose(grey, 0.5, atol=1e-5)


def test_quantize_saturates_and_rounds():
    q = quantize(np.array([0.0, 0.5, 1.0, 2.0]), 1 / 255, -128)
    assert q.dtype == np.int8
    assert list(q) == [-128, 0, 127, 127]


def test_split_is_stratified_disjoint_and_seeded():
    dataset = _dataset()
    kept, held = split(dataset, 0.25, seed=3)
    assert len(kept) + len(held) == len(dataset)
    assert np.array_equal(np.bincount(held.y), [2, 2, 2, 2])
    again_kept, again_held = split(dataset, 0.25, seed=3)
    assert np.array_equal(held.x, again_held.x)


def test_limit_takes_a_seeded_subset():
    dataset = _dataset()
    assert len(dataset.limit(10, seed=1)) == 10
    assert np.array_equal(dataset.limit(10, seed=1).x, dataset.limit(10, seed=1).x)
    assert dataset.limit(None) is dataset and dataset.limit(1000) is dataset
