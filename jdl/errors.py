"""User-facing errors.

Every problem caused by bad input (a config value, a file, a dataset) is raised as a
:class:`JdlError` whose message names the problem and, where possible, the remedy. The
CLI prints such an error as one line and exits with status 2; anything else is a bug.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Mapping
from typing import TypeVar

import numpy as np

T = TypeVar("T")


class JdlError(ValueError):
  """Bad input: a config value, a file or a dataset that jdl cannot use."""


class NonFiniteError(JdlError):
  """Training stopped at a NaN/Inf loss or gradient (``nonfinite='stop'``).

  A :class:`JdlError` (the CLI reports it in one line), apart so that a study of
  divergence (a learning rate too large) can catch it and go on.
  """


def backend_message(e: BaseException) -> str:
  """One line for a backend JAX could not start (e.g. JAX_PLATFORMS naming a platform
  this machine or this jaxlib lacks), instead of a traceback from deep inside."""
  wanted = os.environ.get("JAX_PLATFORMS")
  hint = (f" JAX_PLATFORMS={wanted!r} asks for a platform it could not start: unset it "
          "or name one this machine has (cpu, cuda, tpu)" if wanted else "")
  # JAX skips a platform it finds no device of (cuda without a GPU) and then asserts
  # that some backend started: a bare AssertionError.
  detail = (str(e).strip().splitlines()[0] if str(e).strip()
            else "no device of the platforms it was asked for" if wanted
            else type(e).__name__)
  return f"JAX could not start a backend ({detail}).{hint}"


def lookup(kind: str, name: str, table: Mapping[str, T]) -> T:
  """Returns ``table[name]``, or raises a :class:`JdlError` listing the valid names.

  Args:
    kind: what is looked up, for the message (e.g. ``"optimizer"``).
    name: the requested name.
    table: the valid names and their values.

  Raises:
    JdlError: ``name`` is not in ``table``.
  """
  try:
    return table[name]
  except (KeyError, TypeError):
    raise JdlError(
        f"unknown {kind} {name!r}{did_you_mean(name, table) or ';'} valid names: "
        f"{', '.join(sorted(table))}"
    ) from None


def is_integer(value: object) -> bool:
  """Whether ``value`` is an integer, Python's or numpy's, and not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def did_you_mean(word: object, choices: Iterable[object]) -> str:
  """``": did you mean 'x'?"`` for the closest of ``choices`` to a mistyped ``word``
  (``""`` if none is close)."""
  import difflib
  names = [str(c) for c in choices]
  typed = str(word).lower()
  same_letters = [c for c in names if c.lower() == typed]  # 'SGD' for 'sgd'.
  # A unique name the word begins, e.g. 'optim' for 'optimizer' (too short for difflib).
  prefix = [c for c in names if len(typed) >= 3 and c.lower().startswith(typed)]
  close = (same_letters or difflib.get_close_matches(str(word), names, n=1, cutoff=0.8)
           or (prefix if len(prefix) == 1 else []))
  return f": did you mean {close[0]!r}?" if close else ""


def token_ids(x, model: str):
  """``x`` as int32 token ids; floating-point inputs are refused, not truncated (a
  dataset of ids normalised as numbers would otherwise train on ids -1, 0 and 1).

  Raises:
    JdlError: ``x`` holds floats.
  """
  import jax.numpy as jnp  # The error classes import nothing heavy.
  if jnp.issubdtype(x.dtype, jnp.floating):
    raise JdlError(f"{model} takes integer token ids, got {x.dtype} inputs; feed the ids "
                   "as they are (a dataset without a vocabulary needs normalize='none', "
                   "else its integers are normalised as numbers)")
  return jnp.asarray(x, jnp.int32)


def require(condition: bool, message: str) -> None:
  """Raises ``JdlError(message)`` unless ``condition`` holds."""
  if not condition:
    raise JdlError(message)


def names(items: Iterable[str]) -> str:
  return ", ".join(sorted(items))
