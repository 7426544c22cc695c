"""``fit``: a VAE from a ``TrainConfig`` and a dataset, trained by ``jaxvae.training.loop``.

``fit`` prints nothing; a caller that wants progress passes ``on_epoch`` or hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from jaxvae import config as config_lib
from jaxvae.data import datasets as data_lib
from jaxvae.training import early_stopping
from jaxvae.training import feeding
from jaxvae.training import loop
from jaxvae.training import placement
from jaxvae.models import interface
from jaxvae.models import mlp as models
from jaxvae.data import preprocessing
from jaxvae.data import standardize
from jaxvae.models import registry
from jaxvae.training import step as train
from jaxvae.training import hooks as hooks_lib
from jaxvae import validation
from jaxvae.models import builders


class RunKeys(NamedTuple):
    """The four independent streams of a run, split once from ``jax.random.key(seed)``."""

    init: jax.Array  # parameter initialization
    train: jax.Array  # reparameterization noise: step s uses fold_in(train, s)
    shuffle: jax.Array  # data order: epoch e uses fold_in(shuffle, e)
    eval: jax.Array  # evaluation noise (the same every epoch, so test losses compare)


def run_keys(seed: int) -> RunKeys:
    return RunKeys(*jax.random.split(jax.random.key(seed), 4))


class FitResult(NamedTuple):
    model: nn.Module
    state: train.TrainState
    history: list[dict]  # one record per epoch (see ``fit``)
    compile_seconds: float  # compiling the training chunks and the evaluation
    best_epoch: int | None = None  # with early stopping: the epoch whose state ``state`` is
    devices_used: int = 1  # devices each batch was split over (all processes together)
    standardization: standardize.Standardization | None = None  # the statistics the data was
    #   standardized with (the model works in standardized units; None: the data as it is)


def final_record(result: FitResult) -> dict:
    """The record of the returned state: the best epoch's with early stopping, else the last."""
    return result.history[-1] if result.best_epoch is None else \
        result.history[result.best_epoch - 1]


def check_inputs(config: config_lib.TrainConfig, data: data_lib.Dataset) -> data_lib.Dataset:
    """Validates the config and both splits; returns the data as float32 arrays."""
    config_lib.validate_config(config)
    likelihood, batch_size = config.model.likelihood, config.optimizer.batch_size
    x_train = validation.check_data(data.x_train, name="training data", likelihood=likelihood)
    x_test = validation.check_data(data.x_test, name="test data", likelihood=likelihood,
                                   example_shape=x_train.shape[1:])
    if batch_size > x_train.shape[0]:
        raise ValueError(f"batch size {batch_size} is larger than the training set "
                         f"({x_train.shape[0]} examples); use --batch-size <= {x_train.shape[0]}")
    return data._replace(x_train=x_train, x_test=x_test)


def _prepare(config, data: data_lib.Dataset, resume: bool,
             standardization: standardize.Standardization | None = None):
    """Every check of ``fit`` before training: the config, the data, the labels, the model.

    Returns the run's config (run-dependent fields filled), its data (without the validation
    part), the validation data (None without early stopping), the built model and loss, and
    the standardization statistics of the training part (None when the data is not
    standardized; ``config.data.standardize``), or ``standardization`` when given.
    """
    data = check_inputs(config, data)
    config = builders.prepare(config, data)  # cyclical KL needs the run's steps
    val_data = None
    run, batch_size = config.run, config.optimizer.batch_size
    if run.patience:
        if resume:
            raise ValueError("early stopping (patience) cannot resume a run yet: the best "
                             "epoch's parameters are not in the checkpoints; resume without "
                             "--patience or start a new run")
        data, val_data = early_stopping.split_validation(data, run.validation_fraction,
                                                         run.seed)
        if batch_size > len(data.x_train):
            raise ValueError(f"batch size {batch_size} is larger than the training set "
                             f"without its validation part ({len(data.x_train)} examples)")
    built = registry.build(config, data.example_shape)
    for name in ("x_train", "x_test"):
        preprocessing.check_range(getattr(data, name), config.data.binarize,
                                  config.data.dequantize, name)
    data_config = config.data
    mode = standardize.resolve(data_config.standardize, data_config.dataset,
                               config.model.likelihood, data.x_train, data_config.binarize,
                               data_config.dequantize)
    stats = None
    if mode == "feature":
        stats = standardization if standardization is not None else standardize.fit(data.x_train)
        if stats.mean.shape != tuple(data.example_shape):
            raise ValueError(f"standardization statistics of shape {stats.mean.shape} do not "
                             f"fit examples of shape {data.example_shape}")
    return config, data, val_data, built, stats


def in_data_units(loss_fn: train.LossFn, log_det: float) -> train.LossFn:
    """``loss_fn`` on standardized data, reporting the loss and ``recon`` in the data's units.

    NLL_x = NLL_u + sum_d log s_d (``standardize.log_det``): a constant, so the gradients are
    those of ``loss_fn``; the KL terms do not change.
    """
    def wrapped(params, batch, key, step):
        loss, metrics = loss_fn(params, batch, key, step)
        metrics = {name: value + log_det if name in ("loss", "recon") else value
                   for name, value in metrics.items()}
        return loss + log_det, metrics

    return wrapped


def check_run(config: config_lib.TrainConfig, data: data_lib.Dataset, *,
              resume: bool = False) -> None:
    """Raises what ``fit(config, data, resume=resume)`` would raise before its first step.

    Checks the config, both splits (shapes, values, the batch size), the labels a model needs,
    the early-stopping split and that the model can be built and initialized for the data
    (shapes only: ``jax.eval_shape``); trains nothing, so a script can call it before it
    writes any file.

    Raises:
      ValueError, TypeError: with a message naming the problem.
    """
    _, _, _, (model, _), _ = _prepare(config, data, resume)
    jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
    if jax.process_count() == 1:  # --num-devices beyond the local devices
        placement.data_parallel_devices(config.optimizer.batch_size, config.run.num_devices)


def fit(config: config_lib.TrainConfig, data: data_lib.Dataset,
        on_epoch: Callable[[dict], Any] | None = None, *, hooks: Sequence[loop.Hook] = (),
        checkpoint_dir: str | None = None, resume: bool = False,
        on_resume: Callable[[list[dict]], Any] | None = None,
        stop_on_signals: bool = False,
        standardization: standardize.Standardization | None = None,
        init_params: Any = None) -> FitResult:
    """Trains the config's VAE on ``data`` and evaluates it on the test split after each epoch.

    Each history record holds ``epoch``, ``train_loss``, ``train_recon``, ``train_kl`` (means
    over the epoch's steps, per example), ``test_loss``, ``test_recon``, ``test_kl`` (per
    example, with the parameters at the end of the epoch) and ``seconds`` (the epoch's
    training time, compilation excluded). Losses are in nats per example.

    Data parallel: each batch is split over ``config.run.num_devices`` local devices (None: all),
    the parameters replicated (``jaxvae.training.placement``); if the devices do not divide the batch
    size, the largest count that does is used (``FitResult.devices_used``). The result equals
    one device's to float32 summation order.

    The run goes through ``jaxvae.training.loop``: ``hooks`` are called as ``hook(step, progress)``
    after each chunk of steps and at each epoch end (``jaxvae.training.hooks``; e.g.
    ``tracking.TensorBoardLogger``); ``on_epoch(record)`` is a shorthand for
    ``hooks.EveryEpoch(on_epoch)``.

    Reliability: steps with a non-finite loss or gradient are skipped (``train_skipped``
    counts them per epoch; the train means are over the finite steps) and
    ``config.run.max_skipped_steps`` of them in a row raise ``loop.TrainingDiverged``. With
    ``checkpoint_dir``, an Orbax checkpoint is written at every epoch end and every
    ``config.run.checkpoint_every`` steps (the last ``config.run.keep_checkpoints`` are kept);
    ``resume=True`` continues from the newest readable one (bitwise the uninterrupted run) and
    calls ``on_resume(history)`` with the records of the epochs already done. In a multi-process
    run (``jax.distributed``), ``data.x_train`` is this process's block of the training set,
    training is data parallel over every process's devices and only process 0 writes.

    Standardization (``config.data.standardize``, ``jaxvae.data.standardize``): with ``feature``
    (or ``auto`` resolved to it: a user file named in ``config.data.dataset``, a Gaussian
    likelihood, values outside [0, 1]), every split is standardized with the mean and std of
    the training part (after the validation hold-out), or with ``standardization`` when given
    (a multi-process run passes those of the whole training set, not of its block); the model
    works in standardized units (``FitResult.standardization`` holds the statistics to undo
    it) and the losses of the history are in the data's units (NLL_x = NLL_u + sum log s).

    With ``config.run.patience`` (early stopping), ``config.run.validation_fraction`` of the
    training split is held out (stratified) and evaluated after each epoch (``val_loss``, ``val_recon``,
    ``val_kl`` in the records); training stops after ``patience`` epochs without a lower
    ``val_loss``, and the returned state is the best epoch's (``FitResult.best_epoch``).
    Early stopping cannot be resumed yet (the best epoch's parameters are not checkpointed):
    ``resume`` with ``config.run.patience`` raises ValueError.

    ``init_params``: start from these parameters instead of a fresh initialization (fine-tuning a
    trained model, for example on another objective: ``experiments/train.py --init-from``); the
    optimizer, its learning-rate schedule and the KL schedule start afresh. They must have the
    model's names and shapes (ValueError otherwise); a resumed run continues from its checkpoint.

    ``stop_on_signals`` (called from the main thread of a one-process run): during training,
    SIGINT (Ctrl-C) and SIGTERM stop the run at the next chunk boundary, after the checkpoint of
    that step when there is a ``checkpoint_dir``, with ``loop.Interrupted`` (a second signal
    stops at once); the previous handlers are restored afterwards. An epoch without a finite
    step raises ``loop.TrainingDiverged``.
    """
    config, data, val_data, (model, loss_fn), stats = _prepare(config, data, resume,
                                                               standardization)
    if stats is not None:  # the model trains on u = (x - m) / s; losses in x's units
        data = data._replace(x_train=standardize.apply(stats, data.x_train),
                             x_test=standardize.apply(stats, data.x_test))
        if val_data is not None:
            val_data = {**val_data, "x": standardize.apply(stats, val_data["x"])}
        loss_fn = in_data_units(loss_fn, standardize.log_det(stats))
    stopper = early_stopping.EarlyStopping(config.run.patience) if config.run.patience else None
    keys = run_keys(config.run.seed)
    tx = registry.optimizer(config)  # Adam on the lr schedule (clipped), or what the model needs
    params = models.init(model, keys.init) if init_params is None else \
        interface.params_for(model, init_params)
    state = train.create_train_state(params, tx)
    # binarization / dequantization; data too large for the device is streamed
    data_key = preprocessing.data_key(config.run.seed)
    binarize, dequantize = config.data.binarize, config.data.dequantize
    data = data._replace(**{
        name: np.asarray(preprocessing.fixed_transform(binarize, dequantize,
                                                       data_key, getattr(data, name), part))
        for part, name in enumerate(("x_train", "x_test"))})
    if val_data is not None:  # held out like the test split: transformed once
        val_data = {**val_data, "x": np.asarray(preprocessing.fixed_transform(
            binarize, dequantize, data_key, val_data["x"], 2))}
    train_data = {"x": data.x_train, "y": data.y_train}
    stream = config.data.feed == "stream" or (
        config.data.feed == "auto" and not feeding.fits_on_device(feeding.tree_nbytes(train_data)))
    training_data = loop.TrainingData(
        train_data, preprocess=preprocessing.batch_preprocess(binarize, dequantize),
        data_key=data_key, stream=stream)
    evaluation = loop.Evaluation(test={"x": data.x_test, "y": data.y_test}, val=val_data)

    hooks = ([] if on_epoch is None else [hooks_lib.EveryEpoch(on_epoch)]) + list(hooks) + \
        ([] if stopper is None else [stopper])
    if resume and checkpoint_dir is None:
        raise ValueError("resume needs a checkpoint directory (checkpoint_dir)")
    checkpointing = None if checkpoint_dir is None else loop.Checkpointing(
        checkpoint_dir, resume=resume, on_resume=on_resume)
    stop = loop.StopSignals() if stop_on_signals and jax.process_count() == 1 else \
        contextlib.nullcontext()
    with stop:
        run = loop.train_run(
            config, training_data, loss_fn, tx, state, keys, evaluation=evaluation, hooks=hooks,
            checkpointing=checkpointing, model=model,
            stop_requested=stop if isinstance(stop, loop.StopSignals) else None)
    if stopper is not None and stopper.best_state is not None:
        return FitResult(model, stopper.best_state, run.history, run.compile_seconds,
                         stopper.best_epoch, run.devices_used, stats)
    return FitResult(model, run.state, run.history, run.compile_seconds,
                     devices_used=run.devices_used, standardization=stats)
