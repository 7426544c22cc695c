"""MOSES metrics on a handful of SMILES written here (no molsets needed), and the script's checks."""

import pytest

from jaxvae.data import molecules

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


def test_filters_follow_moses_mol_passes_filters(tmp_path):
    from rdkit import Chem
    mcf1 = "[#6]=&!@[#6]-[#6]#[#7]"  # MCF1 of MOSES's mcf.csv: an acrylonitrile
    patterns = [Chem.MolFromSmarts(mcf1)]
    assert molecules.passes_filters("CCO", patterns)
    assert molecules.passes_filters("c1ccccc1O", patterns)
    assert not molecules.passes_filters("C=CC#N", patterns)  # matches the pattern
    assert molecules.passes_filters("C=CC#N", [])  # ... and passes without it
    assert not molecules.passes_filters("C[N+](C)(C)C", [])  # charged
    assert not molecules.passes_filters("CCP", [])  # phosphorus is not an allowed atom
    assert not molecules.passes_filters("C1CCCCCCC1", [])  # an 8-membered ring
    assert molecules.passes_filters("C1CCCCCC1", [])  # 7 is fine
    assert not molecules.passes_filters("C1CC", [])  # invalid
    m = molecules.generation_metrics(["CCO", "C=CC#N", "C1CC", "CCO"], set(), ks=(),
                                     filters=patterns)
    assert m["filters"] == pytest.approx(2 / 3)  # of the 3 valid: CCO twice passes
    # the two files, in MOSES's layouts (a header in mcf.csv, none in the PAINS list)
    (tmp_path / "mcf.csv").write_text(f"names,smarts\nMCF1,{mcf1}\n")
    (tmp_path / "wehi_pains.csv").write_text('"[#7]-[#7]=[#8]"   ,"<regId=x(1)>"\n')
    read = molecules.filter_patterns(tmp_path)
    assert len(read) == 2 and not molecules.passes_filters("C=CC#N", read)
    (tmp_path / "mcf.csv").unlink()
    with pytest.raises(ValueError, match="no MOSES filter list"):
        molecules.filter_patterns(tmp_path)


def test_molecules_script_rejects_bad_arguments_before_loading_data():
    from experiments import molecules as script
    args = script.build_parser().parse_args(["--temperature", "0"])
    with pytest.raises(ValueError, match="--temperature must be > 0"):
        script.run(args)
