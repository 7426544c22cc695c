"""Checks of user data, run before any work starts (never inside jitted code)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


# ------------------------------------------------------------------------------------------
# Checks of the functional API's arguments. Shape and dtype checks also run while tracing (they
# cost nothing after compilation); value checks (NaN/Inf) run only on concrete arrays, i.e.
# when a function is called outside jit.


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_key(key, name: str = "key") -> None:
    """Raises TypeError unless ``key`` is a PRNG key (``jax.random.key``, or a raw uint32 (2,))."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if np.shape(key) != ():
            raise ValueError(f"{name} must be a single PRNG key, got an array of keys of shape "
                             f"{np.shape(key)}; pick one, e.g. keys[0]")
        return
    if dtype is not None and dtype == np.uint32 and np.shape(key) == (2,):
        return  # a legacy jax.random.PRNGKey
    raise TypeError(f"{name} must be a PRNG key made with jax.random.key(seed), got "
                    f"{type(key).__name__}"
                    + (f" of dtype {dtype} and shape {np.shape(key)}" if dtype is not None else ""))


def check_count(value, name: str, minimum: int = 1) -> int:
    """Raises TypeError unless ``value`` is an int, ValueError unless it is >= minimum."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_array(x, name: str, *, ndim: int | None = None, min_ndim: int | None = None,
                example_size: int | None = None, last_dim: int | None = None):
    """Validates a numeric array argument; returns it as an array (jax arrays untouched).

    Raises:
      TypeError: not numeric (strings, objects, complex numbers).
      ValueError: the wrong number of dimensions, examples of the wrong size, an empty batch,
        NaN or Inf (concrete arrays only).
    """
    if not isinstance(x, (jax.Array, np.ndarray)):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}: {e}") from None
    dtype = x.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) or dtype == object or not (
            jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
            or jnp.issubdtype(dtype, jnp.bool_)):  # (jnp knows bfloat16 is a float)
        raise TypeError(f"{name} must be a real numeric array (float, int or bool), got dtype "
                        f"{x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name} must have shape (batch, ...) with a leading batch axis, got "
                         f"shape {tuple(x.shape)}; add one, e.g. x[None]")
    if (min_ndim or ndim) and x.shape[0] == 0:
        raise ValueError(f"{name} holds no examples (shape {tuple(x.shape)})")
    if example_size is not None and int(np.prod(x.shape[1:])) != example_size:
        raise ValueError(f"{name} has examples of shape {tuple(x.shape[1:])} "
                         f"({int(np.prod(x.shape[1:]))} values), the model expects "
                         f"{example_size} values per example")
    if last_dim is not None and x.shape[-1] != last_dim:
        raise ValueError(f"{name} must have size {last_dim} on its last axis, got shape "
                         f"{tuple(x.shape)}")
    if _concrete(x) and x.size and not bool(np.all(np.isfinite(np.asarray(x, np.float64)))):
        bad = int(np.sum(~np.isfinite(np.asarray(x, np.float64))))
        raise ValueError(f"{name} contains NaN or Inf ({bad} values); clean or drop them")
    return x


def check_finite_output(tree, what: str, hint: str) -> None:
    """Raises ValueError when a concrete result holds NaN or Inf (never a silent NaN)."""
    for leaf in jax.tree.leaves(tree):
        if _concrete(leaf) and not bool(np.all(np.isfinite(np.asarray(leaf)))):
            raise ValueError(f"{what} is NaN or Inf: {hint}")
