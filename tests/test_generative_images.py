"""jdl.generative.images: exact tiling, PNG files written, bad shapes rejected."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from jdl.errors import JdlError
from jdl.generative import images

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RNG = np.random.default_rng(0)


def _assert_png(path):
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE and len(data) > 100, path


@pytest.mark.parametrize("n,h,w,c,nrow,pad,grid_shape", [
    (5, 3, 4, 1, None, 2, (2 * 5 + 2, 3 * 6 + 2, 1)),  # nrow = ceil(sqrt(5)) = 3
    (6, 2, 2, 3, 2, 1, (3 * 3 + 1, 2 * 3 + 1, 3)),
    (4, 3, 3, 1, 4, 0, (3, 12, 1)),
    (1, 5, 5, 1, None, 3, (11, 11, 1)),
])
def test_image_grid_places_every_tile_and_pads(n, h, w, c, nrow, pad, grid_shape):
  x = RNG.uniform(0.0, 0.9, size=(n, h, w, c))  # < 1, so tiles differ from the padding.
  grid = images.image_grid(x, nrow=nrow, pad=pad)
  assert grid.shape == grid_shape
  per_row = nrow or int(np.ceil(np.sqrt(n)))
  covered = np.zeros(grid.shape[:2], bool)
  for i in range(n):
    top, left = pad + (i // per_row) * (h + pad), pad + (i % per_row) * (w + pad)
    np.testing.assert_array_equal(grid[top:top + h, left:left + w], x[i])
    covered[top:top + h, left:left + w] = True
  assert covered.sum() == n * h * w
  np.testing.assert_array_equal(grid[~covered], images.PAD_VALUE)


def test_image_grid_without_padding_is_a_reshape():
  x = RNG.uniform(size=(6, 3, 2, 1))
  grid = images.image_grid(x, nrow=3, pad=0)
  expected = x.reshape(2, 3, 3, 2, 1).transpose(0, 2, 1, 3, 4).reshape(6, 6, 1)
  np.testing.assert_array_equal(grid, expected)


@pytest.mark.parametrize("x,kwargs,match", [
    (np.zeros((4, 8, 8)), {}, "shape"),
    (np.zeros((4, 8, 8, 2)), {}, "channels"),
    (np.zeros((0, 8, 8, 1)), {}, "num >= 1"),
    (np.full((2, 4, 4, 1), 1.5), {}, r"\[0, 1\]"),
    (np.full((2, 4, 4, 1), -1.0), {}, r"\[0, 1\]"),
    (np.full((2, 4, 4, 1), np.nan), {}, "non-finite"),
    (np.zeros((2, 4, 4, 1)), {"nrow": 0}, "nrow"),
    (np.zeros((2, 4, 4, 1)), {"pad": -1}, "pad"),
])
def test_image_grid_rejects_bad_input(x, kwargs, match):
  with pytest.raises(JdlError, match=match):
    images.image_grid(x, **kwargs)


def _grey(n=6):
  return RNG.uniform(size=(n, 8, 8, 1)).astype(np.float32)


SAVERS = [
    ("grid_grey", lambda p: images.save_image_grid(_grey(), p, title="samples")),
    ("grid_rgb", lambda p: images.save_image_grid(RNG.uniform(size=(4, 8, 8, 3)), p, nrow=2)),
    ("reconstructions", lambda p: images.save_reconstructions(_grey(12), _grey(12), p, n=10,
                                                              title="recon")),
    ("interpolation", lambda p: images.save_interpolation(
        RNG.uniform(size=(3, 7, 8, 8, 1)), p, title="interp")),
    ("scatter_classes", lambda p: images.save_latent_scatter(
        RNG.normal(size=(100, 2)), np.arange(100) % 10, p, title="z")),
    ("scatter_values", lambda p: images.save_latent_scatter(
        RNG.normal(size=(50, 2)), RNG.uniform(size=50), p)),
    ("roc", lambda p: images.save_roc_curve(RNG.normal(size=40), np.arange(40) % 2, p,
                                            title="roc")[0]),
    ("curves", lambda p: images.save_curves(
        {"critic": ([0, 1, 2], [1.0, 0.5, 0.2]), "generator": (np.arange(3), np.ones(3))}, p,
        xlabel="step", ylabel="loss", title="losses")),
]


@pytest.mark.parametrize("name,save", SAVERS, ids=[s[0] for s in SAVERS])
def test_savers_write_png_files_in_new_folders(tmp_path, name, save):
  figures_before = plt.get_fignums()
  path = tmp_path / "new" / "dir" / f"{name}.png"
  assert save(path) == path
  _assert_png(path)
  assert plt.get_fignums() == figures_before  # No figure left open.


def _reference_auc(scores, labels):
  """P(score of an anomaly > score of a normal example), ties counted 1/2."""
  pos, neg = scores[labels == 1], scores[labels == 0]
  diff = pos[:, None] - neg[None, :]
  return np.mean((diff > 0) + 0.5 * (diff == 0))


@pytest.mark.parametrize("scores,labels", [
    (np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])),
    (np.round(RNG.normal(size=60), 1), (RNG.uniform(size=60) < 0.3).astype(int)),  # Ties.
    (np.array([3.0, 2.0, 1.0]), np.array([0, 1, 1])),  # Perfectly wrong: AUC 0.
])
def test_save_roc_curve_auc_matches_pairwise_reference(tmp_path, scores, labels):
  path, auc = images.save_roc_curve(scores, labels, tmp_path / "roc.png")
  _assert_png(path)
  np.testing.assert_allclose(auc, _reference_auc(scores, labels), rtol=1e-12)


@pytest.mark.parametrize("call,match", [
    (lambda p: images.save_image_grid(np.zeros((3, 4, 4)), p), "shape"),
    (lambda p: images.save_reconstructions(_grey(4), _grey(5), p), "same shape"),
    (lambda p: images.save_reconstructions(_grey(4), _grey(4), p, n=0), "n must"),
    (lambda p: images.save_interpolation(_grey(4), p), "rows must"),
    (lambda p: images.save_latent_scatter(np.zeros((5, 3)), np.zeros(5, int), p), "z2"),
    (lambda p: images.save_latent_scatter(np.zeros((5, 2)), np.zeros(4, int), p), "labels"),
    (lambda p: images.save_roc_curve(np.zeros(4), np.zeros(4, int), p), "both"),
    (lambda p: images.save_roc_curve(np.zeros(4), np.array([0, 1, 2, 1]), p), "0 .normal"),
    (lambda p: images.save_roc_curve(np.zeros(4), np.array([0, 1, 1]), p), "same length"),
    (lambda p: images.save_curves({}, p, xlabel="x", ylabel="y"), "empty"),
    (lambda p: images.save_curves({"a": ([1, 2], [1])}, p, xlabel="x", ylabel="y"),
     "same length"),
])
def test_savers_reject_bad_input_and_write_nothing(tmp_path, call, match):
  path = tmp_path / "bad.png"
  with pytest.raises(JdlError, match=match):
    call(path)
  assert not path.exists()
