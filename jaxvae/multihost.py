"""Data-parallel training over the devices of several processes (``jax.distributed``).

Every process holds its own block of the training examples (``data.process_shard``) and runs the
same program. Step t's global batch of B examples is the concatenation, in process order, of each
process's local batch of B / P examples: rows ``t*b .. (t+1)*b - 1`` of that process's own
permutation ``permutation(fold_in(shuffle_key, epoch), N_p)`` (b = B / P). The host gathers a
chunk of local batches at once, ``jax.make_array_from_process_local_data`` makes them one global
array split over the mesh's batch axis, and one jitted ``lax.scan`` runs the single-device step
over the global mesh: XLA inserts the gradient all-reduce, parameters stay replicated, and the
reparameterization noise is the single-device step's (threefry is partitionable), so the run
equals a single-process run fed the same global batches, to float32 summation order.

An epoch is the same number of steps on every process: ``min_p N_p // b`` (the last, partial
batches are dropped, as a DataLoader with drop_last=True does).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvae import parallel, train

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-_]+):(\d+)$")


def check_distributed_args(coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """Raises ValueError/TypeError unless the three form a valid jax.distributed setup."""
    if coordinator == "auto" and num_processes is None and process_id is None:
        return  # jax.distributed detects the cluster (Cloud TPU, SLURM, ...)
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("multi-process training needs all of --coordinator HOST:PORT, "
                         "--num-processes N and --process-id I")
    if not any(given):
        return
    match = _ADDRESS.match(str(coordinator))
    if not isinstance(coordinator, str) or match is None or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"coordinator must be HOST:PORT with a port in 1..65535, e.g. "
                         f"10.0.0.1:1234, got {coordinator!r}")
    for name, value in (("num_processes", num_processes), ("process_id", process_id)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}) (one id per process), got "
                         f"{process_id}")


def initialize(coordinator: str, num_processes: int, process_id: int,
               timeout_seconds: int = 120) -> None:
    """``jax.distributed.initialize`` after checking the arguments; call before using devices.

    ``coordinator="auto"`` (with the other two None) lets JAX detect the cluster: Cloud TPU pod
    slices and SLURM jobs set everything up themselves.
    """
    check_distributed_args(coordinator, num_processes, process_id)
    if coordinator == "auto":
        jax.distributed.initialize(initialization_timeout=timeout_seconds)
        return
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_seconds)


def replicate(tree: Any, mesh) -> Any:
    """Host values (the same on every process) as arrays replicated over the global mesh."""
    sharding = NamedSharding(mesh, P())

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """Numpy values of replicated global arrays (every process holds a full copy)."""
    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            a = a.addressable_data(0)
        return np.asarray(a)
    return jax.tree.map(get, tree)


def make_global_chunk(loss_fn: train.LossFn, tx, mesh, axis_name: str = parallel.AXIS,
                      skip_nonfinite: bool = True) -> Callable:
    """Jitted ``chunk(state, batches_SxB, run_key_data) -> (state, step_metrics)`` over mesh.

    ``batches_SxB`` is a pytree of global arrays with a leading step axis S and the batch axis
    split over ``axis_name``; the state is replicated and donated. ``run_key_data`` is the raw
    uint32 data of the run key (replicated), wrapped back into a key inside the program.
    """
    replicated = NamedSharding(mesh, P())
    batches = NamedSharding(mesh, P(None, axis_name))
    step = train.train_step_fn(loss_fn, tx, skip_nonfinite=skip_nonfinite)

    def chunk(state, batches_SxB, run_key_data):
        run_key = jax.random.wrap_key_data(run_key_data)
        return jax.lax.scan(lambda s, batch: step(s, batch, run_key), state, batches_SxB)

    return jax.jit(chunk, in_shardings=(replicated, batches, replicated),
                   out_shardings=(replicated, replicated), donate_argnums=0)


def local_batch_indices(num_local: int, shuffle_key: jax.Array, local_batch: int, start: int,
                        stop: int) -> np.ndarray:
    """This process's example indices for steps [start, stop) of an epoch: ``(S, local_batch)``."""
    perm = np.asarray(jax.random.permutation(shuffle_key, num_local))
    return perm[start * local_batch:stop * local_batch].reshape(stop - start, local_batch)


def multi_host_chunks(loss_fn, tx, batch_size: int, local_data: dict, keys, mesh) -> tuple:
    """``(steps_per_epoch, run_chunk, place_state)`` for the loop in ``jaxvae.loop``."""
    count = jax.process_count()
    if batch_size % count:
        raise ValueError(f"batch size {batch_size} does not split evenly over {count} processes: "
                         f"use a multiple of {count}")
    local_batch = batch_size // count
    parallel.check_divisible(local_batch, jax.local_device_count())
    num_local = len(jax.tree.leaves(local_data)[0])
    counts = np.asarray(multihost_utils.process_allgather(np.asarray(num_local, np.int32)))
    steps_per_epoch = int(counts.min()) // local_batch
    if steps_per_epoch < 1:
        raise ValueError(f"a process holds only {int(counts.min())} training examples, fewer "
                         f"than its share {local_batch} of the batch {batch_size}: use a "
                         "smaller --batch-size or fewer processes")
    batch_sharding = NamedSharding(mesh, P(None, parallel.AXIS))
    chunk = make_global_chunk(loss_fn, tx, mesh)
    run_key_data = replicate(jax.random.key_data(keys.train), mesh)
    compiled: dict = {}

    def run_chunk(state, epoch: int, start: int, stop: int):
        idx = local_batch_indices(num_local, jax.random.fold_in(keys.shuffle, epoch),
                                  local_batch, start, stop)
        batches = jax.tree.map(
            lambda a: jax.make_array_from_process_local_data(batch_sharding, np.asarray(a)[idx]),
            local_data)
        compile_seconds = 0.0
        if stop - start not in compiled:
            t0 = time.perf_counter()
            compiled[stop - start] = chunk.lower(state, batches, run_key_data).compile()
            compile_seconds = time.perf_counter() - t0
        state, metrics = compiled[stop - start](state, batches, run_key_data)
        sizes = np.full(stop - start, float(batch_size))
        return state, to_host(metrics), sizes, compile_seconds

    return steps_per_epoch, run_chunk, lambda state: replicate(to_host(state), mesh)
