"""The conditional VAE (Sohn et al. 2015; Kingma et al. 2014, M2 without the classifier).

The label y (one-hot, C classes) conditions both networks:

    q(z | x, y) = N(mean(x, y), diag(exp(logvar(x, y))))    encoder input [x, onehot(y)]
    p(x | z, y)                                             decoder input [z, onehot(y)]
    p(z)                                                    any prior but vamp (jaxvae.models.priors)

and the objective is the ELBO of log p(x | y), trained with ``jaxvae.objectives.losses.make_elbo_loss`` on
batches ``{"x", "y"}``. ``generate(model, params, key, labels_N)`` draws z from the prior and
decodes it with the chosen labels: digits of a chosen class.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvae.models import mlp as models
from jaxvae.models import builders, interface


class CVAE(models.VAE):
    """An MLP VAE whose encoder and decoder also see the one-hot label.

    Attributes (besides those of ``models.VAE``):
      num_classes: C, the number of labels (labels are ints in [0, C)).
    """

    num_classes: int = 10

    conditional = True

    def _onehot(self, labels_B: jax.Array) -> jax.Array:
        return jax.nn.one_hot(labels_B, self.num_classes, dtype=jnp.float32)

    def encode(self, x_BxD: jax.Array, labels_B: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = jnp.concatenate([x_BxD.reshape(x_BxD.shape[0], -1), self._onehot(labels_B)], -1)
        return self.encoder(h)

    def decode(self, z_BxZ: jax.Array, labels_B: jax.Array) -> jax.Array:
        return self._outputs(self.decoder(jnp.concatenate([z_BxZ, self._onehot(labels_B)], -1)))

    def generate(self, key: jax.Array, labels_N: jax.Array) -> jax.Array:
        """Decoder outputs for z ~ p(z) and the given labels."""
        return self.decode(self.sample_latent(key, labels_N.shape[0]), labels_N)

    def sample_outputs(self, key: jax.Array, n: int) -> jax.Array:
        """n samples with labels 0, 1, ..., C-1, 0, 1, ... (every class; ``jaxvae.sample``)."""
        return self.generate(key, jnp.arange(n) % self.num_classes)

    def __call__(self, x_BxD: jax.Array, labels_B: jax.Array | None = None) -> jax.Array:
        if labels_B is None:
            labels_B = jnp.zeros((x_BxD.shape[0],), jnp.int32)
        mean_BxZ, _ = self.encode(x_BxD, labels_B)
        self.prior_mixture()
        return self.decode(mean_BxZ, labels_B)


def check_labels(labels, num_classes: int) -> np.ndarray:
    """Labels as an int32 vector in [0, num_classes), or a ValueError / TypeError naming why not."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"labels must be a non-empty vector (N,), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got values in "
                         f"[{arr.min()}, {arr.max()}]")
    return arr.astype(np.int32)


def generate(model: CVAE, params: Any, key: jax.Array, labels_N) -> jax.Array:
    """Decoder outputs of N samples, the n-th of class ``labels_N[n]``: z ~ p(z), decode(z, y).

    Use ``jaxvae.likelihood_mean(model.likelihood, out)`` for images (sigmoid of the logits for
    the Bernoulli likelihood).

    Raises:
      ValueError / TypeError: labels that are not ints in [0, num_classes) of shape (N,).
    """
    labels_N = check_labels(labels_N, model.num_classes)
    return interface.apply_method(model, params, "generate", key, jnp.asarray(labels_N))


def build(config, example_shape: tuple[int, ...]) -> CVAE:
    """The conditional VAE of ``--model cvae`` (its objective comes from the registry)."""
    return builders.make_model(config, example_shape, CVAE, num_classes=config.model.num_classes)
