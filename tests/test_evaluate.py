"""The importance-sampled log-likelihood, the ELBO and anomaly scores (jaxvae.evaluation.likelihood)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import jaxvae
from jaxvae.evaluation import likelihood as evaluate
from jaxvae.objectives import bounds as objectives

D, Z = 6, 3


@pytest.fixture(scope="module")
def small():
    """A small MLP VAE with a posterior far from the prior and a decoder that depends strongly on
    z, so that the IWAE bound is far above the ELBO."""
    model = jaxvae.mlp_vae(hidden=(8,), latent_dim=Z, data_shape=(D,))
    params = jaxvae.init(model, jax.random.key(0))
    params["encoder"]["mean"]["bias"] = params["encoder"]["mean"]["bias"] + 1.5
    params["decoder"]["out"]["kernel"] = params["decoder"]["out"]["kernel"] * 6.0
    x = (np.random.default_rng(0).uniform(size=(10, D)) > 0.5).astype(np.float32)
    return model, params, x


def _by_hand(model, params, x, key, num_samples):
    """iwae_bound of the log-weights of each example, drawn one sample at a time."""
    out = []
    for i in range(len(x)):
        example_key = jax.random.fold_in(key, i)
        log_w_K = jnp.stack([objectives.log_importance_weights(
            model, params, x[i:i + 1], jax.random.fold_in(example_key, k), 1)[0, 0]
            for k in range(num_samples)])
        out.append(objectives.iwae_bound(log_w_K[:, None])[0])
    return np.array(out)


def test_estimate_is_the_iwae_bound_of_the_documented_samples(small):
    model, params, x = small
    key = jax.random.key(1)
    estimate = evaluate.log_likelihood(model, params, x[:4], key, num_samples=7, chunk_size=3)
    assert estimate.shape == (4,) and estimate.dtype == jnp.float32
    np.testing.assert_allclose(estimate, _by_hand(model, params, x[:4], key, 7), rtol=1e-6,
                               atol=1e-5)


def test_one_sample_estimate_is_the_one_sample_elbo_with_the_same_key(small):
    model, params, x = small
    key = jax.random.key(2)
    estimate = evaluate.log_likelihood(model, params, x, key, num_samples=1)
    np.testing.assert_array_equal(estimate, evaluate.elbo(model, params, x, key,
                                                          analytic_kl=False))
    # The same z by hand: log p(x|z) + log p(z) - log q(z|x), z = mean + std * eps.
    mean, logvar = jaxvae.encode(model, params, x)
    eps = np.stack([jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), 0), (Z,))
                    for i in range(len(x))])
    z = mean + jnp.exp(0.5 * logvar) * eps
    expected = (-jaxvae.bernoulli_nll(jaxvae.decode(model, params, z), x)
                + jaxvae.distributions.standard_normal_log_prob(z) - jaxvae.distributions.gaussian_log_prob(z, mean, logvar))
    np.testing.assert_allclose(estimate, expected, rtol=1e-5, atol=1e-5)
    # The analytic-KL ELBO uses the same z for its reconstruction term.
    analytic = -(jaxvae.bernoulli_nll(jaxvae.decode(model, params, z), x)
                 + jaxvae.gaussian_kl(mean, logvar))
    np.testing.assert_allclose(evaluate.elbo(model, params, x, key), analytic, rtol=1e-5,
                               atol=1e-5)


def test_chunk_and_batch_sizes_do_not_change_the_result(small):
    model, params, x = small
    key = jax.random.key(3)
    reference = evaluate.log_likelihood(model, params, x, key, 13, chunk_size=13, batch_size=10)
    # Chunks of 1 (divides K = 13) and of 5 (does not: 3 chunks, the last padded by 2);
    # batches of 4 and of 3 (neither divides the 10 examples).
    for chunk_size, batch_size in ((1, 4), (5, 3), (5, None)):  # None: the row budget
        chunked = evaluate.log_likelihood(model, params, x, key, 13, chunk_size=chunk_size,
                                          batch_size=batch_size)
        np.testing.assert_allclose(chunked, reference, rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(
        evaluate.elbo(model, params, x, key, num_samples=13, chunk_size=5, batch_size=3),
        evaluate.elbo(model, params, x, key, num_samples=13), rtol=1e-6, atol=2e-6)


def test_estimate_is_above_the_elbo_and_grows_with_k(small):
    model, params, _ = small
    x = (np.random.default_rng(1).uniform(size=(200, D)) > 0.5).astype(np.float32)
    key = jax.random.key(4)
    estimates = {k: evaluate.log_likelihood(model, params, x, key, k) for k in (1, 10, 100)}
    means = [float(jnp.mean(v)) for v in estimates.values()]
    assert means[0] < means[1] < means[2]
    elbo = float(jnp.mean(evaluate.elbo(model, params, x, key, num_samples=10)))
    assert elbo < means[1]
    # At K = 1 the estimate is an unbiased estimate of the ELBO: within a few standard errors.
    one = estimates[1]
    assert abs(means[0] - elbo) < 4 * float(jnp.std(one)) / np.sqrt(len(x))


class LinearGaussianVAE(nn.Module):
    """p(z) = N(0, I), p(x | z) = N(W z + b, I); q(z | x) = N(A x + c, diag(exp(logvar))).

    Then p(x) = N(b, W W^T + I) in closed form, and the exact posterior is
    N(S W^T (x - b), S) with S = (I + W^T W)^-1.
    """

    latent_dim: int
    data_shape: tuple

    def setup(self):
        d, z = self.data_shape[0], self.latent_dim
        zeros = nn.initializers.zeros
        self.W = self.param("W", zeros, (d, z))
        self.b = self.param("b", zeros, (d,))
        self.A = self.param("A", zeros, (z, d))
        self.c = self.param("c", zeros, (z,))
        self.logvar = self.param("logvar", zeros, (z,))

    def encode(self, x_BxD):
        mean_BxZ = x_BxD @ self.A.T + self.c[None]
        return mean_BxZ, jnp.broadcast_to(self.logvar[None], mean_BxZ.shape)

    def decode(self, z_BxZ):
        return z_BxZ @ self.W.T + self.b[None]

    def __call__(self, x_BxD):
        return self.decode(self.encode(x_BxD)[0])


def _linear_gaussian(w_DxZ):
    d, z = w_DxZ.shape
    rng = np.random.default_rng(5)
    b_D = rng.normal(size=d)
    precision_ZxZ = np.eye(z) + w_DxZ.T @ w_DxZ
    s_ZxZ = np.linalg.inv(precision_ZxZ)
    # The exact posterior mean and marginal variances: q is the posterior when S is diagonal;
    # otherwise it misses the correlation, which leaves a gap between the ELBO and log p(x).
    variance = np.diag(s_ZxZ)
    a_ZxD = s_ZxZ @ w_DxZ.T
    params = {"W": w_DxZ, "b": b_D, "A": a_ZxD, "c": -a_ZxD @ b_D, "logvar": np.log(variance)}
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
    x_BxD = rng.normal(size=(20, d)) * 2.0 + b_D
    log_px = multivariate_normal(b_D, w_DxZ @ w_DxZ.T + np.eye(d)).logpdf(x_BxD)
    return LinearGaussianVAE(z, (d,)), params, x_BxD.astype(np.float32), log_px


def test_exact_posterior_gives_log_px_whatever_the_samples():
    # Orthogonal columns: the posterior covariance is diagonal, so q is exact and every w is p(x).
    q, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(5, 2)))
    model, params, x, log_px = _linear_gaussian(q * np.array([2.0, 0.5]))
    estimate = evaluate.log_likelihood(model, params, x, jax.random.key(9), 9,
                                       likelihood="gaussian")
    np.testing.assert_allclose(estimate, log_px, atol=1e-4, rtol=1e-5)


def test_estimate_matches_the_closed_form_log_likelihood_of_a_linear_gaussian_model():
    w = np.random.default_rng(7).normal(size=(5, 2)) * 1.5
    model, params, x, log_px = _linear_gaussian(w)
    key = jax.random.key(8)
    elbo = evaluate.elbo(model, params, x, key, likelihood="gaussian", num_samples=1000)
    assert np.mean(log_px - elbo) > 0.15  # a diagonal q: the ELBO is well below log p(x)
    estimate = evaluate.log_likelihood(model, params, x, key, 5000, likelihood="gaussian")
    np.testing.assert_allclose(estimate, log_px, atol=0.05)
    assert abs(np.mean(estimate - log_px)) < 0.02


def test_one_compilation_per_input_shape(small):
    model, params, x = small
    evaluate.log_likelihood(model, params, x, jax.random.key(0), 13, chunk_size=5, batch_size=3)
    before = evaluate._estimate._cache_size()
    for seed in range(3):
        evaluate.log_likelihood(model, params, x + 0.0, jax.random.key(seed), 13, chunk_size=5,
                                batch_size=3)
    # Settings that give the same chunks and batches (at most 6 -> 3 chunks of 5) share it.
    evaluate.log_likelihood(model, params, x, jax.random.key(0), 13, chunk_size=6, batch_size=3)
    assert evaluate._estimate._cache_size() == before


def test_anomaly_scores_are_the_negative_estimates(small):
    model, params, x = small
    key = jax.random.key(9)
    np.testing.assert_allclose(evaluate.anomaly_score(model, params, x, key, 13),
                               -evaluate.log_likelihood(model, params, x, key, 13), rtol=1e-6)
    np.testing.assert_allclose(evaluate.anomaly_score(model, params, x, key, 13, score="elbo"),
                               -evaluate.elbo(model, params, x, key, num_samples=13), rtol=1e-6)
    assert jaxvae.anomaly_score is evaluate.anomaly_score
    assert jaxvae.log_likelihood is evaluate.log_likelihood and jaxvae.elbo is evaluate.elbo


@pytest.mark.parametrize("kwargs, error, message", [
    ({"num_samples": 0}, ValueError, "num_samples must be >= 1, got 0"),
    ({"num_samples": 2.5}, TypeError, "num_samples must be an int"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    ({"batch_size": -1}, ValueError, "batch_size must be >= 1"),
    ({"likelihood": "poisson"}, ValueError, "unknown likelihood 'poisson'"),
    ({"batch": np.zeros((3, 5), np.float32)}, ValueError,
     "x has examples of shape (5,), the model expects (6,)"),
    ({"batch": np.zeros(6, np.float32)}, ValueError, "with a batch axis"),
    ({"batch": np.full((2, 6), 2.0, np.float32)}, ValueError, "outside [0, 1]"),
])
def test_bad_inputs_fail_with_a_clear_message(small, kwargs, error, message):
    model, params, x = small
    args = {"batch": x, "num_samples": 3, **kwargs}
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        evaluate.log_likelihood(model, params, key=jax.random.key(0), **args)


def test_unknown_anomaly_score_is_refused(small):
    model, params, x = small
    with pytest.raises(ValueError, match="unknown anomaly score 'kl'"):
        evaluate.anomaly_score(model, params, x, jax.random.key(0), 2, score="kl")


def test_default_batch_size_fits_the_row_budget_of_the_backend():
    assert evaluate.default_batch_size(250, "cpu") == 16  # 4,000 of 4,096 rows
    assert evaluate.default_batch_size(5000, "cpu") == 1  # never below one example
    assert evaluate.default_batch_size(250, "gpu") == 262
    assert evaluate.default_batch_size(250) == evaluate.default_batch_size(
        250, jax.default_backend())
