"""Argument types and error handling shared by the benchmark scripts: a bad argument
or a jdl error is one ``PROG: error: ...`` line and exit status 2 (jdl.cli's parser
and integer type, re-exported)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable

# jdl's own: one-line errors naming the script, and its integer type.
from jdl.cli import ArgumentParser
from jdl.cli import int_at_least as at_least


def int_list(low: int) -> Callable[[str], list[int]]:
  """An argparse ``type``: a comma list of integers >= ``low``."""
  one = at_least(low)

  def parse(raw: str) -> list[int]:
    values = [one(part.strip()) for part in raw.split(",") if part.strip()]
    if not values:
      raise argparse.ArgumentTypeError(f"an empty list: {raw!r}")
    return values
  return parse


def guarded(main: Callable[..., Any]) -> Callable[..., Any]:
  """``main`` with jdl's errors turned into one line and exit status 2."""
  @functools.wraps(main)
  def run(*args, **kwargs):
    from jdl.errors import JdlError  # pylint: disable=g-import-not-at-top
    try:
      return main(*args, **kwargs)
    except JdlError as e:
      print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
      sys.exit(2)
  return run


def child_failure(what: str, stderr: str):
  """A JdlError for a failed child run: its own error line (or its last line), so that
  :func:`guarded` prints one line, not the child's traceback or a CalledProcessError."""
  from jdl.errors import JdlError  # pylint: disable=g-import-not-at-top
  lines = [line for line in stderr.strip().splitlines() if line.strip()]
  said = [line for line in lines if "error:" in line or "Error:" in line]
  reason = (said or lines or ["no output"])[-1].strip()
  reason = reason.split("error: ", 1)[-1]  # Its own "NAME: error: " prefix.
  return JdlError(f"{what} failed: {reason}")


__all__ = ["ArgumentParser", "at_least", "child_failure", "int_list", "guarded"]
