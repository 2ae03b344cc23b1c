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


def request_deterministic_ops(enabled: bool) -> bool:
  """Makes GPU reductions, scatters and cuDNN algorithm choices deterministic.

  On a GPU, XLA's default kernels (atomics in scatter-add and reductions, autotuned
  cuDNN algorithms) let two runs from the same seed drift apart in the last bits
  within the first epoch. ``--xla_gpu_deterministic_ops=true`` removes that; it cost
  about 3% of throughput on ``mnist_cnn`` on an H200 (``benchmarks/gpu_determinism.sh``).
  CPU and TPU runs are deterministic without it (the CPU backend ignores the flag).

  Args:
    enabled: ``config.deterministic``.

  Returns:
    Whether the flag is in ``XLA_FLAGS`` (set here or by the user); an explicit
    ``--xla_gpu_deterministic_ops=...`` in the environment is always left as it is.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if DETERMINISTIC_FLAG in flags:
    return True
  if not enabled:
    return False
  if not xla_bridge.backends_are_initialized():
    os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_FLAG}=true".strip()
    return True
  if jax.default_backend() == "gpu":
    warnings.warn(
        "config.deterministic=True cannot take effect: JAX started its GPU backend "
        "before jdl could set XLA_FLAGS, so runs may differ in the last bits. Set "
        f"XLA_FLAGS={DETERMINISTIC_FLAG}=true before the first JAX computation, or "
        "--config.deterministic=false to silence this.", stacklevel=3)
  return False
