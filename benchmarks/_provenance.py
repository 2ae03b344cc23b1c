"""What a benchmark's results file records about the run: code, machine, versions."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
from pathlib import Path
import platform
import subprocess

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
  """The checkout's short commit, ``+dirty`` when tracked files differ from it."""
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True, timeout=10, check=False)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                            cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
  except OSError:
    return None
  commit = head.stdout.strip()
  if not commit:
    return None
  return commit + ("+dirty" if status.stdout.strip() else "")


def cpu_name() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def provenance() -> dict:
  """``{date, jdl_commit, cpu, cpu_count, python, versions, backend, load_average}``,
  as they are when called (the scripts call it when they write their results file:
  the date, load and ``+dirty`` of the run's end)."""
  import jax  # The scripts import it anyway.
  versions = {}
  for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch",
                  "keras"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "jdl_commit": git_commit(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
          "python": platform.python_version(), "versions": versions,
          "backend": jax.default_backend(), "load_average": os.getloadavg()}
