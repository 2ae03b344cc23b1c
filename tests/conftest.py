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
  tests/region_analysis_run.py) choose for themselves. Then starts the session's
  compilation cache.
  """
  runtime.request_cpu_region_analysis(True)
  _start_compilation_cache(config)


# The suite compiles the same small programs over and over: a resumed run and its
# uninterrupted twin, the CLI's subprocesses, the 8-device checks' many runs. Each
# process that runs tests (each xdist worker) gets its own XLA compilation cache,
# which the subprocesses it starts inherit through the environment, so a program's
# later compiles are read from disk: the suite takes about a third less time. One
# cache per worker, because JAX writes an entry in place: a process must not read an
# entry another is still writing. Tests that start processes side by side give each
# its own cache (`cli_env(cache=...)`). A cache the user set is left alone.
_CACHE_DIR = "JAX_COMPILATION_CACHE_DIR"
_CACHE_OWNER = "JDL_TEST_CACHE_OWNER"  # The pid of the process that made the cache.


def _start_compilation_cache(config):
  import tempfile
  import jax
  if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
    return  # xdist's controller: it runs no test.
  if os.environ.get(_CACHE_DIR) and _CACHE_OWNER not in os.environ:
    return  # The user's own cache.
  os.environ[_CACHE_OWNER] = str(os.getpid())
  settings = {"jax_compilation_cache_dir": tempfile.mkdtemp(prefix="jdl-test-xla-cache-"),
              # Every program, however small or quick to compile.
              "jax_persistent_cache_min_compile_time_secs": 0,
              "jax_persistent_cache_min_entry_size_bytes": 0}
  for name, value in settings.items():
    os.environ[name.upper()] = str(value)  # For the subprocesses.
    jax.config.update(name, value)  # JAX read its environment at import.


def pytest_unconfigure(config):
  del config
  if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
    import shutil
    shutil.rmtree(os.environ[_CACHE_DIR], ignore_errors=True)


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


def small_digits_cnn(**overrides):
  """The digits_cnn experiment (dropout, max pooling), narrowed to train in seconds."""
  import jdl
  config = jdl.load_config("digits_cnn")
  config.model.features, config.model.dense = (4, 8), (16,)
  config.batch_size, config.num_epochs = 64, 1
  config.plots = config.tensorboard = config.async_checkpoints = False
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split("__")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
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


def cli_env(cache: str | None = "") -> dict[str, str]:
  """The environment for `python -m jdl.cli` subprocesses: this checkout importable.

  ``cache``: ``""`` shares the test process's compilation cache (see
  ``_start_compilation_cache``); a name gives the subprocess a cache of its own, for
  processes that run side by side; ``None``, none.
  """
  env = dict(os.environ)
  if env.get(_CACHE_OWNER) and cache is None:
    del env[_CACHE_DIR]
  elif env.get(_CACHE_OWNER) and cache:
    env[_CACHE_DIR] = os.path.join(env[_CACHE_DIR], cache)
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
