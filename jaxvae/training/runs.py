"""Run directories written by ``experiments/train.py``: the config, the model and its parameters.

A run directory holds ``summary.json`` (with the ``config``) and ``params.msgpack``
(``flax.serialization``); ``load_run`` rebuilds the model from the config and loads the
parameters into it, so evaluation and plotting scripts work on any finished run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
from flax import serialization

from jaxvae import config as config_lib
from jaxvae.data import datasets as data_lib
from jaxvae.models import mlp as models
from jaxvae.models import registry


class Run(NamedTuple):
    config: config_lib.TrainConfig
    model: nn.Module
    params: Any
    data: data_lib.Dataset  # the dataset of the config, split as in training
    summary: dict  # summary.json as written by the training script
    path: Path


def config_from_dict(values: dict) -> config_lib.TrainConfig:
    """A TrainConfig from its ``to_dict`` (JSON lists become tuples; unknown keys are refused)."""
    fields = {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"the run's config has fields this jaxvae does not know: {unknown}; "
                         "evaluate it with the jaxvae version that trained it")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return config_lib.TrainConfig(**values)


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
    config = config_from_dict(summary["config"])
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
