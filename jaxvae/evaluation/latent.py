"""Latent-space views of a trained VAE: traversals, the 2-D manifold, 2-D projections.

The functions return arrays (decoder means, projected points); ``jaxvae.evaluation.plots`` draws them.
They decode through the model interface (``jaxvae.models.interface.decode``), so they work for every
model with a latent vector (not the VQ-VAE's code grid); conditional models decode with
``label``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import norm

from jaxvae import likelihoods
from jaxvae.models import interface


def _decode_means(model: nn.Module, params: Any, z_NxZ: jax.Array, likelihood: str | None,
                  label: int | None) -> np.ndarray:
    labels = None if label is None else jnp.full((z_NxZ.shape[0],), label, jnp.int32)
    out = interface.decode(model, params, z_NxZ, labels)
    likelihood = getattr(model, "likelihood", None) or likelihood or "bernoulli"
    return np.asarray(likelihoods.likelihood_mean(likelihood, out))


def traversal(model: nn.Module, params: Any, z_Z: jax.Array, values_V: np.ndarray,
              likelihood: str | None = None, label: int | None = None) -> np.ndarray:
    """Decoder means with one latent dimension swept at a time: ``(Z, V, *data_shape)``.

    Row d decodes ``z`` with ``z[d]`` replaced by each of ``values_V`` (the others fixed).
    ``likelihood``: for a model without its own; ``label``: the class, for conditional models.
    """
    z_Z = jnp.asarray(z_Z)
    latent = z_Z.shape[-1]
    values_V = jnp.asarray(values_V, z_Z.dtype)
    z_ZxVxZ = jnp.broadcast_to(z_Z, (latent, len(values_V), latent))
    eye_ZxZ = jnp.eye(latent, dtype=bool)
    z_ZxVxZ = jnp.where(eye_ZxZ[:, None, :], values_V[None, :, None], z_ZxVxZ)
    mean = _decode_means(model, params, z_ZxVxZ.reshape(-1, latent), likelihood, label)
    return mean.reshape((latent, len(values_V)) + mean.shape[1:])


def manifold(model: nn.Module, params: Any, n: int = 20, likelihood: str | None = None,
             label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decoder means on an n x n grid of a 2-D latent: ``(n, n, *data_shape)`` and the grid.

    The grid holds the standard-normal quantiles of evenly spaced probabilities in (0, 1)
    (Kingma & Welling 2014, Fig. 4), so equal areas of the prior get equal room; row r has
    z[1] decreasing from the top, column c has z[0] increasing.
    """
    if model.latent_dim != 2:
        raise ValueError(f"the manifold needs a 2-D latent, the model has {model.latent_dim}; "
                         "train with --latent-dim 2")
    grid_N = norm.ppf(np.linspace(0.05, 0.95, n)).astype(np.float32)
    z0, z1 = np.meshgrid(grid_N, grid_N[::-1])
    z_NNx2 = np.stack([z0.ravel(), z1.ravel()], axis=-1)
    mean = _decode_means(model, params, jnp.asarray(z_NNx2), likelihood, label)
    return mean.reshape((n, n) + mean.shape[1:]), grid_N


def project_2d(points_NxZ: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D coordinates of latent points by PCA or t-SNE (scikit-learn): ``(N, 2)``.

    t-SNE's perplexity is min(30, (N - 1) / 3) so that it works for small N.
    """
    points_NxZ = np.asarray(points_NxZ, np.float64)
    if points_NxZ.ndim != 2 or len(points_NxZ) < 3:
        raise ValueError(f"need at least 3 points of shape (N, Z), got {points_NxZ.shape}")
    if points_NxZ.shape[1] == 1:
        return np.concatenate([points_NxZ, np.zeros_like(points_NxZ)], axis=1)
    if method == "pca":
        from sklearn.decomposition import PCA
        with np.errstate(invalid="ignore", divide="ignore"):  # a collapsed posterior: no variance
            return PCA(n_components=2, random_state=seed).fit_transform(points_NxZ)
    if method == "tsne":
        from sklearn.manifold import TSNE
        perplexity = min(30.0, (len(points_NxZ) - 1) / 3.0)
        return TSNE(n_components=2, perplexity=perplexity, init="pca",
                    random_state=seed).fit_transform(points_NxZ)
    raise ValueError(f"unknown projection {method!r}; choose 'pca' or 'tsne'")
