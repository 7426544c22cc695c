"""Evaluation: the importance-sampled log-likelihood, the per-example ELBO, anomaly scores.

    log p(x) ~= log (1/K) sum_k w_k,   log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x),
    z_k ~ q(z | x)                                                     (Burda et al. 2016, Eq. 8)

is a lower bound of log p(x) in expectation that grows with K and tends to log p(x); at K = 1 it
is the one-sample ELBO estimate. ``log_likelihood`` computes it per example with the K samples in
chunks of ``chunk_size`` (a running logsumexp) and the examples in batches of ``batch_size``
(``lax.map``), so memory is O(batch_size * chunk_size * D) for any K and any number of examples,
in one compiled program per input shape.

Every function takes the model and a batch (``{"x": x_BxD, "y": labels_B}``, or the array
``x_BxD`` for an unconditional model) and uses the model interface of ``jaxvae.models.interface``, so
the estimates are those of the model that was trained: its prior (learned diagonal, mixture,
VampPrior), its posterior (the planar flows' log-determinants, every layer of the ladder VAE),
its likelihood, its labels (the conditional VAE). Where a quantity is not defined (the
log-likelihood of a VQ-VAE, whose codes have no learned prior) they raise ValueError.

Noise: sample k of example i (its row in ``x``) is drawn with the key
``fold_in(fold_in(key, i), k)`` and ``interface.log_weights(..., num_samples=1)``, so
``chunk_size`` and ``batch_size`` change the memory used, never the result, and the K samples of
a smaller K are the first K of a larger one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import distributions, likelihoods, validation
from jaxvae.models import interface
from jaxvae.objectives import bounds as objectives

LogPrior = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The evaluation section of a training config: how the held-out splits are evaluated."""

    eval_batch_size: int = 500  # examples per evaluation batch (memory only, not the result)

    def validate(self) -> None:
        """Raises ValueError / TypeError naming the first field that cannot work."""
        validation.check_count(self.eval_batch_size, "eval_batch_size")


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _check_inputs(model: nn.Module, batch, likelihood: str | None
                  ) -> tuple[np.ndarray, np.ndarray, str]:
    """(x_NxD, y_N, likelihood), validated: the examples, the labels (-1 where none) and the
    name of p(x | z) (the model's own for an interface model)."""
    if not hasattr(model, "data_shape"):
        raise TypeError(f"model must be a VAE module with encode/decode and a data_shape "
                        f"attribute, got {type(model).__name__}")
    if hasattr(model, "check_examples"):  # examples that are not arrays in [0, 1] (token ids)
        if likelihood is not None:
            raise ValueError(f"the model has its own likelihood ({model.likelihood}): leave "
                             "likelihood out")
        batch = interface.as_batch(model, batch)
        x = np.asarray(model.check_examples(batch["x"]))
        return x, np.full((x.shape[0],), -1, np.int32), model.likelihood
    if likelihood is not None:
        likelihoods.check_likelihood(likelihood)
    own = getattr(model, "likelihood", None) if _is_interface(model) else None
    if own is not None and likelihood is not None and likelihood != own:
        raise ValueError(f"the model has the {own!r} likelihood, got likelihood={likelihood!r}; "
                         "leave likelihood out to use the model's")
    likelihood = own or likelihood or "bernoulli"
    likelihoods.check_likelihood(likelihood)
    batch = interface.as_batch(model, batch) if _is_interface(model) else (
        {"x": batch["x"], "y": batch.get("y")} if isinstance(batch, Mapping)
        else {"x": batch, "y": None})
    x = validation.check_data(batch["x"], name="x", likelihood=likelihood,
                              example_shape=tuple(model.data_shape))
    if batch["y"] is None:
        y = np.full((x.shape[0],), -1, np.int32)
    else:
        y = np.asarray(batch["y"])
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y must hold one int label per example, shape ({x.shape[0]},), got "
                             f"{y.dtype} {y.shape}")
        num_classes = getattr(model, "num_classes", None)
        if getattr(model, "conditional", False) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{type(model).__name__} needs labels in [0, {num_classes}), got "
                             f"[{y.min()}, {y.max()}]")
        if num_classes is not None and (y.min() < -1 or y.max() >= num_classes):
            raise ValueError(f"{type(model).__name__} takes labels in [0, {num_classes}), or -1 "
                             f"for an unlabelled example, got [{y.min()}, {y.max()}]")
        y = y.astype(np.int32)
    return x, y, likelihood


def _is_interface(model: nn.Module) -> bool:
    return isinstance(model, interface.LatentVariableModel)


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
def _estimate(model: nn.Module, params: Any, x_NxD: jax.Array, y_N: jax.Array, key: jax.Array, *,
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
    # Padding rows get label 0, a valid class for conditional models; their results are dropped.
    y_P = jnp.concatenate([y_N, jnp.zeros((padded - n,), y_N.dtype)])
    example_keys = _fold_in_range(key, jnp.arange(padded))

    def one_example(args):
        x_D, y, example_key = args
        batch_1 = {"x": x_D[None], "y": y[None]}

        def log_weight(sample_key):
            if _is_interface(model):
                return interface.log_weights(model, params, batch_1, sample_key, 1)[0, 0]
            return objectives.log_importance_weights(model, params, batch_1["x"], sample_key, 1,
                                                     likelihood, log_prior)[0, 0]

        def neg_loss(sample_key):  # -(recon + KL) with the same z as log_weight
            if _is_interface(model):
                terms = interface.elbo_terms(model, params, batch_1, sample_key)
                return -(terms.recon_B[0] + terms.kl_B[0])
            draw = lambda mean: jax.random.normal(sample_key, (1,) + mean.shape, mean.dtype)[0]
            recon_1, kl_1 = objectives.elbo_terms(model, params, batch_1["x"], draw, likelihood)
            return -(recon_1[0] + kl_1[0])

        if kind == "iwae":
            total = _reduce_samples(log_weight, example_key, num_samples, chunk_size,
                                    _logsumexp_combine, -jnp.inf)
            return total - jnp.log(float(num_samples))
        per_sample = log_weight if kind == "elbo_mc" else neg_loss
        total = _reduce_samples(per_sample, example_key, num_samples, chunk_size, _sum_combine,
                                0.0)
        return total / num_samples

    return jax.lax.map(one_example, (x_PxD, y_P, example_keys), batch_size=batch)[:n]


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


def _run(model, params, batch, key, *, num_samples, chunk_size, batch_size, likelihood,
         log_prior, kind) -> jax.Array:
    if _is_interface(model):
        if log_prior is not None:
            raise ValueError("the model has its own prior: leave log_prior out")
        interface.check_defined(model, "elbo_terms" if kind == "elbo" else "log_weights")
    x, y, likelihood = _check_inputs(model, batch, likelihood)
    log_prior = log_prior or distributions.standard_normal_log_prob
    num_samples = _check_count("num_samples", num_samples)
    # Normalized so that equivalent settings share one compiled program.
    chunk_size = _even_split(num_samples, _check_count("chunk_size", chunk_size))[1]
    if batch_size is None:
        batch_size = default_batch_size(chunk_size)
    batch_size = _even_split(x.shape[0], _check_count("batch_size", batch_size))[1]
    return _estimate(model, params, jnp.asarray(x), jnp.asarray(y), key, num_samples=num_samples,
                     chunk_size=chunk_size, batch_size=batch_size, likelihood=likelihood,
                     log_prior=log_prior, kind=kind)


def log_likelihood(model: nn.Module, params: Any, batch, key: jax.Array, num_samples: int,
                   chunk_size: int = 250, batch_size: int | None = None,
                   likelihood: str | None = None, log_prior: LogPrior | None = None
                   ) -> jax.Array:
    """The importance-sampled estimate of log p(x) per example, in nats (the IWAE bound).

        log p(x) ~= logsumexp_k log w_k - log K,
        log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x),  z_k ~ q(z | x)

    (Burda et al. 2016), with the model's own log-weights (``interface.log_weights``: its prior,
    its posterior with the flows' log-determinants, every layer of a ladder, the labels of a
    conditional model). It equals ``objectives.iwae_bound`` of the K log-weights, computed
    with a running logsumexp over chunks of K. At K = 1 it is the one-sample ELBO estimate
    (``elbo(..., analytic_kl=False)`` with the same key); its mean over examples grows with K
    and is above the ELBO. The test NLL of a model is ``-mean(log_likelihood(...))``.

    Args:
      model: a model of ``jaxvae.models.interface`` (or any module with ``encode`` / ``decode`` /
        ``data_shape``, read as a Gaussian-posterior VAE with the prior ``log_prior``).
      params: its parameters.
      batch: ``{"x": x_BxD, "y": labels_B}`` or the examples ``x_BxD`` (for unconditional
        models), ``(B, *model.data_shape)`` (in [0, 1] for the Bernoulli likelihood).
      key: a PRNG key; sample k of row i uses ``fold_in(fold_in(key, i), k)``.
      num_samples: K >= 1, importance samples per example (5000 in Burda et al.'s evaluation).
      chunk_size: samples evaluated at once per example (memory only, not the result).
      batch_size: examples evaluated at once (memory and speed only, not the result). Peak
        memory is about ``batch_size * chunk_size * D`` floats for the decoder outputs. None
        (default): ``default_batch_size(chunk_size)``, 4,096 rows on a CPU (cache-sized) and
        65,536 on an accelerator.
      likelihood: the name of p(x | z) for a module without one (default bernoulli); an
        interface model uses its own (a different name is refused).
      log_prior: log p(z) for a module without a prior of its own (default N(0, I)).

    Returns:
      ``log_px_B``, float32.

    Raises:
      ValueError / TypeError: a count that is not a positive int, data of the wrong shape or
        range, an unknown likelihood, missing labels for a conditional model, or a model whose
        log-likelihood is not defined (the VQ-VAE).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params, x = jaxvae.init(model, jax.random.key(0)), jnp.zeros((3, 4))
      >>> key = jax.random.key(1)
      >>> log_px = jaxvae.log_likelihood(model, params, x, key, num_samples=10)
      >>> log_px.shape
      (3,)
      >>> mean_log_w = jaxvae.elbo(model, params, x, key, num_samples=10, analytic_kl=False)
      >>> bool(jnp.all(log_px >= mean_log_w))  # log mean w >= mean log w, the same 10 samples
      True
    """
    return _run(model, params, batch, key, num_samples=num_samples, chunk_size=chunk_size,
                batch_size=batch_size, likelihood=likelihood, log_prior=log_prior, kind="iwae")


def elbo(model: nn.Module, params: Any, batch, key: jax.Array, likelihood: str | None = None,
         num_samples: int = 1, analytic_kl: bool = True, chunk_size: int = 250,
         batch_size: int | None = None, log_prior: LogPrior | None = None) -> jax.Array:
    """The evidence lower bound per example, in nats, averaged over ``num_samples`` draws of z.

        ELBO(x) = E_q(z|x)[log p(x | z)] - KL(q(z | x) || p(z))            (Kingma & Welling 2014)

    With ``analytic_kl`` (the default) it is the training objective's estimator
    (``interface.elbo_terms``): the KL term in closed form where the model has one (standard
    and diagonal priors, each layer of a ladder given its parent) and its one-sample Monte Carlo
    estimate otherwise (mixture priors, flows), the reconstruction term sampled; so
    ``-mean(elbo)`` estimates the training loop's test recon + kl. Otherwise the estimate is
    ``mean_k log w_k`` with the log weights of ``log_likelihood``, which at K = 1 equals
    ``log_likelihood(..., 1)`` exactly. z_k is drawn exactly as in ``log_likelihood`` (the same
    key scheme).

    Args:
      model, params, batch, key, likelihood, chunk_size, batch_size, log_prior: as in
        ``log_likelihood`` (``log_prior`` is ignored with ``analytic_kl``).
      num_samples: draws of z per example, >= 1.
      analytic_kl: the training objective's estimator instead of the mean log-weight.

    Returns:
      ``elbo_B`` (negative for the Bernoulli likelihood; ``-mean`` is the test loss at beta 1).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params, x = jaxvae.init(model, jax.random.key(0)), jnp.zeros((3, 4))
      >>> key = jax.random.key(1)
      >>> elbo_B = jaxvae.elbo(model, params, x, key)  # one z per example, analytic KL
      >>> elbo_B.shape, bool(jnp.all(elbo_B < 0))  # log p(x | z) < 0 (Bernoulli), KL >= 0
      ((3,), True)
    """
    return _run(model, params, batch, key, num_samples=num_samples, chunk_size=chunk_size,
                batch_size=batch_size, likelihood=likelihood, log_prior=log_prior,
                kind="elbo" if analytic_kl else "elbo_mc")


SCORES = ("nll", "elbo")


def anomaly_score(model: nn.Module, params: Any, batch, key: jax.Array, num_samples: int = 100,
                  likelihood: str | None = None, score: str = "nll", chunk_size: int = 250,
                  batch_size: int | None = None) -> jax.Array:
    """Per-example anomaly scores, higher = more anomalous: -log p(x) or -ELBO(x), in nats.

    ``score="nll"`` is ``-log_likelihood(..., num_samples)`` (the importance-sampled NLL);
    ``score="elbo"`` is ``-elbo(..., num_samples)`` (the negative ELBO, the training
    objective's estimator). A VAE trained on normal data gives examples unlike its training
    data a low likelihood, so a threshold on the score is an anomaly detector (An & Cho 2015).

    Returns:
      ``score_B``.
    """
    if score not in SCORES:
        raise ValueError(f"unknown anomaly score {score!r}; choose one of {list(SCORES)}")
    if score == "nll":
        return -log_likelihood(model, params, batch, key, num_samples, chunk_size, batch_size,
                               likelihood)
    return -elbo(model, params, batch, key, likelihood, num_samples, chunk_size=chunk_size,
                 batch_size=batch_size)
