"""The semi-supervised VAE M2 (Kingma, Rezende, Mohamed & Welling 2014).

The label is a latent variable that is observed for some examples:

    p(x, y, z) = p(y) p(z) p(x | y, z),  p(y) = Cat(1/K),  p(z) = N(0, I),  p(x | y, z) Bernoulli
    q(y, z | x) = q(y | x) q(z | x, y),  q(y | x) = Cat(pi(x)),  q(z | x, y) Gaussian

Labelled examples (x, y):   -L(x, y) = E_q(z|x,y)[-log p(x | y, z)] + KL(q(z | x, y) || p(z))
                                        - log p(y)
Unlabelled examples x:      -U(x)    = sum_y q(y | x) (-L(x, y)) - H(q(y | x))
Objective (per example):    J = mean_l[-L(x, y)] + mean_u[-U(x)] + alpha * mean_l[-log q(y | x)]

(Kingma et al. 2014, Eqs. 6-9; the paper weighs the classification term by alpha = 0.1 N with
sums over the data set). One reparameterized sample of z per (x, y) pair; for U every class y is
tried, so an unlabelled example costs K encoder and decoder passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxvae import distributions

Params = Any


class _MLP(nn.Module):
    hidden: Sequence[int]
    out: int

    @nn.compact
    def __call__(self, h):
        for i, width in enumerate(self.hidden):
            h = nn.softplus(nn.Dense(width, name=f"hidden_{i}")(h))
        return nn.Dense(self.out, name="out")(h)


class M2(nn.Module):
    """M2 with MLPs (softplus hidden layers, as in the paper) for q(y|x), q(z|x,y), p(x|y,z).

    Attributes:
      data_dim: D (flat examples).
      num_classes: K.
      latent_dim: Z.
      hidden: hidden widths of each of the three networks.
    """

    data_dim: int = 784
    num_classes: int = 10
    latent_dim: int = 50
    hidden: Sequence[int] = (500,)

    def setup(self):
        self.classifier = _MLP(tuple(self.hidden), self.num_classes, name="classifier")
        self.encoder = _MLP(tuple(self.hidden), 2 * self.latent_dim, name="encoder")
        self.decoder = _MLP(tuple(self.hidden), self.data_dim, name="decoder")

    def classify(self, x_BxD: jax.Array) -> jax.Array:
        """Logits of q(y | x), ``(B, K)``."""
        return self.classifier(x_BxD)

    def encode(self, x_BxD: jax.Array, y_BxK: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z | x, y) from the concatenation [x, one_hot(y)]: ``(mean_BxZ, logvar_BxZ)``."""
        out = self.encoder(jnp.concatenate([x_BxD, y_BxK], axis=-1))
        return out[:, :self.latent_dim], out[:, self.latent_dim:]

    def decode(self, z_BxZ: jax.Array, y_BxK: jax.Array) -> jax.Array:
        """Bernoulli logits of p(x | y, z), ``(B, D)``."""
        return self.decoder(jnp.concatenate([z_BxZ, y_BxK], axis=-1))

    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        y_BxK = jax.nn.softmax(self.classify(x_BxD))
        mean_BxZ, _ = self.encode(x_BxD, y_BxK)
        return self.decode(mean_BxZ, y_BxK)


def init(model: M2, key: jax.Array) -> Params:
    return jax.jit(model.init)(key, jnp.zeros((1, model.data_dim)))["params"]


def classify(model: M2, params: Params, x_BxD: jax.Array) -> jax.Array:
    """Logits of q(y | x); ``argmax`` is the predicted class."""
    return model.apply({"params": params}, x_BxD, method=model.classify)


def labelled_elbo(model: M2, params: Params, x_BxD: jax.Array, y_BxK: jax.Array,
                  eps_BxZ: jax.Array) -> jax.Array:
    """L(x, y) = log p(x | y, z) + log p(y) - KL(q(z | x, y) || N(0, I)), z = mean + sd * eps.

    ``y_BxK`` one-hot; returns ``(B,)`` (nats, a lower bound on log p(x, y)).
    """
    variables = {"params": params}
    mean_BxZ, logvar_BxZ = model.apply(variables, x_BxD, y_BxK, method=model.encode)
    z_BxZ = distributions.shift_and_scale(mean_BxZ, logvar_BxZ, eps_BxZ)
    logits_BxD = model.apply(variables, z_BxZ, y_BxK, method=model.decode)
    log_prior_y = -jnp.log(model.num_classes)
    return (-distributions.bernoulli_nll(logits_BxD, x_BxD) + log_prior_y
            - distributions.gaussian_kl(mean_BxZ, logvar_BxZ))


def unlabelled_elbo(model: M2, params: Params, x_BxD: jax.Array, eps_KxBxZ: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """U(x) = sum_y q(y | x) L(x, y) + H(q(y | x)), with noise eps_KxBxZ[y] for class y.

    Returns ``(U_B, logits_BxK)`` (the classifier's logits, for metrics).
    """
    num_classes, batch = model.num_classes, x_BxD.shape[0]
    logits_BxK = classify(model, params, x_BxD)
    x_KBxD = jnp.tile(x_BxD, (num_classes, 1))
    y_KBxK = jnp.repeat(jnp.eye(num_classes, dtype=x_BxD.dtype), batch, axis=0)
    elbo_KxB = labelled_elbo(model, params, x_KBxD, y_KBxK,
                             eps_KxBxZ.reshape(num_classes * batch, -1)).reshape(num_classes, batch)
    log_q_BxK = jax.nn.log_softmax(logits_BxK)
    q_BxK = jnp.exp(log_q_BxK)
    entropy_B = -jnp.sum(q_BxK * log_q_BxK, axis=-1)
    return jnp.sum(q_BxK * elbo_KxB.T, axis=-1) + entropy_B, logits_BxK


def m2_loss_fn(model: M2, x_labelled_NxD, y_labelled_N, alpha: float,
               labelled_batch_size: int = 100):
    """``loss_fn(params, batch, key, step)`` of J for ``jaxvae.training.step`` (batch ``{"x"}``).

    The training epoch runs over the unlabelled examples (``batch["x"]``); every step also draws
    ``labelled_batch_size`` labelled examples (with replacement, from the key) out of the
    ``x_labelled_NxD, y_labelled_N`` held on the device. Metrics: ``loss``, ``labelled`` (mean
    -L), ``unlabelled`` (mean -U), ``classification`` (mean -log q(y|x) on the labelled batch),
    ``labelled_accuracy``.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
    x_l = jnp.asarray(x_labelled_NxD, jnp.float32)
    y_l = jnp.asarray(y_labelled_N, jnp.int32)
    if x_l.ndim != 2 or x_l.shape[1] != model.data_dim or y_l.shape != x_l.shape[:1]:
        raise ValueError(f"labelled data must be x (N, {model.data_dim}) and y (N,), got "
                         f"{x_l.shape} and {y_l.shape}")
    if int(y_l.min()) < 0 or int(y_l.max()) >= model.num_classes:
        raise ValueError(f"labels must be in [0, {model.num_classes}), got "
                         f"[{int(y_l.min())}, {int(y_l.max())}]")

    def loss_fn(params, batch, key, step):
        del step
        pick_key, l_key, u_key = jax.random.split(key, 3)
        x_u = batch["x"]
        idx = jax.random.randint(pick_key, (labelled_batch_size,), 0, x_l.shape[0])
        xb, yb = x_l[idx], y_l[idx]
        y_onehot = jax.nn.one_hot(yb, model.num_classes, dtype=xb.dtype)
        eps_l = jax.random.normal(l_key, (labelled_batch_size, model.latent_dim))
        neg_l = -jnp.mean(labelled_elbo(model, params, xb, y_onehot, eps_l))
        eps_u = jax.random.normal(u_key, (model.num_classes, x_u.shape[0], model.latent_dim))
        u_B, _ = unlabelled_elbo(model, params, x_u, eps_u)
        neg_u = -jnp.mean(u_B)
        logits_l = classify(model, params, xb)
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_l, yb))
        loss = neg_l + neg_u + alpha * ce
        return loss, {"loss": loss, "labelled": neg_l, "unlabelled": neg_u,
                      "classification": ce,
                      "labelled_accuracy": jnp.mean(jnp.argmax(logits_l, -1) == yb)}

    return loss_fn
