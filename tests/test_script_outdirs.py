"""Every script that creates an output directory refuses a non-empty one the way train.py does
(one ``error:`` line, exit 2, nothing touched), --overwrite deletes only the script's own earlier
files, and figures are written atomically."""

import importlib
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from experiments import train as train_script
from experiments import visualize
from jaxvae.evaluation import plots
from run_files import snapshot, one_error_line

TINY = ["--dataset", "digits", "--epochs", "1", "--hidden", "8", "--latent-dim", "2",
        "--batch-size", "64", "--quiet"]

# script -> the flags it needs besides --outdir (never run: the refusal comes first)
SCRIPTS = {
    "anomaly": TINY + ["--holdout-class", "1"],
    "imbalanced": ["--dataset", "digits", "--epochs", "1", "--rare-class", "1", "--quiet"],
    "augment": ["--epochs", "1"],
    "repair": ["--epochs", "1"],
    "semisupervised": ["--epochs", "1"],
    "words": ["--epochs", "1", "--quiet"],
    "molecules": ["--epochs", "1", "--quiet"],
    "music": ["--epochs", "1", "--quiet"],
    "kill_resume": ["--kills", "1"],
    "vq_prior": ["runs/a-vqvae-run", "--epochs", "1", "--quiet"],
}


@pytest.fixture
def someones_files(tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "notes.txt").write_text("years of work")
    (outdir / "data").mkdir()
    (outdir / "data" / "x.npy").write_bytes(b"123")
    return outdir


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_script_refuses_a_non_empty_outdir_and_changes_nothing(name, someones_files, capsys):
    script = importlib.import_module(f"experiments.{name}")
    before = snapshot(someones_files)
    assert script.main(SCRIPTS[name] + ["--outdir", str(someones_files)]) == 2
    line = one_error_line(capsys)
    assert "already holds" in line and "notes.txt" in line and "--overwrite" in line
    # --overwrite deletes only a directory the script wrote: not this one
    assert script.main(SCRIPTS[name] + ["--outdir", str(someones_files), "--overwrite"]) == 2
    assert "deletes only directories this script wrote" in one_error_line(capsys)
    assert snapshot(someones_files) == before


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("tiny") / "run"
    assert train_script.main(TINY + ["--outdir", str(outdir)]) == 0
    return outdir


def test_visualize_refuses_earlier_figures_and_overwrite_replaces_them(tiny_run, tmp_path,
                                                                        capsys):
    figures = tmp_path / "figures"
    args = [str(tiny_run), "--outdir", str(figures), "--tsne-points", "10", "--steps", "2"]
    assert visualize.main(args) == 0
    first = snapshot(figures)
    (figures / "latent_pca.png").write_bytes(b"an older figure")
    before = snapshot(figures)
    capsys.readouterr()
    assert visualize.main(args) == 2
    assert "already holds figures" in one_error_line(capsys)
    assert snapshot(figures) == before
    (figures / "stale.png").write_bytes(b"from an older version")
    assert visualize.main(args + ["--overwrite"]) == 0
    assert set(snapshot(figures)) == set(first)  # only the new figures, the stale one gone
    assert (figures / "latent_pca.png").read_bytes().startswith(b"\x89PNG")


def test_visualize_overwrite_never_deletes_the_run_it_draws(tiny_run, capsys):
    before = snapshot(tiny_run)
    assert visualize.main([str(tiny_run), "--outdir", str(tiny_run), "--overwrite"]) == 2
    assert "which --overwrite would delete" in one_error_line(capsys)
    assert snapshot(tiny_run) == before


def test_a_figure_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "samples.png"
    images = np.random.default_rng(0).uniform(size=(4, 16))
    assert plots.save_image_grid(path, images, 2, "first") == str(path)
    old = path.read_bytes()
    assert old.startswith(b"\x89PNG")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plt.Figure, "savefig", fail)  # rendering fails midway
    with pytest.raises(OSError):
        plots.save_image_grid(path, images, 2, "second")
    assert path.read_bytes() == old
    monkeypatch.undo()
    monkeypatch.setattr("os.replace", fail)  # the rename fails
    with pytest.raises(OSError):
        plots.save_loss_curves(path, [{"epoch": 1, "train_loss": 1.0, "test_loss": 2.0}])
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.png"]  # no temporary file
    assert not plt.get_fignums()  # every figure closed
