"""What verified checkpoints cost: the SHA-256 of the content and the read-back check per save.

    python -m benchmarks.checkpoint_cost             # the reference VAE (784-400-20, Adam)
    python -m benchmarks.checkpoint_cost --saves 30 --hidden 1024 1024

Times ``CheckpointManager.save`` (checksum, Orbax write, read back and verify, rotation), its
two verification parts on their own (``content_digests`` and the read-back), and
``restore_latest`` (read and verify), each the median over ``--saves`` calls after two
warm-up calls. The part Orbax itself takes is the save minus the two verification parts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np

from jaxvae import TrainConfig
from jaxvae.training import checkpoint
from jaxvae.models import mlp as models
from jaxvae.models import registry
from jaxvae.training import step as train
from jaxvae.training import fit as trainer


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--saves", type=int, default=12, help="timed saves (default %(default)s)")
    p.add_argument("--hidden", type=int, nargs="+", default=[400])
    p.add_argument("--latent-dim", type=int, default=20)
    args = p.parse_args(argv)
    config = TrainConfig.from_flat(hidden=tuple(args.hidden), latent_dim=args.latent_dim)
    model, _ = registry.build(config, (784,))
    state = train.create_train_state(models.init(model, jax.random.key(0)),
                                     config.optimizer.make())
    keys = trainer.run_keys(0)._asdict()
    config_json = checkpoint.config_dict(config)
    loop = {"epoch": 1, "position": 0, "history": []}
    tree = checkpoint._to_host({"step": state.step, "params": state.params,
                                "opt_state": state.opt_state})
    key_data = {n: np.asarray(jax.random.key_data(k)) for n, k in keys.items()}
    megabytes = sum(a.nbytes for a in jax.tree.leaves(tree)) / 1e6

    with tempfile.TemporaryDirectory() as directory:
        manager = checkpoint.CheckpointManager(directory, keep=3)
        read_back, real_read_back = [], manager._read_back

        def timed_read_back(*a):
            t0 = time.perf_counter()
            out = real_read_back(*a)
            read_back.append(time.perf_counter() - t0)
            return out

        manager._read_back = timed_read_back
        saves, digests, restores = [], [], []
        template = jax.tree.map(np.asarray, state)
        for step in range(1, args.saves + 3):
            t0 = time.perf_counter()
            manager.save(state.replace(step=np.int32(step)), keys, loop, config_json)
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            checkpoint.content_digests(tree, key_data, loop, config_json)
            digests.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            manager.restore_latest(template, tuple(keys))
            restores.append(time.perf_counter() - t0)
        manager.close()

    def ms(times):
        return 1000 * statistics.median(times[2:])

    print(f"state {megabytes:.2f} MB (params + optimizer state), median of {args.saves}, ms:")
    print(f"  save, all of it         {ms(saves):7.1f}")
    print(f"    SHA-256 of the content {ms(digests):6.1f}")
    print(f"    read back and verify   {ms(read_back):6.1f}")
    print(f"    Orbax write, rotation  {ms(saves) - ms(digests) - ms(read_back):6.1f}")
    print(f"  restore_latest (verified) {ms(restores):5.1f}")


if __name__ == "__main__":
    main()
