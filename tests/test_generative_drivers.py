"""Helpers of the generative experiment drivers (experiments/ae_anomaly.py, gan_mnist.py).

The drivers share their module names with configs (experiments/configs/gan_mnist.py is
imported by its siblings as ``gan_mnist``), so they are loaded here under other names.
Their --tiny runs take 15-40 s each and are left to the driver smoke runs.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))


def _load(name):
  spec = importlib.util.spec_from_file_location(f"driver_{name}", REPO / "experiments" /
                                                f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ae_anomaly = _load("ae_anomaly")
gan_mnist = _load("gan_mnist")


def test_pca_reconstruction_matches_sklearn():
  from sklearn.decomposition import PCA
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
  for k in (1, 3, 7):
    pca = PCA(n_components=k).fit(x)
    np.testing.assert_allclose(ae_anomaly.pca_reconstructor(x, k)(x),
                               pca.inverse_transform(pca.transform(x)), atol=1e-8)


def test_linear_decoder_recovers_an_affine_map_and_pca_is_no_worse_on_train():
  rng = np.random.default_rng(1)
  codes = rng.uniform(size=(100, 3))
  weights, bias = rng.normal(size=(3, 10)), rng.normal(size=10)
  pixels = codes @ weights + bias
  np.testing.assert_allclose(ae_anomaly.linear_decoder(codes, pixels)(codes), pixels,
                             atol=1e-9)
  # Eckart-Young: on the fitting data PCA-k beats any affine map from k numbers.
  noisy = pixels + rng.normal(scale=0.5, size=pixels.shape)
  linear_mse = np.mean((ae_anomaly.linear_decoder(codes, noisy)(codes) - noisy) ** 2)
  pca_mse = np.mean((ae_anomaly.pca_reconstructor(noisy, 3)(noisy) - noisy) ** 2)
  assert pca_mse <= linear_mse + 1e-12


def test_per_image_mse():
  x = np.zeros((2, 2, 2, 1))
  r = np.stack([np.full((2, 2, 1), 0.5), np.eye(2)[..., None]])
  np.testing.assert_allclose(ae_anomaly.per_image_mse(x, r), [0.25, 0.5])


@pytest.mark.parametrize("angle", [np.pi / 2, np.pi / 3, 2.5])
def test_slerp_follows_the_great_circle(angle):
  # Unit vectors at `angle`: the point at t is at angle t * angle from z0, norm 1.
  z0 = np.array([[1.0, 0.0]])
  z1 = np.array([[np.cos(angle), np.sin(angle)]])
  path = gan_mnist.slerp(z0, z1, 5)[0]
  t = np.linspace(0, 1, 5)
  np.testing.assert_allclose(path, np.stack([np.cos(t * angle), np.sin(t * angle)], 1),
                             atol=1e-12)
