"""Process-wide XLA settings a run needs before JAX starts its backends.

XLA reads ``XLA_FLAGS`` once, when the first backend starts, so these settings are
made at the top of :class:`jdl.train.loop.Trainer` (before anything in jdl touches a
device) and cannot change afterwards in the same process.
"""

from __future__ import annotations

import os
import warnings

import jax
from jax._src import xla_bridge

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops"
REGION_ANALYSIS_FLAG = "--xla_cpu_copy_insertion_use_region_analysis"


def _user_value(flag: str) -> str | None:
  """The value ``XLA_FLAGS`` gives ``flag`` (``''`` if it names it bare), else ``None``."""
  for item in os.environ.get("XLA_FLAGS", "").split():
    name, _, value = item.partition("=")
    if name == flag:
      return value
  return None


def _add_flag(flag: str) -> bool:
  """Appends ``flag=true`` to ``XLA_FLAGS`` if XLA has not read it yet."""
  if xla_bridge.backends_are_initialized():
    return False
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = f"{flags} {flag}=true".strip()
  return True


def usable_cpu_cores() -> int:
  """The CPU cores this process may run on (its affinity), which XLA:CPU's thread
  pool follows. A convolution's summation order depends on it, so a CNN resumed on
  another number of cores continues within float tolerance, not bitwise."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):  # Not Linux.
    return os.cpu_count() or 1


def peak_device_memory_mib(devices) -> float | None:
  """The most memory any of ``devices`` has held since the process started, MiB:
  its allocator's ``peak_bytes_in_use`` (GPUs, TPUs). ``None`` where the backend
  keeps no such count (XLA:CPU)."""
  peaks = []
  for device in devices:
    try:
      stats = device.memory_stats()
    except Exception:  # noqa: BLE001  (a backend without the call)
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return round(max(peaks) / 2**20, 1) if peaks else None


def request_deterministic_ops(enabled: bool) -> bool:
  """Makes GPU reductions, scatters and cuDNN algorithm choices deterministic.

  On a GPU, XLA's default kernels (atomics in scatter-add and reductions, autotuned
  cuDNN algorithms) let two runs from the same seed drift apart in the last bits
  within the first epoch. ``--xla_gpu_deterministic_ops=true`` removes that, at a
  price measured on an H200: 8% of throughput on ``mnist_cnn``, 12-15% on the peers'
  CNN and 24-29% on their MLP (``benchmarks/README.md``, seventh session).
  CPU and TPU runs are deterministic without it (the CPU backend ignores the flag).

  Args:
    enabled: ``config.deterministic``.

  Returns:
    Whether the flag is in ``XLA_FLAGS`` (set here or by the user); an explicit
    ``--xla_gpu_deterministic_ops=...`` in the environment is always left as it is.
  """
  if _user_value(DETERMINISTIC_FLAG) is not None:
    return True
  if not enabled:
    return False
  if _add_flag(DETERMINISTIC_FLAG):
    return True
  if jax.default_backend() == "gpu":
    warnings.warn(
        "config.deterministic=True cannot take effect: JAX started its GPU backend "
        "before jdl could set XLA_FLAGS, so runs may differ in the last bits. Set "
        f"XLA_FLAGS={DETERMINISTIC_FLAG}=true before the first JAX computation, or "
        "--config.deterministic=false to silence this.", stacklevel=3)
  return False


def request_cpu_region_analysis(enabled: bool) -> bool:
  """Lets XLA:CPU drop the per-step copies of weights in a fused block of steps.

  In a ``lax.scan`` of training steps, XLA:CPU's default copy insertion copies a
  weight matrix that the step both reads (for the input gradient) and updates in
  place: the 512x512 and 512x10 weights of the peers' MLP, every step. Region-based
  live-range analysis (``--xla_cpu_copy_insertion_use_region_analysis=true``) proves
  these copies unnecessary and removes them: the MLP's block ran ~7% faster, the CNN
  and ResNet-20 within noise (``benchmarks/README.md``). Values are unchanged
  (``tests/test_runtime.py`` trains bitwise alike with and without it). The flag
  affects only XLA:CPU compilation; GPU and TPU programs ignore it.

  Args:
    enabled: ``config.xla_cpu_region_analysis``.

  Returns:
    Whether the flag is in ``XLA_FLAGS`` as true (set here or by the user). An
    explicit ``--xla_cpu_copy_insertion_use_region_analysis=...`` in the environment
    is left as it is; once JAX's backends have started the flag cannot be set, and
    the run simply goes without it.
  """
  value = _user_value(REGION_ANALYSIS_FLAG)
  if value is not None:
    return value.lower() not in ("false", "0")
  return enabled and _add_flag(REGION_ANALYSIS_FLAG)
