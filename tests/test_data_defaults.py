"""Sizes fitted to small tables where the command line sets none: chosen and said for a small
table, untouched where the user gave the flags, untouched for MNIST-sized data and in the API."""

import json

import numpy as np
import pytest

import jaxvae
from experiments import cli
from experiments import train as train_script
from jaxvae.config import TrainConfig, data_defaults


def test_a_small_table_gets_a_narrower_code_and_layer_and_smaller_batches():
    config, changed = data_defaults(TrainConfig(), 120, (20,))
    assert changed == {"latent_dim": 10, "hidden": (160,), "batch_size": 30}
    assert (config.model.latent_dim, config.model.hidden, config.optimizer.batch_size) == (10, (160,), 30)
    # the bounds: a code at most half the input, 8 units per feature within [32, 400]
    _, tiny = data_defaults(TrainConfig(), 8, (3,))
    assert tiny == {"latent_dim": 1, "hidden": (32,), "batch_size": 2}


def test_the_sizes_the_user_gave_are_kept():
    given = frozenset({"latent_dim", "hidden", "batch_size"})
    config = TrainConfig.from_flat(latent_dim=20, hidden=(400,), batch_size=100)
    assert data_defaults(config, 120, (20,), given) == (config, {})
    # one given, the others still fitted; a micro-batch size keeps the batch it divides
    _, changed = data_defaults(TrainConfig(), 120, (20,), frozenset({"hidden"}))
    assert changed == {"latent_dim": 10, "batch_size": 30}
    _, changed = data_defaults(TrainConfig.from_flat(batch_size=64, microbatch_size=32), 120, (20,))
    assert "batch_size" not in changed


def test_mnist_sized_data_and_other_models_are_untouched(mnist5k):
    config = TrainConfig()
    assert data_defaults(config, len(mnist5k.x_train), mnist5k.example_shape) == (config, {})
    digits = jaxvae.data.datasets.load_digits()
    assert data_defaults(config, len(digits.x_train), digits.example_shape) == (config, {})
    assert data_defaults(config, 60000, (28, 28, 1)) == (config, {})
    ladder = TrainConfig.from_flat(model="ladder")  # sized by ladder_latents / ladder_hidden
    assert data_defaults(ladder, 120, (20,))[1] == {"batch_size": 30}


def test_given_flags_are_the_ones_on_the_command_line_even_at_their_default():
    given = cli.given_flags(train_script.build_parser,
                            ["--batch-size", "128", "--hidden", "400", "--quiet"])
    assert given == {"batch_size", "hidden", "quiet"}
    assert cli.given_flags(train_script.build_parser, []) == frozenset()


@pytest.fixture()
def table(tmp_path):
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "t.csv", rng.normal(size=(150, 20)), delimiter=",", fmt="%.4f")
    return tmp_path / "t.csv"


def test_the_train_script_sizes_a_small_table_and_says_so(table, tmp_path, capsys):
    code = train_script.main(["--dataset", str(table), "--likelihood", "gaussian",
                              "--epochs", "1", "--outdir", str(tmp_path / "run"), "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "sized for" in line]
    assert lines == ["note: sized for 120 training examples of 20 features: --latent-dim 10, "
                     "--hidden 160, --batch-size 30 (set these flags to choose other values)"]
    config = jaxvae.TrainConfig.flatten_dict(
        json.loads((tmp_path / "run" / "summary.json").read_text())["config"])
    assert (config["latent_dim"], config["hidden"], config["batch_size"]) == (10, [160], 30)


def test_the_train_script_keeps_the_sizes_given(table, tmp_path, capsys):
    code = train_script.main(["--dataset", str(table), "--likelihood", "gaussian",
                              "--epochs", "1", "--latent-dim", "20", "--hidden", "400",
                              "--batch-size", "100", "--outdir", str(tmp_path / "run"),
                              "--quiet"])
    assert code == 0
    assert "sized for" not in capsys.readouterr().err
    config = jaxvae.TrainConfig.flatten_dict(
        json.loads((tmp_path / "run" / "summary.json").read_text())["config"])
    assert (config["latent_dim"], config["hidden"], config["batch_size"]) == (20, [400], 100)


def test_the_api_keeps_the_config_as_given(table):
    """``train.run`` without ``given`` (the Python API) uses the config as it is: the batch of
    128 does not fit the 120 training rows and is refused, not resized."""
    config = TrainConfig.from_flat(dataset=str(table), likelihood="gaussian", epochs=1)
    with pytest.raises(ValueError, match="batch size 128 is larger than the training set"):
        jaxvae.fit(config, jaxvae.load_dataset(str(table)))
