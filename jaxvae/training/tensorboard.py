"""TensorBoard event files through tensorboardX (no TensorFlow needed).

``TensorBoardLogger`` is a hook of the training loop (``fit(..., hooks=[logger])``): after each
epoch it writes the per-step training metrics (``step/loss``, ``step/recon``, ``step/kl`` at the global
step), the epoch's metrics grouped by metric (``loss/train``, ``loss/test``, ``loss/val``, ...,
at the global step reached), and two image grids: reconstructions of fixed examples and
samples from the prior with a fixed key. View with ``tensorboard --logdir DIR``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from jaxvae.models import mlp as models
from jaxvae.objectives import bounds as objectives
from jaxvae.evaluation import plots


def _summary_writer(logdir: str):
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise ImportError("TensorBoard logging needs tensorboardX: "
                          "pip install 'jaxvae[tensorboard]'") from e
    return SummaryWriter(logdir=str(logdir))


def _tag(key: str) -> str | None:
    """``train_loss`` -> ``loss/train``; ``seconds`` -> ``time/epoch_seconds``; epoch -> None."""
    for split in ("train", "test", "val"):
        if key.startswith(split + "_"):
            return f"{key[len(split) + 1:]}/{split}"
    if key in ("epoch", "step"):
        return None
    return {"seconds": "time/epoch_seconds"}.get(key, f"other/{key}")


class TensorBoardLogger:
    """Writes scalars and image grids of each epoch; use as ``fit(..., hooks=[logger])``.

    Args:
      logdir: the directory of the event files (created).
      likelihood: the model's p(x | z), to turn decoder outputs into images.
      examples: a few inputs whose reconstructions are drawn every epoch (None: no grid).
      labels: the examples' int labels, for conditional models (None: unlabelled).
      num_samples: prior samples drawn every epoch (0: no grid).
      seed: the key of the prior samples, the same every epoch so that they can be compared.
    """

    def __init__(self, logdir, likelihood: str = "bernoulli", examples=None,
                 num_samples: int = 16, seed: int = 0, labels=None):
        objectives.check_likelihood(likelihood)
        Path(logdir).mkdir(parents=True, exist_ok=True)
        self.logdir = str(logdir)
        self.writer = _summary_writer(self.logdir)
        self.likelihood = likelihood
        self.examples = None if examples is None else np.asarray(examples, np.float32)
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        self.num_samples = num_samples
        self.sample_key = jax.random.key(seed)

    def __call__(self, step: int, end) -> None:
        """Logs the epoch that ends (``jaxvae.training.loop.Progress`` with a record)."""
        if end.record is None:
            return
        step = int(end.state.step)
        for name, values in end.step_metrics.items():
            values = np.asarray(values)
            first = step - len(values) + 1
            for i, value in enumerate(values):
                self.writer.add_scalar(f"step/{name}", float(value), first + i)
        for key, value in end.record.items():
            tag = _tag(key)
            if tag is not None:
                self.writer.add_scalar(tag, float(value), step)
        self._images(end.model, end.state.params, step)
        self.writer.flush()

    def _grid(self, x: np.ndarray, ncols: int) -> np.ndarray | None:
        images = plots.as_images(np.clip(x, 0.0, 1.0))
        return None if images is None else plots.tile(images, ncols)

    def _images(self, model, params, step: int) -> None:
        mean = lambda out: np.asarray(objectives.likelihood_mean(self.likelihood, out))
        if self.examples is not None and len(self.examples):
            recon = mean(models.reconstruct(model, params, self.examples, labels=self.labels))
            grid = self._grid(np.concatenate([self.examples, recon]), len(self.examples))
            if grid is not None:
                self.writer.add_image("images/reconstructions", grid, step,
                                      dataformats="HW" if grid.ndim == 2 else "HWC")
        if self.num_samples:
            samples = mean(models.sample(model, params, self.sample_key, self.num_samples))
            grid = self._grid(samples, int(np.ceil(np.sqrt(self.num_samples))))
            if grid is not None:
                self.writer.add_image("images/prior_samples", grid, step,
                                      dataformats="HW" if grid.ndim == 2 else "HWC")

    def close(self) -> None:
        self.writer.close()
