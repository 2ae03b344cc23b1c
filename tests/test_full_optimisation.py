"""The `full_opt` tests, run in a process that compiles as users do (see conftest)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import conftest
from conftest import REPO


@pytest.mark.full_opt
def test_bits_of_differently_compiled_programs_agree_at_full_optimisation(tmp_path):
  if not conftest.compiles_fast():
    pytest.skip("this suite compiles at full optimisation: the full_opt tests run in it")
  # The full_opt tests this run selected and left to it, else (this test selected
  # alone) all of them.
  selection = conftest.FULL_OPT_TESTS or ["-m", "full_opt", "tests",
                                           "--ignore", "tests/test_full_optimisation.py"]
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
       "--basetemp", str(tmp_path / "inner"), *selection],
      cwd=REPO, env=conftest.full_optimisation_env(), capture_output=True, text=True,
      timeout=1800)
  summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
  assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
  passed = re.search(r"(\d+) passed", summary)
  assert passed and "skipped" not in summary, summary
  if conftest.FULL_OPT_TESTS:
    assert int(passed.group(1)) == len(conftest.FULL_OPT_TESTS), summary
