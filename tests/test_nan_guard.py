"""The NaN guard: non-finite steps are skipped exactly, finite ones are bitwise unchanged, runs
that keep diverging stop with the step and the last finite loss; clipping by global norm."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvae
from jaxvae.training import checkpoint
from jaxvae.training import hooks
from jaxvae.training import loop
from jaxvae.training import step as train

D, Z = 6, 2


@pytest.fixture(scope="module")
def small():
    model = jaxvae.mlp_vae(hidden=(8,), latent_dim=Z, data_shape=(D,))
    x = (np.random.default_rng(0).uniform(size=(36, D)) > 0.5).astype(np.float32)
    return model, x


def _equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_the_guard_leaves_finite_steps_bitwise_unchanged(small):
    model, x = small
    tx = train.make_optimizer(1e-2)
    loss_fn = train.vae_loss_fn(model)
    params = jaxvae.init(model, jax.random.key(0))
    shuffle_key, run_key = jax.random.key(1), jax.random.key(2)
    # 36 examples, batch 8: 4 full batches and a remainder of 4
    epoch = train.make_train_epoch(loss_fn, tx, 8)
    plain = epoch(train.create_train_state(params, tx), jnp.asarray(x), shuffle_key, run_key)
    chunk = train.make_train_chunk(loss_fn, tx, skip_nonfinite=True)
    perm = jax.random.permutation(shuffle_key, 36)
    state = train.create_train_state(params, tx)
    state, first = chunk(state, jnp.asarray(x), perm[:24].reshape(3, 8), jnp.arange(3),
                         run_key)
    state, full = chunk(state, jnp.asarray(x), perm[24:32].reshape(1, 8), jnp.arange(3, 4),
                        run_key)
    state, last = chunk(state, jnp.asarray(x), perm[32:].reshape(1, 4), jnp.arange(4, 5),
                        run_key)
    rest = jax.tree.map(lambda a, b: np.concatenate([a, b]), full, last)
    assert int(state.step) == int(plain.state.step) == 5
    _equal(state.params, plain.state.params)
    _equal(state.opt_state, plain.state.opt_state)
    np.testing.assert_array_equal(np.concatenate([first["loss"], rest["loss"]]),
                                  plain.step_metrics["loss"])
    assert not np.any(first["skipped"]) and not np.any(rest["skipped"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_batch_skips_the_update_and_is_counted(small, bad):
    model, x = small
    tx = train.make_optimizer(1e-2)
    step = jax.jit(train.train_step_fn(train.vae_loss_fn(model), tx, skip_nonfinite=True))
    state = train.create_train_state(jaxvae.init(model, jax.random.key(0)), tx)
    run_key = jax.random.key(3)
    state, metrics = step(state, x[:8], run_key)
    assert float(metrics["skipped"]) == 0.0
    before = jax.device_get(state)
    poisoned = x[8:16].copy()
    poisoned[2, 1] = bad
    after, metrics = step(state, poisoned, run_key)
    assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
    assert int(after.step) == 2  # the batch is consumed: later keys and data do not shift
    _equal(after.params, before.params)
    _equal(after.opt_state, before.opt_state)  # Adam's moments and count untouched


def test_nan_batches_inside_a_scan_epoch_are_skipped_and_the_rest_train(small):
    model, x = small
    tx = train.make_optimizer(1e-2)
    loss_fn = train.vae_loss_fn(model)
    data = x.copy()
    data[5, 0] = np.nan  # poisons exactly the batch that holds example 5
    shuffle_key, run_key = jax.random.key(4), jax.random.key(5)
    chunk = train.make_train_chunk(loss_fn, tx)
    state = train.create_train_state(jaxvae.init(model, jax.random.key(0)), tx)
    perm = np.asarray(jax.random.permutation(shuffle_key, 36))
    state, full = chunk(state, jnp.asarray(data), perm[:32].reshape(4, 8), jnp.arange(4),
                        run_key)
    state, last = chunk(state, jnp.asarray(data), perm[32:].reshape(1, 4), jnp.arange(4, 5),
                        run_key)
    metrics = jax.tree.map(lambda a, b: np.concatenate([a, b]), full, last)
    batch_of_5 = int(np.flatnonzero(perm == 5)[0]) // 8
    expected = np.zeros(5)
    expected[batch_of_5] = 1.0
    np.testing.assert_array_equal(metrics["skipped"], expected)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(jax.device_get(state.params)))


def _tiny_data(n=24):
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(n, D)).astype(np.float32)
    return jaxvae.Dataset(x, np.zeros(n, np.int32), x[:8], np.zeros(8, np.int32))


def test_a_huge_learning_rate_stops_with_the_step_and_the_last_finite_loss(tmp_path):
    # Adam moves every parameter by ~lr on step 1: 1e30 overflows everything after it.
    config = jaxvae.TrainConfig.from_flat(dataset="digits", hidden=(8,), latent_dim=Z,
                                          batch_size=4, epochs=3, lr=1e30, max_skipped_steps=3,
                                          checkpoint_every=2)
    with pytest.raises(loop.TrainingDiverged) as info:
        jaxvae.fit(config, _tiny_data(), checkpoint_dir=tmp_path / "ckpt")
    message = str(info.value)
    assert "training stopped at step 4: 3 consecutive steps had a non-finite loss or gradient" \
        in message
    assert "the last finite loss was" in message and "at step 1" in message
    # The checkpoint at step 2 was written before the limit; nothing after it.
    assert checkpoint.saved_steps(tmp_path / "ckpt") == [2]
    assert f"the last good checkpoint, {tmp_path / 'ckpt' / '2'}, is kept" in message


def test_skipped_steps_are_reported_per_epoch_and_excluded_from_the_means(small):
    # A loss that is NaN on every other step: the epoch mean is over the finite steps only.
    model, _ = small
    data = _tiny_data(16)
    config = jaxvae.TrainConfig.from_flat(hidden=(8,), latent_dim=Z, batch_size=4, epochs=1,
                                          max_skipped_steps=2)
    from jaxvae.models import registry

    built = registry.build(config, (D,))

    def flaky(params, batch, key, step):
        loss, metrics = built.loss_fn(params, batch, key, step)
        nan = jnp.where(step % 2 == 1, jnp.nan, 0.0)
        return loss + nan, {**metrics, "loss": metrics["loss"] + nan}

    tx = train.make_optimizer(config.optimizer.lr)
    keys = jaxvae.training.fit.run_keys(0)
    state = train.create_train_state(jaxvae.init(built.model, keys.init), tx)
    batch = {"x": data.x_train, "y": data.y_train}
    test = {"x": data.x_test, "y": data.y_test}
    records = []
    run = loop.train_run(config, loop.TrainingData(batch), flaky, tx, state, keys,
                         evaluation=loop.Evaluation(test=test),
                         hooks=[hooks.EveryEpoch(records.append)])
    assert run.history == records and records[0]["train_skipped"] == 2
    assert np.isfinite(records[0]["train_loss"])


def test_clip_norm_rescales_gradients_to_the_global_norm_before_adam():
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}  # global norm 5
    params = jax.tree.map(jnp.zeros_like, grads)
    tx = train.make_optimizer(0.1, clip_norm=1.0)
    updates, _ = tx.update(grads, tx.init(params), params)
    adam = optax.adam(0.1)
    expected, _ = adam.update(jax.tree.map(lambda g: g / 5.0, grads), adam.init(params), params)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-6), updates, expected)
    small_grads = jax.tree.map(lambda g: g / 10.0, grads)  # norm 0.5: untouched
    updates, _ = tx.update(small_grads, tx.init(params), params)
    expected, _ = adam.update(small_grads, adam.init(params), params)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-6), updates, expected)


@pytest.mark.parametrize("change, error, match", [
    ({"clip_norm": 0.0}, ValueError, "clip_norm must be a finite number > 0"),
    ({"clip_norm": "big"}, TypeError, "clip_norm must be a number or None"),
    ({"max_skipped_steps": 0}, ValueError, "max_skipped_steps must be >= 1"),
    ({"checkpoint_every": 0}, ValueError, "checkpoint_every must be >= 1"),
    ({"keep_checkpoints": 1.5}, TypeError, "keep_checkpoints must be an int"),
])
def test_reliability_fields_are_validated(change, error, match):
    with pytest.raises(error, match=match):
        jaxvae.validate_config(jaxvae.TrainConfig().replace(**change))


def test_a_hook_that_returns_true_ends_the_run_after_that_epoch():
    data = _tiny_data(16)
    config = jaxvae.TrainConfig.from_flat(hidden=(8,), latent_dim=Z, batch_size=8, epochs=5)
    from jaxvae.models import registry

    built = registry.build(config, (D,))
    tx = train.make_optimizer(config.optimizer.lr)
    keys = jaxvae.training.fit.run_keys(0)
    state = train.create_train_state(jaxvae.init(built.model, keys.init), tx)
    calls = []

    def stop_after_two(step, progress):
        calls.append((step, progress.record is not None))
        return len(progress.loop["history"]) == 2

    run = loop.train_run(
        config, loop.TrainingData({"x": data.x_train, "y": data.y_train}), built.loss_fn, tx,
        state, keys, evaluation=loop.Evaluation(test={"x": data.x_test, "y": data.y_test}),
        hooks=[stop_after_two])
    assert [r["epoch"] for r in run.history] == [1, 2] and int(run.state.step) == 4
    assert calls == [(2, True), (4, True)]


def test_an_epoch_without_a_finite_step_is_a_divergence_not_a_record_without_a_loss():
    # batch 8 of 24: 3 steps per epoch, fewer than max_skipped_steps. Step 1 is finite, every
    # later step overflows, so epoch 2 has no finite step.
    config = jaxvae.TrainConfig.from_flat(hidden=(8,), latent_dim=Z, batch_size=8, epochs=3,
                                          lr=1e30, max_skipped_steps=10)
    records = []
    with pytest.raises(loop.TrainingDiverged) as info:
        jaxvae.fit(config, _tiny_data(24), on_epoch=records.append)
    assert str(info.value).startswith(
        "training diverged: no step of epoch 2 had a finite loss and gradient (all 3 skipped; "
        "the last finite loss was ")
    assert "at step 1)" in str(info.value) and "--lr" in str(info.value)
    assert [(r["epoch"], r["train_skipped"]) for r in records] == [(1, 2)]


def test_metrics_lines_are_strict_json_with_null_for_non_finite_numbers(tmp_path):
    import json
    import math

    metrics = hooks.MetricsFile(tmp_path / "metrics.jsonl")
    record = {"epoch": 1, "train_loss": 2.5, "test_loss": math.nan, "test_kl": math.inf,
              "test_recon": -math.inf, "train_skipped": 0}
    metrics(3, loop.Progress(None, {}, record, None))
    metrics.rewrite([record, record])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    strict = lambda token: pytest.fail(f"{token} is not JSON")  # noqa: E731
    assert [json.loads(line, parse_constant=strict) for line in lines] == 2 * [
        {"epoch": 1, "train_loss": 2.5, "test_loss": None, "test_kl": None,
         "test_recon": None, "train_skipped": 0}]


def test_the_script_exits_3_with_one_line_and_no_nan_in_metrics_when_an_epoch_diverges(
        tmp_path, capsys):
    import json

    from experiments import train as train_script
    outdir = tmp_path / "run"
    # digits, batch 512: 3 steps per epoch; lr 1e30 overflows everything after step 1.
    code = train_script.main(["--dataset", "digits", "--hidden", "8", "--latent-dim", "2",
                              "--batch-size", "512", "--epochs", "3", "--lr", "1e30",
                              "--quiet", "--outdir", str(outdir)])
    err = capsys.readouterr().err
    assert code == 3
    assert err.count("\n") == 1 and err.startswith(
        "error: training diverged: no step of epoch 2 had a finite loss and gradient"), err
    text = (outdir / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert [json.loads(line)["epoch"] for line in text.splitlines()] == [1]


def test_run_records_refuse_a_preprocess_without_its_key_and_checkpoints_without_a_directory():
    with pytest.raises(ValueError, match="preprocess needs a data_key"):
        loop.TrainingData({"x": np.zeros((4, D))}, preprocess=lambda key, batch: batch)
    with pytest.raises(ValueError, match=r"Checkpointing needs a directory \(checkpoint_dir\)"):
        loop.Checkpointing(None, resume=True)
