"""Random MNIST-shaped data shared by the benchmark scripts."""

from __future__ import annotations

import numpy as np

from jdl.data import Dataset


def mnist_shaped(n: int, *, seed: int = 0) -> Dataset:
  """``n`` random 28x28x1 training images in [0, 1), balanced labels, 256 test images."""
  rng = np.random.default_rng(seed)
  return Dataset(x_train=rng.random((n, 28, 28, 1), dtype=np.float32),
                 y_train=(np.arange(n) % 10).astype(np.int32),
                 x_test=rng.random((256, 28, 28, 1), dtype=np.float32),
                 y_test=(np.arange(256) % 10).astype(np.int32), num_classes=10,
                 task="classification", name="mnist-shaped", input_shape=(28, 28, 1))
