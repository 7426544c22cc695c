"""Ladder VAE: a hierarchy of Gaussian latents z_1 .. z_L with top-down inference.

Generative model (Sønderby et al. 2016, Eq. 1-3), layer 1 nearest the data:

    p(z_L) = N(0, I),   p(z_l | z_{l+1}) = N(mu_p,l, sigma_p,l^2)(z_{l+1}),   p(x | z_1)

Inference shares the top-down path. A deterministic bottom-up pass d_l = MLP_l(d_{l-1}),
d_0 = x, gives Gaussian "likelihood" terms (mu^_l, sigma^_l^2); then, top down,

    q(z_L | x) = N(mu^_L, sigma^_L^2),
    q(z_l | z_{l+1}, x) = N(mu_q,l, sigma_q,l^2) with the precision-weighted merge (Eq. 17-19)
        sigma_q^2 = 1 / (sigma^^-2 + sigma_p^-2),
        mu_q = (mu^ sigma^^-2 + mu_p sigma_p^-2) * sigma_q^2,

that is the normalized product of the two Gaussian densities. The bound is

    -ELBO = E_q[-log p(x | z_1)] + sum_l E_q[KL(q(z_l | z_{l+1}, x) || p(z_l | z_{l+1}))]

and each layer's KL is analytic given the sampled parent z_{l+1} (one reparameterized sample
per layer), so the estimate is unbiased. Metrics report it per layer: ``kl_1`` .. ``kl_L``.
Batch normalization and KL warm-up of the paper are not part of the model (warm-up belongs to
the beta schedules of the objectives).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import distributions
from jaxvae.models import conv
from jaxvae.models import interface
from jaxvae.models import mlp as models
from jaxvae.models import precision
from jaxvae.objectives import bounds as objectives


def precision_weighted_merge(mean_a: jax.Array, logvar_a: jax.Array, mean_b: jax.Array,
                             logvar_b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Gaussian proportional to N(mean_a, var_a) * N(mean_b, var_b): (mean, logvar).

    var = 1 / (1/var_a + 1/var_b), mean = (mean_a / var_a + mean_b / var_b) * var; computed in
    log space (logvar = -logaddexp(-logvar_a, -logvar_b)) so that tiny variances stay finite.
    """
    logvar = -jnp.logaddexp(-logvar_a, -logvar_b)
    mean = (mean_a * jnp.exp(logvar - logvar_a) + mean_b * jnp.exp(logvar - logvar_b))
    return mean, logvar


def gaussian_kl_between(mean_q: jax.Array, logvar_q: jax.Array, mean_p: jax.Array,
                        logvar_p: jax.Array) -> jax.Array:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) of diagonal Gaussians, summed over the last axis.

    KL = 1/2 * sum(logvar_p - logvar_q + (var_q + (mean_q - mean_p)**2) / var_p - 1)
    """
    return 0.5 * jnp.sum(logvar_p - logvar_q
                         + (jnp.exp(logvar_q) + jnp.square(mean_q - mean_p)) * jnp.exp(-logvar_p)
                         - 1.0, axis=-1)


class GaussianHead(nn.Module):
    """Dense ReLU ``hidden`` -> (mean, logvar) of a Z-dimensional diagonal Gaussian."""

    hidden: int
    latent_dim: int
    dtype: Any = None  # the products' compute dtype (jaxvae.models.precision)

    @nn.compact
    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns (features, mean, logvar); the features feed the next bottom-up block."""
        kwargs = precision.dense_kwargs(self.dtype)
        h = nn.relu(nn.Dense(self.hidden, name="hidden", **kwargs)(h))
        return (h, nn.Dense(self.latent_dim, name="mean", **kwargs)(h),
                nn.Dense(self.latent_dim, name="logvar", **kwargs)(h))


class LadderOutput(NamedTuple):
    out: jax.Array  # decoder outputs from z_1: (B, *data_shape)
    z: tuple  # z_1 .. z_L, each (B, Z_l)
    q: tuple  # (mean, logvar) of q(z_l | z_{l+1}, x), l = 1 .. L
    p: tuple  # (mean, logvar) of p(z_l | z_{l+1}), l = 1 .. L (the last is N(0, I))


class LadderVAE(interface.LatentVariableModel):
    """A ladder VAE with MLP blocks; every list runs bottom (layer 1, next to x) to top.

    Attributes:
      latents: Z_1 .. Z_L, the size of each stochastic layer (L >= 2).
      hidden: the width of each layer's bottom-up and top-down ReLU block (length L); the
        decoder p(x | z_1) has one hidden layer of ``hidden[0]``.
      data_shape: the shape of one example (flattened for the bottom-up MLP).
      likelihood: p(x | z_1), a one-output name from ``jaxvae.likelihoods.LIKELIHOODS``.
      dtype: the products' compute dtype (``jaxvae.models.precision``).
    """

    latents: Sequence[int] = (32, 16)
    hidden: Sequence[int] = (256, 128)
    data_shape: tuple[int, ...] = (784,)
    likelihood: str = "bernoulli"
    dtype: Any = None

    undefined = {"log_prior": "the ladder VAE's prior is the top-down hierarchy p(z_L) "
                              "prod_l p(z_l | z_(l+1)), not a density of z_1 alone; use "
                              "log_weights, which include every layer"}

    @property
    def latent_dim(self) -> int:
        """Z_1, the size of the layer the decoder reads."""
        return self.latents[0]

    @property
    def analytic_kl_per_dim(self) -> bool:
        return False

    def setup(self):
        num = len(self.latents)
        self.bottom_up = [GaussianHead(self.hidden[l], self.latents[l], self.dtype,
                                       name=f"bottom_up_{l + 1}") for l in range(num)]
        # top_down_l maps z_{l+1} to p(z_l | z_{l+1}), l = 1 .. L-1.
        self.top_down = [GaussianHead(self.hidden[l], self.latents[l], self.dtype,
                                      name=f"top_down_{l + 1}") for l in range(num - 1)]
        self.decoder = models.Decoder((self.hidden[0],), tuple(self.data_shape), torch_init=False,
                                      dtype=self.dtype,
                                      name="decoder")

    def decode(self, z1_BxZ: jax.Array) -> jax.Array:
        """p(x | z_1): decoder outputs ``(B, *data_shape)``."""
        return self.decoder(z1_BxZ)

    def bottom_up_pass(self, x: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """(mu^_l, logvar^_l) for l = 1 .. L."""
        h = x.reshape(x.shape[0], -1)
        terms = []
        for block in self.bottom_up:
            h, mean, logvar = block(h)
            terms.append((mean, logvar))
        return terms

    def infer(self, x: jax.Array, key: jax.Array | None) -> LadderOutput:
        """The top-down inference pass: z_l ~ q with ``key`` (or the means if key is None)."""
        num = len(self.latents)
        keys = [None] * num if key is None else list(jax.random.split(key, num))
        bottom = self.bottom_up_pass(x)
        z, q, p = [None] * num, [None] * num, [None] * num
        batch = x.shape[0]
        p[-1] = (jnp.zeros((batch, self.latents[-1]), x.dtype),
                 jnp.zeros((batch, self.latents[-1]), x.dtype))
        q[-1] = bottom[-1]
        for l in range(num - 1, -1, -1):
            if l < num - 1:
                _, mean_p, logvar_p = self.top_down[l](z[l + 1])
                p[l] = (mean_p, logvar_p)
                q[l] = precision_weighted_merge(*bottom[l], mean_p, logvar_p)
            mean, logvar = q[l]
            z[l] = mean if keys[l] is None else distributions.reparameterize(keys[l], mean, logvar)
        return LadderOutput(self.decode(z[0]), tuple(z), tuple(q), tuple(p))

    def sample_outputs(self, key: jax.Array, n: int) -> jax.Array:
        """Ancestral sampling: z_L ~ N(0, I), z_l ~ p(z_l | z_{l+1}), returns decode(z_1)."""
        keys = jax.random.split(key, len(self.latents))
        z = jax.random.normal(keys[-1], (n, self.latents[-1]))
        for l in range(len(self.latents) - 2, -1, -1):
            _, mean, logvar = self.top_down[l](z)
            z = distributions.reparameterize(keys[l], mean, logvar)
        return self.decode(z)

    def reconstruct_outputs(self, x: jax.Array, key: jax.Array | None = None,
                            y: jax.Array | None = None) -> jax.Array:
        """decode(z_1) with z ~ q (drawn with ``key``; the means of q layer by layer if None)."""
        del y
        return self.infer(x, key).out

    def posterior(self, x: jax.Array, y: jax.Array | None = None) -> interface.Posterior:
        """q(z_1 | z_2, x) with z_2 .. z_L at their posterior means, layer by layer."""
        del y
        return interface.Posterior(*self.infer(x, None).q[0])

    def elbo_terms(self, x: jax.Array, y: jax.Array | None, key: jax.Array
                   ) -> interface.ElboTerms:
        """recon = -log p(x | z_1), kl = sum_l KL(q(z_l | z_(l+1), x) || p(z_l | z_(l+1))), each
        analytic given the sampled parent; ``extras["kl_l"]`` the layers' KLs."""
        del y
        out = self.infer(x, key)
        recon_B = objectives.reconstruction_nll(self.likelihood, out.out, x)
        kl_LxB = jnp.stack([gaussian_kl_between(*q, *p) for q, p in zip(out.q, out.p)])
        extras = {f"kl_{l + 1}": kl_LxB[l] for l in range(kl_LxB.shape[0])}
        return interface.ElboTerms(recon_B, jnp.sum(kl_LxB, axis=0), None, extras)

    def log_weight_terms(self, x: jax.Array, y: jax.Array | None, key: jax.Array,
                         num_samples: int) -> interface.LogWeightTerms:
        """Over every layer: log p(x | z_1), sum_l log p(z_l | z_(l+1)), sum_l log q(z_l | .),
        for K top-down draws, the k-th with ``infer``'s keys from ``split(key, K)[k]``."""
        del y
        keys_K = jax.random.split(key, num_samples)
        log_px, log_pz, log_qz = nn.vmap(
            LadderVAE._sample_log_terms, in_axes=(None, 0), variable_axes={"params": None},
            split_rngs={"params": False})(self, x, keys_K)
        return interface.LogWeightTerms(log_px, log_pz, log_qz)

    def _sample_log_terms(self, x: jax.Array, key: jax.Array
                          ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """log p(x | z_1), sum_l log p(z_l | z_(l+1)), sum_l log q(z_l | .) of one draw."""
        out = self.infer(x, key)
        log_p = sum(distributions.gaussian_log_prob(z, *p) for z, p in zip(out.z, out.p))
        log_q = sum(distributions.gaussian_log_prob(z, *q) for z, q in zip(out.z, out.q))
        return -objectives.reconstruction_nll(self.likelihood, out.out, x), log_p, log_q

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.infer(x, None).out


def ladder_terms(model: LadderVAE, params: Any, x: jax.Array, key: jax.Array,
                 likelihood: str = "bernoulli") -> tuple[jax.Array, jax.Array, LadderOutput]:
    """(recon_B, kl_LxB, the inference pass): the per-example NLL and each layer's KL."""
    out = interface.apply_method(model, params, "infer", x, key)
    recon_B = objectives.reconstruction_nll(likelihood, out.out, x)
    kl_LxB = jnp.stack([gaussian_kl_between(*q, *p) for q, p in zip(out.q, out.p)])
    return recon_B, kl_LxB, out


def ladder_loss(model: LadderVAE, params: Any, x: jax.Array, key: jax.Array, beta: float = 1.0,
                likelihood: str = "bernoulli") -> tuple[jax.Array, dict[str, jax.Array]]:
    """mean_b[recon + beta * sum_l KL_l], and metrics ``loss``, ``recon``, ``kl``, ``kl_1..L``.

    The terms of ``LadderVAE.elbo_terms`` (what ``jaxvae.objectives.losses.make_elbo_loss`` trains).
    """
    model = model if model.likelihood == likelihood else model.clone(likelihood=likelihood)
    terms = interface.elbo_terms(model, params, x, key)
    loss = jnp.mean(terms.recon_B + beta * terms.kl_B)
    metrics = {"loss": loss, "recon": jnp.mean(terms.recon_B), "kl": jnp.mean(terms.kl_B)}
    metrics.update({name: jnp.mean(value) for name, value in terms.extras.items()})
    return loss, metrics


def ladder_vae(latents: Sequence[int] = (32, 16), hidden: Sequence[int] = (256, 128),
               data_shape: Sequence[int] = (784,), likelihood: str = "bernoulli",
               precision_name: str = "float32") -> LadderVAE:
    """A ladder VAE, validated: L >= 2 layers, one positive width per layer.

    Raises:
      ValueError: fewer than two latent layers, non-positive sizes, or len(hidden) != L.
    """
    latents, hidden = tuple(latents), tuple(hidden)
    for name, values in (("ladder latent sizes", latents), ("ladder hidden sizes", hidden)):
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
               for v in values):
            raise ValueError(f"{name} must be positive ints, got {values}")
    if len(latents) < 2:
        raise ValueError(f"a ladder VAE needs at least 2 stochastic layers, got latents {latents}")
    if len(hidden) != len(latents):
        raise ValueError(f"give one ladder hidden width per latent layer: {len(latents)} latents "
                         f"{latents} but {len(hidden)} widths {hidden}")
    conv.check_one_output(likelihood, "the ladder VAE")
    return LadderVAE(latents, hidden, tuple(int(d) for d in data_shape), likelihood,
                     precision.compute_dtype(precision_name))
