"""Anomaly detection with a VAE: train on every class but one, score the test set.

    python -m experiments.anomaly --holdout-class 9 --outdir runs/anomaly9
    python -m experiments.anomaly --holdout-class 0 --epochs 20 --score-samples 500 --score nll

Takes every training flag of experiments/train.py. Trains on the training examples whose label
is not --holdout-class, scores every test example with jaxvae.anomaly_score (-log p(x) by
importance sampling, or -ELBO), and writes into --outdir: anomaly.json (roc_auc of the held-out
class as the anomaly, scikit-learn's roc_auc_score, and the mean score per test class),
scores_histogram.png, scores.npz, and the training outputs of experiments/train.py.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

import jaxvae
from experiments import cli
from experiments import train as train_script
from jaxvae.data import datasets as data_lib
from jaxvae.data import standardize
from jaxvae.evaluation import likelihood as evaluate
from jaxvae.models import interface
from jaxvae.evaluation import plots
from jaxvae.models import registry
from jaxvae.training import files
from jaxvae.training import fit as trainer
from jaxvae.training import runs


def build_parser():
    p = cli.parser("experiments.anomaly", __doc__)
    train_script.add_flags(p)
    p.set_defaults(outdir="runs/anomaly")
    p.add_argument("--holdout-class", type=int, required=True,
                   help="the label left out of training: the anomaly")
    p.add_argument("--score-samples", type=int, default=100,
                   help="importance samples per test example (default %(default)s)")
    p.add_argument("--score", choices=evaluate.SCORES, default="nll",
                   help="nll: -log p(x) (importance sampled); elbo: -ELBO (default %(default)s)")
    return p


OUTPUTS = ("anomaly.json", "scores.npz", "scores_histogram.png")  # besides train.py's files


def without_class(data: data_lib.Dataset, label: int) -> data_lib.Dataset:
    """The dataset without the examples of ``label`` (in both splits)."""
    train, test = data.y_train != label, data.y_test != label
    return data_lib.Dataset(data.x_train[train], data.y_train[train], data.x_test[test],
                            data.y_test[test])


def run(args, given: frozenset[str] | None = None) -> dict:
    """``given``: the flags on the command line; the sizes not among them fit the data."""
    config = train_script.config_from_args(args)
    jaxvae.validate_config(config)
    if args.score_samples < 1:
        raise ValueError(f"--score-samples must be >= 1, got {args.score_samples}")
    if args.resume:
        raise ValueError("--resume continues runs of experiments/train.py only; start a new "
                         "run here (without --resume)")
    runs.check_new_run(args.outdir, overwrite=args.overwrite,
                       markers=runs.RUN_MARKERS + OUTPUTS)
    if args.overwrite:
        train_script.check_data_outside(config, args.outdir)
    data = data_lib.load_for(config)
    labels = np.unique(data.y_test)
    if args.holdout_class not in labels:
        raise ValueError(f"--holdout-class {args.holdout_class} is not a label of "
                         f"{config.data.dataset} (labels {labels.tolist()})")
    normal = without_class(data, args.holdout_class)
    config = train_script.sized_for_data(config, normal, given)
    # Refuse a score the model does not define before training it.
    model = registry.build(config, data.example_shape).model
    interface.check_defined(model, "log_weights" if args.score == "nll" else "elbo_terms")
    trainer.check_run(config, normal)
    out = train_script.prepare_outdir(args.outdir, overwrite=args.overwrite)

    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    bar = tqdm(total=config.run.epochs, desc="epochs", unit="epoch", disable=args.quiet,
               file=sys.stderr)

    def on_epoch(record: dict) -> None:
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        bar.set_postfix(train=f"{record['train_loss']:.2f}", test=f"{record['test_loss']:.2f}")
        bar.update(1)

    logger = None
    if args.tensorboard:
        from jaxvae.training import tensorboard as tracking
        logger = tracking.TensorBoardLogger(out / "tensorboard", config.model.likelihood,
                                            examples=normal.x_test[:8], seed=config.run.seed,
                                            labels=normal.y_test[:8])
    try:
        result = trainer.fit(config, normal, on_epoch=on_epoch,
                             hooks=[] if logger is None else [logger])
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    written = [metrics_path] + train_script.write_outputs(out, config, normal, result)

    start = time.perf_counter()
    stats = result.standardization  # the model reads (x - mean) / std when it trained so
    x_test = data.x_test if stats is None else standardize.apply(stats, data.x_test)
    test_batch = {"x": x_test, "y": np.asarray(data.y_test, np.int32)}
    scores = np.asarray(evaluate.anomaly_score(
        result.model, result.state.params, test_batch, jax.random.key(config.run.seed + 2),
        args.score_samples, score=args.score))
    if stats is not None:  # -log p(x) in the data's units
        scores = scores + standardize.log_det(stats)
    seconds = time.perf_counter() - start
    if not np.isfinite(scores).all():
        raise ValueError("the anomaly scores are not finite: training diverged?")
    is_anomaly = data.y_test == args.holdout_class
    from sklearn.metrics import roc_auc_score  # imported here: scikit-learn loads in 2 s

    auc = float(roc_auc_score(is_anomaly, scores))
    summary = {
        "roc_auc": auc,  # P(score of an anomaly > score of a normal example)
        "holdout_class": args.holdout_class,
        "score": args.score,
        "num_samples": args.score_samples,
        "dataset": config.data.dataset,
        "test_normal": int((~is_anomaly).sum()),
        "test_anomalous": int(is_anomaly.sum()),
        "mean_score_normal": float(scores[~is_anomaly].mean()),
        "mean_score_anomalous": float(scores[is_anomaly].mean()),
        "mean_score_per_class": {str(c): float(scores[data.y_test == c].mean()) for c in labels},
        "scoring_seconds": seconds,
        "config": config.to_dict(),
    }
    files.write_atomic(out / "anomaly.json", json.dumps(summary, indent=2))
    buffer = io.BytesIO()
    np.savez(buffer, scores=scores, labels=data.y_test, is_anomaly=is_anomaly)
    files.write_atomic(out / "scores.npz", buffer.getvalue())
    what = "-log p(x)" if args.score == "nll" else "-ELBO"
    hist = plots.save_score_histogram(
        out / "scores_histogram.png", scores[~is_anomaly], scores[is_anomaly],
        f"{what} of test digits, class {args.holdout_class} held out (ROC AUC {auc:.3f})",
        xlabel=f"anomaly score {what} (nats, K = {args.score_samples})")
    written += [out / "anomaly.json", out / "scores.npz", Path(hist)]
    print(f"ROC AUC {auc:.3f} for class {args.holdout_class} as the anomaly "
          f"(mean score {summary['mean_score_anomalous']:.1f} vs {summary['mean_score_normal']:.1f})")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return summary


def main(argv=None) -> int:
    given = cli.given_flags(build_parser, argv)
    return cli.script_main(build_parser, lambda args: run(args, given), argv)


if __name__ == "__main__":
    sys.exit(main())
