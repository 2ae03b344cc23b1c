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


__all__ = ["ArgumentParser", "at_least", "int_list", "guarded"]
