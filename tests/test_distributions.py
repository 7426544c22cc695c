"""The formulas of jaxvae.distributions against closed forms, torch and Monte Carlo."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.test_util import check_grads

from jaxvae import distributions as D


def test_kl_is_zero_at_the_prior():
    kl_B = D.gaussian_kl(jnp.zeros((3, 5)), jnp.zeros((3, 5)))
    chex.assert_shape(kl_B, (3,))
    np.testing.assert_array_equal(kl_B, 0.0)


def test_kl_matches_the_closed_form_of_one_dimension():
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2)/2 - 1/2, summed over independent dims.
    mean = np.array([[0.3, -1.2], [2.0, 0.0]], np.float32)
    logvar = np.array([[0.5, -0.7], [0.0, 1.5]], np.float32)
    s2 = np.exp(logvar)
    expected = np.sum(-0.5 * logvar + 0.5 * (s2 + mean**2) - 0.5, axis=-1)
    np.testing.assert_allclose(D.gaussian_kl(mean, logvar), expected, rtol=1e-6)


def test_kl_matches_monte_carlo():
    mean = jnp.array([[0.5, -1.0, 0.2]])
    logvar = jnp.array([[-0.3, 0.4, -1.0]])
    z_KxZ = D.reparameterize(jax.random.key(0), jnp.broadcast_to(mean, (200_000, 3)),
                             jnp.broadcast_to(logvar, (200_000, 3)))
    mc = jnp.mean(D.gaussian_log_prob(z_KxZ, mean, logvar) - D.standard_normal_log_prob(z_KxZ))
    np.testing.assert_allclose(mc, D.gaussian_kl(mean, logvar)[0], rtol=2e-2)


def test_bernoulli_nll_equals_torch_binary_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4, 10)).astype(np.float32)
    x = rng.uniform(0, 1, (4, 10)).astype(np.float32)  # fractional targets too
    x[0] = (x[0] > 0.5)
    expected = F.binary_cross_entropy(torch.sigmoid(torch.from_numpy(logits).double()),
                                      torch.from_numpy(x).double(), reduction="none").sum(-1)
    np.testing.assert_allclose(D.bernoulli_nll(logits, x), expected.numpy(), rtol=1e-5)


@pytest.mark.parametrize("logit", [1e4, -1e4])
def test_bernoulli_nll_is_exact_at_extreme_logits(logit):
    logits = jnp.full((2, 3), logit)
    x = jnp.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    nll = D.bernoulli_nll(logits, x)
    # -log sigmoid(l) = softplus(-l); for |l| = 1e4 it is 0 on the right side, |l| on the wrong.
    right, wrong = (0, 1) if logit > 0 else (1, 0)
    assert np.isfinite(nll).all()
    np.testing.assert_allclose(nll[right], 0.0, atol=1e-6)
    np.testing.assert_allclose(nll[wrong], 3 * abs(logit), rtol=1e-7)
    grads = jax.grad(lambda l: D.bernoulli_nll(l, x).sum())(logits)
    assert np.isfinite(grads).all()


def test_softplus_is_log1p_exp_with_sigmoid_gradient_at_every_scale():
    x = jnp.array([-1e9, -200.0, -30.0, -1.0, -1e-6, 0.0, 1e-6, 1.0, 30.0, 200.0, 1e9])
    exact = np.logaddexp(0.0, np.asarray(x, np.float64))  # float64 reference
    np.testing.assert_allclose(D.softplus(x), exact, rtol=2e-7, atol=1e-37)
    np.testing.assert_allclose(D.softplus(x), jax.nn.softplus(x), rtol=2e-7)
    grad = jax.vmap(jax.grad(D.softplus))(x)
    with np.errstate(over="ignore"):  # exp(1e9) = inf: the sigmoid is then exactly 0
        sigmoid = 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))
    np.testing.assert_allclose(grad, sigmoid, rtol=1e-6, atol=1e-37)
    assert float(jax.grad(D.softplus)(0.0)) == 0.5
    assert bool(jnp.isnan(D.softplus(jnp.nan)))


def test_bernoulli_nll_sums_over_every_non_batch_axis():
    logits = jnp.linspace(-3, 3, 2 * 4 * 4 * 1).reshape(2, 4, 4, 1)
    x = jnp.full(logits.shape, 0.3)
    np.testing.assert_allclose(D.bernoulli_nll(logits, x),
                               D.bernoulli_nll(logits.reshape(2, -1), x.reshape(2, -1)),
                               rtol=1e-6)


def test_gaussian_nll_equals_half_sse_plus_constant_at_unit_variance():
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(3, 7)).astype(np.float32)
    x = rng.normal(size=(3, 7)).astype(np.float32)
    expected = 0.5 * np.sum((x - mean) ** 2, -1) + 7 / 2 * math.log(2 * math.pi)
    np.testing.assert_allclose(D.gaussian_nll(mean, x), expected, rtol=1e-5)
    logvar = 0.7
    torch_nll = F.gaussian_nll_loss(torch.from_numpy(mean), torch.from_numpy(x),
                                    torch.full((3, 7), math.exp(logvar)), full=True,
                                    reduction="none").sum(-1)
    np.testing.assert_allclose(D.gaussian_nll(mean, x, logvar), torch_nll.numpy(), rtol=1e-5)


def test_reparameterize_uses_the_key_as_given():
    mean, logvar = jnp.ones((4, 3)), jnp.full((4, 3), 2 * math.log(0.5))
    key = jax.random.key(7)
    z = D.reparameterize(key, mean, logvar)
    np.testing.assert_allclose(z, 1.0 + 0.5 * jax.random.normal(key, (4, 3)), rtol=1e-6)
    np.testing.assert_array_equal(z, D.reparameterize(key, mean, logvar))
    assert not np.allclose(z, D.reparameterize(jax.random.key(8), mean, logvar))


def test_reparameterize_takes_python_lists_as_the_arrays_they_spell():
    key = jax.random.key(3)
    expected = D.reparameterize(key, np.array([[0.5, -1.0]], np.float32),
                                np.array([[0.0, 2.0]], np.float32))
    np.testing.assert_array_equal(D.reparameterize(key, [[0.5, -1.0]], [[0.0, 2.0]]), expected)
    # integers: float32, as their float values
    z = D.reparameterize(key, [[1, 0]], [[0, 0]])
    assert z.dtype == jnp.float32
    np.testing.assert_array_equal(z, D.reparameterize(key, np.array([[1.0, 0.0]], np.float32),
                                                      np.zeros((1, 2), np.float32)))


@pytest.mark.parametrize("mean, logvar, what", [
    ([[0.5, -1.0], [2.0]], [[0.0, 0.0], [0.0]], "mean"),  # ragged
    (["a", "b"], [0.0, 0.0], "mean"),
    ([0.0, 1.0], None, "logvar"),
])
def test_reparameterize_names_a_non_numeric_or_ragged_argument(mean, logvar, what):
    with pytest.raises(TypeError, match=f"^{what} must be an array of numbers"):
        D.reparameterize(jax.random.key(0), mean, logvar)


def test_reparameterize_moments():
    z = D.reparameterize(jax.random.key(0), jnp.full((100_000, 1), 2.0),
                         jnp.full((100_000, 1), math.log(9.0)))
    np.testing.assert_allclose(jnp.mean(z), 2.0, atol=0.03)
    np.testing.assert_allclose(jnp.std(z), 3.0, rtol=0.01)


def test_gradients_through_reparameterize_pass_check_grads():
    key = jax.random.key(3)
    f = lambda mean, logvar: D.reparameterize(key, mean, logvar)
    check_grads(f, (jnp.array([[0.1, -0.4]]), jnp.array([[0.2, -1.0]])), order=2,
                modes=("fwd", "rev"), eps=1e-2)


def test_gaussian_log_prob_matches_torch_normal():
    rng = np.random.default_rng(2)
    z, mean, logvar = (rng.normal(size=(5, 4)).astype(np.float32) for _ in range(3))
    expected = torch.distributions.Normal(torch.from_numpy(mean),
                                          torch.from_numpy(np.exp(0.5 * logvar))
                                          ).log_prob(torch.from_numpy(z)).sum(-1)
    np.testing.assert_allclose(D.gaussian_log_prob(z, mean, logvar), expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(D.standard_normal_log_prob(z),
                               D.gaussian_log_prob(z, 0 * z, 0 * z), rtol=1e-6)
