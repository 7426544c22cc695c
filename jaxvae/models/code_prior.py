"""An autoregressive prior over a VQ-VAE's code grid, and the VQ-VAE that samples from it.

A trained VQ-VAE (``jaxvae.models.vq``) maps an image to an h x w grid of code indices
c in {0, .., K-1}. Its own prior over the codes is uniform, and decoding uniformly random grids
does not give images of the data. Here the codes of the training set train a second model,

    p(c) = prod_{i=1..L} p(c_i | c_1, .., c_{i-1}),    L = h * w, raster order (row by row),

after which samples are drawn code by code (ancestral sampling, ``sample_codes``) and decoded
(van den Oord et al. 2017, Sec. 3.2 and 4: a PixelCNN fitted to the codes after the VQ-VAE).

**Why a small causal transformer, not a PixelCNN.** Both give p(c_i | c_<i) for all i in one
forward pass under a mask. The plain PixelCNN's masked 3x3 convolutions (type A in the first
layer, type B after) have a blind spot: the codes above and to the right of i that lie outside
the growing receptive cone never reach position i, however deep the stack (van den Oord et al.
2016, "Conditional Image Generation with PixelCNN Decoders", Sec. 2.2); the gated PixelCNN fixes
it with two coupled stacks (vertical and horizontal) and their shifts. The code grids here are
small (7 x 7 = 49 codes for 28 x 28 images), so attention over all earlier positions costs
little, and one causal mask (a lower-triangular L x L matrix) gives every position every earlier
code in every layer: no blind spot, one mask instead of two kinds of masked kernel and two
stacks. On the CPU the model's matrix products also train faster than convolution weight
gradients, which XLA computes slowly inside the scanned training chunk. The cost is that the
transformer learns the grid's 2-D neighbourhood from its learned position embeddings instead of
having it built in; with 49 positions and thousands of grids that is cheap to learn.

The model reads the codes shifted by one: the input at position i is the embedding of c_{i-1}
(a learned start vector at i = 1) plus a learned embedding of position i, so the logits at i
depend on c_<i only (tested by perturbing later codes and by the Jacobian). Codes enter as
one-hot vectors times the embedding matrix (``logits_from_onehot``), which makes that Jacobian
with respect to the codes well defined.

NLL and bits per code: ``code_nll`` is -log p(c) = -sum_i log p(c_i | c_<i) in nats per grid;
bits per code = nll / (L ln 2) (``bits_per_code``); the uniform prior has log2 K.

``VQVAEWithPrior`` joins a VQ-VAE and a trained prior into one model of the model interface:
``jaxvae.sample`` draws codes from the prior and decodes them, and the bound on -log p(x) uses
the learned prior (``elbo_terms``):

    -log p(x) <= -log p(x | z_q(x)) - log p(c(x)),

the reconstruction NLL at the quantized grid of x plus the codes' NLL under the prior. It is the
negative ELBO with the VQ-VAE's deterministic one-hot posterior q(c | x) = [c = c(x)], whose
entropy is 0, so KL(q || p) = -log p(c(x)). Importance sampling gains nothing with a point-mass
posterior: every sample has the same weight, and the K-sample bound equals this one.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvae import validation
from jaxvae.models import interface
from jaxvae.models import vq
from jaxvae.objectives import bounds as objectives

SAMPLE_TITLE = "Decoded codes drawn from the learned prior (VQ-VAE + autoregressive prior)"


class CausalBlock(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a GELU MLP, each residual."""

    num_heads: int
    mlp_dim: int
    dropout: float

    @nn.compact
    def __call__(self, h_BxLxE: jax.Array, mask_1x1xLxL: jax.Array, deterministic: bool
                 ) -> jax.Array:
        embed_dim = h_BxLxE.shape[-1]
        y = nn.LayerNorm(name="attention_norm")(h_BxLxE)
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attention")(
            y, y, mask=mask_1x1xLxL)
        h_BxLxE = h_BxLxE + nn.Dropout(self.dropout)(y, deterministic=deterministic)
        y = nn.LayerNorm(name="mlp_norm")(h_BxLxE)
        y = nn.Dense(embed_dim, name="mlp_out")(nn.gelu(nn.Dense(self.mlp_dim, name="mlp_in")(y)))
        return h_BxLxE + nn.Dropout(self.dropout)(y, deterministic=deterministic)


class CodePrior(nn.Module):
    """p(c) over an h x w grid of K codes: a causal transformer over the raster order.

    Attributes:
      num_codes: K.
      grid_shape: (h, w).
      embed_dim: E, the width of the code and position embeddings and of every block.
      num_layers: the number of transformer blocks.
      num_heads: attention heads per block (divides ``embed_dim``).
      mlp_dim: the hidden width of each block's MLP.
      dropout: dropout rate after the attention and the MLP (training only).
    """

    num_codes: int = 64
    grid_shape: tuple[int, int] = (7, 7)
    embed_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 256
    dropout: float = 0.1

    @property
    def num_positions(self) -> int:
        """L = h * w."""
        return int(self.grid_shape[0] * self.grid_shape[1])

    def setup(self):
        init = nn.initializers.normal(0.02)
        self.code_embedding = self.param("code_embedding", init, (self.num_codes, self.embed_dim))
        self.start = self.param("start", init, (self.embed_dim,))
        self.position_embedding = self.param("position_embedding", init,
                                             (self.num_positions, self.embed_dim))
        self.blocks = [CausalBlock(self.num_heads, self.mlp_dim, self.dropout, name=f"block_{i}")
                       for i in range(self.num_layers)]
        self.out_norm = nn.LayerNorm()
        self.out = nn.Dense(self.num_codes)
        self.drop = nn.Dropout(self.dropout)

    def logits_from_onehot(self, onehot_BxLxK: jax.Array, deterministic: bool = True
                           ) -> jax.Array:
        """Logits of p(c_i | c_<i) for every position: ``(B, L, K)``; row i reads c_<i only."""
        batch, length = onehot_BxLxK.shape[:2]
        codes_BxLxE = onehot_BxLxK @ self.code_embedding
        # Shift right by one: position i sees c_{i-1}, position 0 the start vector.
        start_Bx1xE = jnp.broadcast_to(self.start[None, None], (batch, 1, self.embed_dim))
        h_BxLxE = jnp.concatenate([start_Bx1xE, codes_BxLxE[:, :-1]], axis=1)
        h_BxLxE = h_BxLxE + self.position_embedding[None, :length]
        h_BxLxE = self.drop(h_BxLxE, deterministic=deterministic)
        mask_1x1xLxL = jnp.tril(jnp.ones((length, length), bool))[None, None]
        for block in self.blocks:
            h_BxLxE = block(h_BxLxE, mask_1x1xLxL, deterministic)
        return self.out(self.out_norm(h_BxLxE))

    def __call__(self, codes_BxHxW: jax.Array, deterministic: bool = True) -> jax.Array:
        """Logits of p(c_ij | the codes before (i, j) in raster order): ``(B, h, w, K)``."""
        batch = codes_BxHxW.shape[0]
        onehot_BxLxK = jax.nn.one_hot(codes_BxHxW.reshape(batch, -1), self.num_codes)
        logits_BxLxK = self.logits_from_onehot(onehot_BxLxK, deterministic)
        return logits_BxLxK.reshape(codes_BxHxW.shape + (self.num_codes,))


def code_prior(num_codes: int, grid_shape, embed_dim: int = 64, num_layers: int = 2,
               num_heads: int = 4, mlp_dim: int = 256, dropout: float = 0.1) -> CodePrior:
    """A ``CodePrior``, validated before any work.

    Raises:
      ValueError: sizes below 1 (K below 2), a grid that is not two positive sizes, heads that
        do not divide ``embed_dim``, or a dropout rate outside [0, 1).
    """
    grid_shape = tuple(int(s) for s in grid_shape)
    if len(grid_shape) != 2 or min(grid_shape) < 1:
        raise ValueError(f"grid_shape must be two sizes >= 1 (h, w), got {grid_shape}")
    for name, value, low in (("num_codes", num_codes, 2), ("embed_dim", embed_dim, 1),
                             ("num_layers", num_layers, 1), ("num_heads", num_heads, 1),
                             ("mlp_dim", mlp_dim, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if embed_dim % num_heads:
        raise ValueError(f"num_heads ({num_heads}) must divide embed_dim ({embed_dim})")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return CodePrior(int(num_codes), grid_shape, int(embed_dim), int(num_layers), int(num_heads),
                     int(mlp_dim), float(dropout))


def for_vqvae(model: vq.VQVAE, **sizes) -> CodePrior:
    """A ``code_prior`` over the code grid of the VQ-VAE ``model`` (its K and its h x w)."""
    if not isinstance(model, vq.VQVAE):
        raise TypeError(f"a code prior needs a VQVAE, got {type(model).__name__}")
    return code_prior(model.num_codes, grid_shape_of(model), **sizes)


def grid_shape_of(model: vq.VQVAE) -> tuple[int, int]:
    """(h, w): the VQ-VAE's code grid, (H / 2**n, W / 2**n) for n stride-2 convolutions."""
    from jaxvae.models import conv

    height, width = conv.image_shape_for(model.data_shape)[:2]
    factor = 2 ** len(model.channels)
    return height // factor, width // factor


def init(prior: CodePrior, key: jax.Array) -> Any:
    """The prior's parameters from ``key``."""
    validation.check_key(key)
    return _init(prior, key)


@functools.partial(jax.jit, static_argnums=0)
def _init(prior: CodePrior, key: jax.Array) -> Any:
    return prior.init(key, jnp.zeros((1,) + tuple(prior.grid_shape), jnp.int32))["params"]


def logits(prior: CodePrior, params: Any, codes_BxHxW: jax.Array, *,
           dropout_key: jax.Array | None = None) -> jax.Array:
    """The logits ``(B, h, w, K)``; with ``dropout_key`` in training mode (dropout on)."""
    if dropout_key is None:
        return prior.apply({"params": params}, codes_BxHxW)
    return prior.apply({"params": params}, codes_BxHxW, False, rngs={"dropout": dropout_key})


@functools.partial(jax.jit, static_argnums=0)
def code_nll(prior: CodePrior, params: Any, codes_BxHxW: jax.Array, *,
             dropout_key: jax.Array | None = None) -> jax.Array:
    """-log p(c) = -sum_i log softmax(logits_i)[c_i], nats per grid: ``(B,)`` (compiled once
    per prior and shape)."""
    logits_BxHxWxK = logits(prior, params, codes_BxHxW, dropout_key=dropout_key)
    nll_BxHxW = optax.softmax_cross_entropy_with_integer_labels(logits_BxHxWxK, codes_BxHxW)
    return jnp.sum(nll_BxHxW.reshape(nll_BxHxW.shape[0], -1), axis=-1)


def bits_per_code(nll_nats: jax.Array | float, num_positions: int) -> jax.Array | float:
    """Nats per grid of ``num_positions`` codes -> bits per code: nll / (L ln 2)."""
    return nll_nats / (num_positions * math.log(2.0))


def sample_codes(prior: CodePrior, params: Any, key: jax.Array, n: int,
                 temperature: float = 1.0) -> jax.Array:
    """n code grids ``(n, h, w)`` by ancestral sampling in raster order.

    c_i ~ Categorical(softmax(logits_i(c_<i) / temperature)), drawn with ``fold_in(key, i)``;
    the positions from i on are still zeros when position i is drawn, which its logits do not
    read. One forward pass per position (L passes in all).
    """
    validation.check_key(key)
    n = validation.check_count(n, "n (the number of samples)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _sample_codes_jit(prior, params, key, n, float(temperature))


def _sample_codes(prior: CodePrior, params: Any, key: jax.Array, n: int, temperature: float
                  ) -> jax.Array:
    length = prior.num_positions

    def draw(i, codes_NxL):
        logits_NxLxK = prior.apply({"params": params}, codes_NxL.reshape(
            (n,) + tuple(prior.grid_shape))).reshape(n, length, prior.num_codes)
        logits_NxK = jax.lax.dynamic_index_in_dim(logits_NxLxK, i, axis=1, keepdims=False)
        drawn_N = jax.random.categorical(jax.random.fold_in(key, i), logits_NxK / temperature)
        return jax.lax.dynamic_update_index_in_dim(codes_NxL, drawn_N.astype(jnp.int32), i,
                                                   axis=1)

    codes_NxL = jax.lax.fori_loop(0, length, draw, jnp.zeros((n, length), jnp.int32))
    return codes_NxL.reshape((n,) + tuple(prior.grid_shape))


# One compiled program per prior, sample count and temperature.
_sample_codes_jit = jax.jit(_sample_codes, static_argnums=(0, 3, 4))


def encode_codes(model: vq.VQVAE, params: Any, x: jax.Array) -> jax.Array:
    """The VQ-VAE's nearest codes of the examples x: ``(B, h, w)`` int32."""
    return vq.vq_terms(model, params, x).codes.astype(jnp.int32)


# ------------------------------------------------------------------------- VQ-VAE + prior


class VQVAEWithPrior(interface.LatentVariableModel):
    """A VQ-VAE and an autoregressive prior over its codes, as one model of the interface.

    Parameters: ``{"vqvae": the VQ-VAE's, "prior": the prior's}`` (``join_params``).
    ``sample_outputs`` decodes codes drawn from the prior; ``elbo_terms`` gives recon =
    -log p(x | z_q) and kl = -log p(c(x)) (module docstring); ``log_weight_terms`` the same
    for each of the K (identical) samples, so ``jaxvae.log_likelihood`` returns that bound.
    """

    vqvae: vq.VQVAE
    prior: CodePrior

    undefined = {
        "posterior": vq.VQVAE.undefined["posterior"],
        "likelihood_params": vq.VQVAE.undefined["likelihood_params"],
        "log_prior": "the prior of a VQ-VAE is over its code grids: use "
                     "jaxvae.models.code_prior.code_nll for -log p(codes)",
    }
    sample_title = SAMPLE_TITLE

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.vqvae.data_shape)

    @property
    def likelihood(self) -> str:
        return self.vqvae.likelihood

    @property
    def analytic_kl_per_dim(self) -> bool:
        return False

    def _terms(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(recon_B, codes' nll_B) at the nearest codes of x."""
        z_q, codes = self.vqvae.quantize(self.vqvae.encode(x))
        recon_B = objectives.reconstruction_nll(self.likelihood, self.vqvae.decode(z_q), x)
        logits_BxHxWxK = self.prior(codes)
        nll_BxHxW = optax.softmax_cross_entropy_with_integer_labels(logits_BxHxWxK, codes)
        return recon_B, jnp.sum(nll_BxHxW.reshape(nll_BxHxW.shape[0], -1), axis=-1)

    def elbo_terms(self, x: jax.Array, y: jax.Array | None, key: jax.Array
                   ) -> interface.ElboTerms:
        """recon = -log p(x | z_q(x)), kl = -log p(c(x)) under the prior (deterministic)."""
        del y, key
        recon_B, nll_B = self._terms(x)
        return interface.ElboTerms(recon_B, nll_B, None, {})

    def log_weight_terms(self, x: jax.Array, y: jax.Array | None, key: jax.Array,
                         num_samples: int) -> interface.LogWeightTerms:
        """log p(x | z_q), log p(c), log q(c | x) = 0, the same for each of the K samples."""
        del y, key
        recon_B, nll_B = self._terms(x)
        shape = (num_samples,) + recon_B.shape
        return interface.LogWeightTerms(jnp.broadcast_to(-recon_B[None], shape),
                                        jnp.broadcast_to(-nll_B[None], shape),
                                        jnp.zeros(shape, recon_B.dtype))

    def sample_outputs(self, key: jax.Array, n: int) -> jax.Array:
        """Decodes n code grids drawn from the prior (``sample_codes``, temperature 1)."""
        prior = self.prior.clone(parent=None, name=None)
        codes = _sample_codes(prior, self.prior.variables["params"], key, n, 1.0)
        return self.vqvae.decode_codes(codes)

    def reconstruct_outputs(self, x: jax.Array, key: jax.Array | None = None,
                            y: jax.Array | None = None) -> jax.Array:
        """The VQ-VAE's reconstruction (the prior plays no part)."""
        return self.vqvae.reconstruct_outputs(x, key, y)

    def __call__(self, x: jax.Array) -> jax.Array:
        recon_B, nll_B = self._terms(x)  # touches both networks, so ``init`` creates both
        return recon_B + nll_B


def with_prior(model: vq.VQVAE, prior: CodePrior) -> VQVAEWithPrior:
    """The VQ-VAE ``model`` sampling from and scored under ``prior``.

    Raises:
      TypeError / ValueError: not a VQ-VAE, or a prior over another grid or codebook size.
    """
    if not isinstance(model, vq.VQVAE):
        raise TypeError(f"a code prior goes with a VQVAE, got {type(model).__name__}")
    if not isinstance(prior, CodePrior):
        raise TypeError(f"prior must be a CodePrior, got {type(prior).__name__}")
    grid = grid_shape_of(model)
    if prior.num_codes != model.num_codes or tuple(prior.grid_shape) != grid:
        raise ValueError(f"the prior is over {tuple(prior.grid_shape)} grids of "
                         f"{prior.num_codes} codes, the VQ-VAE has {grid} grids of "
                         f"{model.num_codes} codes: train the prior on this VQ-VAE's codes")
    return VQVAEWithPrior(model, prior)


def join_params(vqvae_params: Any, prior_params: Any) -> dict:
    """The parameters of ``with_prior(model, prior)``."""
    return {"vqvae": vqvae_params, "prior": prior_params}
