"""Objectives, priors and likelihoods: KL schedules, free bits, priors, likelihoods, IWAE, the conditional VAE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch

import jaxvae
from jaxvae import distributions, likelihoods
from jaxvae.models import conditional
from jaxvae.models import mlp as models
from jaxvae.models import priors
from jaxvae.models import registry
from jaxvae.objectives import losses, schedules
from jaxvae.training import step as train
from jaxvae.training import fit as trainer
from jaxvae.models import builders

D, Z = 16, 2


def _config(**kw):
    return jaxvae.TrainConfig.from_flat(hidden=(16,), latent_dim=Z, **kw)


def _batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, 256, size=(n, D)) / 255.0).astype(np.float32)
    return {"x": x, "y": rng.integers(0, 10, size=n).astype(np.int32)}


# ------------------------------------------------------------------------------ schedules


def _fu_reference(n_iter, n_cycle, ratio, start=0.0, stop=1.0):
    """frange_cycle_linear of Fu et al. 2019 (their published code), in numpy."""
    weights = np.ones(n_iter) * stop
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            weights[int(i + c * period)] = v
            v += step
            i += 1
    return weights


@pytest.mark.parametrize("n_iter, cycles, ratio", [(100, 4, 0.5), (120, 3, 0.25), (60, 1, 1.0)])
def test_cyclical_schedule_matches_fu_et_al(n_iter, cycles, ratio):
    weight = jax.jit(jax.vmap(schedules.cyclical_schedule(n_iter, cycles, ratio)))
    np.testing.assert_allclose(weight(jnp.arange(n_iter)), _fu_reference(n_iter, cycles, ratio),
                               atol=1e-6)
    np.testing.assert_allclose(weight(jnp.arange(n_iter, n_iter + 5)), 1.0)  # after the run


def test_linear_warmup_and_constant_schedules():
    w = schedules.linear_schedule(10)
    np.testing.assert_allclose([w(s) for s in (0, 5, 10, 1000)], [0.0, 0.5, 1.0, 1.0])
    assert float(schedules.constant_schedule()(123)) == 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="linear"), "kl_warmup_steps must be >= 1"),
    (dict(name="cyclical", total_steps=10, ramp_fraction=0.0), r"kl_ramp_fraction must be in \(0, 1\]"),
    (dict(name="cyclical", total_steps=3, cycles=4), "kl_cycles .4. cannot exceed"),
    (dict(name="cosine"), "unknown KL schedule 'cosine'"),
])
def test_bad_schedules_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        schedules.make_kl_schedule(**kwargs)


# ------------------------------------------------------------------------------ free bits


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_free_bits_never_lets_a_dimension_fall_below_its_floor(scale):
    kl_BxZ = scale * jax.random.exponential(jax.random.key(0), (64, 8))
    floor = 0.5 * float(jnp.median(jnp.mean(kl_BxZ, 0)))
    term, term_Z = schedules.free_bits_kl(kl_BxZ, floor)
    assert bool(jnp.all(term_Z >= floor))
    np.testing.assert_allclose(term_Z, np.maximum(floor, np.mean(np.asarray(kl_BxZ), 0)),
                               rtol=1e-6)
    np.testing.assert_allclose(term, np.sum(term_Z), rtol=1e-6)


def test_free_bits_gradient_is_zero_below_the_floor_and_the_mean_above():
    kl_BxZ = jnp.array([[0.1, 2.0, 0.3], [0.2, 4.0, 0.9]])  # batch means 0.15, 3.0, 0.6
    grad = jax.grad(lambda k: schedules.free_bits_kl(k, 0.5)[0])(kl_BxZ)
    np.testing.assert_allclose(grad, [[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]])


def test_free_bits_above_every_kl_leave_only_the_reconstruction_gradient():
    model = builders.make_model(_config(), (D,))
    params = models.init(model, jax.random.key(0))
    batch, key = _batch(), jax.random.key(1)
    floored = losses.make_elbo_loss(model, free_bits=1e6)
    recon_only = losses.make_elbo_loss(model, beta=0.0)
    grad = jax.jit(jax.grad(lambda p: floored(p, batch, key, 0)[0]
                            - recon_only(p, batch, key, 0)[0]))(params)
    jax.tree.map(lambda g: np.testing.assert_allclose(g, 0.0, atol=1e-6), grad)
    loss, metrics = floored(params, batch, key, 0)
    np.testing.assert_allclose(loss, metrics["recon"] + 1e6 * Z, rtol=1e-6)
    assert metrics["kl"] < 1e6  # the reported KL is the true one, not the floor


# ----------------------------------------------------------------- special cases of the loss


def test_standard_prior_elbo_loss_is_the_reference_loss_to_the_bit():
    ref = jaxvae.mlp_vae((16,), Z, (D,))
    params = models.init(ref, jax.random.key(0))
    model = builders.make_model(_config(), (D,))  # same parameter tree as models.VAE
    assert (jax.tree.structure(models.init(model, jax.random.key(0)))
            == jax.tree.structure(params))
    batch, key = _batch(), jax.random.key(2)
    for beta in (1.0, 0.25):
        expected, m_ref = jaxvae.loss(ref, params, batch["x"], key, beta=beta)
        got, m = losses.make_elbo_loss(model, beta=beta)(params, batch, key, 0)
        assert float(got) == float(expected)
        assert float(m["kl"]) == float(m_ref["kl"]) and float(m["recon"]) == float(m_ref["recon"])
    # beta = 1 is the plain VAE: loss = recon + kl
    loss, m = losses.make_elbo_loss(model)(params, batch, key, 0)
    np.testing.assert_allclose(loss, m["recon"] + m["kl"], rtol=1e-6)


def test_linear_schedule_scales_the_kl_term_by_its_weight():
    model = builders.make_model(_config(), (D,))
    params = models.init(model, jax.random.key(0))
    loss_fn = losses.make_elbo_loss(model, beta=2.0, kl_schedule=schedules.linear_schedule(8))
    batch, key = _batch(), jax.random.key(3)
    for step, w in ((0, 0.0), (2, 0.25), (8, 1.0), (50, 1.0)):
        loss, m = loss_fn(params, batch, key, jnp.int32(step))
        np.testing.assert_allclose(m["kl_weight"], 2.0 * w)
        np.testing.assert_allclose(loss, m["recon"] + 2.0 * w * m["kl"], rtol=1e-6)


# ------------------------------------------------------------------------------------ priors


def test_one_component_mixture_prior_equals_the_gaussian_prior():
    rng = np.random.default_rng(0)
    mean, logvar = rng.normal(size=(1, 3)), rng.normal(size=(1, 3))
    mixture = priors.Mixture(jnp.array([0.7]), jnp.asarray(mean), jnp.asarray(logvar))
    z = jnp.asarray(rng.normal(size=(4, 5, 3)))
    np.testing.assert_allclose(priors.mixture_log_prob(z, mixture),
                               distributions.gaussian_log_prob(z, mean[None], logvar[None]),
                               rtol=1e-6)
    standard = priors.Mixture(jnp.zeros(1), jnp.zeros((1, 3)), jnp.zeros((1, 3)))
    np.testing.assert_allclose(priors.mixture_log_prob(z, standard),
                               distributions.standard_normal_log_prob(z), rtol=1e-6)
    # A one-component mog VAE whose component is N(0, I) has the standard VAE's expected KL.
    mog = builders.make_model(_config(prior="mog", prior_components=1), (D,))
    params = models.init(mog, jax.random.key(0))
    params["prior"] = {"logits": jnp.zeros(1), "mean": jnp.zeros((1, Z)),
                       "logvar": jnp.zeros((1, Z))}
    batch = _batch(4)
    kl_mc = jnp.mean(jax.jit(jax.vmap(lambda k: builders.elbo_terms(mog, params, batch, k).kl_B))(
        jax.random.split(jax.random.key(1), 4000)), 0)
    mean_q, logvar_q = models.encode(mog, params, batch["x"])
    np.testing.assert_allclose(kl_mc, distributions.gaussian_kl(mean_q, logvar_q), atol=0.04)


def test_mixture_log_prob_matches_scipy():
    rng = np.random.default_rng(1)
    logits, mean, logvar = rng.normal(size=3), rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    z = rng.normal(size=(6, 2))
    pi = np.exp(logits) / np.exp(logits).sum()
    dens = sum(pi[k] * scipy.stats.multivariate_normal(mean[k], np.diag(np.exp(logvar[k]))).pdf(z)
               for k in range(3))
    got = priors.mixture_log_prob(jnp.asarray(z), priors.Mixture(*map(jnp.asarray,
                                                                      (logits, mean, logvar))))
    np.testing.assert_allclose(got, np.log(dens), rtol=1e-5)
    # extreme: a point far from every component stays finite (logsumexp)
    far = priors.mixture_log_prob(jnp.full((1, 2), 1e3), priors.Mixture(
        *map(jnp.asarray, (logits, mean, logvar))))
    assert bool(jnp.isfinite(far).all())


def test_diagonal_prior_kl_matches_torch_and_monte_carlo():
    model = builders.make_model(_config(prior="diagonal"), (D,))
    params = models.init(model, jax.random.key(0))
    params["prior"] = {"mean": jnp.array([[0.5, -1.0]]), "logvar": jnp.array([[0.3, -0.7]])}
    batch = _batch(4)
    terms = builders.elbo_terms(model, params, batch, jax.random.key(0))
    mean_q, logvar_q = models.encode(model, params, batch["x"])
    q = torch.distributions.Normal(torch.tensor(np.asarray(mean_q), dtype=torch.float64),
                                   torch.tensor(np.exp(0.5 * np.asarray(logvar_q)),
                                                dtype=torch.float64))
    p = torch.distributions.Normal(torch.tensor([0.5, -1.0], dtype=torch.float64),
                                   torch.tensor(np.exp(0.5 * np.array([0.3, -0.7]))))
    expected = torch.distributions.kl_divergence(q, p).sum(-1).numpy()
    np.testing.assert_allclose(terms.kl_B, expected, rtol=1e-5)
    z_SxBxZ = q.sample((200000,))
    mc = (q.log_prob(z_SxBxZ) - p.log_prob(z_SxBxZ)).sum(-1).mean(0).numpy()
    np.testing.assert_allclose(terms.kl_B, mc, atol=0.01)


def _quadrature_kl(mean_q, logvar_q, log_p):
    """KL(q || p) for a 1-D Gaussian q by the trapezoid rule on a fine grid (numpy, float64)."""
    sd = math.exp(0.5 * logvar_q)
    z = np.linspace(mean_q - 12 * sd, mean_q + 12 * sd, 20001)
    log_q = scipy.stats.norm(mean_q, sd).logpdf(z)
    return np.trapezoid(np.exp(log_q) * (log_q - log_p(z)), z)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_mixture_prior_monte_carlo_kl_matches_quadrature(prior):
    config = _config(prior=prior, prior_components=3).replace(latent_dim=1)
    model = builders.make_model(config, (D,))
    params = models.init(model, jax.random.key(4))
    batch = _batch(3)
    mixture = jax.tree.map(np.asarray, model.apply({"params": params},
                                                   method=model.prior_mixture))
    pi = np.exp(mixture.logits_K) / np.exp(mixture.logits_K).sum()

    def log_p(z):
        dens = sum(pi[k] * scipy.stats.norm(mixture.mean_KxZ[k, 0],
                                            math.exp(0.5 * mixture.logvar_KxZ[k, 0])).pdf(z)
                   for k in range(3))
        return np.log(dens)

    mean_q, logvar_q = jax.tree.map(np.asarray, models.encode(model, params, batch["x"]))
    expected = [_quadrature_kl(float(mean_q[b, 0]), float(logvar_q[b, 0]), log_p)
                for b in range(3)]
    kl_SxB = jax.jit(jax.vmap(lambda k: builders.elbo_terms(model, params, batch, k).kl_B))(
        jax.random.split(jax.random.key(5), 20000))
    se = np.std(kl_SxB, 0) / math.sqrt(kl_SxB.shape[0])
    np.testing.assert_array_less(np.abs(np.mean(kl_SxB, 0) - np.asarray(expected)), 4 * se + 1e-4)


def test_learned_prior_samples_follow_the_prior():
    model = builders.make_model(_config(prior="diagonal"), (D,))
    params = models.init(model, jax.random.key(0))
    params["prior"] = {"mean": jnp.array([[3.0, -2.0]]), "logvar": jnp.array([[0.0, -2.0]])}
    z = model.apply({"params": params}, jax.random.key(1), 20000, method=model.sample_latent)
    np.testing.assert_allclose(jnp.mean(z, 0), [3.0, -2.0], atol=0.03)
    np.testing.assert_allclose(jnp.std(z, 0), [1.0, math.exp(-1.0)], rtol=0.03)


# ------------------------------------------------------------------------------- likelihoods


def test_gaussian_learned_nll_matches_scipy():
    rng = np.random.default_rng(0)
    mu, raw, x = rng.normal(size=(3, 5)), 3 * rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    out = jnp.stack([jnp.asarray(mu), jnp.asarray(raw)], -1)
    logvar = np.asarray(likelihoods.gaussian_logvar(out))
    assert logvar.min() >= likelihoods.GAUSSIAN_LOGVAR_MIN
    assert logvar.max() <= likelihoods.GAUSSIAN_LOGVAR_MAX
    expected = -scipy.stats.norm(mu, np.exp(0.5 * logvar)).logpdf(x).sum(-1)
    np.testing.assert_allclose(likelihoods.gaussian_learned_nll(out, jnp.asarray(x)), expected,
                               rtol=1e-5)
    # inside the bounds the raw output is the log-variance (up to the softplus tails)
    np.testing.assert_allclose(likelihoods.soft_bound(jnp.array([-2.0, 0.0]), -7.0, 2.0),
                               [-2.0, 0.0], atol=0.15)


def test_unit_variance_gaussian_is_half_the_sse_plus_a_constant():
    rng = np.random.default_rng(0)
    mean, x = rng.normal(size=(2, 10)), rng.normal(size=(2, 10))
    nll = distributions.gaussian_nll(jnp.asarray(mean), jnp.asarray(x))
    np.testing.assert_allclose(nll, 0.5 * ((x - mean) ** 2).sum(-1) + 5 * math.log(2 * math.pi),
                               rtol=1e-6)


def test_gaussian_global_decoder_shares_one_learned_variance():
    model = builders.make_model(_config(likelihood="gaussian_global"), (D,))
    params = models.init(model, jax.random.key(0))
    assert params["output_logvar"].shape == ()
    params["output_logvar"] = jnp.float32(-1.5)
    out = models.decode(model, params, jnp.ones((3, Z)))
    assert out.shape == (3, D, 2)
    np.testing.assert_array_equal(out[..., 1], -1.5)


def _logistic_reference(x, loc, log_scale):
    """The discretized logistic's bin probabilities from scipy's logistic CDF (float64)."""
    h = 0.5 / 255
    cdf = lambda v: scipy.stats.logistic.cdf(v, loc=loc, scale=np.exp(log_scale))
    upper = np.where(x > 1 - h, 1.0, cdf(x + h))
    lower = np.where(x < h, 0.0, cdf(x - h))
    return np.log(upper - lower)


def test_discretized_logistic_matches_scipy_and_sums_to_one():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4, 50)) / 255.0
    loc, log_scale = rng.uniform(-0.2, 1.2, size=(4, 50)), rng.uniform(-4, 0, size=(4, 50))
    got = likelihoods.discretized_logistic_log_prob(jnp.asarray(x), jnp.asarray(loc),
                                                    jnp.asarray(log_scale))
    np.testing.assert_allclose(got, _logistic_reference(x, loc, log_scale), rtol=1e-4, atol=1e-5)
    grid = jnp.arange(256) / 255.0
    for loc0, ls0 in ((0.3, -3.0), (0.0, -6.0), (1.0, 0.5), (0.5, -8.0)):
        total = jnp.sum(jnp.exp(likelihoods.discretized_logistic_log_prob(
            grid, jnp.full(256, loc0), jnp.full(256, ls0))))
        np.testing.assert_allclose(total, 1.0, rtol=1e-4)
    # logistic_nll sums -log P over the data dimensions of out = [loc, raw log-scale]
    out = jnp.stack([jnp.asarray(loc), jnp.asarray(log_scale)], -1)
    expected = -_logistic_reference(x, loc, np.asarray(likelihoods.logistic_log_scale(out))).sum(-1)
    np.testing.assert_allclose(likelihoods.logistic_nll(out, jnp.asarray(x)), expected, rtol=1e-4)


def test_discretized_logistic_is_finite_with_gradients_at_extremes():
    x = jnp.array([[0.0, 1.0, 128 / 255, 3 / 255]])
    value_and_grad = jax.jit(jax.value_and_grad(lambda o: likelihoods.logistic_nll(o, x)[0]))
    for loc, raw in ((50.0, -50.0), (-50.0, 20.0), (128 / 255, -50.0), (0.5, 50.0)):
        out = jnp.stack([jnp.full((1, 4), loc), jnp.full((1, 4), raw)], -1)
        nll, grad = value_and_grad(out)
        assert bool(jnp.isfinite(nll)) and nll >= 0 and bool(jnp.isfinite(grad).all())


def test_bits_per_dim_is_nats_over_d_log_2():
    np.testing.assert_allclose(likelihoods.bits_per_dim(jnp.float32(784 * math.log(2) * 3), 784),
                               3.0, rtol=1e-6)


# --------------------------------------------------------------------------------------- IWAE


def test_iwae_with_one_sample_is_the_monte_carlo_elbo_with_the_same_key():
    model = builders.make_model(_config(), (D,))
    params = models.init(model, jax.random.key(0))
    batch, key = _batch(), jax.random.key(7)
    loss, m = losses.make_iwae_loss(model, 1)(params, batch, key, 0)
    # jaxvae.loss draws eps = normal(key, (B, Z)): the same z as K = 1; it uses the analytic KL.
    _, plain = jaxvae.loss(model, params, batch["x"], key)
    np.testing.assert_allclose(m["recon"], plain["recon"], rtol=1e-6)
    mean, logvar = models.encode(model, params, batch["x"])
    z = jaxvae.reparameterize(key, mean, logvar)
    mc_kl = distributions.gaussian_log_prob(z, mean, logvar) - distributions.standard_normal_log_prob(z)
    np.testing.assert_allclose(loss, plain["recon"] + jnp.mean(mc_kl), rtol=1e-5)
    assert abs(float(loss) - float(plain["loss"])) > 1e-4  # not the analytic-KL loss


def test_iwae_bound_is_tighter_than_the_average_elbo_and_uses_the_learned_prior():
    model = builders.make_model(_config(prior="vamp", prior_components=3), (D,))
    params = models.init(model, jax.random.key(0))
    batch, key = _batch(), jax.random.key(8)
    loss, m = losses.make_iwae_loss(model, 8)(params, batch, key, 0)
    assert float(loss) < float(m["recon"] + m["kl"])  # log mean w >= mean log w (Jensen)
    log_prior = builders.log_prior_fn(model, params)
    log_w = objectives_log_w = jaxvae.objectives.bounds.log_importance_weights(model, params, batch["x"], key, 8,
                                                             log_prior=log_prior)
    np.testing.assert_allclose(loss, -jnp.mean(jaxvae.iwae_bound(objectives_log_w)), rtol=1e-6)
    standard = jaxvae.objectives.bounds.log_importance_weights(model, params, batch["x"], key, 8)
    assert not np.allclose(log_w, standard)


@pytest.mark.parametrize("change", [dict(model="ladder", ladder_latents=(3, 2), ladder_hidden=(8, 4)),
                                    dict(model="cvae"), dict(model="mlp", prior="mog")],
                         ids=["ladder", "cvae", "mlp-mog"])
def test_iwae_objective_trains_any_model_on_its_k_sample_bound(change):
    """--objective iwae: the loss is -mean_b iwae_bound(log w) of the model's own log-weights."""
    built = registry.build(_config(objective="iwae", num_samples=4, **change), (D,))
    params = jaxvae.init(built.model, jax.random.key(0))
    batch, key = _batch(), jax.random.key(9)
    loss, metrics = built.loss_fn(params, batch, key, jnp.int32(0))
    log_w_KxB = jaxvae.log_weights(built.model, params, batch, key, 4)
    assert log_w_KxB.shape == (4, 32)
    np.testing.assert_allclose(loss, -jnp.mean(jaxvae.iwae_bound(log_w_KxB)), rtol=1e-6)
    assert float(loss) < float(metrics["recon"] + metrics["kl"])  # tighter than the mean ELBO
    elbo, _ = registry.build(_config(**change), (D,)).loss_fn(params, batch, key, jnp.int32(0))
    assert abs(float(loss) - float(elbo)) > 1e-3


def test_model_iwae_is_the_mlp_on_the_iwae_objective():
    by_model = registry.build(_config(model="iwae", num_samples=3), (D,))
    by_objective = registry.build(_config(objective="iwae", num_samples=3), (D,))
    assert by_model.model == by_objective.model
    params = jaxvae.init(by_model.model, jax.random.key(0))
    batch, key = _batch(), jax.random.key(3)
    np.testing.assert_array_equal(by_model.loss_fn(params, batch, key, 0)[0],
                                  by_objective.loss_fn(params, batch, key, 0)[0])


# ------------------------------------------------------------------------------ conditional


def test_cvae_samples_depend_on_the_label_only_through_the_decoder():
    model = conditional.build(_config(model="cvae"), (D,))
    params = models.init(model, jax.random.key(0))
    key = jax.random.key(1)
    a = conditional.generate(model, params, key, np.array([0, 0, 3]))
    b = conditional.generate(model, params, key, np.array([0, 1, 3]))
    assert a.shape == (3, D)
    np.testing.assert_array_equal(a[0], b[0])  # same key, same label: same sample
    np.testing.assert_array_equal(a[2], b[2])
    assert not np.allclose(a[1], b[1])  # same z, another label


def test_trained_cvae_draws_the_requested_class():
    # class 0 lights the first half of the pixels, class 1 the second half
    x = np.zeros((64, D), np.float32)
    y = np.arange(64, dtype=np.int32) % 2
    x[y == 0, :D // 2] = 1.0
    x[y == 1, D // 2:] = 1.0
    config = _config(model="cvae", num_classes=2, batch_size=16, lr=1e-2)
    model, params, history = _train(config, jaxvae.Dataset(x, y, x[:16], y[:16]), 50)
    assert all(math.isfinite(v) for v in history[-1].values())
    assert history[-1]["loss"] < history[0]["loss"]
    recon = models.reconstruct(model, params, x[:5], jax.random.key(0), labels=y[:5])
    assert recon.shape == (5, D) and models.sample(model, params, jax.random.key(1), 7).shape == (7, D)
    mean = jax.nn.sigmoid(conditional.generate(model, params,
                                               jax.random.key(0), np.array([0] * 50 + [1] * 50)))
    first, second = jnp.mean(mean[:, :D // 2], 1), jnp.mean(mean[:, D // 2:], 1)
    # (nearly) every draw shows its class's half; a label-blind decoder would get half right
    assert float(jnp.mean(first[:50] > second[:50])) >= 0.9
    assert float(jnp.mean(first[50:] < second[50:])) >= 0.9


@pytest.mark.parametrize("labels, error, match", [
    (np.array([0, 10]), ValueError, r"labels must be in \[0, 10\)"),
    (np.array([0.5]), TypeError, "labels must be integers"),
    (np.zeros((2, 2), int), ValueError, "non-empty vector"),
])
def test_generate_rejects_bad_labels(labels, error, match):
    model = conditional.build(_config(model="cvae"), (D,))
    params = models.init(model, jax.random.key(0))
    with pytest.raises(error, match=match):
        conditional.generate(model, params, jax.random.key(0), labels)


# ------------------------------------------------------- every model: shapes, finite, learns


def _train(config, data, epochs):
    """Trains with one compiled epoch program; returns (model, params, per-epoch metrics)."""
    config = builders.prepare(config, data)
    model, loss_fn = registry.build(config, data.example_shape)
    tx = train.make_optimizer(config.optimizer.lr)
    state = train.create_train_state(models.init(model, jax.random.key(0)), tx)
    epoch = train.make_train_epoch(loss_fn, tx, config.optimizer.batch_size)
    arrays = jax.device_put({"x": data.x_train, "y": data.y_train})
    history = []
    for e in range(epochs):
        state, metrics, _ = epoch(state, arrays, jax.random.key(e + 10), jax.random.key(1))
        history.append({k: float(v) for k, v in metrics.items()})
    return model, state.params, history


SETTINGS = [  # every prior, likelihood, schedule and model at least once (the cvae: below)
    dict(beta=4.0, likelihood="gaussian"),
    dict(prior="diagonal", kl_schedule="linear", kl_warmup_steps=20, free_bits=0.1),
    dict(prior="mog", prior_components=4),
    dict(prior="vamp", prior_components=4),
    dict(likelihood="gaussian_learned", kl_schedule="cyclical", kl_cycles=2),
    dict(likelihood="gaussian_global"),
    dict(likelihood="logistic"),
    dict(model="iwae", num_samples=4),
]


@pytest.mark.parametrize("change", SETTINGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_every_setting_has_shapes_finite_loss_and_learns(change):
    config = _config(epochs=25, batch_size=16, lr=3e-3, **change)
    batch = _batch(64)
    data = jaxvae.Dataset(batch["x"], batch["y"], batch["x"][:32], batch["y"][:32])
    model, params, history = _train(config, data, 25)
    first, last = history[0], history[-1]
    for record in (first, last):
        assert all(math.isfinite(v) for v in record.values())
    # the negative ELBO (recon + kl) falls, whatever the KL weight of the step
    assert last["recon"] + last["kl"] < first["recon"] + first["kl"]
    assert last["loss"] < first["loss"] or config.objective.kl_schedule != "constant"
    # what experiments/train.py writes: reconstructions and samples of the data's shape
    recon = models.reconstruct(model, params, batch["x"][:5], jax.random.key(0))
    mean = jaxvae.likelihood_mean(config.model.likelihood, recon)
    samples = jaxvae.likelihood_mean(config.model.likelihood, models.sample(model, params,
                                                                      jax.random.key(1), 7))
    assert mean.shape == (5, D) and samples.shape == (7, D)
    assert bool(jnp.isfinite(samples).all())


def test_cyclical_total_steps_default_to_the_run():
    config = _config(kl_schedule="cyclical", epochs=3, batch_size=16)
    batch = _batch(40)
    data = jaxvae.Dataset(batch["x"], batch["y"], batch["x"], batch["y"])
    # ceil(40 / 16) steps per epoch
    assert builders.prepare(config, data).objective.kl_total_steps == 3 * 3
    with pytest.raises(ValueError, match="needs kl_total_steps"):
        registry.build(config, (D,))


@pytest.mark.parametrize("change, error, match", [
    (dict(prior="flat"), ValueError, "unknown prior 'flat'"),
    (dict(prior="mog", free_bits=0.5), ValueError, "free bits need a KL per latent dimension"),
    (dict(free_bits=-1.0), ValueError, "free_bits must be a finite number >= 0"),
    (dict(kl_schedule="linear"), ValueError, "needs --kl-warmup-steps >= 1"),
    (dict(kl_schedule="cyclical", kl_ramp_fraction=1.5), ValueError, "kl_ramp_fraction"),
    (dict(model="iwae", beta=2.0), ValueError, "--model iwae takes no"),
    (dict(model="iwae", num_samples=0), ValueError, "num_samples"),
    (dict(objective="iwae", kl_schedule="linear", kl_warmup_steps=5), ValueError,
     "--objective iwae takes no"),
    (dict(objective="iwae", model="vqvae"), ValueError, "the VQ-VAE has none"),
    (dict(objective="elbo2"), ValueError, r"unknown objective 'elbo2'; choose one of \['elbo', 'iwae'\]"),
    (dict(model="cvae", prior="vamp"), ValueError, "cvae does not support the vamp prior"),
    (dict(prior="mog", prior_components=0), ValueError, "prior_components must be >= 1"),
    (dict(kl_cycles=2.0), TypeError, "kl_cycles must be an int"),
])
def test_bad_objective_configs_are_rejected_before_training(change, error, match):
    with pytest.raises(error, match=match):
        jaxvae.validate_config(_config(**change))


def test_fit_rejects_data_the_model_cannot_use():
    x = np.full((8, D), 0.5, np.float32)
    unlabelled = jaxvae.Dataset(x, np.full(8, -1, np.int32), x, np.full(8, -1, np.int32))
    with pytest.raises(ValueError, match=r"cvae needs training labels in \[0, 10\)"):
        trainer.fit(_config(model="cvae", batch_size=4), unlabelled)
    x[0, 0] = 0.1234  # not k / 255
    data = jaxvae.Dataset(x, np.zeros(8, np.int32), x, np.zeros(8, np.int32))
    with pytest.raises(ValueError, match="logistic likelihood needs 8-bit training data"):
        trainer.fit(_config(likelihood="logistic", batch_size=4), data)


def test_elbo_loss_compiles_once_across_steps():
    config = _config(prior="mog", kl_schedule="linear", kl_warmup_steps=5)
    model, loss_fn = registry.build(config, (D,))
    tx = train.make_optimizer(1e-3)
    step = train.make_train_step(loss_fn, tx)
    state = train.create_train_state(models.init(model, jax.random.key(0)), tx)
    batch = _batch(16)
    for _ in range(4):
        state, _ = step(state, batch, jax.random.key(1))
    assert step._cache_size() == 1
