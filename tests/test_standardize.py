"""Per-feature standardization for the Gaussian likelihoods: the statistics, the change of
variables, what ``auto`` chooses, training on a table in the thousands, and the scripts that
load such a run (samples, reconstructions and NLL in the data's own units)."""

import json

import jax
import numpy as np
import pytest
from scipy import stats as scipy_stats

import jaxvae
from experiments import evaluate as evaluate_script
from experiments import train as train_script
from experiments import visualize as visualize_script
from jaxvae import likelihoods
from jaxvae.data import datasets
from jaxvae.data import standardize
from jaxvae.evaluation import likelihood as evaluate
from jaxvae.models import interface
from jaxvae.training import early_stopping
from jaxvae.training import loop
from jaxvae.training import fit as trainer
from jaxvae.training import runs


def big_table(n=150, d=6, seed=0):
    """A table whose columns lie around 5,000 (std ~100-250), one of them constant."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    x = 5000.0 + 100.0 * z @ rng.normal(size=(2, d)) + 10.0 * rng.normal(size=(n, d))
    x[:, 1] = 4200.0
    return x


def test_statistics_invert_exactly_and_constant_columns_are_only_centred():
    x = big_table().astype(np.float32)
    stats = standardize.fit(x)
    np.testing.assert_allclose(stats.mean, x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.scale[[0, 2, 3]], x.astype(np.float64).std(0)[[0, 2, 3]],
                               rtol=1e-6)
    assert stats.scale[1] == 1.0  # the constant column: centred, never divided by 0
    u = standardize.apply(stats, x)
    assert u.dtype == np.float32 and np.isfinite(u).all()
    np.testing.assert_allclose(u.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(u[:, [0, 2, 3]].std(0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(standardize.invert(stats, u), x, rtol=1e-6)
    assert standardize.log_det(stats) == pytest.approx(np.log(x.astype(np.float64).std(0)[
        [0, 2, 3, 4, 5]]).sum(), rel=1e-6)


@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian_learned"])
def test_the_nll_in_data_units_is_the_change_of_variables_of_the_closed_form(likelihood):
    """-log p_x(x) = -log p_u((x - m) / s) + sum log s, against scipy's N(x | m + s mu, s^2 var)."""
    rng = np.random.default_rng(1)
    x = big_table(n=8)
    stats = standardize.fit(x)
    u = standardize.apply(stats, x)
    mu_u = rng.normal(size=u.shape).astype(np.float32)
    if likelihood == "gaussian":
        out, sigma_u = mu_u, np.ones_like(mu_u)
    else:
        raw = rng.normal(size=u.shape).astype(np.float32)
        out = np.stack([mu_u, raw], axis=-1)
        sigma_u = np.exp(0.5 * np.asarray(likelihoods.gaussian_logvar(out), np.float64))
    nll_u = np.asarray(likelihoods.reconstruction_nll(likelihood, out, u), np.float64)
    nll_x = nll_u + standardize.log_det(stats)
    mean, scale = stats.mean.astype(np.float64), stats.scale.astype(np.float64)
    closed_form = -scipy_stats.norm.logpdf(x, loc=mean + scale * mu_u,
                                           scale=scale * sigma_u).sum(axis=1)
    np.testing.assert_allclose(nll_x, closed_form, rtol=1e-5)


def test_auto_standardizes_user_files_with_a_gaussian_likelihood_and_values_beyond_0_1():
    x = big_table()
    assert standardize.resolve("auto", "t.csv", "gaussian", x) == "feature"
    assert standardize.resolve("auto", "t.npy", "gaussian_global", x) == "feature"
    for name, lik, data in (("t.csv", "bernoulli", x), ("t.csv", "logistic", x),
                            ("mnist5k", "gaussian", x),  # a dataset of images, never
                            ("t.npy", "gaussian", x / x.max())):  # intensities in [0, 1]
        assert standardize.resolve("auto", name, lik, data) == "none"
    assert standardize.resolve("feature", "mnist5k", "gaussian", x / x.max()) == "feature"
    assert standardize.resolve("none", "t.csv", "gaussian", x) == "none"
    with pytest.raises(ValueError, match="for the Gaussian likelihoods"):
        standardize.check_mode("feature", "bernoulli")
    with pytest.raises(ValueError, match="exclude each other"):
        standardize.check_mode("feature", "gaussian", dequantize=True)
    with pytest.raises(ValueError, match="unknown standardize mode"):
        jaxvae.validate_config(jaxvae.TrainConfig.from_flat(standardize="zscore"))


def test_fit_takes_the_statistics_from_the_training_part_only():
    """Test data far from the training data, and a validation hold-out: neither moves them."""
    rng = np.random.default_rng(2)
    x_train = (5000.0 + 50.0 * rng.normal(size=(80, 4))).astype(np.float32)
    x_test = (9000.0 + 500.0 * rng.normal(size=(20, 4))).astype(np.float32)
    data = datasets.Dataset(x_train, np.full(80, -1, np.int32), x_test,
                            np.full(20, -1, np.int32))
    config = jaxvae.TrainConfig.from_flat(dataset="table.csv", likelihood="gaussian", epochs=2,
                                          batch_size=16, hidden=(8,), latent_dim=2, patience=5,
                                          validation_fraction=0.25)
    result = trainer.fit(config, data)
    train_part, _ = early_stopping.split_validation(data, 0.25, config.run.seed)
    expected = standardize.fit(train_part.x_train)
    assert len(train_part.x_train) == 60
    np.testing.assert_array_equal(result.standardization.mean, expected.mean)
    np.testing.assert_array_equal(result.standardization.scale, expected.scale)
    assert all(np.isfinite(r["test_loss"]) and r["train_skipped"] == 0 for r in result.history)
    # the same data unstandardized: every step overflows (what happened before standardization)
    with pytest.raises(loop.TrainingDiverged, match="--standardize feature"):
        trainer.fit(config.replace(standardize="none", epochs=1), data)


def test_fit_uses_the_statistics_it_is_given():
    """A multi-process run passes the statistics of the whole training set, not its block's."""
    x = big_table(n=40, d=3).astype(np.float32)
    data = datasets.Dataset(x[:32], np.full(32, -1, np.int32), x[32:], np.full(8, -1, np.int32))
    given = standardize.Standardization(np.full(3, 4000.0, np.float32),
                                        np.full(3, 500.0, np.float32))
    config = jaxvae.TrainConfig.from_flat(dataset="t.npy", likelihood="gaussian", epochs=1, batch_size=8,
                                          hidden=(4,), latent_dim=1)
    result = trainer.fit(config, data, standardization=given)
    assert result.standardization is given
    # the reported loss is in x's units: the offset is the given statistics' 3 log 500
    first = result.history[0]
    assert first["test_loss"] - first["test_kl"] == pytest.approx(first["test_recon"], rel=1e-5)
    assert first["test_recon"] > 3 * np.log(500.0)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A CSV around 5,000 trained with the Gaussian likelihood by the train script."""
    root = tmp_path_factory.mktemp("table")
    x = big_table()
    np.savetxt(root / "big.csv", x, delimiter=",", fmt="%.3f")
    outdir = root / "run"
    code = train_script.main(["--dataset", str(root / "big.csv"), "--likelihood", "gaussian",
                              "--epochs", "30", "--hidden", "32", "--latent-dim", "2",
                              "--batch-size", "16", "--outdir", str(outdir), "--quiet"])
    assert code == 0
    return outdir, np.loadtxt(root / "big.csv", delimiter=",")


def test_a_table_in_the_thousands_trains_to_a_finite_loss_and_stores_its_statistics(
        table_run):
    outdir, x = table_run
    records = [json.loads(line) for line in (outdir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 30
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["test_loss"])
               and r["train_skipped"] == 0 for r in records)
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["config"]["data"]["standardize"] == "feature"  # what auto chose
    stats = standardize.load(outdir / standardize.FILE)
    loaded = runs.load_run(outdir)
    np.testing.assert_array_equal(stats.mean, standardize.fit(loaded.data.x_train).mean)
    # the loss is reported in the data's units: sum log s above the standardized loss
    # (~ 5 log 150 = 25 nats), far below the untransformed loss (~ D * 5000**2 / 2)
    assert records[-1]["test_loss"] < records[0]["test_loss"]
    assert 0 < records[-1]["test_loss"] < 1e3


def test_samples_and_reconstructions_come_back_in_the_data_units(table_run):
    outdir, x = table_run
    loaded = runs.load_run(outdir)
    out = interface.sample(loaded.model, loaded.params, jax.random.key(0), 2000)
    samples = loaded.data_output(np.asarray(likelihoods.likelihood_mean("gaussian", out)))
    mean, std = x.mean(0), x.std(0)
    assert np.all(np.abs(samples.mean(0) - mean) < 0.5 * np.maximum(std, 1.0))
    np.testing.assert_allclose(samples[:, 1], 4200.0, atol=1.0)  # the constant column
    x_test = loaded.data.x_test
    recon = loaded.data_output(np.asarray(likelihoods.likelihood_mean(
        "gaussian", interface.reconstruct(loaded.model, loaded.params,
                                          {"x": loaded.model_input(x_test)},
                                          jax.random.key(1)))))
    # a 2-D code of a rank-2 table: reconstructions closer than the column means are
    assert np.mean((recon - x_test) ** 2) < np.mean((mean - x_test) ** 2)


def test_evaluate_reports_the_nll_in_data_units(table_run):
    outdir, _ = table_run
    result = evaluate_script.run(evaluate_script.build_parser().parse_args(
        [str(outdir), "--num-samples", "20", "--elbo-samples", "4"]))
    loaded = runs.load_run(outdir)
    stats = loaded.standardization
    ll_key, _ = jax.random.split(jax.random.key(0))
    log_pu = np.asarray(evaluate.log_likelihood(
        loaded.model, loaded.params, {"x": standardize.apply(stats, loaded.data.x_test)},
        ll_key, 20), np.float64)
    assert result["standardized"] is True
    assert result["nll"] == pytest.approx(-log_pu.mean() + standardize.log_det(stats),
                                          rel=1e-5)
    assert json.loads((outdir / "evaluation.json").read_text())["nll"] == result["nll"]


def test_visualize_encodes_standardized_data(table_run, tmp_path):
    outdir, _ = table_run
    written = visualize_script.run(visualize_script.build_parser().parse_args(
        [str(outdir), "--outdir", str(tmp_path / "fig"), "--tsne-points", "10"]))
    assert any(w.endswith("latent_pca.png") for w in written)


def test_feature_with_the_bernoulli_likelihood_is_one_error_line(tmp_path, capsys):
    code = train_script.main(["--standardize", "feature", "--epochs", "1",
                              "--outdir", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: standardize 'feature' is for the Gauss")
    assert not (tmp_path / "out").exists()


def test_a_run_without_its_statistics_is_refused_by_name(table_run, tmp_path):
    import shutil

    outdir, _ = table_run
    copy = tmp_path / "copy"
    shutil.copytree(outdir, copy)
    (copy / standardize.FILE).unlink()
    with pytest.raises(ValueError, match="standardization.npz not found"):
        runs.load_run(copy)
