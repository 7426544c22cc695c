"""Architectures: conv VAE, VQ-VAE, ladder VAE, planar-flow posterior."""


import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvae
from jaxvae import distributions
from jaxvae.models import conv
from jaxvae.models import flow as flows
from jaxvae.models import ladder
from jaxvae.objectives import bounds as objectives
from jaxvae.models import registry
from jaxvae.training import step as train
from jaxvae.models import vq as vqvae
from jaxvae.config import TrainConfig

# Tiny versions of every registered architecture (widths small enough for 2 CPU cores).
# The EMA VQ-VAE trains in the script test below. Models are shared between tests and the
# checks run jitted: compiling (op by op when eager) is most of the time on a small CPU.
TINY = dict(hidden=(32,), latent_dim=4, conv_channels=(4, 8), num_codes=16, code_dim=4,
            ladder_latents=(6, 4, 3), ladder_hidden=(32, 16, 16), flow_steps=2, lr=1e-2,
            batch_size=32)
ARCHITECTURES = ("conv", "vqvae", "ladder", "flow")


def _config(name: str) -> TrainConfig:
    return TrainConfig.from_flat(model=name, **TINY)


@pytest.fixture(scope="module")
def tiny_data():
    digits = jaxvae.data.datasets.load_digits()  # 8x8 digits, flat (64,): small enough for quick training
    return {"x": jnp.asarray(digits.x_train[:128]), "y": jnp.asarray(digits.y_train[:128])}


@pytest.fixture(scope="module")
def trained(tiny_data):
    """Each architecture trained for 6 scan epochs (24 steps) on 128 8x8 digits.

    ``before``: the metrics of the first step (initial parameters); ``after``: the means over
    the last epoch.
    """
    results = {}
    for name in ARCHITECTURES:
        config = _config(name)
        jaxvae.validate_config(config)
        model, loss_fn = registry.build(config, (64,))
        tx = registry.optimizer(config)
        params = jaxvae.init(model, jax.random.key(0))
        state = train.create_train_state(params, tx)
        epoch = train.make_train_epoch(loss_fn, tx, config.optimizer.batch_size)
        for e in range(6):
            out = epoch(state, tiny_data, jax.random.key(10 + e), jax.random.key(1))
            state = out.state
            if e == 0:
                before = jax.tree.map(lambda m: m[0], out.step_metrics)
        results[name] = (model, params, state.params, before, out.metrics)
    return results


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_trains_with_finite_falling_loss(trained, name):
    model, _, params, before, after = trained[name]
    for metrics in (before, after):
        assert {"loss", "recon", "kl"} <= set(metrics)
        assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(after["loss"]) < float(before["loss"]) - 10.0  # nats per example, from ~45
    shapes = jax.eval_shape(lambda p, x: (jaxvae.reconstruct(model, p, x),
                                          jaxvae.sample(model, p, jax.random.key(0), 5)),
                            params, jnp.zeros((3, 64)))
    assert [a.shape for a in shapes] == [(3, 64), (5, 64)]


def test_registry_lists_every_architecture():
    assert {"mlp", "conv", "vqvae", "ladder", "flow"} <= set(registry.MODELS)
    assert isinstance(registry.optimizer(TrainConfig()), optax.GradientTransformation)


# ----------------------------------------------------------------------------- conv


def test_conv_vae_reads_flat_and_image_shaped_examples_alike(trained):
    flat, _, params, _, _ = trained["conv"]
    image = conv.conv_vae((4, 8), (32,), 4, (8, 8, 1))
    chex.assert_trees_all_equal_shapes(
        params, jax.eval_shape(lambda: jaxvae.init(image, jax.random.key(0))))
    x = jax.random.uniform(jax.random.key(1), (5, 64))
    mean, logvar, out_flat, out_image = jax.jit(lambda x: (
        *jaxvae.encode(flat, params, x), jaxvae.reconstruct(flat, params, x),
        jaxvae.reconstruct(image, params, x.reshape(5, 8, 8, 1))))(x)
    chex.assert_shape([mean, logvar], (5, 4))
    chex.assert_shape(out_flat, (5, 64))
    chex.assert_shape(out_image, (5, 8, 8, 1))
    np.testing.assert_allclose(out_image.reshape(5, 64), out_flat, rtol=1e-5, atol=1e-5)
    assert conv.image_shape_for((784,)) == (28, 28, 1)  # flat MNIST is read row by row
    assert conv.image_shape_for((3072,)) == (32, 32, 3)
    assert conv.image_shape_for((28, 28)) == (28, 28, 1)


def test_conv_vae_takes_cifar_shaped_images():
    shape = (32, 32, 3)
    model = conv.conv_vae((4, 8), (16,), 3, shape)

    params = jaxvae.init(model, jax.random.key(0))

    @jax.jit
    def run(x):
        loss, _ = jaxvae.loss(model, params, x, jax.random.key(2))
        return loss, jaxvae.sample(model, params, jax.random.key(3), 4)

    loss, samples = run(jax.random.uniform(jax.random.key(1), (2,) + shape))
    assert np.isfinite(float(loss))
    chex.assert_shape(samples, (4,) + shape)


def test_conv_rejects_shapes_it_cannot_convolve():
    with pytest.raises(ValueError, match="needs images"):
        conv.conv_vae(data_shape=(10,))
    with pytest.raises(ValueError, match="divisible by 8"):
        conv.conv_vae(channels=(4, 8, 16), data_shape=(28, 28, 1))
    with pytest.raises(ValueError, match="conv channels"):
        conv.conv_vae(channels=(), data_shape=(784,))


# Shapes of the layer checks: MNIST-sized maps at a small batch, one channel in or out, odd
# channel counts, a non-square image and a 1x1 map; features below and above
# StridedConvTranspose.PHASE_MIN_FEATURES (both of its formulations).
CONV_CASES = [((2, 28, 28, 1), 5), ((3, 14, 14, 12), 9), ((2, 8, 6, 3), 4), ((1, 2, 2, 2), 3),
              ((2, 4, 6, 5), 8)]


def _conv_layer_pair(new_layer, flax_layer, x_shape, features, seed):
    """The new layer's and Flax's outputs and gradients on a random input, cotangent and
    parameters (the new layer's init must equal Flax's); grads w.r.t. input and parameters.
    A ``batch_last`` new layer gets the input as (C, H, W, B) and its output and input
    gradient are compared after the swap back to (B, H, W, C)."""
    kx, kp, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, x_shape)
    swap = (lambda a: a.transpose(3, 1, 2, 0)) if new_layer.batch_last else (lambda a: a)
    params = flax_layer.init(kp, x)
    chex.assert_trees_all_equal(new_layer.init(kp, swap(x)), params)  # names, shapes, init
    params = jax.tree.map(lambda p: p + jax.random.normal(kg, p.shape), params)  # bias != 0
    cotangent = jax.random.normal(kg, flax_layer.apply(params, x).shape)

    def outputs_and_grads(apply):
        out, vjp = jax.vjp(apply, params, x)
        return out, vjp(cotangent)

    return jax.jit(lambda: (
        outputs_and_grads(lambda p, x: swap(new_layer.apply(p, swap(x)))),
        outputs_and_grads(flax_layer.apply)))()


@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("x_shape, features", CONV_CASES)
def test_strided_conv_equals_flax_conv_in_outputs_and_gradients(x_shape, features, batch_last):
    ours, flax_ = _conv_layer_pair(
        conv.StridedConv(features, batch_last=batch_last),
        nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME"), x_shape, features, 0)
    chex.assert_shape(ours[0], (x_shape[0], x_shape[1] // 2, x_shape[2] // 2, features))
    chex.assert_trees_all_close(ours, flax_, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("x_shape, features", CONV_CASES)
def test_strided_conv_transpose_equals_flax_conv_transpose_in_outputs_and_gradients(
        x_shape, features, batch_last):
    ours, flax_ = _conv_layer_pair(
        conv.StridedConvTranspose(features, batch_last=batch_last),
        nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME"), x_shape, features, 1)
    chex.assert_shape(ours[0], (x_shape[0], 2 * x_shape[1], 2 * x_shape[2], features))
    chex.assert_trees_all_close(ours, flax_, rtol=1e-5, atol=1e-4)


def _rounded(a):
    return a.astype(jnp.bfloat16).astype(jnp.float32)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("x_shape, features", [CONV_CASES[1], CONV_CASES[4]])
def test_bfloat16_conv_layers_are_float32_convolutions_of_the_rounded_inputs(
        x_shape, features, transpose):
    # Under the bfloat16 policy a layer's products read bfloat16 inputs and accumulate in
    # float32: with the input, the kernel and the cotangent already representable in bfloat16,
    # the output and every gradient are Flax's float32 layer on those values (the strided
    # convolution's own backward pass included).
    kx, kp, kg = jax.random.split(jax.random.key(7), 3)
    x = _rounded(jax.random.normal(kx, x_shape))
    ours = (conv.StridedConvTranspose if transpose else conv.StridedConv)(
        features, dtype=jnp.bfloat16, batch_last=True)
    flax_ = (nn.ConvTranspose if transpose else nn.Conv)(features, (4, 4), strides=(2, 2),
                                                         padding="SAME")
    params = jax.tree.map(_rounded, flax_.init(kp, x))
    swap = lambda a: a.transpose(3, 1, 2, 0)  # noqa: E731
    y, vjp = jax.vjp(lambda p, x: swap(ours.apply(p, swap(x))), params, x)
    y_ref, vjp_ref = jax.vjp(flax_.apply, params, x)
    g = _rounded(jax.random.normal(kg, y_ref.shape))
    (dp, dx), (dp_ref, dx_ref) = vjp(g), vjp_ref(g)
    assert y.dtype == dx.dtype == jnp.float32
    assert {a.dtype for a in jax.tree.leaves(dp)} == {jnp.dtype(jnp.float32)}
    chex.assert_trees_all_close((y, dp, dx), (y_ref, dp_ref, dx_ref), rtol=1e-5, atol=1e-4)


def test_the_layout_swap_is_a_transpose_in_both_passes_whatever_the_values():
    x = jax.random.normal(jax.random.key(0), (3, 4, 5, 2))
    g = jax.random.normal(jax.random.key(1), (2, 4, 5, 3))
    for x_ in (x, x.at[0, 0, 0, 0].set(jnp.nan)):  # the conditional's predicate either way
        y, vjp = jax.jit(lambda a: jax.vjp(conv._swap_batch_and_channels, a))(x_)
        np.testing.assert_array_equal(y, np.transpose(np.asarray(x_), (3, 1, 2, 0)))
        np.testing.assert_array_equal(vjp(g)[0], np.transpose(np.asarray(g), (3, 1, 2, 0)))


def test_conv_encoder_and_decoder_equal_their_batch_first_layers():
    """The encoder and decoder (batch-last maps inside, swapped once at each end) compute what
    a stack of the layers on (B, H, W, C) maps computes with the same parameters: both
    formulations of the transposed layer (8 outputs and 1), a non-square image, float32
    tolerance, outputs and parameter gradients."""
    x = jax.random.normal(jax.random.key(0), (3, 8, 12, 2))
    encoder, decoder = conv.ConvEncoder((8, 5)), conv.ConvDecoder((5, 8), out_channels=1)
    enc_params = encoder.init(jax.random.key(1), x)["params"]
    h = encoder.apply({"params": enc_params}, x)
    dec_params = decoder.init(jax.random.key(2), h)["params"]

    def batch_first_encoder(params, x):
        for i, features in enumerate((8, 5)):
            x = nn.relu(conv.StridedConv(features).apply({"params": params[f"conv_{i}"]}, x))
        return x

    def batch_first_decoder(params, h):
        for i, features in enumerate((8, 1)):
            h = conv.StridedConvTranspose(features).apply({"params": params[f"deconv_{i}"]}, h)
            h = nn.relu(h) if i == 0 else h
        return h

    def loss(apply_enc, apply_dec, enc_params, dec_params):
        out = apply_dec(dec_params, apply_enc(enc_params, x))
        return jnp.sum(jnp.sin(out)), out

    # one compiled program per formulation (run op by op, the two take seconds to dispatch)
    value_and_grads = jax.jit(jax.value_and_grad(loss, argnums=(2, 3), has_aux=True),
                              static_argnums=(0, 1))
    ours = value_and_grads(lambda p, x: encoder.apply({"params": p}, x),
                           lambda p, h: decoder.apply({"params": p}, h), enc_params, dec_params)
    reference = value_and_grads(batch_first_encoder, batch_first_decoder, enc_params, dec_params)
    chex.assert_shape(ours[0][1], (3, 8, 12, 1))
    chex.assert_trees_all_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_conv_vae_keeps_the_flax_conv_parameter_names_and_shapes():
    model = conv.conv_vae((32, 64), (400,), 20, (784,))
    shapes = jax.tree.map(np.shape, jax.eval_shape(lambda: jaxvae.init(model, jax.random.key(0))))
    assert shapes["conv_encoder"] == {"conv_0": {"kernel": (4, 4, 1, 32), "bias": (32,)},
                                      "conv_1": {"kernel": (4, 4, 32, 64), "bias": (64,)}}
    assert shapes["conv_decoder"] == {"deconv_0": {"kernel": (4, 4, 64, 32), "bias": (32,)},
                                      "deconv_1": {"kernel": (4, 4, 32, 1), "bias": (1,)}}


@pytest.mark.parametrize("precision_name", ["float32", "bfloat16"])
def test_the_speed_benchmarks_flax_conv_variant_builds_the_same_parameters(precision_name):
    from benchmarks import conv_speed
    model = conv.conv_vae((8, 16), (32,), 4, (784,), precision_name=precision_name)
    shapes = lambda: jax.tree.map(np.shape, jax.eval_shape(
        lambda: jaxvae.init(model, jax.random.key(0))))
    ours = shapes()
    with conv_speed.flax_conv_layers():
        assert shapes() == ours


# ----------------------------------------------------------------------------- VQ-VAE


def test_nearest_codes_is_the_argmin_of_euclidean_distances():
    rng = np.random.default_rng(0)
    z, codebook = rng.normal(size=(50, 3)), rng.normal(size=(7, 3))
    expected = np.argmin(((z[:, None, :] - codebook[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(vqvae.nearest_codes(jnp.asarray(z, jnp.float32),
                                                      jnp.asarray(codebook, jnp.float32)),
                                  expected)


def test_code_statistics_perplexity_and_usage():
    stats = jax.jit(vqvae.code_statistics, static_argnums=1)
    np.testing.assert_allclose(stats(jnp.arange(8).repeat(3), 8), [8.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(stats(jnp.full((24,), 2), 8), [1.0, 1 / 8], rtol=1e-6)
    perplexity, usage = stats(jnp.array([0, 0, 0, 1] * 6), 8)  # p = (3/4, 1/4)
    np.testing.assert_allclose(perplexity, np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))),
                               rtol=1e-6)
    np.testing.assert_allclose(usage, 2 / 8)


@pytest.fixture(scope="module")
def small_vq(trained, tiny_data):
    model, params, _, _, _ = trained["vqvae"]  # K = 16 codes of size 4, initial parameters
    return model, params, tiny_data["x"][:16]


def test_straight_through_gradient_reaches_the_encoder(small_vq):
    model, params, x = small_vq

    @jax.jit
    def gradients(params):
        terms = vqvae.vq_terms(model, params, x)
        recon = lambda z: jnp.sum(jaxvae.bernoulli_nll(
            model.apply({"params": params}, z, method=model.decode), x))
        grad_at_zq = jax.grad(recon)(terms.z_q)
        grad_at_ze = jax.grad(lambda z_e: recon(vqvae.straight_through(z_e, terms.z_q)))(
            terms.z_e)
        grads = jax.grad(lambda p: jnp.sum(objectives.reconstruction_nll(
            "bernoulli", vqvae.vq_terms(model, p, x).out, x)))(params)
        return grad_at_zq, grad_at_ze, grads

    grad_at_zq, grad_at_ze, grads = gradients(params)
    # The gradient with respect to z_e is the decoder's gradient at z_q, copied unchanged.
    np.testing.assert_allclose(grad_at_ze, grad_at_zq, rtol=1e-5, atol=1e-7)
    assert float(jnp.max(jnp.abs(grad_at_zq))) > 0
    # Through the whole model: the reconstruction term alone moves every encoder parameter.
    for leaf in jax.tree.leaves(grads["conv_encoder"]) + jax.tree.leaves(grads["pre_quantize"]):
        assert float(jnp.max(jnp.abs(leaf))) > 0
    np.testing.assert_array_equal(grads["codebook"], 0.0)  # codes learn from their own loss


def test_vq_loss_is_recon_plus_codebook_plus_weighted_commitment(small_vq):
    model, params, x = small_vq

    @jax.jit
    def run(params):
        value, m = vqvae.vqvae_loss(model, params, x, commitment_cost=0.25)
        terms = vqvae.vq_terms(model, params, x)
        g = jax.grad(lambda p: vqvae.vqvae_loss(model, p, x)[0])(params)["codebook"]
        g_cb = jax.grad(lambda cb: jnp.mean(jnp.sum(jnp.square(
            jax.lax.stop_gradient(terms.z_e) - cb[terms.codes]), axis=(1, 2, 3))))(
            params["codebook"])
        return value, m, terms, g, g_cb

    value, m, terms, g, g_cb = run(params)
    dist = jnp.mean(jnp.sum(jnp.square(terms.z_e - terms.z_q), axis=(1, 2, 3)))
    np.testing.assert_allclose([m["codebook_loss"], m["commitment_loss"]], [dist, dist],
                               rtol=1e-5)
    np.testing.assert_allclose(value, m["recon"] + 1.25 * dist, rtol=1e-5)
    np.testing.assert_allclose(m["kl"], 2 * 2 * np.log(16), rtol=1e-6)  # 2x2 grid, log K each
    chex.assert_shape(terms.codes, (16, 2, 2))
    # The codebook gets the codebook loss's gradient only, the commitment loss none.
    np.testing.assert_allclose(g, g_cb, rtol=1e-5, atol=1e-7)


def test_vq_reconstruction_goes_through_the_quantizer(small_vq):
    model, params, x = small_vq

    @jax.jit
    def run(params):
        terms = vqvae.vq_terms(model, params, x)
        via_codes = model.apply({"params": params}, terms.codes, method=model.decode_codes)
        return (terms, via_codes, jaxvae.reconstruct(model, params, x),
                jaxvae.sample(model, params, jax.random.key(3), 6))

    terms, via_codes, recon, samples = run(params)
    np.testing.assert_allclose(recon, via_codes, rtol=1e-6)
    np.testing.assert_allclose(terms.out, via_codes, rtol=1e-5, atol=1e-5)
    chex.assert_shape(samples, (6, 64))
    assert "uniformly random codes" in model.sample_title


@pytest.fixture(scope="module")
def ema_vq(tiny_data):
    model = vqvae.vqvae((4, 8), num_codes=8, code_dim=3, data_shape=(64,), ema=True)
    return model, jaxvae.init(model, jax.random.key(0)), tiny_data["x"][:16]


def test_ema_step_sets_the_statistics_to_their_moving_averages(ema_vq):
    model, params, x = ema_vq
    params = dict(params, ema_count=jnp.linspace(0.5, 2.0, 8))  # the update must read them
    decay = 0.8
    loss_fn = lambda p, batch, key, step: vqvae.vqvae_loss(model, p, batch, decay=decay)
    tx = vqvae.ema_optimizer(optax.adam(1e-3))
    state = train.create_train_state(params, tx)
    new = train.make_train_step(loss_fn, tx)(state, x, jax.random.key(2))[0].params

    terms, metrics = jax.jit(lambda p: (vqvae.vq_terms(model, p, x),
                                        vqvae.vqvae_loss(model, p, x)[1]))(params)
    codes = np.asarray(terms.codes).reshape(-1)
    z = np.asarray(terms.z_e).reshape(-1, 3)
    n = np.bincount(codes, minlength=8)
    sums = np.stack([z[codes == k].sum(0) for k in range(8)])
    np.testing.assert_allclose(new["ema_count"], decay * params["ema_count"] + (1 - decay) * n,
                               rtol=1e-5)
    np.testing.assert_allclose(new["ema_sum"], decay * params["ema_sum"] + (1 - decay) * sums,
                               rtol=1e-5, atol=1e-6)
    # Adam moved the learned parameters; no codebook loss in EMA mode.
    assert not np.allclose(new["pre_quantize"]["kernel"], params["pre_quantize"]["kernel"])
    assert float(metrics["codebook_loss"]) == 0.0


def test_ema_codebook_starts_at_the_initial_sums(ema_vq):
    model, params, _ = ema_vq
    codebook = jax.jit(lambda p: model.apply({"params": p}, method=model.codebook))(params)
    np.testing.assert_allclose(codebook, params["ema_sum"], rtol=1e-6)


def test_trained_vq_uses_more_than_one_code(trained, tiny_data):
    model, _, params, _, after = trained["vqvae"]
    assert float(after["perplexity"]) > 1.5
    assert float(after["usage"]) > 1 / model.num_codes
    codes = jax.jit(lambda p: vqvae.vq_terms(model, p, tiny_data["x"]).codes)(params)
    assert len(np.unique(np.asarray(codes))) > 1


def test_vqvae_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_codes must be an int >= 2"):
        vqvae.vqvae(num_codes=1)
    with pytest.raises(ValueError, match="vq_decay must be in"):
        jaxvae.validate_config(TrainConfig.from_flat(model="vqvae", vq_decay=1.0))


# ----------------------------------------------------------------------------- ladder


def test_precision_weighted_merge_is_the_normalized_product_of_the_gaussians():
    rng = np.random.default_rng(0)
    ma, la, mb, lb = (jnp.asarray(rng.normal(size=(2, 3)), jnp.float32) for _ in range(4))
    xs = jnp.asarray(rng.normal(size=(5, 2, 3)) * 3, jnp.float32)

    @jax.jit
    @jax.vmap
    def diff(x):
        mean, logvar = ladder.precision_weighted_merge(ma, la, mb, lb)
        return (distributions.gaussian_log_prob(x, ma, la)
                + distributions.gaussian_log_prob(x, mb, lb)
                - distributions.gaussian_log_prob(x, mean, logvar))

    # log N(x; a) + log N(x; b) - log N(x; merged) does not depend on x.
    np.testing.assert_allclose(np.std(diff(xs), axis=0), 0.0, atol=1e-4)
    # Extreme precisions: the merge follows the more precise Gaussian and stays finite.
    m, lv = jax.jit(ladder.precision_weighted_merge)(jnp.ones(2), jnp.full(2, -60.0),
                                                     jnp.zeros(2), jnp.full(2, 60.0))
    np.testing.assert_allclose(m, 1.0)
    np.testing.assert_allclose(lv, -60.0)


def test_kl_between_gaussians_reduces_to_the_standard_normal_kl():
    mean, logvar = jnp.array([[0.3, -1.0]]), jnp.array([[0.5, -2.0]])
    np.testing.assert_allclose(
        ladder.gaussian_kl_between(mean, logvar, jnp.zeros_like(mean), jnp.zeros_like(mean)),
        distributions.gaussian_kl(mean, logvar), rtol=1e-6)


@pytest.fixture(scope="module")
def small_ladder(trained, tiny_data):
    model, _, params, _, _ = trained["ladder"]  # three layers: 6, 4, 3 (trained)
    return model, params, tiny_data["x"][:2]


def test_ladder_terms_shapes_and_per_layer_kl_metrics(small_ladder):
    model, params, x = small_ladder

    @jax.jit
    def run(params):
        return (ladder.ladder_terms(model, params, x, jax.random.key(2)),
                ladder.ladder_loss(model, params, x, jax.random.key(2)),
                model.apply({"params": params}, x, method=model.bottom_up_pass))

    (recon, kl, out), (loss, m), bottom = run(params)
    chex.assert_shape(recon, (2,))
    chex.assert_shape(kl, (3, 2))
    chex.assert_shape(list(out.z), [(2, 6), (2, 4), (2, 3)])
    np.testing.assert_allclose(m["kl"], m["kl_1"] + m["kl_2"] + m["kl_3"], rtol=1e-5)
    np.testing.assert_allclose(loss, m["recon"] + m["kl"], rtol=1e-5)
    assert all(float(m[f"kl_{l}"]) >= 0 for l in (1, 2, 3))
    # The top layer's prior is N(0, I); the lower layers' posteriors merge with their priors.
    np.testing.assert_array_equal(out.p[-1][0], 0.0)
    np.testing.assert_allclose(out.q[-1][0], bottom[-1][0])
    np.testing.assert_allclose(out.q[0][0], ladder.precision_weighted_merge(
        *bottom[0], *out.p[0])[0], rtol=1e-6)


@pytest.mark.parametrize("layer", [0, 1])
def test_ladder_layer_kl_matches_monte_carlo(small_ladder, layer):
    model, params, x = small_ladder

    @jax.jit
    def run(params):
        _, kl, out = ladder.ladder_terms(model, params, x, jax.random.key(2))
        (mq, lq), (mp, lp) = out.q[layer], out.p[layer]  # given the sampled parent z_{layer+2}
        shape = (200_000,) + mq.shape
        z = distributions.reparameterize(jax.random.key(3), jnp.broadcast_to(mq, shape),
                                         jnp.broadcast_to(lq, shape))
        mc = jnp.mean(distributions.gaussian_log_prob(z, mq[None], lq[None])
                      - distributions.gaussian_log_prob(z, mp[None], lp[None]), axis=0)
        return mc, kl

    mc, kl = run(params)
    np.testing.assert_allclose(mc, kl[layer], rtol=0.03, atol=0.01)


def test_ladder_samples_ancestrally_and_rejects_a_single_layer(small_ladder):
    model, params, _ = small_ladder
    draw = jax.jit(lambda key: jaxvae.sample(model, params, key, 3))
    a, b = draw(jax.random.key(0)), draw(jax.random.key(1))
    chex.assert_shape(a, (3, 64))
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="at least 2 stochastic layers"):
        ladder.ladder_vae((8,), (16,))
    with pytest.raises(ValueError, match="one ladder hidden width per latent layer"):
        ladder.ladder_vae((8, 4), (16,))


# ----------------------------------------------------------------------------- flows


def _random_flow_inputs(seed, batch=6, z=4, scale=1.0):
    keys = jax.random.split(jax.random.key(seed), 4)
    return (jax.random.normal(keys[0], (batch, z)), scale * jax.random.normal(keys[1], (batch, z)),
            jax.random.normal(keys[2], (batch, z)), jax.random.normal(keys[3], (batch,)))


@pytest.mark.parametrize("seed,scale", [(0, 1.0), (1, 3.0), (2, 10.0)])
def test_planar_log_det_matches_slogdet_of_the_jacobian(seed, scale):
    z, u, w, b = _random_flow_inputs(seed, scale=scale)

    @jax.jit
    def run(z, u, w, b):
        def one(zi, ui, wi, bi):  # the flow of one example, (Z,) -> (Z,)
            f = lambda v: flows.planar_flow(v[None], ui[None], wi[None], bi[None])[0][0]
            return jnp.linalg.slogdet(jax.jacfwd(f)(zi))
        return flows.planar_flow(z, u, w, b)[1], jax.vmap(one)(z, u, w, b)

    log_det, (sign, expected) = run(z, u, w, b)
    np.testing.assert_array_equal(sign, 1.0)  # invertible, orientation kept
    np.testing.assert_allclose(log_det, expected, rtol=1e-4, atol=1e-5)


def test_u_hat_enforces_the_invertibility_condition():
    _, u, w, _ = _random_flow_inputs(3, batch=100, scale=5.0)
    u = u.at[:10].set(-50.0 * w[:10])  # w.u far below -1: would be non-invertible

    @jax.jit
    def run(u, w):
        u_hat = flows.planar_u_hat(u, w)
        t = jnp.linspace(-20, 20, 2001)[:, None]
        wi, ui = w[0], u_hat[0]
        z_new = flows.planar_flow(t * wi[None], jnp.broadcast_to(ui, (2001, 4)),
                                  jnp.broadcast_to(wi, (2001, 4)), jnp.zeros(2001))[0]
        return u_hat, jnp.sum(z_new * wi[None], -1)

    u_hat, along = run(u, w)
    # w.u^ = m(w.u) = -1 + softplus(w.u) > -1 (up to float rounding at the boundary)
    wu_hat = np.sum(np.asarray(w * u_hat), -1)
    np.testing.assert_allclose(wu_hat, -1.0 + np.logaddexp(0.0, np.sum(np.asarray(w * u), -1)),
                               rtol=1e-4, atol=1e-4)
    assert wu_hat.min() > -1.0 - 1e-4 and np.sum(np.asarray(w * u), -1)[:10].max() < -5
    # u^ differs from u along w only
    r = np.asarray(u_hat - u)
    w_np = np.asarray(w)
    np.testing.assert_allclose(r - (r * w_np).sum(-1, keepdims=True) * w_np
                               / (w_np * w_np).sum(-1, keepdims=True), 0.0, atol=1e-3)
    # along w the flow is strictly increasing, so it is one-to-one
    assert bool(jnp.all(jnp.diff(along) > 0))


def test_zero_flows_are_exactly_the_gaussian_monte_carlo_bound():
    model = flows.flow_vae((16,), 3, 0, (64,))
    x = jax.random.uniform(jax.random.key(1), (5, 64))
    key = jax.random.key(2)

    @jax.jit
    def run():
        params = jaxvae.init(model, jax.random.key(0))
        mean, logvar = jaxvae.encode(model, params, x)
        z = jaxvae.reparameterize(key, mean, logvar)  # the noise of jaxvae.loss
        recon = jaxvae.bernoulli_nll(jaxvae.decode(model, params, z), x)
        mc_kl = jaxvae.distributions.gaussian_log_prob(z, mean, logvar) - jaxvae.distributions.standard_normal_log_prob(z)
        return (flows.flow_terms(model, params, x, key), flows.flow_loss(model, params, x, key),
                recon, mc_kl, jaxvae.loss(model, params, x, key)[1])

    t, (loss, m), recon, mc_kl, gaussian = run()
    np.testing.assert_array_equal(t.log_det, 0.0)
    np.testing.assert_allclose(t.recon, recon, rtol=1e-6)
    np.testing.assert_allclose(loss, jnp.mean(recon + mc_kl), rtol=1e-6)
    np.testing.assert_allclose(m["kl"], jnp.mean(mc_kl), rtol=1e-5, atol=1e-6)
    # jaxvae.loss (the analytic KL) has the same reconstruction term with the same key
    np.testing.assert_allclose(gaussian["recon"], m["recon"], rtol=1e-6)


def test_flow_bound_subtracts_the_log_det(trained, tiny_data):
    model, _, params, _, _ = trained["flow"]
    x = tiny_data["x"][:5]
    t, (_, m) = jax.jit(lambda p: (flows.flow_terms(model, p, x, jax.random.key(2)),
                                   flows.flow_loss(model, p, x, jax.random.key(2))))(params)
    assert float(jnp.max(jnp.abs(t.log_det))) > 0
    np.testing.assert_allclose(m["kl"], jnp.mean(t.log_q0 - t.log_det - t.log_prior), rtol=1e-5)
    np.testing.assert_allclose(m["log_det"], jnp.mean(t.log_det), rtol=1e-5)
    with pytest.raises(ValueError, match="flow_steps must be an int >= 0"):
        flows.flow_vae(flow_steps=-1)


# ----------------------------------------------------------------------------- the script


def test_train_script_runs_vqvae_and_labels_its_samples(tmp_path, monkeypatch):
    from experiments import train as train_script

    titles = []
    real = train_script.plots.save_image_grid
    monkeypatch.setattr(train_script.plots, "save_image_grid",
                        lambda p, x, n, title: titles.append(title) or real(p, x, n, title))
    code = train_script.main(["--dataset", "digits", "--model", "vqvae", "--epochs", "2",
                              "--conv-channels", "4", "8", "--num-codes", "8", "--code-dim", "2",
                              "--vq-ema", "--outdir", str(tmp_path), "--quiet"])
    assert code == 0
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert any("uniformly random codes" in t for t in titles)
    import json
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"test_perplexity", "test_usage", "test_commitment_loss"} <= set(records[0])
    assert records[-1]["test_perplexity"] > 1.5  # the EMA codebook is used
    assert records[-1]["test_loss"] < records[0]["train_loss"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    model_config = summary["config"]["model"]
    assert model_config["vq_ema"] is True and model_config["num_codes"] == 8


def test_train_script_rejects_a_bad_architecture_flag(capsys):
    from experiments import train as train_script

    assert train_script.main(["--model", "ladder", "--ladder-latents", "8", "--ladder-hidden",
                              "16", "--quiet"]) == 2
    assert "at least 2 stochastic layers" in capsys.readouterr().err
    config = TrainConfig().replace(flow_steps=-2)
    with pytest.raises(ValueError, match="flow_steps must be >= 0"):
        jaxvae.validate_config(config)
