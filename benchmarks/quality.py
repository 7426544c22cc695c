"""The quality bar: jaxvae's reference VAE vs the PyTorch reference, trained the same way.

    python -m benchmarks.quality [--seeds 10] [--epochs 10] [--json PATH]

Two comparisons on mnist5k (4,000 train / 1,000 test), batch 128, Adam 1e-3:

- independent: for each seed, ``jaxvae.fit`` (what experiments/train.py runs) and the torch
  reference (``benchmarks/torch_reference.py``) each with their own init, shuffling and noise;
  the test loss after the last epoch, mean and standard deviation over seeds;
- paired: one run in which both start from the same (torch-initialised) weights and see the same
  batches and the same reparameterization noise, so any gap is the implementation's, not luck.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import jax
import numpy as np
import torch

import jaxvae
from benchmarks import torch_reference as ref


def independent(data: jaxvae.Dataset, seed: int, epochs: int) -> tuple[float, float]:
    """Final test loss (nats/example) of jaxvae and of torch, each seeded with ``seed``."""
    jax_loss = jaxvae.fit(jaxvae.TrainConfig.from_flat(seed=seed, epochs=epochs), data).history[-1]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, x_test = torch.from_numpy(data.x_train), torch.from_numpy(data.x_test)
    net = ref.TorchVAE()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        ref.train_epoch(net, opt, x_train, 128, generator)
    return jax_loss["test_loss"], ref.evaluate(net, x_test)


def paired(data: jaxvae.Dataset, epochs: int, seed: int = 0) -> list[dict]:
    """Both frameworks from the same weights, batches and noise; per-epoch last-batch losses.

    The torch loss is the reference's BCE(sum) + KLD divided by the batch size, the objective
    jaxvae minimises (the division only rescales Adam's eps, which changes nothing measurable).
    """
    torch.manual_seed(seed)
    net = ref.TorchVAE()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    model = jaxvae.reference_vae()
    tx = jaxvae.make_optimizer(1e-3)
    state = jaxvae.create_train_state(jaxvae.from_torch(model, net.state_dict()), tx)
    step = jaxvae.make_train_step(jaxvae.training.step.vae_loss_fn(model), tx)
    run_key = jax.random.key(seed)
    rng = np.random.default_rng(seed)
    n, history = len(data.x_train), []
    for epoch in range(1, epochs + 1):
        perm = rng.permutation(n)
        for start in range(0, n, 128):
            x = data.x_train[perm[start:start + 128]]
            # The noise jaxvae's step draws: eps = normal(fold_in(run_key, step), (B, Z)).
            eps = np.array(jax.random.normal(jax.random.fold_in(run_key, state.step),
                                             (len(x), 20)))
            state, metrics = step(state, x, run_key)
            opt.zero_grad()
            recon, mu, logvar = net(torch.from_numpy(x), torch.from_numpy(eps))
            loss = ref.loss_function(recon, torch.from_numpy(x), mu, logvar) / len(x)
            loss.backward()
            opt.step()
        ours = jax.tree.leaves(state.params)
        theirs = jax.tree.leaves(jaxvae.from_torch(model, net.state_dict()))
        history.append({"epoch": epoch, "jax_loss": float(metrics["loss"]),
                        "torch_loss": loss.item(),
                        "max_param_diff": max(float(np.max(np.abs(a - b)))
                                              for a, b in zip(ours, theirs))})
    return history


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.epochs < 1:
        parser.error("need --seeds >= 2 and --epochs >= 1")
    data = jaxvae.data.datasets.load_mnist5k()
    rows = []
    for seed in range(args.seeds):
        jax_loss, torch_loss = independent(data, seed, args.epochs)
        rows.append({"seed": seed, "jax_test_loss": jax_loss, "torch_test_loss": torch_loss})
        print(json.dumps(rows[-1]), flush=True)
    diffs = [r["jax_test_loss"] - r["torch_test_loss"] for r in rows]
    summary = {
        name: {"mean": statistics.mean(v), "stdev": statistics.stdev(v),
               "median": statistics.median(v)}
        for name, v in (("jax", [r["jax_test_loss"] for r in rows]),
                        ("torch", [r["torch_test_loss"] for r in rows]), ("jax_minus_torch", diffs))}
    summary["jax_minus_torch"]["stderr"] = statistics.stdev(diffs) / len(diffs) ** 0.5
    print(json.dumps(summary, indent=1))
    trajectory = paired(data, args.epochs)
    for r in trajectory:
        print(json.dumps(r))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"independent": rows, "summary": summary, "paired": trajectory}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
