"""Early stopping: the tracker and its flags (the end-to-end run is in test_eval_scripts.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import train as train_script
from jaxvae.training import early_stopping


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


@pytest.mark.parametrize("argv, message", [
    (["--patience", "-1"], "patience must be None or an int >= 0"),
    (["--patience", "2", "--validation-fraction", "1.5"], "validation_fraction must be a number"),
    (["--dataset", "digits", "--patience", "2", "--batch-size", "1400"],
     "larger than the training set without its validation part"),
])
def test_bad_early_stopping_flags_fail_before_training(argv, message, tmp_path, capsys):
    code = train_script.main(argv + ["--outdir", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert message in capsys.readouterr().err
