"""A VAE whose posterior is a Gaussian pushed through K planar flows (Rezende & Mohamed 2015).

    z_0 ~ q_0(z | x) = N(mean(x), diag(exp(logvar(x)))),   z_k = f_k(z_{k-1}),  k = 1 .. K
    f(z) = z + u^ tanh(w.z + b),   log |det df/dz| = log |1 + u^.psi(z)|,
    psi(z) = (1 - tanh(w.z + b)^2) w                                            (Sec. 4.1)

f is invertible when w.u^ >= -1, which u^ = u + (m(w.u) - w.u) w / ||w||^2 with
m(a) = -1 + softplus(a) guarantees for any u, w (App. A.1). The flow parameters (u, w, b of each
step) are outputs of the encoder, per example (amortized, as in the paper). The bound is

    -ELBO = E_q0[-log p(x | z_K) + log q_0(z_0) - sum_k log |det df_k/dz_{k-1}| - log p(z_K)]

estimated with one sample; ``kl`` in the metrics is the Monte Carlo term
log q_K(z_K) - log p(z_K) (no closed form after the flows). With K = 0 it is exactly the
Gaussian-posterior VAE's Monte Carlo bound with the same noise. The prior is N(0, I), so
``jaxvae.sample`` works unchanged; ``jaxvae.reconstruct`` pushes z_0 through the flows. In the
model interface (``jaxvae.models.interface``) ``posterior`` is q_0 and the log-weights use
log q_K(z_K) = log q_0(z_0) - sum_k log |det df_k/dz_{k-1}|.
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


def planar_u_hat(u: jax.Array, w: jax.Array) -> jax.Array:
    """u^ = u + (m(w.u) - w.u) w / ||w||^2, m(a) = -1 + softplus(a): then w.u^ = m(w.u) > -1.

    ``u``, ``w``: ``(..., Z)``. (||w||^2 gets a 1e-12 floor so that w = 0 gives u^ = u.)
    """
    wu = jnp.sum(w * u, axis=-1, keepdims=True)
    m_wu = -1.0 + jax.nn.softplus(wu)
    return u + (m_wu - wu) * w / (jnp.sum(jnp.square(w), axis=-1, keepdims=True) + 1e-12)


def planar_flow(z: jax.Array, u: jax.Array, w: jax.Array, b: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
    """One planar step with the invertibility constraint: (f(z), log |det df/dz|).

    Args:
      z, u, w: ``(B, Z)`` (u is constrained to u^ here).
      b: ``(B,)``.

    Returns:
      ``(z_new_BxZ, log_det_B)``.
    """
    u_hat = planar_u_hat(u, w)
    h = jnp.tanh(jnp.sum(w * z, axis=-1) + b)
    z_new = z + u_hat * h[:, None]
    psi = (1.0 - jnp.square(h))[:, None] * w
    return z_new, jnp.log(jnp.abs(1.0 + jnp.sum(u_hat * psi, axis=-1)))


def apply_planar_flows(z0: jax.Array, u_KxBxZ: jax.Array, w_KxBxZ: jax.Array, b_KxB: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """z_K = f_K o .. o f_1(z_0) and sum_k log |det df_k/dz| (zero for K = 0): ``(z_K, ld_B)``."""
    z, log_det_B = z0, jnp.zeros(z0.shape[:1], z0.dtype)
    for k in range(u_KxBxZ.shape[0]):
        z, ld = planar_flow(z, u_KxBxZ[k], w_KxBxZ[k], b_KxB[k])
        log_det_B = log_det_B + ld
    return z, log_det_B


class FlowParams(NamedTuple):
    mean: jax.Array  # (B, Z)
    logvar: jax.Array  # (B, Z)
    u: jax.Array  # (K, B, Z)
    w: jax.Array  # (K, B, Z)
    b: jax.Array  # (K, B)


class FlowVAE(interface.LatentVariableModel):
    """MLP VAE with a planar-flow posterior (flow parameters from the encoder's features).

    Attributes:
      hidden: encoder hidden widths; the decoder uses them reversed.
      latent_dim: Z.
      flow_steps: K >= 0, the number of planar flows.
      data_shape: the shape of one example.
      likelihood: p(x | z), a one-output name from ``jaxvae.likelihoods.LIKELIHOODS``.
      dtype: the products' compute dtype (``jaxvae.models.precision``); the flows themselves
        (elementwise, with their log-determinants) run in float32.
    """

    hidden: Sequence[int] = (400,)
    latent_dim: int = 20
    flow_steps: int = 4
    data_shape: tuple[int, ...] = (784,)
    likelihood: str = "bernoulli"
    dtype: Any = None

    def setup(self):
        dense = precision.dense_kwargs(self.dtype)
        self.encoder_mlp = models.MLP(tuple(self.hidden), torch_init=False, dtype=self.dtype)
        self.mean_head = nn.Dense(self.latent_dim, **dense)
        self.logvar_head = nn.Dense(self.latent_dim, **dense)
        if self.flow_steps:
            self.flow_head = nn.Dense(self.flow_steps * (2 * self.latent_dim + 1), **dense)
        self.decoder = models.Decoder(tuple(reversed(self.hidden)), tuple(self.data_shape),
                                      torch_init=False, dtype=self.dtype)

    def encode_flow(self, x: jax.Array) -> FlowParams:
        """q_0's (mean, logvar) and the K steps' (u, w, b)."""
        h = self.encoder_mlp(x.reshape(x.shape[0], -1))
        batch, k, z = x.shape[0], self.flow_steps, self.latent_dim
        if k:
            raw = self.flow_head(h).reshape(batch, k, 2 * z + 1).transpose(1, 0, 2)
            u, w, b = raw[..., :z], raw[..., z:2 * z], raw[..., 2 * z]
        else:
            u = w = jnp.zeros((0, batch, z), h.dtype)
            b = jnp.zeros((0, batch), h.dtype)
        return FlowParams(self.mean_head(h), self.logvar_head(h), u, w, b)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q_0(z | x), the Gaussian before the flows: ``(mean_BxZ, logvar_BxZ)``."""
        fp = self.encode_flow(x)
        return fp.mean, fp.logvar

    def decode(self, z_BxZ: jax.Array) -> jax.Array:
        return self.decoder(z_BxZ)

    @property
    def analytic_kl_per_dim(self) -> bool:
        return False

    def reconstruct_outputs(self, x: jax.Array, key: jax.Array | None = None,
                            y: jax.Array | None = None) -> jax.Array:
        """decode(z_K), z_0 ~ q_0 drawn with ``key`` (its mean if None), pushed through the flows."""
        del y
        fp = self.encode_flow(x)
        z0 = fp.mean if key is None else distributions.reparameterize(key, fp.mean, fp.logvar)
        return self.decode(apply_planar_flows(z0, fp.u, fp.w, fp.b)[0])

    def elbo_terms(self, x: jax.Array, y: jax.Array | None, key: jax.Array
                   ) -> interface.ElboTerms:
        """recon = -log p(x | z_K), kl = log q_0(z_0) - sum_k log|det| - log p(z_K) (one sample,
        z_0 = mean + std * normal(key, (B, Z))); ``extras["log_det"]`` the flows' log-det."""
        del y
        fp = self.encode_flow(x)
        eps = jax.random.normal(key, fp.mean.shape, fp.mean.dtype)  # == objectives.loss's eps
        z0 = distributions.shift_and_scale(fp.mean, fp.logvar, eps)
        z_k, log_det = apply_planar_flows(z0, fp.u, fp.w, fp.b)
        recon = objectives.reconstruction_nll(self.likelihood, self.decode(z_k), x)
        kl = (distributions.gaussian_log_prob(z0, fp.mean, fp.logvar) - log_det
              - self.log_prior(z_k))
        return interface.ElboTerms(recon, kl, None, {"log_det": log_det})

    def log_weight_terms(self, x: jax.Array, y: jax.Array | None, key: jax.Array,
                         num_samples: int) -> interface.LogWeightTerms:
        """log p(x | z_K), log p(z_K) and log q_K(z_K) = log q_0(z_0) - sum_k log|det df_k/dz|,
        z_0 = mean + std * eps_k, eps_KxBxZ = normal(key, (K, B, Z))."""
        fp = self.encode_flow(x)
        eps_KxBxZ = jax.random.normal(key, (num_samples,) + fp.mean.shape, fp.mean.dtype)
        z0_KxBxZ = distributions.shift_and_scale(fp.mean[None], fp.logvar[None], eps_KxBxZ)
        flow = lambda z0: apply_planar_flows(z0, fp.u, fp.w, fp.b)
        zk_KxBxZ, log_det_KxB = jax.vmap(flow)(z0_KxBxZ)
        log_q0_KxB = distributions.gaussian_log_prob(z0_KxBxZ, fp.mean[None], fp.logvar[None])
        return interface.LogWeightTerms(self._log_px(x, y, zk_KxBxZ), self.log_prior(zk_KxBxZ),
                                        log_q0_KxB - log_det_KxB)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.reconstruct_outputs(x)


class FlowTerms(NamedTuple):
    recon: jax.Array  # (B,): -log p(x | z_K)
    log_q0: jax.Array  # (B,): log q_0(z_0 | x)
    log_det: jax.Array  # (B,): sum_k log |det df_k/dz|
    log_prior: jax.Array  # (B,): log p(z_K)
    z_k: jax.Array  # (B, Z)


def flow_terms(model: FlowVAE, params: Any, x: jax.Array, key: jax.Array,
               likelihood: str = "bernoulli") -> FlowTerms:
    """The one-sample terms of the bound, z_0 = mean + exp(logvar / 2) * normal(key, (B, Z))."""

    def forward(module, x):
        fp = module.encode_flow(x)
        eps = jax.random.normal(key, fp.mean.shape, fp.mean.dtype)  # == objectives.loss's eps
        z0 = distributions.shift_and_scale(fp.mean, fp.logvar, eps)
        z_k, log_det = apply_planar_flows(z0, fp.u, fp.w, fp.b)
        return module.decode(z_k), distributions.gaussian_log_prob(z0, fp.mean, fp.logvar), \
            log_det, z_k

    out, log_q0, log_det, z_k = nn.apply(forward, model)({"params": params}, x)
    return FlowTerms(objectives.reconstruction_nll(likelihood, out, x), log_q0, log_det,
                     distributions.standard_normal_log_prob(z_k), z_k)


def flow_loss(model: FlowVAE, params: Any, x: jax.Array, key: jax.Array, beta: float = 1.0,
              likelihood: str = "bernoulli") -> tuple[jax.Array, dict[str, jax.Array]]:
    """mean_b[recon + beta * (log q_0 - log_det - log p(z_K))], and its metrics.

    Metrics: ``loss``, ``recon``, ``kl`` (the Monte Carlo log q_K(z_K) - log p(z_K)) and
    ``log_det`` (the flows' total log-determinant). The terms of ``FlowVAE.elbo_terms`` (what
    ``jaxvae.objectives.losses.make_elbo_loss`` trains).
    """
    model = model if model.likelihood == likelihood else model.clone(likelihood=likelihood)
    terms = interface.elbo_terms(model, params, x, key)
    loss = jnp.mean(terms.recon_B + beta * terms.kl_B)
    return loss, {"loss": loss, "recon": jnp.mean(terms.recon_B), "kl": jnp.mean(terms.kl_B),
                  "log_det": jnp.mean(terms.extras["log_det"])}


def flow_vae(hidden: Sequence[int] = (400,), latent_dim: int = 20, flow_steps: int = 4,
             data_shape: Sequence[int] = (784,), likelihood: str = "bernoulli",
             precision_name: str = "float32") -> FlowVAE:
    """A planar-flow VAE, validated.

    Raises:
      ValueError: non-positive widths or latent size, or a negative number of flow steps.
    """
    hidden = tuple(hidden)
    if any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1 for h in hidden):
        raise ValueError(f"hidden sizes must be positive ints, got {hidden}")
    for name, value, low in (("latent_dim", latent_dim, 1), ("flow_steps", flow_steps, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    conv.check_one_output(likelihood, "the planar-flow VAE")
    return FlowVAE(hidden, int(latent_dim), int(flow_steps), tuple(int(d) for d in data_shape),
                   likelihood, precision.compute_dtype(precision_name))
