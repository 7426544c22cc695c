"""Draw digits of every class from a trained conditional VAE: one row per class.

    python -m experiments.train --model cvae --outdir runs/cvae
    python -m experiments.generate --run-dir runs/cvae [--per-class 10] [--seed 0]

Reads summary.json and params.msgpack of the run directory (what experiments/train.py wrote)
and writes samples_per_class.png (and samples_per_class.npz: the images and their labels) into
it, or into --out.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import jax
import numpy as np

from experiments import cli
from jaxvae.models import conditional
from jaxvae.objectives import bounds as objectives
from jaxvae.evaluation import plots
from jaxvae.models import registry
from jaxvae.models import builders
from jaxvae.data import datasets as data_lib
from jaxvae.data import standardize
from jaxvae.training import files
from jaxvae.training import runs
from jaxvae.config import TrainConfig


def load_run(run_dir: str, check=None):
    """``(config, model, params, data)`` of a run directory written by experiments/train.py.

    ``check(config, model)`` runs before the parameters are read (to refuse a wrong model).
    """
    run = Path(run_dir)
    for name in ("summary.json", "params.msgpack"):
        if not (run / name).is_file():
            raise ValueError(f"{run} has no {name}: pass the --outdir of an experiments/train.py run")
    config = TrainConfig.from_dict(json.loads((run / "summary.json").read_text())["config"])
    data = data_lib.load_for(config)
    model = registry.build(builders.prepare(config, data), data.example_shape).model
    if check is not None:
        check(config, model)
    params = runs.load_params(run / "params.msgpack", model, f"the model of {run}")
    return config, model, params, data


def per_class_samples(model, params, key: jax.Array, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images_NxD, labels_N)``: ``per_class`` draws of each class, class-major."""
    labels = np.repeat(np.arange(model.num_classes), per_class)
    out = conditional.generate(model, params, key, labels)
    return np.asarray(objectives.likelihood_mean(model.likelihood, out)), labels


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.generate", __doc__)
    p.add_argument("--run-dir", required=True, help="output directory of a --model cvae run")
    p.add_argument("--per-class", type=int, default=10, help="samples per class (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/samples_per_class.png)")
    return p


def run(args: argparse.Namespace) -> None:
    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")

    def conditional_only(config, model):
        if not isinstance(model, conditional.CVAE):
            raise ValueError(f"{args.run_dir} holds a --model {config.model.name} run; per-class "
                             "samples need a conditional model (--model cvae)")

    config, model, params, _ = load_run(args.run_dir, conditional_only)
    images, labels = per_class_samples(model, params, jax.random.key(args.seed), args.per_class)
    stats = runs.load_standardization(args.run_dir, config)
    if stats is not None:  # the run trained on standardized data: samples in its units
        images = standardize.invert(stats, images)
    out = Path(args.out) if args.out else Path(args.run_dir) / "samples_per_class.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    written = plots.save_image_grid(out, images, args.per_class,
                                    f"Samples per class (rows 0..{model.num_classes - 1})")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=labels)
    files.write_atomic(out.with_suffix(".npz"), buffer.getvalue())
    print(f"wrote {written or '(not images: no PNG)'}, {out.with_suffix('.npz')}")


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv, errors=(ValueError, TypeError, OSError))


if __name__ == "__main__":
    sys.exit(main())
