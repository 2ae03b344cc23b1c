"""Losses, metrics and regularizers against independent references (numpy formulas,
closed forms, scikit-learn): cases a mutation audit of jdl/losses.py, jdl/metrics.py
and jdl/regularizers.py found the rest of the suite let through (81 planted bugs, 16
survived; each test's docstring names the one it catches).
"""

from __future__ import annotations

import math
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jdl import losses, metrics, regularizers
from jdl.config import base_config
from jdl.errors import JdlError


# ------------------------------------------------------------------ losses


def test_is_built_in_is_false_for_a_built_in_name_replaced_by_register_loss():
  """Catches L17 (is_built_in -> `name in _BUILT_IN`): the trainer's output-shape check
  for built-in losses must not be applied to the user's replacement."""
  orig, tasks = losses.LOSSES["mse"], losses.TASKS["mse"]
  def my_mse(outputs, targets):
    return jnp.zeros(outputs.shape[0])
  assert losses.is_built_in("mse")
  try:
    losses.register_loss("mse", my_mse, tasks=("regression",), replace=True)
    assert not losses.is_built_in("mse")
  finally:
    losses.LOSSES["mse"], losses.TASKS["mse"] = orig, tasks
  assert losses.is_built_in("mse")


# ----------------------------------------------------------------- metrics


def test_accuracy_and_top_k_leave_out_padding_rows_with_finite_outputs():
  """Catches M1 (_hits: `hit & mask` -> `hit`): the existing tests pad with NaN logits,
  which are misses anyway; padding with finite logits that would be hits must not count."""
  logits = np.array([[2, 0, 0], [0, 1, 0], [5, 0, 0], [4, 0, 0]], np.float32)
  labels = np.array([0, 0, 0, 0], np.int32)
  mask = np.array([True, True, False, False])
  names = ("accuracy", "top1_accuracy")
  got = metrics.compute(names, metrics.from_outputs(names, logits, labels, mask,
                                                    num_classes=3))
  want = skm.accuracy_score(labels[:2], logits[:2].argmax(-1))  # 0.5
  assert got["accuracy"] == pytest.approx(want)
  assert got["top1_accuracy"] == pytest.approx(want)


def test_r2_of_a_single_example_is_nan_like_sklearn():
  """Catches M17 (`count < 2` -> `count < 1`): R^2 of one example is undefined
  (scikit-learn: nan), not 0 or 1."""
  for pred in (1.0, 2.0):
    state = metrics.from_outputs(("r2",), np.array([[pred]], np.float32),
                                 np.array([[1.0]], np.float32), None, num_classes=None)
    assert math.isnan(metrics.compute(("r2",), state)["r2"])
  with warnings.catch_warnings():  # scikit-learn warns that R^2 is undefined here.
    warnings.simplefilter("ignore")
    assert math.isnan(skm.r2_score([1.0], [2.0]))


def test_r2_with_a_masked_first_row_equals_sklearn_on_the_real_rows():
  """Catches M22 (shift about `targets[0]` instead of the first *real* target): a masked
  NaN row at the front of a batch poisoned every moment."""
  rng = np.random.default_rng(0)
  y = (100 + rng.normal(size=(8, 1))).astype(np.float32)
  p = (y + 0.3 * rng.normal(size=(8, 1))).astype(np.float32)
  y[0], p[0] = np.nan, np.nan
  mask = np.arange(8) > 0
  got = metrics.compute(("r2",), metrics.from_outputs(("r2",), p, y, mask,
                                                      num_classes=None))["r2"]
  np.testing.assert_allclose(got, skm.r2_score(y[1:], p[1:]), rtol=1e-4)


def test_one_hot_targets_of_a_two_class_model_score_like_int_labels():
  """Catches M30 (one-hot targets read as such only for > 2 classes): [B, 2] one-hot
  targets of a binary model are documented input (``targets: int labels [B] or one-hot
  [B, C]``)."""
  logits = np.array([[1, 0], [0, 1], [0, 2], [3, 0], [0, 1]], np.float32)
  y = np.array([0, 1, 0, 1, 1])
  names = ("accuracy", "precision", "recall", "f1", "macro_f1")
  got = metrics.compute(names, metrics.from_outputs(
      names, logits, np.eye(2, dtype=np.float32)[y], None, num_classes=2))
  pred = logits.argmax(-1)
  want = {"accuracy": skm.accuracy_score(y, pred),
          "precision": skm.precision_score(y, pred, zero_division=0),
          "recall": skm.recall_score(y, pred, zero_division=0),
          "f1": skm.f1_score(y, pred, zero_division=0),
          "macro_f1": skm.f1_score(y, pred, average="macro", zero_division=0)}
  for name in names:
    assert got[name] == pytest.approx(want[name]), name


# ------------------------------------------------------------ regularizers


def test_penalty_pattern_must_match_the_whole_path_not_a_prefix():
  """Catches R2 (`p.fullmatch` -> `p.match`): 'mlp/hidden_1' must not penalise
  'mlp/hidden_1/kernel' nor 'mlp/hidden_10/kernel'."""
  w1 = np.full((2, 2), 1.0, np.float32)
  w10 = np.full((2, 3), 2.0, np.float32)
  params = {"mlp": {"hidden_1": {"kernel": w1}, "hidden_10": {"kernel": w10}}}
  assert float(regularizers.penalty(params, (("mlp/hidden_1", 1.0, 1.0),))) == 0.0
  got = regularizers.penalty(params, (("mlp/hidden_1/kernel", 0.5, 0.25),))
  np.testing.assert_allclose(got, 0.5 * np.abs(w1).sum() + 0.25 * np.square(w1).sum(),
                             rtol=1e-6)


def test_max_norm_leaves_one_dimensional_leaves_alone_even_when_included():
  """Catches R12 (dropping `p.ndim < 2`): a bias has no per-unit incoming vector; with
  include='.*' each of its elements was clipped to +-max_value."""
  params = {"dense": {"kernel": np.full((4, 2), 3.0, np.float32),
                      "bias": np.full((3,), 5.0, np.float32)}}
  zeros = {"dense": {k: np.zeros_like(v) for k, v in params["dense"].items()}}
  tx = regularizers.max_norm(1.0, include=".*")
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_array_equal(np.asarray(updates["dense"]["bias"]), 0.0)
  kernel = params["dense"]["kernel"] + np.asarray(updates["dense"]["kernel"])
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6)  # Projected.


def test_max_norm_by_default_leaves_embeddings_alone():
  """Catches R19 (MAX_NORM_KERNELS also matching 'embedding'): an embedding's rows are
  not incoming weights, as the module documents."""
  params = {"Embed_0": {"embedding": np.full((5, 4), 3.0, np.float32)},
            "dense": {"kernel": np.full((4, 2), 3.0, np.float32)}}
  zeros = {k: {kk: np.zeros_like(vv) for kk, vv in v.items()} for k, v in params.items()}
  tx = regularizers.max_norm(1.0)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_array_equal(np.asarray(updates["Embed_0"]["embedding"]), 0.0)
  assert np.all(np.asarray(updates["dense"]["kernel"]) < 0)  # The kernel is projected.


def test_max_norm_of_zero_is_refused():
  """Catches R17 (`max_value > 0` -> `>= 0`): a radius of 0 would zero every kernel."""
  with pytest.raises(JdlError, match="max_norm must be > 0"):
    regularizers.max_norm(0.0)
  with pytest.raises(JdlError, match="max_norm must be > 0"):
    regularizers.max_norm(-1.0)


def test_check_patterns_ignores_exclude_unless_a_penalty_is_set():
  """Catches R16 (`if reg.exclude and (l1 or l2)` -> `if reg.exclude`): an exclude
  pattern with no global penalty acts on nothing, so a run must not be refused for it."""
  params = {"mlp": {"hidden_0": {"kernel": np.ones((2, 2), np.float32)}}}
  reg = base_config().regularization
  reg.exclude = "nothing_matches_this"
  regularizers.check_patterns(reg, params)  # No penalty: nothing to check.
  reg.l2 = 0.1
  with pytest.raises(JdlError, match="regularization.exclude"):
    regularizers.check_patterns(reg, params)


def test_check_patterns_checks_max_norm_include_when_max_norm_is_set():
  """Catches R20 (max_norm_include never checked) at the unit level (the CLI case in
  test_bad_inputs also kills it, but slowly)."""
  params = {"mlp": {"hidden_0": {"kernel": np.ones((2, 2), np.float32)}}}
  reg = base_config().regularization
  reg.max_norm_include = "x"
  regularizers.check_patterns(reg, params)  # max_norm off: not checked.
  reg.max_norm = 3.0
  with pytest.raises(JdlError, match="max_norm_include"):
    regularizers.check_patterns(reg, params)


def test_integer_outputs_are_widened_to_float_before_the_targets_are_cast():
  """Catches L20 (widen returning non-float `x` as it is): `_match` casts the targets to
  the outputs' dtype, so int outputs truncated float targets (mse of 1 vs 1.5 read 0)."""
  got = losses.mse(jnp.array([[1], [2]], jnp.int32), jnp.array([[1.5], [2.0]], jnp.float32))
  np.testing.assert_allclose(got, [0.25, 0.0], rtol=1e-6)
  assert losses.widen(jnp.array([1, 2], jnp.int32)).dtype == jnp.float32


@pytest.mark.parametrize("name", ["categorical_crossentropy", "sparse_categorical_crossentropy"])
def test_negative_label_smoothing_is_refused(name):
  """Catches L21 (`0 <= alpha < 1` -> `-1 < alpha < 1`): negative smoothing pushes targets
  outside [0, 1] (a negative probability for the other classes)."""
  with pytest.raises(JdlError, match=r"label_smoothing must be in \[0, 1\)"):
    losses.get_loss(name, label_smoothing=-0.1)


def test_top_k_counts_a_row_whose_label_logit_is_infinite_as_a_miss():
  """Catches M41 (`isfinite(label_logit)` -> `~isnan(label_logit)`): as documented in
  `compute`, a label logit that is not finite (+inf too) is a top-k miss."""
  logits = np.array([[np.inf, 0, 0], [0, 1, 0]], np.float32)
  labels = np.array([0, 1], np.int32)
  names = ("top1_accuracy", "top2_accuracy")
  got = metrics.compute(names, metrics.from_outputs(names, logits, labels, None,
                                                    num_classes=3))
  assert got == {"top1_accuracy": 0.5, "top2_accuracy": 0.5}


@pytest.mark.parametrize("pattern", [5, None, ("kernel",)])
def test_a_non_string_pattern_is_a_jdl_error_naming_the_key(pattern):
  """Catches R23 (compile_regex without its isinstance(str) check): re.compile raised a
  bare TypeError instead of an error naming the config key."""
  with pytest.raises(JdlError, match=r"regularization\.rules\[0\] pattern must be a regex"):
    regularizers.check_rules(((pattern, 0.1, 0.0),))


@pytest.mark.parametrize("value", [True, False])
def test_a_bool_coefficient_is_refused(value):
  """Catches R24 (dropping `not isinstance(value, bool)`): `l2=True` is a typo, not 1.0."""
  with pytest.raises(JdlError, match=r"l2 must be a finite number >= 0"):
    regularizers.check_rules((("x", 0.0, value),))


def test_exclude_exempts_from_the_l1_penalty_too():
  """Catches R25 (the exclude rule carrying `l1`): the existing test sets l2 only, so an
  exclude that exempted from L2 but not L1 passed."""
  reg = base_config().regularization
  reg.l1 = 0.1
  reg.exclude = "mlp/head/.*"
  rules = regularizers.rules_from_config(reg)
  assert rules == (("mlp/head/.*", 0.0, 0.0), (regularizers.KERNELS, 0.1, 0.0))
  hidden = np.arange(-3.0, 3.0, dtype=np.float32).reshape(2, 3)
  params = {"mlp": {"hidden_0": {"kernel": hidden},
                    "head": {"kernel": np.full((3, 2), 7.0, np.float32)}}}
  np.testing.assert_allclose(regularizers.penalty(params, rules), 0.1 * np.abs(hidden).sum(),
                             rtol=1e-6)
