"""The training configuration: one frozen dataclass, every field commented, validated up front."""

from __future__ import annotations

import dataclasses
import math

from jaxvae import objectives


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. The defaults reproduce the pytorch/examples VAE on mnist5k."""

    dataset: str = "mnist5k"  # a name from jaxvae.data.LOADERS (or a file path, see data)
    model: str = "mlp"  # a name from jaxvae.registry.MODELS
    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # examples per gradient step (the reference's 128)
    lr: float = 1e-3  # Adam learning rate (the reference's 1e-3)
    latent_dim: int = 20  # Z, the size of the latent code (the reference's 20)
    hidden: tuple[int, ...] = (400,)  # encoder hidden widths; the decoder mirrors them
    beta: float = 1.0  # weight of the KL term (1 = the ELBO; beta-VAE otherwise)
    likelihood: str = "bernoulli"  # p(x | z): "bernoulli" (BCE) or "gaussian" (unit-variance MSE)
    seed: int = 0  # seeds the init, the shuffling and the noise (jax.random.key(seed))
    eval_batch_size: int = 500  # examples per evaluation batch (memory only, not the result)
    # issue 6: early stopping
    patience: int | None = None  # stop after this many epochs without a lower validation loss
    #   and keep the best epoch's state; None or 0 = off (train all epochs, no validation split)
    validation_fraction: float = 0.1  # share of the training split held out (stratified) as
    #   the validation set when patience is set

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_config(config: TrainConfig) -> None:
    """Raises ValueError / TypeError naming the first field that cannot work."""
    for name in ("epochs", "batch_size", "latent_dim", "seed", "eval_batch_size"):
        if not _is_int(getattr(config, name)):
            raise TypeError(f"{name} must be an int, got {getattr(config, name)!r}")
    for name in ("epochs", "batch_size", "latent_dim", "eval_batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if not all(_is_int(h) and h >= 1 for h in config.hidden):
        raise ValueError(f"hidden sizes must be positive ints, got {config.hidden}")
    for name in ("lr", "beta"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if not config.lr > 0:
        raise ValueError(f"learning rate must be > 0, got {config.lr}")
    if config.beta < 0:
        raise ValueError(f"beta must be >= 0, got {config.beta}")
    objectives.check_likelihood(config.likelihood)
    from jaxvae import registry  # registry imports models, which import nothing of config

    registry.check_model(config.model)
    # issue 6: early stopping
    if config.patience is not None and (not _is_int(config.patience) or config.patience < 0):
        raise ValueError(f"patience must be None or an int >= 0, got {config.patience!r}")
    fraction = config.validation_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction must be a number in (0, 1), got {fraction!r}")
