"""Training a sequence VAE on a list of strings: one config, one ``fit_sequences`` call.

The strings become ``{"x": tokens_NxL}`` arrays and train through the training loop
(``jaxvae.training.loop``: data on the devices, data parallel, the NaN guard), the test split evaluated
after each epoch. ``fit_sequences`` prints nothing; a caller that wants progress passes
``on_epoch``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import optax

from jaxvae.objectives import losses
from jaxvae.training import hooks as hooks_lib
from jaxvae.training import loop
from jaxvae.models import precision
from jaxvae.models import sequence
from jaxvae.training import step as train
from jaxvae.training import fit as trainer
from jaxvae.data.vocab import PAD_ID, Vocabulary
from jaxvae.training import placement
from jaxvae import config as config_lib


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
    """A sequence VAE run (defaults: a small character model that trains on a CPU)."""

    embed_dim: int = 64  # token embedding size
    hidden_dim: int = 256  # GRU state size (each encoder direction and the decoder)
    latent_dim: int = 32  # Z
    epochs: int = 10  # passes over the training strings
    batch_size: int = 128  # sequences per gradient step (split over the local devices)
    lr: float = 1e-3  # Adam learning rate (the peak of a schedule)
    lr_schedule: str = "constant"  # constant, cosine (lr to 0 over epochs x steps per epoch) or
    #   iwae (jaxvae.training.step.make_lr_schedule); a max_seconds stop ends it early
    clip_norm: float = 5.0  # gradients clipped to this global norm (RNNs); 0 = no clipping
    beta: float = 1.0  # KL weight after the warm-up
    warmup_steps: int = 2000  # steps of the linear KL warm-up from 0 (Bowman et al. 2016)
    word_dropout: float = 0.25  # probability a decoder input token is replaced by UNK
    free_bits: float = 0.0  # free nats per latent dimension in the KL term; 0 = off
    seed: int = 0  # init, shuffling and noise: jax.random.key(seed)
    max_seconds: float = 0.0  # stop after the epoch that passes this training time; 0 = no limit
    eval_batch_size: int = 500  # sequences per evaluation batch (memory only)
    length_buckets: int = 1  # K > 1: batches drawn within K buckets of similar row length, each
    #   cut to its bucket's longest row (placement.BucketFeed): the same loss, less padding
    precision: str = "float32"  # float32, or bfloat16 products with float32 accumulation
    #   (jaxvae.models.precision)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate_sequence_config(config: SequenceConfig) -> None:
    """Raises TypeError / ValueError naming the first field that cannot work."""
    for name in ("embed_dim", "hidden_dim", "latent_dim", "epochs", "batch_size", "warmup_steps",
                 "seed", "eval_batch_size", "length_buckets"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < (0 if name in ("warmup_steps", "seed") else 1):
            raise ValueError(f"{name} must be >= {0 if name in ('warmup_steps', 'seed') else 1}, "
                             f"got {value}")
    for name in ("lr", "clip_norm", "beta", "word_dropout", "free_bits", "max_seconds"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise TypeError(f"{name} must be a number, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not config.lr > 0:
        raise ValueError(f"lr must be > 0, got {config.lr}")
    if not config.word_dropout < 1:
        raise ValueError(f"word_dropout must be in [0, 1), got {config.word_dropout}")
    if config.lr_schedule not in train.LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; choose one of "
                         f"{list(train.LR_SCHEDULES)}")
    precision.check_precision(config.precision)


class SequenceFit(NamedTuple):
    model: sequence.SequenceVAE
    state: train.TrainState
    vocab: Vocabulary
    length: int  # L, the row length of the token arrays (longest string + EOS)
    history: list[dict]  # one record per epoch: train_* and test_* metrics, seconds
    compile_seconds: float


def make_sequence_optimizer(config: SequenceConfig, total_steps: int = 0
                            ) -> optax.GradientTransformation:
    """Adam with ``config.lr_schedule`` over ``total_steps`` steps, after clipping the global
    gradient norm to ``clip_norm`` (if > 0)."""
    return train.make_optimizer(config.lr, config.clip_norm or None,
                                schedule=config.lr_schedule, total_steps=total_steps)


def fit_sequences(config: SequenceConfig, vocab: Vocabulary, train_strings: Sequence[str],
                  test_strings: Sequence[str], on_epoch: Callable[[dict], Any] | None = None,
                  length: int | None = None) -> SequenceFit:
    """Trains a ``SequenceVAE`` on ``train_strings``, evaluating on ``test_strings`` each epoch.

    Every string must tokenize into ``vocab``'s tokens (checked before any training). Records
    hold ``epoch``, ``step``, ``train_<metric>`` (means over the epoch's finite steps),
    ``train_skipped``, ``test_<metric>`` (with the parameters at the end of the epoch; see
    ``jaxvae.objectives.losses.make_sequence_loss``) and ``seconds`` (the epoch's training
    time, compilation excluded).
    """
    validate_sequence_config(config)
    if len(train_strings) < config.batch_size:
        raise ValueError(f"batch size {config.batch_size} is larger than the training set "
                         f"({len(train_strings)} strings)")
    if not test_strings:
        raise ValueError("test_strings is empty; hold out some strings to evaluate on")
    if length is None:
        length = max(vocab.max_tokens(train_strings), vocab.max_tokens(test_strings)) + 1
    train_data = {"x": vocab.encode_batch(train_strings, length)}
    test_data = {"x": vocab.encode_batch(test_strings, length)}

    model = sequence.sequence_vae(len(vocab), config.embed_dim, config.hidden_dim,
                                  config.latent_dim, config.precision)
    keys = trainer.run_keys(config.seed)
    loss_fn = losses.make_sequence_loss(model, config.beta, config.warmup_steps,
                                        config.word_dropout, config.free_bits)
    # evaluated without word dropout: test_nelbo is the negative ELBO of the model itself
    eval_loss_fn = losses.make_sequence_loss(model, config.beta, config.warmup_steps, 0.0)
    lengths_N = (train_data["x"] != PAD_ID).sum(axis=1)
    bounds = (placement.bucket_bounds(lengths_N, config.length_buckets)
              if config.length_buckets > 1 else ())
    members = placement.bucket_members(lengths_N, bounds) if bounds else [lengths_N]  # or one
    steps_per_epoch = placement.bucket_steps(members, config.batch_size)
    tx = make_sequence_optimizer(config, config.epochs * steps_per_epoch)
    state = train.create_train_state(sequence.init(model, keys.init), tx)
    hooks = ([] if on_epoch is None else [hooks_lib.EveryEpoch(on_epoch)]) + \
        [hooks_lib.TimeLimit(config.max_seconds)]
    sections = config_lib.LoopConfig(
        config_lib.RunConfig(epochs=config.epochs, seed=config.seed),
        config_lib.OptimizerConfig(batch_size=config.batch_size, lr=config.lr,
                                   lr_schedule=config.lr_schedule),
        config_lib.EvalConfig(eval_batch_size=config.eval_batch_size))
    data = loop.TrainingData(train_data, lengths=lengths_N, bucket_bounds=bounds)
    run = loop.train_run(sections, data, loss_fn, tx, state, keys,
                         evaluation=loop.Evaluation(test=test_data, loss_fn=eval_loss_fn),
                         hooks=hooks, model=model)
    return SequenceFit(model, run.state, vocab, length, run.history, run.compile_seconds)
