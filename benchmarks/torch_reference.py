"""The PyTorch reference: the pytorch/examples VAE and its loss, written from its formulas.

One copy, used by the parity tests (tests/test_torch_parity.py), the benchmark harness and the
quality comparison (``python -m benchmarks.torch_reference``, which trains it on mnist5k exactly
as experiments/train.py trains jaxvae's reference_vae and prints the test loss per epoch).

    fc1: 784 -> 400, ReLU; fc21, fc22: 400 -> 20 (mu, logvar)
    fc3: 20 -> 400, ReLU; fc4: 400 -> 784, sigmoid
    loss = BCE(recon_x, x, reduction='sum') + KLD,  KLD = -1/2 sum(1 + logvar - mu^2 - exp(logvar))
    Adam(lr=1e-3), batch 128.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TorchVAE(nn.Module):
    """pytorch/examples/vae: the reference architecture, layer names as in the original."""

    def __init__(self, data_dim: int = 784, hidden: int = 400, latent_dim: int = 20):
        super().__init__()
        self.data_dim = data_dim
        self.fc1 = nn.Linear(data_dim, hidden)
        self.fc21 = nn.Linear(hidden, latent_dim)
        self.fc22 = nn.Linear(hidden, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, data_dim)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar, eps=None):
        std = torch.exp(0.5 * logvar)
        if eps is None:
            eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x, eps=None):
        mu, logvar = self.encode(x.view(-1, self.data_dim))
        z = self.reparameterize(mu, logvar, eps)
        return self.decode(z), mu, logvar


class TorchMLPVAE(nn.Module):
    """The reference's formulas with any number of hidden layers (the decoder mirrors them).

    ``TorchMLPVAE(hidden=(400,))`` computes exactly what ``TorchVAE`` computes; the benchmark
    uses it for the wider 784-1024-1024-64 model (jaxvae.mlp_vae((1024, 1024), 64)).
    """

    def __init__(self, data_dim: int = 784, hidden: tuple[int, ...] = (400,),
                 latent_dim: int = 20):
        super().__init__()
        self.data_dim = data_dim
        widths = [data_dim, *hidden]
        self.enc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.fc_mu = nn.Linear(widths[-1], latent_dim)
        self.fc_logvar = nn.Linear(widths[-1], latent_dim)
        back = [latent_dim, *reversed(hidden)]
        self.dec = nn.ModuleList(nn.Linear(a, b) for a, b in zip(back[:-1], back[1:]))
        self.out = nn.Linear(back[-1], data_dim)

    def encode(self, x):
        h = x
        for layer in self.enc:
            h = F.relu(layer(h))
        return self.fc_mu(h), self.fc_logvar(h)

    reparameterize = TorchVAE.reparameterize

    def decode(self, z):
        h = z
        for layer in self.dec:
            h = F.relu(layer(h))
        return torch.sigmoid(self.out(h))

    def forward(self, x, eps=None):
        mu, logvar = self.encode(x.view(-1, self.data_dim))
        z = self.reparameterize(mu, logvar, eps)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    """The reference loss, summed over the batch: BCE(sum) + KLD."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, recon_x.shape[-1]), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def train_epoch(model, optimizer, x_train: torch.Tensor, batch_size: int, generator) -> float:
    """One epoch over shuffled batches (drop_last=False); returns the mean loss per example."""
    model.train()
    total = 0.0
    perm = torch.randperm(len(x_train), generator=generator)
    for start in range(0, len(x_train), batch_size):
        x = x_train[perm[start:start + batch_size]]
        optimizer.zero_grad()
        recon, mu, logvar = model(x)
        loss = loss_function(recon, x, mu, logvar)
        loss.backward()
        total += loss.item()
        optimizer.step()
    return total / len(x_train)


@torch.no_grad()
def evaluate(model, x_test: torch.Tensor, batch_size: int = 500) -> float:
    """Mean test loss per example (one noise draw per example)."""
    model.eval()
    total = 0.0
    for start in range(0, len(x_test), batch_size):
        x = x_test[start:start + batch_size]
        recon, mu, logvar = model(x)
        total += loss_function(recon, x, mu, logvar).item()
    return total / len(x_test)


_HALF_LOG_2PI = 0.5 * float(np.log(2 * np.pi))


def _log_weights(model, x_rep, mu, logvar):
    """log p(x|z) + log p(z) - log q(z|x) for one draw z ~ q(z|x) per row (BCE on sigmoid)."""
    std = torch.exp(0.5 * logvar)
    eps = torch.randn_like(std)
    z = mu + eps * std
    log_q = torch.sum(-0.5 * eps.pow(2) - 0.5 * logvar - _HALF_LOG_2PI, dim=-1)
    log_pz = torch.sum(-0.5 * z.pow(2) - _HALF_LOG_2PI, dim=-1)
    recon = model.decode(z)
    log_px = -F.binary_cross_entropy(recon, x_rep, reduction="none").sum(dim=-1)
    return log_px + log_pz - log_q


@torch.no_grad()
def per_example_log_likelihood(model, x: torch.Tensor, num_samples: int,
                               chunk_size: int = 100) -> torch.Tensor:
    """Importance-sampled log p(x), one example at a time (the common PyTorch-library style).

    As many PyTorch VAE libraries estimate the NLL (e.g. the ``get_nll`` methods of
    pythae / benchmark_VAE): a Python loop over the examples and, inside it, over chunks of
    ``chunk_size`` importance samples, each chunk re-encoding the example repeated chunk_size
    times. log p(x) ~ logsumexp_k log w_k - log K.
    """
    model.eval()
    out = []
    for i in range(len(x)):
        x_rep = x[i:i + 1].expand(chunk_size, -1)
        log_w = []
        for _ in range(num_samples // chunk_size):
            mu, logvar = model.encode(x_rep)
            log_w.append(_log_weights(model, x_rep, mu, logvar))
        log_w = torch.cat(log_w)
        out.append(torch.logsumexp(log_w, 0) - np.log(len(log_w)))
    return torch.stack(out)


@torch.no_grad()
def batched_log_likelihood(model, x: torch.Tensor, num_samples: int,
                           chunk_size: int = 100) -> torch.Tensor:
    """The same estimate, vectorized: encode the batch once, then chunks of K x B samples."""
    model.eval()
    mu, logvar = model.encode(x)
    batch = len(x)
    x_rep = x.repeat(chunk_size, 1)
    mu_rep, logvar_rep = mu.repeat(chunk_size, 1), logvar.repeat(chunk_size, 1)
    log_w = [_log_weights(model, x_rep, mu_rep, logvar_rep).view(chunk_size, batch)
             for _ in range(num_samples // chunk_size)]
    log_w = torch.cat(log_w)
    return torch.logsumexp(log_w, 0) - np.log(len(log_w))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train the PyTorch reference VAE on mnist5k.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the per-epoch test losses here")
    args = parser.parse_args(argv)

    from jaxvae.data.datasets import load_mnist5k

    data = load_mnist5k()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    x_train, x_test = torch.from_numpy(data.x_train), torch.from_numpy(data.x_test)
    model = TorchVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    history = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss = train_epoch(model, optimizer, x_train, args.batch_size, generator)
        seconds = time.perf_counter() - start
        test_loss = evaluate(model, x_test)
        history.append({"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss,
                        "seconds": seconds})
        print(json.dumps(history[-1]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(history, f, indent=1)


if __name__ == "__main__":
    main()
