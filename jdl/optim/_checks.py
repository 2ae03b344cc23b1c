"""The config-value check shared by the modules of :mod:`jdl.optim`."""

from __future__ import annotations

from typing import Any

from jdl.errors import require


def check(ok: bool, key: str, value: Any, requirement: str) -> None:
  """Raises a :class:`JdlError` ``"{key} must be {requirement}, got {value!r}"``.

  Args:
    ok: whether the value is valid.
    key: the config key, e.g. ``'optimizer.learning_rate'``.
    value: the offending value, shown in the message.
    requirement: what the value must be, e.g. ``'> 0'``.
  """
  require(ok, f"{key} must be {requirement}, got {value!r}")
