"""Regularizers: weight penalties, activity penalties and max-norm constraints.

Three pure pieces, each usable alone and wired by the ``regularization`` config
section (:func:`rules_from_config`, :func:`validate_config`):

* :func:`penalty` adds ``l1 * sum|w| + l2 * sum w**2`` to the loss for the
  parameters whose path matches a rule (L1, L2 or the elastic net, per layer).
* :func:`activity_penalty` adds ``l1 * sum|a| / batch`` for activations that the
  models sow into the ``"intermediates"`` collection.
* :func:`max_norm` is an optax transformation that projects each unit's incoming
  weight vector back into the ball of radius ``max_value`` after an update.

Parameter paths are the ``'/'``-joined keys of the params tree, without a leading
collection name (``'hidden_0/kernel'``, ``'mlp/head/bias'``); activation paths are
the ``'/'``-joined keys of the intermediates tree (``'act_0'``, ``'mlp/act_1'``).
Patterns are Python regexes that must match the *whole* path (``re.fullmatch``),
as ``init_from.include`` does.

This module is independent of :mod:`jdl.optim` (which imports it).
"""

from __future__ import annotations

from collections.abc import Sequence
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jdl.errors import JdlError, require

# Kernels and embeddings: the weights, not biases or normalisation parameters.
KERNELS = r"(.*/)?(kernel|embedding)"
# Max-norm acts on kernels only: an embedding's rows are not "incoming weights".
MAX_NORM_KERNELS = r"(.*/)?kernel"

Rule = tuple[str, float, float]  # (pattern, l1, l2)


def _name(key: Any) -> str | None:
  """A path entry's name; None for a sequence index (a sown tuple's position)."""
  if isinstance(key, jax.tree_util.SequenceKey):
    return None
  for attr in ("key", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def tree_path(path: Sequence[Any]) -> str:
  """Joins a ``jax.tree_util`` key path as ``'mlp/hidden_0/kernel'``.

  Sequence indices are dropped, so the ``k``-th value sown under ``act_0`` has the
  path ``'act_0'`` like the others.
  """
  return "/".join(n for n in map(_name, path) if n is not None)


def compile_regex(pattern: str, key: str) -> re.Pattern[str]:
  """Compiles ``pattern``; the error names the config ``key`` it came from.

  Raises:
    JdlError: ``pattern`` is not a string or not a valid regex.
  """
  try:
    require(isinstance(pattern, str), f"{key} must be a regex string, got {pattern!r}")
    return re.compile(pattern)
  except re.error as e:
    raise JdlError(f"{key}: invalid regex {pattern!r} ({e})") from None


def _check_coefficient(value: Any, key: str) -> float:
  require(isinstance(value, (int, float)) and not isinstance(value, bool)
          and 0 <= value < math.inf,
          f"{key} must be a finite number >= 0, got {value!r}")
  return float(value)


def check_rules(rules: Sequence[Rule], key: str = "regularization.rules") -> tuple[Rule, ...]:
  """Validates ``(pattern, l1, l2)`` rules and returns them as a tuple of tuples.

  Raises:
    JdlError: a rule that is not a 3-tuple, a bad regex or a negative coefficient.
  """
  require(isinstance(rules, (tuple, list)),
          f"{key} must be a tuple of (pattern, l1, l2) tuples, got {rules!r}")
  out = []
  for i, rule in enumerate(rules):
    require(isinstance(rule, (tuple, list)) and len(rule) == 3,
            f"{key}[{i}] must be a (pattern, l1, l2) tuple, got {rule!r}")
    pattern, l1, l2 = rule
    compile_regex(pattern, f"{key}[{i}] pattern")
    out.append((pattern, _check_coefficient(l1, f"{key}[{i}] l1"),
                _check_coefficient(l2, f"{key}[{i}] l2")))
  return tuple(out)


def penalty(params: Any, rules: Sequence[Rule]) -> jax.Array:
  r"""The weight penalty of ``params`` under per-pattern L1/L2 rules.

  For each leaf :math:`w` whose path fully matches the pattern of a rule
  ``(pattern, l1, l2)``, the **first** such rule in ``rules`` applies, and the
  penalty is

  .. math:: \sum_w \ell_1 \sum_i |w_i| + \ell_2 \sum_i w_i^2 .

  There is no 1/2 factor on the L2 term (the Keras ``L1L2`` convention): its
  gradient is :math:`2 \ell_2 w` (with plain SGD, the same step as decoupled
  ``optimizer.weight_decay = 2 * l2``; not so with adaptive optimizers, whose
  scaling also divides the penalty's gradient). Both coefficients non-zero
  give the elastic net. A leaf that no rule matches is not penalised; a rule
  ``(pattern, 0, 0)`` placed first exempts the leaves it matches.

  Args:
    params: the params tree (no leading ``'params'`` key).
    rules: ``(pattern, l1, l2)`` triples; patterns are regexes over the
      ``'/'``-joined parameter path (``re.fullmatch``); coefficients may be
      floats or traced scalars.

  Returns:
    A float32 scalar.

  Raises:
    JdlError: a pattern is not a valid regex.

  References:
    Tibshirani, `Regression shrinkage and selection via the lasso
    <https://doi.org/10.1111/j.2517-6161.1996.tb02080.x>`_, 1996.
    Zou & Hastie, `Regularization and variable selection via the elastic net
    <https://doi.org/10.1111/j.1467-9868.2005.00503.x>`_, 2005.
    Keras, ``keras.regularizers.L1L2``.
  """
  compiled = [(compile_regex(p, "penalty pattern"), l1, l2) for p, l1, l2 in rules]
  total = jnp.zeros([], jnp.float32)
  for path, w in jax.tree_util.tree_leaves_with_path(params):
    name = tree_path(path)
    rule = next(((l1, l2) for p, l1, l2 in compiled if p.fullmatch(name)), None)
    if rule is None:
      continue
    l1, l2 = rule
    w = jnp.asarray(w, jnp.float32)
    # Skip a term only for a literal 0; coefficients may also be traced arrays.
    if not (isinstance(l1, (int, float)) and l1 == 0):
      total += l1 * abs_sum(w)
    if not (isinstance(l2, (int, float)) and l2 == 0):
      total += l2 * jnp.sum(jnp.square(w))
  return total


def abs_sum(a: jax.Array) -> jax.Array:
  """``sum |a|`` whose gradient is ``sign(a)``: 0 at 0, as Keras' and PyTorch's L1.

  ``jnp.abs``'s gradient at 0 is 1, which would push an exact zero to ``-lr * l1``
  and back, step after step, instead of leaving it at the penalty's minimum.
  """
  return jnp.sum(jnp.sign(jax.lax.stop_gradient(a)) * a)


def activity_penalty(intermediates: Any, l1: float, pattern: str = ".*") -> jax.Array:
  r"""The L1 activity penalty of sown activations, per example.

  For every activation :math:`a` of shape ``[batch, ...]`` sown under a path
  that fully matches ``pattern``:

  .. math:: \ell_1 \, \frac{1}{B} \sum_{b=1}^{B} \sum_i |a_{b,i}| ,

  the Keras semantics of ``ActivityRegularization(l1)``: the regularizer's
  ``l1 * sum|a|`` over the whole batch, divided by the batch size :math:`B` (so
  the penalty does not grow with the batch, like the mean loss it is added to).
  Activations sown several times under one name each count.

  Args:
    intermediates: the ``"intermediates"`` collection of ``model.apply(...,
      mutable=["intermediates"])``: nested dicts of tuples of arrays.
    l1: the coefficient (a float or a traced scalar).
    pattern: regex over the activation's path, e.g. ``'act_0'``, ``'mlp/act_.*'``.

  Returns:
    A float32 scalar (0 when nothing matches).

  Raises:
    JdlError: ``pattern`` is not a valid regex.

  References:
    Keras, ``keras.layers.ActivityRegularization`` and ``Layer.activity_regularizer``.
    Glorot, Bordes & Bengio, `Deep sparse rectifier neural networks
    <https://proceedings.mlr.press/v15/glorot11a.html>`_, AISTATS 2011 (an L1
    penalty on activations for sparsity).
  """
  regex = compile_regex(pattern, "activity pattern")
  total = jnp.zeros([], jnp.float32)
  for path, a in jax.tree_util.tree_leaves_with_path(intermediates):
    if regex.fullmatch(tree_path(path)):
      a = jnp.asarray(a, jnp.float32)
      total += abs_sum(a) / a.shape[0]
  return l1 * total


def sown_paths(intermediates: Any) -> list[str]:
  """The paths of the activations in an ``"intermediates"`` collection."""
  return sorted({tree_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(intermediates)})


def check_activity_include(apply_fn: Any, variables: Any, x: jax.Array, pattern: str) -> None:
  """Raises unless the model sows an activation whose path matches ``pattern``.

  Shapes only (``jax.eval_shape``): nothing is computed.

  Args:
    apply_fn: the model's ``apply``, taking ``train`` and ``mutable``.
    variables: the model's variables.
    x: an example input batch.
    pattern: ``regularization.activity_include``.

  Raises:
    JdlError: nothing matches; the message lists the paths the model sows.
  """
  regex = compile_regex(pattern, "regularization.activity_include")
  _, state = jax.eval_shape(
      lambda v, x: apply_fn(v, x, train=False, mutable=["intermediates"]), variables, x)
  paths = sown_paths(state.get("intermediates", {}))
  sown = paths[:8] if paths else 'nothing (a module sows with self.sow("intermediates", name, y))'
  require(any(regex.fullmatch(p) for p in paths),
          f"regularization.activity_include={pattern!r} matches no activation the model "
          f"sows; it sows {sown}")


def _unit_norm_axes(ndim: int, axis: int | Sequence[int] | None) -> tuple[int, ...]:
  if axis is None:  # All but the last (output) axis: one norm per output unit.
    return tuple(range(ndim - 1))
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  return tuple(a % ndim for a in axes)


def _max_norm_scale(w: jax.Array, max_value: float,
                    axis: int | Sequence[int] | None) -> tuple[jax.Array, jax.Array]:
  """Per unit (broadcastable to ``w``): whether it is outside, and its scale."""
  axes = _unit_norm_axes(w.ndim, axis)
  norms = jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)), axis=axes, keepdims=True))
  outside = norms > max_value
  return outside, jnp.where(outside, max_value / jnp.where(outside, norms, 1.0), 1.0)


def project_max_norm(w: jax.Array, max_value: float,
                     axis: int | Sequence[int] | None = None) -> jax.Array:
  r"""Rescales each unit of ``w`` whose L2 norm exceeds ``max_value`` onto the sphere.

  .. math:: w_u \leftarrow w_u \cdot \min\!\left(1, \frac{c}{\lVert w_u \rVert_2}\right)

  Units inside the ball are returned unchanged (Keras multiplies every unit by
  ``clip(n, 0, c) / (n + 1e-7)``, which shrinks them very slightly).

  Args:
    w: a kernel, e.g. ``[in, out]`` (Dense) or ``[h, w, in, out]`` (conv).
    max_value: the radius :math:`c`.
    axis: the axes the norm is taken over; ``None`` = all but the last one
      (Keras ``MaxNorm(axis=0)`` for a Dense kernel, ``axis=[0, 1, 2]`` for a 2-D
      conv kernel).
  """
  outside, scale = _max_norm_scale(w, max_value, axis)
  return jnp.where(outside, w * scale.astype(w.dtype), w)


def max_norm(
    max_value: float,
    *,
    axis: int | Sequence[int] | None = None,
    include: str = MAX_NORM_KERNELS,
) -> optax.GradientTransformation:
  r"""An optax transformation that enforces a max-norm constraint after the update.

  Given ``updates`` and ``params``, it returns updates ``u'`` such that
  ``params + u'`` is :func:`project_max_norm` of ``params + updates`` for every
  leaf whose path matches ``include``: each unit's incoming weight vector has L2
  norm at most ``max_value``. Units already inside keep their updates exactly;
  other leaves pass through. Place it **last** in the chain, so it sees the final
  update (``optax.chain(optimizer, max_norm(3.0))``).

  Args:
    max_value: the radius :math:`c > 0` (Srivastava et al. use 3 to 4).
    axis: the norm's axes (``None``: all but the last, the output axis).
    include: regex over the ``'/'``-joined parameter path (``re.fullmatch``);
      default: every ``kernel``.

  Returns:
    An ``optax.GradientTransformation`` with state ``optax.EmptyState``; its
    ``update`` requires ``params``.

  Raises:
    JdlError: ``max_value <= 0`` or a bad ``include`` regex.

  References:
    Srivastava et al., `Dropout: a simple way to prevent neural networks from
    overfitting <https://jmlr.org/papers/v15/srivastava14a.html>`_, JMLR 2014,
    section 5.1. Keras, ``keras.constraints.MaxNorm``.
  """
  require(isinstance(max_value, (int, float)) and max_value > 0,
          f"max_norm must be > 0, got {max_value!r}")
  regex = compile_regex(include, "max_norm include")

  def init_fn(params):
    del params  # Stateless.
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("max_norm needs params: call tx.update(updates, state, params)")

    def project(path, u, p):
      if not regex.fullmatch(tree_path(path)) or p.ndim < 2:
        return u
      new = p + u
      outside, scale = _max_norm_scale(new, max_value, axis)
      return jnp.where(outside, new * scale.astype(new.dtype) - p, u).astype(u.dtype)

    return jax.tree_util.tree_map_with_path(project, updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)


def rules_from_config(reg: Any) -> tuple[Rule, ...]:
  """The :func:`penalty` rules of a ``regularization`` config section.

  In order (the first matching rule wins): the per-layer ``rules``; then
  ``(exclude, 0, 0)`` if ``exclude`` is set; then ``(include, l1, l2)``. So a
  parameter named in ``rules`` gets exactly that rule's coefficients, an excluded
  one no global penalty. Rules whose coefficients are all zero at the end are
  dropped; ``()`` means no penalty.

  Raises:
    JdlError: see :func:`validate_config`.
  """
  validate_config(reg)
  rules = list(check_rules(reg.rules))
  if reg.exclude:
    rules.append((reg.exclude, 0.0, 0.0))
  rules.append((reg.include, float(reg.l1), float(reg.l2)))
  while rules and rules[-1][1] == 0 and rules[-1][2] == 0:
    rules.pop()
  return tuple(rules)


def check_patterns(reg: Any, *params: Any) -> None:
  """Raises a JdlError when a pattern that would act matches no parameter.

  Checked: each rule of ``rules``; ``include`` and ``exclude`` when ``l1`` or
  ``l2`` is set; ``max_norm_include`` when ``max_norm`` is. A misspelt pattern
  would otherwise leave the run silently unregularized. ``params``: one tree per optimizer (a GAN's two players each
  match the patterns against their own paths).
  """
  paths = [tree_path(p) for tree in params
           for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
  active = [(f"regularization.rules[{i}]", rule[0])
            for i, rule in enumerate(check_rules(reg.rules))]  # (p, 0, 0) exempts: acts too.
  if reg.exclude and (reg.l1 or reg.l2):
    active.append(("regularization.exclude", reg.exclude))
  if reg.l1 or reg.l2:
    active.append(("regularization.include", reg.include))
  if reg.max_norm:
    active.append(("regularization.max_norm_include", reg.max_norm_include))
  for key, pattern in active:
    regex = compile_regex(pattern, key)
    require(any(regex.fullmatch(p) for p in paths),
            f"{key}={pattern!r} matches no parameter; parameter paths look like "
            f"{paths[:4]} (no leading 'params/')")


def validate_config(reg: Any) -> None:
  """Checks a ``regularization`` config section.

  Raises:
    JdlError: a negative (or non-numeric) ``l1``, ``l2``, ``activity_l1`` or
      ``max_norm``, a bad regex in ``include``, ``exclude``,
      ``activity_include``, ``max_norm_include`` or ``rules``, or a malformed rule;
      the message names the key.
  """
  for key in ("l1", "l2", "activity_l1", "max_norm"):
    _check_coefficient(reg[key], f"regularization.{key}")
  for key in ("include", "exclude", "activity_include", "max_norm_include"):
    compile_regex(reg[key], f"regularization.{key}")
  check_rules(reg.rules)

__all__ = ["KERNELS", "MAX_NORM_KERNELS", "compile_regex", "check_rules", "penalty",
    "activity_penalty", "sown_paths", "check_activity_include", "project_max_norm",
    "max_norm", "rules_from_config", "check_patterns", "validate_config"]
