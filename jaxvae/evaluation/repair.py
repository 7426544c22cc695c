"""Image repair with a trained VAE: corruptions, encode-decode restoration, inpainting.

Corruptions return ``(x_corrupted_BxD, observed_BxD)``: ``observed`` is 1.0 where a pixel is
known to be intact and 0.0 where it is missing (all ones for noise, which hits pixels
unknowingly). Restoration projects the corrupted image through the model; inpainting fills only
the missing pixels and never changes an observed one.

Inpainting is the iterative conditional sampling of Rezende et al. 2014 (Sec. 5): a Markov
chain that alternates

    z_t ~ q(z | x_t),   x' = E[x | z_t] (or x' ~ p(x | z_t)),
    x_{t+1} = observed * x + (1 - observed) * x'

whose stationary distribution approximates p(x_missing | x_observed) when q is a good posterior.
Every function takes an explicit key; images are flat ``(B, D)`` in [0, 1] with D = side**2.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvae import likelihoods
from jaxvae.models import interface


def gaussian_noise(key: jax.Array, x_BxD: jax.Array, sigma: float
                   ) -> tuple[jax.Array, jax.Array]:
    """x + sigma * N(0, I), clipped to [0, 1]; every pixel counts as observed."""
    noisy = jnp.clip(x_BxD + sigma * jax.random.normal(key, x_BxD.shape, x_BxD.dtype), 0.0, 1.0)
    return noisy, jnp.ones_like(x_BxD)


def salt_and_pepper(key: jax.Array, x_BxD: jax.Array, rate: float
                    ) -> tuple[jax.Array, jax.Array]:
    """Each pixel set to 0 or 1 (equally likely) with probability ``rate``; all observed."""
    hit_key, salt_key = jax.random.split(key)
    hit = jax.random.bernoulli(hit_key, rate, x_BxD.shape)
    salt = jax.random.bernoulli(salt_key, 0.5, x_BxD.shape).astype(x_BxD.dtype)
    return jnp.where(hit, salt, x_BxD), jnp.ones_like(x_BxD)


def square_mask(key: jax.Array, x_BxD: jax.Array, size: int, side: int = 28, fill: float = 0.0
                ) -> tuple[jax.Array, jax.Array]:
    """A ``size`` x ``size`` square of missing pixels at a random place in each image.

    The square's top-left corner is uniform over the positions that keep it inside the central
    ``side - 8`` pixels (where MNIST digits are), so it hides part of the digit.
    """
    if not 1 <= size <= side - 8:
        raise ValueError(f"mask size must be in [1, {side - 8}] for {side}x{side} images, "
                         f"got {size}")
    batch = x_BxD.shape[0]
    corner_Bx2 = jax.random.randint(key, (batch, 2), 4, side - 4 - size + 1)
    rows, cols = jnp.arange(side)[None, :], jnp.arange(side)[None, :]
    in_rows_BxS = (rows >= corner_Bx2[:, :1]) & (rows < corner_Bx2[:, :1] + size)
    in_cols_BxS = (cols >= corner_Bx2[:, 1:]) & (cols < corner_Bx2[:, 1:] + size)
    missing_BxD = (in_rows_BxS[:, :, None] & in_cols_BxS[:, None, :]).reshape(batch, side * side)
    observed = (~missing_BxD).astype(x_BxD.dtype)
    return jnp.where(missing_BxD, fill, x_BxD), observed


def _likelihood(model: nn.Module, likelihood: str | None) -> str:
    own = getattr(model, "likelihood", None)
    if own is not None and likelihood is not None and likelihood != own:
        raise ValueError(f"the model has the {own!r} likelihood, got likelihood={likelihood!r}")
    return own or likelihood or "bernoulli"


def encode_decode(model: nn.Module, params: Any, batch, likelihood: str | None = None
                  ) -> jax.Array:
    """E[x | z = the posterior mean]: the image projected through the model.

    ``batch``: ``{"x": x_BxD, "y": labels_B}`` or the array ``x_BxD`` (unconditional models).
    Any model of ``jaxvae.models.interface`` (for the flow the mean pushed through the flows, for the
    ladder the means layer by layer, for the VQ-VAE the nearest codes).
    """
    out = interface.reconstruct(model, params, batch)
    return likelihoods.likelihood_mean(_likelihood(model, likelihood), out)


def inpaint(model: nn.Module, params: Any, batch, observed_BxD: jax.Array,
            key: jax.Array, num_steps: int = 50, sample_pixels: bool = False,
            likelihood: str | None = None) -> jax.Array:
    """Fills the missing pixels by iterative conditional sampling (Rezende et al. 2014, Sec. 5).

    Starts from ``x`` (``batch``: ``{"x": x_BxD, "y": labels_B}`` or the array ``x_BxD``) with
    its missing pixels as given (e.g. zeros), then runs ``num_steps`` steps of the chain above
    under ``lax.scan``; step t uses the key ``fold_in(key, t)`` for z_t ~ q(z | x_t) (drawn by
    the model's own posterior: through the flows, layer by layer for the ladder) and, with
    ``sample_pixels``, for x' ~ p(x | z_t); else x' = E[x | z_t]. Returns the last state of the
    chain: observed pixels are exactly those of ``x``.
    """
    batch = interface.as_batch(model, batch)
    x_BxD = batch["x"]
    likelihood = _likelihood(model, likelihood)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if x_BxD.shape != observed_BxD.shape:
        raise ValueError(f"x {x_BxD.shape} and observed {observed_BxD.shape} must have the same "
                         "shape")
    if sample_pixels and likelihood != "bernoulli":
        raise ValueError("sample_pixels draws Bernoulli pixels; use likelihood='bernoulli'")
    return _inpaint(model, params, x_BxD, batch["y"], observed_BxD, key, num_steps,
                    sample_pixels, likelihood)


def _inpaint(model, params, x_BxD, y_B, observed_BxD, key, num_steps, sample_pixels, likelihood):
    keep = observed_BxD > 0.5

    def step(x_t, t):
        z_key, x_key = jax.random.split(jax.random.fold_in(key, t))
        out = interface.reconstruct(model, params, {"x": x_t, "y": y_B}, z_key)
        if sample_pixels:
            proposal = jax.random.bernoulli(x_key, jax.nn.sigmoid(out)).astype(x_t.dtype)
        else:
            proposal = likelihoods.likelihood_mean(likelihood, out)
        return jnp.where(keep, x_BxD, proposal.reshape(x_t.shape)), None

    x_T, _ = jax.lax.scan(step, x_BxD, jnp.arange(num_steps))
    return x_T


_inpaint = jax.jit(_inpaint, static_argnums=(0, 6, 7, 8))
