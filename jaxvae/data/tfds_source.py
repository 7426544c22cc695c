"""TFDS image datasets read without TensorFlow: ``tfds.data_source`` over array_record files.

``tfds.data_source`` gives random access to prepared array_record files and decodes examples to
numpy with no TensorFlow, so the core install stays light: tensorflow-datasets is the optional
extra ``pip install 'jaxvae[tfds]'`` and is imported only when a TFDS dataset is asked for.

Nothing here downloads unless asked (``download=True``). Data that is not prepared fails at once
with ``DatasetNotPreparedError``, naming the dataset, the folder searched and how to prepare it.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class DatasetNotPreparedError(FileNotFoundError, ValueError):
    """A TFDS dataset is not prepared (as array_record files) in the data_dir searched."""


class MissingDependencyError(ImportError, ValueError):
    """An optional extra (tensorflow-datasets) is not installed."""


class TfdsSpec(NamedTuple):
    """How one TFDS dataset becomes arrays."""

    tfds_name: str  # the TFDS builder name
    train_split: str  # default TFDS split of the training part
    test_split: str  # default TFDS split of the test part
    max_pixel: int  # pixel values run 0..max_pixel; x = pixel / max_pixel
    label: str | None  # the int label feature, or None (labels -1)
    shape: tuple[int, ...]  # the stored image shape (H, W, C)


SPECS: dict[str, TfdsSpec] = {
    "mnist": TfdsSpec("mnist", "train", "test", 255, "label", (28, 28, 1)),
    "fashion_mnist": TfdsSpec("fashion_mnist", "train", "test", 255, "label", (28, 28, 1)),
    # The fixed binarization of Larochelle & Murray (2011): 50,000 / 10,000 / 10,000 in {0, 1}.
    "binarized_mnist": TfdsSpec("binarized_mnist", "train", "test", 1, None, (28, 28, 1)),
    "cifar10": TfdsSpec("cifar10", "train", "test", 255, "label", (32, 32, 3)),
    # 218x178 faces: center-cropped to CELEBA_CROP x CELEBA_CROP, then resized (see load).
    "celeb_a": TfdsSpec("celeb_a", "train", "test", 255, None, (218, 178, 3)),
}

# The square center crop of the 218x178 CelebA images before resizing: the common VAE choice
# (e.g. the 148-pixel crop of the PyTorch-VAE benchmarks), which keeps the face and drops most
# of the background.
CELEBA_CROP = 148

# Examples decoded (and for CelebA cropped and resized) at a time: bounds the host memory held
# at full resolution.
READ_CHUNK = 1024


def import_tfds():
    """tensorflow_datasets, or MissingDependencyError saying how to install it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise MissingDependencyError(
            "the TFDS datasets need the optional extra: pip install 'jaxvae[tfds]' "
            f"(tensorflow-datasets and array-record; no TensorFlow needed); import failed: {e}"
        ) from None
    return tfds


def default_data_dir(tfds) -> str:
    """The folder TFDS searches without a data_dir: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.get_default_data_dir()


def prepare_hint(name: str, data_dir: str) -> str:
    return (f"To prepare it: on a machine with internet run `tfds build {name} "
            f"--file_format=array_record --data_dir DIR` (building may need TensorFlow there), "
            f"then copy DIR/{name} into {data_dir}; or pass --download (download=True) where "
            "the network is reachable. A copy built without --file_format=array_record (TFRecord) "
            "cannot be read without TensorFlow: rebuild it, or convert it with `tfds "
            "convert_format --dataset_dir DIR/NAME --out_file_format array_record`.")


def open_source(name: str, split: str, data_dir: str | None, download: bool):
    """``tfds.data_source(name, split)``: random access to the decoded examples of one split.

    Raises:
      MissingDependencyError: tensorflow-datasets is not installed.
      DatasetNotPreparedError: no array_record copy of the split in data_dir (and download off,
        or the download failed). Raised at once: nothing is fetched unless ``download``.
    """
    tfds = import_tfds()
    searched = str(data_dir) if data_dir is not None else default_data_dir(tfds)
    try:  # data_source prepares array_record files when it downloads
        return tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except Exception as e:  # TFDS raises NotImplementedError, FileNotFoundError, AssertionError...
        if _is_bad_split(e):
            raise ValueError(f"dataset {name!r} has no split {split!r}: {e}") from None
        what = "could not be downloaded and prepared" if download else "is not prepared"
        raise DatasetNotPreparedError(
            f"TFDS dataset {name!r} (split {split!r}) {what} in data_dir {searched} "
            f"(array_record files under {os.path.join(searched, name)}). "
            f"{prepare_hint(name, searched)} "
            f"[tfds: {type(e).__name__}: {_first_line(e)}]") from None


def _first_line(e: Exception) -> str:
    line = str(e).splitlines()[0] if str(e) else ""
    return line.removesuffix("Possible root causes:").strip()


def _is_bad_split(e: Exception) -> bool:
    text = str(e).lower()
    # A dataset with no generated files at all has no splits either: that is "not prepared".
    if "not been generated" in text or "`splits` is empty" in text:
        return False
    return isinstance(e, (ValueError, KeyError)) and "split" in text


def center_crop_resize(images_NxHxWxC: np.ndarray, crop: int, size: int) -> np.ndarray:
    """Square center crop of side ``crop``, then an antialiased bilinear resize to size x size.

    uint8 in, uint8 out (rounded). The resize is ``jax.image.resize(method="linear",
    antialias=True)``, so no image library is needed.
    """
    import jax
    import jax.numpy as jnp

    n, h, w, c = images_NxHxWxC.shape
    crop = min(crop, h, w)
    top, left = (h - crop) // 2, (w - crop) // 2
    cropped = images_NxHxWxC[:, top:top + crop, left:left + crop]
    if crop == size:
        return np.ascontiguousarray(cropped)
    resized = jax.image.resize(jnp.asarray(cropped, jnp.float32), (n, size, size, c),
                               method="linear", antialias=True)
    return np.asarray(jnp.clip(jnp.round(resized), 0, 255)).astype(np.uint8)


def read_split(name: str, split: str, *, data_dir: str | None = None, download: bool = False,
               indices: Callable[[int], np.ndarray] | None = None, image_size: int = 64,
               num_workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decodes one split into ``(images uint8 (N, H, W, C), labels int32 (N,))``.

    Args:
      name: a key of ``SPECS``.
      split: a TFDS split, slices included (``"train[:10%]"``).
      indices: ``indices(num_examples) -> example indices`` to read (a process's shard); all
        by default. Only those examples are read and decoded.
      image_size: CelebA's output side (after the center crop); ignored otherwise.
      num_workers: threads reading and decoding examples (the image decoders release the
        GIL); default min(8, cpu count). The result does not depend on it.
    """
    spec = SPECS[name]
    source = open_source(spec.tfds_name, split, data_dir, download)
    total = len(source)
    idx = np.arange(total) if indices is None else np.asarray(indices(total))
    out_shape = (image_size, image_size, 3) if name == "celeb_a" else spec.shape
    images = np.empty((len(idx),) + out_shape, np.uint8)
    labels = np.full((len(idx),), -1, np.int32)
    workers = num_workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(idx), READ_CHUNK):
            examples = list(pool.map(source.__getitem__,
                                     (int(i) for i in idx[start:start + READ_CHUNK])))
            _store(name, spec, examples, images, labels, start, image_size)
    if spec.max_pixel == 1 and images.size and images.max() > 1:
        raise ValueError(f"{name} should hold pixels in {{0, 1}}, found values up to "
                         f"{images.max()} in split {split!r}: the prepared copy is not the "
                         "binarized dataset")
    return images, labels


def _store(name: str, spec: TfdsSpec, examples: list, images: np.ndarray, labels: np.ndarray,
           start: int, image_size: int) -> None:
    """Writes a chunk of decoded examples into the output arrays from row ``start``."""
    chunk = np.stack([np.asarray(ex["image"]) for ex in examples])
    if name == "celeb_a":
        chunk = center_crop_resize(chunk, CELEBA_CROP, image_size)
    images[start:start + len(chunk)] = chunk
    if spec.label is not None:
        labels[start:start + len(chunk)] = [int(ex[spec.label]) for ex in examples]


def to_unit_interval(images: np.ndarray, name: str) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]: pixel / max_pixel (255, or 1 for binarized_mnist)."""
    return images.astype(np.float32) / np.float32(SPECS[name].max_pixel)


def image_shape(name: str, image_size: int = 64) -> tuple[int, ...]:
    """The example shape (H, W, C) a TFDS dataset loads as."""
    return (image_size, image_size, 3) if name == "celeb_a" else SPECS[name].shape
