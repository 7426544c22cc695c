"""The resumable training loop behind ``trainer.fit``: chunks of steps, checkpoints, the NaN guard.

An epoch runs as one or more *chunks*: steps ``[start, stop)`` of the epoch's permutation
(``fold_in(shuffle_key, epoch)``, recomputed on resume) under one ``lax.scan``, compiled once
per chunk length. Without checkpoints a chunk is the whole epoch; with ``checkpoint_every = N``
chunks end at the epoch positions N, 2N, ... and at the epoch end (so at most three chunk
lengths are compiled), where a checkpoint is written. The
chunk boundaries depend only on the step count, so a run resumed from any checkpoint executes
exactly the programs of the uninterrupted run and ends with bitwise identical parameters.

The NaN guard (``train.train_step_fn(..., skip_nonfinite=True)``) skips non-finite steps inside
the compiled chunk; the host reads the per-step ``skipped`` flags once per chunk and stops the run
(``TrainingDiverged``) when ``max_skipped_steps`` consecutive steps were skipped. The check runs at
chunk boundaries: steps after the limit inside the same chunk still run (their results are
discarded with the run), and no checkpoint is written after the limit, so the last good one
is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvae import checkpoint as checkpoint_lib
from jaxvae import train, validation


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def make_train_chunk(loss_fn: train.LossFn, tx, batch_size: int, *,
                     skip_nonfinite: bool = True,
                     preprocess: Callable[[jax.Array, Any], Any] | None = None,
                     microbatch_size: int | None = None) -> Callable:
    """Jitted ``chunk(state, data, shuffle_key, run_key, start, preprocess_key=None, *, num_full,
    remainder)``.

    Runs the epoch's full batches ``start .. start + num_full - 1`` (static ``num_full``,
    dynamic ``start``) of ``permutation(shuffle_key, N)`` under ``lax.scan``, then, if
    ``remainder`` (static), the epoch's last, smaller batch; exactly the steps of
    ``train.make_train_epoch`` for the same keys. With ``preprocess``, the batch at epoch
    position i is ``preprocess(fold_in(preprocess_key, i), batch)``, as in make_train_epoch.
    ``microbatch_size``: see ``train.train_step_fn``. The state is donated.

    Returns:
      ``(state, step_metrics)``, each metric of shape ``(num_steps,)``.
    """
    validation.check_count(batch_size, "batch_size")
    train.check_microbatch_size(microbatch_size, batch_size)
    step = train.train_step_fn(loss_fn, tx, skip_nonfinite=skip_nonfinite,
                               microbatch_size=microbatch_size)

    def chunk(state, data, shuffle_key, run_key, start, preprocess_key=None, *, num_full,
              remainder):
        n = train._num_examples(data)
        epoch_full = n // batch_size
        perm = jax.random.permutation(shuffle_key, n)

        def batch(idx_B, position):
            b = train._take(data, idx_B)
            if preprocess is None:
                return b
            return preprocess(jax.random.fold_in(preprocess_key, position), b)

        parts = []
        if num_full:
            idx_SxB = jax.lax.dynamic_slice_in_dim(perm, start * batch_size,
                                                   num_full * batch_size)
            idx_SxB = idx_SxB.reshape(num_full, batch_size)
            positions = start + jnp.arange(num_full)
            state, full = jax.lax.scan(
                lambda s, i_idx: step(s, batch(i_idx[1], i_idx[0]), run_key),
                state, (positions, idx_SxB))
            parts.append(full)
        if remainder:
            state, rest = step(state, batch(perm[epoch_full * batch_size:], epoch_full),
                               run_key)
            parts.append(jax.tree.map(lambda r: r[None], rest))
        metrics = jax.tree.map(lambda *m: jnp.concatenate(m), *parts)
        return state, metrics

    return jax.jit(chunk, static_argnames=("num_full", "remainder"), donate_argnums=0)


def _preprocess_key(data_key, preprocess, epoch: int):
    """The key of an epoch's batch preprocessing (see trainer.fit), None without preprocessing."""
    return None if preprocess is None else jax.random.fold_in(data_key, epoch)


def single_host_chunks(loss_fn, tx, batch_size: int, train_data: Any, keys, *,
                       preprocess=None, data_key=None, microbatch_size=None) -> tuple:
    """``(steps_per_epoch, run_chunk)`` for data on this host's default device."""
    n = train._num_examples(train_data)
    num_full, remainder = divmod(n, batch_size)
    chunk = make_train_chunk(loss_fn, tx, batch_size, preprocess=preprocess,
                             microbatch_size=microbatch_size)
    compiled: dict = {}

    def run_chunk(state, epoch: int, start: int, stop: int):
        nf = max(0, min(stop, num_full) - start)
        rem = bool(remainder) and stop == num_full + 1
        args = (state, train_data, jax.random.fold_in(keys.shuffle, epoch), keys.train,
                jnp.asarray(start, jnp.int32), _preprocess_key(data_key, preprocess, epoch))
        compile_seconds = 0.0
        if (nf, rem) not in compiled:
            t0 = time.perf_counter()
            compiled[nf, rem] = chunk.lower(*args, num_full=nf, remainder=rem).compile()
            compile_seconds = time.perf_counter() - t0
        state, metrics = compiled[nf, rem](*args)
        sizes = [batch_size] * nf + [remainder] * rem
        return state, metrics, np.asarray(sizes, np.float64), compile_seconds

    return num_full + (remainder > 0), run_chunk


def streaming_chunks(loss_fn, tx, batch_size: int, train_data: Any, keys, *,
                     preprocess=None, data_key=None) -> tuple:
    """``(steps_per_epoch, run_chunk)`` for training data kept in host memory.

    The same steps as ``single_host_chunks`` (same permutation, batches, keys), one jitted step
    per batch with the next batches prefetched to the device (``jaxvae.feeding``).
    """
    from jaxvae import feeding

    n = train._num_examples(train_data)
    chunk = feeding.make_streaming_chunk(loss_fn, tx, batch_size, preprocess=preprocess,
                                         skip_nonfinite=True)

    def run_chunk(state, epoch: int, start: int, stop: int):
        state, metrics, sizes = chunk(state, train_data, jax.random.fold_in(keys.shuffle, epoch),
                                      keys.train, _preprocess_key(data_key, preprocess, epoch),
                                      start, stop)
        return state, metrics, np.asarray(sizes, np.float64), 0.0

    return -(-n // batch_size), run_chunk


def new_loop_state() -> dict:
    """The host-side state of the loop, saved as JSON in every checkpoint."""
    return {"epoch": 1,  # the epoch in progress (1-based)
            "position": 0,  # steps of that epoch done
            "sums": {},  # sum over the epoch's finite steps of metric * batch size
            "examples": 0,  # examples in the epoch's finite steps
            "skipped": 0,  # skipped steps in this epoch
            "seconds": 0.0,  # training time of this epoch so far
            "consecutive_skipped": 0,
            "last_finite_loss": None, "last_finite_step": None,
            "history": []}  # the records of finished epochs


def run_epochs(*, epochs: int, max_skipped_steps: int, checkpoint_every: int | None,
               state: train.TrainState, steps_per_epoch: int, run_chunk: Callable,
               evaluate: Callable[[train.TrainState], dict], loop: dict,
               save: Callable[[train.TrainState, dict], Any] | None,
               on_epoch: Callable[[dict], Any] | None, last_saved: Any = None,
               should_stop: Callable[[list[dict]], bool] | None = None,
               on_epoch_end: Callable[[dict, dict, train.TrainState], Any] | None = None
               ) -> tuple[train.TrainState, dict, float]:
    """Runs epochs ``loop["epoch"] .. epochs`` from ``loop``'s position.

    ``run_chunk(state, epoch, start, stop) -> (state, step_metrics, batch_sizes, compile_s)``;
    ``evaluate(state)`` returns the record's evaluation entries (``test_loss``, ...).
    ``save(state, loop)`` writes a checkpoint (None: no checkpoints). ``on_epoch_end(record,
    step_metrics, state)`` sees each finished epoch with the per-step metrics of the chunks run
    in this process (TensorBoard) and its state (early stopping). ``should_stop(history)``,
    asked after each epoch (e.g. early stopping), ends the run early; it sees the whole history,
    which is checkpointed, so a resumed run takes the same decision.

    Returns:
      ``(state, loop, compile_seconds)``.

    Raises:
      TrainingDiverged: ``max_skipped_steps`` consecutive skipped steps.
    """
    compile_total = 0.0
    while loop["epoch"] <= epochs:
        epoch = loop["epoch"]
        epoch_steps = []
        while loop["position"] < steps_per_epoch:
            first = (epoch - 1) * steps_per_epoch + loop["position"]  # steps done before
            stop = steps_per_epoch
            if checkpoint_every:  # at epoch positions N, 2N, ...: few distinct chunk lengths
                stop = min(stop, (loop["position"] // checkpoint_every + 1) * checkpoint_every)
            t0 = time.perf_counter()
            state, metrics, sizes, compile_s = run_chunk(state, epoch, loop["position"], stop)
            metrics = jax.device_get(metrics)
            epoch_steps.append(metrics)
            loop["seconds"] += time.perf_counter() - t0 - compile_s
            compile_total += compile_s
            _account(loop, metrics, sizes, first, max_skipped_steps, last_saved)
            loop["position"] = stop
            if save and stop < steps_per_epoch:  # (the epoch end saves below)
                last_saved = save(state, loop)
        test = evaluate(state)
        record = {"epoch": epoch,
                  **{f"train_{k}": (v / loop["examples"] if loop["examples"] else math.nan)
                     for k, v in loop["sums"].items()},
                  "train_skipped": loop["skipped"],
                  **{k: float(v) for k, v in test.items()},
                  "seconds": loop["seconds"]}
        loop.update(new_loop_state(), history=loop["history"] + [record], epoch=epoch + 1,
                    consecutive_skipped=loop["consecutive_skipped"],
                    last_finite_loss=loop["last_finite_loss"],
                    last_finite_step=loop["last_finite_step"])
        if save:
            last_saved = save(state, loop)
        if on_epoch is not None:
            on_epoch(record)
        if on_epoch_end is not None:
            on_epoch_end(record, jax.tree.map(lambda *m: np.concatenate(m), *epoch_steps),
                         state)
        if should_stop is not None and should_stop(loop["history"]):
            break
    return state, loop, compile_total


def _account(loop: dict, metrics: dict, sizes: np.ndarray, first: int, max_skipped: int,
             last_saved) -> None:
    """Adds a chunk's per-step metrics to the epoch sums; stops after too many skips."""
    skipped = np.asarray(metrics.get("skipped", np.zeros(len(sizes))))
    names = [k for k in metrics if k != "skipped"]
    for i, size in enumerate(sizes):
        step = first + i + 1  # the step number this update would have made
        if skipped[i]:
            loop["skipped"] += 1
            loop["consecutive_skipped"] += 1
            if loop["consecutive_skipped"] >= max_skipped:
                last = loop["last_finite_loss"]
                last = ("no step had a finite loss" if last is None else
                        f"the last finite loss was {last:.6g} at step {loop['last_finite_step']}")
                kept = (f"the last good checkpoint, {last_saved}, is kept" if last_saved
                        else "no checkpoint was written after the divergence")
                raise TrainingDiverged(
                    f"training stopped at step {step}: {loop['consecutive_skipped']} consecutive "
                    f"steps had a non-finite loss or gradient (max_skipped_steps={max_skipped}); "
                    f"{last}; {kept}. Lower the learning rate, clip gradients (clip_norm, "
                    "--clip-norm) or look for extreme values in the data.")
            continue
        loop["consecutive_skipped"] = 0
        loop["last_finite_loss"] = float(metrics["loss"][i])
        loop["last_finite_step"] = step
        for k in names:
            loop["sums"][k] = loop["sums"].get(k, 0.0) + float(metrics[k][i]) * float(size)
        loop["examples"] += int(size)


def make_saver(manager: checkpoint_lib.CheckpointManager, keys, config: dict
               ) -> Callable[[train.TrainState, dict], Any]:
    key_dict = keys._asdict()

    def save(state, loop):
        return manager.save(state, key_dict, loop, config)

    return save


class _ConfigMismatch(ValueError):
    pass


def train_run(config, train_data: dict, test_data: dict, loss_fn, tx, state, keys, *,
              on_epoch=None, checkpoint_dir=None, resume: bool = False,
              on_resume: Callable[[list[dict]], Any] | None = None,
              should_stop: Callable[[list[dict]], bool] | None = None,
              preprocess: Callable[[jax.Array, Any], Any] | None = None,
              data_key: jax.Array | None = None, stream: bool = False,
              val_data: dict | None = None,
              on_epoch_end: Callable[[dict, dict, train.TrainState], Any] | None = None
              ) -> tuple[train.TrainState, list[dict], float]:
    """The body of ``trainer.fit`` after validation: returns ``(state, history, compile_s)``.

    ``train_data`` / ``test_data`` are dicts of numpy arrays (in a multi-process run, this
    process's block of the training set and the whole test set). ``preprocess(key, batch)``
    transforms each training batch on the device (dynamic binarization, dequantization) with
    the key ``fold_in(fold_in(data_key, epoch), position)``; ``stream`` keeps the training data
    in host memory (``jaxvae.feeding``) instead of on the device. ``val_data`` (early
    stopping) is evaluated after each epoch into ``val_loss``, ``val_recon``, ... .
    """
    multi = jax.process_count() > 1
    writer = jax.process_index() == 0
    microbatch_size = getattr(config, "microbatch_size", None)
    if microbatch_size is not None and (multi or stream):
        raise ValueError("microbatch_size (--microbatch-size) works with the data on one "
                         "process's device (--feed device, one process) only: drop it for "
                         "multi-process or streamed training")
    config_json = checkpoint_lib.config_dict(config)
    manager = last_saved = None
    loop = new_loop_state()
    if checkpoint_dir is not None:
        manager = checkpoint_lib.CheckpointManager(checkpoint_dir, config.keep_checkpoints,
                                                   writer=writer)
        steps = manager.all_steps()
        if steps and not resume:
            raise ValueError(f"{manager.directory} already holds checkpoints (steps {steps}); "
                             "pass resume=True (--resume) to continue that run, or train into "
                             "another directory")
        if resume and not steps:
            raise ValueError(f"nothing to resume: no checkpoint in {manager.directory}; run "
                             "without resume (--resume) to start a new run")
        if steps:
            def check(saved: dict) -> None:
                diffs = checkpoint_lib.config_differences(saved, config_json)
                if diffs:
                    raise _ConfigMismatch(
                        f"cannot resume from {manager.directory}: the config differs from the "
                        "saved run's (" + "; ".join(diffs) + "); resume with the saved values "
                        "or start a new run in another directory")

            restored = manager.restore_latest(state, tuple(keys._fields), check_config=check)
            checkpoint_lib.check_resumable_epochs(restored, config.epochs)
            state = jax.tree.map(jnp.asarray, restored.state)
            keys = type(keys)(**restored.keys)
            loop, last_saved = restored.loop, restored.path
            if on_resume is not None:
                on_resume(list(loop["history"]))
    elif resume:
        raise ValueError("resume needs a checkpoint directory (checkpoint_dir)")

    eval_batch_size = min(config.eval_batch_size, len(jax.tree.leaves(test_data)[0]))
    test_dev = jax.device_put(test_data, jax.local_devices()[0])
    t0 = time.perf_counter()
    evaluate = train.make_evaluate(loss_fn, eval_batch_size).lower(
        state.params, test_dev, keys.eval, state.step).compile()
    if val_data is not None:
        val_dev = jax.device_put(val_data, jax.local_devices()[0])
        evaluate_val = train.make_evaluate(
            loss_fn, min(config.eval_batch_size, len(jax.tree.leaves(val_data)[0]))).lower(
            state.params, val_dev, keys.eval, state.step).compile()
    compile_seconds = time.perf_counter() - t0

    if multi and (preprocess is not None or stream):
        raise ValueError("multi-process training supports neither batch preprocessing "
                         "(--binarize dynamic, --dequantize) nor --feed stream yet: use "
                         "--binarize static / none and --feed device")
    if multi:
        from jaxvae import multihost, parallel

        mesh = parallel.make_mesh(jax.devices())
        steps_per_epoch, run_chunk, place = multihost.multi_host_chunks(
            loss_fn, tx, config.batch_size, train_data, keys, mesh)
        state = place(state)
        host = multihost.to_host
    elif stream:
        steps_per_epoch, run_chunk = streaming_chunks(
            loss_fn, tx, config.batch_size, train_data, keys, preprocess=preprocess,
            data_key=data_key)
        state = jax.device_put(state)
        host = lambda tree: tree
    else:
        steps_per_epoch, run_chunk = single_host_chunks(
            loss_fn, tx, config.batch_size, jax.device_put(train_data), keys,
            preprocess=preprocess, data_key=data_key, microbatch_size=microbatch_size)
        state = jax.device_put(state)
        host = lambda tree: tree

    def evaluate_state(state):
        params, step = host(state.params), host(state.step)
        out = {f"test_{k}": v for k, v in
               jax.device_get(evaluate(params, test_dev, keys.eval, step)).items()}
        if val_data is not None:
            out.update({f"val_{k}": v for k, v in
                        jax.device_get(evaluate_val(params, val_dev, keys.eval, step)).items()})
        return out

    save = make_saver(manager, keys, config_json) if manager is not None and writer else None
    try:
        state, loop, chunk_compile = run_epochs(
            epochs=config.epochs, max_skipped_steps=config.max_skipped_steps,
            checkpoint_every=config.checkpoint_every, state=state,
            steps_per_epoch=steps_per_epoch, run_chunk=run_chunk, evaluate=evaluate_state,
            loop=loop, save=save, on_epoch=on_epoch, last_saved=last_saved,
            should_stop=should_stop, on_epoch_end=on_epoch_end)
    finally:
        if manager is not None:
            manager.close()
    if multi:
        state = host(state)
    return state, loop["history"], compile_seconds + chunk_compile
