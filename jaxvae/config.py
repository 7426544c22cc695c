"""The training configuration: one frozen dataclass of sections, validated up front.

Each section is defined, commented and validated by the module that owns its concept:

    data        jaxvae.data.datasets.DataConfig            which examples, how they reach the model
    model       jaxvae.models.registry.ModelConfig         the family, its sizes, prior, likelihood
    objective   jaxvae.objectives.losses.ObjectiveConfig   KL weight and schedule, free bits, K
    optimizer   jaxvae.training.step.OptimizerConfig       batch, Adam, lr schedule, clipping
    run         jaxvae.training.loop.RunConfig             epochs, seed, checkpoints, early stopping
    evaluation  jaxvae.evaluation.likelihood.EvalConfig    evaluation batches

Every field has a flat name, unique across the sections (the field's name; the model family
``ModelConfig.name`` is ``model``). The flat names are the command-line flags
(``--batch-size``, experiments/cli.py), the keywords of ``TrainConfig.from_flat`` and
``TrainConfig.replace``, and the keys of the flat config dicts that run directories written by
earlier versions hold (``TrainConfig.from_dict`` reads both forms).

    >>> import jaxvae
    >>> config = jaxvae.TrainConfig.from_flat(hidden=(8,), latent_dim=2, lr=1e-2)
    >>> config.model.hidden, config.optimizer.lr, config.run.epochs
    ((8,), 0.01, 10)
    >>> config.replace(epochs=3).run.epochs
    3
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, NamedTuple

from jaxvae.data.datasets import DataConfig
from jaxvae.evaluation.likelihood import EvalConfig
from jaxvae.models import builders
from jaxvae.models.registry import ModelConfig
from jaxvae.objectives.losses import ObjectiveConfig
from jaxvae.training.loop import RunConfig
from jaxvae.training.step import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. The defaults reproduce the pytorch/examples VAE on mnist5k.

    Every field of every section is also a command-line flag of its flat name (``batch_size``
    is ``--batch-size``), its comment the flag's help (experiments/cli.py).
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)  # the data
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)  # the model
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)  # the loss
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)  # the update
    run: RunConfig = dataclasses.field(default_factory=RunConfig)  # the run
    evaluation: EvalConfig = dataclasses.field(default_factory=EvalConfig)  # the evaluation

    @classmethod
    def from_flat(cls, **values) -> TrainConfig:
        """A config from flat field names, each routed to its section; the rest default.

        Raises:
          TypeError: a name that is no field of any section.
        """
        return cls().replace(**values)

    def replace(self, **values) -> TrainConfig:
        """This config with the fields of the given flat names changed.

        Raises:
          TypeError: a name that is no field of any section.
        """
        changes: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            section, field = _route(name)
            changes.setdefault(section, {})[field] = value
        return dataclasses.replace(self, **{
            section: dataclasses.replace(getattr(self, section), **fields)
            for section, fields in changes.items()})

    def to_dict(self) -> dict:
        """The config as nested dicts, one per section (as written into run directories)."""
        return dataclasses.asdict(self)

    @classmethod
    def flat_defaults(cls) -> dict:
        """Every field's default by flat name."""
        return cls.flatten_dict(cls().to_dict())

    @classmethod
    def flatten_dict(cls, values: dict) -> dict:
        """A config dict of either form (sectioned, or flat as older versions wrote it) as one
        flat dict by flat field name. Keys that name nothing known are kept as they are."""
        if not any(isinstance(values.get(s), dict) for s in SECTIONS):
            return dict(values)
        flat = {}
        for key, value in values.items():
            if key in SECTIONS and isinstance(value, dict):
                names = _flat_names(SECTIONS[key])
                flat.update({names.get(field, field): v for field, v in value.items()})
            else:
                flat[key] = value
        return flat

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The config of a ``to_dict`` or an older flat config dict (JSON lists become tuples).

        Raises:
          ValueError: fields this version does not know, named.
        """
        flat = cls.flatten_dict(values)
        unknown = sorted(set(flat) - set(FLAT_FIELDS))
        if unknown:
            raise ValueError(f"the config has fields this jaxvae does not know: {unknown}; "
                             "use the jaxvae version that wrote it")
        return cls.from_flat(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in flat.items()})


def _flat_names(section_cls: type) -> dict[str, str]:
    """Field name -> flat name of one section class."""
    return {f.name: f.metadata.get("flat_name", f.name) for f in dataclasses.fields(section_cls)}


# Section name -> section class, in the order of TrainConfig's fields.
SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}


def _flat_fields() -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for section, section_cls in SECTIONS.items():
        for field, flat in _flat_names(section_cls).items():
            if flat in table:
                raise TypeError(f"flat name {flat!r} is a field of both the {table[flat][0]} and "
                                f"the {section} section; flat names must be unique")
            table[flat] = (section, field)
    return table


# Flat name -> (section, field name): ``batch_size`` -> ("optimizer", "batch_size").
FLAT_FIELDS: dict[str, tuple[str, str]] = _flat_fields()


def _route(name: str) -> tuple[str, str]:
    if name not in FLAT_FIELDS:
        close = difflib.get_close_matches(name, FLAT_FIELDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(f"TrainConfig has no field {name!r}{hint}; the fields are "
                        f"{sorted(FLAT_FIELDS)}")
    return FLAT_FIELDS[name]


class LoopConfig(NamedTuple):
    """The sections of a ``TrainConfig`` that the training loop reads (``loop.train_run``), for
    runs configured otherwise (the sequence VAE, M2)."""

    run: RunConfig
    optimizer: OptimizerConfig
    evaluation: EvalConfig = EvalConfig()


def validate_config(config: TrainConfig) -> None:
    """Raises ValueError / TypeError naming the first field that cannot work.

    Each section validates its own fields (``section.validate()``); the checks that need two
    sections (the objective a model family allows, free bits for the prior) run here.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a jaxvae.TrainConfig, got {type(config).__name__}")
    for name, section_cls in SECTIONS.items():
        section = getattr(config, name)
        if not isinstance(section, section_cls):
            raise TypeError(f"TrainConfig.{name} must be a {section_cls.__name__}, got "
                            f"{section!r}; build configs with TrainConfig.from_flat(...)")
        section.validate()
    model, objective = config.model, config.objective
    from jaxvae.data import standardize

    standardize.check_mode(config.data.standardize, model.likelihood, config.data.binarize,
                           config.data.dequantize)
    builders.check_free_bits(objective.free_bits, model.prior)
    iwae = model.name == "iwae" or objective.name == "iwae"
    if iwae and (objective.kl_schedule != "constant" or objective.free_bits != 0
                 or objective.beta != 1):
        flag = "--model iwae" if model.name == "iwae" else "--objective iwae"
        raise ValueError(f"the IWAE bound has no separate KL term: {flag} takes no --beta, "
                         "--kl-schedule or --free-bits")
    if objective.name == "iwae" and model.name == "vqvae":
        raise ValueError("--objective iwae needs a model with a log-weight log p(x, z) - "
                         "log q(z | x); the VQ-VAE has none: train it with its own objective "
                         "(leave --objective at elbo)")


# Models whose size is latent_dim and the dense widths hidden (the others have their own).
DENSE_MODELS = ("mlp", "iwae", "cvae", "flow")
HIDDEN_PER_FEATURE = 8  # data-sized hidden width: this many units per input feature ...
HIDDEN_MIN, HIDDEN_MAX = 32, 400  # ... within these bounds (400: the reference's width)
BATCHES_PER_EPOCH_MIN = 4  # a data-sized batch leaves at least this many steps per epoch


def data_defaults(config: TrainConfig, num_train: int, example_shape: tuple[int, ...],
                  given: frozenset[str] | set[str] = frozenset()
                  ) -> tuple[TrainConfig, dict[str, Any]]:
    """Sizes fitted to a small dataset, for the fields the user did not set.

    The defaults are MNIST's (784 features, thousands of examples). For flat examples of D
    features, N training examples and a dense model (``DENSE_MODELS``):

        latent_dim <= max(1, D // 2)                     (a code narrower than the input)
        hidden     <= clip(8 D, 32, 400) per layer       (a few units per feature)
        batch_size <= max(1, N // 4)                     (at least 4 steps per epoch)

    Only fields whose flat name is not in ``given`` (the flags on the command line) and whose
    value exceeds its bound change; the batch size only when ``microbatch_size`` is not set
    (it must divide the batch). MNIST-sized data (mnist5k, digits, mnist) changes nothing.
    ``jaxvae.fit`` never calls this: scripts do, and say what was chosen.

    Returns:
      The config, and the changed fields (flat names) with their new values (empty: nothing
      changed).
    """
    changed: dict[str, Any] = {}
    model, optimizer = config.model, config.optimizer
    if len(example_shape) == 1 and model.name in DENSE_MODELS:
        features = int(example_shape[0])
        latent = max(1, features // 2)
        if "latent_dim" not in given and model.latent_dim > latent:
            changed["latent_dim"] = latent
        width = min(HIDDEN_MAX, max(HIDDEN_MIN, HIDDEN_PER_FEATURE * features))
        hidden = tuple(min(h, width) for h in model.hidden)
        if "hidden" not in given and hidden != tuple(model.hidden):
            changed["hidden"] = hidden
    batch = max(1, num_train // BATCHES_PER_EPOCH_MIN)
    if ("batch_size" not in given and optimizer.microbatch_size is None
            and optimizer.batch_size > batch):
        changed["batch_size"] = batch
    return (config.replace(**changed) if changed else config), changed


def data_defaults_line(changed: dict[str, Any], num_train: int,
                       example_shape: tuple[int, ...]) -> str:
    """One line saying which sizes ``data_defaults`` chose and the flags that override them."""
    def flag(name, value):
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
        return f"--{name.replace('_', '-')} {shown}"

    shape = "x".join(map(str, example_shape))
    return (f"sized for {num_train} training examples of {shape} features: "
            f"{', '.join(flag(k, v) for k, v in changed.items())} (set these flags to choose "
            "other values)")
