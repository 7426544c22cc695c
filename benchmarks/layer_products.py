"""The matrix products of a VAE's training step: XLA's against PyTorch's, shape by shape.

    python -m benchmarks.layer_products                          # reference model, batch 8192
    python -m benchmarks.layer_products --model wide --batch 2048 --rounds 15
    python -m benchmarks.layer_products --model conv --batch 512  # the conv VAE's float32 step

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

``--model conv``: the products of the conv VAE's float32 step as ``jaxvae.models.conv``
computes them (``conv_products``): each stride-2 convolution as one (F, 16 C) x (16 C, N)
product on batch-last patches (N = output pixels x B) with its kernel gradient and the
gradient of its patches, each transposed convolution by phases (one (4 F, 4 C) x (4 C, N)
product over the (H + 1) x (W + 1) patches, or, for the one-channel image layer, a (16 F, C) x
(C, H W B) product), the dense layers as above; with the contractions XLA is given (``kernel.T``
folded into a product contracts the kernel's leading axis). Its FLOPs are those executed, the
phases' border included.
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


MODELS = ("reference", "wide", "conv")

# name: (lhs, rhs, (lhs contracting dims, rhs contracting dims)), the contractions of bf16_dots
PRODUCTS = dict(zip(("forward", "input grad", "weight grad"),
                    (product[:3] for product in bf16_dots.PRODUCTS.values())))


def products(layers: list[tuple[int, int]]) -> list[tuple[int, str, tuple[int, int]]]:
    """(layer index, product name, (K, N)) of one step; the data layer has no input gradient."""
    return [(i, name, kn) for i, kn in enumerate(layers) for name in PRODUCTS
            if not (i == 0 and name == "input grad")]


def conv_products(batch: int) -> list[dict]:
    """The products of the harness's conv VAE's float32 training step at batch ``batch``.

    Rows: ``layer``, ``product``, ``lhs`` and ``rhs`` shapes, ``dims`` (the contracted axis of
    each), ``flops``. The layer shapes are those of ``benchmarks.workloads`` ("conv").
    """
    from benchmarks import harness, workloads
    work = workloads.WORKLOADS["conv"]
    h, w, c = 28, 28, 1
    rows = []

    def add(layer, product, lhs, rhs, dims):
        k = lhs[dims[0]]
        assert k == rhs[dims[1]], (layer, product, lhs, rhs, dims)
        out = [d for i, d in enumerate(lhs) if i != dims[0]] + \
              [d for i, d in enumerate(rhs) if i != dims[1]]
        rows.append({"layer": layer, "product": product, "lhs": lhs, "rhs": rhs, "dims": dims,
                     "flops": 2.0 * k * out[0] * out[1]})

    sizes = [(h, w, c)]
    for i, f in enumerate(work.channels):  # StridedConv: (F, 16 C) x (16 C, N)
        ih, iw, ic = sizes[-1]
        n = harness.conv_out(ih) * harness.conv_out(iw) * batch
        add(f"conv_{i}", "forward", (16 * ic, f), (16 * ic, n), (0, 0))
        add(f"conv_{i}", "kernel grad", (16 * ic, n), (f, n), (1, 1))
        if i:
            add(f"conv_{i}", "patches grad", (16 * ic, f), (f, n), (1, 0))
        sizes.append((harness.conv_out(ih), harness.conv_out(iw), f))
    fh, fw, fc = sizes[-1]
    dense = [fh * fw * fc, *work.hidden]
    mlp = [(f"encoder hidden_{i}", (a, b))
           for i, (a, b) in enumerate(zip(dense[:-1], dense[1:]))]
    mlp += [("mean", (dense[-1], work.latent_dim)), ("logvar", (dense[-1], work.latent_dim))]
    back = [work.latent_dim, *reversed(work.hidden), dense[0]]
    mlp += [(f"decoder hidden_{i}" if i < len(back) - 2 else "to_features", (a, b))
            for i, (a, b) in enumerate(zip(back[:-1], back[1:]))]
    for name, (k, n) in mlp:
        shapes = {"x": (batch, k), "w": (k, n), "dy": (batch, n)}
        for product, (lhs, rhs, (lc, rc)) in PRODUCTS.items():
            add(name, product, shapes[lhs], shapes[rhs], (lc[0], rc[0]))
    ih, iw, ic = sizes[-1]
    for i, (oh, ow, f) in enumerate(reversed(sizes[:-1])):  # StridedConvTranspose
        if f >= 8:  # by phases: (4 F, 4 C) x (4 C, (H + 1)(W + 1) B)
            n = (ih + 1) * (iw + 1) * batch
            add(f"deconv_{i}", "forward", (4 * f, 4 * ic), (4 * ic, n), (1, 0))
            add(f"deconv_{i}", "kernel grad", (4 * f, n), (4 * ic, n), (1, 1))
            add(f"deconv_{i}", "patches grad", (4 * f, 4 * ic), (4 * f, n), (0, 0))
        else:  # by col2im: (16 F, C) x (C, H W B)
            n = ih * iw * batch
            add(f"deconv_{i}", "forward", (16 * f, ic), (ic, n), (1, 0))
            add(f"deconv_{i}", "kernel grad", (16 * f, n), (ic, n), (1, 1))
            add(f"deconv_{i}", "input grad", (16 * f, ic), (16 * f, n), (0, 0))
        ih, iw, ic = oh, ow, f
    return rows


def _torch_product(lhs, rhs, dims):
    """torch.mm of the same contraction as ``dot_general(lhs, rhs, dims)``."""
    (lc,), (rc,) = dims
    return lambda: (lhs if lc == 1 else lhs.t()).mm(rhs if rc == 0 else rhs.t())


def mlp_rows(model: str, batch: int) -> list[dict]:
    """``products(model_layers(model))`` as rows of ``measure`` (labels as in ``table``)."""
    rows = []
    for i, name, (k, n) in products(model_layers(model)):
        shapes = {"x": (batch, k), "w": (k, n), "dy": (batch, n)}
        lhs, rhs, ((lc,), (rc,)) = PRODUCTS[name]
        rows.append({"layer": f"{i} ({k} -> {n})", "product": name, "lhs": shapes[lhs],
                     "rhs": shapes[rhs], "dims": (lc, rc), "flops": 2.0 * batch * k * n})
    return rows


def measure(rows: list[dict], rounds: int, torch_threads: int) -> list[dict]:
    """Median ms of each product of ``rows`` (``mlp_rows``, ``conv_products``), XLA and torch."""
    import jax
    import numpy as np
    import torch

    from benchmarks import harness

    rng = np.random.default_rng(0)
    calls = {}
    for j, row in enumerate(rows):
        a = rng.standard_normal(row["lhs"], np.float32)
        b = rng.standard_normal(row["rhs"], np.float32)
        dims = ((row["dims"][0],), (row["dims"][1],))
        ja, jb = jax.device_put(a), jax.device_put(b)
        fn = jax.jit(lambda a, b, dims=dims: jax.lax.dot_general(a, b, (dims, ((), ()))))
        jax.block_until_ready(fn(ja, jb))
        calls[(j, "jax")] = lambda fn=fn, a=ja, b=jb: jax.block_until_ready(fn(a, b))
        calls[(j, "torch")] = _torch_product(torch.from_numpy(a), torch.from_numpy(b), dims)
    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        for call in calls.values():
            call()  # warm-up
        medians = harness.timed_rounds({key: (call, 1) for key, call in calls.items()}, rounds)
    finally:
        torch.set_num_threads(threads)
    return [dict(row, jax_ms=1e3 * medians[(j, "jax")], torch_ms=1e3 * medians[(j, "torch")])
            for j, row in enumerate(rows)]


def table(rows: list[dict], batch: int) -> str:
    lines = ["| layer | product | XLA ms | torch ms | XLA GFLOP/s | torch GFLOP/s | "
             "XLA / torch time |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        product = r["product"]
        if not r["layer"][0].isdigit():  # a conv VAE row: say which product of which shapes
            product += f": {r['lhs']} . {r['rhs']}, contracting axes {r['dims']}"
        lines.append(f"| {r['layer']} | {product} | "
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
                   help="the VAE whose products to time (default %(default)s)")
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
    rows = (conv_products(args.batch) if args.model == "conv"
            else mlp_rows(args.model, args.batch))
    print(table(measure(rows, args.rounds, args.torch_threads), args.batch))
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
