"""Parameter paths and masks: kernels for weight decay, freezing.

Parameter paths are the ``'/'``-joined keys of the params tree handed to the
optimizer, i.e. ``variables['params']`` *without* a leading collection name:
``'Conv_0/kernel'``, ``'Block_1/Dense_0/bias'``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
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
  mask weight decay (the loss penalties use :data:`jdl.regularizers.KERNELS`, the
  same selection as a regex).
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(path) and _key_name(path[-1]) in KERNEL_NAMES, params
  )


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


def matches(pattern: re.Pattern[str], path: str) -> bool:
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
  unused = [p.pattern for p in patterns if not any(matches(p, s) for s in paths)]
  require(
      not unused,
      f"optimizer.freeze patterns {unused} match no parameter; parameter paths"
      f" look like {paths[:4]} (no leading 'params/')",
  )
  return jax.tree_util.tree_map_with_path(
      lambda path, _: FROZEN if any(matches(p, param_path(path)) for p in patterns)
      else TRAINABLE,
      params,
  )


def keep_frozen_state(new_state: Any, old_state: Any,
                      patterns: Sequence[str | re.Pattern[str]]) -> Any:
  """``new_state`` with the frozen layers' entries put back to ``old_state``'s.

  The model state (``{'batch_stats': {'bn_0': {'mean': ...}}}``) is matched as
  the parameters are, without the collection name: ``optimizer.freeze=('bn_0',)``
  keeps ``bn_0``'s running statistics as well as its scale and offset.
  """
  patterns = tuple(re.compile(p) for p in patterns)
  if not patterns:
    return new_state

  def pick(path, new, old):
    name = param_path(path[1:])  # Without the collection ('batch_stats').
    return old if any(matches(p, name) for p in patterns) else new

  return jax.tree_util.tree_map_with_path(pick, new_state, old_state)


def frozen_paths(config: ml_collections.ConfigDict, params: Any) -> list[str]:
  """The '/'-joined paths of the parameters ``optimizer.freeze`` freezes."""
  patterns = compile_patterns(config.optimizer.freeze)
  if not patterns:
    return []
  labels = freeze_labels(params, patterns)
  return [param_path(path) for path, label in jax.tree_util.tree_leaves_with_path(labels)
          if label == FROZEN]


def check_freeze_patterns(config: ml_collections.ConfigDict, params: Any) -> None:
  """Raises a :class:`JdlError` if a ``optimizer.freeze`` pattern is invalid or
  matches no parameter, or if the patterns freeze every parameter.

  ``tx.init(params)`` of the optimizer checks only that every pattern matches; the
  trainer calls this before anything is compiled.
  """
  patterns = compile_patterns(config.optimizer.freeze)
  if patterns:
    labels = jax.tree.leaves(freeze_labels(params, patterns))
    require(TRAINABLE in labels,
            f"optimizer.freeze={tuple(config.optimizer.freeze)} freezes every parameter, "
            "so nothing would train; leave some layers out of it")
