"""experiments/imbalanced.py: the class cut, random oversampling, end to end on 8x8 digits."""

import json

import numpy as np
import pytest

from experiments import imbalanced as imbalanced_script
from jaxvae.data import datasets as data_lib


def toy_data(counts=(40, 100, 7, 60)) -> data_lib.Dataset:
    """Training rows whose single feature is their index, classes interleaved by a fixed shuffle."""
    y = np.random.default_rng(123).permutation(np.repeat(np.arange(len(counts)), counts))
    x = np.arange(len(y), dtype=np.float32)[:, None]
    return data_lib.Dataset(x, y.astype(np.int32), x[:5] + 1000, y[:5].astype(np.int32))


@pytest.mark.parametrize("label, fraction, kept", [(1, 0.05, 5), (0, 0.05, 2), (2, 0.05, 1),
                                                   (3, 0.5, 30), (1, 1.0, 100), (0, 0.0625, 3)])
def test_reduce_class_keeps_the_rounded_share_and_every_other_example(label, fraction, kept):
    data = toy_data()
    cut = imbalanced_script.reduce_class(data, label, fraction, seed=0)
    assert np.sum(cut.y_train == label) == kept  # max(1, floor(fraction * n + 1/2))
    others = data.y_train != label
    # every other example is kept, in order; the kept rare rows are original rare rows
    np.testing.assert_array_equal(cut.x_train[cut.y_train != label], data.x_train[others])
    rare_rows = cut.x_train[cut.y_train == label, 0].astype(int)
    assert set(rare_rows) <= set(np.flatnonzero(data.y_train == label))
    assert len(set(rare_rows)) == kept
    np.testing.assert_array_equal(data.x_train[cut.x_train[:, 0].astype(int)], cut.x_train)
    np.testing.assert_array_equal(data.y_train[cut.x_train[:, 0].astype(int)], cut.y_train)
    np.testing.assert_array_equal(cut.x_test, data.x_test)
    np.testing.assert_array_equal(cut.y_test, data.y_test)


def test_reduce_class_is_deterministic_by_seed():
    data = toy_data()
    a = imbalanced_script.reduce_class(data, 1, 0.05, seed=7)
    b = imbalanced_script.reduce_class(data, 1, 0.05, seed=7)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    picks = {tuple(imbalanced_script.reduce_class(data, 1, 0.05, seed=s).x_train[:, 0])
             for s in range(5)}
    assert len(picks) > 1  # the seed chooses which rare examples survive


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_reduce_class_rejects_a_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match=r"--rare-fraction must be in \(0, 1\]"):
        imbalanced_script.reduce_class(toy_data(), 1, fraction, seed=0)


def test_oversampling_balances_the_rare_class_with_copies_of_its_examples():
    cut = imbalanced_script.reduce_class(toy_data(), 1, 0.05, seed=0)
    x, y = imbalanced_script.oversample(cut.x_train, cut.y_train, 1, seed=3)
    counts = np.bincount(y)
    assert counts[1] == 60 == imbalanced_script.balance_target(cut.y_train, 1)  # largest other
    np.testing.assert_array_equal(counts[[0, 2, 3]], np.bincount(cut.y_train)[[0, 2, 3]])
    # the original rows come first, unchanged; each added row is one of the kept rare rows
    np.testing.assert_array_equal(x[:len(cut.x_train)], cut.x_train)
    added = x[len(cut.x_train):, 0]
    assert set(added) <= set(cut.x_train[cut.y_train == 1, 0]) and len(set(added)) > 1
    assert np.all(y[len(cut.y_train):] == 1)
    x2, _ = imbalanced_script.oversample(cut.x_train, cut.y_train, 1, seed=3)
    np.testing.assert_array_equal(x, x2)


def test_oversampling_leaves_a_class_that_is_already_the_largest_alone():
    data = toy_data()
    x, y = imbalanced_script.oversample(data.x_train, data.y_train, 1, seed=0)
    assert x is data.x_train and y is data.y_train


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("imbalanced")
    code = imbalanced_script.main(["--dataset", "digits", "--epochs", "2", "--hidden", "32",
                                   "--latent-dim", "2", "--max-iter", "30", "--rare-class", "3",
                                   "--outdir", str(outdir), "--quiet"])
    assert code == 0
    return outdir


def test_end_to_end_reports_the_three_settings(digits_run):
    report = json.loads((digits_run / "imbalanced.json").read_text())
    full, cut = report["train_counts_full"], report["train_counts_imbalanced"]
    assert cut[3] == max(1, int(np.floor(0.05 * full[3] + 0.5)))
    assert [n for c, n in enumerate(cut) if c != 3] == [n for c, n in enumerate(full) if c != 3]
    target = max(n for c, n in enumerate(cut) if c != 3)
    assert report["num_generated"] == target - cut[3]
    results = report["results"]
    assert set(results) == {"imbalanced", "oversampled", "cvae", "full"}
    assert results["imbalanced"]["num_train_rare"] == cut[3]
    assert results["oversampled"]["num_train_rare"] == results["cvae"]["num_train_rare"] == target
    assert results["full"]["num_train"] == sum(full)
    for name, r in results.items():
        for key in ("rare_recall", "rare_precision", "test_accuracy"):
            assert 0.0 <= r[key] <= 1.0, (name, key)
        assert r["rare_recall"] == r["per_class_recall"]["3"]
        assert set(r["per_class_recall"]) == {str(c) for c in range(10)}
    assert results["full"]["test_accuracy"] > 0.5  # a working classifier on 8x8 digits
    assert report["config"]["model"]["name"] == "cvae" and report["config"]["run"]["epochs"] == 2
    assert (digits_run / "rare_samples.png").stat().st_size > 0


@pytest.mark.parametrize("flags, message", [
    (["--rare-class", "42"], "--rare-class 42 is not a label of digits"),
    (["--rare-fraction", "0"], "--rare-fraction must be in (0, 1]"),
    (["--model", "mlp"], "with --model cvae, got --model mlp"),
    (["--max-iter", "0"], "--max-iter must be >= 1"),
])
def test_bad_flags_fail_before_training(tmp_path, capsys, flags, message):
    code = imbalanced_script.main(["--dataset", "digits", "--outdir", str(tmp_path), "--quiet",
                                   *flags])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "imbalanced.json").exists()
