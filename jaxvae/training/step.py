"""Training: the train state, the step, the compiled chunk of steps, evaluation.

A training objective is any pure ``loss_fn(params, batch, key, step) -> (loss, metrics)`` (a
scalar and a dict of scalars; ``step`` is the int32 number of updates applied so far, for
schedules such as KL warm-up); ``vae_loss_fn`` makes the VAE's. Every function here is built from a
loss_fn and an optax optimizer, so every model trains through the same code.

Randomness: the step with ``state.step == s`` uses the key ``fold_in(run_key, s)``, so a run
resumed from a checkpoint draws exactly the numbers the uninterrupted run would have drawn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvae.objectives import bounds as objectives

LossFn = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; the optimizer itself is not in it)."""

    step: jax.Array  # int32 scalar: the number of updates applied so far
    params: Any
    opt_state: Any


def create_train_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """The state before the first step.

    The parameters are copied: the jitted steps donate the state, and the caller's ``params``
    must stay usable after the first step.

    Examples:
      >>> import jax, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> params = jaxvae.init(model, jax.random.key(0))
      >>> state = jaxvae.create_train_state(params, jaxvae.make_optimizer(1e-3))
      >>> int(state.step), state.params is params  # step 0, a copy of the parameters
      (0, False)
    """
    def build(params):  # one compiled program instead of an operation per parameter
        params = jax.tree.map(lambda p: jnp.array(p, copy=True), params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params))

    return jax.jit(build)(params)


LR_SCHEDULES = ("constant", "iwae", "cosine")


def make_lr_schedule(name: str, lr: float, total_steps: int = 0) -> optax.ScalarOrSchedule:
    """The learning rate at each step.

    - ``constant``: lr.
    - ``iwae``: the schedule of Burda et al. (2016): 8 stages i = 0..7 at lr * 10**(-i/7), stage i
      lasting 3**i / 3280 of ``total_steps`` (with 3,280 epochs: 3**i epochs each, the paper's).
    - ``cosine``: lr * (1 + cos(pi t / total_steps)) / 2, from lr to 0 (Loshchilov & Hutter 2017).

    Examples:
      >>> from jaxvae.training import step
      >>> schedule = step.make_lr_schedule("iwae", 1e-3, total_steps=3280)
      >>> [float(f"{float(schedule(t)):.3g}") for t in (0, 1, 4, 3279)]
      [0.001, 0.00072, 0.000518, 0.0001]
    """
    if name not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; choose one of "
                         f"{list(LR_SCHEDULES)}")
    if name == "constant":
        return float(lr)
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"the {name} learning-rate schedule needs total_steps >= 1, got "
                         f"{total_steps!r}")
    if name == "cosine":
        return optax.cosine_decay_schedule(float(lr), total_steps)
    ends = np.cumsum([3 ** i for i in range(8)]) / 3280  # stage i ends at ends[i] of the run
    return optax.piecewise_constant_schedule(
        float(lr), {int(round(e * total_steps)): 10 ** (-1 / 7) for e in ends[:-1]})


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer section of a training config: the batch, Adam, its learning-rate schedule,
    gradient clipping and micro-batches (the gradient of one update)."""

    batch_size: int = 128  # examples per gradient step (the reference's 128)
    lr: float = 1e-3  # Adam learning rate (the reference's 1e-3)
    lr_schedule: str = "constant"  # the learning rate over the run: constant, iwae (8 stages at
    #   lr * 10**(-i/7) lasting 3**i/3280 of the run: Burda et al. 2016) or cosine (to 0)
    lr_total_steps: int = 0  # steps the lr schedule spans; 0 = the whole run
    adam_eps: float = 1e-8  # Adam's epsilon (PyTorch's 1e-8; the IWAE paper's 1e-4)
    clip_norm: float | None = None  # clip gradients to this global L2 norm (None: no clipping)
    microbatch_size: int | None = None  # accumulate each batch's gradient over micro-batches
    #   of this size (it must divide batch_size): the same update in expectation, faster at
    #   large batches on a CPU (cache-sized activations); None = off

    def validate(self) -> None:
        """Raises ValueError / TypeError naming the first field that cannot work."""
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise TypeError(f"batch_size must be an int, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise TypeError(f"lr must be a number, got {lr!r}")
        if not math.isfinite(lr):
            raise ValueError(f"lr must be finite, got {lr}")
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.lr_schedule!r}; choose one "
                             f"of {list(LR_SCHEDULES)}")
        total = self.lr_total_steps
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"lr_total_steps must be an int >= 0 (0: the whole run), got "
                             f"{total!r}")
        eps = self.adam_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
            raise ValueError(f"adam_eps must be a finite number > 0, got {eps!r}")
        if self.clip_norm is not None:
            value = self.clip_norm
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"clip_norm must be a number or None, got {value!r}")
            if not 0 < value < math.inf:
                raise ValueError(f"clip_norm must be a finite number > 0 (or None), got {value}")
        check_microbatch_size(self.microbatch_size, self.batch_size)

    def make(self) -> optax.GradientTransformation:
        """``make_optimizer`` with these settings (``lr_total_steps`` > 0 for a decaying
        schedule: ``builders.prepare`` fills in the run's steps)."""
        return make_optimizer(self.lr, clip_norm=self.clip_norm, schedule=self.lr_schedule,
                              total_steps=self.lr_total_steps, eps=self.adam_eps)


def make_optimizer(lr: float = 1e-3, clip_norm: float | None = None, *,
                   schedule: str = "constant", total_steps: int = 0, eps: float = 1e-8
                   ) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015) with PyTorch's defaults: b1 0.9, b2 0.999, eps 1e-8.

    The learning rate follows ``make_lr_schedule(schedule, lr, total_steps)``; ``eps`` is Adam's
    epsilon (the IWAE paper's 1e-4). With ``clip_norm``, gradients are first rescaled to a
    global L2 norm of at most clip_norm (``optax.clip_by_global_norm``, Pascanu et al. 2013).

    Examples:
      >>> import jax.numpy as jnp, jaxvae
      >>> tx = jaxvae.make_optimizer(lr=1e-3, clip_norm=1.0)
      >>> params = {"w": jnp.zeros(3)}
      >>> updates, _ = tx.update({"w": jnp.array([4.0, -2.0, 0.5])}, tx.init(params), params)
      >>> [round(u, 6) for u in updates["w"].tolist()]  # Adam's first step: -lr * sign(grad)
      [-0.001, 0.001, -0.001]
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"learning rate must be a number, got {type(lr).__name__}")
    if not lr > 0 or lr != lr or lr == float("inf"):
        raise ValueError(f"learning rate must be a finite number > 0, got {lr}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < float("inf"):
        raise ValueError(f"Adam's eps must be a finite number > 0, got {eps!r}")
    adam = optax.adam(make_lr_schedule(schedule, lr, total_steps), eps=float(eps))
    if clip_norm is None:
        return adam
    if isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float)):
        raise TypeError(f"clip_norm must be a number or None, got {type(clip_norm).__name__}")
    if not 0 < clip_norm < float("inf"):
        raise ValueError(f"clip_norm must be a finite number > 0 (or None: no clipping), got "
                         f"{clip_norm}")
    return optax.chain(optax.clip_by_global_norm(float(clip_norm)), adam)


def _global_noise(axis_name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Noise for this device's rows of the global batch, inside pmap/shard_map over axis_name.

    Draws N(0, I) for all devices' rows with the shared key and keeps this device's slice, so a
    data-parallel step uses exactly the single-device step's eps.
    """

    def draw(key: jax.Array, mean_BxZ: jax.Array) -> jax.Array:
        num_devices = jax.lax.psum(1, axis_name)
        local = mean_BxZ.shape[0]
        eps_GxZ = jax.random.normal(key, (num_devices * local,) + mean_BxZ.shape[1:],
                                    mean_BxZ.dtype)
        start = jax.lax.axis_index(axis_name) * local
        return jax.lax.dynamic_slice_in_dim(eps_GxZ, start, local, axis=0)

    return draw


def vae_loss_fn(model: nn.Module, beta: float = 1.0, likelihood: str = "bernoulli",
                axis_name: str | None = None) -> LossFn:
    """``loss_fn(params, x, key, step)`` of ``jaxvae.loss`` for a fixed model, beta, likelihood.

    With ``axis_name`` (inside pmap or shard_map) each device draws its rows of the global
    batch's noise, so data-parallel training matches single-device training exactly.
    """
    objectives.check_likelihood(likelihood)
    if axis_name is None:
        return lambda params, x, key, step=None: objectives.loss(model, params, x, key, beta,
                                                                 likelihood)
    draw = _global_noise(axis_name)

    def loss_fn(params, x, key, step=None):
        del step  # a constant beta
        recon_B, kl_B = objectives.elbo_terms(model, params, x, lambda m: draw(key, m),
                                              likelihood)
        return objectives.batch_metrics(recon_B, kl_B, beta)

    return loss_fn


def check_microbatch_size(microbatch_size: int | None, batch_size: int | None = None
                          ) -> int | None:
    """Validates a micro-batch size (None: off) against the batch size it must divide."""
    if microbatch_size is None:
        return None
    if isinstance(microbatch_size, bool) or not isinstance(microbatch_size, int):
        raise TypeError(f"microbatch_size must be an int or None, got {microbatch_size!r}")
    if microbatch_size < 1:
        raise ValueError(f"microbatch_size must be >= 1 (or None: no micro-batches), got "
                         f"{microbatch_size}")
    if batch_size is not None and batch_size % microbatch_size:
        # the largest divisor of the batch size below the request (searched up to the batch
        # size: a request of 2**31 must not take a minute to refuse)
        divisor = max(d for d in range(1, min(microbatch_size, batch_size) + 1)
                      if batch_size % d == 0)
        raise ValueError(f"microbatch_size {microbatch_size} does not divide the batch size "
                         f"{batch_size}; choose a divisor (e.g. {divisor})")
    return microbatch_size


def microbatched_value_and_grad(loss_fn: LossFn, microbatch_size: int | None,
                                micro_sharding: jax.sharding.Sharding | None = None) -> Callable:
    """``value_and_grad(loss_fn, has_aux=True)``, over micro-batches of a large batch.

    A batch of B = n * microbatch_size examples is split into n consecutive micro-batches;
    micro-batch i runs ``loss_fn`` with the key ``fold_in(key, i)`` under ``lax.scan`` and the
    loss, metrics and gradients are the means over the n micro-batches:

        grad (1/n) sum_i L_i(params) = (1/n) sum_i grad L_i(params),

    the gradient of the batch's mean loss (each L_i is a micro-batch mean; the micro-batches
    have the same size). The noise differs from the whole batch's (other keys), the estimator
    does not. Why: on a CPU the activations of a micro-batch of ~1,000 rows stay in cache, so
    large batches run faster (measured here at batch 8192: 38,500 samples/s whole, 46,700 with
    micro-batches of 1,024; no gain at 128). A batch that does not split evenly (an epoch's
    last, smaller batch) or is not larger than ``microbatch_size`` runs whole. None: no split.
    ``micro_sharding`` lays the stacked micro-batches ``(n, microbatch_size, ...)`` out over a
    device mesh (data parallel: each micro-batch split over the devices); values unchanged.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if microbatch_size is None:
        return grad_fn

    def value_and_grad(params, batch, key, step):
        size = jax.tree.leaves(batch)[0].shape[0]
        if size <= microbatch_size or size % microbatch_size:
            return grad_fn(params, batch, key, step)
        n = size // microbatch_size
        micro = jax.tree.map(lambda a: a.reshape((n, microbatch_size) + a.shape[1:]), batch)
        if micro_sharding is not None:
            micro = jax.lax.with_sharding_constraint(micro, micro_sharding)

        def body(total, i_mb):
            i, mb = i_mb
            out = grad_fn(params, mb, jax.random.fold_in(key, i), step)
            return jax.tree.map(jnp.add, total, out), None

        first = jax.tree.map(lambda a: a[0], micro)
        zeros = jax.tree.map(lambda sd: jnp.zeros(sd.shape, sd.dtype),
                             jax.eval_shape(grad_fn, params, first, key, step))
        total, _ = jax.lax.scan(body, zeros, (jnp.arange(n), micro))
        return jax.tree.map(lambda t: t / n, total)

    return value_and_grad


def train_step_fn(loss_fn: LossFn, tx: optax.GradientTransformation,
                  axis_name: str | None = None, *, skip_nonfinite: bool = False,
                  microbatch_size: int | None = None,
                  micro_sharding: jax.sharding.Sharding | None = None) -> Callable:
    """The un-jitted ``step(state, batch, run_key) -> (state, metrics)``.

    One gradient step on ``loss_fn`` with the key ``fold_in(run_key, state.step)``. With
    ``axis_name``, gradients and metrics are averaged over that named axis (``lax.pmean``).
    With ``microbatch_size``, the gradient is accumulated over micro-batches of the batch
    (``microbatched_value_and_grad``): the same update in expectation, computed in cache-sized
    pieces.

    With ``skip_nonfinite`` (the NaN guard), a step whose loss or any gradient is NaN or Inf
    leaves the parameters and the optimizer state unchanged (``lax.cond`` inside the compiled
    step: no host sync, and no update computed) and reports ``metrics["skipped"] = 1.0`` (0.0 otherwise).
    ``state.step`` still advances, so it always counts the batches seen and the data order and
    the keys of later steps do not depend on how many steps were skipped. On finite steps the
    result is bitwise the unguarded one.
    """

    check_microbatch_size(microbatch_size)
    grad_fn = microbatched_value_and_grad(loss_fn, microbatch_size, micro_sharding)

    def step(state: TrainState, batch: Any, run_key: jax.Array):
        key = jax.random.fold_in(run_key, state.step)
        (loss, metrics), grads = grad_fn(state.params, batch, key, state.step)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
        def update(_):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            return optax.apply_updates(state.params, updates), opt_state

        if not skip_nonfinite:
            params, opt_state = update(None)
        else:
            if axis_name is not None:  # every device takes the same decision
                loss = jax.lax.pmean(loss, axis_name)
            finite = jnp.isfinite(loss)
            for g in jax.tree.leaves(grads):
                finite = finite & jnp.all(jnp.isfinite(g))
            # lax.cond, not jnp.where over every leaf: a skipped step costs nothing and a
            # finite one no extra pass over the parameters and both Adam moments.
            params, opt_state = jax.lax.cond(
                finite, update, lambda _: (state.params, state.opt_state), None)
            metrics = {**metrics, "skipped": jnp.where(finite, 0.0, 1.0).astype(jnp.float32)}
        return TrainState(state.step + 1, params, opt_state), metrics

    return step


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *,
                    microbatch_size: int | None = None) -> Callable:
    """The jitted ``train_step(state, batch, run_key) -> (state, metrics)``, state donated.

    The key of the step is ``fold_in(run_key, state.step)``. Do not reuse a donated state.
    ``microbatch_size``: see ``train_step_fn``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxvae
      >>> model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
      >>> tx = jaxvae.make_optimizer(1e-3)
      >>> state = jaxvae.create_train_state(jaxvae.init(model, jax.random.key(0)), tx)
      >>> train_step = jaxvae.make_train_step(jaxvae.make_elbo_loss(model), tx)
      >>> state, metrics = train_step(state, {"x": jnp.zeros((3, 4))}, jax.random.key(1))
      >>> int(state.step), sorted(metrics)
      (1, ['kl', 'kl_weight', 'loss', 'recon'])
    """
    return jax.jit(train_step_fn(loss_fn, tx, microbatch_size=microbatch_size),
                   donate_argnums=0)


def _take(data: Any, idx: jax.Array) -> Any:
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)


def _num_examples(data: Any) -> int:
    return jax.tree.leaves(data)[0].shape[0]


def _weighted_mean(full: dict, rest: dict | None, batch_size: int, remainder: int) -> dict:
    """Per-example mean of per-batch means: full batches (stacked) and one smaller remainder."""
    total = jax.tree.map(lambda m: jnp.sum(m) * batch_size, full)
    if rest is not None:
        total = jax.tree.map(lambda t, r: t + r * remainder, total, rest)
    count = full[next(iter(full))].shape[0] * batch_size + remainder
    return jax.tree.map(lambda t: t / count, total)


def make_train_chunk(loss_fn: LossFn, tx: optax.GradientTransformation, *,
                     skip_nonfinite: bool = True,
                     preprocess: Callable[[jax.Array, Any], Any] | None = None,
                     microbatch_size: int | None = None) -> Callable:
    """The compiled chunk of training steps that every feed of the training loop runs.

    Returns the jitted ``chunk(state, data, items_S, positions_S, run_key, preprocess_key=None,
    *, batch_sharding=None) -> (state, step_metrics)``: S steps of ``train_step_fn`` under one
    ``lax.scan``, the state donated. Where the batches come from is the caller's choice of data
    placement:

    * in memory: ``data`` is a pytree of arrays on the device(s) and ``items_S`` holds example
      indices ``(S, B)``; step s trains on the rows ``items_S[s]`` of ``data``, gathered inside
      the program (no host work per step);
    * from the host (streamed or multi-process data): ``data`` is None and ``items_S`` is a
      pytree of batches ``(S, B, ...)`` already placed on the device(s).

    ``positions_S`` (int32, ``(S,)``) are the steps' positions in their epoch: with
    ``preprocess(key, batch)`` the batch at position i is preprocessed with
    ``fold_in(preprocess_key, i)``. ``batch_sharding`` (static) lays each batch out over a
    device mesh, split on the batch axis; the parameters stay replicated and the compiler
    partitions the step and all-reduces the gradients (data parallel). ``run_key`` is a typed
    key or its raw key data (as a multi-process run passes it).

    The NaN guard and micro-batching are the step's (``train_step_fn``).
    """
    check_microbatch_size(microbatch_size)

    def chunk(state: TrainState, data: Any, items_S: Any, positions_S: jax.Array,
              run_key: jax.Array, preprocess_key: jax.Array | None = None, *,
              batch_sharding: jax.sharding.Sharding | None = None):
        if not jax.dtypes.issubdtype(run_key.dtype, jax.dtypes.prng_key):
            run_key = jax.random.wrap_key_data(run_key)
        micro_sharding = None
        if batch_sharding is not None and microbatch_size is not None:
            micro_sharding = jax.sharding.NamedSharding(
                batch_sharding.mesh, jax.sharding.PartitionSpec(None, *batch_sharding.spec))
            if microbatch_size % batch_sharding.mesh.size:
                micro_sharding = None  # micro-batches the devices do not divide: as they come
        step = train_step_fn(loss_fn, tx, skip_nonfinite=skip_nonfinite,
                             microbatch_size=microbatch_size, micro_sharding=micro_sharding)

        def body(state, position_item):
            position, item = position_item
            batch = item if data is None else _take(data, item)
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            if preprocess is not None:
                batch = preprocess(jax.random.fold_in(preprocess_key, position), batch)
            return step(state, batch, run_key)

        return jax.lax.scan(body, state, (positions_S, items_S))

    return jax.jit(chunk, static_argnames="batch_sharding", donate_argnums=0)


class EpochOutput(NamedTuple):
    state: TrainState
    metrics: dict  # per-example means over the epoch
    step_metrics: dict  # per-step values, shape (num_steps,)


def make_train_epoch(loss_fn: LossFn, tx: optax.GradientTransformation, batch_size: int,
                     *, preprocess: Callable[[jax.Array, Any], Any] | None = None,
                     microbatch_size: int | None = None,
                     skip_nonfinite: bool = False) -> Callable:
    """One epoch with the data on the device: ``train_epoch(state, data, shuffle_key, run_key)``.

    Draws the permutation ``jax.random.permutation(shuffle_key, N)`` and runs the full
    batches as one ``make_train_chunk`` call, then one smaller batch with the remainder (as a
    PyTorch DataLoader with drop_last=False does). The state is donated.

    With ``preprocess(key, batch) -> batch`` (e.g. dynamic binarization, see
    ``jaxvae.data.preprocessing``), the epoch takes a fifth argument ``preprocess_key`` and batch i
    of the epoch is ``preprocess(fold_in(preprocess_key, i), batch)``, on the device.

    With ``microbatch_size`` (it must divide ``batch_size``), every full batch's gradient is
    accumulated over micro-batches (``microbatched_value_and_grad``); faster at large batches
    on a CPU. ``skip_nonfinite``: the NaN guard of ``train_step_fn``.

    Returns:
      ``EpochOutput(state, metrics, step_metrics)``.
    """
    check_microbatch_size(microbatch_size, batch_size)
    chunk = make_train_chunk(loss_fn, tx, skip_nonfinite=skip_nonfinite, preprocess=preprocess,
                             microbatch_size=microbatch_size)
    permutation = jax.jit(jax.random.permutation, static_argnums=1)

    def train_epoch(state: TrainState, data: Any, shuffle_key: jax.Array, run_key: jax.Array,
                    preprocess_key: jax.Array | None = None):
        if preprocess is not None and preprocess_key is None:
            raise TypeError("this epoch preprocesses its batches: pass preprocess_key")
        n = _num_examples(data)
        num_full, remainder = divmod(n, batch_size)
        perm = permutation(shuffle_key, n)
        state, full = chunk(state, data, perm[:num_full * batch_size].reshape(num_full, -1),
                            jnp.arange(num_full, dtype=jnp.int32), run_key, preprocess_key)
        rest = None
        if remainder:
            state, rest = chunk(state, data, perm[num_full * batch_size:][None],
                                jnp.full((1,), num_full, jnp.int32), run_key, preprocess_key)
            rest = jax.tree.map(lambda r: r[0], rest)
        steps = full if rest is None else jax.tree.map(
            lambda f, r: jnp.concatenate([f, r[None]]), full, rest)
        return EpochOutput(state, _weighted_mean(full, rest, batch_size, remainder), steps)

    train_epoch.chunk = chunk  # the compiled chunk (its cache shows recompilations)
    return train_epoch


def make_evaluate(loss_fn: LossFn, batch_size: int = 500) -> Callable:
    """Jitted ``evaluate(params, data, key, step) -> metrics``: per-example means over all of data.

    Batches in order (a scan plus one remainder batch), the key of batch i is fold_in(key, i);
    ``step`` (the training step reached) is passed to the loss for its schedules.
    """

    def evaluate(params: Any, data: Any, key: jax.Array, step: jax.Array) -> dict:
        n = _num_examples(data)
        num_full, remainder = divmod(n, batch_size)
        idx = jnp.arange(n)

        def body(_, i):
            batch = _take(data, jax.lax.dynamic_slice_in_dim(idx, i * batch_size, batch_size))
            return None, loss_fn(params, batch, jax.random.fold_in(key, i), step)[1]

        full = {}
        if num_full:
            _, full = jax.lax.scan(body, None, jnp.arange(num_full))
        rest = None
        if remainder:
            rest = loss_fn(params, _take(data, idx[num_full * batch_size:]),
                           jax.random.fold_in(key, num_full), step)[1]
        if not num_full:
            return rest
        return _weighted_mean(full, rest, batch_size, remainder)

    return jax.jit(evaluate)
