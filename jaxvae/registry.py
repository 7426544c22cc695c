"""Models by name: ``build(config, example_shape)`` returns the model and its training objective.

Every entry is a function ``(config, example_shape) -> Built``. The objective is a pure
``loss_fn(params, batch, key, step) -> (loss, metrics)`` where ``batch`` is a dict with ``"x"``
(examples) and ``"y"`` (int labels, -1 where a dataset has none), so label-conditioned models
use the same training code as the others. ``metrics`` holds batch means in nats per example;
``loss``, ``recon`` and ``kl`` at least.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import optax

from jaxvae import conditional, conv, flows, ladder, models, train, vqvae, zoo


class Built(NamedTuple):
    model: nn.Module
    loss_fn: train.LossFn  # (params, batch, key, step) -> (loss, metrics); batch {"x", "y"}


def _mlp(config, example_shape: tuple[int, ...]) -> Built:
    if zoo.uses_zoo(config):  # issue 7a: learned priors, likelihoods, KL schedules, free bits
        return Built(*zoo.build_mlp(config, example_shape))
    model = models.mlp_vae(config.hidden, config.latent_dim, example_shape)
    vae_loss = train.vae_loss_fn(model, config.beta, config.likelihood)
    return Built(model, lambda params, batch, key, step: vae_loss(params, batch["x"], key, step))


# issue 7b: architectures. ``conv`` and ``flow`` read ``latent_dim`` and ``hidden`` (the dense
# widths); ``vqvae`` and ``ladder`` have their own sizes (see TrainConfig).
def _x_only(loss) -> train.LossFn:
    return lambda params, batch, key, step: loss(params, batch["x"], key)


def _conv(config, example_shape: tuple[int, ...]) -> Built:
    model = conv.conv_vae(config.conv_channels, config.hidden, config.latent_dim, example_shape)
    vae_loss = train.vae_loss_fn(model, config.beta, config.likelihood)
    return Built(model, lambda params, batch, key, step: vae_loss(params, batch["x"], key, step))


def _vqvae(config, example_shape: tuple[int, ...]) -> Built:
    model = vqvae.vqvae(config.conv_channels, config.num_codes, config.code_dim, example_shape,
                        config.vq_ema)
    return Built(model, _x_only(lambda params, x, key: vqvae.vqvae_loss(
        model, params, x, config.likelihood, config.commitment_cost, config.vq_decay)))


def _ladder(config, example_shape: tuple[int, ...]) -> Built:
    model = ladder.ladder_vae(config.ladder_latents, config.ladder_hidden, example_shape)
    return Built(model, _x_only(lambda params, x, key: ladder.ladder_loss(
        model, params, x, key, config.beta, config.likelihood)))


def _flow(config, example_shape: tuple[int, ...]) -> Built:
    model = flows.flow_vae(config.hidden, config.latent_dim, config.flow_steps, example_shape)
    return Built(model, _x_only(lambda params, x, key: flows.flow_loss(
        model, params, x, key, config.beta, config.likelihood)))


MODELS: dict[str, Callable[[Any, tuple[int, ...]], Built]] = {
    "mlp": _mlp,
    "conv": _conv,  # issue 7b
    "vqvae": _vqvae,  # issue 7b
    "ladder": _ladder,  # issue 7b
    "flow": _flow,  # issue 7b
}
# issue 7a: the IWAE objective and the conditional VAE
MODELS["iwae"] = lambda config, example_shape: Built(*zoo.build_iwae(config, example_shape))
MODELS["cvae"] = lambda config, example_shape: Built(*conditional.build(config, example_shape))


def check_model(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")


def build(config, example_shape: tuple[int, ...]) -> Built:
    """The config's model for examples of ``example_shape``, and its objective."""
    check_model(config.model)
    return MODELS[config.model](config, tuple(example_shape))


def optimizer(config) -> optax.GradientTransformation:
    """The config's optimizer: Adam at ``config.lr``; for a VQ-VAE with an EMA codebook, SGD with
    learning rate 1 on the EMA statistics (``vqvae.ema_optimizer``, issue 7b)."""
    tx = train.make_optimizer(config.lr, clip_norm=getattr(config, "clip_norm", None))
    if config.model == "vqvae" and getattr(config, "vq_ema", False):
        return vqvae.ema_optimizer(tx)
    return tx
