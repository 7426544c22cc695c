"""End to end: experiments/train.py on the embedded mnist5k data."""

import json

import pytest
from flax import serialization

import jaxvae
from experiments import train as train_script


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("run")
    code = train_script.main(["--epochs", "3", "--outdir", str(outdir), "--quiet"])
    assert code == 0
    return outdir


def test_train_writes_every_output_file(run_dir, capsys):
    for name in ("metrics.jsonl", "summary.json", "reconstructions.png", "samples.png",
                 "loss_curves.png", "params.msgpack"):
        assert (run_dir / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ("train_loss", "test_loss", "test_recon", "test_kl", "seconds"):
        assert all(key in r for r in records)
    summary = json.loads((run_dir / "summary.json").read_text())
    optimizer = summary["config"]["optimizer"]
    assert optimizer["batch_size"] == 128 and optimizer["lr"] == 1e-3
    assert summary["final"] == records[-1]
    assert summary["train_examples"] == 4000 and summary["test_examples"] == 1000
    assert "jax" in summary["versions"]
    assert summary["devices_used"] == 1  # tests train on one device unless marked multidevice


def test_the_test_loss_falls_over_three_epochs(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["test_loss"] for r in records]
    assert losses[0] > losses[1] > losses[2]
    for r in records:  # loss = recon + KL (beta = 1)
        assert r["test_loss"] == pytest.approx(r["test_recon"] + r["test_kl"], rel=1e-5)


def test_saved_parameters_load_into_the_reference_model(run_dir):
    import jax
    model = jaxvae.reference_vae()
    template = jaxvae.init(model, jax.random.key(0))
    params = serialization.from_bytes(template, (run_dir / "params.msgpack").read_bytes())
    assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, template)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--lr", "0"], "learning rate must be > 0"),
    (["--latent-dim", "0"], "latent_dim must be >= 1"),
    (["--batch-size", "5000"], "batch size 5000 is larger than the training set (4000 examples)"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--num-devices", "0"], "num_devices must be None (all local devices) or an int >= 1"),
    (["--num-devices", "9"], "num_devices 9 is more than the 4 local devices"),
])
def test_bad_flags_fail_with_a_clear_message_before_training(argv, message, tmp_path, capsys):
    code = train_script.main(argv + ["--outdir", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "params.msgpack").exists()


def test_unwritable_outdir_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = train_script.main(["--outdir", str(blocker / "sub"), "--quiet"])
    assert code == 2
    assert "cannot write to output directory" in capsys.readouterr().err


def test_init_from_starts_at_the_runs_parameters_and_records_them(run_dir, tmp_path):
    # At a learning rate of 1e-9 the first epoch barely moves the parameters, so its test loss
    # (the same test digits and evaluation noise: the same seed) is the source run's last one.
    from jaxvae.training import runs
    out = tmp_path / "finetuned"
    code = train_script.main(["--epochs", "1", "--lr", "1e-9", "--init-from", str(run_dir),
                              "--outdir", str(out), "--quiet"])
    assert code == 0
    source = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["test_loss"] == pytest.approx(source[-1]["test_loss"], abs=0.01)
    assert abs(first["test_loss"] - source[0]["test_loss"]) > 5  # not a fresh model's epoch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["init_from"] == {
        "path": str(run_dir), "params_sha256": runs.file_digest(run_dir / "params.msgpack")}


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "64"], "has parameter shapes that do not fit the model of this run's flags "
                         "(--init-from needs a run of the same architecture"),
    (["--prior", "mog"], "does not fit the model of this run's flags (--init-from needs a run "
                         "of the same architecture"),
])
def test_init_from_a_run_of_another_model_is_refused(run_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code = train_script.main(argv + ["--init-from", str(run_dir), "--outdir", str(out),
                                     "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_init_from_a_directory_without_parameters_is_refused(tmp_path, capsys):
    code = train_script.main(["--init-from", str(tmp_path), "--outdir", str(tmp_path / "out"),
                              "--quiet"])
    assert code == 2
    assert f"{tmp_path / 'params.msgpack'} not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
