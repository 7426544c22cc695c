"""Training: determinism, no recompilation, the scan epoch and the data-parallel forms agree."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae
from jaxvae.training import parallel
from jaxvae.training import step as train

B, D, Z = 16, 12, 3


@pytest.fixture(scope="module")
def small():
    model = jaxvae.mlp_vae(hidden=(8,), latent_dim=Z, data_shape=(D,))
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(40, D)) > 0.5).astype(np.float32)
    return model, x


def _train(model, x, steps, seed=0, lr=1e-2):
    tx = train.make_optimizer(lr)
    step = train.make_train_step(train.vae_loss_fn(model), tx)
    state = train.create_train_state(jaxvae.init(model, jax.random.key(seed)), tx)
    run_key = jax.random.key(seed + 1)
    losses = []
    for i in range(steps):
        state, metrics = step(state, x[(i * B) % 32:(i * B) % 32 + B], run_key)
        losses.append(float(metrics["loss"]))
    return state, losses, step


def test_same_seed_gives_bitwise_identical_parameters(small):
    model, x = small
    a, _, _ = _train(model, x, 6)
    b, _, _ = _train(model, x, 6)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    c, _, _ = _train(model, x, 6, seed=5)
    assert not np.array_equal(a.params["decoder"]["out"]["bias"],
                              c.params["decoder"]["out"]["bias"])


def test_train_step_compiles_once_over_many_steps(small):
    model, x = small
    state, losses, step = _train(model, x, 12)
    assert step._cache_size() == 1
    assert int(state.step) == 12
    assert losses[-1] < losses[0]


def test_step_key_is_fold_in_of_the_run_key_and_step(small):
    model, x = small
    tx = train.make_optimizer(1e-3)
    params = jaxvae.init(model, jax.random.key(0))
    state = train.create_train_state(params, tx)
    state = state.replace(step=jnp.int32(7))
    run_key = jax.random.key(3)
    _, metrics = train.make_train_step(train.vae_loss_fn(model), tx)(state, x[:B], run_key)
    _, expected = jaxvae.loss(model, params, x[:B], jax.random.fold_in(run_key, 7))
    chex.assert_trees_all_close(metrics, expected, rtol=1e-6)


def test_scan_epoch_equals_the_same_steps_one_by_one(small):
    model, x = small
    tx = train.make_optimizer(1e-2)
    loss_fn = train.vae_loss_fn(model)
    params = jaxvae.init(model, jax.random.key(0))
    shuffle_key, run_key = jax.random.key(1), jax.random.key(2)
    batch = 16  # 40 examples: two full batches and a remainder of 8

    epoch = train.make_train_epoch(loss_fn, tx, batch)
    out = epoch(train.create_train_state(params, tx), jnp.asarray(x), shuffle_key, run_key)

    step = train.make_train_step(loss_fn, tx)
    state = train.create_train_state(params, tx)
    perm = np.asarray(jax.random.permutation(shuffle_key, len(x)))
    losses, sizes = [], []
    for start in range(0, len(x), batch):
        idx = perm[start:start + batch]
        state, metrics = step(state, x[idx], run_key)
        losses.append(float(metrics["loss"]))
        sizes.append(len(idx))
    assert int(out.state.step) == int(state.step) == 3
    chex.assert_trees_all_close(out.state.params, state.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.step_metrics["loss"], losses, rtol=1e-5)
    np.testing.assert_allclose(out.metrics["loss"], np.average(losses, weights=sizes), rtol=1e-5)


def test_evaluate_is_the_per_example_mean_over_all_batches(small):
    model, x = small
    params = jaxvae.init(model, jax.random.key(0))
    loss_fn = train.vae_loss_fn(model)
    key = jax.random.key(4)
    metrics = train.make_evaluate(loss_fn, batch_size=16)(params, jnp.asarray(x), key,
                                                           jnp.int32(0))
    parts = [jaxvae.loss(model, params, x[s:s + 16], jax.random.fold_in(key, i))[1]["recon"]
             for i, s in enumerate(range(0, 40, 16))]
    np.testing.assert_allclose(metrics["recon"], np.average(parts, weights=[16, 16, 8]),
                               rtol=1e-5)


@pytest.fixture(scope="module")
def parallel_setup(small):
    model, x = small
    assert jax.local_device_count() == 4, "tests/conftest.py forces 4 CPU devices"
    tx = train.make_optimizer(1e-2)
    params = jaxvae.init(model, jax.random.key(0))
    run_key = jax.random.key(9)
    batches = [x[i * B:(i + 1) * B] for i in range(2)]
    state = train.create_train_state(params, tx)
    step = train.make_train_step(train.vae_loss_fn(model), tx)
    for batch in batches:
        state, metrics = step(state, batch, run_key)
    return model, tx, params, run_key, batches, state, metrics


def test_pmap_step_matches_the_single_device_step(parallel_setup):
    model, tx, params, run_key, batches, expected, expected_metrics = parallel_setup
    step = parallel.make_pmap_train_step(train.vae_loss_fn(model, axis_name=parallel.AXIS), tx)
    state = parallel.replicate(train.create_train_state(params, tx))
    for batch in batches:
        state, metrics = step(state, parallel.shard_batch(batch, 4), run_key)
    chex.assert_trees_all_close(parallel.unreplicate(state).params, expected.params,
                                rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"][0], expected_metrics["loss"], rtol=1e-5)


def test_sharded_jit_step_matches_the_single_device_step(parallel_setup):
    model, tx, params, run_key, batches, expected, expected_metrics = parallel_setup
    mesh = parallel.make_mesh()
    step = parallel.make_sharded_train_step(train.vae_loss_fn(model), tx, mesh)
    state = parallel.put_replicated(train.create_train_state(params, tx), mesh)
    for batch in batches:
        state, metrics = step(state, parallel.put_sharded(batch, mesh), run_key)
    assert len(state.params["decoder"]["out"]["bias"].sharding.device_set) == 4
    chex.assert_trees_all_close(state.params, expected.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"], rtol=1e-5)


def test_parallel_batches_must_split_evenly_over_devices(small):
    _, x = small
    with pytest.raises(ValueError, match="does not split evenly over 4 devices"):
        parallel.shard_batch(x[:10], 4)


def test_learning_rate_must_be_positive():
    with pytest.raises(ValueError, match="learning rate must be a finite number > 0"):
        train.make_optimizer(0.0)
    with pytest.raises(TypeError, match="learning rate must be a number"):
        train.make_optimizer("fast")


def test_microbatched_gradient_is_the_mean_of_the_microbatch_gradients(small):
    model, x = small[0], small[1][:12]
    params = jaxvae.init(model, jax.random.key(0))
    loss_fn = jaxvae.training.step.vae_loss_fn(model)
    key, step = jax.random.key(7), jnp.zeros((), jnp.int32)
    # jitted: one compiled program per function instead of one per operation
    micro = jax.jit(train.microbatched_value_and_grad(loss_fn, 4))
    whole = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, metrics), grads = micro(params, x, key, step)
    # by hand: micro-batch i is rows 4i..4i+3 with the key fold_in(key, i)
    parts = [whole(params, x[4 * i:4 * i + 4], jax.random.fold_in(key, i), step)
             for i in range(3)]
    mean = jax.tree.map(lambda *t: sum(t) / 3, *parts)
    chex.assert_trees_all_close(((loss, metrics), grads), mean, rtol=1e-5, atol=1e-6)
    # for a loss without noise it is the whole batch's gradient (up to float rounding)
    def noiseless(p, xb, k, s):
        mean_BxZ, _ = jaxvae.encode(model, p, xb)
        logits_BxD = jaxvae.decode(model, p, mean_BxZ)
        nll = jnp.mean(jaxvae.distributions.bernoulli_nll(logits_BxD, xb))
        return nll, {"nll": nll}

    chex.assert_trees_all_close(
        jax.jit(train.microbatched_value_and_grad(noiseless, 4))(params, x, key, step),
        jax.jit(jax.value_and_grad(noiseless, has_aux=True))(params, x, key, step),
        rtol=1e-5, atol=1e-6)
    # a batch that does not split evenly, or is not larger than the micro-batch, runs whole
    for rows in (10, 4):
        got, want = micro(params, x[:rows], key, step), whole(params, x[:rows], key, step)
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


def test_microbatched_epoch_trains_and_checks_the_divisor(small):
    model, x = small
    tx = jaxvae.make_optimizer(1e-2)
    loss_fn = jaxvae.training.step.vae_loss_fn(model)
    epoch = jaxvae.make_train_epoch(loss_fn, tx, 16, microbatch_size=8)  # 2 full + 8 left
    state = jaxvae.create_train_state(jaxvae.init(model, jax.random.key(0)), tx)
    losses = []
    for e in range(4):
        state, metrics, steps = epoch(state, jnp.asarray(x), jax.random.key(e), jax.random.key(9))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 12 and steps["loss"].shape == (3,)
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="microbatch_size 5 does not divide the batch size 16"):
        jaxvae.make_train_epoch(loss_fn, tx, 16, microbatch_size=5)
    with pytest.raises(ValueError, match="microbatch_size must be >= 1"):
        jaxvae.make_train_step(loss_fn, tx, microbatch_size=0)
    with pytest.raises(TypeError, match="microbatch_size must be an int"):
        jaxvae.make_train_step(loss_fn, tx, microbatch_size=2.0)


@pytest.mark.multidevice
@pytest.mark.parametrize("feed, microbatch_size", [("device", 4), ("stream", None)])
def test_fit_on_four_devices_equals_one_device(feed, microbatch_size):
    # 38 examples, batch 8: 4 full batches split over 4 devices, then a remainder of 6 that 4
    # devices do not divide (it runs replicated); dynamic binarization draws per-batch noise;
    # on the device feed each batch is 2 micro-batches of 4, each split over the devices.
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(38, 6)).astype(np.float32)
    data = jaxvae.Dataset(x, np.zeros(38, np.int32), x[:10], np.zeros(10, np.int32))
    config = jaxvae.TrainConfig.from_flat(hidden=(8,), latent_dim=2, batch_size=8, epochs=2,
                                          lr=1e-2, binarize="dynamic", feed=feed,
                                          microbatch_size=microbatch_size)
    one = jaxvae.fit(config.replace(num_devices=1), data)
    four = jaxvae.fit(config, data)
    assert jax.local_device_count() == 4
    assert one.devices_used == 1 and four.devices_used == 4
    assert int(four.state.step) == int(one.state.step) == 2 * 5
    shardings = {leaf.sharding for leaf in jax.tree.leaves(four.state.params)}
    assert all(len(s.device_set) == 4 and s.is_fully_replicated for s in shardings)
    chex.assert_trees_all_close(four.state.params, one.state.params, rtol=1e-5, atol=1e-6)
    for a, b in zip(four.history, one.history):
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(a["test_loss"], b["test_loss"], rtol=1e-5)


@pytest.mark.multidevice
def test_conv_fit_on_four_devices_equals_one_device():
    # the conv VAE's layout swaps run inside conditionals (jaxvae.models.conv): their predicate
    # reads one element of a batch that is split over the devices
    x = np.random.default_rng(0).uniform(size=(16, 64)).astype(np.float32)
    data = jaxvae.Dataset(x, np.zeros(16, np.int32), x[:8], np.zeros(8, np.int32))
    config = jaxvae.TrainConfig.from_flat(model="conv", conv_channels=(4, 8), hidden=(8,),
                                          latent_dim=2, batch_size=8, epochs=1, lr=1e-2)
    one, four = jaxvae.fit(config.replace(num_devices=1), data), jaxvae.fit(config, data)
    assert one.devices_used == 1 and four.devices_used == 4
    chex.assert_trees_all_close(four.state.params, one.state.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(four.history[0]["test_loss"], one.history[0]["test_loss"],
                               rtol=1e-5)


@pytest.mark.multidevice
def test_fit_uses_the_largest_device_count_that_divides_the_batch():
    x = np.random.default_rng(1).uniform(size=(12, 4)).astype(np.float32)
    data = jaxvae.Dataset(x, np.zeros(12, np.int32), x[:4], np.zeros(4, np.int32))
    config = jaxvae.TrainConfig.from_flat(hidden=(4,), latent_dim=2, batch_size=6, epochs=1)
    assert jaxvae.fit(config, data).devices_used == 3  # 6 rows: 3 devices of the 4
    assert jaxvae.fit(config.replace(num_devices=2), data).devices_used == 2
    with pytest.raises(ValueError, match="num_devices 5 is more than the 4 local devices"):
        jaxvae.fit(config.replace(num_devices=5), data)


def test_fit_from_given_parameters_starts_there_and_refuses_other_shapes():
    from jaxvae.models import interface
    rng = np.random.default_rng(0)
    data = jaxvae.Dataset(rng.random((64, 12)).astype(np.float32), -np.ones(64, np.int32),
                          rng.random((16, 12)).astype(np.float32), -np.ones(16, np.int32))
    config = jaxvae.TrainConfig.from_flat(hidden=(8,), latent_dim=2, batch_size=16, epochs=1,
                                          lr=1e-6)
    model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(12,))
    start = jaxvae.init(model, jax.random.key(7))  # not the run's own initialization (seed 0)
    result = jaxvae.fit(config, data, init_params=start)
    # 4 Adam steps of at most a few times the learning rate each
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree.leaves(result.state.params), jax.tree.leaves(start)))
    assert moved < 4 * 4 * 1e-6
    fresh = jaxvae.init(model, jax.random.key(0))
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree.leaves(fresh), jax.tree.leaves(start))) > 0.1
    wrong = jax.tree.map(lambda a: a, start)
    wrong["encoder"]["mean"]["kernel"] = np.zeros((8, 3), np.float32)
    with pytest.raises(ValueError, match=r"other shapes than the model's at .*'mean'.*'kernel'"):
        interface.params_for(model, wrong)
    with pytest.raises(ValueError, match="do not have the model's parameters"):
        interface.params_for(model, {"encoder": start["encoder"]})
