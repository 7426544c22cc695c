"""Models by name: ``build(config, example_shape)`` returns the model and its training objective.

Every entry is a function ``(config, example_shape) -> Built``. The model implements the model
interface of ``jaxvae.models.interface``; the objective is a ``jaxvae.objectives.losses`` factory's
``loss_fn(params, batch, key, step) -> (loss, metrics)`` where ``batch`` is a dict with ``"x"``
(examples) and ``"y"`` (int labels, -1 where a dataset has none), so label-conditioned models
use the same training code as the others. ``metrics`` holds batch means in nats per example;
``loss``, ``recon`` and ``kl`` at least. ``conv`` and ``flow`` read ``latent_dim`` and
``hidden`` (the dense widths); ``vqvae`` and ``ladder`` have their own sizes (see ``ModelConfig``,
the model section of a training config, defined and validated here).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import optax

from jaxvae.models import conditional
from jaxvae.models import conv
from jaxvae.models import flow as flows
from jaxvae.models import ladder
from jaxvae.objectives import losses
from jaxvae.models import vq as vqvae
from jaxvae.models import builders
from jaxvae.models import mlp
from jaxvae.models import precision
from jaxvae.models import priors
from jaxvae.objectives import bounds

MAX_WIDTH = 2**31  # layer widths and latent sizes stay below this


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model section of a training config: the family, its sizes, its prior and likelihood."""

    name: str = dataclasses.field(default="mlp", metadata={"flat_name": "model"})  # the model
    #   family (jaxvae.models.registry.MODELS)
    latent_dim: int = 20  # Z, the size of the latent code (the reference's 20)
    hidden: tuple[int, ...] = (400,)  # encoder hidden widths; the decoder mirrors them
    activation: str = "relu"  # the MLP's hidden nonlinearity: relu (the reference's) or tanh
    #   (the IWAE paper's)
    likelihood: str = "bernoulli"  # p(x | z): bernoulli (BCE), gaussian (unit variance, MSE),
    #   gaussian_learned (per-pixel variance from the decoder), gaussian_global (one learned
    #   variance), logistic (discretized logistic)
    prior: str = "standard"  # p(z): standard, diagonal (learned), mog (mixture of Gaussians),
    #   vamp (VampPrior) (jaxvae.models.priors)
    prior_components: int = 10  # K components of the mog prior, pseudo-inputs of vamp
    num_classes: int = 10  # C labels of the cvae model
    conv_channels: tuple[int, ...] = (32, 64)  # conv/vqvae: widths of the stride-2 4x4 convs
    num_codes: int = 64  # vqvae: K, the number of codebook vectors
    code_dim: int = 16  # vqvae: D, the size of one codebook vector
    vq_ema: bool = False  # vqvae: codebook as moving averages of the encoder outputs (no loss)
    vq_decay: float = 0.99  # vqvae: the decay of those moving averages
    ladder_latents: tuple[int, ...] = (32, 16)  # ladder: Z of each stochastic layer, bottom up
    ladder_hidden: tuple[int, ...] = (256, 128)  # ladder: ReLU width of each layer's blocks
    flow_steps: int = 4  # flow: K, the number of planar flows on the Gaussian posterior
    precision: str = "float32"  # float32, or bfloat16: matrix products and convolutions on
    #   bfloat16 inputs with float32 accumulation; parameters, optimizer state, losses and
    #   reductions stay float32 (jaxvae.models.precision)

    def validate(self) -> None:
        """Raises ValueError / TypeError naming the first field that cannot work."""
        check_model(self.name)
        _check_count(self.latent_dim, "latent_dim")
        if not isinstance(self.hidden, (tuple, list)):
            raise TypeError(f"hidden must be a tuple of layer widths, e.g. (400,), got "
                            f"{self.hidden!r}")
        if not all(_is_int(h) and h >= 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive ints, got {self.hidden}")
        # A layer this wide cannot be allocated: XLA aborts the process instead of raising.
        for name, value in (("latent_dim", self.latent_dim),
                            ("hidden", max(self.hidden, default=1))):
            if value >= MAX_WIDTH:
                raise ValueError(f"{name} must be below 2**31 (a wider layer cannot be "
                                 f"allocated), got {getattr(self, name)}")
        mlp.check_activation(self.activation)
        precision.check_precision(self.precision)
        bounds.check_likelihood(self.likelihood)
        priors.check_prior(self.prior, self.prior_components)
        if not _is_int(self.num_classes):
            raise TypeError(f"num_classes must be an int, got {self.num_classes!r}")
        if self.name == "cvae":
            if self.num_classes < 2:
                raise ValueError(f"num_classes must be >= 2 for the cvae, got {self.num_classes}")
            if self.prior == "vamp":
                raise ValueError("the cvae does not support the vamp prior (its pseudo-inputs "
                                 "have no labels); use --prior standard, diagonal or mog")
        self._check_architectures()

    def _check_architectures(self) -> None:
        """The fields of the conv, vqvae, ladder and flow models."""
        for name in ("conv_channels", "ladder_latents", "ladder_hidden"):
            values = tuple(getattr(self, name))
            if not values or not all(_is_int(v) and v >= 1 for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive ints, got "
                                 f"{values}")
        for name, low in (("num_codes", 2), ("code_dim", 1), ("flow_steps", 0)):
            _check_count(getattr(self, name), name, low)
        if not isinstance(self.vq_ema, bool):
            raise TypeError(f"vq_ema must be a bool, got {self.vq_ema!r}")
        value = self.vq_decay
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ValueError(f"vq_decay must be a finite number, got {value!r}")
        if not 0.0 < value < 1.0:
            raise ValueError(f"vq_decay must be in (0, 1), got {value}")
        if len(self.ladder_latents) < 2:
            raise ValueError(f"a ladder VAE needs at least 2 stochastic layers, got "
                             f"ladder_latents {tuple(self.ladder_latents)}")
        if len(self.ladder_hidden) != len(self.ladder_latents):
            raise ValueError(f"ladder_hidden needs one width per ladder latent layer: "
                             f"{len(self.ladder_latents)} latents, {len(self.ladder_hidden)} "
                             "widths")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_count(value, name: str, low: int = 1) -> None:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


class Built(NamedTuple):
    model: nn.Module
    loss_fn: losses.LossFn  # (params, batch, key, step) -> (loss, metrics); batch {"x", "y"}


def _with_objective(model: nn.Module, config) -> Built:
    """The model with the objective of ``config.objective.name``: its -ELBO or its IWAE bound."""
    if config.objective.name == "iwae":
        return Built(model, losses.make_iwae_loss(model, config.objective.num_samples))
    return Built(model, builders.elbo_loss_from_config(model, config))


def _mlp(config, example_shape: tuple[int, ...]) -> Built:
    return _with_objective(builders.make_model(config, example_shape), config)


def _iwae(config, example_shape: tuple[int, ...]) -> Built:
    """The MLP VAE on the IWAE bound whatever ``--objective`` says (``--model mlp --objective
    iwae``)."""
    model = builders.make_model(config, example_shape)
    return Built(model, losses.make_iwae_loss(model, config.objective.num_samples))


def _cvae(config, example_shape: tuple[int, ...]) -> Built:
    return _with_objective(conditional.build(config, example_shape), config)


def _conv(config, example_shape: tuple[int, ...]) -> Built:
    m = config.model
    model = conv.conv_vae(m.conv_channels, m.hidden, m.latent_dim, example_shape, m.likelihood,
                          precision_name=m.precision)
    return _with_objective(model, config)


def _vqvae(config, example_shape: tuple[int, ...]) -> Built:
    m = config.model
    model = vqvae.vqvae(m.conv_channels, m.num_codes, m.code_dim, example_shape, m.vq_ema,
                        m.likelihood, precision_name=m.precision)
    return Built(model, losses.make_vq_loss(model, config.objective.commitment_cost, m.vq_decay))


def _ladder(config, example_shape: tuple[int, ...]) -> Built:
    m = config.model
    model = ladder.ladder_vae(m.ladder_latents, m.ladder_hidden, example_shape, m.likelihood,
                              precision_name=m.precision)
    return _with_objective(model, config)


def _flow(config, example_shape: tuple[int, ...]) -> Built:
    m = config.model
    model = flows.flow_vae(m.hidden, m.latent_dim, m.flow_steps, example_shape, m.likelihood,
                           precision_name=m.precision)
    return _with_objective(model, config)


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
    """The ``TrainConfig``'s model for examples of ``example_shape``, and its objective."""
    check_model(config.model.name)
    return MODELS[config.model.name](config, tuple(example_shape))


def optimizer(config) -> optax.GradientTransformation:
    """The ``TrainConfig``'s optimizer (``step.OptimizerConfig.make``: Adam on its learning-rate
    schedule over the run's steps, which ``builders.prepare`` fills in); for a VQ-VAE with an EMA
    codebook, SGD with learning rate 1 on the EMA statistics (``vqvae.ema_optimizer``)."""
    tx = config.optimizer.make()
    if config.model.name == "vqvae" and config.model.vq_ema:
        return vqvae.ema_optimizer(tx)
    return tx
