"""A SMILES or SELFIES sequence VAE on the MOSES benchmark, scored with the MOSES metrics.

    pip install --no-deps molsets          # the MOSES data files (never imported)
    python -m experiments.molecules                  # 200k molecules, ~32 min on 2 CPU cores
    python -m experiments.molecules --train-size 30000 --max-minutes 8 --outdir runs/mol30k
    python -m experiments.molecules --full --max-minutes 0 --epochs 30
        --batch-size 512 --hidden-dim 512 --latent-dim 128 --outdir runs/mol_full   (a GPU job)

Trains on a random subset of the MOSES training split (--train-size; --full for all 1,584,663),
evaluates the negative ELBO on a subset of the MOSES test split, samples --num-samples SMILES
from the prior at each --temperature (1 first, as MOSES does; 0.7 too by default) and writes
MOSES's metric table (``experiments.moses_metrics``: valid, unique@1k, unique@10k, novelty
against all of MOSES train (and against the training subset), filters, FCD / SNN / Frag / Scaf
against the test and scaffold-test sets, IntDiv, property distances) to results.json, with the
MOSES VAE baseline (Polykovskiy et al. 2020) beside it.

--representation selfies trains on SELFIES strings (tokenized by SELFIES symbols) instead of
SMILES; samples are decoded back to SMILES before they are scored and written.

Writes into --outdir: metrics.jsonl, results.json, samples_T<t>.txt (one SMILES per line, for
each temperature), params.msgpack, vocab.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from experiments import cli, moses_metrics, seqlib
from jaxvae.training import files
from jaxvae.data import molecules
from jaxvae.evaluation import molecules as moses
from jaxvae.data.vocab import Vocabulary

MOSES_VAE = moses_metrics.MOSES_VAE  # the published MOSES VAE baseline


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.molecules", __doc__)
    p.add_argument("--train-size", type=int, default=200000,
                   help="random training molecules from MOSES train (%(default)s)")
    p.add_argument("--full", action="store_true", help="train on all of MOSES train (a GPU job)")
    p.add_argument("--representation", choices=molecules.REPRESENTATIONS, default="smiles",
                   help="the strings the VAE reads and writes: SMILES (tokenized by the SMILES "
                        "regex) or SELFIES (by SELFIES symbols; every symbol sequence decodes to "
                        "a molecule); samples are scored as SMILES either way (%(default)s)")
    p.add_argument("--test-size", type=int, default=2000,
                   help="MOSES test molecules for the test -ELBO (%(default)s)")
    p.add_argument("--epochs", type=int, default=100,
                   help="epochs at most (%(default)s); --max-minutes usually stops first")
    p.add_argument("--max-minutes", type=float, default=28.0,
                   help="stop after the epoch that passes this much training time; 0 = none "
                        "(%(default)s)")
    seqlib.add_model_flags(p, hidden_dim=256, latent_dim=64, warmup_steps=500,
                           word_dropout=0.1)
    p.add_argument("--num-samples", type=int, default=10000,
                   help="SMILES sampled for the metrics (%(default)s)")
    p.add_argument("--temperature", type=float, nargs="+", default=[1.0, 0.7],
                   help="sampling temperatures; the first is the headline (MOSES samples at 1) "
                        "and each writes its own metrics (%(default)s)")
    p.add_argument("--no-distribution-metrics", action="store_true",
                   help="skip FCD, SNN, Frag, Scaf, IntDiv and the property distances (they "
                        "need fcd_torch and MOSES's reference statistics from molsets)")
    p.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    seqlib.add_outdir_flags(p, "runs/molecules")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def check_args(args) -> None:
    cli.check_positive(args, ("train_size", "test_size", "num_samples"))
    for t in args.temperature:
        if not t > 0:
            raise ValueError(f"--temperature must be > 0, got {t}")
    if args.max_minutes < 0:
        raise ValueError(f"--max-minutes must be >= 0, got {args.max_minutes}")


def run(args) -> dict:
    check_args(args)
    config = seqlib.sequence_config(args, max_seconds=60.0 * args.max_minutes)
    seqlib.check_outdir(args)
    moses_train = molecules.load_moses("train")
    moses_test = molecules.load_moses("test")
    rng = np.random.default_rng(args.seed)
    if args.full:
        train_smiles = moses_train
    else:
        if args.train_size > len(moses_train):
            raise ValueError(f"--train-size {args.train_size} exceeds the {len(moses_train)} "
                             "MOSES training molecules; use --full for all of them")
        train_smiles = [moses_train[i] for i in rng.permutation(len(moses_train))[:args.train_size]]
    rep = args.representation
    train_strings = molecules.to_representation(train_smiles, rep)
    vocab = Vocabulary.from_corpus(train_strings, rep)
    known = set(vocab.tokens)
    test_all = molecules.to_representation(
        [moses_test[i] for i in rng.permutation(len(moses_test))[:args.test_size]], rep)
    # a test molecule with a token the training subset never showed cannot be encoded: drop it
    test_strings = [s for s in test_all if set(vocab.tokenize(s)) <= known]

    outdir = seqlib.prepare_outdir(args.outdir, overwrite=args.overwrite)
    fit, train_wall = seqlib.train(config, vocab, train_strings, test_strings, outdir,
                                   args.quiet)

    train_set, moses_set = set(train_smiles), set(moses_train)
    patterns = molecules.filter_patterns()
    refs = None if args.no_distribution_metrics else {
        name: moses.reference_statistics(split)
        for name, split in moses.REFERENCE_SPLITS.items()}
    by_temperature, all_samples = {}, {}
    start = time.perf_counter()
    for t in args.temperature:
        samples_t = molecules.to_smiles(seqlib.prior_samples(
            fit, jax.random.key(args.seed + 1), args.num_samples, temperature=t), rep)
        # novelty as MOSES defines it: against all of MOSES train
        metrics_t = molecules.generation_metrics(samples_t, moses_set, filters=patterns)
        metrics_t["novelty_vs_train_subset"] = molecules.generation_metrics(
            samples_t, train_set, ks=())["novelty"]
        valid_t = moses.valid_canonical(samples_t)
        if refs is not None and len(valid_t) >= 2:
            metrics_t.update(moses.distribution_metrics(valid_t, refs))
        by_temperature[str(t)], all_samples[t] = metrics_t, samples_t
    sample_seconds = time.perf_counter() - start
    headline = args.temperature[0]
    samples, ours = all_samples[headline], by_temperature[str(headline)]
    recon = seqlib.reconstructions(fit, test_strings[:1000])
    results = {
        "config": config.to_dict(), "representation": rep, "train_molecules": len(train_smiles),
        "test_molecules": len(test_strings), "test_dropped_unknown_tokens":
            len(test_all) - len(test_strings),
        "vocab_size": len(vocab), "row_length": fit.length,
        "epochs_run": len(fit.history), "steps": fit.history[-1]["step"],
        "train_seconds": sum(r["seconds"] for r in fit.history),
        "compile_seconds": fit.compile_seconds, "train_wall_seconds": train_wall,
        "sample_seconds": sample_seconds, "temperature": headline,
        "metrics_by_temperature": by_temperature,
        "final": fit.history[-1],
        "test_exact_reconstruction": float(np.mean([a == b for a, b in
                                                    zip(test_strings[:1000], recon)])),
        "metrics": ours, "moses_vae_baseline": MOSES_VAE,
        "samples_head": samples[:20], **seqlib.environment()}
    files.write_atomic(outdir / "results.json", json.dumps(results, indent=2))
    sample_files = [outdir / f"samples_T{t}.txt" for t in args.temperature]
    for t, path in zip(args.temperature, sample_files):
        files.write_atomic(path, "\n".join(all_samples[t]) + "\n")
    written = ([outdir / "metrics.jsonl", outdir / "results.json", *sample_files]
               + seqlib.write_model(outdir, fit))
    print(f"trained on {len(train_smiles)} molecules for {results['train_seconds'] / 60:.1f} min "
          f"({results['epochs_run']} epochs, {results['steps']} steps)")
    print(moses_metrics.format_table({f"ours T={t}": by_temperature[str(t)]
                                      for t in args.temperature}))
    print(f"wrote {', '.join(str(p) for p in written)}")
    return results


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv,
                           errors=(ValueError, TypeError, ImportError))


if __name__ == "__main__":
    sys.exit(main())
