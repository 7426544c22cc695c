"""SIGTERM and SIGINT (a scheduler's preemption, Ctrl-C) stop a training run at the next chunk
boundary with a checkpoint, one line and exit 128 + signal; --resume then finishes bitwise like
the uninterrupted run. Without checkpoints the run stops with one line and no traceback."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import train as train_script
from jaxvae.training import checkpoint
from jaxvae.training import loop

# The in-process runs split each batch over the 4 forced CPU devices (tests/conftest.py), as the
# signalled training processes do, so that their bits can be compared.
pytestmark = pytest.mark.multidevice
ROOT = Path(__file__).resolve().parent.parent
# digits: 1,438 training examples, batch 512 -> 3 steps per epoch; a checkpoint after every step.
FLAGS = ["--dataset", "digits", "--hidden", "8", "--latent-dim", "2", "--batch-size", "512",
         "--epochs", "3", "--checkpoint-every", "1", "--quiet"]
TOTAL = 9


def _records(outdir: Path) -> list[dict]:
    lines = (outdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("uninterrupted")
    assert train_script.main(FLAGS + ["--outdir", str(outdir)]) == 0
    return outdir


def _train_and_signal(argv: list[str], signum: int, ready) -> subprocess.CompletedProcess:
    """Starts experiments.train, sends ``signum`` once ``ready()``, returns the finished run."""
    # os.environ holds tests/conftest.py's XLA flags: the devices and compiler of the
    # in-process runs
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *argv], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        while not ready():
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the run never got ready to be signalled"
            time.sleep(0.02)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, None, stderr)


def test_a_signal_checkpoints_says_how_to_resume_and_resume_is_bitwise(uninterrupted, tmp_path):
    # SIGTERM here, SIGINT in the run without checkpoints below: loop.StopSignals handles both
    # the same way (test_stop_signals_sets_a_flag_then_restores_the_handlers)
    signum = signal.SIGTERM
    outdir = tmp_path / "run"
    argv = FLAGS + ["--outdir", str(outdir)]
    done = _train_and_signal(argv, signum,
                             lambda: checkpoint.saved_steps(outdir / "checkpoints"))
    assert done.returncode == 128 + signum
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    steps = checkpoint.saved_steps(outdir / "checkpoints")
    stopped_at = max(steps)
    assert stopped_at < TOTAL and not (outdir / "params.msgpack").exists()
    name = signal.Signals(signum).name
    assert lines[0].startswith(f"interrupted by {name}: stopped at step {stopped_at}; "
                               f"checkpoint {outdir / 'checkpoints' / str(stopped_at)} written")
    assert lines[0].endswith(" --resume") and "continue with: python -m experiments.train" \
        in lines[0]

    assert train_script.main(argv + ["--resume"]) == 0
    assert (outdir / "params.msgpack").read_bytes() == \
        (uninterrupted / "params.msgpack").read_bytes()
    assert _records(outdir) == _records(uninterrupted)


def test_without_checkpoints_a_signal_stops_with_one_line(tmp_path):
    outdir = tmp_path / "run"
    argv = ["--dataset", "digits", "--hidden", "8", "--latent-dim", "2", "--batch-size", "512",
            "--epochs", "100000", "--quiet", "--outdir", str(outdir)]
    metrics = outdir / "metrics.jsonl"
    done = _train_and_signal(argv, signal.SIGINT,
                             lambda: metrics.exists() and metrics.read_text().count("\n") >= 1)
    assert done.returncode == 130
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("interrupted by SIGINT: stopped at step ")
    assert "without a checkpoint; to be able to resume, train with --checkpoint-every N" \
        in done.stderr
    assert not (outdir / "params.msgpack").exists() and not (outdir / "checkpoints").exists()


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGINT),
                                           (signal.SIGINT, signal.SIGTERM)])
def test_stop_signals_sets_a_flag_then_restores_the_handlers(first, second):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with loop.StopSignals() as stop:
        assert stop() is None
        signal.raise_signal(first)  # handled at once in the main thread: no exit
        assert stop() == first
        with pytest.raises(loop.Interrupted, match="second signal"):
            signal.raise_signal(second)
    assert {s: signal.getsignal(s) for s in before} == before


def test_the_loop_stops_after_the_chunk_whose_hooks_ran_when_a_stop_is_requested():
    calls = []

    def run_chunk(state, epoch, start, stop):
        n = stop - start
        return state + n, {"loss": np.ones(n), "skipped": np.zeros(n)}, np.ones(n), 0.0

    with pytest.raises(loop.Interrupted) as info:
        loop.run_epochs(state=0, loop=loop.new_loop_state(), run_chunk=run_chunk,
                        steps_per_epoch=4, evaluate=lambda state: {}, epochs=3,
                        hooks=[lambda step, progress: calls.append(step) and False],
                        max_skipped_steps=10, checkpoint_every=1,
                        stop_requested=lambda: signal.SIGTERM if len(calls) == 2 else None)
    assert calls == [1, 2] and info.value.step == 2 and info.value.exit_code == 143
