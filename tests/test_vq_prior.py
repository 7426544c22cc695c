"""The autoregressive prior over a VQ-VAE's codes (jaxvae.models.code_prior) and its script."""

import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_files import one_error_line, snapshot

import jaxvae
from jaxvae.evaluation import likelihood
from jaxvae.models import code_prior
from jaxvae.models import interface
from jaxvae.models import vq
from jaxvae.objectives import losses
from jaxvae.training import runs


def tiny_prior(num_codes=5, grid_shape=(3, 3), num_layers=2):
    return code_prior.code_prior(num_codes, grid_shape, embed_dim=8, num_layers=num_layers,
                                 num_heads=2, mlp_dim=16, dropout=0.0)


@pytest.fixture(scope="module")
def prior_and_params():
    prior = tiny_prior()
    return prior, code_prior.init(prior, jax.random.key(0))


# --------------------------------------------------------------------------------- masking


def test_logits_do_not_depend_on_the_code_at_or_after_their_position(prior_and_params):
    prior, params = prior_and_params
    length = prior.num_positions
    codes = jax.random.randint(jax.random.key(1), (4, length), 0, prior.num_codes)
    forward = jax.jit(lambda c: code_prior.logits(prior, params, c.reshape(4, 3, 3)).reshape(
        4, length, prior.num_codes))
    base = np.asarray(forward(codes))
    for t in range(length):
        # every code from position t on changed (shifted by 1..K-1 modulo K)
        shift = jax.random.randint(jax.random.fold_in(jax.random.key(2), t), (4, length), 1,
                                   prior.num_codes)
        later = jnp.arange(length)[None, :] >= t
        perturbed = jnp.where(later, (codes + shift) % prior.num_codes, codes)
        out = np.asarray(forward(perturbed))
        np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1])
        if t + 1 < length:  # the perturbation reaches the positions after t
            assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-4


def test_jacobian_of_the_logits_is_strictly_lower_triangular(prior_and_params):
    prior, params = prior_and_params
    length, k = prior.num_positions, prior.num_codes
    onehot_1xLxK = jax.nn.one_hot(jax.random.randint(jax.random.key(3), (1, length), 0, k), k)

    def logits_LxK(onehot):
        return prior.apply({"params": params}, onehot[None],
                           method=code_prior.CodePrior.logits_from_onehot)[0]

    # (L, K, L, K): d logits_ik / d onehot_jk'
    jac = jax.jit(jax.jacrev(logits_LxK))(onehot_1xLxK[0])
    dependence_LxL = np.asarray(jnp.sum(jnp.abs(jac), axis=(1, 3)))
    upper = np.triu(np.ones((length, length), bool))  # j >= i
    np.testing.assert_array_equal(dependence_LxL[upper], 0.0)
    # and every earlier code reaches every later position (no blind spot)
    assert (dependence_LxL[~upper] > 0).all()


# -------------------------------------------------------------------------------- sampling


def test_sampling_shapes_range_and_determinism_by_key(prior_and_params):
    prior, params = prior_and_params
    a = code_prior.sample_codes(prior, params, jax.random.key(7), 6)
    b = code_prior.sample_codes(prior, params, jax.random.key(7), 6)
    c = code_prior.sample_codes(prior, params, jax.random.key(8), 6)
    assert a.shape == (6, 3, 3) and a.dtype == jnp.int32
    assert int(a.min()) >= 0 and int(a.max()) < prior.num_codes
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="n \\(the number of samples\\)"):
        code_prior.sample_codes(prior, params, jax.random.key(7), 0)


def test_ancestral_samples_follow_the_prior_joint_distribution():
    prior = tiny_prior(num_codes=2, grid_shape=(1, 2), num_layers=1)
    params = code_prior.init(prior, jax.random.key(4))
    # a prior that is far from uniform, and whose second code depends on the first
    params = jax.tree.map(lambda a: 8.0 * a, params)
    grids = jnp.array([[[0, 0]], [[0, 1]], [[1, 0]], [[1, 1]]])
    exact = np.exp(-np.asarray(jax.jit(lambda p: code_prior.code_nll(prior, p, grids))(params)))
    np.testing.assert_allclose(exact.sum(), 1.0, rtol=1e-5)
    n = 4000
    codes = np.asarray(code_prior.sample_codes(prior, params, jax.random.key(5), n))
    freq = np.bincount(codes[:, 0, 0] * 2 + codes[:, 0, 1], minlength=4) / n
    np.testing.assert_allclose(freq, exact, atol=4 * np.sqrt(0.25 / n))


# ---------------------------------------------------------------------------- bits per code


def test_bits_per_code_matches_a_hand_computation():
    prior = tiny_prior(num_codes=3, grid_shape=(1, 2), num_layers=1)
    params = code_prior.init(prior, jax.random.key(0))
    # logits = the output bias at every position: p = (1/2, 1/4, 1/4) whatever came before
    params = {**params, "out": {"kernel": jnp.zeros_like(params["out"]["kernel"]),
                                "bias": jnp.log(jnp.array([0.5, 0.25, 0.25]))}}
    codes = jnp.array([[[0, 2]], [[1, 2]]])
    # -log p: ln 2 + ln 4 = 3 ln 2 nats (1.5 bits per code); ln 4 + ln 4 = 4 ln 2 (2 bits)
    nll = np.asarray(code_prior.code_nll(prior, params, codes))
    np.testing.assert_allclose(nll, [3 * math.log(2), 4 * math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(code_prior.bits_per_code(nll, 2), [1.5, 2.0], rtol=1e-6)
    loss, metrics = losses.make_code_prior_loss(prior, train=False)(params, {"x": codes},
                                                                    jax.random.key(0), 0)
    np.testing.assert_allclose(loss, 3.5 * math.log(2), rtol=1e-6)
    np.testing.assert_allclose(metrics["bits_per_code"], 1.75, rtol=1e-6)
    # the zero-logit prior is uniform: log2 K bits per code
    uniform = {**params, "out": {**params["out"], "bias": jnp.zeros(3)}}
    np.testing.assert_allclose(code_prior.bits_per_code(
        code_prior.code_nll(prior, uniform, codes), 2), math.log2(3), rtol=1e-6)


def test_prior_sizes_are_validated():
    with pytest.raises(ValueError, match="num_heads \\(3\\) must divide embed_dim \\(8\\)"):
        code_prior.code_prior(4, (2, 2), embed_dim=8, num_heads=3)
    with pytest.raises(ValueError, match="num_codes must be an int >= 2"):
        code_prior.code_prior(1, (2, 2))
    with pytest.raises(ValueError, match="dropout must be a number in \\[0, 1\\)"):
        code_prior.code_prior(4, (2, 2), dropout=1.0)


# --------------------------------------------------------------------------- VQ-VAE + prior


@pytest.fixture(scope="module")
def joined():
    model = vq.vqvae((4,), num_codes=5, code_dim=2, data_shape=(64,))  # 8x8 -> 4x4 grids
    prior = code_prior.for_vqvae(model, embed_dim=8, num_layers=1, num_heads=2, mlp_dim=16)
    vq_params = jaxvae.init(model, jax.random.key(0))
    prior_params = code_prior.init(prior, jax.random.key(1))
    both = code_prior.with_prior(model, prior)
    x = jax.random.uniform(jax.random.key(2), (3, 64))
    return model, prior, vq_params, prior_params, both, x


def test_sample_with_the_prior_decodes_the_prior_codes(joined):
    model, prior, vq_params, prior_params, both, _ = joined
    params = code_prior.join_params(vq_params, prior_params)
    out = jaxvae.sample(both, params, jax.random.key(9), 4)
    codes = code_prior.sample_codes(prior, prior_params, jax.random.key(9), 4)
    expected = model.apply({"params": vq_params}, codes, method=vq.VQVAE.decode_codes)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert both.sample_title != model.sample_title


def test_bound_with_the_prior_is_recon_plus_the_codes_nll(joined):
    model, prior, vq_params, prior_params, both, x = joined
    params = code_prior.join_params(vq_params, prior_params)
    terms = interface.elbo_terms(both, params, x, jax.random.key(0))
    vq_terms = interface.elbo_terms(model, vq_params, x, jax.random.key(0))
    codes = code_prior.encode_codes(model, vq_params, x)
    np.testing.assert_allclose(terms.recon_B, vq_terms.recon_B, rtol=1e-6)
    np.testing.assert_allclose(terms.kl_B, code_prior.code_nll(prior, prior_params, codes),
                               rtol=1e-6)
    # a point-mass posterior: the K-sample estimate is the same bound for every K
    log_px = likelihood.log_likelihood(both, params, x, jax.random.key(0), 3)
    np.testing.assert_allclose(-np.asarray(log_px), terms.recon_B + terms.kl_B, rtol=1e-5)
    with pytest.raises(ValueError, match="no learned prior over its codes"):
        likelihood.log_likelihood(model, vq_params, x, jax.random.key(0), 3)


def test_with_prior_refuses_a_prior_over_another_grid(joined):
    model = joined[0]
    with pytest.raises(ValueError, match="train the prior on this VQ-VAE's codes"):
        code_prior.with_prior(model, tiny_prior(num_codes=5, grid_shape=(3, 3)))


# ------------------------------------------------------------------------------- the script


@pytest.fixture(scope="module")
def tiny_vq_run(tmp_path_factory):
    """A one-epoch VQ-VAE run on the 8x8 digits: 4x4 grids of 8 codes."""
    from experiments import train as train_script

    run_dir = tmp_path_factory.mktemp("vq_run")
    assert train_script.main(["--dataset", "digits", "--model", "vqvae", "--epochs", "1",
                              "--conv-channels", "4", "--num-codes", "8", "--code-dim", "2",
                              "--outdir", str(run_dir), "--quiet"]) == 0
    return run_dir


PRIOR_FLAGS = ["--epochs", "2", "--embed-dim", "8", "--num-heads", "2", "--mlp-dim", "16",
               "--num-layers", "1", "--num-samples", "4", "--quiet"]


def test_script_trains_a_prior_samples_and_evaluate_uses_it(tiny_vq_run, tmp_path, capsys):
    from experiments import evaluate, vq_prior

    outdir = tiny_vq_run / "prior"
    assert vq_prior.main([str(tiny_vq_run), "--outdir", str(outdir)] + PRIOR_FLAGS) == 0
    for name in ("prior.json", "prior_params.msgpack", "metrics.jsonl", "results.json",
                 "samples.png", "samples.npz"):
        assert (outdir / name).stat().st_size > 0, name
    results = json.loads((outdir / "results.json").read_text())
    records = [json.loads(line) for line in (outdir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and results["epochs_run"] == 2
    assert results["uniform_bits_per_code"] == pytest.approx(3.0)
    assert results["test_bits_per_code"] < 3.0
    assert results["test_bits_per_code"] == pytest.approx(
        results["test_nll_nats_per_grid"] / (16 * math.log(2)))
    uniform_kl = 16 * math.log(8)
    assert results["test_bound_uniform_prior"] == pytest.approx(results["test_recon"]
                                                                + uniform_kl)
    assert results["test_bound_learned_prior"] == pytest.approx(
        results["test_recon"] + results["test_nll_nats_per_grid"], rel=1e-4)
    samples = np.load(outdir / "samples.npz")
    assert samples["uniform"].shape == samples["prior"].shape == (4, 64)
    assert samples["prior_codes"].shape == (4, 4, 4)

    # evaluate.py: refused without the prior, the same bound with it
    capsys.readouterr()
    assert evaluate.main([str(tiny_vq_run), "--output", str(tmp_path / "e.json")]) == 2
    err = one_error_line(capsys)
    assert err.startswith("error: the VQ-VAE has no learned prior over its codes")
    assert "--prior" in err
    assert evaluate.main([str(tiny_vq_run), "--prior", str(outdir),
                          "--output", str(tmp_path / "e.json")]) == 0
    evaluation = json.loads((tmp_path / "e.json").read_text())
    assert evaluation["nll"] == pytest.approx(results["test_bound_learned_prior"], rel=1e-5)
    assert evaluation["gap"] == pytest.approx(0.0, abs=1e-3)
    assert evaluation["num_samples"] == 1 and evaluation["code_prior"] == str(outdir)

    # a prior of another VQ-VAE is refused
    other = tmp_path / "other_prior"
    shutil.copytree(outdir, other)
    saved = json.loads((other / "prior.json").read_text())
    (other / "prior.json").write_text(json.dumps({**saved, "vqvae_params_sha256": "0" * 64}))
    capsys.readouterr()
    assert evaluate.main([str(tiny_vq_run), "--prior", str(other),
                          "--output", str(tmp_path / "e2.json")]) == 2
    assert "trained on the codes of another VQ-VAE" in one_error_line(capsys)

    # parameters of other shapes than the sizes in prior.json are refused, not loaded
    (other / "prior.json").write_text(json.dumps({**saved, "prior": {**saved["prior"],
                                                                     "mlp_dim": 32}}))
    assert evaluate.main([str(tiny_vq_run), "--prior", str(other),
                          "--output", str(tmp_path / "e3.json")]) == 2
    assert "prior_params.msgpack has parameter shapes that do not fit the prior of" in \
        one_error_line(capsys)


def test_script_refuses_a_used_outdir_and_the_run_directory(tiny_vq_run, tmp_path, capsys):
    from experiments import vq_prior

    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    run_files = snapshot(tiny_vq_run)
    capsys.readouterr()
    assert vq_prior.main([str(tiny_vq_run), "--outdir", str(used)] + PRIOR_FLAGS) == 2
    assert "already holds a prior (notes.txt)" in one_error_line(capsys)
    assert vq_prior.main([str(tiny_vq_run), "--outdir", str(used), "--overwrite"]
                         + PRIOR_FLAGS) == 2
    assert "--overwrite deletes only directories this script wrote" in one_error_line(capsys)
    assert snapshot(used) == {"notes.txt": b"mine"}
    assert vq_prior.main([str(tiny_vq_run), "--outdir", str(tiny_vq_run), "--overwrite"]
                         + PRIOR_FLAGS) == 2
    assert "lies inside --outdir" in one_error_line(capsys)
    assert snapshot(tiny_vq_run) == run_files


COMMITTED = Path(__file__).resolve().parent.parent / "results" / "vqvae-prior"


@pytest.mark.skipif(not (COMMITTED / "prior" / "prior.json").exists(),
                    reason="no committed VQ-VAE prior")
def test_the_committed_prior_loads_and_reproduces_its_bits_per_code():
    from experiments import vq_prior

    run = runs.load_run(COMMITTED)
    both, params = runs.load_code_prior(COMMITTED / "prior", run)
    results = json.loads((COMMITTED / "prior" / "results.json").read_text())
    codes = vq_prior.split_codes(run.model, run.params, vq_prior.scored_splits(run)[1])
    nll = np.asarray(code_prior.code_nll(both.prior, params["prior"], jnp.asarray(codes)))
    assert code_prior.bits_per_code(nll.mean(), both.prior.num_positions) == pytest.approx(
        results["test_bits_per_code"], rel=1e-4)
