"""A GRU layer run over a whole token sequence, with its backward pass written out.

The GRU of ``flax.linen.GRUCell`` (the parameters of ``jaxvae.models.sequence.GRUCell``), with the
three gates' products of one step taken together (``W_h = [W_hr | W_hz | W_hn]``, ``(H, 3H)``):

    g_t = T[x_t] + c,                       the input gates, a row of the table T = E W_i + b_i
    a_t = h_{t-1} W_h,                      (B, 3H)
    r = sigmoid(g_r + a_r),  u = sigmoid(g_u + a_u),  n = tanh(g_n + r * (a_n + b_hn))
    h_t = (1 - u) * n + u * h_{t-1}         where keep[t], else h_t = h_{t-1}

``x_t`` are token ids, so the input projection of a step is a row of the ``(V, 3H)`` table of the
embedding's projections; ``c`` (optional, ``(B, 3H)``) is an input that is the same at every step
(the sequence VAE's decoder reads z at every step).

Why a hand-written backward pass: differentiating a ``lax.scan`` of the cell makes XLA accumulate
the weight gradient ``sum_t h_{t-1}^T da_t`` inside the backward loop, as L products of
``(H, B) x (B, 3H)`` that each run far below the matrix-multiply rate at B = 128, and the input
projection's gradient the same way. Here the backward loop computes only what is sequential
(the state's gradient, one ``(B, 3H) x (3H, H)`` product per step), stores the gates' gradients,
and after the loop each weight gradient is one product over all L * B rows: ``dW_h = H_prev^T dA``
and ``dT = onehot(x)^T dG`` (with the table, a ``(V, L B) x (L B, 3H)`` product instead of the
embedding's ``(E, L B) x (L B, 3H)`` and ``(L B, 3H) x (3H, E)``). On a 2-vCPU AMD EPYC the
sequence VAE's training step at batch 128 runs 1.14x as fast as with the scan of the cell in
float32 and 1.53x in bfloat16 (``docs/benchmarks.md``).

The gradients equal those of the scan of ``GRUCell`` (tests/test_sequence.py, float32 tolerance).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxvae.models import precision

_F32 = jnp.float32


class CellWeights(NamedTuple):
    """A GRU cell's parameters with the three gates side by side (r, u, n along the last axis).

    kernel_i: ``(D, 3H)``, bias_i: ``(3H,)``, kernel_h: ``(H, 3H)``, bias_hn: ``(H,)``.
    """

    kernel_i: jax.Array
    bias_i: jax.Array
    kernel_h: jax.Array
    bias_hn: jax.Array


def cell_weights(cell_params: dict) -> CellWeights:
    """The ``CellWeights`` of a ``GRUCell``'s parameters (``ir``, ``iz``, ``in``, ``hr``,
    ``hz``, ``hn``): concatenations, so their gradients flow back to the cell's parameters."""
    p = cell_params
    return CellWeights(
        jnp.concatenate([p["ir"]["kernel"], p["iz"]["kernel"], p["in"]["kernel"]], axis=1),
        jnp.concatenate([p["ir"]["bias"], p["iz"]["bias"], p["in"]["bias"]]),
        jnp.concatenate([p["hr"]["kernel"], p["hz"]["kernel"], p["hn"]["kernel"]], axis=1),
        p["hn"]["bias"])


def _product_tn(a_NxK: jax.Array, b_NxM: jax.Array, dtype: Any) -> jax.Array:
    """``a^T b`` ``(K, M)`` over the N rows of both, as a product of a row-major ``(K, N)`` copy
    of ``a`` (XLA's CPU backend runs a product that contracts both operands' leading axis
    slower, and in bfloat16 converts it to float32: ``precision.transposed_copy``)."""
    if precision.is_low(dtype):
        a_NxK = a_NxK.astype(dtype)  # the copy moves half the bytes
    return precision.product(precision.transposed_copy(a_NxK), b_NxM, dtype)


def _step(h_BxH, g_Bx3H, kernel_h, bias_hn, dtype):
    """One GRU step: the new state and the gates (r, u, n, a_n + b_hn) that the backward pass
    reads."""
    hidden = h_BxH.shape[-1]
    a_Bx3H = precision.product(h_BxH, kernel_h, dtype)
    r = jax.nn.sigmoid(g_Bx3H[:, :hidden] + a_Bx3H[:, :hidden])
    u = jax.nn.sigmoid(g_Bx3H[:, hidden:2 * hidden] + a_Bx3H[:, hidden:2 * hidden])
    an = a_Bx3H[:, 2 * hidden:] + bias_hn[None]
    n = jnp.tanh(g_Bx3H[:, 2 * hidden:] + r * an)
    return (1.0 - u) * n + u * h_BxH, (r, u, n, an)


def _input_gates(table, tokens_LxB, extra):
    g_LxBx3H = table[tokens_LxB]
    return g_LxBx3H if extra is None else g_LxBx3H + extra[None]


def _run(table, tokens_LxB, kernel_h, bias_hn, h0_BxH, keep_LxB, extra, reverse, dtype,
         residuals):
    """The forward scan: the states ``(L, B, H)`` (and, with ``residuals``, the gates)."""

    def body(h, xs):
        g_t, keep_t = xs
        new_h, gates = _step(h, g_t, kernel_h, bias_hn, dtype)
        if keep_t is not None:
            new_h = jnp.where(keep_t[:, None], new_h, h)
        return new_h, ((new_h,) + gates if residuals else new_h)

    g_LxBx3H = _input_gates(table, tokens_LxB, extra)
    return lax.scan(body, h0_BxH, (g_LxBx3H, keep_LxB), reverse=reverse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _token_gru(table, tokens_LxB, kernel_h, bias_hn, h0_BxH, keep_LxB, extra, reverse,
               final_only, dtype):
    h_last, hs_LxBxH = _run(table, tokens_LxB, kernel_h, bias_hn, h0_BxH, keep_LxB, extra,
                            reverse, dtype, residuals=False)
    return h_last if final_only else hs_LxBxH


def _token_gru_fwd(table, tokens_LxB, kernel_h, bias_hn, h0_BxH, keep_LxB, extra, reverse,
                   final_only, dtype):
    h_last, (hs, r, u, n, an) = _run(table, tokens_LxB, kernel_h, bias_hn, h0_BxH, keep_LxB,
                                     extra, reverse, dtype, residuals=True)
    saved = (table, tokens_LxB, kernel_h, h0_BxH, keep_LxB, extra, hs, r, u, n, an)
    return (h_last if final_only else hs), saved


def _token_gru_bwd(reverse, final_only, dtype, saved, cotangent):
    table, tokens_LxB, kernel_h, h0_BxH, keep_LxB, extra, hs, r, u, n, an = saved
    length, batch, hidden = hs.shape
    # the state each step started from, in the order of positions
    if reverse:
        h_prev = jnp.concatenate([hs[1:], h0_BxH[None]], axis=0)
    else:
        h_prev = jnp.concatenate([h0_BxH[None], hs[:-1]], axis=0)
    kernel_h_T = jnp.transpose(kernel_h)  # (3H, H), once
    with_extra = extra is not None

    def body(carry, xs):
        dh_BxH, dextra_Bx3H = carry
        dy_t, hp, r_t, u_t, n_t, an_t, keep_t = xs
        if dy_t is not None:
            dh_BxH = dh_BxH + dy_t
        if keep_t is None:
            dstep, dskip = dh_BxH, 0.0
        else:  # a kept position passes its state's gradient on unchanged
            dstep = jnp.where(keep_t[:, None], dh_BxH, 0.0)
            dskip = dh_BxH - dstep
        dgn = dstep * (1.0 - u_t) * (1.0 - n_t * n_t)
        dgr = dgn * an_t * r_t * (1.0 - r_t)
        dgu = dstep * (hp - n_t) * u_t * (1.0 - u_t)
        da_Bx3H = jnp.concatenate([dgr, dgu, dgn * r_t], axis=-1)
        dh_prev = dskip + dstep * u_t + precision.product(da_Bx3H, kernel_h_T, dtype)
        if with_extra:
            dextra_Bx3H = dextra_Bx3H + jnp.concatenate([dgr, dgu, dgn], axis=-1)
        return (dh_prev, dextra_Bx3H), (dgn, da_Bx3H)

    if final_only:
        dh_init, dys = cotangent, None
    else:
        dh_init, dys = jnp.zeros_like(h0_BxH), cotangent
    dextra0 = jnp.zeros((batch, 3 * hidden), _F32) if with_extra else None
    (dh0, dextra), (dgn_LxBxH, da_LxBx3H) = lax.scan(
        body, (dh_init, dextra0), (dys, h_prev, r, u, n, an, keep_LxB), reverse=not reverse)

    rows = length * batch
    da_Nx3H = da_LxBx3H.reshape(rows, 3 * hidden)
    dkernel_h = _product_tn(h_prev.reshape(rows, hidden), da_Nx3H, dtype)
    dbias_hn = jnp.sum(da_LxBx3H[..., 2 * hidden:], axis=(0, 1))
    # dT = onehot(x)^T dG, dG = [da_r, da_u, dg_n]: the r and u columns of da, then dg_n
    vocab = table.shape[0]
    onehot_VxN = (jnp.arange(vocab, dtype=tokens_LxB.dtype)[:, None]
                  == tokens_LxB.reshape(1, rows)).astype(_F32)
    dtable = jnp.concatenate(
        [precision.product(onehot_VxN, da_Nx3H[:, :2 * hidden], dtype),
         precision.product(onehot_VxN, dgn_LxBxH.reshape(rows, hidden), dtype)], axis=1)
    return (dtable.astype(table.dtype), None, dkernel_h.astype(kernel_h.dtype), dbias_hn, dh0,
            None, dextra)


_token_gru.defvjp(_token_gru_fwd, _token_gru_bwd)


def token_gru(table_Vx3H: jax.Array, tokens_LxB: jax.Array, kernel_h_Hx3H: jax.Array,
              bias_hn_H: jax.Array, h0_BxH: jax.Array, keep_LxB: jax.Array | None = None,
              extra_Bx3H: jax.Array | None = None, *, reverse: bool = False,
              final_only: bool = False, dtype: Any = None) -> jax.Array:
    """Runs the GRU over the token ids ``tokens_LxB`` (time-major) from the state ``h0_BxH``.

    ``table_Vx3H``: the input gates of each token id (``embedding @ kernel_i + bias_i``);
    ``keep_LxB``: where False a step keeps its state (padding; None: every step updates);
    ``extra_Bx3H``: added to the input gates at every step; ``reverse``: positions L-1 .. 0;
    ``dtype``: the precision policy's compute dtype (bfloat16: every product on bfloat16 inputs
    with float32 accumulation, in both passes). Returns the states ``(L, B, H)`` in the order of
    the positions, or with ``final_only`` the state after the last step (``(B, H)``).

    >>> import jax, jax.numpy as jnp
    >>> table = jax.random.normal(jax.random.key(0), (5, 6))        # V = 5 tokens, H = 2
    >>> kernel_h, bias_hn = jnp.zeros((2, 6)), jnp.zeros(2)
    >>> tokens = jnp.array([[1, 2], [3, 0], [4, 0]])                 # L = 3, B = 2
    >>> token_gru(table, tokens, kernel_h, bias_hn, jnp.zeros((2, 2))).shape
    (3, 2, 2)
    >>> token_gru(table, tokens, kernel_h, bias_hn, jnp.zeros((2, 2)), final_only=True).shape
    (2, 2)
    """
    return _token_gru(table_Vx3H, tokens_LxB, kernel_h_Hx3H, bias_hn_H, h0_BxH, keep_LxB,
                      extra_Bx3H, bool(reverse), bool(final_only), dtype)
