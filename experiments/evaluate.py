"""Estimate the test log-likelihood of a trained VAE (importance sampling, Burda et al. 2016).

    python -m experiments.train --outdir runs/ref
    python -m experiments.evaluate runs/ref --num-samples 5000

Rebuilds the model from RUN_DIR/summary.json, loads RUN_DIR/params.msgpack and writes
RUN_DIR/evaluation.json (or --output): nll (-mean log p(x), nats per example, K importance
samples; in the data's own units for a run on standardized data), elbo (the mean ELBO, nats per example, the training objective's estimator), their
standard errors, and the settings; beside it, evaluation.log_px.npy holds log p(x) per example
(float32, in the split's order). Both use the run's own model: its prior, posterior, likelihood
and labels. An existing evaluation is kept unless --overwrite is given.

A VQ-VAE has no learned prior over its codes, so its NLL is refused unless --prior names a
prior fitted to its codes by experiments/vq_prior.py:

    python -m experiments.vq_prior runs/vq --outdir runs/vq/prior
    python -m experiments.evaluate runs/vq --prior runs/vq/prior

Then nll (and elbo) is the bound -log p(x) <= -log p(x | z_q(x)) - log p(c(x)): the
reconstruction NLL at the quantized grid of x plus the NLL of x's code grid under the learned
prior, nats per example. It is the negative ELBO with the VQ-VAE's one-hot posterior over
codes (entropy 0, so KL = -log p(c(x))); every importance sample has the same weight, so it is
computed once (K = 1) whatever --num-samples says, and nll = -elbo, gap 0.

Sample k of example i is drawn with fold_in(fold_in(key, i), k), so the first N examples of a
larger evaluation get exactly the values of --max-examples N with the same seed and K:

    python -m experiments.evaluate results/iwae-vae --max-examples 100 --output /tmp/check.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from experiments import cli
from jaxvae.data import preprocessing
from jaxvae.evaluation import likelihood as evaluate
from jaxvae.models import interface
from jaxvae.training import runs
from jaxvae.training import files


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.evaluate", __doc__)
    p.add_argument("run_dir", help="a directory written by experiments/train.py")
    p.add_argument("--num-samples", type=int, default=5000,
                   help="importance samples K per example (default %(default)s)")
    p.add_argument("--elbo-samples", type=int, default=100,
                   help="draws of z per example for the ELBO (default %(default)s)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="the split to evaluate (default %(default)s)")
    p.add_argument("--max-examples", type=int, default=None,
                   help="evaluate only the first N examples of the split (default: all)")
    p.add_argument("--chunk-size", type=int, default=250,
                   help="samples per example evaluated at once; memory only (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="examples evaluated at once (memory and speed, not the result; default: "
                        "4,096 decoder rows on a CPU, 65,536 on a GPU/TPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default %(default)s)")
    p.add_argument("--output", default=None,
                   help="where to write the evaluation JSON (default RUN_DIR/evaluation.json); "
                        "the per-example log p(x) goes beside it as NAME.log_px.npy")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing evaluation at the output path")
    p.add_argument("--prior", default=None,
                   help="a VQ-VAE run only: the directory of a prior over its codes written by "
                        "experiments/vq_prior.py; the NLL is then the bound recon + the codes' "
                        "NLL under that prior")
    return p


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(the evaluation JSON, the per-example log p(x) .npy beside it)."""
    out = Path(args.output) if args.output else Path(args.run_dir) / "evaluation.json"
    return out, out.with_name(out.stem + ".log_px.npy")


def _mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    stderr = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(values.mean()), stderr


def run(args: argparse.Namespace) -> dict:
    if args.max_examples is not None and args.max_examples < 1:
        raise ValueError(f"--max-examples must be >= 1, got {args.max_examples}")
    for name in ("num_samples", "elbo_samples", "chunk_size", "batch_size"):
        if getattr(args, name) is None:
            continue
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    out, out_log_px = output_paths(args)
    for path in (out, out_log_px):
        if path.exists() and not args.overwrite:
            raise ValueError(f"{path} already holds an evaluation; pass --overwrite to replace "
                             "it, or --output another file")
    if not out.parent.is_dir():
        raise ValueError(f"--output {out}: the directory {out.parent} does not exist")
    loaded = runs.load_run(args.run_dir)
    config = loaded.config
    model, params = loaded.model, loaded.params
    num_samples, elbo_samples = args.num_samples, args.elbo_samples
    if args.prior is not None:
        model, params = runs.load_code_prior(args.prior, loaded)
        num_samples = elbo_samples = 1  # a point-mass posterior: every sample weighs the same
        print(f"scoring with the code prior in {args.prior}: -log p(x) <= recon + the codes' "
              "NLL, exact with K = 1 (one-hot posterior)", file=sys.stderr)
    interface.check_defined(model, "log_weights")
    x = loaded.data.x_test if args.split == "test" else loaded.data.x_train
    y = loaded.data.y_test if args.split == "test" else loaded.data.y_train
    # The data the run was scored on: binarized / dequantized once, with the run's own key, as
    # the training loop does for its held-out splits (the whole split first, then the slice).
    x = preprocessing.fixed_transform(config.data.binarize, config.data.dequantize,
                                      preprocessing.data_key(config.run.seed), np.asarray(x),
                                      1 if args.split == "test" else 2)
    x = x[:args.max_examples]
    batch = {"x": loaded.model_input(x), "y": np.asarray(y[:args.max_examples], np.int32)}
    ll_key, elbo_key = jax.random.split(jax.random.key(args.seed))
    print(f"evaluating {len(x)} {args.split} examples of {config.data.dataset} with "
          f"K = {num_samples} importance samples", file=sys.stderr)
    start = time.perf_counter()
    log_px = np.asarray(evaluate.log_likelihood(
        model, params, batch, ll_key, num_samples, chunk_size=args.chunk_size,
        batch_size=args.batch_size)) - loaded.nll_offset  # in the data's units
    nll_seconds = time.perf_counter() - start
    elbo = np.asarray(evaluate.elbo(
        model, params, batch, elbo_key, num_samples=elbo_samples,
        chunk_size=args.chunk_size, batch_size=args.batch_size)) - loaded.nll_offset
    seconds = time.perf_counter() - start
    if not (np.isfinite(log_px).all() and np.isfinite(elbo).all()):
        raise ValueError("the estimates are not finite: the parameters hold NaN or Inf?")
    neg_ll, nll_stderr = _mean_and_stderr(-log_px)
    mean_elbo, elbo_stderr = _mean_and_stderr(elbo)
    result = {
        "nll": neg_ll,  # -mean_i log p(x_i), nats per example (an upper bound in expectation)
        "nll_stderr": nll_stderr,
        "elbo": mean_elbo,  # mean_i ELBO(x_i), nats per example (a lower bound of log p(x))
        "elbo_stderr": elbo_stderr,
        "gap": -mean_elbo - neg_ll,  # -ELBO - NLL >= 0: what the K samples gain over the ELBO
        "num_samples": num_samples,
        "elbo_samples": elbo_samples,
        "dataset": config.data.dataset,
        "split": args.split,
        "examples": int(len(x)),
        "model": config.model.name,
        "prior": config.model.prior,
        # a VQ-VAE's prior over its codes (experiments/vq_prior.py), or None
        "code_prior": None if args.prior is None else str(args.prior),
        "likelihood": config.model.likelihood,
        "binarize": config.data.binarize,
        "dequantize": config.data.dequantize,
        # the model read (x - mean) / std per feature; nll and elbo are in x's units
        "standardized": loaded.standardization is not None,
        "seed": args.seed,
        "chunk_size": args.chunk_size,
        "batch_size": args.batch_size,
        "nll_seconds": nll_seconds,  # the log-likelihood, compilation included
        "seconds": seconds,
        "device": str(jax.devices()[0].device_kind),
    }
    buffer = io.BytesIO()
    np.save(buffer, log_px.astype(np.float32))
    files.write_atomic(out_log_px, buffer.getvalue())
    files.write_atomic(out, json.dumps(result, indent=2))
    print(f"{args.split} NLL {neg_ll:.2f} +- {nll_stderr:.2f} nats (K = {num_samples}), "
          f"-ELBO {-mean_elbo:.2f} +- {elbo_stderr:.2f}, in {seconds:.1f} s")
    print(f"wrote {out}, {out_log_px}")
    return result


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
