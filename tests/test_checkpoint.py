"""Checkpoints: SIGKILL mid-run then --resume is bitwise the uninterrupted run; corrupt and
half-written checkpoints fall back to the previous one; config changes are refused."""

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
from jaxvae import checkpoint, trainer

ROOT = Path(__file__).resolve().parent.parent
# digits: 1,437 training examples, batch 64 -> 22 full batches + 1 of 29 = 23 steps per epoch;
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
    assert restored.config["latent_dim"] == 2 and restored.config["checkpoint_every"] == 10
    for name in keys._fields:
        np.testing.assert_array_equal(jax.random.key_data(restored.keys[name]),
                                      jax.random.key_data(getattr(keys, name)))


def _template_state():
    from jaxvae import TrainConfig, models, registry, train
    config = TrainConfig(hidden=(16,), latent_dim=2)
    model, _ = registry.build(config, (64,))
    tx = train.make_optimizer(config.lr)
    return train.create_train_state(models.init(model, jax.random.key(0)), tx)


def test_sigkill_mid_run_then_resume_gives_bitwise_identical_parameters(uninterrupted, tmp_path):
    outdir = tmp_path / "killed"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
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
    with pytest.warns(UserWarning, match=r"checkpoints/92 .* is unreadable; resuming from the "
                                         r"previous one, .*checkpoints/89"):
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
    ([], "already holds the checkpoints of a run (steps [79, 89, 92]): pass --resume"),
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
