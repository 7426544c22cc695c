"""The benchmark report: the machine and versions, the load average of every timed block, the
ratios to torch, the targets, the markdown tables and the throughput plot, written as
results.json, results.md and throughput.png.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from benchmarks.harness import load_average


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def load_summary(blocks: list[dict]) -> dict:
    """The load average before and after every timed block, and the blocks run under load."""
    return {"cores": os.cpu_count(), "warn_above_per_core": 1.0, "blocks": blocks,
            "overloaded_blocks": [b["block"] for b in blocks if b["overloaded"]]}


def add_ratios(rows: list[dict]) -> None:
    """x torch eager / x torch.compile (or the torch loop), from the same rounds and precision;
    and on bfloat16 training rows ``vs_float32``, the speedup over the same method in float32.
    """
    base, f32 = {}, {}
    for r in rows:
        precision = r.get("precision")
        if r["framework"] == "torch":
            base[(r["benchmark"], r["model"], r["batch_size"], precision, r["method"])] = \
                r["samples_per_s"]
        if precision == "float32":
            f32[(r["benchmark"], r["model"], r["batch_size"], r["framework"], r["method"])] = \
                r["samples_per_s"]
    for r in rows:
        group = (r["benchmark"], r["model"], r["batch_size"], r.get("precision"))
        for name, method in (("vs_torch_eager", "eager"), ("vs_torch_compile", "compile"),
                             ("vs_torch_reference_loop", "reference_loop"),
                             ("vs_torch_per_example_loop", "per_example_loop"),
                             ("vs_torch_batched", "batched")):
            b = base.get(group + (method,))
            if b:
                r[name] = r["samples_per_s"] / b
        same = f32.get((r["benchmark"], r["model"], r["batch_size"], r["framework"],
                        r["method"]))
        if r.get("precision") == "bfloat16" and same:
            r["vs_float32"] = r["samples_per_s"] / same


def targets(rows: list[dict]) -> list[dict]:
    """The speed targets, each checked against this run's medians of the float32 rows."""
    out = []
    rows = [r for r in rows if r.get("precision", "float32") == "float32"]

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
        elif model == "sequence":
            add(f"{tag} / torch eager", b.get("vs_torch_eager"), 1.5)
            add(f"{tag} / torch.compile", b.get("vs_torch_compile"), 1.0)
        else:
            add(f"{tag} / torch eager", b.get("vs_torch_eager"), 1.0)
            add(f"{tag} / torch.compile", b.get("vs_torch_compile"), 1.0)
        if batch >= 512 and b.get("pct_of_peak") is not None and b["device"] == "cpu" \
                and model in ("reference", "wide"):
            add(f"{tag} % of GEMM peak", b["pct_of_peak"], 85.0)
        if batch >= 512 and b.get("pct_of_roofline") is not None:
            add(f"{tag} % of roofline", b["pct_of_roofline"], 90.0)
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


def _fmt(v, spec=",.0f"):
    return "" if v is None else format(v, spec)


def _load(r: dict) -> str:
    before, after = r.get("load_before"), r.get("load_after")
    return f"{before[0]:.2f} -> {after[0]:.2f}" if before and after else ""


def _speedup_lines(train: list[dict]) -> list[str]:
    """One line per model and batch run in both precisions: bfloat16 / float32 per method."""
    lines = []
    for model, batch in dict.fromkeys((r["model"], r["batch_size"]) for r in train):
        pairs = [f"{r['framework']} {r['method']} {r['vs_float32']:.2f}x" for r in train
                 if (r["model"], r["batch_size"]) == (model, batch) and "vs_float32" in r]
        if pairs:
            lines.append(f"bfloat16 / float32 samples/s, {model} batch {batch} (same rounds): "
                         + ", ".join(pairs) + ".")
    return lines + [""] if lines else []


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
    load = result.get("load") or {}
    if load.get("overloaded_blocks"):
        lines += [f"**WARNING: the load average was above 1 per core ({load['cores']} cores) "
                  f"around {len(load['overloaded_blocks'])} timed block(s) "
                  f"({', '.join(load['overloaded_blocks'])}): other processes shared the CPU, "
                  "so those timings and ratios are unreliable. Rerun on a quiet machine.**", ""]
    train = [r for r in result["rows"] if r["benchmark"] == "train"]
    if train:
        # float32 alone (the default): the float32 table, without a precision column
        by_precision = {r.get("precision", "float32") for r in train} != {"float32"}
        pcol, pcell = ("precision | ", "---|") if by_precision else ("", "")

        def prec(r):
            return f"{r['precision']} | " if by_precision else ""

        same = " and of the same precision" if by_precision else ""
        bf16_gemm = (" (bfloat16 rows: a bfloat16 GEMM with float32 accumulation)"
                     if by_precision else "")
        lines += ["Training step (forward, loss, backward, Adam): samples/s median [min-max] of "
                  "interleaved rounds; x = ratio to torch eager / torch.compile in the same "
                  f"rounds{same}; % peak = matmul GFLOP/s over the jitted GEMM's in the same "
                  f"rounds{bf16_gemm}; % roof = samples/s over the roofline limit (below).",
                  "",
                  f"| model | batch | {pcol}method | samples/s | min-max | x eager | x compile | "
                  "GFLOP/s | % peak | % roof | step ms | compile s |",
                  f"|---|---:|{pcell}---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in train:
            lines.append(
                f"| {r['model']} | {r['batch_size']} | {prec(r)}"
                f"{r['framework']} {r['method']} | "
                f"{_fmt(r['samples_per_s'])} | {_fmt(r['samples_per_s_min'])}-"
                f"{_fmt(r['samples_per_s_max'])} | {_fmt(r.get('vs_torch_eager'), '.2f')} | "
                f"{_fmt(r.get('vs_torch_compile'), '.2f')} | {_fmt(r['gflops'], '.1f')} | "
                f"{_fmt(r['pct_of_peak'], '.0f')} | {_fmt(r.get('pct_of_roofline'), '.0f')} | "
                f"{_fmt(r['step_ms'], '.2f')} | {_fmt(r['compile_s'], '.2f')} |")
        lines.append("")
        lines += _speedup_lines(train)
        lines += ["Roofline of each configuration, measured in its rounds: limit = batch / "
                  "(batch x FLOPs at the GEMM rate + (optimizer bytes + batch x activation "
                  "bytes) at the triad bandwidth); load average (1 min) before -> after.", "",
                  f"| model | params | batch | {pcol}MFLOP/sample | KB/sample | MB/step | "
                  "GEMM GFLOP/s | copy GB/s | triad GB/s | limit samples/s | load |",
                  f"|---|---:|---:|{pcell}---:|---:|---:|---:|---:|---:|---:|---|"]
        seen = set()
        for r in train:
            if (r["model"], r["batch_size"], r.get("precision")) in seen:
                continue
            seen.add((r["model"], r["batch_size"], r.get("precision")))
            lines.append(
                f"| {r['model']} | {r['num_params']:,} | {r['batch_size']} | {prec(r)}"
                f"{r['flops_per_sample'] / 1e6:.2f} | {r['bytes_per_sample'] / 1e3:.1f} | "
                f"{r['bytes_per_step'] / 1e6:.1f} | {r['gemm_gflops']:.1f} | "
                f"{r['stream_copy_gbs']:.1f} | {r['stream_triad_gbs']:.1f} | "
                f"{_fmt(r['roofline_samples_per_s'])} | {_load(r)} |")
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
        for fw, method, prec in sorted({(r["framework"], r["method"], r.get("precision", ""))
                                        for r in rows}):
            pts = sorted((r["batch_size"], r["samples_per_s"], r["samples_per_s_min"],
                          r["samples_per_s_max"]) for r in rows
                         if (r["framework"], r["method"], r.get("precision", ""))
                         == (fw, method, prec))
            b, med, lo, hi = zip(*pts)
            ax.errorbar(b, med, yerr=[[m - l for m, l in zip(med, lo)],
                                      [h - m for m, h in zip(med, hi)]],
                        marker="o", capsize=3, linestyle="--" if fw == "torch" else "-",
                        label=f"{fw} {method}" + (f" {prec}" if prec == "bfloat16" else ""))
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


def write(result: dict, outdir: Path, json_path: str | None = None) -> list[Path]:
    """Writes results.json (and a copy at ``json_path``), results.md and throughput.png."""
    written = []
    for path in [outdir / "results.json"] + ([Path(json_path)] if json_path else []):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        written.append(path)
    (outdir / "results.md").write_text(markdown(result))
    written.append(outdir / "results.md")
    png = plot(result, outdir / "throughput.png")
    if png:
        written.append(png)
    return written
