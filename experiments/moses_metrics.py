"""The MOSES metric table of a file of generated SMILES (one per line), offline.

    pip install --no-deps molsets          # MOSES's splits and reference statistics
    pip install fcd_torch==1.0.7           # ChemNet, for FCD
    python -m experiments.moses_metrics runs/molecules/samples_T1.0.txt

Scores the strings as MOSES's ``get_all_metrics`` does (``jaxvae.evaluation.molecules``):
valid, unique@1k, unique@10k, novelty against all of MOSES train, filters, FCD / SNN / Frag /
Scaf against MOSES's test set (/Test) and scaffold-test set (/TestSF), IntDiv, IntDiv2 and the
Wasserstein distances of logP, SA, QED and weight to the test set. An empty line is an invalid
sample. Writes the metrics as JSON (--output, default ``<samples>.moses.json``) and prints them
beside the MOSES VAE baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from experiments import cli
from jaxvae.data import molecules
from jaxvae.evaluation import molecules as moses
from jaxvae.training import files

# Polykovskiy et al. 2020 (Frontiers in Pharmacology), the VAE baseline on MOSES, 30,000
# samples at T = 1; keys as in moses_metrics (unique@1000 is the paper's unique@1k).
MOSES_VAE = {"valid": 0.977, "unique@1000": 1.0, "unique@10000": 0.998, "novelty": 0.695,
             "filters": 0.997, "FCD/Test": 0.099, "SNN/Test": 0.626, "Frag/Test": 0.999,
             "Scaf/Test": 0.939, "IntDiv": 0.856}

TABLE = ("valid", "unique@1000", "unique@10000", "novelty", "filters", "FCD/Test", "SNN/Test",
         "Frag/Test", "Scaf/Test", "FCD/TestSF", "SNN/TestSF", "Frag/TestSF", "Scaf/TestSF",
         "IntDiv", "IntDiv2", "logP", "SA", "QED", "weight")


def score(samples: list[str], moses_train: set[str] | None = None, filters=None,
          refs: dict | None = None) -> dict:
    """``jaxvae.evaluation.molecules.moses_metrics`` of ``samples`` with MOSES's defaults:
    novelty against all of MOSES train, the test and scaffold-test statistics of the wheel."""
    if moses_train is None:
        moses_train = set(molecules.load_moses("train"))
    return moses.moses_metrics(samples, moses_train, refs=refs, filters=filters)


def format_table(columns: dict[str, dict], baseline: dict = MOSES_VAE) -> str:
    """The metrics of each named column, one row per metric, with the baseline last."""
    head = "".join(f"{name:>14}" for name in columns) + f"{'MOSES VAE':>14}"
    rows = [f"{'':>14}{head}"]
    for key in TABLE:
        if not any(key in m for m in columns.values()):
            continue
        cells = "".join(f"{m[key]:14.3f}" if key in m else f"{'':>14}"
                        for m in columns.values())
        base = f"{baseline[key]:14.3f}" if key in baseline else f"{'':>14}"
        rows.append(f"{key:>14}{cells}{base}")
    return "\n".join(rows)


def read_samples(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"no samples file {path}")
    samples = path.read_text().split("\n")
    if samples and samples[-1] == "":
        samples.pop()  # the newline that ends the last line
    if not samples:
        raise ValueError(f"{path} holds no samples (one SMILES per line)")
    return samples


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.moses_metrics", __doc__)
    p.add_argument("samples", type=Path, help="a text file of generated SMILES, one per line")
    p.add_argument("--output", type=Path, default=None,
                   help="the metrics JSON (default: <samples>.moses.json beside the file)")
    return p


def run(args) -> dict:
    samples = read_samples(args.samples)
    output = args.output or args.samples.with_suffix(".moses.json")
    start = time.perf_counter()
    metrics = score(samples)
    metrics["seconds"] = time.perf_counter() - start
    metrics["samples_file"] = args.samples.name
    files.write_atomic(output, json.dumps(metrics, indent=2))
    print(format_table({args.samples.name[:13]: metrics}))
    print(f"scored {len(samples)} samples in {metrics['seconds']:.0f} s; wrote {output}")
    return metrics


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv, errors=(ValueError, ImportError))


if __name__ == "__main__":
    sys.exit(main())
