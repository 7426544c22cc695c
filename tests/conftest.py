"""Test setup: 4 CPU devices, set before JAX is imported.

The repository root is on the import path through pytest's ``pythonpath`` setting
(pyproject.toml), so tests import ``jaxvae``, ``experiments`` and ``benchmarks`` as packages.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def mnist5k():
    from jaxvae.data.datasets import load_mnist5k
    return load_mnist5k()
