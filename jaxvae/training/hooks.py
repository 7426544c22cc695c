"""Hooks of the training loop: ``hook(step, progress)`` after each chunk of steps.

The loop (``jaxvae.training.loop.run_epochs``) calls ``for hook in hooks: hook(step, progress)`` after
every chunk that ends inside an epoch and once at each epoch end, where ``progress.record`` holds
the epoch's history record (``None`` otherwise). A hook that returns True ends the run after the
current epoch. Hooks elsewhere: ``loop.CheckpointHook`` (checkpoints),
``early_stopping.EarlyStopping`` (validation loss), ``tracking.TensorBoardLogger``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxvae.training import files


class EveryEpoch:
    """Calls ``fn(record)`` with each epoch's history record (progress bars, printing)."""

    def __init__(self, fn: Callable[[dict], Any]):
        self.fn = fn

    def __call__(self, step: int, progress) -> None:
        if progress.record is not None:
            self.fn(progress.record)


def json_line(record: dict) -> str:
    """``record`` as one line of strict JSON: a non-finite number (NaN, inf) becomes null."""
    return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v
                       for k, v in record.items()}, allow_nan=False) + "\n"


class MetricsFile:
    """Appends each epoch's record as one JSON line (``json_line``: NaN -> null) to ``path``.

    ``rewrite(history)`` (on resume) replaces the file, atomically, with the checkpoint's
    records, so lines written after that checkpoint are dropped.
    """

    def __init__(self, path, *, fresh: bool = True):
        self.path = Path(path)
        if fresh:
            self.path.write_text("")

    def rewrite(self, history: list[dict]) -> None:
        files.write_atomic(self.path, "".join(json_line(r) for r in history))

    def __call__(self, step: int, progress) -> None:
        if progress.record is not None:
            with self.path.open("a") as f:
                f.write(json_line(progress.record))


class TimeLimit:
    """Ends the run after the epoch whose cumulative training time reaches ``max_seconds``.

    The time is summed over the history (``seconds`` of each record), which a checkpoint holds,
    so a resumed run keeps counting. ``max_seconds`` 0 or None: no limit.
    """

    def __init__(self, max_seconds: float | None):
        self.max_seconds = max_seconds

    def __call__(self, step: int, progress) -> bool:
        if not self.max_seconds or progress.record is None:
            return False
        return sum(r["seconds"] for r in progress.loop["history"]) >= self.max_seconds
