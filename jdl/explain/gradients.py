"""Gradient attributions: saliency, gradient x input, integrated gradients.

All functions take a jdl model's ``apply_fn(variables, x, train=False) -> outputs``
and a batch ``x: [n, ...]`` and explain one output per example (``target``; by
default the predicted class). The output explained is the raw model output (the
logit for a classifier), as in the papers below.

Gradients of a batch are taken as the gradient of the sum of the examples'
target outputs: exact whenever the examples do not interact in evaluation mode,
which holds for every jdl model (batch norm uses its running statistics when
``train=False``).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdl import errors
from jdl.errors import JdlError
from jdl.explain import _checks

ApplyFn = Callable[..., jax.Array]


class CompletenessWarning(UserWarning):
  """Integrated-gradients attributions do not add up to ``f(x) - f(baseline)``."""


class IGResult(NamedTuple):
  """What :func:`integrated_gradients` returns (arrays over the batch).

  Attributes:
    attributions: ``[n, ...]``, shaped like ``x``.
    target: ``[n]`` the explained output index of each example.
    output: ``[n]`` the target output at ``x``.
    baseline_output: ``[n]`` the target output at the baseline.
    completeness_error: ``[n]`` ``|sum(attributions) - (output - baseline_output)|``.
    relative_error: ``[n]`` the completeness error over
      ``max(|output - baseline_output|, 1e-6)``.
  """
  attributions: np.ndarray
  target: np.ndarray
  output: np.ndarray
  baseline_output: np.ndarray
  completeness_error: np.ndarray
  relative_error: np.ndarray


def _target_outputs(apply_fn: ApplyFn, variables: Any, x: jax.Array,
                    target: jax.Array) -> jax.Array:
  """``[n]`` the ``target`` output of each example of ``x: [n, ...]``."""
  out = apply_fn(variables, x, train=False)
  out = out.reshape(out.shape[0], -1).astype(jnp.float32)
  return jnp.take_along_axis(out, target[:, None], axis=1)[:, 0]


def _input_gradients(apply_fn, variables, x, target):
  return jax.grad(lambda x: jnp.sum(_target_outputs(apply_fn, variables, x, target)))(x)


@functools.partial(jax.jit, static_argnames="apply_fn")
def _outputs(apply_fn, variables, x):
  out = apply_fn(variables, x, train=False)
  return out.reshape(out.shape[0], -1)


def resolve_targets(apply_fn: ApplyFn, variables: Any, x: jax.Array,
                    target: int | np.ndarray | None = None) -> np.ndarray:
  """The output index to explain for each example: ``target``, or the predicted class.

  Args:
    apply_fn: the model's ``apply``.
    variables: the model's variables (``{'params': ..., ...}``).
    x: ``[n, ...]`` inputs.
    target: ``None`` (the argmax of the outputs; 0 for a single-output model), an
      int for every example, or ``[n]`` ints.

  Returns:
    ``[n]`` int32 indices.

  Raises:
    JdlError: inputs without a batch axis, an empty batch or inputs the model
      cannot take; a target that is not an integer in ``[0, num_outputs)``, or whose
      shape does not match the batch.
  """
  _checks.check_batch(x)
  n = x.shape[0]
  shape = _checks.output_shape(functools.partial(_outputs, apply_fn, variables), x)
  if target is None:
    return np.asarray(jnp.argmax(_outputs(apply_fn, variables, x), axis=1), np.int32)
  t = np.asarray(target)
  errors.require(np.issubdtype(t.dtype, np.integer),
                 f"target must be an integer class index, got {target!r}")
  errors.require(t.ndim == 0 or t.shape == (n,),
                 f"target must be an int or have shape ({n},) like the batch, got shape {t.shape}")
  errors.require(bool(np.all((t >= 0) & (t < shape[1]))),
                 f"target {target!r} is out of range for a model with {shape[1]} outputs")
  return np.broadcast_to(t, (n,)).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("apply_fn", "times_input"))
def _saliency(apply_fn, variables, x, target, *, times_input):
  g = _input_gradients(apply_fn, variables, x, target)
  return g * x if times_input else jnp.abs(g)


_VARIANTS = {"gradient": False, "gradient_x_input": True}


def saliency(apply_fn: ApplyFn, variables: Any, x: jax.Array,
             target: int | np.ndarray | None = None, *,
             variant: str = "gradient") -> np.ndarray:
  """Vanilla-gradient saliency ``|d f_target / d x|`` or gradient x input.

  Args:
    apply_fn: the model's ``apply``: ``apply_fn(variables, x, train=False)``.
    variables: the model's variables.
    x: ``[n, ...]`` inputs (normalised as the model was trained).
    target: the output to explain (see :func:`resolve_targets`); default: the
      predicted class.
    variant: ``'gradient'`` (absolute gradient, Simonyan et al.) or
      ``'gradient_x_input'`` (signed ``x * d f / d x``, Shrikumar et al.). Of
      normalised inputs ``x = (raw - mean) / std`` that is ``(raw - mean) * d f /
      d raw``: gradient x input relative to the mean input, so raw zeros (black
      pixels) get attributions too; give raw inputs and an ``apply_fn`` that
      normalises them for Shrikumar's own.

  Returns:
    ``[n, ...]`` attributions shaped like ``x``.

  Raises:
    JdlError: an unknown ``variant``, bad inputs (see :func:`resolve_targets`) or a
      bad ``target``.

  References:
    Simonyan, Vedaldi, Zisserman (2013), "Deep Inside Convolutional Networks:
    Visualising Image Classification Models and Saliency Maps", arXiv:1312.6034,
    sec. 3.1. Shrikumar et al. (2016), "Not Just a Black Box", arXiv:1605.01713.
  """
  times_input = errors.lookup("saliency variant", variant, _VARIANTS)
  x = jnp.asarray(x, jnp.float32)
  t = resolve_targets(apply_fn, variables, x, target)
  return np.asarray(_saliency(apply_fn, variables, x, jnp.asarray(t), times_input=times_input))


def _path(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
  """Interpolation points ``alpha`` in [0, 1] and quadrature weights summing to 1."""
  k = np.arange(steps, dtype=np.float64)
  if rule == "trapezoid":
    alphas = np.arange(steps + 1, dtype=np.float64) / steps
    weights = np.full(steps + 1, 1.0 / steps)
    weights[[0, -1]] /= 2
  elif rule == "midpoint":
    alphas, weights = (k + 0.5) / steps, np.full(steps, 1.0 / steps)
  elif rule == "left":
    alphas, weights = k / steps, np.full(steps, 1.0 / steps)
  else:  # "right", the rule of Sundararajan et al., eq. 3.
    alphas, weights = (k + 1) / steps, np.full(steps, 1.0 / steps)
  return alphas.astype(np.float32), weights.astype(np.float32)


_RULES = ("trapezoid", "midpoint", "left", "right")


@functools.partial(jax.jit, static_argnames=("apply_fn", "steps", "rule", "steps_per_batch"))
def _integrated_gradients(apply_fn, variables, x, baseline, target, *, steps, rule,
                          steps_per_batch):
  alphas, weights = _path(steps, rule)
  delta = x - baseline

  def grad_at(alpha):
    return _input_gradients(apply_fn, variables, baseline + alpha * delta, target)

  # All path points in one vmapped call (or in vmapped chunks, to bound memory).
  grads = jax.lax.map(grad_at, jnp.asarray(alphas), batch_size=steps_per_batch or len(alphas))
  mean_grad = jnp.tensordot(jnp.asarray(weights), grads, axes=1)
  return (delta * mean_grad, _target_outputs(apply_fn, variables, x, target),
          _target_outputs(apply_fn, variables, baseline, target))


def integrated_gradients(apply_fn: ApplyFn, variables: Any, x: jax.Array,
                         target: int | np.ndarray | None = None, *,
                         baseline: float | jax.Array | None = None, steps: int = 50,
                         rule: str = "trapezoid", steps_per_batch: int | None = None,
                         tolerance: float = 0.05, check: str = "warn") -> IGResult:
  """Integrated gradients along the straight path from ``baseline`` to ``x``.

  ``IG_i(x) = (x_i - b_i) * integral_0^1 d f(b + a (x - b)) / d x_i da``, the
  integral by a Riemann rule over ``steps`` intervals, all path points evaluated
  in one vmapped call. By completeness, ``sum_i IG_i = f(x) - f(b)`` up to the
  quadrature error, which is checked.

  Args:
    apply_fn: the model's ``apply``: ``apply_fn(variables, x, train=False)``.
    variables: the model's variables.
    x: ``[n, ...]`` inputs (normalised as the model was trained).
    target: the output to explain; default: the predicted class.
    baseline: a scalar or an array broadcastable to ``x``; default zeros. For a
      normalised image, the normalised black image is the usual choice.
    steps: number of intervals of the path (the trapezoid rule uses ``steps + 1``
      points, the others ``steps``).
    rule: ``'trapezoid'`` (default), ``'midpoint'``, ``'left'`` or ``'right'``.
    steps_per_batch: path points per vmapped call (default: all at once); lower
      it to bound memory for large inputs.
    tolerance: the largest acceptable relative completeness error.
    check: what a relative error above ``tolerance`` does: ``'warn'`` (a
      :class:`CompletenessWarning`), ``'raise'`` (a :class:`JdlError`) or
      ``'off'``. The relative error is meaningless where ``f(x) ~ f(b)``.

  Returns:
    An :class:`IGResult`.

  Raises:
    JdlError: bad arguments, or (``check='raise'``) a failed completeness check.

  References:
    Sundararajan, Taly, Yan (2017), "Axiomatic Attribution for Deep Networks",
    ICML, arXiv:1703.01365: eq. 1 (definition), Prop. 1 (completeness), sec. 3
    (Riemann approximation; "check that the attributions add up to within 5%").
  """
  _checks.require_int(steps, "steps")
  errors.require(rule in _RULES, f"unknown rule {rule!r}; valid rules: {', '.join(_RULES)}")
  errors.require(check in ("warn", "raise", "off"),
                 f"check must be 'warn', 'raise' or 'off', got {check!r}")
  _checks.require_int(steps_per_batch, "steps_per_batch", allow_none=True)
  errors.require(isinstance(tolerance, (int, float, np.integer, np.floating))
                 and not isinstance(tolerance, bool) and tolerance >= 0,
                 f"tolerance must be a number >= 0, got {tolerance!r}")
  x = jnp.asarray(x, jnp.float32)
  _checks.check_batch(x)
  b = jnp.asarray(_checks.broadcast(0.0 if baseline is None else baseline, x.shape,
                                    "baseline", "the inputs'"))
  t = resolve_targets(apply_fn, variables, x, target)
  attr, fx, fb = jax.device_get(_integrated_gradients(
      apply_fn, variables, x, b, jnp.asarray(t), steps=int(steps), rule=rule,
      steps_per_batch=steps_per_batch))
  total = attr.reshape(len(attr), -1).sum(axis=1, dtype=np.float64)
  expected = fx.astype(np.float64) - fb
  err = np.abs(total - expected)
  rel = err / np.maximum(np.abs(expected), 1e-6)
  result = IGResult(attr, t, fx, fb, err, rel)
  worst = int(np.argmax(rel)) if len(rel) else 0
  if check != "off" and len(rel) and rel[worst] > tolerance:
    message = (f"integrated gradients fail the completeness check: example {worst} has "
               f"sum(attributions) = {total[worst]:.6g} but f(x) - f(baseline) = "
               f"{expected[worst]:.6g} (relative error {rel[worst]:.3g} > tolerance "
               f"{tolerance}); increase steps (now {steps})"
               + ("" if rule == "trapezoid" else " or use rule='trapezoid'"))
    if check == "raise":
      raise JdlError(message)
    warnings.warn(message, CompletenessWarning, stacklevel=2)
  return result
