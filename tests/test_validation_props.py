"""Property-based: random malformed arrays, keys, counts and configs either raise a clean
ValueError/TypeError or give a correct finite result; never an XLA crash or a silent NaN."""

import collections
import functools

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxvae

D, Z = 4, 2
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
TRIED = collections.Counter()  # inputs tried per test, printed at the end (pytest -s)

MODEL = jaxvae.mlp_vae(hidden=(3,), latent_dim=Z, data_shape=(D,))


@functools.cache
def params():
    """MODEL's parameters, made when a test first needs them (not when pytest collects)."""
    return jaxvae.init(MODEL, jax.random.key(0))


KEY = jax.random.key(1)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print(f"\nmalformed-input property test: {sum(TRIED.values())} inputs tried "
          f"({dict(TRIED)})")


VALUES = st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0, 255.0, np.nan, np.inf, -np.inf, 1e30])
# Mostly float32 and near-valid shapes, so that the value checks are exercised often.
DTYPES = st.sampled_from(["float32"] * 4 + ["float64", "int32", "bool", "complex64", "U1",
                                            "object"])
NEAR_VALID = [(3, D), (1, D), (2, 2, 2), (0, D), (3, D + 1), (D,), (), (2, 1, D), (3, Z)]


@st.composite
def arrays(draw, allow_rank=(0, 1, 2, 3), max_dim=5):
    if draw(st.booleans()):
        shape = draw(st.sampled_from([s for s in NEAR_VALID if len(s) in allow_rank]))
    else:
        ndim = draw(st.sampled_from(allow_rank))
        shape = tuple(draw(st.lists(st.integers(0, max_dim), min_size=ndim, max_size=ndim)))
    dtype = draw(DTYPES)
    fill = draw(st.lists(VALUES, min_size=1, max_size=3))
    flat = np.resize(np.asarray(fill, np.float64), int(np.prod(shape)))
    if dtype == "U1":
        return np.full(shape, "a")
    if dtype == "object":
        return np.empty(shape, object)
    with np.errstate(invalid="ignore", over="ignore"):
        return flat.reshape(shape).astype(dtype)


def _clean_or_finite(fn, *args, **kwargs):
    """Calls fn; a ValueError/TypeError is a clean rejection, anything returned must be finite."""
    try:
        out = fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        assert str(e), "an error must say what is wrong"
        _assert_raised_by_jaxvae(e)
        return None
    for leaf in jax.tree.leaves(out):
        assert np.all(np.isfinite(np.asarray(leaf))), f"silent NaN/Inf from {fn.__name__}"
    return out


def _assert_raised_by_jaxvae(error: BaseException) -> None:
    """The rejection comes from jaxvae's own checks, not from deep inside jax, flax or XLA."""
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename
    assert "/jaxvae/" in where, f"{type(error).__name__} raised inside {where}: {error}"


def _well_formed_batch(x) -> bool:
    return (x.dtype.kind in "fib" and x.ndim >= 2 and x.shape[0] > 0
            and int(np.prod(x.shape[1:])) == D and bool(np.all(np.isfinite(x)))
            and np.all(np.abs(x.astype(np.float64)) < 1e6))


@SETTINGS
@given(x=arrays())
def test_encode_rejects_malformed_batches_cleanly(x):
    TRIED["encode"] += 1
    out = _clean_or_finite(jaxvae.encode, MODEL, params(), x)
    if _well_formed_batch(x):  # a valid batch must not be rejected
        assert out is not None and out[0].shape == (x.shape[0], Z)


@SETTINGS
@given(z=arrays())
def test_decode_rejects_malformed_latents_cleanly(z):
    TRIED["decode"] += 1
    out = _clean_or_finite(jaxvae.decode, MODEL, params(), z)
    if out is not None:
        assert out.shape == (z.shape[0], D)


@SETTINGS
@given(x=arrays(), likelihood=st.sampled_from(["bernoulli", "gaussian", "poisson"]),
       beta=st.sampled_from([1.0, 0.0, -1.0, np.nan, "1"]))
def test_loss_rejects_malformed_data_and_arguments_cleanly(x, likelihood, beta):
    TRIED["loss"] += 1
    out = _clean_or_finite(jaxvae.loss, MODEL, params(), x, KEY, beta=beta, likelihood=likelihood)
    if out is not None and likelihood == "bernoulli":
        assert np.min(x) >= 0 and np.max(x) <= 1  # Bernoulli data outside [0, 1] is refused


KEYS = st.sampled_from([jax.random.key(2), jax.random.PRNGKey(2), 0, 3.5, None, "key",
                        np.zeros(3, np.uint32), jax.random.split(jax.random.key(0), 2)])


@SETTINGS
@given(key=KEYS, n=st.sampled_from([1, 3, 0, -2, 2.0, True, "4", None]))
def test_sample_rejects_bad_keys_and_counts_cleanly(key, n):
    TRIED["sample"] += 1
    out = _clean_or_finite(jaxvae.sample, MODEL, params(), key, n)
    if out is not None:
        assert out.shape == (n, D)


@SETTINGS
@given(x0=arrays(allow_rank=(0, 1, 2)), steps=st.sampled_from([2, 5, 1, 0, 2.5, "3"]),
       spherical=st.booleans())
def test_interpolate_rejects_bad_end_points_and_steps_cleanly(x0, steps, spherical):
    TRIED["interpolate"] += 1
    out = _clean_or_finite(jaxvae.interpolate, MODEL, params(), x0, np.full(D, 0.5), steps,
                           spherical=spherical)
    if out is not None:
        assert out.shape == (steps, D)


FIELDS = {
    "epochs": st.sampled_from([1, 0, -1, 2.0, "3"]),
    "batch_size": st.sampled_from([16, 0, 1.5, None]),
    "lr": st.sampled_from([1e-3, 0.0, -1.0, np.nan, np.inf, "fast"]),
    "latent_dim": st.sampled_from([2, 0, -3, 2.5]),
    "hidden": st.sampled_from([(8,), (), (0,), (8, -1), 8, (2.5,)]),
    "beta": st.sampled_from([1.0, 0.0, -0.5, np.nan, True]),
    "likelihood": st.sampled_from(["bernoulli", "gaussian", "laplace"]),
    "model": st.sampled_from(["mlp", "transformer"]),
    "checkpoint_every": st.sampled_from([None, 5, 0, 2.0]),
    "max_skipped_steps": st.sampled_from([10, 0, "many"]),
    "clip_norm": st.sampled_from([None, 1.0, 0.0, -1.0, np.inf, "x"]),
}


@SETTINGS
@given(change=st.fixed_dictionaries({}, optional=FIELDS))
def test_validate_config_accepts_exactly_the_valid_configs(change):
    TRIED["config"] += 1
    config = jaxvae.TrainConfig().replace(**change)
    try:
        jaxvae.validate_config(config)
    except (ValueError, TypeError) as e:
        _assert_raised_by_jaxvae(e)
        assert any(name in str(e) or name.replace("_", " ") in str(e) or
                   (name == "lr" and "learning rate" in str(e)) or
                   (name in ("likelihood", "model") and "unknown" in str(e))
                   for name in change), f"{e} names none of {sorted(change)}"
        return
    # Accepted: then it builds and runs a step on tiny data without NaN.
    model = jaxvae.mlp_vae(config.model.hidden, config.model.latent_dim, (D,))
    x = np.full((2, D), 0.5, np.float32)
    loss, _ = jaxvae.loss(model, jaxvae.init(model, KEY), x, KEY, beta=config.objective.beta,
                          likelihood=config.model.likelihood)
    assert np.isfinite(float(loss))
