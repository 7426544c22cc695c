"""A character-level sequence VAE over English words (the `english-words` wheel's web2 list).

    python -m experiments.words                  # 7 min of training (--max-seconds 420)
    python -m experiments.words --train-size 50000 --epochs 30 --outdir runs/words_big

Writes into --outdir: metrics.jsonl (one line per epoch), results.json (config, sizes, test
reconstruction accuracy, prior samples with the fraction that are real / novel words, an
interpolation between two words), params.msgpack, vocab.json.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from experiments import cli, seqlib
from jaxvae.training import files
from jaxvae.data.vocab import Vocabulary


def load_words(min_len: int, max_len: int) -> list[str]:
    """The lower-case alphabetic words of web2 with min_len..max_len letters, sorted."""
    try:
        from english_words import get_english_words_set
    except ImportError as e:
        raise ValueError("the words experiment needs the english-words package: "
                         "pip install 'jaxvae[molecules]' (or pip install english-words)") from e
    words = get_english_words_set(["web2"], lower=True, alpha=True)
    return sorted(w for w in words if min_len <= len(w) <= max_len and w.isascii())


def split_words(words: list[str], train_size: int, test_size: int, seed: int
                ) -> tuple[list[str], list[str]]:
    if train_size + test_size > len(words):
        raise ValueError(f"--train-size + --test-size = {train_size + test_size} exceeds the "
                         f"{len(words)} words available")
    idx = np.random.default_rng(seed).permutation(len(words))
    return ([words[i] for i in idx[:train_size]],
            [words[i] for i in idx[train_size:train_size + test_size]])


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.words", __doc__)
    p.add_argument("--train-size", type=int, default=40000, help="training words (%(default)s)")
    p.add_argument("--test-size", type=int, default=2000, help="test words (%(default)s)")
    p.add_argument("--min-len", type=int, default=3, help="shortest word (%(default)s)")
    p.add_argument("--max-len", type=int, default=12, help="longest word (%(default)s)")
    p.add_argument("--epochs", type=int, default=12, help="epochs (%(default)s)")
    seqlib.add_model_flags(p, hidden_dim=128, latent_dim=16, warmup_steps=1500,
                           word_dropout=0.25)
    p.add_argument("--max-seconds", type=float, default=420.0,
                   help="stop after the epoch that passes this training time in seconds; "
                        "0 = none (%(default)s)")
    p.add_argument("--num-samples", type=int, default=1000, help="prior samples (%(default)s)")
    p.add_argument("--interpolate", nargs=2, default=["happy", "terrible"], metavar=("FROM", "TO"),
                   help="two words to interpolate between (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    seqlib.add_outdir_flags(p, "runs/words")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> dict:
    config = seqlib.sequence_config(args, max_seconds=args.max_seconds)
    seqlib.check_outdir(args)
    all_words = load_words(args.min_len, args.max_len)
    train_words, test_words = split_words(all_words, args.train_size, args.test_size, args.seed)
    vocab = Vocabulary.from_corpus(train_words + test_words + list(args.interpolate), "char")
    outdir = seqlib.prepare_outdir(args.outdir, overwrite=args.overwrite)
    fit, wall = seqlib.train(config, vocab, train_words, test_words, outdir, args.quiet,
                             length=args.max_len + 1)

    key = jax.random.key(args.seed + 1)
    recon = seqlib.reconstructions(fit, test_words)
    exact = float(np.mean([a == b for a, b in zip(test_words, recon)]))
    known, train_set = set(all_words), set(train_words)
    samples = seqlib.prior_samples(fit, key, args.num_samples, temperature=1.0)
    greedy = seqlib.prior_samples(fit, jax.random.fold_in(key, 1), 20, greedy=True)
    results = {
        "config": config.to_dict(), "train_words": len(train_words),
        "test_words": len(test_words), "epochs_run": len(fit.history),
        "steps": fit.history[-1]["step"], "train_seconds": sum(r["seconds"] for r in fit.history),
        "compile_seconds": fit.compile_seconds, "wall_seconds": wall,
        "final": fit.history[-1],
        "test_exact_reconstruction": exact,
        "samples_real_words": float(np.mean([s in known for s in samples])),
        "samples_novel_real_words": float(np.mean([s in known and s not in train_set
                                                   for s in samples])),
        "samples_unique": len(set(samples)) / len(samples),
        "reconstructions": [{"input": a, "output": b} for a, b in
                            zip(test_words[:12], recon[:12])],
        "samples_t1": samples[:24], "samples_greedy": greedy,
        "interpolation": {"from": args.interpolate[0], "to": args.interpolate[1],
                          "path": seqlib.interpolation(fit, *args.interpolate, steps=8)},
        **seqlib.environment()}
    files.write_atomic(outdir / "results.json", json.dumps(results, indent=2))
    written = [outdir / "metrics.jsonl", outdir / "results.json"] + seqlib.write_model(outdir, fit)
    final = fit.history[-1]
    print(f"test -ELBO {final['test_nelbo']:.3f} nats/word (KL {final['test_kl']:.3f}), "
          f"exact reconstructions {exact:.3f}, real words among samples "
          f"{results['samples_real_words']:.3f}")
    print("interpolation:", " -> ".join(results["interpolation"]["path"]))
    print(f"wrote {', '.join(str(p) for p in written)}")
    return results


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
