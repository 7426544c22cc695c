"""The model interface: what every latent-variable model offers, and the pure functions that use it.

Every model of jaxvae (the MLP VAE with each prior and likelihood, the convolutional VAE, the
conditional VAE, the planar-flow VAE, the ladder VAE, the VQ-VAE, the semi-supervised M2 and the
sequence VAE) is a linen module derived from
``LatentVariableModel``. Its methods all take a batch as ``x`` (``(B, *data_shape)``) and ``y``
(int labels ``(B,)``: used by conditional models, ignored by the others), so that one piece of
code serves every model:

    posterior(x, y)              -> Posterior(mean_BxZ, logvar_BxZ), the Gaussian q(z | x, y)
    likelihood_params(z, y)      -> the decoder outputs, the parameters of p(x | z, y)
    log_prior(z)                 -> log p(z), summed over the last axis
    elbo_terms(x, y, key)        -> ElboTerms: -log p(x | z) and the KL term with one z ~ q
    log_weight_terms(x, y, key, K) -> log p(x | z_k), log p(z_k), log q(z_k | x), k = 1..K

from which the per-example importance log-weight, the quantity both the ELBO and the
importance-sampled log-likelihood are built from, follows:

    log w_k = log p(x, z_k) - log q(z_k | x) = log p(x | z_k) + log p(z_k) - log q(z_k | x).

A model states the quantities it does not define in ``undefined`` (for example the VQ-VAE, whose
codes have no learned prior, has no log-weights); the functions below refuse them with a
ValueError that says why. The pure functions (``init``, ``encode``, ``decode``, ``log_prior``,
``sample``, ``reconstruct``, ``elbo_terms``, ``log_weights``) take the parameters and a batch
``{"x": x_BxD, "y": y_B}`` (or the array ``x_BxD`` for an unconditional model).

In the spirit of big_vision's abstract VAE (``encode`` / ``decode`` / ``reparametrize`` that
each architecture implements) and of penzai's ``LossFunction`` protocol.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import distributions, likelihoods, validation

Params = Any


class Posterior(NamedTuple):
    """A diagonal Gaussian q(z | x) = N(mean, diag(exp(logvar)))."""

    mean: jax.Array  # (B, Z)
    logvar: jax.Array  # (B, Z)


class ElboTerms(NamedTuple):
    """The one-sample terms of the negative ELBO per example: -ELBO_b = recon_B + kl_B."""

    recon_B: jax.Array  # -log p(x | z), z ~ q(z | x) reparameterized
    kl_B: jax.Array  # KL(q || p): analytic where the model has it, else its Monte Carlo estimate
    kl_BxZ: jax.Array | None  # the analytic KL per latent dimension (None: not analytic)
    extras: dict  # further per-example terms ((B,) arrays) reported as metrics


class LogWeightTerms(NamedTuple):
    """The three terms of the importance log-weights, each ``(K, B)``."""

    log_px: jax.Array  # log p(x | z_k)
    log_pz: jax.Array  # log p(z_k)
    log_qz: jax.Array  # log q(z_k | x)

    def log_weights(self) -> jax.Array:
        """log w_KxB = log p(x | z) + log p(z) - log q(z | x)."""
        return self.log_px + self.log_pz - self.log_qz


class LatentVariableModel(nn.Module):
    """A VAE with a Gaussian posterior q(z | x) = N(mean, diag(exp(logvar))) and N(0, I) prior.

    Subclasses implement ``encode(x[, y]) -> (mean_BxZ, logvar_BxZ)`` and
    ``decode(z[, y]) -> outputs`` and hold the fields ``latent_dim``, ``data_shape`` and
    ``likelihood`` (a name from ``jaxvae.likelihoods.LIKELIHOODS``). They override the methods
    below where their posterior, prior or bound differs (a learned prior, flows, a hierarchy of
    latents, discrete codes). The methods take the labels ``y`` whether or not they use them.
    """

    # Conditional models (``encode(x, y)`` / ``decode(z, y)``) set this to True.
    conditional = False
    # Quantities the model does not define: interface method name -> the reason, for the error.
    undefined = {}

    @property
    def analytic_kl_per_dim(self) -> bool:
        """Whether ``elbo_terms`` gives the KL per latent dimension (``kl_BxZ``, for free bits)."""
        return True

    def _condition(self, y: jax.Array | None) -> tuple:
        return (y,) if self.conditional else ()

    def posterior(self, x: jax.Array, y: jax.Array | None = None) -> Posterior:
        """q(z | x, y): ``Posterior(mean_BxZ, logvar_BxZ)``."""
        return Posterior(*self.encode(x, *self._condition(y)))

    def likelihood_params(self, z: jax.Array, y: jax.Array | None = None) -> jax.Array:
        """The decoder outputs for z (the parameters of p(x | z, y))."""
        return self.decode(z, *self._condition(y))

    def log_prior(self, z: jax.Array) -> jax.Array:
        """log p(z) = log N(z | 0, I) over the last axis; any leading axes."""
        return distributions.standard_normal_log_prob(z)

    def analytic_kl(self, mean_BxZ: jax.Array, logvar_BxZ: jax.Array
                    ) -> tuple[jax.Array, jax.Array] | None:
        """(kl_B, kl_BxZ): KL(q || p) in closed form and per dimension, or None if it has none.

        KL(N(m, e^lv) || N(0, I)) = -1/2 sum(1 + lv - m^2 - e^lv)   (Kingma & Welling 2014)
        """
        kl_BxZ = -0.5 * (1.0 + logvar_BxZ - jnp.square(mean_BxZ) - jnp.exp(logvar_BxZ))
        return distributions.gaussian_kl(mean_BxZ, logvar_BxZ), kl_BxZ

    def elbo_terms(self, x: jax.Array, y: jax.Array | None, key: jax.Array) -> ElboTerms:
        """-log p(x | z) and the KL term, z = mean + exp(logvar / 2) * normal(key, (B, Z)).

        The KL is analytic where ``analytic_kl`` has it, else the one-sample Monte Carlo
        estimate log q(z | x) - log p(z) at the same z (unbiased).
        """
        mean_BxZ, logvar_BxZ = self.posterior(x, y)
        eps_BxZ = jax.random.normal(key, mean_BxZ.shape, mean_BxZ.dtype)
        z_BxZ = distributions.shift_and_scale(mean_BxZ, logvar_BxZ, eps_BxZ)
        recon_B = likelihoods.reconstruction_nll(self.likelihood,
                                                 self.likelihood_params(z_BxZ, y), x)
        analytic = self.analytic_kl(mean_BxZ, logvar_BxZ)
        if analytic is not None:
            return ElboTerms(recon_B, analytic[0], analytic[1], {})
        kl_B = (distributions.gaussian_log_prob(z_BxZ, mean_BxZ, logvar_BxZ)
                - self.log_prior(z_BxZ))
        return ElboTerms(recon_B, kl_B, None, {})

    def log_weight_terms(self, x: jax.Array, y: jax.Array | None, key: jax.Array,
                         num_samples: int) -> LogWeightTerms:
        """The terms of log w_k for z_k = mean + std * eps_k, eps_KxBxZ = normal(key, (K, B, Z))."""
        mean_BxZ, logvar_BxZ = self.posterior(x, y)
        eps_KxBxZ = jax.random.normal(key, (num_samples,) + mean_BxZ.shape, mean_BxZ.dtype)
        mean_1xBxZ, logvar_1xBxZ = mean_BxZ[None], logvar_BxZ[None]
        z_KxBxZ = distributions.shift_and_scale(mean_1xBxZ, logvar_1xBxZ, eps_KxBxZ)
        log_px_KxB = self._log_px(x, y, z_KxBxZ)
        log_qz_KxB = distributions.gaussian_log_prob(z_KxBxZ, mean_1xBxZ, logvar_1xBxZ)
        return LogWeightTerms(log_px_KxB, self.log_prior(z_KxBxZ), log_qz_KxB)

    def _log_px(self, x: jax.Array, y: jax.Array | None, z_KxBxZ: jax.Array) -> jax.Array:
        """log p(x | z_k) for K latents per example: ``(K, B)``, decoded as one (K * B) batch."""
        num_samples, batch = z_KxBxZ.shape[:2]
        y_KB = None if y is None else jnp.broadcast_to(y[None], (num_samples,) + y.shape).reshape(
            (-1,) + y.shape[1:])
        out_KB = self.likelihood_params(z_KxBxZ.reshape((-1,) + z_KxBxZ.shape[2:]), y_KB)
        # x's shape, not out's: two-channel likelihoods have out_KBxDx2.
        x_KBxD = jnp.broadcast_to(x[None], (num_samples,) + x.shape).reshape((-1,) + x.shape[1:])
        return -likelihoods.reconstruction_nll(self.likelihood, out_KB, x_KBxD).reshape(
            num_samples, batch)

    def reconstruct_outputs(self, x: jax.Array, key: jax.Array | None = None,
                            y: jax.Array | None = None) -> jax.Array:
        """decode(z), z ~ q(z | x) drawn with ``key``, or the posterior mean if key is None."""
        mean_BxZ, logvar_BxZ = self.posterior(x, y)
        z_BxZ = (mean_BxZ if key is None
                 else distributions.reparameterize(key, mean_BxZ, logvar_BxZ))
        return self.likelihood_params(z_BxZ, y)


# ----------------------------------------------------------------------------------------------
# The pure functions: parameters and a batch in, arrays out.


def check_defined(model: nn.Module, quantity: str) -> None:
    """Raises ValueError when ``model`` does not define ``quantity`` (an interface method name).

    A module that is not a ``LatentVariableModel`` defines none of them.
    """
    if not isinstance(model, LatentVariableModel):
        raise TypeError(f"{type(model).__name__} does not implement the model interface "
                        "(jaxvae.models.interface.LatentVariableModel)")
    reason = model.undefined.get(quantity)
    if reason is not None:
        raise ValueError(reason)


def as_batch(model: nn.Module, batch) -> dict:
    """``{"x": x, "y": y}`` from a batch dict or an array of examples; y is None when absent.

    Raises:
      ValueError: a conditional model without labels.
    """
    if isinstance(batch, Mapping):
        if "x" not in batch:
            raise ValueError(f"a batch is a dict with 'x' (and 'y' for labels), got keys "
                             f"{sorted(batch)}")
        x, y = batch["x"], batch.get("y")
    else:
        x, y = batch, None
    if getattr(model, "conditional", False) and y is None:
        raise ValueError(f"{type(model).__name__} is conditioned on labels: pass the batch as "
                         "{'x': examples, 'y': int labels}")
    return {"x": x, "y": y}


def apply_method(model: nn.Module, params: Params, method: str, *args):
    """``model.<method>(*args)`` with ``params``, compiled: one XLA program per model, method,
    argument shapes and value of each int, bool or str argument (those are static, e.g. a sample
    count). Run op by op instead, each operation would be compiled and dispatched on its own.
    Inside a caller's transformation (``jax.jit``, ``jax.grad``, ...) the method is traced into
    the caller's program as it is; a model that cannot be hashed (a field holding a list or an
    array) runs op by op.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> from jaxvae.models import interface
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params = jaxvae.init(model, jax.random.key(0))
      >>> interface.apply_method(model, params, "log_prior", jnp.zeros((3, 2))).shape
      (3,)
    """
    if not _hashable(model) or any(isinstance(leaf, jax.core.Tracer)
                                   for leaf in jax.tree.leaves((params, args))):
        return model.apply({"params": params}, *args, method=getattr(type(model), method))
    static = tuple(i for i, a in enumerate(args) if isinstance(a, (bool, int, str)))
    dynamic = [a for i, a in enumerate(args) if i not in static]
    return _compiled_method(method, static, len(args))(
        model, tuple(args[i] for i in static), params, *dynamic)


@functools.lru_cache(maxsize=None)
def _compiled_method(method: str, static: tuple[int, ...], num_args: int):
    """The jitted ``(model, static_values, params, *dynamic_args) -> model.<method>(*args)``."""

    def run(model, static_values, params, *dynamic):
        values, rest = dict(zip(static, static_values)), iter(dynamic)
        args = [values[i] if i in values else next(rest) for i in range(num_args)]
        return model.apply({"params": params}, *args, method=getattr(type(model), method))

    return jax.jit(run, static_argnums=(0, 1))


def _hashable(model: nn.Module) -> bool:
    try:
        hash(model)
    except TypeError:
        return False
    return True


def init(model: nn.Module, key: jax.Array) -> Params:
    """The model's parameters from ``key``: those ``model.init`` creates on a batch of one
    example of the model's ``input_dtype`` (float32 unless it says otherwise), bit for bit, but
    without computing the model on that batch.

    Examples:
      >>> import jax, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params = jaxvae.init(model, jax.random.key(0))
      >>> sorted(params)
      ['decoder', 'encoder']
      >>> params["encoder"]["mean"]["kernel"].shape  # hidden 8 -> latent 2
      (8, 2)
    """
    validation.check_key(key)
    # Flax's lazy_init traces the model on the input's shape and runs only what the parameters
    # depend on (their initializers, op by op as init would): the same values as init, without
    # an eager forward pass. Op by op rather than as one program: each initializer's program
    # (a draw of one shape) is compiled once for every parameter of that shape in the process,
    # while one program per model compiles all of its initializers anew for each model.
    x_1xD = jax.ShapeDtypeStruct((1,) + tuple(model.data_shape),
                                 getattr(model, "input_dtype", jnp.float32))
    return model.lazy_init(key, x_1xD)["params"]


def params_for(model: nn.Module, params: Params, shapes: Params | None = None) -> Params:
    """``params`` as ``model``'s parameter tree (its dtypes), after checking that they have its
    parameter names and shapes. ``shapes``: the model's parameters as ``jax.ShapeDtypeStruct``
    leaves, for a model that ``init`` does not build (default: ``jax.eval_shape`` of ``init``).

    Raises:
      ValueError: a parameter missing, extra or of another shape (the first five named).

    Examples:
      >>> import jax, numpy as np, jaxvae
      >>> from jaxvae.models import interface
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> saved = jax.tree.map(np.asarray, jaxvae.init(model, jax.random.key(0)))
      >>> interface.params_for(model, saved)["encoder"]["mean"]["kernel"].shape
      (8, 2)
    """
    template = shapes if shapes is not None else jax.eval_shape(
        lambda: init(model, jax.random.key(0)))
    if jax.tree.structure(template) != jax.tree.structure(params):
        raise ValueError("the starting parameters do not have the model's parameters: "
                         f"{jax.tree.structure(params)} against {jax.tree.structure(template)}")
    mismatched = [jax.tree_util.keystr(path) for (path, t), p in zip(
        jax.tree_util.tree_leaves_with_path(template), jax.tree.leaves(params))
        if tuple(jnp.shape(p)) != tuple(t.shape)]
    if mismatched:
        raise ValueError("the starting parameters have other shapes than the model's at "
                         f"{', '.join(mismatched[:5])}")
    return jax.tree.map(lambda t, p: jnp.asarray(p, t.dtype), template, params)


def encode(model: nn.Module, params: Params, batch) -> Posterior:
    """q(z | x): ``Posterior(mean_BxZ, logvar_BxZ)``.

    For the planar-flow VAE the Gaussian q_0 before the flows; for the ladder VAE q(z_1 | ...)
    with the layers above at their posterior means.
    """
    check_defined(model, "posterior")
    batch = as_batch(model, batch)
    return apply_method(model, params, "posterior", batch["x"], batch["y"])


def decode(model: nn.Module, params: Params, z_BxZ: jax.Array, labels: jax.Array | None = None
           ) -> jax.Array:
    """The decoder outputs for ``z_BxZ`` (``labels``: the classes, for conditional models)."""
    check_defined(model, "likelihood_params")
    if getattr(model, "conditional", False) and labels is None:
        raise ValueError(f"{type(model).__name__} decodes with labels: pass labels (B,)")
    return apply_method(model, params, "likelihood_params", z_BxZ, labels)


def log_prior(model: nn.Module, params: Params, z: jax.Array) -> jax.Array:
    """log p(z) of the model's prior, over the last axis of z."""
    check_defined(model, "log_prior")
    return apply_method(model, params, "log_prior", z)


def sample(model: nn.Module, params: Params, key: jax.Array, n: int) -> jax.Array:
    """Decoder outputs of n draws from the model's prior (the labels cycle through the classes
    for conditional models)."""
    validation.check_key(key)
    n = validation.check_count(n, "n (the number of samples)")
    if hasattr(model, "sample_outputs"):
        return apply_method(model, params, "sample_outputs", key, n)
    z_NxZ = jax.random.normal(key, (n, model.latent_dim))
    return decode(model, params, z_NxZ)


def reconstruct(model: nn.Module, params: Params, batch, key: jax.Array | None = None
                ) -> jax.Array:
    """decode(z) with z ~ q(z | x) drawn with ``key`` (the posterior mean if None)."""
    batch = as_batch(model, batch)
    if isinstance(model, LatentVariableModel):
        return apply_method(model, params, "reconstruct_outputs", batch["x"], key, batch["y"])
    return apply_method(model, params, "reconstruct_outputs", batch["x"], key)


def elbo_terms(model: nn.Module, params: Params, batch, key: jax.Array) -> ElboTerms:
    """The one-sample negative-ELBO terms per example (``ElboTerms``); the training objective's.

        -ELBO_b = recon_b + kl_b,  recon_b = -log p(x_b | z_b),  z_b ~ q(z | x_b) (with ``key``)

    ``recon_B`` and ``kl_B`` are ``(B,)``; ``kl_BxZ`` the KL per latent dimension where it is
    analytic (else None).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> from jaxvae.models import interface
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params, x = jaxvae.init(model, jax.random.key(0)), jnp.zeros((3, 4))
      >>> terms = interface.elbo_terms(model, params, {"x": x}, jax.random.key(1))
      >>> terms.recon_B.shape, terms.kl_B.shape, terms.kl_BxZ.shape
      ((3,), (3,), (3, 2))
      >>> bool(jnp.allclose(terms.kl_B, jaxvae.gaussian_kl(*jaxvae.encode(model, params, x))))
      True
    """
    check_defined(model, "elbo_terms")
    batch = as_batch(model, batch)
    return apply_method(model, params, "elbo_terms", batch["x"], batch["y"], key)


def log_weight_terms(model: nn.Module, params: Params, batch, key: jax.Array,
                     num_samples: int) -> LogWeightTerms:
    """log p(x | z_k), log p(z_k), log q(z_k | x) for K draws z_k ~ q(z | x): each ``(K, B)``."""
    check_defined(model, "log_weights")
    batch = as_batch(model, batch)
    return apply_method(model, params, "log_weight_terms", batch["x"], batch["y"], key, num_samples)


def log_weights(model: nn.Module, params: Params, batch, key: jax.Array, num_samples: int
                ) -> jax.Array:
    """log w_KxB = log p(x, z_k) - log q(z_k | x), z_k ~ q(z | x), k = 1..K.

    For the planar-flow VAE log q includes the flows' log-determinants; for the ladder VAE
    z is every stochastic layer, p the top-down prior; for the conditional VAE the labels come
    from ``batch["y"]``. The IWAE bound is ``logsumexp_k log w_k - log K``; at K = 1 it is the
    one-sample ELBO estimate.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params = jaxvae.init(model, jax.random.key(0))
      >>> log_w = jaxvae.log_weights(model, params, {"x": jnp.zeros((3, 4))}, jax.random.key(1),
      ...                            num_samples=5)
      >>> log_w.shape  # (K, B)
      (5, 3)
      >>> jaxvae.iwae_bound(log_w).shape  # logsumexp_k log w_k - log K, per example
      (3,)
    """
    num_samples = validation.check_count(num_samples, "num_samples")
    return log_weight_terms(model, params, batch, key, num_samples).log_weights()


def example_size(model: nn.Module) -> int:
    """D, the number of values of one example."""
    return int(np.prod(model.data_shape))
