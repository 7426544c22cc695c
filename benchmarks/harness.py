"""Timing primitives of the benchmark: runners, interleaved repeats, FLOP counts, the GEMM peak.

A ``Runner`` is one method under test: ``call()`` does a fixed amount of work (``samples``
examples, ``flops`` matmul FLOPs) and returns only when the device has finished it
(``jax.block_until_ready`` / ``torch.cuda.synchronize``). ``round_robin`` times the first call
of every runner on its own (tracing, compiling, autotuning: reported as warm-up, never as
throughput), then runs the timed repeats interleaved, rotating the order every round, so that
background load hits all methods alike and their ratios come from the same minutes.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence


@dataclasses.dataclass
class Runner:
    """One method under test."""

    framework: str  # "jax" | "torch"
    method: str  # "eager" | "compile" | "jit_step" | "scan_epoch" | "pmap" | "sharded" | ...
    call: Callable[[], None]  # one unit of work, synchronized before it returns
    samples: int  # examples processed by one call
    flops: float  # matmul FLOPs of one call (see mlp_train_flops)
    steps: int = 1  # optimizer steps (or evaluation calls) in one call
    extra: dict = dataclasses.field(default_factory=dict)  # copied into the result row
    peak_memory: Callable[[], int | None] = lambda: None  # bytes, where the backend reports it


@dataclasses.dataclass
class Timing:
    runner: Runner
    warmup_s: float  # the first call: tracing + compilation + one call's work
    seconds: list[float]  # the timed calls

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def compile_s(self) -> float:
        """Warm-up minus a typical call: the one-time cost (compile, autotune, allocation)."""
        return max(0.0, self.warmup_s - self.median_s)

    def stats(self) -> dict:
        r, s = self.runner, self.seconds
        rates = sorted(r.samples / t for t in s)
        median = r.samples / self.median_s
        return {"samples_per_s": median, "samples_per_s_min": rates[0],
                "samples_per_s_max": rates[-1],
                "step_ms": 1e3 * self.median_s / r.steps,
                "gflops": r.flops / self.median_s / 1e9,
                "compile_s": self.compile_s, "warmup_s": self.warmup_s,
                "repeats": len(s), "steps_per_call": r.steps, "samples_per_call": r.samples}


def round_robin(runners: Sequence[Runner], repeats: int, warmup_calls: int = 1,
                log: Callable[[str], None] = lambda _: None) -> list[Timing]:
    """Warm-up (timed apart) then ``repeats`` interleaved rounds; order rotated every round.

    Every runner gets ``warmup_calls`` untimed calls after its first (settling allocators and
    page faults of fresh buffers), so the timed rounds see steady state only.
    """
    warm = []
    for r in runners:
        start = time.perf_counter()
        r.call()
        warm.append(time.perf_counter() - start)
        log(f"  {r.framework:5s} {r.method:12s} first call {warm[-1]:.2f} s")
        for _ in range(warmup_calls):
            r.call()
    seconds: list[list[float]] = [[] for _ in runners]
    n = len(runners)
    for rep in range(repeats):
        for j in range(n):
            i = (j + rep) % n
            start = time.perf_counter()
            runners[i].call()
            seconds[i].append(time.perf_counter() - start)
    return [Timing(r, w, s) for r, w, s in zip(runners, warm, seconds)]


# ------------------------------------------------------------------------------ FLOP counts


def mlp_layers(data_dim: int, hidden: Sequence[int], latent_dim: int) -> list[tuple[int, int]]:
    """(in, out) of every matmul of the MLP VAE: encoder, the mean and logvar heads, decoder."""
    enc = [data_dim, *hidden]
    dec = [latent_dim, *reversed(hidden), data_dim]
    return (list(zip(enc[:-1], enc[1:])) + [(enc[-1], latent_dim)] * 2
            + list(zip(dec[:-1], dec[1:])))


def mlp_train_flops(data_dim: int, hidden: Sequence[int], latent_dim: int) -> float:
    """Matmul FLOPs of one training example: forward, backward and nothing else.

    forward = 2 * sum(in * out) over the layers; backward = 2 x forward (the gradients with
    respect to each layer's input and its weights) less the input gradient of the first
    layer, which nobody needs (the data is not a parameter):

        train = 3 * forward - 2 * in_1 * out_1

    784-400-20: forward 1.302 MFLOP, train 3.28 MFLOP per example. Elementwise work (ReLU,
    sigmoid, the loss, Adam) is not counted: it is O(sum(out)) per example, a rounding error.
    """
    layers = mlp_layers(data_dim, hidden, latent_dim)
    forward = 2.0 * sum(i * o for i, o in layers)
    return 3.0 * forward - 2.0 * layers[0][0] * layers[0][1]


def mlp_nll_flops(data_dim: int, hidden: Sequence[int], latent_dim: int,
                  num_samples: int) -> float:
    """Matmul FLOPs of the importance-sampled log p(x) of one example: one encoding, K decodings."""
    layers = mlp_layers(data_dim, hidden, latent_dim)
    num_enc = len(hidden) + 2
    encode = 2.0 * sum(i * o for i, o in layers[:num_enc])
    decode = 2.0 * sum(i * o for i, o in layers[num_enc:])
    return encode + num_samples * decode


# ---------------------------------------------------------------------------- the GEMM peak


def gemm_runner(n: int, device=None) -> Runner:
    """A jitted float32 (n x n) @ (n x n) matmul: the machine's attainable matmul rate.

    Timed in the same round-robin as the methods, so ``pct_of_peak`` compares numbers taken
    under the same background load.
    """
    import jax
    import jax.numpy as jnp

    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(key_a, (n, n), jnp.float32), device)
    b = jax.device_put(jax.random.normal(key_b, (n, n), jnp.float32), device)
    matmul = jax.jit(jnp.matmul)

    def call():
        matmul(a, b).block_until_ready()

    return Runner("jax", "gemm", call, samples=1, flops=2.0 * n ** 3,
                  extra={"gemm_n": n})
