"""The three matrix products of a dense layer's training step, in float32 and bfloat16.

    python -m benchmarks.bf16_dots                      # the wide model's 1024 x 1024 layer, batch 512
    python -m benchmarks.bf16_dots --batch 2048 --rounds 30

For y = x @ W (x: (B, K), W: (K, N)) a training step computes three products:

    forward         y  = x @ W       contracts K: x's dim 1 with W's dim 0
    input grad      dx = dy @ W^T    contracts N: dy's dim 1 with W's dim 1
    weight grad     dW = x^T @ dy    contracts B: x's dim 0 with dy's dim 0

In bfloat16 each takes bfloat16 inputs and accumulates in float32 (``preferred_element_type``), as
jaxvae's precision policy does. The report gives each product's median time and GFLOP/s, and
whether XLA kept it in bfloat16: XLA's CPU compiler upcasts a bfloat16 product that its matrix
library cannot take (its operands are converted back to float32 before the product), and the
compiled program then holds ``f32[...] convert`` of the bfloat16 operands. On the 2-vCPU AVX-512
machines of docs/benchmarks.md the weight gradient as written above, whose left operand
contracts its first dimension, is upcast, so it runs at the float32 rate. A fourth row times it
as jaxvae's backward pass computes it (``jaxvae.models.precision.transposed_copy``): x^T copied
to a row-major (K, B) array first, then a product that contracts x^T's last dimension.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from experiments import cli

# name: (lhs, rhs, (lhs contracting dims, rhs contracting dims), lhs as a transposed copy)
PRODUCTS = {
    "forward y = x @ W": ("x", "w", ((1,), (0,)), False),
    "input grad dx = dy @ W^T": ("dy", "w", ((1,), (1,)), False),
    "weight grad dW = x^T @ dy": ("x", "dy", ((0,), (0,)), False),
    "weight grad dW = copy(x^T) @ dy": ("x", "dy", ((1,), (0,)), True),
}


def upcast(hlo_text: str, dtype_name: str) -> bool:
    """Whether the compiled program converts bfloat16 values back to float32 before a product."""
    if dtype_name != "bfloat16":
        return False
    return re.search(r"f32\[[0-9,]*\]\{[0-9,]*\} convert\(", hlo_text) is not None


def measure(batch: int, k: int, n: int, rounds: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxvae.models import precision

    keys = jax.random.split(jax.random.key(0), 3)
    arrays = {"x": jax.random.normal(keys[0], (batch, k)),
              "w": jax.random.normal(keys[1], (k, n)),
              "dy": jax.random.normal(keys[2], (batch, n))}
    flops = 2.0 * batch * k * n
    rows = []
    for dtype_name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        for name, (lhs, rhs, dims, copy_lhs) in PRODUCTS.items():
            lhs_of = precision.transposed_copy if copy_lhs else (lambda a: a)
            fn = jax.jit(lambda a, b, dims=dims, lhs_of=lhs_of: jax.lax.dot_general(
                lhs_of(a.astype(dtype)), b.astype(dtype), (dims, ((), ())),
                preferred_element_type=jnp.float32))
            a, b = arrays[lhs], arrays[rhs]
            compiled = fn.lower(a, b).compile()
            jax.block_until_ready(compiled(a, b))
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                jax.block_until_ready(compiled(a, b))
                times.append(time.perf_counter() - start)
            seconds = float(np.median(times))
            rows.append({"precision": dtype_name, "product": name, "ms": 1e3 * seconds,
                         "gflops": flops / seconds / 1e9,
                         "upcast_to_float32": upcast(compiled.as_text(), dtype_name)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| product | precision | ms | GFLOP/s | kept in bfloat16 |",
             "| --- | --- | ---: | ---: | --- |"]
    for r in rows:
        kept = "—" if r["precision"] == "float32" else ("no" if r["upcast_to_float32"] else "yes")
        lines.append(f"| {r['product']} | {r['precision']} | {r['ms']:.3f} | {r['gflops']:.1f} "
                     f"| {kept} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=512, help="B (default %(default)s)")
    p.add_argument("--in-features", type=int, default=1024, help="K (default %(default)s)")
    p.add_argument("--out-features", type=int, default=1024, help="N (default %(default)s)")
    p.add_argument("--rounds", type=int, default=20, help="timed calls per product "
                                                         "(default %(default)s)")
    args = p.parse_args(argv)
    try:
        cli.check_positive(args, ("batch", "in_features", "out_features", "rounds"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"B {args.batch}, K {args.in_features}, N {args.out_features}; medians of "
          f"{args.rounds} calls; load average {os.getloadavg()[0]:.2f}")
    print(table(measure(args.batch, args.in_features, args.out_features, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
