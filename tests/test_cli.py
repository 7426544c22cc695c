"""experiments/cli.py: command-line flags derived from config dataclasses, and the scripts as modules."""

import dataclasses
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from experiments import cli
from experiments import train as train_script
import jaxvae
from jaxvae import config as config_lib
from jaxvae.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("anomaly", "augment", "evaluate", "generate", "imbalanced", "molecules",
           "moses_metrics", "music", "repair", "semisupervised", "train", "visualize",
           "vq_prior", "words")


@dataclasses.dataclass(frozen=True)
class Kinds:
    count: int = 3  # how many
    rate: float = 0.5  # a 50% rate
    name: str = "a"  # a name
    off: bool = False  # a switch, off by default
    on: bool = True  # a switch, on by default
    where: str | None = None  # a path (None: nowhere)
    limit: int | None = None  # a limit
    widths: tuple[int, ...] = (4, 8)  # the widths
    mode: Literal["fast", "slow"] = "fast"  # how
    # a section header, not the help of any field
    plain: int = 1


@dataclasses.dataclass(frozen=True)
class Optimizer:
    lr: float = 1e-3  # the learning rate
    clip: float | None = None  # clip to this norm


@dataclasses.dataclass(frozen=True)
class Nested:
    epochs: int = 2  # passes over the data
    optimizer: Optimizer = dataclasses.field(default_factory=Optimizer)


def _parse(config_cls, argv, **kwargs):
    parser = cli.parser("experiments.example", "An example.")
    cli.add_config_flags(parser, config_cls, **kwargs)
    return parser, cli.config_from_flags(parser.parse_args(argv), config_cls)


def test_no_flags_give_the_dataclass_defaults():
    assert _parse(Kinds, [])[1] == Kinds()
    assert _parse(Nested, [])[1] == Nested()
    args = train_script.build_parser().parse_args([])
    assert train_script.config_from_args(args) == TrainConfig()


def test_each_field_type_parses_its_flag():
    _, config = _parse(Kinds, ["--count", "7", "--rate", "0.25", "--name", "b", "--off",
                               "--no-on", "--where", "x/y", "--limit", "9", "--widths", "1",
                               "2", "3", "--mode", "slow", "--plain", "5"])
    assert config == Kinds(count=7, rate=0.25, name="b", off=True, on=False, where="x/y",
                           limit=9, widths=(1, 2, 3), mode="slow", plain=5)
    assert isinstance(config.widths, tuple)


def test_bad_values_stop_with_exit_code_2_and_one_error_line(capsys):
    for argv in (["--count", "many"], ["--mode", "medium"], ["--widths"]):
        with pytest.raises(SystemExit) as exit_:
            _parse(Kinds, argv)
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
            "python -m experiments.example: error: argument --")


def test_help_is_the_field_comment_with_its_continuation_lines_and_default():
    comments = cli.field_comments(jaxvae.RunConfig)
    assert comments["epochs"] == "passes over the training split"
    assert comments["patience"] == (
        "stop after this many epochs without a lower validation loss and keep the best "
        "epoch's state; None or 0 = off (train all epochs, no validation split)")
    assert "plain" not in cli.field_comments(Kinds)  # a comment above a field is not its help
    text = _parse(Kinds, [])[0].format_help()
    assert "a 50% rate (default: 0.5)" in " ".join(text.split())
    assert "the widths (default: 4 8)" in " ".join(text.split())


def test_every_train_config_field_is_a_documented_flag_of_train():
    actions = {a.dest: a for a in train_script.build_parser()._actions}
    for flat, (section, name) in config_lib.FLAT_FIELDS.items():
        action = actions[flat]
        assert action.option_strings == ["--" + flat.replace("_", "-")]
        assert action.help, f"TrainConfig.{section}.{name} has no comment to serve as its help"


def test_train_help_groups_the_flags_by_section_under_the_section_summary():
    parser = train_script.build_parser()
    groups = {g.title: [a.dest for a in g._group_actions] for g in parser._action_groups}
    for section, section_cls in config_lib.SECTIONS.items():
        expected = [flat for flat, (s, _) in config_lib.FLAT_FIELDS.items() if s == section]
        assert groups[section] == expected
        assert dataclasses.fields(section_cls)  # every section holds flags
    assert groups["optimizer"][:2] == ["batch_size", "lr"]
    text = parser.format_help()
    assert "optimizer:\n  The optimizer section of a training config" in text
    assert text.rindex("--lr LR") > text.index("optimizer:") > text.rindex("--hidden HIDDEN")


def test_a_flag_sets_its_section_field_and_model_names_the_family():
    args = train_script.build_parser().parse_args(
        ["--model", "cvae", "--lr", "0.01", "--hidden", "8", "4", "--epochs", "2",
         "--eval-batch-size", "7", "--binarize", "dynamic", "--free-bits", "0.5"])
    config = train_script.config_from_args(args)
    assert config.model.name == "cvae" and config.model.hidden == (8, 4)
    assert config.optimizer.lr == 0.01 and config.run.epochs == 2
    assert config.evaluation.eval_batch_size == 7 and config.data.binarize == "dynamic"
    assert config.objective.free_bits == 0.5
    assert config == TrainConfig.from_flat(model="cvae", lr=0.01, hidden=(8, 4), epochs=2,
                                           eval_batch_size=7, binarize="dynamic", free_bits=0.5)


def test_registered_names_are_the_choices_of_their_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_script.main(["--model", "resnet"])
    assert exit_.value.code == 2
    assert "argument --model: invalid choice: 'resnet'" in capsys.readouterr().err
    with pytest.raises(TypeError, match=r"choices for \['modle'\]: Kinds has no such field"):
        _parse(Kinds, [], choices={"modle": ["a"]})


def test_nested_sections_become_flat_flags_grouped_under_the_section_name():
    parser, config = _parse(Nested, ["--epochs", "3", "--lr", "0.1", "--clip", "1.5"])
    assert config == Nested(epochs=3, optimizer=Optimizer(lr=0.1, clip=1.5))
    assert "optimizer:\n  --lr LR" in parser.format_help()


def test_a_field_type_without_a_flag_is_refused_naming_the_field():
    @dataclasses.dataclass
    class Bad:
        table: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="field table: no flag for type"):
        _parse(Bad, [])


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_help_names_the_module_command_and_no_issue_numbers(name):
    text = importlib.import_module(f"experiments.{name}").build_parser().format_help()
    assert text.startswith(f"usage: python -m experiments.{name} ")
    assert "issue" not in text.lower()


def test_scripts_run_as_modules_from_the_repository_root():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for module in ("experiments.train", "benchmarks.run"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "--outdir" in result.stdout
