"""The model interface and the loss contract: evaluation scores every model under its own prior,
posterior, likelihood and labels, and agrees with the training objective."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import evaluate as evaluate_script
from experiments import train as train_script
from experiments import visualize as visualize_script
from jaxvae import config as config_lib
from jaxvae.data import datasets as data_lib
from jaxvae.evaluation import likelihood as evaluate
from jaxvae.models import interface
from jaxvae.evaluation import latent
from jaxvae.objectives import losses
from jaxvae.models import mlp as models
from jaxvae.models import registry
from jaxvae.evaluation import repair
from jaxvae.training import runs

FAMILIES = {  # name -> TrainConfig fields; every model x prior that trains with an ELBO or IWAE
    "mlp": {},
    "diagonal": {"prior": "diagonal"},
    "mog": {"prior": "mog", "prior_components": 3},
    "vamp": {"prior": "vamp", "prior_components": 3},
    "conv": {"model": "conv", "conv_channels": (4,)},
    "flow": {"model": "flow", "flow_steps": 2},
    "ladder": {"model": "ladder", "ladder_latents": (4, 2), "ladder_hidden": (16, 16)},
    "cvae": {"model": "cvae"},
    "iwae": {"model": "iwae", "num_samples": 3},
}
STEPS, SAMPLES = 20, 32  # training steps; draws of z per test example in the comparisons


@pytest.fixture(scope="module")
def digits():
    data = data_lib.load_digits()  # 8x8 digits in [0, 1]: 64 values, labels 0..9
    train = {"x": jnp.asarray(data.x_train[:128]), "y": jnp.asarray(data.y_train[:128])}
    test = {"x": jnp.asarray(data.x_test[:32]), "y": jnp.asarray(data.y_test[:32])}
    return train, test


_TRAINED = {}


def _trained(name, digits):
    """(model, loss_fn, params) of a tiny model of the family trained STEPS Adam steps."""
    if name not in _TRAINED:
        train, _ = digits
        config = config_lib.TrainConfig.from_flat(hidden=(16,), latent_dim=4, **FAMILIES[name])
        model, loss_fn = registry.build(config, (64,))
        params = interface.init(model, jax.random.key(0))
        tx = optax.adam(3e-3)

        @jax.jit
        def step(params, opt_state, i):
            grad = jax.grad(lambda p: loss_fn(p, train, jax.random.fold_in(jax.random.key(1), i),
                                              i)[0])(params)
            updates, opt_state = tx.update(grad, opt_state)
            return optax.apply_updates(params, updates), opt_state

        opt_state = tx.init(params)
        for i in range(STEPS):
            params, opt_state = step(params, opt_state, jnp.int32(i))
        _TRAINED[name] = (model, loss_fn, params)
    return _TRAINED[name]


def _objective_recon_plus_kl(loss_fn, params, batch):
    """The training objective's recon + kl on ``batch`` for SAMPLES keys: (mean, its stderr)."""
    keys = jax.random.split(jax.random.key(7), SAMPLES)
    metrics = jax.jit(jax.vmap(lambda k: loss_fn(params, batch, k, jnp.int32(STEPS))[1]))(keys)
    values = np.asarray(metrics["recon"] + metrics["kl"], np.float64)
    return values.mean(), values.std(ddof=1) / np.sqrt(SAMPLES)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_evaluation_elbo_is_the_training_objective_and_the_nll_is_below_it(name, digits):
    model, loss_fn, params = _trained(name, digits)
    _, test = digits
    neg_elbo = -float(np.mean(evaluate.elbo(model, params, test, jax.random.key(3),
                                            num_samples=SAMPLES)))
    expected, stderr = _objective_recon_plus_kl(loss_fn, params, test)
    # Two Monte Carlo estimates of the same expectation over the same 32 examples, each from
    # SAMPLES draws per example: the difference has standard deviation ~ sqrt(2) * stderr
    # (stderr: the spread of the batch-mean recon + kl over keys). 5 of those plus float
    # rounding; a model scored under another prior or posterior is off by many nats.
    assert abs(neg_elbo - expected) < 5 * np.sqrt(2) * stderr + 1e-3, (neg_elbo, expected,
                                                                        stderr)
    nll = -float(np.mean(evaluate.log_likelihood(model, params, test, jax.random.key(4),
                                                 SAMPLES)))
    assert nll < neg_elbo, (nll, neg_elbo)
    assert np.isfinite(nll)


def test_learned_priors_are_not_scored_as_the_standard_normal(digits):
    # The evaluation of a VampPrior model differs from the same networks under N(0, I).
    model, _, params = _trained("vamp", digits)
    _, test = digits
    own = np.asarray(interface.log_weights(model, params, test, jax.random.key(5), 4))
    # The same encoder and decoder under N(0, I): the same z, log p(x | z) and log q(z | x).
    standard = models.VAE(model.hidden, model.latent_dim, model.data_shape, model.torch_init,
                          model.likelihood)
    params_standard = {k: v for k, v in params.items() if k != "prior"}
    other = np.asarray(interface.log_weights(standard, params_standard, test,
                                             jax.random.key(5), 4))
    assert np.abs(own - other).mean() > 1.0


def test_conditional_and_ladder_models_evaluate_with_labels_and_every_layer(digits):
    model, _, params = _trained("cvae", digits)
    _, test = digits
    with pytest.raises(ValueError, match="conditioned on labels"):
        evaluate.log_likelihood(model, params, test["x"], jax.random.key(0), 2)
    shuffled = {"x": test["x"], "y": (test["y"] + 3) % 10}
    right = evaluate.log_likelihood(model, params, test, jax.random.key(0), 8)
    wrong = evaluate.log_likelihood(model, params, shuffled, jax.random.key(0), 8)
    assert not np.allclose(right, wrong)  # the labels reach the encoder and the decoder
    ladder_model, _, ladder_params = _trained("ladder", digits)
    terms = interface.log_weight_terms(ladder_model, ladder_params, test, jax.random.key(1), 3)
    assert terms.log_px.shape == terms.log_pz.shape == terms.log_qz.shape == (3, 32)


def test_log_weights_of_the_flow_include_the_log_determinants(digits):
    model, _, params = _trained("flow", digits)
    _, test = digits
    key = jax.random.key(2)
    terms = interface.log_weight_terms(model, params, test, key, 1)
    # At K = 1 (eps = normal(key, (1, B, Z)), the same numbers as normal(key, (B, Z))) the
    # log-weight is minus the one-sample loss terms: recon + (log q_0 - log det - log p).
    elbo_terms = interface.elbo_terms(model, params, test, key)
    np.testing.assert_allclose(-terms.log_weights()[0], elbo_terms.recon_B + elbo_terms.kl_B,
                               rtol=1e-5, atol=1e-3)
    assert float(jnp.abs(elbo_terms.extras["log_det"]).mean()) > 0


def test_vqvae_elbo_is_its_objective_and_its_nll_is_refused(digits):
    _, test = digits
    config = config_lib.TrainConfig.from_flat(model="vqvae", conv_channels=(4,), num_codes=8,
                                              code_dim=2)
    model, loss_fn = registry.build(config, (64,))
    params = interface.init(model, jax.random.key(0))
    with pytest.raises(ValueError, match="no learned prior over its codes"):
        evaluate.log_likelihood(model, params, test, jax.random.key(0), 4)
    with pytest.raises(ValueError, match="no learned prior over its codes"):
        evaluate.anomaly_score(model, params, test, jax.random.key(0), 4)
    with pytest.raises(ValueError, match="discrete latent grid"):
        interface.encode(model, params, test)
    _, metrics = loss_fn(params, test, jax.random.key(0), 0)
    neg_elbo = -np.asarray(evaluate.elbo(model, params, test, jax.random.key(0)))
    # Deterministic: the nearest codes and KL = h * w * log K under the uniform code prior.
    np.testing.assert_allclose(neg_elbo.mean(), metrics["recon"] + metrics["kl"], rtol=1e-5)


def test_every_objective_has_the_one_loss_contract(digits):
    train, _ = digits
    for name in ("mlp", "flow", "ladder"):
        model, loss_fn, params = _trained(name, digits)
        loss, metrics = loss_fn(params, train, jax.random.key(0), jnp.int32(0))
        assert loss.shape == () and {"loss", "recon", "kl"} <= set(metrics)
    ladder_model = _trained("ladder", digits)[0]
    assert {"kl_1", "kl_2"} <= set(losses.make_elbo_loss(ladder_model)(
        _trained("ladder", digits)[2], train, jax.random.key(0), 0)[1])
    with pytest.raises(ValueError, match="free bits need a KL per latent dimension"):
        losses.make_elbo_loss(_trained("flow", digits)[0], free_bits=0.5)


def test_the_standard_mlp_vae_keeps_the_reference_parameter_tree():
    for likelihood in ("bernoulli", "gaussian"):
        model = models.mlp_vae((400,), 20, (784,), likelihood=likelihood)
        shapes = jax.tree.map(lambda a: a.shape, jax.eval_shape(
            lambda: interface.init(model, jax.random.key(0))))
        assert shapes == {
            "encoder": {"mlp": {"hidden_0": {"kernel": (784, 400), "bias": (400,)}},
                        "mean": {"kernel": (400, 20), "bias": (20,)},
                        "logvar": {"kernel": (400, 20), "bias": (20,)}},
            "decoder": {"mlp": {"hidden_0": {"kernel": (20, 400), "bias": (400,)}},
                        "out": {"kernel": (400, 784), "bias": (784,)}}}


def test_evaluate_script_scores_a_vamp_run_under_its_own_prior(tmp_path, capsys):
    outdir = tmp_path / "vamp"
    argv = ["--dataset", "digits", "--epochs", "3", "--hidden", "32", "--latent-dim", "4",
            "--batch-size", "64", "--prior", "vamp", "--prior-components", "5", "--quiet",
            "--outdir", str(outdir)]
    assert train_script.main(argv) == 0
    assert evaluate_script.main([str(outdir), "--num-samples", "32", "--elbo-samples", "32",
                                 "--max-examples", "64"]) == 0
    result = json.loads((outdir / "evaluation.json").read_text())
    assert result["prior"] == "vamp" and result["nll"] < -result["elbo"]
    # The script's numbers are the interface's on the run's model, labels and keys.
    loaded = runs.load_run(outdir)
    batch = {"x": loaded.data.x_test[:64], "y": loaded.data.y_test[:64]}
    elbo_key = jax.random.split(jax.random.key(0))[1]
    expected = np.mean(np.asarray(evaluate.elbo(loaded.model, loaded.params, batch, elbo_key,
                                                num_samples=32)), dtype=np.float64)
    assert result["elbo"] == pytest.approx(expected, rel=1e-6)
    # ... and the -ELBO is the training objective's recon + kl on the same examples.
    objective, stderr = _objective_recon_plus_kl(
        registry.build(loaded.config, (64,)).loss_fn, loaded.params,
        {"x": jnp.asarray(batch["x"]), "y": jnp.asarray(batch["y"])})
    assert abs(-result["elbo"] - objective) < 5 * np.sqrt(2) * stderr + 1e-3
    assert "evaluation.json" in capsys.readouterr().out
    figures = tmp_path / "figures"
    assert visualize_script.main([str(outdir), "--outdir", str(figures), "--tsne-points", "20",
                                  "--steps", "3"]) == 0
    for name in ("reconstructions", "prior_samples", "interpolation", "traversal", "latent_pca"):
        assert (figures / f"{name}.png").read_bytes().startswith(b"\x89PNG"), name


@pytest.mark.parametrize("name", ["cvae", "flow", "ladder"])
def test_repair_and_latent_views_use_the_models_own_posterior_and_labels(name, digits):
    model, _, params = _trained(name, digits)
    _, test = digits
    batch = {"x": test["x"][:4], "y": test["y"][:4]}
    observed = jnp.ones_like(batch["x"]).at[:, :20].set(0.0)
    filled = repair.inpaint(model, params, batch, observed, jax.random.key(0), num_steps=2)
    np.testing.assert_array_equal(filled[:, 20:], batch["x"][:, 20:])
    restored = repair.encode_decode(model, params, batch)
    expected = jax.nn.sigmoid(interface.reconstruct(model, params, batch))
    np.testing.assert_allclose(restored, expected, rtol=1e-6)
    mean_Z = interface.encode(model, params, batch).mean[0]
    label = int(batch["y"][0]) if model.conditional else None
    rows = latent.traversal(model, params, mean_Z, np.linspace(-1, 1, 3), label=label)
    assert rows.shape == (model.latent_dim, 3, 64) and np.all((rows > 0) & (rows < 1))


def test_vqvae_repairs_by_its_codes_and_has_no_latent_views(digits):
    _, test = digits
    model, _ = registry.build(config_lib.TrainConfig.from_flat(model="vqvae", conv_channels=(4,),
                                                               num_codes=8, code_dim=2), (64,))
    params = interface.init(model, jax.random.key(0))
    observed = jnp.ones_like(test["x"][:4]).at[:, :20].set(0.0)
    filled = repair.inpaint(model, params, test["x"][:4], observed, jax.random.key(0), 2)
    np.testing.assert_array_equal(filled[:, 20:], test["x"][:4, 20:])
    with pytest.raises(ValueError, match="decodes code grids"):
        latent.traversal(model, params, jnp.zeros(2), np.zeros(3))


@pytest.mark.parametrize("name", ["vamp", "conv", "ladder"])
def test_init_creates_what_flax_init_creates_without_running_the_model(name):
    """``interface.init`` (Flax's lazy_init on the input's shape) gives bit for bit the
    parameters of ``model.init`` on a batch of one zero example."""
    config = config_lib.TrainConfig.from_flat(hidden=(16,), latent_dim=4, **FAMILIES[name])
    model, _ = registry.build(config, (64,))
    key = jax.random.key(5)
    expected = model.init(key, jnp.zeros((1, 64)))["params"]
    got = interface.init(model, key)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_model_functions_run_as_one_program_per_shape_and_trace_inside_jit():
    """Outside jit, ``encode`` and the interface's functions compile one program per model,
    method and shapes (a repeated call reuses it, an int argument such as K is static); inside
    jit they trace into the caller's program; a model that cannot be hashed runs op by op. All
    three give the values of Flax's ``apply`` run op by op."""
    import jaxvae
    model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(4,))
    params = interface.init(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 4))
    expected = model.apply({"params": params}, x, method=type(model).encode)
    compiled = interface._compiled_method("encode", (), 1)
    before = compiled._cache_size()
    for _ in range(2):
        np.testing.assert_allclose(jaxvae.encode(model, params, x), expected, rtol=1e-6)
    assert compiled._cache_size() == before + 1
    jaxvae.encode(model, params, x[:2])  # another batch size: another program
    assert compiled._cache_size() == before + 2
    traced = jax.jit(lambda p, x: jaxvae.encode(model, p, x))(params, x)
    np.testing.assert_allclose(traced, expected, rtol=1e-6)
    assert compiled._cache_size() == before + 2
    for k in (1, 5):  # K static: the draws' shape
        assert jaxvae.log_weights(model, params, {"x": x}, jax.random.key(2), k).shape == (k, 3)
    unhashable = jaxvae.VAE(hidden=[8], latent_dim=2, data_shape=(4,))  # a list field
    with pytest.raises(TypeError):
        hash(unhashable)
    np.testing.assert_allclose(jaxvae.encode(unhashable, params, x), expected, rtol=1e-6)
