"""M2 on the model interface: its bounds against a NumPy computation, its objective, its NLL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae
from jaxvae.models import interface
from jaxvae.models import m2 as ss
from jaxvae.objectives import losses

D, K, Z = 4, 3, 2


@pytest.fixture(scope="module")
def tiny():
    model = ss.m2(data_dim=D, num_classes=K, latent_dim=Z, hidden=(5,))
    params = ss.init(model, jax.random.key(0))
    x = np.asarray(jax.random.uniform(jax.random.key(1), (6, D)), np.float64)
    return model, params, x


def _mlp(p, h):  # softplus hidden layer, linear output, in float64
    h = np.logaddexp(0.0, h @ np.asarray(p["hidden_0"]["kernel"], np.float64)
                     + np.asarray(p["hidden_0"]["bias"], np.float64))
    return h @ np.asarray(p["out"]["kernel"], np.float64) + np.asarray(p["out"]["bias"],
                                                                     np.float64)


def _hand_neg_labelled(params, x, y_onehot, eps):
    """-L(x, y) = -log p(x | y, z) + KL(q(z | x, y) || N(0, I)) - log p(y), in float64."""
    enc = _mlp(params["encoder"], np.concatenate([x, y_onehot], 1))
    mean, logvar = enc[:, :Z], enc[:, Z:]
    z = mean + np.exp(0.5 * logvar) * eps
    logits = _mlp(params["decoder"], np.concatenate([z, y_onehot], 1))
    log_px = np.sum(x * -np.logaddexp(0, -logits) + (1 - x) * -np.logaddexp(0, logits), 1)
    kl = -0.5 * np.sum(1 + logvar - mean ** 2 - np.exp(logvar), 1)
    return -log_px + kl + np.log(K)


def _hand_q(params, x):
    logits = _mlp(params["classifier"], x)
    q = np.exp(logits - logits.max(1, keepdims=True))
    return q / q.sum(1, keepdims=True)


def test_encoder_with_several_labels_per_example_is_the_mlp_on_tiled_inputs(tiny):
    """encode_onehot(x_BxD, y_TBxC) computes x's product once: the same numbers as the MLP on
    [tile(x, (T, 1)), y], row t * B + b pairing example b with label row t * B + b."""
    model, params, x = tiny
    y_TB = np.array([0, 1, 2, 2, 1, 0, 1, 1, 1, 0, 0, 2])  # T = 2 labels for each of B = 6
    mean, logvar = jax.jit(lambda p: model.apply(
        {"params": p}, jnp.asarray(x, jnp.float32), jax.nn.one_hot(y_TB, K),
        method=ss.M2.encode_onehot))(params)
    expected = _mlp(params["encoder"], np.concatenate([np.tile(x, (2, 1)), np.eye(K)[y_TB]], 1))
    np.testing.assert_allclose(np.concatenate([mean, logvar], 1), expected, rtol=1e-5,
                               atol=1e-6)


def test_interface_negative_elbo_matches_a_numpy_computation(tiny):
    """-ELBO of elbo_terms: -L(x, y) where labelled, -U(x) where y = -1, with eps[y] per class."""
    model, params, x = tiny
    y = np.array([0, 2, 1, -1, -1, -1])
    key = jax.random.key(2)
    terms = jax.jit(lambda p, b, k: interface.elbo_terms(model, p, b, k))(
        params, {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y)}, key)
    eps = np.asarray(jax.random.normal(key, (K, 6, Z)), np.float64)  # the model's draw
    neg_l = np.stack([_hand_neg_labelled(params, x, np.tile(np.eye(K)[c], (6, 1)), eps[c])
                      for c in range(K)], 1)  # (B, K)
    q = _hand_q(params, x)
    expected = np.where(y >= 0, neg_l[np.arange(6), np.maximum(y, 0)],
                        np.sum(q * neg_l, 1) + np.sum(q * np.log(q), 1))
    np.testing.assert_allclose(terms.recon_B + terms.kl_B, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(terms.extras["log_q_y"],
                               np.where(y >= 0, np.log(q[np.arange(6), np.maximum(y, 0)]), 0.0),
                               rtol=1e-5, atol=1e-6)


def test_unlabelled_bound_is_the_weighted_labelled_bounds_plus_the_entropy(tiny):
    model, params, x = tiny
    x32, key = jnp.asarray(x, jnp.float32), jax.random.key(3)
    unlabelled = interface.elbo_terms(model, params, {"x": x32}, key)  # no "y": all unlabelled
    per_class = [interface.elbo_terms(model, params, {"x": x32, "y": jnp.full(6, c)}, key)
                 for c in range(K)]
    neg_l_BxK = np.stack([np.asarray(t.recon_B + t.kl_B) for t in per_class], 1)
    q = np.asarray(jax.nn.softmax(ss.classify(model, params, x32)), np.float64)
    entropy = -np.sum(q * np.log(q), 1)
    # -U(x) = sum_y q(y | x) (-L(x, y)) - H(q(y | x))
    np.testing.assert_allclose(unlabelled.recon_B + unlabelled.kl_B,
                               np.sum(q * neg_l_BxK, 1) - entropy, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(unlabelled.kl_B) >= 0)  # KL(q(y, z | x) || p(y) p(z))


def test_labelled_elbo_terms_equal_the_general_ones_on_labelled_examples(tiny):
    model, params, x = tiny
    x32, y = jnp.asarray(x, jnp.float32), jnp.array([0, 1, 2, 0, 1, 2])
    key = jax.random.key(4)
    one = model.apply({"params": params}, x32, y, key, method=ss.M2.labelled_elbo_terms)
    eps = np.asarray(jax.random.normal(key, (6, Z)), np.float64)
    np.testing.assert_allclose(one.recon_B + one.kl_B,
                               _hand_neg_labelled(params, x, np.eye(K)[np.asarray(y)], eps),
                               rtol=1e-5, atol=1e-5)


def test_nll_is_below_the_negative_elbo(tiny):
    model, params, x = tiny
    batch = {"x": jnp.asarray(x, jnp.float32), "y": jnp.array([1, -1, 0, -1, 2, -1])}
    key = jax.random.key(5)
    nll = -jaxvae.log_likelihood(model, params, batch, key, num_samples=4000)
    # the mean log-weight over the same draws estimates the ELBO: the IWAE bound is above it
    neg_elbo_mc = -jaxvae.elbo(model, params, batch, key, num_samples=4000, analytic_kl=False)
    neg_elbo = -jaxvae.elbo(model, params, batch, jax.random.key(6), num_samples=4000)
    assert np.all(np.asarray(nll) <= np.asarray(neg_elbo_mc))
    assert np.all(np.asarray(nll) < np.asarray(neg_elbo))
    # both estimate the same bound ((y, z) sampled vs every class with the analytic KL); the
    # standard error of the sampled one is at most 0.04 nats here (measured)
    np.testing.assert_allclose(neg_elbo_mc, neg_elbo, atol=0.15)


def test_nll_of_the_unlabelled_examples_matches_the_exact_marginal(tiny):
    """log p(x) = log sum_y p(y) E_q(z|x,y)[p(x|y,z) p(z) / q(z|x,y)], summed over classes
    with many draws of z each, against the importance sampler over (y, z)."""
    model, params, x = tiny
    x32 = jnp.asarray(x, jnp.float32)
    log_p_xy = [jaxvae.log_likelihood(model, params, {"x": x32, "y": jnp.full(6, c)},
                                      jax.random.key(10 + c), num_samples=4000)
                for c in range(K)]  # log p(x, y = c)
    exact = jax.nn.logsumexp(jnp.stack(log_p_xy), axis=0)
    sampled = jaxvae.log_likelihood(model, params, {"x": x32}, jax.random.key(7),
                                    num_samples=4000)
    np.testing.assert_allclose(sampled, exact, atol=0.06)  # measured differences <= 0.023


def test_objective_is_labelled_plus_unlabelled_plus_alpha_times_cross_entropy(tiny):
    model, params, x = tiny
    x32 = jnp.asarray(x, jnp.float32)
    y = jnp.asarray([0, 1, 2, 0, 1, 2])
    key = jax.random.key(7)
    _, m0 = jax.jit(losses.make_m2_loss(model, x32, y, alpha=0.0, labelled_batch_size=4))(
        params, {"x": x32}, key, jnp.int32(0))
    loss, m = jax.jit(losses.make_m2_loss(model, x32, y, alpha=2.5, labelled_batch_size=4))(
        params, {"x": x32}, key, jnp.int32(0))
    np.testing.assert_allclose(m0["loss"], m0["labelled"] + m0["unlabelled"], rtol=1e-6)
    np.testing.assert_allclose(loss, m["labelled"] + m["unlabelled"] + 2.5 * m["classification"],
                               rtol=1e-6)
    np.testing.assert_allclose(m["labelled"], m0["labelled"], rtol=1e-6)  # same key, same draws
    np.testing.assert_allclose(m["unlabelled"], m["recon"] + m["kl"], rtol=1e-6)
    weighted, _ = losses.make_m2_loss(model, x32, y, alpha=2.5, labelled_batch_size=4,
                                      labelled_weight=0.01)(params, {"x": x32}, key, 0)
    np.testing.assert_allclose(weighted, 0.01 * m["labelled"] + m["unlabelled"]
                               + 2.5 * m["classification"], rtol=1e-6)


def test_objective_takes_the_labels_of_the_batch(tiny):
    """Without a held labelled set: loss = mean -ELBO + alpha * mean CE over the labelled rows."""
    model, params, x = tiny
    x32, key = jnp.asarray(x, jnp.float32), jax.random.key(8)
    batch = {"x": x32, "y": jnp.array([2, -1, 0, -1, -1, 1])}
    loss, m = losses.make_m2_loss(model, None, None, alpha=1.5)(params, batch, key,
                                                                jnp.int32(0))
    batch_key = jax.random.split(key, 3)[0]
    terms = interface.elbo_terms(model, params, batch, batch_key)
    q = _hand_q(params, x)
    ce = -np.mean(np.log(q[[0, 2, 5], [2, 0, 1]]))
    np.testing.assert_allclose(m["classification"], ce, rtol=1e-5)
    np.testing.assert_allclose(loss, np.mean(terms.recon_B + terms.kl_B) + 1.5 * ce, rtol=1e-5)
    _, unlabelled_only = losses.make_m2_loss(model, None, None, 1.0)(params, {"x": x32}, key, 0)
    assert sorted(unlabelled_only) == ["kl", "loss", "recon", "unlabelled"]


def test_drawn_inputs_are_the_inputs_of_the_objective(tiny):
    """draw_inputs: with standard deviations 0 the objective is the one on the means, bit for
    bit; otherwise it is the objective on the inputs drawn with the documented keys."""
    model, params, x = tiny
    x32, key = jnp.asarray(x, jnp.float32), jax.random.key(9)
    y = jnp.asarray([0, 1, 2, 0, 1, 2])
    plain = jax.jit(losses.make_m2_loss(model, x32, y, 0.5, labelled_batch_size=4))
    rows0 = jnp.concatenate([x32, jnp.zeros_like(x32)], 1)
    drawn = jax.jit(losses.make_m2_loss(model, rows0, y, 0.5, labelled_batch_size=4,
                                        draw_inputs=ss.draw_features))
    loss, m = plain(params, {"x": x32}, key, jnp.int32(0))
    loss0, m0 = drawn(params, {"x": rows0}, key, jnp.int32(0))
    assert float(loss0) == float(loss) and float(m0["labelled"]) == float(m["labelled"])

    # std 0.3: the same objective as the plain one on the draws, made with the same keys
    rows = jnp.concatenate([x32, jnp.full_like(x32, 0.3)], 1)
    draw_key = jax.random.fold_in(key, 3)
    x_b = ss.draw_features(jax.random.fold_in(draw_key, 0), rows)
    idx = jax.random.randint(jax.random.split(key, 3)[1], (4,), 0, 6)
    x_l = ss.draw_features(jax.random.fold_in(draw_key, 1), rows[idx])
    assert float(jnp.max(jnp.abs(x_b - x32))) > 0.1
    loss_s, m_s = jax.jit(losses.make_m2_loss(model, rows, y, 0.5, labelled_batch_size=4,
                                              draw_inputs=ss.draw_features))(
        params, {"x": rows}, key, jnp.int32(0))
    _, m_b = plain(params, {"x": x_b}, key, jnp.int32(0))
    np.testing.assert_allclose(m_s["unlabelled"], m_b["unlabelled"], rtol=1e-6)
    l_terms = model.apply({"params": params}, x_l, y[idx], jax.random.split(key, 3)[2],
                          method=ss.M2.labelled_elbo_terms)
    np.testing.assert_allclose(m_s["labelled"], jnp.mean(l_terms.recon_B + l_terms.kl_B),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"draw_inputs turns into 4 values \(these give 2\)"):
        losses.make_m2_loss(model, rows[:, :4], y, 0.5, draw_inputs=ss.draw_features)


def test_drawn_features_have_the_posterior_mean_and_standard_deviation():
    mean = jnp.array([1.0, -2.0, 0.5])
    std = jnp.array([0.1, 2.0, 0.0])
    rows = jnp.tile(jnp.concatenate([mean, std])[None], (20000, 1))
    z = np.asarray(ss.draw_features(jax.random.key(0), rows), np.float64)
    se = np.asarray(std) / np.sqrt(len(z))
    assert np.all(np.abs(z.mean(0) - np.asarray(mean)) <= 4 * se + 1e-7)
    np.testing.assert_allclose(z.std(0), std, rtol=0.03, atol=1e-7)
    with pytest.raises(ValueError, match="even width"):
        ss.draw_features(jax.random.key(0), rows[:, :5])


def test_bad_labels_are_rejected(tiny):
    model, _, x = tiny
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        losses.make_m2_loss(model, x, np.array([0, 1, 2, 3, 0, 1]), alpha=1.0)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        losses.make_m2_loss(model, x, np.zeros(6, int), alpha=-1.0)
    with pytest.raises(ValueError, match="both x_labelled_NxD and y_labelled_N"):
        losses.make_m2_loss(model, x, None, alpha=1.0)


def test_interface_functions_serve_m2(tiny):
    model, params, x = tiny
    x32 = jnp.asarray(x, jnp.float32)
    mean, logvar = interface.encode(model, params, {"x": x32, "y": jnp.zeros(6, jnp.int32)})
    assert mean.shape == logvar.shape == (6, Z)
    assert jaxvae.sample(model, params, jax.random.key(0), 5).shape == (5, D)
    assert interface.reconstruct(model, params, {"x": x32}).shape == (6, D)
    with pytest.raises(ValueError, match="M2 decodes with labels"):
        interface.decode(model, params, jnp.zeros((2, Z)))
    logits = interface.decode(model, params, jnp.zeros((2, Z)), jnp.array([0, 2]))
    assert logits.shape == (2, D)


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
        "--dataset", "digits", "--labels-per-class", "2", "--epochs", "2", "--batch-size", "500",
        "--labelled-batch-size", "20", "--latent-dim", "2", "--hidden", "16", "--quiet",
        "--nll-samples", "2", "--outdir", str(tmp_path)])
    results = script.run(args)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = -(-results["unlabelled"] // 500)  # the last batch is smaller
    assert [r["epoch"] for r in lines] == [1, 2] and lines[-1]["step"] == 2 * steps_per_epoch
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["test_accuracy"] <= 1 for r in lines)
    assert results["m2_test_accuracy"] == lines[-1]["test_accuracy"]
    # the test digits are scored unlabelled: test -ELBO = -U(x) = recon + kl
    assert lines[-1]["test_loss"] == pytest.approx(lines[-1]["test_unlabelled"], rel=1e-5)
    assert results["test_nll"] < results["test_nelbo"] + 1.0  # K = 2: at most about the -ELBO
    from flax import serialization
    model = ss.m2(64, 10, latent_dim=2, hidden=(16,))
    params = serialization.from_bytes(ss.init(model, jax.random.key(0)),
                                      (tmp_path / "params.msgpack").read_bytes())
    from jaxvae.data import datasets
    data = datasets.load_digits()
    accuracy = np.mean(np.argmax(ss.classify(model, params, data.x_test), -1) == data.y_test)
    assert accuracy == pytest.approx(results["m2_test_accuracy"])


def _soft_bound(raw, low, high):  # likelihoods.soft_bound in float64
    lifted = low + np.logaddexp(0.0, raw - low)
    return high - np.logaddexp(0.0, high - lifted)


def test_gaussian_m2_scores_features_with_a_learned_variance():
    """likelihood="gaussian_learned": the decoder gives a mean and a log-variance per dimension
    (interleaved), and -L(x, y) has -log N(x | mean, exp(logvar)) where the Bernoulli had its
    cross-entropy; the encoder and classifier are those of the Bernoulli M2."""
    model = ss.m2(data_dim=D, num_classes=K, latent_dim=Z, hidden=(5,),
                  likelihood="gaussian_learned")
    params = ss.init(model, jax.random.key(0))
    assert params["decoder"]["out"]["kernel"].shape == (5, 2 * D)
    x = np.asarray(jax.random.normal(jax.random.key(1), (6, D)), np.float64) * 2.0
    y = np.array([0, 1, 2, 0, 1, 2])
    key = jax.random.key(4)
    terms = model.apply({"params": params}, jnp.asarray(x, jnp.float32), jnp.asarray(y), key,
                        method=ss.M2.labelled_elbo_terms)
    eps = np.asarray(jax.random.normal(key, (6, Z)), np.float64)
    y_onehot = np.eye(K)[y]
    enc = _mlp(params["encoder"], np.concatenate([x, y_onehot], 1))
    z = enc[:, :Z] + np.exp(0.5 * enc[:, Z:]) * eps
    out = _mlp(params["decoder"], np.concatenate([z, y_onehot], 1)).reshape(6, D, 2)
    logvar = _soft_bound(out[..., 1], -7.0, 2.0)
    nll = 0.5 * np.sum(np.log(2 * np.pi) + logvar + (x - out[..., 0]) ** 2 / np.exp(logvar), 1)
    np.testing.assert_allclose(terms.recon_B, nll, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        ss.m2(data_dim=D, likelihood="logistic")


def test_m1_plus_m2_trains_m2_on_draws_of_the_active_latent_units_of_a_vae_run(tmp_path, capsys):
    """--features-from: M2 (Gaussian) trains on draws of the M1 run's active units and is
    scored, like the logistic regression, on their posterior means; a run of another dataset,
    and --m1-inputs without --features-from, are refused before anything is written."""
    import json

    from flax import serialization
    from sklearn.linear_model import LogisticRegression

    from experiments import semisupervised as script
    from experiments import train as train_script
    from jaxvae.data import datasets
    from jaxvae.training import runs
    m1_dir = tmp_path / "m1"
    assert train_script.main(["--dataset", "digits", "--epochs", "3", "--hidden", "32",
                              "--latent-dim", "6", "--batch-size", "64", "--lr", "3e-3",
                              "--quiet", "--outdir", str(m1_dir)]) == 0
    m1 = runs.load_run(m1_dir)
    digits = datasets.load_digits()

    def means(x):
        x = jnp.asarray(x.reshape((-1,) + m1.data.example_shape))
        return np.asarray(interface.encode(m1.model, m1.params, x).mean)

    train_means, test_means = means(digits.x_train), means(digits.x_test)
    active = np.var(train_means.astype(np.float64), axis=0) > 1e-2
    assert 0 < active.sum()

    out = tmp_path / "m1m2"
    results = script.run(script.build_parser().parse_args([
        "--dataset", "digits", "--features-from", str(m1_dir), "--labels-per-class", "2",
        "--epochs", "1", "--batch-size", "500", "--labelled-batch-size", "20",
        "--latent-dim", "2", "--hidden", "16", "--quiet", "--outdir", str(out)]))
    assert results["features"]["active_units"] == int(active.sum())
    assert results["features"]["inputs"] == "sample"  # z1 ~ q(z1 | x) drawn at every step
    assert results["features"]["active_indices"] == np.flatnonzero(active).tolist()
    model = ss.m2(int(active.sum()), 10, latent_dim=2, hidden=(16,),
                  likelihood="gaussian_learned")
    params = serialization.from_bytes(ss.init(model, jax.random.key(0)),
                                      (out / "params.msgpack").read_bytes())
    features = test_means[:, active]
    accuracy = np.mean(np.argmax(ss.classify(model, params, features), -1) == digits.y_test)
    assert accuracy == pytest.approx(results["m2_test_accuracy"], abs=1e-6)
    labelled = script.pick_labelled(digits.y_train, 2, seed=0)
    logreg = LogisticRegression(max_iter=2000).fit(train_means[labelled][:, active],
                                                   digits.y_train[labelled])
    assert logreg.score(features, digits.y_test) == pytest.approx(
        results["logreg_test_accuracy"], abs=1e-6)
    assert json.loads((out / "results.json").read_text())["reference"].startswith(
        "Kingma et al. 2014, M1+M2")

    refused = tmp_path / "refused"
    assert script.main(["--dataset", "mnist5k", "--features-from", str(m1_dir),
                        "--outdir", str(refused)]) == 2
    capsys.readouterr()
    assert script.main(["--dataset", "digits", "--m1-inputs", "mean",
                        "--outdir", str(refused)]) == 2
    assert capsys.readouterr().err.startswith("error: --m1-inputs chooses how M2 reads")
    assert not refused.exists()
