"""Diagnostics against independent references: float64 numpy re-implementations of
the documented statistics and closed forms on tiny hand-made trees, for the cases a
mutation audit of jdl/diagnostics.py found the rest of the suite let through
(half-precision inputs, nested modules, activations that are not ReLU outputs,
feature maps whose units the batch-first reading mixes up, ...).

Each test's docstring names the planted bugs (D..) it catches.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl import diagnostics as diag
from jdl.errors import JdlError

from conftest import make_config
from test_diagnostics import _Params


def _dead_ref(acts) -> float:
  """Units are the last axis: dead when 0 at every example and position."""
  a = np.asarray(acts, np.float64)
  return float(np.all(a.reshape(-1, a.shape[-1]) == 0, axis=0).mean())


# ------------------------------------------------------------------ norms


def test_grad_norm_of_an_empty_tree_is_zero():
  """Catches D02 (the norm of no gradient -> 1): every parameter frozen."""
  for grads in ({}, {"frozen": None}, ()):
    out = diag.grad_norm(grads)
    chex.assert_shape(out, ())
    assert float(out) == 0.0


def test_grad_norm_of_half_precision_gradients_sums_in_float32():
  """Catches D03 (squares summed in the gradients' own dtype): 300**2 overflows
  float16 (max 65504), the documented L2 norm of [300] * 4 is 600."""
  grads = {"a": np.full((4,), 300.0, np.float16), "b": {"c": np.full((2, 2), -0.5, np.float16)}}
  expected = np.linalg.norm(np.concatenate(
      [np.asarray(g, np.float64).ravel() for g in jax.tree.leaves(grads)]))
  np.testing.assert_allclose(diag.grad_norm(grads), expected, rtol=1e-6)


def test_update_ratios_group_the_leaves_of_nested_modules_by_their_parent():
  """Catches D05 (a layer read as the top-level module only): two Dense layers inside
  one block are two layers, each with its own ratio (closed forms: scaled by 1 + s)."""
  rng = np.random.default_rng(0)
  old = {"block_0": {"dense_0": {"kernel": rng.normal(size=(3, 2)).astype(np.float32),
                                 "bias": rng.normal(size=(2,)).astype(np.float32)},
                     "dense_1": {"kernel": rng.normal(size=(2, 2)).astype(np.float32)}},
         "head": {"kernel": rng.normal(size=(2, 1)).astype(np.float32)}}
  scale = {"block_0/dense_0": 0.5, "block_0/dense_1": 0.01, "head": 2.0}
  new = {"block_0": {k: jax.tree.map(lambda w, s=scale[f"block_0/{k}"]: w * (1 + s), v)
                     for k, v in old["block_0"].items()},
         "head": jax.tree.map(lambda w: w * 3.0, old["head"])}
  assert diag.layer_names(old) == ["block_0/dense_0", "block_0/dense_0", "block_0/dense_1",
                                   "head"]
  ratios = diag.update_ratios(old, new)
  assert sorted(ratios) == sorted(scale)
  for layer, s in scale.items():
    np.testing.assert_allclose(ratios[layer], s, rtol=1e-5)


def test_update_ratio_of_half_precision_parameters_reduces_in_float32():
  """Catches D11 (deltas and norms squared in the parameters' dtype): float16
  weights of 1000 have squares beyond float16's range, and the ratio read nan."""
  old = {"dense": {"kernel": np.full((2, 3), 1000.0, np.float16),
                   "bias": np.full((3,), 500.0, np.float16)}}
  new = jax.tree.map(lambda w: (w * 1.5).astype(np.float16), old)
  d = np.concatenate([(np.float64(new["dense"][k]) - np.float64(old["dense"][k])).ravel()
                      for k in ("kernel", "bias")])
  w = np.concatenate([np.float64(old["dense"][k]).ravel() for k in ("kernel", "bias")])
  ratio = diag.update_ratios(old, new)["dense"]
  np.testing.assert_allclose(ratio, np.linalg.norm(d) / np.linalg.norm(w), rtol=1e-6)


# -------------------------------------------------------------- histograms


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_histogram_of_half_precision_values_is_summarised_in_float32(dtype):
  """Catches D26 (no float32 cast): float16's sum of 200 values near 400 and the
  squared deviations overflow; bfloat16's sum loses all but 3 digits."""
  rng = np.random.default_rng(3)
  values = np.asarray((400 + 300 * rng.standard_normal(200)).astype(np.float32)).astype(dtype)
  ref = np.asarray(values, np.float64)
  h = diag.histogram(jnp.asarray(values), 8)
  counts, edges = np.histogram(ref, 8)
  np.testing.assert_array_equal(np.asarray(h["counts"]), counts)
  np.testing.assert_allclose(np.asarray(h["edges"], np.float64), edges, rtol=1e-6)
  np.testing.assert_allclose(np.float64(h["sum"]), ref.sum(), rtol=1e-6)
  np.testing.assert_allclose(np.float64(h["sum_sq_dev"]), np.square(ref - ref.mean()).sum(),
                             rtol=1e-5)
  assert float(h["num"]) == ref.size


@pytest.mark.parametrize("bins", [4, 5, 8])
def test_histogram_edges_of_a_range_near_float32s_limits_are_linspaces(bins):
  """Catches D54 (a wide range's edge i as lo + 2 * (i * half)): the doubled offset
  of the last inner edges overflows to inf when the range spans most of float32."""
  values = np.array([-3.4e38, -1e38, 2.5e38, 3.4e38], np.float32)
  h = diag.histogram(values, bins)
  edges = np.linspace(np.float64(values.min()), np.float64(values.max()), bins + 1)
  assert np.all(np.isfinite(np.asarray(h["edges"])))
  np.testing.assert_allclose(np.asarray(h["edges"], np.float64), edges, rtol=1e-6, atol=1e32)
  np.testing.assert_array_equal(np.asarray(h["counts"]), np.histogram(values, edges)[0])


# ---------------------------------------------------- dead and saturated units


def test_dead_units_are_exact_zeros_not_negative_values():
  """Catches D28 (`<= 0` for `== 0`): the documented dead unit is 0 at every example;
  a unit of negative values (a leaky ReLU's, or any sown value) is not dead."""
  acts = np.array([[0.0, -1.0, -0.5, 2.0], [0.0, -2.0, 0.0, 0.0]], np.float32)
  assert _dead_ref(acts) == 0.25
  np.testing.assert_allclose(diag.dead_relu_fraction(jnp.asarray(acts)), 0.25, rtol=1e-7)


@pytest.mark.parametrize("shape", [(2, 3, 2), (3, 2, 2, 4), (5, 1, 3)])
def test_dead_units_of_feature_maps_are_the_last_axis(shape):
  """Catches D30 (flattening all but the batch axis: each position of a unit counted as
  a unit of its own): a channel alive at one position only is alive."""
  rng = np.random.default_rng(sum(shape))
  acts = np.zeros(shape, np.float32)
  acts[(0,) * (len(shape) - 1) + (shape[-1] - 1,)] = 1.0  # Alive at one spot only.
  mask = rng.random(shape) < 0.3
  acts[..., 0] = np.where(mask[..., 0], rng.normal(size=shape[:-1]), 0.0)  # Alive or not.
  got = diag.dead_relu_fraction(jnp.asarray(acts))
  np.testing.assert_allclose(got, _dead_ref(acts), rtol=1e-7)


def test_saturation_of_half_precision_activations_compares_in_float32():
  """Catches D33 (no float32 cast): float16 rounds the 0.99 threshold up to
  0.990234375, and the float16 value 0.990234375 itself (> 0.99) read unsaturated."""
  acts = jnp.asarray([0.990234375, -0.990234375, 0.5, 0.98974609375], jnp.float16)
  ref = (np.abs(np.asarray(acts, np.float64)) > 0.99).mean()
  assert ref == 0.5
  np.testing.assert_allclose(diag.saturation_fraction(acts, "tanh"), ref, rtol=1e-7)
  sig = jnp.asarray([0.990234375, 0.5, 0.5, 0.5], jnp.float16)
  np.testing.assert_allclose(diag.saturation_fraction(sig, "sigmoid"), 0.25, rtol=1e-7)


# ------------------------------------------------------------ one step's all


def test_compute_diagnostics_names_each_sown_value_by_its_path_and_scores_only_2d_ones():
  """Catches D36 (a 1-D value scored as units: dead shares need examples and units)
  and D39 (activation histograms keyed by the bare sow name: a nested module's
  repeated sows overwrote one another). Every histogram against np.histogram."""
  rng = np.random.default_rng(5)
  first = np.maximum(rng.normal(size=(4, 3)), 0).astype(np.float32)
  first[:, 1] = 0.0  # One dead unit of three.
  second = np.zeros((4, 2), np.float32)
  vec = np.array([0.0, 0.0, 1.5], np.float32)  # 1-D: no examples axis.
  intermediates = {"block": {"act_0": (first, second)}, "vec": (vec,)}
  params = {"dense": {"kernel": np.ones((2, 2), np.float32), "bias": np.zeros(2, np.float32)}}
  grads = {"dense": {"kernel": rng.normal(size=(2, 2)).astype(np.float32),
                     "bias": rng.normal(size=(2,)).astype(np.float32)}}
  new = jax.tree.map(lambda w: w + 0.1, params)
  out = diag.compute_diagnostics(_Params(params), _Params(new), grads, intermediates, bins=5)
  assert out["dead_relu"].keys() == {"block/act_0", "block/act_0#1"}
  np.testing.assert_allclose(out["dead_relu"]["block/act_0"], 1 / 3, rtol=1e-7)
  np.testing.assert_allclose(out["dead_relu"]["block/act_0#1"], 1.0, rtol=1e-7)
  np.testing.assert_allclose(out["update_ratio"]["dense"], 0.1 * np.sqrt(6) / 2, rtol=1e-6)
  np.testing.assert_allclose(out["grad_norm"], np.linalg.norm(np.concatenate(
      [g.ravel().astype(np.float64) for g in jax.tree.leaves(grads)])), rtol=1e-6)
  refs = {"act/block/act_0": first, "act/block/act_0#1": second, "act/vec": vec,
          "grad/dense/kernel": grads["dense"]["kernel"], "grad/dense/bias": grads["dense"]["bias"]}
  assert out["histograms"].keys() == refs.keys()
  for key, values in refs.items():
    h = out["histograms"][key]
    chex.assert_shape([h["counts"], h["edges"]], [(5,), (6,)])
    counts, edges = np.histogram(values, 5)
    np.testing.assert_array_equal(np.asarray(h["counts"]), counts, err_msg=key)
    np.testing.assert_allclose(h["edges"], edges, rtol=1e-6, atol=1e-6, err_msg=key)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("name, kind", [("relu", "relu"), ("step", "relu"), ("tanh", "tanh"),
                                        ("sigmoid", "sigmoid"), ("leaky_relu", "none"),
                                        ("gelu", "none"), ("linear", "none")])
def test_auto_activation_kind_of_each_model_activation(name, kind):
  """Catches D41 (the step function's dead units, exact zeros, not scored as ReLU's)
  and D43 (an activation without exact-zero dead units or a saturated range, a leaky
  ReLU's or GELU's, scored as dead ReLUs)."""
  assert diag.activation_kind(make_config(model__activation=name)) == kind


@pytest.mark.parametrize("overrides, match", [
    ({"diagnostics__ratio_low": 1e-3, "diagnostics__ratio_high": 1e-3}, "ratio_low"),
    ({"diagnostics__every_steps": 3, "optimizer__accumulate_steps": 2},
     r"every_steps=3 is not a multiple of optimizer.accumulate_steps=2: .*\(e.g. 4\)$"),
])
def test_diagnostics_config_bounds_are_strict(overrides, match):
  """Catches D40 (ratio_low == ratio_high accepted: the documented 0 < low < high)
  and D44 (accumulation over 2 steps exempt from the every_steps multiple check)."""
  with pytest.raises(JdlError, match=match):
    diag.validate_config(make_config(**overrides))
  diag.validate_config(make_config(diagnostics__every_steps=4, optimizer__accumulate_steps=2))


# ------------------------------------------------------ gradient accumulation


def test_applied_gradient_is_the_mean_the_accumulated_update_applies():
  """Catches D45 (the running mean's divisor off by one): under accumulation over 3
  steps the logged gradient is the mean of the steps so far and this one, and at the
  third step exactly what optax.MultiSteps' SGD (lr 1) applies: -(g1 + g2 + g3) / 3."""
  grads = [{"w": np.array([3.0, -6.0], np.float32), "b": np.array([1.0], np.float32)},
           {"w": np.array([0.0, 3.0], np.float32), "b": np.array([4.0], np.float32)},
           {"w": np.array([6.0, 0.0], np.float32), "b": np.array([-2.0], np.float32)}]
  opt = optax.MultiSteps(optax.sgd(1.0), every_k_schedule=3)
  state = opt.init(jax.tree.map(jnp.zeros_like, grads[0]))
  for k, g in enumerate(grads):
    applied = diag.applied_gradient({"opt": (state,)}, g)  # Nested: found anywhere.
    mean = jax.tree.map(lambda *gs: np.mean(np.stack(gs), axis=0), *grads[:k + 1])
    chex.assert_trees_all_close(applied, mean, rtol=1e-6)
    updates, state = opt.update(g, state)
  chex.assert_trees_all_close(jax.tree.map(jnp.negative, updates), applied, rtol=1e-6)
  # Without accumulation: the step's own gradient.
  assert diag.applied_gradient({"sgd": optax.sgd(1.0).init(grads[0])}, grads[0]) is grads[0]
