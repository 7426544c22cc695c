"""The training loop: every model trains here, from the first step to the last hook.

Read top to bottom:

1. ``train_run`` sets a run up from records of its concepts (``TrainingData``, ``Evaluation``,
   ``Checkpointing``): the data placement (a feed of ``jaxvae.training.placement``: data on the
   devices, streamed from the host, or split over processes), the one compiled chunk of steps
   (``train.make_train_chunk``: the step with its NaN guard and micro-batching, under
   ``lax.scan``), the evaluation, and the checkpoint restored on resume.
2. ``run_epochs`` runs the epochs as chunks of steps and calls the hooks after each chunk:
   ``for hook in hooks: hook(step, progress)``. Logging, metrics files, TensorBoard,
   checkpoints, early stopping and time limits are hooks (``jaxvae.training.hooks``); a hook that returns
   True ends the run after the current epoch.

An epoch runs as one or more *chunks*: steps ``[start, stop)`` of the epoch's permutation
(``fold_in(shuffle_key, epoch)``, recomputed on resume). Without ``checkpoint_every`` a chunk is
the whole epoch; with ``checkpoint_every = N`` chunks end at the epoch positions N, 2N, ... and
at the epoch end, where the checkpoint hook writes a checkpoint. The chunk boundaries depend only
on the step count, so a run resumed from any checkpoint executes exactly the programs of the
uninterrupted run and ends with bitwise identical parameters.

The NaN guard (``train.train_step_fn(..., skip_nonfinite=True)``) skips non-finite steps inside
the compiled chunk; the host reads the per-step ``skipped`` flags once per chunk and stops the run
(``TrainingDiverged``) when ``max_skipped_steps`` consecutive steps were skipped. The check runs
at chunk boundaries: steps after the limit inside the same chunk still run (their results are
discarded with the run), and no checkpoint is written after the limit, so the last good one is
kept. An epoch without a single finite step also stops the run (its record would have no
training loss).

Signals: inside ``StopSignals`` (a context manager for the main thread), SIGINT and SIGTERM
only set a flag. The loop reads it after each chunk's hooks, so the checkpoint hook has just
written the checkpoint of the current step, and raises ``Interrupted``; ``--resume`` from that
checkpoint is bitwise the uninterrupted run. A second signal stops at once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxvae.training import checkpoint as checkpoint_lib
from jaxvae.training import placement
from jaxvae.training import step as train


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The run section of a training config: how long, which seed, checkpoints, the NaN guard,
    early stopping and the devices."""

    epochs: int = 10  # passes over the training split
    seed: int = 0  # seeds the init, the shuffling and the noise (jax.random.key(seed))
    checkpoint_every: int | None = None  # write an Orbax checkpoint into OUTDIR/checkpoints
    #   every this many steps and at each epoch end (None: no checkpoints)
    keep_checkpoints: int = 3  # how many of the latest checkpoints to keep
    max_skipped_steps: int = 10  # stop after this many consecutive steps with a non-finite
    #   loss or gradient
    patience: int | None = None  # stop after this many epochs without a lower validation loss
    #   and keep the best epoch's state; None or 0 = off (train all epochs, no validation split)
    validation_fraction: float = 0.1  # share of the training split held out (stratified) as
    #   the validation set when patience is set
    num_devices: int | None = None  # split each batch over this many local devices (data
    #   parallel; None = all); the largest count not above it that divides batch_size is used

    def validate(self) -> None:
        """Raises ValueError / TypeError naming the first field that cannot work."""
        for name in ("epochs", "seed", "checkpoint_every", "keep_checkpoints",
                     "max_skipped_steps"):
            value = getattr(self, name)
            if value is None and name == "checkpoint_every":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if name != "seed" and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not -2**63 <= self.seed < 2**63:  # jax.random.key takes a 64-bit integer
            raise ValueError(f"seed must fit in 64 bits (-2**63 <= seed < 2**63), got "
                             f"{self.seed}")
        for name, low, meaning in (("patience", 0, ""), ("num_devices", 1, " (all local devices)")):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise ValueError(f"{name} must be None{meaning} or an int >= {low}, got "
                                 f"{value!r}")
        fraction = self.validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not 0.0 < fraction < 1.0:
            raise ValueError(f"validation_fraction must be a number in (0, 1), got "
                             f"{fraction!r}")


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class Interrupted(Exception):
    """The run stopped at a chunk boundary because of a signal (SIGINT, SIGTERM)."""

    def __init__(self, signum: int, step: int | None, checkpoint: str | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        if step is None:
            where = "stopped at once (second signal), without a checkpoint"
        elif checkpoint is not None:
            where = f"stopped at step {step}; checkpoint {checkpoint} written"
        else:
            where = f"stopped at step {step} without a checkpoint"
        super().__init__(f"interrupted by {name}: {where}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + self.signum


class StopSignals:
    """Turns SIGINT and SIGTERM into a request to stop at the next chunk boundary.

    ``with StopSignals() as stop: ... stop.received`` (the signal number, or None). The
    handler only records the signal; a second signal raises ``Interrupted`` at once. The
    previous handlers are restored on exit. Outside the main thread (where Python cannot set
    handlers) it installs nothing and ``received`` stays None.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise Interrupted(signum, None, None)
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __call__(self) -> int | None:
        return self.received


class Progress(NamedTuple):
    """What a hook sees after each chunk of steps."""

    state: train.TrainState  # the state reached; valid only during the call (the next chunk
    #   donates it: copy what you keep)
    loop: dict  # the loop's host state (``new_loop_state``), checkpointed with the state
    record: dict | None  # at an epoch end: the epoch's history record; else None
    step_metrics: dict | None  # at an epoch end: the epoch's per-step training metrics
    model: Any = None  # the model being trained (for hooks that draw from it)


class Hook(Protocol):
    def __call__(self, step: int, progress: Progress) -> bool | None:
        """Acts on the run after a chunk; returns True to end the run after this epoch."""


class RunResult(NamedTuple):
    state: train.TrainState
    history: list[dict]  # one record per epoch
    compile_seconds: float  # compiling the chunks and the evaluation
    devices_used: int  # devices the batches were split over (all processes)


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


# ---------------------------------------------------------------------- the run's inputs


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The training split and how its batches reach the step.

    Attributes:
      train: a dict of numpy arrays with one row per example (``{"x": x_NxD, "y": y_N}``); in
        a multi-process run, this process's block of the training set.
      preprocess: ``preprocess(key, batch) -> batch`` transforms each training batch on the
        device (dynamic binarization, dequantization) with the key
        ``fold_in(fold_in(data_key, epoch), position)``; None: the batches as they are.
      data_key: the key ``preprocess`` draws from (``jaxvae.data.preprocessing.data_key``);
        needed with ``preprocess``, unused without it.
      stream: True keeps the training split in host memory and sends each chunk's batches to
        the devices (``placement.HostFeed``); False places it on the devices once
        (``placement.DeviceFeed``).
      lengths, bucket_bounds: for rows of token ids padded at the end, each example's length
        ``(N,)`` and rising bucket bounds (``placement.bucket_bounds``): batches are drawn
        within buckets of similar length and cut to their bucket's bound
        (``placement.BucketFeed``; on the devices, one process). A loss that padding does not
        change trains the same, in less time. Empty bounds: no buckets.
    """

    train: dict
    preprocess: Callable[[jax.Array, Any], Any] | None = None
    data_key: jax.Array | None = None
    stream: bool = False
    lengths: Any = None
    bucket_bounds: tuple = ()

    def __post_init__(self) -> None:
        if self.preprocess is not None and self.data_key is None:
            raise ValueError("TrainingData: preprocess needs a data_key to draw its batch keys "
                             "from; pass data_key=jaxvae.data.preprocessing.data_key(seed)")
        if self.bucket_bounds and (self.lengths is None or self.stream):
            raise ValueError("TrainingData: length buckets need the rows' lengths and the data "
                             "on the devices (stream=False)")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What the loop evaluates after each epoch, with the parameters at the epoch's end.

    The held-out splits are scored in batches of ``config.evaluation.eval_batch_size`` with the
    ``eval`` run key; each split ``name`` adds ``name_loss``, ``name_recon``, ... (the loss's
    metrics, per example) to the epoch's record.

    Attributes:
      test: the test split (a dict of numpy arrays; the whole split in every process), scored
        into ``test_loss``, ...; None: no test loss.
      val: the validation split held out of the training data (early stopping), scored into
        ``val_loss``, ...; None: no validation loss.
      loss_fn: the loss the splits are scored with (e.g. without word dropout); None: the
        training loss.
      evaluate_params: ``evaluate_params(params) -> dict`` adds its entries to each record
        (e.g. a classifier's ``test_accuracy``); None: nothing more.
    """

    test: dict | None = None
    val: dict | None = None
    loss_fn: train.LossFn | None = None
    evaluate_params: Callable[[Any], dict] | None = None


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """Where the run writes its checkpoints, and whether it continues from them.

    A checkpoint (state, run keys, the loop's host state and the config, which must be a
    ``TrainConfig``) is written at every epoch end and every ``config.run.checkpoint_every``
    steps; the last ``config.run.keep_checkpoints`` are kept; only process 0 writes.

    Attributes:
      directory: the checkpoint directory.
      resume: True continues from the newest readable checkpoint (bitwise the uninterrupted
        run; the config must equal the saved run's); False refuses a directory that already
        holds checkpoints.
      on_resume: ``on_resume(history)`` is called on resume with the records of the epochs
        already done; None: not called.
    """

    directory: str | os.PathLike
    resume: bool = False
    on_resume: Callable[[list[dict]], Any] | None = None

    def __post_init__(self) -> None:
        if self.directory is None:
            raise ValueError("Checkpointing needs a directory (checkpoint_dir) to write the "
                             "checkpoints into and resume from; pass checkpointing=None to "
                             "train without checkpoints")


# ----------------------------------------------------------------------------- the run


def train_run(config, data: TrainingData, loss_fn: train.LossFn, tx,
              state: train.TrainState, keys, *, evaluation: Evaluation = Evaluation(),
              hooks: Sequence[Hook] = (), checkpointing: Checkpointing | None = None,
              model: Any = None,
              stop_requested: Callable[[], int | None] | None = None) -> RunResult:
    """Trains ``state`` on ``data.train`` for ``config.run.epochs`` epochs.

    The arguments are the concepts of a run: what trains (``state``, updated by ``tx`` on the
    gradients of ``loss_fn``) on which data (``data``: the training split and how it is fed),
    what is reported after each epoch (``evaluation``: the held-out splits and their loss),
    who acts between chunks of steps (``hooks``, ``checkpointing``, ``stop_requested``) and
    the settings of all of them (``config``). The training split and the held-out splits are
    separate records because only the training split is shuffled, preprocessed and streamed,
    and only the held-out splits are scored with the evaluation loss.

    Args:
      config: a ``jaxvae.TrainConfig``, or a ``jaxvae.config.LoopConfig`` of its ``run``,
        ``optimizer`` and ``evaluation`` sections. The loop reads ``run`` (epochs,
        checkpoint_every, keep_checkpoints, max_skipped_steps, num_devices), ``optimizer``
        (batch_size, microbatch_size) and ``evaluation`` (eval_batch_size). With
        ``checkpointing`` it must be a ``TrainConfig``: it is saved with each checkpoint.
      data: the training split, its on-device preprocessing and its placement.
      loss_fn: ``loss_fn(params, batch, key, step) -> (loss, metrics)``, the training loss.
      tx: the optax optimizer that ``state`` was created with.
      state: the ``TrainState`` to start from (replaced by the checkpoint's on resume).
      keys: a NamedTuple with ``train``, ``shuffle`` and ``eval`` keys
        (``jaxvae.training.fit.run_keys``).
      evaluation: the splits scored after each epoch, the loss they are scored with and any
        further entries of the record; the default evaluates nothing.
      hooks: called as ``hook(step, progress)`` after each chunk of steps and at each epoch
        end (``jaxvae.training.hooks``); a hook that returns True ends the run after the
        current epoch.
      checkpointing: where to write checkpoints and whether to resume; None: no checkpoints.
      model: the model being trained, handed to the hooks (``Progress.model``).
      stop_requested: ``stop_requested()`` (e.g. a ``StopSignals``) is read after each chunk's
        hooks: a signal number ends the run with ``Interrupted`` (after the checkpoint of that
        step, with ``checkpointing``).

    Returns:
      A ``RunResult``: the final state, one record per epoch, the compile time and the devices
      the batches were split over.

    Raises:
      TrainingDiverged: too many consecutive non-finite steps, or an epoch without one finite
        step.
      Interrupted: ``stop_requested()`` returned a signal number.
      ValueError: a combination the data placement cannot run, or checkpoints that cannot be
        resumed.
    """
    multi = jax.process_count() > 1
    run, batch_size = config.run, config.optimizer.batch_size
    microbatch_size = config.optimizer.microbatch_size
    if multi and (data.preprocess is not None or data.stream):
        raise ValueError("multi-process training supports neither batch preprocessing "
                         "(--binarize dynamic, --dequantize) nor --feed stream yet: use "
                         "--binarize static / none and --feed device")
    if multi and data.bucket_bounds:
        raise ValueError("length buckets work with the data on one process's devices only")
    if microbatch_size is not None and (multi or data.stream):
        raise ValueError("microbatch_size (--microbatch-size) works with the data on one "
                         "process's devices (--feed device, one process) only: drop it for "
                         "multi-process or streamed training")

    # The loop's state: new, or the newest checkpoint's.
    loop = new_loop_state()
    checkpoints = None
    if checkpointing is not None:
        checkpoints = CheckpointHook(checkpointing.directory, config, keys)
        restored = checkpoints.restore_if(checkpointing.resume, state)
        if restored is not None:
            state, keys, loop = restored
            if checkpointing.on_resume is not None:
                checkpointing.on_resume(list(loop["history"]))

    # Where the data lives: the feed hands each chunk its batches.
    if multi:
        feed = placement.ProcessFeed(data.train, batch_size, keys.shuffle)
    else:
        devices = placement.data_parallel_devices(batch_size, run.num_devices)
        if data.bucket_bounds:
            feed = placement.BucketFeed(data.train, batch_size, keys.shuffle, devices,
                                        data.lengths, data.bucket_bounds)
        else:
            feed_type = placement.HostFeed if data.stream else placement.DeviceFeed
            feed = feed_type(data.train, batch_size, keys.shuffle, devices)
    state = feed.place_state(state)

    # The evaluation, compiled once for the test (and validation) split.
    t0 = time.perf_counter()
    eval_loss_fn = loss_fn if evaluation.loss_fn is None else evaluation.loss_fn
    splits = {name: split for name, split in (("test", evaluation.test), ("val", evaluation.val))
              if split is not None}
    evaluators = {}
    for name, split in splits.items():
        split = feed.place_eval(split)
        eval_batch_size = min(config.evaluation.eval_batch_size, len(jax.tree.leaves(split)[0]))
        params, step = feed.to_host(state.params), feed.to_host(state.step)
        if multi:
            params, step = jax.device_put((params, step), jax.local_devices()[0])
        evaluate = train.make_evaluate(eval_loss_fn, eval_batch_size).lower(
            params, split, keys.eval, step).compile()
        evaluators[name] = (evaluate, split)
    compile_seconds = time.perf_counter() - t0

    def evaluate_state(state) -> dict:
        params, step = feed.to_host(state.params), feed.to_host(state.step)
        if multi:
            params, step = jax.device_put((params, step), jax.local_devices()[0])
        out = {f"{name}_{k}": float(v) for name, (evaluate, split) in evaluators.items()
               for k, v in jax.device_get(evaluate(params, split, keys.eval, step)).items()}
        if evaluation.evaluate_params is not None:
            out.update(evaluation.evaluate_params(params))
        return out

    t0 = time.perf_counter()
    feed.permutation(loop["epoch"])  # the first call compiles: keep it out of the epoch's time
    compile_seconds += time.perf_counter() - t0
    chunk = train.make_train_chunk(loss_fn, tx, preprocess=data.preprocess,
                                   microbatch_size=microbatch_size)
    run_chunk = _chunk_runner(chunk, feed, placement.run_key_for(feed, keys.train),
                              data.preprocess, data.data_key)
    all_hooks = ([checkpoints] if checkpoints is not None else []) + list(hooks)
    try:
        state, loop, chunk_compile = run_epochs(
            state=state, loop=loop, run_chunk=run_chunk, steps_per_epoch=feed.steps_per_epoch,
            evaluate=evaluate_state, hooks=all_hooks, epochs=run.epochs,
            max_skipped_steps=run.max_skipped_steps,
            checkpoint_every=run.checkpoint_every, model=model,
            stop_requested=stop_requested)
    finally:
        if checkpoints is not None:
            checkpoints.close()
    if multi:
        state = jax.device_put(feed.to_host(state), jax.local_devices()[0])
    devices_used = jax.device_count() if multi else feed.num_devices
    return RunResult(state, loop["history"], compile_seconds + chunk_compile, devices_used)


def _chunk_runner(chunk: Callable, feed, run_key, preprocess, data_key) -> Callable:
    """``run_chunk(state, epoch, start, stop) -> (state, step_metrics, batch_sizes,
    compile_seconds)``: the feed's pieces of steps [start, stop) through the compiled chunk."""
    compiled: dict = {}

    def run_chunk(state, epoch: int, start: int, stop: int):
        preprocess_key = None if preprocess is None else jax.random.fold_in(data_key, epoch)
        metrics, sizes, compile_seconds = [], [], 0.0
        for piece in feed.pieces(epoch, start, stop):
            args = (state, piece.data, piece.items, piece.positions, run_key, preprocess_key)
            signature = (jax.tree.map(np.shape, piece.items), piece.batch_sharding,
                         jax.tree.map(np.shape, piece.data))
            signature = (str(signature), piece.data is None)
            if signature not in compiled:
                jax.block_until_ready(state)  # no earlier piece runs on during the compile
                t0 = time.perf_counter()
                compiled[signature] = chunk.lower(
                    *args, batch_sharding=piece.batch_sharding).compile()
                compile_seconds += time.perf_counter() - t0
            state, m = compiled[signature](*args)
            metrics.append(m)
            sizes += piece.sizes
        metrics = [jax.device_get(feed.to_host(m)) for m in metrics]
        metrics = jax.tree.map(lambda *m: np.concatenate(m), *metrics)
        return state, metrics, np.asarray(sizes, np.float64), compile_seconds

    return run_chunk


# ---------------------------------------------------------------------------- the loop


def run_epochs(*, state: train.TrainState, loop: dict, run_chunk: Callable,
               steps_per_epoch: int, evaluate: Callable[[train.TrainState], dict],
               hooks: Sequence[Hook], epochs: int, max_skipped_steps: int,
               checkpoint_every: int | None, model: Any = None,
               stop_requested: Callable[[], int | None] | None = None
               ) -> tuple[train.TrainState, dict, float]:
    """Runs epochs ``loop["epoch"] .. epochs`` from ``loop``'s position.

    ``run_chunk(state, epoch, start, stop) -> (state, step_metrics, batch_sizes, compile_s)``;
    ``evaluate(state)`` returns the record's evaluation entries (``test_loss``, ...). After a
    chunk that ends inside an epoch, and once at each epoch end (after the evaluation, with the
    epoch's record), every hook is called as ``hook(step, Progress(...))``; the run ends after
    an epoch in which a hook returned True. ``stop_requested()`` is read after the hooks of
    every chunk but the run's last.

    Returns:
      ``(state, loop, compile_seconds)``.

    Raises:
      TrainingDiverged: ``max_skipped_steps`` consecutive skipped steps, or an epoch in which
        every step was skipped.
      Interrupted: ``stop_requested()`` returned a signal number.
    """

    def check_stop(step: int) -> None:
        signum = None if stop_requested is None else stop_requested()
        if signum is not None:
            raise Interrupted(signum, step, loop.get("last_checkpoint"))

    compile_total = 0.0
    while loop["epoch"] <= epochs:
        epoch = loop["epoch"]
        epoch_steps, stop_run = [], False
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
            _account(loop, metrics, sizes, first, max_skipped_steps)
            loop["position"] = stop
            if stop < steps_per_epoch:  # (the epoch end calls the hooks below)
                stop_run |= _call(hooks, first + len(sizes), Progress(state, loop, None, None,
                                                                        model))
                check_stop(first + len(sizes))
        if not loop["examples"]:
            raise TrainingDiverged(
                f"training diverged: no step of epoch {epoch} had a finite loss and gradient "
                f"(all {loop['skipped']} skipped; "
                + ("no step of the run had a finite loss" if loop["last_finite_loss"] is None
                   else f"the last finite loss was {loop['last_finite_loss']:.6g} at step "
                        f"{loop['last_finite_step']}")
                + (f"; the last checkpoint, {loop['last_checkpoint']}, is kept"
                   if loop.get("last_checkpoint") else "")
                + "). Lower the learning rate (--lr), clip gradients (--clip-norm) or scale "
                "the data to values around 1 (--standardize feature, for the Gaussian "
                "likelihoods).")
        record = {"epoch": epoch, "step": epoch * steps_per_epoch,
                  **{f"train_{k}": v / loop["examples"] for k, v in loop["sums"].items()},
                  "train_skipped": loop["skipped"],
                  **evaluate(state),
                  "seconds": loop["seconds"]}
        loop.update(new_loop_state(), history=loop["history"] + [record], epoch=epoch + 1,
                    consecutive_skipped=loop["consecutive_skipped"],
                    last_finite_loss=loop["last_finite_loss"],
                    last_finite_step=loop["last_finite_step"],
                    **({"last_checkpoint": loop["last_checkpoint"]}
                       if "last_checkpoint" in loop else {}))
        step_metrics = jax.tree.map(lambda *m: np.concatenate(m), *epoch_steps)
        stop_run |= _call(hooks, epoch * steps_per_epoch,
                          Progress(state, loop, record, step_metrics, model))
        if stop_run:
            break
        if loop["epoch"] <= epochs:  # a signal during the last epoch lets the run finish
            check_stop(epoch * steps_per_epoch)
    return state, loop, compile_total


def _call(hooks: Sequence[Hook], step: int, progress: Progress) -> bool:
    stop = False
    for hook in hooks:
        stop |= bool(hook(step, progress))
    return stop


def _account(loop: dict, metrics: dict, sizes: np.ndarray, first: int,
             max_skipped: int) -> None:
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
                saved = loop.get("last_checkpoint")
                kept = (f"the last good checkpoint, {saved}, is kept" if saved
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


# ------------------------------------------------------------------------- checkpoints


class CheckpointHook:
    """Writes an Orbax checkpoint of the state, the run keys and the loop state at each call.

    ``train_run`` puts it first among the hooks, so it is called after every chunk that ends
    inside an epoch (``checkpoint_every``) and at every epoch end. Only process 0 writes. The
    loop's ``last_checkpoint`` names the newest checkpoint written (for error messages); it is
    not part of the saved loop state.
    """

    def __init__(self, directory, config, keys):
        self.config = config
        self.config_json = config.to_dict()
        self.keys = keys
        self.manager = checkpoint_lib.CheckpointManager(
            directory, config.run.keep_checkpoints, writer=jax.process_index() == 0)

    def restore_if(self, resume: bool, template: train.TrainState):
        """``(state, keys, loop)`` of the newest readable checkpoint when resuming, else None.

        Refuses to start over existing checkpoints, to resume without any, and to resume
        with a config that differs from the saved run's.
        """
        manager = self.manager
        steps = manager.all_steps()
        if steps and not resume:
            raise ValueError(f"{manager.directory} already holds checkpoints (steps {steps}); "
                             "pass resume=True (--resume) to continue that run, or train into "
                             "another directory")
        if resume and not steps:
            raise ValueError(f"nothing to resume: no checkpoint in {manager.directory}; run "
                             "without resume (--resume) to start a new run")
        if not steps:
            return None

        def check(saved: dict) -> None:
            # Compared by flat field name: checkpoints hold the sectioned config or, written
            # by older versions, the flat one.
            flatten = type(self.config).flatten_dict
            defaults = getattr(type(self.config), "flat_defaults", lambda: None)()
            diffs = checkpoint_lib.config_differences(flatten(saved), flatten(self.config_json),
                                                      defaults=defaults)
            if diffs:
                raise _ConfigMismatch(
                    f"cannot resume from {manager.directory}: the config differs from the "
                    "saved run's (" + "; ".join(diffs) + "); resume with the saved values "
                    "or start a new run in another directory")

        restored = manager.restore_latest(template, tuple(self.keys._fields),
                                          check_config=check)
        checkpoint_lib.check_resumable_epochs(restored, self.config.run.epochs)
        self.keys = type(self.keys)(**restored.keys)
        loop = {**restored.loop, "last_checkpoint": str(restored.path)}
        return jax.tree.map(jnp.asarray, restored.state), self.keys, loop

    def __call__(self, step: int, progress: Progress) -> None:
        loop = {k: v for k, v in progress.loop.items() if k != "last_checkpoint"}
        if self.manager.writer:
            path = self.manager.save(progress.state, self.keys._asdict(), loop,
                                     self.config_json)
            progress.loop["last_checkpoint"] = None if path is None else str(path)

    def close(self) -> None:
        self.manager.close()


class _ConfigMismatch(ValueError):
    pass
