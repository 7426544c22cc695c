"""Draw the figures of a trained VAE from its run directory.

    python -m experiments.visualize runs/ref
    python -m experiments.visualize runs/z2 --interpolation spherical --tsne-points 500

Writes into --outdir (default RUN_DIR/figures): reconstructions.png, prior_samples.png,
interpolation.png, traversal.png, manifold.png (2-D latent models only), latent_pca.png,
latent_tsne.png (the posterior means of the test set coloured by label) and loss_curves.png
(loss, reconstruction and KL per epoch, train/val/test). Works on a run of every model through
the model interface: samples come from the model's own prior, conditional models reconstruct
with the test labels and decode traversals with the first example's label; the latent views
are skipped (with the reason) for the VQ-VAE, whose latent is a grid of codes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from experiments import cli
from experiments import train as train_script
from jaxvae import likelihoods
from jaxvae.models import interface
from jaxvae.evaluation import latent
from jaxvae.evaluation import plots
from jaxvae.training import runs
from jaxvae.models import mlp as jaxvae_models


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.visualize", __doc__)
    p.add_argument("run_dir", help="a directory written by experiments/train.py")
    p.add_argument("--outdir", default=None, help="where to write (default RUN_DIR/figures); it "
                   "must be new or empty")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the figures already in --outdir first")
    p.add_argument("--interpolation", choices=("linear", "spherical"), default="linear",
                   help="path between two latent means (default %(default)s)")
    p.add_argument("--steps", type=int, default=10,
                   help="points per interpolation and traversal (default %(default)s)")
    p.add_argument("--traversal-range", type=float, default=3.0,
                   help="traverse each latent dimension over [-R, R] (default %(default)s)")
    p.add_argument("--tsne-points", type=int, default=1000,
                   help="test examples in the t-SNE plot (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default %(default)s)")
    return p


def _check(args: argparse.Namespace) -> None:
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2, got {args.steps}")
    if args.tsne_points < 3:
        raise ValueError(f"--tsne-points must be >= 3, got {args.tsne_points}")
    if not args.traversal_range > 0:
        raise ValueError(f"--traversal-range must be > 0, got {args.traversal_range}")


def _pairs(y: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Index pairs of test examples with different labels (the first of each label)."""
    firsts = [int(np.flatnonzero(y == label)[0]) for label in np.unique(y)]
    if len(firsts) < 2:
        firsts = list(range(min(len(y), 2 * count)))
    return [(firsts[i], firsts[(i + 1) % len(firsts)]) for i in range(min(count, len(firsts)))]


def _prior_title(model, config) -> str:
    if hasattr(model, "sample_title"):
        return model.sample_title
    if config.model.name == "ladder":
        return "Ancestral samples of the ladder VAE's top-down prior"
    prior = getattr(model, "prior_name", "standard")
    names = {"standard": "N(0, I)", "diagonal": "a learned diagonal Gaussian",
             "mog": "a learned mixture of Gaussians", "vamp": "the VampPrior"}
    return f"Samples from the prior p(z) = {names[prior]}"


def _interpolate(model, params, batch, i, j, steps, spherical):
    """Decoder means on the path between the posterior means of examples i and j (decoded with
    the label of example i for conditional models)."""
    pair = {"x": batch["x"][np.array([i, j])], "y": batch["y"][np.array([i, j])]}
    mean_2xZ = interface.encode(model, params, pair).mean
    t_S = np.linspace(0.0, 1.0, steps, dtype=np.float32)
    if spherical:
        z_SxZ = jaxvae_models.slerp(mean_2xZ[0], mean_2xZ[1], t_S)
    else:
        z_SxZ = (1.0 - t_S[:, None]) * mean_2xZ[:1] + t_S[:, None] * mean_2xZ[1:]
    labels = np.full((steps,), batch["y"][i], np.int32)
    return interface.decode(model, params, z_SxZ, labels if model.conditional else None)


# What this script writes: --overwrite deletes a directory only if it holds one of them.
FIGURES = ("reconstructions.png", "prior_samples.png", "interpolation.png", "traversal.png",
           "manifold.png", "latent_pca.png", "latent_tsne.png", "loss_curves.png")


def check_outdir(args: argparse.Namespace) -> Path:
    """The figures' directory: new or empty, or (``--overwrite``) one of earlier figures that
    does not hold the run itself. Reads only."""
    outdir = Path(args.outdir) if args.outdir else Path(args.run_dir) / "figures"
    runs.check_new_run(outdir, overwrite=args.overwrite, markers=FIGURES, what="figures")
    run_dir = Path(args.run_dir).resolve()
    if args.overwrite and outdir.exists() and (run_dir == outdir.resolve()
                                               or outdir.resolve() in run_dir.parents):
        raise ValueError(f"--outdir {outdir} holds the run {args.run_dir}, which --overwrite "
                         "would delete: choose another --outdir")
    return outdir


def run(args: argparse.Namespace) -> list[str]:
    _check(args)
    outdir = check_outdir(args)
    loaded = runs.load_run(args.run_dir)
    model, params, config = loaded.model, loaded.params, loaded.config
    x, y = loaded.data.x_test, np.asarray(loaded.data.y_test, np.int32)
    batch = {"x": loaded.model_input(x), "y": y}  # standardized when the run was trained so
    outdir = train_script.prepare_outdir(outdir, overwrite=args.overwrite)
    mean_of = lambda out: loaded.data_output(  # decoder means in the data's units
        np.asarray(likelihoods.likelihood_mean(model.likelihood, out)))
    recon_key, sample_key = jax.random.split(jax.random.key(args.seed))
    written, skipped = [], []

    def keep(path, what):
        (written if path is not None else skipped).append(str(path) if path else what)

    first = {"x": batch["x"][:10], "y": y[:10]}
    recon = mean_of(interface.reconstruct(model, params, first, recon_key))
    keep(plots.save_reconstructions(outdir / "reconstructions.png", x[:10], recon,
                                    "Test inputs (top), reconstructions (bottom)"),
         "reconstructions (not images)")
    samples = mean_of(interface.sample(model, params, sample_key, 64))
    keep(plots.save_image_grid(outdir / "prior_samples.png", samples, 8,
                               _prior_title(model, config)), "samples (not images)")

    no_latent = model.undefined.get("posterior")
    if no_latent is not None:
        skipped.append(f"interpolation, traversal, manifold and latent projections ({no_latent})")
        means = None
    else:
        spherical = args.interpolation == "spherical"
        pairs = _pairs(y, 5)
        rows = [mean_of(_interpolate(model, params, batch, i, j, args.steps, spherical))
                for i, j in pairs]
        keep(plots.save_image_rows(
            outdir / "interpolation.png", rows,
            f"{args.interpolation.capitalize()} interpolation between posterior means",
            row_labels=[f"{y[i]} -> {y[j]}" for i, j in pairs],
            xlabel=f"{args.steps} steps from the first test example to the second"),
            "interpolation (not images)")

        mean_1xZ = interface.encode(model, params, first).mean[:1]
        label = int(y[0]) if model.conditional else None
        values = np.linspace(-args.traversal_range, args.traversal_range, args.steps)
        traversed = loaded.data_output(
            latent.traversal(model, params, mean_1xZ[0], values, label=label))
        keep(plots.save_image_rows(
            outdir / "traversal.png", list(traversed),
            f"Latent traversal around the posterior mean of a test '{y[0]}'",
            row_labels=[f"z[{d}]" for d in range(model.latent_dim)],
            xlabel=f"z[d] from {-args.traversal_range:g} to {args.traversal_range:g}"),
            "traversal (not images)")

        if model.latent_dim == 2:
            images, grid = latent.manifold(model, params, 20, label=label)
            images = loaded.data_output(images)
            keep(plots.save_manifold(outdir / "manifold.png", images, grid,
                                     "Decoder means on the 5%..95% quantiles of N(0, I)"),
                 "manifold (not images)")
        else:
            skipped.append(f"manifold (needs a 2-D latent, the model has {model.latent_dim})")

        means = np.asarray(interface.encode(model, params, batch).mean)
        pca = latent.project_2d(means, "pca", args.seed)
        written.append(plots.save_latent_scatter(
            outdir / "latent_pca.png", pca, y, "Posterior means of the test set, PCA",
            "principal component 1", "principal component 2"))
        n = min(args.tsne_points, len(means))
        tsne = latent.project_2d(means[:n], "tsne", args.seed)
        written.append(plots.save_latent_scatter(
            outdir / "latent_tsne.png", tsne, y[:n],
            f"Posterior means of {n} test examples, t-SNE", "t-SNE 1", "t-SNE 2"))

    metrics_path = Path(args.run_dir) / "metrics.jsonl"
    if metrics_path.is_file():
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
        written.append(plots.save_loss_panels(
            outdir / "loss_curves.png", history, loaded.summary.get("best_epoch"),
            f"{config.model.name} VAE on {config.data.dataset}, beta {config.objective.beta:g}"))
    else:
        skipped.append(f"loss curves ({metrics_path} not found)")

    print(f"wrote {', '.join(written)}")
    if skipped:
        print(f"skipped: {'; '.join(skipped)}")
    return written


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
