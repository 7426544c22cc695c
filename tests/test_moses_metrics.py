"""The MOSES distribution metrics on fingerprints and molecules written here, against values
worked out by hand, RDKit's own Tanimoto, and fcd_torch called directly (no molsets needed)."""

import math

import numpy as np
import pytest

pytest.importorskip("rdkit")

from jaxvae.evaluation import molecules as em  # noqa: E402

# BRICS cuts the ester into acyl, ether O and ethyl; the anilide into acyl, NH and phenyl;
# diphenylmethane into two phenyls and the CH2 (see the fragment test).
GEN = ["CCOC(C)=O", "CC(=O)Nc1ccccc1", "c1ccc(Cc2ccccc2)cc1"]
A, B, EMPTY = [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]


def test_tanimoto_aggregates_match_hand_computed_values():
    a, b, empty = (np.array([v], np.uint8) for v in (A, B, EMPTY))
    # T(a, b) = |a & b| / (|a| + |b| - |a & b|) = 1 / 3; T(a, empty) = 0; T(empty, empty) = 1
    assert em.snn(a, np.concatenate([b, empty])) == pytest.approx(1 / 3)
    assert em.snn(empty, empty) == 1.0
    assert em.snn(np.concatenate([a, b]), a) == pytest.approx((1 + 1 / 3) / 2)
    # IntDiv over {a, b}: each row's mean similarity (1 + 1/3) / 2 = 2/3, so 1 - 2/3
    pair = np.array([A, B], np.uint8)
    assert em.internal_diversity(pair) == pytest.approx(1 / 3)
    assert em.internal_diversity(pair, p=2) == pytest.approx(1 - math.sqrt((1 + 1 / 9) / 2))
    assert em.internal_diversity(np.array([A, A], np.uint8)) == pytest.approx(0.0)
    # blocks smaller than the sets give the same numbers
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 2, (7, 16), np.uint8), rng.integers(0, 2, (5, 16), np.uint8)
    for agg in ("max", "mean"):
        assert em.average_agg_tanimoto(x, y, agg, batch=2) == pytest.approx(
            em.average_agg_tanimoto(x, y, agg, batch=100))
    with pytest.raises(ValueError, match="agg must be"):
        em.average_agg_tanimoto(x, y, "min")


def test_snn_on_molecules_matches_rdkit_bulk_tanimoto():
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator
    ref = ["CCO", "CCN", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "c1ccc2ccccc2c1"]
    gen_mols, ref_mols = [em.get_mol(s) for s in GEN], [em.get_mol(s) for s in ref]
    fps = em.fingerprints(gen_mols)
    assert fps.shape == (3, 1024) and fps.dtype == np.uint8
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    bit_gen = [generator.GetFingerprint(m) for m in gen_mols]
    bit_ref = [generator.GetFingerprint(m) for m in ref_mols]
    expected = np.mean([max(DataStructs.BulkTanimotoSimilarity(g, bit_ref)) for g in bit_gen])
    assert em.snn(fps, em.fingerprints(ref_mols)) == pytest.approx(expected, rel=1e-6)
    pairs = [DataStructs.BulkTanimotoSimilarity(g, bit_gen) for g in bit_gen]
    assert em.internal_diversity(fps) == pytest.approx(1 - np.mean(pairs), rel=1e-6)


def test_fragments_scaffolds_and_their_cosine_similarity():
    mols = [em.get_mol(s) for s in GEN]
    frag = em.fragments(mols)
    assert frag == {"[1*]C(C)=O": 2, "[3*]O[3*]": 1, "[4*]CC": 1, "[16*]c1ccccc1": 3,
                    "[5*]N[5*]": 1, "[8*]C[8*]": 1}
    ref = {"[1*]C(C)=O": 1, "[16*]c1ccccc1": 1, "[9*]n1cccc1": 4}
    # <r, g> = 2 + 3; ||g||^2 = 4 + 1 + 1 + 9 + 1 + 1 = 17; ||r||^2 = 1 + 1 + 16
    assert em.cosine_similarity(ref, frag) == pytest.approx(5 / math.sqrt(17 * 18))
    assert math.isnan(em.cosine_similarity({}, frag))
    # Bemis-Murcko scaffolds with at least 2 rings: the ester and the anilide have none
    assert em.scaffolds(mols) == {"c1ccc(Cc2ccccc2)cc1": 1}
    assert em.scaffold(em.get_mol("Cc1ccc2ccccc2c1")) == "c1ccc2ccccc2c1"
    assert em.scaffold(em.get_mol("Cc1ccccc1")) is None
    assert em.scaffold(em.get_mol("Cc1ccccc1"), min_rings=1) == "c1ccccc1"
    ref_scaf = {"c1ccc(Cc2ccccc2)cc1": 2, "c1ccc2ccccc2c1": 2}
    assert em.cosine_similarity(ref_scaf, em.scaffolds(mols)) == pytest.approx(1 / math.sqrt(2))


def test_valid_canonical_keeps_repeats_and_drops_invalid_strings():
    assert em.valid_canonical(["OCC", "C1CC", "", "CCO", "xyz"]) == ["CCO", "CCO"]


def test_frechet_distance_matches_the_closed_form_of_diagonal_gaussians():
    mu1, mu2 = np.zeros(2), np.array([1.0, 2.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 1.0])
    # |mu1 - mu2|^2 + tr(S1 + S2) - 2 tr((S1 S2)^1/2) = 5 + 10 - 2 * (2 + 2)
    assert em.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(7.0)
    assert em.frechet_distance(mu2, s2, mu2, s2) == pytest.approx(0.0, abs=1e-9)


FCD_A = ["CCO", "CCN", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "c1ccc2ccccc2c1", "CCOC(C)=O",
         "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "O=C(O)c1ccccc1"]
FCD_B = ["CCCO", "NCCN", "c1ccncc1", "COc1ccccc1", "CC(=O)OC1CCCCC1", "c1ccc(Cc2ccccc2)cc1",
         "CN1CCCC1c1cccnc1", "OC1CCCCC1"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside fcd_torch and scipy
def test_fcd_matches_fcd_torch_called_directly():
    fcd_torch = pytest.importorskip("fcd_torch")
    expected = fcd_torch.FCD(device="cpu", n_jobs=1)(gen=FCD_A, ref=FCD_B)
    ours = em.frechet_distance(**_args(em.fcd_statistics(FCD_B), em.fcd_statistics(FCD_A)))
    assert ours == pytest.approx(expected, rel=1e-5)
    assert ours > 1.0


def _args(ref, gen):
    return {"mu1": ref["mu"], "sigma1": ref["sigma"], "mu2": gen["mu"], "sigma2": gen["sigma"]}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_set_scored_against_its_own_statistics_is_perfect():
    pytest.importorskip("fcd_torch")
    refs = {"Test": em.statistics(FCD_A)}
    out = em.distribution_metrics(em.valid_canonical(FCD_A), refs)
    assert out["SNN/Test"] == pytest.approx(1.0)
    assert out["Frag/Test"] == pytest.approx(1.0)
    assert out["Scaf/Test"] == pytest.approx(1.0)
    assert out["FCD/Test"] == pytest.approx(0.0, abs=1e-3)
    for name in ("logP", "SA", "QED", "weight"):
        assert out[name] == pytest.approx(0.0, abs=1e-9)
    assert 0 < out["IntDiv"] < 1 and out["IntDiv2"] < out["IntDiv"]
    with pytest.raises(ValueError, match="valid SMILES only"):
        em.statistics(["CCO", "C1CC"])
    with pytest.raises(ValueError, match="at least 2 valid molecules"):
        em.distribution_metrics(["CCO"], refs)


def test_property_values_are_rdkit_descriptors():
    values = em.property_values([em.get_mol("CCO")])
    assert values["weight"][0] == pytest.approx(46.069, abs=1e-3)  # C2H6O
    assert 1 <= values["SA"][0] <= 10 and 0 < values["QED"][0] < 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_scoring_script_writes_the_table_of_a_samples_file(monkeypatch, tmp_path, capsys):
    pytest.importorskip("fcd_torch")
    import json
    from experiments import moses_metrics as script
    ref = em.statistics(em.valid_canonical(FCD_B))
    monkeypatch.setattr(script.molecules, "load_moses", lambda split="train": FCD_B)
    monkeypatch.setattr(script.molecules, "filter_patterns", lambda: [])
    monkeypatch.setattr(em, "reference_statistics", lambda split="test": ref)
    samples = tmp_path / "samples_T1.0.txt"
    samples.write_text("\n".join(FCD_A[:4] + ["C1CC", ""] + FCD_B[5:7]) + "\n")
    assert script.main([str(samples)]) == 0
    out = json.loads((tmp_path / "samples_T1.0.moses.json").read_text())
    assert out["num_generated"] == 8 and out["valid"] == pytest.approx(6 / 8)
    assert out["novelty"] == pytest.approx(4 / 6)  # two samples are "training" molecules
    for key in ("FCD/Test", "SNN/TestSF", "Frag/Test", "Scaf/TestSF", "IntDiv", "SA"):
        assert np.isfinite(out[key]), key
    assert "FCD/Test" in capsys.readouterr().out
    assert script.main([str(tmp_path / "missing.txt")]) == 2
