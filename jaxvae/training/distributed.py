"""Starting a multi-process run (``jax.distributed``) and each process's share of an epoch.

Every process holds its own block of the training examples (``data.process_shard``) and runs the
same program; ``placement.ProcessFeed`` assembles each step's global batch from every process's
local rows (``local_batch_indices``) and the training loop runs the single-device step over the
global mesh: XLA inserts the gradient all-reduce, parameters stay replicated, and the
reparameterization noise is the single-device step's (threefry is partitionable), so the run
equals a single-process run fed the same global batches, to float32 summation order.
"""

from __future__ import annotations

import re

import jax
import numpy as np

from jaxvae.training import feeding

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


def local_batch_indices(num_local: int, shuffle_key: jax.Array, local_batch: int, start: int,
                        stop: int) -> np.ndarray:
    """This process's example indices for steps [start, stop) of an epoch: ``(S, local_batch)``."""
    perm = feeding.epoch_permutation(shuffle_key, num_local)
    return perm[start * local_batch:stop * local_batch].reshape(stop - start, local_batch)
