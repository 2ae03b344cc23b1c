"""Values typed for ``jax.shard_map``'s per-device checks (a type's varying mesh axes).

Inside ``jax.shard_map`` (with its checks on, the default) every value's type says
over which mesh axes it may differ between devices. A constant made in the body,
such as a recurrent scan's zero initial carry, is the same on every device, while
the carry the scan's body returns, computed from per-device inputs, varies:
``lax.scan`` needs the two types equal. Outside ``shard_map`` nothing varies and
these functions change nothing.
"""

from __future__ import annotations

from typing import Any

import jax


def varying_axes(x: Any) -> frozenset:
  """The mesh axes over which ``x`` may differ inside ``shard_map`` (its type's "vma")."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.10: ManualAxisType.varying.
  if manual is not None:
    return frozenset(manual.varying)
  return frozenset(getattr(aval, "vma", ()))


def vary_over(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
  """``x`` typed to vary over ``axes`` as well (its values unchanged)."""
  missing = tuple(a for a in axes if a not in varying_axes(x))
  if not missing:
    return x
  cast = getattr(jax.lax, "pcast", None)
  return cast(x, missing, to="varying") if cast else jax.lax.pvary(x, missing)


def vary_like(tree: Any, like: jax.Array) -> Any:
  """``tree``'s leaves typed to vary over every mesh axis that ``like`` varies over."""
  axes = tuple(sorted(varying_axes(like)))
  if not axes:
    return tree
  return jax.tree.map(lambda x: vary_over(x, axes), tree)
