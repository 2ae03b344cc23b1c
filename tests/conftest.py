"""Shared fixtures: small configs that train in a second or two on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must not depend on the user's JDL_DATA_DIR or write under $HOME.
os.environ.pop("JDL_DATA_DIR", None)

from jdl.train import callbacks as cb  # noqa: E402  (after the environment is set)
from jdl.train import runtime  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def pytest_configure(config):
  """Sets, before collection starts JAX, the XLA:CPU flag a jdl process sets first.

  ``config.xla_cpu_region_analysis``: the suite's in-process runs then compile as
  the CLI's do. Not at import: scripts that import this module (e.g.
  tests/region_analysis_run.py) choose for themselves.
  """
  del config
  runtime.request_cpu_region_analysis(True)


def rbg_key(seed: int):
  """A typed PRNG key of the 'rbg' implementation: compiles faster than threefry on CPU."""
  import jax
  return jax.random.key(seed, impl="rbg")


@pytest.fixture
def strict_promotion():
  """JAX's strict dtype promotion for a test (implicit promotions are errors)."""
  import jax
  with jax.numpy_dtype_promotion("strict"):
    yield


def make_config(**overrides):
  """A digits MLP config, small enough for unit tests; keys as dotted overrides."""
  from jdl.config import base_config
  config = base_config()
  config.dataset = "digits"
  config.model.name = overrides.pop("model__name", "mlp")
  if config.model.name == "mlp":
    config.model.hidden = (32,)
  config.batch_size = 64
  config.num_epochs = 2
  config.tensorboard = False
  config.plots = False
  config.async_checkpoints = False
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split("__")
    for p in parents:
      node = node[p]
    if leaf not in node and parents == ["model"]:
      with node.unlocked():
        node[leaf] = value
    else:
      node[leaf] = value
  config.lock()
  return config


@pytest.fixture
def tiny_config():
  return make_config


class Crash(cb.Callback):
  """Simulates a crash (an exception) once training reaches ``at_step``."""

  def __init__(self, at_step):
    self.at_step = at_step

  def on_steps_end(self, trainer, step, num_steps):
    if step >= self.at_step:
      raise KeyboardInterrupt("simulated crash")


def cli_env() -> dict[str, str]:
  """The environment for `python -m jdl.cli` subprocesses: this checkout importable."""
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def start_training(workdir, args, **popen_kwargs):
  """Starts `jdl train --workdir WORKDIR ARGS...` in a subprocess."""
  import subprocess
  import sys
  return subprocess.Popen([sys.executable, "-m", "jdl.cli", "train", "--workdir", str(workdir),
                           *args], env=cli_env(), **popen_kwargs)


def assert_exports_equal(workdir_a, workdir_b):
  """`jdl export` of two workdirs gives bitwise-equal parameters."""
  import numpy as np
  from jdl import cli

  def exported(workdir):
    out = Path(workdir) / "params.npz"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    return np.load(out)

  a, b = exported(workdir_a), exported(workdir_b)
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
