"""Fit an autoregressive prior to a trained VQ-VAE's codes; sample from it; its bits per code.

    python -m experiments.train --model vqvae --vq-ema --outdir runs/vq
    python -m experiments.vq_prior runs/vq --outdir runs/vq/prior
    python -m experiments.evaluate runs/vq --prior runs/vq/prior    # -log p(x) with the prior

Reads RUN_DIR (summary.json and params.msgpack of a --model vqvae run of experiments/train.py),
encodes its training and test splits into code grids with the VQ-VAE's encoder (the splits
as experiments/evaluate.py scores them), and trains a causal transformer prior over the grids
(jaxvae.models.code_prior) through the training loop, evaluating the test grids after each
epoch. Then it draws code grids from the prior (ancestral sampling, key from --seed) and
decodes them beside decoded uniformly random codes.

Reported (results.json, and one line on stdout): the prior's test NLL in nats per grid, nats
and bits per code (bits = nats / ln 2), against the uniform prior's log2 K bits per code and
an independent-codes baseline (each code drawn from the training codes' frequencies, add-one
smoothed); and the test bound on -log p(x) in nats per example, the reconstruction NLL plus
the codes' NLL under the prior, beside the same bound under the uniform prior (recon + L log K).

Writes into --outdir (new or empty; it may lie inside RUN_DIR, never be it): prior.json (the
prior's sizes and the SHA-256 of the VQ-VAE parameters it belongs to), prior_params.msgpack,
metrics.jsonl (one line per epoch), results.json, samples.png (uniform codes | learned prior,
side by side) and samples.npz (both sets of images, the prior's codes). --overwrite replaces
an earlier prior in --outdir.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tqdm import tqdm

from experiments import cli
from experiments import train as train_script
from jaxvae import config as config_lib
from jaxvae.data import preprocessing
from jaxvae.evaluation import likelihood
from jaxvae.evaluation import plots
from jaxvae.models import code_prior
from jaxvae.models import mlp as models
from jaxvae.models import vq
from jaxvae.objectives import bounds
from jaxvae.objectives import losses
from jaxvae.training import files
from jaxvae.training import fit as trainer
from jaxvae.training import hooks as hooks_lib
from jaxvae.training import loop
from jaxvae.training import runs
from jaxvae.training import step as train

PRIOR_MARKERS = ("prior.json", "prior_params.msgpack", "metrics.jsonl", "results.json")


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """The prior's sizes, its training and the samples drawn from it."""

    embed_dim: int = 64  # E: width of the code and position embeddings and of each block
    num_layers: int = 2  # transformer blocks
    num_heads: int = 4  # attention heads per block (must divide embed_dim)
    mlp_dim: int = 256  # hidden width of each block's MLP
    dropout: float = 0.1  # dropout rate in training (after the embeddings, attention and MLP)
    epochs: int = 30  # passes over the training grids
    batch_size: int = 128  # code grids per gradient step
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0  # seeds the init, shuffling, dropout (jax.random.key(seed)) and the samples
    #   (jax.random.key(seed + 1))
    max_minutes: float = 0.0  # stop after the epoch that passes this training time; 0 = none
    num_samples: int = 64  # images in each panel of samples.png

    def sizes(self) -> dict:
        """The keyword arguments of ``code_prior.code_prior`` (the model, not its training)."""
        return {name: getattr(self, name)
                for name in ("embed_dim", "num_layers", "num_heads", "mlp_dim", "dropout")}

    def validate(self) -> None:
        """Raises ValueError naming the first training field that cannot work."""
        for name in ("epochs", "batch_size", "num_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an int >= 1, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a finite number > 0, got {self.lr}")
        if not (self.max_minutes >= 0 and math.isfinite(self.max_minutes)):
            raise ValueError(f"--max-minutes must be a finite number >= 0, got "
                             f"{self.max_minutes}")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.vq_prior", __doc__)
    p.add_argument("run_dir", help="a --model vqvae run directory written by experiments/train.py")
    p.add_argument("--outdir", default="runs/vq_prior",
                   help="output dir, new or empty; may lie inside RUN_DIR (%(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier prior in --outdir first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    cli.add_config_flags(p, PriorConfig)
    return p


def scored_splits(loaded: runs.Run) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) examples as experiments/evaluate.py scores them (binarized or dequantized
    once with the run's key where the run does that), in the model's units."""
    data_config = loaded.config.data
    key = preprocessing.data_key(loaded.config.run.seed)
    return tuple(loaded.model_input(preprocessing.fixed_transform(
        data_config.binarize, data_config.dequantize, key, np.asarray(x), part))
        for x, part in ((loaded.data.x_train, 2), (loaded.data.x_test, 1)))


def split_codes(model: vq.VQVAE, params, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The VQ-VAE's code grids of the examples x: ``(N, h, w)`` int32, in batches."""
    encode = jax.jit(lambda p, x: code_prior.encode_codes(model, p, x))
    return np.concatenate([np.asarray(encode(params, jnp.asarray(x[i:i + batch_size])))
                           for i in range(0, len(x), batch_size)])


def independent_bits_per_code(train_codes: np.ndarray, test_codes: np.ndarray,
                              num_codes: int) -> float:
    """Bits per test code when every code is drawn independently from the training codes'
    frequencies, add-one smoothed: -mean log2 p(c), p = (count + 1) / (N + K)."""
    counts = np.bincount(train_codes.reshape(-1), minlength=num_codes) + 1.0
    log2_p = np.log2(counts / counts.sum())
    return float(-log2_p[test_codes.reshape(-1)].mean())


def run(args: argparse.Namespace) -> dict:
    config = cli.config_from_flags(args, PriorConfig)
    config.validate()
    cli.check_outside(args.run_dir, "RUN_DIR", args.outdir)
    runs.check_new_run(args.outdir, overwrite=args.overwrite, markers=PRIOR_MARKERS,
                       what="a prior")
    loaded = runs.load_run(args.run_dir)
    model = loaded.model
    if not isinstance(model, vq.VQVAE):
        raise ValueError(f"{args.run_dir} holds a --model {loaded.config.model.name} run: a code "
                         "prior needs a --model vqvae run")
    prior = code_prior.for_vqvae(model, **config.sizes())
    data_config = loaded.config.data
    if config.batch_size > len(loaded.data.x_train):
        raise ValueError(f"--batch-size {config.batch_size} is larger than the training set "
                         f"({len(loaded.data.x_train)} examples)")
    outdir = train_script.prepare_outdir(args.outdir, overwrite=args.overwrite)

    x_train, x_test = scored_splits(loaded)
    train_codes = split_codes(model, loaded.params, x_train)
    test_codes = split_codes(model, loaded.params, x_test)
    grid = tuple(prior.grid_shape)
    print(f"encoded {len(train_codes)} training and {len(test_codes)} test digits into "
          f"{grid[0]}x{grid[1]} grids of {model.num_codes} codes", file=sys.stderr)

    keys = trainer.run_keys(config.seed)
    tx = train.make_optimizer(config.lr)
    state = train.create_train_state(code_prior.init(prior, keys.init), tx)
    metrics_path = outdir / "metrics.jsonl"
    bar = tqdm(total=config.epochs, desc="prior epochs", disable=args.quiet, file=sys.stderr)

    def on_epoch(record: dict) -> None:
        bar.set_postfix(test_bits=f"{record['test_bits_per_code']:.3f}")
        bar.update(1)

    hooks = [hooks_lib.MetricsFile(metrics_path), hooks_lib.EveryEpoch(on_epoch),
             hooks_lib.TimeLimit(60 * config.max_minutes if config.max_minutes else None)]
    sections = config_lib.LoopConfig(
        config_lib.RunConfig(epochs=config.epochs, seed=config.seed),
        config_lib.OptimizerConfig(batch_size=config.batch_size, lr=config.lr))
    try:
        result = loop.train_run(
            sections, loop.TrainingData({"x": train_codes}),
            losses.make_code_prior_loss(prior, train=True), tx, state, keys,
            evaluation=loop.Evaluation(
                test={"x": test_codes}, loss_fn=losses.make_code_prior_loss(prior, train=False)),
            hooks=hooks, model=prior)
    finally:
        bar.close()
    prior_params = jax.device_get(result.state.params)
    history, final = result.history, result.history[-1]

    # The test bound on -log p(x): recon + the codes' NLL (exact: one-hot posterior).
    both = code_prior.with_prior(model, prior)
    params = code_prior.join_params(loaded.params, prior_params)
    neg_elbo = -np.asarray(likelihood.elbo(both, params, {"x": x_test}, jax.random.key(0),
                                           num_samples=1)) + loaded.nll_offset
    uniform_kl = prior.num_positions * math.log(model.num_codes)
    uniform_neg_elbo = -np.asarray(likelihood.elbo(model, loaded.params, {"x": x_test},
                                                   jax.random.key(0), num_samples=1)) \
        + loaded.nll_offset

    # Samples: uniform codes and the learned prior, decoded.
    uniform_key, prior_key = jax.random.split(jax.random.key(config.seed + 1))
    n = config.num_samples
    codes = code_prior.sample_codes(prior, prior_params, prior_key, n)
    as_data = lambda out: loaded.data_output(np.asarray(bounds.likelihood_mean(model.likelihood,
                                                                              out)))
    uniform_images = as_data(models.sample(model, loaded.params, uniform_key, n))
    prior_images = as_data(models.sample(both, params, prior_key, n))
    ncols = max(1, math.isqrt(n))
    png = plots.save_image_panels(
        outdir / "samples.png",
        [(uniform_images, f"uniformly random codes\n({math.log2(model.num_codes):.2f} bits "
                          "per code)"),
         (prior_images, f"codes from the learned prior\n({final['test_bits_per_code']:.2f} "
                        "bits per code on the test digits)")], ncols,
        f"VQ-VAE samples, {grid[0]}x{grid[1]} grids of {model.num_codes} codes")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, uniform=uniform_images, prior=prior_images,
                        prior_codes=np.asarray(codes))
    files.write_atomic(outdir / "samples.npz", buffer.getvalue())

    test_nll = final["test_nll"]
    results = {
        "run_dir": str(args.run_dir),
        "dataset": data_config.dataset,
        "num_codes": model.num_codes, "grid_shape": list(grid),
        "train_grids": int(len(train_codes)), "test_grids": int(len(test_codes)),
        "test_nll_nats_per_grid": test_nll,
        "test_nats_per_code": test_nll / prior.num_positions,
        "test_bits_per_code": final["test_bits_per_code"],
        "uniform_bits_per_code": math.log2(model.num_codes),
        "independent_bits_per_code": independent_bits_per_code(train_codes, test_codes,
                                                               model.num_codes),
        "train_bits_per_code_with_dropout": final["train_bits_per_code"],
        # -log p(x) <= recon + codes' NLL, nats per example (mean over the test split)
        "test_bound_learned_prior": float(neg_elbo.mean()),
        "test_bound_uniform_prior": float(uniform_neg_elbo.mean()),
        "test_recon": float(uniform_neg_elbo.mean() - uniform_kl),
        "epochs_run": len(history),
        "best_epoch_test_bits_not_used_for_selection": min(r["test_bits_per_code"]
                                                           for r in history),
        "train_seconds": sum(r["seconds"] for r in history),
        "compile_seconds": result.compile_seconds,
        "prior_parameters": int(sum(np.size(a) for a in jax.tree.leaves(prior_params))),
        "settings": dataclasses.asdict(config),
        "device": str(jax.devices()[0].device_kind),
    }
    files.write_atomic(outdir / "prior.json", json.dumps({
        "prior": config.sizes(), "num_codes": model.num_codes, "grid_shape": list(grid),
        "vqvae_run": str(args.run_dir),
        "vqvae_params_sha256": runs.file_digest(Path(args.run_dir) / "params.msgpack")},
        indent=2))
    files.write_atomic(outdir / "prior_params.msgpack", serialization.to_bytes(prior_params))
    files.write_atomic(outdir / "results.json", json.dumps(results, indent=2))
    print(f"prior: test {results['test_bits_per_code']:.3f} bits per code "
          f"({results['test_nats_per_code']:.3f} nats; {test_nll:.2f} nats per grid), uniform "
          f"{results['uniform_bits_per_code']:.3f}, independent codes "
          f"{results['independent_bits_per_code']:.3f}; test -log p(x) <= "
          f"{results['test_bound_learned_prior']:.2f} nats (uniform prior: "
          f"{results['test_bound_uniform_prior']:.2f})")
    print(f"wrote {metrics_path}, {outdir / 'results.json'}, {outdir / 'prior.json'}, "
          f"{outdir / 'prior_params.msgpack'}, {png or '(not images: no PNG)'}, "
          f"{outdir / 'samples.npz'}")
    return results


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv, errors=(ValueError, TypeError, OSError))


if __name__ == "__main__":
    sys.exit(main())
