"""Argument checks shared by :mod:`jdl.explain`: one clear JdlError per bad input."""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

import flax.errors
import jax
import numpy as np

from jdl import errors
from jdl.errors import JdlError


def check_batch(x: Any, name: str = "x",
                example_shape: tuple[int, ...] | None = None) -> None:
  """Requires a non-empty batch ``x: [n, ...]`` (``[n, *example_shape]`` if known).

  Raises:
    JdlError: ``x`` has no batch axis, no example, or examples of another shape.
  """
  shape = tuple(np.shape(x))
  if example_shape is not None:  # Sizes may differ where the model allows (sequences).
    want = tuple(example_shape)
    errors.require(len(shape) == len(want) + 1,
                   f"{name} must have shape [n, {', '.join(map(str, want))}] (a batch of "
                   f"the run's examples), got shape {shape}")
  errors.require(len(shape) >= 2, f"{name} must be a batch [n, ...] with at least 2 axes, "
                 f"got shape {shape}; add a batch axis (x[None]) for one example")
  errors.require(shape[0] >= 1, f"{name} must hold at least one example, got an empty batch "
                 f"of shape {shape}")
  values = np.asarray(x)
  if values.dtype.kind == "f" and not np.isfinite(values).all():
    bad = int((~np.isfinite(values.reshape(shape[0], -1))).any(axis=1).sum())
    raise JdlError(f"{name} holds NaN or Inf values (in {bad} of {shape[0]} examples): "
                   "the model's outputs, and so any attribution, would be NaN")


def _shape_reason(e: Exception) -> str:
  """One line of why a model rejected its inputs (flax's shape error, reworded)."""
  text = str(e)
  m = re.search(r'parameter "(.*?)" in "(.*?)".*?generate shape (\(.*?\)).*?has shape '
                r"(\(.*?\))", text, re.S)
  if m:
    return (f"its parameter {m[1]!r} in {m[2]!r} has shape {m[4]}, but these inputs "
            f"would need {m[3]}")
  lines = text.split(" (https://")[0].strip().splitlines()
  return lines[0].rstrip(".") if lines else type(e).__name__


def output_shape(fn: Callable[..., Any], x: jax.Array, name: str = "x") -> tuple[int, ...]:
  """The shape of ``fn(x)`` (traced, not run); a shape error is a JdlError.

  Raises:
    JdlError: the model cannot take inputs shaped like ``x``.
  """
  try:
    return tuple(jax.eval_shape(fn, x).shape)
  except (flax.errors.ScopeParamShapeError, TypeError, ValueError) as e:
    # flax's parameter shape error, or jax's (e.g. dot_general's TypeError); other
    # errors (a bug of the model, a JdlError) pass through.
    if isinstance(e, JdlError) or not (isinstance(e, flax.errors.ScopeParamShapeError)
                                       or "shape" in str(e).lower()):
      raise
    raise JdlError(f"{name} of shape {tuple(x.shape)} does not fit the model: "
                   f"{_shape_reason(e)}; pass inputs shaped as its training batches") from e


@functools.cache
def _raw_key_shape() -> tuple[int, ...]:
  return tuple(jax.random.key_data(jax.random.key(0)).shape)


def require_key(key: Any, name: str = "key") -> None:
  """Requires one PRNG key: ``jax.random.key(seed)`` or a raw ``uint32`` key.

  Raises:
    JdlError: anything else (e.g. an int seed).
  """
  dtype = getattr(key, "dtype", None)
  shape = tuple(np.shape(key)) if dtype is not None else None
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    ok = shape == ()
  else:
    ok = dtype == np.uint32 and shape == _raw_key_shape()
  given = (f"{type(key).__name__} {key!r}" if dtype is None
           else f"an array of dtype {dtype} and shape {shape}")
  errors.require(ok, f"{name} must be one PRNG key, e.g. jax.random.key(seed), got {given}")


def require_int(value: Any, name: str, *, at_least: int = 1, allow_none: bool = False) -> None:
  """Requires an integer (not a bool) ``>= at_least``, or ``None`` if allowed."""
  if allow_none and value is None:
    return
  ok = (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        and value >= at_least)
  errors.require(ok, f"{name} must be an integer >= {at_least}"
                 f"{' or None' if allow_none else ''}, got {value!r}")


def require_number(value: Any, name: str, *, positive: bool = False,
                   allow_none: bool = False) -> None:
  """Requires a finite real number (not a bool), ``> 0`` with ``positive`` else ``>= 0``."""
  if allow_none and value is None:
    return
  ok = (isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_)) and np.isfinite(value)
        and (value > 0 if positive else value >= 0))
  errors.require(ok, f"{name} must be a finite number {'> 0' if positive else '>= 0'}"
                 f"{' or None' if allow_none else ''}, got {value!r}")


def require_finite(a: np.ndarray, name: str) -> None:
  """Raises a JdlError if ``a`` holds a NaN or an infinity."""
  bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
  errors.require(bad == 0, f"{name} must be finite, got {bad} NaN or Inf values of "
                 f"{np.size(a)}")


def broadcast(value: Any, shape: tuple[int, ...], name: str, of: str) -> np.ndarray:
  """``value`` as float32 broadcast to ``shape``, finite.

  Args:
    value: a scalar or an array.
    shape: the shape to broadcast to.
    name: the argument's name, for the message.
    of: whose shape ``shape`` is, for the message (e.g. ``"the input's"``).

  Raises:
    JdlError: ``value`` is not numeric, does not broadcast, or is not finite.
  """
  try:
    a = np.asarray(value, np.float32)
  except (TypeError, ValueError):
    raise JdlError(f"{name} must be a number or an array of numbers, got "
                   f"{type(value).__name__}") from None
  try:
    out = np.broadcast_to(a, shape)
  except ValueError:
    raise JdlError(f"{name} of shape {a.shape} does not broadcast to {of} shape "
                   f"{tuple(shape)}") from None
  require_finite(out, name)
  return out
