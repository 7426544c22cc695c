"""Run directories written by ``experiments/train.py``: the config, the model and its parameters.

A run directory holds ``summary.json`` (with the ``config``, sectioned as
``TrainConfig.to_dict`` writes it, or flat as older versions wrote it) and ``params.msgpack``
(``flax.serialization``); ``load_run`` rebuilds the model from the config and loads the
parameters into it, so evaluation and plotting scripts work on any finished run.

A run directory holds one run: ``check_new_run`` refuses to start a run into a directory that
holds files already (unless the run resumes it, or ``overwrite``), and ``clear_run`` deletes the
old run's files first when overwriting.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
from flax import serialization

from jaxvae import config as config_lib
from jaxvae.data import datasets as data_lib
from jaxvae.models import mlp as models
from jaxvae.models import registry


# Files that mark a directory as a run directory: --overwrite deletes nothing else.
RUN_MARKERS = ("summary.json", "metrics.jsonl", "params.msgpack", "checkpoints")


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_new_run(path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Checks that a run may be written into the directory ``path``; reads, never writes.

    A missing or empty directory takes a new run. One with files takes a run only with
    ``resume`` (the same run continued) or ``overwrite`` (its files deleted first by
    ``clear_run``); ``overwrite`` is refused for a directory without any of ``RUN_MARKERS``,
    so a mistyped path does not delete someone's files.

    Raises:
      ValueError: with a message that names the directory and what to do.
    """
    path = Path(path)
    if resume and overwrite:
        raise ValueError("--resume continues the run in --outdir and --overwrite deletes it: "
                         "pass one of them")
    if path.exists() and not path.is_dir():
        raise ValueError(f"output directory {path} is a file, not a directory: choose another "
                         "--outdir")
    if resume or not path.exists():
        return
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError as e:
        raise ValueError(f"cannot read output directory {path}: {e.strerror or e}") from None
    if not names:
        return
    if overwrite:
        if not any((path / m).exists() for m in RUN_MARKERS):
            raise ValueError(
                f"--overwrite deletes only run directories, and {path} holds no "
                f"{', '.join(RUN_MARKERS)} but {len(names)} other entries ({_listing(names)}): "
                "choose an empty or new --outdir")
        return
    resumable = (path / "checkpoints").is_dir() and any(
        p.is_dir() and p.name.isdigit() for p in (path / "checkpoints").iterdir())
    what = "pass --resume to continue it, " if resumable else ""
    raise ValueError(f"output directory {path} already holds a run ({_listing(names)}): "
                     f"{what}pass --overwrite to delete it and start a new run, or choose "
                     "another --outdir")


def clear_run(path) -> None:
    """Deletes everything inside the run directory ``path`` (not the directory itself).

    Symbolic links are removed, never followed. Call ``check_new_run(path, overwrite=True)``
    first: it refuses directories that are not run directories.
    """
    path = Path(path)
    if not path.is_dir():
        return
    try:
        for entry in path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    except OSError as e:
        raise ValueError(f"--overwrite: cannot delete the old run in {path}: "
                         f"{e.strerror or e}") from None


class Run(NamedTuple):
    config: config_lib.TrainConfig
    model: nn.Module
    params: Any
    data: data_lib.Dataset  # the dataset of the config, split as in training
    summary: dict  # summary.json as written by the training script
    path: Path


def load_run(path) -> Run:
    """Loads ``summary.json`` and ``params.msgpack`` of a run directory and its dataset.

    Raises:
      ValueError: the directory or one of its files is missing, or the parameters do not fit
        the model of the config.
    """
    path = Path(path)
    summary_path, params_path = path / "summary.json", path / "params.msgpack"
    for p in (summary_path, params_path):
        if not p.is_file():
            raise ValueError(f"{p} not found: pass a run directory written by "
                             "experiments/train.py (it holds summary.json and params.msgpack)")
    summary = json.loads(summary_path.read_text())
    if "config" not in summary:
        raise ValueError(f"{summary_path} has no 'config'; was it written by experiments/train.py?")
    try:
        config = config_lib.TrainConfig.from_dict(summary["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{summary_path}: {e}") from None
    data = data_lib.load_for(config)
    model = registry.build(config, data.example_shape).model
    template = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
    template = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), template)
    try:
        params = serialization.from_bytes(template, params_path.read_bytes())
    except (ValueError, KeyError) as e:
        raise ValueError(f"{params_path} does not fit the model of {summary_path}: {e}") from None
    shapes = jax.tree.map(lambda a: a.shape, params)
    if shapes != jax.tree.map(lambda a: a.shape, template):
        raise ValueError(f"{params_path} has parameter shapes that do not fit the model of "
                         f"{summary_path}")
    return Run(config, model, params, data, summary, path)
