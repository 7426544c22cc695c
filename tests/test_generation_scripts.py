"""End to end: a cvae run of experiments/train.py, then generate.py and augment.py (8x8 digits)."""

import json

import numpy as np
import pytest

from experiments import augment as augment_script
from experiments import generate as generate_script
from experiments import train as train_script


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("cvae")
    code = train_script.main(["--model", "cvae", "--dataset", "digits", "--epochs", "2",
                              "--hidden", "32", "--latent-dim", "2", "--prior", "mog",
                              "--outdir", str(outdir), "--quiet"])
    assert code == 0
    return outdir


def test_cvae_run_writes_every_output_file(cvae_run):
    for name in ("metrics.jsonl", "summary.json", "reconstructions.png", "samples.png",
                 "params.msgpack"):
        assert (cvae_run / name).stat().st_size > 0, name
    summary = json.loads((cvae_run / "summary.json").read_text())
    model_config = summary["config"]["model"]
    assert model_config["name"] == "cvae" and model_config["prior"] == "mog"


def test_generate_writes_a_grid_per_class(cvae_run, capsys):
    assert generate_script.main(["--run-dir", str(cvae_run), "--per-class", "3"]) == 0
    assert (cvae_run / "samples_per_class.png").stat().st_size > 0
    saved = np.load(cvae_run / "samples_per_class.npz")
    assert saved["images"].shape == (30, 64)
    np.testing.assert_array_equal(saved["labels"], np.repeat(np.arange(10), 3))
    assert "samples_per_class.png" in capsys.readouterr().out


def test_generate_needs_a_conditional_run(tmp_path, capsys):
    (tmp_path / "params.msgpack").write_bytes(b"")
    (tmp_path / "summary.json").write_text(json.dumps(
        {"config": {"model": "mlp", "dataset": "digits", "hidden": [8], "latent_dim": 2}}))
    assert generate_script.main(["--run-dir", str(tmp_path)]) == 2
    assert "per-class samples need a conditional model" in capsys.readouterr().err
    assert generate_script.main(["--run-dir", str(tmp_path / "missing")]) == 2
    assert "has no summary.json" in capsys.readouterr().err


def test_augment_reports_both_accuracies(tmp_path, capsys):
    code = augment_script.main(["--dataset", "digits", "--epochs", "2", "--hidden", "32",
                                "--latent-dim", "2", "--per-class", "20", "--max-iter", "30",
                                "--real-per-class", "30", "--outdir", str(tmp_path), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "augment.json").read_text())
    assert report["num_real"] == 300 and report["num_synthetic"] == 200
    for name in ("real", "real_plus_synthetic", "synthetic_only"):
        assert 0.0 <= report["test_accuracy"][name] <= 1.0
    assert report["test_accuracy"]["real"] > 0.5  # a working classifier on 8x8 digits
    assert "real + synthetic" in capsys.readouterr().out
    assert (tmp_path / "synthetic_samples.png").stat().st_size > 0


def test_augment_rejects_bad_flags(tmp_path, capsys):
    assert augment_script.main(["--per-class", "0", "--outdir", str(tmp_path)]) == 2
    assert "--per-class must be >= 1" in capsys.readouterr().err
