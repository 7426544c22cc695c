"""Benchmark harness: jaxvae vs the PyTorch reference formulas, on CPU, GPU or TPU.

    python -m benchmarks.run                       # the full run, all defaults
    python -m benchmarks.run --quick               # a smoke test (tiny settings)
    python -m benchmarks.run --models reference wide conv sequence
    python -m benchmarks.run --device gpu --outdir runs/bench-gpu
    python -m benchmarks.run --precisions float32 bfloat16

Measures training throughput (samples/s of a full step: forward, loss, backward, Adam) for
torch eager, torch.compile, jaxvae's jitted step, its scan epoch and its pmap / sharded
data-parallel steps over the local devices, at several batch sizes, for the MLP VAEs
(reference, wide) and, with --models, the convolutional and the sequence VAE against torch
equivalents with the same parameter counts (benchmarks/workloads.py); the epoch of the path
users take (``jaxvae.fit``, what experiments/train.py runs) against the pytorch/examples epoch
loop; and the importance-sampled log-likelihood (K = 1000, 5000). With ``--precisions float32
bfloat16`` every training configuration also runs in bfloat16: jaxvae's models built with
``precision_name="bfloat16"`` against the same torch steps under ``torch.autocast`` to
bfloat16, in the same rounds as the float32 rows.

Honest timing: the first call of every method (tracing, compiling) is timed apart and never
counted as throughput; every call ends with ``jax.block_until_ready`` /
``torch.cuda.synchronize``; the timed calls of all methods of one configuration run
interleaved, round-robin with a rotating order, each after 10 ms of idle cores (torch's OpenMP
threads spin for milliseconds after each call and would slow the next one), and the ratios
compare medians of the same rounds. A jitted float32 GEMM runs in the same rounds:
``pct_of_peak`` is each method's matmul GFLOP/s over the GEMM's (FLOP counts: benchmarks/harness.py); bfloat16 rows use a bfloat16
GEMM with float32 accumulation, timed in the same rounds. So do a STREAM copy and triad:
``pct_of_roofline`` is each training row's samples/s over the most its step allows, its FLOPs
at the GEMM rate plus its optimizer's and activations' bytes at the triad bandwidth (the byte
model: benchmarks/harness.py, docs/benchmarks.md). The load average is read before and after
every timed block; above 1 per core the run warns that its ratios are unreliable.

Writes into --outdir: results.json (rows + machine + versions + targets), results.md (the
tables, also printed) and throughput.png (samples/s vs batch size per method).

This module is the command line and the order of a run; the measured sections are in
benchmarks/sections.py, the tables, targets and plot in benchmarks/report.py, the timing
protocol in benchmarks/harness.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks import harness, report, sections
from benchmarks.sections import PRECISIONS, TRAIN_METHODS, log
from benchmarks.workloads import WORKLOADS

BACKENDS = {"cpu": "cpu", "gpu": "gpu", "tpu": "tpu"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=sorted(BACKENDS),
                   help="backend to benchmark (default: jax's default backend)")
    p.add_argument("--batch-sizes", type=int, nargs="+",
                   help="batch sizes of the reference model (default 128 512 2048 8192; "
                        "--quick: 128)")
    p.add_argument("--wide-batch-sizes", type=int, nargs="+",
                   help="batch sizes of the wide model (default 128 512 2048; "
                        "--quick: the wide model is skipped unless --models names it)")
    p.add_argument("--conv-batch-sizes", type=int, nargs="+",
                   help="batch sizes of the conv model (default 128 512; --quick 32); it "
                        "runs only when --models names it")
    p.add_argument("--sequence-batch-sizes", type=int, nargs="+",
                   help="batch sizes of the sequence model (default 128 512; --quick 32); it "
                        "runs only when --models names it")
    p.add_argument("--models", nargs="+", choices=list(WORKLOADS),
                   help="models to train: reference (784-400-20), wide (784-1024-1024-64), "
                        "conv (the convolutional VAE, 2.6 M parameters), sequence (the biGRU "
                        "sequence VAE, 806 k parameters, rows of 53 tokens) (default: reference "
                        "wide; --quick: reference)")
    p.add_argument("--methods", nargs="+", choices=TRAIN_METHODS,
                   help="training methods (default: all; --quick: all but compile)")
    p.add_argument("--repeats", type=int, help="timed rounds per configuration (default 5; "
                                               "--quick 2)")
    p.add_argument("--call-gflop", type=float,
                   help="matmul GFLOP of one timed call; sets the steps per call (default 12; "
                        "--quick 0.3)")
    p.add_argument("--min-steps", type=int,
                   help="optimizer steps per timed call at least, whatever --call-gflop gives: "
                        "a scan epoch of one step pays once per step what fit's epoch-long "
                        "chunks pay once per epoch (each call allocates its temporary "
                        "buffers anew, on fresh pages) (default 8; --quick 1)")
    p.add_argument("--gemm-size", type=int, help="n of the n x n x n GEMM peak (default 2048 "
                                                 "on CPU, 8192 on accelerators; --quick 512)")
    p.add_argument("--stream-mb", type=float,
                   help="MiB per array of the STREAM copy / triad, larger than the last-level "
                        "cache (default 128 on CPU, 1024 on accelerators; --quick 16)")
    p.add_argument("--nll-samples", type=int, nargs="*",
                   help="K of the importance-sampled NLL; none to skip (default 1000 5000; "
                        "--quick 100)")
    p.add_argument("--nll-gflop", type=float,
                   help="matmul GFLOP of one NLL call; sets the examples (default 10; "
                        "--quick 0.2)")
    p.add_argument("--fit-epochs", type=int,
                   help="mnist5k epochs of the jaxvae.fit vs torch epoch row, the first one "
                        "a warm-up; 0 to skip (default 6; --quick 2)")
    p.add_argument("--fit-examples", type=int,
                   help="use only this many mnist5k training examples in the fit row "
                        "(default: all 4,000; --quick 1024)")
    p.add_argument("--torch-threads", type=int,
                   help="torch.set_num_threads on CPU (default: the core count, as JAX uses "
                        "every core)")
    p.add_argument("--precisions", nargs="+", metavar="PRECISION",
                   help="precisions of the training rows: float32 (the default) and/or "
                        "bfloat16 (jaxvae's bfloat16 policy against torch.autocast to "
                        "bfloat16; both multiply bfloat16 inputs, accumulating in float32)")
    p.add_argument("--matmul-precision", choices=("float32", "tf32"), default="float32",
                   help="float32 matmuls in both frameworks (default), or TF32 in both on GPUs "
                        "that have it (jax's GPU default and torch's default differ)")
    p.add_argument("--max-minutes", type=float,
                   help="wall-time budget: a timed block (one model and batch size, the fit "
                        "row, one NLL K) starts only while it lasts, the first always; the "
                        "blocks skipped are named in the notes and the rest is written as "
                        "usual (default: no limit)")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings for a smoke test (under a minute on 2 cores)")
    p.add_argument("--json", help="also write the JSON here")
    p.add_argument("--outdir", default="runs/benchmark", help="output directory "
                                                              "(default %(default)s)")
    return p


def settings(args: argparse.Namespace, backend: str = "cpu") -> dict:
    """The effective settings: explicit flags win, then the --quick or the full defaults.

    Accelerators get more work per timed call (--call-gflop), so that one call lasts long
    enough to time; the CPU defaults keep the full run within about 8 minutes on 2 cores.
    """
    q = args.quick
    cpu = backend == "cpu"

    def pick(value, quick, full):
        return value if value is not None else (quick if q else full)

    s = {
        "models": pick(args.models, ["reference"], ["reference", "wide"]),
        "batch_sizes": {"reference": pick(args.batch_sizes, [128], [128, 512, 2048, 8192]),
                        "wide": pick(args.wide_batch_sizes, [128], [128, 512, 2048]),
                        "conv": pick(args.conv_batch_sizes, [32], [128, 512]),
                        "sequence": pick(args.sequence_batch_sizes, [32], [128, 512])},
        "methods": pick(args.methods, [m for m in TRAIN_METHODS if m != "compile"],
                        list(TRAIN_METHODS)),
        "repeats": pick(args.repeats, 2, 5),
        "call_gflop": pick(args.call_gflop, 0.3, 12.0 if cpu else 500.0),
        "min_steps": pick(args.min_steps, 1, 8),
        "gemm_size": pick(args.gemm_size, 512, 2048 if cpu else 8192),
        "stream_mb": pick(args.stream_mb, 16.0, 128.0 if cpu else 1024.0),
        "nll_samples": pick(args.nll_samples, [100], [1000, 5000]),
        "nll_gflop": pick(args.nll_gflop, 0.2, 10.0 if cpu else 200.0),
        "fit_epochs": pick(args.fit_epochs, 2, 6),
        "fit_examples": pick(args.fit_examples, 1024, None),
        "torch_threads": pick(args.torch_threads, os.cpu_count() or 1, os.cpu_count() or 1),
        "precisions": list(dict.fromkeys(pick(args.precisions, ["float32"], ["float32"]))),
        "matmul_precision": args.matmul_precision,
        "max_minutes": args.max_minutes,
        "quick": q,
    }
    for name in ("repeats", "gemm_size", "torch_threads", "min_steps"):
        if s[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {s[name]}")
    for m in s["models"]:
        if not s["batch_sizes"][m] or min(s["batch_sizes"][m]) < 1:
            raise ValueError(f"batch sizes of the {m} model must be >= 1, "
                             f"got {s['batch_sizes'][m]}")
    for name in s["precisions"]:
        if name not in PRECISIONS:
            raise ValueError(f"--precisions: unknown precision {name!r}; choose from "
                             f"{' '.join(PRECISIONS)}")
    if any(k < 1 for k in s["nll_samples"]):
        raise ValueError(f"--nll-samples must be >= 1, got {s['nll_samples']}")
    if not s["call_gflop"] > 0 or not s["nll_gflop"] > 0:
        raise ValueError("--call-gflop and --nll-gflop must be > 0")
    if not s["stream_mb"] > 0:
        raise ValueError(f"--stream-mb must be > 0, got {s['stream_mb']}")
    if s["fit_examples"] is not None and not 128 <= s["fit_examples"] <= 4000:
        raise ValueError(f"--fit-examples must be in [128, 4000], got {s['fit_examples']}")
    if s["max_minutes"] is not None and not 0 <= s["max_minutes"] < float("inf"):
        raise ValueError(f"--max-minutes must be a finite number >= 0, got {s['max_minutes']}")
    if s["fit_epochs"] == 1 or s["fit_epochs"] < 0:
        raise ValueError(f"--fit-epochs must be 0 (skip) or >= 2 (the first is a warm-up), "
                         f"got {s['fit_epochs']}")
    return s


def _torch_globals():
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads(), torch.get_float32_matmul_precision()


def _restore_torch_globals(saved) -> None:
    if saved is not None:
        import torch
        torch.set_num_threads(saved[0])
        torch.set_float32_matmul_precision(saved[1])


def setup_torch(backend: str, threads: int):
    """(torch module or None, torch.device or None, a note when torch rows are skipped)."""
    try:
        import torch
    except ImportError:
        return None, None, "torch is not installed: no torch rows"
    if backend == "cpu":
        # torch's default intra-op pool may be smaller than the machine; JAX uses every core.
        torch.set_num_threads(threads)
        return torch, torch.device("cpu"), None
    if backend == "gpu":
        if torch.cuda.is_available():
            return torch, torch.device("cuda"), None
        return None, None, "torch has no CUDA on this machine: no torch rows on the GPU"
    return None, None, ("no torch rows on TPU: torch needs torch_xla there, which this "
                        "harness does not drive")


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    settings(args)  # bad flags fail before jax starts
    started, load_start = time.perf_counter(), harness.load_average()
    import jax
    backend = args.device or jax.default_backend()
    try:
        devices = jax.local_devices(backend=BACKENDS[backend])
    except RuntimeError as e:
        raise ValueError(f"--device {backend}: jax cannot use that backend here ({e}); "
                         f"run without --device to use {jax.default_backend()}") from None
    s = settings(args, backend)
    outdir = Path(args.outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create --outdir {outdir}: {e.strerror or e}") from None
    torch_saved = _torch_globals()
    torch, torch_device, torch_note = setup_torch(backend, s["torch_threads"])
    tf32 = s["matmul_precision"] == "tf32"
    torch_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
    notes = [torch_note] if torch_note else []
    if len(devices) == 1:
        notes.append("one local device: pmap and sharded run on it alone (on CPU, set "
                     "XLA_FLAGS=--xla_force_host_platform_device_count=N to split the cores)")
    from jaxvae.data import datasets as data_lib
    data = data_lib.load_mnist5k()

    rows, blocks = [], []
    budget = sections.Budget(None if s["max_minutes"] is None else 60 * s["max_minutes"])
    # The same matmul arithmetic in both frameworks: on recent GPUs JAX would use TF32 for
    # float32 by default and torch would not.
    try:
        with jax.default_device(devices[0]), jax.default_matmul_precision(
                "tensorfloat32" if tf32 else "float32"):
            rows += sections.train_section(s, jax, torch, torch_device, backend, devices,
                                           data.x_train, notes, blocks, budget)
            if s["fit_epochs"]:
                rows += sections.fit_section(s, jax, torch, backend, devices, data, notes,
                                             blocks, budget)
            if s["nll_samples"]:
                rows += sections.nll_section(s, jax, torch, torch_device, backend, devices,
                                             data.x_test, notes, blocks, budget)
    finally:
        _restore_torch_globals(torch_saved)  # main() may run inside a larger program (tests)
    report.add_ratios(rows)
    m = report.machine(backend, devices, torch_note, load_start)
    command = "python -m benchmarks.run " + " ".join(argv) if argv is not None else None
    result = {"machine": m, "versions": report.versions(torch, torch_threads),
              "settings": {**s, "command": command,
                           "total_seconds": round(time.perf_counter() - started, 1)},
              "notes": list(dict.fromkeys(notes)), "load": report.load_summary(blocks),
              "targets": report.targets(rows), "rows": rows}
    print(report.markdown(result))
    written = report.write(result, outdir, args.json)
    log(f"total {result['settings']['total_seconds']} s; wrote "
        + ", ".join(str(p) for p in written))
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        run(args, argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
