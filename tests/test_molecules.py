"""MOSES metrics on a handful of SMILES written here (no molsets needed), and the script's checks."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvae.data import molecules
from jaxvae.data.vocab import EOS_ID, SPECIALS, Vocabulary

pytest.importorskip("rdkit")

RESULTS = Path(__file__).resolve().parent.parent / "results"


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


SELFIES_MOLECULES = ["CC(=O)Oc1ccccc1C(=O)O", "Clc1ccc(Br)cc1", "c1cc[nH]c1", "C#N",
                     "CN1CCCC1c1cccnc1", "O=C(O)C1CC2CCC1CC2", "Cc1ccc2ccccc2c1"]


def test_selfies_round_trip_gives_back_the_same_molecules():
    pytest.importorskip("selfies")
    encoded = molecules.to_representation(SELFIES_MOLECULES, "selfies")
    assert encoded[3] == "[C][#N]"
    assert all(s.startswith("[") and s.endswith("]") for s in encoded)
    decoded = molecules.to_smiles(encoded, "selfies")
    assert [molecules.canonical(s) for s in decoded] == [molecules.canonical(s)
                                                         for s in SELFIES_MOLECULES]
    assert molecules.to_representation(SELFIES_MOLECULES, "smiles") == SELFIES_MOLECULES
    # a symbol outside the SELFIES alphabet cannot be decoded: it scores as an invalid sample
    assert molecules.to_smiles(["[C][Xyz]"], "selfies") == [""]
    with pytest.raises(ValueError, match="unknown molecule representation"):
        molecules.to_smiles(encoded, "inchi")


def test_selfies_vocabulary_tokenizes_by_symbol_and_round_trips():
    pytest.importorskip("selfies")
    from jaxvae.data.vocab import Vocabulary, tokenize_selfies
    assert tokenize_selfies("[C][=Branch1][C][=O][O]") == ["[C]", "[=Branch1]", "[C]", "[=O]",
                                                           "[O]"]
    with pytest.raises(ValueError, match="not a sequence of bracketed symbols"):
        tokenize_selfies("[C]x")
    encoded = molecules.to_representation(SELFIES_MOLECULES, "selfies")
    vocab = Vocabulary.from_corpus(encoded, "selfies")
    tokens = vocab.encode_batch(encoded)
    assert vocab.decode_batch(tokens) == encoded
    assert Vocabulary.from_json(vocab.to_json()) == vocab


def test_random_selfies_token_sequences_decode_to_valid_molecules():
    pytest.importorskip("selfies")
    import numpy as np
    from jaxvae.data.vocab import Vocabulary
    vocab = Vocabulary.from_corpus(molecules.to_representation(SELFIES_MOLECULES, "selfies"),
                                   "selfies")
    atom = vocab.index["[C]"]
    rng = np.random.default_rng(0)
    for _ in range(200):
        # an atom first, then any symbols: branches and rings that do not fit are dropped
        ids = [atom] + rng.integers(4, len(vocab), rng.integers(0, 40)).tolist()
        smiles = molecules.to_smiles([vocab.decode(ids)], "selfies")[0]
        assert molecules.canonical(smiles) is not None, vocab.decode(ids)


def _tiny_moses(monkeypatch):
    from experiments import molecules as script
    train = [molecules.canonical(s) for s in SELFIES_MOLECULES * 20]
    monkeypatch.setattr(script.molecules, "load_moses",
                        lambda split="train": train if split == "train" else train[:7])
    monkeypatch.setattr(script.molecules, "filter_patterns", lambda: [])
    return script


@pytest.mark.parametrize("representation", ["kekule", "selfies"])
def test_molecules_script_trains_and_writes_samples_as_smiles(representation, monkeypatch,
                                                              tmp_path):
    pytest.importorskip("selfies")
    import json
    script = _tiny_moses(monkeypatch)
    out = tmp_path / "run"
    argv = ["--representation", representation, "--train-size", "100", "--test-size", "7",
            "--epochs", "1", "--batch-size", "50", "--hidden-dim", "16", "--embed-dim", "8",
            "--latent-dim", "4", "--free-bits", "0.1", "--num-samples", "30",
            "--temperature", "1", "--no-distribution-metrics", "--quiet", "--outdir", str(out)]
    if representation == "kekule":
        argv += ["--sampler", "plain", "valence"]
    assert script.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["representation"] == representation
    assert results["config"]["free_bits"] == 0.1
    lines = (out / "samples_T1.0.txt").read_text().split("\n")[:-1]
    assert len(lines) == 30 and results["metrics"]["num_generated"] == 30
    tokenizer = json.loads((out / "vocab.json").read_text())["tokenizer"]
    assert tokenizer == molecules.TOKENIZERS[representation]
    if representation == "kekule":  # no aromatic atom in the vocabulary
        assert not any(t in json.loads((out / "vocab.json").read_text())["tokens"]
                       for t in ("c", "n", "[nH]"))
        masked = (out / "samples_T1.0_valence.txt").read_text().split("\n")[:-1]
        assert len(masked) == 30 and results["metrics_by_temperature"]["1.0 valence"][
            "sampler"] == "valence"
    if representation == "selfies":  # a sample is a molecule unless it is empty
        assert all(molecules.canonical(s) is not None for s in lines if s)
        assert not any("Branch" in s or "Ring" in s for s in lines)  # SMILES, not SELFIES


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside fcd_torch and scipy
def test_molecules_script_writes_the_distribution_metrics(monkeypatch, tmp_path):
    pytest.importorskip("selfies")
    pytest.importorskip("fcd_torch")
    import json
    script = _tiny_moses(monkeypatch)
    ref = script.moses.statistics(sorted({molecules.canonical(s) for s in SELFIES_MOLECULES}))
    monkeypatch.setattr(script.moses, "reference_statistics", lambda split="test": ref)
    out = tmp_path / "run"
    argv = ["--representation", "selfies", "--train-size", "100", "--test-size", "7",
            "--epochs", "1", "--batch-size", "50", "--hidden-dim", "16", "--embed-dim", "8",
            "--latent-dim", "4", "--num-samples", "40", "--temperature", "1",
            "--quiet", "--outdir", str(out)]
    assert script.main(argv) == 0
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    for key in ("FCD/Test", "SNN/TestSF", "Frag/Test", "IntDiv", "QED"):
        assert key in metrics, key
    assert 0 <= metrics["SNN/Test"] <= 1 and metrics["novelty_vs_train_subset"] >= 0


def _smiles_vocab():
    smiles = [molecules.canonical(s) for s in SELFIES_MOLECULES]
    return smiles, Vocabulary.from_corpus(smiles, "smiles")


def test_every_training_smiles_is_well_formed_and_broken_ones_are_not():
    from jaxvae.data import smiles_syntax
    smiles, vocab = _smiles_vocab()
    syntax = smiles_syntax.smiles_syntax(vocab)
    ok = smiles_syntax.well_formed(syntax, jnp.asarray(vocab.encode_batch(smiles, 80)))
    assert np.asarray(ok).all()
    ring = next(s for s in smiles if "1" in s)
    branch = next(s for s in smiles if "(" in s)
    broken = [ring[:ring.rindex("1")] + ring[ring.rindex("1") + 1:],  # a ring bond left open
              branch.replace("(", "", 1),  # a ')' without its '('
              branch[:branch.index("(") + 1] + ")" + branch[branch.index("(") + 1:],  # '()'
              "C1" + "1" + smiles[0],  # a ring closed on the atom that opened it
              "CC1C1" + smiles[0],  # a ring bond between two atoms already bonded
              "CC1(C1)" + smiles[0],  # the same into a branch
              smiles[0] + "=",  # a bond at the end
              "(" + smiles[0] + ")"]  # a branch before any atom
    assert not np.asarray(smiles_syntax.well_formed(
        syntax, jnp.asarray(vocab.encode_batch(broken, 80)))).any()
    # the length budget: a string fits a row of its own length (with EOS), and one token less
    # cuts it off
    for s in smiles:
        n = len(vocab.encode(s)) + 1
        exact = jnp.asarray(vocab.encode_batch([s], n))
        assert bool(smiles_syntax.well_formed(syntax, exact)[0]), s
        assert not bool(smiles_syntax.well_formed(syntax, exact[:, :-1])[0]), s


def test_syntax_masked_sampling_without_ring_digits_in_the_vocabulary():
    from jaxvae.data import smiles_syntax
    from jaxvae.models import sequence
    vocab = Vocabulary.from_corpus(["CCO", "CC(C)O"], "smiles")
    syntax = smiles_syntax.smiles_syntax(vocab)
    model = sequence.sequence_vae(len(vocab), 8, 16, 4)
    tokens = sequence.sample(model, sequence.init(model, jax.random.key(0)), jax.random.key(1),
                             50, 10, constraint=syntax)
    assert np.asarray(smiles_syntax.well_formed(syntax, tokens)).all()


def test_smiles_syntax_rejects_other_vocabularies():
    from jaxvae.data import smiles_syntax
    with pytest.raises(ValueError, match="SMILES vocabulary"):
        smiles_syntax.smiles_syntax(Vocabulary.from_corpus(["abc"], "char"))


def test_syntax_masked_samples_are_well_formed_and_end_within_the_length():
    from jaxvae.data import smiles_syntax
    from jaxvae.models import sequence
    _, vocab = _smiles_vocab()
    syntax = smiles_syntax.smiles_syntax(vocab)
    model = sequence.sequence_vae(len(vocab), 8, 16, 4)
    params = sequence.init(model, jax.random.key(0))
    # an untrained decoder samples nearly uniform tokens: plain rows break the syntax
    key = jax.random.key(1)
    plain = sequence.sample(model, params, key, 400, 40)
    plain_ok = np.asarray(smiles_syntax.well_formed(syntax, plain))
    assert 0 < plain_ok.mean() < 0.2
    # the same keys: a plain sample that the mask allows all along is drawn again unchanged
    masked = sequence.sample(model, params, key, 400, 40, constraint=syntax)
    np.testing.assert_array_equal(masked[plain_ok], plain[plain_ok])
    assert not np.array_equal(masked[~plain_ok], plain[~plain_ok])
    # with the constraint every row is well formed and ends within the length, however short
    for max_len in (40, 12, 2):
        masked = sequence.sample(model, params, key, 400, max_len, constraint=syntax)
        assert np.asarray(smiles_syntax.well_formed(syntax, masked)).all(), max_len
    # two tokens leave room for one atom and EOS only
    assert (np.asarray(syntax.class_V)[np.asarray(masked[:, 0])] == smiles_syntax.ATOM).all()
    assert (np.asarray(masked[:, 1]) == EOS_ID).all()


def test_molecules_script_rescores_a_finished_run_without_touching_it(monkeypatch, tmp_path,
                                                                     capsys):
    import hashlib
    import json
    import shutil
    script = _tiny_moses(monkeypatch)
    run = tmp_path / "run"
    common = ["--num-samples", "60", "--temperature", "1", "--no-distribution-metrics",
              "--quiet"]
    assert script.main(["--train-size", "100", "--test-size", "7", "--epochs", "1",
                        "--batch-size", "50", "--hidden-dim", "16", "--embed-dim", "8",
                        "--latent-dim", "4", "--seed", "3", "--outdir", str(run), *common]) == 0
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()}
    out = tmp_path / "rescored"
    assert script.main(["--from-run", str(run), "--sampler", "plain", "syntax",
                        "--outdir", str(out), *common]) == 0
    assert digest == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()}
    results = json.loads((out / "results.json").read_text())
    assert set(results["metrics_by_temperature"]) == {"1.0", "1.0 syntax"}
    assert results["metrics_by_temperature"]["1.0 syntax"]["sampler"] == "syntax"
    # the plain sampler with the run's seed (read from the run) draws its own samples again
    assert (out / "samples_T1.0.txt").read_text() == (run / "samples_T1.0.txt").read_text()
    assert len((out / "samples_T1.0_syntax.txt").read_text().split("\n")) == 61
    # a run whose parameters are not the shapes its results.json describes is refused
    other = tmp_path / "other"
    shutil.copytree(run, other)
    results = json.loads((other / "results.json").read_text())
    results["config"]["hidden_dim"] = 12
    (other / "results.json").write_text(json.dumps(results))
    capsys.readouterr()
    assert script.main(["--from-run", str(other), "--outdir", str(tmp_path / "o"), *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not hold this model's parameters" in err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_molecules_script_refuses_syntax_masking_without_smiles(monkeypatch, tmp_path, capsys):
    script = _tiny_moses(monkeypatch)
    assert script.main(["--representation", "selfies", "--sampler", "syntax",
                        "--outdir", str(tmp_path / "x")]) == 2
    assert "error: --sampler syntax" in capsys.readouterr().err
    assert script.main(["--representation", "selfies", "--sampler", "plain", "valence",
                        "--outdir", str(tmp_path / "x")]) == 2
    assert "error: --sampler valence masks SMILES tokens" in capsys.readouterr().err
    assert script.main(["--from-run", str(tmp_path / "none"), "--outdir",
                        str(tmp_path / "y")]) == 2
    assert "is not a finished sequence run" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_kekule_form_has_no_aromatic_atoms_and_is_the_same_molecule():
    kekule = molecules.to_representation(SELFIES_MOLECULES, "kekule")
    assert kekule[2] == "C1=CNC=C1"  # pyrrole: the [nH] becomes an N with an implicit H
    tokens = set(Vocabulary.from_corpus(kekule, "smiles").tokens) - set(SPECIALS)
    assert tokens == {"C", "N", "O", "Cl", "Br", "=", "#", "(", ")", "1", "2"}
    assert [molecules.canonical(s) for s in kekule] == [molecules.canonical(s)
                                                        for s in SELFIES_MOLECULES]
    assert molecules.to_smiles(kekule, "kekule") == kekule
    with pytest.raises(ValueError, match="RDKit does not parse it"):
        molecules.to_representation(["C1CC"], "kekule")


def test_atom_valences_follow_element_charge_and_hydrogens():
    from jaxvae.data.smiles_valence import UNLIMITED, atom_valence
    assert [atom_valence(t) for t in ("C", "c", "N", "n", "O", "S", "Cl", "Br", "F", "P")] == [
        4, 4, 3, 3, 2, 6, 1, 1, 1, 7]
    assert [atom_valence(t) for t in ("[nH]", "[NH+]", "[N+]", "[O-]", "[C-]", "[CH2]",
                                      "[S@@]", "[13CH3]")] == [2, 3, 4, 1, 3, 2, 6, 1]
    assert atom_valence("[Xe]") == atom_valence("*") == UNLIMITED


def test_valence_rules_pass_every_written_molecule_and_refuse_overfull_atoms():
    from rdkit import Chem
    from jaxvae.data import smiles_valence
    # RDKit's canonical SMILES of 2,000 drug-like molecules (the valid samples of the committed
    # SMILES run, which are MOSES-like) and of the handful above, aromatic and in Kekulé form
    samples = (RESULTS / "moses-smiles-400k-cosine" / "samples_T1.0.txt").read_text().split()
    canonical = [c for c in map(molecules.canonical, samples[:2300]) if c is not None][:2000]
    written = [molecules.canonical(s) for s in SELFIES_MOLECULES] + canonical
    written += molecules.to_representation(written, "kekule")
    vocab = Vocabulary.from_corpus(written, "smiles")
    constraint = smiles_valence.smiles_valence(vocab)
    rows = jnp.asarray(vocab.encode_batch(written, vocab.max_tokens(written) + 1))
    assert len(written) == 4014 and np.asarray(smiles_valence.valid_valences(constraint, rows)).all()
    # each of these is well formed and RDKit refuses it for a valence
    overfull = ["ClC(Cl)(Cl)(Cl)Cl",  # carbon with five bonds
                "O=C=O=C",  # an oxygen with four
                "C#N=C",  # a nitrogen with five, through a bond token
                "N1#CC1",  # ... through a ring bond opened before the triple bond
                "O1CC=1",  # an oxygen with three, the ring bond's order written at closing
                "Cl(C)C"]  # a chlorine with two, through a branch
    assert all(Chem.MolFromSmiles(s) is None for s in overfull)
    rows = jnp.asarray(vocab.encode_batch(overfull, 20))
    assert np.asarray(smiles_syntax_well_formed(vocab, rows)).all()
    assert not np.asarray(smiles_valence.valid_valences(constraint, rows)).any()


def smiles_syntax_well_formed(vocab, rows):
    from jaxvae.data import smiles_syntax
    return smiles_syntax.well_formed(smiles_syntax.smiles_syntax(vocab), rows)


def test_valence_masked_samples_are_molecules_where_syntax_masked_ones_are_not():
    from rdkit import Chem
    from jaxvae.data import smiles_valence
    from jaxvae.models import sequence
    kekule = molecules.to_representation(SELFIES_MOLECULES, "kekule")
    vocab = Vocabulary.from_corpus(kekule, "smiles")
    constraint = smiles_valence.smiles_valence(vocab)
    model = sequence.sequence_vae(len(vocab), 8, 16, 4)
    params = sequence.init(model, jax.random.key(0))
    key = jax.random.key(1)
    # an untrained decoder: nearly uniform tokens, which the masks alone shape
    syntax = sequence.sample(model, params, key, 400, 40, constraint=constraint.syntax)
    valence = sequence.sample(model, params, key, 400, 40, constraint=constraint)

    def rdkit_valid(tokens):
        return np.array([Chem.MolFromSmiles(s) is not None
                         for s in vocab.decode_batch(np.asarray(tokens))])

    syntax_valid, valence_valid = rdkit_valid(syntax), rdkit_valid(valence)
    # the rules never refuse a string RDKit accepts
    passes = np.asarray(smiles_valence.valid_valences(constraint, syntax))
    assert (passes >= syntax_valid).all()
    # where RDKit refuses a syntax-masked sample it is a valence error, and the valence mask
    # avoids nearly all of them (a row in a dead end falls back to the syntax alone)
    assert syntax_valid.mean() < 0.25 and valence_valid.mean() > 0.85
    # the same keys: a syntax-masked sample that the valences allow all along is drawn again
    np.testing.assert_array_equal(valence[passes], syntax[passes])
