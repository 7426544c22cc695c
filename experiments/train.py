"""Train a VAE and write its metrics, figures and parameters.

    python experiments/train.py                      # the PyTorch reference VAE on mnist5k
    python experiments/train.py --epochs 20 --latent-dim 2 --outdir runs/z2

Writes into --outdir: metrics.jsonl (one line per epoch), summary.json (config, final metrics,
device, versions), reconstructions.png, samples.png, loss_curves.png, params.msgpack, and with
--checkpoint-every the Orbax checkpoints in checkpoints/ (continue a run with --resume).
"""

from __future__ import annotations

import argparse
import json
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
from jaxvae import checkpoint, loop, models, multihost, objectives, plots, registry  # noqa: E402
from jaxvae.config import TrainConfig  # noqa: E402
from jaxvae import preprocessing  # noqa: E402  (issue 4)
from jaxvae.config import FEEDS  # noqa: E402  (issue 4)
from jaxvae import priors, schedules  # noqa: E402  (issue 7a)


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default=d.dataset,
                   help=f"dataset name, one of {data_lib.dataset_names()}, or a path to a "
                        ".npy/.npz/.csv file (default %(default)s)")
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
    # issue 4: data
    p.add_argument("--data-dir", default=d.data_dir,
                   help="TFDS data_dir with prepared (array_record) datasets "
                        "(default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--download", action="store_true", default=d.download,
                   help="let TFDS download and prepare a missing dataset (off: fail at once)")
    p.add_argument("--binarize", default=d.binarize, choices=list(preprocessing.BINARIZE),
                   help="binarize the pixels: a fresh Bernoulli sample each epoch (dynamic) or "
                        "one fixed sample (static) (default %(default)s)")
    p.add_argument("--dequantize", action="store_true", default=d.dequantize,
                   help="uniform dequantization of 8-bit pixels, for continuous likelihoods")
    p.add_argument("--label-column", default=d.label_column,
                   help="CSV datasets: the header name (or 0-based index) of the label column")
    p.add_argument("--feed", default=d.feed, choices=list(FEEDS),
                   help="training data on the device once, streamed from the host, or auto "
                        "(device when it fits) (default %(default)s)")
    # issue 7a: objectives, priors, likelihoods, conditional VAE
    g = p.add_argument_group("model zoo: objectives and priors (issue 7a)")
    g.add_argument("--kl-schedule", default=d.kl_schedule, choices=schedules.KL_SCHEDULES,
                   help="KL weight beta*w(step): constant, linear warm-up or cyclical annealing "
                        "(default %(default)s)")
    g.add_argument("--kl-warmup-steps", type=int, default=d.kl_warmup_steps,
                   help="linear: steps from w=0 to w=1 (default %(default)s)")
    g.add_argument("--kl-cycles", type=int, default=d.kl_cycles,
                   help="cyclical: number of cycles over the run (default %(default)s)")
    g.add_argument("--kl-ramp-fraction", type=float, default=d.kl_ramp_fraction,
                   help="cyclical: fraction of each cycle spent ramping (default %(default)s)")
    g.add_argument("--kl-total-steps", type=int, default=d.kl_total_steps,
                   help="cyclical: steps the cycles span; 0 = the whole run (default %(default)s)")
    g.add_argument("--free-bits", type=float, default=d.free_bits,
                   help="free bits: minimum KL per latent dimension in nats, 0 = off "
                        "(default %(default)s)")
    g.add_argument("--prior", default=d.prior, choices=priors.PRIORS,
                   help="p(z) (default %(default)s)")
    g.add_argument("--prior-components", type=int, default=d.prior_components,
                   help="components of the mog prior / pseudo-inputs of vamp (default %(default)s)")
    g.add_argument("--num-samples", type=int, default=d.num_samples,
                   help="K importance samples of --model iwae (default %(default)s)")
    g.add_argument("--num-classes", type=int, default=d.num_classes,
                   help="labels of --model cvae (default %(default)s)")
    # issue 8: checkpoints, NaN guard, multi-host
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="write an Orbax checkpoint into OUTDIR/checkpoints every STEPS steps and "
                        "at each epoch end (default: no checkpoints)")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, metavar="K",
                   help="keep the last K checkpoints (default %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --outdir from its newest readable checkpoint "
                        "(pass the run's other flags again)")
    p.add_argument("--max-skipped-steps", type=int, default=d.max_skipped_steps, metavar="N",
                   help="stop after N consecutive steps with a non-finite loss or gradient "
                        "(default %(default)s)")
    p.add_argument("--clip-norm", type=float, default=None,
                   help="clip gradients to this global L2 norm (default: no clipping)")
    p.add_argument("--microbatch-size", type=int, default=None, metavar="M",
                   help="accumulate each batch's gradient over micro-batches of M examples "
                        "(M divides --batch-size): faster at large batches on a CPU "
                        "(default: off)")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-process training: address of process 0's coordinator, or "
                        "'auto' (Cloud TPU pod slices, SLURM: JAX detects the cluster)")
    p.add_argument("--num-processes", type=int, default=None,
                   help="multi-process training: number of processes")
    p.add_argument("--process-id", type=int, default=None,
                   help="multi-process training: this process's id, 0 .. N-1")
    # issue 6: tracking and early stopping
    p.add_argument("--tensorboard", action="store_true",
                   help="write TensorBoard event files into OUTDIR/tensorboard")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="stop after N epochs without a lower validation loss and keep the best "
                        "epoch's parameters (default: off)")
    p.add_argument("--validation-fraction", type=float, default=d.validation_fraction,
                   help="share of the training split held out for --patience "
                        "(default %(default)s)")
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
    return TrainConfig(dataset=args.dataset, model=args.model, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, latent_dim=args.latent_dim,
                       hidden=tuple(args.hidden),
                       beta=args.beta, likelihood=args.likelihood, seed=args.seed,
                       # issue 4: data
                       data_dir=args.data_dir, download=args.download,
                       label_column=args.label_column, binarize=args.binarize,
                       dequantize=args.dequantize, feed=args.feed,
                       # issue 7a
                       kl_schedule=args.kl_schedule, kl_warmup_steps=args.kl_warmup_steps,
                       kl_cycles=args.kl_cycles, kl_ramp_fraction=args.kl_ramp_fraction,
                       kl_total_steps=args.kl_total_steps, free_bits=args.free_bits,
                       prior=args.prior, prior_components=args.prior_components,
                       num_samples=args.num_samples, num_classes=args.num_classes,
                       # issue 8
                       checkpoint_every=args.checkpoint_every,
                       keep_checkpoints=args.keep_checkpoints,
                       max_skipped_steps=args.max_skipped_steps, clip_norm=args.clip_norm,
                       # issue 6: early stopping
                       patience=args.patience,
                       validation_fraction=args.validation_fraction,
                       # issue 7b
                       conv_channels=tuple(args.conv_channels), num_codes=args.num_codes,
                       code_dim=args.code_dim, commitment_cost=args.commitment_cost,
                       vq_ema=args.vq_ema, vq_decay=args.vq_decay,
                       ladder_latents=tuple(args.ladder_latents),
                       ladder_hidden=tuple(args.ladder_hidden), flow_steps=args.flow_steps,
                       # issue 5
                       microbatch_size=args.microbatch_size)


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
            "num_devices": jax.device_count(), "num_processes": jax.process_count(),
            "platform": platform.platform(),
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
    labels = data.y_test[:10] if getattr(model, "num_classes", 0) else None  # issue 7a: cvae
    out = models.reconstruct(model, params, x, recon_key, labels=labels)
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
    summary = {"config": config.to_dict(), "final": trainer.final_record(result),
               "best_epoch": result.best_epoch, "epochs_run": len(result.history),
               "compile_seconds": result.compile_seconds,
               "train_examples": int(len(data.x_train)), "test_examples": int(len(data.x_test)),
               **environment()}
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2))
    written.append(outdir / "summary.json")
    return written


def run(config: TrainConfig, outdir: str, quiet: bool = False, *, resume: bool = False,
        distributed: tuple | None = None, tensorboard: bool = False) -> trainer.FitResult:
    """Loads the data, trains, and writes every output file into outdir.

    ``distributed = (coordinator, num_processes, process_id)`` starts jax.distributed first;
    every process then trains on its block of the training set and only process 0 writes.
    ``tensorboard`` writes event files into OUTDIR/tensorboard (process 0).
    """
    jaxvae.validate_config(config)
    lead = True
    if distributed is not None:
        multihost.initialize(*distributed)  # checks the flags first
        lead = jax.process_index() == 0
    out = prepare_outdir(outdir) if lead else Path(outdir)
    checkpoint_dir = None
    if config.checkpoint_every is not None or resume:
        checkpoint_dir = out / "checkpoints"
        steps = checkpoint.saved_steps(checkpoint_dir)
        if resume and not steps:
            raise ValueError(f"--resume: no checkpoint in {checkpoint_dir} to continue from; run "
                             "without --resume to start a new run")
        if steps and not resume:
            raise ValueError(f"{checkpoint_dir} already holds the checkpoints of a run (steps "
                             f"{steps}): pass --resume to continue it, or use another --outdir")
    data = data_lib.load_for(config)
    if distributed is not None:
        idx = data_lib.process_shard(len(data.x_train), jax.process_index(), jax.process_count())
        data = data._replace(x_train=data.x_train[idx], y_train=data.y_train[idx])
    metrics_path = out / "metrics.jsonl"
    if lead and not resume:
        metrics_path.write_text("")
    bar = tqdm(total=config.epochs, desc="epochs", unit="epoch", disable=quiet or not lead,
               file=sys.stderr)

    def on_epoch(record: dict) -> None:
        if lead:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        bar.set_postfix(train=f"{record['train_loss']:.2f}", test=f"{record['test_loss']:.2f}")
        bar.update(1)

    def on_resume(history: list[dict]) -> None:
        # The checkpoint's history is the truth: lines written after it are dropped.
        if lead:
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))
        bar.update(len(history))

    # issue 6: TensorBoard
    logger = None
    if tensorboard and lead:
        from jaxvae import tracking
        logger = tracking.TensorBoardLogger(out / "tensorboard", config.likelihood,
                                            examples=data.x_test[:8], seed=config.seed,
                                            labels=data.y_test[:8])
    try:
        result = trainer.fit(config, data, on_epoch=on_epoch, checkpoint_dir=checkpoint_dir,
                             resume=resume, on_resume=on_resume, on_epoch_end=logger)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    if not lead:
        return result
    written = [metrics_path] + write_outputs(out, config, data, result)
    if logger is not None:
        written.append(Path(logger.logdir))
    final = trainer.final_record(result)
    print(f"test loss {final['test_loss']:.3f} (recon {final['test_recon']:.3f}, "
          f"kl {final['test_kl']:.3f}) nats/example after {final['epoch']} epochs")
    if result.best_epoch is not None:
        print(f"early stopping: kept epoch {result.best_epoch} (lowest validation loss "
              f"{final['val_loss']:.3f}) of {len(result.history)} run")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    distributed = None
    if (args.coordinator, args.num_processes, args.process_id) != (None, None, None):
        distributed = (args.coordinator, args.num_processes, args.process_id)
    try:
        run(config_from_args(args), args.outdir, args.quiet, resume=args.resume,
            distributed=distributed, tensorboard=args.tensorboard)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except loop.TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
