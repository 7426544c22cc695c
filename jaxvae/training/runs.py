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

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
from flax import serialization

from jaxvae import config as config_lib
from jaxvae.data import datasets as data_lib
from jaxvae.data import standardize
from jaxvae.models import code_prior
from jaxvae.models import interface
from jaxvae.models import mlp as models
from jaxvae.models import registry
from jaxvae.models import vq


# Files that mark a directory as a run directory: --overwrite deletes nothing else.
RUN_MARKERS = ("summary.json", "metrics.jsonl", "params.msgpack", "checkpoints")


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_new_run(path, *, resume: bool = False, overwrite: bool = False,
                  markers: tuple[str, ...] = RUN_MARKERS, what: str = "a run",
                  flag: str = "--outdir") -> None:
    """Checks that a run may be written into the directory ``path``; reads, never writes.

    A missing or empty directory takes a new run. One with files takes a run only with
    ``resume`` (the same run continued) or ``overwrite`` (its files deleted first by
    ``clear_run``); ``overwrite`` is refused for a directory without any of ``markers`` (the
    files the script writes; default ``RUN_MARKERS``), so a mistyped path does not delete
    someone's files. ``what`` names the content in the message ("a run", "figures"), ``flag``
    the script's flag for the directory.

    Raises:
      ValueError: with a message that names the directory and what to do.
    """
    path = Path(path)
    if resume and overwrite:
        raise ValueError("--resume continues the run in --outdir and --overwrite deletes it: "
                         "pass one of them")
    if path.exists() and not path.is_dir():
        raise ValueError(f"output directory {path} is a file, not a directory: choose another "
                         f"{flag}")
    if resume or not path.exists():
        return
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError as e:
        raise ValueError(f"cannot read output directory {path}: {e.strerror or e}") from None
    if not names:
        return
    if overwrite:
        if not any((path / m).exists() for m in markers):
            raise ValueError(
                f"--overwrite deletes only directories this script wrote, and {path} holds no "
                f"{', '.join(markers)} but {len(names)} other entries ({_listing(names)}): "
                f"choose an empty or new {flag}")
        return
    resumable = (path / "checkpoints").is_dir() and any(
        p.is_dir() and p.name.isdigit() for p in (path / "checkpoints").iterdir())
    again = "pass --resume to continue it, " if resumable else ""
    fresh = "it and start a new run" if what == "a run" else "them first"
    raise ValueError(f"output directory {path} already holds {what} ({_listing(names)}): "
                     f"{again}pass --overwrite to delete {fresh}, or choose another {flag}")


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
    data: data_lib.Dataset  # the dataset of the config, split as in training, in its own units
    summary: dict  # summary.json as written by the training script
    path: Path
    standardization: standardize.Standardization | None = None  # the statistics the model
    #   was trained with (standardize.FILE); None: the model reads the data as it is

    def model_input(self, x):
        """Data in its own units -> what the model reads (standardized when it was trained so)."""
        return x if self.standardization is None else standardize.apply(self.standardization, x)

    def data_output(self, u):
        """Decoder means or samples of the model -> the data's own units."""
        return u if self.standardization is None else standardize.invert(self.standardization, u)

    @property
    def nll_offset(self) -> float:
        """sum_d log s_d: add it to an NLL (or -ELBO) of ``model_input(x)`` to get the NLL of x
        in the data's units (0 without standardization)."""
        return 0.0 if self.standardization is None else standardize.log_det(self.standardization)


def load_standardization(path, config: config_lib.TrainConfig
                         ) -> standardize.Standardization | None:
    """The statistics of the run in directory ``path``, or None when its data is not
    standardized: read when the config says ``feature`` (``auto``: when the file is there).

    Raises:
      ValueError: the run needs the file and it is missing or damaged.
    """
    file = Path(path) / standardize.FILE
    if config.data.standardize == "feature" or (config.data.standardize == "auto" and file.exists()):
        return standardize.load(file)
    return None


def load_run(path) -> Run:
    """Loads ``summary.json`` and ``params.msgpack`` of a run directory and its dataset.

    A run trained on standardized data also loads its statistics (``Run.standardization``):
    pass the data through ``Run.model_input`` and the model's outputs through
    ``Run.data_output``, and add ``Run.nll_offset`` to its NLLs.

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
    params = load_params(params_path, model, f"the model of {summary_path}")
    stats = load_standardization(path, config)
    if stats is not None and stats.mean.shape != tuple(data.example_shape):
        raise ValueError(f"{path / standardize.FILE} holds statistics of shape "
                         f"{stats.mean.shape}, but the run's examples have shape "
                         f"{data.example_shape}")
    return Run(config, model, params, data, summary, path, stats)


def load_params(params_path, model: nn.Module, what: str = "the model") -> Any:
    """The parameters in ``params_path`` (a ``params.msgpack``) as the tree ``model`` has.

    Raises:
      ValueError: the file is missing, or its parameters (names or shapes) are not the
        model's; ``what`` names the model in the message.
    """
    params_path = Path(params_path)
    if not params_path.is_file():
        raise ValueError(f"{params_path} not found: pass a run directory written by "
                         "experiments/train.py (it holds summary.json and params.msgpack)")
    shapes = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
    return read_params(params_path, model, shapes, what)


def read_params(params_path, model: nn.Module, shapes: Any, what: str = "the model") -> Any:
    """The parameters in the msgpack file ``params_path`` as ``model``'s tree, checked against
    ``shapes`` (its parameters as ``jax.ShapeDtypeStruct`` leaves: ``jax.eval_shape`` of its
    initializer, so no arrays are made).

    Raises:
      ValueError: the file does not hold the model's parameter names, or holds other shapes;
        ``what`` names the model in the message.
    """
    params_path = Path(params_path)
    try:  # from_bytes takes only the names from its template
        params = serialization.from_bytes(shapes, params_path.read_bytes())
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{params_path} does not fit {what}: {e}") from None
    try:
        return interface.params_for(model, params, shapes)
    except ValueError:
        raise ValueError(f"{params_path} has parameter shapes that do not fit {what}") from None


# Files of a code prior directory (written by experiments/vq_prior.py).
PRIOR_FILES = ("prior.json", "prior_params.msgpack")


def file_digest(path) -> str:
    """The SHA-256 of a file's bytes, hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_code_prior(path, run: Run) -> tuple[nn.Module, Any]:
    """``(model, params)``: the VQ-VAE of ``run`` joined with the code prior in directory ``path``.

    ``path`` holds ``prior.json`` (the prior's sizes and the digest of the VQ-VAE parameters
    whose codes it was trained on) and ``prior_params.msgpack``. The model is
    ``code_prior.with_prior(run.model, prior)``, its parameters ``{"vqvae", "prior"}``.

    Raises:
      ValueError: the run is not a VQ-VAE, a file is missing or damaged, or the prior was
        trained on another VQ-VAE's codes.
    """
    path = Path(path)
    if not isinstance(run.model, vq.VQVAE):
        raise ValueError(f"{run.path} holds a --model {run.config.model.name} run: a code prior "
                         "goes with a --model vqvae run only")
    for name in PRIOR_FILES:
        if not (path / name).is_file():
            raise ValueError(f"{path / name} not found: pass a directory written by "
                             "experiments/vq_prior.py (it holds prior.json and "
                             "prior_params.msgpack)")
    try:
        saved = json.loads((path / "prior.json").read_text())
        sizes = saved["prior"]
        prior = code_prior.for_vqvae(run.model, **sizes)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path / 'prior.json'} does not describe a code prior: {e}") from None
    digest = file_digest(run.path / "params.msgpack")
    if saved.get("vqvae_params_sha256") != digest:
        raise ValueError(f"the prior in {path} was trained on the codes of another VQ-VAE (its "
                         f"params.msgpack differs from {run.path / 'params.msgpack'}): train a "
                         f"prior for this run with python -m experiments.vq_prior {run.path}")
    shapes = jax.eval_shape(lambda: code_prior.init(prior, jax.random.key(0)))
    params = read_params(path / "prior_params.msgpack", prior, shapes,
                         f"the prior of {path / 'prior.json'}")
    return (code_prior.with_prior(run.model, prior),
            code_prior.join_params(run.params, params))
