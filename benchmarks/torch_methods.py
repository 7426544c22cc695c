"""The PyTorch reference formulas (benchmarks/torch_reference.py) and the equivalents of
jaxvae's other models (benchmarks/torch_models.py) as benchmark runners.

    eager    the pytorch/examples training step: zero_grad, forward, the negative ELBO
             (BCE(sum) + KLD for images), backward, Adam.step(), in a Python loop over
             batches already on the device
    compile  the same with the forward + loss under ``torch.compile`` (AOTAutograd compiles the
             backward too) and ``Adam.step`` compiled as well (PyTorch's recipe for compiled
             optimizers); ``dynamic=False``, one compilation per batch size

In bfloat16 (``precision="bfloat16"``) both run the model's forward pass under
``torch.autocast`` to bfloat16 on the device that trains (CPU or CUDA): autocast's matmuls take
bfloat16 inputs and its backward follows them; the outputs return to float32 for the loss, and
the parameters and Adam stay float32.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks import torch_reference
from benchmarks.harness import Runner, mlp_nll_flops


def make_model(hidden: tuple[int, ...], latent_dim: int, data_dim: int = 784) -> torch.nn.Module:
    """The reference TorchVAE for 784-400-20, the generic TorchMLPVAE otherwise."""
    if tuple(hidden) == (400,) and latent_dim == 20 and data_dim == 784:
        return torch_reference.TorchVAE()
    return torch_reference.TorchMLPVAE(data_dim, tuple(hidden), latent_dim)


def _sync(device: torch.device) -> None:  # CPU work is done when the call returns
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory(device: torch.device):
    if device.type == "cuda":
        return lambda: int(torch.cuda.max_memory_allocated(device))
    return lambda: None


def train_runners(workload, x_NxD: np.ndarray, batch_size: int, steps: int,
                  device: torch.device, methods, precision: str = "float32") -> list[Runner]:
    """Torch training runners for one (model, batch size), ``steps`` Adam steps per call.

    ``workload`` (benchmarks/workloads.py) builds the model and its loss; token rows become
    int64 tensors (what ``nn.Embedding`` takes). ``precision`` float32 or bfloat16 (the
    forward pass under ``torch.autocast``).
    """
    autocast_dtype = {"float32": None, "bfloat16": torch.bfloat16}[precision]
    n = steps * batch_size
    x = torch.from_numpy(np.ascontiguousarray(x_NxD[:n]))
    x = (x.long() if not x.is_floating_point() else x).to(device)
    batches = [x[i * batch_size:(i + 1) * batch_size] for i in range(steps)]
    flops = workload.flops_per_sample() * n
    runners = []

    def make_step(compiled: bool):
        torch.manual_seed(0)
        model = workload.torch_model().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def loss_of(xb):
            return workload.torch_loss(model, xb, autocast_dtype)

        opt_step = opt.step
        if compiled:
            loss_of = torch.compile(loss_of, dynamic=False)
            opt_step = torch.compile(opt.step, dynamic=False)

        def call():
            for xb in batches:
                opt.zero_grad(set_to_none=True)
                loss = loss_of(xb)
                loss.backward()
                opt_step()
            _sync(device)

        return call

    for method in ("eager", "compile"):
        if method in methods:
            runners.append(Runner("torch", method, make_step(method == "compile"), samples=n,
                                  flops=flops, steps=steps, extra={"precision": precision},
                                  peak_memory=_memory(device)))
    return runners


def nll_runners(model: torch.nn.Module, x_BxD: np.ndarray, num_samples: int, chunk_size: int,
                batched_chunk_size: int, device: torch.device) -> list[Runner]:
    """The per-example loop (chunks of ``chunk_size`` samples) and the batched torch version."""
    x = torch.from_numpy(np.ascontiguousarray(x_BxD)).to(device)
    model = model.to(device)
    hidden = [layer.out_features for layer in _encoder_layers(model)]
    latent = _latent_dim(model)
    flops = mlp_nll_flops(x.shape[1], hidden, latent, num_samples) * len(x)

    loop_extra = {"num_samples": num_samples, "chunk_size": chunk_size}
    batched_extra = {"num_samples": num_samples, "chunk_size": batched_chunk_size}

    def per_example():  # .item() waits for the device
        loop_extra["mean_log_px"] = torch_reference.per_example_log_likelihood(
            model, x, num_samples, chunk_size).mean().item()

    def batched():
        batched_extra["mean_log_px"] = torch_reference.batched_log_likelihood(
            model, x, num_samples, batched_chunk_size).mean().item()

    return [Runner("torch", "per_example_loop", per_example, samples=len(x), flops=flops,
                   extra=loop_extra, peak_memory=_memory(device)),
            Runner("torch", "batched", batched, samples=len(x), flops=flops,
                   extra=batched_extra, peak_memory=_memory(device))]


def _encoder_layers(model):
    return [model.fc1] if isinstance(model, torch_reference.TorchVAE) else list(model.enc)


def _latent_dim(model) -> int:
    head = model.fc21 if isinstance(model, torch_reference.TorchVAE) else model.fc_mu
    return head.out_features
