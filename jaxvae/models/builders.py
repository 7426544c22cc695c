"""The MLP VAE from a config: its priors, likelihoods, KL schedules and free bits, checked.

``make_model`` builds ``models.VAE`` with the config's prior (see ``jaxvae.models.priors``) and
likelihood (see ``jaxvae.likelihoods``); ``elbo_loss_from_config`` its objective with the KL
schedule; ``prepare`` fills the run-dependent fields and checks the data. Each reads the
sections of a ``jaxvae.TrainConfig``. The objectives are those of ``jaxvae.objectives.losses``.
"""

from __future__ import annotations

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


def make_model(config, example_shape: tuple[int, ...], cls: type = None, **extra) -> models.VAE:
    """The ``TrainConfig``'s MLP VAE (or ``cls``, a subclass) with the checks of
    ``models.mlp_vae``."""
    m = config.model
    base = models.mlp_vae(m.hidden, m.latent_dim, example_shape, activation=m.activation,
                          precision_name=m.precision)
    cls = cls or models.VAE
    return cls(hidden=tuple(base.hidden), latent_dim=base.latent_dim,
               data_shape=tuple(base.data_shape), likelihood=m.likelihood,
               prior_name=m.prior, num_components=m.prior_components,
               activation=base.activation, dtype=base.dtype, **extra)


def elbo_loss_from_config(model: nn.Module, config) -> losses.LossFn:
    """``losses.make_elbo_loss`` with the ``TrainConfig``'s beta, KL schedule and free bits."""
    objective = config.objective
    return losses.make_elbo_loss(model, objective.beta, objective.kl_schedule_fn(),
                                 objective.free_bits)


def steps_per_run(config, num_train: int) -> int:
    """epochs * ceil(num_train / batch_size): the updates of a run (the remainder batch counts)."""
    return config.run.epochs * math.ceil(num_train / config.optimizer.batch_size)


def prepare(config, data) -> Any:
    """Fills the config's run-dependent fields and checks the data that the models need.

    Resolves ``kl_total_steps = 0`` of the cyclical schedule and ``lr_total_steps = 0`` of a
    decaying learning-rate schedule to the run's number of steps;
    checks the labels of the cvae (ints in [0, num_classes)) and that data for the logistic
    likelihood is 8-bit (k / 255). Called by ``trainer.fit`` before it builds the model.
    """
    objective, optimizer = config.objective, config.optimizer
    if objective.kl_schedule == "cyclical" and objective.kl_total_steps == 0:
        config = config.replace(kl_total_steps=steps_per_run(config, len(data.x_train)))
    if optimizer.lr_schedule != "constant" and optimizer.lr_total_steps == 0:
        config = config.replace(lr_total_steps=steps_per_run(config, len(data.x_train)))
    if config.model.name == "cvae":
        num_classes = config.model.num_classes
        for split, y in (("training", data.y_train), ("test", data.y_test)):
            y = np.asarray(y)
            if y.size and (y.min() < 0 or y.max() >= num_classes):
                raise ValueError(f"the cvae needs {split} labels in [0, {num_classes}), got "
                                 f"[{y.min()}, {y.max()}]; a dataset without labels (-1) cannot "
                                 "train it (or set --num-classes)")
    if config.model.likelihood == "logistic":
        for split, x in (("training", data.x_train), ("test", data.x_test)):
            x = np.asarray(x)
            levels = x * (likelihoods.NUM_BINS - 1)
            if x.min() < 0 or x.max() > 1 or np.abs(levels - np.round(levels)).max() > 1e-3:
                raise ValueError(f"the logistic likelihood needs 8-bit {split} data scaled to "
                                 "[0, 1] (values k / 255); use the gaussian or bernoulli "
                                 "likelihood for other data")
    return config
