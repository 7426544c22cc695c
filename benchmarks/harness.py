"""Timing primitives of the benchmark: runners, interleaved repeats, the load average, FLOP and
byte counts, the GEMM peak, the STREAM bandwidth and the roofline they make.

A ``Runner`` is one method under test: ``call()`` does a fixed amount of work (``samples``
examples, ``flops`` matmul FLOPs) and returns only when the device has finished it
(``jax.block_until_ready`` / ``torch.cuda.synchronize``). ``round_robin`` times the first call
of every runner on its own (tracing, compiling, autotuning: reported as warm-up, never as
throughput), then runs the timed repeats interleaved, rotating the order every round, so that
background load hits all methods alike and their ratios come from the same minutes.
``timed_block`` wraps it with the load average before and after, and a warning when the
machine was busy (a ratio measured under load says little: torch's OpenMP threads slow down
far more than XLA's).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple


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
    bytes_moved: float = 0.0  # memory traffic of one call (the STREAM kernels)


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
        out = {"samples_per_s": median, "samples_per_s_min": rates[0],
               "samples_per_s_max": rates[-1],
               "step_ms": 1e3 * self.median_s / r.steps,
               "gflops": r.flops / self.median_s / 1e9,
               "compile_s": self.compile_s, "warmup_s": self.warmup_s,
               "repeats": len(s), "steps_per_call": r.steps, "samples_per_call": r.samples}
        if r.bytes_moved:
            out["gbytes_per_s"] = r.bytes_moved / self.median_s / 1e9
        return out


# Idle seconds before every timed call. After a parallel region, the idle threads of GNU
# OpenMP (torch's and MKL's thread pool) spin for a few milliseconds before they sleep, and
# those spinning threads take a core from whatever runs next: a 9.7 ms XLA product timed right
# after a torch product took 9.5-9.7 ms with a gap of 0-2 ms and 5.3-7.5 ms with 5-100 ms
# (2 vCPUs, torch 2.13 with libgomp). With the gap every call starts on idle cores, whichever
# framework ran before it.
QUIET_GAP_S = 0.01


def timed_rounds(calls: dict, rounds: int) -> dict:
    """Median seconds per step of each ``name -> (fn, steps)`` (``fn`` runs ``steps`` steps and
    returns when they are done): ``rounds`` interleaved rounds, the order reversed every other
    round, each call after ``QUIET_GAP_S`` of idle cores. No warm-up: call each fn first."""
    times = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, steps = calls[name]
            time.sleep(QUIET_GAP_S)
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def round_robin(runners: Sequence[Runner], repeats: int, warmup_calls: int = 1,
                log: Callable[[str], None] = lambda _: None,
                gap_s: float = QUIET_GAP_S) -> list[Timing]:
    """Warm-up (timed apart) then ``repeats`` interleaved rounds; order rotated every round.

    Every runner gets ``warmup_calls`` untimed calls after its first (settling allocators and
    page faults of fresh buffers), so the timed rounds see steady state only. Every timed call
    starts ``gap_s`` seconds after the previous one ended (``QUIET_GAP_S``).
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
            time.sleep(gap_s)
            start = time.perf_counter()
            runners[i].call()
            seconds[i].append(time.perf_counter() - start)
    return [Timing(r, w, s) for r, w, s in zip(runners, warm, seconds)]


# ------------------------------------------------------------------------ the load average


def load_average() -> list[float] | None:
    """(1, 5, 15)-minute load averages, rounded; None where the OS does not report them."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def overload_warning(block: str, before, after, cores: int) -> str | None:
    """A warning when the 1-minute load average before or after ``block`` is above 1 per core.

    Under load torch's OpenMP threads slowed 15-60x on a 2-core machine while XLA slowed about
    2x: the ratios of such a block say more about the load than about the libraries.
    """
    worst = max((la[0] for la in (before, after) if la), default=None)
    if worst is None or worst <= cores:
        return None
    return (f"WARNING: {block}: load average {worst:.2f} > 1 per core ({cores} cores); "
            f"other processes shared the CPU, so its timings and ratios are unreliable: "
            f"rerun on a quiet machine")


class Block(NamedTuple):
    """The timings of one configuration and the machine's load around them."""

    timings: list[Timing]
    load_before: list[float] | None
    load_after: list[float] | None
    warning: str | None

    def record(self, name: str) -> dict:
        return {"block": name, "load_before": self.load_before, "load_after": self.load_after,
                "overloaded": self.warning is not None}


def timed_block(name: str, runners: Sequence[Runner], repeats: int,
                log: Callable[[str], None] = lambda _: None, cores: int | None = None) -> Block:
    """``round_robin`` with the load average read before and after; logs the overload warning."""
    before = load_average()
    timings = round_robin(runners, repeats, log=log)
    after = load_average()
    warning = overload_warning(name, before, after, cores or os.cpu_count() or 1)
    if warning:
        log(warning)
    return Block(timings, before, after, warning)


# ------------------------------------------------------------------------------ FLOP counts

# Every model is a list of ``Layer``s, its matmuls and convolutions (and embedding lookups, which
# count outputs but no FLOPs), per example. The training FLOPs and the bytes of the roofline
# are computed from that list alone.


class Layer(NamedTuple):
    """One matmul, convolution or embedding lookup of a model, per example."""

    flops: float  # forward FLOPs (2 per multiply-add)
    outputs: float  # elements of its output (the activation the backward pass reads)


def train_flops(layers: Sequence[Layer]) -> float:
    """FLOPs of one training example: the forward, and the backward at twice the forward.

    The backward of a layer computes the gradient with respect to its input and to its weights,
    each as costly as the forward, except the input gradient of the first layer, which nobody
    needs (the data is not a parameter):  train = 3 * sum(forward) - forward_1.
    A model whose first layer is an embedding lookup (0 FLOPs) pays for every input gradient.
    """
    return 3.0 * sum(l.flops for l in layers) - layers[0].flops


def conv_out(size: int, stride: int = 2) -> int:
    return -(-size // stride)  # 'SAME' padding


def conv_vae_layers(image_hwc: Sequence[int], channels: Sequence[int], hidden: Sequence[int],
                    latent_dim: int, kernel: int = 4) -> list[Layer]:
    """The layers of ``jaxvae.conv_vae``: stride-2 convolutions, dense layers, the mirror.

    A convolution costs 2 * (output pixels) * C_out * k * k * C_in; a stride-2 transposed
    convolution 2 * (input pixels) * C_in * k * k * C_out, the multiply-adds that touch a real
    input (an implementation that convolves a zero-dilated input does ~4x that; not credited).
    """
    h, w, c = image_hwc
    kk = kernel * kernel
    enc, sizes = [], [(h, w, c)]
    for ch in channels:
        ph, pw, pc = sizes[-1]
        oh, ow = conv_out(ph), conv_out(pw)
        enc.append(Layer(2.0 * oh * ow * ch * kk * pc, oh * ow * ch))
        sizes.append((oh, ow, ch))
    fh, fw, fc = sizes[-1]
    features = fh * fw * fc
    dense = [features, *hidden]
    enc += [Layer(2.0 * a * b, b) for a, b in zip(dense[:-1], dense[1:])]
    enc += [Layer(2.0 * dense[-1] * latent_dim, latent_dim)] * 2
    back = [latent_dim, *reversed(hidden), features]
    dec = [Layer(2.0 * a * b, b) for a, b in zip(back[:-1], back[1:])]
    outs = list(reversed(sizes[:-1]))  # (H/2^(n-1), ., C_{n-2}) ... (H, W, C)
    ih, iw, ic = fh, fw, fc
    for oh, ow, oc in outs:
        dec.append(Layer(2.0 * ih * iw * ic * kk * oc, oh * ow * oc))
        ih, iw, ic = oh, ow, oc
    return enc + dec


def sequence_vae_layers(vocab_size: int, embed_dim: int, hidden_dim: int, latent_dim: int,
                        length: int, encoder_tokens: float | None = None) -> list[Layer]:
    """The layers of ``jaxvae.models.sequence.SequenceVAE`` for one row of ``length`` tokens.

    Per GRU step: the input projections (3H outputs) and the hidden projections (3H); the
    encoder runs both directions over ``encoder_tokens`` positions (the real tokens: what a
    packed-sequence RNN computes; jaxvae's masked scan also steps over the padding, which this
    count does not credit), the teacher-forced decoder over all ``length`` positions, with the
    output layer H -> V at each. The first layer is the two embedding lookups (no FLOPs).
    """
    e, h, z, v, n = embed_dim, hidden_dim, latent_dim, vocab_size, length
    t = n if encoder_tokens is None else encoder_tokens
    gru_in = lambda d, steps: Layer(2.0 * d * 3 * h * steps, 3 * h * steps)  # noqa: E731
    gru_h = lambda steps: Layer(2.0 * h * 3 * h * steps, 3 * h * steps)  # noqa: E731
    return ([Layer(0.0, 2.0 * e * n)]  # the encoder's and the decoder's embeddings
            + [gru_in(e, t), gru_h(t)] * 2  # forward and backward directions
            + [Layer(2.0 * 2 * h * z, z)] * 2  # mean, logvar
            + [Layer(2.0 * z * h, h)]  # h_0 = tanh(W z + b)
            + [gru_in(e + z, n), gru_h(n), Layer(2.0 * h * v * n, v * n)])



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
    return train_flops(mlp_vae_layers(data_dim, hidden, latent_dim))


def mlp_vae_layers(data_dim: int, hidden: Sequence[int], latent_dim: int) -> list[Layer]:
    """``mlp_layers`` as ``Layer``s: 2 * in * out FLOPs and ``out`` outputs each."""
    return [Layer(2.0 * i * o, o) for i, o in mlp_layers(data_dim, hidden, latent_dim)]


def mlp_nll_flops(data_dim: int, hidden: Sequence[int], latent_dim: int,
                  num_samples: int) -> float:
    """Matmul FLOPs of the importance-sampled log p(x) of one example: one encoding, K decodings."""
    layers = mlp_layers(data_dim, hidden, latent_dim)
    num_enc = len(hidden) + 2
    encode = 2.0 * sum(i * o for i, o in layers[:num_enc])
    decode = 2.0 * sum(i * o for i, o in layers[num_enc:])
    return encode + num_samples * decode


# ------------------------------------------------------------------- bytes and the roofline
#
# The bytes a training step must move through memory at least, float32 throughout:
#   optimizer: 32 bytes per parameter and step: the backward pass writes the gradient (4) and
#              Adam reads parameter, gradient, first and second moment (16) and writes the
#              parameter and both moments (12);
#   activations: 16 bytes per output element of every layer and example: the forward writes it
#              and the backward reads it (4 + 4), the backward writes its gradient and reads it
#              back (4 + 4); elementwise work (biases, ReLU, gates, the loss) is taken as fused
#              into the layer that produces it; plus the input read once (4 bytes an element).
# The weights' reads by the matmuls are not counted: they stay in cache across the batch.

OPTIMIZER_BYTES_PER_PARAM = 32.0
ACTIVATION_BYTES_PER_ELEMENT = 16.0
INPUT_BYTES_PER_ELEMENT = 4.0


class ByteCounts(NamedTuple):
    per_step: float  # the optimizer's bytes, independent of the batch size
    per_sample: float  # the activations' and the input's bytes of one example


def train_bytes(num_params: int, layers: Sequence[Layer], input_elements: float) -> ByteCounts:
    """The byte model above: 32 B x parameters per step, 16 B x activations + 4 B x inputs per
    example."""
    return ByteCounts(OPTIMIZER_BYTES_PER_PARAM * num_params,
                      ACTIVATION_BYTES_PER_ELEMENT * sum(l.outputs for l in layers)
                      + INPUT_BYTES_PER_ELEMENT * input_elements)


def roofline_samples_per_s(batch_size: int, flops_per_sample: float, byte_counts: ByteCounts,
                           gemm_gflops: float, bandwidth_gbs: float) -> float:
    """The most samples/s a step can reach: its FLOPs at the GEMM rate plus its bytes at the
    memory bandwidth, one after the other (no overlap assumed):

        t_step = B * flops / gemm + (bytes_step + B * bytes_sample) / bandwidth,
        limit = B / t_step.
    """
    seconds = (batch_size * flops_per_sample / (gemm_gflops * 1e9)
               + (byte_counts.per_step + batch_size * byte_counts.per_sample)
               / (bandwidth_gbs * 1e9))
    return batch_size / seconds


def stream_runners(megabytes: float, device=None) -> list[Runner]:
    """STREAM's copy (b = a) and triad (a = b + s * c) over float32 arrays of ``megabytes`` MiB.

    Jitted; the scalar is an argument so that XLA cannot fold the arithmetic away (copy is
    ``a + s`` with s = 0: the same traffic). Bytes counted as STREAM does: copy 2 x 4 per element
    (read, write), triad 3 x 4 (two reads, a write). Use arrays larger than the last-level cache.
    """
    import jax
    import jax.numpy as jnp

    n = max(1, int(megabytes * 2 ** 20 // 4))
    b = jax.device_put(jnp.ones((n,), jnp.float32), device)
    c = jax.device_put(jnp.full((n,), 2.0, jnp.float32), device)
    zero = jax.device_put(jnp.float32(0.0), device)
    three = jax.device_put(jnp.float32(3.0), device)
    copy = jax.jit(lambda x, s: x + s)
    triad = jax.jit(lambda x, y, s: x + s * y)
    extra = {"stream_elements": n}
    return [Runner("jax", "stream_copy", lambda: copy(b, zero).block_until_ready(), samples=1,
                   flops=0.0, extra=extra, bytes_moved=8.0 * n),
            Runner("jax", "stream_triad", lambda: triad(b, c, three).block_until_ready(),
                   samples=1, flops=0.0, extra=extra, bytes_moved=12.0 * n)]


# ---------------------------------------------------------------------------- the GEMM peak


def gemm_runner(n: int, device=None, precision: str = "float32") -> Runner:
    """A jitted (n x n) @ (n x n) matmul: the machine's attainable matmul rate.

    ``precision`` float32 multiplies float32 matrices; bfloat16 multiplies bfloat16 matrices
    with float32 accumulation and output (``preferred_element_type=float32``), the product
    jaxvae's bfloat16 policy and torch.autocast compute. Timed in the same round-robin as the
    methods, so ``pct_of_peak`` compares numbers taken under the same background load.
    """
    import jax
    import jax.numpy as jnp

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[precision]
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(key_a, (n, n), jnp.float32).astype(dtype), device)
    b = jax.device_put(jax.random.normal(key_b, (n, n), jnp.float32).astype(dtype), device)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))

    def call():
        matmul(a, b).block_until_ready()

    return Runner("jax", "gemm", call, samples=1, flops=2.0 * n ** 3,
                  extra={"gemm_n": n, "precision": precision})
