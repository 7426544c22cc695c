"""Importance weights and the IWAE bound against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxvae
from jaxvae import distributions
from jaxvae.data import datasets as data
from jaxvae.objectives import bounds as objectives


def _small():
    model = jaxvae.mlp_vae(hidden=(8,), latent_dim=3, data_shape=(6,))
    params = jaxvae.init(model, jax.random.key(0))
    x = (np.random.default_rng(0).uniform(size=(5, 6)) > 0.5).astype(np.float32)
    return model, params, x


def test_log_importance_weights_match_a_per_sample_computation():
    model, params, x = _small()
    key = jax.random.key(1)
    log_w_KxB = objectives.log_importance_weights(model, params, x, key, num_samples=4)
    assert log_w_KxB.shape == (4, 5)
    mean, logvar = jaxvae.encode(model, params, x)
    eps_KxBxZ = jax.random.normal(key, (4,) + mean.shape)
    for k in range(4):
        z = mean + jnp.exp(0.5 * logvar) * eps_KxBxZ[k]
        expected = (-distributions.bernoulli_nll(jaxvae.decode(model, params, z), x)
                    + distributions.standard_normal_log_prob(z)
                    - distributions.gaussian_log_prob(z, mean, logvar))
        np.testing.assert_allclose(log_w_KxB[k], expected, rtol=1e-5, atol=1e-5)


def test_iwae_bound_with_one_sample_is_the_log_weight_and_grows_with_k():
    model, params, _ = _small()
    # A posterior far from the prior and a decoder that depends strongly on z: a large gap.
    params = jax.tree.map(lambda a: a, params)
    params["encoder"]["mean"]["bias"] = params["encoder"]["mean"]["bias"] + 1.5
    params["decoder"]["out"]["kernel"] = params["decoder"]["out"]["kernel"] * 6.0
    x = (np.random.default_rng(1).uniform(size=(400, 6)) > 0.5).astype(np.float32)
    log_weights = jax.jit(objectives.log_importance_weights, static_argnums=(0, 4))
    log_w_1xB = log_weights(model, params, x, jax.random.key(2), 1)
    np.testing.assert_allclose(objectives.iwae_bound(log_w_1xB), log_w_1xB[0], rtol=1e-6)
    bounds = [float(jnp.mean(objectives.iwae_bound(log_weights(model, params, x,
                                                               jax.random.key(3), k))))
              for k in (1, 32, 1024)]
    assert bounds[0] < bounds[1] < bounds[2]


def test_process_shards_are_disjoint_and_cover_the_examples():
    shards = [data.process_shard(10, i, 3) for i in range(3)]
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(10))
    assert [len(s) for s in shards] == [4, 3, 3]
