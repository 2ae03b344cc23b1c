"""What :func:`jdl.losses.register_loss` and :func:`jdl.metrics.register_metric` share."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from jdl import errors

TASKS = ("classification", "regression")


def check_name(kind: str, name: Any) -> None:
  errors.require(isinstance(name, str) and name.isidentifier(),
                 f"a {kind} name is an identifier such as 'my_{kind}', got {name!r}")


def check_tasks(kind: str, name: str, tasks: str | Sequence[str]) -> tuple[str, ...]:
  """``tasks`` as a tuple of :data:`TASKS` (a single name is taken as one task)."""
  tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
  errors.require(bool(tasks) and set(tasks) <= set(TASKS),
                 f"{kind} {name!r}: tasks must be of 'classification' and 'regression', "
                 f"got {tasks}")
  return tasks


def check_arity(kind: str, name: str, what: str, fn: Callable, arguments: str) -> None:
  """Refuses a function that cannot be called with the ``arguments`` jdl passes
  (``"outputs, targets"``): a raw TypeError from inside a traced step before."""
  errors.require(callable(fn), f"{kind} {name!r}: {what} must be callable, got "
                 f"{type(fn).__name__}")
  try:
    signature = inspect.signature(fn)
  except (TypeError, ValueError):  # A builtin or a C function: not introspectable.
    return
  try:
    signature.bind(*arguments.split(", "))
  except TypeError:
    raise errors.JdlError(f"{kind} {name!r}: {what} is called as {what}({arguments}), but "
                          f"its signature is {getattr(fn, '__name__', what)}{signature}"
                          ) from None


def check_new(kind: str, name: str, registered: bool, same: bool, replace: bool) -> None:
  """A taken name needs ``replace``, unless it is ``same`` registration again."""
  errors.require(replace or not registered or same,
                 f"{kind} {name!r} exists already; pass replace=True to replace it")


def same_code(a: Any, b: Any) -> bool:
  """Whether two registrations are the same code (tuples compared item by item).

  A config file that registers its loss or metric is executed again by each
  ``load_config``: new function objects of the same module, name and code.
  """
  if isinstance(a, tuple) and isinstance(b, tuple):
    return len(a) == len(b) and all(same_code(x, y) for x, y in zip(a, b))
  code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
  if code_a is None or code_b is None:
    return a is b or a == b
  return (getattr(a, "__module__", None) == getattr(b, "__module__", None)
          and a.__qualname__ == b.__qualname__ and code_a.co_code == code_b.co_code
          and code_a.co_consts == code_b.co_consts)
