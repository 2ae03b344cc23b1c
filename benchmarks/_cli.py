"""Argument types and error handling shared by the benchmark scripts: a bad argument
or a jdl error is one ``PROG: error: ...`` line and exit status 2 (jdl.cli's parser
and integer type, re-exported), and an output file (``--out``, ``--md``) is checked
before the work, not found unwritable after it."""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path
import sys
import tempfile
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


def out_file(raw: str) -> str:
  """An argparse ``type`` for a file a script writes at its end (``--out``, ``--md``):
  not a folder, in a folder that exists and can be written in (a file is made there
  and removed), and writable itself if it exists. Returns ``raw``."""
  if not raw:
    raise argparse.ArgumentTypeError("an empty path")
  path = Path(raw)
  if path.is_dir():
    raise argparse.ArgumentTypeError(f"{raw!r} is a folder; name a file")
  folder = path.absolute().parent
  if not folder.is_dir():
    why = "is not a folder" if folder.exists() else "does not exist"
    raise argparse.ArgumentTypeError(f"cannot write {raw!r}: {folder} {why}")
  try:
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".jdl-bench-probe-"):
      pass
  except OSError as e:
    raise argparse.ArgumentTypeError(
        f"cannot write {raw!r}: cannot write in {folder} ({e.strerror or e})") from None
  if path.exists() and not os.access(path, os.W_OK):
    raise argparse.ArgumentTypeError(f"cannot write {raw!r}: the file is not writable")
  return raw


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


__all__ = ["ArgumentParser", "at_least", "child_failure", "int_list", "guarded", "out_file"]
