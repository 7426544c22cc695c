"""float32 against bfloat16: the MLP VAE's training step and a GEMM, interleaved in one process.

    python -m benchmarks.precision [--models reference wide] [--batch-sizes 128] [--rounds 15]

For each model (the MLP workloads of benchmarks.workloads: reference 784-400-20, wide 784-1024-1024-64) and
batch size, two runners do ``--steps`` jitted Adam steps (``jaxvae.make_train_step`` of the
model's -ELBO) each call: the model built with ``precision_name="float32"`` and with
``"bfloat16"`` (``jaxvae.models.precision``: bfloat16 inputs, float32 accumulation, float32
parameters). Beside them, in the same rounds, a jitted n x n GEMM in float32 and on bfloat16
inputs with float32 accumulation (``preferred_element_type=float32``): the rate the hardware
offers each precision. ``harness.round_robin`` interleaves every runner and rotates the order each
round, so background load hits both precisions alike; the table gives medians (and min-max) of
samples/s, GFLOP/s of the matmuls and the bfloat16 / float32 ratio. ``--json PATH`` also writes
the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxvae
from benchmarks.harness import Runner, gemm_runner, mlp_train_flops, round_robin
from benchmarks.workloads import WORKLOADS
from jaxvae.models import precision

PRECISIONS = precision.PRECISIONS
# The MLP models of the harness: name -> (hidden widths, latent size).
MODELS = {name: (w.hidden, w.latent_dim) for name, w in WORKLOADS.items() if w.kind == "mlp"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gemm_runners(n: int) -> list[Runner]:
    """(n x n) @ (n x n) in float32, and on bfloat16 inputs with float32 accumulation."""
    return [gemm_runner(n, precision=name) for name in PRECISIONS]


def step_runner(hidden, latent_dim: int, batch_size: int, steps: int, name: str,
                x_NxD: np.ndarray) -> Runner:
    """``steps`` jitted training steps of the MLP VAE in precision ``name`` per call."""
    model = jaxvae.mlp_vae(hidden, latent_dim, (x_NxD.shape[1],), precision_name=name)
    tx = jaxvae.make_optimizer(1e-3)
    step = jaxvae.make_train_step(jaxvae.make_elbo_loss(model), tx)
    holder = [jaxvae.create_train_state(jaxvae.init(model, jax.random.key(0)), tx)]
    batches = [{"x": jnp.asarray(x_NxD[i * batch_size:(i + 1) * batch_size])}
               for i in range(steps)]
    run_key = jax.random.key(1)

    def call():
        state = holder[0]
        for batch in batches:
            state, _ = step(state, batch, run_key)
        holder[0] = jax.block_until_ready(state)

    n = steps * batch_size
    flops = mlp_train_flops(x_NxD.shape[1], hidden, latent_dim) * n
    return Runner("jax", "jit_step", call, samples=n, flops=flops, steps=steps,
                  extra={"precision": name, "batch_size": batch_size})


def measure(models, batch_sizes, steps: int, rounds: int, gemm_n: int) -> list[dict]:
    """One round-robin per (model, batch size), each with both GEMMs beside the two steps."""
    rng = np.random.default_rng(0)
    rows = []
    for model in models:
        hidden, latent_dim = MODELS[model]
        for batch_size in batch_sizes:
            x = (rng.random((steps * batch_size, 784)) < 0.3).astype(np.float32)
            runners = [step_runner(hidden, latent_dim, batch_size, steps, name, x)
                       for name in PRECISIONS] + gemm_runners(gemm_n)
            log(f"{model} batch {batch_size}: {rounds} rounds of {steps} steps")
            for timing in round_robin(runners, rounds, log=log):
                r = timing.runner
                what = model if r.method == "jit_step" else f"gemm {gemm_n}^3"
                rows.append({"what": what, "batch_size": r.extra.get("batch_size"),
                             **r.extra, **timing.stats()})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: samples/s (median, min-max), GFLOP/s, and bfloat16 / float32 per pair."""
    lines = ["| what | batch | precision | samples/s median (min-max) | GFLOP/s | bf16 / f32 |",
             "|---|---:|---|---:|---:|---:|"]
    base = {}
    for r in rows:
        key = (r["what"], r["batch_size"])
        if r["precision"] == "float32":
            base[key] = r["samples_per_s"]
        ratio = r["samples_per_s"] / base[key] if key in base else float("nan")
        rate = ("" if r["what"].startswith("gemm") else
                f"{r['samples_per_s']:,.0f} ({r['samples_per_s_min']:,.0f}-"
                f"{r['samples_per_s_max']:,.0f})")
        lines.append(f"| {r['what']} | {r['batch_size'] or ''} | {r['precision']} | {rate} | "
                     f"{r['gflops']:.0f} | {ratio:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["reference", "wide"], choices=sorted(MODELS))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    p.add_argument("--steps", type=int, default=20, help="training steps per timed call")
    p.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds")
    p.add_argument("--gemm-n", type=int, default=1024, help="the GEMM's matrix size")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    if min(args.batch_sizes + [args.steps, args.rounds, args.gemm_n]) < 1:
        p.error("--batch-sizes, --steps, --rounds and --gemm-n must be positive")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    log(f"device {jax.devices()[0].device_kind}, load average {load:.2f}")
    rows = measure(args.models, args.batch_sizes, args.steps, args.rounds, args.gemm_n)
    after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(table(rows))
    print(f"\n{jax.devices()[0].device_kind}; load average {load:.2f} before, {after:.2f} after "
          f"({os.cpu_count()} cores)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "load_before": load, "load_after": after}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
