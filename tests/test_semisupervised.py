"""M2's labelled and unlabelled bounds against a NumPy hand computation, and its objective."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvae.models import m2 as ss

D, K, Z = 4, 3, 2


@pytest.fixture(scope="module")
def tiny():
    model = ss.M2(data_dim=D, num_classes=K, latent_dim=Z, hidden=(5,))
    params = ss.init(model, jax.random.key(0))
    x = np.asarray(jax.random.uniform(jax.random.key(1), (6, D)), np.float64)
    return model, params, x


def _mlp(p, h):  # softplus hidden layer, linear output, in float64
    h = np.logaddexp(0.0, h @ np.asarray(p["hidden_0"]["kernel"], np.float64)
                     + np.asarray(p["hidden_0"]["bias"], np.float64))
    return h @ np.asarray(p["out"]["kernel"], np.float64) + np.asarray(p["out"]["bias"],
                                                                     np.float64)


def _hand_labelled(params, x, y_onehot, eps):
    enc = _mlp(params["encoder"], np.concatenate([x, y_onehot], 1))
    mean, logvar = enc[:, :Z], enc[:, Z:]
    z = mean + np.exp(0.5 * logvar) * eps
    logits = _mlp(params["decoder"], np.concatenate([z, y_onehot], 1))
    log_px = np.sum(x * -np.logaddexp(0, -logits) + (1 - x) * -np.logaddexp(0, logits), 1)
    kl = -0.5 * np.sum(1 + logvar - mean ** 2 - np.exp(logvar), 1)
    return log_px + np.log(1.0 / K) - kl


def test_labelled_bound_matches_a_hand_computation(tiny):
    model, params, x = tiny
    y = np.eye(K)[[0, 1, 2, 0, 1, 2]]
    eps = np.asarray(jax.random.normal(jax.random.key(2), (6, Z)), np.float64)
    got = jax.jit(ss.labelled_elbo, static_argnums=0)(model, params, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                           jnp.asarray(eps, jnp.float32))
    np.testing.assert_allclose(got, _hand_labelled(params, x, y, eps), rtol=1e-5, atol=1e-5)


def test_unlabelled_bound_matches_a_hand_computation(tiny):
    model, params, x = tiny
    eps = np.asarray(jax.random.normal(jax.random.key(3), (K, 6, Z)), np.float64)
    logits = _mlp(params["classifier"], x)
    q = np.exp(logits - logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    expected = sum(q[:, y] * _hand_labelled(params, x, np.tile(np.eye(K)[y], (6, 1)), eps[y])
                   for y in range(K)) - np.sum(q * np.log(q), 1)
    got, got_logits = jax.jit(ss.unlabelled_elbo, static_argnums=0)(model, params, jnp.asarray(x, jnp.float32),
                                         jnp.asarray(eps, jnp.float32))
    np.testing.assert_allclose(got_logits, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_objective_is_labelled_plus_unlabelled_plus_alpha_times_cross_entropy(tiny):
    model, params, x = tiny
    x32 = jnp.asarray(x, jnp.float32)
    y = jnp.asarray([0, 1, 2, 0, 1, 2])
    key = jax.random.key(7)
    _, m0 = jax.jit(ss.m2_loss_fn(model, x32, y, alpha=0.0, labelled_batch_size=4))(
        params, {"x": x32}, key, jnp.int32(0))
    loss, m = jax.jit(ss.m2_loss_fn(model, x32, y, alpha=2.5, labelled_batch_size=4))(
        params, {"x": x32}, key, jnp.int32(0))
    np.testing.assert_allclose(m0["loss"], m0["labelled"] + m0["unlabelled"], rtol=1e-6)
    np.testing.assert_allclose(loss, m["labelled"] + m["unlabelled"] + 2.5 * m["classification"],
                               rtol=1e-6)
    np.testing.assert_allclose(m["labelled"], m0["labelled"], rtol=1e-6)  # same key, same draws


def test_bad_labels_are_rejected(tiny):
    model, _, x = tiny
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        ss.m2_loss_fn(model, x, np.array([0, 1, 2, 3, 0, 1]), alpha=1.0)
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        ss.m2_loss_fn(model, x, np.zeros(6, int), alpha=-1.0)


def test_script_picks_the_same_labelled_digits_of_every_class():
    from experiments import semisupervised as script
    y = np.repeat(np.arange(10), 40)
    picked = script.pick_labelled(y, 10, seed=0)
    np.testing.assert_array_equal(np.bincount(y[picked]), np.full(10, 10))
    np.testing.assert_array_equal(picked, script.pick_labelled(y, 10, seed=0))
    assert not np.array_equal(picked, script.pick_labelled(y, 10, seed=1))


def test_script_trains_m2_through_the_training_loop(tmp_path):
    import json

    from experiments import semisupervised as script
    args = script.build_parser().parse_args([
        "--labels-per-class", "2", "--epochs", "2", "--batch-size", "1000",
        "--labelled-batch-size", "20", "--latent-dim", "2", "--hidden", "16", "--quiet",
        "--outdir", str(tmp_path)])
    results = script.run(args)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = -(-results["unlabelled"] // 1000)  # the last batch is smaller
    assert [r["epoch"] for r in lines] == [1, 2] and lines[-1]["step"] == 2 * steps_per_epoch
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["test_accuracy"] <= 1 for r in lines)
    assert results["m2_test_accuracy"] == lines[-1]["test_accuracy"]
