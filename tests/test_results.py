"""The committed run directories under results/: they load as they are and reproduce their numbers.

Every ``results/*/evaluation.json`` was written by experiments/evaluate.py together with the
per-example log p(x) (``evaluation.log_px.npy``). Sample k of example i is drawn from
fold_in(fold_in(key, i), k), so re-evaluating the first examples with the stored K and seed must
give their stored values, and their mean must agree with the stored NLL of the whole split within
its Monte-Carlo (sampling of examples) error.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import evaluate as evaluate_script
from jaxvae.training import runs

RESULTS = Path(__file__).resolve().parent.parent / "results"
EVALUATED = sorted(p.parent for p in RESULTS.glob("*/evaluation.json"))
SUBSET = 4


def test_every_results_directory_is_a_loadable_run():
    run_dirs = sorted(p.parent for p in RESULTS.glob("*/summary.json"))
    assert run_dirs, "no run directory under results/"
    for run_dir in run_dirs:
        assert (run_dir / "params.msgpack").is_file(), run_dir
        assert not (run_dir / "checkpoints").exists(), f"{run_dir}: checkpoints are not shipped"


@pytest.mark.parametrize("run_dir", EVALUATED, ids=[p.name for p in EVALUATED])
def test_evaluate_reproduces_the_stored_log_likelihood_on_a_subset(run_dir, tmp_path):
    stored = json.loads((run_dir / "evaluation.json").read_text())
    stored_log_px = np.load(run_dir / "evaluation.log_px.npy")
    assert stored_log_px.shape == (stored["examples"],)
    assert -stored_log_px.mean() == pytest.approx(stored["nll"], rel=1e-5)
    runs.load_run(run_dir)  # loads as it is

    out = tmp_path / "subset.json"
    argv = [str(run_dir), "--num-samples", str(stored["num_samples"]), "--elbo-samples", "1",
            "--max-examples", str(SUBSET), "--seed", str(stored["seed"]),
            "--split", stored["split"], "--output", str(out)]
    assert evaluate_script.main(argv) == 0
    subset_log_px = np.load(tmp_path / "subset.log_px.npy")
    np.testing.assert_allclose(subset_log_px, stored_log_px[:SUBSET], rtol=1e-4, atol=1e-3)
    subset = json.loads(out.read_text())
    assert abs(subset["nll"] - stored["nll"]) < 4 * subset["nll_stderr"] + 1e-6
    assert not (run_dir / "subset.json").exists()  # the committed directory is untouched


def test_the_committed_m1_plus_m2_classifier_has_its_reported_test_accuracy():
    """results/m1m2-sampled-mnist-seed0: M2's classifier on the posterior means of its M1's
    active units (results/vae-warmup) classifies the 10,000 MNIST test digits as reported."""
    import jax
    from flax import serialization

    from jaxvae.data import datasets
    from jaxvae.evaluation import latent
    from jaxvae.models import m2

    run_dir = RESULTS / "m1m2-sampled-mnist-seed0"
    results = json.loads((run_dir / "results.json").read_text())
    features, settings = results["features"], results["settings"]
    m1 = runs.load_run(RESULTS / Path(features["run"]).name)
    data = datasets.load("mnist", flatten=True)
    x = m1.model_input(data.x_test.reshape((-1,) + tuple(m1.data.example_shape)))
    means = latent.posterior_means(m1.model, m1.params, x)[:, features["active_indices"]]
    model = m2.m2(len(features["active_indices"]), 10, settings["latent_dim"],
                  tuple(settings["hidden"]), likelihood="gaussian_learned")
    params = serialization.from_bytes(m2.init(model, jax.random.key(0)),
                                      (run_dir / "params.msgpack").read_bytes())
    predicted = np.argmax(np.asarray(m2.classify(model, params, means)), -1)
    assert np.mean(predicted == data.y_test) == pytest.approx(results["m2_test_accuracy"],
                                                              abs=3e-4)


def test_the_committed_smiles_model_draws_its_committed_samples():
    """results/moses-kekule-400k-cosine: the model loads from the directory as it is, its first
    batch of 1,000 prior samples at T = 1 (key fold_in(key(seed + 1), 0)) is the samples file's
    first 1,000 lines, plain and valence-masked (the -valence directory), and each stored validity
    is the share of the 10,000 lines RDKit parses. The earlier runs' files hold what their results
    say (10,000 samples each; the constant-rate run's 30,000 begin with its 10,000)."""
    pytest.importorskip("rdkit")
    import jax
    from experiments import seqlib
    from jaxvae.data import molecules, smiles_valence

    run_dir = RESULTS / "moses-kekule-400k-cosine"
    model, params, vocab, length, results = seqlib.load_model(run_dir)
    assert results["representation"] == "kekule"
    key = jax.random.key(results["config"]["seed"] + 1)
    masked_dir = RESULTS / "moses-kekule-400k-cosine-valence"
    for directory, name, constraint in (
            (run_dir, "1.0", None),
            (masked_dir, "1.0 valence", smiles_valence.smiles_valence(vocab))):
        suffix = "" if constraint is None else "_valence"
        lines = (directory / f"samples_T1.0{suffix}.txt").read_text().split("\n")[:-1]
        assert len(lines) == 10000
        drawn = seqlib.sample_strings(model, params, vocab, length, key, 1000,
                                      constraint=constraint)
        # float summation order may differ on another CPU: nearly every row must match exactly
        assert np.mean([a == b for a, b in zip(drawn, lines)]) > 0.98
        valid = np.mean([molecules.canonical(s) is not None for s in lines])
        stored = json.loads((directory / "results.json").read_text())["metrics_by_temperature"]
        assert valid == pytest.approx(stored[name]["valid"], abs=1e-9)

    aromatic = RESULTS / "moses-smiles-400k-cosine"
    lines = (aromatic / "samples_T1.0.txt").read_text().split("\n")[:-1]
    stored = json.loads((aromatic / "results.json").read_text())["metrics"]["valid"]
    assert len(lines) == 10000 and round(stored * 10000) == 8761

    earlier = RESULTS / "moses-smiles-400k"
    lines = (earlier / "samples_T1.0.txt").read_text().split("\n")[:-1]
    stored = json.loads((earlier / "results.json").read_text())["metrics"]["valid"]
    assert len(lines) == 10000 and round(stored * 10000) == 8423
    more = (RESULTS / "moses-smiles-400k-30k" / "samples_T1.0.txt").read_text().split("\n")[:-1]
    assert len(more) == 30000 and more[:10000] == lines
    masked = json.loads((RESULTS / "moses-smiles-400k-syntax" / "results.json").read_text())
    assert masked["metrics"]["valid"] == pytest.approx(0.86, abs=5e-4)
