"""Test setup: 4 CPU devices (training uses one unless a test is marked ``multidevice``) and a
fast-compiling XLA (set before JAX is imported), one folder for the whole run (its compilation
cache and temporary files), a garbage collector that runs less often, and the slowest test files
scheduled first.

The repository root is on the import path through pytest's ``pythonpath`` setting
(pyproject.toml), so tests import ``jaxvae``, ``experiments`` and ``benchmarks`` as packages.
"""

import atexit
import gc
import os
import shutil
import sys
import tempfile

# LLVM optimization level 0: the tests' programs are tiny, so compiling them, not running them,
# is most of the suite's CPU time, and level 0 compiles much faster (tests/test_architectures.py:
# 47 s of CPU instead of 78 s). Matrix products still call the same library kernels. Subprocesses
# that must compute the same bits as a test's own process (resume after a kill or a signal) are
# started with these flags too.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
# XLA's older elemental emitters instead of its fusion emitters: the same operations and library
# kernels, generated with much less compile work (tests/test_model_interface.py: 33 s of CPU
# instead of 54 s). The programs the tests compare bitwise all run with these same flags.
if "xla_cpu_use_fusion_emitters" not in _flags:
    _flags += " --xla_cpu_use_fusion_emitters=false"
# One thread per XLA program: pytest-xdist already runs one worker per core, and Eigen's thread
# pool in each worker only adds contention for the tests' small matrices (a full run: 374 s of
# worker CPU instead of 410 s).
if "xla_cpu_multi_thread_eigen" not in _flags:
    _flags += " --xla_cpu_multi_thread_eigen=false"
# One LLVM module per program: XLA's CPU backend otherwise splits each program's generated code
# into parts compiled separately, which for the tests' thousands of small programs is mostly
# per-part overhead (a full run on 2 Intel Xeon vCPUs: 280 s instead of 330 s).
if "xla_cpu_parallel_codegen_split_count" not in _flags:
    _flags += " --xla_cpu_parallel_codegen_split_count=1"
os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# One OpenMP thread per process (scikit-learn's t-SNE, torch, BLAS): the pytest-xdist workers
# already use every core, and OpenMP threads that wait for each other on a busy core spin.
# t-SNE of 40 points under load: 0.1 s of CPU with one thread, 12 s (150 s wall) with two.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# One folder for the whole run, made by the first process that loads this file (the pytest-xdist
# controller, or pytest itself without workers) and removed when it exits; the workers and the
# scripts that tests start as subprocesses inherit it through the environment.
if "JAXVAE_TEST_RUN_DIR" not in os.environ:
    _run_dir = tempfile.mkdtemp(prefix="jaxvae-test-run-")
    atexit.register(shutil.rmtree, _run_dir, ignore_errors=True)
    os.environ["JAXVAE_TEST_RUN_DIR"] = _run_dir
    # Temporary files go inside it: tensorflow-datasets makes an empty temporary folder each time
    # it builds a dataset whose files are not prepared (every mock_data test) and never removes
    # it, 39 per run left in /tmp before. pytest's tmp_path folders stay where they were.
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    os.makedirs(os.path.join(_run_dir, "tmp"))
    os.environ["TMPDIR"] = os.path.join(_run_dir, "tmp")
    tempfile.tempdir = None  # read TMPDIR again
    # Many tests build the same program anew (each call of a script's main() or of fit() makes
    # fresh closures, which jit's in-memory cache does not recognise). JAX's persistent cache
    # keys programs by their HLO, so an identical program compiles once per run, across tests,
    # pytest-xdist workers and subprocesses; every run still compiles everything once. No size
    # limit: with one, JAX rescans the whole directory on every write. An entry read while
    # another worker still writes it fails to decompress, and JAX compiles the program instead
    # (the warning is ignored in pyproject.toml).
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_run_dir, "compile-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Implicit rank promotion is an error in every test process (jax reads this when it is first
# imported, by a test module; the pytest-xdist controller, which runs no test, never imports it).
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")

# Python's cyclic garbage collector less often: tracing and lowering allocate millions of short-
# lived container objects, and with the default thresholds (700, 10, 10) a test process spent 7 %
# of its CPU collecting them (tests/test_train.py and tests/test_data.py: 2.8-3.0 s of 40 s in
# 2,590 young and 13 full collections, 0.55 s in 52 and none with these, for the same peak
# memory; a full run's test processes: 31.5 s, 6.9 s with these).
gc.set_threshold(50_000, 20, 20)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The files that take longest (training runs, script runs, subprocesses), slowest first, by their
# measured time in a full run. `python3 tasks.py test` runs pytest-xdist with --dist loadfile
# --no-loadscope-reorder, which hands out whole files in collection order: longest first keeps
# one long file from running alone at the end (the rest follow in name order, each a few seconds).
SLOW_FILES_FIRST = (
    "test_architectures.py",
    "test_precision.py",
    "test_model_interface.py",
    "test_benchmarks.py",
    "test_objectives_priors.py",
    "test_sequence.py",
    "test_vq_prior.py",
    "test_data.py",
    "test_train.py",
    "test_molecules.py",
    "test_checkpoint.py",
    "test_eval_scripts.py",
    "test_semisupervised.py",
    "test_signals.py",
    "test_multihost.py",  # its two training processes run beside the workers
    "test_run_directories.py",
    "test_standardize.py",
    "test_nan_guard.py",
    "test_train_script.py",
    "test_results.py",
    "test_evaluate.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps file order


@pytest.fixture(autouse=True)
def _seed_global_generators():
    """Each test starts torch's and numpy's global generators from seed 0, so that a test which
    draws from them gets the same numbers whatever ran before it (the order differs between a
    serial run, a -k selection and the pytest-xdist workers)."""
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)
    np.random.seed(0)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "multidevice: fit and the training loop split batches over all 4 forced CPU "
        "devices in this test, as on a multi-device host (other tests train on one device)")


# One device unless a test asks for all: on the 4 forced CPU devices each training program is
# partitioned for four devices and each step sums its gradients across four device threads, on 2
# cores (the whole suite on one pytest-xdist worker, two clones run side by side: 434 s of CPU
# with one device, 454 s with four). Tests of the multi-device path carry the ``multidevice``
# mark; scripts that tests start as subprocesses see all 4 devices.
_ALL_DEVICES = [False]


@pytest.fixture(scope="session", autouse=True)
def _one_device_by_default():
    from jaxvae.training import placement
    all_devices = placement.data_parallel_devices

    def one_device_unless_asked(batch_size, num_devices=None):
        if num_devices is None and not _ALL_DEVICES[0]:
            num_devices = 1
        return all_devices(batch_size, num_devices)

    placement.data_parallel_devices = one_device_unless_asked
    yield
    placement.data_parallel_devices = all_devices


def pytest_runtest_setup(item):
    """Before any fixture of the test: its module fixtures train as the test itself does."""
    _ALL_DEVICES[0] = item.get_closest_marker("multidevice") is not None


@pytest.fixture(scope="session")
def mnist5k():
    from jaxvae.data.datasets import load_mnist5k
    return load_mnist5k()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """A pytest-xdist worker ends here, after its results went to the controller: without
    Python's shutdown, which in a worker spends seconds destroying the thousands of compiled
    programs of its tests (JAX's exit hook clears its caches, then the CPU client unloads them)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
