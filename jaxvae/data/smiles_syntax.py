"""SMILES syntax as a decoding constraint: which tokens may come next in a well-formed string.

A sequence VAE samples SMILES one token at a time; most of the strings RDKit refuses break the
syntax, not the chemistry: a ring bond opened and never closed, a ``)`` without its ``(``, an
empty branch ``()``, a bond at the end. ``SmilesSyntax`` is a small state machine over a SMILES
vocabulary that ``jaxvae.models.sequence.generate`` runs beside the decoder, masking out at each
step the tokens that would break the syntax (the constrained decoding of the Grammar VAE, Kusner
et al. 2017, and SD-VAE, Dai et al. 2018, on the SMILES token level). The decoder's probabilities
are renormalised over what is left, so a masked sampler draws from p(x_t | x_<t, z) conditioned on
the string staying well formed. It cannot see valences or aromaticity: a string it lets through
can still fail RDKit's sanitisation.

The state of a row after its tokens so far:

    prev        the class of the last token: START, ATOM, RING, BOND, OPEN, CLOSE, DOT
    bond_after  whether that last token is a bond that follows an atom or ring bond
    depth       the number of open branches
    atoms       the number of atoms so far (the current atom is atoms - 1)
    open_at_R   for each ring-bond label, the atom that opened it, or -1 when closed

and the rules (a token of class C may follow):

    ATOM        anything
    BOND        ATOM, RING, OPEN, CLOSE
    RING r      ATOM, RING, or a bond that follows one; closing r not on the atom that opened it
    OPEN  (     ATOM, RING, CLOSE
    CLOSE )     ATOM, RING, CLOSE, with depth > 0
    DOT   .     ATOM, RING, CLOSE, with depth == 0
    EOS         ATOM, RING, CLOSE, with depth == 0 and every ring bond closed

Tokens of no class (a charge or chirality mark outside brackets) are never allowed; nor are the
special tokens PAD, BOS and UNK.

Example:
    >>> from jaxvae.data.vocab import Vocabulary
    >>> vocab = Vocabulary.from_corpus(["C1CC1", "CC(=O)O"], "smiles")
    >>> syntax = smiles_syntax(vocab)
    >>> state = initial_state(syntax, 1)
    >>> for tok in ["C", "1", "C", "C"]:
    ...     state = advance(syntax, state, jnp.array([vocab.index[tok]]))
    >>> bool(allowed(syntax, state)[0, vocab.index["1"]]), bool(allowed(syntax, state)[0, 2])
    (True, False)
    >>> rows = jnp.asarray(vocab.encode_batch(["C1CC1", "C1CC", "CC(=O)O", "CC()O"], 8))
    >>> well_formed(syntax, rows).tolist()
    [True, False, True, False]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvae.data.vocab import EOS_ID, SPECIALS, Vocabulary

# token classes
NONE, START, ATOM, RING, BOND, OPEN, CLOSE, DOT = range(8)
_ORGANIC = {"B", "Br", "C", "Cl", "N", "O", "S", "P", "F", "I", "b", "c", "n", "o", "s", "p", "*"}
_BONDS = {"-", "=", "#", "$", ":", "/", "\\"}


def token_class(token: str) -> int:
    """The syntax class of one SMILES token (NONE for specials and stray marks)."""
    if token in SPECIALS:
        return NONE
    if token in _ORGANIC or (token.startswith("[") and token.endswith("]")):
        return ATOM
    if token.isdigit() and len(token) == 1 or (token.startswith("%") and token[1:].isdigit()):
        return RING
    if token in _BONDS:
        return BOND
    return {"(": OPEN, ")": CLOSE, ".": DOT}.get(token, NONE)


class SmilesSyntax(NamedTuple):
    """The syntax tables of a SMILES vocabulary of V tokens with R ring-bond labels."""

    class_V: jax.Array  # int32 token class
    ring_V: jax.Array  # int32 ring-bond label in [0, R), -1 for other tokens
    rings_R: jax.Array  # the R labels' token ids (its length fixes R)

    # the decoding-constraint protocol of jaxvae.models.sequence.generate
    def initial_state(self, batch: int) -> "SyntaxState":
        return initial_state(self, batch)

    def allowed(self, state: "SyntaxState") -> jax.Array:
        return allowed(self, state)

    def advance(self, state: "SyntaxState", tokens_B: jax.Array) -> "SyntaxState":
        return advance(self, state, tokens_B)


class SyntaxState(NamedTuple):
    prev_B: jax.Array  # int32 class of the last token
    bond_after_B: jax.Array  # bool: the last token is a bond after an atom or ring bond
    depth_B: jax.Array  # int32 open branches
    atoms_B: jax.Array  # int32 atoms so far
    open_at_BxR: jax.Array  # int32 atom that opened each ring label, -1 when closed


def smiles_syntax(vocab: Vocabulary) -> SmilesSyntax:
    """The tables of ``vocab`` (a SMILES vocabulary); ValueError for another tokenizer."""
    if vocab.tokenizer != "smiles":
        raise ValueError(f"the SMILES syntax constraint needs a SMILES vocabulary, got tokenizer "
                         f"{vocab.tokenizer!r} (SELFIES strings are valid by construction)")
    classes = np.array([token_class(t) for t in vocab.tokens], np.int32)
    rings = [i for i, c in enumerate(classes) if c == RING]
    ring_of = np.full(len(vocab), -1, np.int32)
    ring_of[rings] = np.arange(len(rings), dtype=np.int32)
    return SmilesSyntax(jnp.asarray(classes), jnp.asarray(ring_of),
                        jnp.asarray(np.array(rings, np.int32)))


def initial_state(syntax: SmilesSyntax, batch: int) -> SyntaxState:
    """The state of ``batch`` empty strings."""
    zeros = jnp.zeros((batch,), jnp.int32)
    return SyntaxState(jnp.full((batch,), START, jnp.int32), jnp.zeros((batch,), bool), zeros,
                       zeros, jnp.full((batch, syntax.rings_R.shape[0]), -1, jnp.int32))


def _prev_in(state: SyntaxState, *classes: int) -> jax.Array:
    return jnp.isin(state.prev_B, jnp.array(classes, jnp.int32))[:, None]


def allowed(syntax: SmilesSyntax, state: SyntaxState) -> jax.Array:
    """``(B, V)`` bool: the tokens that keep each row's string well formed (EOS included)."""
    cls_1xV = syntax.class_V[None, :]
    after_unit = _prev_in(state, ATOM, RING, CLOSE)  # a branch, a dot or the end may follow
    depth = state.depth_B[:, None]
    # ring labels: opening is fine; closing must not land on the atom that opened the label
    open_at_BxV = jnp.take(state.open_at_BxR, jnp.maximum(syntax.ring_V, 0), axis=1)
    closes_on_itself = (open_at_BxV >= 0) & (open_at_BxV == state.atoms_B[:, None] - 1)
    ring_ok = (_prev_in(state, ATOM, RING) | state.bond_after_B[:, None]) & ~closes_on_itself
    rings_closed = jnp.all(state.open_at_BxR < 0, axis=1, keepdims=True)
    ok = ((cls_1xV == ATOM)
          | ((cls_1xV == BOND) & _prev_in(state, ATOM, RING, OPEN, CLOSE))
          | ((cls_1xV == RING) & ring_ok)
          | ((cls_1xV == OPEN) & after_unit)
          | ((cls_1xV == CLOSE) & after_unit & (depth > 0))
          | ((cls_1xV == DOT) & after_unit & (depth == 0)))
    eos_ok = after_unit & (depth == 0) & rings_closed
    is_eos_1xV = (jnp.arange(syntax.class_V.shape[0]) == EOS_ID)[None, :]
    return jnp.where(is_eos_1xV, eos_ok, ok)


def advance(syntax: SmilesSyntax, state: SyntaxState, tokens_B: jax.Array) -> SyntaxState:
    """The state after appending ``tokens_B`` (one token id per row)."""
    cls_B = syntax.class_V[tokens_B]
    atoms_B = state.atoms_B + (cls_B == ATOM)
    depth_B = state.depth_B + (cls_B == OPEN) - (cls_B == CLOSE)
    label_B = syntax.ring_V[tokens_B]
    hit_BxR = (jnp.arange(syntax.rings_R.shape[0])[None, :] == label_B[:, None])
    toggled_BxR = jnp.where(state.open_at_BxR >= 0, -1, (atoms_B - 1)[:, None])
    open_at_BxR = jnp.where(hit_BxR, toggled_BxR, state.open_at_BxR)
    bond_after_B = (cls_B == BOND) & jnp.isin(state.prev_B, jnp.array([ATOM, RING]))
    return SyntaxState(cls_B, bond_after_B, depth_B, atoms_B, open_at_BxR)


@jax.jit
def well_formed(syntax: SmilesSyntax, tokens_BxL: jax.Array) -> jax.Array:
    """``(B,)`` bool: each row (its tokens, then EOS, then PAD, as ``Vocabulary.encode_batch``
    writes it) passes the constraint token by token up to and including its EOS, which it must
    have."""
    batch = tokens_BxL.shape[0]

    def step(carry, tok_B):
        state, ok_B, done_B = carry
        fits_B = jnp.take_along_axis(allowed(syntax, state), tok_B[:, None], axis=1)[:, 0]
        ok_B = ok_B & (done_B | fits_B)
        state = advance(syntax, state, tok_B)
        return (state, ok_B, done_B | (tok_B == EOS_ID)), None

    carry = (initial_state(syntax, batch), jnp.ones((batch,), bool), jnp.zeros((batch,), bool))
    (_, ok_B, done_B), _ = jax.lax.scan(step, carry, tokens_BxL.T)
    return ok_B & done_B
