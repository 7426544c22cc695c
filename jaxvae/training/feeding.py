"""Host-side helpers for data that may not fit on the device: sizes, host batches, prefetch.

Data that fits is put on the device once and gathered by index inside the compiled chunk of
steps (``placement.DeviceFeed``; the fast path). For larger data (or ``feed="stream"``) the
training loop feeds batches from host memory (``placement.HostFeed``, numpy arrays or
``np.memmap``): the same permutation ``jax.random.permutation(shuffle_key, n)``, the same
batches in the same order. ``host_batches`` and ``prefetch_to_device`` are the same idea for
code that runs its own steps.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np


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


_permutation = jax.jit(jax.random.permutation, static_argnums=1)


def epoch_permutation(shuffle_key: jax.Array, n: int) -> np.ndarray:
    """The epoch's example order: exactly the permutation ``make_train_epoch`` draws,
    ``jax.random.permutation(shuffle_key, n)`` (one compiled program per n)."""
    return np.asarray(_permutation(shuffle_key, n))


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
