"""A convolutional VAE for images: 28x28x1 (MNIST), 32x32x3 (CIFAR-10), or any HxWxC.

The encoder is a stack of stride-2 4x4 convolutions (each halves the height and width) with
ReLUs, then dense ReLU layers and the Gaussian heads; the decoder mirrors it with stride-2
transposed convolutions. The model implements the model interface of ``jaxvae.models.interface``
(``encode(x) -> (mean_BxZ, logvar_BxZ)``, ``decode(z) -> out``, ``latent_dim``, ``data_shape``,
the standard-normal prior), so the objectives, evaluation and latent views work unchanged.

Inside the encoder and the decoder the feature maps are laid out batch-last, (C, H, W, B): every
matrix product of a layer, forward and backward, then has its long dimension (pixels times
batch) last in both operands, the form XLA's CPU backend runs at its GEMM rate. In the
batch-first layout the kernel gradient contracts the leading dimension of both operands, which
XLA runs in Eigen at a third of that rate (docs/benchmarks.md). On their own the layers
(``StridedConv``, ``StridedConvTranspose``) also take (B, H, W, C) maps.

Flat data is accepted: examples of shape (784,) are read as 28x28x1 images, (3072,) as
32x32x3, in general (s*s,) as s x s x 1 and (3*s*s,) as s x s x 3 (see ``image_shape_for``);
the decoder's outputs always have the data's own shape.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
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


class StridedConv(nn.Module):
    """A 4x4 stride-2 "SAME" convolution, computed as space-to-depth plus one matrix product.

    The same function, parameters (``kernel`` (4, 4, C, F), ``bias`` (F,)) and initializers
    as ``nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME")``, for even H and W:

        y[i, j] = bias + sum_{p, q < 4} x_pad[2i + p, 2j + q] @ kernel[p, q]

    with x_pad the input padded by one zero pixel on each side. With p = 2a + r and q = 2c + s
    (a, c, r, s in {0, 1}) the window of output (i, j) is the 2x2 blocks (i + a, j + c) of
    x_pad cut into 2x2 blocks (space-to-depth): the layer is one (F, 16 C) x (16 C, H/2 W/2 B)
    product (``_strided_conv``). XLA's CPU backend runs matrix products and their gradients at
    its GEMM rate, also inside ``lax.scan``; its convolutions with stride 2 ran several times
    slower in a jitted step and 10-20x slower inside a scan (see docs/benchmarks.md).

    ``(B, H, W, C) -> (B, H / 2, W / 2, features)``; with ``batch_last``,
    ``(C, H, W, B) -> (features, H / 2, W / 2, B)``, the layout the products are computed in
    (the batch-first form swaps the batch and channel axes around them).
    """

    features: int
    dtype: Any = None  # the precision policy's compute dtype (jaxvae.models.precision)
    batch_last: bool = False  # feature maps laid out (C, H, W, B) instead of (B, H, W, C)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x if self.batch_last else _swap_batch_and_channels(x)
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (4, 4, x.shape[0], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        y = _strided_conv(x, kernel, self.dtype) + bias.reshape(-1, 1, 1, 1)
        return y if self.batch_last else _swap_batch_and_channels(y)


class StridedConvTranspose(nn.Module):
    """A 4x4 stride-2 "SAME" transposed convolution, computed with matrix products.

    The same function, parameters (``kernel`` (4, 4, C, F), ``bias`` (F,)) and initializers
    as ``nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")`` (Flax's
    convention: the kernel is not flipped). That layer convolves the input dilated by zeros
    between pixels; equivalently every input pixel m adds x[m] @ kernel[k] to output pixel
    2m + 2 - k (per axis). So, per axis, output 2i + r (r in {0, 1}, the phase) receives the
    taps k = 2a + r (a in {0, 1}) of input pixel i - 1 + a + r:

        y[2i + r, 2j + s] = bias + sum_{a, c} x[i-1+a+r, j-1+c+s] @ kernel[2a + r, 2c + s]

    Two ways to compute it, chosen by the number of outputs F:

    * F >= ``PHASE_MIN_FEATURES``: output phase (r, s) reads the 2x2 patch of the padded input
      at position (i + r, j + s), so every phase uses the same (H + 1) x (W + 1) patches. One
      (4 F, 4 C) x (4 C, (H+1) (W+1) B) product gives every patch's contribution to all four
      phases, which interleaved (depth-to-space) and cropped by one pixel are the output
      (``_transposed_by_phases``). This does (H+1)(W+1) / (H W) of the minimal FLOPs (1.31x at
      7x7) but reads the input's patches once and makes one wide product instead of four
      narrow ones: 1.5x faster than four per-phase products, forward and backward, in a
      ``lax.scan`` at 7x7x64 -> 14x14x32, batch 128;
    * fewer outputs (the image layer: 1 or 3 channels), where that product would be a thin
      one: all x[m] @ kernel[k] as one (16 F, C) x (C, H W B) product, then the sums as
      shifted slices of it added along the rows, then the columns (overlap-add, or col2im:
      ``_transposed_by_col2im``).

    Why not ``lax.conv_transpose``: on XLA's CPU backend its weight gradient alone took about
    8x as long as the whole layer in PyTorch, and more inside ``lax.scan`` (see
    docs/benchmarks.md).

    ``(B, H, W, C) -> (B, 2H, 2W, features)``; with ``batch_last``,
    ``(C, H, W, B) -> (features, 2H, 2W, B)``, the layout the products are computed in.
    """

    features: int
    dtype: Any = None  # the precision policy's compute dtype (jaxvae.models.precision)
    batch_last: bool = False  # feature maps laid out (C, H, W, B) instead of (B, H, W, C)

    # Measured on a 2-core AVX-512 CPU, forward and backward inside lax.scan: shared patches
    # 1.2-1.8x faster than col2im at F >= 16, about even at F = 4 to 8; col2im 2x faster at F = 1.
    PHASE_MIN_FEATURES = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x if self.batch_last else _swap_batch_and_channels(x)
        f = self.features
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, x.shape[0], f))
        bias = self.param("bias", nn.initializers.zeros_init(), (f,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        by_phases = f >= self.PHASE_MIN_FEATURES
        y = (_transposed_by_phases if by_phases else _transposed_by_col2im)(x, kernel, self.dtype)
        y = y + bias.reshape(-1, 1, 1, 1)
        return y if self.batch_last else _swap_batch_and_channels(y)


def _strided_conv(x_CxHxWxB: jax.Array, kernel: jax.Array, dtype: Any = None) -> jax.Array:
    """``StridedConv`` (no bias) on (C, H, W, B) maps: (F, 16 C) x (16 C, H/2 W/2 B).

    The patches' rows are (a, c, r, s, C), the kernel's (p, q, C) = (2a + r, 2c + s, C) to
    match; their columns (i, j, B) hold output pixel (i, j) of every example, so building them
    copies runs of B contiguous values. Forward, input gradient and kernel gradient are then
    products whose operands both have the (H/2 W/2 B)-long dimension last or are the small
    kernel. Under the bfloat16 policy: ``_strided_conv_low``.
    """
    if precision.is_low(dtype):
        return _strided_conv_low(x_CxHxWxB, kernel, jnp.dtype(dtype))
    c, h, w, b = x_CxHxWxB.shape
    f = kernel.shape[-1]
    patches = _patches_to_rows(_patches(x_CxHxWxB)).reshape(16 * c, h // 2 * (w // 2) * b)
    return (_kernel_matrix(kernel).T @ patches).reshape(f, h // 2, w // 2, b)


_TO_ROWS = (0, 3, 5, 1, 2, 4, 6)  # (a, c, C, i, r, j, s, B) -> (a, c, r, s, C, i, j, B)


def _patches(x_CxHxWxB: jax.Array) -> jax.Array:
    """The 2x2 blocks (i + a, j + c) of the padded input, as (a, c, C, i, r, j, s, B)."""
    c, h, w, b = x_CxHxWxB.shape
    ho, wo = h // 2, w // 2
    x_pad = jnp.pad(x_CxHxWxB, ((0, 0), (1, 1), (1, 1), (0, 0)))
    blocks = x_pad.reshape(c, ho + 1, 2, wo + 1, 2, b)  # (C, i, r, j, s, B)
    return jnp.stack([blocks[:, a:a + ho, :, c_:c_ + wo] for a in (0, 1) for c_ in (0, 1)])


@jax.custom_vjp
def _patches_to_rows(patches: jax.Array) -> jax.Array:
    """``patches.transpose(_TO_ROWS)``: forward a transpose of its own (``_transpose_alone``),
    backward a plain one.

    Forward, XLA fused the reordering with the slices and the concatenation that build the
    patches into one loop that took 10 ms for conv_1 at batch 512 (a copy of its own: 2 ms);
    backward, it fuses the plain transpose into the sum of the overlapping patches' gradients
    well. Measured in one process: 1-2 % off the float32 step at batches 128 and 512.
    """
    return _transpose_alone(patches, _TO_ROWS)


def _patches_to_rows_fwd(patches):
    return _transpose_alone(patches, _TO_ROWS), None


def _patches_to_rows_bwd(_, g):
    return (g.transpose(np.argsort(_TO_ROWS)),)


_patches_to_rows.defvjp(_patches_to_rows_fwd, _patches_to_rows_bwd)


def _kernel_matrix(kernel: jax.Array) -> jax.Array:
    """(4, 4, C, F) -> (16 C, F), rows (a, c, r, s, C) for tap (p, q) = (2a + r, 2c + s)."""
    c, f = kernel.shape[2:]
    return kernel.reshape(2, 2, 2, 2, c, f).transpose(0, 2, 1, 3, 4, 5).reshape(16 * c, f)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _strided_conv_low(x_CxHxWxB: jax.Array, kernel: jax.Array, dtype: Any) -> jax.Array:
    """``_strided_conv`` on ``dtype`` (bfloat16) inputs with float32 accumulation and result.

    Forward: the patches are rounded before their reordering, which is compiled on its own
    (``_patches_to_rows``), and the product reads a row-major (F, 16 C) copy of the kernel
    (``precision.transposed_copy``): from ``kernel.T`` XLA makes a product that contracts the
    kernel's leading axis, and its CPU backend converts such a product's inputs, the patch matrix
    among them, back to float32. Backward: the kernel's gradient is dY (F, N) times the stored
    patches' transpose; the input's is the transposed convolution of dY with the kernel flipped
    and its channels swapped, dx[n] = sum_i dY[i] K[n + 1 - 2i]^T, computed as
    ``_transposed_by_phases``: one (4 C, 4 F) x (4 F, (H/2 + 1)(W/2 + 1) B) product, where the
    gradient of the patches is a (16 C, F) x (F, H/2 W/2 B) product, a contraction over only F,
    whose result, 4x the input's size, must then be summed back (conv_1 of the conv VAE at batch
    128: 1.6 against 2.3 ms). Both gradients are float32 sums of bfloat16 products.
    """
    return _strided_conv_low_fwd(x_CxHxWxB, kernel, dtype)[0]


def _strided_conv_low_fwd(x_CxHxWxB, kernel, dtype):
    c, h, w, b = x_CxHxWxB.shape
    f = kernel.shape[-1]
    patches = _patches_to_rows(_patches(x_CxHxWxB).astype(dtype))
    patches = patches.reshape(16 * c, h // 2 * (w // 2) * b)
    kernel_FxK = precision.transposed_copy(_kernel_matrix(kernel)).astype(dtype)
    y = jax.lax.dot_general(kernel_FxK, patches, (((1,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32)
    return y.reshape(f, h // 2, w // 2, b), (patches, kernel, jnp.zeros((), x_CxHxWxB.dtype))


def _strided_conv_low_bwd(dtype, residuals, g_FxHoxWoxB):
    patches, kernel, x_zero = residuals  # x_zero: the input's dtype
    c, f = kernel.shape[2:]
    g_lo = g_FxHoxWoxB.astype(dtype)
    dkernel_FxK = jax.lax.dot_general(g_lo.reshape(f, -1), patches, (((1,), (1,)), ((), ())),
                                      preferred_element_type=jnp.float32)
    dkernel = dkernel_FxK.T.reshape(2, 2, 2, 2, c, f).transpose(0, 2, 1, 3, 4, 5)
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # K'[k] = K[3 - k]^T: (4, 4, F, C)
    dx = _transposed_by_phases(g_lo, flipped, dtype)
    return dx.astype(x_zero.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


_strided_conv_low.defvjp(_strided_conv_low_fwd, _strided_conv_low_bwd)


def _transposed_by_phases(x_CxHxWxB: jax.Array, kernel: jax.Array, dtype: Any = None
                          ) -> jax.Array:
    """Sub-pixel form of ``StridedConvTranspose`` (no bias) on (C, H, W, B) maps: one
    (4 F, 4 C) x (4 C, (H+1) (W+1) B) product for all four phases.

    With x_pad[m + 1] = x[m], phase (r, s) of output (i, j) is
    ``sum_{a, c} x_pad[i + r + a, j + s + c] @ kernel[2a + r, 2c + s]``: the 2x2 patch of x_pad
    at (p, q) = (i + r, j + s) times the phase's (4 C, F) block of the kernel. The product gives
    every patch (p, q) all four blocks, in the order (1 - r, 1 - s); interleaved as pixel
    (2p + 1 - r, 2q + 1 - s) of a (2H + 2) x (2W + 2) image, output (2i + r, 2j + s) is its pixel
    (2i + r + 1, 2j + s + 1): the output is that image without its border, one pixel wide.
    """
    c, h, w, b = x_CxHxWxB.shape
    f = kernel.shape[-1]
    x_pad = jnp.pad(x_CxHxWxB, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # patches[(a, c, C), (p, q, B)] = the 2x2 patch of x_pad at (p, q), p <= H, q <= W.
    patches = jnp.stack([x_pad[:, a:a + h + 1, c_:c_ + w + 1] for a in (0, 1) for c_ in (0, 1)])
    patches = patches.reshape(4 * c, (h + 1) * (w + 1) * b)
    # kernel[2a + r, 2c + s, C, F] -> rows (1 - r, 1 - s, F), columns (a, c, C).
    kernel = kernel.reshape(2, 2, 2, 2, c, f)[:, ::-1, :, ::-1]
    kernel = kernel.transpose(1, 3, 5, 0, 2, 4).reshape(4 * f, 4 * c)
    # (1-r, 1-s, F, p, q, B)
    y = precision.product(kernel, patches, dtype).reshape(2, 2, f, h + 1, w + 1, b)
    y = y.transpose(2, 3, 0, 4, 1, 5).reshape(f, 2 * h + 2, 2 * w + 2, b)
    return y[:, 1:2 * h + 1, 1:2 * w + 1]


def _transposed_by_col2im(x_CxHxWxB: jax.Array, kernel: jax.Array, dtype: Any = None
                          ) -> jax.Array:
    """Overlap-add form of ``StridedConvTranspose`` (no bias) on (C, H, W, B) maps: one
    (16 F, C) x (C, H W B) product, then shifted sums."""
    c, h, w, b = x_CxHxWxB.shape
    f = kernel.shape[-1]
    # cols[a, r, c, s, F, m, n, B] = (x[m, n] @ kernel[2a + r, 2c + s])[F]
    cols = precision.product(kernel.transpose(0, 1, 3, 2).reshape(16 * f, c),
                   x_CxHxWxB.reshape(c, h * w * b), dtype)
    cols = cols.reshape(2, 2, 2, 2, f, h, w, b)
    # Overlap-add along the rows, then the columns; padded so that index m + 1 holds input
    # pixel m. Row 2i + r sums taps a = 0, 1 of input rows i - 1 + a + r.
    cols = jnp.pad(cols, ((0, 0),) * 5 + ((1, 1), (0, 0), (0, 0)))
    rows = jnp.stack([cols[0, r, :, :, :, r:r + h] + cols[1, r, :, :, :, r + 1:r + 1 + h]
                      for r in (0, 1)], axis=4)  # (c, s, F, H, 2, W, B): rows 2i + r
    rows = jnp.pad(rows.reshape(2, 2, f, 2 * h, w, b), ((0, 0),) * 4 + ((1, 1), (0, 0)))
    y = jnp.stack([rows[0, s, :, :, s:s + w] + rows[1, s, :, :, s + 1:s + 1 + w]
                   for s in (0, 1)], axis=3)  # (F, 2H, W, 2, B): columns 2j + s
    return y.reshape(f, 2 * h, 2 * w, b)


def _transpose_alone(x: jax.Array, axes: Sequence[int]) -> jax.Array:
    """``x.transpose(axes)``, compiled as an XLA operation of its own.

    XLA's CPU backend fuses a transpose with the elementwise operations around it (a ReLU, its
    mask, the sum of a transposed convolution's four phases), and a fused transpose reads its
    input element by element across the other layout: 18 ms for the conv VAE's (64, 7, 7, 512)
    decoder input in a training step, where the transpose alone takes 0.3 ms. The branches of a
    conditional are compiled as computations of their own, so nothing is fused into a transpose
    inside one. Both branches are the transpose, so the predicate (whether the first element is
    NaN) never changes the result.
    """
    permute = lambda a: a.transpose(axes)  # noqa: E731
    return jax.lax.cond(jnp.isnan(x.reshape(-1)[0]), permute, permute, x)


_SWAP = (3, 1, 2, 0)  # (B, H, W, C) <-> (C, H, W, B)


@jax.custom_vjp
def _swap_batch_and_channels(x: jax.Array) -> jax.Array:
    """(B, H, W, C) <-> (C, H, W, B); in both passes a transpose of its own
    (``_transpose_alone``; with the swaps fused, the conv VAE's training step at batch 512 took
    8-10 % longer)."""
    return _transpose_alone(x, _SWAP)


def _swap_fwd(x):
    return _transpose_alone(x, _SWAP), None


def _swap_bwd(_, g):
    return (_transpose_alone(g, _SWAP),)


_swap_batch_and_channels.defvjp(_swap_fwd, _swap_bwd)


class ConvEncoder(nn.Module):
    """Images -> features: stride-2 4x4 convolutions + ReLU, one per entry of ``channels``.

    ``(B, H, W, C) -> (B, H / 2**n, W / 2**n, channels[-1])``.
    """

    channels: Sequence[int] = (32, 64)
    dtype: Any = None  # the convolutions' compute dtype (jaxvae.models.precision)

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        layers = [StridedConv(features, dtype=self.dtype, batch_last=True, name=f"conv_{i}")
                  for i, features in enumerate(self.channels)]
        # batch-last between the layers (the module docstring), unless a layer is another kind
        batch_last = all(getattr(layer, "batch_last", False) for layer in layers)
        h = _swap_batch_and_channels(x_BxHxWxC) if batch_last else x_BxHxWxC
        for layer in layers:
            h = nn.relu(layer(h))
        return _swap_batch_and_channels(h) if batch_last else h


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
        layers = [StridedConvTranspose(features, dtype=self.dtype, batch_last=True,
                                       name=f"deconv_{i}")
                  for i, features in enumerate(outs)]
        batch_last = all(getattr(layer, "batch_last", False) for layer in layers)
        h = _swap_batch_and_channels(h) if batch_last else h
        for i, layer in enumerate(layers):
            h = layer(h)
            if i < len(layers) - 1:
                h = nn.relu(h)
        return _swap_batch_and_channels(h) if batch_last else h


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
