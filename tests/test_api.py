"""The functional API: sample, reconstruct, interpolate, validation of inputs and configs."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae
from jaxvae.training import fit as trainer
from jaxvae.training import step


@pytest.fixture(scope="module")
def ref():
    model = jaxvae.reference_vae()
    return model, jaxvae.init(model, jax.random.key(0))


def test_reference_vae_shapes(ref):
    model, params = ref
    x = jnp.full((5, 784), 0.5)
    mean, logvar = jaxvae.encode(model, params, x)
    chex.assert_shape([mean, logvar], (5, 20))
    chex.assert_shape(jaxvae.decode(model, params, mean), (5, 784))


def test_sample_draws_from_the_prior_with_the_given_key(ref):
    model, params = ref
    key = jax.random.key(1)
    out = jaxvae.sample(model, params, key, 6)
    chex.assert_shape(out, (6, 784))
    z = jax.random.normal(key, (6, 20))
    np.testing.assert_array_equal(out, jaxvae.decode(model, params, z))


def test_reconstruct_without_a_key_decodes_the_posterior_mean(ref):
    model, params = ref
    x = jnp.linspace(0, 1, 2 * 784).reshape(2, 784)
    mean, _ = jaxvae.encode(model, params, x)
    np.testing.assert_array_equal(jaxvae.reconstruct(model, params, x),
                                  jaxvae.decode(model, params, mean))
    noisy = jaxvae.reconstruct(model, params, x, jax.random.key(2))
    assert not np.allclose(noisy, jaxvae.reconstruct(model, params, x))


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolate_ends_at_the_two_posterior_means(ref, spherical):
    model, params = ref
    x0, x1 = jnp.zeros(784), jnp.ones(784)
    path = jaxvae.interpolate(model, params, x0, x1, 5, spherical=spherical)
    chex.assert_shape(path, (5, 784))
    mean, _ = jaxvae.encode(model, params, jnp.stack([x0, x1]))
    ends = jaxvae.decode(model, params, mean)
    np.testing.assert_allclose(path[0], ends[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(path[-1], ends[1], rtol=1e-5, atol=1e-5)


def test_slerp_keeps_the_norm_between_equal_norm_points():
    z0, z1 = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    path = jaxvae.models.mlp.slerp(z0, z1, jnp.linspace(0, 1, 7))
    np.testing.assert_allclose(jnp.linalg.norm(path, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(jaxvae.models.mlp.slerp(z0, 2 * z0, jnp.array([0.5])), [[1.5, 0.0]])


def test_interpolate_needs_two_steps(ref):
    with pytest.raises(ValueError, match="steps must be >= 2"):
        jaxvae.interpolate(*ref, jnp.zeros(784), jnp.ones(784), 1)


def test_loss_with_beta_zero_is_the_reconstruction_term(ref):
    model, params = ref
    x = jnp.full((3, 784), 0.2)
    key = jax.random.key(5)
    loss0, m0 = jaxvae.loss(model, params, x, key, beta=0.0)
    loss1, m1 = jaxvae.loss(model, params, x, key, beta=1.0)
    np.testing.assert_allclose(loss0, m0["recon"], rtol=1e-6)
    np.testing.assert_allclose(loss1, m1["recon"] + m1["kl"], rtol=1e-6)


def test_gaussian_likelihood_loss_uses_the_unit_variance_nll(ref):
    model, params = ref
    x = jnp.full((2, 784), 3.0)  # unbounded data is fine for the Gaussian likelihood
    key = jax.random.key(0)
    _, metrics = jaxvae.loss(model, params, x, key, likelihood="gaussian")
    mean, logvar = jaxvae.encode(model, params, x)
    out = jaxvae.decode(model, params, jaxvae.reparameterize(key, mean, logvar))
    np.testing.assert_allclose(metrics["recon"], jnp.mean(jaxvae.gaussian_nll(out, x)), rtol=1e-6)


@pytest.mark.parametrize("latent_dim, error, match", [
    (0, ValueError, "latent_dim must be >= 1"),
    (2.5, TypeError, "latent_dim must be an int"),
])
def test_mlp_vae_rejects_bad_sizes(latent_dim, error, match):
    with pytest.raises(error, match=match):
        jaxvae.mlp_vae(latent_dim=latent_dim)


@pytest.mark.parametrize("x, error, match", [
    (np.zeros(784), ValueError, r"shape \(num_examples, ...\)"),
    (np.zeros((0, 784)), ValueError, "holds no examples"),
    (np.array([["a"] * 3]), TypeError, "numeric array"),
    (np.full((2, 784), np.nan), ValueError, "NaN or Inf"),
    (np.full((2, 784), 255.0), ValueError, r"outside \[0, 1\].*gaussian likelihood"),
    (np.zeros((2, 10)), ValueError, r"examples of shape \(10,\), the model expects \(784,\)"),
])
def test_check_data_names_the_problem(x, error, match):
    with pytest.raises(error, match=match):
        jaxvae.validation.check_data(x, example_shape=(784,))


@pytest.mark.parametrize("change, error, match", [
    ({"lr": 0.0}, ValueError, "learning rate must be > 0"),
    ({"lr": -1e-3}, ValueError, "learning rate must be > 0"),
    ({"latent_dim": 0}, ValueError, "latent_dim must be >= 1"),
    ({"epochs": 0}, ValueError, "epochs must be >= 1"),
    ({"batch_size": 2.0}, TypeError, "batch_size must be an int"),
    ({"beta": float("nan")}, ValueError, "beta must be finite"),
    ({"likelihood": "poisson"}, ValueError, "unknown likelihood 'poisson'"),
    ({"model": "gan"}, ValueError, "unknown model 'gan'"),
])
def test_validate_config_names_the_field(change, error, match):
    with pytest.raises(error, match=match):
        jaxvae.validate_config(jaxvae.TrainConfig().replace(**change))


def test_fit_rejects_a_batch_larger_than_the_data_before_training():
    rng = np.random.default_rng(0)
    data = jaxvae.Dataset(rng.uniform(size=(10, 4)).astype(np.float32), np.zeros(10, np.int32),
                          rng.uniform(size=(5, 4)).astype(np.float32), np.zeros(5, np.int32))
    config = jaxvae.TrainConfig.from_flat(batch_size=11, epochs=1, hidden=(4,), latent_dim=2)
    with pytest.raises(ValueError, match="batch size 11 is larger than the training set"):
        trainer.fit(config, data)


def test_fit_rejects_nan_in_the_data_before_training():
    x = np.full((10, 4), 0.5, np.float32)
    x[3, 2] = np.nan
    data = jaxvae.Dataset(x, np.zeros(10, np.int32), x[:5], np.zeros(5, np.int32))
    with pytest.raises(ValueError, match=r"training data contains NaN or Inf.*index \(3, 2\)"):
        trainer.fit(jaxvae.TrainConfig.from_flat(batch_size=4, epochs=1), data)


def test_public_api_is_exported():
    for name in jaxvae.__all__:
        assert hasattr(jaxvae, name), name


def test_fit_with_microbatches_trains_and_checks_the_divisor():
    patterns = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], np.float32)
    x = patterns[np.random.default_rng(0).integers(2, size=40)]  # learnable: two patterns
    data = jaxvae.Dataset(x, np.zeros(40, np.int32), x[:8], np.zeros(8, np.int32))
    base = dict(hidden=(8,), latent_dim=2, batch_size=16, epochs=10, lr=3e-2)
    result = trainer.fit(jaxvae.TrainConfig.from_flat(microbatch_size=8, **base), data)
    assert len(result.history) == 10
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] - 0.2
    assert int(result.state.step) == 30  # 2 full (split) batches and 1 of 8 per epoch
    with pytest.raises(ValueError, match=r"microbatch_size 6 does not divide the batch size 16; "
                                         r"choose a divisor \(e.g. 4\)"):
        trainer.fit(jaxvae.TrainConfig.from_flat(microbatch_size=6, **base), data)
    # a request far above the batch size suggests the batch size (found without counting to it)
    with pytest.raises(ValueError, match=r"size 16; choose a divisor \(e.g. 16\)"):
        step.check_microbatch_size(2**31, 16)
    with pytest.raises(ValueError, match="--feed device, one process"):
        trainer.fit(jaxvae.TrainConfig.from_flat(microbatch_size=8, feed="stream", **base), data)
