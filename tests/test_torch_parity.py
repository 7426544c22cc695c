"""jaxvae's reference VAE equals the PyTorch reference (benchmarks/torch_reference.py).

The torch model runs the pytorch/examples formulas; its weights are converted with from_torch
and both see the same inputs and the same reparameterization noise.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jaxvae
from benchmarks.torch_reference import TorchVAE, loss_function
from jaxvae.training import step as train

RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = TorchVAE()
    model = jaxvae.reference_vae()
    params = jaxvae.from_torch(model, net.state_dict())
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 784)).astype(np.float32)
    x[:8] = (x[:8] > 0.5)  # binary and grey-level targets
    key = jax.random.key(42)
    eps = np.array(jax.random.normal(key, (16, 20)))  # the noise jaxvae.loss draws with key
    return net, model, params, x, key, eps


def _torch_grads(net, x, eps):
    net.zero_grad()
    recon, mu, logvar = net(torch.from_numpy(x), torch.from_numpy(eps))
    loss = loss_function(recon, torch.from_numpy(x), mu, logvar) / len(x)
    loss.backward()
    return loss, {n: p.grad.numpy().copy() for n, p in net.named_parameters()}


def test_encoder_and_decoder_outputs_match(setup):
    net, model, params, x, _, eps = setup
    mu, logvar = net.encode(torch.from_numpy(x))
    mean, lv = jaxvae.encode(model, params, x)
    np.testing.assert_allclose(mean, mu.detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(lv, logvar.detach().numpy(), rtol=RTOL, atol=ATOL)
    z = eps.astype(np.float32)
    recon = net.decode(torch.from_numpy(z)).detach().numpy()
    np.testing.assert_allclose(jax.nn.sigmoid(jaxvae.decode(model, params, z)), recon,
                               rtol=RTOL, atol=ATOL)


def test_kl_recon_and_loss_match_the_reference_formula(setup):
    net, model, params, x, key, eps = setup
    recon_t, mu, logvar = net(torch.from_numpy(x), torch.from_numpy(eps))
    bce = torch.nn.functional.binary_cross_entropy(recon_t, torch.from_numpy(x),
                                                   reduction="sum").item()
    kld = (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())).item()
    total = loss_function(recon_t, torch.from_numpy(x), mu, logvar).item()
    loss, metrics = jaxvae.loss(model, params, x, key)
    n = len(x)
    np.testing.assert_allclose(metrics["recon"], bce / n, rtol=RTOL)
    np.testing.assert_allclose(metrics["kl"], kld / n, rtol=1e-4)
    np.testing.assert_allclose(loss, total / n, rtol=RTOL)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=0)


@functools.partial(jax.jit, static_argnums=0)
def _grads(model, params, x, key):
    """d loss / d params, as one compiled program (shared by the tests below)."""
    return jax.grad(lambda p: jaxvae.loss(model, p, x, key)[0])(params)


def test_every_gradient_matches(setup):
    net, model, params, x, key, eps = setup
    _, torch_grads = _torch_grads(net, x, eps)
    grads = _grads(model, params, x, key)
    converted = jaxvae.from_torch(model, {k: v for k, v in torch_grads.items()})
    for (path, ours), theirs in zip(jax.tree_util.tree_leaves_with_path(grads),
                                    jax.tree_util.tree_leaves(converted)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))


def test_one_adam_step_gives_the_same_parameters(setup):
    net, model, params, x, key, eps = setup
    torch.manual_seed(0)
    net = TorchVAE()
    net.load_state_dict(setup[0].state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    _torch_grads(net, x, eps)
    opt.step()

    tx = train.make_optimizer(1e-3)
    state = train.create_train_state(params, tx)
    grads = _grads(model, params, x, key)
    updates, _ = jax.jit(tx.update)(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    expected = jaxvae.from_torch(model, net.state_dict())
    # Adam's first step is lr * g / (|g| + eps): where |g| is near eps = 1e-8 the float32
    # rounding of g decides the step, so those few weights are held to the step bound only.
    def check(ours, theirs, g):
        tight = np.abs(np.asarray(g)) > 1e-6
        np.testing.assert_allclose(np.asarray(ours)[tight], np.asarray(theirs)[tight],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours, theirs, atol=2.01e-3)
        assert tight.mean() > 0.5
    jax.tree.map(check, new_params, expected, grads)
    # Adam's first step moves every weight by about lr: the comparison is not vacuous.
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_params, params)
    assert min(jax.tree.leaves(moved)) > 5e-4


def test_from_torch_accepts_numpy_arrays(setup):
    net, model, params, *_ = setup
    as_numpy = {k: v.numpy() for k, v in net.state_dict().items()}
    jax.tree.map(np.testing.assert_array_equal, jaxvae.from_torch(model, as_numpy), params)


def test_from_torch_names_missing_keys_and_wrong_shapes(setup):
    net, model, *_ = setup
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    del state["fc21.bias"]
    state["fc4.weight"] = np.zeros((10, 400), np.float32)
    with pytest.raises(ValueError, match=r"missing keys: fc21.bias.*wrong shapes: fc4.weight: "
                                         r"got \(10, 400\), expected \(784, 400\)"):
        jaxvae.from_torch(model, state)


def test_reference_architecture_has_the_torch_layer_sizes():
    params = jaxvae.init(jaxvae.reference_vae(), jax.random.key(0))
    shapes = {jax.tree_util.keystr(p): v.shape
              for p, v in jax.tree_util.tree_leaves_with_path(params)}
    torch_shapes = {k: tuple(v.shape) for k, v in TorchVAE().state_dict().items()}
    assert sum(np.prod(s) for s in shapes.values()) == sum(
        np.prod(s) for s in torch_shapes.values())
    assert shapes["['encoder']['mlp']['hidden_0']['kernel']"] == (784, 400)
    assert shapes["['decoder']['out']['kernel']"] == (400, 784)


def test_training_tracks_the_torch_reference_step_for_step(mnist5k):
    from benchmarks.quality import paired
    small = mnist5k._replace(x_train=mnist5k.x_train[:512])  # 4 batches of 128 per epoch
    history = paired(small, epochs=3)
    for r in history:
        np.testing.assert_allclose(r["jax_loss"], r["torch_loss"], rtol=1e-4)
    # Adam moves each weight by up to lr = 1e-3 per step; where a gradient is near zero its
    # float32 rounding decides the sign, so a few weights differ by a few steps, no more.
    assert history[-1]["max_param_diff"] < 5e-3
    assert history[0]["jax_loss"] > history[-1]["jax_loss"] + 50  # it really trained
