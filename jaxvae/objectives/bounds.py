"""The VAE objective: the negative ELBO with Bernoulli or Gaussian reconstruction terms.

    -ELBO(x) = E_q(z|x)[-log p(x | z)] + KL(q(z | x) || p(z))          (Kingma & Welling 2014)

estimated with one reparameterized sample z = mean + exp(logvar / 2) * eps per example and the
analytic Gaussian KL. ``beta`` weights the KL term (Higgins et al. 2017).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import distributions, likelihoods, validation
from jaxvae.models import mlp as models

LIKELIHOODS = likelihoods.LIKELIHOODS
check_likelihood = likelihoods.check_likelihood
reconstruction_nll = likelihoods.reconstruction_nll
likelihood_mean = likelihoods.likelihood_mean


def elbo_terms(model: nn.Module, params: Any, x_BxD: jax.Array,
               draw_eps: Callable[[jax.Array], jax.Array], likelihood: str = "bernoulli"
               ) -> tuple[jax.Array, jax.Array]:
    """Per-example reconstruction NLL and KL, with the noise eps = draw_eps(mean_BxZ).

    ``draw_eps`` lets data-parallel steps draw the noise of the global batch and keep their own
    rows, so that every parallel form sees the same eps as the single-device step.

    Returns:
      ``(recon_B, kl_B)``.
    """
    mean_BxZ, logvar_BxZ = models.encode(model, params, x_BxD)
    eps_BxZ = draw_eps(mean_BxZ)
    z_BxZ = distributions.shift_and_scale(mean_BxZ, logvar_BxZ, eps_BxZ)
    out_BxD = models.decode(model, params, z_BxZ)
    recon_B = reconstruction_nll(likelihood, out_BxD, x_BxD)
    kl_B = distributions.gaussian_kl(mean_BxZ, logvar_BxZ)
    return recon_B, kl_B


def batch_metrics(recon_B: jax.Array, kl_B: jax.Array, beta: float) -> tuple[jax.Array, dict]:
    """loss = mean(recon + beta * kl), and the batch means of loss, recon and kl."""
    loss_B = recon_B + beta * kl_B
    loss = jnp.mean(loss_B)
    return loss, {"loss": loss, "recon": jnp.mean(recon_B), "kl": jnp.mean(kl_B)}


def loss(model: nn.Module, params: Any, x: jax.Array, key: jax.Array, beta: float = 1.0,
         likelihood: str = "bernoulli") -> tuple[jax.Array, dict[str, jax.Array]]:
    """The beta-weighted negative ELBO, averaged over the batch.

        loss = mean_b [ -log p(x_b | z_b) + beta * KL(q(z | x_b) || N(0, I)) ],
        z = reparameterize(key, mean, logvar)

    For beta = 1 and the Bernoulli likelihood this is the PyTorch reference's
    ``BCE(recon_x, x, reduction='sum') + KLD`` divided by the batch size.

    Args:
      model: a VAE module (``encode`` / ``decode``).
      params: its parameters.
      x: ``x_BxD`` (in [0, 1] for the Bernoulli likelihood).
      key: the key of the reparameterization noise, used as given.
      beta: the weight of the KL term.
      likelihood: ``"bernoulli"`` or ``"gaussian"``.

    Returns:
      ``(loss, metrics)``; metrics holds the batch means of ``loss``, ``recon`` and ``kl`` (nats).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params, x = jaxvae.init(model, jax.random.key(0)), jnp.zeros((3, 4))
      >>> value, metrics = jaxvae.loss(model, params, x, jax.random.key(1))
      >>> sorted(metrics)
      ['kl', 'loss', 'recon']
      >>> bool(jnp.isclose(value, metrics["recon"] + metrics["kl"]))  # beta = 1
      True
    """
    check_likelihood(likelihood)
    validation.check_key(key)
    if isinstance(beta, (bool, np.bool_)) or not isinstance(beta, (int, float, np.floating)):
        raise TypeError(f"beta must be a number, got {beta!r}")
    if not 0 <= beta < float("inf"):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    x = validation.check_array(x, "x", min_ndim=2)
    if likelihood == "bernoulli" and not isinstance(x, jax.core.Tracer) and x.size:
        x_np = np.asarray(x)  # concrete here (also when closed over inside jit): check on host
        lo, hi = float(x_np.min()), float(x_np.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"x has values in [{lo:g}, {hi:g}], outside [0, 1], which the "
                             "Bernoulli likelihood needs: scale the data to [0, 1] or use the "
                             "gaussian likelihood")
    draw = lambda mean: jax.random.normal(key, mean.shape, mean.dtype)  # == reparameterize's eps
    recon_B, kl_B = elbo_terms(model, params, x, draw, likelihood)
    out = batch_metrics(recon_B, kl_B, beta)
    validation.check_finite_output(out, "the loss", "the data has extreme values for this "
                                   "model; standardize it or check the parameters for NaN")
    return out


def log_importance_weights(model: nn.Module, params: Any, x_BxD: jax.Array, key: jax.Array,
                           num_samples: int, likelihood: str = "bernoulli",
                           log_prior: Callable[[jax.Array], jax.Array]
                           = distributions.standard_normal_log_prob) -> jax.Array:
    """log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x),  z_k ~ q(z | x), k = 1..K.

    The building block of the importance-weighted bound (Burda et al. 2016): the IWAE bound is
    ``logsumexp_k log w_k - log K`` (``iwae_bound``), which is the one-sample ELBO estimate at
    K = 1 and tends to log p(x) as K grows. Memory is O(K * B * D): chunk K for large K.

    Args:
      model: a VAE module (``encode`` / ``decode``).
      params: its parameters.
      x_BxD: a batch of examples.
      key: the key of the K samples; eps_KxBxZ = jax.random.normal(key, (K, B, Z)).
      num_samples: K >= 1.
      likelihood: the name of p(x | z) (see ``LIKELIHOODS``).
      log_prior: log p(z) summed over the last axis (default: the standard normal).

    Returns:
      ``log_w_KxB``.
    """
    num_samples = validation.check_count(num_samples, "num_samples")
    validation.check_key(key)
    mean_BxZ, logvar_BxZ = models.encode(model, params, x_BxD)
    eps_KxBxZ = jax.random.normal(key, (num_samples,) + mean_BxZ.shape, mean_BxZ.dtype)
    mean_1xBxZ, logvar_1xBxZ = mean_BxZ[None], logvar_BxZ[None]
    z_KxBxZ = distributions.shift_and_scale(mean_1xBxZ, logvar_1xBxZ, eps_KxBxZ)
    batch = mean_BxZ.shape[0]
    out_KBxD = models.decode(model, params, z_KxBxZ.reshape((-1,) + mean_BxZ.shape[1:]))
    x_KBxD = jnp.broadcast_to(x_BxD[None], (num_samples,) + x_BxD.shape).reshape(
        (-1,) + x_BxD.shape[1:])  # not out's shape: two-channel likelihoods have out_KBxDx2
    log_px_KxB = -reconstruction_nll(likelihood, out_KBxD, x_KBxD).reshape(num_samples, batch)
    log_q_KxB = distributions.gaussian_log_prob(z_KxBxZ, mean_1xBxZ, logvar_1xBxZ)
    return log_px_KxB + log_prior(z_KxBxZ) - log_q_KxB


def iwae_bound(log_w_KxB: jax.Array) -> jax.Array:
    """log (1/K) sum_k w_k = logsumexp_k log w_k - log K, per example: ``(B,)``.

    Args:
      log_w_KxB: log importance weights, K samples of B examples (``log_importance_weights``).

    Returns:
      ``bound_B``: the log of the mean weight, >= the mean log-weight (Jensen).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxvae import iwae_bound
      >>> log_w = jnp.log(jnp.array([[1.0, 2.0], [3.0, 2.0]]))  # K = 2 samples, B = 2 examples
      >>> [round(v, 4) for v in iwae_bound(log_w).tolist()]  # log(mean w): log 2, log 2
      [0.6931, 0.6931]
    """
    return jax.nn.logsumexp(log_w_KxB, axis=0) - jnp.log(log_w_KxB.shape[0])
