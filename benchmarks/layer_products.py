"""The matrix products of an MLP VAE's training step: XLA's against PyTorch's, shape by shape.

    python -m benchmarks.layer_products                          # reference model, batch 8192
    python -m benchmarks.layer_products --model wide --batch 2048 --rounds 15

A dense layer y = x @ W (x: (B, K), W: (K, N)) costs three products per training step (the
forward product, the input gradient dy @ W^T, the weight gradient x^T @ dy; the first layer
has no input gradient). This script times each of them for every layer of the model, as a
jitted ``jax.lax.dot_general`` and as ``torch.mm`` on the same float32 values (torch with as
many threads as cores, as the harness runs it), in interleaved rounds, and sums them into one
step's products. At large batches an MLP VAE's step is mostly these products, so when XLA's
sum is longer than torch's, jaxvae cannot reach torch.compile's samples/s there: the limit is
the CPU matrix kernels (XLA's YNNPACK and Eigen against torch's MKL), not the step around it.
The layers are those of the harness's workloads (``benchmarks/workloads.py``: ``reference``
784-400-20, ``wide`` 784-1024-1024-64).
"""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks import bf16_dots
from experiments import cli


def model_layers(model: str) -> list[tuple[int, int]]:
    """The (K, N) of every dense layer of a harness workload (``reference`` or ``wide``)."""
    from benchmarks import harness, workloads
    work = workloads.WORKLOADS[model]
    return harness.mlp_layers(784, work.hidden, work.latent_dim)


MODELS = ("reference", "wide")

# name: (lhs, rhs, (lhs contracting dims, rhs contracting dims)), the contractions of bf16_dots
PRODUCTS = dict(zip(("forward", "input grad", "weight grad"),
                    (product[:3] for product in bf16_dots.PRODUCTS.values())))


def products(layers: list[tuple[int, int]]) -> list[tuple[int, str, tuple[int, int]]]:
    """(layer index, product name, (K, N)) of one step; the data layer has no input gradient."""
    return [(i, name, kn) for i, kn in enumerate(layers) for name in PRODUCTS
            if not (i == 0 and name == "input grad")]


def _torch_product(lhs, rhs, dims):
    """torch.mm of the same contraction as ``dot_general(lhs, rhs, dims)``."""
    (lc,), (rc,) = dims
    return lambda: (lhs if lc == 1 else lhs.t()).mm(rhs if rc == 0 else rhs.t())


def measure(model: str, batch: int, rounds: int, torch_threads: int) -> list[dict]:
    """Median ms of each product of ``products(model_layers(model))`` in XLA and in torch."""
    import jax
    import numpy as np
    import torch

    from benchmarks import harness

    rng = np.random.default_rng(0)
    calls, rows = {}, []
    for i, name, (k, n) in products(model_layers(model)):
        arrays = {"x": rng.standard_normal((batch, k), np.float32),
                  "w": rng.standard_normal((k, n), np.float32),
                  "dy": rng.standard_normal((batch, n), np.float32)}
        lhs, rhs, dims = PRODUCTS[name]
        jl, jr = jax.device_put(arrays[lhs]), jax.device_put(arrays[rhs])
        fn = jax.jit(lambda a, b, dims=dims: jax.lax.dot_general(a, b, (dims, ((), ()))))
        jax.block_until_ready(fn(jl, jr))
        calls[(i, name, "jax")] = lambda fn=fn, a=jl, b=jr: jax.block_until_ready(fn(a, b))
        calls[(i, name, "torch")] = _torch_product(torch.from_numpy(arrays[lhs]),
                                                   torch.from_numpy(arrays[rhs]), dims)
        rows.append({"layer": i, "product": name, "k": k, "n": n,
                     "flops": 2.0 * batch * k * n})
    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        for call in calls.values():
            call()  # warm-up
        medians = harness.timed_rounds({key: (call, 1) for key, call in calls.items()}, rounds)
    finally:
        torch.set_num_threads(threads)
    for row in rows:
        for lib in ("jax", "torch"):
            row[f"{lib}_ms"] = 1e3 * medians[(row["layer"], row["product"], lib)]
    return rows


def table(rows: list[dict], batch: int) -> str:
    lines = ["| layer (K -> N) | product | XLA ms | torch ms | XLA GFLOP/s | torch GFLOP/s | "
             "XLA / torch time |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['layer']} ({r['k']} -> {r['n']}) | {r['product']} | "
                     f"{r['jax_ms']:.3f} | {r['torch_ms']:.3f} | "
                     f"{r['flops'] / r['jax_ms'] / 1e6:.1f} | "
                     f"{r['flops'] / r['torch_ms'] / 1e6:.1f} | "
                     f"{r['jax_ms'] / r['torch_ms']:.2f} |")
    jax_ms, torch_ms = sum(r["jax_ms"] for r in rows), sum(r["torch_ms"] for r in rows)
    flops = sum(r["flops"] for r in rows)
    lines.append(f"| all, batch {batch} | one step's products | {jax_ms:.3f} | {torch_ms:.3f} | "
                 f"{flops / jax_ms / 1e6:.1f} | {flops / torch_ms / 1e6:.1f} | "
                 f"{jax_ms / torch_ms:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="reference",
                   help="the MLP VAE whose layers to time (default %(default)s)")
    p.add_argument("--batch", type=int, default=8192, help="B (default %(default)s)")
    p.add_argument("--rounds", type=int, default=11, help="timed calls per product and library "
                                                         "(default %(default)s)")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                   help="torch.set_num_threads (default: the core count, as the harness)")
    args = p.parse_args(argv)
    try:
        cli.check_positive(args, ("batch", "rounds", "torch_threads"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.model} model, batch {args.batch}; medians of {args.rounds} interleaved rounds; "
          f"load average before {os.getloadavg()[0]:.2f}")
    print(table(measure(args.model, args.batch, args.rounds, args.torch_threads), args.batch))
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
