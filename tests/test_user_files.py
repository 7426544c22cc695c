"""The user's own files read right: CSV headers, index columns, byte-order marks and label
names as pandas writes them; integer pixels scaled; and every damaged, unreadable or unsafe file
answered with one ValueError/TypeError that names it (a fuzz test over malformed files)."""

import io
import os
import pathlib
import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments import train as train_script
from jaxvae.data import datasets as data
from jaxvae.data import files as user_data


def _every(ds):
    """All examples and labels of a Dataset, in a fixed order (sorted by the first feature)."""
    x = np.concatenate([ds.x_train, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    order = np.argsort(x[:, 0], kind="stable")
    return x[order], y[order]


@pytest.fixture
def table():
    """10 rows of 3 distinct features in [0, 1), sorted by the first, and a text label."""
    x = np.random.default_rng(0).uniform(size=(10, 3))
    x = x[np.argsort(x[:, 0])]
    return x, np.array(["cat", "dog"] * 5)


# CSV tables --------------------------------------------------------------------------------


def test_a_numeric_header_written_by_pandas_is_a_header_not_a_row(tmp_path, table):
    x, _ = table
    pd.DataFrame(x).to_csv(tmp_path / "t.csv", index=False)  # header "0,1,2"
    ds = data.load(str(tmp_path / "t.csv"))
    got, _ = _every(ds)
    np.testing.assert_allclose(got, x, rtol=1e-6)  # 10 rows, none of them 0, 1, 2
    assert any("column numbers" in note for note in ds.notes)


def test_a_numeric_header_above_a_named_label_column(tmp_path, table):
    x, names = table
    frame = pd.DataFrame(x)
    frame["kind"] = names
    frame.to_csv(tmp_path / "t.csv", index=False)  # header "0,1,2,kind"
    got, y = _every(data.load(str(tmp_path / "t.csv"), label_column="kind"))
    np.testing.assert_allclose(got, x, rtol=1e-6)
    np.testing.assert_array_equal(y, (names == "dog").astype(int))


def test_a_headerless_csv_with_a_text_label_keeps_its_first_row(tmp_path, table):
    x, names = table
    lines = [",".join(repr(float(v)) for v in r) + f",{n}" for r, n in zip(x, names)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    ds = data.load(str(tmp_path / "t.csv"), label_column=3)
    got, y = _every(ds)
    np.testing.assert_allclose(got, x, rtol=1e-6)  # the first row is data
    np.testing.assert_array_equal(y, (names == "dog").astype(int))
    assert any("read as data, not as a header" in note for note in ds.notes)
    assert any("cat=0, dog=1" in note for note in ds.notes)


@pytest.mark.parametrize("rewrite", [False, True], ids=["index-named-empty", "Unnamed: 0"])
def test_a_pandas_index_column_is_dropped_and_said(tmp_path, table, rewrite):
    x, names = table
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(kind=names)
    frame.to_csv(tmp_path / "t.csv")  # header ",a,b,c,kind", then 0..9 in column 0
    if rewrite:  # read back and saved again: the index column is now "Unnamed: 0"
        pd.read_csv(tmp_path / "t.csv").to_csv(tmp_path / "t.csv", index=False)
    ds = data.load(str(tmp_path / "t.csv"), label_column="kind")
    got, y = _every(ds)
    np.testing.assert_allclose(got, x, rtol=1e-6)  # 3 features, not 4
    np.testing.assert_array_equal(y, (names == "dog").astype(int))
    assert any("dropped column 0" in note for note in ds.notes)


def test_a_headerless_row_number_column_is_dropped_but_a_named_one_is_kept(tmp_path, table):
    x, _ = table
    pd.DataFrame(x).to_csv(tmp_path / "bare.csv", header=False)  # 0..9, then the features
    ds = data.load(str(tmp_path / "bare.csv"))
    np.testing.assert_allclose(_every(ds)[0], x, rtol=1e-6)
    assert any("name it in a header row to keep it" in note for note in ds.notes)
    pd.DataFrame(x).rename_axis("step").to_csv(tmp_path / "named.csv")  # header "step,0,1,2"
    kept = data.load(str(tmp_path / "named.csv"))
    assert kept.x_train.shape[1] == 4 and not any("dropped" in n for n in kept.notes)


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_name(tmp_path, table):
    x, names = table
    pd.DataFrame({"kind": names, "a": x[:, 0], "b": x[:, 1]}).to_csv(
        tmp_path / "t.csv", index=False, encoding="utf-8-sig")  # what Excel writes
    assert (tmp_path / "t.csv").read_bytes().startswith(b"\xef\xbb\xbfkind,")
    got, y = _every(data.load(str(tmp_path / "t.csv"), label_column="kind"))
    np.testing.assert_allclose(got, x[:, :2], rtol=1e-6)
    np.testing.assert_array_equal(y, (names == "dog").astype(int))


def test_quoted_fields_and_windows_line_endings(tmp_path):
    (tmp_path / "t.csv").write_bytes(b'"a","b","kind"\r\n0.5,0.25,"x, y"\r\n0.75,1,z\r\n'
                                     b'0.1,0.2,"x, y"\r\n0.3,0.4,z\r\n')
    got, y = _every(data.load(str(tmp_path / "t.csv"), label_column="kind", test_fraction=0.5))
    np.testing.assert_allclose(got, [[0.1, 0.2], [0.3, 0.4], [0.5, 0.25], [0.75, 1]], rtol=1e-6)
    np.testing.assert_array_equal(y, [0, 1, 0, 1])  # "x, y" = 0, "z" = 1


def test_a_plain_numeric_csv_has_no_notes(tmp_path, table):
    x, _ = table
    (tmp_path / "t.csv").write_text("\n".join(",".join(repr(float(v)) for v in r) for r in x))
    ds = data.load(str(tmp_path / "t.csv"))
    assert ds.notes == () and len(ds.x_train) + len(ds.x_test) == 10


def test_rows_of_only_commas_are_skipped_and_said(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n0.1,0.2\n,\n0.3,0.4\n0.5,0.6\n")
    ds = data.load(str(tmp_path / "t.csv"))
    assert len(ds.x_train) + len(ds.x_test) == 3
    assert any("skipped 1 row" in note for note in ds.notes)


def test_a_row_without_a_label_is_an_error_not_a_skipped_row(tmp_path):
    (tmp_path / "t.csv").write_text("a,kind\n0.1,x\n0.2,\n0.3,y\n0.4,NA\n")
    with pytest.raises(ValueError, match=r"t\.csv: no label at line 3 \(column 'kind'\)"):
        data.load(str(tmp_path / "t.csv"), label_column="kind")
    (tmp_path / "t.csv").write_text("a,kind\n0.1,x\n0.2,NA\n0.3,y\n0.4,NA\n")
    ds = data.load(str(tmp_path / "t.csv"), label_column="kind", test_fraction=0.5)
    assert sorted(np.concatenate([ds.y_train, ds.y_test]).tolist()) == [0, 0, 1, 2]  # NA is a name


def test_notes_survive_process_shards(tmp_path, table):
    x, _ = table
    pd.DataFrame(x).to_csv(tmp_path / "t.csv", index=False)
    shard = data.load(str(tmp_path / "t.csv"), process_index=1, process_count=2)
    assert any("column numbers" in note for note in shard.notes)


# Arrays -------------------------------------------------------------------------------------


def test_uint16_images_are_divided_by_their_range_and_said(tmp_path):
    pix = np.random.default_rng(0).integers(0, 65536, (6, 4, 4)).astype(np.uint16)
    np.save(tmp_path / "p.npy", pix)
    ds = data.load(str(tmp_path / "p.npy"), likelihood="bernoulli")  # in [0, 1]: accepted
    every = np.sort(np.concatenate([ds.x_train, ds.x_test]).ravel())
    np.testing.assert_allclose(every, np.sort(pix.ravel()) / 65535.0, rtol=1e-6)
    assert any("divided by 65535" in note for note in ds.notes)


def test_uint8_pixels_are_divided_by_255_but_binary_uint8_is_kept(tmp_path):
    pix = np.arange(4 * 3, dtype=np.uint8).reshape(4, 3) * 20
    np.save(tmp_path / "p.npy", pix)
    ds = data.load(str(tmp_path / "p.npy"))
    np.testing.assert_allclose(np.sort(np.concatenate([ds.x_train, ds.x_test]).ravel()),
                               np.sort(pix.ravel()) / 255.0, rtol=1e-6)
    assert any("divided by 255" in note for note in ds.notes)
    bits = (np.arange(12).reshape(4, 3) % 2).astype(np.uint8)
    np.save(tmp_path / "b.npy", bits)
    ds = data.load(str(tmp_path / "b.npy"))
    assert set(np.unique(np.concatenate([ds.x_train, ds.x_test]))) == {0.0, 1.0}
    assert any("binary" in note for note in ds.notes)


def test_float_data_outside_the_unit_interval_is_refused_for_bernoulli(tmp_path):
    np.save(tmp_path / "f.npy", np.linspace(0, 1000, 12).reshape(4, 3))
    with pytest.raises(ValueError, match=r"f\.npy: values lie in \[0, 1000\], outside \[0, 1\]"):
        data.load(str(tmp_path / "f.npy"), likelihood="bernoulli")
    assert data.load(str(tmp_path / "f.npy"), likelihood="gaussian").x_train.max() > 1


def test_a_ready_split_numbers_label_names_over_both_parts(tmp_path):
    x = np.random.default_rng(0).uniform(size=(5, 2))
    np.savez(tmp_path / "r.npz", x_train=x[:3], y_train=["a", "b", "c"], x_test=x[3:],
             y_test=["c", "c"])
    ds = data.load(str(tmp_path / "r.npz"))
    np.testing.assert_array_equal(ds.y_train, [0, 1, 2])
    np.testing.assert_array_equal(ds.y_test, [2, 2])  # "c" is class 2 in both parts


def test_values_beyond_float32_are_refused_not_turned_into_inf(tmp_path):
    np.save(tmp_path / "big.npy", np.array([[1e300, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"big\.npy: .*beyond float32's range"):
        data.load(str(tmp_path / "big.npy"), likelihood="gaussian")


# Damaged, unreadable and unsafe files: one clear error each -------------------------------


def _truncated_npz(path):
    np.savez(path, x=np.zeros((4, 3)))
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


def _damaged_npz(path):
    np.savez_compressed(path, x=np.random.default_rng(0).uniform(size=(40, 3)))
    raw = bytearray(path.read_bytes())
    raw[60:70] = b"\xff" * 10  # inside the compressed array: the CRC check fails
    path.write_bytes(bytes(raw))


def _truncated_npy(path):
    np.save(path, np.zeros((4, 3)))
    path.write_bytes(path.read_bytes()[:-8])


BROKEN = {
    "trunc.npz": (_truncated_npz, r"trunc\.npz: not a readable \.npz archive.*np\.savez"),
    "crc.npz": (_damaged_npz, r"crc\.npz: not a readable \.npz archive.*damaged"),
    "trunc.npy": (_truncated_npy,
                  r"trunc\.npy: cut short: its header announces an array of shape \(4, 3\)"),
    "mixed.npz": (lambda p: np.savez(p, x_train=np.zeros((2, 2), np.uint8),
                                     x_test=np.zeros((2, 2))),
                  r"mixed\.npz: the parts differ in dtype \(x_train uint8, x_test float64\)"),
    "complex.npy": (lambda p: np.save(p, np.ones((4, 3)) + 1j),
                    r"complex\.npy: examples are complex numbers.*x\.real"),
    "object.npy": (lambda p: np.save(p, np.array([[1, "a"], [2, "b"]], object),
                                     allow_pickle=True), r"object\.npy: .*pickled.*never loaded"),
    "object.npz": (lambda p: np.savez(p, x=np.array([[1, None]], object)),
                   r"object\.npz: .*pickled.*never loaded"),
    "pickle.npy": (lambda p: p.write_bytes(pickle.dumps([[1.0, 2.0], [3.0, 4.0]])),
                   r"pickle\.npy: a Python pickle, which is never loaded"),
    "text.npz": (lambda p: p.write_text("1,2\n3,4\n"), r"text\.npz: not an \.npz archive"),
    "strings.npy": (lambda p: np.save(p, np.array([["a", "b"], ["c", "d"]])),
                    r"strings\.npy: examples must be numeric, got dtype <U1"),
    "latin1.csv": (lambda p: p.write_bytes("name,b\n0.1,0.2\ncaf\xe9,1\n".encode("latin-1")),
                   r"latin1\.csv: not UTF-8 text \(byte 0xe9 on line 3\).*iconv"),
    "binary.csv": (lambda p: p.write_bytes(np.arange(300, dtype=np.int32).tobytes()),
                   r"binary\.csv: a binary file, not comma-separated text"),
    "dir.csv": (lambda p: p.mkdir(), r"dir\.csv: is a directory, not a \.csv file"),
    "semicolons.csv": (lambda p: p.write_text("a;b\n1;2\n3;4\n"),
                       r"semicolons\.csv: non-numeric value '1;2' .*separated by ';'"),
    "empty_cell.csv": (lambda p: p.write_text("a,b\n1,2\n3,\n"),
                       r"empty_cell\.csv: an empty value at line 3, column 'b'"),
    "longer.csv": (lambda p: p.write_text("a,b\n1,2\n3,4,5\n"),
                   r"longer\.csv: ragged rows: line 3 has 3 values, expected 2"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_file_is_one_clear_error_naming_it(tmp_path, name):
    make, message = BROKEN[name]
    make(tmp_path / name)
    with pytest.raises((ValueError, TypeError), match=message):
        data.load(str(tmp_path / name))


@pytest.mark.parametrize("name", ["t.csv", "t.npy", "t.npz"])
def test_an_unreadable_file_is_one_clear_error(tmp_path, monkeypatch, name):
    path = tmp_path / name
    if name.endswith("csv"):
        path.write_text("1,2\n3,4\n")
    elif name.endswith("npz"):
        np.savez(path, x=np.zeros((4, 2)))
    else:
        np.save(path, np.zeros((4, 2)))
    if os.geteuid() != 0:  # root reads everything: there, make the file system refuse instead
        path.chmod(0)
    else:
        def refuse(self, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(self))
        monkeypatch.setattr(pathlib.Path, "open", refuse)
        monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    with pytest.raises(ValueError, match=rf"{name}: cannot read the file \(permission denied\)"):
        data.load(str(path))


def test_the_train_script_shows_notes_and_turns_a_broken_file_into_one_error_line(
        tmp_path, capsys, table):
    x, _ = table
    pd.DataFrame(x).to_csv(tmp_path / "t.csv")  # a header of column numbers and an index
    code = train_script.main(["--dataset", str(tmp_path / "t.csv"), "--epochs", "1",
                              "--batch-size", "4", "--hidden", "4", "--latent-dim", "2",
                              "--outdir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "dropped column 0" in notes[0]
    _truncated_npz(tmp_path / "bad.npz")
    code = train_script.main(["--dataset", str(tmp_path / "bad.npz"), "--outdir",
                              str(tmp_path / "run2"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: ") and "bad.npz" in err and len(err.strip().splitlines()) == 1


# Fuzz: malformed files never raise anything but a clean ValueError/TypeError -------------

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
CSV_TOKENS = st.sampled_from(["0", "1", "0.5", "-3", "1e3", "nan", "inf", "", " ", "a", "label",
                              "Unnamed: 0", '"', '"x,y"', ",", ",", ",", "\n", "\n", "\r\n",
                              "\ufeff", "\xe9", ";", "\t", "1e999", "0x10", "\x00"])


def _npy_bytes(seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.save(buf, rng.uniform(size=(3, 2)).astype(rng.choice(["float32", "uint8", "int64"])))
    return buf.getvalue()


def _npz_bytes(seed):
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.random.default_rng(seed).uniform(size=(3, 2)), y=[0, 1, 0])
    return buf.getvalue()


@st.composite
def malformed_files(draw):
    """(suffix, bytes): random bytes, a valid file cut short or with bytes flipped, or CSV
    text made of numbers, names, separators, quotes, BOMs and line endings."""
    kind = draw(st.sampled_from(["bytes", "truncated", "flipped", "csv"]))
    if kind == "csv":
        text = "".join(draw(st.lists(CSV_TOKENS, max_size=40)))
        encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1"]))
        return ".csv", text.encode(encoding, errors="replace")
    suffix = draw(st.sampled_from([".npy", ".npz", ".csv"]))
    if kind == "bytes":
        return suffix, draw(st.binary(max_size=300))
    valid = {".npy": _npy_bytes, ".npz": _npz_bytes,
             ".csv": lambda s: b"a,b,kind\n0.1,0.2,x\n0.3,0.4,y\n0.5,0.6,x\n"}[suffix](
        draw(st.integers(0, 3)))
    if kind == "truncated":
        return suffix, valid[:draw(st.integers(0, len(valid)))]
    raw = bytearray(valid)
    for _ in range(draw(st.integers(1, 8))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return suffix, bytes(raw)


@FUZZ
@given(malformed_files(), st.sampled_from([None, "kind", 0]),
       st.sampled_from([None, "bernoulli"]))
def test_malformed_files_load_cleanly_or_raise_one_clear_error(tmp_path, file, label_column,
                                                               likelihood):
    suffix, raw = file
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(raw)
    if suffix != ".csv":
        label_column = None
    try:
        ds = data.load(str(path), label_column=label_column, likelihood=likelihood)
    except (ValueError, TypeError) as e:
        assert str(path) in str(e) or "fuzz" in str(e), str(e)  # the message names the file
        return
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int32 and len(x) == len(y) >= 1
        assert np.isfinite(x).all()
        if likelihood == "bernoulli":
            assert x.min() >= 0 and x.max() <= 1
    assert all(isinstance(note, str) and note for note in ds.notes)
    assert user_data.is_user_file(str(path))
