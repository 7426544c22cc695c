"""Train a VAE and write its metrics, figures and parameters.

    python experiments/train.py                      # the PyTorch reference VAE on mnist5k
    python experiments/train.py --epochs 20 --latent-dim 2 --outdir runs/z2

Writes into --outdir: metrics.jsonl (one line per epoch), summary.json (config, final metrics,
device, versions), reconstructions.png, samples.png, loss_curves.png, params.msgpack.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import serialization  # noqa: E402
from tqdm import tqdm  # noqa: E402

import jaxvae  # noqa: E402
from jaxvae import data as data_lib  # noqa: E402
from jaxvae import trainer  # noqa: E402
from jaxvae import models, objectives, plots, registry  # noqa: E402
from jaxvae.config import TrainConfig  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default=d.dataset,
                   help=f"dataset name, one of {sorted(data_lib.LOADERS)} (default %(default)s)")
    p.add_argument("--model", default=d.model, choices=sorted(registry.MODELS),
                   help="model (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="batch size (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default %(default)s)")
    p.add_argument("--latent-dim", type=int, default=d.latent_dim,
                   help="latent size Z (default %(default)s)")
    p.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden),
                   help="encoder hidden widths; the decoder mirrors them (default %(default)s)")
    p.add_argument("--beta", type=float, default=d.beta,
                   help="weight of the KL term (default %(default)s)")
    p.add_argument("--likelihood", default=d.likelihood, choices=sorted(objectives.LIKELIHOODS),
                   help="p(x|z) (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    p.add_argument("--outdir", default="runs/train", help="output directory (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # issue 7b: architectures (conv, vqvae, ladder, flow)
    p.add_argument("--conv-channels", type=int, nargs="+", default=list(d.conv_channels),
                   help="conv/vqvae: widths of the stride-2 convs (default %(default)s)")
    p.add_argument("--num-codes", type=int, default=d.num_codes,
                   help="vqvae: codebook size K (default %(default)s)")
    p.add_argument("--code-dim", type=int, default=d.code_dim,
                   help="vqvae: size D of a code vector (default %(default)s)")
    p.add_argument("--commitment-cost", type=float, default=d.commitment_cost,
                   help="vqvae: weight of the commitment loss (default %(default)s)")
    p.add_argument("--vq-ema", action="store_true",
                   help="vqvae: codebook as moving averages instead of a codebook loss")
    p.add_argument("--vq-decay", type=float, default=d.vq_decay,
                   help="vqvae: decay of the moving averages (default %(default)s)")
    p.add_argument("--ladder-latents", type=int, nargs="+", default=list(d.ladder_latents),
                   help="ladder: size of each stochastic layer, bottom up (default %(default)s)")
    p.add_argument("--ladder-hidden", type=int, nargs="+", default=list(d.ladder_hidden),
                   help="ladder: width of each layer's blocks (default %(default)s)")
    p.add_argument("--flow-steps", type=int, default=d.flow_steps,
                   help="flow: number of planar flows (default %(default)s)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(dataset=args.dataset, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, latent_dim=args.latent_dim, hidden=tuple(args.hidden),
                       beta=args.beta, likelihood=args.likelihood, seed=args.seed,
                       # issue 7b
                       conv_channels=tuple(args.conv_channels), num_codes=args.num_codes,
                       code_dim=args.code_dim, commitment_cost=args.commitment_cost,
                       vq_ema=args.vq_ema, vq_decay=args.vq_decay,
                       ladder_latents=tuple(args.ladder_latents),
                       ladder_hidden=tuple(args.ladder_hidden), flow_steps=args.flow_steps)


def prepare_outdir(path: str) -> Path:
    """Creates the output directory and checks that it is writable, before any training."""
    outdir = Path(path)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        probe = outdir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to output directory {outdir}: {e.strerror or e}") from None
    return outdir


def environment() -> dict:
    return {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
            "num_devices": jax.device_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": {"jaxvae": jaxvae.__version__, "jax": jax.__version__,
                         "flax": flax.__version__, "optax": optax.__version__,
                         "numpy": np.__version__}}


def write_outputs(outdir: Path, config: TrainConfig, data: data_lib.Dataset,
                  result: trainer.FitResult) -> list[Path]:
    """Writes summary.json, the figures and the parameters; returns the paths written."""
    model, params = result.model, result.state.params
    key = jax.random.key(config.seed + 1)
    recon_key, sample_key = jax.random.split(key)
    written = []
    x = data.x_test[:10]
    out = models.reconstruct(model, params, x, recon_key)
    mean = np.asarray(objectives.likelihood_mean(config.likelihood, out))
    samples = np.asarray(objectives.likelihood_mean(
        config.likelihood, models.sample(model, params, sample_key, 64)))
    for path, fn in (
            (outdir / "reconstructions.png",
             lambda p: plots.save_reconstructions(p, x, mean, "Test inputs (top), reconstructions (bottom)")),
            (outdir / "samples.png",
             lambda p: plots.save_image_grid(p, samples, 8, getattr(
                 model, "sample_title", "Samples from the prior"))),
            (outdir / "loss_curves.png",
             lambda p: plots.save_loss_curves(p, result.history, title="Loss (negative ELBO)"))):
        if fn(path) is not None:
            written.append(path)
    (outdir / "params.msgpack").write_bytes(serialization.to_bytes(jax.device_get(params)))
    written.append(outdir / "params.msgpack")
    summary = {"config": config.to_dict(), "final": result.history[-1],
               "compile_seconds": result.compile_seconds,
               "train_examples": int(len(data.x_train)), "test_examples": int(len(data.x_test)),
               **environment()}
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2))
    written.append(outdir / "summary.json")
    return written


def run(config: TrainConfig, outdir: str, quiet: bool = False) -> trainer.FitResult:
    """Loads the data, trains, and writes every output file into outdir."""
    jaxvae.validate_config(config)
    out = prepare_outdir(outdir)
    data = data_lib.load(config.dataset, seed=0)
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    bar = tqdm(total=config.epochs, desc="epochs", unit="epoch", disable=quiet, file=sys.stderr)

    def on_epoch(record: dict) -> None:
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        bar.set_postfix(train=f"{record['train_loss']:.2f}", test=f"{record['test_loss']:.2f}")
        bar.update(1)

    try:
        result = trainer.fit(config, data, on_epoch=on_epoch)
    finally:
        bar.close()
    written = [metrics_path] + write_outputs(out, config, data, result)
    final = result.history[-1]
    print(f"test loss {final['test_loss']:.3f} (recon {final['test_recon']:.3f}, "
          f"kl {final['test_kl']:.3f}) nats/example after {config.epochs} epochs")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(config_from_args(args), args.outdir, args.quiet)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
