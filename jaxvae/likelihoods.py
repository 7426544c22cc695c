"""Likelihoods p(x | z) with a learned scale: Gaussian (learned variance) and discretized logistic.

The decoder of these likelihoods has two outputs per data dimension, stacked on a trailing
axis: ``out_BxDx2`` with ``out[..., 0]`` the location (the mean) and ``out[..., 1]`` the raw
log-scale, which the NLL bounds softly (see ``soft_bound``) so that no dimension's density can
run off to infinity on (near-)constant pixels. ``OUTPUT_CHANNELS`` says how many outputs per
dimension each likelihood needs; ``jaxvae.models.mlp.VAE`` sizes its decoder from it.

    gaussian          unit variance (jaxvae.distributions.gaussian_nll): the "MSE" VAE
    gaussian_learned  N(x | mu(z), sigma^2(z)): the decoder predicts a log-variance per dimension
    gaussian_global   N(x | mu(z), sigma^2): one learned log-variance shared by all dimensions
                      and examples (a parameter of the decoder, the sigma-VAE of Rybkin et al. 2021)
    logistic          discretized logistic over 256 bins of 8-bit data scaled to [0, 1]
                      (Kingma et al. 2016, IAF; Salimans et al. 2017, PixelCNN++)

MSE and the fixed-variance Gaussian: -log N(x | mu, sigma^2) summed over D dimensions is
SSE / (2 sigma^2) + D/2 log(2 pi sigma^2). At sigma = 1 this is SSE/2 + D/2 log(2 pi), so
minimising "MSE-sum + KL" is the Gaussian VAE with sigma^2 = 1/2, and "SSE/2 + KL" the one with
unit variance. More generally a fixed sigma^2 is a beta-VAE: multiplying the loss by sigma^2
gives SSE/2 + sigma^2 KL, i.e. beta = sigma^2 relative to the unit-variance recon term.
Learning sigma^2 lets the data pick that balance.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxvae import distributions

# Bounds of the learned log-variance of the Gaussian likelihoods: sigma in [0.03, 2.7].
GAUSSIAN_LOGVAR_MIN = -7.0
GAUSSIAN_LOGVAR_MAX = 2.0
# Bounds of the logistic log-scale for data in [0, 1]: s in [3.4e-4, 2.7] (a bin is 1/255 wide).
LOGISTIC_LOG_SCALE_MIN = -8.0
LOGISTIC_LOG_SCALE_MAX = 1.0
NUM_BINS = 256  # 8-bit data: x = k / 255, k = 0..255

# Outputs per data dimension the decoder must produce for each likelihood (default 1).
OUTPUT_CHANNELS = {"gaussian_learned": 2, "gaussian_global": 2, "logistic": 2}


def output_channels(likelihood: str) -> int:
    return OUTPUT_CHANNELS.get(likelihood, 1)


def _sum_non_batch(values: jax.Array) -> jax.Array:
    return jnp.sum(values.reshape(values.shape[0], -1), axis=-1)


def soft_bound(raw: jax.Array, low: float, high: float) -> jax.Array:
    """A smooth clip of ``raw`` into [low, high]: identity well inside, softplus at both ends.

    low + softplus(raw - low) lifts values above low; high - softplus(high - .) caps them.
    Unlike a hard clip it keeps a gradient everywhere.
    """
    lifted = low + jax.nn.softplus(raw - low)
    return high - jax.nn.softplus(high - lifted)


def gaussian_learned_nll(out: jax.Array, x: jax.Array) -> jax.Array:
    """-log N(x | mu, exp(logvar)) summed over the data dimensions, from ``out = [mu, raw]``.

    logvar = soft_bound(raw, GAUSSIAN_LOGVAR_MIN, GAUSSIAN_LOGVAR_MAX); shapes
    ``out_BxDx2``, ``x_BxD``; returns ``nll_B``.
    """
    logvar = soft_bound(out[..., 1], GAUSSIAN_LOGVAR_MIN, GAUSSIAN_LOGVAR_MAX)
    return distributions.gaussian_nll(out[..., 0], x, logvar)


def gaussian_logvar(out: jax.Array) -> jax.Array:
    """The bounded log-variance a Gaussian-learned decoder output stands for."""
    return soft_bound(out[..., 1], GAUSSIAN_LOGVAR_MIN, GAUSSIAN_LOGVAR_MAX)


def logistic_log_scale(out: jax.Array) -> jax.Array:
    """The bounded log-scale log s a logistic decoder output stands for."""
    return soft_bound(out[..., 1], LOGISTIC_LOG_SCALE_MIN, LOGISTIC_LOG_SCALE_MAX)


def discretized_logistic_log_prob(x: jax.Array, loc: jax.Array, log_scale: jax.Array,
                                  num_bins: int = NUM_BINS) -> jax.Array:
    """log P(x) of a logistic discretized into ``num_bins`` bins on [0, 1], elementwise.

    With bin half-width h = 1 / (2 (num_bins - 1)), a = (x + h - loc) / s, b = (x - h - loc) / s
    and sigma the logistic sigmoid,

        P(x) = sigma(a) - sigma(b)    inside,   P(0) = sigma(a),   P(1) = 1 - sigma(b),

    so the probabilities of the num_bins values sum to one (Salimans et al. 2017). Inside it is
    computed without cancellation as sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - e^(b - a)):

        log P = -softplus(-a) - softplus(b) + log(-expm1(-(a - b))),   a - b = 2h / s > 0,

    exact for any loc and scale in float32 (no PixelCNN++-style density fallback needed).
    ``x`` must lie on the grid k / (num_bins - 1).
    """
    half = 0.5 / (num_bins - 1)
    inv_s = jnp.exp(-log_scale)
    a = inv_s * (x - loc + half)
    b = inv_s * (x - loc - half)
    log_cdf_a = -jax.nn.softplus(-a)  # log sigma(a): the mass of [0, x + h] (the bin of x = 0)
    log_sf_b = -jax.nn.softplus(b)  # log(1 - sigma(b)): the mass of [x - h, 1] (x = 1)
    log_mid = log_cdf_a + log_sf_b + jnp.log(-jnp.expm1(-2.0 * half * inv_s))
    return jnp.where(x < half, log_cdf_a, jnp.where(x > 1.0 - half, log_sf_b, log_mid))


def logistic_nll(out: jax.Array, x: jax.Array) -> jax.Array:
    """-log P(x) of the discretized logistic summed over the data dimensions, ``out = [loc, raw]``.

    log_scale = soft_bound(raw, LOGISTIC_LOG_SCALE_MIN, LOGISTIC_LOG_SCALE_MAX); shapes
    ``out_BxDx2``, ``x_BxD`` (8-bit values / 255); returns ``nll_B`` in nats (a probability, so
    always >= 0; see ``bits_per_dim``).
    """
    return -_sum_non_batch(discretized_logistic_log_prob(x, out[..., 0], logistic_log_scale(out)))


def location(out: jax.Array) -> jax.Array:
    """E[x | z] of the two-channel likelihoods: the location (clipped to [0, 1] by callers for
    images if they wish; the discretized logistic's mean is close to it inside [0, 1])."""
    return out[..., 0]


def bits_per_dim(nll_nats: jax.Array, num_dims: int) -> jax.Array:
    """nats per example -> bits per data dimension: nll / (D ln 2) (the PixelCNN/IAF unit).

    For a continuous density on data in [0, 1] compare only after adding D log(256) nats
    (the dequantization offset); the discretized logistic needs no offset.
    """
    return nll_nats / (num_dims * math.log(2.0))


# The learned-scale likelihoods: name -> (nll(out, x) -> nll_B, mean(out)); part of LIKELIHOODS.
TABLE = {
    "gaussian_learned": (gaussian_learned_nll, location),
    "gaussian_global": (gaussian_learned_nll, location),
    "logistic": (logistic_nll, lambda out: jnp.clip(out[..., 0], 0.0, 1.0)),
}


# name -> (nll(decoder_outputs, x) -> nll_B, mean(decoder_outputs) -> E[x | z]), every likelihood.
LIKELIHOODS = {
    # Bernoulli: outputs are logits.
    "bernoulli": (distributions.bernoulli_nll, jax.nn.sigmoid),
    # Gaussian with unit variance: outputs are the mean (the "MSE" VAE, see gaussian_nll).
    "gaussian": (lambda out, x: distributions.gaussian_nll(out, x), lambda out: out),
    **TABLE,
}


def check_likelihood(likelihood: str) -> None:
    """Raises ValueError for a likelihood name that is not in LIKELIHOODS."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {sorted(LIKELIHOODS)}")


def reconstruction_nll(likelihood: str, out: jax.Array, x: jax.Array) -> jax.Array:
    """-log p(x | z) per example for the named likelihood, from the decoder outputs."""
    return LIKELIHOODS[likelihood][0](out, x)


def likelihood_mean(likelihood: str, out: jax.Array) -> jax.Array:
    """E[x | z] from decoder outputs: sigmoid(logits) for Bernoulli, the mean for Gaussian."""
    return LIKELIHOODS[likelihood][1](out)
