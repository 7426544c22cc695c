"""The IWAE paper's setup (Burda et al. 2016): tanh MLPs, its learning-rate schedule, Adam's eps."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvae
from jaxvae.models import builders, registry
from jaxvae.training import step

PAPER = jaxvae.TrainConfig.from_flat(hidden=(200, 200), latent_dim=50, activation="tanh",
                                     lr_schedule="iwae", adam_eps=1e-4)


def test_paper_architecture_has_the_parameter_count_of_its_layer_sizes():
    """784-200-200-50 encoder (mean and log-variance heads), 50-200-200-784 decoder."""
    def dense(n_in, n_out):
        return n_in * n_out + n_out

    expected = (dense(784, 200) + dense(200, 200) + 2 * dense(200, 50)
                + dense(50, 200) + dense(200, 200) + dense(200, 784))
    model = registry.build(PAPER, (784,)).model
    params = jaxvae.init(model, jax.random.key(0))
    assert expected == 425_284
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == expected


def test_tanh_encoder_is_tanh_of_the_affine_layers():
    model = registry.build(PAPER, (784,)).model
    params = jaxvae.init(model, jax.random.key(1))
    x = np.random.default_rng(0).random((3, 784)).astype(np.float32)
    enc = jax.tree.map(np.asarray, params["encoder"])
    h = np.tanh(x @ enc["mlp"]["hidden_0"]["kernel"] + enc["mlp"]["hidden_0"]["bias"])
    h = np.tanh(h @ enc["mlp"]["hidden_1"]["kernel"] + enc["mlp"]["hidden_1"]["bias"])
    mean, logvar = jaxvae.encode(model, params, jnp.asarray(x))
    np.testing.assert_allclose(mean, h @ enc["mean"]["kernel"] + enc["mean"]["bias"],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logvar, h @ enc["logvar"]["kernel"] + enc["logvar"]["bias"],
                               rtol=1e-5, atol=1e-5)


def test_iwae_schedule_has_stages_of_three_to_the_i_epochs():
    """With 3,280 steps each stage i lasts 3**i steps at 1e-3 * 10**(-i/7)."""
    schedule = step.make_lr_schedule("iwae", 1e-3, total_steps=3280)
    rates = np.array([float(schedule(t)) for t in range(3280)])
    starts = np.concatenate([[0], np.cumsum([3 ** i for i in range(8)])])
    for i in range(8):
        stage = rates[starts[i]:starts[i + 1]]
        assert len(stage) == 3 ** i
        np.testing.assert_allclose(stage, 1e-3 * 10 ** (-i / 7), rtol=1e-5)


def test_cosine_schedule_goes_from_lr_to_zero():
    schedule = step.make_lr_schedule("cosine", 2e-3, total_steps=100)
    for t in (0, 25, 50, 100):
        assert float(schedule(t)) == pytest.approx(1e-3 * (1 + math.cos(math.pi * t / 100)),
                                                   abs=1e-9)


def test_adam_eps_is_the_optimizers():
    """Adam's first step is -lr * g / (|g| + eps): visible for a gradient near eps."""
    tx = jaxvae.make_optimizer(1.0, eps=1e-4)
    params = {"w": jnp.zeros(1)}
    updates, _ = tx.update({"w": jnp.array([1e-4])}, tx.init(params), params)
    assert float(updates["w"][0]) == pytest.approx(-0.5, rel=1e-4)


def test_fit_fills_in_the_schedule_length_and_decays_the_rate():
    data = jaxvae.Dataset(np.random.default_rng(0).random((40, 6)).astype(np.float32),
                          np.zeros(40, np.int32), np.random.default_rng(1).random(
                              (8, 6)).astype(np.float32), np.zeros(8, np.int32))
    config = PAPER.replace(hidden=(4,), latent_dim=2, epochs=2, batch_size=10)
    assert builders.prepare(config, data).optimizer.lr_total_steps == 8  # 2 epochs * 4 steps
    result = jaxvae.fit(config, data)
    counts = [s.count for s in result.state.opt_state if isinstance(s, optax.ScaleByScheduleState)]
    assert [int(c) for c in counts] == [8]  # the schedule's step counter ran over the run


@pytest.mark.parametrize("field, value, message", [
    ("activation", "gelu", "unknown activation 'gelu'"),
    ("lr_schedule", "step", "unknown learning-rate schedule 'step'"),
    ("adam_eps", 0.0, "adam_eps must be a finite number > 0"),
    ("lr_total_steps", -1, "lr_total_steps must be an int >= 0"),
])
def test_bad_optimizer_and_activation_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        jaxvae.validate_config(PAPER.replace(**{field: value}))
