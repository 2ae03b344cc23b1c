"""Soak test of exact resume: kill a training run with SIGKILL at random moments.

Runs an uninterrupted reference, then the same command again and again in a second
workdir, each time killed with SIGKILL after a random delay (mid-epoch, during
validation or a checkpoint write, wherever it lands) and re-run until it
finishes. Reports how many of the resumed runs ended with parameters bitwise
equal (`jdl export`) to the reference. Not run in CI (minutes).

Usage:  python benchmarks/soak_resume.py [--kills 20] [--seed 0] [--config digits_mlp]
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _cli import ArgumentParser, at_least, guarded

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
  parser = ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=at_least(1), default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--config", default="digits_mlp")
  parser.add_argument("--epochs", type=at_least(1), default=12)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
  flags = ["--config", args.config, "--quiet", f"--config.num_epochs={args.epochs}",
           "--config.checkpoint_every_steps=7", "--config.tensorboard=false",
           "--config.plots=false"]

  def train(workdir: Path, kill_after: float | None = None) -> int | None:
    command = [sys.executable, "-m", "jdl.cli", "train", "--workdir", str(workdir), *flags]
    if kill_after is None:
      return subprocess.run(command, env=env).returncode  # Its errors are shown.
    proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
      return proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      return None

  def export(workdir: Path) -> dict[str, np.ndarray]:
    out = workdir / "params.npz"
    subprocess.run([sys.executable, "-m", "jdl.cli", "export", "--workdir", str(workdir),
                    "--out", str(out)], env=env, check=True, capture_output=True)
    with np.load(out) as f:
      return {k: f[k] for k in f.files}

  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    t0 = time.perf_counter()
    if (code := train(tmp / "reference")) != 0:
      parser.exit(2, f"soak_resume.py: error: the reference run failed (exit status {code}; "
                     "its error is above)\n")
    full = time.perf_counter() - t0
    reference = export(tmp / "reference")
    print(f"reference run: {full:.1f} s", flush=True)
    equal = 0
    for i in range(args.kills):
      workdir = tmp / f"run{i}"
      kill_after = rng.uniform(0.3, 0.95) * full  # Start-up included: some die early.
      killed = train(workdir, kill_after) is None
      code = train(workdir)
      resumed = export(workdir) if code == 0 else None  # Once, not once per array.
      same = resumed is not None and all(np.array_equal(v, resumed[k])
                                         for k, v in reference.items())
      equal += same
      print(f"run {i + 1}: killed after {kill_after:.1f} s ({'killed' if killed else 'finished'}"
            f" first); resumed run {'bitwise equal' if same else 'DIFFERENT'}", flush=True)
    print(f"\n{equal} of {args.kills} resumed runs ended bitwise equal to the uninterrupted run")
    sys.exit(0 if equal == args.kills else 1)


if __name__ == "__main__":
  guarded(main)()
