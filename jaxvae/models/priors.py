"""Priors p(z): standard normal, learnable diagonal Gaussian, mixture of Gaussians, VampPrior.

Every prior is a diagonal-Gaussian mixture p(z) = sum_k pi_k N(z | mu_k, diag(exp(lv_k))),
described by ``Mixture(logits_K, mean_KxZ, logvar_KxZ)`` (K = 1 for the Gaussians), so one
``log_prob`` and one ``sample`` serve all of them. The prior's parameters are Flax parameters
of a submodule ``prior`` of ``jaxvae.models.mlp.VAE``, trained with the rest of the model.

    standard   N(0, I); no parameters.                            KL analytic (closed form)
    diagonal   N(mu, diag(exp(lv))) with learned mu, lv.          KL analytic (closed form)
    mog        K learned components and weights.                  KL Monte Carlo
    vamp       VampPrior (Tomczak & Welling 2018): the mixture of  KL Monte Carlo
               the posteriors of K learned pseudo-inputs u_k,
               p(z) = 1/K sum_k q(z | u_k).

The KL of a mixture prior has no closed form; the loss then uses the one-sample Monte Carlo
estimate log q(z | x) - log p(z) at the reparameterized z of the reconstruction term (unbiased
for KL(q || p), as in Tomczak & Welling 2018).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvae import distributions

PRIORS = ("standard", "diagonal", "mog", "vamp")
ANALYTIC_KL = ("standard", "diagonal")  # priors whose KL(q || p) is computed in closed form


class Mixture(NamedTuple):
    """A diagonal-Gaussian mixture: unnormalized log-weights and per-component parameters."""

    logits_K: jax.Array
    mean_KxZ: jax.Array
    logvar_KxZ: jax.Array


def mixture_log_prob(z: jax.Array, mixture: Mixture) -> jax.Array:
    """log sum_k pi_k N(z | mu_k, exp(lv_k)), pi = softmax(logits), over the last axis of z.

    logsumexp_k [log pi_k + log N(z | mu_k, exp(lv_k))]; z is ``(..., Z)``, returns ``(...)``.
    With one component this is exactly the Gaussian's log density (log softmax of one logit is 0).
    """
    lead = (1,) * (z.ndim - 1)  # explicit broadcasting (rank promotion is an error in tests)
    log_pi_xK = jax.nn.log_softmax(mixture.logits_K).reshape(lead + mixture.logits_K.shape)
    log_n_xK = distributions.gaussian_log_prob(
        z[..., None, :], mixture.mean_KxZ.reshape(lead + mixture.mean_KxZ.shape),
        mixture.logvar_KxZ.reshape(lead + mixture.logvar_KxZ.shape))
    return jax.nn.logsumexp(log_pi_xK + log_n_xK, axis=-1)


def sample_mixture(key: jax.Array, n: int, mixture: Mixture) -> jax.Array:
    """n draws z_NxZ: a component k ~ Categorical(pi), then z = mu_k + exp(lv_k / 2) * eps."""
    comp_key, eps_key = jax.random.split(key)
    k_N = jax.random.categorical(comp_key, mixture.logits_K, shape=(n,))
    eps_NxZ = jax.random.normal(eps_key, (n, mixture.mean_KxZ.shape[-1]))
    return distributions.shift_and_scale(mixture.mean_KxZ[k_N], mixture.logvar_KxZ[k_N], eps_NxZ)


def diagonal_kl_per_dim(mean: jax.Array, logvar: jax.Array, prior_mean: jax.Array,
                        prior_logvar: jax.Array) -> jax.Array:
    """KL(N(m, e^lv) || N(m_p, e^lv_p)) per dimension (not summed), non-negative.

    KL_j = 1/2 [lv_p - lv + (e^lv + (m - m_p)^2) / e^lv_p - 1]. At m_p = 0, lv_p = 0 this is
    the standard-normal KL of ``jaxvae.gaussian_kl`` before its sum.
    """
    return 0.5 * (prior_logvar - logvar
                  + (jnp.exp(logvar) + jnp.square(mean - prior_mean)) * jnp.exp(-prior_logvar)
                  - 1.0)


def standard_kl_per_dim(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """-1/2 (1 + lv - m^2 - e^lv) per dimension: the terms of ``jaxvae.gaussian_kl``."""
    return -0.5 * (1.0 + logvar - jnp.square(mean) - jnp.exp(logvar))


class StandardPrior(nn.Module):
    """N(0, I): no parameters."""

    latent_dim: int

    @nn.compact
    def __call__(self) -> Mixture:
        z = self.latent_dim
        return Mixture(jnp.zeros((1,)), jnp.zeros((1, z)), jnp.zeros((1, z)))


class DiagonalPrior(nn.Module):
    """N(mu, diag(exp(lv))) with learned mu and lv, initialized at N(0, I)."""

    latent_dim: int

    @nn.compact
    def __call__(self) -> Mixture:
        mean = self.param("mean", nn.initializers.zeros, (1, self.latent_dim))
        logvar = self.param("logvar", nn.initializers.zeros, (1, self.latent_dim))
        return Mixture(jnp.zeros((1,)), mean, logvar)


class MixturePrior(nn.Module):
    """sum_k softmax(logits)_k N(mu_k, diag(exp(lv_k))), all learned.

    Initialization: equal weights, unit variances, means drawn from N(0, I) so the components
    start apart (identical components would receive identical gradients forever).
    """

    latent_dim: int
    num_components: int = 10

    @nn.compact
    def __call__(self) -> Mixture:
        k, z = self.num_components, self.latent_dim
        logits = self.param("logits", nn.initializers.zeros, (k,))
        mean = self.param("mean", nn.initializers.normal(1.0), (k, z))
        logvar = self.param("logvar", nn.initializers.zeros, (k, z))
        return Mixture(logits, mean, logvar)


class VampPseudoInputs(nn.Module):
    """The K learned pseudo-inputs u_k of the VampPrior, shape ``(K, *data_shape)``.

    Initialized from N(0.5, 0.1^2), inside the [0, 1] range of image data. The mixture itself
    needs the encoder: ``VAE.prior_mixture`` encodes the pseudo-inputs.
    """

    data_shape: tuple[int, ...]
    num_components: int = 10

    @nn.compact
    def __call__(self) -> jax.Array:
        init = lambda key, shape: 0.5 + 0.1 * jax.random.normal(key, shape)
        return self.param("pseudo_inputs", init, (self.num_components,) + tuple(self.data_shape))


def vamp_mixture(mean_KxZ: jax.Array, logvar_KxZ: jax.Array) -> Mixture:
    """The VampPrior from the encoded pseudo-inputs: equal weights 1/K."""
    return Mixture(jnp.zeros(mean_KxZ.shape[:1]), mean_KxZ, logvar_KxZ)


def make_prior(name: str, latent_dim: int, data_shape: tuple[int, ...], num_components: int
               ) -> nn.Module:
    """The prior submodule for ``name`` (one of ``PRIORS``)."""
    if name == "standard":
        return StandardPrior(latent_dim)
    if name == "diagonal":
        return DiagonalPrior(latent_dim)
    if name == "mog":
        return MixturePrior(latent_dim, num_components)
    if name == "vamp":
        return VampPseudoInputs(tuple(data_shape), num_components)
    raise ValueError(f"unknown prior {name!r}; choose one of {list(PRIORS)}")


def check_prior(name: str, num_components: int = 1) -> None:
    """Raises ValueError for an unknown prior or a mixture without components."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {list(PRIORS)}")
    if isinstance(num_components, bool) or not isinstance(num_components, int):
        raise TypeError(f"prior_components must be an int, got {num_components!r}")
    if name in ("mog", "vamp") and num_components < 1:
        raise ValueError(f"prior_components must be >= 1 for the {name} prior, got "
                         f"{num_components}")

