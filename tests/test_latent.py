"""Latent-space views (jaxvae.evaluation.latent) against direct computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvae
from jaxvae.evaluation import latent


@pytest.fixture(scope="module")
def z2_model():
    model = jaxvae.mlp_vae(hidden=(8,), latent_dim=2, data_shape=(9,))
    return model, jaxvae.init(model, jax.random.key(0))


def test_traversal_row_d_sweeps_only_latent_d(z2_model):
    model, params = z2_model
    z = jnp.array([0.3, -0.7])
    values = np.linspace(-2.0, 2.0, 5)
    out = latent.traversal(model, params, z, values)
    assert out.shape == (2, 5, 9)
    expected = jax.nn.sigmoid(jaxvae.decode(model, params, jnp.array([[0.3, values[3]]])))[0]
    np.testing.assert_allclose(out[1, 3], expected, rtol=1e-6)
    expected = jax.nn.sigmoid(jaxvae.decode(model, params, jnp.array([[values[0], -0.7]])))[0]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)


def test_manifold_decodes_the_prior_quantile_grid(z2_model):
    model, params = z2_model
    images, grid = latent.manifold(model, params, n=4)
    assert images.shape == (4, 4, 9)
    np.testing.assert_allclose(grid[[0, -1]], [-1.6448536, 1.6448536], rtol=1e-6)  # 5%, 95%
    # Top-left tile: the smallest z[0] and the largest z[1].
    expected = jax.nn.sigmoid(jaxvae.decode(model, params, jnp.array([[grid[0], grid[-1]]])))[0]
    np.testing.assert_allclose(images[0, 0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="the manifold needs a 2-D latent"):
        latent.manifold(jaxvae.mlp_vae((8,), 3, (9,)), None)


def test_pca_projection_is_the_top_two_principal_axes():
    points = np.random.default_rng(0).normal(size=(50, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    projected = latent.project_2d(points, "pca")
    centered = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    expected = centered @ vt[:2].T
    np.testing.assert_allclose(np.abs(projected), np.abs(expected), rtol=1e-6, atol=1e-9)
    assert latent.project_2d(points[:12], "tsne").shape == (12, 2)
    with pytest.raises(ValueError, match="unknown projection 'umap'"):
        latent.project_2d(points, "umap")
