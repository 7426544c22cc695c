"""Checkpoints: SIGKILL mid-run then --resume is bitwise the uninterrupted run; corrupt,
silently changed and half-written checkpoints fall back to the newest one that verifies; a save
that does not read back never costs the older checkpoints; config changes are refused."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import train as train_script
from jaxvae.training import checkpoint
from jaxvae.training import fit as trainer

# The runs and their resumes split each batch over the 4 forced CPU devices (tests/conftest.py),
# as the training processes that the tests kill do: resume restores a sharded state.
pytestmark = pytest.mark.multidevice
ROOT = Path(__file__).resolve().parent.parent
# digits: 1,438 training examples, batch 64 -> 22 full batches + 1 of 30 = 23 steps per epoch;
# checkpoints at epoch positions 10, 20 and at each epoch end.
FLAGS = ["--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--batch-size", "64",
         "--epochs", "4", "--checkpoint-every", "10", "--keep-checkpoints", "3", "--quiet"]
STEPS_PER_EPOCH, TOTAL = 23, 92


def _records(outdir: Path) -> list[dict]:
    lines = (outdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("uninterrupted")
    assert train_script.main(FLAGS + ["--outdir", str(outdir)]) == 0
    return outdir


def test_the_last_k_checkpoints_are_kept_and_hold_the_whole_run_state(uninterrupted):
    ckpt = uninterrupted / "checkpoints"
    # epoch 4 runs steps 70..92: chunks end at steps 79, 89 and 92 (the epoch end)
    assert checkpoint.saved_steps(ckpt) == [79, 89, 92]
    manager = checkpoint.CheckpointManager(ckpt, keep=3, writer=False)
    keys = trainer.run_keys(0)
    template = jax.tree.map(np.asarray, _template_state())
    restored = manager.restore_latest(template, tuple(keys._fields))
    manager.close()
    assert restored.step == TOTAL and int(restored.state.step) == TOTAL
    assert restored.loop["epoch"] == 5 and restored.loop["position"] == 0
    assert [r["epoch"] for r in restored.loop["history"]] == [1, 2, 3, 4]
    assert restored.config["model"]["latent_dim"] == 2
    assert restored.config["run"]["checkpoint_every"] == 10
    for name in keys._fields:
        np.testing.assert_array_equal(jax.random.key_data(restored.keys[name]),
                                      jax.random.key_data(getattr(keys, name)))


def _template_state():
    from jaxvae import TrainConfig
    from jaxvae.models import mlp as models
    from jaxvae.models import registry
    from jaxvae.training import step as train
    config = TrainConfig.from_flat(hidden=(16,), latent_dim=2)
    model, _ = registry.build(config, (64,))
    tx = train.make_optimizer(config.optimizer.lr)
    return train.create_train_state(models.init(model, jax.random.key(0)), tx)


def test_sigkill_mid_run_then_resume_gives_bitwise_identical_parameters(uninterrupted, tmp_path):
    outdir = tmp_path / "killed"
    # os.environ holds tests/conftest.py's XLA flags: the devices and compiler of this process
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *FLAGS,
                             "--outdir", str(outdir)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.saved_steps(outdir / "checkpoints"):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint.saved_steps(outdir / "checkpoints")
    assert max(killed_at) < TOTAL and not (outdir / "params.msgpack").exists()

    assert train_script.main(FLAGS + ["--outdir", str(outdir), "--resume"]) == 0
    assert (outdir / "params.msgpack").read_bytes() == \
        (uninterrupted / "params.msgpack").read_bytes()
    # metrics.jsonl: every epoch once, with the uninterrupted run's numbers
    assert _records(outdir) == _records(uninterrupted)


def test_a_corrupt_latest_and_a_half_written_save_fall_back_to_the_previous_checkpoint(
        uninterrupted, tmp_path):
    outdir = tmp_path / "corrupt"
    shutil.copytree(uninterrupted, outdir)
    (outdir / "params.msgpack").unlink()
    ckpt = outdir / "checkpoints"
    # A save killed half way: Orbax's temporary directory, never renamed to its step.
    half = ckpt / f"95{'.orbax-checkpoint-tmp'}"
    shutil.copytree(ckpt / "92", half)
    # The latest finished checkpoint truncated on disk (e.g. a full disk or a bad copy).
    for path in (ckpt / "92" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    # Resume asks for one more epoch: the run continues from step 89 (the previous checkpoint).
    flags = [f if f != "4" else "5" for f in FLAGS]
    with pytest.warns(UserWarning, match=r"checkpoints/92 is unreadable \(.*\); resuming from "
                                         r".*checkpoints/89, the newest checkpoint that verifies"):
        assert train_script.main(flags + ["--outdir", str(outdir), "--resume"]) == 0
    assert not half.exists()  # Orbax cleans up unfinished saves
    records = _records(outdir)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert records[:4] == _records(uninterrupted)
    assert checkpoint.saved_steps(ckpt)[-1] == TOTAL + STEPS_PER_EPOCH


def test_resuming_with_a_different_model_config_lists_the_differences(uninterrupted, capsys):
    flags = [f if f != "2" else "3" for f in FLAGS] + ["--lr", "0.01"]
    assert train_script.main(flags + ["--outdir", str(uninterrupted), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "the config differs from the saved run's" in err
    assert "latent_dim: 2 -> 3" in err and "lr: 0.001 -> 0.01" in err
    assert checkpoint.saved_steps(uninterrupted / "checkpoints") == [79, 89, 92]


@pytest.mark.parametrize("extra, message", [
    ([], "already holds a run (checkpoints, "),
    ([], "pass --resume to continue it, pass --overwrite to delete it"),
])
def test_a_new_run_never_overwrites_checkpoints(uninterrupted, capsys, extra, message):
    before = (uninterrupted / "metrics.jsonl").read_text()
    assert train_script.main(FLAGS + ["--outdir", str(uninterrupted)] + extra) == 2
    assert message in capsys.readouterr().err
    assert (uninterrupted / "metrics.jsonl").read_text() == before


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    assert train_script.main(FLAGS + ["--outdir", str(tmp_path), "--resume"]) == 2
    assert "--resume: no checkpoint in" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint-every", "0"], "checkpoint_every must be >= 1"),
    (["--keep-checkpoints", "0"], "keep_checkpoints must be >= 1"),
    (["--max-skipped-steps", "0"], "max_skipped_steps must be >= 1"),
    (["--clip-norm", "-1"], "clip_norm must be a finite number > 0"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
     "coordinator must be HOST:PORT"),
    (["--num-processes", "2"], "needs all of --coordinator HOST:PORT, --num-processes N"),
])
def test_bad_reliability_flags_fail_before_training(argv, message, tmp_path, capsys):
    assert train_script.main(argv + ["--outdir", str(tmp_path / "out"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _plain_restore(step_dir: Path):
    """A checkpoint's state as Orbax itself reads it, without any checksum."""
    import orbax.checkpoint as ocp
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(str((step_dir / "state").absolute()))


def _flip_bits_silently(step_dir: Path, bits: int = 4) -> None:
    """Flips ``bits`` bits in the array data of a checkpoint's state such that Orbax still reads
    it, with changed values and no error: the corruption Orbax cannot see on its own."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    path = max(files, key=lambda p: p.stat().st_size)  # the parameters and optimizer state
    original, before = path.read_bytes(), _plain_restore(step_dir)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        data = bytearray(original)
        for i in rng.choice(len(data), bits, replace=False):
            data[i] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(data))
        try:
            after = _plain_restore(step_dir)
        except Exception:  # noqa: BLE001 - these flips broke the format: try others
            checkpoint._ignore_orphaned_tensorstore_callbacks()
            continue
        if not all(jax.tree.leaves(jax.tree.map(np.array_equal, before, after))):
            return
    raise AssertionError(f"no silent {bits}-bit corruption of {path} found")


def _truncate_data_files(step_dir: Path) -> None:
    for path in step_dir.rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_flipped_bits_in_the_newest_checkpoint_fall_back_to_the_previous_one_exactly(
        uninterrupted, tmp_path):
    outdir = tmp_path / "flipped"
    shutil.copytree(uninterrupted, outdir)
    (outdir / "params.msgpack").unlink()
    ckpt = outdir / "checkpoints"
    _flip_bits_silently(ckpt / "92")
    with pytest.warns(UserWarning, match=r"checkpoints/92 failed verification: the SHA-256 of "
                                         r"its state differs from the one recorded when it was "
                                         r"saved; resuming from .*checkpoints/89, the newest "
                                         r"checkpoint that verifies; the bad checkpoint was "
                                         r"moved to 92.corrupt"):
        assert train_script.main(FLAGS + ["--outdir", str(outdir), "--resume"]) == 0
    # Resumed from step 89, the run replays steps 90..92: bitwise the uninterrupted run.
    assert (outdir / "params.msgpack").read_bytes() == \
        (uninterrupted / "params.msgpack").read_bytes()
    assert _records(outdir) == _records(uninterrupted)
    assert (ckpt / "92.corrupt").is_dir()  # kept for inspection, out of the run's way
    assert checkpoint.saved_steps(ckpt) == [79, 89, 92]
    keys = trainer.run_keys(0)
    manager = checkpoint.CheckpointManager(ckpt, keep=3, writer=False)
    restored = manager.restore_latest(jax.tree.map(np.asarray, _template_state()),
                                      tuple(keys._fields))  # no warning: the new 92 verifies
    manager.close()
    assert restored.step == TOTAL and restored.verified


def test_every_checkpoint_corrupt_is_one_error_line_and_changes_nothing(
        uninterrupted, tmp_path, capsys):
    outdir = tmp_path / "all_corrupt"
    shutil.copytree(uninterrupted, outdir)
    ckpt = outdir / "checkpoints"
    _flip_bits_silently(ckpt / "92")
    for step in (79, 89):
        _truncate_data_files(ckpt / str(step))
    before = _snapshot(outdir)
    assert train_script.main(FLAGS + ["--outdir", str(outdir), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot resume from {ckpt}: none of "
                                                   "its checkpoints can be restored (step 92 "
                                                   "failed verification: the SHA-256 of its "
                                                   "state differs")
    assert "; step 89 is unreadable (" in err and "; step 79 is unreadable (" in err
    assert err.endswith("start a new run without --resume in another directory\n")
    assert _snapshot(outdir) == before


def _state(step: int):
    return _template_state().replace(step=np.int32(step))


def test_the_checksum_is_recorded_at_save_and_reproduced_from_the_restored_content(tmp_path):
    keys = trainer.run_keys(0)
    loop = {"epoch": 2, "position": 3, "sums": {"loss": 1.5},
            "history": [{"epoch": 1, "train_loss": float("nan")}]}
    config = {"hidden": (16,), "latent_dim": 2, "lr": 0.001}
    first = checkpoint.CheckpointManager(tmp_path / "a", keep=2)
    first.save(_state(7), keys._asdict(), loop, config)
    recorded = json.loads((tmp_path / "a" / "7" / "checksum" / "metadata").read_text())
    restored = first.restore_latest(jax.tree.map(np.asarray, _template_state()),
                                    tuple(keys._fields))
    first.close()
    # The restored content, saved again, records the same checksum.
    second = checkpoint.CheckpointManager(tmp_path / "b", keep=2)
    second.save(restored.state, restored.keys, restored.loop, restored.config)
    second.close()
    assert json.loads((tmp_path / "b" / "7" / "checksum" / "metadata").read_text()) == recorded
    # The config's digest is the SHA-256 of its canonical JSON text.
    assert recorded["sha256"]["config"] == hashlib.sha256(
        b'{"hidden":[16],"latent_dim":2,"lr":0.001}').hexdigest()

    # One flipped bit of one parameter, or the same values in another dtype, change the
    # state's digest and nothing else.
    tree = checkpoint._to_host({"step": np.int32(7), "params": restored.state.params,
                                "opt_state": restored.state.opt_state})
    key_data = {n: np.asarray(jax.random.key_data(k)) for n, k in restored.keys.items()}
    saved_loop = {**restored.loop, "key_impl": {n: str(jax.random.key_impl(k))
                                                for n, k in restored.keys.items()}}
    digests = checkpoint.content_digests(tree, key_data, saved_loop, restored.config)
    assert digests == recorded["sha256"]
    kernel = tree["params"]["decoder"]["out"]["kernel"]
    kernel.view(np.uint32)[0, 0] ^= 1
    flipped = checkpoint.content_digests(tree, key_data, saved_loop, restored.config)
    kernel.view(np.uint32)[0, 0] ^= 1
    tree["step"] = np.int64(7)
    widened = checkpoint.content_digests(tree, key_data, saved_loop, restored.config)
    for changed in (flipped, widened):
        assert [k for k in digests if digests[k] != changed[k]] == ["state"]


def test_a_save_that_does_not_read_back_never_costs_the_last_verified_checkpoint(
        tmp_path, monkeypatch):
    keys = trainer.run_keys(0)._asdict()
    manager = checkpoint.CheckpointManager(tmp_path, keep=1)
    assert manager.save(_state(1), keys, {"epoch": 1}, {}) == tmp_path / "1"
    real_save = manager._manager.save

    def save_to_a_disk_that_flips_bits(step, *args, **kwargs):
        out = real_save(step, *args, **kwargs)
        manager._manager.wait_until_finished()
        _flip_bits_silently(tmp_path / str(step))
        return out

    monkeypatch.setattr(manager._manager, "save", save_to_a_disk_that_flips_bits)
    with pytest.warns(UserWarning, match=r"checkpoint .*/2 failed verification \(the SHA-256 of "
                                         r"its state differs .*\) when read back right after it "
                                         r"was written \(moved to 2.corrupt\); the older "
                                         r"checkpoints are kept, the newest is .*/1\."):
        assert manager.save(_state(2), keys, {"epoch": 1}, {}) == tmp_path / "1"
    assert manager.all_steps() == [1]  # keep=1, yet step 1 stays: nothing newer verified
    monkeypatch.undo()
    assert manager.save(_state(3), keys, {"epoch": 1}, {}) == tmp_path / "3"
    assert manager.all_steps() == [3]  # a newer verified checkpoint: now step 1 may go
    manager.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.corrupt", "3"]


def _replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))


def _rewrite_keys(step_dir: Path, seed: int) -> None:
    """Replaces a checkpoint's stored PRNG keys by those of another seed (Orbax's own format)."""
    import orbax.checkpoint as ocp
    keys = trainer.run_keys(seed)._asdict()
    shutil.rmtree(step_dir / "rng")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((step_dir / "rng").absolute(),
                          {n: np.asarray(jax.random.key_data(k)) for n, k in keys.items()})


@pytest.mark.parametrize("corrupt, what", [
    (lambda d: _rewrite_keys(d, seed=1), "rng"),
    (lambda d: _replace_in(d / "loop" / "metadata", '"position": 3', '"position": 4'), "loop"),
    (lambda d: _replace_in(d / "config" / "metadata", '"lr": 0.001', '"lr": 0.002'), "config"),
])
def test_a_changed_key_loop_position_or_config_is_caught(tmp_path, corrupt, what):
    keys = trainer.run_keys(0)
    manager = checkpoint.CheckpointManager(tmp_path, keep=2)
    for step in (1, 2):
        manager.save(_state(step), keys._asdict(), {"epoch": 1, "position": 3, "history": []},
                     {"lr": 0.001})
    corrupt(tmp_path / "2")
    with pytest.warns(UserWarning, match=rf"checkpoint .*/2 failed verification: the SHA-256 of "
                                         rf"its {what} differs .*; resuming from .*/1, the "
                                         r"newest checkpoint that verifies; the bad checkpoint "
                                         r"was moved to 2.corrupt"):
        restored = manager.restore_latest(jax.tree.map(np.asarray, _template_state()),
                                          tuple(keys._fields))
    manager.close()
    assert restored.step == 1 and restored.loop["position"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2.corrupt"]


def test_a_checkpoint_without_a_checksum_is_restored_with_a_warning(tmp_path):
    keys = trainer.run_keys(0)
    manager = checkpoint.CheckpointManager(tmp_path, keep=1)
    manager.save(_state(5), keys._asdict(), {"epoch": 1, "history": []}, {})
    shutil.rmtree(tmp_path / "5" / "checksum")
    with pytest.warns(UserWarning, match=r"resuming from checkpoint .*/5 \(it has no checksum, "
                                         r"so its content cannot be verified\)"):
        restored = manager.restore_latest(jax.tree.map(np.asarray, _template_state()),
                                          tuple(keys._fields))
    manager.close()
    assert restored.step == 5 and not restored.verified


def test_resuming_with_fewer_epochs_than_already_run_is_refused(uninterrupted, capsys):
    before = _snapshot(uninterrupted)
    flags = [f if f != "4" else "3" for f in FLAGS]
    assert train_script.main(flags + ["--outdir", str(uninterrupted), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "with epochs=3 (--epochs): that run has already finished " \
        "4 epochs; resume with --epochs 4 or more" in err
    assert _snapshot(uninterrupted) == before
