"""The Keras 3 peer: ``model.fit`` with the JAX backend.

The driver sets ``KERAS_BACKEND=jax`` in this child's environment before Python
starts; :func:`run_keras` checks that it took.
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import bench_common as common  # pylint: disable=wrong-import-position

layers = keras.layers


def _mlp(inputs):
  x = layers.Flatten()(inputs)
  for width in common.MLP_HIDDEN:
    x = layers.Dense(width, activation="relu", kernel_initializer="he_normal")(x)
  return layers.Dense(common.NUM_CLASSES, kernel_initializer="he_normal")(x)


def _cnn(inputs):
  x = inputs
  for width in common.CNN_FEATURES:
    x = layers.Conv2D(width, 3, padding="same", activation="relu",
                      kernel_initializer="he_normal")(x)
    x = layers.AveragePooling2D(2)(x)
  x = layers.Flatten()(x)
  x = layers.Dense(common.CNN_DENSE, activation="relu", kernel_initializer="he_normal")(x)
  return layers.Dense(common.NUM_CLASSES, kernel_initializer="he_normal")(x)


def _conv_bn(x, filters, size, strides=1):
  x = layers.Conv2D(filters, size, strides=strides, padding="same", use_bias=False,
                    kernel_initializer="he_normal")(x)
  return layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)


def _resnet20(inputs):
  x = layers.ReLU()(_conv_bn(inputs, common.RESNET_FILTERS, 3))
  for i, blocks in enumerate(common.RESNET_STAGES):
    filters = common.RESNET_FILTERS * 2**i
    for j in range(blocks):
      strides = 2 if i > 0 and j == 0 else 1
      y = layers.ReLU()(_conv_bn(x, filters, 3, strides))
      y = _conv_bn(y, filters, 3)
      shortcut = x
      if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides)
      x = layers.ReLU()(layers.Add()([y, shortcut]))
  x = layers.GlobalAveragePooling2D()(x)
  return layers.Dense(common.NUM_CLASSES, kernel_initializer="he_normal")(x)


_BUILDERS = {"mlp": _mlp, "cnn": _cnn, "resnet20": _resnet20}


class _EpochTimer(keras.callbacks.Callback):
  """Wall-clock seconds of each epoch (Keras has turned the logs into numbers by then)."""

  def __init__(self):
    super().__init__()
    self.seconds: list[float] = []
    self._t0 = 0.0

  def on_epoch_begin(self, epoch, logs=None):
    self._t0 = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds.append(time.perf_counter() - self._t0)


def run_keras(model: str, n: int, epochs: int, seed: int,
              batch_size: int = common.BATCH_SIZE) -> dict[str, Any]:
  """``model.fit`` on numpy arrays, shuffled each epoch; epoch 1 includes compilation."""
  backend = keras.backend.backend()
  if backend != "jax":
    raise RuntimeError(f"Keras runs on the {backend!r} backend; set KERAS_BACKEND=jax")
  keras.utils.set_random_seed(seed)
  x, y = common.make_data(model, n, seed)
  inputs = keras.Input(common.INPUT_SHAPES[model])
  net = keras.Model(inputs, _BUILDERS[model](inputs))
  net.compile(optimizer=keras.optimizers.Adam(common.LEARNING_RATE, epsilon=1e-8),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
  timer = _EpochTimer()
  # Full batches only, as the other peers train: Keras would also train a last partial
  # batch, which the rate below does not count (ResNet-20's 1,920 at 512 read ~20% low).
  samples = (n // batch_size) * batch_size
  net.fit(x[:samples], y[:samples], batch_size=batch_size, epochs=epochs, shuffle=True,
          verbose=0, callbacks=[timer])
  rates = [samples / s for s in timer.seconds]
  import jax  # pylint: disable=g-import-not-at-top
  return {"samples_per_s": common.steady_rate(rates), "epoch_rates": rates,
          "compile_s": None, "first_epoch_s": timer.seconds[0],
          "params": int(sum(np.prod(w.shape) for w in net.trainable_weights)),
          "versions": {"keras": keras.__version__, "jax": jax.__version__}}
