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
        on_epoch: Callable[[dict], Any] | None = None) -> FitResult:
    """Trains the config's VAE on ``data`` and evaluates it on the test split after each epoch.

    Each history record holds ``epoch``, ``train_loss``, ``train_recon``, ``train_kl`` (means
    over the epoch's steps, per example), ``test_loss``, ``test_recon``, ``test_kl`` (per
    example, with the parameters at the end of the epoch) and ``seconds`` (the epoch's
    training time, compilation excluded). Losses are in nats per example.
    """
    data = check_inputs(config, data)
    model, loss_fn = registry.build(config, data.example_shape)
    keys = run_keys(config.seed)
    tx = registry.optimizer(config)  # Adam at config.lr, or what the model needs
    state = train.create_train_state(models.init(model, keys.init), tx)
    train_data = jax.device_put({"x": data.x_train, "y": data.y_train})
    test_data = jax.device_put({"x": data.x_test, "y": data.y_test})

    start = time.perf_counter()
    train_epoch = train.make_train_epoch(loss_fn, tx, config.batch_size).lower(
        state, train_data, keys.shuffle, keys.train).compile()
    eval_batch_size = min(config.eval_batch_size, len(data.x_test))
    evaluate = train.make_evaluate(loss_fn, eval_batch_size).lower(
        state.params, test_data, keys.eval, state.step).compile()
    compile_seconds = time.perf_counter() - start

    history = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        state, metrics, _ = train_epoch(state, train_data, jax.random.fold_in(keys.shuffle, epoch),
                                        keys.train)
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - start
        test = jax.device_get(evaluate(state.params, test_data, keys.eval, state.step))
        record = {"epoch": epoch,
                  **{f"train_{k}": float(v) for k, v in metrics.items()},
                  **{f"test_{k}": float(v) for k, v in test.items()},
                  "seconds": seconds}
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    return FitResult(model, state, history, compile_seconds)
