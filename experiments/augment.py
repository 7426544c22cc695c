"""Data augmentation with the conditional VAE: does a classifier gain from generated digits?

    python -m experiments.augment                         # mnist5k, CVAE 30 epochs, +400/class
    python -m experiments.augment --real-per-class 50     # a low-data regime

1. trains a conditional VAE (--model cvae) on the real training split;
2. draws --per-class labelled samples of every class (the decoder's mean, sigmoid(logits));
3. trains a scikit-learn logistic regression on (a) the real training data, (b) real +
   synthetic, (c) synthetic only, and reports the accuracy of each on the real test split.

Writes augment.json (config, accuracies, CVAE test loss) and synthetic_samples.png into
--outdir, and prints the accuracies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

import jaxvae
from experiments import cli
from experiments import train as train_script
from jaxvae.training import files
from jaxvae.training import runs
from jaxvae.models import conditional
from jaxvae.objectives import bounds as objectives
from jaxvae.evaluation import plots
from jaxvae.training import fit as trainer
from jaxvae.data import datasets as data_lib
from jaxvae.config import TrainConfig


def subsample_per_class(data: data_lib.Dataset, per_class: int, seed: int) -> data_lib.Dataset:
    """The first ``per_class`` training examples of every class after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(data.y_train == c))[:per_class]
                           for c in np.unique(data.y_train)])
    keep = rng.permutation(keep)
    return data._replace(x_train=data.x_train[keep], y_train=data.y_train[keep])


def fit_classifier(x_train, y_train, max_iter: int, seed: int):
    """A multinomial logistic regression (lbfgs) fitted on (x_train, y_train), inputs flattened."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():  # a short --max-iter is a user's choice, not an error
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train.reshape(len(x_train), -1), y_train)
    return clf


def accuracy(x_train, y_train, x_test, y_test, max_iter: int, seed: int) -> float:
    """Test accuracy of a multinomial logistic regression (lbfgs) trained on (x_train, y_train)."""
    clf = fit_classifier(x_train, y_train, max_iter, seed)
    return float(clf.score(x_test.reshape(len(x_test), -1), y_test))


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.augment", __doc__)
    p.add_argument("--dataset", default="mnist5k", help="a labelled dataset (default %(default)s)")
    p.add_argument("--epochs", type=int, default=30, help="CVAE epochs (default %(default)s)")
    p.add_argument("--latent-dim", type=int, default=20, help="CVAE latent size (default %(default)s)")
    p.add_argument("--hidden", type=int, nargs="+", default=[400],
                   help="CVAE hidden widths (default %(default)s)")
    p.add_argument("--per-class", type=int, default=400,
                   help="synthetic samples per class (default %(default)s)")
    p.add_argument("--real-per-class", type=int, default=0,
                   help="use only this many real training examples per class, 0 = all "
                        "(default %(default)s)")
    p.add_argument("--max-iter", type=int, default=300,
                   help="logistic regression iterations (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--outdir", default="runs/augment",
                   help="output directory, new or empty (default %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier result in --outdir first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> dict:
    cli.check_positive(args, ("per_class", "max_iter"))
    if args.real_per_class < 0:
        raise ValueError(f"--real-per-class must be >= 0, got {args.real_per_class}")
    config = TrainConfig.from_flat(dataset=args.dataset, model="cvae", epochs=args.epochs,
                                   latent_dim=args.latent_dim, hidden=tuple(args.hidden),
                                   seed=args.seed)
    jaxvae.validate_config(config)
    runs.check_new_run(args.outdir, overwrite=args.overwrite,
                       markers=("augment.json", "synthetic_samples.png"), what="results")
    if args.overwrite:
        cli.check_outside(args.dataset, "--dataset", args.outdir)
    data = data_lib.load(args.dataset, seed=0)
    outdir = train_script.prepare_outdir(args.outdir, overwrite=args.overwrite)
    if args.real_per_class:
        data = subsample_per_class(data, args.real_per_class, args.seed)
    config = config.replace(num_classes=int(data.y_train.max()) + 1)

    start = time.perf_counter()
    bar = tqdm(total=config.run.epochs, desc="cvae epochs", unit="epoch", disable=args.quiet,
               file=sys.stderr)
    try:
        result = trainer.fit(config, data, on_epoch=lambda record: bar.update(1))
    finally:
        bar.close()
    cvae_seconds = time.perf_counter() - start

    labels = np.repeat(np.arange(config.model.num_classes), args.per_class)
    out = conditional.generate(result.model, result.state.params,
                               jax.random.key(args.seed + 1), labels)
    synthetic = np.asarray(objectives.likelihood_mean(config.model.likelihood, out), np.float32)
    shown = np.concatenate([synthetic[labels == c][:10] for c in range(config.model.num_classes)])
    plots.save_image_grid(outdir / "synthetic_samples.png", shown, 10,
                          "CVAE samples, one row per class")

    start = time.perf_counter()
    acc = {
        "real": accuracy(data.x_train, data.y_train, data.x_test, data.y_test, args.max_iter,
                         args.seed),
        "real_plus_synthetic": accuracy(np.concatenate([data.x_train, synthetic]),
                                        np.concatenate([data.y_train, labels]),
                                        data.x_test, data.y_test, args.max_iter, args.seed),
        "synthetic_only": accuracy(synthetic, labels, data.x_test, data.y_test, args.max_iter,
                                   args.seed),
    }
    report = {"config": config.to_dict(), "per_class": args.per_class,
              "real_per_class": args.real_per_class, "max_iter": args.max_iter,
              "num_real": int(len(data.x_train)), "num_synthetic": int(len(synthetic)),
              "num_test": int(len(data.x_test)), "test_accuracy": acc,
              "cvae_final": result.history[-1], "cvae_seconds": cvae_seconds,
              "classifier_seconds": time.perf_counter() - start,
              "classifier": f"sklearn LogisticRegression(max_iter={args.max_iter}, lbfgs)"}
    files.write_atomic(outdir / "augment.json", json.dumps(report, indent=2))
    print(f"test accuracy: real {acc['real']:.4f} | real + synthetic "
          f"{acc['real_plus_synthetic']:.4f} | synthetic only {acc['synthetic_only']:.4f} "
          f"({len(data.x_train)} real, {len(synthetic)} synthetic, {len(data.x_test)} test)")
    print(f"wrote {outdir / 'augment.json'}, {outdir / 'synthetic_samples.png'}")
    return report


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
