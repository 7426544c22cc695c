"""Helpers shared by the sequence experiments (words.py, molecules.py, music.py): training with
progress, outputs and decoding."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import flax
import jax
import numpy as np
from flax import serialization
from tqdm import tqdm

import jaxvae
from jaxvae.models import precision
from jaxvae.models import sequence
from jaxvae.data.vocab import Vocabulary
from jaxvae.training.sequences import (SequenceConfig, SequenceFit, fit_sequences,
                                       validate_sequence_config)
from experiments.train import prepare_outdir  # noqa: F401  (one copy for every script)
from jaxvae.training import files
from jaxvae.training import runs

# What the sequence scripts write: --overwrite deletes a directory only if it holds one of them.
OUTPUTS = ("metrics.jsonl", "results.json", "params.msgpack", "vocab.json", "samples.txt",
           "samples_T1.0.txt")


def add_outdir_flags(p, default: str) -> None:
    """--outdir (new or empty) and --overwrite."""
    p.add_argument("--outdir", default=default,
                   help="output directory, new or empty (%(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run in --outdir first")


def check_outdir(args) -> None:
    """Refuses a non-empty --outdir unless --overwrite (then one these scripts wrote); reads
    only, so call it before anything else."""
    runs.check_new_run(args.outdir, overwrite=args.overwrite, markers=OUTPUTS)


def add_model_flags(p, *, hidden_dim: int, latent_dim: int, warmup_steps: int,
                    word_dropout: float) -> None:
    """The model and optimizer flags of a sequence script, with that script's defaults."""
    d = SequenceConfig()
    p.add_argument("--batch-size", type=int, default=128, help="batch size (%(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (%(default)s)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default=d.lr_schedule,
                   help="the learning rate over the run: constant, or cosine from --lr to 0 over "
                        "--epochs (a --max-minutes stop ends it early) (%(default)s)")
    p.add_argument("--length-buckets", type=int, default=d.length_buckets,
                   help="train in K buckets of similar string length, each batch cut to its "
                        "bucket's longest row: the same loss with less padding to compute; "
                        "1 = every batch as long as the longest string (%(default)s)")
    p.add_argument("--embed-dim", type=int, default=32, help="embedding size (%(default)s)")
    p.add_argument("--hidden-dim", type=int, default=hidden_dim, help="GRU size (%(default)s)")
    p.add_argument("--latent-dim", type=int, default=latent_dim,
                   help="latent size Z (%(default)s)")
    p.add_argument("--beta", type=float, default=d.beta,
                   help="KL weight after warm-up (%(default)s)")
    p.add_argument("--warmup-steps", type=int, default=warmup_steps,
                   help="linear KL warm-up steps (%(default)s)")
    p.add_argument("--word-dropout", type=float, default=word_dropout,
                   help="decoder input dropout rate (%(default)s)")
    p.add_argument("--precision", choices=precision.PRECISIONS, default=d.precision,
                   help="float32, or bfloat16 products with float32 accumulation; parameters "
                        "and losses stay float32 (%(default)s)")
    p.add_argument("--free-bits", type=float, default=0.0,
                   help="free nats per latent dimension in the KL term; 0 = off (%(default)s)")


def sequence_config(args, max_seconds: float) -> SequenceConfig:
    """The SequenceConfig of the flags of ``add_model_flags`` (and --epochs, --seed),
    validated: a bad value stops the script before any work or file."""
    config = SequenceConfig(embed_dim=args.embed_dim, hidden_dim=args.hidden_dim,
                            latent_dim=args.latent_dim, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr,
                            lr_schedule=args.lr_schedule, length_buckets=args.length_buckets,
                            beta=args.beta,
                            warmup_steps=args.warmup_steps, word_dropout=args.word_dropout,
                            free_bits=args.free_bits,
                            seed=args.seed, max_seconds=max_seconds, precision=args.precision)
    validate_sequence_config(config)
    return config


def progress(total: int, quiet: bool, metrics_path: Path):
    """An on_epoch callback: appends the record to metrics.jsonl and advances a bar."""
    metrics_path.write_text("")
    bar = tqdm(total=total, desc="epochs", unit="epoch", disable=quiet, file=sys.stderr)

    def on_epoch(record: dict) -> None:
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        bar.set_postfix(train=f"{record['train_nelbo']:.2f}", test=f"{record['test_nelbo']:.2f}",
                        acc=f"{record['test_token_accuracy']:.3f}")
        bar.update(1)

    return on_epoch, bar


def train(config: SequenceConfig, vocab, train_strings: list[str], test_strings: list[str],
          outdir: Path, quiet: bool, length: int | None = None) -> tuple[SequenceFit, float]:
    """``fit_sequences`` with OUTDIR/metrics.jsonl and a progress bar; returns the fit and its
    wall-clock seconds."""
    on_epoch, bar = progress(config.epochs, quiet, outdir / "metrics.jsonl")
    start = time.perf_counter()
    try:
        fit = fit_sequences(config, vocab, train_strings, test_strings, on_epoch, length=length)
    finally:
        bar.close()
    return fit, time.perf_counter() - start


def decode_in_batches(fn, n: int, batch: int) -> list[str]:
    """Concatenates ``fn(start, size)`` (lists of strings) over batches covering n items."""
    out: list[str] = []
    for start in range(0, n, batch):
        out.extend(fn(start, min(batch, n - start)))
    return out


def reconstructions(fit: SequenceFit, strings: list[str], batch: int = 500) -> list[str]:
    """Greedy decodings of the posterior means of ``strings``."""
    vocab, length = fit.vocab, fit.length

    def one(start, size):
        tokens = vocab.encode_batch(strings[start:start + size], length)
        return vocab.decode_batch(sequence.reconstruct(fit.model, fit.state.params, tokens,
                                                       length))

    return decode_in_batches(one, len(strings), batch)


def prior_samples(fit: SequenceFit, key: jax.Array, n: int, temperature: float = 1.0,
                  greedy: bool = False, batch: int = 1000, constraint=None) -> list[str]:
    """n strings from the prior of a fit (batch b uses fold_in(key, b))."""
    return sample_strings(fit.model, fit.state.params, fit.vocab, fit.length, key, n,
                          temperature, greedy, batch, constraint)


def sample_strings(model: sequence.SequenceVAE, params, vocab, length: int, key: jax.Array,
                   n: int, temperature: float = 1.0, greedy: bool = False, batch: int = 1000,
                   constraint=None) -> list[str]:
    """n strings of up to ``length`` tokens from the prior (batch b uses fold_in(key, b)), with
    an optional decoding constraint (``jaxvae.models.sequence.generate``)."""

    def one(start, size):
        tokens = sequence.sample(model, params, jax.random.fold_in(key, start), size, length,
                                 temperature, greedy, constraint)
        return vocab.decode_batch(tokens)

    return decode_in_batches(one, n, batch)


def load_model(run_dir: Path):
    """``(model, params, vocab, row_length, results)`` of a run directory written by a sequence
    script (results.json, vocab.json, params.msgpack); ValueError naming what is missing."""
    run_dir = Path(run_dir)
    paths = [run_dir / name for name in ("results.json", "vocab.json", "params.msgpack")]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{run_dir} is not a finished sequence run: {', '.join(missing)} "
                         "missing (a run writes them when it ends)")
    results = json.loads(paths[0].read_text())
    config = results.get("config", {})
    vocab = Vocabulary.from_json(paths[1].read_text())
    try:
        model = sequence.sequence_vae(len(vocab), config["embed_dim"], config["hidden_dim"],
                                      config["latent_dim"], config.get("precision", "float32"))
        length = int(results["row_length"])
    except KeyError as e:
        raise ValueError(f"{paths[0]} has no {e.args[0]!r}: not written by a sequence "
                         "script") from None
    shapes = jax.eval_shape(lambda: sequence.init(model, jax.random.key(0)))
    try:
        params = runs.read_params(paths[2], model, shapes, "the model of its results.json")
    except ValueError as e:
        raise ValueError(f"{paths[2]} does not hold this model's parameters ({e}); it is "
                         "damaged or from another run") from None
    return model, params, vocab, length, results


def interpolation(fit: SequenceFit, a: str, b: str, steps: int) -> list[str]:
    tokens = fit.vocab.encode_batch([a, b], fit.length)
    path = sequence.interpolate(fit.model, fit.state.params, tokens[0], tokens[1], steps,
                                fit.length)
    return fit.vocab.decode_batch(path)


def write_model(outdir: Path, fit: SequenceFit) -> list[Path]:
    files.write_atomic(outdir / "params.msgpack", serialization.to_bytes(jax.device_get(
        fit.state.params)))
    files.write_atomic(outdir / "vocab.json", fit.vocab.to_json())
    return [outdir / "params.msgpack", outdir / "vocab.json"]


def environment() -> dict:
    return {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {"jaxvae": jaxvae.__version__, "jax": jax.__version__,
                         "flax": flax.__version__, "numpy": np.__version__}}
