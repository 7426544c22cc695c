"""Checks of user data, run before any work starts (never inside jitted code)."""

from __future__ import annotations

import numpy as np


def check_data(x, *, name: str = "x", likelihood: str = "bernoulli",
               example_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Validates a batch of examples and returns it as a float32 numpy array.

    Raises:
      TypeError: not a numeric array.
      ValueError: fewer than 2 dimensions (no batch axis), no examples, a shape that is not
        ``(N, *example_shape)``, NaN or Inf, or values outside [0, 1] for the Bernoulli likelihood.
    """
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or np.issubdtype(arr.dtype, np.bool_)):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"{name} must have shape (num_examples, ...) with a batch axis, got shape "
                         f"{arr.shape}; add a leading axis, e.g. x[None]")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} holds no examples (shape {arr.shape})")
    if example_shape is not None and tuple(arr.shape[1:]) != tuple(example_shape):
        raise ValueError(f"{name} has examples of shape {tuple(arr.shape[1:])}, the model expects "
                         f"{tuple(example_shape)}")
    arr = arr.astype(np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise ValueError(f"{name} contains NaN or Inf ({int((~finite).sum())} values, first at "
                         f"index {tuple(int(i) for i in bad)}); clean or drop those examples")
    if likelihood == "bernoulli" and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"{name} has values in [{arr.min():g}, {arr.max():g}], outside [0, 1], "
                         "which the Bernoulli likelihood needs: scale the data to [0, 1] "
                         "(e.g. divide 8-bit pixels by 255) or use the gaussian likelihood")
    return arr
