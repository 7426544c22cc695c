"""Train a VAE and write its metrics, figures and parameters.

    python -m experiments.train                      # the PyTorch reference VAE on mnist5k
    python -m experiments.train --epochs 20 --latent-dim 2 --outdir runs/z2

Writes into --outdir: metrics.jsonl (one line per epoch), summary.json (config, final metrics,
device, versions), reconstructions.png, samples.png, loss_curves.png, params.msgpack, and with
--checkpoint-every the Orbax checkpoints in checkpoints/ (continue a run with --resume).
A run directory holds one run: a new run into a non-empty --outdir is refused (--resume continues
the run in it, --overwrite deletes it first), and nothing is written before every check passed.
Every field of the sections of jaxvae.TrainConfig is a flag of the same name, grouped in --help by
section (data, model, objective, optimizer, run, evaluation).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import signal
import sys
from pathlib import Path

import flax
import jax
import numpy as np
import optax
from flax import serialization
from tqdm import tqdm

import jaxvae
from experiments import cli
from jaxvae.training import checkpoint
from jaxvae.training import hooks
from jaxvae.training import loop
from jaxvae.models import mlp as models
from jaxvae.training import distributed as multihost
from jaxvae.objectives import bounds as objectives
from jaxvae.evaluation import plots
from jaxvae.data import preprocessing
from jaxvae.data import standardize
from jaxvae.training import early_stopping
from jaxvae.models import priors
from jaxvae.models import registry
from jaxvae.objectives import losses
from jaxvae.objectives import schedules
from jaxvae.training import fit as trainer
from jaxvae.training import files
from jaxvae.training import runs
from jaxvae.data import datasets as data_lib
from jaxvae.config import TrainConfig, data_defaults, data_defaults_line


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Where and how this script runs a TrainConfig (not part of the config it saves)."""

    outdir: str = "runs/train"  # output directory
    quiet: bool = False  # no progress bar
    resume: bool = False  # continue the run in --outdir from its newest readable checkpoint
    #   (pass the run's other flags again)
    overwrite: bool = False  # delete the run already in --outdir (every file in it) before
    #   training; without it a new run into a non-empty --outdir is refused
    tensorboard: bool = False  # write TensorBoard event files into OUTDIR/tensorboard
    coordinator: str | None = None  # multi-process training: address HOST:PORT of process 0's
    #   coordinator, or 'auto' (Cloud TPU pod slices, SLURM: JAX detects the cluster)
    num_processes: int | None = None  # multi-process training: number of processes
    process_id: int | None = None  # multi-process training: this process's id, 0 .. N-1
    validation_size: int | None = None  # hold out exactly this many training examples for
    #   --patience instead of --validation-fraction (stratified, seeded): --dataset mnist
    #   --validation-size 10000 trains on 50,000 as in the IWAE paper
    init_from: str | None = None  # start from the parameters of the finished run in this
    #   directory (fine-tuning, e.g. a VAE on the IWAE bound): the model flags must give the
    #   same parameters; the optimizer and the schedules start afresh


def config_choices() -> dict[str, list[str]]:
    """The allowed values of the TrainConfig fields that name a registered component."""
    return {"model": sorted(registry.MODELS), "likelihood": sorted(objectives.LIKELIHOODS),
            "binarize": list(preprocessing.BINARIZE), "feed": list(data_lib.FEEDS),
            "standardize": list(standardize.MODES),
            "kl_schedule": list(schedules.KL_SCHEDULES), "prior": list(priors.PRIORS),
            "objective": list(losses.OBJECTIVES)}


def add_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a training run: every TrainConfig field, then the RunOptions."""
    cli.add_config_flags(p, TrainConfig, choices=config_choices())
    cli.add_config_flags(p.add_argument_group("script", RunOptions.__doc__), RunOptions)


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.train", __doc__)
    add_flags(p)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return cli.config_from_flags(args, TrainConfig)


def prepare_outdir(path: str, overwrite: bool = False) -> Path:
    """Creates the output directory and checks that it is writable, before any training.

    ``overwrite`` deletes the old run's files in it first (``runs.check_new_run`` has checked
    that it is a run directory).
    """
    outdir = Path(path)
    if overwrite:
        runs.clear_run(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        probe = outdir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to output directory {outdir}: {e.strerror or e}") from None
    return outdir


def check_data_outside(config: TrainConfig, outdir: str, init_from: str | None = None) -> None:
    """Refuses --overwrite when an input (--dataset file, --data-dir, --init-from) lies inside
    --outdir."""
    for flag, value in (("--dataset", config.data.dataset), ("--data-dir", config.data.data_dir),
                        ("--init-from", init_from)):
        cli.check_outside(value, flag, outdir)


def load_init_params(init_from: str, config: TrainConfig, example_shape) -> tuple:
    """The parameters of the run in directory ``init_from`` for this config's model, and what
    summary.json records of them (the directory and the SHA-256 of its params.msgpack)."""
    path = Path(init_from) / "params.msgpack"
    model = registry.build(config, example_shape).model
    params = runs.load_params(path, model, "the model of this run's flags (--init-from needs a "
                              "run of the same architecture: --model, --hidden, --latent-dim, "
                              "--activation, --prior)")
    return params, {"path": str(init_from), "params_sha256": runs.file_digest(path)}


def environment() -> dict:
    return {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
            "num_devices": jax.device_count(), "num_processes": jax.process_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": {"jaxvae": jaxvae.__version__, "jax": jax.__version__,
                         "flax": flax.__version__, "optax": optax.__version__,
                         "numpy": np.__version__}}


def write_outputs(outdir: Path, config: TrainConfig, data: data_lib.Dataset,
                  result: trainer.FitResult, init_from: dict | None = None) -> list[Path]:
    """Writes summary.json, the figures and the parameters; returns the paths written.

    ``init_from`` (the run it started from, ``load_init_params``) goes into summary.json.
    A run on standardized data also gets its statistics (``standardize.FILE``); its figures
    show reconstructions and samples in the data's units, and summary.json's config records
    the standardization that ``auto`` chose.
    """
    model, params, stats = result.model, result.state.params, result.standardization
    key = jax.random.key(config.run.seed + 1)
    recon_key, sample_key = jax.random.split(key)
    written = []
    x = data.x_test[:10]
    labels = data.y_test[:10] if getattr(model, "num_classes", 0) else None  # cvae
    x_model = x if stats is None else standardize.apply(stats, x)
    out = models.reconstruct(model, params, x_model, recon_key, labels=labels)
    mean = np.asarray(objectives.likelihood_mean(config.model.likelihood, out))
    samples = np.asarray(objectives.likelihood_mean(
        config.model.likelihood, models.sample(model, params, sample_key, 64)))
    if stats is not None:
        mean, samples = standardize.invert(stats, mean), standardize.invert(stats, samples)
        standardize.save(outdir / standardize.FILE, stats)
        written.append(outdir / standardize.FILE)
    config = config.replace(standardize="none" if stats is None else "feature")
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
    files.write_atomic(outdir / "params.msgpack",
                       serialization.to_bytes(jax.device_get(params)))
    written.append(outdir / "params.msgpack")
    num_validation = (early_stopping.validation_count(len(data.x_train),
                                                      config.run.validation_fraction)
                      if config.run.patience else 0)
    summary = {"config": config.to_dict(), "final": trainer.final_record(result),
               "data": {"name": config.data.dataset,
                        "num_train": int(len(data.x_train)) - num_validation,
                        "num_validation": num_validation, "num_test": int(len(data.x_test))},
               "best_epoch": result.best_epoch, "epochs_run": len(result.history),
               "devices_used": result.devices_used, "init_from": init_from,
               "compile_seconds": result.compile_seconds,
               "train_examples": int(len(data.x_train)), "test_examples": int(len(data.x_test)),
               **environment()}
    files.write_atomic(outdir / "summary.json", json.dumps(summary, indent=2))
    written.append(outdir / "summary.json")
    return written


def sized_for_data(config: TrainConfig, data: data_lib.Dataset,
                   given: frozenset[str] | None, show: bool = True) -> TrainConfig:
    """``config`` with the sizes the user did not give fitted to the data (``data_defaults``),
    saying on stderr what was chosen; unchanged when ``given`` is None."""
    if given is None:
        return config
    config, changed = data_defaults(config, len(data.x_train), data.example_shape, given)
    if changed and show:
        line = data_defaults_line(changed, len(data.x_train), data.example_shape)
        print(f"note: {line}", file=sys.stderr)
    return config


def with_validation_size(config: TrainConfig, size: int, num_train: int) -> TrainConfig:
    """``config`` holding out exactly ``size`` of ``num_train`` examples for early stopping."""
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size < num_train:
        raise ValueError(f"validation size must be an int in [1, {num_train - 1}] (the "
                         f"training split holds {num_train} examples), got {size!r}")
    return config.replace(validation_fraction=size / num_train)


def run(config: TrainConfig, outdir: str, quiet: bool = False, *, resume: bool = False,
        distributed: tuple | None = None, tensorboard: bool = False,
        validation_size: int | None = None, overwrite: bool = False,
        stop_on_signals: bool = False, given: frozenset[str] | None = None,
        init_from: str | None = None) -> trainer.FitResult:
    """Loads the data, trains, and writes every output file into outdir.

    Nothing is written before every check has passed (flags, run directory, data, labels,
    model): a run that fails them leaves ``outdir`` as it was. A new run needs a missing or
    empty ``outdir``; ``resume`` continues the run in it, ``overwrite`` deletes it first.

    ``validation_size`` (with ``config.run.patience``) holds out exactly that many training
    examples: it sets ``validation_fraction`` to validation_size / N once the data is loaded.

    ``distributed = (coordinator, num_processes, process_id)`` starts jax.distributed first;
    every process then trains on its block of the training set and only process 0 writes.
    ``tensorboard`` writes event files into OUTDIR/tensorboard (process 0).
    ``stop_on_signals``: SIGINT / SIGTERM stop training at the next chunk boundary with
    ``loop.Interrupted``, after a checkpoint when there is a checkpoint directory.
    ``given`` (the command line's flags, ``cli.given_flags``): the sizes not among them are
    fitted to the data (``jaxvae.config.data_defaults``) and the choice printed; None (the
    Python API): the config is used as it is.
    ``init_from``: a finished run's directory whose parameters the run starts from (the
    optimizer and the schedules start afresh); summary.json records it. With ``resume`` the run
    continues from its own checkpoint (the command that resumes an interrupted fine-tuning run
    is its first command plus --resume).
    """
    jaxvae.validate_config(config)
    if validation_size is not None and not config.run.patience:
        raise ValueError("--validation-size sets the early-stopping validation set: pass "
                         "--patience too")
    if validation_size is not None and \
            config.run.validation_fraction != jaxvae.RunConfig.validation_fraction:
        raise ValueError("--validation-size and --validation-fraction both set the validation "
                         "set: pass one of them")
    runs.check_new_run(outdir, resume=resume, overwrite=overwrite)  # reads only
    if overwrite:
        check_data_outside(config, outdir, init_from)
    lead = True
    if distributed is not None:
        multihost.initialize(*distributed)  # checks the flags first
        lead = jax.process_index() == 0
    checkpoint_dir = None
    if config.run.checkpoint_every is not None or resume:
        checkpoint_dir = Path(outdir) / "checkpoints"
        if resume and not checkpoint.saved_steps(checkpoint_dir):
            raise ValueError(f"--resume: no checkpoint in {checkpoint_dir} to continue from; run "
                             "without --resume to start a new run")
    data = data_lib.load_for(config)
    if validation_size is not None:
        config = with_validation_size(config, validation_size, len(data.x_train))
    config = sized_for_data(config, data, given, show=lead)
    if lead:
        for note in data.notes:  # how a user file was read
            print(f"note: {note}", file=sys.stderr)
    trainer.check_run(config, data, resume=resume)  # before the first byte is written
    init_params, started_from = None, None
    if init_from is not None:
        init_params, started_from = load_init_params(init_from, config, data.example_shape)
    out = prepare_outdir(outdir, overwrite=overwrite) if lead else Path(outdir)
    stats = None
    if distributed is not None:
        # every process standardizes with the statistics of the whole training set
        data_config = config.data
        if standardize.resolve(data_config.standardize, data_config.dataset,
                               config.model.likelihood, data.x_train, data_config.binarize,
                               data_config.dequantize) == "feature":
            stats = standardize.fit(data.x_train)
        idx = data_lib.process_shard(len(data.x_train), jax.process_index(), jax.process_count())
        data = data._replace(x_train=data.x_train[idx], y_train=data.y_train[idx])
    metrics_path = out / "metrics.jsonl"
    metrics = hooks.MetricsFile(metrics_path, fresh=not resume) if lead else None
    bar = tqdm(total=config.run.epochs, desc="epochs", unit="epoch", disable=quiet or not lead,
               file=sys.stderr)

    def on_epoch(record: dict) -> None:
        bar.set_postfix(train=f"{record['train_loss']:.2f}", test=f"{record['test_loss']:.2f}")
        bar.update(1)

    def on_resume(history: list[dict]) -> None:
        # The checkpoint's history is the truth: lines written after it are dropped.
        if metrics is not None:
            metrics.rewrite(history)
        bar.update(len(history))

    logger = None
    if tensorboard and lead:
        from jaxvae.training import tensorboard as tracking
        logger = tracking.TensorBoardLogger(out / "tensorboard", config.model.likelihood,
                                            examples=data.x_test[:8], seed=config.run.seed,
                                            labels=data.y_test[:8])
    run_hooks = [h for h in (metrics, hooks.EveryEpoch(on_epoch), logger) if h is not None]
    try:
        result = trainer.fit(config, data, hooks=run_hooks, checkpoint_dir=checkpoint_dir,
                             resume=resume, on_resume=on_resume,
                             stop_on_signals=stop_on_signals, standardization=stats,
                             init_params=init_params)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    if not lead:
        return result
    written = [metrics_path] + write_outputs(out, config, data, result, started_from)
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


def interrupted_line(e: loop.Interrupted, argv: list[str]) -> str:
    """One line: where the run stopped, and the command that continues it."""
    if e.checkpoint is None and e.step is not None:
        return f"{e}; to be able to resume, train with --checkpoint-every N"
    kept = [a for a in argv if a != "--overwrite"]  # --resume continues; it must not delete
    again = shlex.join(["python", "-m", "experiments.train", *kept,
                        *([] if "--resume" in kept else ["--resume"])])
    if e.step is None:
        return f"{e}; continue from the newest checkpoint, if any, with: {again}"
    return f"{e}; continue with: {again}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    options = cli.config_from_flags(args, RunOptions)
    distributed = None
    if (options.coordinator, options.num_processes, options.process_id) != (None, None, None):
        distributed = (options.coordinator, options.num_processes, options.process_id)
    try:
        run(config_from_args(args), options.outdir, options.quiet, resume=options.resume,
            distributed=distributed, tensorboard=options.tensorboard,
            validation_size=options.validation_size, overwrite=options.overwrite,
            stop_on_signals=True, given=cli.given_flags(build_parser, argv),
            init_from=options.init_from)
    except loop.Interrupted as e:
        print(interrupted_line(e, sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside training (loading data, writing outputs)
        print("interrupted by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except loop.TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
