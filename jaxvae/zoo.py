"""The model zoo's MLP VAE and its objectives: learned priors, learned-scale likelihoods, KL
schedules, free bits, and the IWAE bound as a training loss.

``ZooVAE`` is the MLP VAE of ``jaxvae.models`` with two additions: a prior submodule (see
``jaxvae.priors``) whose parameters live in ``params["prior"]``, and a decoder sized by the
likelihood (two outputs per dimension for learned scales, see ``jaxvae.likelihoods``). With the
standard prior and a one-output likelihood its parameters are exactly those of ``models.VAE``.

Objectives (pure ``loss_fn(params, batch, key, step) -> (loss, metrics)``, batch {"x", "y"}):

    elbo_loss_fn   mean_b[-log p(x_b | z_b)] + beta * w(step) * KL-term
                   KL-term = mean_b KL_b, or sum_j max(lambda, mean_b KL_bj) with free bits;
                   KL analytic for the standard and diagonal priors, one-sample Monte Carlo
                   log q(z|x) - log p(z) for the mixture priors.
    iwae_loss_fn   -mean_b [logsumexp_k log w_kb - log K]   (Burda et al. 2016)

Metrics: ``loss`` (the optimized objective), ``recon``, ``kl`` (the true KL or its estimate,
never floored or weighted; recon + kl is the negative ELBO), ``kl_weight`` (beta * w(step)),
``kl_free_bits`` (with free bits), ``bits_per_dim`` (logistic likelihood).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import distributions, likelihoods, models, objectives, priors, schedules

Params = Any
ONE_OUTPUT_LIKELIHOODS = ("bernoulli", "gaussian")  # the foundation's, served by models.VAE


class ZooVAE(nn.Module):
    """An MLP VAE with a choice of prior and likelihood.

    Attributes:
      hidden: encoder hidden widths; the decoder uses them reversed.
      latent_dim: Z.
      data_shape: the shape of one example.
      likelihood: a name from ``jaxvae.objectives.LIKELIHOODS``; sets the decoder's outputs.
      prior_name: one of ``jaxvae.priors.PRIORS``.
      num_components: K of the mog and vamp priors.
      torch_init: PyTorch's default layer init instead of Flax's.
    """

    hidden: Sequence[int] = (400,)
    latent_dim: int = 20
    data_shape: tuple[int, ...] = (784,)
    likelihood: str = "bernoulli"
    prior_name: str = "standard"
    num_components: int = 10
    torch_init: bool = True

    def setup(self):
        self.encoder = models.Encoder(tuple(self.hidden), self.latent_dim, self.torch_init)
        out_shape = tuple(self.data_shape)
        if likelihoods.output_channels(self.likelihood) == 2 and not self._global_scale:
            out_shape = out_shape + (2,)  # [..., 0] location, [..., 1] raw log-scale
        self.decoder = models.Decoder(tuple(reversed(self.hidden)), out_shape, self.torch_init)
        if self._global_scale:
            self.output_logvar = self.param("output_logvar", nn.initializers.zeros, ())
        self.prior = priors.make_prior(self.prior_name, self.latent_dim, tuple(self.data_shape),
                                       self.num_components)

    @property
    def _global_scale(self) -> bool:
        return self.likelihood == "gaussian_global"

    def _outputs(self, out: jax.Array) -> jax.Array:
        if self._global_scale:  # one learned log-variance, broadcast to every dimension
            return jnp.stack([out, jnp.broadcast_to(self.output_logvar, out.shape)], axis=-1)
        return out

    def encode(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(x_BxD)

    def decode(self, z_BxZ: jax.Array) -> jax.Array:
        return self._outputs(self.decoder(z_BxZ))

    def prior_mixture(self) -> priors.Mixture:
        """The prior as a mixture (K = 1 for the Gaussian priors)."""
        if self.prior_name == "vamp":
            return priors.vamp_mixture(*self.encode(self.prior()))
        return self.prior()

    def prior_log_prob(self, z: jax.Array) -> jax.Array:
        """log p(z) over the last axis; any leading axes."""
        if self.prior_name == "standard":
            return distributions.standard_normal_log_prob(z)
        return priors.mixture_log_prob(z, self.prior_mixture())

    def kl_per_dim(self, mean_BxZ: jax.Array, logvar_BxZ: jax.Array) -> jax.Array:
        """Analytic KL(q(z|x) || p(z)) per latent dimension (standard and diagonal priors)."""
        if self.prior_name == "standard":
            return priors.standard_kl_per_dim(mean_BxZ, logvar_BxZ)
        mixture = self.prior_mixture()
        return priors.diagonal_kl_per_dim(mean_BxZ, logvar_BxZ, mixture.mean_KxZ,
                                          mixture.logvar_KxZ)

    def sample_latent(self, key: jax.Array, n: int) -> jax.Array:
        """n draws z_NxZ from the prior."""
        if self.prior_name == "standard":  # the same numbers as models.sample's N(0, I)
            return jax.random.normal(key, (n, self.latent_dim))
        return priors.sample_mixture(key, n, self.prior_mixture())

    def sample_outputs(self, key: jax.Array, n: int) -> jax.Array:
        """Decoder outputs of n draws from the prior (what ``jaxvae.sample`` returns)."""
        return self.decode(self.sample_latent(key, n))

    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        """Decodes the posterior mean and touches the prior (creates every parameter)."""
        mean_BxZ, _ = self.encode(x_BxD)
        self.prior_mixture()
        return self.decode(mean_BxZ)


def _conditioning(model: nn.Module, batch: dict) -> tuple:
    """The extra arguments of encode / decode: the labels for a conditional model."""
    return (batch["y"],) if getattr(model, "num_classes", 0) else ()


def log_prior_fn(model: nn.Module, params: Params) -> Callable[[jax.Array], jax.Array]:
    """log p(z) of the model's prior as a function of z (for ``log_importance_weights``).

    The standard normal for models without a prior of their own (``models.VAE``).
    """
    if not hasattr(model, "prior_log_prob"):
        return distributions.standard_normal_log_prob
    return lambda z: model.apply({"params": params}, z, method=model.prior_log_prob)


class ElboTerms(NamedTuple):
    recon_B: jax.Array  # -log p(x | z), z ~ q(z | x) reparameterized
    kl_B: jax.Array  # KL(q || p): analytic, or the one-sample Monte Carlo estimate
    kl_BxZ: jax.Array | None  # per-dimension analytic KL (None for mixture priors)


def elbo_terms(model: nn.Module, params: Params, batch: dict, key: jax.Array) -> ElboTerms:
    """Per-example reconstruction NLL and KL with eps = jax.random.normal(key, (B, Z)).

    The same eps as ``jaxvae.loss`` with the same key; for the standard prior the KL is
    ``jaxvae.gaussian_kl`` itself, so the loss is the foundation's to the last bit.
    """
    apply = lambda method, *args: model.apply({"params": params}, *args, method=method)
    x, cond = batch["x"], _conditioning(model, batch)
    mean_BxZ, logvar_BxZ = apply(model.encode, x, *cond)
    eps_BxZ = jax.random.normal(key, mean_BxZ.shape, mean_BxZ.dtype)
    z_BxZ = distributions.shift_and_scale(mean_BxZ, logvar_BxZ, eps_BxZ)
    out = apply(model.decode, z_BxZ, *cond)
    recon_B = objectives.reconstruction_nll(model.likelihood, out, x)
    if model.prior_name in priors.ANALYTIC_KL:
        kl_BxZ = apply(model.kl_per_dim, mean_BxZ, logvar_BxZ)
        kl_B = (distributions.gaussian_kl(mean_BxZ, logvar_BxZ) if model.prior_name == "standard"
                else jnp.sum(kl_BxZ, axis=-1))
        return ElboTerms(recon_B, kl_B, kl_BxZ)
    # A mixture prior: KL has no closed form; log q(z|x) - log p(z) at the same z (unbiased).
    kl_B = (distributions.gaussian_log_prob(z_BxZ, mean_BxZ, logvar_BxZ)
            - apply(model.prior_log_prob, z_BxZ))
    return ElboTerms(recon_B, kl_B, None)


def check_free_bits(free_bits: float, prior_name: str) -> float:
    if isinstance(free_bits, bool) or not isinstance(free_bits, (int, float)):
        raise TypeError(f"free_bits must be a number, got {free_bits!r}")
    if not math.isfinite(free_bits) or free_bits < 0:
        raise ValueError(f"free_bits must be a finite number >= 0 (nats per latent dimension), "
                         f"got {free_bits}")
    if free_bits > 0 and prior_name not in priors.ANALYTIC_KL:
        raise ValueError(f"free bits need a KL per latent dimension, which the {prior_name} "
                         f"prior does not have; use --prior {' or '.join(priors.ANALYTIC_KL)}")
    return float(free_bits)


def elbo_loss_fn(model: nn.Module, beta: float = 1.0,
                 kl_schedule: schedules.Schedule | None = None, free_bits: float = 0.0):
    """``loss_fn(params, batch, key, step)``: the beta-weighted, scheduled, free-bits -ELBO.

        loss = mean_b recon_b + beta * w(step) * KL-term

    with KL-term = mean_b KL_b, or with ``free_bits`` = lambda > 0 the term
    sum_j max(lambda, mean_b KL_bj) of ``schedules.free_bits_kl`` (analytic priors only).
    With beta = 1, the constant schedule, no free bits, the standard prior and the Bernoulli
    likelihood it equals ``jaxvae.loss`` exactly.

    Args:
      model: a ``ZooVAE`` (or ``conditional.CVAE``).
      beta: the KL weight (the beta-VAE's beta, Higgins et al. 2017), >= 0.
      kl_schedule: ``w(step)`` from ``jaxvae.schedules`` (default constant 1).
      free_bits: lambda, nats per latent dimension (0 = off).
    """
    free_bits = check_free_bits(free_bits, model.prior_name)
    kl_schedule = kl_schedule or schedules.constant_schedule()
    num_dims = int(np.prod(model.data_shape))

    def loss_fn(params, batch, key, step):
        terms = elbo_terms(model, params, batch, key)
        weight = beta * kl_schedule(step)
        if free_bits > 0:
            kl_term, _ = schedules.free_bits_kl(terms.kl_BxZ, free_bits)
            recon = jnp.mean(terms.recon_B)
            loss = recon + weight * kl_term
            metrics = {"loss": loss, "recon": recon, "kl": jnp.mean(terms.kl_B),
                       "kl_free_bits": kl_term}
        else:
            loss, metrics = objectives.batch_metrics(terms.recon_B, terms.kl_B, weight)
        metrics["kl_weight"] = weight
        if model.likelihood == "logistic":
            metrics["bits_per_dim"] = likelihoods.bits_per_dim(
                metrics["recon"] + metrics["kl"], num_dims)
        return loss, metrics

    return loss_fn


def iwae_loss_fn(model: nn.Module, num_samples: int):
    """``loss_fn(params, batch, key, step)``: the negative K-sample IWAE bound (Burda et al. 2016).

        loss = -mean_b [logsumexp_k log w_kb - log K],
        log w_kb = log p(x_b | z_kb) + log p(z_kb) - log q(z_kb | x_b),  z_kb ~ q(z | x_b)

    built on ``objectives.log_importance_weights`` (eps_KxBxZ = normal(key, (K, B, Z))) with
    the model's own prior. The gradient weights each sample by its normalized importance
    weight. At K = 1 the loss is minus the one-sample Monte Carlo ELBO estimate
    log p(x|z) + log p(z) - log q(z|x), which differs from ``jaxvae.loss`` (analytic KL) by the
    KL's Monte Carlo error. Metrics ``recon`` and ``kl`` are the averages over the K samples
    of -log p(x|z) and of log q(z|x) - log p(z) (the Monte Carlo KL), so recon + kl is the
    average one-sample -ELBO, an upper bound of ``loss``.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples (K) must be an int >= 1, got {num_samples!r}")

    def loss_fn(params, batch, key, step):
        del step
        x = batch["x"]
        log_prior = log_prior_fn(model, params)
        log_w_KxB = objectives.log_importance_weights(model, params, x, key, num_samples,
                                                      model.likelihood, log_prior)
        # The same z_k again (same key) for the metrics; XLA shares the encoder pass.
        mean_BxZ, logvar_BxZ = models.encode(model, params, x)
        eps_KxBxZ = jax.random.normal(key, (num_samples,) + mean_BxZ.shape, mean_BxZ.dtype)
        z_KxBxZ = distributions.shift_and_scale(mean_BxZ[None], logvar_BxZ[None], eps_KxBxZ)
        kl_KxB = (distributions.gaussian_log_prob(z_KxBxZ, mean_BxZ[None], logvar_BxZ[None])
                  - log_prior(z_KxBxZ))
        loss = -jnp.mean(objectives.iwae_bound(log_w_KxB))
        return loss, {"loss": loss, "recon": -jnp.mean(log_w_KxB + kl_KxB),
                      "kl": jnp.mean(kl_KxB)}

    return loss_fn


# --------------------------------------------------------------------------------------------
# Configuration: what the registry builds from a TrainConfig (fields of "issue 7a").

def _get(config, name: str, default):
    return getattr(config, name, default)


def uses_zoo(config) -> bool:
    """True when the "mlp" model needs ZooVAE / the zoo loss instead of the foundation's."""
    return (_get(config, "prior", "standard") != "standard"
            or config.likelihood not in ONE_OUTPUT_LIKELIHOODS
            or _get(config, "kl_schedule", "constant") != "constant"
            or _get(config, "free_bits", 0.0) != 0)


def make_model(config, example_shape: tuple[int, ...], cls: type = None, **extra) -> ZooVAE:
    """A ZooVAE (or ``cls``) from the config, with the checks of ``models.mlp_vae``."""
    base = models.mlp_vae(config.hidden, config.latent_dim, example_shape)
    cls = cls or ZooVAE
    return cls(hidden=tuple(base.hidden), latent_dim=base.latent_dim,
               data_shape=tuple(base.data_shape), likelihood=config.likelihood,
               prior_name=_get(config, "prior", "standard"),
               num_components=_get(config, "prior_components", 10), **extra)


def make_schedule(config) -> schedules.Schedule:
    name = _get(config, "kl_schedule", "constant")
    total = _get(config, "kl_total_steps", 0)
    if name == "cyclical" and total == 0:
        raise ValueError("the cyclical KL schedule needs kl_total_steps: trainer.fit fills it in "
                         "from epochs and the data size; set it when you build a model yourself")
    return schedules.make_kl_schedule(name, warmup_steps=_get(config, "kl_warmup_steps", 0),
                                      total_steps=total, cycles=_get(config, "kl_cycles", 4),
                                      ramp_fraction=_get(config, "kl_ramp_fraction", 0.5))


def elbo_loss_from_config(model: nn.Module, config) -> Callable:
    return elbo_loss_fn(model, config.beta, make_schedule(config), _get(config, "free_bits", 0.0))


def build_mlp(config, example_shape: tuple[int, ...]):
    """``(model, loss_fn)`` of the "mlp" model with a zoo prior, likelihood, schedule or free bits."""
    model = make_model(config, example_shape)
    return model, elbo_loss_from_config(model, config)


def build_iwae(config, example_shape: tuple[int, ...]):
    """``(model, loss_fn)`` of ``--model iwae``: a ZooVAE trained on the K-sample bound."""
    model = make_model(config, example_shape)
    return model, iwae_loss_fn(model, _get(config, "num_samples", 5))


def check_config(config) -> None:
    """Raises ValueError / TypeError for a zoo setting that cannot work (before any training)."""
    prior = _get(config, "prior", "standard")
    priors.check_prior(prior, _get(config, "prior_components", 10))
    name = _get(config, "kl_schedule", "constant")
    if name not in schedules.KL_SCHEDULES:
        raise ValueError(f"unknown KL schedule {name!r}; choose one of "
                         f"{list(schedules.KL_SCHEDULES)}")
    for field in ("kl_warmup_steps", "kl_cycles", "kl_total_steps", "num_samples",
                  "prior_components", "num_classes"):
        value = _get(config, field, 1)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{field} must be an int, got {value!r}")
    if name == "linear" and _get(config, "kl_warmup_steps", 0) < 1:
        raise ValueError("the linear KL schedule needs --kl-warmup-steps >= 1 (the steps to reach "
                         f"the full KL weight), got {_get(config, 'kl_warmup_steps', 0)}")
    if name == "cyclical":
        if _get(config, "kl_total_steps", 0) < 0:
            raise ValueError("kl_total_steps must be >= 0 (0 = the run's number of steps)")
        schedules.cyclical_schedule(max(_get(config, "kl_total_steps", 0),
                                        _get(config, "kl_cycles", 4)),
                                    _get(config, "kl_cycles", 4),
                                    _get(config, "kl_ramp_fraction", 0.5))
    check_free_bits(_get(config, "free_bits", 0.0), prior)
    if _get(config, "num_samples", 1) < 1:
        raise ValueError(f"num_samples (K) must be >= 1, got {config.num_samples}")
    if config.model == "iwae":
        if (name != "constant" or _get(config, "free_bits", 0.0) != 0 or config.beta != 1):
            raise ValueError("the IWAE bound has no separate KL term: --model iwae takes no "
                             "--beta, --kl-schedule or --free-bits")
    if config.model == "cvae":
        if _get(config, "num_classes", 10) < 2:
            raise ValueError(f"num_classes must be >= 2 for the cvae, got {config.num_classes}")
        if prior == "vamp":
            raise ValueError("the cvae does not support the vamp prior (its pseudo-inputs have no "
                             "labels); use --prior standard, diagonal or mog")


def steps_per_run(config, num_train: int) -> int:
    """epochs * ceil(num_train / batch_size): the updates of a run (the remainder batch counts)."""
    return config.epochs * math.ceil(num_train / config.batch_size)


def prepare(config, data) -> Any:
    """Fills the config's run-dependent zoo fields and checks the data the zoo models need.

    Resolves ``kl_total_steps = 0`` of the cyclical schedule to the run's number of steps;
    checks the labels of the cvae (ints in [0, num_classes)) and that data for the logistic
    likelihood is 8-bit (k / 255). Called by ``trainer.fit`` before it builds the model.
    """
    if _get(config, "kl_schedule", "constant") == "cyclical" and _get(config, "kl_total_steps",
                                                                       0) == 0:
        config = dataclasses.replace(config, kl_total_steps=steps_per_run(config,
                                                                          len(data.x_train)))
    if config.model == "cvae":
        num_classes = _get(config, "num_classes", 10)
        for split, y in (("training", data.y_train), ("test", data.y_test)):
            y = np.asarray(y)
            if y.size and (y.min() < 0 or y.max() >= num_classes):
                raise ValueError(f"the cvae needs {split} labels in [0, {num_classes}), got "
                                 f"[{y.min()}, {y.max()}]; a dataset without labels (-1) cannot "
                                 "train it (or set --num-classes)")
    if config.likelihood == "logistic":
        for split, x in (("training", data.x_train), ("test", data.x_test)):
            x = np.asarray(x)
            levels = x * (likelihoods.NUM_BINS - 1)
            if x.min() < 0 or x.max() > 1 or np.abs(levels - np.round(levels)).max() > 1e-3:
                raise ValueError(f"the logistic likelihood needs 8-bit {split} data scaled to "
                                 "[0, 1] (values k / 255); use the gaussian or bernoulli "
                                 "likelihood for other data")
    return config
