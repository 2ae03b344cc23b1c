"""Argument types and error handling shared by the benchmark scripts: a bad argument
or a jdl error is one ``PROG: error: ...`` line and exit status 2."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser whose errors are one ``PROG: error: ...`` line, exit status 2
  (no usage block), as jdl's own commands."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def at_least(low: int) -> Callable[[str], int]:
  """An argparse ``type``: an integer >= ``low``."""
  def parse(raw: str) -> int:
    try:
      value = int(raw)
    except ValueError:
      raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from None
    if value < low:
      raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value
  return parse


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
