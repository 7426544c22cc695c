"""Corruptions and inpainting: observed pixels never change, missing ones are filled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae
from jaxvae.evaluation import repair


@pytest.fixture(scope="module")
def model_and_images():
    model = jaxvae.reference_vae()
    params = jaxvae.init(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (6, 784))
    return model, params, x


def test_inpainting_never_changes_observed_pixels(model_and_images):
    model, params, x = model_and_images
    corrupted, observed = repair.square_mask(jax.random.key(2), x, 10)
    missing = np.asarray(observed) == 0
    assert np.all(missing.sum(1) == 100)
    np.testing.assert_array_equal(np.asarray(corrupted)[missing], 0.0)
    for sample_pixels in (False, True):
        filled = np.asarray(repair.inpaint(model, params, corrupted, observed, jax.random.key(3),
                                           num_steps=5, sample_pixels=sample_pixels))
        np.testing.assert_array_equal(filled[~missing], np.asarray(x)[~missing])
        if sample_pixels:  # Bernoulli draws
            assert set(np.unique(filled[missing])) <= {0.0, 1.0}
        else:  # sigmoid means replaced every zero
            assert np.all((filled[missing] > 0.0) & (filled[missing] < 1.0))


def test_one_inpainting_step_is_the_decoded_mean_at_the_missing_pixels(model_and_images):
    model, params, x = model_and_images
    corrupted, observed = repair.square_mask(jax.random.key(2), x, 8)
    key = jax.random.key(4)
    got = repair.inpaint(model, params, corrupted, observed, key, num_steps=1)
    z_key, _ = jax.random.split(jax.random.fold_in(key, 0))
    mean, logvar = jaxvae.encode(model, params, corrupted)
    expected_fill = jax.nn.sigmoid(jaxvae.decode(model, params,
                                                 jaxvae.reparameterize(z_key, mean, logvar)))
    np.testing.assert_allclose(got, jnp.where(observed > 0.5, corrupted, expected_fill),
                               rtol=1e-5, atol=1e-6)


def test_noise_corruptions_have_the_requested_strength():
    x = jnp.full((50, 784), 0.5)
    sp, observed = repair.salt_and_pepper(jax.random.key(0), x, 0.2)
    hit = np.asarray(sp) != 0.5
    assert abs(hit.mean() - 0.2) < 0.01 and set(np.unique(np.asarray(sp)[hit])) == {0.0, 1.0}
    np.testing.assert_array_equal(observed, 1.0)
    noisy, _ = repair.gaussian_noise(jax.random.key(1), x, 0.1)
    assert abs(float(jnp.std(noisy)) - 0.1) < 0.005 and float(noisy.min()) >= 0.0


def test_bad_repair_arguments_raise(model_and_images):
    model, params, x = model_and_images
    with pytest.raises(ValueError, match="mask size must be in"):
        repair.square_mask(jax.random.key(0), x, 25)
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
        repair.inpaint(model, params, x, jnp.ones_like(x), jax.random.key(0), num_steps=0)


def test_repair_script_needs_trained_parameters_in_the_run_dir(tmp_path):
    from experiments import repair as script
    args = script.build_parser().parse_args(["--run-dir", str(tmp_path),
                                             "--outdir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="params.msgpack does not exist"):
        script.run(args)


def test_repair_of_a_run_on_data_that_is_not_28x28_is_one_error_line(tmp_path, capsys):
    import json

    from flax import serialization

    from experiments import repair as script
    from jaxvae.models import registry
    config = jaxvae.TrainConfig.from_flat(dataset="digits", hidden=(8,), latent_dim=2)
    model = registry.build(config, (64,)).model  # digits: 8x8 images
    run_dir = tmp_path / "digits_run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"config": config.to_dict()}))
    (run_dir / "params.msgpack").write_bytes(
        serialization.to_bytes(jaxvae.init(model, jax.random.key(0))))
    assert script.main(["--run-dir", str(run_dir), "--outdir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == ("error: the run's model takes examples of 64 values; the repair experiment "
                   "needs 28x28 digits (784 values): train on mnist5k or mnist\n")
