"""End to end: experiments/evaluate.py, anomaly.py and visualize.py on tiny runs of digits."""

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import anomaly as anomaly_script
from experiments import evaluate as evaluate_script
from experiments import train as train_script
from experiments import visualize as visualize_script
from jaxvae.data import datasets as data_lib
from jaxvae.training import early_stopping
from jaxvae.evaluation import likelihood as evaluate
from jaxvae.models import registry
from jaxvae.training import runs
from jaxvae.data import preprocessing
from jaxvae.training import step as train
from jaxvae.training import fit as trainer

TINY = ["--dataset", "digits", "--epochs", "2", "--hidden", "32", "--batch-size", "256",
        "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-D latent model on the 8x8 digits (so that the manifold is drawn too), trained with
    TensorBoard logging and early stopping."""
    outdir = tmp_path_factory.mktemp("z2")
    # The validation loss stops falling after about 8 epochs here (about 10 of 30 run).
    argv = ["--dataset", "digits", "--epochs", "30", "--lr", "0.01", "--batch-size", "32",
            "--hidden", "128", "--latent-dim", "2", "--tensorboard", "--patience", "2",
            "--outdir", str(outdir), "--quiet"]
    assert train_script.main(argv) == 0
    return outdir


def _read_events(path):
    """Events of a TFRecord event file (uint64 length, crc, payload, crc), tensorboardX's proto."""
    from tensorboardX.proto import event_pb2
    data, i, events = path.read_bytes(), 0, []
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i:i + 8])
        events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + length]))
        i += 12 + length + 4
    return events


def test_tensorboard_event_files_hold_step_and_epoch_scalars_and_images(run_dir):
    files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars, images = {}, {}
    for event in _read_events(files[0]):
        for value in event.summary.value:
            if value.HasField("image"):
                images.setdefault(value.tag, []).append((event.step, value.image))
            else:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    records = [json.loads(line) for line in
               (run_dir / "metrics.jsonl").read_text().splitlines()]
    # 1,438 training digits, 10% held out for validation, batches of 32 and a remainder.
    digits = data_lib.load_digits()
    num_train = len(digits.x_train) - len(early_stopping.split_validation(digits, 0.1, 0)[1]["x"])
    num_full, remainder = divmod(num_train, 32)
    per_epoch = num_full + 1
    steps = [s for s, _ in scalars["step/loss"]]
    assert steps == list(range(1, per_epoch * len(records) + 1))
    for tag, key in (("loss/train", "train_loss"), ("loss/test", "test_loss"),
                     ("kl/val", "val_kl"), ("recon/test", "test_recon")):
        assert [s for s, _ in scalars[tag]] == [per_epoch * r["epoch"] for r in records]
        np.testing.assert_allclose([v for _, v in scalars[tag]], [r[key] for r in records],
                                   rtol=1e-6)
    # The per-step values are the epoch's steps: their example-weighted mean is its train loss.
    step_losses = np.array([v for _, v in scalars["step/loss"]]).reshape(len(records), per_epoch)
    weighted = (step_losses[:, :-1].sum(axis=1) * 32 + step_losses[:, -1] * remainder) / num_train
    np.testing.assert_allclose(weighted, [r["train_loss"] for r in records], rtol=1e-5)
    for tag in ("images/reconstructions", "images/prior_samples"):
        assert len(images[tag]) == len(records)
        assert images[tag][0][1].encoded_image_string.startswith(b"\x89PNG")
    recon = images["images/reconstructions"][0][1]
    assert (recon.height, recon.width) == (2 * 8 + 1, 8 * 8 + 7)  # 2 rows of 8 tiles of 8x8


def test_train_script_with_patience_saves_the_best_epoch(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in
               (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["config"]["run"]["patience"] == 2
    best = summary["best_epoch"]
    val_losses = [r["val_loss"] for r in records]
    assert best == int(np.argmin(val_losses)) + 1
    assert summary["epochs_run"] == len(records) == best + 2 < 30  # stopped early
    assert summary["final"] == records[best - 1]
    # The saved parameters are the best epoch's: re-evaluated, they give its validation loss.
    loaded = runs.load_run(run_dir)
    _, val = early_stopping.split_validation(loaded.data, 0.1, 0)
    loss_fn = registry.build(loaded.config, loaded.data.example_shape).loss_fn
    steps_per_epoch = -(-(len(loaded.data.x_train) - len(val["x"])) // 32)
    metrics = train.make_evaluate(loss_fn, len(val["x"]))(
        loaded.params, jax.device_put(val), trainer.run_keys(0).eval,
        jnp.int32(best * steps_per_epoch))
    assert float(metrics["loss"]) == pytest.approx(val_losses[best - 1], rel=1e-6)




def test_evaluate_writes_nll_below_the_negative_elbo(run_dir, tmp_path, capsys):
    argv = [str(run_dir), "--num-samples", "64", "--elbo-samples", "8", "--max-examples", "40"]
    assert evaluate_script.main(argv) == 0
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert result["num_samples"] == 64 and result["examples"] == 40
    assert result["dataset"] == "digits" and result["split"] == "test"
    assert result["nll"] > 0 and result["elbo"] < 0
    assert result["nll"] < -result["elbo"]  # the K-sample bound is above the ELBO
    assert result["gap"] == pytest.approx(-result["elbo"] - result["nll"])
    # The number is the API's, on the run's model and test examples, with the script's key.
    loaded = runs.load_run(run_dir)
    key = jax.random.split(jax.random.key(0))[0]
    expected = -np.mean(np.asarray(evaluate.log_likelihood(
        loaded.model, loaded.params, loaded.data.x_test[:40], key, 64)), dtype=np.float64)
    assert result["nll"] == pytest.approx(expected, rel=1e-6)
    assert "evaluation.json" in capsys.readouterr().out
    log_px = np.load(run_dir / "evaluation.log_px.npy")
    assert log_px.shape == (40,) and -log_px.mean() == pytest.approx(result["nll"], rel=1e-5)

    # An existing evaluation is kept unless --overwrite; --output writes elsewhere.
    before = (run_dir / "evaluation.json").read_bytes()
    assert evaluate_script.main(argv[:-1] + ["10"]) == 2
    assert "already holds an evaluation" in capsys.readouterr().err
    assert (run_dir / "evaluation.json").read_bytes() == before
    # The first 10 examples alone get exactly their values in the 40-example evaluation.
    out = tmp_path / "first10.json"
    assert evaluate_script.main(argv[:-1] + ["10", "--output", str(out)]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "first10.log_px.npy"), log_px[:10], rtol=1e-6)
    assert evaluate_script.main(argv + ["--overwrite"]) == 0


def test_evaluate_scores_a_binarized_run_on_the_binary_test_set_it_was_trained_for(tmp_path):
    """--binarize dynamic: the test split is binarized once with the run's key, as in training."""
    outdir = tmp_path / "binary"
    assert train_script.main(TINY + ["--binarize", "dynamic", "--latent-dim", "2",
                                     "--outdir", str(outdir)]) == 0
    argv = [str(outdir), "--num-samples", "16", "--elbo-samples", "4", "--max-examples", "40"]
    assert evaluate_script.main(argv) == 0
    result = json.loads((outdir / "evaluation.json").read_text())
    assert result["binarize"] == "dynamic"
    loaded = runs.load_run(outdir)
    binary = preprocessing.fixed_transform("dynamic", False,
                                           preprocessing.data_key(loaded.config.run.seed),
                                           loaded.data.x_test, 1)[:40]
    assert set(np.unique(binary)) <= {0.0, 1.0}
    key = jax.random.split(jax.random.key(0))[0]
    nll = lambda x: -np.mean(np.asarray(evaluate.log_likelihood(
        loaded.model, loaded.params, x, key, 16)), dtype=np.float64)
    assert result["nll"] == pytest.approx(nll(binary), rel=1e-6)
    assert abs(result["nll"] - nll(loaded.data.x_test[:40])) > 1e-3  # not the grey pixels


@pytest.mark.parametrize("argv, message", [
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--max-examples", "0"], "--max-examples must be >= 1"),
])
def test_evaluate_refuses_bad_flags(run_dir, argv, message, capsys):
    assert evaluate_script.main([str(run_dir)] + argv) == 2
    assert message in capsys.readouterr().err


def test_evaluate_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert evaluate_script.main([str(tmp_path)]) == 2
    assert "summary.json not found" in capsys.readouterr().err


def test_visualize_writes_every_figure(run_dir, tmp_path):
    outdir = tmp_path / "figures"
    argv = [str(run_dir), "--outdir", str(outdir), "--tsne-points", "40", "--steps", "5",
            "--interpolation", "spherical"]
    assert visualize_script.main(argv) == 0
    for name in ("reconstructions", "prior_samples", "interpolation", "traversal", "manifold",
                 "latent_pca", "latent_tsne", "loss_curves"):
        path = outdir / f"{name}.png"
        assert path.read_bytes().startswith(b"\x89PNG"), name


def test_anomaly_trains_without_the_class_and_reports_its_roc_auc(tmp_path, capsys):
    outdir = tmp_path / "anomaly"
    argv = TINY + ["--latent-dim", "4", "--holdout-class", "3", "--score-samples", "8",
                   "--outdir", str(outdir)]
    assert anomaly_script.main(argv) == 0
    result = json.loads((outdir / "anomaly.json").read_text())
    summary = json.loads((outdir / "summary.json").read_text())
    digits = data_lib.load_digits()
    assert summary["train_examples"] == int((digits.y_train != 3).sum())  # class 3 left out
    assert result["test_anomalous"] == int((digits.y_test == 3).sum())
    assert result["test_normal"] + result["test_anomalous"] == len(digits.y_test)
    # roc_auc is P(score of an anomaly > score of a normal example), counted pair by pair.
    saved = np.load(outdir / "scores.npz")
    anomalous, normal = saved["scores"][saved["is_anomaly"]], saved["scores"][~saved["is_anomaly"]]
    pairs = (anomalous[:, None] > normal[None, :]) + 0.5 * (anomalous[:, None] == normal[None, :])
    assert result["roc_auc"] == pytest.approx(pairs.mean(), abs=1e-12)
    assert result["mean_score_per_class"]["3"] == pytest.approx(result["mean_score_anomalous"])
    assert (outdir / "scores_histogram.png").read_bytes().startswith(b"\x89PNG")
    assert "ROC AUC" in capsys.readouterr().out


def test_anomaly_refuses_a_class_the_dataset_does_not_have(tmp_path, capsys):
    argv = TINY + ["--holdout-class", "12", "--outdir", str(tmp_path / "a")]
    assert anomaly_script.main(argv) == 2
    assert "--holdout-class 12 is not a label of digits" in capsys.readouterr().err
