"""jaxvae.config: the training config in sections, its flat names, its dict forms."""

import ast
import dataclasses
import inspect
import json

import jax
import pytest
from flax import serialization

import jaxvae
from jaxvae import config as config_lib
from jaxvae.config import TrainConfig
from jaxvae.models import registry
from jaxvae.training import checkpoint
from jaxvae.training import runs

# The config dict of a run directory written before the config had sections.
OLD_FLAT = {
    "dataset": "digits", "model": "mlp", "epochs": 2, "batch_size": 32, "lr": 0.001,
    "lr_schedule": "constant", "lr_total_steps": 0, "adam_eps": 1e-08, "latent_dim": 2,
    "hidden": [8], "activation": "relu", "beta": 1.0, "likelihood": "bernoulli", "seed": 3,
    "eval_batch_size": 500, "data_dir": None, "download": False, "label_column": None,
    "binarize": "none", "dequantize": False, "feed": "auto", "kl_schedule": "constant",
    "kl_warmup_steps": 0, "kl_cycles": 4, "kl_ramp_fraction": 0.5, "kl_total_steps": 0,
    "free_bits": 0.0, "prior": "mog", "prior_components": 3, "num_samples": 5,
    "num_classes": 10, "checkpoint_every": None, "keep_checkpoints": 3,
    "max_skipped_steps": 10, "clip_norm": None, "patience": None, "validation_fraction": 0.1,
    "conv_channels": [32, 64], "num_codes": 64, "code_dim": 16, "commitment_cost": 0.25,
    "vq_ema": False, "vq_decay": 0.99, "ladder_latents": [32, 16], "ladder_hidden": [256, 128],
    "flow_steps": 4, "microbatch_size": None, "num_devices": None,
}


@pytest.mark.parametrize("section_cls, field, value, error", [
    (jaxvae.DataConfig, "feed", "disk", ValueError),
    (jaxvae.DataConfig, "download", "yes", TypeError),
    (jaxvae.DataConfig, "binarize", "always", ValueError),
    (jaxvae.ModelConfig, "latent_dim", 0, ValueError),
    (jaxvae.ModelConfig, "hidden", (8, -1), ValueError),
    (jaxvae.ModelConfig, "activation", "gelu", ValueError),
    (jaxvae.ModelConfig, "precision", "float16", ValueError),
    (jaxvae.ModelConfig, "prior_components", 1.5, TypeError),
    (jaxvae.ModelConfig, "num_codes", 1, ValueError),
    (jaxvae.ModelConfig, "vq_decay", 1.0, ValueError),
    (jaxvae.ObjectiveConfig, "beta", -1.0, ValueError),
    (jaxvae.ObjectiveConfig, "kl_warmup_steps", 2.0, TypeError),
    (jaxvae.ObjectiveConfig, "free_bits", float("nan"), ValueError),
    (jaxvae.ObjectiveConfig, "num_samples", 0, ValueError),
    (jaxvae.ObjectiveConfig, "commitment_cost", -0.1, ValueError),
    (jaxvae.OptimizerConfig, "batch_size", 0, ValueError),
    (jaxvae.OptimizerConfig, "adam_eps", 0.0, ValueError),
    (jaxvae.OptimizerConfig, "lr_total_steps", -1, ValueError),
    (jaxvae.OptimizerConfig, "clip_norm", "x", TypeError),
    (jaxvae.OptimizerConfig, "microbatch_size", 0, ValueError),
    (jaxvae.RunConfig, "epochs", 0, ValueError),
    (jaxvae.RunConfig, "seed", 2**64, ValueError),
    (jaxvae.RunConfig, "keep_checkpoints", "3", TypeError),
    (jaxvae.RunConfig, "patience", -1, ValueError),
    (jaxvae.RunConfig, "validation_fraction", 1.0, ValueError),
    (jaxvae.RunConfig, "num_devices", 0, ValueError),
    (jaxvae.EvalConfig, "eval_batch_size", 0, ValueError),
])
def test_each_section_validates_its_fields_and_names_the_bad_one(section_cls, field, value,
                                                                   error):
    section_cls().validate()  # the defaults are valid
    with pytest.raises(error, match=field):
        dataclasses.replace(section_cls(), **{field: value}).validate()
    with pytest.raises(error, match=field):  # and validate_config reaches it
        jaxvae.validate_config(TrainConfig().replace(**{field: value}))


def test_validate_config_checks_what_needs_two_sections():
    with pytest.raises(ValueError, match="free bits need a KL per latent dimension"):
        jaxvae.validate_config(TrainConfig.from_flat(prior="mog", free_bits=0.5))
    with pytest.raises(ValueError, match="--model iwae takes no --beta"):
        jaxvae.validate_config(TrainConfig.from_flat(model="iwae", beta=0.5))
    with pytest.raises(ValueError, match="microbatch_size 6 does not divide the batch size 16"):
        jaxvae.validate_config(TrainConfig.from_flat(batch_size=16, microbatch_size=6))
    with pytest.raises(TypeError, match="TrainConfig.run must be a RunConfig"):
        jaxvae.validate_config(TrainConfig(run=jaxvae.OptimizerConfig()))


def test_from_flat_routes_every_flat_name_to_its_section():
    config = TrainConfig.from_flat(dataset="digits", model="cvae", hidden=(8,), beta=0.5,
                                   lr=0.01, epochs=2, eval_batch_size=7)
    assert config == TrainConfig(data=jaxvae.DataConfig(dataset="digits"),
                                 model=jaxvae.ModelConfig(name="cvae", hidden=(8,)),
                                 objective=jaxvae.ObjectiveConfig(beta=0.5),
                                 optimizer=jaxvae.OptimizerConfig(lr=0.01),
                                 run=jaxvae.RunConfig(epochs=2),
                                 evaluation=jaxvae.EvalConfig(eval_batch_size=7))
    assert TrainConfig.from_flat() == TrainConfig()
    # every field of every section has one flat name
    names = [n for cls in config_lib.SECTIONS.values() for n in
             (f.metadata.get("flat_name", f.name) for f in dataclasses.fields(cls))]
    assert sorted(names) == sorted(config_lib.FLAT_FIELDS) and len(set(names)) == len(names)


def test_replace_changes_only_the_named_fields_and_keeps_the_original():
    config = TrainConfig.from_flat(hidden=(8,), lr=0.01)
    changed = config.replace(lr=0.1, model="flow", seed=4)
    assert (changed.optimizer.lr, changed.model.name, changed.run.seed) == (0.1, "flow", 4)
    assert changed.model.hidden == (8,) and changed.data == config.data
    assert config.optimizer.lr == 0.01 and config.model.name == "mlp"  # frozen, untouched
    assert config.replace() == config


@pytest.mark.parametrize("call", [lambda: TrainConfig.from_flat(learning_rate=0.1),
                                  lambda: TrainConfig().replace(learning_rate=0.1)])
def test_an_unknown_flat_name_is_a_type_error_naming_it(call):
    with pytest.raises(TypeError, match="TrainConfig has no field 'learning_rate'"):
        call()


def test_a_section_name_is_no_flat_field():
    with pytest.raises(TypeError, match="no field 'optimizer'"):
        TrainConfig.from_flat(optimizer=jaxvae.OptimizerConfig())


def test_to_dict_is_sectioned_and_from_dict_reads_it_back():
    config = TrainConfig.from_flat(hidden=(8, 4), conv_channels=(2,), model="vqvae", lr=0.5)
    values = json.loads(json.dumps(config.to_dict()))  # as in summary.json: lists
    assert set(values) == set(config_lib.SECTIONS)
    assert values["model"]["name"] == "vqvae" and values["optimizer"]["lr"] == 0.5
    assert TrainConfig.from_dict(values) == config


def test_from_dict_reads_the_flat_config_of_older_run_directories():
    config = TrainConfig.from_dict(OLD_FLAT)
    assert config.model.hidden == (8,) and config.model.prior == "mog"
    assert config.data.dataset == "digits" and config.run.seed == 3
    flat = TrainConfig.flatten_dict(config.to_dict())
    assert {k: flat[k] for k in OLD_FLAT} == {
        k: tuple(v) if isinstance(v, list) else v for k, v in OLD_FLAT.items()}


def test_from_dict_refuses_fields_it_does_not_know():
    with pytest.raises(ValueError, match=r"does not know: \['warp_factor'\]"):
        TrainConfig.from_dict({**OLD_FLAT, "warp_factor": 9})
    with pytest.raises(ValueError, match=r"does not know: \['warp_factor'\]"):
        TrainConfig.from_dict({"model": {"warp_factor": 9}})


def test_an_old_flat_summary_json_loads_as_a_run(tmp_path):
    config = TrainConfig.from_dict(OLD_FLAT)
    model = registry.build(config, (64,)).model  # digits: 8x8
    params = jaxvae.init(model, jax.random.key(0))
    (tmp_path / "summary.json").write_text(json.dumps({"config": OLD_FLAT}))
    (tmp_path / "params.msgpack").write_bytes(serialization.to_bytes(params))
    run = runs.load_run(tmp_path)
    assert run.config == config and run.model.prior_name == "mog"
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), run.params, params))


def test_a_resume_mismatch_against_an_old_flat_checkpoint_names_the_flat_field():
    current = TrainConfig.from_dict(OLD_FLAT).replace(lr=0.01, model="flow", epochs=5)
    flatten = TrainConfig.flatten_dict
    diffs = checkpoint.config_differences(flatten(OLD_FLAT), flatten(current.to_dict()),
                                          defaults=TrainConfig.flat_defaults())
    assert diffs == ["lr: 0.001 -> 0.01", "model: 'mlp' -> 'flow'"]  # epochs may change
    # A field the old checkpoint lacks counts only when it is not at its default.
    changed = current.replace(standardize="none")
    assert "standardize: '<absent>' -> 'none'" in checkpoint.config_differences(
        flatten(OLD_FLAT), flatten(changed.to_dict()), defaults=TrainConfig.flat_defaults())


def test_section_modules_do_not_import_each_others_configs():
    modules = {cls: inspect.getmodule(cls) for cls in config_lib.SECTIONS.values()}
    names = {cls.__name__ for cls in modules}
    for cls, module in modules.items():
        tree = ast.parse(inspect.getsource(module))
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
            {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | \
            {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not (used & names) - {cls.__name__}, module.__name__
