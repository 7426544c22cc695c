"""The precision policy of the models: float32 everywhere, or bfloat16 matrix products.

    float32    every parameter, activation and product in float32 (the default).
    bfloat16   the inputs of every dense layer's matrix product and every convolution are
               rounded to bfloat16; the products accumulate and return float32. Parameters,
               optimizer state, activations between layers, likelihoods, KL terms and every
               reduction stay float32.

bfloat16 keeps float32's exponent range (no loss scaling needed) and 8 bits of mantissa; on
hardware with bfloat16 units (TPUs, recent GPUs, CPUs with AVX512_BF16 or AMX) a product of
bfloat16 inputs with float32 accumulation runs at a multiple of the float32 rate.

A model family takes the policy as a Flax ``dtype`` (``compute_dtype(name)``: None for float32, so
the float32 modules are exactly the unannotated ones) and hands it to its layers through
``dense_kwargs(dtype)`` / ``conv_kwargs(dtype)``, the keyword arguments of ``nn.Dense`` /
``nn.Conv`` / ``nn.ConvTranspose`` that apply it:

    dtype            the layer's compute dtype
    param_dtype      float32 (Flax's default, kept)
    promote_dtype    dense layers: ``keep_inputs_and_kernel``, inputs, kernel and bias stay
                     float32 and the product rounds its inputs itself, so the gradients of the
                     inputs and of the kernel come back float32 from its accumulation;
                     convolutions: ``promote_inputs_and_kernel``, inputs and kernel cast to
                     ``dtype``; the bias stays float32 in both, so the output is float32
    dot_general      ``matmul``: bfloat16 x bfloat16 -> float32 in the forward pass and in both
                     products of the backward pass (the incoming gradient is rounded to bfloat16,
                     as under torch.autocast)
    conv_general_dilated   ``lax.conv_general_dilated`` with ``preferred_element_type=float32``
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

PRECISIONS = ("float32", "bfloat16")  # the names of the policies (--precision)


def check_precision(name: str) -> str:
    """Raises ValueError unless ``name`` is one of ``PRECISIONS``."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {list(PRECISIONS)} "
                         "(bfloat16: matrix products and convolutions on bfloat16 inputs with "
                         "float32 accumulation; parameters and losses stay float32)")
    return name


def compute_dtype(name: str) -> Any:
    """The Flax ``dtype`` of the policy ``name``: None for float32, ``jnp.bfloat16`` for bfloat16."""
    return None if check_precision(name) == "float32" else jnp.bfloat16


def precision_name(dtype: Any) -> str:
    """The policy name of a compute dtype (the inverse of ``compute_dtype``)."""
    return "float32" if dtype is None or jnp.dtype(dtype) == jnp.float32 else "bfloat16"


def is_low(dtype: Any) -> bool:
    """Whether the compute dtype ``dtype`` is a low-precision one (not None, not float32)."""
    return dtype is not None and jnp.dtype(dtype) != jnp.float32


def promote_inputs_and_kernel(*arrays, dtype=None, inexact: bool = True):
    """Flax's ``promote_dtype`` for ``(inputs, kernel, bias)``: inputs and kernel cast to
    ``dtype``, the bias (and anything after it) left as it is (float32)."""
    del inexact
    inputs, kernel, *rest = arrays
    cast = (lambda a: a) if dtype is None else (lambda a: jnp.asarray(a, dtype))
    return (cast(inputs), cast(kernel), *rest)


_F32 = jnp.float32


def keep_inputs_and_kernel(*arrays, dtype=None, inexact: bool = True):
    """Flax's ``promote_dtype`` for a dense layer: ``(inputs, kernel, bias)`` left float32.

    The layer's product (``dot_general``) rounds its inputs to bfloat16 itself, so its gradients
    with respect to the inputs and the kernel come back in float32 straight from the product's
    float32 accumulation: no bfloat16 copy of the kernel's gradient, and no conversion of it
    back to float32 for the optimizer."""
    del dtype, inexact
    return arrays


def _contract_last_first(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum_k a[..., k] b[k, ...] in float32, on the arrays' own (bfloat16) dtypes."""
    return lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), preferred_element_type=_F32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul(x: jax.Array, w: jax.Array, x_dtype, w_dtype) -> jax.Array:
    return _contract_last_first(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))


def _matmul_fwd(x, w, x_dtype, w_dtype):
    x_lo, w_lo = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    return _contract_last_first(x_lo, w_lo), (x_lo, w_lo)


def transposed_copy(a_MxK: jax.Array) -> jax.Array:
    """``a.T`` as a row-major ``(K, M)`` array that XLA keeps as a copy.

    XLA folds a plain transpose into the product that reads it, which then contracts its
    operands' leading axes (x^T g over the batch); its CPU backend runs such a product on
    bfloat16 inputs only after converting them to float32, at the float32 rate or below. Written
    as a swap of the two leading axes of ``(M, K, 1)``, the transpose stays a copy (``M K``
    element moves, 3 % of the product's time at ``M = 512``), and the product reads ``(K, M)``
    row-major: ``x^T g`` then runs at the bfloat16 rate (2.1x faster for ``512 x 1024 x 1024``
    on a 2-vCPU AMD EPYC, ``benchmarks/bf16_dots.py``). The values are the same.

    >>> import jax.numpy as jnp
    >>> a = jnp.arange(6.0).reshape(2, 3)
    >>> transposed_copy(a).shape, bool((transposed_copy(a) == a.T).all())
    ((3, 2), True)
    """
    m, k = a_MxK.shape
    return a_MxK.reshape(m, k, 1).transpose(1, 0, 2).reshape(k, m)


def _matmul_bwd(x_dtype, w_dtype, residuals, g):
    x_lo, w_lo = residuals
    g_lo = g.astype(jnp.bfloat16)
    # dL/dx = g W^T: contract g's last axis with W's output axes.
    dx = lax.dot_general(g_lo, w_lo, (((g.ndim - 1,), (w_lo.ndim - 1,)), ((), ())),
                         preferred_element_type=_F32)
    # dL/dW = X^T g over every leading (batch) axis, as (K, B) @ (B, N).
    k, n = x_lo.shape[-1], g.shape[-1]
    dw = _contract_last_first(transposed_copy(x_lo.reshape(-1, k)), g_lo.reshape(-1, n))
    return dx.astype(x_dtype), dw.astype(w_dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul(x_BxK: jax.Array, w_KxN: jax.Array) -> jax.Array:
    """x @ w on bfloat16 inputs with float32 accumulation and a float32 result.

    The backward pass rounds the incoming gradient to bfloat16 and computes dx = g w^T and
    dw = x^T g the same way (bfloat16 inputs, float32 results), so all three products of a
    dense layer run at the bfloat16 rate. ``x``: ``(..., K)``, ``w``: ``(K, N)``.
    """
    return _matmul(x_BxK, w_KxN, jnp.dtype(x_BxK.dtype), jnp.dtype(w_KxN.dtype))


def product(a: jax.Array, b_KxN: jax.Array, dtype: Any = None) -> jax.Array:
    """``a @ b`` (``a``: ``(..., K)``) under the policy of the compute dtype ``dtype``: float32,
    or ``matmul`` (bfloat16 inputs, float32 accumulation and result, in both passes)."""
    if is_low(dtype):
        return matmul(a, b_KxN)
    return a @ b_KxN


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                preferred_element_type=None) -> jax.Array:
    """``lax.dot_general`` on bfloat16 inputs with float32 results; ``matmul`` for a dense
    layer's product (the last axis of ``lhs`` with the first of a 2-D ``rhs``), which also keeps
    its backward pass in bfloat16."""
    del preferred_element_type
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if (rhs.ndim == 2 and tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,)
            and not lhs_batch and not rhs_batch):
        return matmul(lhs, rhs)
    return lax.dot_general(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), dimension_numbers,
                           precision=precision, preferred_element_type=_F32)


def conv_general_dilated(*args, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated`` with float32 accumulation and result."""
    kwargs["preferred_element_type"] = _F32
    return lax.conv_general_dilated(*args, **kwargs)


def dense_kwargs(dtype: Any) -> dict:
    """The ``nn.Dense`` keyword arguments of the compute dtype ``dtype`` (none for float32)."""
    if not is_low(dtype):
        return {}
    return {"dtype": dtype,
            "promote_dtype": keep_inputs_and_kernel,
            "dot_general": dot_general}


def conv_kwargs(dtype: Any, transpose: bool = False) -> dict:
    """The ``nn.Conv`` (or, with ``transpose``, ``nn.ConvTranspose``) keyword arguments of the
    compute dtype ``dtype`` (none for float32). ``nn.ConvTranspose`` takes no convolution
    function: its product returns bfloat16, and the float32 bias makes its output float32."""
    if not is_low(dtype):
        return {}
    kwargs = {"dtype": dtype, "promote_dtype": promote_inputs_and_kernel}
    if not transpose:
        kwargs["conv_general_dilated"] = conv_general_dilated
    return kwargs


def as_float32(tree):
    """Every floating-point leaf of ``tree`` as float32 (the model's outputs under bfloat16)."""
    return jax.tree.map(
        lambda a: a.astype(_F32) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)
