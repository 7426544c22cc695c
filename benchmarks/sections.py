"""The measured sections of the benchmark: the training step, the path users take, the NLL.

Each section builds ``harness.Runner`` objects for jaxvae (benchmarks/jax_methods.py) and for the
PyTorch reference (benchmarks/torch_methods.py), times them with ``harness.round_robin`` beside a
jitted GEMM, and returns one row (a dict) per method and configuration; benchmarks/report.py
turns the rows into ratios, targets and tables.
"""

from __future__ import annotations

import math
import sys
import time

TRAIN_METHODS = ("eager", "compile", "jit_step", "scan_epoch", "scan_micro", "pmap", "sharded")
MODELS = {  # name -> (hidden, latent_dim); 784 inputs
    "reference": ((400,), 20),
    "wide": ((1024, 1024), 64),
}
MAX_SAMPLES_PER_CALL = 131072  # bounds the pre-placed batches (400 MB of float32 at 784)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    from jaxvae.training import fit as trainer

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
    config = jaxvae.TrainConfig.from_flat(epochs=epochs, batch_size=128)
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
