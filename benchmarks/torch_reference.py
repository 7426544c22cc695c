"""The PyTorch reference: the pytorch/examples VAE and its loss, written from its formulas.

One copy, used by the parity tests (tests/test_torch_parity.py), the benchmark harness and the
quality comparison (``python benchmarks/torch_reference.py``, which trains it on mnist5k exactly
as experiments/train.py trains jaxvae's reference_vae and prints the test loss per epoch).

    fc1: 784 -> 400, ReLU; fc21, fc22: 400 -> 20 (mu, logvar)
    fc3: 20 -> 400, ReLU; fc4: 400 -> 784, sigmoid
    loss = BCE(recon_x, x, reduction='sum') + KLD,  KLD = -1/2 sum(1 + logvar - mu^2 - exp(logvar))
    Adam(lr=1e-3), batch 128.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train the PyTorch reference VAE on mnist5k.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the per-epoch test losses here")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from jaxvae.data import load_mnist5k

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
