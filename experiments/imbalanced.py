"""Imbalanced data: does a conditional VAE's rare-class samples help a classifier?

    python -m experiments.imbalanced                          # mnist5k, digit 3 cut to 5%
    python -m experiments.imbalanced --rare-class 8 --rare-fraction 0.02 --epochs 20

1. keeps only --rare-fraction of the training examples of --rare-class (a seeded choice; every
   other class and the test split untouched);
2. trains a scikit-learn logistic regression (the one of experiments/augment.py) on
   (a) that imbalanced training set alone,
   (b) the same with the rare examples duplicated at random (drawn with replacement) until the
       rare class is as large as the largest other class (random oversampling),
   (c) the same with conditional-VAE samples of the rare class instead of duplicates (the CVAE
       is trained on the imbalanced training set only; its samples are the decoder's mean),
   and, as a ceiling, (full) the original training set before the cut;
3. reports, on the real test split, the rare class's recall and precision, every class's
   recall and the overall accuracy of each.

Every flag of experiments/train.py is accepted and configures the CVAE (--epochs, --latent-dim,
--prior, ...). Writes imbalanced.json and rare_samples.png (generated rare-class digits) into
--outdir and prints a table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

import jaxvae
from experiments import cli
from experiments import augment as augment_script
from experiments import train as train_script
from jaxvae.models import conditional
from jaxvae.objectives import bounds as objectives
from jaxvae.evaluation import plots
from jaxvae.training import files
from jaxvae.training import fit as trainer
from jaxvae.training import runs
from jaxvae.data import datasets as data_lib
from jaxvae.data import standardize

SETTINGS = ("imbalanced", "oversampled", "cvae", "full")


def build_parser():
    p = cli.parser("experiments.imbalanced", __doc__)
    train_script.add_flags(p)
    p.set_defaults(model="cvae", epochs=30, outdir="runs/imbalanced")
    g = p.add_argument_group("imbalanced-data study")
    g.add_argument("--rare-class", type=int, default=3,
                   help="the label made rare (default %(default)s)")
    g.add_argument("--rare-fraction", type=float, default=0.05,
                   help="share of the rare class's training examples kept, in (0, 1] "
                        "(default %(default)s)")
    g.add_argument("--max-iter", type=int, default=300,
                   help="logistic regression iterations (default %(default)s)")
    return p


def reduce_class(data: data_lib.Dataset, label: int, fraction: float,
                 seed: int) -> data_lib.Dataset:
    """The dataset with only ``fraction`` of ``label``'s training examples, chosen by ``seed``.

    Keeps ``max(1, floor(fraction * n + 1/2))`` of the n training examples of ``label`` (a seeded
    random subset) and every other training example, in their original order; the test split is
    unchanged.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--rare-fraction must be in (0, 1], got {fraction}")
    rare = np.flatnonzero(data.y_train == label)
    if rare.size == 0:
        raise ValueError(f"--rare-class {label} has no training examples "
                         f"(labels {np.unique(data.y_train).tolist()})")
    n_keep = max(1, int(np.floor(fraction * rare.size + 0.5)))
    chosen = np.random.default_rng(seed).choice(rare, n_keep, replace=False)
    keep = (data.y_train != label)
    keep[chosen] = True
    return data._replace(x_train=data.x_train[keep], y_train=data.y_train[keep])


def balance_target(y: np.ndarray, label: int) -> int:
    """The size the rare class is brought up to: that of the largest other class."""
    others = y[y != label]
    if others.size == 0:
        raise ValueError("the training split holds no class but the rare one")
    return int(np.bincount(others).max())


def oversample(x: np.ndarray, y: np.ndarray, label: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random oversampling: ``label``'s examples plus duplicates of them, drawn with replacement,
    until the class is as large as the largest other class; the duplicates go at the end."""
    rare = np.flatnonzero(y == label)
    extra = balance_target(y, label) - rare.size
    if extra <= 0:
        return x, y
    dup = np.random.default_rng(seed).choice(rare, extra, replace=True)
    return np.concatenate([x, x[dup]]), np.concatenate([y, y[dup]])


def scores(clf, x_test: np.ndarray, y_test: np.ndarray, label: int) -> dict:
    """Test accuracy, the rare class's recall and precision, and every class's recall."""
    pred = clf.predict(x_test.reshape(len(x_test), -1))
    classes = np.unique(y_test)
    recall = {str(c): float(np.mean(pred[y_test == c] == c)) for c in classes}
    called_rare = pred == label
    return {"test_accuracy": float(np.mean(pred == y_test)),
            "rare_recall": recall[str(label)],
            # no test digit predicted rare: precision undefined, reported as 0 (sklearn's choice)
            "rare_precision": float(np.mean(y_test[called_rare] == label))
            if called_rare.any() else 0.0,
            "per_class_recall": recall}


def run(args) -> dict:
    if args.max_iter < 1:
        raise ValueError(f"--max-iter must be >= 1, got {args.max_iter}")
    if args.model != "cvae":
        raise ValueError(f"imbalanced.py generates rare-class samples with --model cvae, got "
                         f"--model {args.model}")
    config = train_script.config_from_args(args)
    jaxvae.validate_config(config)
    if args.resume:
        raise ValueError("--resume continues runs of experiments/train.py only; start a new "
                         "run here (without --resume)")
    runs.check_new_run(args.outdir, overwrite=args.overwrite,
                       markers=runs.RUN_MARKERS + ("imbalanced.json", "rare_samples.png"))
    if args.overwrite:
        train_script.check_data_outside(config, args.outdir)
    full = data_lib.load_for(config)
    if (full.y_train < 0).any() or (full.y_test < 0).any():
        raise ValueError(f"{config.data.dataset} has no labels; the study needs a labelled dataset")
    if args.rare_class not in np.unique(full.y_test):
        raise ValueError(f"--rare-class {args.rare_class} is not a label of {config.data.dataset} "
                         f"(labels {np.unique(full.y_test).tolist()})")
    data = reduce_class(full, args.rare_class, args.rare_fraction, args.seed)
    config = config.replace(num_classes=int(full.y_train.max()) + 1)
    trainer.check_run(config, data)
    out = train_script.prepare_outdir(args.outdir, overwrite=args.overwrite)

    start = time.perf_counter()
    bar = tqdm(total=config.run.epochs, desc="cvae epochs", unit="epoch", disable=args.quiet,
               file=sys.stderr)
    try:
        result = trainer.fit(config, data, on_epoch=lambda record: bar.update(1))
    finally:
        bar.close()
    cvae_seconds = time.perf_counter() - start

    n_rare = int(np.sum(data.y_train == args.rare_class))
    n_generate = max(balance_target(data.y_train, args.rare_class) - n_rare, 0)
    generated = np.zeros((0,) + data.x_train.shape[1:], np.float32)
    if n_generate:
        labels = np.full(n_generate, args.rare_class, np.int32)
        outputs = conditional.generate(result.model, result.state.params,
                                       jax.random.key(args.seed + 1), labels)
        generated = np.asarray(objectives.likelihood_mean(config.model.likelihood, outputs),
                               np.float32).reshape((n_generate,) + data.x_train.shape[1:])
        if result.standardization is not None:  # back in the data's units
            generated = standardize.invert(result.standardization, generated)
        if not np.isfinite(generated).all():
            raise ValueError("the CVAE's samples are not finite: training diverged?")
    written = [out / "imbalanced.json"]
    if n_generate:
        png = plots.save_image_grid(out / "rare_samples.png", generated[:50], 10,
                                    f"CVAE samples of the rare class {args.rare_class}")
        if png is not None:
            written.append(Path(png))

    train_sets = {
        "imbalanced": (data.x_train, data.y_train),
        "oversampled": oversample(data.x_train, data.y_train, args.rare_class, args.seed + 2),
        "cvae": (np.concatenate([data.x_train, generated]),
                 np.concatenate([data.y_train, np.full(n_generate, args.rare_class,
                                                       data.y_train.dtype)])),
        "full": (full.x_train, full.y_train),
    }
    start = time.perf_counter()
    results = {}
    for name in SETTINGS:
        x, y = train_sets[name]
        clf = augment_script.fit_classifier(x, y, args.max_iter, args.seed)
        results[name] = {"num_train": int(len(y)),
                         "num_train_rare": int(np.sum(y == args.rare_class)),
                         **scores(clf, full.x_test, full.y_test, args.rare_class)}
    report = {"config": config.to_dict(), "rare_class": args.rare_class,
              "rare_fraction": args.rare_fraction, "max_iter": args.max_iter,
              "train_counts_full": np.bincount(full.y_train).tolist(),
              "train_counts_imbalanced": np.bincount(data.y_train).tolist(),
              "num_generated": n_generate, "num_test": int(len(full.y_test)),
              "num_test_rare": int(np.sum(full.y_test == args.rare_class)),
              "results": results, "cvae_final": result.history[-1],
              "cvae_seconds": cvae_seconds, "classifier_seconds": time.perf_counter() - start,
              "classifier": f"sklearn LogisticRegression(max_iter={args.max_iter}, lbfgs)"}
    files.write_atomic(out / "imbalanced.json", json.dumps(report, indent=2))

    print(f"rare class {args.rare_class}: {n_rare} of "
          f"{report['train_counts_full'][args.rare_class]} training examples kept; "
          f"{n_generate} duplicates / CVAE samples added; {report['num_test']} test digits "
          f"({report['num_test_rare']} of the rare class)")
    print(f"{'setting':<12} {'train':>6} {'rare':>5} {'rare recall':>12} "
          f"{'rare precision':>15} {'accuracy':>9}")
    for name in SETTINGS:
        r = results[name]
        print(f"{name:<12} {r['num_train']:>6} {r['num_train_rare']:>5} "
              f"{r['rare_recall']:>12.3f} {r['rare_precision']:>15.3f} "
              f"{r['test_accuracy']:>9.4f}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return report


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
