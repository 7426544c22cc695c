"""Molecules as SMILES: the MOSES data files and the MOSES generation metrics (RDKit).

The MOSES benchmark (Polykovskiy et al. 2020) ships its splits inside the ``molsets`` wheel
(``moses/dataset/data/train.csv.gz``: 1,584,663 SMILES; ``test.csv.gz``: 176,074). Its declared
dependencies are dated and break pip, so install it without them and read only the files:

    pip install --no-deps molsets        # `import moses` then fails; we never import it

The metrics follow ``moses.metrics`` (reimplemented here, on RDKit):

    valid      fraction of generated strings that RDKit parses into a molecule
    unique@k   |set(canonical(first k valid))| / k     (k clipped to the number of valid ones)
    novelty    fraction of the unique valid canonical molecules not in the training set
    filters    fraction of the valid molecules that pass MOSES's medicinal-chemistry filters:
               no charged atom, only C N S O F Cl Br H, no ring of 8 or more atoms, and no
               match (hydrogens added) of the MCF and PAINS SMARTS lists that ship in the
               wheel (``moses/metrics/mcf.csv``, ``wehi_pains.csv``)
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path

SPLITS = ("train", "test", "test_scaffolds")


def _rdkit_chem():
    try:
        from rdkit import Chem, RDLogger
    except ImportError as e:
        raise ImportError("molecule metrics need RDKit: pip install 'jaxvae[molecules]' "
                          "(or pip install rdkit)") from e
    RDLogger.DisableLog("rdApp.*")  # invalid samples are expected; do not log each one
    return Chem


def _selfies():
    try:
        import selfies
    except ImportError as e:
        raise ImportError("SELFIES needs the selfies package: pip install 'jaxvae[molecules]' "
                          "(or pip install selfies==2.2.0)") from e
    return selfies


REPRESENTATIONS = ("smiles", "kekule", "selfies")
# the tokenizer (``jaxvae.data.vocab.TOKENIZERS``) of each representation's strings
TOKENIZERS = {"smiles": "smiles", "kekule": "smiles", "selfies": "selfies"}


def _check_representation(representation: str) -> None:
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown molecule representation {representation!r}; choose one of "
                         f"{REPRESENTATIONS}")


def to_kekule(smiles: str) -> str:
    """One SMILES written in its Kekulé form: no aromatic atoms, every ring bond explicit.

    ``c1ccccc1`` -> ``C1=CC=CC=C1``, ``c1cc[nH]c1`` -> ``C1=CNC=C1``. RDKit reads the result
    back into the same molecule (it aromatizes rings when it sanitizes), so the canonical SMILES
    and every metric are unchanged; a model that writes Kekulé strings cannot produce the
    aromatic rings that RDKit fails to kekulize, only wrong bond orders, which its valences
    show. Raises ValueError for a string RDKit does not parse.
    """
    Chem = _rdkit_chem()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"cannot write SMILES {smiles!r} in Kekulé form: RDKit does not parse it")
    Chem.Kekulize(mol, clearAromaticFlags=True)
    return Chem.MolToSmiles(mol, kekuleSmiles=True)


def to_representation(smiles: Sequence[str], representation: str) -> list[str]:
    """SMILES strings as ``representation`` strings: unchanged, in Kekulé form, or SELFIES.

    ``kekule`` writes each molecule without aromatic atoms (``to_kekule``). SELFIES (Krenn et
    al. 2020) spell a molecule in bracketed symbols such that every sequence of symbols decodes
    to a valid molecule. Raises ValueError naming a SMILES that RDKit or the ``selfies``
    encoder rejects.
    """
    _check_representation(representation)
    if representation == "smiles":
        return list(smiles)
    if representation == "kekule":
        return [to_kekule(s) for s in smiles]
    sf = _selfies()
    out = []
    for s in smiles:
        try:
            out.append(sf.encoder(s))
        except sf.EncoderError as e:
            raise ValueError(f"cannot encode SMILES {s!r} as SELFIES: {e}") from e
    return out


def to_smiles(strings: Sequence[str], representation: str) -> list[str]:
    """``representation`` strings as SMILES: unchanged (SMILES, Kekulé), or decoded from SELFIES.

    A SELFIES string the decoder rejects (a symbol outside its alphabet) becomes ``""``, which
    the metrics count as invalid, so the list keeps one entry per input.
    """
    _check_representation(representation)
    if representation != "selfies":
        return list(strings)
    sf = _selfies()
    out = []
    for s in strings:
        try:
            out.append(sf.decoder(s) or "")
        except sf.DecoderError:
            out.append("")
    return out


def moses_data_dir() -> Path:
    """The folder of the MOSES csv.gz files inside the installed ``molsets`` wheel.

    Located with ``importlib.util.find_spec`` (which does not run ``moses/__init__.py``).
    """
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the MOSES data needs the molsets wheel: pip install --no-deps molsets "
                         "(its declared dependencies are not needed and break pip)")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset" / "data"
    if not (path / "train.csv.gz").exists():
        raise ValueError(f"no MOSES data files in {path}; reinstall: pip install --no-deps "
                         "--force-reinstall molsets")
    return path


def load_moses(split: str = "train") -> list[str]:
    """The SMILES of one MOSES split (``train``, ``test`` or ``test_scaffolds``), in file order."""
    if split not in SPLITS:
        raise ValueError(f"unknown MOSES split {split!r}; choose one of {SPLITS}")
    with gzip.open(moses_data_dir() / f"{split}.csv.gz", "rt", newline="") as f:
        rows = csv.reader(f)
        header = next(rows)
        col = header.index("SMILES")
        return [row[col] for row in rows]


FILTER_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})


def filter_patterns(metrics_dir: str | Path | None = None) -> list:
    """The MCF and PAINS SMARTS of MOSES's filters metric, compiled by RDKit.

    Read from ``metrics_dir`` (default: ``moses/metrics`` of the installed molsets wheel):
    ``mcf.csv`` (a ``names,smarts`` header) and ``wehi_pains.csv`` (``smarts,name`` rows, no
    header), as ``moses.metrics.utils`` reads them.
    """
    Chem = _rdkit_chem()
    directory = (moses_data_dir().parent.parent / "metrics" if metrics_dir is None
                 else Path(metrics_dir))
    files = (directory / "mcf.csv", directory / "wehi_pains.csv")
    for f in files:
        if not f.exists():
            raise ValueError(f"no MOSES filter list {f}; reinstall: pip install --no-deps "
                             "--force-reinstall molsets")
    smarts = []
    with files[0].open(newline="") as f:
        rows = csv.reader(f)
        col = next(rows).index("smarts")
        smarts += [row[col] for row in rows if row]
    with files[1].open(newline="") as f:
        smarts += [row[0].strip() for row in csv.reader(f) if row]
    patterns = [Chem.MolFromSmarts(s) for s in smarts]
    bad = [s for s, p in zip(smarts, patterns) if p is None]
    if bad:
        raise ValueError(f"RDKit cannot parse {len(bad)} filter SMARTS, e.g. {bad[0]!r}")
    return patterns


def passes_filters(smiles: str, patterns: Sequence) -> bool:
    """MOSES's ``mol_passes_filters``: a valid, uncharged molecule of allowed atoms, no ring of
    8+ atoms, matching none of ``patterns`` (``filter_patterns()``) with hydrogens added."""
    Chem = _rdkit_chem()
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None:
        return False
    if any(len(ring) >= 8 for ring in mol.GetRingInfo().AtomRings()):
        return False
    if any(atom.GetFormalCharge() != 0 for atom in mol.GetAtoms()):
        return False
    if any(atom.GetSymbol() not in FILTER_ATOMS for atom in mol.GetAtoms()):
        return False
    with_h = Chem.AddHs(mol)
    if any(with_h.HasSubstructMatch(p) for p in patterns):
        return False
    return Chem.MolFromSmiles(Chem.MolToSmiles(mol, isomericSmiles=False)) is not None


def canonical(smiles: str) -> str | None:
    """RDKit's canonical SMILES, or None if the string is not a valid molecule."""
    Chem = _rdkit_chem()
    if not smiles:
        return None
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def generation_metrics(generated: Sequence[str], train: Iterable[str],
                       ks: Sequence[int] = (1000, 10000), filters: Sequence | None = None
                       ) -> dict:
    """MOSES's valid, unique@k, novelty (and filters) of ``generated`` against ``train``.

    ``train`` is compared as given (MOSES's files hold canonical SMILES); generated molecules
    are canonicalized with RDKit first. Returns ``valid``, ``unique@k`` for each k (with
    ``unique@k_n``, the number of valid molecules it used when fewer than k were valid),
    ``novelty``, ``num_generated`` and ``num_valid``; with ``filters`` (the patterns of
    ``filter_patterns()``) also ``filters``, the fraction of the valid molecules (repeats
    included, as in MOSES) that pass them.
    """
    if not len(generated):
        raise ValueError("no generated strings to score")
    canon = [canonical(s) for s in generated]
    valid = [c for c in canon if c is not None]
    out: dict = {"num_generated": len(generated), "num_valid": len(valid),
                 "valid": len(valid) / len(generated)}
    for k in ks:
        first = valid[:k]
        out[f"unique@{k}"] = len(set(first)) / len(first) if first else 0.0
        if len(first) < k:
            out[f"unique@{k}_n"] = len(first)
    unique = set(valid)
    train_set = train if isinstance(train, (set, frozenset)) else set(train)
    out["novelty"] = len(unique - train_set) / len(unique) if unique else 0.0
    if filters is not None:
        out["filters"] = (sum(passes_filters(c, filters) for c in valid) / len(valid)
                          if valid else 0.0)
    return out
