"""PyTorch equivalents of jaxvae's convolutional and sequence VAEs, for the benchmark.

Same layers, shapes and parameter counts as ``jaxvae.conv_vae`` and
``jaxvae.models.sequence.SequenceVAE`` (checked by ``benchmarks.workloads.check_parameter_counts``),
written the way a PyTorch user would: NCHW convolutions, and GRUs on PyTorch's fused RNN kernel
(``torch.gru``, what ``nn.GRU`` calls) with packed sequences in the encoder.

The GRU holds ``flax.linen.GRUCell``'s parameters: input projections with a bias (3H), hidden
projections without one except the candidate's (H). ``nn.GRU`` would add two redundant hidden
biases of H each (only their sum with the input biases matters); here the kernel gets them as
zeros, so the function is flax's and the parameter count is too:

    r = sigmoid(W_ir x + b_ir + W_hr h),  z = sigmoid(W_iz x + b_iz + W_hz h)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from jaxvae.data.vocab import BOS_ID, PAD_ID


def gaussian_kl(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the batch."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


class TorchConvVAE(nn.Module):
    """jaxvae.conv_vae on 28x28x1: stride-2 4x4 convolutions (padding 1 is XLA's 'SAME' here),
    dense ReLU layers, the Gaussian heads; the decoder mirrors it with transposed convolutions
    and ends in Bernoulli logits."""

    def __init__(self, channels=(32, 64), hidden=(400,), latent_dim=20, image_hw=28,
                 in_channels=1):
        super().__init__()
        widths = [in_channels, *channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1)
                                   for a, b in zip(widths[:-1], widths[1:]))
        side = image_hw // 2 ** len(channels)
        self.feature_shape = (channels[-1], side, side)
        features = channels[-1] * side * side
        dense = [features, *hidden]
        self.enc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dense[:-1], dense[1:]))
        self.fc_mu = nn.Linear(dense[-1], latent_dim)
        self.fc_logvar = nn.Linear(dense[-1], latent_dim)
        back = [latent_dim, *reversed(hidden), features]
        self.dec = nn.ModuleList(nn.Linear(a, b) for a, b in zip(back[:-1], back[1:]))
        up = list(reversed(widths))
        self.deconvs = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1)
                                     for a, b in zip(up[:-1], up[1:]))
        self.image_shape = (in_channels, image_hw, image_hw)

    def encode(self, x):
        h = x.view(-1, *self.image_shape)
        for conv in self.convs:
            h = F.relu(conv(h))
        h = h.flatten(1)
        for layer in self.enc:
            h = F.relu(layer(h))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z):
        h = z
        for layer in self.dec:
            h = F.relu(layer(h))
        h = h.view(-1, *self.feature_shape)
        for i, deconv in enumerate(self.deconvs):
            h = deconv(h)
            if i < len(self.deconvs) - 1:
                h = F.relu(h)
        return h.flatten(1)  # logits

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def conv_loss(model: TorchConvVAE, x):
    """BCE(sum) on the logits + KLD, as the reference loss."""
    logits, mu, logvar = model(x)
    bce = F.binary_cross_entropy_with_logits(logits, x.view(logits.shape), reduction="sum")
    return bce + gaussian_kl(mu, logvar)


class FlaxGRU(nn.Module):
    """One GRU layer (one or both directions) with flax.linen.GRUCell's parameters."""

    def __init__(self, input_size: int, hidden_size: int, bidirectional: bool = False):
        super().__init__()
        self.hidden_size, self.bidirectional = hidden_size, bidirectional
        h = hidden_size
        bound = 1.0 / math.sqrt(h)  # nn.GRU's initialization
        self.directions = nn.ParameterList()
        for _ in range(2 if bidirectional else 1):
            for shape in ((3 * h, input_size), (3 * h, h), (3 * h,), (h,)):  # w_ih w_hh b_ih b_hn
                self.directions.append(nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def flat_weights(self):
        """[w_ih, w_hh, b_ih, b_hh] per direction, b_hh = [0 (r), 0 (z), b_hn]."""
        out, p = [], list(self.directions)
        for d in range(0, len(p), 4):
            w_ih, w_hh, b_ih, b_hn = p[d:d + 4]
            out += [w_ih, w_hh, b_ih, torch.cat([b_hn.new_zeros(2 * self.hidden_size), b_hn])]
        return out

    def forward(self, x_BxLxD, h0_DxBxH, lengths=None):
        """(outputs, final states ``(directions, B, H)``); with ``lengths`` the rows are packed
        (each direction stops at / starts from the row's last real position)."""
        weights = self.flat_weights()
        if lengths is None:
            return torch.gru(x_BxLxD, h0_DxBxH, weights, True, 1, 0.0, self.training,
                             self.bidirectional, True)
        packed = nn.utils.rnn.pack_padded_sequence(x_BxLxD, lengths, batch_first=True,
                                                   enforce_sorted=False)
        h0 = h0_DxBxH.index_select(1, packed.sorted_indices)
        out, h_n = torch.gru(packed.data, packed.batch_sizes, h0, weights, True, 1, 0.0,
                             self.training, self.bidirectional)
        return out, h_n.index_select(1, packed.unsorted_indices)


class TorchSequenceVAE(nn.Module):
    """jaxvae's SequenceVAE: embedding, biGRU encoder over the real tokens -> (mu, logvar);
    h_0 = tanh(W z + b); a teacher-forced GRU decoder on [embed(x_{t-1}), z]; logits H -> V."""

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden_dim: int = 256,
                 latent_dim: int = 32):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.encoder = FlaxGRU(embed_dim, hidden_dim, bidirectional=True)
        self.fc_mu = nn.Linear(2 * hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(2 * hidden_dim, latent_dim)
        self.z_to_hidden = nn.Linear(latent_dim, hidden_dim)
        self.decoder = FlaxGRU(embed_dim + latent_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def encode(self, tokens_BxL):
        lengths = (tokens_BxL != PAD_ID).sum(1).cpu()
        h0 = tokens_BxL.new_zeros((2, len(tokens_BxL), self.hidden_dim), dtype=torch.float32)
        _, h_n = self.encoder(self.embed(tokens_BxL), h0, lengths)
        h = torch.cat([h_n[0], h_n[1]], dim=-1)
        return self.fc_mu(h), self.fc_logvar(h)

    def logits(self, z_BxZ, tokens_BxL):
        """Teacher-forced logits ``(B, L, V)``: the decoder reads [BOS, tokens[:, :-1]]."""
        bos = torch.full_like(tokens_BxL[:, :1], BOS_ID)
        inputs = torch.cat([bos, tokens_BxL[:, :-1]], dim=1)
        length = tokens_BxL.shape[1]
        x = torch.cat([self.embed(inputs), z_BxZ[:, None].expand(-1, length, -1)], dim=-1)
        h0 = torch.tanh(self.z_to_hidden(z_BxZ))[None]
        out, _ = self.decoder(x, h0)
        return self.out(out)

    def forward(self, tokens_BxL):
        mu, logvar = self.encode(tokens_BxL)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.logits(z, tokens_BxL), mu, logvar


def sequence_loss(model: TorchSequenceVAE, tokens_BxL):
    """Cross entropy summed over the real tokens (EOS included, PAD not) + KLD, batch summed."""
    logits, mu, logvar = model(tokens_BxL)
    nll = F.cross_entropy(logits.flatten(0, 1), tokens_BxL.flatten(), reduction="none")
    return torch.sum(nll * (tokens_BxL.flatten() != PAD_ID)) + gaussian_kl(mu, logvar)
