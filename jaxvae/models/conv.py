"""A convolutional VAE for images: 28x28x1 (MNIST), 32x32x3 (CIFAR-10), or any HxWxC.

The encoder is a stack of stride-2 4x4 convolutions (each halves the height and width) with
ReLUs, then dense ReLU layers and the Gaussian heads; the decoder mirrors it with stride-2
transposed convolutions. The model implements the model interface of ``jaxvae.models.interface``
(``encode(x) -> (mean_BxZ, logvar_BxZ)``, ``decode(z) -> out``, ``latent_dim``, ``data_shape``,
the standard-normal prior), so the objectives, evaluation and latent views work unchanged.

Flat data is accepted: examples of shape (784,) are read as 28x28x1 images, (3072,) as
32x32x3, in general (s*s,) as s x s x 1 and (3*s*s,) as s x s x 3 (see ``image_shape_for``);
the decoder's outputs always have the data's own shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxvae import likelihoods
from jaxvae.models import interface
from jaxvae.models import mlp as models
from jaxvae.models import precision


def image_shape_for(data_shape: Sequence[int]) -> tuple[int, int, int]:
    """The (H, W, C) image an example of ``data_shape`` is read as.

    (H, W, C) stays as it is; (H, W) is one grey channel; a flat (D,) is a square grey image
    when D is a square (784 -> 28x28x1), else a square RGB image when D / 3 is (3072 -> 32x32x3).

    Raises:
      ValueError: a shape that is none of these.
    """
    shape = tuple(int(d) for d in data_shape)
    if len(shape) == 3:
        return shape
    if len(shape) == 2:
        return shape + (1,)
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side == shape[0]:
            return (side, side, 1)
        if shape[0] % 3 == 0:
            side = math.isqrt(shape[0] // 3)
            if 3 * side * side == shape[0]:
                return (side, side, 3)
    raise ValueError(f"a convolutional model needs images: examples of shape (H, W, C), (H, W), "
                     f"or flat (s*s,) / (3*s*s,) for square images; got {shape}")


def check_conv_shape(image_shape: tuple[int, int, int], num_downsamplings: int) -> None:
    """Raises ValueError unless H and W are divisible by 2**num_downsamplings."""
    factor = 2 ** num_downsamplings
    h, w, _ = image_shape
    if h % factor or w % factor:
        raise ValueError(f"{num_downsamplings} stride-2 convolutions need the image height and "
                         f"width divisible by {factor}, got {h}x{w}; use fewer conv channels "
                         f"(--conv-channels) or pad the images")


class ConvEncoder(nn.Module):
    """Images -> features: stride-2 4x4 convolutions + ReLU, one per entry of ``channels``.

    ``(B, H, W, C) -> (B, H / 2**n, W / 2**n, channels[-1])``.
    """

    channels: Sequence[int] = (32, 64)
    dtype: Any = None  # the convolutions' compute dtype (jaxvae.models.precision)

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        h = x_BxHxWxC
        for i, features in enumerate(self.channels):
            h = nn.relu(nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME",
                                name=f"conv_{i}", **precision.conv_kwargs(self.dtype))(h))
        return h


class ConvDecoder(nn.Module):
    """Features -> images: stride-2 4x4 transposed convolutions; the last has no ReLU.

    ``(B, h, w, channels[0]) -> (B, h * 2**n, w * 2**n, out_channels)`` with
    n = len(channels); layer i has ``channels[i + 1]`` outputs and the last ``out_channels``.
    """

    channels: Sequence[int] = (64, 32)
    out_channels: int = 1
    dtype: Any = None  # the convolutions' compute dtype (jaxvae.models.precision)

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        outs = list(self.channels[1:]) + [self.out_channels]
        for i, features in enumerate(outs):
            h = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME",
                                 name=f"deconv_{i}",
                                 **precision.conv_kwargs(self.dtype, transpose=True))(h)
            if i < len(outs) - 1:
                h = nn.relu(h)
        return h


class ConvVAE(interface.LatentVariableModel):
    """A Gaussian-latent VAE with a convolutional encoder and decoder.

    encode: x -> image (H, W, C) -> ConvEncoder -> flatten -> dense ReLU ``hidden`` ->
    (mean_BxZ, logvar_BxZ). decode: z -> dense ReLU ``reversed(hidden)`` -> dense to the
    (H / 2**n, W / 2**n, channels[-1]) feature map -> ConvDecoder -> (B, *data_shape), the
    parameters of p(x | z) (Bernoulli logits or Gaussian means, one per pixel and channel).

    Attributes:
      channels: conv widths, one stride-2 layer each (the decoder mirrors them).
      hidden: dense widths between the conv features and the latent (may be empty).
      latent_dim: Z.
      data_shape: the shape of one example, image-shaped or flat (see ``image_shape_for``).
      likelihood: p(x | z), a one-output name from ``jaxvae.likelihoods.LIKELIHOODS``.
      dtype: the compute dtype of the products and convolutions (``jaxvae.models.precision``).
    """

    channels: Sequence[int] = (32, 64)
    hidden: Sequence[int] = (256,)
    latent_dim: int = 20
    data_shape: tuple[int, ...] = (784,)
    likelihood: str = "bernoulli"
    dtype: Any = None

    def setup(self):
        self.image_shape = image_shape_for(self.data_shape)
        h, w, c = self.image_shape
        factor = 2 ** len(self.channels)
        self.feature_shape = (h // factor, w // factor, self.channels[-1])
        dense = precision.dense_kwargs(self.dtype)
        self.conv_encoder = ConvEncoder(tuple(self.channels), self.dtype)
        self.encoder_mlp = models.MLP(tuple(self.hidden), torch_init=False, dtype=self.dtype)
        self.mean_head = nn.Dense(self.latent_dim, **dense)
        self.logvar_head = nn.Dense(self.latent_dim, **dense)
        self.decoder_mlp = models.MLP(tuple(reversed(self.hidden)), torch_init=False,
                                      dtype=self.dtype)
        self.to_features = nn.Dense(int(np.prod(self.feature_shape)), **dense)
        self.conv_decoder = ConvDecoder(tuple(reversed(self.channels)), c, self.dtype)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x_BxHxWxC = x.reshape((x.shape[0],) + self.image_shape)
        h_BxF = self.conv_encoder(x_BxHxWxC).reshape(x.shape[0], -1)
        h_BxH = self.encoder_mlp(h_BxF)
        return self.mean_head(h_BxH), self.logvar_head(h_BxH)

    def decode(self, z_BxZ: jax.Array) -> jax.Array:
        h = nn.relu(self.to_features(self.decoder_mlp(z_BxZ)))
        out_BxHxWxC = self.conv_decoder(h.reshape((z_BxZ.shape[0],) + self.feature_shape))
        return out_BxHxWxC.reshape((z_BxZ.shape[0],) + tuple(self.data_shape))

    def __call__(self, x: jax.Array) -> jax.Array:
        mean_BxZ, _ = self.encode(x)
        return self.decode(mean_BxZ)


def _check_widths(name: str, widths: tuple, allow_empty: bool = False) -> None:
    if (not widths and not allow_empty) or any(
            isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1 for w in widths):
        raise ValueError(f"{name} must be {'' if allow_empty else 'a non-empty list of '}"
                         f"positive ints, got {widths}")


def conv_vae(channels: Sequence[int] = (32, 64), hidden: Sequence[int] = (256,),
             latent_dim: int = 20, data_shape: Sequence[int] = (784,),
             likelihood: str = "bernoulli", precision_name: str = "float32") -> ConvVAE:
    """A convolutional VAE for ``data_shape`` examples, validated before any work.

    Raises:
      ValueError: non-positive widths, a shape that is not an image, or an image size not
        divisible by 2**len(channels).
    """
    channels, hidden = tuple(channels), tuple(hidden)
    _check_widths("conv channels", channels)
    _check_widths("hidden sizes", hidden, allow_empty=True)
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, (int, np.integer)) \
            or latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
    data_shape = tuple(int(d) for d in data_shape)
    check_conv_shape(image_shape_for(data_shape), len(channels))
    check_one_output(likelihood, "the convolutional VAE")
    return ConvVAE(channels, hidden, int(latent_dim), data_shape, likelihood,
                   precision.compute_dtype(precision_name))


def check_one_output(likelihood: str, what: str) -> None:
    """Raises ValueError for an unknown likelihood or one with a learned scale (two outputs)."""
    likelihoods.check_likelihood(likelihood)
    if likelihoods.output_channels(likelihood) != 1:
        raise ValueError(f"{what} decodes one output per dimension: use the bernoulli or "
                         f"gaussian likelihood, not {likelihood!r}")
