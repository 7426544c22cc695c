"""The measured sections of the benchmark: the training step, the path users take, the NLL.

Each section builds ``harness.Runner`` objects for jaxvae (benchmarks/jax_methods.py) and for the
PyTorch reference (benchmarks/torch_methods.py), times them with ``harness.timed_block`` beside a
jitted GEMM (and, for training, the STREAM copy and triad that give each row its roofline), and
returns one row (a dict) per method and configuration; every timed block's load average goes
into ``blocks``, its overload warning into ``notes``. benchmarks/report.py turns the rows into
ratios, targets and tables.
"""

from __future__ import annotations

import math
import os
import sys
import time

TRAIN_METHODS = ("eager", "compile", "jit_step", "scan_epoch", "scan_micro", "pmap", "sharded")
# jaxvae.models.precision.PRECISIONS, named here so that bad flags fail before jax is imported
PRECISIONS = ("float32", "bfloat16")
MAX_SAMPLES_PER_CALL = 131072  # bounds the pre-placed batches (400 MB of float32 at 784)


def steps_per_call(call_gflop: float, min_steps: int, flops_per_sample: float,
                   batch: int) -> int:
    """Optimizer steps in one timed call: ``call_gflop`` of matrix products, at least
    ``min_steps``, at most ``MAX_SAMPLES_PER_CALL`` examples, at least 1.

    Examples:
      >>> steps_per_call(12.0, 8, 3.28e6, 128)  # the reference MLP: 12 GFLOP are 29 steps
      29
      >>> steps_per_call(12.0, 8, 35.47e6, 512)  # the conv VAE: 18 GFLOP a step, the floor
      8
      >>> steps_per_call(12.0, 8, 3.28e6, 32768)  # 131,072 examples at most
      4
    """
    by_work = round(call_gflop * 1e9 / (flops_per_sample * batch))
    return max(1, min(max(min_steps, by_work), MAX_SAMPLES_PER_CALL // batch))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


class Budget:
    """The wall-time budget of a run (``--max-minutes``), checked before each timed block.

    The first block always runs; a later one starts only while time is left, and each block
    skipped is named in the notes, so that a run cut short still writes what it measured.
    """

    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.perf_counter() + seconds
        self.started_any = False

    def spent(self) -> bool:
        return (self.started_any and self.deadline is not None
                and time.perf_counter() > self.deadline)

    def allows(self, name: str, notes: list) -> bool:
        if self.spent():
            notes.append(f"skipped {name}: the --max-minutes budget was spent")
            log(f"skipped {name}: the --max-minutes budget was spent")
            return False
        self.started_any = True
        return True


def _block(block, name: str, notes: list, blocks: list) -> None:
    blocks.append(block.record(name))
    if block.warning:
        notes.append(block.warning)


def train_section(s, jax, torch, torch_device, backend, devices, x_train, notes,
                  blocks, budget: Budget | None = None) -> list[dict]:
    """One timed block per (model, batch size): every method in every precision of
    ``s["precisions"]``, one GEMM per precision, the STREAM copy and triad, interleaved. A row's
    ``pct_of_peak`` and roofline use the GEMM of its own precision.
    """
    from benchmarks import harness, jax_methods, workloads
    import jaxvae

    rows = []
    precisions = s["precisions"]
    for model_name in s["models"]:
        if budget is not None and budget.spent():  # no model built for blocks that cannot run
            for batch in s["batch_sizes"][model_name]:
                budget.allows(f"train {model_name} batch {batch}", notes)
            continue
        work = workloads.WORKLOADS[model_name]
        models = {p: work.jax_model(p) for p in precisions}
        # the precision policy changes no parameter: one tree stands for every precision
        params = jaxvae.init(models[precisions[0]], jax.random.key(0))
        if torch is not None:  # the same number of parameters in both frameworks, or stop
            workloads.check_parameter_counts(work, params, work.torch_model())
        num_params = workloads.jax_param_count(params)
        per_sample = work.flops_per_sample()
        byte_counts = work.byte_counts(num_params)
        for batch in s["batch_sizes"][model_name]:
            name = f"train {model_name} batch {batch}"
            if budget is not None and not budget.allows(name, notes):
                continue
            steps = steps_per_call(s["call_gflop"], s["min_steps"], per_sample, batch)
            x = work.train_data(x_train, steps * batch)
            log(f"train {model_name} batch {batch}: {steps} steps per call, "
                f"{s['repeats']} rounds" + (f", {' and '.join(precisions)}"
                                            if precisions != ["float32"] else ""))
            # one GEMM per precision: the rate each precision's matmuls can reach
            gemms = [harness.gemm_runner(s["gemm_size"], devices[0], p) for p in precisions]
            stream = harness.stream_runners(s["stream_mb"], devices[0])
            runners = []
            for p, model in models.items():
                if torch is not None:
                    from benchmarks import torch_methods
                    runners += torch_methods.train_runners(work, x, batch, steps, torch_device,
                                                           s["methods"], p)
                jax_runners, skipped = jax_methods.train_runners(
                    work, model, x, batch, steps, devices[0], devices, s["methods"], p)
                notes.extend(skipped)
                runners += jax_runners
            block = harness.timed_block(name, gemms + stream + runners, s["repeats"], log=log)
            _block(block, name, notes, blocks)
            peaks = {p: t.stats()["gflops"] for p, t in zip(precisions, block.timings)}
            copy_gbs, triad_gbs = (t.stats()["gbytes_per_s"]
                                   for t in block.timings[len(gemms):len(gemms) + 2])
            limits = {p: harness.roofline_samples_per_s(batch, per_sample, byte_counts, peak,
                                                        triad_gbs)
                      for p, peak in peaks.items()}
            # XLA's count, once per model (a cross-check of the formula)
            xla = ({p: jax_methods.xla_flops_per_sample(work, model, x[:batch], devices[0])
                    for p, model in models.items()}
                   if batch == s["batch_sizes"][model_name][0] else {})
            for t in block.timings[len(gemms) + 2:]:
                p = t.runner.extra["precision"]
                r = row(t, "train", model_name, batch, backend, devices[0].device_kind, peaks[p])
                r.update({"flops_per_sample": per_sample,
                          "xla_flops_per_sample": (xla.get(p) if t.runner.framework == "jax"
                                                   else None),
                          "num_params": num_params, "gemm_gflops": peaks[p],
                          "stream_copy_gbs": copy_gbs, "stream_triad_gbs": triad_gbs,
                          "bytes_per_sample": byte_counts.per_sample,
                          "bytes_per_step": byte_counts.per_step,
                          "roofline_samples_per_s": limits[p],
                          "pct_of_roofline": 100.0 * r["samples_per_s"] / limits[p],
                          "load_before": block.load_before, "load_after": block.load_after})
                rows.append(r)
    return rows


def nll_section(s, jax, torch, torch_device, backend, devices, x_test, notes,
                blocks, budget: Budget | None = None) -> list[dict]:
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
        if budget is not None and not budget.allows(f"nll K={k}", notes):
            continue
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
        name = f"nll K={k}"
        block = harness.timed_block(name, [gemm] + runners, max(2, s["repeats"] - 2), log=log)
        _block(block, name, notes, blocks)
        peak = block.timings[0].stats()["gflops"]
        for t in block.timings[1:]:
            rows.append(row(t, f"nll_k{k}", "reference", examples, backend,
                            devices[0].device_kind, peak))
            rows[-1]["importance_samples_per_s"] = rows[-1]["samples_per_s"] * k
            rows[-1].update(load_before=block.load_before, load_after=block.load_after)
    return rows


def fit_section(s, jax, torch, backend, devices, data, notes, blocks,
                budget: Budget | None = None) -> list[dict]:
    """jaxvae.fit (the path of experiments/train.py) vs the pytorch/examples epoch, interleaved.

    One mnist5k epoch at batch 128 each, alternating: fit calls ``on_epoch`` after each of its
    epochs and the torch epoch runs there. The first epoch of each is the warm-up.
    """
    import jaxvae
    from jaxvae.training import fit as trainer

    if budget is not None and not budget.allows("fit", notes):
        return []
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
    from benchmarks import harness
    load_before = harness.load_average()
    result = trainer.fit(config, data, on_epoch=on_epoch)
    load_after = harness.load_average()
    warning = harness.overload_warning("fit", load_before, load_after, os.cpu_count() or 1)
    if warning:
        log(warning)
    _block(harness.Block([], load_before, load_after, warning), "fit", notes, blocks)
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
        r.update(load_before=load_before, load_after=load_after)
    return rows
