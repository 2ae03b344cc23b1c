"""Parameter paths and masks: kernels for weight decay and penalties, freezing.

Parameter paths are the ``'/'``-joined keys of the params tree handed to the
optimizer, i.e. ``variables['params']`` *without* a leading collection name:
``'Conv_0/kernel'``, ``'Block_1/Dense_0/bias'``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jdl.errors import JdlError, require

KERNEL_NAMES = ("kernel", "embedding")
TRAINABLE, FROZEN = "trainable", "frozen"


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def param_path(path: Sequence[Any]) -> str:
  """Joins a ``jax.tree_util`` key path as ``'Conv_0/kernel'``."""
  return "/".join(_key_name(k) for k in path)


def kernel_mask(params: Any) -> Any:
  """Returns a tree like ``params``: True for leaves named kernel or embedding.

  Biases, normalisation scales and offsets, and any other leaf are False. Used to
  mask weight decay and the loss penalties.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(path) and _key_name(path[-1]) in KERNEL_NAMES, params
  )


def penalty(params: Any, *, l1: float = 0.0, l2: float = 0.0) -> jax.Array:
  """Returns ``l1 * sum|w| + l2 * sum w**2`` over kernels, to add to the loss.

  There is no 1/2 factor on the l2 term (the Keras convention): its gradient is
  ``2 * l2 * w``. Only leaves selected by :func:`kernel_mask` count; ``l1`` and
  ``l2`` together give the elastic net.

  Args:
    params: the params tree.
    l1: coefficient of the L1 norm.
    l2: coefficient of the squared L2 norm.

  Returns:
    A float32 scalar.

  References:
    Zou & Hastie, `Regularization and variable selection via the elastic net
    <https://doi.org/10.1111/j.1467-9868.2005.00503.x>`_, 2005.
  """
  kernels = [
      w for w, is_kernel in zip(jax.tree.leaves(params),
                                jax.tree.leaves(kernel_mask(params)))
      if is_kernel
  ]
  # Skip a term only for a literal 0 (the common config value); coefficients may
  # also be traced arrays.
  use_l1 = not (isinstance(l1, (int, float)) and l1 == 0)
  use_l2 = not (isinstance(l2, (int, float)) and l2 == 0)
  total = jnp.zeros([], jnp.float32)
  for w in kernels:
    if use_l1:
      total += l1 * jnp.sum(jnp.abs(w))
    if use_l2:
      total += l2 * jnp.sum(jnp.square(w))
  return total


def compile_patterns(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
  """Compiles the ``optimizer.freeze`` regexes.

  Raises:
    JdlError: ``patterns`` is a single string, or a pattern is not a valid regex.
  """
  require(not isinstance(patterns, str),
          f"optimizer.freeze must be a tuple of regexes, got {patterns!r}")
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except (re.error, TypeError) as e:
      raise JdlError(
          f"optimizer.freeze: invalid regex {pattern!r} ({e})"
      ) from None
  return tuple(compiled)


def _matches(pattern: re.Pattern[str], path: str) -> bool:
  # A pattern matches a parameter or any enclosing module: 'Dense_0' freezes
  # 'Dense_0/kernel' and 'Dense_0/bias', as 'Dense_0/.*' does.
  parts = path.split("/")
  return any(pattern.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1))


def freeze_labels(params: Any, patterns: Sequence[str | re.Pattern[str]]) -> Any:
  """Labels each param ``'frozen'`` or ``'trainable'``; for optax.multi_transform.

  A parameter is frozen when a pattern fully matches its path (``'Conv_0/kernel'``,
  no collection name) or the path of an enclosing module (``'Conv_0'``).

  Raises:
    JdlError: a pattern matches no parameter.
  """
  patterns = tuple(re.compile(p) for p in patterns)
  paths = [param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  unused = [p.pattern for p in patterns if not any(_matches(p, s) for s in paths)]
  require(
      not unused,
      f"optimizer.freeze patterns {unused} match no parameter; parameter paths"
      f" look like {paths[:4]} (no leading 'params/')",
  )
  return jax.tree_util.tree_map_with_path(
      lambda path, _: FROZEN if any(_matches(p, param_path(path)) for p in patterns)
      else TRAINABLE,
      params,
  )


def check_freeze_patterns(config: ml_collections.ConfigDict, params: Any) -> None:
  """Raises a :class:`JdlError` if a ``optimizer.freeze`` pattern is invalid or
  matches no parameter. ``tx.init(params)`` checks the same; this is for failing
  before anything is compiled."""
  patterns = compile_patterns(config.optimizer.freeze)
  if patterns:
    freeze_labels(params, patterns)
