"""jdl.explain against closed forms: linear models, a one-cell image, numpy references."""

from __future__ import annotations

import doctest
import json
import importlib.util
import re
import struct
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl
from jdl import explain
from jdl.errors import JdlError

from conftest import REPO, make_config

D, K = 6, 3
RNG = np.random.default_rng(0)
W = RNG.normal(size=(D, K)).astype(np.float32)
B = RNG.normal(size=(K,)).astype(np.float32)
X = RNG.normal(size=(5, D)).astype(np.float32)


def linear_apply(variables, x, train=False):
  del train  # A linear model behaves the same in both modes.
  return x @ variables["w"] + variables["b"]


LINEAR_VARS = {"w": jnp.asarray(W), "b": jnp.asarray(B)}


class TinyMLP(nn.Module):
  """A smooth nonlinear model (tanh) that sows its activation as jdl models do."""

  @nn.compact
  def __call__(self, x, *, train=False):
    h = jnp.tanh(nn.Dense(16)(x))
    self.sow("intermediates", "act_0", h)
    return nn.Dense(K)(h)


def test_public_names():
  names = ["saliency", "integrated_gradients", "IGResult", "CompletenessWarning",
           "resolve_targets", "lime", "lime_tabular", "lime_image", "LimeExplanation",
           "weighted_ridge", "grid_cells", "save_overlay", "save_overlay_grid", "RunModel",
           "from_run", "remove_top_k"]
  assert not [n for n in names if not hasattr(jdl.explain, n)]


def test_docstring_examples_run():
  failed, attempted = doctest.testmod(explain, verbose=False)
  assert attempted >= 2 and failed == 0


def test_target_defaults_to_the_predicted_class():
  t = explain.resolve_targets(linear_apply, LINEAR_VARS, X)
  np.testing.assert_array_equal(t, np.argmax(X @ W + B, axis=1))


@pytest.mark.parametrize("target", [None, 2, np.array([0, 1, 2, 0, 1])])
@pytest.mark.parametrize("variant", ["gradient", "gradient_x_input"])
def test_saliency_of_a_linear_model_is_its_weights(target, variant):
  t = np.argmax(X @ W + B, axis=1) if target is None else np.broadcast_to(target, (5,))
  expected = np.abs(W[:, t].T) if variant == "gradient" else W[:, t].T * X
  got = explain.saliency(linear_apply, LINEAR_VARS, X, target, variant=variant)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", ["trapezoid", "midpoint", "left", "right"])
@pytest.mark.parametrize("baseline", [None, 0.5])
def test_integrated_gradients_of_a_linear_model_is_exact(rule, baseline):
  # IG_i = w_i (x_i - b_i) for any number of steps: the gradient is constant.
  res = explain.integrated_gradients(linear_apply, LINEAR_VARS, X, 1, baseline=baseline,
                                     steps=3, rule=rule)
  b = 0.0 if baseline is None else baseline
  np.testing.assert_allclose(res.attributions, W[:, 1] * (X - b), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res.output, X @ W[:, 1] + B[1], rtol=1e-5)
  assert res.relative_error.max() < 1e-5


@pytest.mark.parametrize("rule,steps", [("trapezoid", 64), ("midpoint", 64)])
def test_completeness_on_a_nonlinear_mlp(rule, steps):
  model = TinyMLP()
  x = jnp.asarray(RNG.normal(size=(4, D)) * 2, jnp.float32)
  variables = model.init(jax.random.key(1), x)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    res = explain.integrated_gradients(model.apply, variables, x, steps=steps, rule=rule,
                                       tolerance=1e-3)
  print(f"{rule} {steps}: max relative error {res.relative_error.max():.2e}")
  assert res.relative_error.max() < 1e-3
  # Batched examples do not interact: one example alone gives the same attributions.
  one = explain.integrated_gradients(model.apply, variables, x[2:3], int(res.target[2]),
                                     steps=steps, rule=rule, tolerance=1e-3)
  np.testing.assert_allclose(one.attributions[0], res.attributions[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rule", ["trapezoid", "midpoint", "left", "right"])
def test_each_rule_is_its_quadrature_of_the_path_gradients(rule):
  # (x - x') * sum_k w_k grad f(x' + a_k (x - x')), with each rule's points a_k and
  # weights w_k written out; on a linear model every rule is exact, so only a
  # nonlinear one tells them apart (right is Sundararajan et al.'s eq. 3).
  m = 3
  points = {"trapezoid": (np.arange(m + 1) / m, np.r_[0.5, np.ones(m - 1), 0.5] / m),
            "midpoint": ((np.arange(m) + 0.5) / m, np.ones(m) / m),
            "left": (np.arange(m) / m, np.ones(m) / m),
            "right": (np.arange(1, m + 1) / m, np.ones(m) / m)}[rule]
  model = TinyMLP()
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, D)) * 2, jnp.float32)
  base = jnp.full_like(x, 0.3)
  variables = model.init(jax.random.key(1), x)
  res = explain.integrated_gradients(model.apply, variables, x, target=1, steps=m, rule=rule,
                                     baseline=base, check="off")
  grad = jax.grad(lambda z: model.apply(variables, z[None])[0, 1])
  expected = [np.asarray(x[i] - base[i]) * sum(
      w * np.asarray(grad(base[i] + a * (x[i] - base[i]))) for a, w in zip(*points))
      for i in range(2)]
  np.testing.assert_allclose(res.attributions, np.stack(expected), rtol=1e-4, atol=1e-6)


def steep_apply(variables, x, train=False):
  """A sigmoid step at 0.3 along the path from 0 to 1: flat at a = 0, 1/2, 1."""
  del variables, train
  return jax.nn.sigmoid(60.0 * (x.mean(axis=1, keepdims=True) - 0.3))


def test_completeness_check_fails_with_too_few_steps():
  x = jnp.ones((1, 4))
  with pytest.warns(explain.CompletenessWarning, match="increase steps"):
    res = explain.integrated_gradients(steep_apply, {}, x, steps=2)
  assert res.relative_error[0] > 0.5
  with pytest.raises(JdlError, match="completeness"):
    explain.integrated_gradients(steep_apply, {}, x, steps=2, check="raise")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    good = explain.integrated_gradients(steep_apply, {}, x, steps=400)
  assert good.relative_error[0] < 1e-3


def test_gradient_functions_compile_once_per_shape():
  from jdl.explain import gradients
  x = jnp.asarray(X)
  explain.integrated_gradients(linear_apply, LINEAR_VARS, x, steps=7)
  before = gradients._integrated_gradients._cache_size()
  explain.integrated_gradients(linear_apply, LINEAR_VARS, x + 1, steps=7)
  assert gradients._integrated_gradients._cache_size() == before


@pytest.mark.parametrize("call,match", [
    (lambda: explain.saliency(linear_apply, LINEAR_VARS, X, 3), "out of range"),
    (lambda: explain.saliency(linear_apply, LINEAR_VARS, X, 1.5), "integer"),
    (lambda: explain.saliency(linear_apply, LINEAR_VARS, X, variant="smooth"), "smooth"),
    (lambda: explain.integrated_gradients(linear_apply, LINEAR_VARS, X, steps=0), "steps"),
    (lambda: explain.integrated_gradients(linear_apply, LINEAR_VARS, X, rule="simpson"),
     "simpson"),
    (lambda: explain.integrated_gradients(linear_apply, LINEAR_VARS, X,
                                          baseline=np.zeros(4)), "broadcast"),
    (lambda: explain.lime_tabular(lambda z: z, X[0], key=jax.random.key(0)), "std"),
    (lambda: explain.lime_tabular(lambda z: z, X[0], key=jax.random.key(0), mode="x"), "mode"),
    (lambda: explain.lime_image(lambda z: z, X, key=jax.random.key(0), num_samples=1),
     "num_samples"),
    # Each was a TypeError, ValueError or LinAlgError, or (a bool) taken as 1.
    (lambda: explain.lime_tabular(sum_scores, X4, key=KEY, std=1.0, ridge=0.0, num_samples=3,
                                  mode="mask"), "singular .* ridge > 0"),
    (lambda: explain.lime_tabular(sum_scores, X4, key=KEY, std=1.0, batch_size=2.5),
     "batch_size must be an integer >= 1, got 2.5"),
    (lambda: explain.lime_tabular(sum_scores, X4, key=KEY, std=1.0, kernel_width="a"),
     "kernel_width must be a finite number > 0"),
    (lambda: explain.lime_tabular(sum_scores, X4, key=KEY, std=1.0, ridge="1"),
     "ridge must be a finite number >= 0"),
    (lambda: explain.integrated_gradients(linear_apply, LINEAR_VARS, X, steps=True),
     "steps must be an integer >= 1, got True"),
    (lambda: explain.integrated_gradients(linear_apply, LINEAR_VARS, X, steps_per_batch=2.5),
     "steps_per_batch must be an integer >= 1 or None"),
    (lambda: explain.lime_image(one_cell_classifier, np.ones((8, 8)), key=KEY, cell_size=(2,)),
     r"cell_size must be a positive integer or a pair"),
    (lambda: explain.lime(one_cell_classifier, np.ones((8, 8)), key=KEY, std=1.0),
     "lime_image .* takes no std"),
    (lambda: explain.remove_top_k(X, X, 1, baseline=np.zeros(3)), "baseline of shape"),
    # A NaN score ranked last, so its element was never removed.
    (lambda: explain.remove_top_k(X, np.where(X > 0, np.nan, X), 1), "scores must be finite"),
    (lambda: explain.remove_top_k(np.where(X > 0, np.inf, X), X, 1), "x must be finite"),
    # A 1-D x was n examples of one element each: every element removed at k = 1.
    (lambda: explain.remove_top_k(np.arange(1.0, 6.0), np.arange(5.0), 1),
     r"x must be a batch \[n, \.\.\.\] with at least 2 axes, got shape \(5,\)"),
    # Bools were taken as 1 (saliency refused them).
    (lambda: explain.remove_top_k(X, X, True), r"k must be an integer in \[0, 6\], got True"),
    (lambda: explain.lime_tabular(sum_scores, X4, key=KEY, std=1.0, target=True),
     r"target must be an integer \(an output column\), got True"),
])
def test_bad_arguments_raise_jdl_errors(call, match):
  with pytest.raises(JdlError, match=match):
    call()


@pytest.mark.parametrize("alpha", [0.0, 3.0])
def test_weighted_ridge_matches_scikit_learn(alpha):
  from sklearn.linear_model import Ridge
  z = RNG.normal(size=(50, 4))
  y = z @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 + 0.1 * RNG.normal(size=50)
  w = RNG.random(50)
  beta, intercept, r2 = explain.weighted_ridge(z, y, w, alpha)
  # Our alpha is per unit of average weight: sklearn's with weights of mean one.
  ref = Ridge(alpha=alpha).fit(z, y, sample_weight=w * len(w) / w.sum())
  np.testing.assert_allclose(beta, ref.coef_, rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(intercept, ref.intercept_, rtol=1e-8, atol=1e-10)
  resid = y - ref.predict(z)
  ref_r2 = 1 - np.sum(w * resid**2) / np.sum(w * (y - np.average(y, weights=w))**2)
  np.testing.assert_allclose(r2, ref_r2, rtol=1e-8)


LIME_W = np.array([3.0, -2.0, 1.0, -0.5, 0.25, 0.0], np.float32)


def lime_linear(z):
  return jnp.stack([z @ LIME_W + 1.0, -(z @ LIME_W)], axis=1)  # Column 0 is explained.


@pytest.mark.parametrize("mode,num_samples,rtol", [("sample", 200, 0.1), ("sample", 5000, 0.01),
                                                   ("mask", 200, 0.1), ("mask", 5000, 0.01)])
def test_lime_tabular_recovers_a_linear_function(mode, num_samples, rtol):
  x = np.array([1.0, 2.0, -1.0, 0.5, 3.0, 1.5], np.float32)
  std = np.array([1.0, 0.5, 2.0, 1.0, 1.0, 1.0], np.float32)
  baseline = 0.5
  res = explain.lime_tabular(lime_linear, x, key=jax.random.key(0), mode=mode, std=std,
                             baseline=baseline, num_samples=num_samples, target=0)
  # 'sample' fits on (z - x) / std: slope w * std; 'mask' on keep/replace: w (x - b).
  expected = LIME_W * std if mode == "sample" else LIME_W * (x - baseline)
  nonzero = expected != 0
  np.testing.assert_array_equal(np.sign(res.weights[nonzero]), np.sign(expected[nonzero]))
  np.testing.assert_array_equal(np.argsort(-np.abs(res.weights[nonzero])),
                                np.argsort(-np.abs(expected[nonzero])))
  np.testing.assert_allclose(res.weights, expected, rtol=rtol, atol=rtol * 0.5)
  assert res.r2 > 0.999 and res.target == 0
  np.testing.assert_allclose(res.prediction, x @ LIME_W + 1.0, rtol=1e-5)


CELL = (2, 1)  # The one grid cell (row, col) the toy classifier looks at.


def one_cell_classifier(images):
  """Class 1 when cell CELL (2x2 pixels) of an 8x8 image is bright, else class 0."""
  patch = images[:, 4:6, 2:4].reshape(len(images), -1).mean(axis=1)
  p = jax.nn.sigmoid(10.0 * (patch - 0.5))
  return jnp.stack([1 - p, p], axis=1)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1)])
def test_lime_image_ranks_the_deciding_cell_first(shape):
  image = np.ones(shape, np.float32)
  res = explain.lime_image(one_cell_classifier, image, key=jax.random.key(3), cell_size=2,
                           num_samples=300)
  assert res.target == 1 and res.weights.shape == (4, 4) and res.attribution.shape == (8, 8)
  assert np.unravel_index(np.argmax(np.abs(res.weights)), res.weights.shape) == CELL
  others = np.delete(res.weights.ravel(), CELL[0] * 4 + CELL[1])
  assert res.weights[CELL] > 0.5 and np.abs(others).max() < 0.05 * res.weights[CELL]
  np.testing.assert_array_equal(res.attribution[4:6, 2:4], res.weights[CELL])


def test_lime_is_a_function_of_the_key():
  image = RNG.random((8, 8)).astype(np.float32)
  def run(seed):
    return explain.lime(one_cell_classifier, image, key=jax.random.key(seed), cell_size=2,
                        num_samples=100)
  a, b, c = run(7), run(7), run(8)
  np.testing.assert_array_equal(a.weights, b.weights)
  assert a.intercept == b.intercept and a.r2 == b.r2
  assert not np.array_equal(a.weights, c.weights)


def test_mask_distance_is_the_cosine_distance_from_the_unperturbed_mask():
  import importlib
  from sklearn.metrics import pairwise_distances
  lime_lib = importlib.import_module("jdl.explain.lime")  # jdl.explain.lime is the function.
  masks = np.random.default_rng(5).integers(0, 2, (50, 9)).astype(np.float64)
  masks[masks.sum(1) == 0, 0] = 1.0  # sklearn's cosine of an all-zero row is 1 too.
  np.testing.assert_allclose(lime_lib._mask_distance(masks),
                             pairwise_distances(masks, np.ones((1, 9)), metric="cosine")[:, 0],
                             rtol=1e-12, atol=1e-12)


def test_lime_tabular_centre_mean_samples_around_the_train_mean():
  # center='mean' (the LIME package's way) draws z = mean + std * e; 'instance' x + std * e.
  seen = []
  def record(z):
    seen.append(np.asarray(z))
    return z @ LIME_W[:4, None]
  mean, std = np.array([1.0, -1.0, 0.5, 2.0], np.float32), np.array([1.0, 2.0, 0.5, 1.0])
  for center, centre in (("mean", mean), ("instance", X4)):
    seen.clear()
    res = explain.lime_tabular(record, X4, key=KEY, std=std, mean=mean, center=center,
                               num_samples=4000, target=0)
    z = np.concatenate(seen)
    np.testing.assert_array_equal(z[0], X4)  # The input itself comes first.
    np.testing.assert_allclose(z[1:].mean(0), centre, atol=0.1)
    np.testing.assert_allclose(z[1:].std(0), std, rtol=0.05)
    # A linear model: the surrogate is exact wherever it samples (weights per std).
    np.testing.assert_allclose(res.weights, LIME_W[:4] * std, rtol=1e-3, atol=1e-4)


def test_grid_cells_cover_uneven_edges():
  cells = explain.grid_cells(5, 7, (2, 3))  # 3 x 3 cells, edge cells smaller.
  ref = np.array([[r // 2 * 3 + c // 3 for c in range(7)] for r in range(5)])
  np.testing.assert_array_equal(cells, ref)


def png_size(path) -> tuple[int, int]:
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
  return struct.unpack(">II", data[16:24])


def test_overlays_write_pngs_of_the_requested_size(tmp_path):
  image = RNG.random((8, 8, 1))
  signed = RNG.normal(size=(8, 8))
  p = explain.save_overlay(image, signed, tmp_path / "a" / "one.png", title="t", figsize=(3, 2),
                           dpi=50)
  assert png_size(p) == (150, 100)
  p = explain.save_overlay_grid([image] * 5, [None, signed, np.abs(signed), signed, signed],
                                tmp_path / "grid.png", titles=list("abcde"), ncols=3,
                                panel_size=1.0, dpi=60)
  assert png_size(p) == (180, 120)
  with pytest.raises(JdlError, match="attributions"):
    explain.save_overlay_grid([image], [], tmp_path / "bad.png")


def test_remove_top_k_matches_a_numpy_reference():
  x = RNG.normal(size=(3, 4, 5)).astype(np.float32)
  scores = RNG.normal(size=x.shape).astype(np.float32)
  got = explain.remove_top_k(x, scores, 6, baseline=-9.0)
  ref = x.reshape(3, -1).copy()
  for i, order in enumerate(np.argsort(-scores.reshape(3, -1), axis=1)):
    ref[i, order[:6]] = -9.0
  np.testing.assert_array_equal(got, ref.reshape(x.shape))


@pytest.fixture(scope="module")
def trained():
  """A digits MLP trained one epoch, its RunModel, 4 raw and normalised test inputs."""
  result = jdl.fit(make_config(num_epochs=1), quiet=True)
  m = explain.from_run(result)
  raw = jdl.data.load_dataset("digits").x_test[:4]
  return result, m, raw, m.normalize(raw)


def test_from_run_explains_a_trained_model(trained):
  result, m, raw, x = trained
  np.testing.assert_allclose(m.logits(x), jdl.predict(result, raw), rtol=1e-5, atol=1e-5)
  res = explain.integrated_gradients(m.apply_fn, m.variables, x, steps=64,
                                     baseline=m.normalize(np.zeros_like(raw)))
  assert res.attributions.shape == x.shape and res.relative_error.max() < 0.05
  np.testing.assert_array_equal(res.target, np.argmax(m.logits(x), axis=1))
  with pytest.raises(JdlError, match="FitResult"):
    explain.from_run(object())


def _file_parent(tmp):
  (tmp / "file").write_text("not a folder")
  return tmp / "file" / "x.png"


def _dir_path(tmp):
  (tmp / "dir.png").mkdir()
  return tmp / "dir.png"


KEY = jax.random.key(0)
X4 = np.array([1.0, 2.0, -1.0, 0.5], np.float32)


def sum_scores(z):
  return jnp.stack([z.sum(axis=1), -z.sum(axis=1)], axis=1)


# (call(m, xn, tmp_path), match): m a trained RunModel, xn [4, 8, 8, 1] inputs.
BAD_INPUTS = {
    "normalize_shape": (lambda m, xn, tmp: m.normalize(np.zeros((2, 3))), r"\[n, 8, 8, 1\]"),
    "logits_shape": (lambda m, xn, tmp: m.logits(np.zeros((2, 3))), r"\[n, 8, 8, 1\]"),
    "ig_shape": (lambda m, xn, tmp: explain.integrated_gradients(
        m.apply_fn, m.variables, xn[:, :4]), "does not fit"),
    "ig_no_batch_axis": (lambda m, xn, tmp: explain.integrated_gradients(
        m.apply_fn, m.variables, xn[0]), "does not fit"),
    "saliency_shape": (lambda m, xn, tmp: explain.saliency(
        m.apply_fn, m.variables, np.zeros((2, 3))), "does not fit"),
    "saliency_no_batch_axis": (lambda m, xn, tmp: explain.saliency(
        linear_apply, LINEAR_VARS, X[0]), "batch"),
    "ig_empty_batch": (lambda m, xn, tmp: explain.integrated_gradients(
        m.apply_fn, m.variables, xn[:0]), "empty"),
    "ig_tolerance": (lambda m, xn, tmp: explain.integrated_gradients(
        linear_apply, LINEAR_VARS, X, tolerance=-1), "tolerance"),
    "lime_image_int_key": (lambda m, xn, tmp: explain.lime_image(
        m.probabilities, xn[0], key=0), "PRNG key"),
    "lime_tabular_int_key": (lambda m, xn, tmp: explain.lime_tabular(
        sum_scores, X4, key=0, std=1.0), "PRNG key"),
    "lime_image_baseline": (lambda m, xn, tmp: explain.lime_image(
        one_cell_classifier, np.ones((8, 8)), key=KEY, baseline=np.zeros(3)), "baseline"),
    "lime_tabular_std": (lambda m, xn, tmp: explain.lime_tabular(
        sum_scores, X4, key=KEY, std=np.ones(3)), "std"),
    "lime_tabular_baseline": (lambda m, xn, tmp: explain.lime_tabular(
        sum_scores, X4, key=KEY, mode="mask", baseline=np.zeros(3)), "baseline"),
    "lime_predict_rows": (lambda m, xn, tmp: explain.lime_tabular(
        lambda z: np.zeros((3, 2)), X4, key=KEY, std=1.0), "one row per input"),
    "lime_nan_input": (lambda m, xn, tmp: explain.lime_tabular(
        sum_scores, np.array([1.0, np.nan, 0.0, 0.0]), key=KEY, std=1.0), "finite"),
    "lime_nan_predict": (lambda m, xn, tmp: explain.lime_tabular(
        lambda z: jnp.full((len(z), 2), jnp.nan), X4, key=KEY, std=1.0), "finite"),
    "ig_nan_input": (lambda m, xn, tmp: explain.integrated_gradients(
        m.apply_fn, m.variables, np.where(np.arange(4)[:, None, None, None] == 1, np.nan, xn),
        check="raise"), r"NaN or Inf values \(in 1 of 4 examples\)"),
    "saliency_inf_input": (lambda m, xn, tmp: explain.saliency(
        m.apply_fn, m.variables, np.full((2, 8, 8, 1), np.inf, np.float32)), "NaN or Inf"),
    "normalize_integer_pixels": (lambda m, xn, tmp: m.normalize(
        np.zeros((2, 8, 8, 1), np.uint8)), "gives float inputs"),
    "overlay_file_parent": (lambda m, xn, tmp: explain.save_overlay(
        np.ones((8, 8)), None, _file_parent(tmp)), "not a folder"),
    "overlay_directory": (lambda m, xn, tmp: explain.save_overlay(
        np.ones((8, 8)), None, _dir_path(tmp)), "directory"),
    "overlay_jpg": (lambda m, xn, tmp: explain.save_overlay(
        np.ones((8, 8)), None, tmp / "x.jpg"), r"\.png"),
    "overlay_grid_jpg": (lambda m, xn, tmp: explain.save_overlay_grid(
        [np.ones((8, 8))], [None], tmp / "x.jpg"), r"\.png"),
    "overlay_grid_ncols": (lambda m, xn, tmp: explain.save_overlay_grid(
        [np.ones((8, 8))], [None], tmp / "x.png", ncols=-1), "ncols"),
    "overlay_dpi": (lambda m, xn, tmp: explain.save_overlay(
        np.ones((8, 8)), None, tmp / "x.png", dpi=0), "dpi"),
    # A raw ValueError (0: "cannot convert float NaN", < 0: "must be positive"), or a
    # MemoryError for a dpi of 1e6 (9e12 pixels).
    "overlay_figsize_zero": (lambda m, xn, tmp: explain.save_overlay(
        np.ones((8, 8)), None, tmp / "x.png", figsize=(0, 0)),
        r"^figsize\[0\] must be a finite number > 0, got 0$"),
    "overlay_figsize_negative": (lambda m, xn, tmp: explain.save_overlay(
        np.ones((8, 8)), None, tmp / "x.png", figsize=(3, -3)), r"figsize\[1\]"),
    "overlay_figsize_scalar": (lambda m, xn, tmp: explain.save_overlay(
        np.ones((8, 8)), None, tmp / "x.png", figsize=3), r"figsize must be \(width, height\)"),
    "overlay_huge_dpi": (lambda m, xn, tmp: explain.save_overlay(
        np.ones((8, 8)), None, tmp / "x.png", dpi=1e6),
        r"^the PNG would be 3e\+06 x 3e\+06 pixels \(figsize \* dpi\), more than 67108864; "
        r"give a smaller figsize or dpi$"),
    "overlay_alpha_nan": (lambda m, xn, tmp: explain.save_overlay(
        np.ones((8, 8)), np.ones((8, 8)), tmp / "x.png", alpha=float("nan")),
        r"alpha must be an opacity in \[0, 1\], got nan"),
    "overlay_grid_panel_size_zero": (lambda m, xn, tmp: explain.save_overlay_grid(
        [np.ones((8, 8))], [None], tmp / "x.png", panel_size=0), "panel_size"),
    "overlay_grid_panel_size_negative": (lambda m, xn, tmp: explain.save_overlay_grid(
        [np.ones((8, 8))], [None], tmp / "x.png", panel_size=-1), "panel_size"),
    "overlay_grid_huge": (lambda m, xn, tmp: explain.save_overlay_grid(
        [np.ones((8, 8))] * 4, [None] * 4, tmp / "x.png", panel_size=1e4, dpi=1e3),
        r"^the PNG would be 4e\+07 x 1e\+07 pixels \(panel_size \* dpi\), more than"),
    "overlay_grid_alpha": (lambda m, xn, tmp: explain.save_overlay_grid(
        [np.ones((8, 8))], [None], tmp / "x.png", alpha=1.5), r"alpha .* got 1\.5"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_one_line_jdl_errors(case, trained, tmp_path):
  call, match = BAD_INPUTS[case]
  _, m, _, xn = trained
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # E.g. no CompletenessWarning instead of an error.
    with pytest.raises(JdlError, match=match) as info:
      call(m, xn, tmp_path)
  assert "\n" not in str(info.value)
  assert not (tmp_path / "x.jpg").exists() and not (tmp_path / "x.png").exists()


def test_probabilities_of_a_single_logit_are_the_sigmoid_pair():
  # A binary classifier with one logit (binary_crossentropy): its softmax was a
  # constant 1.0, and LIME explained that constant.
  w = np.array([[0.5], [-1.0], [2.0], [0.25]], np.float32)
  m = explain.RunModel(lambda v, x, train=False: x @ v["w"], {"w": jnp.asarray(w)},
                       lambda x: x, (4,))
  z = (X[:, :4] @ w)[:, 0].astype(np.float64)
  p1 = 1 / (1 + np.exp(-z))
  np.testing.assert_allclose(np.asarray(m.probabilities(X[:, :4])),
                             np.stack([1 - p1, p1], axis=1), rtol=1e-5, atol=1e-7)
  e = explain.lime_tabular(m.probabilities, X[0, :4], key=KEY, std=1.0, target=1,
                           num_samples=500)
  assert e.r2 > 0.5 and np.abs(e.weights).max() > 1e-3, e


def test_weighted_ridge_of_a_constant_target_explains_it_all():
  z = RNG.normal(size=(50, 3))
  _, intercept, r2 = explain.weighted_ridge(z, np.full(50, 0.3), np.linspace(0.1, 1, 50))
  assert r2 == 1.0 and intercept == pytest.approx(0.3)


def test_lime_image_kernel_width_none_is_its_default():
  # None (lime_tabular's "default") reached width**2: a TypeError.
  image = np.random.default_rng(6).random((8, 8)).astype(np.float32)
  run = lambda **kw: explain.lime(one_cell_classifier, image, key=KEY, cell_size=2,  # noqa: E731
                                  num_samples=50, **kw)
  np.testing.assert_array_equal(run(kernel_width=None).weights, run(kernel_width=0.25).weights)
  assert not np.array_equal(run(kernel_width=0.5).weights, run().weights)


def test_probabilities_are_refused_for_a_regression_run():
  # A one-output regression got [1 - sigmoid(y), sigmoid(y)]: LIME explained column 0,
  # weights of the opposite sign to the regression's.
  trainer = jdl.Trainer(make_config(dataset="linear", task="regression", loss="mse",
                                    metrics=("mae",), monitor=""), None, quiet=True)
  m = explain.from_run(trainer)
  x = m.normalize(jdl.data.load_dataset("linear").x_test[:3])
  assert m.task == "regression" and m.logits(x).shape == (3, 1)
  with pytest.raises(JdlError, match=r"^probabilities are a classifier's; this is a regression "
                                     r"run, whose outputs are no class logits: give LIME "
                                     r"m\.logits as its predict_fn"):
    m.probabilities(x)


def test_lime_takes_typed_and_raw_keys():
  typed = explain.lime_tabular(sum_scores, X4, key=jax.random.key(5), std=1.0, num_samples=50)
  raw = explain.lime_tabular(sum_scores, X4, key=jax.random.PRNGKey(5), std=1.0,
                             num_samples=50)
  np.testing.assert_array_equal(typed.weights, raw.weights)


def test_explain_mnist_driver_tiny_run(tmp_path):
  """--tiny: the 8x8 digits, its outputs under WORKDIR/results, the deletion ks scaled
  to 64 pixels; a --config override reaches the run."""
  spec = importlib.util.spec_from_file_location("explain_mnist",
                                                REPO / "experiments" / "explain_mnist.py")
  driver = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(driver)
  summary = driver.main(["--tiny", "--workdir", str(tmp_path / "run"),
                         "--config.num_epochs=1", "--num_digits", "2", "--lime_samples", "16",
                         "--deletion_examples", "4", "--deletion_lime_examples", "1",
                         "--ig_steps", "2"])
  out = tmp_path / "run" / "results"
  assert sorted(p.name for p in out.iterdir()) == ["deletion.png", "overlays.png"]
  assert json.loads((tmp_path / "run" / "config.json").read_text())["num_epochs"] == 1
  assert summary["deletion_k"] == [0, 1, 2, 4, 8, 12]  # 10 ... 150 of 784, of 64.
  assert driver.deletion_ks(784) == list(driver.KS)
  # The accuracy it reports is the run's logged test line, not another split's or state's.
  logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
  test_lines = [r for r in logged if r["split"] == "test"]
  assert len(test_lines) == 1
  assert summary["test_accuracy"] == pytest.approx(test_lines[0]["accuracy"], rel=0, abs=1e-6)
  assert set(summary["deletion"]) >= {"random", "saliency", "integrated_gradients", "lime"}
  assert all(len(v) == 6 for v in summary["deletion"].values())


def test_predict_refuses_non_finite_and_integer_inputs_to_a_float_run(trained):
  result, _, raw, _ = trained
  bad = np.array(raw, np.float32)
  bad[2, 0, 0, 0] = np.nan
  with pytest.raises(JdlError, match=r"^predict got NaN or Inf inputs \(in 1 of 4 examples\)$"):
    jdl.predict(result, bad)
  # digits' loader gives floats: integer pixels would be taken 1:1 and silently misread.
  with pytest.raises(JdlError, match=r"predict got int64 inputs, but dataset 'digits' gives "
                     r"float inputs \(scikit-learn's 8x8 images / 16, in \[0, 1\]: taken "
                     r"1:1 they would be misread\)"):  # Not "MNIST".
    jdl.predict(result, raw.astype(np.int64))


def test_predict_says_when_inputs_lie_far_outside_the_train_range(trained, capfd):
  # Floats on another scale (digits' 0..16 where the loader gives / 16) passed every
  # check and were answered with confidence.
  result, _, raw, _ = trained
  capfd.readouterr()
  jdl.predict(result, raw)
  assert capfd.readouterr().err == ""
  jdl.predict(result, raw * 16)
  err = capfd.readouterr().err
  assert re.fullmatch(r"jdl: warning: [\d.]+% of predict's input values lie further beyond "
                      r"their feature's range in the train split than that range is wide "
                      r"\(compared as normalised alike\): give them on the scale dataset "
                      r"'digits' gives \(scikit-learn's 8x8 images / 16, in \[0, 1\]\)\n",
                      err), err  # The scale named: no doc said it.
  odd = np.array(raw)
  odd[0, 3, 3, 0] = 50.0  # One value of 256: no warning.
  jdl.predict(result, odd)
  assert capfd.readouterr().err == ""


def test_explain_refuses_a_run_on_token_ids():
  from conftest import make_config
  ids = np.random.default_rng(0).integers(1, 30, size=(60, 6))
  data = jdl.data.Dataset(x_train=ids[:40], y_train=ids[:40, 0] % 2, x_test=ids[40:],
                          y_test=ids[40:, 0] % 2, num_classes=2, task="classification",
                          name="ids", input_shape=(6,))
  trainer = jdl.Trainer(make_config(normalize="none", model__name="text_rnn",
                                    model__vocab_size=30, model__embed_dim=4,
                                    model__hidden=(4,), batch_size=20), None, dataset=data,
                        quiet=True)
  with pytest.raises(JdlError, match=r"jdl.explain attributes numeric inputs; this run takes "
                     r"token ids"):
    explain.from_run(trainer)


GENERATIVE = {
    "vae": dict(task="vae", model__name="vae", model__hidden=(8,), model__latent=2),
    "gan": dict(task="gan", model__name="mlp_gan", model__generator={"hidden": (8,)},
                model__discriminator={"hidden": (8,)}, generative__latent_dim=2,
                monitor=""),
    "autoencoder": dict(task="autoencoder", model__name="dense_autoencoder",
                        model__hidden=(8,), model__latent=2),
}


@pytest.mark.parametrize("task", sorted(GENERATIVE))
def test_from_run_refuses_generative_runs_but_autoencoders(task):
  # A GAN's state has no apply_fn (a raw AttributeError); a VAE's model needs a
  # sampling key (a raw TypeError at the first attribution).
  trainer = jdl.Trainer(make_config(normalize="none", metrics=(), **GENERATIVE[task]), None,
                        quiet=True)
  if task == "autoencoder":  # One function of the inputs: its outputs are explained.
    x = trainer.data.train.x[:2]
    m = explain.from_run(trainer)
    assert explain.saliency(m.apply_fn, m.variables, m.normalize(x)).shape == x.shape
    return
  with pytest.raises(JdlError, match=rf"^from_run explains classification, regression and "
                     rf"autoencoder runs, not task '{task}' \(its model is not one "
                     r"deterministic function of the inputs alone\)"):
    explain.from_run(trainer)


def test_weighted_ridge_refuses_a_rank_deficient_fit_without_a_penalty():
  # 12 binary samples on 16 features: np.linalg.solve returned weights off by up to
  # 70% of the true ones with R^2 = 1 (its pivots were small, not zero).
  rng = np.random.default_rng(0)
  z = rng.integers(0, 2, (12, 16)).astype(float)
  y = z @ np.linspace(0.1, 1.6, 16) + 0.5
  with pytest.raises(JdlError, match="singular .* use ridge > 0"):
    explain.weighted_ridge(z, y, np.ones(12), 0.0)
  beta, _, _ = explain.weighted_ridge(z, y, np.ones(12), 1e-3)  # A penalty makes it unique.
  assert np.isfinite(beta).all()
  full = rng.integers(0, 2, (200, 16)).astype(float)  # Full rank: the exact weights.
  beta, intercept, r2 = explain.weighted_ridge(full, full @ np.linspace(0.1, 1.6, 16) + 0.5,
                                               np.ones(200), 0.0)
  np.testing.assert_allclose(beta, np.linspace(0.1, 1.6, 16), rtol=1e-9)
  assert intercept == pytest.approx(0.5) and r2 == pytest.approx(1.0)


@pytest.mark.parametrize("image, attribution, name", [
    (np.full((4, 4), np.nan), None, "image"),
    (np.ones((4, 4)), np.where(np.eye(4) > 0, np.inf, 0.0), "attribution"),
])
def test_overlays_refuse_nan_and_inf_and_write_nothing(tmp_path, image, attribution, name):
  with pytest.raises(JdlError, match=f"{name} must be finite"):
    explain.save_overlay(image, attribution, tmp_path / "o.png")
  assert not (tmp_path / "o.png").exists()
