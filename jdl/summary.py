"""Parameter counts and a per-layer table, computed from the variables alone."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import math
import re
from typing import Any

import flax.linen
from flax.core import meta
import jax
import numpy as np

from jdl.errors import JdlError
from jdl.optim import masks

_TRAINABLE = "params"
_LEAF_ORDER = {"kernel": 0, "scale": 1, "bias": 2, "mean": 3, "var": 4}


def _size(leaf: Any) -> int:
  # Arrays, numpy arrays, jax.ShapeDtypeStruct (from jax.eval_shape) and scalars.
  return math.prod(getattr(leaf, "shape", ()))


def count_params(params: Any) -> int:
  """Total number of scalars in a PyTree of arrays (or of ``jax.ShapeDtypeStruct``).

  Examples:
    >>> import numpy as np
    >>> count_params({"dense": {"kernel": np.zeros((3, 4)), "bias": np.zeros(4)}})
    16
  """
  leaves = jax.tree_util.tree_leaves(meta.unbox(params))
  odd = next((leaf for leaf in leaves if not (hasattr(leaf, "shape") or isinstance(
      leaf, (int, float, complex, np.number)))), None)
  if odd is not None:  # A module counted as one scalar.
    hint = (": initialise it and count its parameters, count_params(model.init(key, x)"
            "['params'])" if isinstance(odd, flax.linen.Module) else "")
    raise JdlError(f"count_params counts the arrays of a PyTree; it holds a "
                   f"{type(odd).__name__}{hint}")
  return sum(_size(leaf) for leaf in leaves)


def _layers(tree: Mapping[str, Any], prefix: str = ""
            ) -> Iterator[tuple[str, list[tuple[str, tuple[int, ...]]]]]:
  """Yields ``(layer path, [(leaf name, shape), ...])``.

  Layers come in the order of ``tree``: definition order from ``model.init``. A
  round trip through ``jax.tree`` functions (``jax.jit``, ``jax.eval_shape``) sorts
  the names as text, ``hidden_10`` before ``hidden_2``: such names are put in their
  numbers' order. Leaves come in a fixed order (kernel, scale, bias, mean, var, then
  the rest) so that both give the same rows.
  """
  leaves = sorted(
      ((k, tuple(getattr(v, "shape", ()))) for k, v in tree.items()
       if not isinstance(v, Mapping)),
      key=lambda leaf: _LEAF_ORDER.get(leaf[0], len(_LEAF_ORDER)))
  if leaves:
    yield prefix or "(root)", leaves
  items = list(tree.items())
  if [k for k, _ in items] == sorted(k for k, _ in items):  # As jax.tree sorts them.
    items.sort(key=lambda item: _natural(item[0]))
  for key, value in items:
    if isinstance(value, Mapping):
      yield from _layers(value, f"{prefix}/{key}" if prefix else key)


def _natural(name: str) -> tuple:
  """A sort key that orders the numbers in ``name`` as numbers (``conv_2`` < ``conv_10``)."""
  return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
               for part in re.split(r"(\d+)", name) if part)


def param_table(variables: Mapping[str, Any], *, frozen: Sequence[str] = ()) -> str:
  """A plain-text table of the layers, their parameter shapes and counts.

  Args:
    variables: what ``model.init`` returns, ``{'params': ..., 'batch_stats': ...}``
      (arrays or ``jax.ShapeDtypeStruct``); a bare ``params`` tree (no top-level
      ``'params'`` key) is read as trainable parameters. Collections other than
      ``params`` (batch statistics) are listed as non-trainable.
    frozen: ``optimizer.freeze`` patterns (:func:`jdl.optim.freeze_labels`): the
      parameters they match are listed as ``params (frozen)`` and counted apart.
      Parameters in metadata boxes (``nn.with_partitioning``) are read unboxed.

  Returns:
    One row per layer and collection, then a line
    ``Total: N trainable, M non-trainable`` (``N trainable, F frozen, M
    non-trainable`` with ``frozen`` patterns; as Keras, frozen parameters are not
    trainable). For example::

      layer       collection  shapes                          count
      hidden_0    params      kernel (784, 512), bias (512,)  401,920
      ...
      Total: 669,706 trainable, 0 non-trainable

  Raises:
    JdlError: ``frozen`` is a single string, holds an invalid regex, or a pattern
      that matches no parameter.
  """
  variables = _unboxed(variables)
  if hasattr(variables, "unfreeze"):
    variables = variables.unfreeze()
  if _TRAINABLE not in variables:
    variables = {_TRAINABLE: variables}
  patterns = masks.compile_patterns(frozen)
  used = set()
  rows = []
  totals = {"trainable": 0, "frozen": 0, "non-trainable": 0}
  for collection, tree in variables.items():
    if not isinstance(tree, Mapping):
      tree = {collection: tree}
    for layer, leaves in _layers(tree):
      groups = {}  # kind -> leaves, in the leaves' order.
      for name, shape in leaves:
        kind = "non-trainable"
        if collection == _TRAINABLE:
          path = name if layer == "(root)" else f"{layer}/{name}"
          hits = [p for p in patterns if masks.matches(p, path)]
          used.update(p.pattern for p in hits)
          kind = "frozen" if hits else "trainable"
        groups.setdefault(kind, []).append((name, shape))
      for kind, group in groups.items():
        count = sum(math.prod(shape) for _, shape in group)
        totals[kind] += count
        shapes = ", ".join(f"{name} {shape}" for name, shape in group)
        label = f"{collection} (frozen)" if kind == "frozen" else collection
        rows.append((layer, label, shapes, f"{count:,}"))
  unused = [p.pattern for p in patterns if p.pattern not in used]
  if unused:
    raise JdlError(f"frozen patterns {unused} match no parameter; parameter paths look like "
                   f"{[name for name in _param_paths(variables[_TRAINABLE])][:4]}")
  header = ("layer", "collection", "shapes", "count")
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

  def fmt(row):
    left = "  ".join(c.ljust(w) for c, w in zip(row[:3], widths))
    return f"{left}  {row[3].rjust(widths[3])}"

  lines = [fmt(header), *map(fmt, rows)]
  frozen_total = f"{totals['frozen']:,} frozen, " if patterns else ""
  lines.append(f"Total: {totals['trainable']:,} trainable, {frozen_total}"
               f"{totals['non-trainable']:,} non-trainable")
  return "\n".join(lines)


def _unboxed(tree: Any) -> Any:
  """``tree`` with metadata boxes (``nn.with_partitioning``) replaced by their values;
  as given when it holds none (unboxing rebuilds dicts in sorted key order, and the
  table keeps ``model.init``'s order)."""
  boxed = lambda x: isinstance(x, meta.AxisMetadata)  # noqa: E731
  if any(boxed(leaf) for leaf in jax.tree_util.tree_leaves(tree, is_leaf=boxed)):
    return meta.unbox(tree)
  return tree


def _param_paths(tree: Any) -> list[str]:
  return [masks.param_path(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


__all__ = ["count_params", "param_table"]
