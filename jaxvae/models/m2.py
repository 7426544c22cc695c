"""The semi-supervised VAE M2 (Kingma, Rezende, Mohamed & Welling 2014).

The label is a latent variable that is observed for some examples:

    p(x, y, z) = p(y) p(z) p(x | y, z),  p(y) = Cat(1/C),  p(z) = N(0, I),
    p(x | y, z) Bernoulli (pixels) or Gaussian with a learned variance (features: M1+M2)
    q(y, z | x) = q(y | x) q(z | x, y),  q(y | x) = Cat(pi(x)),  q(z | x, y) Gaussian

A batch is ``{"x": x_BxD, "y": y_B}`` with ``y = -1`` where an example has no label (the model
interface's convention; a batch without ``"y"`` is all unlabelled). Per example the negative
ELBO (``elbo_terms``, Kingma et al. 2014, Eqs. 6-8) is

    labelled (x, y):   -L(x, y) = E_q(z|x,y)[-log p(x | y, z)] + KL(q(z | x, y) || p(z)) - log p(y)
    unlabelled x:      -U(x)    = sum_y q(y | x) (-L(x, y)) - H(q(y | x))

a bound on -log p(x, y) and on -log p(x) respectively. Both split into ``recon`` + ``kl`` with
``kl`` = KL(q(y, z | x) || p(y) p(z)): for an unlabelled example
sum_y q(y|x) KL(q(z|x,y) || p(z)) + KL(q(y|x) || Cat(1/C)); for a labelled one q(y | x) is the
point mass at the observed y, whose KL to Cat(1/C) is log C = -log p(y).

The training objective (``jaxvae.objectives.losses.make_m2_loss``) adds alpha times the
classification loss -log q(y | x) of the labelled examples (Eq. 9).

Networks: MLPs with softplus hidden layers for q(y | x) (``classifier``), q(z | x, y)
(``encoder``, input [x, onehot(y)]) and p(x | y, z) (``decoder``, input [z, onehot(y)]). One
reparameterized z per (x, y) pair: an unlabelled example costs C encoder and decoder passes
(the encoder's product with x is computed once for the C labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxvae import distributions, likelihoods, validation
from jaxvae.models import interface
from jaxvae.models import precision

Params = Any


class _MLP(nn.Module):
    hidden: Sequence[int]
    out: int
    dtype: Any = None  # the products' compute dtype (jaxvae.models.precision)

    @nn.compact
    def __call__(self, h):
        return _softplus_layers(h, tuple(self.hidden), self.out, self.dtype)


def _softplus_layers(h, widths: Sequence[int], out: int, dtype: Any, first: int = 0):
    """Dense layers ``hidden_{first}``, ``hidden_{first + 1}`` ... of ``widths`` with softplus,
    then the linear ``out``; called inside a compact module, which owns them."""
    kwargs = precision.dense_kwargs(dtype)
    for i, width in enumerate(widths, start=first):
        h = distributions.softplus(nn.Dense(width, name=f"hidden_{i}", **kwargs)(h))
    return nn.Dense(out, name="out", **kwargs)(h)


class _ConcatDense(nn.Module):
    """``nn.Dense`` on the concatenation [a, c] of rows of ``a`` tiled T times and ``c``.

    The one kernel ``(A + C, H)`` and bias (``nn.Dense``'s names, shapes and initializers) act
    as a @ K[:A] + c @ K[A:] + bias, so the product with ``a_BxA`` is computed once for all T
    tiles instead of T times: ``c_TBxC`` row t * B + b pairs with ``a_BxA`` row b (the order of
    ``jnp.tile(a_BxA, (T, 1))``). Returns ``(T * B, H)``.
    """
    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, a_BxA: jax.Array, c_TBxC: jax.Array) -> jax.Array:
        width_a = a_BxA.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (width_a + c_TBxC.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        if precision.precision_name(self.dtype) == "float32":
            product = jnp.matmul
        else:
            product = precision.matmul
        a_BxH = product(a_BxA, kernel[:width_a])
        c_TBxH = product(c_TBxC.astype(a_BxA.dtype), kernel[width_a:]) + bias[None]
        tiles = c_TBxC.shape[0] // a_BxA.shape[0]
        h_TxBxH = c_TBxH.reshape(tiles, a_BxA.shape[0], -1) + a_BxH[None]
        return h_TxBxH.reshape(c_TBxC.shape[0], -1)


class _ConditionalMLP(nn.Module):
    """``_MLP`` on [a, c] (the input and a label), its first layer a ``_ConcatDense``:
    ``(a_BxA, c_TBxC) -> (T * B, out)``, the same function as ``_MLP`` on
    ``[jnp.tile(a_BxA, (T, 1)), c_TBxC]`` with the same parameters."""
    hidden: Sequence[int]
    out: int
    dtype: Any = None

    @nn.compact
    def __call__(self, a_BxA: jax.Array, c_TBxC: jax.Array) -> jax.Array:
        hidden = tuple(self.hidden)
        if not hidden:
            return _ConcatDense(self.out, self.dtype, name="out")(a_BxA, c_TBxC)
        h = distributions.softplus(_ConcatDense(hidden[0], self.dtype, name="hidden_0")(
            a_BxA, c_TBxC))
        return _softplus_layers(h, hidden[1:], self.out, self.dtype, first=1)


class M2(interface.LatentVariableModel):
    """M2 with MLPs (softplus hidden layers, as in the paper) for q(y|x), q(z|x,y), p(x|y,z).

    The interface's methods take int labels ``y_B`` (-1: unlabelled). Where a label is missing,
    ``posterior`` and ``reconstruct_outputs`` use the classifier's most probable class.

    Attributes:
      data_shape: ``(D,)``, flat examples in [0, 1].
      num_classes: C.
      latent_dim: Z.
      hidden: hidden widths of each of the three networks.
      dtype: the products' compute dtype (``jaxvae.models.precision``).
      likelihood: p(x | y, z): ``"bernoulli"`` (pixels in [0, 1]) or ``"gaussian_learned"``
        (real features, such as the latent means of a trained VAE in M1+M2: a mean and a
        log-variance per dimension).
    """

    data_shape: tuple[int, ...] = (784,)
    num_classes: int = 10
    latent_dim: int = 50
    hidden: Sequence[int] = (500,)
    dtype: Any = None
    likelihood: str = "bernoulli"

    @property
    def analytic_kl_per_dim(self) -> bool:
        return False  # the label's KL is not a sum over latent dimensions

    @property
    def data_dim(self) -> int:
        return int(self.data_shape[0])

    def setup(self):
        hidden = tuple(self.hidden)
        self.classifier = _MLP(hidden, self.num_classes, self.dtype, name="classifier")
        self.encoder = _ConditionalMLP(hidden, 2 * self.latent_dim, self.dtype, name="encoder")
        channels = likelihoods.output_channels(self.likelihood)
        self.decoder = _ConditionalMLP(hidden, self.data_dim * channels, self.dtype,
                                       name="decoder")

    # ------------------------------------------------------------------ the networks

    def classify(self, x_BxD: jax.Array) -> jax.Array:
        """Logits of q(y | x), ``(B, C)``."""
        return self.classifier(x_BxD)

    def encode_onehot(self, x_BxD: jax.Array, y_TBxC: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z | x, y) from [x, y] with y one-hot (or any vector of C weights): ``(mean, logvar)``,
        each ``(T * B, Z)``, for T labels per example in the order of ``jnp.tile(x_BxD, (T, 1))``
        (T = 1: one label per example). The product with x is computed once for the T labels."""
        out = self.encoder(x_BxD, y_TBxC)
        return out[:, :self.latent_dim], out[:, self.latent_dim:]

    def decode_onehot(self, z_BxZ: jax.Array, y_BxC: jax.Array) -> jax.Array:
        """The parameters of p(x | y, z) from [z, y] with y one-hot: Bernoulli logits
        ``(B, D)``, or ``(B, D, 2)`` (mean, raw log-variance) for ``gaussian_learned``."""
        out = self.decoder(z_BxZ, y_BxC)
        channels = likelihoods.output_channels(self.likelihood)
        return out if channels == 1 else out.reshape(out.shape[0], self.data_dim, channels)

    def _nll(self, out: jax.Array, x_BxD: jax.Array) -> jax.Array:
        """-log p(x | y, z) per example from the decoder outputs."""
        return likelihoods.reconstruction_nll(self.likelihood, out, x_BxD)

    def _onehot(self, y_B: jax.Array) -> jax.Array:
        return jax.nn.one_hot(y_B, self.num_classes, dtype=jnp.float32)

    def resolve_labels(self, x_BxD: jax.Array, y_B: jax.Array | None) -> jax.Array:
        """The labels where given (y >= 0), else argmax q(y | x)."""
        predicted_B = jnp.argmax(self.classify(x_BxD), axis=-1).astype(jnp.int32)
        if y_B is None:
            return predicted_B
        return jnp.where(y_B >= 0, y_B, predicted_B).astype(jnp.int32)

    def __call__(self, x_BxD: jax.Array, y_B: jax.Array | None = None) -> jax.Array:
        y_BxC = self._onehot(self.resolve_labels(x_BxD, y_B))
        mean_BxZ, _ = self.encode_onehot(x_BxD, y_BxC)
        return self.decode_onehot(mean_BxZ, y_BxC)

    # ------------------------------------------------------------------ the interface

    def encode(self, x_BxD: jax.Array, y_B: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
        """q(z | x, y): ``(mean_BxZ, logvar_BxZ)`` at the labels (the predicted class where
        y = -1 or None)."""
        return self.encode_onehot(x_BxD, self._onehot(self.resolve_labels(x_BxD, y_B)))

    def decode(self, z_BxZ: jax.Array, y_B: jax.Array | None = None) -> jax.Array:
        """The parameters of p(x | y, z) (``decode_onehot``) for int labels ``y_B`` in [0, C)."""
        if y_B is None:
            raise ValueError("M2 decodes with labels: pass labels (B,) in [0, num_classes)")
        return self.decode_onehot(z_BxZ, self._onehot(y_B))

    def posterior(self, x_BxD: jax.Array, y_B: jax.Array | None = None) -> interface.Posterior:
        """q(z | x, y) at the given labels (the predicted class where y = -1)."""
        return interface.Posterior(*self.encode(x_BxD, y_B))

    def likelihood_params(self, z_BxZ: jax.Array, y_B: jax.Array | None = None) -> jax.Array:
        """The parameters of p(x | y, z) for int labels ``y_B`` in [0, C)."""
        return self.decode(z_BxZ, y_B)

    def labelled_terms(self, x_BxD: jax.Array, y_TB: jax.Array, eps_TBxZ: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
        """(recon_TB, kl_z_TB) of -L(x, y) with z = mean + std * eps: -log p(x | y, z) and
        KL(q(z | x, y) || N(0, I)) (analytic), for T labels per example in the order of
        ``jnp.tile(x_BxD, (T, 1))`` (T = 1: one label per example)."""
        y_TBxC = self._onehot(y_TB)
        mean_TBxZ, logvar_TBxZ = self.encode_onehot(x_BxD, y_TBxC)
        z_TBxZ = distributions.shift_and_scale(mean_TBxZ, logvar_TBxZ, eps_TBxZ)
        x_TBxD = jnp.tile(x_BxD, (y_TB.shape[0] // x_BxD.shape[0], 1))
        recon_TB = self._nll(self.decode_onehot(z_TBxZ, y_TBxC), x_TBxD)
        return recon_TB, distributions.gaussian_kl(mean_TBxZ, logvar_TBxZ)

    def labelled_elbo_terms(self, x_BxD: jax.Array, y_B: jax.Array, key: jax.Array
                            ) -> interface.ElboTerms:
        """-L(x, y) = recon + kl for labelled examples only (every y_B in [0, C)), one pass.

        kl = KL(q(z | x, y) || p(z)) - log p(y); eps = normal(key, (B, Z)).
        """
        eps_BxZ = jax.random.normal(key, x_BxD.shape[:1] + (self.latent_dim,), x_BxD.dtype)
        recon_B, kl_z_B = self.labelled_terms(x_BxD, y_B, eps_BxZ)
        return interface.ElboTerms(recon_B, kl_z_B + jnp.log(float(self.num_classes)), None, {})

    def elbo_terms(self, x_BxD: jax.Array, y_B: jax.Array | None, key: jax.Array
                   ) -> interface.ElboTerms:
        """-L(x, y) for labelled examples, -U(x) for unlabelled ones (y = -1), as recon + kl.

        Every class c is tried with its own noise eps_CxBxZ[c] = normal(key, (C, B, Z))[c]; an
        example weighs class c by w_bc = onehot(y_b) (labelled) or q(c | x_b) (unlabelled):

            recon_b = sum_c w_bc (-log p(x_b | c, z_bc))
            kl_b    = sum_c w_bc KL(q(z | x_b, c) || p(z)) + KL(w_b || Cat(1/C))

        (KL(onehot || Cat(1/C)) = log C.) ``extras`` holds ``log_q_y`` = log q(y_b | x_b) of the
        observed label (0 for unlabelled examples), for the classification term.
        """
        num_classes, batch = self.num_classes, x_BxD.shape[0]
        if y_B is None:
            y_B = jnp.full((batch,), -1, jnp.int32)
        eps_CxBxZ = jax.random.normal(key, (num_classes, batch, self.latent_dim), x_BxD.dtype)
        y_CB = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), batch)
        recon_CB, kl_z_CB = self.labelled_terms(x_BxD, y_CB,
                                                eps_CxBxZ.reshape(num_classes * batch, -1))
        recon_BxC = recon_CB.reshape(num_classes, batch).T
        kl_z_BxC = kl_z_CB.reshape(num_classes, batch).T
        log_q_BxC = jax.nn.log_softmax(self.classify(x_BxD), axis=-1)
        labelled_B = y_B >= 0
        onehot_BxC = self._onehot(jnp.where(labelled_B, y_B, 0))
        labelled_Bx1 = labelled_B[:, None]
        w_BxC = jnp.where(labelled_Bx1, onehot_BxC, jnp.exp(log_q_BxC))
        # KL(w || uniform) = sum_c w_c log w_c + log C, with 0 log 0 = 0.
        w_log_w_BxC = jnp.where(w_BxC > 0, w_BxC * jnp.where(labelled_Bx1, 0.0, log_q_BxC), 0.0)
        kl_y_B = jnp.sum(w_log_w_BxC, axis=-1) + jnp.log(float(num_classes))
        recon_B = jnp.sum(w_BxC * recon_BxC, axis=-1)
        kl_B = jnp.sum(w_BxC * kl_z_BxC, axis=-1) + kl_y_B
        log_q_y_B = jnp.where(labelled_B, jnp.sum(onehot_BxC * log_q_BxC, axis=-1), 0.0)
        return interface.ElboTerms(recon_B, kl_B, None, {"log_q_y": log_q_y_B})

    def log_weight_terms(self, x_BxD: jax.Array, y_B: jax.Array | None, key: jax.Array,
                         num_samples: int) -> interface.LogWeightTerms:
        """Importance weights over the pair (y, z), K draws per example.

        Unlabelled examples draw y_k ~ q(y | x), z_k ~ q(z | x, y_k):

            log w_k = log p(x | y_k, z_k) + [log p(y_k) + log p(z_k)]
                      - [log q(y_k | x) + log q(z_k | x, y_k)],

        an estimate of log p(x); labelled examples keep their y (no log q(y | x) term) and
        estimate log p(x, y). At K = 1 the mean of log w is -L(x, y) or -U(x) in expectation.
        ``log_pz`` holds log p(y) + log p(z), ``log_qz`` log q(y | x) + log q(z | x, y).
        """
        y_key, z_key = jax.random.split(key)
        batch = x_BxD.shape[0]
        if y_B is None:
            y_B = jnp.full((batch,), -1, jnp.int32)
        log_q_BxC = jax.nn.log_softmax(self.classify(x_BxD), axis=-1)
        drawn_KxB = jax.random.categorical(y_key, log_q_BxC, axis=-1,
                                           shape=(num_samples, batch)).astype(jnp.int32)
        labelled_B = y_B >= 0
        y_KxB = jnp.where(labelled_B[None], y_B[None], drawn_KxB)
        log_q_y_KxB = jnp.where(labelled_B[None],
                                0.0, jnp.take_along_axis(log_q_BxC[None], y_KxB[..., None],
                                                         axis=-1)[..., 0])
        x_KBxD = jnp.tile(x_BxD, (num_samples, 1))
        y_KB = y_KxB.reshape(-1)
        mean_KBxZ, logvar_KBxZ = self.encode_onehot(x_BxD, self._onehot(y_KB))
        eps_KBxZ = jax.random.normal(z_key, mean_KBxZ.shape, mean_KBxZ.dtype)
        z_KBxZ = distributions.shift_and_scale(mean_KBxZ, logvar_KBxZ, eps_KBxZ)
        log_px_KB = -self._nll(self.decode_onehot(z_KBxZ, self._onehot(y_KB)), x_KBxD)
        log_pz_KB = self.log_prior(z_KBxZ) - jnp.log(float(self.num_classes))
        log_qz_KB = distributions.gaussian_log_prob(z_KBxZ, mean_KBxZ, logvar_KBxZ)
        shape = (num_samples, batch)
        return interface.LogWeightTerms(log_px_KB.reshape(shape), log_pz_KB.reshape(shape),
                                        log_qz_KB.reshape(shape) + log_q_y_KxB)

    def reconstruct_outputs(self, x_BxD: jax.Array, key: jax.Array | None = None,
                            y_B: jax.Array | None = None) -> jax.Array:
        """decode(z, y), z ~ q(z | x, y) (the mean if key is None), y the labels or the
        predicted class."""
        labels_B = self.resolve_labels(x_BxD, y_B)
        y_BxC = self._onehot(labels_B)
        mean_BxZ, logvar_BxZ = self.encode_onehot(x_BxD, y_BxC)
        z_BxZ = (mean_BxZ if key is None
                 else distributions.reparameterize(key, mean_BxZ, logvar_BxZ))
        return self.decode_onehot(z_BxZ, y_BxC)

    def generate(self, key: jax.Array, labels_N: jax.Array) -> jax.Array:
        """The parameters of p(x | y, z) for z ~ N(0, I) and the given labels."""
        z_NxZ = jax.random.normal(key, (labels_N.shape[0], self.latent_dim))
        return self.decode_onehot(z_NxZ, self._onehot(labels_N))

    def sample_outputs(self, key: jax.Array, n: int) -> jax.Array:
        """n samples with labels 0, 1, ..., C-1, 0, 1, ... (every class; ``jaxvae.sample``)."""
        return self.generate(key, jnp.arange(n) % self.num_classes)


LIKELIHOODS = ("bernoulli", "gaussian_learned")


def draw_features(key: jax.Array, mean_std_BxR: jax.Array) -> jax.Array:
    """z ~ N(mean, diag(std^2)) from rows ``[mean | std]`` (R = 2 F): M1+M2's inputs, drawn
    from a trained M1's posterior q(z1 | x) at every step (``jaxvae.make_m2_loss``'s
    ``draw_inputs``). ``(B, 2 F) -> (B, F)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxvae.models import m2
      >>> rows = jnp.array([[1.0, -2.0, 0.0, 0.0]])  # means (1, -2), standard deviations 0
      >>> m2.draw_features(jax.random.key(0), rows).tolist()
      [[1.0, -2.0]]
    """
    f = mean_std_BxR.shape[-1] // 2
    if mean_std_BxR.shape[-1] != 2 * f:
        raise ValueError(f"rows [mean | std] have an even width, got {mean_std_BxR.shape[-1]}")
    mean, std = mean_std_BxR[..., :f], mean_std_BxR[..., f:]
    return mean + std * jax.random.normal(key, mean.shape, mean.dtype)


def m2(data_dim: int = 784, num_classes: int = 10, latent_dim: int = 50,
       hidden: Sequence[int] = (500,), precision_name: str = "float32",
       likelihood: str = "bernoulli") -> M2:
    """A validated ``M2`` for flat examples of ``data_dim`` values (``precision_name``: float32
    or bfloat16, ``jaxvae.models.precision``; ``likelihood``: one of ``LIKELIHOODS``)."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"M2's likelihood must be one of {list(LIKELIHOODS)}, got {likelihood!r}")
    for name, value in (("data_dim", data_dim), ("num_classes", num_classes),
                        ("latent_dim", latent_dim), *((f"hidden[{i}]", h)
                                                      for i, h in enumerate(hidden))):
        validation.check_count(value, name)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return M2(data_shape=(int(data_dim),), num_classes=int(num_classes),
              latent_dim=int(latent_dim), hidden=tuple(int(h) for h in hidden),
              dtype=precision.compute_dtype(precision_name), likelihood=likelihood)


def init(model: M2, key: jax.Array) -> Params:
    """The parameters (``interface.init``, jitted)."""
    return jax.jit(interface.init, static_argnums=0)(model, key)


def classify(model: M2, params: Params, x_BxD: jax.Array) -> jax.Array:
    """Logits of q(y | x); ``argmax`` is the predicted class."""
    return interface.apply_method(model, params, "classify", x_BxD)


def classification_loss(logits_BxC: jax.Array, y_B: jax.Array) -> jax.Array:
    """-log q(y | x) per example, ``(B,)``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, y_B)
