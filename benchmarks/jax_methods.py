"""jaxvae's training and evaluation paths as benchmark runners (see harness.Runner).

Every training runner starts from the same PyTorch-style initialization and applies Adam steps
to batches that are already on the device; only the way the steps are dispatched differs:

    jit_step    a Python loop over ``jaxvae.make_train_step`` (one dispatch per step)
    scan_epoch  ``jaxvae.make_train_epoch``: the steps of one call are one epoch under lax.scan
                (one dispatch; the permutation and the batch gathers run inside it)
    scan_micro  the same with ``microbatch_size=MICROBATCH`` (gradients accumulated over
                cache-sized micro-batches), for batches larger than MICROBATCH only
    pmap        ``jaxvae.training.parallel.make_pmap_train_step`` over the local devices
    sharded     ``jaxvae.training.parallel.make_sharded_train_step``: jit + NamedSharding over a mesh
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

import jaxvae
from benchmarks.harness import Runner, mlp_nll_flops
from jaxvae.training import parallel
from jaxvae.evaluation.likelihood import log_likelihood


# Micro-batch of the scan_micro method: the best of 256-1024 for batch 2048 and 8192 here.
MICROBATCH = 1024


def _memory(device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return (stats or {}).get("peak_bytes_in_use")


def _state(model, tx, device):
    params = jaxvae.init(model, jax.random.key(0))
    return jax.device_put(jaxvae.create_train_state(params, tx), device)


def train_runners(workload, model, x_NxD: np.ndarray, batch_size: int, steps: int, device,
                  local_devices: Sequence, methods: Sequence[str], precision: str = "float32"
                  ) -> tuple[list[Runner], list[str]]:
    """The jax training runners for one (model, batch size); ``steps`` optimizer steps per call.

    ``workload`` (benchmarks/workloads.py) gives the loss and the FLOP count of ``model``,
    built in the precision policy ``precision`` (recorded in every runner's ``extra``);
    ``x_NxD`` holds at least ``steps * batch_size`` examples (images or token rows). Returns
    the runners and notes on the methods skipped (e.g. a batch that does not split over the
    devices).
    """
    tx = jaxvae.make_optimizer(1e-3)
    loss_fn = workload.jax_loss_fn(model)
    run_key = jax.random.key(1)
    n = steps * batch_size
    x = np.ascontiguousarray(x_NxD[:n])
    call_flops = workload.flops_per_sample() * n
    runners, notes = [], []

    def runner(method, call, **extra):
        runners.append(Runner("jax", method, call, samples=n, flops=call_flops, steps=steps,
                              extra={**extra, "precision": precision},
                              peak_memory=lambda: _memory(device)))

    if "jit_step" in methods:
        step = jaxvae.make_train_step(loss_fn, tx)
        batches = [jax.device_put(x[i * batch_size:(i + 1) * batch_size], device)
                   for i in range(steps)]
        holder = [_state(model, tx, device)]

        def call_jit():
            state = holder[0]
            for batch in batches:
                state, _ = step(state, batch, run_key)
            holder[0] = jax.block_until_ready(state)

        runner("jit_step", call_jit)

    def scan_call(microbatch_size):
        epoch = jaxvae.make_train_epoch(loss_fn, tx, batch_size, microbatch_size=microbatch_size)
        data = jax.device_put(x, device)
        holder_e = [_state(model, tx, device), 0]
        shuffle_key = jax.random.key(2)

        def call_scan():
            state, count = holder_e
            out = epoch(state, data, jax.random.fold_in(shuffle_key, count), run_key)
            holder_e[0], holder_e[1] = jax.block_until_ready(out.state), count + 1

        return call_scan

    if "scan_epoch" in methods:
        runner("scan_epoch", scan_call(None))
    if "scan_micro" in methods:
        if batch_size > MICROBATCH and batch_size % MICROBATCH == 0:
            runner("scan_micro", scan_call(MICROBATCH), microbatch_size=MICROBATCH)
        else:
            notes.append(f"scan_micro runs only at batch sizes above {MICROBATCH} that "
                         f"{MICROBATCH} divides (its micro-batch); skipped at the others")

    num_dev = len(local_devices)
    parallel_methods = [m for m in ("pmap", "sharded") if m in methods]
    if parallel_methods and batch_size % num_dev:
        notes.append(f"pmap/sharded skipped at batch {batch_size}: not a multiple of "
                     f"{num_dev} devices")
        parallel_methods = []

    if "pmap" in parallel_methods:
        p_loss = workload.jax_loss_fn(model, axis_name=parallel.AXIS)
        p_step = parallel.make_pmap_train_step(p_loss, tx, devices=list(local_devices))
        p_batches = [parallel.shard_batch(x[i * batch_size:(i + 1) * batch_size], num_dev)
                     for i in range(steps)]
        holder_p = [parallel.replicate(_state(model, tx, None), list(local_devices))]

        def call_pmap():
            state = holder_p[0]
            for batch in p_batches:
                state, _ = p_step(state, batch, run_key)
            holder_p[0] = jax.block_until_ready(state)

        runner("pmap", call_pmap, num_devices=num_dev)

    if "sharded" in parallel_methods:
        mesh = parallel.make_mesh(list(local_devices))
        s_step = parallel.make_sharded_train_step(loss_fn, tx, mesh)
        s_batches = [parallel.put_sharded(x[i * batch_size:(i + 1) * batch_size], mesh)
                     for i in range(steps)]
        holder_s = [parallel.put_replicated(_state(model, tx, None), mesh)]
        key_s = parallel.put_replicated(run_key, mesh)

        def call_sharded():
            state = holder_s[0]
            for batch in s_batches:
                state, _ = s_step(state, batch, key_s)
            holder_s[0] = jax.block_until_ready(state)

        runner("sharded", call_sharded, num_devices=num_dev)

    return runners, notes


def xla_flops_per_sample(workload, model, x_BxD: np.ndarray, device) -> float | None:
    """XLA's own FLOP count of one jitted train step, per example (a check on the formula).

    The cost analysis of the lowered program, before XLA's optimizations: no compile (for the
    conv VAE 0.2 s instead of 1.5 s here), and within 0.3% of the optimized program's count for
    every workload of the harness.
    """
    tx = jaxvae.make_optimizer(1e-3)
    step = jaxvae.make_train_step(workload.jax_loss_fn(model), tx)
    state = _state(model, tx, device)
    batch_size = len(x_BxD)
    x = jax.ShapeDtypeStruct(x_BxD.shape, x_BxD.dtype)
    try:
        cost = step.lower(state, x, jax.random.key(1)).cost_analysis()
    except Exception:  # noqa: BLE001 - cost analysis is optional on some backends
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) / batch_size if flops else None


def nll_runner(model, params, x_BxD: np.ndarray, num_samples: int, chunk_size: int,
               device) -> Runner:
    """Importance-sampled log p(x) of a batch with K = num_samples, jitted, one call per batch."""
    estimate = lambda p, x, k: log_likelihood(model, p, x, k, num_samples=num_samples,  # noqa: E731
                                              chunk_size=chunk_size)
    params = jax.device_put(params, device)
    x = jax.device_put(x_BxD, device)
    key = jax.random.key(3)
    fn = jax.jit(estimate)
    try:
        fn.lower(params, x, key)  # tracing only; compiling happens in the timed warm-up
    except Exception:  # noqa: BLE001 - it validates its inputs in Python and jits inside
        fn = estimate
    flops = mlp_nll_flops(int(np.prod(model.data_shape)), model.hidden, model.latent_dim,
                          num_samples) * len(x_BxD)
    extra = {"num_samples": num_samples, "chunk_size": chunk_size,
             "implementation": "jaxvae.evaluation.likelihood.log_likelihood"}

    def call():
        extra["mean_log_px"] = float(fn(params, x, key).mean())  # float() waits for the result

    return Runner("jax", "vectorized", call, samples=len(x_BxD), flops=flops, extra=extra,
                  peak_memory=lambda: _memory(device))
