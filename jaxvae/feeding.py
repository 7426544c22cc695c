"""Feeding data that does not fit on the device: host batches, prefetched onto the device.

Data that fits is put on the device once and gathered by index inside the compiled epoch
(``train.make_train_epoch``; the fast path). For larger data (or ``feed="stream"``),
``make_streaming_epoch`` runs the same epoch from host memory (numpy arrays or ``np.memmap``):
the same permutation ``jax.random.permutation(shuffle_key, n)``, the same batches in the same
order, the same step keys and preprocessing keys, so both paths train the same model (to
float32 rounding). ``prefetch_to_device`` keeps the next batches already on the device while the
current step runs, so the host gather and the transfer overlap the computation.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
import optax

from jaxvae import train

# The share of the free device memory the training data may take on the fast path; the rest is
# left for parameters, optimizer state, activations and the per-batch gather.
DEVICE_DATA_FRACTION = 0.5


def fits_on_device(nbytes: int, device: jax.Device | None = None) -> bool:
    """Whether ``nbytes`` of data fit in DEVICE_DATA_FRACTION of the device's free memory.

    Devices that report no memory limit (the CPU backend, whose memory is the host's) count as
    fitting.
    """
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # some backends do not implement memory_stats
        stats = None
    if not stats or "bytes_limit" not in stats:
        return True
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return nbytes <= DEVICE_DATA_FRACTION * free


def tree_nbytes(tree: Any) -> int:
    return sum(int(np.asarray(a).nbytes) for a in jax.tree.leaves(tree))


def epoch_permutation(shuffle_key: jax.Array, n: int) -> np.ndarray:
    """The epoch's example order: exactly the permutation ``make_train_epoch`` draws."""
    return np.asarray(jax.random.permutation(shuffle_key, n))


def host_batches(data: Any, batch_size: int, shuffle_key: jax.Array) -> Iterator[Any]:
    """The epoch's batches of a host pytree (leading example axis), as numpy pytrees.

    The full batches of ``epoch_permutation(shuffle_key, n)``, then one smaller batch with the
    remainder (as ``make_train_epoch``). Deterministic given the key.
    """
    n = jax.tree.leaves(data)[0].shape[0]
    perm = epoch_permutation(shuffle_key, n)
    for start in range(0, n, batch_size):
        idx = perm[start:start + batch_size]
        yield jax.tree.map(lambda a: np.asarray(a[idx]), data)


def prefetch_to_device(iterator: Iterable[Any], size: int = 2,
                       sharding: jax.sharding.Sharding | None = None) -> Iterator[Any]:
    """Yields the items of ``iterator`` on the device, keeping ``size`` more already sent.

    ``jax.device_put`` is asynchronous, so the transfers of the next ``size`` batches overlap
    the step running on the current one. ``sharding`` places each batch (e.g. split over a
    mesh's data axis); default the first local device.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"prefetch size must be an int >= 1, got {size!r}")
    queue: collections.deque = collections.deque()
    iterator = iter(iterator)

    def enqueue(n: int) -> None:
        for item in iterator:
            queue.append(jax.device_put(item, sharding))
            n -= 1
            if n == 0:
                return

    enqueue(size)
    while queue:
        item = queue.popleft()
        enqueue(1)
        yield item


def host_batch_range(data: Any, batch_size: int, shuffle_key: jax.Array, start: int,
                     stop: int) -> Iterator[Any]:
    """Batches ``start .. stop - 1`` of the epoch of ``host_batches`` (same order and content)."""
    n = jax.tree.leaves(data)[0].shape[0]
    perm = epoch_permutation(shuffle_key, n)
    for i in range(start, stop):
        idx = perm[i * batch_size:(i + 1) * batch_size]
        yield jax.tree.map(lambda a: np.asarray(a[idx]), data)


def make_streaming_chunk(loss_fn: train.LossFn, tx: optax.GradientTransformation,
                         batch_size: int, *,
                         preprocess: Callable[[jax.Array, Any], Any] | None = None,
                         prefetch: int = 2, skip_nonfinite: bool = False) -> Callable:
    """``chunk(state, data, shuffle_key, run_key, preprocess_key, start, stop)`` from host memory.

    Runs the epoch's batches ``start .. stop - 1`` (the order of ``host_batches``) with one
    jitted, donated step per batch (two compilations: the full batch and the remainder), the
    next batches prefetched to the device. Batch i is preprocessed with
    ``fold_in(preprocess_key, i)``, as in ``train.make_train_epoch``.

    Returns:
      ``(state, step_metrics, batch_sizes)``: metrics stacked over the steps, shape (steps,).
    """
    step = train.train_step_fn(loss_fn, tx, skip_nonfinite=skip_nonfinite)

    def step_on(state, batch, run_key, preprocess_key, i):
        if preprocess is not None:
            batch = preprocess(jax.random.fold_in(preprocess_key, i), batch)
        return step(state, batch, run_key)

    jitted = jax.jit(step_on, donate_argnums=0)

    def chunk(state, data, shuffle_key, run_key, preprocess_key, start: int, stop: int):
        if preprocess is not None and preprocess_key is None:
            raise TypeError("this epoch preprocesses its batches: pass preprocess_key")
        metrics, sizes = [], []
        batches = prefetch_to_device(host_batch_range(data, batch_size, shuffle_key, start, stop),
                                     prefetch)
        for i, batch in enumerate(batches, start):
            state, m = jitted(state, batch, run_key, preprocess_key, np.int32(i))
            metrics.append(m)
            sizes.append(jax.tree.leaves(batch)[0].shape[0])
        return state, jax.tree.map(lambda *ms: jax.numpy.stack(ms), *metrics), sizes

    return chunk


def make_streaming_epoch(loss_fn: train.LossFn, tx: optax.GradientTransformation,
                         batch_size: int, *,
                         preprocess: Callable[[jax.Array, Any], Any] | None = None,
                         prefetch: int = 2) -> Callable:
    """``train_epoch(state, data, shuffle_key, run_key[, preprocess_key])`` from host memory.

    The same contract and result as ``train.make_train_epoch`` (``EpochOutput``), for data
    that stays on the host: ``make_streaming_chunk`` over the whole epoch.
    """
    chunk = make_streaming_chunk(loss_fn, tx, batch_size, preprocess=preprocess,
                                 prefetch=prefetch)

    def train_epoch(state: train.TrainState, data: Any, shuffle_key: jax.Array,
                    run_key: jax.Array, preprocess_key: jax.Array | None = None):
        n = jax.tree.leaves(data)[0].shape[0]
        num_full, remainder = divmod(n, batch_size)
        state, steps, _ = chunk(state, data, shuffle_key, run_key, preprocess_key, 0,
                                num_full + (remainder > 0))
        full = jax.tree.map(lambda m: m[:num_full], steps)
        rest = jax.tree.map(lambda m: m[num_full], steps) if remainder else None
        return train.EpochOutput(state, train._weighted_mean(full, rest, batch_size, remainder),
                                 steps)

    return train_epoch
