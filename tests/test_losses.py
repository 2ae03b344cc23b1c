"""Tests for jdl.losses against independent numpy formulas."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import losses
from jdl.errors import JdlError

B = 6
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def _strict_promotion():
  with jax.numpy_dtype_promotion("strict"):
    yield


# ---------------------------------------------------------------------------
# numpy references, written from the textbook formulas.


def _mean_trailing(x: np.ndarray) -> np.ndarray:
  return x.reshape(x.shape[0], -1).mean(axis=1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def ref_mse(o, t):
  return _mean_trailing((o - t.reshape(o.shape)) ** 2)


def ref_mae(o, t):
  return _mean_trailing(np.abs(o - t.reshape(o.shape)))


def ref_huber(o, t, delta=1.0):
  e = np.abs(o - t.reshape(o.shape))
  return _mean_trailing(np.where(e <= delta, 0.5 * e**2, delta * (e - 0.5 * delta)))


def ref_bce(o, t):
  t = t.reshape(o.shape)
  p = 1.0 / (1.0 + np.exp(-o.astype(np.float64)))
  return _mean_trailing(-(t * np.log(p) + (1 - t) * np.log(1 - p)))


def ref_cce(o, t, label_smoothing=0.0):
  c = o.shape[-1]
  t = (1 - label_smoothing) * t + label_smoothing / c
  return _mean_trailing(-(t * _log_softmax(o)).sum(-1))


def ref_sparse_cce(o, t, label_smoothing=0.0):
  one_hot = np.eye(o.shape[-1])[t.reshape(o.shape[:-1])]
  return ref_cce(o, one_hot, label_smoothing)


def ref_squared_hinge(o, t):
  t = t.reshape(o.shape)
  y = np.where(t == 0, -1.0, t)
  return _mean_trailing(np.maximum(0.0, 1.0 - y * o) ** 2)


def ref_kl(o, t):
  logq = _log_softmax(o)
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(t > 0, t * (np.log(t) - logq), 0.0)
  return _mean_trailing(terms.sum(-1))


# ---------------------------------------------------------------------------
# Inputs.


def _rng(seed: int) -> np.random.Generator:
  return np.random.default_rng(seed)


def regression(shape):
  def make(rng):
    return (rng.normal(size=shape).astype(np.float32) * 2,
            rng.normal(size=shape).astype(np.float32))
  return make


def binary(out_shape, target_shape, signed=False):
  def make(rng):
    o = rng.normal(size=out_shape).astype(np.float32) * 3
    t = rng.integers(0, 2, size=target_shape).astype(np.float32)
    return o, (2 * t - 1 if signed else t)
  return make


def probabilities(shape, zeros=False):
  def make(rng):
    o = rng.normal(size=shape).astype(np.float32) * 2
    t = rng.random(size=shape).astype(np.float32)
    if zeros:
      t[..., 0] = 0.0
    return o, t / t.sum(-1, keepdims=True)
  return make


def one_hot(shape):
  def make(rng):
    o = rng.normal(size=shape).astype(np.float32) * 2
    return o, np.eye(shape[-1], dtype=np.float32)[
        rng.integers(0, shape[-1], size=shape[:-1])]
  return make


def labels(shape):
  def make(rng):
    o = rng.normal(size=shape).astype(np.float32) * 2
    return o, rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int32)
  return make


CASES = [
    # (id, name, kwargs, make_inputs, reference)
    ("mse", "mse", {}, regression((B,)), ref_mse),
    ("mse_trailing", "mse", {}, regression((B, 3, 2)), ref_mse),
    ("mae", "mae", {}, regression((B, 4)), ref_mae),
    ("huber", "huber", {}, regression((B, 4)), ref_huber),
    ("huber_delta", "huber", {"delta": 0.3}, regression((B, 4)), ref_huber),
    ("bce_flat", "binary_crossentropy", {}, binary((B,), (B,)), ref_bce),
    ("bce_col", "binary_crossentropy", {}, binary((B, 1), (B, 1)), ref_bce),
    ("bce_col_flat_targets", "binary_crossentropy", {}, binary((B, 1), (B,)),
     ref_bce),
    ("cce_onehot", "categorical_crossentropy", {}, one_hot((B, 5)), ref_cce),
    ("cce_probs", "categorical_crossentropy", {}, probabilities((B, 5)), ref_cce),
    ("cce_smooth", "categorical_crossentropy", {"label_smoothing": 0.1},
     one_hot((B, 5)), ref_cce),
    ("cce_sequence", "categorical_crossentropy", {"label_smoothing": 0.2},
     one_hot((B, 3, 5)), ref_cce),
    ("sparse", "sparse_categorical_crossentropy", {}, labels((B, 5)),
     ref_sparse_cce),
    ("sparse_smooth", "sparse_categorical_crossentropy",
     {"label_smoothing": 0.1}, labels((B, 5)), ref_sparse_cce),
    ("hinge_pm1", "squared_hinge", {}, binary((B,), (B,), signed=True),
     ref_squared_hinge),
    ("hinge_01", "squared_hinge", {}, binary((B, 1), (B,)), ref_squared_hinge),
    ("kl", "kl_divergence", {}, probabilities((B, 4)), ref_kl),
    ("kl_zero_targets", "kl_divergence", {}, probabilities((B, 4), zeros=True),
     ref_kl),
    ("kl_onehot", "kl_divergence", {}, one_hot((B, 4)), ref_kl),
]


@pytest.mark.parametrize(
    "name, kwargs, make, ref", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_loss_matches_numpy(name, kwargs, make, ref):
  outputs, targets = make(_rng(0))
  loss_fn = jax.jit(losses.get_loss(name, **kwargs))
  got = loss_fn(jnp.asarray(outputs), jnp.asarray(targets))
  chex.assert_shape(got, (B,))
  want = ref(outputs.astype(np.float64), targets, **kwargs)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  assert np.all(np.isfinite(got))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize(
    "name, kwargs, make, ref", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_half_precision_outputs_are_reduced_in_float32(name, kwargs, make, ref, dtype):
  # A bfloat16 / float16 model's outputs: the loss is the float32 loss of the
  # rounded outputs (the reference sees the same rounding), never a sum in 8 or
  # 11 bits of mantissa; large errors that overflow float16 (65504) stay finite.
  outputs, targets = make(_rng(4))
  outputs = outputs * 200 if ref in (ref_mse, ref_mae, ref_huber) else outputs
  half = jnp.asarray(outputs, dtype)
  got = jax.jit(losses.get_loss(name, **kwargs))(half, jnp.asarray(targets))
  assert got.dtype == jnp.float32
  want = ref(np.asarray(half.astype(jnp.float32), np.float64), targets, **kwargs)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_registry_returns_the_function(name):
  assert losses.get_loss(name) is losses.LOSSES[name]


def _softmax(x: np.ndarray) -> np.ndarray:
  return np.exp(_log_softmax(x))


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def grad_cce(o, t, label_smoothing=0.0):
  # d/do of mean_b mean_trailing(-sum_c t_c log softmax(o)_c): the smoothed target
  # is subtracted from the softmax, divided by the rows the mean runs over.
  c = o.shape[-1]
  t = (1 - label_smoothing) * t + label_smoothing / c
  return (_softmax(o) - t) / (o.size // c)


def grad_sparse_cce(o, t, label_smoothing=0.0):
  return grad_cce(o, np.eye(o.shape[-1])[t.reshape(o.shape[:-1])], label_smoothing)


def grad_bce(o, t):  # Of logits: sigmoid(o) - t, over every element's mean.
  return (_sigmoid(o) - t.reshape(o.shape)) / o.size


def grad_mse(o, t):
  return 2.0 * (o - t.reshape(o.shape)) / o.size


GRAD_CASES = [
    # (id, name, kwargs, make_inputs, closed-form gradient of the batch mean)
    ("sparse", "sparse_categorical_crossentropy", {}, labels((B, 5)), grad_sparse_cce),
    ("sparse_smooth", "sparse_categorical_crossentropy", {"label_smoothing": 0.1},
     labels((B, 5)), grad_sparse_cce),
    ("sparse_smooth_sequence", "sparse_categorical_crossentropy",
     {"label_smoothing": 0.3}, labels((B, 3, 5)), grad_sparse_cce),
    ("cce", "categorical_crossentropy", {}, one_hot((B, 5)), grad_cce),
    ("cce_probs", "categorical_crossentropy", {}, probabilities((B, 5)), grad_cce),
    ("cce_smooth", "categorical_crossentropy", {"label_smoothing": 0.2},
     one_hot((B, 5)), grad_cce),
    ("bce_flat", "binary_crossentropy", {}, binary((B,), (B,)), grad_bce),
    ("bce_col_flat_targets", "binary_crossentropy", {}, binary((B, 1), (B,)), grad_bce),
    ("bce_multilabel", "binary_crossentropy", {}, binary((B, 3), (B, 3)), grad_bce),
    ("mse", "mse", {}, regression((B,)), grad_mse),
    ("mse_trailing", "mse", {}, regression((B, 3, 2)), grad_mse),
]


@pytest.mark.parametrize(
    "name, kwargs, make, ref", [c[1:] for c in GRAD_CASES],
    ids=[c[0] for c in GRAD_CASES])
def test_gradient_of_the_batch_mean_matches_the_closed_form(name, kwargs, make, ref):
  outputs, targets = make(_rng(5))
  loss_fn = losses.get_loss(name, **kwargs)
  grads = jax.jit(jax.grad(lambda o: loss_fn(o, targets).mean()))(jnp.asarray(outputs))
  chex.assert_shape(grads, outputs.shape)
  want = ref(outputs.astype(np.float64), targets, **kwargs)
  np.testing.assert_allclose(grads, want, rtol=RTOL, atol=ATOL)


def test_sparse_smoothing_equals_categorical_smoothing():
  outputs, targets = labels((B, 5))(_rng(2))
  sparse = losses.sparse_categorical_crossentropy(outputs, targets, 0.2)
  dense = losses.categorical_crossentropy(
      outputs, jax.nn.one_hot(targets, 5), 0.2)
  np.testing.assert_allclose(sparse, dense, rtol=RTOL, atol=ATOL)


def test_squared_hinge_01_equals_pm1():
  outputs, targets = binary((B,), (B,))(_rng(3))
  np.testing.assert_allclose(
      losses.squared_hinge(outputs, targets),
      losses.squared_hinge(outputs, 2 * targets - 1),
      rtol=RTOL, atol=ATOL,
  )


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("crossentropy", {}, r"unknown loss 'crossentropy'; valid names: .*mse"),
        ("mse", {"delta": 1.0}, r"unknown argument\(s\) delta"),
        ("huber", {"label_smoothing": 0.1}, "label_smoothing; it takes: delta"),
        ("huber", {"delta": 0.0}, "delta must be > 0"),
        ("categorical_crossentropy", {"label_smoothing": 1.0}, r"\[0, 1\)"),
    ],
)
def test_get_loss_errors(name, kwargs, match):
  with pytest.raises(JdlError, match=match):
    losses.get_loss(name, **kwargs)


def test_mismatched_shapes_raise_naming_the_loss():
  with pytest.raises(JdlError, match=r"^mse: targets of shape \(\d+, 3\) do not match"):
    losses.mse(jnp.zeros((B, 2)), jnp.zeros((B, 3)))
  with pytest.raises(JdlError, match=r"^binary_crossentropy: targets of shape \(\d+,\) do not "
                     r"match outputs of shape \(\d+, 2\)$"):
    losses.binary_crossentropy(jnp.zeros((B, 2)), jnp.zeros((B,)))
  with pytest.raises(JdlError, match=r"^sparse_categorical_crossentropy: int labels of shape"):
    losses.sparse_categorical_crossentropy(jnp.zeros((B,)), jnp.zeros((B,), jnp.int32))


def test_probability_losses_take_soft_targets_and_refuse_other_values():
  soft = np.array([[0.2, 0.8], [1.0, 0.0]], np.float32)
  for name in ("kl_divergence", "categorical_crossentropy", "binary_crossentropy"):
    losses.check_task(name, "regression", "soft", targets=soft)
    losses.check_task(name, "classification", "labels")
  losses.check_task("binary_crossentropy", "regression", "p1", targets=soft[:, :1])
  with pytest.raises(JdlError, match="one target value per example"):
    losses.check_task("kl_divergence", "regression", "p1", targets=soft[:, :1])
  with pytest.raises(JdlError, match="targets from -1 to 2"):
    losses.check_task("binary_crossentropy", "regression", "values",
                      targets=np.array([[-1.0], [2.0]]))
  with pytest.raises(JdlError, match="'mse' is a regression loss"):
    losses.check_task("mse", "classification", "digits")
  with pytest.raises(JdlError, match="'squared_hinge' is a classification loss"):
    losses.check_task("squared_hinge", "regression", "linear")


def test_a_class_masked_with_minus_inf_adds_nothing_to_the_probability_losses():
  # 0 log 0 = 0: a target of 0 on a -inf logit. optax's plain forms gave 0 * -inf = NaN
  # for the one-hot and KL losses (the sparse loss never multiplied).
  logits = np.array([[2.0, -np.inf, 0.5], [-np.inf, 1.0, -1.0]], np.float32)
  finite = np.where(np.isinf(logits), -1e30, logits).astype(np.float64)
  y = np.array([0, 2])
  want_ce = -_log_softmax(finite)[np.arange(2), y]
  one_hot = np.eye(3, dtype=np.float32)[y]
  soft = np.array([[0.7, 0.0, 0.3], [0.0, 0.4, 0.6]], np.float32)
  log_soft = np.log(np.where(soft > 0, soft, 1.0))
  want_kl = np.sum(np.where(soft > 0, soft * (log_soft - _log_softmax(finite)), 0.0), axis=-1)
  for got, want in (
      (losses.categorical_crossentropy(logits, one_hot), want_ce),
      (losses.sparse_categorical_crossentropy(logits, y), want_ce),
      (losses.kl_divergence(logits, soft), want_kl)):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
  # The gradient is finite too, and 0 on the masked classes.
  grad = jax.grad(lambda o: jnp.sum(losses.categorical_crossentropy(o, one_hot)))(
      jnp.asarray(logits))
  assert np.all(np.isfinite(grad)) and grad[0, 1] == grad[1, 0] == 0.0
