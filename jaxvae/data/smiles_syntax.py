"""SMILES syntax as a decoding constraint: which tokens may come next in a well-formed string.

A sequence VAE samples SMILES one token at a time; many of the strings RDKit refuses break the
syntax, not the chemistry: a ring bond opened and never closed, a ``)`` without its ``(``, an
empty branch ``()``, a bond at the end, a ring bond between two atoms already bonded, or a string
cut off at the sampler's length limit. ``SmilesSyntax`` is a small state machine over a SMILES
vocabulary that ``jaxvae.models.sequence.generate`` runs beside the decoder, masking out at each
step the tokens that would break the syntax (the constrained decoding of the Grammar VAE, Kusner
et al. 2017, and SD-VAE, Dai et al. 2018, on the SMILES token level). The decoder's probabilities
are renormalised over what is left, so a masked sampler draws from p(x_t | x_<t, z) conditioned on
the string staying well formed. It cannot see valences or aromaticity: a string it lets through
can still fail RDKit's sanitisation.

The state of a row after its tokens so far:

    prev        the class of the last token: START, ATOM, RING, BOND, OPEN, CLOSE, DOT
    bond_after  whether that last token is a bond that follows an atom or ring bond
    depth       the number of open branches (at most MAX_DEPTH)
    atoms       the number of atoms so far (the current atom is atoms - 1)
    parent      the atom the current atom is bonded to by the chain (-1: none)
    anchor      the atom the next atom bonds to; stack_K: the anchors of the open branches
    open_at_R   for each ring-bond label, the atom that opened it, or -1 when closed
    remaining   the tokens the sampler may still emit (EOS included)

and the rules (a token of class C may follow):

    ATOM        anything
    BOND        ATOM, RING, OPEN, CLOSE
    RING r      ATOM, RING, or a bond that follows one; closing r neither on the atom that
                opened it nor on that atom's chain neighbour (a second bond between them)
    OPEN  (     ATOM, RING, CLOSE, with depth < MAX_DEPTH
    CLOSE )     ATOM, RING, CLOSE, with depth > 0
    DOT   .     ATOM, RING, CLOSE, with depth == 0
    EOS         ATOM, RING, CLOSE, with depth == 0 and every ring bond closed

and the length budget: a token is allowed only if the string can still end within ``remaining``
tokens after it. ``tokens_to_finish`` counts the tokens of one way to end from any state (an atom
where one is needed, up to two atoms before an open ring bond can close, one ring digit per open
ring bond, one ``)`` per open branch, EOS); each of its tokens lowers the count by one, so while
the count fits the budget some token always does.

Tokens of no class (a charge or chirality mark outside brackets) are never allowed; nor are the
special tokens PAD, BOS and UNK.

Example:
    >>> from jaxvae.data.vocab import Vocabulary
    >>> vocab = Vocabulary.from_corpus(["C1CC1", "CC(=O)O"], "smiles")
    >>> syntax = smiles_syntax(vocab)
    >>> state = initial_state(syntax, 1, 20)
    >>> for tok in ["C", "1", "C", "C"]:
    ...     state = advance(syntax, state, jnp.array([vocab.index[tok]]))
    >>> bool(allowed(syntax, state)[0, vocab.index["1"]]), bool(allowed(syntax, state)[0, 2])
    (True, False)
    >>> rows = jnp.asarray(vocab.encode_batch(["C1CC1", "C1CC", "CC(=O)O", "CC()O", "C1C1"], 8))
    >>> well_formed(syntax, rows).tolist()
    [True, False, True, False, False]
"""

from __future__ import annotations

import functools
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


MAX_DEPTH = 8  # nested open branches a sampled string may hold


class SmilesSyntax(NamedTuple):
    """The syntax tables of a SMILES vocabulary of V tokens with R ring-bond labels."""

    class_V: jax.Array  # int32 token class
    ring_V: jax.Array  # int32 ring-bond label in [0, R), -1 for other tokens
    rings_R: jax.Array  # the R labels' token ids (its length fixes R)

    # the decoding-constraint protocol of jaxvae.models.sequence.generate
    def initial_state(self, batch: int, max_len: int) -> "SyntaxState":
        return initial_state(self, batch, max_len)

    def allowed(self, state: "SyntaxState") -> jax.Array:
        return allowed(self, state)

    def advance(self, state: "SyntaxState", tokens_B: jax.Array) -> "SyntaxState":
        return advance(self, state, tokens_B)


class SyntaxState(NamedTuple):
    prev_B: jax.Array  # int32 class of the last token
    bond_after_B: jax.Array  # bool: the last token is a bond after an atom or ring bond
    depth_B: jax.Array  # int32 open branches
    atoms_B: jax.Array  # int32 atoms so far
    parent_B: jax.Array  # int32 the current atom's chain neighbour, -1 for none
    anchor_B: jax.Array  # int32 the atom the next atom bonds to, -1 for none
    stack_BxK: jax.Array  # int32 the anchors of the open branches
    open_at_BxR: jax.Array  # int32 atom that opened each ring label, -1 when closed
    remaining_B: jax.Array  # int32 tokens the sampler may still emit


def smiles_syntax(vocab: Vocabulary) -> SmilesSyntax:
    """The tables of ``vocab`` (a SMILES vocabulary); ValueError for another tokenizer."""
    if vocab.tokenizer != "smiles":
        raise ValueError(f"the SMILES syntax constraint needs a SMILES vocabulary, got tokenizer "
                         f"{vocab.tokenizer!r} (SELFIES strings are valid by construction)")
    classes = np.array([token_class(t) for t in vocab.tokens], np.int32)
    if not (classes == ATOM).any():
        raise ValueError("the vocabulary holds no atom token: no SMILES can be written with it")
    rings = [i for i, c in enumerate(classes) if c == RING]
    ring_of = np.full(len(vocab), -1, np.int32)
    ring_of[rings] = np.arange(len(rings), dtype=np.int32)
    return SmilesSyntax(jnp.asarray(classes), jnp.asarray(ring_of),
                        jnp.asarray(np.array(rings, np.int32)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def initial_state(syntax: SmilesSyntax, batch: int, max_len: int) -> SyntaxState:
    """The state of ``batch`` empty strings that may grow to ``max_len`` tokens with EOS."""
    zeros = jnp.zeros((batch,), jnp.int32)
    none = jnp.full((batch,), -1, jnp.int32)
    return SyntaxState(jnp.full((batch,), START, jnp.int32), jnp.zeros((batch,), bool), zeros,
                       zeros, none, none, jnp.full((batch, MAX_DEPTH), -1, jnp.int32),
                       jnp.full((batch, syntax.rings_R.shape[0]), -1, jnp.int32),
                       jnp.full((batch,), max_len, jnp.int32))


def _prev_in(state: SyntaxState, *classes: int) -> jax.Array:
    return jnp.isin(state.prev_B, jnp.array(classes, jnp.int32))


def _opened_on_BxR(state: SyntaxState, atom_B: jax.Array) -> jax.Array:
    """The open ring labels that ``atom_B`` opened."""
    return (state.open_at_BxR >= 0) & (state.open_at_BxR == atom_B[:, None])


def _blocked_BxR(state: SyntaxState) -> jax.Array:
    """Open ring labels that cannot close on the current atom: they opened on it or on its chain
    neighbour (already bonded to it)."""
    return _opened_on_BxR(state, state.atoms_B - 1) | _opened_on_BxR(state, state.parent_B)


def tokens_to_finish(state: SyntaxState) -> jax.Array:
    """``(B,)``: the length of one way to end each row from its state, EOS included.

    An atom first where the last token cannot end a unit (START, a bond, ``(``, ``.``, or a
    ``)`` while ring bonds are open; not after a bond that a ring digit may close, ``c-1``); then up to two atoms while an open ring bond cannot close on
    the current atom (two when it opened there, one when it opened on the atom the current one
    bonds to); one digit per open ring bond; one ``)`` per open branch; EOS. Emitting the next
    token of this way lowers the count by exactly one.
    """
    n_open = jnp.sum(state.open_at_BxR >= 0, axis=1)
    # a bond after an atom may be followed by a ring digit that closes an open ring bond
    bond_closes = state.bond_after_B & (n_open > 0) & ~jnp.any(_blocked_BxR(state), axis=1)
    atom_first = ((_prev_in(state, START, BOND, OPEN, DOT) & ~bond_closes)
                  | ((state.prev_B == CLOSE) & (n_open > 0)))
    def opened_on(atom_B):
        return jnp.any(_opened_on_BxR(state, atom_B), axis=1)

    # the atom placed first bonds to the anchor: a ring bond opened there needs one more atom;
    # otherwise one opened on the current atom needs two, one on its neighbour one
    spacer = jnp.where(atom_first, opened_on(state.anchor_B).astype(jnp.int32),
                       jnp.where(opened_on(state.atoms_B - 1), 2,
                                 opened_on(state.parent_B).astype(jnp.int32)))
    return atom_first + spacer + n_open + state.depth_B + 1


def _syntax_allowed(syntax: SmilesSyntax, state: SyntaxState) -> jax.Array:
    cls_1xV = syntax.class_V[None, :]
    after_unit = _prev_in(state, ATOM, RING, CLOSE)[:, None]  # a branch, a dot or the end
    depth = state.depth_B[:, None]
    label_VxR = syntax.ring_V[:, None] == jnp.arange(syntax.rings_R.shape[0])[None, :]
    blocked_BxV = jnp.any(_blocked_BxR(state)[:, None, :] & label_VxR[None], axis=-1)
    ring_ok = ((_prev_in(state, ATOM, RING) | state.bond_after_B)[:, None] & ~blocked_BxV)
    rings_closed = jnp.all(state.open_at_BxR < 0, axis=1, keepdims=True)
    ok = ((cls_1xV == ATOM)
          | ((cls_1xV == BOND) & _prev_in(state, ATOM, RING, OPEN, CLOSE)[:, None])
          | ((cls_1xV == RING) & ring_ok)
          | ((cls_1xV == OPEN) & after_unit & (depth < MAX_DEPTH))
          | ((cls_1xV == CLOSE) & after_unit & (depth > 0))
          | ((cls_1xV == DOT) & after_unit & (depth == 0)))
    eos_ok = after_unit & (depth == 0) & rings_closed
    is_eos_1xV = (jnp.arange(syntax.class_V.shape[0]) == EOS_ID)[None, :]
    return jnp.where(is_eos_1xV, eos_ok, ok)


@jax.jit
def allowed(syntax: SmilesSyntax, state: SyntaxState) -> jax.Array:
    """``(B, V)`` bool: the tokens that keep each row's string well formed (EOS included) and
    let it still end within its remaining tokens."""
    vocab_size = syntax.class_V.shape[0]
    batch = state.prev_B.shape[0]
    after_VxB = jax.vmap(lambda v: tokens_to_finish(
        advance(syntax, state, jnp.full((batch,), v, jnp.int32))))(jnp.arange(vocab_size))
    is_eos_1xV = (jnp.arange(vocab_size) == EOS_ID)[None, :]
    fits_BxV = is_eos_1xV | (after_VxB.T <= (state.remaining_B - 1)[:, None])
    return _syntax_allowed(syntax, state) & fits_BxV


@jax.jit
def advance(syntax: SmilesSyntax, state: SyntaxState, tokens_B: jax.Array) -> SyntaxState:
    """The state after appending ``tokens_B`` (one token id per row)."""
    cls_B = syntax.class_V[tokens_B]
    is_atom, is_open, is_close = cls_B == ATOM, cls_B == OPEN, cls_B == CLOSE
    atoms_B = state.atoms_B + is_atom
    parent_B = jnp.where(is_atom, state.anchor_B, state.parent_B)
    slot_BxK = jnp.arange(MAX_DEPTH)[None, :] == state.depth_B[:, None]
    stack_BxK = jnp.where(is_open[:, None] & slot_BxK, state.anchor_B[:, None], state.stack_BxK)
    popped_B = jnp.take_along_axis(
        state.stack_BxK, jnp.clip(state.depth_B - 1, 0, MAX_DEPTH - 1)[:, None], axis=1)[:, 0]
    anchor_B = jnp.where(is_atom, atoms_B - 1, jnp.where(is_close, popped_B, state.anchor_B))
    anchor_B = jnp.where(cls_B == DOT, -1, anchor_B)
    depth_B = state.depth_B + is_open - is_close
    label_B = syntax.ring_V[tokens_B]
    hit_BxR = (jnp.arange(syntax.rings_R.shape[0])[None, :] == label_B[:, None])
    toggled_BxR = jnp.where(state.open_at_BxR >= 0, -1, (atoms_B - 1)[:, None])
    open_at_BxR = jnp.where(hit_BxR, toggled_BxR, state.open_at_BxR)
    bond_after_B = (cls_B == BOND) & _prev_in(state, ATOM, RING)
    return SyntaxState(cls_B, bond_after_B, depth_B, atoms_B, parent_B, anchor_B, stack_BxK,
                       open_at_BxR, state.remaining_B - 1)


def passes(allowed_fn, advance_fn, state, tokens_BxL: jax.Array) -> jax.Array:
    """``(B,)`` bool: each row (its tokens, then EOS, then PAD, as ``Vocabulary.encode_batch``
    writes it) holds, token by token up to and including its EOS (which it must have), only
    tokens that ``allowed_fn(state) -> (B, V) bool`` allows, the state moving on by
    ``advance_fn(state, tokens_B)`` from ``state``."""

    def step(carry, tok_B):
        state, ok_B, done_B = carry
        fits_B = jnp.take_along_axis(allowed_fn(state), tok_B[:, None], axis=1)[:, 0]
        ok_B = ok_B & (done_B | fits_B)
        return (advance_fn(state, tok_B), ok_B, done_B | (tok_B == EOS_ID)), None

    batch = tokens_BxL.shape[0]
    carry = (state, jnp.ones((batch,), bool), jnp.zeros((batch,), bool))
    (_, ok_B, done_B), _ = jax.lax.scan(step, carry, tokens_BxL.T)
    return ok_B & done_B


@jax.jit
def well_formed(syntax: SmilesSyntax, tokens_BxL: jax.Array) -> jax.Array:
    """``(B,)`` bool: each row (its tokens, then EOS, then PAD, as ``Vocabulary.encode_batch``
    writes it) passes the constraint token by token up to and including its EOS, which it must
    have, within the row's length."""
    return passes(syntax.allowed, syntax.advance, syntax.initial_state(*tokens_BxL.shape),
                  tokens_BxL)
