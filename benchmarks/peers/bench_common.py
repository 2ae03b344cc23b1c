"""What every benchmark child shares: the models' shapes, the data, timing, the report.

A child process runs one measurement (one peer on one model, or one matmul) and
prints its result as one JSON line after :data:`RESULT_MARKER`; the driver
(``benchmarks/peers.py``) reads that line. Nothing here imports a framework.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
from typing import Any

import numpy as np

RESULT_MARKER = "@@peer-result@@ "
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
NUM_CLASSES = 10

# Input shape of one example (NHWC) per model.
INPUT_SHAPES = {
    "mlp": (28, 28, 1),
    "cnn": (28, 28, 1),
    "resnet20": (32, 32, 3),
}

# The jdl model configs the peers reproduce layer for layer.
JDL_MODELS = {
    "mlp": {"name": "mlp", "hidden": (512, 512)},
    "cnn": {"name": "cnn", "features": (32, 64), "pool": "avg", "dense": (256,)},
    "resnet20": {"name": "resnet20"},
}

MLP_HIDDEN = (512, 512)
CNN_FEATURES = (32, 64)
CNN_DENSE = 256
RESNET_STAGES = (3, 3, 3)
RESNET_FILTERS = 16


def make_data(model: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Random inputs and labels; the speed of training does not depend on the values.

  Args:
    model: a key of :data:`INPUT_SHAPES`.
    n: number of examples.
    seed: the numpy seed; every peer gets the same arrays.

  Returns:
    ``x: [n, height, width, channels]`` float32 in ``[0, 1)`` and ``y: [n]`` int32.
  """
  rng = np.random.default_rng(seed)
  x = rng.random((n, *INPUT_SHAPES[model]), dtype=np.float32)
  y = rng.integers(0, NUM_CLASSES, size=n).astype(np.int32)
  return x, y


def steady_rate(epoch_rates: list[float]) -> float:
  """The median samples/s of the epochs after the first (the first warms up)."""
  rates = epoch_rates[1:] or epoch_rates
  return float(statistics.median(rates))


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result: dict[str, Any]) -> None:
  """Prints the child's result for the driver, with the peak RSS of the process."""
  result = {**result, "peak_rss_mib": round(peak_rss_mib(), 1)}
  sys.stdout.flush()
  print(RESULT_MARKER + json.dumps(result), flush=True)
