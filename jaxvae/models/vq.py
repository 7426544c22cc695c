"""VQ-VAE: a convolutional autoencoder with a discrete latent grid (van den Oord et al. 2017).

The encoder maps an image to a grid z_e of shape (h, w, D); each of its h*w vectors is replaced
by its nearest codebook vector e_k (K codes of size D), and the decoder reconstructs from the
quantized grid z_q. The objective per example is

    loss = -log p(x | z_q) + ||sg(z_e) - z_q||^2 + beta_c * ||z_e - sg(z_q)||^2

(sums over the grid and the code dimension; sg = stop-gradient; beta_c the commitment cost,
0.25 in the paper). The gradient of the reconstruction term is copied straight through the
quantizer to the encoder: the decoder sees z_e + sg(z_q - z_e), equal to z_q in value with
the Jacobian of the identity with respect to z_e.

EMA codebook (the paper's App. A.1, ``ema=True``): the codebook loss is dropped and the codes
follow exponential moving averages of the encoder outputs assigned to them,

    N_k <- g N_k + (1 - g) n_k,    m_k <- g m_k + (1 - g) sum_{i: k_i = k} z_e,i,
    e_k = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j   (Laplace smoothing)

with n_k the number of grid vectors of the batch assigned to code k. The statistics N
(``ema_count``, K) and m (``ema_sum``, K x D) live in the parameter tree, so checkpoints, data
parallelism and the scan epoch carry them unchanged; the codebook is derived from them. They are
updated through the gradient: the objective adds 0.5 * ||theta - sg(theta_target)||^2 for both
statistics (the rest of the loss does not depend on them: the codebook enters only through
stop-gradients), whose gradient is theta - theta_target, and ``ema_optimizer`` applies plain
SGD with learning rate 1 to them, so theta_new = theta_target exactly, while the other
parameters get the usual optimizer (e.g. Adam). Train an EMA model with ``ema_optimizer(tx)``:
with plain Adam on every leaf the statistics would not follow the moving average. Both start
with N_k = 1 and m_k a random init, so the codebook starts at m.

Metrics: ``perplexity`` = exp(-sum_k p_k log p_k) of the batch's code frequencies p_k (K when
every code is used equally, 1 when one code takes all), ``usage`` = the fraction of codes used
at least once in the batch (evaluation averages both over batches). ``kl`` is the constant
h * w * log K: with a uniform prior over codes and a one-hot posterior, KL(q || p) = log K per
grid position (the paper, Sec. 3.1), so ``recon + kl`` bounds -log p(x) under the uniform prior.

The VQ-VAE alone has no learned prior: ``sample`` decodes uniformly random codes, and is
labelled so. ``jaxvae.models.code_prior`` fits an autoregressive prior to the codes afterwards
(the paper's second stage) and joins it to the VQ-VAE (``code_prior.with_prior``), whose
``sample`` then draws the codes from it and whose bound on -log p(x) uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvae.models import conv
from jaxvae.models import interface
from jaxvae.models import precision
from jaxvae.objectives import bounds as objectives

SAMPLE_TITLE = "Decoded uniformly random codes (VQ-VAE: no learned prior)"


def _codebook_init(key, shape, dtype=jnp.float32):
    """U(-sqrt(3 / D), sqrt(3 / D)): codes of unit expected squared norm."""
    bound = math.sqrt(3.0 / shape[-1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def nearest_codes(z_NxD: jax.Array, codebook_KxD: jax.Array) -> jax.Array:
    """argmin_k ||z_n - e_k||^2 for each row, via ||z||^2 - 2 z.e + ||e||^2: ``codes_N``."""
    dist_NxK = (jnp.sum(jnp.square(z_NxD), -1, keepdims=True) - 2.0 * z_NxD @ codebook_KxD.T
                + jnp.sum(jnp.square(codebook_KxD), -1)[None, :])
    return jnp.argmin(dist_NxK, axis=-1)


def straight_through(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
    """z_e + sg(z_q - z_e): the value of z_q, the gradient of the identity in z_e."""
    return z_e + jax.lax.stop_gradient(z_q - z_e)


def code_statistics(codes: jax.Array, num_codes: int) -> tuple[jax.Array, jax.Array]:
    """(perplexity, usage) of a batch of codes: exp(entropy of the code frequencies) and the
    fraction of the ``num_codes`` codes that occur at least once."""
    counts_K = jnp.bincount(codes.reshape(-1), length=num_codes).astype(jnp.float32)
    probs_K = counts_K / jnp.sum(counts_K)
    entropy = -jnp.sum(jnp.where(probs_K > 0, probs_K * jnp.log(jnp.where(probs_K > 0, probs_K,
                                                                            1.0)), 0.0))
    return jnp.exp(entropy), jnp.mean((counts_K > 0).astype(jnp.float32))


def smoothed_codebook(count_K: jax.Array, sum_KxD: jax.Array, eps: float = 1e-5) -> jax.Array:
    """e_k = m_k / N~_k with the Laplace-smoothed counts N~ (see the module docstring)."""
    total = jnp.sum(count_K)
    smoothed_K = (count_K + eps) / (total + count_K.shape[0] * eps) * total
    return sum_KxD / smoothed_K[:, None]


class EMATargets(NamedTuple):
    count: jax.Array  # (K,): g N + (1 - g) n
    sum: jax.Array  # (K, D): g m + (1 - g) sum of the assigned z_e


def ema_targets(count_K: jax.Array, sum_KxD: jax.Array, z_NxD: jax.Array, codes_N: jax.Array,
                decay: float) -> EMATargets:
    """The moving averages after one batch of encoder outputs z_NxD assigned to codes_N."""
    onehot_NxK = jax.nn.one_hot(codes_N, count_K.shape[0], dtype=z_NxD.dtype)
    return EMATargets(decay * count_K + (1.0 - decay) * jnp.sum(onehot_NxK, axis=0),
                      decay * sum_KxD + (1.0 - decay) * onehot_NxK.T @ z_NxD)


class VQVAE(interface.LatentVariableModel):
    """Conv encoder -> 1x1 conv to D -> nearest code -> 3x3 conv + ReLU -> conv decoder.

    Attributes:
      channels: conv widths (stride 2 each): the grid is (H / 2**n, W / 2**n).
      num_codes: K, the codebook size.
      code_dim: D, the size of a code vector.
      data_shape: the shape of one example, image-shaped or flat (see ``conv.image_shape_for``).
      ema: keep the codebook as moving averages (``ema_count``, ``ema_sum``) instead of a
        learned ``codebook`` parameter.
      likelihood: p(x | z_q), a one-output name from ``jaxvae.likelihoods.LIKELIHOODS``.
      dtype: the convolutions' compute dtype (``jaxvae.models.precision``); the encoder's
        outputs, the codebook and the nearest-code distances stay float32.
    """

    channels: Sequence[int] = (32, 64)
    num_codes: int = 64
    code_dim: int = 16
    data_shape: tuple[int, ...] = (784,)
    ema: bool = False
    likelihood: str = "bernoulli"
    dtype: Any = None

    _NO_PRIOR = ("the VQ-VAE has no learned prior over its codes, so {} is not defined; fit "
                 "one to its codes (python -m experiments.vq_prior RUN_DIR, then "
                 "experiments.evaluate RUN_DIR --prior PRIOR_DIR; in code "
                 "jaxvae.models.code_prior.with_prior) or use the ELBO under the uniform code "
                 "prior (jaxvae.elbo)")
    undefined = {
        "posterior": "the VQ-VAE has a discrete latent grid, not a Gaussian posterior q(z | x)",
        "likelihood_params": "the VQ-VAE decodes code grids (B, h, w, D), not latent vectors",
        "log_prior": _NO_PRIOR.format("log p(z)"),
        "log_weights": _NO_PRIOR.format("the importance-sampled log-likelihood"),
    }

    @property
    def analytic_kl_per_dim(self) -> bool:
        return False

    # models.sample / models.reconstruct dispatch on these (see jaxvae.models.mlp).
    sample_title = SAMPLE_TITLE

    def setup(self):
        self.image_shape = conv.image_shape_for(self.data_shape)
        factor = 2 ** len(self.channels)
        self.grid_shape = (self.image_shape[0] // factor, self.image_shape[1] // factor)
        kwargs = precision.conv_kwargs(self.dtype)
        self.conv_encoder = conv.ConvEncoder(tuple(self.channels), self.dtype)
        self.pre_quantize = nn.Conv(self.code_dim, (1, 1), name="pre_quantize", **kwargs)
        self.post_quantize = nn.Conv(self.channels[-1], (3, 3), padding="SAME",
                                     name="post_quantize", **kwargs)
        self.conv_decoder = conv.ConvDecoder(tuple(reversed(self.channels)), self.image_shape[2],
                                             self.dtype)
        if self.ema:
            self.ema_count = self.param("ema_count", nn.initializers.ones, (self.num_codes,))
            self.ema_sum = self.param("ema_sum", _codebook_init, (self.num_codes, self.code_dim))
        else:
            self.codebook_param = self.param("codebook", _codebook_init,
                                             (self.num_codes, self.code_dim))

    def codebook(self) -> jax.Array:
        """The (K, D) codes; with EMA derived from the statistics and without a gradient."""
        if self.ema:
            return jax.lax.stop_gradient(smoothed_codebook(self.ema_count, self.ema_sum))
        return self.codebook_param

    def encode(self, x: jax.Array) -> jax.Array:
        """z_e: ``(B, h, w, D)``."""
        x_BxHxWxC = x.reshape((x.shape[0],) + self.image_shape)
        return self.pre_quantize(self.conv_encoder(x_BxHxWxC))

    def quantize(self, z_e: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(z_q, codes): the nearest codes ``(B, h, w)`` and their vectors ``(B, h, w, D)``."""
        codebook_KxD = self.codebook()
        codes = nearest_codes(z_e.reshape(-1, self.code_dim), codebook_KxD).reshape(
            z_e.shape[:-1])
        return codebook_KxD[codes], codes

    def decode(self, z_q: jax.Array) -> jax.Array:
        """Decoder outputs ``(B, *data_shape)`` from a (quantized) grid ``(B, h, w, D)``."""
        out = self.conv_decoder(nn.relu(self.post_quantize(z_q)))
        return out.reshape((z_q.shape[0],) + tuple(self.data_shape))

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """Decoder outputs from integer codes ``(B, h, w)``."""
        return self.decode(self.codebook()[codes])

    def sample_outputs(self, key: jax.Array, n: int) -> jax.Array:
        """Decodes n grids of independent, uniformly random codes (no learned prior; see
        ``code_prior.with_prior`` for sampling from one)."""
        codes = jax.random.randint(key, (n,) + self.grid_shape, 0, self.num_codes)
        return self.decode_codes(codes)

    def reconstruct_outputs(self, x: jax.Array, key: jax.Array | None = None,
                            y: jax.Array | None = None) -> jax.Array:
        """decode(quantize(encode(x))): deterministic, ``key`` is not used."""
        del key, y
        z_q, _ = self.quantize(self.encode(x))
        return self.decode(z_q)

    def elbo_terms(self, x: jax.Array, y: jax.Array | None, key: jax.Array
                   ) -> interface.ElboTerms:
        """recon = -log p(x | z_q) and kl = h * w * log K: with a uniform prior over the codes and
        a one-hot posterior, KL(q || p) = log K per grid position (deterministic; no key)."""
        del y, key
        z_q, codes = self.quantize(self.encode(x))
        recon_B = objectives.reconstruction_nll(self.likelihood, self.decode(z_q), x)
        grid_size = int(np.prod(codes.shape[1:]))
        kl_B = jnp.full(recon_B.shape, grid_size * math.log(self.num_codes), recon_B.dtype)
        return interface.ElboTerms(recon_B, kl_B, None, {})

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.reconstruct_outputs(x)


class VQTerms(NamedTuple):
    out: jax.Array  # decoder outputs (B, *data_shape)
    z_e: jax.Array  # (B, h, w, D)
    z_q: jax.Array  # (B, h, w, D), the codes' vectors (no straight-through)
    codes: jax.Array  # (B, h, w) int


def vq_terms(model: VQVAE, params: Any, x: jax.Array) -> VQTerms:
    """Encodes, quantizes and decodes with the straight-through estimator."""

    def forward(module, x):
        z_e = module.encode(x)
        z_q, codes = module.quantize(z_e)
        return VQTerms(module.decode(straight_through(z_e, z_q)), z_e, z_q, codes)

    return nn.apply(forward, model)({"params": params}, x)


def _sum_per_example(a: jax.Array) -> jax.Array:
    return jnp.sum(a.reshape(a.shape[0], -1), axis=-1)


def vqvae_loss(model: VQVAE, params: Any, x: jax.Array, likelihood: str = "bernoulli",
               commitment_cost: float = 0.25, decay: float = 0.99
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The VQ-VAE objective (module docstring), averaged over the batch, and its metrics.

    Args:
      model: a ``VQVAE``.
      params: its parameters.
      x: a batch ``(B, *data_shape)``.
      likelihood: p(x | z_q), a name from ``jaxvae.objectives.bounds.LIKELIHOODS``.
      commitment_cost: beta_c.
      decay: g, the EMA decay (used only by an ``ema`` model).

    Returns:
      ``(value, metrics)``. ``value`` is what to differentiate: the objective, plus for an EMA
      model 0.5 * ||theta - sg(theta_target)||^2 of the statistics, whose gradient moves them
      to their targets under ``ema_optimizer``. metrics: ``loss`` (the objective), ``recon``, ``kl``,
      ``codebook_loss``, ``commitment_loss``, ``perplexity``, ``usage``.
    """
    terms = vq_terms(model, params, x)
    recon_B = objectives.reconstruction_nll(likelihood, terms.out, x)
    commitment_B = _sum_per_example(jnp.square(terms.z_e - jax.lax.stop_gradient(terms.z_q)))
    if model.ema:
        codebook_B = jnp.zeros_like(commitment_B)
    else:
        codebook_B = _sum_per_example(jnp.square(jax.lax.stop_gradient(terms.z_e) - terms.z_q))
    loss_B = recon_B + codebook_B + commitment_cost * commitment_B
    objective = jnp.mean(loss_B)
    perplexity, usage = code_statistics(terms.codes, model.num_codes)
    grid_size = int(np.prod(terms.codes.shape[1:]))
    metrics = {"loss": objective, "recon": jnp.mean(recon_B),
               "kl": jnp.full((), grid_size * math.log(model.num_codes), objective.dtype),
               "codebook_loss": jnp.mean(codebook_B), "commitment_loss": jnp.mean(commitment_B),
               "perplexity": perplexity, "usage": usage}
    value = objective
    if model.ema:
        z_NxD = jax.lax.stop_gradient(terms.z_e).reshape(-1, model.code_dim)
        count, total = params["ema_count"], params["ema_sum"]
        target = ema_targets(count, total, z_NxD, terms.codes.reshape(-1), decay)
        value = value + 0.5 * (jnp.sum(jnp.square(count - jax.lax.stop_gradient(target.count)))
                               + jnp.sum(jnp.square(total - jax.lax.stop_gradient(target.sum))))
    return value, metrics


EMA_LEAVES = ("ema_count", "ema_sum")


def _labels(params: Any) -> Any:
    def label(path, _):
        name = getattr(path[-1], "key", None)
        return "ema" if name in EMA_LEAVES else "params"

    return jax.tree_util.tree_map_with_path(label, params)


def ema_optimizer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` for the learned parameters, SGD with learning rate 1 for the EMA statistics.

    With ``vqvae_loss``'s gradient theta - theta_target on ``ema_count`` / ``ema_sum``, one
    update sets them to their moving-average targets exactly (module docstring).
    """
    return optax.multi_transform({"params": tx, "ema": optax.sgd(1.0)}, _labels)


def vqvae(channels: Sequence[int] = (32, 64), num_codes: int = 64, code_dim: int = 16,
          data_shape: Sequence[int] = (784,), ema: bool = False, likelihood: str = "bernoulli",
          precision_name: str = "float32") -> VQVAE:
    """A VQ-VAE for ``data_shape`` examples, validated before any work.

    Raises:
      ValueError: non-positive sizes, fewer than 2 codes, or an image shape the conv stack
        cannot take.
    """
    channels = tuple(channels)
    conv._check_widths("conv channels", channels)
    for name, value, low in (("num_codes", num_codes, 2), ("code_dim", code_dim, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    data_shape = tuple(int(d) for d in data_shape)
    conv.check_conv_shape(conv.image_shape_for(data_shape), len(channels))
    conv.check_one_output(likelihood, "the VQ-VAE")
    return VQVAE(channels, int(num_codes), int(code_dim), data_shape, bool(ema), likelihood,
                 precision.compute_dtype(precision_name))
