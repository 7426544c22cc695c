"""Per-feature standardization of real-valued data for the Gaussian likelihoods.

A Gaussian decoder with a unit (or bounded learned) variance cannot fit columns in the
thousands: the reconstruction term is then ~1e7 nats and the first steps overflow. The data is
therefore trained on in standardized units, feature by feature,

    u = (x - m) / s,      m = mean of the training split,  s = its standard deviation

(``s`` = 1 for a column whose standard deviation is below ``MIN_SCALE``, a constant column,
which is then only centred), and everything that leaves the model goes back to the data's own
units: decoder means x = u * s + m, and densities by the change of variables

    log p_x(x) = log p_u((x - m) / s) - sum_d log s_d,

so an NLL (or -ELBO) in data units is the standardized one plus ``log_det(stats)`` =
sum_d log s_d. The statistics come from the training split only (never the test or
validation data) and are stored beside the run (``FILE``), so a loaded run undoes exactly the
transformation it was trained with.

``MODES``: ``feature`` standardizes, ``none`` trains on the data as it is, ``auto`` (the
default) chooses ``feature`` for a user file (.csv / .npy / .npz) trained with a Gaussian
likelihood whose training values leave [0, 1], and ``none`` otherwise (images and intensities
in [0, 1], the Bernoulli and logistic likelihoods, binarized or dequantized pixels).

Example:
  >>> import numpy as np
  >>> from jaxvae.data import standardize
  >>> x = np.array([[5000.0, 1.0], [5010.0, 1.0], [4990.0, 1.0]], np.float32)
  >>> stats = standardize.fit(x)
  >>> stats.mean.tolist(), [round(float(s), 3) for s in stats.scale]  # column 1 is constant
  ([5000.0, 1.0], [8.165, 1.0])
  >>> u = standardize.apply(stats, x)
  >>> [round(float(v), 3) for v in u[:, 0]], u[:, 1].tolist()
  ([0.0, 1.225, -1.225], [0.0, 0.0, 0.0])
  >>> bool(np.allclose(standardize.invert(stats, u), x))
  True
  >>> round(standardize.log_det(stats), 3)  # log 8.165 + log 1: add it to an NLL in u units
  2.1
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np

MODES = ("auto", "none", "feature")
# The likelihoods whose density has a location-scale form in x: standardization applies.
GAUSSIAN_LIKELIHOODS = ("gaussian", "gaussian_learned", "gaussian_global")
MIN_SCALE = 1e-6  # a column with a smaller standard deviation keeps s = 1 (only centred)
FILE = "standardization.npz"  # the statistics in a run directory


class Standardization(NamedTuple):
    """Per-feature statistics of the training split, each of the example shape, float32."""

    mean: np.ndarray  # m, the feature means
    scale: np.ndarray  # s > 0, the standard deviations (1 where a feature is constant)


def fit(x_train, min_scale: float = MIN_SCALE) -> Standardization:
    """The mean and standard deviation of each feature of ``x_train`` (N, *example_shape).

    Computed in float64 (population std, ddof 0); a feature whose std is at most ``min_scale``
    gets scale 1 so that constant columns are centred, never divided by 0.
    """
    x = np.asarray(x_train, np.float64)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"standardization needs examples of shape (N, features...), got "
                         f"{x.shape}")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    scale = np.where(std > min_scale, std, 1.0)
    return Standardization(mean.astype(np.float32), scale.astype(np.float32))


def apply(stats: Standardization, x):
    """u = (x - m) / s, feature by feature (x: (N, *example_shape)); float32."""
    return ((np.asarray(x, np.float32) - stats.mean) / stats.scale).astype(np.float32)


def invert(stats: Standardization, u):
    """x = u * s + m: standardized values (decoder means, samples) back in the data's units."""
    return (np.asarray(u, np.float32) * stats.scale + stats.mean).astype(np.float32)


def log_det(stats: Standardization) -> float:
    """sum_d log s_d: log p_x(x) = log p_u(u) - log_det, NLL_x = NLL_u + log_det (nats)."""
    return float(np.sum(np.log(stats.scale.astype(np.float64))))


def check_mode(mode: str, likelihood: str, binarize: str = "none",
               dequantize: bool = False) -> None:
    """ValueError for a mode that is unknown or cannot work with the other settings."""
    if mode not in MODES:
        raise ValueError(f"unknown standardize mode {mode!r}; choose one of {list(MODES)}")
    if mode != "feature":
        return
    if likelihood not in GAUSSIAN_LIKELIHOODS:
        raise ValueError(f"standardize 'feature' is for the Gaussian likelihoods "
                         f"({', '.join(GAUSSIAN_LIKELIHOODS)}); the {likelihood} likelihood "
                         "reads values in [0, 1]: use --standardize none")
    if binarize != "none" or dequantize:
        raise ValueError("standardize 'feature' and binarize / dequantize exclude each other "
                         "(those read pixels in [0, 1]): choose one")


def resolve(mode: str, dataset: str, likelihood: str, x_train, binarize: str = "none",
            dequantize: bool = False) -> str:
    """``feature`` or ``none``: what ``mode`` means for this data (``auto`` decided here).

    ``auto`` is ``feature`` for a user file (``.csv`` / ``.npy`` / ``.npz``) with a Gaussian
    likelihood, no binarization or dequantization, and training values outside [0, 1];
    ``none`` otherwise.
    """
    check_mode(mode, likelihood, binarize, dequantize)
    if mode != "auto":
        return mode
    from jaxvae.data import files

    if (not files.is_user_file(str(dataset)) or likelihood not in GAUSSIAN_LIKELIHOODS
            or binarize != "none" or dequantize):
        return "none"
    x = np.asarray(x_train)
    return "feature" if x.size and (x.min() < 0.0 or x.max() > 1.0) else "none"


def to_bytes(stats: Standardization) -> bytes:
    """The statistics as the bytes of an .npz archive (``mean``, ``scale``)."""
    buffer = io.BytesIO()
    np.savez(buffer, mean=stats.mean, scale=stats.scale)
    return buffer.getvalue()


def save(path, stats: Standardization) -> None:
    """Writes the statistics to ``path`` (an .npz) atomically."""
    from jaxvae.training import files

    files.write_atomic(path, to_bytes(stats))


def load(path) -> Standardization:
    """Reads statistics written by ``save``; ValueError naming the file when it is unusable."""
    path = Path(path)
    try:
        with path.open("rb") as f, np.load(f, allow_pickle=False) as archive:
            stats = Standardization(np.asarray(archive["mean"], np.float32),
                                    np.asarray(archive["scale"], np.float32))
    except FileNotFoundError:
        raise ValueError(f"{path} not found: the run was trained on standardized data and "
                         "needs its statistics to decode and score in the data's units") from None
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise ValueError(f"{path}: not readable standardization statistics ({e})") from None
    if stats.mean.shape != stats.scale.shape or not (
            np.isfinite(stats.mean).all() and np.isfinite(stats.scale).all()
            and (stats.scale > 0).all()):
        raise ValueError(f"{path}: damaged standardization statistics (shapes "
                         f"{stats.mean.shape} / {stats.scale.shape}, or non-finite or "
                         "non-positive scales)")
    return stats
