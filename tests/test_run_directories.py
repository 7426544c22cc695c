"""A run directory holds one run: nothing of an existing run is changed by a run that is
refused or fails its input checks, and --overwrite leaves only the new run's files."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from experiments import train as train_script
from jaxvae.training import files
from jaxvae.training import runs
from run_files import snapshot, one_error_line

TINY = ["--dataset", "digits", "--epochs", "1", "--hidden", "8", "--latent-dim", "2",
        "--batch-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run with checkpoints, plus the files later scripts add to a run."""
    outdir = tmp_path_factory.mktemp("finished")
    assert train_script.main(TINY + ["--checkpoint-every", "10", "--outdir", str(outdir)]) == 0
    (outdir / "evaluation.json").write_text('{"nll": 1.0}')
    (outdir / "figures").mkdir()
    (outdir / "figures" / "latent.png").write_bytes(b"\x89PNG old figure")
    return outdir


@pytest.fixture
def old_run(finished_run, tmp_path):
    outdir = tmp_path / "run"
    shutil.copytree(finished_run, outdir)
    return outdir


@pytest.fixture(scope="module")
def fresh_run_files(tmp_path_factory):
    """The names a tiny run writes into an empty directory."""
    outdir = tmp_path_factory.mktemp("fresh")
    assert train_script.main(TINY + ["--outdir", str(outdir)]) == 0
    return set(snapshot(outdir))


def test_a_new_run_into_a_run_directory_is_refused_and_changes_nothing(old_run, capsys):
    before = snapshot(old_run)
    assert train_script.main(TINY + ["--outdir", str(old_run)]) == 2
    line = one_error_line(capsys)
    assert str(old_run) in line and "--resume" in line and "--overwrite" in line
    assert snapshot(old_run) == before


def test_without_checkpoints_the_refusal_suggests_only_overwrite(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert train_script.main(TINY + ["--outdir", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "already holds a run" in line and "--overwrite" in line and "--resume" not in line
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def _bad_csv(tmp_path: Path) -> str:
    path = tmp_path / "table.csv"
    path.write_text("".join(f"{i / 40},{i % 2},0.5\n" for i in range(40)))  # no labels
    return str(path)


def _broken_npz(tmp_path: Path) -> str:
    path = tmp_path / "broken.npz"
    buf = Path(tmp_path / "whole.npz")
    np.savez(buf, x=np.zeros((20, 4), np.float32))
    path.write_bytes(buf.read_bytes()[:60])
    return str(path)


@pytest.mark.parametrize("bad, message", [
    (["--batch-size", "5000"], "batch size 5000 is larger than the training set"),
    (["--lr", "0"], "learning rate must be > 0"),
    (["--likelihood", "logistic"], "logistic"),
    (["--model", "cvae", "--dataset", _bad_csv, "--batch-size", "8"], "labels"),
    (["--dataset", _broken_npz], "broken.npz"),
    (["--model", "conv", "--dataset", _bad_csv, "--batch-size", "8"], "convolutions"),
    (["--validation-size", "10"], "--patience"),
])
@pytest.mark.parametrize("mode", [[], ["--overwrite"], ["--resume"]])
def test_a_run_that_fails_its_input_checks_leaves_the_run_directory_as_it_was(
        old_run, tmp_path, capsys, bad, message, mode):
    bad = [a(tmp_path) if callable(a) else a for a in bad]
    before = snapshot(old_run)
    assert train_script.main(TINY + bad + mode + ["--outdir", str(old_run)]) == 2
    line = one_error_line(capsys)
    if mode:  # without a mode the refusal to mix two runs comes first
        assert message in line
    assert snapshot(old_run) == before


def test_overwrite_leaves_only_the_new_runs_files(old_run, fresh_run_files, capsys):
    old_params = (old_run / "params.msgpack").read_bytes()
    assert train_script.main(TINY + ["--hidden", "4", "--overwrite",
                                      "--outdir", str(old_run)]) == 0
    assert set(snapshot(old_run)) == fresh_run_files  # no checkpoints/, figures/, evaluation
    assert (old_run / "params.msgpack").read_bytes() != old_params
    records = (old_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [1]
    assert json.loads((old_run / "summary.json").read_text())["config"]["model"]["hidden"] == [4]


def test_overwrite_and_resume_together_are_refused(old_run, capsys):
    before = snapshot(old_run)
    assert train_script.main(TINY + ["--overwrite", "--resume", "--outdir", str(old_run)]) == 2
    line = one_error_line(capsys)
    assert "--resume" in line and "--overwrite" in line
    assert snapshot(old_run) == before


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.npy").write_bytes(b"123")
    before = snapshot(tmp_path)
    assert train_script.main(TINY + ["--overwrite", "--outdir", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "not" in line or "no summary.json" in line
    assert "thesis.tex" in line
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_to_delete_the_data_it_trains_on(old_run, tmp_path, capsys):
    (old_run / "table.csv").write_text(Path(_bad_csv(tmp_path)).read_text())
    before = snapshot(old_run)
    assert train_script.main(TINY + ["--dataset", str(old_run / "table.csv"), "--batch-size", "8",
                                      "--overwrite", "--outdir", str(old_run)]) == 2
    assert "lies inside --outdir" in one_error_line(capsys)
    assert snapshot(old_run) == before


def test_overwrite_removes_symlinks_without_following_them(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    (run / "linked").symlink_to(outside, target_is_directory=True)
    runs.check_new_run(run, overwrite=True)
    runs.clear_run(run)
    assert list(run.iterdir()) == [] and (outside / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("existing", [False, True])
def test_an_empty_or_missing_directory_takes_a_new_run(tmp_path, existing):
    outdir = tmp_path / "new"
    if existing:
        outdir.mkdir()
    assert train_script.main(TINY + ["--outdir", str(outdir)]) == 0
    assert (outdir / "summary.json").is_file()


def test_an_outdir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert train_script.main(TINY + ["--outdir", str(tmp_path / "f")]) == 2
    assert "is a file" in one_error_line(capsys)
    assert (tmp_path / "f").read_text() == "x"


def test_write_atomic_replaces_the_whole_file_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    files.write_atomic(path, "old")
    files.write_atomic(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    plain = tmp_path / "plain"
    plain.write_text("")
    assert path.stat().st_mode == plain.stat().st_mode  # the permissions open() gives
    plain.unlink()

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        files.write_atomic(path, "x" * 100_000)
    assert path.read_bytes() == b"new bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temp file left


def test_tasks_train_writes_runs_quickstart_whatever_other_flags_are_given(monkeypatch):
    import subprocess

    import tasks

    calls = []
    monkeypatch.setattr(tasks, "ensure_env", lambda *a: None)
    monkeypatch.setattr(subprocess, "call", lambda argv, **kw: calls.append(argv) or 0)
    for rest in ([], ["--overwrite"], ["--epochs", "2", "--outdir", "runs/x"]):
        assert tasks.main(["train", *rest]) == 0
    tails = [argv[argv.index("experiments.train") + 1:] for argv in calls]
    assert tails == [["--outdir", "runs/quickstart"], ["--overwrite", "--outdir", "runs/quickstart"],
                     ["--epochs", "2", "--outdir", "runs/x"]]
