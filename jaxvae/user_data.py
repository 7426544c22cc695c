"""The user's own data: ``.npy``, ``.npz`` and ``.csv`` files, validated before any training.

- ``.npy``: one array of examples, shape (N, ...); no labels.
- ``.npz``: the examples under ``x`` (or ``data``, ``X``, ``features``, or the only array that
  is not labels), labels under ``y`` or ``labels``; or a ready split ``x_train``, ``x_test``
  (with optional ``y_train``, ``y_test``), used as it is.
- ``.csv``: one example per row, comma separated, an optional header row (needed to name a
  label column). ``label_column`` (a header name, or a 0-based index) holds the labels: ints,
  or names mapped to 0, 1, ... in sorted order. Every other column is a feature.

uint8 arrays are taken as 8-bit pixels and divided by 255; anything else is used as it is
(float32). Without a ready split, the examples are split deterministically: stratified by label
(``test_fraction`` of every class) when there are labels, else a seeded random split.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

SUFFIXES = (".npy", ".npz", ".csv")
X_KEYS = ("x", "data", "X", "features")
Y_KEYS = ("y", "labels")


class DataFileNotFoundError(FileNotFoundError, ValueError):
    """A dataset file that does not exist."""


def is_user_file(name: str) -> bool:
    """Whether a dataset name is a path to a user file (by its suffix)."""
    return Path(str(name)).suffix.lower() in SUFFIXES


def _examples(x: np.ndarray, path: Path, what: str = "examples") -> np.ndarray:
    """Checks a raw array of examples and returns it as float32 (uint8 pixels / 255)."""
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number)
                                 or np.issubdtype(x.dtype, np.bool_)):
        raise TypeError(f"{path}: {what} must be numeric, got dtype {x.dtype}")
    if x.ndim == 0 or x.shape[0] == 0 or x.size == 0:
        raise ValueError(f"{path}: holds no {what} (shape {x.shape})")
    if x.ndim == 1:
        raise ValueError(f"{path}: {what} must have shape (num_examples, features...), got "
                         f"{x.shape}; a single feature per example needs shape (N, 1)")
    scaled = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    finite = np.isfinite(scaled)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise ValueError(f"{path}: {what} contain NaN or Inf ({int((~finite).sum())} values, "
                         f"first in example {row}); clean or drop those examples")
    return scaled


def _labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{path}: labels must have shape ({n},), one per example, got {y.shape}")
    if np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_):
        return y.astype(np.int32)
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{path}: labels must be whole numbers (class ids), got e.g. "
                             f"{y[~(y == np.round(y))][:3].tolist()}")
        return y.astype(np.int32)
    return np.unique(y.astype(str), return_inverse=True)[1].astype(np.int32)


def _load_npy(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as e:  # an object array, or not an .npy file
        raise ValueError(f"{path}: not a numeric .npy array ({e})") from None
    return _examples(x, path), None


def _load_npz(path: Path):
    """(x, y) or the ready split ((x_train, y_train), (x_test, y_test))."""
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a readable .npz archive ({e})") from None
    with archive:
        keys = list(archive.keys())
        if not keys:
            raise ValueError(f"{path}: holds no arrays (an empty .npz)")
        try:
            arrays = {k: archive[k] for k in keys}
        except ValueError as e:
            raise ValueError(f"{path}: holds an array that is not numeric ({e})") from None
    if "x_train" in arrays or "x_test" in arrays:
        if not {"x_train", "x_test"} <= set(arrays):
            raise ValueError(f"{path}: a ready split needs both x_train and x_test, found {keys}")
        parts = []
        for part in ("train", "test"):
            x = _examples(arrays[f"x_{part}"], path, f"x_{part}")
            y = arrays.get(f"y_{part}")
            parts.append((x, None if y is None else _labels(y, len(x), path)))
        return tuple(parts)
    x_key = next((k for k in X_KEYS if k in arrays), None)
    y_key = next((k for k in Y_KEYS if k in arrays), None)
    if x_key is None:
        others = [k for k in keys if k != y_key]
        if len(others) != 1:
            raise ValueError(f"{path}: cannot tell which array holds the examples among {keys}; "
                             f"name it one of {list(X_KEYS)} (labels: {list(Y_KEYS)})")
        x_key = others[0]
    x = _examples(arrays[x_key], path)
    y = None if y_key is None else _labels(arrays[y_key], len(x), path)
    return x, y


def _load_csv(path: Path, label_column: str | int | None):
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise ValueError(f"{path}: the file is empty (no rows)")
    header = None
    if not all(_is_number(cell) for cell in rows[0]):
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
    if not rows:
        raise ValueError(f"{path}: has a header but no data rows")
    width = len(header) if header is not None else len(rows[0])
    first_line = 2 if header is not None else 1
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"{path}: ragged rows: line {i + first_line} has {len(row)} values, "
                             f"expected {width} (as the {'header' if header else 'first row'})")
    label_idx = _label_index(label_column, header, width, path)
    feature_idx = [j for j in range(width) if j != label_idx]
    if not feature_idx:
        raise ValueError(f"{path}: no feature columns besides the label column")
    x = np.empty((len(rows), len(feature_idx)), np.float32)
    for i, row in enumerate(rows):
        for k, j in enumerate(feature_idx):
            cell = row[j].strip()
            try:
                x[i, k] = float(cell)
            except ValueError:
                column = repr(header[j]) if header is not None else str(j)
                raise ValueError(f"{path}: non-numeric value {cell!r} at line {i + first_line}, "
                                 f"column {column}; every feature must be a number (give a "
                                 "label column with --label-column)") from None
    x = _examples(x, path)
    y = None
    if label_idx is not None:
        cells = [row[label_idx].strip() for row in rows]
        if all(_is_number(c) for c in cells):
            y = _labels(np.array([float(c) for c in cells]), len(x), path)
        else:
            y = _labels(np.array(cells), len(x), path)
    return x, y


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _label_index(label_column, header, width: int, path: Path) -> int | None:
    if label_column is None:
        return None
    if header is not None and str(label_column) in header:
        return header.index(str(label_column))
    if str(label_column).lstrip("-").isdigit():
        j = int(label_column)
        if -width <= j < width:
            return j % width
    names = f"the header has {header}" if header is not None else "the file has no header"
    raise ValueError(f"{path}: no label column {label_column!r} ({names}; or give a 0-based "
                     f"index below {width})")


def random_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(n): (train indices, test indices), at least 1 of each."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(max(1, int(round(n * test_fraction))), n - 1)
    return perm[n_test:], perm[:n_test]


def load_file(path, *, seed: int = 0, label_column: str | int | None = None,
              test_fraction: float = 0.2, likelihood: str | None = None):
    """Reads a user file into ``(x_train, y_train, x_test, y_test)`` (labels -1 if none).

    Args:
      path: a ``.npy``, ``.npz`` or ``.csv`` file (see the module docstring).
      seed: seeds the split.
      label_column: CSV only: the header name (or 0-based index) of the label column.
      test_fraction: the part held out for testing, in (0, 1).
      likelihood: when ``"bernoulli"``, values outside [0, 1] are an error (with the fix).

    Raises:
      DataFileNotFoundError (a FileNotFoundError and ValueError): no such file.
      TypeError / ValueError: empty file, ragged rows, non-numeric values, NaN or Inf, labels of the wrong shape, values outside [0, 1] for the
      Bernoulli likelihood, fewer than 2 examples.
    """
    from jaxvae.data import stratified_split

    path = Path(os.path.expanduser(str(path)))
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {list(SUFFIXES)}")
    if not path.is_file():
        raise DataFileNotFoundError(f"dataset file {path} does not exist (looked in "
                                f"{path.resolve().parent})")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if label_column is not None and suffix != ".csv":
        raise ValueError(f"{path}: label_column is for CSV files; an .npz names its labels "
                         "y or labels")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes)")
    if suffix == ".npy":
        loaded = _load_npy(path)
    elif suffix == ".npz":
        loaded = _load_npz(path)
    else:
        loaded = _load_csv(path, label_column)
    if isinstance(loaded[0], tuple):  # a ready split
        (x_train, y_train), (x_test, y_test) = loaded
        if x_train.shape[1:] != x_test.shape[1:]:
            raise ValueError(f"{path}: x_train examples have shape {x_train.shape[1:]}, x_test "
                             f"{x_test.shape[1:]}")
    else:
        x, y = loaded
        if len(x) < 2:
            raise ValueError(f"{path}: needs at least 2 examples for a train/test split, got "
                             f"{len(x)}")
        train_idx, test_idx = (random_split(len(x), test_fraction, seed) if y is None
                               else stratified_split(y, test_fraction, seed))
        if y is not None and (len(test_idx) == 0 or len(train_idx) == 0):
            train_idx, test_idx = random_split(len(x), test_fraction, seed)
        x_train, x_test = x[train_idx], x[test_idx]
        y_train = None if y is None else y[train_idx]
        y_test = None if y is None else y[test_idx]
    if likelihood == "bernoulli":
        lo = min(float(x_train.min()), float(x_test.min()))
        hi = max(float(x_train.max()), float(x_test.max()))
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{path}: values lie in [{lo:g}, {hi:g}], outside [0, 1], which the "
                             "Bernoulli likelihood needs: scale the data to [0, 1] (e.g. "
                             "min-max per column, or divide 8-bit pixels by 255) or use "
                             "--likelihood gaussian (best on standardized columns)")

    def labels_or_none(y, n):
        return np.full((n,), -1, np.int32) if y is None else y

    return (x_train, labels_or_none(y_train, len(x_train)), x_test,
            labels_or_none(y_test, len(x_test)))

