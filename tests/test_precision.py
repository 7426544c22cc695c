"""The precision policy (jaxvae.models.precision): bfloat16 products with float32 accumulation,
float32 parameters, optimizer state and losses, in every model family."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae
from jaxvae import config as config_lib
from jaxvae.config import TrainConfig
from jaxvae.models import interface, m2, precision, registry, sequence
from jaxvae.objectives import losses
from jaxvae.training import checkpoint
from jaxvae.training.sequences import SequenceConfig, validate_sequence_config

BF16 = jnp.bfloat16


def _round(a):
    """a rounded to bfloat16, as float64 (the exact inputs of a bfloat16 product)."""
    return np.asarray(jnp.asarray(a, jnp.float32).astype(BF16).astype(jnp.float32), np.float64)


def _dtypes(tree) -> set[str]:
    return {str(a.dtype) for a in jax.tree.leaves(tree) if hasattr(a, "dtype")}


def _loss_and_grads(loss_fn, params, batch, key):
    """(loss, metrics), grads of ``loss_fn`` at step 0, as one compiled program."""
    value_and_grad = jax.value_and_grad(lambda q: loss_fn(q, batch, key, 0), has_aux=True)
    return jax.jit(value_and_grad)(params)


# ------------------------------------------------------------------------------ the products


def test_matmul_is_the_float64_product_of_the_rounded_inputs():
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 3, 50))  # leading axes: a batch of sequences
    w = jax.random.normal(kw, (50, 7))
    out = precision.matmul(x, w)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, _round(x) @ _round(w), rtol=1e-5, atol=1e-5)
    # The backward pass: the gradient rounded to bfloat16, both products on rounded inputs.
    g = jax.random.normal(kg, (2, 3, 7))
    dx, dw = jax.vjp(precision.matmul, x, w)[1](g)
    assert dx.dtype == dw.dtype == jnp.float32
    np.testing.assert_allclose(dx, _round(g) @ _round(w).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, _round(x).reshape(-1, 50).T @ _round(g).reshape(-1, 7),
                               rtol=1e-5, atol=1e-5)


def test_a_dense_layers_gradients_come_back_in_float32_from_the_products():
    # The layer hands float32 inputs and kernel to the product, which rounds them itself: the
    # kernel's and the inputs' gradients are the float32 results of the bfloat16 products, not
    # rounded to bfloat16 on their way back (as a cast of the kernel before the product would).
    import flax.linen as nn
    kx, kw, kg = jax.random.split(jax.random.key(5), 3)
    x, g = jax.random.normal(kx, (16, 40)), jax.random.normal(kg, (16, 9))
    layer = nn.Dense(9, **precision.dense_kwargs(BF16))
    params = layer.init(kw, x)["params"]
    y, vjp = jax.vjp(lambda p, x: layer.apply({"params": p}, x), params, x)
    dparams, dx = vjp(g)
    dw = dparams["kernel"]
    assert y.dtype == dw.dtype == dx.dtype == jnp.float32
    w = params["kernel"]
    np.testing.assert_allclose(y, _round(x) @ _round(w) + np.asarray(params["bias"]), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(dw, _round(x).T @ _round(g), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, _round(g) @ _round(w).T, rtol=1e-6, atol=1e-6)
    for grad in (dw, dx):  # float32 values, most of them not representable in bfloat16
        assert np.mean(np.asarray(grad) != _round(grad)) > 0.9


# Compiled in a process with XLA's default CPU flags: the tests' --xla_cpu_multi_thread_eigen=false
# (tests/conftest.py) makes XLA convert every bfloat16 product to float32. One process for both
# checks below: the conversions in a dense layer's compiled gradient (to bfloat16, to float32; its
# forward product's likewise), then the products of the conv VAE's compiled gradient and how many
# of them read a float32 operand.
_COMPILED_BFLOAT16_PRODUCTS = r"""
import re, jax, jax.numpy as jnp
from jaxvae.config import TrainConfig
from jaxvae.models import precision, registry
def compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()
def converts(hlo):
    return [len(re.findall(t + r"\[[0-9,]*\]\{[0-9,]*\} convert\(", hlo)) for t in ("bf16", "f32")]
x, w = jnp.ones((64, 32)), jnp.ones((32, 16))
loss = lambda x, w: jnp.sum(jnp.sin(precision.matmul(x, w)))
dense = converts(compiled(jax.grad(loss, (0, 1)), x, w)) + converts(compiled(precision.matmul, x, w))
config = TrainConfig.from_flat(model="conv", conv_channels=(4, 8), hidden=(16,), latent_dim=4,
                               precision="bfloat16")
model, loss_fn = registry.build(config, (784,))
x = jax.ShapeDtypeStruct((8, 784), jnp.float32)
params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]  # shapes only
hlo = compiled(jax.grad(lambda p, x: loss_fn(p, {"x": x}, jax.random.key(1), 0)[0]), params, x)
types = dict(re.findall(r"(%[\w.-]+) = (\w+)\[", hlo))
products = re.findall(r" dot\((%[\w.-]+), (%[\w.-]+)\)", hlo)
print(*dense, len(products), sum("f32" in (types[a], types[b]) for a, b in products))
"""


@functools.lru_cache(maxsize=None)
def _compiled_bfloat16_products() -> tuple[int, ...]:
    env = dict(os.environ, XLA_FLAGS="")
    out = subprocess.run([sys.executable, "-c", _COMPILED_BFLOAT16_PRODUCTS], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return tuple(map(int, out))


def test_every_product_of_a_dense_layer_reads_bfloat16_inputs():
    # XLA's CPU backend converts the inputs of a product that contracts their leading axes (the
    # weight gradient x^T g) to float32 before multiplying; the backward pass feeds it a
    # transposed copy instead, so the compiled gradient converts nothing back to float32.
    grad_to_bf16, grad_to_f32, forward_to_bf16, forward_to_f32 = _compiled_bfloat16_products()[:4]
    if forward_to_f32:  # a CPU whose matrix library takes no bfloat16 product at all
        pytest.skip("XLA converts every bfloat16 product back to float32 on this CPU")
    assert forward_to_bf16 >= 1 and grad_to_bf16 >= 3  # x, w (and g) rounded to bfloat16
    assert grad_to_f32 == 0  # no product of the backward pass upcast
    x = jax.random.normal(jax.random.key(3), (5, 3))
    np.testing.assert_array_equal(precision.transposed_copy(x), x.T)


def test_every_product_of_the_conv_vaes_gradient_reads_bfloat16_inputs():
    # The strided convolutions' forward products read a row-major copy of the kernel: as its
    # transpose, XLA's CPU backend converted the kernel and the patch matrix to float32.
    products, float32_products = _compiled_bfloat16_products()[4:]
    # 26 products in the model (9 layers, 3 each, less the data layer's input gradient); XLA may
    # compile a tiny one as elementwise work
    assert products >= 18
    if float32_products == products:  # a CPU whose matrix library takes no bfloat16 product
        pytest.skip("XLA converts every bfloat16 product back to float32 on this CPU")
    assert float32_products == 0


def test_dot_general_with_batch_axes_accumulates_in_float32():
    a = jax.random.normal(jax.random.key(1), (4, 3, 5)).astype(BF16)
    b = jax.random.normal(jax.random.key(2), (4, 5, 2)).astype(BF16)
    out = precision.dot_general(a, b, (((2,), (1,)), ((0,), (0,))))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, np.einsum("bij,bjk->bik", _round(a), _round(b)), rtol=1e-5)


def test_float32_adds_no_layer_arguments():
    assert precision.dense_kwargs(None) == precision.conv_kwargs(None) == {}
    assert precision.dense_kwargs(jnp.float32) == {}
    assert precision.compute_dtype("float32") is None
    assert precision.compute_dtype("bfloat16") == BF16
    assert precision.precision_name(precision.compute_dtype("bfloat16")) == "bfloat16"


def test_extreme_inputs_stay_finite_in_bfloat16():
    # bfloat16 keeps float32's exponent: 1e20 * 1e8 does not overflow as it would in float16.
    x = jnp.full((2, 4), 1e20)
    w = jnp.full((4, 3), 1e8)
    out = precision.matmul(x, w)
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(out, 4e28 * np.ones((2, 3)), rtol=2e-2)


# ------------------------------------------------------------------------------ the config


def test_an_unknown_precision_is_one_clear_error():
    config = TrainConfig.from_flat(precision="float16")
    with pytest.raises(ValueError, match=r"unknown precision 'float16'; choose one of "
                                         r"\['float32', 'bfloat16'\]"):
        config_lib.validate_config(config)
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        validate_sequence_config(SequenceConfig(precision="half"))
    with pytest.raises(ValueError, match="unknown precision 'bf16'"):
        jaxvae.mlp_vae((8,), 2, (4,), precision_name="bf16")


def test_configs_written_before_the_field_load_as_float32():
    sectioned = json.loads(json.dumps(TrainConfig().to_dict()))  # as a run directory holds it
    del sectioned["model"]["precision"]
    config = TrainConfig.from_dict(sectioned)
    assert config.model.precision == "float32"
    flatten = TrainConfig.flatten_dict
    old = flatten(sectioned)
    same = checkpoint.config_differences(old, flatten(config.to_dict()),
                                         defaults=TrainConfig.flat_defaults())
    assert same == []
    changed = config.replace(precision="bfloat16")
    assert checkpoint.config_differences(old, flatten(changed.to_dict()),
                                         defaults=TrainConfig.flat_defaults()) == [
        "precision: '<absent>' -> 'bfloat16'"]


# ------------------------------------------------------------------------------ every model

FAMILIES = [
    ("mlp", {}),
    ("mlp", {"prior": "vamp", "prior_components": 3, "likelihood": "gaussian_global"}),
    ("mlp", {"prior": "mog", "likelihood": "gaussian_learned", "activation": "tanh"}),
    ("iwae", {}),
    ("cvae", {}),
    ("conv", {"conv_channels": (4, 8)}),
    ("flow", {}),
    ("ladder", {"ladder_latents": (4, 2), "ladder_hidden": (16, 8)}),
    ("vqvae", {"conv_channels": (4, 8), "num_codes": 8, "code_dim": 4, "vq_ema": True}),
]


def _batch(n=6, d=64):
    rng = np.random.default_rng(0)
    return {"x": jnp.asarray((rng.random((n, d)) < 0.3).astype(np.float32)),
            "y": jnp.asarray(np.arange(n) % 10, jnp.int32)}


def _registry_pair(name, extra):
    """(model, loss_fn) in both precisions, and the float32 model's parameters."""
    built = {}
    for p in precision.PRECISIONS:
        config = TrainConfig.from_flat(model=name, precision=p, hidden=(16,), latent_dim=3,
                                       **extra)
        config_lib.validate_config(config)
        built[p] = registry.build(config, (64,))  # 8x8 digits
    batch = _batch()
    params = interface.init(built["float32"].model, jax.random.key(0))
    return built, params, batch


@pytest.mark.parametrize("name,extra", FAMILIES, ids=lambda v: str(v))
def test_every_registry_model_in_bfloat16_is_close_to_float32(name, extra):
    built, params, batch = _registry_pair(name, extra)
    bf16_params = interface.init(built["bfloat16"].model, jax.random.key(0))
    # The policy changes no parameter: same tree, same float32 values from the same key.
    chex_equal = jax.tree.map(lambda a, b: np.array_equal(a, b), params, bf16_params)
    assert all(jax.tree.leaves(chex_equal)) and _dtypes(bf16_params) == {"float32"}
    key = jax.random.key(1)
    out = {}
    for p in precision.PRECISIONS:
        (loss, metrics), grads = _loss_and_grads(built[p].loss_fn, params, batch, key)
        assert loss.dtype == jnp.float32 and _dtypes(metrics) == {"float32"}
        assert _dtypes(grads) == {"float32"}
        out[p] = loss, grads
    (loss32, g32), (loss16, g16) = out["float32"], out["bfloat16"]
    assert loss16 != loss32  # the products did run in bfloat16
    np.testing.assert_allclose(loss16, loss32, rtol=1e-2)
    # The gradients point the same way (bfloat16's 8-bit mantissa: ~0.4% per rounding).
    flat32, flat16 = (jnp.concatenate([g.ravel() for g in jax.tree.leaves(g)]) for g in (g32, g16))
    cosine = jnp.dot(flat32, flat16) / (jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16))
    assert cosine > 0.99


@pytest.mark.parametrize("name,extra", [FAMILIES[0], FAMILIES[5], FAMILIES[7]],
                         ids=lambda v: str(v))
def test_decoder_outputs_in_bfloat16_are_float32_and_close(name, extra):
    built, params, batch = _registry_pair(name, extra)
    z = jax.random.normal(jax.random.key(2), (5, built["float32"].model.latent_dim))
    out32, out16 = (jaxvae.decode(built[p].model, params, z) for p in precision.PRECISIONS)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, out32, rtol=0.05, atol=0.05 * float(jnp.std(out32)))


def test_m2_in_bfloat16_is_close_to_float32():
    batch = _batch(8, 16)
    batch["y"] = jnp.asarray([0, 1, 2, -1, -1, 3, 4, -1], jnp.int32)
    models = {p: m2.m2(16, 10, 3, (16,), precision_name=p) for p in precision.PRECISIONS}
    params = m2.init(models["float32"], jax.random.key(0))
    losses_ = {}
    for p, model in models.items():
        loss_fn = losses.make_m2_loss(model, batch["x"][:3], batch["y"][:3], 1.0, 3)
        (loss, _), grads = _loss_and_grads(loss_fn, params, batch, jax.random.key(1))
        assert loss.dtype == jnp.float32 and _dtypes(grads) == {"float32"}
        losses_[p] = loss
    np.testing.assert_allclose(losses_["bfloat16"], losses_["float32"], rtol=1e-2)


def test_the_sequence_vae_in_bfloat16_is_close_to_float32():
    tokens = jnp.asarray(np.random.default_rng(0).integers(4, 20, (5, 7)), jnp.int32)
    models = {p: sequence.sequence_vae(20, 8, 16, 4, p) for p in precision.PRECISIONS}
    params = sequence.init(models["float32"], jax.random.key(0))
    out = {}
    for p, model in models.items():
        loss_fn = losses.make_sequence_loss(model)
        (loss, _), grads = _loss_and_grads(loss_fn, params, {"x": tokens}, jax.random.key(1))
        assert loss.dtype == jnp.float32 and _dtypes(grads) == {"float32"}
        out[p] = loss, interface.reconstruct(model, params, {"x": tokens})
    assert out["bfloat16"][1].dtype == jnp.float32
    np.testing.assert_allclose(out["bfloat16"][0], out["float32"][0], rtol=1e-2)
    np.testing.assert_allclose(out["bfloat16"][1], out["float32"][1], atol=0.05)


# ------------------------------------------------------------------------------ training


def test_parameters_and_optimizer_state_stay_float32_after_a_step():
    model = jaxvae.mlp_vae((16,), 3, (64,), precision_name="bfloat16")
    tx = jaxvae.make_optimizer(1e-3)
    state = jaxvae.create_train_state(jaxvae.init(model, jax.random.key(0)), tx)
    step = jaxvae.make_train_step(jaxvae.make_elbo_loss(model), tx)
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, _batch(), jax.random.key(1))
    assert _dtypes(state.params) == {"float32"}
    assert _dtypes(state.opt_state) <= {"float32", "int32"}
    assert metrics["loss"].dtype == jnp.float32
    # The update is a float32 Adam step: every kernel moved by about lr, not by bf16's grid.
    moved = jnp.abs(state.params["encoder"]["mean"]["kernel"]
                    - before["encoder"]["mean"]["kernel"])
    assert float(jnp.max(moved)) == pytest.approx(1e-3, rel=0.05)


def test_a_short_bfloat16_run_reaches_the_float32_test_loss(mnist5k):
    data = jaxvae.Dataset(mnist5k.x_train[:1000], mnist5k.y_train[:1000],
                          mnist5k.x_test[:300], mnist5k.y_test[:300])
    final = {}
    for p in precision.PRECISIONS:
        config = TrainConfig.from_flat(hidden=(64,), latent_dim=8, epochs=4, batch_size=50,
                                       precision=p, seed=0)
        final[p] = jaxvae.fit(config, data).history[-1]["test_loss"]
    assert final["float32"] < 300, final  # it learned: an untrained model is at ~540 nats
    assert abs(final["bfloat16"] - final["float32"]) < 1.0, final


def test_the_precision_benchmark_prints_both_precisions(capsys, tmp_path):
    from benchmarks import precision as bench

    bench.main(["--models", "reference", "--steps", "1", "--rounds", "1", "--gemm-n", "8",
                "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    assert "| reference | 128 | float32 |" in out and "| reference | 128 | bfloat16 |" in out
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [(r["what"], r["precision"]) for r in rows] == [
        ("reference", "float32"), ("reference", "bfloat16"),
        ("gemm 8^3", "float32"), ("gemm 8^3", "bfloat16")]
    assert all(r["samples_per_s"] > 0 for r in rows)
