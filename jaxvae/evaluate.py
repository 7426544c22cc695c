"""Evaluation: the importance-sampled log-likelihood, the per-example ELBO, anomaly scores.

    log p(x) ~= log (1/K) sum_k w_k,   log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x),
    z_k ~ q(z | x)                                                     (Burda et al. 2016, Eq. 8)

is a lower bound of log p(x) in expectation that grows with K and tends to log p(x); at K = 1 it
is the one-sample ELBO estimate. ``log_likelihood`` computes it per example with the K samples in
chunks of ``chunk_size`` (a running logsumexp) and the examples in batches of ``batch_size``
(``lax.map``), so memory is O(batch_size * chunk_size * D) for any K and any number of examples,
in one compiled program per input shape.

Noise: sample k of example i (its row in ``x``) is drawn with the key
``fold_in(fold_in(key, i), k)`` and ``objectives.log_importance_weights(..., num_samples=1)``, so
``chunk_size`` and ``batch_size`` change the memory used, never the result, and the K samples of
a smaller K are the first K of a larger one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import distributions, objectives, validation

LogPrior = Callable[[jax.Array], jax.Array]


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _check_inputs(model: nn.Module, x, likelihood: str) -> np.ndarray:
    objectives.check_likelihood(likelihood)
    if not hasattr(model, "data_shape"):
        raise TypeError(f"model must be a VAE module with encode/decode and a data_shape "
                        f"attribute, got {type(model).__name__}")
    return validation.check_data(x, name="x", likelihood=likelihood,
                                 example_shape=tuple(model.data_shape))


def _even_split(total: int, at_most: int) -> tuple[int, int]:
    """(count, size): the fewest pieces of at most ``at_most`` covering ``total``, as equal as
    possible, so that padding to count * size wastes fewer than ``count`` items."""
    count = -(-total // min(at_most, total))
    return count, -(-total // count)


def _fold_in_range(key: jax.Array, index_N: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index_N)


def _reduce_samples(per_sample: Callable[[jax.Array], jax.Array], key: jax.Array,
                    num_samples: int, chunk_size: int, combine: Callable, init: float
                    ) -> jax.Array:
    """Folds ``combine(acc, values_C, valid_C)`` over the K samples of one example, C at a time.

    ``per_sample(sample_key) -> scalar``. The chunks run under ``lax.scan``; the last one is
    padded to the common size and its padding masked (``valid_C`` false), so there is one copy
    of the model in the compiled program.
    """
    num_chunks, chunk = _even_split(num_samples, chunk_size)

    def body(acc, c):
        index_C = c * chunk + jnp.arange(chunk)
        values_C = jax.vmap(per_sample)(_fold_in_range(key, index_C))
        return combine(acc, values_C, index_C < num_samples), None

    acc, _ = jax.lax.scan(body, jnp.asarray(init, jnp.float32), jnp.arange(num_chunks))
    return acc


def _logsumexp_combine(acc: jax.Array, log_w_C: jax.Array, valid_C: jax.Array) -> jax.Array:
    # log(exp(acc) + sum_c exp(log_w_c)) over the valid samples; logaddexp(-inf, a) == a.
    return jnp.logaddexp(acc, jax.nn.logsumexp(jnp.where(valid_C, log_w_C, -jnp.inf)))


def _sum_combine(acc: jax.Array, values_C: jax.Array, valid_C: jax.Array) -> jax.Array:
    return acc + jnp.sum(jnp.where(valid_C, values_C, 0.0))


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "chunk_size", "batch_size",
                                             "likelihood", "log_prior", "kind"))
def _estimate(model: nn.Module, params: Any, x_NxD: jax.Array, key: jax.Array, *,
              num_samples: int, chunk_size: int, batch_size: int, likelihood: str,
              log_prior: LogPrior, kind: str) -> jax.Array:
    """Per-example estimates, ``(N,)``: kind "iwae", "elbo_mc" or "elbo" (analytic KL).

    The examples are padded with zeros to whole batches (results dropped), so the program
    holds one copy of the model.
    """
    n = x_NxD.shape[0]
    num_batches, batch = _even_split(n, batch_size)
    padded = num_batches * batch
    x_PxD = jnp.concatenate([x_NxD, jnp.zeros((padded - n,) + x_NxD.shape[1:], x_NxD.dtype)])
    example_keys = _fold_in_range(key, jnp.arange(padded))

    def one_example(args):
        x_D, example_key = args
        x_1xD = x_D[None]

        def log_weight(sample_key):
            return objectives.log_importance_weights(model, params, x_1xD, sample_key, 1,
                                                     likelihood, log_prior)[0, 0]

        def neg_loss(sample_key):  # -(recon + KL) with the same z as log_weight
            draw = lambda mean: jax.random.normal(sample_key, (1,) + mean.shape, mean.dtype)[0]
            recon_1, kl_1 = objectives.elbo_terms(model, params, x_1xD, draw, likelihood)
            return -(recon_1[0] + kl_1[0])

        if kind == "iwae":
            total = _reduce_samples(log_weight, example_key, num_samples, chunk_size,
                                    _logsumexp_combine, -jnp.inf)
            return total - jnp.log(float(num_samples))
        per_sample = log_weight if kind == "elbo_mc" else neg_loss
        total = _reduce_samples(per_sample, example_key, num_samples, chunk_size, _sum_combine,
                                0.0)
        return total / num_samples

    return jax.lax.map(one_example, (x_PxD, example_keys), batch_size=batch)[:n]


# Decoder rows (examples x samples) evaluated at once when batch_size is None. On a CPU the
# decoder outputs of ~4,000 rows of 784 pixels (12.5 MB) stay in the last-level cache: measured
# here (2-core EPYC, K = 1000, 64 examples) 2,000-4,000 rows ran 223-234 examples/s, 16,000 rows
# 143. Accelerators want wide batches and have the memory for them.
ROWS_PER_BATCH = {"cpu": 4096}
ROWS_PER_BATCH_ACCELERATOR = 65536


def default_batch_size(chunk_size: int, backend: str | None = None) -> int:
    """Examples per batch so that batch * chunk_size is the backend's row budget (at least 1)."""
    backend = jax.default_backend() if backend is None else backend
    rows = ROWS_PER_BATCH.get(backend, ROWS_PER_BATCH_ACCELERATOR)
    return max(1, rows // chunk_size)


def _run(model, params, x, key, *, num_samples, chunk_size, batch_size, likelihood, log_prior,
         kind) -> jax.Array:
    x = _check_inputs(model, x, likelihood)
    num_samples = _check_count("num_samples", num_samples)
    # Normalized so that equivalent settings share one compiled program.
    chunk_size = _even_split(num_samples, _check_count("chunk_size", chunk_size))[1]
    if batch_size is None:
        batch_size = default_batch_size(chunk_size)
    batch_size = _even_split(x.shape[0], _check_count("batch_size", batch_size))[1]
    return _estimate(model, params, jnp.asarray(x), key, num_samples=num_samples,
                     chunk_size=chunk_size, batch_size=batch_size, likelihood=likelihood,
                     log_prior=log_prior, kind=kind)


def log_likelihood(model: nn.Module, params: Any, x_BxD, key: jax.Array, num_samples: int,
                   chunk_size: int = 250, batch_size: int | None = None,
                   likelihood: str = "bernoulli",
                   log_prior: LogPrior = distributions.standard_normal_log_prob) -> jax.Array:
    """The importance-sampled estimate of log p(x) per example, in nats (the IWAE bound).

        log p(x) ~= logsumexp_k log w_k - log K,
        log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x),  z_k ~ q(z | x)

    (Burda et al. 2016). It equals ``objectives.iwae_bound`` of the K log-weights, computed
    with a running logsumexp over chunks of K. At K = 1 it is the one-sample ELBO estimate
    (``elbo(..., analytic_kl=False)`` with the same key); its mean over examples grows with K.
    The test NLL of a model is ``-mean(log_likelihood(...))``.

    Args:
      model: a VAE module (``encode`` / ``decode`` / ``data_shape``).
      params: its parameters.
      x_BxD: examples, ``(B, *model.data_shape)`` (in [0, 1] for the Bernoulli likelihood).
      key: a PRNG key; sample k of row i uses ``fold_in(fold_in(key, i), k)``.
      num_samples: K >= 1, importance samples per example (5000 in Burda et al.'s evaluation).
      chunk_size: samples evaluated at once per example (memory only, not the result).
      batch_size: examples evaluated at once (memory and speed only, not the result). Peak
        memory is about ``batch_size * chunk_size * D`` floats for the decoder outputs. None
        (default): ``default_batch_size(chunk_size)``, 4,096 rows on a CPU (cache-sized) and
        65,536 on an accelerator.
      likelihood: the name of p(x | z) (see ``objectives.LIKELIHOODS``).
      log_prior: log p(z) summed over the last axis (default: the standard normal).

    Returns:
      ``log_px_B``, float32.

    Raises:
      ValueError / TypeError: a count that is not a positive int, data of the wrong shape or
        range, an unknown likelihood.
    """
    return _run(model, params, x_BxD, key, num_samples=num_samples, chunk_size=chunk_size,
                batch_size=batch_size, likelihood=likelihood, log_prior=log_prior, kind="iwae")


def elbo(model: nn.Module, params: Any, x_BxD, key: jax.Array, likelihood: str = "bernoulli",
         num_samples: int = 1, analytic_kl: bool = True, chunk_size: int = 250,
         batch_size: int | None = None,
         log_prior: LogPrior = distributions.standard_normal_log_prob) -> jax.Array:
    """The evidence lower bound per example, in nats, averaged over ``num_samples`` draws of z.

        ELBO(x) = E_q(z|x)[log p(x | z)] - KL(q(z | x) || p(z))            (Kingma & Welling 2014)

    With ``analytic_kl`` (the default, the training objective's estimator) the KL term is the
    closed-form Gaussian KL to N(0, I) (``log_prior`` is then ignored) and only the
    reconstruction term is sampled; otherwise the estimate is ``mean_k log w_k`` with the log
    weights of ``log_likelihood``, which at K = 1 equals ``log_likelihood(..., 1)`` exactly.
    z_k is drawn exactly as in ``log_likelihood`` (the same key scheme).

    Args:
      model, params, x_BxD, key, likelihood, chunk_size, batch_size, log_prior: as in
        ``log_likelihood``.
      num_samples: draws of z per example, >= 1.
      analytic_kl: the closed-form KL instead of its one-sample estimate.

    Returns:
      ``elbo_B`` (negative for the Bernoulli likelihood; ``-mean`` is the test loss at beta 1).
    """
    return _run(model, params, x_BxD, key, num_samples=num_samples, chunk_size=chunk_size,
                batch_size=batch_size, likelihood=likelihood, log_prior=log_prior,
                kind="elbo" if analytic_kl else "elbo_mc")


SCORES = ("nll", "elbo")


def anomaly_score(model: nn.Module, params: Any, x, key: jax.Array, num_samples: int = 100,
                  likelihood: str = "bernoulli", score: str = "nll", chunk_size: int = 250,
                  batch_size: int | None = None) -> jax.Array:
    """Per-example anomaly scores, higher = more anomalous: -log p(x) or -ELBO(x), in nats.

    ``score="nll"`` is ``-log_likelihood(..., num_samples)`` (the importance-sampled NLL);
    ``score="elbo"`` is ``-elbo(..., num_samples)`` (the negative ELBO, analytic KL). A VAE
    trained on normal data gives examples unlike its training data a low likelihood, so a
    threshold on the score is an anomaly detector (An & Cho 2015).

    Returns:
      ``score_B``.
    """
    if score not in SCORES:
        raise ValueError(f"unknown anomaly score {score!r}; choose one of {list(SCORES)}")
    if score == "nll":
        return -log_likelihood(model, params, x, key, num_samples, chunk_size, batch_size,
                               likelihood)
    return -elbo(model, params, x, key, likelihood, num_samples, chunk_size=chunk_size,
                 batch_size=batch_size)
