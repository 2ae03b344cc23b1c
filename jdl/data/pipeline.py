"""From a loaded dataset to device-resident splits and batch orders.

The whole train split lives on the device; an epoch is a permutation of example
indices drawn from ``fold_in(shuffle_key, epoch)``, so the data order of any epoch
is a pure function of the seed and the epoch number, and a run resumed at step
``s`` sees exactly the batches an uninterrupted run would. Training uses full
batches only (the remainder of a permutation rotates through epochs); evaluation
pads the last batch and masks the padding, so metrics are exact and nothing is
compiled twice.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jdl.errors import JdlError


@dataclasses.dataclass(frozen=True)
class Split:
  """One split on the device. ``x: [n, ...]``, ``y: [n, ...]``.

  ``images``: the split's images as the data gave them, when ``x`` is a transform of
  them the model is scored on (a VAE's once-binarized test images); generated
  images are compared with these. ``None``: ``x`` itself.
  """
  x: jax.Array
  y: jax.Array
  images: np.ndarray | None = None

  @property
  def size(self) -> int:
    return int(self.x.shape[0])

  def eval_batches(self, batch_size: int, prefetch: int = 2):
    """``(x, y, idx, mask)`` of each evaluation batch: the whole split and its indices."""
    del prefetch  # Already on the device.
    idx, mask = eval_batch_indices(self.size, batch_size)
    for i in range(idx.shape[0]):
      yield self.x, self.y, idx[i], mask[i]


class MemoryFeed:
  """The loop's training inputs from a device-resident :class:`Split`.

  ``block(epoch, pos, n)`` returns ``(x, y, idx)``: the whole split and the
  ``[n, batch_size]`` indices of steps ``pos..pos+n-1`` of ``epoch``
  (:func:`epoch_permutation`, full batches only). :class:`jdl.data.stream.StreamFeed`
  serves the same blocks from disk.
  """

  def __init__(self, split: Split, shuffle_key: jax.Array, batch_size: int):
    self.split, self.shuffle_key, self.batch_size = split, shuffle_key, batch_size
    self._epoch, self._idx = None, None

  def shapes(self, n: int):
    """``(x, y, idx)`` of an ``n``-step block, ``idx`` abstract, to compile it."""
    return (self.split.x, self.split.y,
            jax.ShapeDtypeStruct((n, self.batch_size), jnp.int32))

  def block(self, epoch: int, pos: int, n: int, size: int | None = None):
    """``size``: the indices are ``[size, batch_size]``, the rows after the block's
    ``n`` steps ``-1`` (padding: no step; :func:`jdl.train.steps.loop_steps`)."""
    if self._epoch != epoch:
      self._epoch = epoch
      self._idx = _epoch_batches(self.shuffle_key, epoch, self.split.size, self.batch_size)
    if size is None or size == n:
      return self.split.x, self.split.y, _rows(self._idx, pos, n)
    return self.split.x, self.split.y, _padded_rows(self._idx, pos, n, size)

  def warm_up(self, sizes: Iterable[tuple[int, int | None]]) -> None:
    """Compiles what :meth:`block` runs for blocks of ``(n, size)`` (its arguments),
    so that no compilation falls inside an epoch's time."""
    for n, size in sizes:
      jax.block_until_ready(self.block(0, 0, n, size)[2])

  def close(self) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """Standardisation with statistics of the train split only.

  ``mean`` and ``std`` are float64 (a float32 mean does not centre a feature with a
  large offset, such as a Unix time: float32's spacing there is 128). ``float64``:
  the train split was float64 (or 32- or 64-bit integers, :func:`needs_float64`);
  inputs are then normalised in float64, else cast to float32 and normalised in
  float32 (as the splits were, so that ``predict`` of the raw test inputs sees the
  test split's values); either way the result is float32.
  """
  mean: np.ndarray
  std: np.ndarray
  float64: bool = False

  def __post_init__(self):
    object.__setattr__(self, "mean", np.asarray(self.mean, np.float64))
    object.__setattr__(self, "std", np.asarray(self.std, np.float64))
    # Those applied to float32 inputs, once (the streamed path uses them per batch).
    object.__setattr__(self, "_stats32", (self.mean.astype(np.float32),
                                          self.std.astype(np.float32)))

  @classmethod
  def fit(cls, x: np.ndarray) -> Normalizer:
    mean = x.mean(axis=0, dtype=np.float64)
    return cls(mean, unit_where_constant(x.std(axis=0, dtype=np.float64), mean, len(x)),
               needs_float64(x.dtype))

  @classmethod
  def fit_center(cls, x: np.ndarray) -> Normalizer:
    """Per-feature centering only (Keras' ``featurewise_center``): std 1."""
    mean = x.mean(axis=0, dtype=np.float64)
    return cls(mean, np.ones_like(mean), needs_float64(x.dtype))

  @classmethod
  def fit_global(cls, x: np.ndarray) -> Normalizer:
    """One mean and std over all train values (the usual choice for images); a
    constant input (up to rounding, see :func:`unit_where_constant`) is centred."""
    shape = x.shape[1:]
    mean = float(x.mean(dtype=np.float64))
    std = float(unit_where_constant(x.std(dtype=np.float64), mean, max(1, x.size)))
    return cls(np.full(shape, mean), np.full(shape, std), needs_float64(x.dtype))

  @classmethod
  def identity(cls, shape: tuple[int, ...]) -> Normalizer:
    return cls(np.zeros(shape), np.ones(shape))

  @property
  def is_identity(self) -> bool:
    """Whether it leaves inputs as they are (then they may have any shape)."""
    return not self.mean.any() and bool((self.std == 1).all())

  def stats(self, dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` in ``dtype``: those the inputs of that dtype are normalised with."""
    if np.dtype(dtype) == np.float32:
      return self._stats32
    return self.mean.astype(dtype), self.std.astype(dtype)

  def __call__(self, x: np.ndarray) -> np.ndarray:
    if self.is_identity:
      return np.asarray(x, np.float32)  # No copy of float32 data.
    if self.float64:
      return ((np.asarray(x, np.float64) - self.mean) / self.std).astype(np.float32)
    mean, std = self._stats32
    return ((np.asarray(x, np.float32) - mean) / std).astype(np.float32)


def needs_float64(dtype) -> bool:
  """Whether inputs of ``dtype`` are normalised in float64: float64, and integers of
  32 bits or more (a Unix time in int64 seconds; float32 holds integers exactly
  only up to 2**24)."""
  dtype = np.dtype(dtype)  # By kind and size: a big-endian '>f8' is float64 too.
  return ((dtype.kind == "f" and dtype.itemsize >= 8)
          or (dtype.kind in "iu" and dtype.itemsize >= 4))


def unit_where_constant(std: np.ndarray, mean: np.ndarray, n: int) -> np.ndarray:
  """``std`` with 1 for the features that are constant up to the float64 rounding of
  their statistics over ``n`` examples (scikit-learn's bound in ``StandardScaler``):
  those (e.g. MNIST's border pixels) are centred, not blown up, while a feature of
  small scale (a std of 1e-7) is still scaled to unit variance."""
  eps = np.finfo(np.float64).eps
  var = np.square(std)
  constant = var <= n * eps * var + np.square(n * mean * eps)
  return np.where(constant, 1.0, std)


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
  """Holds out ``fraction`` of (x, y) for validation, by a seeded permutation.

  Returns:
    ``(x_train, y_train, x_val, y_val)``; the validation arrays are empty when
    ``fraction`` is 0.
  """
  if not 0.0 <= fraction < 1.0:
    raise JdlError(f"validation_split must be in [0, 1), got {fraction}")
  n = len(x)
  if fraction == 0:
    return x, y, x[:0], y[:0]  # No copy of the train split.
  n_val = int(round(n * fraction))
  if fraction > 0 and (n_val == 0 or n_val == n):
    raise JdlError(f"validation_split={fraction} of {n} train examples leaves "
                   f"{n - n_val} for training and {n_val} for validation")
  order = np.random.default_rng(seed).permutation(n)
  val, train = order[:n_val], order[n_val:]
  return x[train], y[train], x[val], y[val]


@functools.partial(jax.jit, static_argnums=2)
def epoch_permutation(shuffle_key: jax.Array, epoch: int, n: int) -> jax.Array:
  """The example order of ``epoch``: ``[n]`` int32 (one compiled program for every
  epoch: op by op, its first call compiled inside epoch 1's time)."""
  return jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _epoch_batches(shuffle_key: jax.Array, epoch, n: int, batch_size: int) -> jax.Array:
  """``[n // batch_size, batch_size]``: the full batches of ``epoch``'s order."""
  return train_batch_indices(epoch_permutation(shuffle_key, epoch, n), batch_size)


@functools.partial(jax.jit, static_argnums=2)
def _rows(idx: jax.Array, pos, n: int) -> jax.Array:
  """Rows ``pos..pos+n-1`` of ``idx`` (one program for every ``pos``)."""
  return jax.lax.dynamic_slice_in_dim(idx, pos, n)


@functools.partial(jax.jit, static_argnums=3)
def _padded_rows(idx: jax.Array, pos, n, size: int) -> jax.Array:
  """Rows ``pos..pos+size-1`` of ``idx``, those from ``n`` on set to ``-1``."""
  padded = jnp.concatenate([idx, jnp.full((size, idx.shape[1]), -1, idx.dtype)])
  rows = jax.lax.dynamic_slice_in_dim(padded, pos, size)
  return jnp.where((jnp.arange(size) < n)[:, None], rows, -1)


def train_batch_indices(perm: jax.Array, batch_size: int) -> jax.Array:
  """``[steps_per_epoch, batch_size]`` indices: full batches of ``perm``."""
  steps = perm.shape[0] // batch_size
  return perm[: steps * batch_size].reshape(steps, batch_size)


def eval_batch_indices(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices and mask covering ``n`` examples in batches of ``batch_size``.

  Returns:
    ``(idx, mask)``: ``[num_batches, batch_size]`` int32 and float32; padding
    rows point at example 0 and have mask 0.
  """
  num_batches = max(1, math.ceil(n / batch_size))
  flat = np.arange(num_batches * batch_size)
  mask = (flat < n).astype(np.float32)
  idx = np.where(flat < n, flat, 0).astype(np.int32)
  return idx.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)


def check_batch_size(batch_size: int, n_train: int) -> None:
  if not isinstance(batch_size, int) or batch_size <= 0:
    raise JdlError(f"batch_size must be a positive integer, got {batch_size!r}")
  if batch_size > n_train:
    raise JdlError(f"batch_size ({batch_size}) is larger than the training set "
                   f"({n_train} examples); lower batch_size (--config.batch_size)")


def select_classes(x: np.ndarray, y: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
  """Keeps the examples of ``classes`` and relabels them 0..len(classes)-1 in that order."""
  classes = [int(c) for c in classes]
  keep = np.isin(y, classes)
  relabel = np.full(int(max(classes)) + 1, -1, np.int64)
  relabel[classes] = np.arange(len(classes))
  return x[keep], relabel[y[keep]].astype(y.dtype)


def limit_per_class(x: np.ndarray, y: np.ndarray, n: int, seed: int):
  """At most ``n`` examples of each class, drawn by a seeded permutation."""
  order = np.random.default_rng(seed).permutation(len(y))
  taken: dict[int, int] = {}
  keep = []
  for i in order:
    c = int(y[i])
    if taken.get(c, 0) < n:
      taken[c] = taken.get(c, 0) + 1
      keep.append(i)
  keep = np.sort(np.asarray(keep, np.int64))
  return x[keep], y[keep]
