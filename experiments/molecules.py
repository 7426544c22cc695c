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

--representation kekule trains on SMILES in their Kekulé form (``C1=CC=CC=C1`` for benzene: no
aromatic atoms, so no sample can fail RDKit's kekulization); --representation selfies on SELFIES
strings (tokenized by SELFIES symbols); samples are decoded back to SMILES before they are scored
and written.

--sampler syntax (SMILES and Kekulé SMILES) also samples with the SMILES syntax constraint
(``jaxvae.data.smiles_syntax``): at each step the tokens that would break the syntax (an unclosed
ring bond or branch, an empty branch, a bond at the end, a ring bond between atoms already bonded)
or leave the string unable to end within the row are masked out of the decoder's softmax.
--sampler valence masks, beside the syntax, the tokens that would give an atom more bonds than
its valence allows (``jaxvae.data.smiles_valence``).
--from-run DIR samples and scores the model a finished run left in DIR (params.msgpack,
vocab.json, results.json) instead of training one; DIR is only read.

Writes into --outdir: metrics.jsonl, results.json, samples_T<t>.txt (one SMILES per line, for
each temperature; samples_T<t>_syntax.txt and samples_T<t>_valence.txt with those samplers),
params.msgpack, vocab.json (with --from-run: results.json and the samples files only).
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
from jaxvae.data import molecules, smiles_syntax, smiles_valence
from jaxvae.evaluation import molecules as moses
from jaxvae.data.vocab import Vocabulary

MOSES_VAE = moses_metrics.MOSES_VAE  # the published MOSES VAE baseline
SAMPLERS = ("plain", "syntax", "valence")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.molecules", __doc__)
    p.add_argument("--train-size", type=int, default=200000,
                   help="random training molecules from MOSES train (%(default)s)")
    p.add_argument("--full", action="store_true", help="train on all of MOSES train (a GPU job)")
    p.add_argument("--representation", choices=molecules.REPRESENTATIONS, default="smiles",
                   help="the strings the VAE reads and writes: SMILES (tokenized by the SMILES "
                        "regex), the same in Kekulé form (no aromatic atoms), or SELFIES (by "
                        "SELFIES symbols; every symbol sequence decodes to a molecule); samples "
                        "are scored as SMILES either way (%(default)s)")
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
    p.add_argument("--sampler", choices=SAMPLERS, nargs="+", default=["plain"],
                   help="plain: the decoder's softmax; syntax: the same with the tokens that "
                        "would break the SMILES syntax masked out; valence: syntax and atom "
                        "valences (both SMILES forms only); each sampler writes its own samples "
                        "and metrics for every temperature (%(default)s)")
    p.add_argument("--from-run", metavar="DIR",
                   help="sample and score the trained model in DIR (a finished run of this "
                        "script) instead of training; DIR is only read")
    p.add_argument("--no-distribution-metrics", action="store_true",
                   help="skip FCD, SNN, Frag, Scaf, IntDiv and the property distances (they "
                        "need fcd_torch and MOSES's reference statistics from molsets)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed: data subset, training, and the sampling key "
                        "key(seed + 1) (0; with --from-run, the run's own seed)")
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
    masked = [m for m in args.sampler if m != "plain"]
    if masked and args.representation == "selfies" and not args.from_run:
        raise ValueError(f"--sampler {masked[0]} masks SMILES tokens; SELFIES samples are valid "
                         "by construction: drop it or use --representation smiles")
    if args.from_run and args.from_run.rstrip("/") == args.outdir.rstrip("/"):
        raise ValueError("--from-run reads a run and --outdir is written: give --outdir a new "
                         "directory")


def sample_and_score(model, params, vocab, length: int, rep: str, args, moses_set: set,
                     train_set: set | None) -> tuple[dict, dict, float]:
    """Samples --num-samples SMILES for every (--sampler, --temperature) and scores them.

    Returns ``(metrics by key, samples by key, seconds)``, keys "<t>" for the plain sampler and
    "<t> <sampler>" for a masked one.
    """
    patterns = molecules.filter_patterns()
    refs = None if args.no_distribution_metrics else {
        name: moses.reference_statistics(split)
        for name, split in moses.REFERENCE_SPLITS.items()}
    constraints = {"plain": None}
    if "syntax" in args.sampler:
        constraints["syntax"] = smiles_syntax.smiles_syntax(vocab)
    if "valence" in args.sampler:
        constraints["valence"] = smiles_valence.smiles_valence(vocab)
    by_key, samples_by_key = {}, {}
    start = time.perf_counter()
    for sampler in args.sampler:
        for t in args.temperature:
            key = str(t) if sampler == "plain" else f"{t} {sampler}"
            drawn = seqlib.sample_strings(
                model, params, vocab, length, jax.random.key(args.seed + 1), args.num_samples,
                temperature=t, constraint=constraints[sampler])
            samples_t = molecules.to_smiles(drawn, rep)
            # novelty as MOSES defines it: against all of MOSES train
            metrics_t = molecules.generation_metrics(samples_t, moses_set, filters=patterns)
            if train_set is not None:
                metrics_t["novelty_vs_train_subset"] = molecules.generation_metrics(
                    samples_t, train_set, ks=())["novelty"]
            metrics_t["sampler"] = sampler
            valid_t = moses.valid_canonical(samples_t)
            if refs is not None and len(valid_t) >= 2:
                metrics_t.update(moses.distribution_metrics(valid_t, refs))
            by_key[key], samples_by_key[key] = metrics_t, samples_t
    return by_key, samples_by_key, time.perf_counter() - start


def samples_path(outdir, key: str):
    """samples_T<t>.txt (plain) or samples_T<t>_<sampler>.txt."""
    t, _, sampler = key.partition(" ")
    return outdir / (f"samples_T{t}.txt" if not sampler else f"samples_T{t}_{sampler}.txt")


def write_samples(outdir, samples_by_key: dict) -> list:
    paths = []
    for key, samples in samples_by_key.items():
        paths.append(samples_path(outdir, key))
        files.write_atomic(paths[-1], "\n".join(samples) + "\n")
    return paths


def rescore(args) -> dict:
    """--from-run: samples and scores a finished run's model; writes only into --outdir."""
    model, params, vocab, length, source = seqlib.load_model(args.from_run)
    if args.seed is None:  # the run's own seed draws its own samples again
        args.seed = int(source["config"].get("seed", 0))
    rep = source.get("representation", "smiles")
    masked = [m for m in args.sampler if m != "plain"]
    if masked and rep == "selfies":
        raise ValueError(f"--sampler {masked[0]} masks SMILES tokens; {args.from_run} is a {rep} "
                         "model, whose samples are valid by construction")
    seqlib.check_outdir(args)
    moses_set = set(molecules.load_moses("train"))
    outdir = seqlib.prepare_outdir(args.outdir, overwrite=args.overwrite)
    by_key, samples_by_key, seconds = sample_and_score(model, params, vocab, length, rep, args,
                                                       moses_set, None)
    headline = next(iter(by_key))
    keep = ("config", "representation", "train_molecules", "epochs_run", "steps",
            "train_seconds", "final")
    results = {"from_run": str(args.from_run), "source": {k: source.get(k) for k in keep},
               "num_samples": args.num_samples, "sample_seconds": seconds,
               "metrics_by_temperature": by_key, "headline": headline,
               "metrics": by_key[headline], "moses_vae_baseline": MOSES_VAE,
               "samples_head": samples_by_key[headline][:20], **seqlib.environment()}
    files.write_atomic(outdir / "results.json", json.dumps(results, indent=2))
    written = [outdir / "results.json", *write_samples(outdir, samples_by_key)]
    print(moses_metrics.format_table({f"T={k}": m for k, m in by_key.items()}))
    print(f"wrote {', '.join(str(p) for p in written)}")
    return results


def run(args) -> dict:
    check_args(args)
    if args.from_run:
        return rescore(args)
    if args.seed is None:
        args.seed = 0
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
    vocab = Vocabulary.from_corpus(train_strings, molecules.TOKENIZERS[rep])
    known = set(vocab.tokens)
    test_all = molecules.to_representation(
        [moses_test[i] for i in rng.permutation(len(moses_test))[:args.test_size]], rep)
    # a test molecule with a token the training subset never showed cannot be encoded: drop it
    test_strings = [s for s in test_all if set(vocab.tokenize(s)) <= known]

    outdir = seqlib.prepare_outdir(args.outdir, overwrite=args.overwrite)
    fit, train_wall = seqlib.train(config, vocab, train_strings, test_strings, outdir,
                                   args.quiet)

    by_key, samples_by_key, sample_seconds = sample_and_score(
        fit.model, fit.state.params, vocab, fit.length, rep, args, set(moses_train),
        set(train_smiles))
    headline = next(iter(by_key))
    samples, ours = samples_by_key[headline], by_key[headline]
    recon = seqlib.reconstructions(fit, test_strings[:1000])
    results = {
        "config": config.to_dict(), "representation": rep, "train_molecules": len(train_smiles),
        "test_molecules": len(test_strings), "test_dropped_unknown_tokens":
            len(test_all) - len(test_strings),
        "vocab_size": len(vocab), "row_length": fit.length,
        "epochs_run": len(fit.history), "steps": fit.history[-1]["step"],
        "train_seconds": sum(r["seconds"] for r in fit.history),
        "compile_seconds": fit.compile_seconds, "train_wall_seconds": train_wall,
        "sample_seconds": sample_seconds, "temperature": args.temperature[0],
        "metrics_by_temperature": by_key, "headline": headline,
        "final": fit.history[-1],
        "test_exact_reconstruction": float(np.mean([a == b for a, b in
                                                    zip(test_strings[:1000], recon)])),
        "metrics": ours, "moses_vae_baseline": MOSES_VAE,
        "samples_head": samples[:20], **seqlib.environment()}
    files.write_atomic(outdir / "results.json", json.dumps(results, indent=2))
    written = ([outdir / "metrics.jsonl", outdir / "results.json",
                *write_samples(outdir, samples_by_key)] + seqlib.write_model(outdir, fit))
    print(f"trained on {len(train_smiles)} molecules for {results['train_seconds'] / 60:.1f} min "
          f"({results['epochs_run']} epochs, {results['steps']} steps)")
    print(moses_metrics.format_table({f"T={k}": m for k, m in by_key.items()}))
    print(f"wrote {', '.join(str(p) for p in written)}")
    return results


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv,
                           errors=(ValueError, TypeError, ImportError))


if __name__ == "__main__":
    sys.exit(main())
