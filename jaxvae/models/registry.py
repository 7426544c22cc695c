"""Models by name: ``build(config, example_shape)`` returns the model and its training objective.

Every entry is a function ``(config, example_shape) -> Built``. The model implements the model
interface of ``jaxvae.models.interface``; the objective is a ``jaxvae.objectives.losses`` factory's
``loss_fn(params, batch, key, step) -> (loss, metrics)`` where ``batch`` is a dict with ``"x"``
(examples) and ``"y"`` (int labels, -1 where a dataset has none), so label-conditioned models
use the same training code as the others. ``metrics`` holds batch means in nats per example;
``loss``, ``recon`` and ``kl`` at least. ``conv`` and ``flow`` read ``latent_dim`` and
``hidden`` (the dense widths); ``vqvae`` and ``ladder`` have their own sizes (see TrainConfig).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import optax

from jaxvae.models import conditional
from jaxvae.models import conv
from jaxvae.models import flow as flows
from jaxvae.models import ladder
from jaxvae.objectives import losses
from jaxvae.training import step as train
from jaxvae.models import vq as vqvae
from jaxvae.models import builders


class Built(NamedTuple):
    model: nn.Module
    loss_fn: losses.LossFn  # (params, batch, key, step) -> (loss, metrics); batch {"x", "y"}


def _elbo(model: nn.Module, config) -> Built:
    return Built(model, builders.elbo_loss_from_config(model, config))


def _mlp(config, example_shape: tuple[int, ...]) -> Built:
    return _elbo(builders.make_model(config, example_shape), config)


def _iwae(config, example_shape: tuple[int, ...]) -> Built:
    model = builders.make_model(config, example_shape)
    return Built(model, losses.make_iwae_loss(model, getattr(config, "num_samples", 5)))


def _cvae(config, example_shape: tuple[int, ...]) -> Built:
    return Built(*conditional.build(config, example_shape))


def _conv(config, example_shape: tuple[int, ...]) -> Built:
    model = conv.conv_vae(config.conv_channels, config.hidden, config.latent_dim, example_shape,
                          config.likelihood)
    return _elbo(model, config)


def _vqvae(config, example_shape: tuple[int, ...]) -> Built:
    model = vqvae.vqvae(config.conv_channels, config.num_codes, config.code_dim, example_shape,
                        config.vq_ema, config.likelihood)
    return Built(model, losses.make_vq_loss(model, config.commitment_cost, config.vq_decay))


def _ladder(config, example_shape: tuple[int, ...]) -> Built:
    model = ladder.ladder_vae(config.ladder_latents, config.ladder_hidden, example_shape,
                              config.likelihood)
    return _elbo(model, config)


def _flow(config, example_shape: tuple[int, ...]) -> Built:
    model = flows.flow_vae(config.hidden, config.latent_dim, config.flow_steps, example_shape,
                           config.likelihood)
    return _elbo(model, config)


MODELS: dict[str, Callable[[Any, tuple[int, ...]], Built]] = {
    "mlp": _mlp,
    "conv": _conv,
    "cvae": _cvae,
    "flow": _flow,
    "iwae": _iwae,
    "ladder": _ladder,
    "vqvae": _vqvae,
}


def check_model(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")


def build(config, example_shape: tuple[int, ...]) -> Built:
    """The config's model for examples of ``example_shape``, and its objective."""
    check_model(config.model)
    return MODELS[config.model](config, tuple(example_shape))


def optimizer(config) -> optax.GradientTransformation:
    """The config's optimizer: Adam at ``config.lr`` on its ``lr_schedule`` over the run's steps
    (``builders.prepare`` fills them in); for a VQ-VAE with an EMA codebook, SGD with learning
    rate 1 on the EMA statistics (``vqvae.ema_optimizer``)."""
    tx = train.make_optimizer(config.lr, clip_norm=getattr(config, "clip_norm", None),
                              schedule=getattr(config, "lr_schedule", "constant"),
                              total_steps=getattr(config, "lr_total_steps", 0),
                              eps=getattr(config, "adam_eps", 1e-8))
    if config.model == "vqvae" and getattr(config, "vq_ema", False):
        return vqvae.ema_optimizer(tx)
    return tx
