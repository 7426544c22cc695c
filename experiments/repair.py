"""Denoising and inpainting of mnist5k test digits with the reference VAE.

    python -m experiments.repair                                   # trains 30 epochs first (~1 min)
    python -m experiments.repair --run-dir runs/quickstart         # or reuse a trained model

--run-dir takes a run of any model of experiments/train.py on 28x28 digits (the MLP VAE with
any prior, conv, cvae, flow, ladder, iwae, vqvae): restoration and inpainting use the run's own
posterior and decoder through the model interface.

Corrupts the 1,000 test digits three ways (Gaussian noise, salt-and-pepper, a missing square),
restores them by encode-decode, fills the missing square by iterative conditional sampling that
keeps the observed pixels fixed (Rezende et al. 2014, Sec. 5), and compares each to a 3x3
median filter (scipy.ndimage). Errors are mean squared errors to the clean image, per pixel
(over all pixels, and for the square also over the missing pixels alone).

Writes into --outdir: results.json and repair.png (per corruption, rows clean / corrupted /
median filter / VAE restoration [/ VAE inpainting]).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from scipy import ndimage

import jaxvae
from experiments import cli
from experiments import train as train_script
from jaxvae.training import files
from jaxvae.data import datasets as data_lib
from jaxvae.models import interface
from jaxvae.evaluation import plots
from jaxvae.evaluation import repair
from jaxvae.training import runs
from jaxvae.training import fit as trainer
from jaxvae.config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.repair", __doc__)
    p.add_argument("--run-dir", default=None,
                   help="a directory of experiments/train.py (reference VAE) holding "
                        "params.msgpack; default: train one here")
    p.add_argument("--epochs", type=int, default=30,
                   help="epochs when training here (%(default)s)")
    p.add_argument("--noise-sigma", type=float, default=0.5,
                   help="std of the Gaussian noise (%(default)s)")
    p.add_argument("--salt-pepper", type=float, default=0.2,
                   help="fraction of pixels set to 0 or 1 (%(default)s)")
    p.add_argument("--mask-size", type=int, default=12, help="side of the missing square "
                                                            "(%(default)s)")
    p.add_argument("--inpaint-steps", type=int, default=100,
                   help="steps of the conditional sampling chain (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    p.add_argument("--outdir", default="runs/repair",
                   help="output directory, new or empty (%(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier result in --outdir first")
    return p


OUTPUTS = ("results.json", "repair.png")  # what --overwrite may replace


def load_or_train(args, data: data_lib.Dataset):
    if args.run_dir:
        path = Path(args.run_dir) / "params.msgpack"
        if not path.exists():
            raise ValueError(f"{path} does not exist; train with experiments/train.py first")
        loaded = runs.load_run(args.run_dir)
        size = interface.example_size(loaded.model)
        if size != data.x_test.shape[1]:
            raise ValueError(f"the run's model takes examples of {size} values; the repair "
                             f"experiment needs 28x28 digits ({data.x_test.shape[1]} values): "
                             "train on mnist5k or mnist")
        return loaded.model, loaded.params, {"run_dir": str(args.run_dir),
                                             "model": loaded.config.model.name}, loaded
    model = jaxvae.reference_vae()
    config = TrainConfig.from_flat(epochs=args.epochs, seed=args.seed)
    result = trainer.fit(config, data)
    return model, result.state.params, {"trained_here": config.to_dict(),
                                        "test_loss": result.history[-1]["test_loss"]}, None


def mse(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    err = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    return float(err.mean() if where is None else err[where].mean())


def median_filter(x_BxD: np.ndarray) -> np.ndarray:
    images = np.asarray(x_BxD).reshape(-1, 28, 28)
    return ndimage.median_filter(images, size=(1, 3, 3), mode="nearest").reshape(len(images), -1)


def run(args) -> dict:
    if args.mask_size < 1 or args.inpaint_steps < 1 or args.epochs < 1:
        raise ValueError("--mask-size, --inpaint-steps and --epochs must be >= 1")
    if not 0 <= args.salt_pepper <= 1 or args.noise_sigma < 0:
        raise ValueError("--salt-pepper must be in [0, 1] and --noise-sigma >= 0")
    runs.check_new_run(args.outdir, overwrite=args.overwrite, markers=OUTPUTS,
                       what="results")
    if args.overwrite and args.run_dir:
        cli.check_outside(args.run_dir, "--run-dir", args.outdir)
    data = data_lib.load_mnist5k()
    start = time.perf_counter()
    model, params, source, loaded = load_or_train(args, data)
    outdir = train_script.prepare_outdir(args.outdir, overwrite=args.overwrite)
    # A run trained on standardized data reads (x - mean) / std and decodes in those units.
    to_model = (lambda x: x) if loaded is None else loaded.model_input
    to_data = (lambda u: np.asarray(u)) if loaded is None else loaded.data_output
    train_seconds = time.perf_counter() - start
    clean = np.asarray(data.x_test)
    labels = np.asarray(data.y_test, np.int32)
    as_batch = lambda x: {"x": to_model(x), "y": labels}
    keys = jax.random.split(jax.random.key(args.seed + 1), 4)
    corruptions = {
        "gaussian_noise": repair.gaussian_noise(keys[0], clean, args.noise_sigma),
        "salt_and_pepper": repair.salt_and_pepper(keys[1], clean, args.salt_pepper),
        "square_mask": repair.square_mask(keys[2], clean, args.mask_size),
    }
    results, rows = {}, []
    show = slice(0, 10)
    for name, (corrupted, observed) in corruptions.items():
        corrupted, observed = np.asarray(corrupted), np.asarray(observed)
        median = median_filter(corrupted)
        restored = to_data(repair.encode_decode(model, params, as_batch(corrupted)))
        entry = {"corrupted": mse(corrupted, clean), "median_filter": mse(median, clean),
                 "vae_encode_decode": mse(restored, clean),
                 "vae_encode_decode_of_clean": mse(
                     to_data(repair.encode_decode(model, params, as_batch(clean))), clean)}
        images = [clean[show], corrupted[show], median[show], restored[show]]
        if name == "square_mask":
            missing = observed < 0.5
            filled = to_data(repair.inpaint(model, params, as_batch(corrupted), observed,
                                            keys[3], args.inpaint_steps))
            filled = np.where(missing, filled, corrupted)  # the observed pixels, exactly
            entry.update({"vae_inpaint": mse(filled, clean),
                          "missing_pixels": {"corrupted": mse(corrupted, clean, missing),
                                             "median_filter": mse(median, clean, missing),
                                             "vae_encode_decode": mse(restored, clean, missing),
                                             "vae_inpaint": mse(filled, clean, missing)}})
            images.append(filled[show])
        results[name] = entry
        rows.extend(images)
    png = plots.save_image_grid(outdir / "repair.png", np.concatenate(rows), 10,
                                "per corruption: clean / corrupted / median / VAE "
                                "(/ VAE inpainting)")
    summary = {"model": source.get("model", "reference VAE 784-400-20"), "source": source,
               "train_seconds": train_seconds, "test_digits": int(len(clean)),
               "settings": {"noise_sigma": args.noise_sigma, "salt_pepper": args.salt_pepper,
                            "mask_size": args.mask_size, "inpaint_steps": args.inpaint_steps,
                            "seed": args.seed},
               "mse_per_pixel": results}
    files.write_atomic(outdir / "results.json", json.dumps(summary, indent=2))
    print(f"{'MSE per pixel':>18} {'corrupted':>10} {'median':>8} {'VAE':>8} {'inpaint':>8}")
    for name, r in results.items():
        print(f"{name:>18} {r['corrupted']:10.4f} {r['median_filter']:8.4f} "
              f"{r['vae_encode_decode']:8.4f} {r.get('vae_inpaint', float('nan')):8.4f}")
    print(f"wrote {outdir / 'results.json'}, {png}")
    return summary


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
