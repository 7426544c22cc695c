"""The MLP VAE from a config: its priors, likelihoods, KL schedules and free bits, checked.

``make_model`` builds ``models.VAE`` with the config's prior (see ``jaxvae.models.priors``) and
likelihood (see ``jaxvae.likelihoods``); ``make_schedule`` builds the KL schedule;
``check_config`` refuses settings that cannot work before any training; ``prepare`` fills the
run-dependent fields and checks the data. The objectives are those of ``jaxvae.objectives.losses``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxvae import distributions, likelihoods
from jaxvae.models import interface
from jaxvae.objectives import losses
from jaxvae.models import mlp as models
from jaxvae.models import priors
from jaxvae.objectives import schedules

Params = Any


def log_prior_fn(model: nn.Module, params: Params) -> Callable[[jax.Array], jax.Array]:
    """log p(z) of the model's prior as a function of z (for ``log_importance_weights``).

    The standard normal for models without a prior of their own.
    """
    if not hasattr(model, "log_prior"):
        return distributions.standard_normal_log_prob
    return lambda z: model.apply({"params": params}, z, method=type(model).log_prior)


def elbo_terms(model: nn.Module, params: Params, batch: dict, key: jax.Array
               ) -> interface.ElboTerms:
    """``interface.elbo_terms``: recon_B, kl_B and kl_BxZ with eps = normal(key, (B, Z))."""
    return interface.elbo_terms(model, params, batch, key)


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


def _get(config, name: str, default):
    return getattr(config, name, default)


def make_model(config, example_shape: tuple[int, ...], cls: type = None, **extra) -> models.VAE:
    """The config's MLP VAE (or ``cls``, a subclass) with the checks of ``models.mlp_vae``."""
    base = models.mlp_vae(config.hidden, config.latent_dim, example_shape,
                          activation=_get(config, "activation", "relu"))
    cls = cls or models.VAE
    return cls(hidden=tuple(base.hidden), latent_dim=base.latent_dim,
               data_shape=tuple(base.data_shape), likelihood=config.likelihood,
               prior_name=_get(config, "prior", "standard"),
               num_components=_get(config, "prior_components", 10),
               activation=base.activation, **extra)


def make_schedule(config) -> schedules.Schedule:
    name = _get(config, "kl_schedule", "constant")
    total = _get(config, "kl_total_steps", 0)
    if name == "cyclical" and total == 0:
        raise ValueError("the cyclical KL schedule needs kl_total_steps: trainer.fit fills it in "
                         "from epochs and the data size; set it when you build a model yourself")
    return schedules.make_kl_schedule(name, warmup_steps=_get(config, "kl_warmup_steps", 0),
                                      total_steps=total, cycles=_get(config, "kl_cycles", 4),
                                      ramp_fraction=_get(config, "kl_ramp_fraction", 0.5))


def elbo_loss_from_config(model: nn.Module, config) -> losses.LossFn:
    """``losses.make_elbo_loss`` with the config's beta, KL schedule and free bits."""
    return losses.make_elbo_loss(model, config.beta, make_schedule(config),
                                 _get(config, "free_bits", 0.0))


def check_config(config) -> None:
    """Raises ValueError / TypeError for a prior, schedule or objective setting that cannot work."""
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
    """Fills the config's run-dependent fields and checks the data that the models need.

    Resolves ``kl_total_steps = 0`` of the cyclical schedule and ``lr_total_steps = 0`` of a
    decaying learning-rate schedule to the run's number of steps;
    checks the labels of the cvae (ints in [0, num_classes)) and that data for the logistic
    likelihood is 8-bit (k / 255). Called by ``trainer.fit`` before it builds the model.
    """
    if _get(config, "kl_schedule", "constant") == "cyclical" and _get(config, "kl_total_steps",
                                                                       0) == 0:
        config = dataclasses.replace(config, kl_total_steps=steps_per_run(config,
                                                                          len(data.x_train)))
    if _get(config, "lr_schedule", "constant") != "constant" and _get(config, "lr_total_steps",
                                                                        0) == 0:
        config = dataclasses.replace(config, lr_total_steps=steps_per_run(config,
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
