"""The epoch loop: data on the device once, one compiled call per epoch, evaluation per epoch.

``fit`` prints nothing; a caller that wants progress passes ``on_epoch``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax

from jaxvae import config as config_lib
from jaxvae import data as data_lib
from jaxvae import models, registry, train, validation
from jaxvae import early_stopping  # issue 6


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
    compile_seconds: float  # compiling the epoch and evaluation programs
    # issue 6: with early stopping (config.patience), the epoch whose state ``state`` is.
    best_epoch: int | None = None


class EpochEnd(NamedTuple):
    """What ``fit``'s ``on_epoch_end`` callback receives after each epoch (issue 6)."""

    record: dict  # the history record of the epoch
    step_metrics: dict  # per-step training metrics of the epoch, numpy arrays (num_steps,)
    state: train.TrainState  # the state after the epoch; valid only during the callback
    model: nn.Module


def final_record(result: FitResult) -> dict:
    """The record of the returned state: the best epoch's with early stopping, else the last."""
    return result.history[-1] if result.best_epoch is None else \
        result.history[result.best_epoch - 1]


def check_inputs(config: config_lib.TrainConfig, data: data_lib.Dataset) -> data_lib.Dataset:
    """Validates the config and both splits; returns the data as float32 arrays."""
    config_lib.validate_config(config)
    x_train = validation.check_data(data.x_train, name="training data",
                                    likelihood=config.likelihood)
    x_test = validation.check_data(data.x_test, name="test data", likelihood=config.likelihood,
                                   example_shape=x_train.shape[1:])
    if config.batch_size > x_train.shape[0]:
        raise ValueError(f"batch size {config.batch_size} is larger than the training set "
                         f"({x_train.shape[0]} examples); use --batch-size <= {x_train.shape[0]}")
    return data._replace(x_train=x_train, x_test=x_test)


def fit(config: config_lib.TrainConfig, data: data_lib.Dataset,
        on_epoch: Callable[[dict], Any] | None = None,
        on_epoch_end: Callable[[EpochEnd], Any] | None = None) -> FitResult:
    """Trains the config's VAE on ``data`` and evaluates it on the test split after each epoch.

    Each history record holds ``epoch``, ``train_loss``, ``train_recon``, ``train_kl`` (means
    over the epoch's steps, per example), ``test_loss``, ``test_recon``, ``test_kl`` (per
    example, with the parameters at the end of the epoch) and ``seconds`` (the epoch's
    training time, compilation excluded). Losses are in nats per example.

    ``on_epoch_end`` (if given) receives an ``EpochEnd`` after ``on_epoch``: the record, the
    per-step training metrics and the state (for TensorBoard steps and image grids).

    With ``config.patience`` (early stopping), ``config.validation_fraction`` of the training
    split is held out (stratified) and evaluated after each epoch (``val_loss``, ``val_recon``,
    ``val_kl`` in the records); training stops after ``patience`` epochs without a lower
    ``val_loss``, and the returned state is the best epoch's (``FitResult.best_epoch``).
    """
    data = check_inputs(config, data)
    stopper = None  # issue 6: early stopping
    if config.patience:
        data, val_data = early_stopping.split_validation(data, config.validation_fraction,
                                                         config.seed)
        if config.batch_size > len(data.x_train):
            raise ValueError(f"batch size {config.batch_size} is larger than the training set "
                             f"without its validation part ({len(data.x_train)} examples)")
        stopper = early_stopping.EarlyStopping(config.patience)
    model, loss_fn = registry.build(config, data.example_shape)
    keys = run_keys(config.seed)
    tx = train.make_optimizer(config.lr)
    state = train.create_train_state(models.init(model, keys.init), tx)
    train_data = jax.device_put({"x": data.x_train, "y": data.y_train})
    test_data = jax.device_put({"x": data.x_test, "y": data.y_test})

    start = time.perf_counter()
    train_epoch = train.make_train_epoch(loss_fn, tx, config.batch_size).lower(
        state, train_data, keys.shuffle, keys.train).compile()
    eval_batch_size = min(config.eval_batch_size, len(data.x_test))
    evaluate = train.make_evaluate(loss_fn, eval_batch_size).lower(
        state.params, test_data, keys.eval, state.step).compile()
    if stopper is not None:
        val_data = jax.device_put(val_data)
        evaluate_val = train.make_evaluate(
            loss_fn, min(config.eval_batch_size, len(val_data["x"]))).lower(
            state.params, val_data, keys.eval, state.step).compile()
    compile_seconds = time.perf_counter() - start

    history = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        state, metrics, step_metrics = train_epoch(state, train_data, jax.random.fold_in(keys.shuffle, epoch),
                                        keys.train)
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - start
        test = jax.device_get(evaluate(state.params, test_data, keys.eval, state.step))
        record = {"epoch": epoch,
                  **{f"train_{k}": float(v) for k, v in metrics.items()},
                  **{f"test_{k}": float(v) for k, v in test.items()},
                  "seconds": seconds}
        if stopper is not None:
            val = jax.device_get(evaluate_val(state.params, val_data, keys.eval, state.step))
            record.update({f"val_{k}": float(v) for k, v in val.items()})
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if on_epoch_end is not None:
            on_epoch_end(EpochEnd(record, jax.device_get(step_metrics), state, model))
        if stopper is not None and stopper.update(epoch, record["val_loss"], state):
            break
    if stopper is not None and stopper.best_state is not None:
        return FitResult(model, stopper.best_state, history, compile_seconds, stopper.best_epoch)
    return FitResult(model, state, history, compile_seconds)
