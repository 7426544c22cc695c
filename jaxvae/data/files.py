"""The user's own data: ``.npy``, ``.npz`` and ``.csv`` files, validated before any training.

- ``.npy``: one array of examples, shape (N, ...); no labels.
- ``.npz``: the examples under ``x`` (or ``data``, ``X``, ``features``, or the only array that
  is not labels), labels under ``y`` or ``labels``; or a ready split ``x_train``, ``x_test``
  (with optional ``y_train``, ``y_test``), used as it is.
- ``.csv``: UTF-8 text (a byte-order mark is skipped), one example per row, comma separated,
  read with pandas. ``label_column`` (a header name, or a 0-based index) holds the labels:
  ints, or names mapped to 0, 1, ... in sorted order. Every other column is a feature.

What a CSV file means is decided from its content, and every guess comes back as a note
(``Dataset.notes``) for the caller to show:

- a header row is a first row with a name above a column of numbers, the column numbers
  0, 1, 2, ... that pandas' ``to_csv`` writes for unnamed columns, or the name given as
  ``label_column``; a first row whose text stands only above text columns is data;
- an unnamed first column (header ``""`` or ``"Unnamed: 0"``) of increasing whole numbers, or
  a header-less first column holding exactly 0, 1, ..., N-1, is the row index pandas writes
  and is dropped;
- rows with no values at all are skipped.

Arrays of uint8 or uint16 are taken as pixels and divided by their dtype's range (255, 65535)
into [0, 1]; uint8 arrays holding only 0 and 1 are binary data and kept as they are. Every other
real dtype is used as it is (float32); complex, object (pickled), string and structured arrays
are refused. Without a ready split, the examples are split deterministically: stratified by
label (``test_fraction`` of every class) when there are labels, else a seeded random split.

Every problem with a file is a ``ValueError`` or ``TypeError`` whose message names the file and
says what to do; nothing here prints.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import tokenize
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

SUFFIXES = (".npy", ".npz", ".csv")
X_KEYS = ("x", "data", "X", "features")
Y_KEYS = ("y", "labels")
# uint dtypes taken as pixels, divided by their range into [0, 1].
PIXEL_DTYPES = (np.uint8, np.uint16)
# Rows read to decide whether a CSV file has a header row.
HEAD_ROWS = 200
INDEX_NAMES = ("", "Unnamed: 0")  # what pandas writes above an unnamed index column
_WHOLE_NUMBER = re.compile(r"\d+")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# What numpy raises on a damaged .npy header or data (its header is parsed as Python source).
_DAMAGED = (ValueError, EOFError, SyntaxError, OverflowError, tokenize.TokenError)


class DataFileNotFoundError(FileNotFoundError, ValueError):
    """A dataset file that does not exist."""


class Examples(NamedTuple):
    """Examples (and labels) read from a file, with what was assumed to read them."""

    x: np.ndarray
    y: np.ndarray | None
    notes: tuple[str, ...] = ()


def is_user_file(name: str) -> bool:
    """Whether a dataset name is a path to a user file (by its suffix)."""
    return Path(str(name)).suffix.lower() in SUFFIXES


# Arrays ------------------------------------------------------------------------------------


def _check_dtype(x: np.ndarray, path: Path, what: str) -> None:
    if np.iscomplexobj(x):
        raise TypeError(f"{path}: {what} are complex numbers (dtype {x.dtype}); the models "
                        "train on real values: save x.real, or the real and imaginary parts as "
                        "separate features (np.concatenate([x.real, x.imag], axis=-1))")
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number)
                                 or np.issubdtype(x.dtype, np.bool_)):
        raise TypeError(f"{path}: {what} must be numeric, got dtype {x.dtype}; save a float or "
                        "integer array (e.g. x.astype(np.float32))")


def _float_examples(arrays: dict[str, np.ndarray], path: Path) -> tuple[dict, list[str]]:
    """Checks raw arrays of examples (one file's) and returns them as float32, with notes.

    uint8 / uint16 arrays are divided by their dtype's range (decided once for all the arrays
    of the file, so a train and a test part are scaled alike); uint8 arrays holding only 0
    and 1 are binary data and kept.
    """
    notes = []
    for what, x in arrays.items():
        _check_dtype(x, path, what)
        if x.ndim == 0 or x.shape[0] == 0 or x.size == 0:
            raise ValueError(f"{path}: holds no {what} (shape {x.shape})")
        if x.ndim == 1:
            raise ValueError(f"{path}: {what} must have shape (num_examples, features...), got "
                             f"{x.shape}; a single feature per example needs shape (N, 1)")
    dtypes = {x.dtype for x in arrays.values()}
    if len(dtypes) > 1 and any(d.type in PIXEL_DTYPES for d in dtypes):
        found = ", ".join(f"{what} {x.dtype}" for what, x in arrays.items())
        raise ValueError(f"{path}: the parts differ in dtype ({found}), so they would be "
                         "scaled differently; save them with the same dtype")
    scale = 1.0
    if len(dtypes) == 1 and dtypes.pop().type in PIXEL_DTYPES:
        dtype = next(iter(arrays.values())).dtype
        top = max(int(x.max()) for x in arrays.values())
        names = "" if list(arrays) == ["examples"] else " and ".join(arrays) + ": "
        if dtype == np.uint8 and top <= 1:
            notes.append(f"{names}uint8 values are all 0 or 1, read as binary data (not "
                         "divided by 255)")
        else:
            scale = float(np.iinfo(dtype).max)
            notes.append(f"{names}{dtype} values read as pixels and divided by {scale:.0f} "
                         f"(the range of {dtype}) into [0, 1]; the largest, {top}, becomes "
                         f"{top / scale:.4g}")
    out = {}
    for what, x in arrays.items():
        if np.issubdtype(x.dtype, np.floating):
            with np.errstate(invalid="ignore"):
                finite = np.isfinite(x)
            if not finite.all():
                row = int(np.argwhere(~finite)[0][0])
                raise ValueError(f"{path}: {what} contain NaN or Inf ({int((~finite).sum())} "
                                 f"values, first in example {row}); clean or drop those "
                                 "examples")
        if np.issubdtype(x.dtype, np.floating) and x.dtype.itemsize > 4:
            big, top = float(np.max(np.abs(x))), float(np.finfo(np.float32).max)
            if big > top:
                raise ValueError(f"{path}: {what} hold values up to {big:g}, beyond float32's "
                                 f"range ({top:.3g}); rescale the data")
        out[what] = (x.astype(np.float32) / np.float32(scale) if scale != 1.0
                     else x.astype(np.float32))
    return out, notes


def _labels(y: np.ndarray, n: int, path: Path, names: np.ndarray | None = None) -> np.ndarray:
    """Labels as int32 class ids; names are numbered in sorted order (of ``names`` if given)."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{path}: labels must have shape ({n},), one per example, got {y.shape}")
    if np.iscomplexobj(y):
        raise TypeError(f"{path}: labels are complex numbers (dtype {y.dtype}); save class ids "
                        "as integers")
    if np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_):
        return y.astype(np.int32)
    if np.issubdtype(y.dtype, np.floating):
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            raise ValueError(f"{path}: labels must be whole numbers (class ids), got e.g. "
                             f"{y[~whole][:3].tolist()}")
        return y.astype(np.int32)
    if y.dtype.kind not in "US":
        raise TypeError(f"{path}: labels must be integers or names, got dtype {y.dtype}")
    if names is None:
        names = np.unique(y.astype(str))
    return np.searchsorted(names, y.astype(str)).astype(np.int32)


def _label_note(y_raw: np.ndarray) -> list[str]:
    """A note for labels given as names: the class id of each name."""
    if np.asarray(y_raw).dtype.kind not in "USO":
        return []
    names = np.unique(np.asarray(y_raw).astype(str))
    shown = ", ".join(f"{name}={i}" for i, name in enumerate(names[:10]))
    more = f", ... ({len(names)} classes)" if len(names) > 10 else ""
    return [f"labels are names, numbered in sorted order: {shown}{more}"]


def _cannot_read(path: Path, e: OSError) -> ValueError:
    if isinstance(e, PermissionError):
        return ValueError(f"{path}: cannot read the file (permission denied); give yourself "
                          f"read access (e.g. chmod u+r {path}) or copy it somewhere readable")
    return ValueError(f"{path}: cannot read the file ({e.strerror or e})")


def _magic(path: Path, size: int = 8) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(size)
    except OSError as e:
        raise _cannot_read(path, e) from None


def _not_this_format(path: Path, start: bytes, kind: str, writer: str) -> ValueError:
    if start[:1] == b"\x80":
        found = "a Python pickle, which is never loaded (it could run code)"
    else:
        found = f"not {kind} (it starts with {start[:8]!r})"
    return ValueError(f"{path}: {found}; save the array with {writer}")


def _pickled(path: Path) -> ValueError:
    return ValueError(f"{path}: holds an object (pickled) array, which is never loaded (it could "
                      "run code); save numeric arrays (e.g. x.astype(np.float32))")


def _npy_header_problem(f, path: Path) -> ValueError | None:
    """Reads an .npy header from f: the error for a pickled array or a file cut short."""
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        return None  # other versions: np.load checks them
    shape, _, dtype = read_header(f, max_header_size=10_000)
    if dtype.hasobject:
        return _pickled(path)
    expected = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    held = os.fstat(f.fileno()).st_size - f.tell()
    if held < expected:
        return ValueError(f"{path}: cut short: its header announces an array of shape {shape} "
                          f"({expected} bytes) but the file holds {held}; save it again with "
                          "np.save")
    return None


def _load_npy(path: Path) -> Examples:
    start = _magic(path)
    if not start.startswith(_NPY_MAGIC):
        raise _not_this_format(path, start, "an .npy file", "np.save")
    try:
        with path.open("rb") as f:
            problem = _npy_header_problem(f, path)
            if problem is not None:
                raise problem
            f.seek(0)
            x = np.load(f, allow_pickle=False)
    except OSError as e:
        raise _cannot_read(path, e) from None
    except _DAMAGED as e:
        if str(path) in str(e):
            raise
        if "pickle" in str(e) or "Object arrays" in str(e):
            raise _pickled(path) from None
        raise ValueError(f"{path}: not a readable numeric .npy array ({type(e).__name__}: "
                         f"{e}); the file is damaged: save it again with np.save") from None
    out, notes = _float_examples({"examples": x}, path)
    return Examples(out["examples"], None, tuple(notes))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    start = _magic(path)
    if not start.startswith(_ZIP_MAGICS):
        raise _not_this_format(path, start, "an .npz archive (a zip file)", "np.savez")
    try:  # np.load leaves a file it opened open when the zip is damaged: open it here
        with path.open("rb") as f, np.load(f, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.keys()}
    except OSError as e:
        raise _cannot_read(path, e) from None
    except MemoryError:
        raise ValueError(f"{path}: an array's header announces more data than fits in memory; "
                         "the file is damaged: save it again with np.savez") from None
    except (zipfile.BadZipFile, zlib.error, KeyError, NotImplementedError,  # an unknown method
            RuntimeError) + _DAMAGED as e:  # (RuntimeError: an encrypted member)
        if "pickle" in str(e) or "Object arrays" in str(e):
            raise _pickled(path) from None
        raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e}); the "
                         "file is damaged or was cut short: save it again with np.savez") from None


def _load_npz(path: Path):
    """Examples, or the ready split (Examples(train), Examples(test))."""
    arrays = _read_npz(path)
    keys = list(arrays)
    if not keys:
        raise ValueError(f"{path}: holds no arrays (an empty .npz)")
    if "x_train" in arrays or "x_test" in arrays:
        if not {"x_train", "x_test"} <= set(arrays):
            raise ValueError(f"{path}: a ready split needs both x_train and x_test, found {keys}")
        xs, notes = _float_examples({k: arrays[k] for k in ("x_train", "x_test")}, path)
        ys = {part: arrays[f"y_{part}"] for part in ("train", "test") if f"y_{part}" in arrays}
        names = None  # label names are numbered over both parts alike
        if ys and all(np.asarray(y).dtype.kind in "US" for y in ys.values()):
            names = np.unique(np.concatenate([np.asarray(y).astype(str).ravel()
                                              for y in ys.values()]))
            notes += _label_note(names)
        parts = []
        for part in ("train", "test"):
            x, y = xs[f"x_{part}"], ys.get(part)
            parts.append(Examples(x, None if y is None else _labels(y, len(x), path, names)))
        return parts[0]._replace(notes=tuple(notes)), parts[1]
    x_key = next((k for k in X_KEYS if k in arrays), None)
    y_key = next((k for k in Y_KEYS if k in arrays), None)
    if x_key is None:
        others = [k for k in keys if k != y_key]
        if len(others) != 1:
            raise ValueError(f"{path}: cannot tell which array holds the examples among {keys}; "
                             f"name it one of {list(X_KEYS)} (labels: {list(Y_KEYS)})")
        x_key = others[0]
    xs, notes = _float_examples({"examples": arrays[x_key]}, path)
    x = xs["examples"]
    y = None
    if y_key is not None:
        y = _labels(arrays[y_key], len(x), path)
        notes += _label_note(arrays[y_key])
    return Examples(x, y, tuple(notes))


# CSV ---------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """The file as text: UTF-8 with an optional byte-order mark; binary files refused."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _cannot_read(path, e) from None
    if b"\x00" in raw:
        at = raw.index(b"\x00")
        raise ValueError(f"{path}: a binary file, not comma-separated text (a NUL byte at "
                         f"offset {at}); is it really a CSV file? (.npy and .npz files are "
                         "read by their suffix)")
    try:
        return codecs.decode(raw, "utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); "
                         "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 in.csv > out.csv, or "
                         "pandas' to_csv(..., encoding='utf-8'))") from None


def _csv_rows(text: str, path: Path, limit: int | None = None):
    """(line number, stripped cells) of each row that is not blank, as pandas counts them."""
    reader = csv.reader(io.StringIO(text))
    kept = 0
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            yield reader.line_num, [cell.strip() for cell in row]
            kept += 1
            if limit is not None and kept >= limit:
                return
    except csv.Error as e:
        raise ValueError(f"{path}: not readable as CSV near line {reader.line_num} ({e})") from None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _column_numbers(cells: list[str]) -> bool:
    """Whether cells read 0, 1, 2, ... (or 1, 2, 3, ...): the names pandas gives unnamed
    columns, at least three of them."""
    if len(cells) < 3 or not all(_WHOLE_NUMBER.fullmatch(c) for c in cells):
        return False
    numbers = [int(c) for c in cells]
    return numbers[0] in (0, 1) and numbers == list(range(numbers[0], numbers[0] + len(cells)))


def _find_header(rows: list[list[str]], label_column) -> tuple[bool, list[str]]:
    """Whether the first row is a header, with notes on what was assumed.

    A column is numeric when every non-empty cell below the first row is a number. The first
    row is a header when it holds a non-number above a numeric column (a name), when its
    cells above numeric columns read 0, 1, 2, ... (pandas' names for unnamed columns), or when
    it holds ``label_column`` given as a name. A first row with text only above text columns
    (a label column) is data. Without rows below it, a first row with any text is a header.
    """
    first, rest = rows[0], rows[1:]
    if not rest:
        return not all(_is_number(c) for c in first), []
    numeric = [any(j < len(r) and r[j] for r in rest)
               and all(_is_number(r[j]) for r in rest if j < len(r) and r[j])
               for j in range(len(first))]
    above_numbers = [c for c, is_num in zip(first, numeric) if is_num]
    if not any(numeric):
        return not all(_is_number(c) for c in first), []
    if any(not _is_number(c) for c in above_numbers):
        return True, []
    if _column_numbers(above_numbers):
        return True, [f"line 1 ({', '.join(first[:3])}, ...) holds column numbers, as pandas' "
                      "to_csv writes for unnamed columns: read as the header, not as data"]
    if (isinstance(label_column, str) and not label_column.lstrip("-").isdigit()
            and label_column in first):
        return True, []
    if any(not _is_number(c) for c in first):
        return False, ["line 1 is read as data, not as a header: its text stands in text "
                       "columns only, like the rows below it; columns are numbered from 0"]
    return False, []


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


def _first_bad_cell(text, path, header, width, label_idx) -> ValueError | None:
    """The error for the first row that pandas could not read as numbers, found by reading
    the rows again one by one (only when something is wrong)."""
    rows = _csv_rows(text, path)
    if header is not None:
        next(rows)
    for line, row in rows:
        if len(row) != width:
            if not any(row):
                continue  # a row with no values (only commas) is skipped
            return ValueError(f"{path}: ragged rows: line {line} has {len(row)} values, "
                              f"expected {width} (as the {'header' if header else 'first row'})")
        if not any(row):
            continue
        for j, cell in enumerate(row):
            column = repr(header[j]) if header is not None else str(j)
            if j == label_idx:
                if not cell:
                    return ValueError(f"{path}: no label at line {line} (column {column}); give "
                                      "every row a label, or leave out --label-column")
                continue
            if not _is_number(cell):
                hint = ("; the file seems separated by ';' or tabs: save it with commas"
                        if (";" in cell or "\t" in cell) else
                        "; every feature must be a number (give a label column with "
                        "--label-column)")
                what = "an empty value" if not cell else f"non-numeric value {cell!r}"
                return ValueError(f"{path}: {what} at line {line}, column {column}{hint}")
            if not np.isfinite(float(cell)):
                return ValueError(f"{path}: a NaN or Inf value ({cell!r}) at line {line}, column "
                                  f"{column}; clean or drop that row")
    return None


def _load_csv(path: Path, label_column: str | int | None) -> Examples:
    import pandas as pd  # a parser that handles quoting, line endings and large files

    text = _read_text(path)
    head = [row for _, row in _csv_rows(text, path, limit=HEAD_ROWS)]
    if not any(any(row) for row in head):
        raise ValueError(f"{path}: the file is empty (no rows)")
    has_header, notes = _find_header(head, label_column)
    header = head[0] if has_header else None
    width = len(head[0])
    if has_header and len(head) == 1:
        raise ValueError(f"{path}: has a header but no data rows")
    label_idx = _label_index(label_column, header, width, path)
    if width == 1 and label_idx is not None:
        raise ValueError(f"{path}: no feature columns besides the label column")
    features = [j for j in range(width) if j != label_idx]
    dtypes = {j: (str if j == label_idx else np.float64) for j in range(width)}
    try:
        with warnings.catch_warnings():
            # A row longer than the header is only a ParserWarning (and cut short) for pandas.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.StringIO(text), header=0 if has_header else None,
                                names=list(range(width)), index_col=False, dtype=dtypes,
                                skipinitialspace=True, engine="c", keep_default_na=False,
                                na_values={j: [""] for j in features})  # labels: any text
    except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning) as e:  # ragged, text
        raise (_first_bad_cell(text, path, header, width, label_idx)
               or ValueError(f"{path}: not readable as CSV ({e})")) from None
    values = frame[features].to_numpy(np.float64)
    labels = None if label_idx is None else frame[label_idx].to_numpy(object)
    no_label = (np.zeros(len(values), bool) if labels is None
                else np.asarray(pd.isna(labels) | (labels == ""), bool))
    empty = np.isnan(values).all(axis=1) & (no_label if labels is not None else True)
    bad = ~np.isfinite(values).all(axis=1) | no_label
    if (bad & ~empty).any():
        raise (_first_bad_cell(text, path, header, width, label_idx)
               or ValueError(f"{path}: a missing or non-finite value in data row "
                             f"{int(np.argmax(bad & ~empty)) + 1}; clean or drop that row"))
    if empty.any():
        notes.append(f"skipped {int(empty.sum())} row(s) with no values (only commas)")
        values = values[~empty]
        labels = None if labels is None else labels[~empty]
    if len(values) == 0:
        raise ValueError(f"{path}: has a header but no data rows" if has_header else
                         f"{path}: the file is empty (no rows)")
    index_col = features[0] == 0 and _is_index_column(values[:, 0], header)
    if index_col and len(features) > 1:
        name = f"named {header[0]!r}" if header and header[0] else "no name"
        keep = "" if header else "; name it in a header row to keep it"
        notes.append(f"dropped column 0 ({name}): it holds the row numbers that pandas writes "
                     f"as the index, not a feature{keep}")
        values, features = values[:, 1:], features[1:]
    xs, more = _float_examples({"examples": values}, path)
    y = None
    if labels is not None:
        cells = labels.astype(str)
        if all(_is_number(c) for c in cells):
            y = _labels(cells.astype(np.float64), len(cells), path)
        else:
            y = _labels(cells, len(cells), path)
            more += _label_note(cells)
    return Examples(xs["examples"], y, tuple(notes + more))


def _is_index_column(column: np.ndarray, header: list[str] | None) -> bool:
    """Whether a first column is the row index pandas writes: unnamed and increasing whole
    numbers, or (without a header) exactly 0, 1, ..., N-1."""
    if len(column) < 3:
        return False
    if header is not None:
        return (header[0] in INDEX_NAMES and bool(np.all(column == np.round(column)))
                and bool(np.all(np.diff(column) > 0)))
    return bool(np.array_equal(column, np.arange(len(column))))


# Entry point -------------------------------------------------------------------------------


def random_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(n): (train indices, test indices), at least 1 of each."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(max(1, int(round(n * test_fraction))), n - 1)
    return perm[n_test:], perm[:n_test]


def _check_path(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {list(SUFFIXES)}")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a {suffix} file; give the path of the "
                         "file itself")
    if not path.exists():
        raise DataFileNotFoundError(f"dataset file {path} does not exist (looked in "
                                    f"{path.resolve().parent})")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file (a pipe or a device?); save the data to "
                         "a file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise _cannot_read(path, e) from None
    if size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes)")


def load_file(path, *, seed: int = 0, label_column: str | int | None = None,
              test_fraction: float = 0.2, likelihood: str | None = None):
    """Reads a user file into a ``Dataset`` (labels -1 if none), with notes on what was assumed.

    Args:
      path: a ``.npy``, ``.npz`` or ``.csv`` file (see the module docstring).
      seed: seeds the split.
      label_column: CSV only: the header name (or 0-based index) of the label column.
      test_fraction: the part held out for testing, in (0, 1).
      likelihood: when ``"bernoulli"``, values outside [0, 1] are an error (with the fix).

    Returns:
      A ``jaxvae.data.datasets.Dataset`` whose ``notes`` say what was assumed to read the file (a
      header, a dropped index column, pixel scaling, label names), for the caller to show.

    Raises:
      DataFileNotFoundError (a FileNotFoundError and ValueError): no such file.
      TypeError / ValueError, each naming the file and the fix: a directory, an unreadable
      file (permissions), a damaged or truncated .npy / .npz, pickled or object arrays, a CSV
      that is not UTF-8 text, an empty file, ragged rows, non-numeric values, NaN or Inf,
      complex, string or structured arrays, labels of the wrong shape, values outside [0, 1]
      for the Bernoulli likelihood, fewer than 2 examples.
    """
    from jaxvae.data.datasets import Dataset, stratified_split

    path = Path(os.path.expanduser(str(path)))
    _check_path(path)
    suffix = path.suffix.lower()
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if label_column is not None and suffix != ".csv":
        raise ValueError(f"{path}: label_column is for CSV files; an .npz names its labels "
                         "y or labels")
    if suffix == ".npy":
        loaded = _load_npy(path)
    elif suffix == ".npz":
        loaded = _load_npz(path)
    else:
        loaded = _load_csv(path, label_column)
    if isinstance(loaded, tuple) and not isinstance(loaded, Examples):  # a ready split
        train, test = loaded
        if train.x.shape[1:] != test.x.shape[1:]:
            raise ValueError(f"{path}: x_train examples have shape {train.x.shape[1:]}, x_test "
                             f"{test.x.shape[1:]}")
        x_train, y_train, x_test, y_test = train.x, train.y, test.x, test.y
        notes = train.notes
    else:
        x, y, notes = loaded
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

    return Dataset(x_train, labels_or_none(y_train, len(x_train)), x_test,
                   labels_or_none(y_test, len(x_test)), notes=tuple(notes))
