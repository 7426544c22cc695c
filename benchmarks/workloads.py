"""The models the benchmark trains: jaxvae's model, its loss, its data, its layers (FLOPs and
bytes) and the PyTorch equivalent with the same number of parameters.

    reference  jaxvae.reference_vae() (784-400-20) vs pytorch/examples' VAE
    wide       jaxvae.mlp_vae((1024, 1024), 64) vs the same formulas in torch
    conv       jaxvae.conv_vae((32, 64), (400,), 20) on 28x28x1 (what ``--model conv`` builds):
               two stride-2 4x4 convolutions, dense 400, latent 20, 2.6 M parameters
    sequence   jaxvae.models.sequence.SequenceVAE of the SMILES experiment (experiments/
               molecules.py: embed 32, biGRU 256, latent 64) over a 28-token vocabulary,
               rows of 53 tokens: 806 k parameters; synthetic token rows (see ``token_rows``)

Each ``Workload`` builds both models; ``check_parameter_counts`` (called by the harness before
timing, and by the tests) makes sure the two frameworks train the same number of parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from benchmarks import harness

# The sequence benchmark: the sizes of experiments/molecules.py and a SMILES-sized vocabulary
# (24 characters + PAD, BOS, EOS, UNK) and row length.
SEQUENCE_VOCAB = 28
SEQUENCE_EMBED, SEQUENCE_HIDDEN, SEQUENCE_LATENT = 32, 256, 64
SEQUENCE_LENGTH = 53


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark model in both frameworks."""

    name: str
    kind: str  # "mlp" | "conv" | "sequence"
    hidden: tuple[int, ...] = ()  # mlp / conv: dense widths
    latent_dim: int = 20
    channels: tuple[int, ...] = ()  # conv: widths of the stride-2 convolutions
    length: int = SEQUENCE_LENGTH  # sequence: tokens per row

    # ----------------------------------------------------------------- jaxvae
    def jax_model(self, precision_name: str = "float32"):
        """The jaxvae model, in the precision policy ``precision_name`` (float32, bfloat16)."""
        import jaxvae
        from jaxvae.models import sequence
        if self.kind == "mlp":
            return jaxvae.mlp_vae(self.hidden, self.latent_dim, (784,),
                                  precision_name=precision_name)
        if self.kind == "conv":
            return jaxvae.conv_vae(self.channels, self.hidden, self.latent_dim, (784,),
                                   precision_name=precision_name)
        return sequence.sequence_vae(SEQUENCE_VOCAB, SEQUENCE_EMBED, SEQUENCE_HIDDEN,
                                     self.latent_dim, precision_name=precision_name)

    def jax_loss_fn(self, model, axis_name: str | None = None) -> Callable:
        """``loss_fn(params, x, key, step)``: the negative ELBO (beta 1), no annealing or dropout.

        ``axis_name``: each device of a pmap draws its rows of the global noise (the image
        models; the sequence loss draws its noise per device, which costs the same).
        """
        import jaxvae
        from jaxvae.objectives import losses
        if self.kind == "sequence":
            return losses.make_sequence_loss(model, 1.0, 0, 0.0)
        return jaxvae.training.step.vae_loss_fn(model, axis_name=axis_name)

    # ------------------------------------------------------------------ torch
    def torch_model(self):
        from benchmarks import torch_methods, torch_models
        if self.kind == "mlp":
            return torch_methods.make_model(self.hidden, self.latent_dim)
        if self.kind == "conv":
            return torch_models.TorchConvVAE(self.channels, self.hidden, self.latent_dim)
        return torch_models.TorchSequenceVAE(SEQUENCE_VOCAB, SEQUENCE_EMBED, SEQUENCE_HIDDEN,
                                             self.latent_dim)

    def torch_loss(self, model, xb, autocast_dtype=None):
        """The same negative ELBO in torch, summed over the batch (the reference's reduction).

        ``autocast_dtype`` (``torch.bfloat16``): the model's forward pass runs under
        ``torch.autocast`` to that dtype and its outputs return to float32, so the loss is
        computed in float32 as jaxvae's bfloat16 policy does (and as autocast requires on CUDA,
        where it refuses ``binary_cross_entropy``).
        """
        from benchmarks import torch_models, torch_reference
        if autocast_dtype is not None:
            model = _autocast_forward(model, xb.device.type, autocast_dtype)
        if self.kind == "mlp":
            recon, mu, logvar = model(xb)
            return torch_reference.loss_function(recon, xb, mu, logvar)
        if self.kind == "conv":
            return torch_models.conv_loss(model, xb)
        return torch_models.sequence_loss(model, xb)

    # ------------------------------------------------------------------- data
    def train_data(self, x_train: np.ndarray, n: int) -> np.ndarray:
        """n training examples: mnist5k images (tiled) or synthetic token rows."""
        if self.kind == "sequence":
            return token_rows(n, self.length, SEQUENCE_VOCAB)
        return tiled(x_train, n)

    # ------------------------------------------------- FLOPs, bytes, parameters
    def layers(self) -> list[harness.Layer]:
        if self.kind == "mlp":
            return harness.mlp_vae_layers(784, self.hidden, self.latent_dim)
        if self.kind == "conv":
            return harness.conv_vae_layers((28, 28, 1), self.channels, self.hidden,
                                           self.latent_dim)
        return harness.sequence_vae_layers(SEQUENCE_VOCAB, SEQUENCE_EMBED, SEQUENCE_HIDDEN,
                                           self.latent_dim, self.length,
                                           mean_tokens(self.length))

    def flops_per_sample(self) -> float:
        return harness.train_flops(self.layers())

    def input_elements(self) -> int:
        return self.length if self.kind == "sequence" else 784

    def byte_counts(self, num_params: int) -> harness.ByteCounts:
        return harness.train_bytes(num_params, self.layers(), self.input_elements())


def _autocast_forward(model, device_type: str, dtype) -> Callable:
    """``model``'s forward under ``torch.autocast(device_type, dtype)``, outputs in float32."""
    import torch

    def forward(x):
        with torch.autocast(device_type=device_type, dtype=dtype):
            outputs = model(x)
        return tuple(o.float() for o in outputs)

    return forward


WORKLOADS = {
    "reference": Workload("reference", "mlp", hidden=(400,), latent_dim=20),
    "wide": Workload("wide", "mlp", hidden=(1024, 1024), latent_dim=64),
    "conv": Workload("conv", "conv", hidden=(400,), latent_dim=20, channels=(32, 64)),
    "sequence": Workload("sequence", "sequence", latent_dim=SEQUENCE_LATENT),
}


def tiled(x: np.ndarray, n: int) -> np.ndarray:
    """The first n rows of x repeated as often as needed."""
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n]) if reps > 1 else x[:n]


def token_rows(n: int, length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """n rows of int32 token ids as ``Vocabulary.encode_batch`` writes them: real tokens, EOS,
    then PAD. The tokens per row (EOS included) are uniform in [length // 2, length], about
    what SMILES strings padded to the longest one look like; the ids are uniform over the
    non-special tokens. Seeded: the same rows every run.
    """
    from jaxvae.data.vocab import EOS_ID, PAD_ID, UNK_ID
    rng = np.random.default_rng(seed)
    rows = rng.integers(UNK_ID + 1, vocab_size, size=(n, length), dtype=np.int32)
    tokens = rng.integers(length // 2, length + 1, size=n)
    pos = np.arange(length)[None, :]
    rows[pos == tokens[:, None] - 1] = EOS_ID
    rows[pos >= tokens[:, None]] = PAD_ID
    return rows


def mean_tokens(length: int) -> float:
    """The expected tokens per row of ``token_rows`` (EOS included)."""
    return (length // 2 + length) / 2.0


def jax_param_count(params) -> int:
    import jax
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def torch_param_count(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def check_parameter_counts(workload: Workload, jax_params, torch_module) -> int:
    """The common parameter count, or a RuntimeError when the two models differ."""
    jax_count, torch_count = jax_param_count(jax_params), torch_param_count(torch_module)
    if jax_count != torch_count:
        raise RuntimeError(f"the {workload.name} model has {jax_count:,} parameters in jaxvae "
                           f"but {torch_count:,} in its torch equivalent: the comparison would "
                           "not be fair; fix benchmarks/torch_models.py")
    return jax_count
