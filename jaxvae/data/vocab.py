"""Vocabularies for sequence VAEs: strings <-> int token arrays, exactly invertible.

A ``Vocabulary`` holds four special tokens at fixed ids (PAD 0, BOS 1, EOS 2, UNK 3) followed by
the tokens seen in a corpus, in sorted order. A string is split into tokens by a tokenizer:
``"char"`` (one token per character, for words and text), ``"smiles"`` (the SMILES regex of
Schwaller et al. 2019, so that ``Cl``, ``Br``, ``[nH]``, ``[C@@H]`` and ``%10`` are single
tokens) or ``"selfies"`` (the bracketed symbols of a SELFIES string, Krenn et al. 2020, split by
the ``selfies`` package: ``[C][=Branch1][Ring1]`` -> ``[C]``, ``[=Branch1]``, ``[Ring1]``). ``decode(encode(s)) == s`` for every string whose tokens are in the vocabulary.

Batches are ``tokens_NxL`` int32 arrays: each row holds the string's tokens, then EOS, then PAD
up to L; the decoder is fed ``[BOS, tokens[:-1]]`` (see ``jaxvae.models.sequence``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)

# Schwaller et al. 2019 ("Molecular Transformer"), with 'Cl'/'Br' before single letters: bracket
# atoms, two-letter organic-subset atoms, ring-bond numbers (%nn or one digit), bonds, branches.
SMILES_REGEX = re.compile(
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$|%[0-9]{2}"
    r"|[0-9])")


def tokenize_smiles(smiles: str) -> list[str]:
    """Splits a SMILES string into tokens; raises ValueError if a part matches no token."""
    tokens, pos = [], 0
    for match in SMILES_REGEX.finditer(smiles):
        if match.start() != pos:
            break
        tokens.append(match.group())
        pos = match.end()
    if pos != len(smiles):
        raise ValueError(f"cannot tokenize SMILES {smiles!r}: no token matches at position {pos} "
                         f"({smiles[pos:pos + 5]!r})")
    return tokens


def tokenize_chars(text: str) -> list[str]:
    return list(text)


def tokenize_selfies(selfies: str) -> list[str]:
    """Splits a SELFIES string into its symbols; raises ValueError for text outside brackets."""
    try:
        import selfies as sf
    except ImportError as e:
        raise ImportError("the SELFIES tokenizer needs the selfies package: pip install "
                          "'jaxvae[molecules]' (or pip install selfies)") from e
    try:
        symbols = list(sf.split_selfies(selfies))
    except ValueError:
        symbols = []
    if "".join(symbols) != selfies:
        raise ValueError(f"cannot tokenize SELFIES {selfies!r}: it is not a sequence of "
                         "bracketed symbols")
    return symbols


TOKENIZERS = {"char": tokenize_chars, "smiles": tokenize_smiles, "selfies": tokenize_selfies}


def _check_tokenizer(name: str) -> None:
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}")


class Vocabulary:
    """Tokens <-> ids with PAD/BOS/EOS/UNK at ids 0..3.

    Build one with ``Vocabulary.from_corpus(strings, tokenizer)``; save it with ``to_json`` and
    load it with ``from_json`` so that a trained model's ids keep their meaning.
    """

    def __init__(self, tokens: Sequence[str], tokenizer: str = "char"):
        _check_tokenizer(tokenizer)
        tokens = list(tokens)
        if tuple(tokens[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with the special tokens {SPECIALS}, got "
                             f"{tuple(tokens[:4])}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary tokens must be unique")
        self.tokens = tokens
        self.tokenizer = tokenizer
        self.index = {tok: i for i, tok in enumerate(tokens)}

    @classmethod
    def from_corpus(cls, strings: Iterable[str], tokenizer: str = "char") -> "Vocabulary":
        """The specials plus every token of ``strings`` (sorted, so the ids are reproducible)."""
        _check_tokenizer(tokenizer)
        split = TOKENIZERS[tokenizer]
        seen: set[str] = set()
        for s in strings:
            if not isinstance(s, str):
                raise TypeError(f"corpus entries must be str, got {type(s).__name__}: {s!r}")
            seen.update(split(s))
        clash = seen & set(SPECIALS)
        if clash:
            raise ValueError(f"corpus tokens clash with the special tokens: {sorted(clash)}")
        return cls(list(SPECIALS) + sorted(seen), tokenizer)

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other) -> bool:
        return (isinstance(other, Vocabulary) and self.tokens == other.tokens
                and self.tokenizer == other.tokenizer)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens, tokenizer={self.tokenizer!r})"

    def tokenize(self, s: str) -> list[str]:
        return TOKENIZERS[self.tokenizer](s)

    def encode(self, s: str, unknown: str = "error") -> list[int]:
        """The ids of the tokens of ``s`` (no BOS/EOS).

        Args:
          unknown: ``"error"`` raises ValueError for a token not in the vocabulary; ``"unk"``
            maps it to UNK (then the round trip is no longer exact).
        """
        ids = []
        for tok in self.tokenize(s):
            i = self.index.get(tok)
            if i is None or i < 4:
                if unknown != "unk":
                    raise ValueError(f"token {tok!r} of {s!r} is not in the vocabulary; build the "
                                     "vocabulary from a corpus that contains it, or pass "
                                     "unknown='unk'")
                i = UNK_ID
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The string of ``ids`` up to the first EOS (or PAD); BOS skipped, UNK kept as '<unk>'."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i in (EOS_ID, PAD_ID):
                break
            if i == BOS_ID:
                continue
            out.append(self.tokens[i])
        return "".join(out)

    def max_tokens(self, strings: Iterable[str]) -> int:
        """The largest number of tokens of any string (add 1 for EOS to get a row length)."""
        return max(len(self.tokenize(s)) for s in strings)

    def encode_batch(self, strings: Sequence[str], length: int | None = None,
                     unknown: str = "error") -> np.ndarray:
        """``tokens_NxL`` int32: each row the string's ids, EOS, then PAD up to ``length``.

        ``length`` defaults to the longest string's token count + 1. A string that does not fit
        (tokens + EOS > length) raises ValueError naming it.
        """
        if isinstance(strings, str):
            raise TypeError("encode_batch takes a sequence of strings, got one str; wrap it: [s]")
        rows = [self.encode(s, unknown) for s in strings]
        if not rows:
            raise ValueError("encode_batch got no strings")
        need = max(len(r) for r in rows) + 1
        length = need if length is None else int(length)
        if need > length:
            longest = strings[int(np.argmax([len(r) for r in rows]))]
            raise ValueError(f"{longest!r} has {need - 1} tokens and does not fit with EOS in rows "
                             f"of length {length}; use length >= {need} or drop longer strings")
        out = np.full((len(rows), length), PAD_ID, np.int32)
        for n, r in enumerate(rows):
            out[n, :len(r)] = r
            out[n, len(r)] = EOS_ID
        return out

    def decode_batch(self, tokens_NxL) -> list[str]:
        return [self.decode(row) for row in np.asarray(tokens_NxL)]

    def to_json(self) -> str:
        return json.dumps({"tokens": self.tokens, "tokenizer": self.tokenizer})

    @classmethod
    def from_json(cls, text: str) -> "Vocabulary":
        d = json.loads(text)
        return cls(d["tokens"], d["tokenizer"])
