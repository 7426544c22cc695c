"""Early stopping on a validation loss, keeping the state of the best epoch.

``fit`` holds out ``validation_fraction`` of the training split (exactly
round(fraction * N) examples, stratified by label, chosen by the run's seed) when
``TrainConfig.run.patience`` is set, evaluates it after every epoch, and stops once ``patience``
epochs in a row brought no lower validation loss; the returned state is the best epoch's.
The 50,000 / 10,000 split of MNIST's training digits used for early stopping by e.g. Burda et
al. (2016) is ``validation_fraction = 10000 / 60000`` (``--validation-size 10000``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvae.data import datasets as data_lib


def split_validation(data: data_lib.Dataset, fraction: float, seed: int
                     ) -> tuple[data_lib.Dataset, dict[str, np.ndarray]]:
    """Moves a stratified ``fraction`` of the training split into a validation set.

    The validation set holds exactly ``validation_count(N, fraction)`` examples, each class
    in proportion to its size (``data.stratified_split`` with ``num_test``); the same ones
    for the same seed.

    Returns the dataset with the smaller training split (the test split unchanged) and the
    validation set as ``{"x", "y"}``.
    """
    train_idx, val_idx = data_lib.stratified_split(
        data.y_train, fraction, seed, num_test=validation_count(len(data.y_train), fraction))
    if len(val_idx) == 0:
        raise ValueError(f"validation_fraction {fraction} of {len(data.y_train)} training "
                         "examples leaves no validation example; raise it")
    validation = {"x": data.x_train[val_idx], "y": data.y_train[val_idx]}
    return data._replace(x_train=data.x_train[train_idx], y_train=data.y_train[train_idx]), \
        validation


def validation_count(num_examples: int, fraction: float) -> int:
    """Examples ``split_validation`` holds out of ``num_examples``: round(fraction * N)."""
    return int(round(num_examples * fraction))


class EarlyStopping:
    """Tracks the lowest monitored loss, its epoch and a copy of that epoch's state.

    ``update`` returns True when ``patience`` epochs have passed since the best one. A NaN
    loss never counts as an improvement. As a hook of the training loop (``jaxvae.training.hooks``) it
    updates at every epoch end and ends the run when ``update`` says so.
    """

    def __init__(self, patience: int):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {patience!r}")
        self.patience = patience
        self.best_loss = float("inf")
        self.best_epoch: int | None = None
        self.best_state: Any = None

    def update(self, epoch: int, loss: float, state: Any) -> bool:
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = float(loss), epoch
            # A copy: the next epoch donates (deletes) the live state's buffers.
            self.best_state = jax.tree.map(jnp.copy, state)
            return False
        return epoch - (self.best_epoch or 0) >= self.patience

    def __call__(self, step: int, progress) -> bool:
        """As a hook of the training loop: updates on each epoch's ``val_loss``."""
        if progress.record is None:
            return False
        return self.update(progress.record["epoch"], progress.record["val_loss"],
                           progress.state)
