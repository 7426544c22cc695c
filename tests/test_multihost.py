"""Multi-process training: two jax.distributed processes on 127.0.0.1 (CPU, 2 devices each)
train 20 steps and reach the parameters of one process fed the same global batches."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from jaxvae import config as config_lib
from jaxvae.data import datasets as data_lib
from jaxvae.models import mlp as models
from jaxvae.training import distributed as multihost
from jaxvae.models import registry
from jaxvae.training import step as train
from jaxvae.training import fit as trainer

ROOT = Path(__file__).resolve().parent.parent
# digits: 1,438 training examples -> blocks of 719 and 719; batch 140 = 70 per process,
# 719 // 70 = 10 steps per epoch, 2 epochs = 20 steps.
FLAGS = ["--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--batch-size", "140",
         "--epochs", "2", "--checkpoint-every", "5", "--quiet"]
STEPS_PER_EPOCH = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("multihost")
    # tests/conftest.py's XLA flags (the compiler of the reference run), with 2 devices each
    flags = [f for f in os.environ["XLA_FLAGS"].split() if "device_count" not in f]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": " ".join(flags + ["--xla_force_host_platform_device_count=2"])}
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *FLAGS, "--outdir",
         str(outdir), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
         "--process-id", str(i)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
        for i in range(2)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=400)[0].decode())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]
    return outdir, logs


def _single_process_reference(num_steps: int):
    """One process, the same global batches: process p's rows come from its own block."""
    config = config_lib.TrainConfig.from_flat(dataset="digits", hidden=(16,), latent_dim=2,
                                              batch_size=140)
    data = data_lib.load("digits")
    blocks = [data.x_train[data_lib.process_shard(len(data.x_train), p, 2)] for p in range(2)]
    model, loss_fn = registry.build(config, data.example_shape)
    keys = trainer.run_keys(config.run.seed)
    tx = train.make_optimizer(config.optimizer.lr)
    state = train.create_train_state(models.init(model, keys.init), tx)
    step = jax.jit(train.train_step_fn(loss_fn, tx, skip_nonfinite=True))
    for t in range(num_steps):
        epoch, position = t // STEPS_PER_EPOCH + 1, t % STEPS_PER_EPOCH
        rows = [block[multihost.local_batch_indices(len(block),
                                                    jax.random.fold_in(keys.shuffle, epoch),
                                                    70, position, position + 1)[0]]
                for block in blocks]
        x = jnp.asarray(np.concatenate(rows))
        state, _ = step(state, {"x": x, "y": jnp.full(len(x), -1)}, keys.train)
    return model, state


def test_two_processes_match_one_process_with_the_same_global_batches(two_process_run):
    outdir, _ = two_process_run
    model, expected = _single_process_reference(2 * STEPS_PER_EPOCH)
    params = serialization.from_bytes(jax.device_get(expected.params),
                                      (outdir / "params.msgpack").read_bytes())
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), expected.params,
                         models.init(model, jax.random.key(0)))
    assert max(jax.tree.leaves(moved)) > 1e-3  # 20 steps really moved the parameters
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
                 params, jax.device_get(expected.params))


def test_only_process_zero_writes_logs_and_checkpoints(two_process_run):
    outdir, logs = two_process_run
    records = [json.loads(line) for line in (outdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # once, not once per process
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["num_devices"] == 4
    from jaxvae.training import checkpoint
    assert checkpoint.saved_steps(outdir / "checkpoints") == [10, 15, 20]
    assert "wrote" in logs[0] and "wrote" not in logs[1]


@pytest.mark.parametrize("args, error, match", [
    (("127.0.0.1", 2, 0), ValueError, "coordinator must be HOST:PORT"),
    (("127.0.0.1:99999", 2, 0), ValueError, "port in 1..65535"),
    (("127.0.0.1:1234", 2, 2), ValueError, r"process_id must be in \[0, 2\)"),
    (("127.0.0.1:1234", 0, 0), ValueError, "num_processes must be >= 1"),
    (("127.0.0.1:1234", None, 0), ValueError, "needs all of --coordinator"),
    (("127.0.0.1:1234", 2.0, 0), TypeError, "num_processes must be an int"),
])
def test_distributed_flags_are_checked_before_connecting(args, error, match):
    with pytest.raises(error, match=match):
        multihost.check_distributed_args(*args)
