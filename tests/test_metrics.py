"""Tests for jdl.metrics: batched, masked, merged states against scikit-learn."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jdl import metrics
from jdl.errors import JdlError

N = 53  # Examples in the split; not a multiple of the batch size.
BATCH = 16
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def _strict_promotion():
  with jax.numpy_dtype_promotion("strict"):
    yield


# ---------------------------------------------------------------------------
# Whole-split data and its scikit-learn reference.


class Split:
  """A split: model outputs, targets, and plain numpy views for sklearn."""

  def __init__(self, outputs, targets, *, y_true, y_pred=None, y_score=None,
               logits=None):
    self.outputs, self.targets = outputs, targets
    self.y_true, self.y_pred, self.y_score, self.logits = (
        y_true, y_pred, y_score, logits)


def multiclass(c, *, one_hot=False, absent_class=False, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(N, c)).astype(np.float32)
  y = rng.integers(0, c - 1 if absent_class else c, size=N)
  if absent_class:  # Class c-1 is neither a label nor a prediction.
    logits[:, -1] = -100.0
  targets = np.eye(c, dtype=np.float32)[y] if one_hot else y.astype(np.int32)
  return Split(logits, targets, y_true=y, y_pred=logits.argmax(-1),
               logits=logits)


def two_logits(*, ties=False, seed=1):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(N, 2)).astype(np.float32)
  if ties:  # Multiples of 0.5: margins tie often and are exact in float32.
    logits = np.round(logits * 2) / 2
  y = rng.integers(0, 2, size=N)
  margin = logits[:, 1].astype(np.float64) - logits[:, 0]
  prob = 1.0 / (1.0 + np.exp(-margin))  # Softmax probability of class 1.
  return Split(logits, y.astype(np.int32), y_true=y, y_pred=logits.argmax(-1),
               y_score=prob, logits=logits)


def single_logit(shape, *, ties=False, seed=2):
  rng = np.random.default_rng(seed)
  logit = rng.normal(size=N).astype(np.float32) * 2
  if ties:
    logit = np.round(logit)
  y = rng.integers(0, 2, size=N)
  return Split(logit.reshape(shape), y.astype(np.float32).reshape(shape),
               y_true=y, y_pred=(logit > 0).astype(int), y_score=logit)


def regression(out_shape, target_shape, *, offset=0.0, seed=3):
  rng = np.random.default_rng(seed)
  targets = (offset + rng.normal(size=target_shape)).astype(np.float32)
  noise = 0.5 * rng.normal(size=out_shape).astype(np.float32)
  outputs = targets.reshape(out_shape) + noise
  size = math.prod(out_shape[1:])
  return Split(outputs, targets, y_true=targets.reshape(N, size),
               y_pred=outputs.reshape(N, size))


def reference(name: str, s: Split) -> float:
  """The metric on the whole split, from scikit-learn."""
  if name.startswith("top"):
    k = int(name[3:].split("_")[0])
    return skm.top_k_accuracy_score(
        s.y_true, s.logits, k=k, labels=np.arange(s.logits.shape[1]))
  table = {
      "accuracy": lambda: skm.accuracy_score(s.y_true, s.y_pred),
      "precision": lambda: skm.precision_score(s.y_true, s.y_pred,
                                               zero_division=0),
      "recall": lambda: skm.recall_score(s.y_true, s.y_pred, zero_division=0),
      "f1": lambda: skm.f1_score(s.y_true, s.y_pred, zero_division=0),
      "macro_precision": lambda: skm.precision_score(
          s.y_true, s.y_pred, average="macro", zero_division=0),
      "macro_recall": lambda: skm.recall_score(
          s.y_true, s.y_pred, average="macro", zero_division=0),
      "macro_f1": lambda: skm.f1_score(
          s.y_true, s.y_pred, average="macro", zero_division=0),
      "roc_auc": lambda: skm.roc_auc_score(s.y_true, s.y_score),
      "mse": lambda: skm.mean_squared_error(s.y_true, s.y_pred),
      "mae": lambda: skm.mean_absolute_error(s.y_true, s.y_pred),
      "r2": lambda: skm.r2_score(s.y_true, s.y_pred),
  }
  return float(table[name]())


BINARY = ("accuracy", "precision", "recall", "f1", "roc_auc")
MACRO = ("macro_precision", "macro_recall", "macro_f1")
REGRESSION = ("mse", "mae", "r2")
CASES = [
    # (id, names, num_classes, split, rtol)
    ("multiclass", ("accuracy", "top1_accuracy", "top2_accuracy",
                    "top3_accuracy") + MACRO, 4, multiclass(4), RTOL),
    ("multiclass_one_hot_absent_class", ("accuracy",) + MACRO, 5,
     multiclass(5, one_hot=True, absent_class=True), RTOL),
    ("two_logits", BINARY + MACRO, 2, two_logits(), RTOL),
    ("two_logits_tied_scores", ("roc_auc", "f1"), 2, two_logits(ties=True),
     RTOL),
    ("single_logit_flat", BINARY + MACRO, 1, single_logit((N,)), RTOL),
    ("single_logit_column_tied", BINARY, 2, single_logit((N, 1), ties=True),
     RTOL),
    ("regression", REGRESSION, None, regression((N,), (N,)), RTOL),
    ("regression_column", REGRESSION, None, regression((N, 1), (N,)), RTOL),
    ("regression_multi_output", REGRESSION, None, regression((N, 3), (N, 3)),
     RTOL),
    # A large offset breaks sum(y^2) - n mean^2 in float32; Chan's merge holds.
    ("regression_offset", REGRESSION, None,
     regression((N,), (N,), offset=1e3), 1e-4),
]


# ---------------------------------------------------------------------------
# Batching.


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  """Pads the batch dim with garbage that must not count."""
  garbage = np.full((size - len(x),) + x.shape[1:], np.nan, np.float32)
  if not np.issubdtype(x.dtype, np.floating):
    garbage = np.ones_like(garbage, dtype=x.dtype)
  return np.concatenate([x, garbage.astype(x.dtype)])


def batches(s: Split, loss: np.ndarray, sizes, *, pad_to, float_mask=False):
  """Yields (outputs, targets, mask, loss) batches of ``sizes``, padded."""
  start = 0
  for size in sizes:
    part = slice(start, start + size)
    start += size
    mask = np.arange(pad_to) < size
    yield (_pad(s.outputs[part], pad_to), _pad(s.targets[part], pad_to),
           mask.astype(np.float32) if float_mask else mask,
           _pad(loss[part], pad_to))
  assert start == N


LAYOUTS = {
    # Fixed-size batches, the last one partial, padded and masked.
    "fixed": dict(sizes=[BATCH, BATCH, BATCH, N - 3 * BATCH], pad_to=BATCH),
    # Uneven batches, all padded to one shape, with a 0/1 float mask.
    "uneven": dict(sizes=[7, 20, 26], pad_to=2 * BATCH, float_mask=True),
}


def evaluate(names, num_classes, s, loss, layout):
  chex.clear_trace_counter()  # The counter is keyed by code, across tests.

  @jax.jit
  @chex.assert_max_traces(n=1)
  def eval_step(outputs, targets, mask, per_example_loss):
    return metrics.from_outputs(names, outputs, targets, mask,
                                num_classes=num_classes, loss=per_example_loss)

  state = metrics.empty(names, num_classes=num_classes)
  for batch in batches(s, loss, **layout):
    state = metrics.merge(state, eval_step(*batch))
  return metrics.compute(names, state)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize(
    "names, num_classes, split, rtol", [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_merged_batches_equal_sklearn_on_whole_split(
    names, num_classes, split, rtol, layout
):
  loss = np.random.default_rng(9).random(N).astype(np.float32)
  got = evaluate(names, num_classes, split, loss, LAYOUTS[layout])
  want = {name: reference(name, split) for name in names}
  want["loss"] = float(loss.astype(np.float64).mean())
  assert set(got) == set(want)
  assert all(isinstance(v, float) for v in got.values())
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=ATOL,
                               err_msg=name)


@pytest.mark.parametrize(
    "names, num_classes, split",
    [(("accuracy", "top2_accuracy") + MACRO, 4, multiclass(4)),
     (REGRESSION, None, regression((N, 2), (N, 2), offset=10.0))],
    ids=["classification", "regression"],
)
def test_merge_in_scan_from_zeros_shaped_like_a_batch(names, num_classes, split):
  """The trainer's pattern: a zero state from eval_shape, merged in lax.scan."""
  loss = np.random.default_rng(9).random(N).astype(np.float32)
  xs = [np.stack(parts) for parts in zip(*batches(split, loss, **LAYOUTS["fixed"]))]
  step = functools.partial(metrics.from_outputs, names, num_classes=num_classes)

  def body(acc, batch):
    outputs, targets, mask, per_example = batch
    return metrics.merge(acc, step(outputs, targets, mask, loss=per_example)), None

  shapes = jax.eval_shape(lambda b: step(*b[:3], loss=b[3]), [x[0] for x in xs])
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  state = jax.jit(lambda acc, xs: jax.lax.scan(body, acc, xs)[0])(zeros, xs)
  got = metrics.compute(names, state)
  for name in names:
    np.testing.assert_allclose(got[name], reference(name, split), rtol=RTOL,
                               atol=ATOL, err_msg=name)
  np.testing.assert_allclose(got["loss"], loss.mean(), rtol=RTOL)


@pytest.mark.full_opt
def test_from_outputs_jit_equals_eager():
  s = two_logits()
  names = BINARY + MACRO + ("top1_accuracy",)
  mask = np.arange(N) < N - 5
  fn = functools.partial(metrics.from_outputs, num_classes=2)
  eager = fn(names, s.outputs, s.targets, mask)
  jitted = jax.jit(fn, static_argnums=0)(names, s.outputs, s.targets, mask)
  chex.assert_trees_all_close(jitted, eager, rtol=0, atol=0)


def test_confusion_matrix_counts_real_examples():
  s = multiclass(3)
  mask = np.arange(N) < 40
  state = jax.jit(metrics.from_outputs, static_argnames=("names", "num_classes"))(
      ("macro_f1",), s.outputs, s.targets, mask, num_classes=3)
  want = skm.confusion_matrix(s.y_true[:40], s.y_pred[:40], labels=range(3))
  matrix = np.asarray(state["confusion"]["matrix"])
  np.testing.assert_array_equal(matrix[:, :3], want)
  np.testing.assert_array_equal(matrix[:, 3], 0)  # No NaN row: none predicted no class.


def test_merge_is_symmetric_and_empty_is_identity():
  s = regression((N, 2), (N, 2))
  names = REGRESSION
  a = metrics.from_outputs(names, s.outputs[:10], s.targets[:10], None,
                           num_classes=None)
  b = metrics.from_outputs(names, s.outputs[10:], s.targets[10:], None,
                           num_classes=None)
  empty = metrics.empty(names, num_classes=None)
  ab = metrics.compute(names, metrics.merge(a, b))
  for other in (metrics.merge(b, a), metrics.merge(metrics.merge(empty, a), b)):
    for name, value in metrics.compute(names, other).items():
      np.testing.assert_allclose(value, ab[name], rtol=RTOL, err_msg=name)


@pytest.mark.parametrize(
    "names, num_classes, split, want",
    [
        (("roc_auc",), 2, Split(np.array([[0.0, 1.0], [1.0, 0.0]], np.float32),
                                np.array([1, 1], np.int32), y_true=None),
         {"roc_auc": math.nan}),
        (("precision", "recall", "f1"), 2,
         Split(np.array([-1.0, -2.0], np.float32), np.array([0, 0], np.int32),
               y_true=None),
         {"precision": 0.0, "recall": 0.0, "f1": 0.0}),
        (("accuracy", "r2"), 2,
         Split(np.zeros((0,), np.float32), np.zeros((0,), np.int32),
               y_true=None),
         {"accuracy": math.nan, "r2": math.nan}),
    ],
    ids=["roc_auc_one_class", "zero_division", "no_examples"],
)
def test_degenerate_splits(names, num_classes, split, want):
  state = metrics.from_outputs(names, split.outputs, split.targets, None,
                               num_classes=num_classes)
  np.testing.assert_equal(metrics.compute(names, state), want)


def test_non_finite_outputs_are_misses_and_nan_scores_no_auc():
  # Every comparison with NaN is false: a NaN row counted as a top-k hit (a monitor on
  # val_top3_accuracy would have kept a diverged checkpoint), NaN scores shared a rank.
  names = ("accuracy", "top1_accuracy", "top3_accuracy")
  out = np.full((6, 5), np.nan, np.float32)
  out[:2] = np.eye(5, dtype=np.float32)[[0, 1]]  # Two finite rows, both right.
  out[2, 0] = np.inf
  got = metrics.compute(names, metrics.from_outputs(names, out, np.array([0, 1, 2, 3, 4, 2]),
                                                    None, num_classes=5))
  assert got["top1_accuracy"] == got["top3_accuracy"] == got["accuracy"] == 2 / 6
  # argmax returns a NaN's index: a NaN in the label's column was a hit for accuracy
  # and the macro metrics. A NaN row predicts no class: scikit-learn's scores with a
  # label outside the classes for it, averaged over the classes present.
  out = np.array([[np.nan, 0, 0], [np.nan, 1, 0], [0, 2, 1], [0, 0, 3], [5, 0, 0]], np.float32)
  y = np.array([0, 0, 1, 1, 0])
  macro = ("accuracy", "macro_f1", "macro_precision", "macro_recall")
  got = metrics.compute(macro, metrics.from_outputs(macro, out, y, None, num_classes=3))
  pred = np.array([-1, -1, 1, 2, 0])
  labels = [0, 1, 2]  # Present in the labels or the real predictions.
  want = {"accuracy": 2 / 5,
          **{f"macro_{k}": f(y, pred, labels=labels, average="macro", zero_division=0)
             for k, f in (("f1", skm.f1_score), ("precision", skm.precision_score),
                          ("recall", skm.recall_score))}}
  assert got == pytest.approx(want)
  one = metrics.compute(("accuracy", "f1"), metrics.from_outputs(
      ("accuracy", "f1"), np.array([np.nan, 2.0, -1.0], np.float32), np.array([1, 1, 0]),
      None, num_classes=2))
  # For class 1's F1, predicting no class is predicting "not 1": a false negative.
  assert one == pytest.approx({"accuracy": 2 / 3, "f1": skm.f1_score([1, 1, 0], [0, 1, 0])})
  # Classes masked with -inf rank last: the row is still scored.
  masked = np.array([[0.0, 1.0, -np.inf, -np.inf, -np.inf]], np.float32)
  got = metrics.compute(names, metrics.from_outputs(names, masked, np.array([0]), None,
                                                    num_classes=5))
  assert got == {"accuracy": 0.0, "top1_accuracy": 0.0, "top3_accuracy": 1.0}
  # Ties hit, as TensorFlow's in_top_k: all-equal logits put every class in the top 1.
  got = metrics.compute(names[1:], metrics.from_outputs(
      names[1:], np.zeros((4, 5), np.float32), np.arange(4), None, num_classes=5))
  assert got == {"top1_accuracy": 1.0, "top3_accuracy": 1.0}
  auc = metrics.compute(("roc_auc",), metrics.from_outputs(
      ("roc_auc",), np.array([0.1, np.nan, 0.3, np.nan, -1.0], np.float32),
      np.array([0, 1, 1, 0, 0]), None, num_classes=2))
  assert math.isnan(auc["roc_auc"])


def test_r2_of_targets_constant_to_float32_rounding_is_sklearns_constant_case():
  # Seven float32 0.1s: their sum of squares about the mean is ~1e-16, not 0, and
  # 1 - SSE / SST was -1.8e12; scikit-learn on the exact values gives 0 (1 if exact).
  y = np.full((7, 1), 0.1, np.float32)
  for batches, want in (((7,), 0.0), ((3, 4), 0.0)):
    state, start = metrics.empty(("r2",), num_classes=None), 0
    for size in batches:
      part = slice(start, start + size)
      state = metrics.merge(state, metrics.from_outputs(("r2",), y[part] + 0.01, y[part],
                                                        None, num_classes=None))
      start += size
    assert metrics.compute(("r2",), state)["r2"] == want
  assert skm.r2_score(y.astype(np.float64), y.astype(np.float64) + 0.01) == 0.0
  exact = metrics.from_outputs(("r2",), y, y, None, num_classes=None)
  assert metrics.compute(("r2",), exact)["r2"] == 1.0
  # A small spread far from zero is still scored (a tolerance on the sum of squares
  # zeroed "1e6 +- 1", 15 float32 steps apart), in one batch or several.
  rng = np.random.default_rng(0)
  for mean, std in ((1e6, 1.0), (1e5, 0.05), (1.0, 1e-6), (100.0, 5e-5)):
    varied = (mean + std * rng.standard_normal((64, 1))).astype(np.float32)
    guess = (varied + 0.3 * std * rng.standard_normal((64, 1))).astype(np.float32)
    want = skm.r2_score(varied.astype(np.float64), guess.astype(np.float64))
    for parts in ((64,), (20, 44)):
      state, start = metrics.empty(("r2",), num_classes=None), 0
      for size in parts:
        part = slice(start, start + size)
        state = metrics.merge(state, metrics.from_outputs(("r2",), guess[part],
                                                          varied[part], None,
                                                          num_classes=None))
        start += size
      np.testing.assert_allclose(metrics.compute(("r2",), state)["r2"], want, atol=2e-3,
                                 err_msg=f"{mean} +- {std}, batches {parts}")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: metrics.validate_names(("accuracy", "acc"), "classification"),
         r"unknown classification metric 'acc'; valid names: accuracy, .*"
         r"top\{k\}_accuracy"),
        (lambda: metrics.validate_names(("r2",), "classification"),
         "unknown classification metric 'r2'"),
        (lambda: metrics.validate_names(("accuracy",), "regression"),
         r"unknown regression metric 'accuracy'; valid names: mse, mae, r2"),
        (lambda: metrics.validate_names(("top0_accuracy",), "classification"),
         "top0_accuracy"),
        (lambda: metrics.validate_names(("mse",), "ranking"),
         "unknown task 'ranking'"),
        (lambda: metrics.empty(("top5_acc",), num_classes=3),
         "unknown metric 'top5_acc'"),
        (lambda: metrics.from_outputs(("precision",), jnp.zeros((4, 3)),
                                      jnp.zeros((4,), jnp.int32), None,
                                      num_classes=3),
         "precision/recall/f1 is for binary models"),
        (lambda: metrics.from_outputs(("accuracy",), jnp.zeros((4, 3)),
                                      jnp.zeros((4,), jnp.int32), None,
                                      num_classes=4),
         "outputs have 3 classes but num_classes=4"),
        (lambda: metrics.from_outputs(("accuracy",), jnp.zeros((4, 3)),
                                      jnp.zeros((4,), jnp.int32),
                                      jnp.ones((5,), bool), num_classes=3),
         r"mask must have shape \[4\]"),
        (lambda: metrics.compute(("f1",), metrics.empty(("accuracy",),
                                                        num_classes=2)),
         "metric 'f1' has no state"),
    ],
    ids=["unknown", "wrong_task_cls", "wrong_task_reg", "top0", "unknown_task",
         "empty_unknown", "binary_on_multiclass", "num_classes_mismatch",
         "mask_shape", "compute_missing"],
)
def test_errors(call, match):
  with pytest.raises(JdlError, match=match):
    call()


def test_validate_names_accepts_valid():
  metrics.validate_names(("accuracy", "top5_accuracy", "macro_f1", "roc_auc"),
                         "classification")
  metrics.validate_names(REGRESSION, "regression")


# ---------------------------------------------------------------------------
# Registered metrics.


@pytest.fixture
def register():
  """``register(name, ...)``: jdl.metrics.register_metric, undone after the test."""
  names = []

  def register(name, *args, **kwargs):
    metrics.register_metric(name, *args, **kwargs)
    names.append(name)

  yield register
  for name in names:
    metrics.CUSTOM.pop(name, None)


def _brier(logits, labels):
  p = jax.nn.softmax(logits)
  return jnp.sum(jnp.square(p - jax.nn.one_hot(labels, p.shape[-1], dtype=p.dtype)), axis=-1)


def _class_hits(logits, labels, mask):
  """Balanced accuracy's sums: per class, its real examples and those predicted right."""
  real = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.int32) * mask.astype(jnp.int32)[:, None]
  hit = (jnp.argmax(logits, -1) == labels).astype(jnp.int32)
  return {"hits": jnp.sum(real * hit[:, None], axis=0), "count": jnp.sum(real, axis=0)}


def _balanced(totals):
  present = totals["count"] > 0
  return np.mean(totals["hits"][present] / totals["count"][present])


def _brier_numpy(s):
  z = s.logits.astype(np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return float(np.mean(np.sum((p - np.eye(z.shape[1])[s.y_true]) ** 2, axis=-1)))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_registered_metrics_are_exact_over_padded_batches(register, layout):
  register("brier_t", _brier, better="min")
  register("balanced_t", statistics=_class_hits, compute=_balanced, better="max")
  names = ("accuracy", "brier_t", "balanced_t", "macro_recall")
  s = multiclass(4)
  loss = np.random.default_rng(9).random(N).astype(np.float32)
  # The padding holds NaN logits: they must count nowhere.
  got = evaluate(names, 4, s, loss, LAYOUTS[layout])
  np.testing.assert_allclose(got["brier_t"], _brier_numpy(s), rtol=RTOL)
  np.testing.assert_allclose(got["balanced_t"], skm.balanced_accuracy_score(s.y_true, s.y_pred),
                             rtol=RTOL)
  np.testing.assert_allclose(got["accuracy"], reference("accuracy", s), rtol=RTOL)
  assert isinstance(got["balanced_t"], float)
  assert metrics.better_direction("brier_t") == "min"
  assert metrics.better_direction("balanced_t") == "max"


def test_registered_metrics_merge_in_scan_from_zeros(register):
  register("brier_t", _brier)
  register("balanced_t", statistics=_class_hits, compute=_balanced)
  names = ("brier_t", "balanced_t")
  s = multiclass(3, seed=4)
  loss = np.zeros(N, np.float32)
  xs = [np.stack(parts) for parts in zip(*batches(s, loss, **LAYOUTS["fixed"]))]
  step = functools.partial(metrics.from_outputs, names, num_classes=3)
  shapes = jax.eval_shape(lambda b: step(*b[:3]), [x[0] for x in xs])
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)

  def body(acc, batch):
    return metrics.merge(acc, step(*batch[:3])), None

  state = jax.jit(lambda acc, xs: jax.lax.scan(body, acc, xs)[0])(zeros, xs)
  got = metrics.compute(names, state)
  np.testing.assert_allclose(got["brier_t"], _brier_numpy(s), rtol=RTOL)
  np.testing.assert_allclose(got["balanced_t"], skm.balanced_accuracy_score(s.y_true, s.y_pred),
                             rtol=RTOL)
  # empty() holds the per-example form's sums; the statistics form's shapes come with
  # the first batch, which merge takes as it is. Before any batch both are nan.
  empty = metrics.empty(names, num_classes=3)
  chex.assert_trees_all_equal(empty, {"brier_t": {"sum": jnp.float32(0), "count": jnp.int32(0)}})
  assert all(math.isnan(v) for v in metrics.compute(names, empty).values())
  first = step(*[x[0] for x in xs][:3])
  chex.assert_trees_all_equal(metrics.merge(empty, first), first)


def test_a_registered_regression_metric(register):
  register("max_err_t", statistics=lambda o, t, m: {
      "max": jnp.max(jnp.where(m[:, None], jnp.abs(o.reshape(len(o), -1) - t.reshape(len(t), -1)),
                               0.0))}, compute=lambda g: g["max"], tasks="regression")
  metrics.validate_names(("mse", "max_err_t"), "regression")
  with pytest.raises(JdlError, match="metric 'max_err_t' is registered for regression, "
                                     "not classification"):
    metrics.validate_names(("max_err_t",), "classification")
  s = regression((N, 2), (N, 2))
  mask = np.arange(N) < 40
  state = metrics.from_outputs(("max_err_t",), s.outputs, s.targets, mask, num_classes=None)
  np.testing.assert_allclose(metrics.compute(("max_err_t",), state)["max_err_t"],
                             np.abs(s.y_pred[:40] - s.y_true[:40]).max(), rtol=RTOL)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("accuracy", _brier), {}, "metric name 'accuracy' is taken by jdl"),
        (("top3_accuracy", _brier), {}, "is taken by jdl"),
        (("val_brier", _brier), {}, "is taken by jdl"),
        (("confusion", _brier), {}, "is taken by jdl"),
        (("epoch", _brier), {}, "a key of the logs"),
        (("samples_per_sec", _brier), {}, "is taken by jdl"),
        (("my metric", _brier), {}, "a metric name is an identifier"),
        (("brier_t",), {}, "give either fn .* or statistics and compute"),
        (("brier_t", _brier), {"compute": _balanced}, "not both or neither"),
        (("brier_t",), {"statistics": _class_hits}, "compute must be callable"),
        (("brier_t", "softmax"), {}, "fn must be callable, got str"),
        (("brier_t", _brier), {"tasks": ("ranking",)}, "tasks must be of"),
        (("brier_t", _brier), {"better": "higher"}, "better must be 'max', 'min' or None"),
    ],
    ids=["builtin", "top_k", "split_prefix", "group", "log_key", "log_key_2", "identifier",
         "no_form", "both_forms",
         "no_compute", "not_callable", "task", "better"],
)
def test_register_metric_errors(args, kwargs, match):
  with pytest.raises(JdlError, match=match):
    metrics.register_metric(*args, **kwargs)
  assert "brier_t" not in metrics.CUSTOM


def test_registered_metric_errors_name_the_metric(register):
  register("brier_t", _brier)
  metrics.register_metric("brier_t", _brier)  # The same code again (a config file reloaded).
  with pytest.raises(JdlError, match="exists already; pass replace=True"):
    metrics.register_metric("brier_t", lambda o, t: jnp.sum(o, axis=-1))
  with pytest.raises(JdlError, match="exists already"):
    metrics.register_metric("brier_t", _brier, better="max")
  metrics.register_metric("brier_t", lambda o, t: jnp.sum(o, axis=-1, keepdims=True),
                          replace=True)
  outputs, labels = jnp.zeros((4, 3)), jnp.zeros((4,), jnp.int32)
  with pytest.raises(JdlError, match=r"metric 'brier_t': fn must give one value per "
                                     r"example, shape \(4,\), got \(4, 1\)"):
    metrics.from_outputs(("brier_t",), outputs, labels, None, num_classes=3)
  register("broken_t", lambda o, t: o.no_such_attribute)
  with pytest.raises(AttributeError) as info:
    metrics.from_outputs(("broken_t",), outputs, labels, None, num_classes=3)
  assert "in metric 'broken_t'" in "".join(info.value.__notes__)
  register("listy_t", statistics=lambda o, t, m: [jnp.sum(m)], compute=float)
  with pytest.raises(JdlError, match="metric 'listy_t': statistics must return a non-empty "
                                     "dict of arrays with string keys, got list"):
    metrics.from_outputs(("listy_t",), outputs, labels, None, num_classes=3)
  # A name the process has not registered (a resume elsewhere) says how to register it.
  with pytest.raises(JdlError, match=r"unknown classification metric 'kappa'.*brier_t.*"
                                     r"jdl.metrics.register_metric"):
    metrics.validate_names(("kappa",), "classification")


def test_a_bare_string_of_names_is_one_error():
  # It was read as its characters: "unknown metric 'a'".
  for call in (lambda: metrics.from_outputs("accuracy", np.zeros((2, 3), np.float32),
                                            np.zeros(2, np.int32), None, num_classes=3),
               lambda: metrics.compute("accuracy", {})):
    with pytest.raises(JdlError, match="metric names must be a sequence, got 'accuracy'"):
      call()


def test_a_sums_form_that_counts_padding_is_refused(register):
  # A regression target is [B, 1]: `mask * err` broadcasts [B] against [B, 1] to
  # [B, B] and counts every example sum(mask) times, padding included (an RMSE
  # sqrt(B) times too large, silently, before).
  def broadcast(o, t, m):
    return {"sq": jnp.sum(m.astype(o.dtype) * (o - t) ** 2), "n": jnp.sum(m)}

  def per_example(o, t, m):
    return {"sq": jnp.sum(m[:, None].astype(o.dtype) * (o - t) ** 2), "n": jnp.sum(m)}

  def shaped_by_batch(o, t, m):  # Could not be added across batches of other sizes.
    return {"err": jnp.where(m[:, None], o - t, 0.0)}

  rmse = lambda g: float(np.sqrt(g["sq"] / g["n"]))  # noqa: E731
  register("rmse_bad_t", statistics=broadcast, compute=rmse, tasks="regression")
  register("rmse_t", statistics=per_example, compute=rmse, tasks="regression")
  register("err_t", statistics=shaped_by_batch, compute=lambda g: 0.0, tasks="regression")
  register("brier_mean_t", _brier)  # The per-example form: jdl masks it itself.
  outputs = jnp.asarray(np.random.default_rng(0).normal(size=(3, 1)), jnp.float32)
  targets = jnp.asarray([[0.5], [1.0], [-2.0]], jnp.float32)
  metrics.check_padding_ignored(("mse", "rmse_t", "brier_mean_t"), outputs, targets)
  with pytest.raises(JdlError, match=r"^metric 'rmse_bad_t': its statistics 'sq' count examples "
                                     r"that mask marks as padding .* the targets \[B, 1\]"):
    metrics.check_padding_ignored(("mse", "rmse_bad_t"), outputs, targets)
  with pytest.raises(JdlError, match=r"metric 'err_t': the statistics' shapes change with the "
                                     r"batch size \(of 3 examples: \{'err': \(3, 1\)\}; of 2: "):
    metrics.check_padding_ignored(("err_t",), outputs, targets)


def test_error_means_count_examples_not_values_so_large_targets_cannot_wrap():
  # The count was examples x outputs in an int32: 150 batches of 100 images of
  # 224x224x3 wrapped it past 2**31, and mse read negative. Now a state counts
  # examples, and sums each example's mean over its outputs.
  out, tgt = np.zeros((2, 3), np.float32), np.array([[1, 2, 3], [0, 0, 6]], np.float32)
  state = metrics.from_outputs(("mse", "mae"), out, tgt, None, num_classes=None)
  assert int(state["errors"]["count"]) == 2
  assert metrics.compute(("mse", "mae"), state) == pytest.approx(
      {"mse": skm.mean_squared_error(tgt, out), "mae": skm.mean_absolute_error(tgt, out)})
  # 150 batches of 100 targets of 224x224x3, every error 0.5: 2.26e9 values.
  batch = metrics.from_outputs(("mse", "mae"), np.zeros((100, 224 * 224 * 3), np.float32),
                               np.full((100, 224 * 224 * 3), 0.5, np.float32), None,
                               num_classes=None)
  total = functools.reduce(metrics.merge, [batch] * 150)
  assert metrics.compute(("mse", "mae"), total) == pytest.approx({"mse": 0.25, "mae": 0.5})


@pytest.mark.parametrize("padding", [np.nan, np.inf, 1e20])
def test_a_batch_of_padding_alone_leaves_r2_as_it_was(padding):
  # A batch whose mask is all 0 took its first (padding) row's target as its mean, and
  # merging multiplied that by a zero weight: NaN, inf or 1e20**2 made r2 0.0.
  rng = np.random.default_rng(0)
  y = rng.normal(size=(20, 2)).astype(np.float32)
  guess = (y + 0.2 * rng.normal(size=y.shape)).astype(np.float32)
  state = metrics.from_outputs(("r2", "mse"), guess, y, None, num_classes=None)
  pad = np.full((4, 2), padding, np.float32)
  empty = metrics.from_outputs(("r2", "mse"), pad, pad, np.zeros(4, bool), num_classes=None)
  for merged in (metrics.merge(state, empty), metrics.merge(empty, state)):
    got = metrics.compute(("r2", "mse"), merged)
    assert got == pytest.approx({"r2": skm.r2_score(y, guess),
                                 "mse": skm.mean_squared_error(y, guess)}, rel=1e-5)


def test_roc_auc_of_half_precision_logits_ranks_their_exact_margins():
  # The margin was taken in the logits' dtype: bfloat16 rounding tied distinct margins.
  logits = np.array([[0.0, 1.0], [-0.00390625, 1.0]], np.float32)  # bf16-exact; 1 + 2**-8 is not
  y = np.array([1, 0])
  margin = logits[:, 1].astype(np.float64) - logits[:, 0]
  assert margin[1] > margin[0]
  for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
    got = metrics.compute(("roc_auc",), metrics.from_outputs(
        ("roc_auc",), jnp.asarray(logits, dtype), y, None, num_classes=2))
    assert got["roc_auc"] == skm.roc_auc_score(y, margin) == 0.0, dtype


def test_half_precision_regression_outputs_are_scored_in_float32_under_strict_promotion():
  y = np.array([[0.5], [1.5], [-2.0]], np.float32)
  guess = np.array([[0.25], [2.0], [-1.0]], np.float32)  # bfloat16-exact
  want = {"mse": skm.mean_squared_error(y, guess), "r2": skm.r2_score(y, guess)}
  got = metrics.compute(("mse", "r2"), metrics.from_outputs(
      ("mse", "r2"), jnp.asarray(guess, jnp.bfloat16), y, None, num_classes=None))
  assert got == pytest.approx(want, rel=1e-6)
