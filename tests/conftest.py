"""Shared fixtures: small configs that train in a second or two on a CPU."""

from __future__ import annotations

import hashlib
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
  """Sets, before collection starts JAX, the XLA:CPU flags of the suite's processes.

  LLVM's optimisations off (see ``_compile_fast``), then
  ``config.xla_cpu_region_analysis``: the suite's in-process runs then compile as
  the CLI's do. Not at import: scripts that import this module (e.g.
  tests/region_analysis_run.py) choose for themselves. Then starts the session's
  compilation cache.
  """
  config.addinivalue_line(
      "markers", "full_opt: compares the bits of differently compiled programs; runs at "
      "XLA's full optimisation (tests/test_full_optimisation.py)")
  _compile_fast()
  runtime.request_cpu_region_analysis(True)
  _start_compilation_cache(config)


# Most of the suite's time is XLA compiling small programs, and most of that is LLVM
# optimising the CPU code: with `--xla_backend_optimization_level=0` the suite takes
# about 30% less time. The HLO programs are the same; only the machine code differs,
# and so do the last bits of some results (FMA contraction, vectorised loops). A
# claim about one program (a resumed run against its uninterrupted twin, one model
# against a numpy formula) holds at any level. A claim that two *differently*
# compiled programs give the same bits (streamed against in-memory blocks, a
# diagnostics block against a plain one) can depend on that machine code: such
# tests are marked `full_opt`, and tests/test_full_optimisation.py runs them in a
# process compiling as users do. `JDL_TEST_FULL_OPT=1` runs the whole suite so; an
# XLA_FLAGS that names an optimisation level is left as it is.
FULL_OPT = "JDL_TEST_FULL_OPT"
_O0 = "--xla_backend_optimization_level=0"
_ADDED_O0 = "JDL_TEST_ADDED_O0"  # Set when this suite added _O0 to XLA_FLAGS.


def _compile_fast() -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  if (os.environ.get(FULL_OPT) == "1"
      or ("xla_backend_optimization_level" in flags and _ADDED_O0 not in os.environ)):
    return
  if _O0 not in flags.split():
    os.environ["XLA_FLAGS"] = f"{flags} {_O0}".strip()
  os.environ[_ADDED_O0] = "1"


def compiles_fast() -> bool:
  """Whether this suite compiles with LLVM's optimisations off."""
  return _ADDED_O0 in os.environ


def suite_xla_flags() -> str:
  """The flags a subprocess that sets its own XLA_FLAGS adds, to compile as the suite does."""
  return _O0 if compiles_fast() else ""


def full_optimisation_env() -> dict[str, str]:
  """This process's environment, with the suite's optimisation level taken out."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if f != _O0]
  env["XLA_FLAGS"] = " ".join(flags)
  env.pop(_ADDED_O0, None)
  env.pop("PYTEST_ADDOPTS", None)  # The runner chooses its own options.
  env[FULL_OPT] = "1"
  return env


FULL_OPT_TESTS: list[str] = []  # The `full_opt` tests that this session's run left out.
_SLOW_FIRST = (  # Measured with --durations on 2 cores (2026-11-30), slowest first.
    "test_full_optimisation.py::", "test_eight_simulated_devices",
    "test_two_processes_killed_and_resumed", "test_seq2seq_resumes_exactly",
    "test_region_analysis_removes_loop_copies", "test_two_processes_streamed",
    "test_sigkill_mid_epoch_then_rerun", "test_sigkill_inside_a_checkpoint_write")
_FULL_OPT_RUNNER = "test_full_optimisation.py::"


@pytest.hookimpl(trylast=True)  # After -k, -m and --deselect: the final selection.
def pytest_collection_modifyitems(config, items):
  """With LLVM's optimisations off: the selected `full_opt` tests run in the
  full-optimisation test instead, when it is selected too (it is marked `full_opt`
  itself, so `-m full_opt` selects it); else here, as selected.

  The slowest tests (`_SLOW_FIRST`, each 20-130 s) go first: pytest-xdist hands out
  tests in this order, and one of them drawn last would keep its worker busy alone
  at the end of the run."""
  slow = [i for i in items if any(name in i.nodeid for name in _SLOW_FIRST)]
  items[:] = slow + [i for i in items if i not in slow]
  if not compiles_fast() or not any(_FULL_OPT_RUNNER in item.nodeid for item in items):
    return
  kept, left = [], []
  for item in items:
    runs_here = _FULL_OPT_RUNNER in item.nodeid or not item.get_closest_marker("full_opt")
    (kept if runs_here else left).append(item)
  if left:
    FULL_OPT_TESTS[:] = [item.nodeid for item in left]
    config.hook.pytest_deselected(items=left)
    items[:] = kept


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


def random_variables(module, *args, seed: int = 0, positive=(), **kwargs):
  """Random variables of ``module``'s shapes, for tests of what a module computes.

  Leaves are ``0.5 * N(0, 1)`` draws (biases too, so a test sees every bias), and
  leaves named in ``positive`` (BN ``scale`` and ``var``, say) are drawn from
  ``U(0.5, 1.5)``, all from ``numpy``'s generator seeded with ``seed``, in the tree's
  order. The shapes come from an abstract ``init``: no initializer runs and nothing
  compiles (the initializers have their own tests).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  shapes = jax.eval_shape(lambda: module.init(rbg_key(0), *args, **kwargs))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key in positive:
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    return jnp.asarray(0.5 * rng.standard_normal(leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def fake_trainer(x, y, *, task="classification", num_classes=3, val=None, test=None,
                 classes=(), **config):
  """What ``jdl.sanity``'s checks read of a ``Trainer``: ``data`` (the train split from
  ``x``, ``y``; ``val``, ``test``, ``task``, ``num_classes``) and ``config``
  (``classes`` and the fields given as keywords). A test sets ``model``, ``loss`` and
  ``state`` on it for the checks that run the model."""
  import types
  import jax.numpy as jnp
  from jdl.data import pipeline
  data = types.SimpleNamespace(train=pipeline.Split(jnp.asarray(x), jnp.asarray(y)),
                               val=val, test=test, task=task, num_classes=num_classes)
  return types.SimpleNamespace(data=data,
                               config=types.SimpleNamespace(classes=classes, **config))


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


def assert_exports_equal(workdir_a, workdir_b, *, past: int | None = None):
  """`jdl export` of the latest checkpoints of two workdirs gives bitwise-equal
  parameters. The latest, not the best by the monitor (export's default), which
  could be a step the interrupted run wrote before its interruption; ``past``: a
  step the latest must be beyond (the last one written before it)."""
  import numpy as np
  from jdl import checkpoint as ckpt_lib
  from jdl import cli

  def exported(workdir):
    step = max(ckpt_lib.step_numbers(Path(workdir) / "checkpoints"))
    out = Path(workdir) / "params.npz"
    assert cli.main(["export", "--workdir", str(workdir), "--step", str(step),
                     "--out", str(out)]) == 0
    return step, np.load(out)

  (step_a, a), (step_b, b) = exported(workdir_a), exported(workdir_b)
  assert step_a == step_b and (past is None or step_b > past), (step_a, step_b, past)
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def snapshot(root: Path, folders: bool = False) -> dict[str, str]:
  """Every file under ``root`` by its relative path with its content's SHA-256 (and
  with ``folders`` every folder, as "/"): equal snapshots before and after a call
  mean it wrote, moved and removed nothing there."""
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          if p.is_file() else "/" for p in sorted(root.rglob("*"))
          if folders or p.is_file()}


def write_sst2(directory: Path, train: str, dev: str = "sentence\tlabel\nok\t1\n",
               encoding: str = "utf-8") -> Path:
  """An SST-2 folder: ``directory/train.tsv`` and ``dev.tsv`` holding ``train`` and
  ``dev`` in ``encoding``."""
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "train.tsv").write_bytes(train.encode(encoding))
  (directory / "dev.tsv").write_bytes(dev.encode(encoding))
  return directory
