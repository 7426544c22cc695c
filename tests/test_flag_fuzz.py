"""Fuzz over malformed flags of ``python -m experiments.train``: every command line is either
refused with exit code 2 and one ``error:`` line (no traceback), or runs correctly; and a run
directory that already holds a run is never changed by a refused command.

The command lines are a valid tiny run mutated: a flag's value replaced by text, a negative,
huge, zero, NaN or infinite number; a value dropped; unknown flags added; flags repeated.
Each example runs in a fresh working directory holding a copy of a finished run (``run/``).
"""

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from experiments import train as train_script
from run_files import snapshot

PROG_ERROR = "python -m experiments.train: error: "  # argparse's own error line

# A valid run that trains in about a second: (flag, values) pairs; --quiet has no value.
BASE = [("--dataset", ["digits"]), ("--epochs", ["1"]), ("--hidden", ["8"]),
        ("--latent-dim", ["2"]), ("--batch-size", ["64"]), ("--quiet", [])]
# Flags a mutation may add with a malformed value (besides the ones in BASE and --outdir).
EXTRA_FLAGS = ["--lr", "--beta", "--seed", "--likelihood", "--model", "--eval-batch-size",
               "--checkpoint-every", "--keep-checkpoints", "--max-skipped-steps", "--clip-norm",
               "--free-bits", "--patience", "--validation-fraction", "--validation-size",
               "--microbatch-size", "--num-devices", "--kl-warmup-steps", "--num-samples",
               "--standardize", "--activation", "--lr-schedule", "--adam-eps", "--lr-total-steps",
               "--precision"]
VALUE_FLAGS = [flag for flag, values in BASE if values] + ["--outdir"] + EXTRA_FLAGS

TEXT = ["abc", "", " ", "-", "é", "1,2", "1 2", "0x10", "None", "true", "run", "digits",
        "bernoulli", "mlp", "./run"]
NEGATIVE = ["-1", "-0.5", "-1e9", "-99999999999999999999"]
HUGE = ["2147483648", "99999999999999999999", "1e308", "1e999", "9" * 400]
ZERO = ["0", "0.0", "-0"]
NON_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity"]
SMALL = ["1", "2", "3", "0.5", "1.5", "1e-30"]
VALUES = st.sampled_from(TEXT + NEGATIVE + HUGE + ZERO + NON_FINITE + SMALL)
UNKNOWN = st.sampled_from(["--no-such-flag", "--latent_dim", "-x", "--epochs=", "--", "extra",
                           "--quiet=1", "--resume=yes", "---epochs", "--Epochs"])


def _value_for(flag: str):
    # A huge --epochs would train for hours: the run is capped at 3 epochs.
    if flag == "--epochs":
        return VALUES.filter(lambda v: not (v.lstrip("-").isdigit() and int(v) > 3))
    # A checkpoint every few steps makes a valid run several times slower (tested elsewhere).
    if flag == "--checkpoint-every":
        return VALUES.filter(lambda v: v not in ("1", "2", "3"))
    return VALUES


@st.composite
def mutations(draw):
    """A list of 1-3 edits of BASE: ('set', flag, value), ('drop', flag), ('unknown', token,
    value or None), ('repeat', flag, value or None)."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "set", "set", "drop", "unknown", "repeat"]))
        if kind == "unknown":
            edits.append(("unknown", draw(UNKNOWN), draw(st.none() | VALUES)))
            continue
        flag = draw(st.sampled_from(VALUE_FLAGS))
        if kind == "drop":
            edits.append(("drop", flag))
        elif kind == "set":
            edits.append(("set", flag, draw(_value_for(flag))))
        else:
            edits.append(("repeat", flag, draw(st.none() | _value_for(flag))))
    return edits


def command_line(edits, outdir: str, mode: str | None) -> list[str]:
    """BASE with --outdir OUTDIR (and --resume / --overwrite), the edits applied, flattened."""
    pairs = [(flag, list(values)) for flag, values in BASE] + [("--outdir", [outdir])]
    if mode:
        pairs.append((mode, []))
    for edit in edits:
        flags = [flag for flag, _ in pairs]
        if edit[0] == "set":
            _, flag, value = edit
            if flag in flags:
                pairs[flags.index(flag)] = (flag, [value])
            else:
                pairs.append((flag, [value]))
        elif edit[0] == "drop":
            if edit[1] in flags:
                pairs[flags.index(edit[1])] = (edit[1], [])
        elif edit[0] == "unknown":
            pairs.append((edit[1], [] if edit[2] is None else [edit[2]]))
        else:
            _, flag, value = edit
            values = dict(pairs).get(flag, ["1"]) if value is None else [value]
            pairs.append((flag, values))
    return [token for flag, values in pairs for token in (flag, *values)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run with checkpoints, plus the files later scripts add to a run."""
    outdir = tmp_path_factory.mktemp("finished")
    argv = [token for flag, values in BASE for token in (flag, *values)]
    assert train_script.main(argv + ["--checkpoint-every", "10", "--outdir", str(outdir)]) == 0
    (outdir / "evaluation.json").write_text('{"nll": 1.0}')
    (outdir / "figures").mkdir()
    (outdir / "figures" / "latent.png").write_bytes(b"\x89PNG old figure")
    return outdir


def _exit_code(argv: list[str]) -> int:
    """``main(argv)``'s exit code; argparse exits through SystemExit. Anything else raised
    (a traceback) fails the test."""
    try:
        return train_script.main(argv)
    except SystemExit as e:
        return e.code


def _assert_one_error_line(err: str, code: int) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    if errors[0].startswith(PROG_ERROR):  # argparse: its usage block, then the error line
        assert code == 2 and lines[0].startswith("usage: python -m experiments.train"), err
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), err


def _parsed_outdir(argv: list[str]) -> str | None:
    try:
        return train_script.build_parser().parse_args(argv).outdir
    except SystemExit:
        return None


FUZZ = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
# Found by fuzzing: a seed beyond 64 bits raised OverflowError from jax.random.key, a layer
# 2**31 wide made XLA abort the process, and --num-devices above the local devices was refused
# only after metrics.jsonl had been created.
@example(edits=[("set", "--seed", "99999999999999999999")], target="new", mode=None)
@example(edits=[("set", "--seed", "-99999999999999999999")], target="new", mode=None)
@example(edits=[("set", "--latent-dim", "2147483648")], target="new", mode=None)
@example(edits=[("set", "--hidden", "9" * 400)], target="new", mode=None)
@example(edits=[("set", "--num-devices", "99999999999999999999")], target="new", mode=None)
@given(edits=mutations(), target=st.sampled_from(["run", "new", "new"]),
       mode=st.sampled_from([None, None, "--overwrite", "--resume"]))
def test_malformed_flags_are_one_error_line_or_a_correct_run_and_never_change_a_run(
        finished_run, tmp_path_factory, capsys, edits, target, mode):
    work = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(finished_run, work / "run")
    before = snapshot(work / "run")
    if target == "new":
        mode = None  # --resume and --overwrite are about an existing run
    argv = command_line(edits, target, mode)
    outdir = _parsed_outdir(argv)  # None: argparse refuses the command line
    fresh = None
    if outdir is not None and (work / outdir).resolve() not in (work.resolve(),
                                                                (work / "run").resolve()):
        fresh = work / outdir  # a new directory for a new run
        assert not fresh.exists()
    cwd = os.getcwd()
    os.chdir(work)  # relative --outdir values land in the example's own directory
    try:
        capsys.readouterr()
        code = _exit_code(argv)
        err = capsys.readouterr().err
    finally:
        os.chdir(cwd)
    assert code in (0, 2, 3), (argv, code, err)
    if code != 0:
        _assert_one_error_line(err, code)
    # Only a run that was told to (--overwrite, --resume) and got going may change run/.
    if code == 2 or not any(a in ("--overwrite", "--resume") for a in argv):
        assert snapshot(work / "run") == before, argv
    if fresh is not None and code == 2:  # refused: nothing was written
        assert not fresh.exists() or not any(fresh.iterdir()), (argv, err)
    if fresh is not None and code == 0:  # a run into a new directory: complete
        for name in ("summary.json", "params.msgpack", "metrics.jsonl"):
            assert (fresh / name).is_file(), (argv, name, err)
