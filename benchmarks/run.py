"""Benchmark harness: jaxvae vs the PyTorch reference formulas, on CPU, GPU or TPU.

    python benchmarks/run.py                       # the full run, all defaults
    python benchmarks/run.py --quick               # a smoke test (tiny settings)
    python benchmarks/run.py --device gpu --outdir runs/bench-gpu

Measures training throughput (samples/s of a full step: forward, loss, backward, Adam) for
torch eager, torch.compile, jaxvae's jitted step, its scan epoch and its pmap / sharded
data-parallel steps over the local devices, at several batch sizes and two model sizes; the
epoch of the path users take (``jaxvae.fit``, what experiments/train.py runs) against the
pytorch/examples epoch loop; and the importance-sampled log-likelihood (K = 1000, 5000).

Honest timing: the first call of every method (tracing, compiling) is timed apart and never
counted as throughput; every call ends with ``jax.block_until_ready`` /
``torch.cuda.synchronize``; the timed calls of all methods of one configuration run
interleaved, round-robin with a rotating order, and the ratios compare medians of the same
rounds. A jitted float32 GEMM runs in the same rounds: ``pct_of_peak`` is each method's matmul
GFLOP/s over the GEMM's (FLOP counts: benchmarks/harness.py, mlp_train_flops).

Writes into --outdir: results.json (rows + machine + versions + targets), results.md (the
tables, also printed) and throughput.png (samples/s vs batch size per method).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TRAIN_METHODS = ("eager", "compile", "jit_step", "scan_epoch", "scan_micro", "pmap", "sharded")
JAX_TRAIN = ("jit_step", "scan_epoch", "scan_micro", "pmap", "sharded")
MODELS = {  # name -> (hidden, latent_dim); 784 inputs
    "reference": ((400,), 20),
    "wide": ((1024, 1024), 64),
}
BACKENDS = {"cpu": "cpu", "gpu": "gpu", "tpu": "tpu"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=sorted(BACKENDS),
                   help="backend to benchmark (default: jax's default backend)")
    p.add_argument("--batch-sizes", type=int, nargs="+",
                   help="batch sizes of the reference model (default 128 512 2048 8192; "
                        "--quick: 128)")
    p.add_argument("--wide-batch-sizes", type=int, nargs="+",
                   help="batch sizes of the wide model (default 128 512 2048; "
                        "--quick: the wide model is skipped unless --models names it)")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS),
                   help="models to train (default: reference wide; --quick: reference)")
    p.add_argument("--methods", nargs="+", choices=TRAIN_METHODS,
                   help="training methods (default: all; --quick: all but compile)")
    p.add_argument("--repeats", type=int, help="timed rounds per configuration (default 5; "
                                               "--quick 2)")
    p.add_argument("--call-gflop", type=float,
                   help="matmul GFLOP of one timed call; sets the steps per call (default 12; "
                        "--quick 0.3)")
    p.add_argument("--gemm-size", type=int, help="n of the n x n x n GEMM peak (default 2048 "
                                                 "on CPU, 8192 on accelerators; --quick 512)")
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
    p.add_argument("--matmul-precision", choices=("float32", "tf32"), default="float32",
                   help="float32 matmuls in both frameworks (default), or TF32 in both on GPUs "
                        "that have it (jax's GPU default and torch's default differ)")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings for a smoke test (under a minute on 2 cores)")
    p.add_argument("--json", help="also write the JSON here")
    p.add_argument("--outdir", default="runs/benchmark", help="output directory "
                                                              "(default %(default)s)")
    return p


MAX_SAMPLES_PER_CALL = 131072  # bounds the pre-placed batches (400 MB of float32 at 784)


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
                        "wide": pick(args.wide_batch_sizes, [128], [128, 512, 2048])},
        "methods": pick(args.methods, [m for m in TRAIN_METHODS if m != "compile"],
                        list(TRAIN_METHODS)),
        "repeats": pick(args.repeats, 2, 5),
        "call_gflop": pick(args.call_gflop, 0.3, 12.0 if cpu else 500.0),
        "gemm_size": pick(args.gemm_size, 512, 2048 if cpu else 8192),
        "nll_samples": pick(args.nll_samples, [100], [1000, 5000]),
        "nll_gflop": pick(args.nll_gflop, 0.2, 10.0 if cpu else 200.0),
        "fit_epochs": pick(args.fit_epochs, 2, 6),
        "fit_examples": pick(args.fit_examples, 1024, None),
        "torch_threads": pick(args.torch_threads, os.cpu_count() or 1, os.cpu_count() or 1),
        "matmul_precision": args.matmul_precision,
        "quick": q,
    }
    for name in ("repeats", "gemm_size", "torch_threads"):
        if s[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {s[name]}")
    for m in s["models"]:
        if not s["batch_sizes"][m] or min(s["batch_sizes"][m]) < 1:
            raise ValueError(f"batch sizes of the {m} model must be >= 1, "
                             f"got {s['batch_sizes'][m]}")
    if any(k < 1 for k in s["nll_samples"]):
        raise ValueError(f"--nll-samples must be >= 1, got {s['nll_samples']}")
    if not s["call_gflop"] > 0 or not s["nll_gflop"] > 0:
        raise ValueError("--call-gflop and --nll-gflop must be > 0")
    if s["fit_examples"] is not None and not 128 <= s["fit_examples"] <= 4000:
        raise ValueError(f"--fit-examples must be in [128, 4000], got {s['fit_examples']}")
    if s["fit_epochs"] == 1 or s["fit_epochs"] < 0:
        raise ValueError(f"--fit-epochs must be 0 (skip) or >= 2 (the first is a warm-up), "
                         f"got {s['fit_epochs']}")
    return s


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine(backend: str, devices, torch_note: str | None, load_start) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "backend": backend,
            "device_kind": devices[0].device_kind, "num_local_devices": len(devices),
            "load_average_start": load_start, "load_average_end": load_average()}
    if torch_note:
        info["torch_note"] = torch_note
    return info


def versions(torch, torch_threads: int | None) -> dict:
    import flax
    import jax
    import numpy as np
    import optax

    import jaxlib

    import jaxvae
    v = {"jaxvae": jaxvae.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
         "flax": flax.__version__,
         "optax": optax.__version__, "numpy": np.__version__}
    if torch is not None:
        v["torch"] = torch.__version__
        v["torch_num_threads"] = torch_threads
    return v


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


# ------------------------------------------------------------------------------ sections


def tiled(x, n: int):
    import numpy as np
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n]) if reps > 1 else x[:n]


def largest_divisor(k: int, limit: int) -> int:
    """The largest divisor of k that is <= limit (chunks of K must tile K exactly)."""
    return max(d for d in range(1, min(k, limit) + 1) if k % d == 0)


def row(timing, benchmark: str, model: str, batch_size, backend: str, device_kind: str,
        peak_gflops: float | None) -> dict:
    r = timing.runner
    out = {"benchmark": benchmark, "framework": r.framework, "method": r.method,
           "device": backend, "device_kind": device_kind, "model": model,
           "batch_size": batch_size, **timing.stats()}
    out["pct_of_peak"] = (100.0 * out["gflops"] / peak_gflops) if peak_gflops else None
    out["peak_memory_bytes"] = r.peak_memory()
    out.update(r.extra)
    return out


def train_section(s, jax, torch, torch_device, backend, devices, x_train, notes) -> list[dict]:
    from benchmarks import harness, jax_methods
    import jaxvae

    rows = []
    for model_name in s["models"]:
        hidden, latent = MODELS[model_name]
        model = jaxvae.mlp_vae(hidden, latent, (784,))
        per_sample = harness.mlp_train_flops(784, hidden, latent)
        for batch in s["batch_sizes"][model_name]:
            steps = max(1, min(round(s["call_gflop"] * 1e9 / (per_sample * batch)),
                               MAX_SAMPLES_PER_CALL // batch))
            x = tiled(x_train, steps * batch)
            log(f"train {model_name} batch {batch}: {steps} steps per call, "
                f"{s['repeats']} rounds")
            gemm = harness.gemm_runner(s["gemm_size"], devices[0])
            runners, skipped = jax_methods.train_runners(model, x, batch, steps, devices[0],
                                                         devices, s["methods"])
            notes.extend(skipped)
            if torch is not None:
                from benchmarks import torch_methods
                runners = torch_methods.train_runners(hidden, latent, x, batch, steps,
                                                      torch_device, s["methods"]) + runners
            timings = harness.round_robin([gemm] + runners, s["repeats"], log=log)
            peak = timings[0].stats()["gflops"]
            # XLA's count, once per model (a cross-check of the formula; compiling costs)
            xla = (jax_methods.xla_flops_per_sample(model, batch, devices[0])
                   if batch == s["batch_sizes"][model_name][0] else None)
            for t in timings[1:]:
                rows.append(row(t, "train", model_name, batch, backend, devices[0].device_kind,
                                peak))
                rows[-1]["flops_per_sample"] = per_sample
                rows[-1]["xla_flops_per_sample"] = xla if t.runner.framework == "jax" else None
                rows[-1]["gemm_gflops"] = peak
    return rows


def nll_section(s, jax, torch, torch_device, backend, devices, x_test, notes) -> list[dict]:
    from benchmarks import harness, jax_methods
    import jaxvae

    model = jaxvae.reference_vae()
    rows = []
    if torch is not None:
        from benchmarks import torch_methods, torch_reference
        torch.manual_seed(0)
        net = torch_reference.TorchVAE()
        params = jaxvae.from_torch(model, net.state_dict())  # both evaluate the same weights
    else:
        net, params = None, jaxvae.init(model, jax.random.key(0))
    for k in s["nll_samples"]:
        per_example = harness.mlp_nll_flops(784, (400,), 20, k)
        examples = max(1, min(len(x_test), round(s["nll_gflop"] * 1e9 / per_example)))
        if s["nll_gflop"] * 1e9 / per_example > len(x_test):
            notes.append(f"nll K={k}: capped at the {len(x_test)} mnist5k test examples")
        x = x_test[:examples]
        torch_chunk = math.gcd(k, 100)  # the per-example loop's chunk (100, as in its style)
        chunk = largest_divisor(k, max(1, 8192 // examples))  # ~8192 decoder rows a chunk
        log(f"nll K={k}: {examples} examples, chunks {chunk} (vectorized) / {torch_chunk} "
            f"(per-example loop)")
        gemm = harness.gemm_runner(s["gemm_size"], devices[0])
        runners = [jax_methods.nll_runner(model, params, x, k, chunk, devices[0])]
        if net is not None:
            runners += torch_methods.nll_runners(net, x, k, torch_chunk, chunk, torch_device)
        timings = harness.round_robin([gemm] + runners, max(2, s["repeats"] - 2), log=log)
        peak = timings[0].stats()["gflops"]
        for t in timings[1:]:
            rows.append(row(t, f"nll_k{k}", "reference", examples, backend,
                            devices[0].device_kind, peak))
            rows[-1]["importance_samples_per_s"] = rows[-1]["samples_per_s"] * k
    return rows


def fit_section(s, jax, torch, backend, devices, data, notes) -> list[dict]:
    """jaxvae.fit (the path of experiments/train.py) vs the pytorch/examples epoch, interleaved.

    One mnist5k epoch at batch 128 each, alternating: fit calls ``on_epoch`` after each of its
    epochs and the torch epoch runs there. The first epoch of each is the warm-up.
    """
    import jaxvae
    from jaxvae import trainer

    epochs = s["fit_epochs"]
    if s["fit_examples"]:
        data = data._replace(x_train=data.x_train[:s["fit_examples"]],
                             y_train=data.y_train[:s["fit_examples"]])
    torch_seconds = []
    if torch is not None:
        from benchmarks import torch_reference
        torch.manual_seed(0)
        net = torch_reference.TorchVAE()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x_t = torch.from_numpy(data.x_train)
        gen = torch.Generator().manual_seed(0)

    def on_epoch(record):
        if torch is None:
            return
        start = time.perf_counter()
        torch_reference.train_epoch(net, opt, x_t, 128, gen)
        torch_seconds.append(time.perf_counter() - start)

    log(f"fit: {epochs} mnist5k epochs ({len(data.x_train)} examples) at batch 128, jaxvae.fit "
        "and the torch epoch alternating")
    config = jaxvae.TrainConfig(epochs=epochs, batch_size=128)
    result = trainer.fit(config, data, on_epoch=on_epoch)
    n = len(data.x_train)
    from benchmarks.harness import Runner, Timing, mlp_train_flops
    flops = mlp_train_flops(784, (400,), 20) * n
    steps = -(-n // 128)
    jax_seconds = [h["seconds"] for h in result.history]
    timings = [(Timing(Runner("jax", "fit", lambda: None, n, flops, steps,
                              extra={"path": "jaxvae.fit / experiments/train.py",
                                     "dataset": "mnist5k",
                                     "final_train_loss": result.history[-1]["train_loss"]}),
                       jax_seconds[0] + result.compile_seconds, jax_seconds[1:]))]
    if torch_seconds:
        timings.insert(0, Timing(Runner("torch", "reference_loop", lambda: None, n, flops, steps,
                                        extra={"path": "benchmarks/torch_reference.train_epoch",
                                               "dataset": "mnist5k"}),
                                 torch_seconds[0], torch_seconds[1:]))
    rows = [row(t, "fit_mnist5k", "reference", 128, backend, devices[0].device_kind, None)
            for t in timings]
    for r in rows:  # fit reports its compile time itself; the torch loop compiles nothing
        r["compile_s"] = result.compile_seconds if r["framework"] == "jax" else 0.0
    return rows


# ------------------------------------------------------------------------ ratios, targets


def add_ratios(rows: list[dict]) -> None:
    """x torch eager / x torch.compile (or the torch loop), from the same rounds."""
    base = {}
    for r in rows:
        if r["framework"] == "torch":
            base[(r["benchmark"], r["model"], r["batch_size"], r["method"])] = r["samples_per_s"]
    for r in rows:
        group = (r["benchmark"], r["model"], r["batch_size"])
        for name, method in (("vs_torch_eager", "eager"), ("vs_torch_compile", "compile"),
                             ("vs_torch_reference_loop", "reference_loop"),
                             ("vs_torch_per_example_loop", "per_example_loop"),
                             ("vs_torch_batched", "batched")):
            b = base.get(group + (method,))
            if b:
                r[name] = r["samples_per_s"] / b


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets, each checked against this run's medians."""
    out = []

    def add(name, value, threshold):
        if value is not None:
            out.append({"target": name, "value": round(value, 3), "threshold": threshold,
                        "met": bool(value >= threshold)})

    def best_jax(benchmark, model, batch):
        cands = [r for r in rows if r["benchmark"] == benchmark and r["model"] == model
                 and r["batch_size"] == batch and r["framework"] == "jax"]
        return max(cands, key=lambda r: r["samples_per_s"]) if cands else None

    train = [r for r in rows if r["benchmark"] == "train"]
    for model, batch in sorted({(r["model"], r["batch_size"]) for r in train}):
        b = best_jax("train", model, batch)
        if b is None:
            continue
        tag = f"{model} batch {batch}: best jax ({b['method']})"
        if model == "reference" and batch == 128:
            add(f"{tag} / torch eager", b.get("vs_torch_eager"), 2.2)
            add(f"{tag} / torch.compile", b.get("vs_torch_compile"), 1.8)
        else:
            add(f"{tag} / torch eager", b.get("vs_torch_eager"), 1.0)
            add(f"{tag} / torch.compile", b.get("vs_torch_compile"), 1.0)
        if batch >= 512 and b.get("pct_of_peak") is not None and b["device"] == "cpu":
            add(f"{tag} % of GEMM peak", b["pct_of_peak"], 85.0)
    fit = [r for r in rows if r["benchmark"] == "fit_mnist5k" and r["framework"] == "jax"]
    if fit:
        add("jaxvae.fit mnist5k epoch / torch reference epoch", fit[0].get(
            "vs_torch_reference_loop"), 2.0)
    for r in rows:
        if r["benchmark"].startswith("nll") and r["framework"] == "jax":
            add(f"{r['benchmark']} jax / torch per-example loop",
                r.get("vs_torch_per_example_loop"), 3.0)
            add(f"{r['benchmark']} jax / torch batched", r.get("vs_torch_batched"), 1.0)
    return out


# -------------------------------------------------------------------------------- output


def _fmt(v, spec=",.0f"):
    return "" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    m, v = result["machine"], result["versions"]
    lines = [f"Machine: {m['cpu']} ({m['cpu_count']} cores), backend {m['backend']} "
             f"({m['device_kind']}, {m['num_local_devices']} local device(s)); "
             f"jax {v['jax']}, torch {v.get('torch', '-')}"
             + (f" ({v['torch_num_threads']} threads)" if "torch_num_threads" in v else "")
             + f". Load average (1, 5, 15 min) at start {m['load_average_start']}, end "
               f"{m['load_average_end']}.", ""]
    if result["settings"]["command"]:
        lines += [f"Command: `{result['settings']['command']}`", ""]
    train = [r for r in result["rows"] if r["benchmark"] == "train"]
    if train:
        lines += ["Training step (forward, loss, backward, Adam): samples/s median [min-max] of "
                  "interleaved rounds; x = ratio to torch eager / torch.compile in the same "
                  "rounds; % peak = matmul GFLOP/s over the jitted GEMM's in the same rounds.",
                  "",
                  "| model | batch | method | samples/s | min-max | x eager | x compile | "
                  "GFLOP/s | % peak | step ms | compile s |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in train:
            lines.append(
                f"| {r['model']} | {r['batch_size']} | {r['framework']} {r['method']} | "
                f"{_fmt(r['samples_per_s'])} | {_fmt(r['samples_per_s_min'])}-"
                f"{_fmt(r['samples_per_s_max'])} | {_fmt(r.get('vs_torch_eager'), '.2f')} | "
                f"{_fmt(r.get('vs_torch_compile'), '.2f')} | {_fmt(r['gflops'], '.1f')} | "
                f"{_fmt(r['pct_of_peak'], '.0f')} | {_fmt(r['step_ms'], '.2f')} | "
                f"{_fmt(r['compile_s'], '.2f')} |")
        lines.append("")
    fit = [r for r in result["rows"] if r["benchmark"] == "fit_mnist5k"]
    if fit:
        lines += [f"The path users take: one mnist5k epoch ({fit[0]['samples_per_call']:,} "
                  "examples) at batch 128, "
                  "jaxvae.fit (experiments/train.py) vs the pytorch/examples epoch loop, "
                  "alternating epochs.", "",
                  "| method | samples/s | min-max | x torch loop | epoch s | compile s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in fit:
            lines.append(f"| {r['framework']} {r['method']} | {_fmt(r['samples_per_s'])} | "
                         f"{_fmt(r['samples_per_s_min'])}-{_fmt(r['samples_per_s_max'])} | "
                         f"{_fmt(r.get('vs_torch_reference_loop'), '.2f')} | "
                         f"{r['samples_per_call'] / r['samples_per_s']:.3f} | "
                         f"{_fmt(r['compile_s'], '.2f')} |")
        lines.append("")
    nll = [r for r in result["rows"] if r["benchmark"].startswith("nll")]
    if nll:
        lines += ["Importance-sampled log p(x), reference model: examples/s (K importance "
                  "samples each).", "",
                  "| K | examples | method | examples/s | min-max | x per-example loop | "
                  "x torch batched | GFLOP/s | mean log p(x) |",
                  "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in nll:
            lines.append(f"| {r['num_samples']} | {r['batch_size']} | {r['framework']} "
                         f"{r['method']} | {_fmt(r['samples_per_s'], ',.1f')} | "
                         f"{_fmt(r['samples_per_s_min'], ',.1f')}-"
                         f"{_fmt(r['samples_per_s_max'], ',.1f')} | "
                         f"{_fmt(r.get('vs_torch_per_example_loop'), '.2f')} | "
                         f"{_fmt(r.get('vs_torch_batched'), '.2f')} | "
                         f"{_fmt(r['gflops'], '.1f')} | {_fmt(r.get('mean_log_px'), '.2f')} |")
        lines.append("")
    if result["targets"]:
        lines += ["| target | value | threshold | met |", "|---|---:|---:|---|"]
        for t in result["targets"]:
            lines.append(f"| {t['target']} | {t['value']} | {t['threshold']} | "
                         f"{'yes' if t['met'] else 'NO'} |")
        lines.append("")
    for note in result["notes"]:
        lines.append(f"Note: {note}")
    return "\n".join(lines).rstrip() + "\n"


def plot(result: dict, path: Path) -> Path | None:
    """samples/s vs batch size, one line per method, one panel per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in result["rows"] if r["benchmark"] == "train"]
    models = sorted({r["model"] for r in train})
    if not models:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in train if r["model"] == model]
        for fw, method in sorted({(r["framework"], r["method"]) for r in rows}):
            pts = sorted((r["batch_size"], r["samples_per_s"], r["samples_per_s_min"],
                          r["samples_per_s_max"]) for r in rows
                         if (r["framework"], r["method"]) == (fw, method))
            b, med, lo, hi = zip(*pts)
            ax.errorbar(b, med, yerr=[[m - l for m, l in zip(med, lo)],
                                      [h - m for m, h in zip(med, hi)]],
                        marker="o", capsize=3, linestyle="--" if fw == "torch" else "-",
                        label=f"{fw} {method}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("samples / s (median, min-max)")
        ax.set_title(f"{model} ({result['machine']['device_kind']})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- main


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    settings(args)  # bad flags fail before jax starts
    started, load_start = time.perf_counter(), load_average()
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
    from jaxvae import data as data_lib
    data = data_lib.load_mnist5k()

    rows = []
    # The same matmul arithmetic in both frameworks: on recent GPUs JAX would use TF32 for
    # float32 by default and torch would not.
    try:
        with jax.default_device(devices[0]), jax.default_matmul_precision(
                "tensorfloat32" if tf32 else "float32"):
            rows += train_section(s, jax, torch, torch_device, backend, devices, data.x_train,
                                  notes)
            if s["fit_epochs"]:
                rows += fit_section(s, jax, torch, backend, devices, data, notes)
            if s["nll_samples"]:
                rows += nll_section(s, jax, torch, torch_device, backend, devices, data.x_test,
                                    notes)
    finally:
        _restore_torch_globals(torch_saved)  # main() may run inside a larger program (tests)
    add_ratios(rows)
    m = machine(backend, devices, torch_note, load_start)
    command = "python benchmarks/run.py " + " ".join(argv) if argv is not None else None
    result = {"machine": m, "versions": versions(torch, torch_threads),
              "settings": {**s, "command": command,
                           "total_seconds": round(time.perf_counter() - started, 1)},
              "notes": list(dict.fromkeys(notes)), "targets": targets(rows), "rows": rows}
    text = markdown(result)
    print(text)
    written = []
    for path in [outdir / "results.json"] + ([Path(args.json)] if args.json else []):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        written.append(path)
    (outdir / "results.md").write_text(text)
    written.append(outdir / "results.md")
    png = plot(result, outdir / "throughput.png")
    if png:
        written.append(png)
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
