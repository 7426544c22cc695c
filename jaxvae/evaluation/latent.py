"""Latent-space views of a trained VAE: traversals, the 2-D manifold, 2-D projections, and the
posterior's parameters and active units as features for another model.

The functions return arrays (decoder means, projected points, posterior means and standard
deviations); ``jaxvae.evaluation.plots`` draws them. They decode through the model interface
(``jaxvae.models.interface.decode``), so they work for every model with a latent vector (not the
VQ-VAE's code grid); conditional models decode with ``label``.
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


def posterior_means(model: nn.Module, params: Any, x_Nx: np.ndarray, batch_size: int = 1000
                    ) -> np.ndarray:
    """The means of q(z | x) of every example, ``(N, Z)`` float32, in batches of
    ``batch_size``: the features a trained VAE gives another model (M1+M2, Kingma et al. 2014).

    Examples:
      >>> import jax, jaxvae, numpy as np
      >>> from jaxvae.evaluation import latent
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params = jaxvae.init(model, jax.random.key(0))
      >>> latent.posterior_means(model, params, np.zeros((5, 4), np.float32), 2).shape
      (5, 2)
    """
    return posterior_parameters(model, params, x_Nx, batch_size)[0]


def posterior_parameters(model: nn.Module, params: Any, x_Nx: np.ndarray,
                         batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The means and standard deviations of q(z | x) = N(mean, diag(std^2)) of every example,
    two ``(N, Z)`` float32 arrays, in batches of ``batch_size``.

    Examples:
      >>> import jax, jaxvae, numpy as np
      >>> from jaxvae.evaluation import latent
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params = jaxvae.init(model, jax.random.key(0))
      >>> mean, std = latent.posterior_parameters(model, params, np.zeros((5, 4), np.float32))
      >>> mean.shape, std.shape, bool((std > 0).all())
      ((5, 2), (5, 2), True)
    """
    if getattr(model, "conditional", False):
        raise ValueError(f"{type(model).__name__} encodes with labels; the posterior "
                         "parameters take the examples alone: use an unconditional model")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def mean_std(p, x):
        q = interface.encode(model, p, x)
        return q.mean, jnp.exp(0.5 * q.logvar)

    encode = jax.jit(mean_std)
    pieces = [jax.device_get(encode(params, jnp.asarray(x_Nx[i:i + batch_size])))
              for i in range(0, len(x_Nx), batch_size)]
    return tuple(np.concatenate([np.asarray(p[j]) for p in pieces]).astype(np.float32)
                 for j in (0, 1))


def active_units(means_NxZ: np.ndarray, threshold: float = 1e-2) -> np.ndarray:
    """Which latent units are active, ``(Z,)`` bool: A_u = Var_x(E_q[u | x]) > ``threshold``
    (Burda et al. 2016, Sec. 5.2). An inactive unit's posterior mean is the same for every x:
    it carries no information about the example.

    Examples:
      >>> import numpy as np
      >>> from jaxvae.evaluation import latent
      >>> means = np.stack([np.linspace(-1, 1, 5), np.full(5, 0.3)], axis=1)
      >>> latent.active_units(means).tolist()
      [True, False]
    """
    means_NxZ = np.asarray(means_NxZ, np.float64)
    if means_NxZ.ndim != 2 or len(means_NxZ) < 2:
        raise ValueError(f"need the means of at least 2 examples, shape (N, Z), got "
                         f"{means_NxZ.shape}")
    return np.var(means_NxZ, axis=0) > threshold
