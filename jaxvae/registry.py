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

from jaxvae import conditional, models, train, zoo


class Built(NamedTuple):
    model: nn.Module
    loss_fn: train.LossFn  # (params, batch, key, step) -> (loss, metrics); batch {"x", "y"}


def _mlp(config, example_shape: tuple[int, ...]) -> Built:
    if zoo.uses_zoo(config):  # issue 7a: learned priors, likelihoods, KL schedules, free bits
        return Built(*zoo.build_mlp(config, example_shape))
    model = models.mlp_vae(config.hidden, config.latent_dim, example_shape)
    vae_loss = train.vae_loss_fn(model, config.beta, config.likelihood)
    return Built(model, lambda params, batch, key, step: vae_loss(params, batch["x"], key, step))


MODELS: dict[str, Callable[[Any, tuple[int, ...]], Built]] = {
    "mlp": _mlp,
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
