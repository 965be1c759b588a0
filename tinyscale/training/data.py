"""Datasets for training and simulation: image folders, .npz files, Fashion-MNIST.

A :class:`Dataset` keeps images at their stored size (uint8 0..255 or float
0..1) and labels as integers; :func:`network_inputs` resizes a batch to a
network's resolution and channel count only when it is needed, so a 60,000
image set never exists as float copies at every resolution.

Sources, as named on the command line:

- ``fashion-mnist``: the IDX files of Debian's ``dataset-fashion-mnist``
  package (``apt-get install dataset-fashion-mnist``);
- ``PATH.npz``: arrays ``x`` (N,H,W) or (N,H,W,C) and ``y`` (N,) integer labels
  or (N,K) one-hot, optionally ``class_names``;
- ``DIR``: one sub-folder per class holding PNG/JPEG/BMP/GIF images (the layout
  of Keras' ``image_dataset_from_directory``); images are decoded with
  TensorFlow's decoders, imported only for this format.
"""

from __future__ import annotations

import gzip
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyscale.errors import DataError

log = logging.getLogger(__name__)

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_DIR = Path(os.environ.get("TINYSCALE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLITS = ("train", "test")

# IDX type byte -> numpy big-endian dtype (http://yann.lecun.com/exdb/mnist/).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Dataset:
    """Images (N,H,W,C) as uint8 0..255 or float32 0..1, integer labels (N,)."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        _check_arrays(self.x, self.y, len(self.class_names), self.source)

    @property
    def classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.x.shape[-1])

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: np.ndarray) -> "Dataset":
        return Dataset(self.x[indices], self.y[indices], self.class_names, self.source)

    def limit(self, count: int | None, seed: int = 0) -> "Dataset":
        """A random subset of `count` samples (all of them if `count` is None or larger)."""
        if count is None or count >= len(self):
            return self
        if count < 1:
            raise DataError(f"--limit must be at least 1, got {count}")
        order = np.random.default_rng(seed).permutation(len(self))[:count]
        return self.subset(np.sort(order))


def _check_arrays(x: np.ndarray, y: np.ndarray, classes: int, source: str) -> None:
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{source}: images must be (N, H, W) or (N, H, W, 1|3), got shape {x.shape}")
    if len(x) == 0:
        raise DataError(f"{source}: the dataset is empty")
    if y.shape != (len(x),):
        raise DataError(f"{source}: {len(x)} images but labels of shape {y.shape}")
    if classes < 2:
        raise DataError(f"{source}: need at least 2 classes, found {classes}")
    if y.min() < 0 or y.max() >= classes:
        raise DataError(f"{source}: labels must lie in 0..{classes - 1}, found {y.min()}..{y.max()}")


def split(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Hold out `fraction` of every class (at least one sample each): (kept, held_out)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"a split fraction must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in range(dataset.classes):
        members = np.flatnonzero(dataset.y == label)
        if len(members) < 2:
            continue  # a class with one sample cannot be split; it stays for training
        count = max(1, int(round(len(members) * fraction)))
        held.append(rng.choice(members, size=count, replace=False))
    if not held:
        raise DataError(f"{dataset.source}: too few samples to hold out a validation split")
    held_out = np.sort(np.concatenate(held))
    kept = np.setdiff1d(np.arange(len(dataset)), held_out)
    return dataset.subset(kept), dataset.subset(held_out)


# ---------------------------------------------------------------------------
# Loading


def load_dataset(source: str | Path, split_name: str = "train", image_size: int | None = None,
                 strict: bool = False) -> Dataset:
    """Load `source` (see the module doc). `split_name` picks Fashion-MNIST's train or test set.

    `image_size` sets the common side that an image folder is resized to while
    loading (its images may differ in size); other formats keep their size.
    `strict` refuses an image folder with any undecodable image instead of
    skipping those with a warning.
    """
    text = str(source)
    if text == FASHION_MNIST:
        return load_fashion_mnist(split_name)
    path = Path(text)
    if path.is_dir():
        return load_image_folder(path, image_size=image_size, strict=strict)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    if not path.exists():
        raise DataError(f"no dataset at {text!r}: give an image folder, a .npz file or {FASHION_MNIST!r}")
    raise DataError(f"{text}: unsupported dataset; give an image folder, a .npz file or {FASHION_MNIST!r}")


def _read_idx(path: Path) -> np.ndarray:
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(v) for v in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX header promises {expected} bytes of data, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DataError(
        f"Fashion-MNIST not found: {directory / stem}[.gz] is missing; "
        "install it with `apt-get install dataset-fashion-mnist`"
    )


def load_fashion_mnist(split_name: str = "train", directory: Path | None = None) -> Dataset:
    """Fashion-MNIST's 60,000 training or 10,000 test images (28x28 grey, uint8)."""
    if split_name not in SPLITS:
        raise DataError(f"unknown split {split_name!r}; use one of {', '.join(SPLITS)}")
    directory = directory or FASHION_MNIST_DIR
    prefix = "train" if split_name == "train" else "t10k"
    images = _read_idx(_idx_file(directory, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_idx_file(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3:
        raise DataError(f"Fashion-MNIST images in {directory} have shape {images.shape}, expected (N, 28, 28)")
    return Dataset(images[..., None], labels.astype(np.int64), FASHION_MNIST_CLASSES, f"{FASHION_MNIST}:{split_name}")


def _labels_from_array(y: np.ndarray, source: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot (or probabilities): the largest entry
        return np.argmax(y, axis=1).astype(np.int64)
    y = y.reshape(-1) if y.ndim == 2 else y
    if y.ndim != 1:
        raise DataError(f"{source}: labels y must be (N,) or one-hot (N, K), got shape {y.shape}")
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise DataError(f"{source}: labels y must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def _images_from_array(x: np.ndarray, source: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim == 4 and x.shape[-1] == 4:
        x = x[..., :3]  # drop alpha
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise DataError(f"{source}: images contain NaN or infinite values")
        top = float(x.max()) if x.size else 0.0
        if x.min() < 0 or top > 255:
            raise DataError(f"{source}: float images must lie in [0, 1] (or 0..255), found {x.min()}..{top}")
        # Float data in 0..255 is treated like uint8; in 0..1 it is kept.
        return x.astype(np.float32) / 255.0 if top > 1.0 else x.astype(np.float32)
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{source}: integer images must lie in 0..255")
        return x.astype(np.uint8)
    raise DataError(f"{source}: images x have unsupported dtype {x.dtype}")


def load_npz(path: Path) -> Dataset:
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise DataError(f"{source}: the .npz needs arrays x and y; missing {', '.join(sorted(missing))}")
            x, y = archive["x"], archive["y"]
            names = archive["class_names"] if "class_names" in archive.files else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # np.load on corrupt files
        raise DataError(f"cannot read {source}: {exc}") from None
    if len(x) != len(y):
        raise DataError(f"{source}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{source}: the dataset is empty")
    images = _images_from_array(np.asarray(x), source)
    labels = _labels_from_array(np.asarray(y), source)
    if labels.min() < 0:
        raise DataError(f"{source}: labels must not be negative, found {labels.min()}")
    if names is not None:
        class_names = tuple(str(name) for name in names.reshape(-1))
        if labels.max() >= len(class_names):
            raise DataError(f"{source}: label {labels.max()} but only {len(class_names)} class_names")
    else:
        class_names = tuple(str(i) for i in range(int(labels.max()) + 1))
    return Dataset(images, labels, class_names, source)


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: an image folder needs one sub-folder per class; found none")
    return folders


def _decode_image(tf, path: Path, size: int | None) -> np.ndarray:
    try:
        image = tf.io.decode_image(path.read_bytes(), channels=0, expand_animations=False)
    except (OSError, tf.errors.OpError, ValueError):
        raise DataError(f"cannot decode image {path}") from None
    image = image.numpy()
    channels = image.shape[-1]
    image = image[..., :3] if channels == 4 else image[..., :1] if channels == 2 else image
    if size is not None and image.shape[:2] != (size, size):
        image = tf.image.resize(image, (size, size), antialias=True).numpy()
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image


# How many skipped files a warning names; the count covers all of them.
NAMED_SKIPPED_IMAGES = 3


def _skipped_warning(root: Path, skipped: list[Path]) -> None:
    names = ", ".join(str(path) for path in skipped[:NAMED_SKIPPED_IMAGES])
    more = f" and {len(skipped) - NAMED_SKIPPED_IMAGES} more" if len(skipped) > NAMED_SKIPPED_IMAGES else ""
    log.warning("skipped %d unreadable image%s in %s: %s%s (--strict refuses them)",
                len(skipped), "" if len(skipped) == 1 else "s", root, names, more)


def _no_readable_image(folder: Path, skipped: list[Path]) -> DataError:
    examples = ", ".join(path.name for path in skipped[:NAMED_SKIPPED_IMAGES])
    return DataError(f"{folder}: no readable image ({len(skipped)} could not be decoded, e.g. {examples})")


def load_image_folder(root: Path, image_size: int | None = None, strict: bool = False) -> Dataset:
    """One sub-folder per class; images resized to `image_size` (default: the first image's size).

    An undecodable image is skipped with a warning (one for the whole folder,
    counting them) unless `strict`; a class without any readable image is an error.
    """
    from tinyscale.quiet import quiet_tensorflow

    with quiet_tensorflow():
        import tensorflow as tf  # noqa: PLC0415 - only this format needs TF's decoders

    folders = _class_folders(root)
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[Path] = []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"{folder}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        loaded = len(images)
        for path in files:
            try:
                image = _decode_image(tf, path, image_size)
            except DataError as exc:
                if strict:
                    raise DataError(f"{exc} (--strict refuses unreadable images)") from None
                skipped.append(path)
                continue
            if image_size is None:
                image_size = image.shape[0] if image.shape[0] == image.shape[1] else max(image.shape[:2])
                if image.shape[:2] != (image_size, image_size):
                    image = _decode_image(tf, path, image_size)
            images.append(image)
            labels.append(label)
        if len(images) == loaded:
            raise _no_readable_image(folder, [path for path in skipped if path.parent == folder])
    if skipped:
        _skipped_warning(root, skipped)
    # Mixed grey and colour images: promote the grey ones to RGB.
    if any(image.shape[-1] == 3 for image in images):
        images = [np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image for image in images]
    log.info("loaded %d images in %d classes from %s", len(images), len(folders), root)
    return Dataset(np.stack(images), np.asarray(labels, dtype=np.int64), tuple(p.name for p in folders), str(root))


# ---------------------------------------------------------------------------
# Shaping a batch for a network


def check_classes(dataset: Dataset, classes: int, what: str) -> None:
    """DataError if `what` (a network, a model) predicts a different number of classes."""
    if dataset.classes != classes:
        raise DataError(
            f"{dataset.source} has {dataset.classes} classes but {what} predicts {classes}; "
            f"use data with {classes} classes or a network built for {dataset.classes}"
        )


def network_inputs(x: np.ndarray, resolution: int | tuple[int, int], channels: int) -> np.ndarray:
    """Images as float32 in [0, 1], resized to `resolution` (side or (height, width)), grey <-> RGB."""
    size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    batch = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if batch.shape[-1] == 3 and channels == 1:
        batch = batch @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]  # ITU-R 601 luma
    elif batch.shape[-1] == 1 and channels == 3:
        batch = np.repeat(batch, 3, axis=-1)
    if batch.shape[1:3] != size:
        batch = _resize(batch, size)
    return np.clip(batch, 0.0, 1.0)


def _resize(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from tinyscale.quiet import quiet_tensorflow

    with quiet_tensorflow():
        import tensorflow as tf  # noqa: PLC0415

    return tf.image.resize(batch, size, method="bilinear").numpy()


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str = "int8") -> np.ndarray:
    """Float inputs to `dtype` (int8, int16) with a tensor's scale and zero point (round, saturate)."""
    if scale <= 0:
        raise DataError(f"the model's input scale must be positive, got {scale}")
    limits = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, limits.min, limits.max).astype(dtype)
