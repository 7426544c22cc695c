"""Estimate the test log-likelihood of a trained VAE (importance sampling, Burda et al. 2016).

    python -m experiments.train --outdir runs/ref
    python -m experiments.evaluate runs/ref --num-samples 5000

Rebuilds the model from RUN_DIR/summary.json, loads RUN_DIR/params.msgpack and writes
RUN_DIR/evaluation.json: nll (-mean log p(x), nats per example, K importance samples), elbo
(the mean ELBO, nats per example, the training objective's estimator), their standard errors,
and the settings. Both use the run's own model: its prior, posterior, likelihood and labels.
The NLL of a VQ-VAE (no learned prior over its codes) is not defined and is refused.
"""

from __future__ import annotations

import argparse
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
    return p


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
    loaded = runs.load_run(args.run_dir)
    config = loaded.config
    interface.check_defined(loaded.model, "log_weights")
    x = loaded.data.x_test if args.split == "test" else loaded.data.x_train
    y = loaded.data.y_test if args.split == "test" else loaded.data.y_train
    # The data the run was scored on: binarized / dequantized once, with the run's own key, as
    # the training loop does for its held-out splits (the whole split first, then the slice).
    x = preprocessing.fixed_transform(config.data.binarize, config.data.dequantize,
                                      preprocessing.data_key(config.run.seed), np.asarray(x),
                                      1 if args.split == "test" else 2)
    batch = {"x": x[:args.max_examples], "y": np.asarray(y[:args.max_examples], np.int32)}
    x = batch["x"]
    ll_key, elbo_key = jax.random.split(jax.random.key(args.seed))
    print(f"evaluating {len(x)} {args.split} examples of {config.data.dataset} with "
          f"K = {args.num_samples} importance samples", file=sys.stderr)
    start = time.perf_counter()
    log_px = np.asarray(evaluate.log_likelihood(
        loaded.model, loaded.params, batch, ll_key, args.num_samples, chunk_size=args.chunk_size,
        batch_size=args.batch_size))
    nll_seconds = time.perf_counter() - start
    elbo = np.asarray(evaluate.elbo(
        loaded.model, loaded.params, batch, elbo_key, num_samples=args.elbo_samples,
        chunk_size=args.chunk_size, batch_size=args.batch_size))
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
        "num_samples": args.num_samples,
        "elbo_samples": args.elbo_samples,
        "dataset": config.data.dataset,
        "split": args.split,
        "examples": int(len(x)),
        "model": config.model.name,
        "prior": config.model.prior,
        "likelihood": config.model.likelihood,
        "binarize": config.data.binarize,
        "dequantize": config.data.dequantize,
        "seed": args.seed,
        "chunk_size": args.chunk_size,
        "batch_size": args.batch_size,
        "nll_seconds": nll_seconds,  # the log-likelihood, compilation included
        "seconds": seconds,
        "device": str(jax.devices()[0].device_kind),
    }
    out = Path(args.run_dir) / "evaluation.json"
    files.write_atomic(out, json.dumps(result, indent=2))
    print(f"{args.split} NLL {neg_ll:.2f} +- {nll_stderr:.2f} nats (K = {args.num_samples}), "
          f"-ELBO {-mean_elbo:.2f} +- {elbo_stderr:.2f}, in {seconds:.1f} s")
    print(f"wrote {out}")
    return result


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
