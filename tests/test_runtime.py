"""config.deterministic: --xla_gpu_deterministic_ops reaches XLA_FLAGS before JAX starts."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

from jdl.train import runtime

from conftest import REPO, cli_env


def test_flag_set_before_backends_start_and_accepted_by_xla():
  # A fresh interpreter: jdl sets the flag, then XLA parses it when the CPU backend
  # starts (an unknown flag would abort the process) and computes.
  code = ("import os; from jdl.train import runtime; "
          "assert runtime.request_deterministic_ops(True); "
          "import jax, jax.numpy as jnp; "
          "assert float(jnp.ones(3).sum()) == 3.0; print(os.environ['XLA_FLAGS'])")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["XLA_FLAGS"] = "--xla_cpu_enable_fast_math=false"
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120, check=True).stdout.split()
  assert out == ["--xla_cpu_enable_fast_math=false", "--xla_gpu_deterministic_ops=true"]


def test_xla_reads_its_flags_after_jdl_is_imported():
  # What makes the in-process setting work: XLA parses XLA_FLAGS when the first
  # backend starts, not when jax or jdl is imported. A flag set after the imports
  # still reaches XLA (here an unknown one, which XLA rejects).
  code = ("import os, jdl.cli, jdl.train.loop; "
          "os.environ['XLA_FLAGS'] = '--xla_no_such_flag_jdl=1'; "
          "import jax.numpy as jnp; jnp.ones(1).block_until_ready()")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert "xla_no_such_flag_jdl" in proc.stderr


def test_disabled_leaves_environment_alone(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  assert not runtime.request_deterministic_ops(False)
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"


def test_users_own_setting_wins(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
  assert runtime.request_deterministic_ops(True)
  assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=false"


def test_started_backend_cpu_is_silent_gpu_warns(monkeypatch):
  jax.numpy.zeros(1).block_until_ready()  # The backends have started in this process.
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert not runtime.request_deterministic_ops(True)  # CPU: deterministic anyway.
  assert "XLA_FLAGS" not in os.environ
  monkeypatch.setattr(runtime.jax, "default_backend", lambda: "gpu")
  with pytest.warns(UserWarning, match="deterministic=True cannot take effect"):
    assert not runtime.request_deterministic_ops(True)


# ------------------------------------------------- config.xla_cpu_region_analysis


def test_region_analysis_flag_added_unless_disabled_or_set(monkeypatch):
  monkeypatch.setattr(runtime.xla_bridge, "backends_are_initialized", lambda: False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  assert not runtime.request_cpu_region_analysis(False)
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
  assert runtime.request_cpu_region_analysis(True)
  assert os.environ["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false "
                                     "--xla_cpu_copy_insertion_use_region_analysis=true")
  # A user's explicit value is kept, and reported as it is.
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_copy_insertion_use_region_analysis=false")
  assert not runtime.request_cpu_region_analysis(True)
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_copy_insertion_use_region_analysis=false"
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_copy_insertion_use_region_analysis=1")
  assert runtime.request_cpu_region_analysis(False)
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_copy_insertion_use_region_analysis=1"


def test_region_analysis_not_set_once_backends_started(monkeypatch):
  jax.numpy.zeros(1).block_until_ready()
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert not runtime.request_cpu_region_analysis(True)
  assert "XLA_FLAGS" not in os.environ


def test_region_analysis_removes_loop_copies_and_trains_bitwise_alike(tmp_path):
  # Two fresh processes (XLA reads its flags once): jdl's default, which sets the
  # flag, and config.xla_cpu_region_analysis=False. A dropout MLP and a batch-norm
  # CNN must train to the same bits, and the flag must remove weight copies from
  # the MLP's fused block (what it is for).
  def env(on):  # Side by side: each its own compilation cache.
    return {k: v for k, v in cli_env(cache=f"region{on}").items() if k != "XLA_FLAGS"}

  procs = {on: subprocess.Popen(
      [sys.executable, str(REPO / "tests" / "region_analysis_run.py"), on,
       str(tmp_path / f"{on}.npz")], cwd=REPO, env=env(on), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for on in ("1", "0")}
  for on, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
  with np.load(tmp_path / "1.npz") as a, np.load(tmp_path / "0.npz") as b:
    on, off = dict(a), dict(b)
  assert "--xla_cpu_copy_insertion_use_region_analysis=true" in str(on.pop("xla_flags"))
  assert "region_analysis" not in str(off.pop("xla_flags"))
  copies_on, copies_off = int(on.pop("mlp_loop_copies")), int(off.pop("mlp_loop_copies"))
  assert copies_on < copies_off, (copies_on, copies_off)
  assert sorted(on) == sorted(off) and len(on) > 20
  assert any(k.startswith("cnn") and "batch_stats" in k for k in on)
  for k in on:
    np.testing.assert_array_equal(on[k], off[k], err_msg=k)


class _Device:
  """A device whose allocator reports ``stats`` (or raises, like a backend without it)."""

  def __init__(self, stats):
    self.stats = stats

  def memory_stats(self):
    if isinstance(self.stats, Exception):
      raise self.stats
    return self.stats


def test_peak_device_memory_is_the_largest_devices_in_mib():
  devices = [_Device({"peak_bytes_in_use": 3 * 2**20, "bytes_in_use": 2**20}),
             _Device({"peak_bytes_in_use": 5 * 2**20 + 2**19}), _Device(None),
             _Device({"bytes_in_use": 7 * 2**30}), _Device(NotImplementedError("no stats"))]
  assert runtime.peak_device_memory_mib(devices) == 5.5
  assert runtime.peak_device_memory_mib(devices[2:]) is None
  assert runtime.peak_device_memory_mib([]) is None
  # XLA:CPU keeps no count: nothing is reported for this machine's devices.
  assert runtime.peak_device_memory_mib(jax.local_devices()) is None
