"""Early stopping, per-step metrics passed to on_epoch_end, TensorBoard event files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train as train_script  # experiments/train.py
from jaxvae import data as data_lib
from jaxvae import early_stopping, registry, train, trainer
from jaxvae.config import TrainConfig


def test_early_stopping_keeps_the_best_state_and_stops_after_patience_epochs():
    stopper = early_stopping.EarlyStopping(patience=2)
    losses = [5.0, 4.0, float("nan"), 3.0, 3.5, 3.0, 9.0]
    stops = []
    for epoch, loss in enumerate(losses, start=1):
        state = {"w": jnp.full((2,), float(epoch))}
        stops.append(stopper.update(epoch, loss, state))
    # best at epoch 4 (3.0; a tie at epoch 6 is no improvement): stop at epoch 6.
    assert stops == [False, False, False, False, False, True, True]
    assert stopper.best_epoch == 4 and stopper.best_loss == 3.0
    np.testing.assert_array_equal(stopper.best_state["w"], [4.0, 4.0])
    with pytest.raises(ValueError, match="patience must be an int >= 1"):
        early_stopping.EarlyStopping(0)


@pytest.fixture(scope="module")
def early_stopped():
    d = data_lib.load_digits()
    d = d._replace(x_train=d.x_train[:300], y_train=d.y_train[:300], x_test=d.x_test[:100],
                   y_test=d.y_test[:100])
    config = TrainConfig(dataset="digits", epochs=15, batch_size=32, lr=3e-2, latent_dim=4,
                         hidden=(64,), patience=2, validation_fraction=0.3)
    ends = []
    result = trainer.fit(config, d, on_epoch_end=lambda end: ends.append(
        (end.record, end.step_metrics, int(end.state.step))))
    return config, d, result, ends


def test_fit_stops_early_and_returns_the_best_epochs_state(early_stopped):
    config, d, result, _ = early_stopped
    val_losses = [r["val_loss"] for r in result.history]
    assert len(result.history) < config.epochs  # it did stop early
    assert result.best_epoch == int(np.argmin(val_losses)) + 1
    assert len(result.history) == result.best_epoch + config.patience
    assert trainer.final_record(result) == result.history[result.best_epoch - 1]
    # The returned parameters are the best epoch's: re-evaluated, they give its val loss.
    _, val = early_stopping.split_validation(d, config.validation_fraction, config.seed)
    steps_per_epoch = -(-(len(d.x_train) - len(val["x"])) // config.batch_size)
    assert int(result.state.step) == result.best_epoch * steps_per_epoch
    loss_fn = registry.build(config, d.example_shape).loss_fn
    metrics = train.make_evaluate(loss_fn, len(val["x"]))(
        result.state.params, jax.device_put(val), trainer.run_keys(config.seed).eval,
        result.state.step)
    assert float(metrics["loss"]) == pytest.approx(val_losses[result.best_epoch - 1], rel=1e-6)


def test_on_epoch_end_gets_every_steps_metrics(early_stopped):
    config, d, result, ends = early_stopped
    num_train = len(d.x_train) - len(early_stopping.split_validation(
        d, config.validation_fraction, config.seed)[1]["x"])
    num_full, remainder = divmod(num_train, config.batch_size)
    assert [e[0] for e in ends] == result.history
    for epoch, (record, steps, step) in enumerate(ends, start=1):
        assert set(steps) >= {"loss", "recon", "kl"}
        assert steps["loss"].shape == (num_full + 1,)
        assert step == epoch * (num_full + 1)
        # The epoch's train loss is the example-weighted mean of its steps' losses.
        weighted = (steps["loss"][:-1].sum() * config.batch_size
                    + steps["loss"][-1] * remainder) / num_train
        assert record["train_loss"] == pytest.approx(float(weighted), rel=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--patience", "-1"], "patience must be None or an int >= 0"),
    (["--patience", "2", "--validation-fraction", "1.5"], "validation_fraction must be a number"),
])
def test_bad_early_stopping_flags_fail_before_training(argv, message, tmp_path, capsys):
    code = train_script.main(argv + ["--outdir", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert message in capsys.readouterr().err
