"""Training speed of the convolutional VAE: jaxvae's matrix-product conv layers against the same
model with Flax's ``nn.Conv`` / ``nn.ConvTranspose`` (XLA convolutions) and against PyTorch.

    python -m benchmarks.conv_speed [--rounds 5] [--steps 8] [--torch-threads 2] [--compile]

The model is ``--model conv`` (28x28x1, channels 32-64, hidden 400, latent 20), the loss
BCE(sum) + KL, Adam 1e-3, batch 128. Each jax variant runs two ways: a Python loop of jitted
steps (``make_train_step``) and ``--steps`` steps in one ``make_train_chunk`` call (the
``lax.scan`` chunk that ``fit`` runs, NaN guard included). Then per layer, forward + backward
(gradients of input, kernel and bias) of each convolution in both formulations (jaxvae's on
the batch-last maps of its encoder and decoder), in a jitted call and per step inside a
``lax.scan``. All timed calls of a table are interleaved round-robin (alternating order) and
the medians reported, so background load hits them alike; the load average is printed before
and after: under load, torch's OpenMP threads slow down far more than XLA (treat torch numbers
from a loaded machine as unreliable).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
import jaxvae
from jaxvae.config import TrainConfig
from jaxvae.models import conv, precision, registry
from jaxvae.training import step as train

B, H, C1, C2, HIDDEN, Z = 128, 28, 32, 64, 400, 20


@contextlib.contextmanager
def flax_conv_layers():
    """While tracing: the conv VAE built from Flax's nn.Conv / nn.ConvTranspose (XLA convs)."""
    # batch_last is ignored: ConvEncoder / ConvDecoder keep (B, H, W, C) maps around layers
    # without that attribute
    def strided(features, dtype=None, name=None, batch_last=False):
        return nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME", name=name,
                       **precision.conv_kwargs(dtype))

    def transposed(features, dtype=None, name=None, batch_last=False):
        return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", name=name,
                                **precision.conv_kwargs(dtype, transpose=True))

    with mock.patch.object(conv, "StridedConv", strided), \
            mock.patch.object(conv, "StridedConvTranspose", transposed):
        yield


def jax_step_calls(steps: int, data_x: np.ndarray) -> dict:
    config = TrainConfig.from_flat(model="conv", hidden=(HIDDEN,), latent_dim=Z,
                                   conv_channels=(C1, C2), batch_size=B)
    calls = {}
    for variant in ("matmul", "flax_conv"):
        with flax_conv_layers() if variant == "flax_conv" else contextlib.nullcontext():
            model, loss_fn = registry.build(config, (H * H,))
            tx = registry.optimizer(config)
            params = jaxvae.init(model, jax.random.key(0))
            state = {"s": train.create_train_state(params, tx)}
            data = {"x": jax.device_put(data_x)}
            idx = jnp.arange(steps * B, dtype=jnp.int32).reshape(steps, B)
            positions = jnp.arange(steps, dtype=jnp.int32)
            run_key = jax.random.key(1)
            step = train.make_train_step(loss_fn, tx)
            chunk = train.make_train_chunk(loss_fn, tx)
            batches = [{"x": data["x"][i * B:(i + 1) * B]} for i in range(steps)]

            def step_loop(state=state, step=step, batches=batches, run_key=run_key):
                s = state["s"]
                for batch in batches:
                    s, m = step(s, batch, run_key)
                state["s"] = jax.block_until_ready(s)

            def scan_chunk(state=state, chunk=chunk, data=data, idx=idx, positions=positions,
                           run_key=run_key):
                state["s"], _ = jax.block_until_ready(
                    chunk(state["s"], data, idx, positions, run_key))

            step_loop()  # compile, traced inside the context
            scan_chunk()
        calls[f"jax {variant} step loop"] = (step_loop, steps)
        calls[f"jax {variant} scan chunk"] = (scan_chunk, steps)
    return calls


def torch_calls(steps: int, data_x: np.ndarray, compile_: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn as tnn

    class TorchConvVAE(tnn.Module):
        """The same architecture: jaxvae's conv VAE's layers and shapes (NCHW)."""

        def __init__(self):
            super().__init__()
            self.enc = tnn.Sequential(tnn.Conv2d(1, C1, 4, 2, 1), tnn.ReLU(),
                                      tnn.Conv2d(C1, C2, 4, 2, 1), tnn.ReLU(), tnn.Flatten(),
                                      tnn.Linear(C2 * 49, HIDDEN), tnn.ReLU())
            self.mean, self.logvar = tnn.Linear(HIDDEN, Z), tnn.Linear(HIDDEN, Z)
            self.dec = tnn.Sequential(tnn.Linear(Z, HIDDEN), tnn.ReLU(),
                                      tnn.Linear(HIDDEN, C2 * 49), tnn.ReLU(),
                                      tnn.Unflatten(1, (C2, 7, 7)),
                                      tnn.ConvTranspose2d(C2, C1, 4, 2, 1), tnn.ReLU(),
                                      tnn.ConvTranspose2d(C1, 1, 4, 2, 1))

        def forward(self, x):
            h = self.enc(x.view(-1, 1, H, H))
            mu, logvar = self.mean(h), self.logvar(h)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            logits = self.dec(z).view(-1, H * H)
            bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    out = {}
    batches = [torch.from_numpy(data_x[i * B:(i + 1) * B]) for i in range(steps)]
    for name in ("eager",) + (("compile",) if compile_ else ()):
        torch.manual_seed(0)
        model = TorchConvVAE()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_of = torch.compile(model) if name == "compile" else model

        def run(model=model, opt=opt, loss_of=loss_of):
            for x in batches:
                opt.zero_grad()
                loss_of(x).backward()
                opt.step()

        run()  # warm-up (compiles under torch.compile)
        out[f"torch {name}"] = (run, steps)
    return out


def layer_calls(steps: int) -> dict:
    """Forward + backward of each conv layer, both formulations, jitted and inside a scan."""
    layers = [("conv_0", "strided", (B, 28, 28, 1), C1), ("conv_1", "strided", (B, 14, 14, C1), C2),
              ("deconv_0", "transposed", (B, 7, 7, C2), C1),
              ("deconv_1", "transposed", (B, 14, 14, C1), 1)]
    calls = {}
    for name, kind, shape, features in layers:
        x = jax.random.normal(jax.random.key(0), shape)
        layer_class = conv.StridedConv if kind == "strided" else conv.StridedConvTranspose
        flax_ = (nn.Conv if kind == "strided" else nn.ConvTranspose)(
            features, (4, 4), strides=(2, 2), padding="SAME")
        params = flax_.init(jax.random.key(1), x)
        # jaxvae's layer on batch-last maps, as ConvEncoder and ConvDecoder run it
        for variant, layer, x in (
                ("matmul", layer_class(features, batch_last=True), x.transpose(3, 1, 2, 0)),
                ("flax_conv", flax_, x)):
            # x is an argument, not a constant XLA would fold into the program.
            def body(carry, _, layer=layer):
                p, x = carry
                gp, gx = jax.grad(lambda p, x: jnp.sum(jnp.tanh(layer.apply(p, x))),
                                  argnums=(0, 1))(p, x)
                gp = jax.tree.map(lambda a, g: a - 1e-6 * g + 1e-9 * jnp.sum(gx), p, gp)
                return (gp, x), None

            one = jax.jit(lambda p, x, body=body: body((p, x), None)[0][0])
            many = jax.jit(lambda p, x, body=body: jax.lax.scan(
                body, (p, x), None, length=steps)[0][0])
            for fn, how, n in ((one, "jit", 1), (many, "scan", steps)):
                jax.block_until_ready(fn(params, x))
                calls[f"{name} {variant} {how}"] = (
                    lambda fn=fn, params=params, x=x: jax.block_until_ready(fn(params, x)), n)
    return calls


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="steps per timed call")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--skip-layers", action="store_true")
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(args.torch_threads)
    print(f"load average before: {os.getloadavg()}  (cores: {os.cpu_count()}; jax "
          f"{jax.__version__}, torch {torch.__version__}, torch threads {args.torch_threads})")
    data_x = (np.random.default_rng(0).random((args.steps * B, H * H)) < 0.3).astype(np.float32)
    calls = {**jax_step_calls(args.steps, data_x),
             **torch_calls(args.steps, data_x, args.compile)}
    medians = harness.timed_rounds(calls, args.rounds)
    print(f"\ntraining step, batch {B}, medians of {args.rounds} interleaved rounds:")
    base = medians["torch eager"]
    for name, s in medians.items():
        print(f"  {name:28s} {s * 1e3:8.1f} ms/step  {B / s:8.0f} samples/s  "
              f"{base / s:5.2f}x torch eager")
    print(f"load average: {os.getloadavg()}")
    if not args.skip_layers:
        medians = harness.timed_rounds(layer_calls(args.steps), args.rounds)
        print(f"\nper layer, forward + backward (ms per step), medians of {args.rounds} rounds:")
        for name, s in medians.items():
            print(f"  {name:28s} {s * 1e3:8.2f}")
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
