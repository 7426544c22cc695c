"""The MOSES metric table of generated molecules (Polykovskiy et al. 2020), on RDKit.

``moses.metrics`` itself no longer imports (its SA scorer needs ``rdkit.six``, gone from RDKit),
so each metric is written here after its definition in ``moses/metrics/metrics.py`` and
``utils.py`` (molsets 0.3.1). ``gen`` below is the list of canonical SMILES of the valid
generated molecules, repeats kept, as MOSES scores it; ``ref`` is a reference set (MOSES's test
or scaffold-test split):

    FCD     Frechet ChemNet Distance: ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2)) of
            the Gaussians fitted to the penultimate ChemNet activations (fcd_torch's weights)
    SNN     mean over gen of the largest Tanimoto similarity to any ref molecule
    Frag    cosine similarity of the counts of BRICS fragments in gen and in ref
    Scaf    cosine similarity of the counts of Bemis-Murcko scaffolds (with >= 2 rings)
    IntDiv  1 - mean_i (mean_j T(g_i, g_j)^p)^(1/p) over all pairs of gen (itself included), p = 1
            (IntDiv2: p = 2)
    logP, SA, QED, weight   1-D Wasserstein distance between the property values of gen and ref

Tanimoto similarities are between Morgan fingerprints of radius 2 folded to 1024 bits:
T(a, b) = |a & b| / (|a| + |b| - |a & b|), 1 for two empty fingerprints.

MOSES ships the statistics of its reference sets (ChemNet mean and covariance, fingerprints,
fragment and scaffold counts, property values) in the molsets wheel
(``moses/dataset/data/test_stats.npz``, ``test_scaffolds_stats.npz``);
``reference_statistics`` reads them, ``statistics`` computes the same for any list of SMILES.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import linalg, stats

from jaxvae.data import molecules as data

FP_RADIUS, FP_BITS = 2, 1024
SCAFFOLD_MIN_RINGS = 2
PROPERTIES = ("logP", "SA", "QED", "weight")
REFERENCE_SPLITS = {"Test": "test", "TestSF": "test_scaffolds"}


def _chem():
    return data._rdkit_chem()


def get_mol(smiles: str):
    """MOSES's ``get_mol``: the sanitized RDKit molecule of ``smiles``, or None."""
    Chem = _chem()
    if not smiles:
        return None
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    try:
        Chem.SanitizeMol(mol)
    except ValueError:
        return None
    return mol


def valid_canonical(generated: Sequence[str]) -> list[str]:
    """The canonical SMILES of the valid strings of ``generated``, in order, repeats kept."""
    Chem = _chem()
    out = []
    for s in generated:
        mol = get_mol(s)
        if mol is not None:
            out.append(Chem.MolToSmiles(mol))
    return out


def fingerprints(mols: Sequence) -> np.ndarray:
    """Morgan fingerprints (radius 2, 1024 bits) as ``uint8`` rows ``(N, 1024)``."""
    from rdkit.Chem import rdFingerprintGenerator
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=FP_RADIUS, fpSize=FP_BITS)
    out = np.zeros((len(mols), FP_BITS), np.uint8)
    for i, mol in enumerate(mols):
        out[i] = generator.GetFingerprintAsNumPy(mol)
    return out


def average_agg_tanimoto(ref_fps: np.ndarray, gen_fps: np.ndarray, agg: str = "max",
                         p: float = 1.0, batch: int = 4096) -> float:
    """mean_i agg_j T(gen_i, ref_j): ``agg`` ``"max"`` (SNN) or ``"mean"`` ((mean_j T^p)^(1/p)).

    Computed in blocks of ``batch`` x ``batch`` similarities: |a & b| is the dot product of the
    0/1 rows (exact in float32 up to 2^24 bits).
    """
    if agg not in ("max", "mean"):
        raise ValueError(f"agg must be 'max' or 'mean', got {agg!r}")
    ref = np.asarray(ref_fps, np.float32)
    gen = np.asarray(gen_fps, np.float32)
    if not len(ref) or not len(gen):
        raise ValueError("average_agg_tanimoto needs at least one fingerprint on each side")
    ref_bits, gen_bits = ref.sum(1), gen.sum(1)
    total = np.zeros(len(gen), np.float64)
    best = np.zeros(len(gen), np.float64)
    for j in range(0, len(ref), batch):
        r, r_bits = ref[j:j + batch], ref_bits[j:j + batch]
        for i in range(0, len(gen), batch):
            both = r @ gen[i:i + batch].T
            union = r_bits[:, None] + gen_bits[None, i:i + batch] - both
            with np.errstate(invalid="ignore", divide="ignore"):
                sim = np.where(union > 0, both / union, 1.0)
            if agg == "max":
                best[i:i + batch] = np.maximum(best[i:i + batch], sim.max(0))
            else:
                total[i:i + batch] += (sim ** p).sum(0, dtype=np.float64)
    if agg == "max":
        return float(best.mean())
    return float(np.mean((total / len(ref)) ** (1.0 / p)))


def snn(gen_fps: np.ndarray, ref_fps: np.ndarray) -> float:
    """SNN: mean over the generated molecules of the largest Tanimoto similarity to ``ref``."""
    return average_agg_tanimoto(ref_fps, gen_fps, agg="max")


def internal_diversity(gen_fps: np.ndarray, p: float = 1.0) -> float:
    """IntDiv_p = 1 - mean_i (mean_j T(g_i, g_j)^p)^(1/p), j over all of gen (i included)."""
    return 1.0 - average_agg_tanimoto(gen_fps, gen_fps, agg="mean", p=p)


def fragments(mols: Iterable) -> Counter:
    """Counts of the BRICS fragments (canonical SMILES with dummy atoms) of all ``mols``."""
    Chem = _chem()
    counts: Counter = Counter()
    for mol in mols:
        counts.update(Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(mol)).split("."))
    return counts


def scaffold(mol, min_rings: int = SCAFFOLD_MIN_RINGS) -> str | None:
    """The Bemis-Murcko scaffold's canonical SMILES, or None below ``min_rings`` rings."""
    Chem = _chem()
    from rdkit.Chem.Scaffolds import MurckoScaffold
    try:
        core = MurckoScaffold.GetScaffoldForMol(mol)
    except (ValueError, RuntimeError):
        return None
    smiles = Chem.MolToSmiles(core)
    if not smiles or core.GetRingInfo().NumRings() < min_rings:
        return None
    return smiles


def scaffolds(mols: Iterable, min_rings: int = SCAFFOLD_MIN_RINGS) -> Counter:
    """Counts of the scaffolds (``scaffold``) of ``mols``; molecules without one are left out."""
    counts = Counter(scaffold(mol, min_rings) for mol in mols)
    counts.pop(None, None)
    return counts


def cosine_similarity(ref_counts: dict, gen_counts: dict) -> float:
    """<r, g> / (||r|| ||g||) of two count dictionaries over the union of their keys (NaN if
    either is empty)."""
    if not ref_counts or not gen_counts:
        return float("nan")
    keys = sorted(set(ref_counts) | set(gen_counts))
    r = np.array([ref_counts.get(k, 0) for k in keys], np.float64)
    g = np.array([gen_counts.get(k, 0) for k in keys], np.float64)
    return float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g)))


def _sa_scorer():
    """RDKit's Contrib SA scorer (Ertl & Schuffenhauer 2009), the one MOSES ships a copy of."""
    from rdkit.Chem import RDConfig
    path = os.path.join(RDConfig.RDContribDir, "SA_Score", "sascorer.py")
    if not os.path.exists(path):
        raise ImportError(f"the SA score needs RDKit's Contrib SA_Score ({path} is missing)")
    spec = importlib.util.spec_from_file_location("jaxvae_sascorer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def property_values(mols: Sequence) -> dict[str, list[float]]:
    """logP (Crippen), SA, QED and molecular weight of each molecule."""
    from rdkit.Chem import QED, Crippen, Descriptors
    sa = _sa_scorer()
    return {"logP": [Crippen.MolLogP(m) for m in mols],
            "SA": [sa.calculateScore(m) for m in mols],
            "QED": [QED.qed(m) for m in mols],
            "weight": [Descriptors.MolWt(m) for m in mols]}


def chemnet_activations(smiles: Sequence[str], batch_size: int = 512, device: str = "cpu"
                        ) -> np.ndarray:
    """The penultimate ChemNet activations ``(N, 512)`` of ``smiles`` (fcd_torch's network)."""
    try:
        from fcd_torch import FCD
    except ImportError as e:
        raise ImportError("FCD needs fcd_torch (its wheel holds the ChemNet weights): pip "
                          "install fcd_torch==1.0.7") from e
    with warnings.catch_warnings():  # fcd_torch calls numpy's deprecated row_stack
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.asarray(FCD(device=device, n_jobs=1, batch_size=batch_size)
                          .get_predictions(list(smiles)), np.float64)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    As fcd_torch (after Heusel et al. 2017): if the square root is not finite, eps * I is added
    to both covariances; a small imaginary part of the root is dropped.
    """
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"the covariance square root has an imaginary component "
                             f"{np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fcd_statistics(smiles: Sequence[str], **kwargs) -> dict:
    """``{"mu", "sigma"}``: the mean and covariance of ``chemnet_activations``."""
    if len(smiles) < 2:
        raise ValueError(f"FCD needs at least 2 valid molecules, got {len(smiles)}")
    acts = chemnet_activations(smiles, **kwargs)
    return {"mu": acts.mean(0), "sigma": np.cov(acts.T)}


def statistics(smiles: Sequence[str], properties: bool = True, **fcd_kwargs) -> dict:
    """The statistics of a set of valid SMILES that the metrics compare, in MOSES's layout:
    ``{"FCD": {"mu", "sigma"}, "SNN": {"fps"}, "Frag": {"frag"}, "Scaf": {"scaf"}}`` and, with
    ``properties``, ``{name: {"values"}}`` for each of ``PROPERTIES``."""
    mols = [get_mol(s) for s in smiles]
    if any(m is None for m in mols):
        bad = smiles[[m is None for m in mols].index(True)]
        raise ValueError(f"statistics take valid SMILES only; {bad!r} is not")
    out = {"FCD": fcd_statistics(smiles, **fcd_kwargs), "SNN": {"fps": fingerprints(mols)},
           "Frag": {"frag": fragments(mols)}, "Scaf": {"scaf": scaffolds(mols)}}
    if properties:
        out.update({k: {"values": v} for k, v in property_values(mols).items()})
    return out


def reference_statistics(split: str = "test") -> dict:
    """MOSES's precomputed statistics of ``test`` or ``test_scaffolds`` (molsets wheel).

    They are a pickled dictionary inside ``<split>_stats.npz`` of the installed wheel, loaded
    with ``allow_pickle`` (the file comes from the package, not from the user).
    """
    if split not in REFERENCE_SPLITS.values():
        raise ValueError(f"unknown MOSES reference split {split!r}; choose one of "
                         f"{sorted(REFERENCE_SPLITS.values())}")
    path = data.moses_data_dir() / f"{split}_stats.npz"
    if not path.exists():
        raise ValueError(f"no MOSES statistics {path}; reinstall: pip install --no-deps "
                         "--force-reinstall molsets")
    with np.load(path, allow_pickle=True) as f:
        return f["stats"].item()


def distribution_metrics(gen: Sequence[str], refs: dict[str, dict], properties: bool = True,
                         **fcd_kwargs) -> dict:
    """FCD, SNN, Frag, Scaf (``/<name>`` for each reference in ``refs``), IntDiv, IntDiv2 and
    the property distances of ``gen``, valid canonical SMILES (``valid_canonical``).

    Args:
      gen: the valid generated molecules as canonical SMILES, repeats kept.
      refs: reference name (``"Test"``, ``"TestSF"``) -> its ``statistics`` (or
        ``reference_statistics``). The property distances use the first reference.
      properties: also logP, SA, QED, weight (1-D Wasserstein distances).
    """
    if len(gen) < 2:
        raise ValueError(f"the distribution metrics need at least 2 valid molecules, got "
                         f"{len(gen)}")
    mols = [get_mol(s) for s in gen]
    pgen = {"FCD": fcd_statistics(gen, **fcd_kwargs), "fps": fingerprints(mols),
            "frag": fragments(mols), "scaf": scaffolds(mols)}
    out: dict = {}
    for name, ref in refs.items():
        out[f"FCD/{name}"] = frechet_distance(ref["FCD"]["mu"], ref["FCD"]["sigma"],
                                              pgen["FCD"]["mu"], pgen["FCD"]["sigma"])
        out[f"SNN/{name}"] = snn(pgen["fps"], ref["SNN"]["fps"])
        out[f"Frag/{name}"] = cosine_similarity(ref["Frag"]["frag"], pgen["frag"])
        out[f"Scaf/{name}"] = cosine_similarity(ref["Scaf"]["scaf"], pgen["scaf"])
    out["IntDiv"] = internal_diversity(pgen["fps"])
    out["IntDiv2"] = internal_diversity(pgen["fps"], p=2)
    if properties:
        first = next(iter(refs.values()))
        for name, values in property_values(mols).items():
            out[name] = float(stats.wasserstein_distance(first[name]["values"], values))
    return out


def moses_metrics(generated: Sequence[str], train: Iterable[str], refs: dict[str, dict] | None
                  = None, ks: Sequence[int] = (1000, 10000), filters: Sequence | None = None,
                  properties: bool = True, **fcd_kwargs) -> dict:
    """MOSES's ``get_all_metrics``: valid, unique@k, novelty, filters and the distribution
    metrics of ``generated`` (strings, invalid ones included).

    Args:
      generated: the generated SMILES.
      train: the training SMILES (canonical, as MOSES's files hold them) for novelty.
      refs: reference statistics by name; default MOSES's test and scaffold-test sets
        (``{"Test": reference_statistics("test"), "TestSF": reference_statistics(
        "test_scaffolds")}``).
      ks: the k of unique@k.
      filters: the patterns of ``jaxvae.data.molecules.filter_patterns()`` (default: read them
        from the molsets wheel).
    """
    if refs is None:
        refs = {name: reference_statistics(split) for name, split in REFERENCE_SPLITS.items()}
    if filters is None:
        filters = data.filter_patterns()
    out = data.generation_metrics(generated, train, ks=ks, filters=filters)
    out.update(distribution_metrics(valid_canonical(generated), refs, properties=properties,
                                    **fcd_kwargs))
    return out
