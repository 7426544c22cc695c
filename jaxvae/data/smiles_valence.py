"""Valences as a decoding constraint: SMILES syntax plus no atom with more bonds than it can hold.

``jaxvae.data.smiles_syntax`` keeps a sampled SMILES well formed but cannot see chemistry: ``C(=O)
(=O)=O`` is well formed and RDKit refuses it (carbon with six bonds). ``SmilesValence`` runs the
syntax state machine and beside it counts, for every atom written so far, the bond orders it holds
(``-``, ``/``, ``\\``, ``:`` and an implicit bond count 1, ``=`` 2, ``#`` 3, ``$`` 4), and masks out
at each step the tokens that would give an atom more than its largest valence:

    atom        the bond to the anchor atom (the pending bond's order, else 1) must fit both the
                anchor and the new atom
    bond b      the anchor (the atom it leaves) must have b free
    ring digit  opening: the current atom must hold the pending order; closing: the bond's order
                (the larger of the orders written at opening and closing) must fit the current
                atom and the rest of it the atom that opened the ring bond
    (           the branch bonds to the anchor, and the chain goes on from it after the ``)``:
                the anchor needs two free

and, so that a string does not paint itself into a corner, a token may not leave the current
atom full while the string must go on from it: an atom or a ring digit that fills its atom is
allowed only inside a branch (a ``)`` goes on from another atom) or when no ring bond stays open
(the string may end). The largest valences are RDKit's for neutral atoms (C 4, N 3, O 2, S 6,
P 7, B 3, F Cl Br 1, I 5; aromatic atoms as their element), bracket atoms ``[NH+]`` from their
element, charge (N, O, P, S gain one per positive charge, C and B lose one per charge of either
sign, every atom loses one per negative charge) and explicit hydrogens; an unknown element is
not limited. An aromatic bond counts 1 (RDKit counts 1.5), so the count never exceeds what RDKit
sees. RDKit writes a ``(`` only where the chain goes on after it, so no SMILES that RDKit writes
is masked out (checked on 20,000 MOSES molecules, and in the tests on 2,000 drug-like ones,
aromatic and in Kekulé form); a hand-written one can be, e.g. a last branch in parentheses
``CC(C)(C)`` or the hypervalent nitro spelling ``CN(=O)=O`` that RDKit's clean-up turns into a
charged group. The rules cannot see aromaticity: an aromatic ring that RDKit cannot kekulize
passes; in Kekulé SMILES (``jaxvae.data.molecules.to_kekule``) there is none to fail.

When the valence rules leave a row no token that the syntax allows (a rare dead end), the row's
step falls back to the syntax constraint alone, so sampling always goes on.

Example:
    >>> from jaxvae.data.vocab import Vocabulary
    >>> vocab = Vocabulary.from_corpus(["CC(=O)O", "C#N", "FC(F)F"], "smiles")
    >>> rows = jnp.asarray(vocab.encode_batch(["CC(=O)O", "C(=O)(=O)=O", "FC(F)(F)F", "F(F)"], 12))
    >>> valid_valences(smiles_valence(vocab), rows).tolist()
    [True, False, True, False]
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvae.data import smiles_syntax as syn
from jaxvae.data.vocab import Vocabulary

UNLIMITED = 16  # the valence of an element the table does not know
MAX_VALENCE = {"B": 3, "C": 4, "N": 3, "O": 2, "S": 6, "P": 7, "F": 1, "Cl": 1, "Br": 1,
               "I": 5, "Se": 6, "Si": 4, "H": 1}
BOND_ORDER = {"-": 1, "=": 2, "#": 3, "$": 4, ":": 1, "/": 1, "\\": 1}
_BRACKET = re.compile(r"\[(\d*)([A-Z][a-z]?|[a-z][a-z]?|\*)(@*)(H\d*)?([+-]+\d*)?(:\d+)?\]")


def atom_valence(token: str) -> int:
    """The largest number of bond orders an atom token may hold (``UNLIMITED`` if unknown).

    >>> [atom_valence(t) for t in ("C", "c", "Cl", "[nH]", "[N+]")]
    [4, 4, 1, 2, 4]
    """
    if not token.startswith("["):
        return MAX_VALENCE.get(token.capitalize(), UNLIMITED)
    m = _BRACKET.fullmatch(token)
    if m is None:
        return UNLIMITED
    element = m.group(2).capitalize()
    if element not in MAX_VALENCE:
        return UNLIMITED
    hydrogens = 0 if not m.group(4) else int(m.group(4)[1:] or 1)
    charge_text = m.group(5) or ""
    digits = charge_text.lstrip("+-")
    charge = (int(digits) if digits else len(charge_text)) * (-1 if "-" in charge_text else 1)
    valence = MAX_VALENCE[element]
    if element in ("C", "B", "Si"):
        valence -= abs(charge)
    elif charge > 0 and element in ("N", "O", "P", "S", "Se"):
        valence += charge
    elif charge < 0:
        valence += charge
    return max(valence - hydrogens, 0)


class ValenceState(NamedTuple):
    syntax: syn.SyntaxState
    used_BxA: jax.Array  # int32 bond orders each atom holds so far
    limit_BxA: jax.Array  # int32 each atom's largest valence
    pending_B: jax.Array  # int32 the order of the bond the last token wrote (1 when none)
    ring_order_BxR: jax.Array  # int32 the order each open ring bond holds on its opener


class SmilesValence(NamedTuple):
    """The syntax tables and, per token, the valence of an atom and the order of a bond."""

    syntax: syn.SmilesSyntax
    valence_V: jax.Array  # int32 largest valence of an atom token (0 for other tokens)
    order_V: jax.Array  # int32 order of a bond token (0 for other tokens)

    # the decoding-constraint protocol of jaxvae.models.sequence.generate
    def initial_state(self, batch: int, max_len: int) -> ValenceState:
        return initial_state(self, batch, max_len)

    def allowed(self, state: ValenceState) -> jax.Array:
        return allowed(self, state)

    def advance(self, state: ValenceState, tokens_B: jax.Array) -> ValenceState:
        return advance(self, state, tokens_B)


def smiles_valence(vocab: Vocabulary) -> SmilesValence:
    """The tables of ``vocab`` (a SMILES vocabulary); ValueError for another tokenizer."""
    syntax = syn.smiles_syntax(vocab)
    valence = [atom_valence(t) if syn.token_class(t) == syn.ATOM else 0 for t in vocab.tokens]
    order = [BOND_ORDER.get(t, 0) for t in vocab.tokens]
    return SmilesValence(syntax, jnp.asarray(np.array(valence, np.int32)),
                         jnp.asarray(np.array(order, np.int32)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def initial_state(constraint: SmilesValence, batch: int, max_len: int) -> ValenceState:
    """The state of ``batch`` empty strings of at most ``max_len`` tokens (so as many atoms)."""
    rings = constraint.syntax.rings_R.shape[0]
    zeros_BxA = jnp.zeros((batch, max_len), jnp.int32)
    return ValenceState(syn.initial_state(constraint.syntax, batch, max_len), zeros_BxA,
                        zeros_BxA, jnp.ones((batch,), jnp.int32),
                        jnp.zeros((batch, rings), jnp.int32))


def _at(values_BxA: jax.Array, atom_B: jax.Array) -> jax.Array:
    """``values_BxA[b, atom_B[b]]`` (0 where ``atom_B`` is -1: no atom)."""
    got = jnp.take_along_axis(values_BxA, jnp.clip(atom_B, 0)[:, None], axis=1)[:, 0]
    return jnp.where(atom_B >= 0, got, 0)


def _free(state: ValenceState, atom_B: jax.Array) -> jax.Array:
    """``(B,)`` the bond orders ``atom_B`` can still take (large where there is no atom)."""
    free = _at(state.limit_BxA, atom_B) - _at(state.used_BxA, atom_B)
    return jnp.where(atom_B >= 0, free, UNLIMITED)


def _ring_bond(state: ValenceState) -> tuple[jax.Array, jax.Array]:
    """``(B, R)`` per ring label: whether its digit would close an open ring bond, and the bond's
    order (the pending order, or at closing the larger of it and the order held since opening)."""
    open_BxR = state.syntax.open_at_BxR >= 0
    order_BxR = jnp.where(open_BxR, jnp.maximum(state.pending_B[:, None], state.ring_order_BxR),
                          state.pending_B[:, None])
    return open_BxR, order_BxR


def _valence_allowed(constraint: SmilesValence, state: ValenceState) -> jax.Array:
    """``(B, V)`` bool: the tokens that keep every atom within its valence and leave the string a
    way to go on where it must (see the module docstring)."""
    s = state.syntax
    current_B = s.atoms_B - 1
    anchor_free_B = _free(state, s.anchor_B)
    current_free_B = _free(state, current_B)
    n_open_B = jnp.sum(s.open_at_BxR >= 0, axis=1)
    in_branch_B = s.depth_B > 0
    # the bond a new atom makes: the pending one after a bond, an implicit single one otherwise,
    # none at the start of a fragment
    order_B = jnp.where(s.anchor_B >= 0, state.pending_B, 0)
    left_1xV = constraint.valence_V[None, :] - order_B[:, None]  # the new atom's free valence
    atom_ok_BxV = ((order_B <= anchor_free_B)[:, None] & (left_1xV >= 0)
                   & ((left_1xV > 0) | (in_branch_B | (n_open_B == 0))[:, None]))
    bond_ok_BxV = constraint.order_V[None, :] <= anchor_free_B[:, None]
    open_BxR, order_BxR = _ring_bond(state)
    opener_free_BxR = jax.vmap(lambda a: _free(state, a), in_axes=1, out_axes=1)(
        s.open_at_BxR)
    left_BxR = current_free_B[:, None] - order_BxR  # the current atom's free valence after it
    still_open_BxR = n_open_B[:, None] - open_BxR  # open ring bonds after the digit
    goes_on_BxR = (left_BxR > 0) | in_branch_B[:, None] | (open_BxR & (still_open_BxR == 0))
    ring_ok_BxR = ((left_BxR >= 0) & goes_on_BxR
                   & (~open_BxR | (order_BxR - state.ring_order_BxR <= opener_free_BxR)))
    ring_V = constraint.syntax.ring_V
    ring_ok_BxV = jnp.take_along_axis(
        ring_ok_BxR, jnp.broadcast_to(jnp.clip(ring_V, 0)[None, :],
                                      (ring_ok_BxR.shape[0], ring_V.shape[0])), axis=1)
    cls_1xV = constraint.syntax.class_V[None, :]
    return jnp.where(cls_1xV == syn.ATOM, atom_ok_BxV,
                     jnp.where(cls_1xV == syn.BOND, bond_ok_BxV,
                               jnp.where(cls_1xV == syn.RING, ring_ok_BxV,
                                         jnp.where(cls_1xV == syn.OPEN,
                                                   (anchor_free_B >= 2)[:, None], True))))


@jax.jit
def allowed(constraint: SmilesValence, state: ValenceState) -> jax.Array:
    """``(B, V)`` bool: the tokens the syntax allows that also keep every valence, or the syntax's
    tokens alone for a row where the valences leave none."""
    syntax_BxV = syn.allowed(constraint.syntax, state.syntax)
    both_BxV = syntax_BxV & _valence_allowed(constraint, state)
    return jnp.where(jnp.any(both_BxV, axis=1, keepdims=True), both_BxV, syntax_BxV)


@jax.jit
def advance(constraint: SmilesValence, state: ValenceState, tokens_B: jax.Array) -> ValenceState:
    """The state after appending ``tokens_B`` (one token id per row)."""
    s = state.syntax
    cls_B = constraint.syntax.class_V[tokens_B]
    is_atom, is_ring = cls_B == syn.ATOM, cls_B == syn.RING
    atoms_A = jnp.arange(state.used_BxA.shape[1])[None, :]
    current_B = s.atoms_B - 1
    # an atom: a bond of the pending order to the anchor (none at a fragment's start)
    order_B = jnp.where(s.anchor_B >= 0, state.pending_B, 0)
    new_BxA = is_atom[:, None] & (atoms_A == s.atoms_B[:, None])
    anchor_BxA = is_atom[:, None] & (atoms_A == s.anchor_B[:, None])
    used_BxA = state.used_BxA + jnp.where(new_BxA | anchor_BxA, order_B[:, None], 0)
    limit_BxA = jnp.where(new_BxA, constraint.valence_V[tokens_B][:, None], state.limit_BxA)
    # a ring digit: opening reserves the pending order on the current atom; closing adds the
    # bond's order to the current atom and the rest of it to the opener
    label_B = constraint.syntax.ring_V[tokens_B]
    hit_BxR = is_ring[:, None] & (jnp.arange(state.ring_order_BxR.shape[1])[None, :]
                                  == label_B[:, None])
    open_BxR, order_BxR = _ring_bond(state)
    closing_BxR = hit_BxR & open_BxR
    ring_order_B = jnp.sum(jnp.where(hit_BxR, order_BxR, 0), axis=1)
    opener_extra_B = jnp.sum(jnp.where(closing_BxR, order_BxR - state.ring_order_BxR, 0), axis=1)
    opener_B = jnp.sum(jnp.where(closing_BxR, s.open_at_BxR, 0), axis=1)
    closes_B = jnp.any(closing_BxR, axis=1)
    used_BxA = (used_BxA
                + jnp.where(is_ring[:, None] & (atoms_A == current_B[:, None]),
                            ring_order_B[:, None], 0)
                + jnp.where(closes_B[:, None] & (atoms_A == opener_B[:, None]),
                            opener_extra_B[:, None], 0))
    ring_order_BxR = jnp.where(hit_BxR, jnp.where(open_BxR, 0, order_BxR), state.ring_order_BxR)
    pending_B = jnp.where(cls_B == syn.BOND, constraint.order_V[tokens_B], 1)
    return ValenceState(syn.advance(constraint.syntax, s, tokens_B), used_BxA, limit_BxA,
                        pending_B, ring_order_BxR)


@jax.jit
def valid_valences(constraint: SmilesValence, tokens_BxL: jax.Array) -> jax.Array:
    """``(B,)`` bool: each row (tokens, EOS, PAD) passes the syntax and the valence rules token
    by token up to and including its EOS, which it must have."""
    def strict_allowed(state):  # no fallback to the syntax alone
        return syn.allowed(constraint.syntax, state.syntax) & _valence_allowed(constraint, state)

    return syn.passes(strict_allowed, constraint.advance,
                      constraint.initial_state(*tokens_BxL.shape), tokens_BxL)
