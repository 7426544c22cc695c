"""A sequence VAE (Bowman et al. 2016) over token ids: bidirectional GRU encoder, GRU decoder.

    q(z | x) = N(mean(h), diag(exp(logvar(h)))),  h = [h_fwd(x_1..x_T), h_bwd(x_T..x_1)]
    p(x | z) = prod_t Cat(x_t | GRU(h_{t-1}, [embed(x_{t-1}), z])),  h_0 = tanh(W z + b)

A batch is ``{"x": tokens_BxL}`` (int32, built by ``jaxvae.data.vocab.Vocabulary.encode_batch``;
a ``"y"`` is ignored): each row holds a string's ids, then EOS, then PAD. The decoder is fed
``[BOS, tokens[:-1]]`` and predicts ``tokens``; the reconstruction term sums the cross entropy over
the real tokens (EOS included) and ignores PAD, so padding a batch further never changes the loss.

``SequenceVAE`` is a ``jaxvae.models.interface.LatentVariableModel``: ``posterior`` (the
Gaussian q(z | x)), ``likelihood_params`` (the per-token logits of p(x_t | x_<t, z), teacher
forced: an autoregressive likelihood needs the tokens), ``log_prior`` (N(0, I)), ``elbo_terms``
and ``log_weight_terms``, so ``jaxvae.log_likelihood`` / ``jaxvae.elbo`` estimate log p(x) of
token sequences. The pure functions below (``encode``, ``teacher_forced_logits``, ``generate``)
run the GRUs under ``lax.scan`` and are what those methods call.

Against posterior collapse (the decoder ignoring z) the loss has the two remedies of Bowman et
al. 2016: KL annealing (the KL weight rises linearly from 0 to ``beta`` over ``warmup_steps``
steps) and word dropout (each decoder input token but BOS is replaced by UNK with probability
``word_dropout``, so the decoder must take what it cannot read from z).

Generation runs the decoder under ``lax.scan`` for ``max_len`` steps: greedy (argmax) or
sampled with a temperature, with an explicit key; after EOS a row emits PAD.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxvae import distributions, validation
from jaxvae.models import gru, interface
from jaxvae.models import mlp as models
from jaxvae.models import precision
from jaxvae.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID

Params = Any
# tokens the decoder never has to predict, so generation never emits them
NEVER_EMITTED = (PAD_ID, BOS_ID, UNK_ID)


class GRUCell(nn.GRUCell):
    """Flax's GRU cell (same parameters, same math) whose dense layers take the precision
    policy's keyword arguments (``precision.dense_kwargs``): with bfloat16 the six products
    get float32 accumulation and results, so the gates and the state stay float32.

        r = sigmoid(W_ir x + b_ir + W_hr h),  z = sigmoid(W_iz x + b_iz + W_hz h)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h
    """

    @nn.compact
    def __call__(self, carry, inputs):
        h = carry
        kwargs = dict(features=h.shape[-1], param_dtype=self.param_dtype,
                      bias_init=self.bias_init, **precision.dense_kwargs(self.dtype))
        dense_h = functools.partial(nn.Dense, use_bias=False,
                                    kernel_init=self.recurrent_kernel_init, **kwargs)
        dense_i = functools.partial(nn.Dense, use_bias=True, kernel_init=self.kernel_init,
                                    **kwargs)
        r = self.gate_fn(dense_i(name="ir")(inputs) + dense_h(name="hr")(h))
        z = self.gate_fn(dense_i(name="iz")(inputs) + dense_h(name="hz")(h))
        n = self.activation_fn(dense_i(name="in")(inputs) + r * dense_h(name="hn",
                                                                         use_bias=True)(h))
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h


class SequenceVAE(interface.LatentVariableModel):
    """Embedding + bidirectional GRU encoder -> (mean, logvar); z-conditioned GRU decoder.

    Attributes:
      vocab_size: V, the number of token ids (``len(vocabulary)``).
      embed_dim: size of the token embedding (shared by encoder and decoder).
      hidden_dim: H, the GRU state size (each encoder direction and the decoder).
      latent_dim: Z.
      dtype: the products' compute dtype (``jaxvae.models.precision``); the embedding, the GRU
        states and the logits stay float32.
    """

    vocab_size: int
    embed_dim: int = 64
    hidden_dim: int = 256
    latent_dim: int = 32
    dtype: Any = None

    likelihood = "categorical"  # over the vocabulary, per token (not in jaxvae.likelihoods)
    input_dtype = jnp.int32  # token ids

    @property
    def data_shape(self) -> tuple[int, ...]:
        """One token position: the parameters do not depend on the length of the rows."""
        return (1,)

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embed_dim, name="embed")
        dense = precision.dense_kwargs(self.dtype)
        self.encoder_fwd = GRUCell(self.hidden_dim, dtype=self.dtype, name="encoder_fwd")
        self.encoder_bwd = GRUCell(self.hidden_dim, dtype=self.dtype, name="encoder_bwd")
        self.to_mean = nn.Dense(self.latent_dim, name="mean", **dense)
        self.to_logvar = nn.Dense(self.latent_dim, name="logvar", **dense)
        self.z_to_hidden = nn.Dense(self.hidden_dim, name="z_to_hidden", **dense)
        self.decoder_cell = GRUCell(self.hidden_dim, dtype=self.dtype, name="decoder_cell")
        self.out = nn.Dense(self.vocab_size, name="out", **dense)

    def encoder_step(self, h_fwd_BxH: jax.Array, h_bwd_BxH: jax.Array, e_fwd_BxE: jax.Array,
                     e_bwd_BxE: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step of both encoder directions, through the Flax cells (creates their parameters;
        ``encode`` runs the directions with ``jaxvae.models.gru.token_gru``)."""
        return self.encoder_fwd(h_fwd_BxH, e_fwd_BxE)[0], self.encoder_bwd(h_bwd_BxH, e_bwd_BxE)[0]

    def to_posterior(self, h_fwd_BxH: jax.Array, h_bwd_BxH: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
        """(mean, logvar) of q(z | x) from the final states of both directions."""
        h_Bx2H = jnp.concatenate([h_fwd_BxH, h_bwd_BxH], axis=-1)
        return self.to_mean(h_Bx2H), self.to_logvar(h_Bx2H)

    def initial_state(self, z_BxZ: jax.Array) -> jax.Array:
        """h_0 = tanh(W z + b)."""
        return jnp.tanh(self.z_to_hidden(z_BxZ))

    def decode_step(self, h_BxH: jax.Array, token_B: jax.Array, z_BxZ: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
        """One decoder step: (h_{t-1}, x_{t-1}, z) -> (h_t, logits of x_t, ``(B, V)``)."""
        inp = jnp.concatenate([self.embed(token_B), z_BxZ], axis=-1)
        h_BxH, y_BxH = self.decoder_cell(h_BxH, inp)
        return h_BxH, self.out(y_BxH)

    def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
        """One step of every layer (used to create the parameters without compiling a scan)."""
        e_BxE = self.embed(tokens_BxL[:, 0])
        h_BxH = jnp.zeros(e_BxE.shape[:1] + (self.hidden_dim,), e_BxE.dtype)
        mean_BxZ, _ = self.to_posterior(*self.encoder_step(h_BxH, h_BxH, e_BxE, e_BxE))
        return self.decode_step(self.initial_state(mean_BxZ), tokens_BxL[:, 0], mean_BxZ)[1]

    # ------------------------------------------------------------------ the interface
    # The GRUs run under lax.scan in the pure functions of this file, applied to this module's
    # parameters (an unbound copy of the module: linen modules cannot be called inside a JAX
    # transformation of their own).

    def _pure(self) -> tuple[SequenceVAE, Params]:
        model = SequenceVAE(self.vocab_size, self.embed_dim, self.hidden_dim, self.latent_dim,
                            self.dtype, parent=None)
        return model, self.variables["params"]

    def posterior(self, x_BxL: jax.Array, y: jax.Array | None = None) -> interface.Posterior:
        """q(z | x): ``Posterior(mean_BxZ, logvar_BxZ)`` of the token rows ``x_BxL``."""
        return interface.Posterior(*encode(*self._pure(), x_BxL))

    def likelihood_params(self, z_BxZ: jax.Array, y: jax.Array | None = None,
                          tokens_BxL: jax.Array | None = None) -> jax.Array:
        """The logits ``(B, L, V)`` of p(x_t | x_<t, z), teacher forced on ``tokens_BxL``."""
        if tokens_BxL is None:
            raise ValueError("the sequence VAE's likelihood is autoregressive: its per-token "
                             "logits need the tokens (likelihood_params(z, None, tokens)); to "
                             "decode z into tokens use jaxvae.models.sequence.generate")
        return teacher_forced_logits(*self._pure(), z_BxZ, decoder_inputs(tokens_BxL))

    def elbo_terms_and_logits(self, x_BxL: jax.Array, key: jax.Array,
                              word_dropout_rate: float = 0.0
                              ) -> tuple[interface.ElboTerms, jax.Array]:
        """The -ELBO terms with one z ~ q(z | x), and the teacher-forced logits ``(B, L, V)``.

        ``z_key, drop_key = split(key)``: z = mean + std * normal(z_key, (B, Z)); with
        ``word_dropout_rate`` > 0 the decoder inputs are word-dropped with ``drop_key``.
        recon = -sum_t log p(x_t | x_<t, z) over the real tokens, kl = KL(q(z | x) || N(0, I)).
        """
        model, params = self._pure()
        z_key, drop_key = jax.random.split(key)
        mean_BxZ, logvar_BxZ = encode(model, params, x_BxL)
        z_BxZ = distributions.reparameterize(z_key, mean_BxZ, logvar_BxZ)
        inputs_BxL = decoder_inputs(x_BxL)
        if word_dropout_rate > 0:
            inputs_BxL = word_dropout(drop_key, inputs_BxL, word_dropout_rate)
        logits_BxLxV = teacher_forced_logits(model, params, z_BxZ, inputs_BxL)
        kl_B, kl_BxZ = self.analytic_kl(mean_BxZ, logvar_BxZ)
        terms = interface.ElboTerms(reconstruction_nll(logits_BxLxV, x_BxL), kl_B, kl_BxZ, {})
        return terms, logits_BxLxV

    def elbo_terms(self, x_BxL: jax.Array, y: jax.Array | None, key: jax.Array
                   ) -> interface.ElboTerms:
        """-ELBO = recon + kl with one z ~ q(z | x) (no word dropout: the model's own bound)."""
        return self.elbo_terms_and_logits(x_BxL, key)[0]

    def log_weight_terms(self, x_BxL: jax.Array, y: jax.Array | None, key: jax.Array,
                         num_samples: int) -> interface.LogWeightTerms:
        """log p(x | z_k), log p(z_k), log q(z_k | x), z_k = mean + std * eps_k,
        eps_KxBxZ = normal(key, (K, B, Z)); the K * B rows decoded as one batch."""
        model, params = self._pure()
        mean_BxZ, logvar_BxZ = encode(model, params, x_BxL)
        eps_KxBxZ = jax.random.normal(key, (num_samples,) + mean_BxZ.shape, mean_BxZ.dtype)
        mean_1xBxZ, logvar_1xBxZ = mean_BxZ[None], logvar_BxZ[None]
        z_KxBxZ = distributions.shift_and_scale(mean_1xBxZ, logvar_1xBxZ, eps_KxBxZ)
        tokens_KBxL = jnp.tile(x_BxL, (num_samples, 1))
        logits = teacher_forced_logits(model, params, z_KxBxZ.reshape(-1, self.latent_dim),
                                       decoder_inputs(tokens_KBxL))
        log_px_KxB = -reconstruction_nll(logits, tokens_KBxL).reshape(num_samples, -1)
        log_qz_KxB = distributions.gaussian_log_prob(z_KxBxZ, mean_1xBxZ, logvar_1xBxZ)
        return interface.LogWeightTerms(log_px_KxB, self.log_prior(z_KxBxZ), log_qz_KxB)

    def reconstruct_outputs(self, x_BxL: jax.Array, key: jax.Array | None = None,
                            y: jax.Array | None = None) -> jax.Array:
        """The teacher-forced logits ``(B, L, V)`` of x at z ~ q(z | x) (the mean if key is
        None); ``jaxvae.models.sequence.reconstruct`` decodes greedily into tokens instead."""
        model, params = self._pure()
        mean_BxZ, logvar_BxZ = encode(model, params, x_BxL)
        z_BxZ = (mean_BxZ if key is None
                 else distributions.reparameterize(key, mean_BxZ, logvar_BxZ))
        return teacher_forced_logits(model, params, z_BxZ, decoder_inputs(x_BxL))

    def sample_outputs(self, key: jax.Array, n: int) -> jax.Array:
        raise ValueError("sampling token sequences needs a maximum length: use "
                         "jaxvae.models.sequence.sample(model, params, key, n, max_len)")

    def check_examples(self, x) -> jax.Array:
        """Token rows ``(B, L)`` of ints in [0, vocab_size), or a ValueError / TypeError."""
        x = validation.check_array(x, "x (token ids)", ndim=2)
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"x must hold int token ids, got dtype {x.dtype}; encode strings "
                            "with Vocabulary.encode_batch")
        if x.size and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got "
                             f"[{int(x.min())}, {int(x.max())}]")
        return x


def sequence_vae(vocab_size: int, embed_dim: int = 64, hidden_dim: int = 256,
                 latent_dim: int = 32, precision_name: str = "float32") -> SequenceVAE:
    """A validated ``SequenceVAE``: every size a positive int, at least one non-special token
    (``precision_name``: float32 or bfloat16, ``jaxvae.models.precision``)."""
    for name, value in (("vocab_size", vocab_size), ("embed_dim", embed_dim),
                        ("hidden_dim", hidden_dim), ("latent_dim", latent_dim)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if vocab_size <= UNK_ID + 1:
        raise ValueError(f"vocab_size {vocab_size} holds only the 4 special tokens; build the "
                         "vocabulary from a non-empty corpus")
    return SequenceVAE(vocab_size, embed_dim, hidden_dim, latent_dim,
                       precision.compute_dtype(precision_name))


# ---------------------------------------------------------------------------------------------
# The functional API.


@functools.partial(jax.jit, static_argnums=(0, 2))
def init(model: SequenceVAE, key: jax.Array, length: int = 8) -> Params:
    """The model's parameters from ``key`` (a dummy batch of one row of ``length`` tokens).

    One compiled program per model configuration in a process: a second model with the same
    sizes reuses it.
    """
    tokens = jnp.full((1, length), EOS_ID, jnp.int32)
    return model.init(key, tokens)["params"]


@functools.partial(jax.jit, static_argnums=0)
def encode(model: SequenceVAE, params: Params, tokens_BxL: jax.Array
           ) -> tuple[jax.Array, jax.Array]:
    """q(z | x): ``(mean_BxZ, logvar_BxZ)``.

    Each GRU direction runs over the L positions (``jaxvae.models.gru.token_gru``, forwards and
    backwards); at PAD positions a direction keeps its state, so the forward state ends at the
    last real token and the backward one (which starts from zeros at the end of the padding)
    first sees the last real token.
    """
    tokens_LxB = tokens_BxL.T
    keep_LxB = tokens_LxB != PAD_ID
    h0_BxH = jnp.zeros((tokens_BxL.shape[0], model.hidden_dim), jnp.float32)
    finals = []
    for name, reverse in (("encoder_fwd", False), ("encoder_bwd", True)):
        w = gru.cell_weights(params[name])
        table_Vx3H = (precision.product(params["embed"]["embedding"], w.kernel_i, model.dtype)
                      + w.bias_i[None])
        finals.append(gru.token_gru(table_Vx3H, tokens_LxB, w.kernel_h, w.bias_hn, h0_BxH,
                                    keep_LxB, reverse=reverse, final_only=True,
                                    dtype=model.dtype))
    return model.apply({"params": params}, *finals, method=model.to_posterior)


def decoder_inputs(tokens_BxL: jax.Array) -> jax.Array:
    """``[BOS, tokens[:, :-1]]``: the teacher-forced inputs that predict ``tokens``."""
    bos = jnp.full((tokens_BxL.shape[0], 1), BOS_ID, tokens_BxL.dtype)
    return jnp.concatenate([bos, tokens_BxL[:, :-1]], axis=1)


def teacher_forced_logits(model: SequenceVAE, params: Params, z_BxZ: jax.Array,
                          inputs_BxL: jax.Array) -> jax.Array:
    """Decoder logits ``(B, L, V)`` for the given inputs (teacher forcing).

    The decoder cell reads ``[embed(x_{t-1}), z]``: its input gates are a row of the table
    ``embedding @ W_i[:E] + b_i`` plus ``z @ W_i[E:]``, the same at every step
    (``jaxvae.models.gru.token_gru``); the output layer runs once over all L * B states.
    """
    h0_BxH = model.apply({"params": params}, z_BxZ, method=model.initial_state)
    w = gru.cell_weights(params["decoder_cell"])
    embed = model.embed_dim
    table_Vx3H = (precision.product(params["embed"]["embedding"], w.kernel_i[:embed], model.dtype)
                  + w.bias_i[None])
    from_z_Bx3H = precision.product(z_BxZ, w.kernel_i[embed:], model.dtype)
    hs_LxBxH = gru.token_gru(table_Vx3H, inputs_BxL.T, w.kernel_h, w.bias_hn, h0_BxH,
                             extra_Bx3H=from_z_Bx3H, dtype=model.dtype)
    out = params["out"]
    return (precision.product(jnp.transpose(hs_LxBxH, (1, 0, 2)), out["kernel"], model.dtype)
            + out["bias"][None, None])


def token_mask(tokens_BxL: jax.Array) -> jax.Array:
    """1.0 at real tokens (EOS included), 0.0 at PAD."""
    return (tokens_BxL != PAD_ID).astype(jnp.float32)


def reconstruction_nll(logits_BxLxV: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    """-log p(x | z) per sequence: the cross entropy summed over real tokens, ``(B,)``."""
    nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, tokens_BxL)
    return jnp.sum(nll_BxL * token_mask(tokens_BxL), axis=1)


def position_uniform(key: jax.Array, batch: int, length: int) -> jax.Array:
    """U(0, 1) of shape (B, L) where column t depends only on (key, t), not on L.

    So that word dropout draws the same numbers for a row's real tokens however far the batch is
    padded (padding never changes the loss, also with dropout).
    """
    u_LxB = jax.vmap(lambda t: jax.random.uniform(jax.random.fold_in(key, t), (batch,)))(
        jnp.arange(length))
    return u_LxB.T


def word_dropout(key: jax.Array, inputs_BxL: jax.Array, rate: float) -> jax.Array:
    """Replaces each decoder input but BOS (and PAD) by UNK with probability ``rate``."""
    u_BxL = position_uniform(key, *inputs_BxL.shape)
    drop = (u_BxL < rate) & (inputs_BxL != BOS_ID) & (inputs_BxL != PAD_ID)
    return jnp.where(drop, UNK_ID, inputs_BxL)


def kl_weight(step: jax.Array, beta: float = 1.0, warmup_steps: int = 0) -> jax.Array:
    """The annealed KL weight: beta * min(1, step / warmup_steps) (beta when warmup_steps == 0)."""
    if warmup_steps <= 0:
        return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def generate(model: SequenceVAE, params: Params, z_BxZ: jax.Array, max_len: int,
             key: jax.Array | None = None, temperature: float = 1.0,
             constraint: Any = None) -> jax.Array:
    """Decodes z into ``tokens_BxL`` (L = max_len) under ``lax.scan``.

    Greedy (argmax) when ``key`` is None, else sampled from softmax(logits / temperature) with
    the key ``fold_in(key, t)`` at step t. Each row ends with EOS (if emitted within max_len)
    followed by PAD; ``Vocabulary.decode_batch`` turns the rows into strings. The tokens that are
    never targets in training (PAD, BOS and UNK, the word-dropout placeholder) are masked out of
    the logits, so a sample holds only corpus tokens and EOS.

    ``constraint``: a decoding constraint (e.g. ``jaxvae.data.smiles_syntax.smiles_syntax(vocab)``),
    a pytree with ``initial_state(batch, max_len)``, ``allowed(state) -> (B, V) bool`` and
    ``advance(state, tokens_B)``: at each step the tokens it does not allow are masked out too, so
    the softmax is renormalised over the allowed ones.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
    if key is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}; pass "
                         "key=None for greedy decoding")
    return _generate(model, params, z_BxZ, max_len, key, float(temperature), constraint)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _generate(model, params, z_BxZ, max_len, key, temperature, constraint):
    variables = {"params": params}
    batch = z_BxZ.shape[0]
    h0 = model.apply(variables, z_BxZ, method=model.initial_state)
    bos_B = jnp.full((batch,), BOS_ID, jnp.int32)
    # PAD, BOS and UNK are never training targets (UNK only replaces dropped inputs): never emit
    never_target_1xV = jnp.isin(jnp.arange(model.vocab_size), jnp.array(NEVER_EMITTED))[None, :]

    def body(carry, t):
        h, prev_B, done_B, state = carry
        h, logits_BxV = model.apply(variables, h, prev_B, z_BxZ, method=model.decode_step)
        logits_BxV = jnp.where(never_target_1xV, -jnp.inf, logits_BxV)
        if constraint is not None:
            allowed_BxV = constraint.allowed(state)
            # a row the constraint leaves no token (it cannot end within max_len) samples freely
            allowed_BxV = allowed_BxV | ~jnp.any(allowed_BxV, axis=1, keepdims=True)
            logits_BxV = jnp.where(allowed_BxV, logits_BxV, -jnp.inf)
        if key is None:
            tok_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
        else:
            tok_B = jax.random.categorical(jax.random.fold_in(key, t),
                                           logits_BxV / temperature).astype(jnp.int32)
        if constraint is not None:
            state = constraint.advance(state, tok_B)
        out_B = jnp.where(done_B, PAD_ID, tok_B)
        return (h, tok_B, done_B | (tok_B == EOS_ID), state), out_B

    state0 = None if constraint is None else constraint.initial_state(batch, max_len)
    _, tokens_LxB = jax.lax.scan(body, (h0, bos_B, jnp.zeros((batch,), bool), state0),
                                 jnp.arange(max_len))
    return tokens_LxB.T


def sample(model: SequenceVAE, params: Params, key: jax.Array, n: int, max_len: int,
           temperature: float = 1.0, greedy: bool = False, constraint: Any = None) -> jax.Array:
    """n sequences from the prior: z ~ N(0, I), then ``generate`` (sampled, or greedy; with an
    optional decoding ``constraint``)."""
    z_key, tok_key = jax.random.split(key)
    z_NxZ = jax.random.normal(z_key, (n, model.latent_dim))
    return generate(model, params, z_NxZ, max_len, None if greedy else tok_key, temperature,
                    constraint)


def reconstruct(model: SequenceVAE, params: Params, tokens_BxL: jax.Array, max_len: int,
                key: jax.Array | None = None) -> jax.Array:
    """Greedy decoding of the posterior mean (key None) or of z ~ q(z | x) drawn with ``key``."""
    mean_BxZ, logvar_BxZ = encode(model, params, tokens_BxL)
    z_BxZ = mean_BxZ if key is None else distributions.reparameterize(key, mean_BxZ, logvar_BxZ)
    return generate(model, params, z_BxZ, max_len)


def interpolate(model: SequenceVAE, params: Params, tokens0_L: jax.Array, tokens1_L: jax.Array,
                steps: int, max_len: int, spherical: bool = False) -> jax.Array:
    """Greedy decodings of ``steps`` points between the posterior means of two sequences.

    Returns ``tokens_SxL`` (L = max_len); row 0 decodes mean(x0), the last row mean(x1).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2 (both end points), got {steps!r}")
    tokens0_L, tokens1_L = jnp.asarray(tokens0_L), jnp.asarray(tokens1_L)
    if tokens0_L.ndim != 1 or tokens0_L.shape != tokens1_L.shape:
        raise ValueError("interpolate takes two token rows of the same length (encode_batch "
                         f"both together), got shapes {tokens0_L.shape} and {tokens1_L.shape}")
    mean_2xZ, _ = encode(model, params, jnp.stack([tokens0_L, tokens1_L]))
    t_S = jnp.linspace(0.0, 1.0, steps)
    if spherical:
        z_SxZ = models.slerp(mean_2xZ[0], mean_2xZ[1], t_S)
    else:
        z_SxZ = (1.0 - t_S[:, None]) * mean_2xZ[:1] + t_S[:, None] * mean_2xZ[1:]
    return generate(model, params, z_SxZ, max_len)
