"""MOSES metrics on a handful of SMILES written here (no molsets needed), and the script's checks."""

import pytest

from jaxvae import molecules

pytest.importorskip("rdkit")


def test_canonical_smiles_identify_the_same_molecule_and_reject_invalid_strings():
    assert molecules.canonical("OCC") == molecules.canonical("CCO") == "CCO"
    assert molecules.canonical("c1ccccc1") == molecules.canonical("C1=CC=CC=C1")
    assert molecules.canonical("C1CC") is None  # an unclosed ring
    assert molecules.canonical("") is None


def test_generation_metrics_follow_the_moses_definitions():
    generated = ["CCO", "OCC", "c1ccccc1", "C1CC", "xyz", "CC(=O)O", "CCN"]
    train = {"CCO", "CCN"}
    m = molecules.generation_metrics(generated, train, ks=(3, 10))
    # valid canonical: CCO, CCO, c1ccccc1, CC(=O)O, CCN -> 5 of 7
    assert m["num_valid"] == 5 and m["valid"] == pytest.approx(5 / 7)
    assert m["unique@3"] == pytest.approx(2 / 3)  # first 3 valid: CCO, CCO, c1ccccc1
    assert m["unique@10"] == pytest.approx(4 / 5) and m["unique@10_n"] == 5
    assert m["novelty"] == pytest.approx(2 / 4)  # c1ccccc1 and CC(=O)O are new
    with pytest.raises(ValueError, match="no generated strings"):
        molecules.generation_metrics([], train)


def test_molecules_script_rejects_bad_arguments_before_loading_data():
    import molecules as script
    args = script.build_parser().parse_args(["--temperature", "0"])
    with pytest.raises(ValueError, match="--temperature must be > 0"):
        script.run(args)
