"""Per-example preprocessing on the device: binarization and uniform dequantization.

Binarization (for the Bernoulli likelihood on grey-level images):

- ``dynamic``: every epoch e draws a fresh sample x_bin ~ Bernoulli(x) of the intensities, with
  the key ``fold_in(data_key, e)`` (batch i of the epoch: ``fold_in(fold_in(data_key, e), i)``),
  inside the compiled epoch. The standard protocol of MNIST log-likelihood results (e.g.
  Burda et al. 2016, IWAE); E[x_bin] = x, so the model fits the intensities' distribution.
- ``static``: one sample with a fixed key, the same every epoch (as a fixed binarized copy).

Uniform dequantization (for continuous likelihoods on 8-bit images): with pixel = round(255 x),
y = (pixel + u) / 256, u ~ U[0, 1): a density on [0, 1) whose log-likelihood lower-bounds the
discrete model's (Theis et al. 2016). Fresh noise every epoch, as for dynamic binarization.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

BINARIZE = ("none", "dynamic", "static")

# Folded into jax.random.key(seed) to make the data stream: independent of the four streams of
# trainer.run_keys (split from the same root), which this must not change.
DATA_STREAM = 0x64617461  # "data"


def check_options(binarize: str, dequantize: bool) -> None:
    """ValueError / TypeError for a binarization mode or dequantize flag that cannot work."""
    if binarize not in BINARIZE:
        raise ValueError(f"unknown binarize mode {binarize!r}; choose one of {list(BINARIZE)}")
    if not isinstance(dequantize, bool):
        raise TypeError(f"dequantize must be True or False, got {dequantize!r}")
    if dequantize and binarize != "none":
        raise ValueError("dequantize (continuous noise on 8-bit pixels) and binarize "
                         f"{binarize!r} exclude each other; choose one")


def check_range(x, binarize_mode: str, dequantize_pixels: bool, name: str = "data") -> None:
    """Binarization and dequantization read x as intensities in [0, 1]: ValueError otherwise."""
    if binarize_mode == "none" and not dequantize_pixels:
        return
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo < 0.0 or hi > 1.0:
        what = f"binarize {binarize_mode!r}" if binarize_mode != "none" else "dequantize"
        raise ValueError(f"{what} needs intensities in [0, 1], but the {name} lie in "
                         f"[{lo:g}, {hi:g}]: scale the data to [0, 1] or turn it off")


def data_key(seed: int) -> jax.Array:
    """The root key of a run's data stream (binarization and dequantization noise)."""
    return jax.random.fold_in(jax.random.key(seed), DATA_STREAM)


def binarize(key: jax.Array, x: jax.Array) -> jax.Array:
    """One Bernoulli sample of intensities x in [0, 1]: 1 with probability x, same dtype as x."""
    return jax.random.bernoulli(key, x).astype(x.dtype)


def dequantize(key: jax.Array, x: jax.Array, levels: int = 256) -> jax.Array:
    """Uniform dequantization of ``levels``-level pixels given in [0, 1] as pixel / (levels - 1).

    y = (round(x * (levels - 1)) + u) / levels, u ~ U[0, 1), so y lies in [0, 1) and
    floor(y * levels) recovers the pixel.
    """
    pixel = jnp.round(x * (levels - 1))
    u = jax.random.uniform(key, x.shape, x.dtype)
    # In float32, pixel + u rounds up to pixel + 1 for u near 1: keep y inside the pixel's bin.
    upper = jnp.nextafter((pixel + 1) / levels, jnp.zeros((), x.dtype))
    return jnp.minimum((pixel + u) / levels, upper)


def batch_preprocess(binarize_mode: str = "none", dequantize_pixels: bool = False
                     ) -> Callable[[jax.Array, Any], Any] | None:
    """The ``preprocess(key, batch) -> batch`` hook of ``train.make_train_epoch``, or None.

    It maps ``batch["x"]`` (keeps the rest): a Bernoulli sample for ``dynamic`` binarization,
    dequantization noise for ``dequantize_pixels``; None when nothing changes per epoch.
    """
    check_options(binarize_mode, dequantize_pixels)
    if binarize_mode == "dynamic":
        fn = binarize
    elif dequantize_pixels:
        fn = dequantize
    else:
        return None
    return lambda key, batch: {**batch, "x": fn(key, batch["x"])}


def fixed_transform(binarize_mode: str, dequantize_pixels: bool, key: jax.Array, x,
                    part: int):
    """The one-off transform of a whole split (``part`` 0 = train, 1 = test, 2 = validation),
    or x unchanged.

    Returns a numpy array.

    ``static`` binarizes every split once; ``dynamic`` binarization and dequantization transform
    the held-out splits (test, validation) once (the training split gets fresh noise every
    epoch), so their losses compare across epochs and are losses on binary data. The key is ``fold_in(fold_in(key, 0), part)``; epoch keys start at 1.
    """
    check_options(binarize_mode, dequantize_pixels)
    if binarize_mode == "static" or (binarize_mode == "dynamic" and part >= 1):
        fn = binarize
    elif dequantize_pixels and part >= 1:
        fn = dequantize
    else:
        return x
    # On the host CPU: the split may not fit on the accelerator, and threefry draws the same
    # bits on every backend.
    with jax.default_device(jax.devices("cpu")[0]):
        part_key = jax.random.fold_in(jax.random.fold_in(key, 0), part)
        return np.asarray(fn(part_key, jnp.asarray(x)))
