"""Streamed splits: training blocks and evaluation batches read from disk in the background.

A :class:`StreamSplit` is a split of an ``npy_dir`` dataset (:mod:`jdl.data.npy_dir`)
that never sits in memory whole. Its training feed (:class:`StreamFeed`) serves the
loop the same blocks of steps as the in-memory feed
(:class:`jdl.data.pipeline.MemoryFeed`): epoch *e* is
``permutation(fold_in(shuffle_key, e))`` of the split, full batches only. So a streamed
run equals the in-memory run on the same data bit for bit, and its position is the
global step already in every checkpoint: resume needs nothing new.

A background thread (:class:`Prefetcher`) walks the block schedule ahead of the loop:
it reads each block's rows from the files (sorted, for locality; see
:class:`jdl.data.npy_dir.NpyRows`), normalises them with the train split's statistics,
and ``jax.device_put`` s them into a bounded queue (``config.stream.prefetch`` blocks
deep). An error in the thread is raised in the loop as one :class:`JdlError`; closing
the feed (end of ``fit``, an exception, a stop request, early stopping) stops and
joins the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdl.data import npy_dir
from jdl.data import pipeline
from jdl.errors import JdlError


class StreamSplit:
  """One split of memory-mapped rows, normalised as they are read.

  Args:
    x, y: the dataset's rows (:class:`jdl.data.npy_dir.NpyRows`).
    rows: this split's rows of ``x``/``y``, in split order (``None``: all, in order);
      e.g. the train rows left by ``validation_split``.
    normalizer: the train split's :class:`jdl.data.pipeline.Normalizer`.
    regression: targets are float32 ``[n, k]`` (else int32 class ids ``[n]``).
    target_is_input: the target is the normalised input (autoencoders).
  """

  def __init__(self, x: npy_dir.NpyRows, y: npy_dir.NpyRows, rows: np.ndarray | None,
               normalizer: pipeline.Normalizer, *, regression: bool,
               target_is_input: bool = False):
    self.source_x, self.source_y, self.rows = x, y, rows
    self.normalizer = normalizer
    self.regression, self.target_is_input = regression, target_is_input
    self.size = len(x) if rows is None else len(rows)
    self.eval_rows_read = 0  # Rows read by eval_batches (padding included).
    self.x_shape = (self.size, *x.shape[1:])
    if target_is_input:
      self.y_shape, self.y_dtype = self.x_shape, np.dtype(np.float32)
    elif regression:
      k = int(np.prod(y.shape[1:], dtype=np.int64))
      self.y_shape, self.y_dtype = (self.size, k), np.dtype(np.float32)
    else:
      self.y_shape, self.y_dtype = (self.size,), np.dtype(np.int32)

  def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets of the split's examples ``idx: [m]`` (host arrays, in order)."""
    rows = self._rows(idx)
    raw = self.source_x.take(rows)
    if self.normalizer.float64:  # float64 (or wide integer) files, as in memory.
      x = self.normalizer(raw)
    else:
      x = _normalize(self.normalizer, np.asarray(raw, np.float32))
    return x, (x if self.target_is_input else self._targets(rows))

  def gather_y(self, idx: np.ndarray) -> np.ndarray:
    """The targets of examples ``idx: [m]``, reading no inputs (but an autoencoder's)."""
    if self.target_is_input:
      return self.gather(idx)[1]
    return self._targets(self._rows(idx))

  def _rows(self, idx) -> np.ndarray:
    idx = np.asarray(idx, np.int64)
    return idx if self.rows is None else self.rows[idx]

  def _targets(self, rows: np.ndarray) -> np.ndarray:
    if self.regression:
      return self.source_y.take(rows).reshape(len(rows), -1).astype(np.float32)
    return self.source_y.take(rows).astype(np.int32)

  @property
  def x(self) -> _RowsView:
    return _RowsView(self, 0, self.x_shape, np.dtype(np.float32))

  @property
  def y(self) -> _RowsView:
    return _RowsView(self, 1, self.y_shape, self.y_dtype)

  def eval_batches(self, batch_size: int, prefetch: int = 2, *,
                   columns: tuple[int, int] | None = None,
                   place: Callable | None = None) -> Iterator[tuple]:
    """``(x, y, idx, mask)`` device batches covering the split, the last padded.

    As :meth:`jdl.data.pipeline.Split.eval_batches` (padding rows repeat example 0 and
    have mask 0), but each batch holds only its own rows, read in the background.

    ``columns=(lo, hi)``: read only those rows of each (padded) batch, and hand the
    host ``(x, y, mask)`` of them to ``place`` (which returns the batch to yield,
    e.g. global arrays of the whole batch); ``idx`` is then ``None``.
    """
    idx, mask = pipeline.eval_batch_indices(self.size, batch_size)
    local = None if columns else jnp.arange(batch_size, dtype=jnp.int32)
    lo, hi = columns or (0, batch_size)

    def produce(i):
      rows = idx[i][lo:hi]
      x, y = self.gather(rows)
      self.eval_rows_read += len(rows)
      if columns:
        return place(x, y, mask[i][lo:hi])
      return jax.device_put((x, y, mask[i]))

    feeder = Prefetcher(range(len(idx)), produce, prefetch)
    try:
      for _ in range(len(idx)):
        _, (x, y, m) = feeder.get()
        yield x, y, local, m
    finally:
      feeder.close()


def _normalize(norm: pipeline.Normalizer, x: np.ndarray) -> np.ndarray:
  """``norm(x)`` in place on a fresh float32 ``x``: the same float32 operations as the
  in-memory path (so bitwise equal), without its two temporaries."""
  mean, std = norm.stats(np.float32)
  if mean.any():
    np.subtract(x, mean, out=x)
  if not (std == 1).all():
    np.divide(x, std, out=x)
  return x


class _RowsView:
  """``split.x`` / ``split.y`` of a :class:`StreamSplit`: indexing reads just those rows."""

  def __init__(self, split: StreamSplit, which: int, shape, dtype):
    self._split, self._which = split, which
    self.shape, self.dtype, self.ndim = tuple(shape), dtype, len(shape)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, key) -> jax.Array:
    if isinstance(key, slice):
      idx = np.arange(*key.indices(self.shape[0]))
    elif isinstance(key, (int, np.integer)):
      return self[np.asarray([key])][0]
    else:
      idx = np.asarray(key)
      if idx.dtype == bool:
        idx = np.flatnonzero(idx)
      idx = np.where(idx < 0, idx + self.shape[0], idx)
    return jnp.asarray(self._read(idx))

  def __array__(self, dtype=None, copy=None):
    del copy  # Always a new array: the whole split, read from disk.
    out = np.asarray(self._read(np.arange(self.shape[0])))
    return out if dtype is None else out.astype(dtype)

  def _read(self, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of this view: the targets read without the inputs."""
    return self._split.gather_y(idx) if self._which else self._split.gather(idx)[0]


_END, _ERROR = object(), object()


class Prefetcher:
  """Runs ``produce(key)`` for each of ``keys`` in a thread, ``depth`` results ahead.

  :meth:`get` returns ``(key, value)`` in order; an exception in the thread is raised
  there as one :class:`JdlError` (chained to the original). :meth:`close` stops the
  thread and joins it; it never blocks on a full queue.
  """

  def __init__(self, keys: Iterable, produce: Callable[[Any], Any], depth: int = 2):
    if depth < 1:
      raise JdlError(f"stream.prefetch must be >= 1, got {depth}")
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._work, args=(iter(keys), produce),
                                    name="jdl-prefetch", daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def _work(self, keys: Iterator, produce) -> None:
    try:
      for key in keys:
        if self._stop.is_set() or not self._put((key, produce(key))):
          return
      self._put((_END, None))
    except BaseException as e:  # noqa: BLE001  (handed to the consumer, never lost)
      self._put((_ERROR, e))

  def get(self) -> tuple[Any, Any]:
    while True:
      try:
        key, value = self._queue.get(timeout=0.5)
      except queue.Empty:
        if not self._thread.is_alive() and self._queue.empty():
          raise JdlError("the data prefetch thread stopped without a result") from None
        continue
      if key is _ERROR:
        e = value
        if isinstance(e, JdlError):
          raise JdlError(f"reading the streamed data failed: {e}") from e
        raise JdlError(f"reading the streamed data failed: {type(e).__name__}: {e}") from e
      if key is _END:
        raise JdlError("the data stream ended before the loop asked for its last block")
      return key, value

  @property
  def alive(self) -> bool:
    return self._thread.is_alive()

  def close(self, timeout: float = 30.0) -> None:
    self._stop.set()
    while True:  # Unblocks a producer waiting on a full queue, frees the buffers.
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout)


def block_schedule(start_step: int, *, chunk: int, steps_per_epoch: int,
                   num_epochs: int) -> Iterator[tuple[int, int, int]]:
  """The loop's ``(epoch, pos, num_steps)`` blocks from ``start_step`` to the end."""
  epoch, pos = divmod(start_step, steps_per_epoch)
  while epoch < num_epochs:
    while pos < steps_per_epoch:
      n = min(chunk - pos % chunk, steps_per_epoch - pos)
      yield epoch, pos, n
      pos += n
    epoch, pos = epoch + 1, 0


class StreamFeed:
  """The loop's training inputs, streamed: see :meth:`block`.

  Args:
    split: the train :class:`StreamSplit`.
    shuffle_key: the run's shuffle key (epoch orders as the in-memory feed).
    batch_size: the global batch size.
    chunk, steps_per_epoch, num_epochs: the loop's block schedule, prefetched ahead.
    prefetch: blocks buffered ahead of the loop.
    process_index, process_count: this process's contiguous slice of every batch
      (multi-host input: each process reads only ``batch_size / process_count`` rows).
    columns: ``(lo, hi)``, this process's columns of every batch, given directly
      (instead of ``process_index`` / ``process_count``).
    place: ``place(n, x, y)`` of a block's host rows ``[n * local_batch, ...]``, run
      in the background thread (default: ``jax.device_put((x, y))``).
  """

  def __init__(self, split: StreamSplit, shuffle_key: jax.Array, batch_size: int, *,
               chunk: int, steps_per_epoch: int, num_epochs: int, prefetch: int = 2,
               process_index: int = 0, process_count: int = 1,
               columns: tuple[int, int] | None = None, place: Callable | None = None):
    if batch_size % process_count:
      raise JdlError(f"batch_size ({batch_size}) must be divisible by the number of "
                     f"processes ({process_count})")
    if prefetch < 1:
      raise JdlError(f"stream.prefetch must be >= 1, got {prefetch}")
    self.split, self.shuffle_key, self.batch_size = split, shuffle_key, batch_size
    self.schedule = dict(chunk=chunk, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
    self.prefetch = prefetch
    if columns is None:
      local = batch_size // process_count
      columns = (process_index * local, (process_index + 1) * local)
    lo, hi = columns
    if not 0 <= lo < hi <= batch_size:
      raise JdlError(f"columns {columns} are not a slice of a batch of {batch_size}")
    self.columns = (lo, hi)
    self.local_batch = hi - lo
    self._lo = lo
    self._place = place or (lambda n, x, y: jax.device_put((x, y)))
    self.rows_read = 0  # Rows of training blocks read (by the background thread).
    self._perm: tuple[int, np.ndarray] | None = None
    self._local_idx: dict[int, jax.Array] = {}
    self._feeder: Prefetcher | None = None

  def block_rows(self, epoch: int, pos: int, n: int) -> np.ndarray:
    """Split indices ``[n, local_batch]`` of steps ``pos..pos+n-1`` of ``epoch``.

    This process's contiguous slice of each global batch of the in-memory order.
    """
    if self._perm is None or self._perm[0] != epoch:
      perm = pipeline.epoch_permutation(self.shuffle_key, epoch, self.split.size)
      self._perm = (epoch, np.asarray(perm))
    bs = self.batch_size
    rows = self._perm[1][pos * bs:(pos + n) * bs].reshape(n, bs)
    return rows[:, self._lo:self._lo + self.local_batch]

  def fetch(self, epoch: int, pos: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Host inputs and targets of a block: ``[n * local_batch, ...]``."""
    rows = self.block_rows(epoch, pos, n).reshape(-1)
    self.rows_read += len(rows)
    return self.split.gather(rows)

  def shapes(self, n: int):
    """Abstract ``(x, y, idx)`` of an ``n``-step block, to compile it ahead of time."""
    m, s = n * self.local_batch, self.split
    return (jax.ShapeDtypeStruct((m, *s.x_shape[1:]), jnp.float32),
            jax.ShapeDtypeStruct((m, *s.y_shape[1:]), s.y_dtype),
            jax.ShapeDtypeStruct((n, self.local_batch), jnp.int32))

  def _start(self, epoch: int, pos: int) -> None:
    self.close()
    spe = self.schedule["steps_per_epoch"]
    keys = block_schedule(epoch * spe + pos, **self.schedule)
    self._feeder = Prefetcher(keys, lambda k: self._place(k[2], *self.fetch(*k)), self.prefetch)

  def block(self, epoch: int, pos: int, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(x, y, idx)`` for ``run_block``: the block's rows and ``idx`` into them."""
    if self._feeder is None:
      self._start(epoch, pos)
    key, (x, y) = self._feeder.get()
    if key != (epoch, pos, n):  # Off the schedule (not the loop's): restart from here.
      self._start(epoch, pos)
      key, (x, y) = self._feeder.get()
      if key != (epoch, pos, n):  # A length the schedule has no block of (a profile's).
        self.close()
        x, y = self._place(n, *self.fetch(epoch, pos, n))
    if n not in self._local_idx:
      self._local_idx[n] = jnp.arange(n * self.local_batch, dtype=jnp.int32).reshape(n, -1)
    return x, y, self._local_idx[n]

  def close(self) -> None:
    if self._feeder is not None:
      self._feeder.close()
      self._feeder = None


def make_feed(split, shuffle_key, batch_size: int, *, chunk: int, steps_per_epoch: int,
              num_epochs: int, prefetch: int = 2, process_index: int = 0,
              process_count: int = 1, columns: tuple[int, int] | None = None,
              place: Callable | None = None):
  """The loop's training feed: :class:`StreamFeed` for a streamed split, else in-memory.

  ``process_index`` / ``process_count`` or ``columns``, and ``place``: a streamed
  feed's slice of each global batch (multi-host input) and how its rows are placed
  (see :class:`StreamFeed`); the in-memory feed always serves whole batches.
  """
  if prefetch < 1:
    raise JdlError(f"stream.prefetch must be >= 1, got {prefetch}")
  if isinstance(split, StreamSplit):
    return StreamFeed(split, shuffle_key, batch_size, chunk=chunk,
                      steps_per_epoch=steps_per_epoch, num_epochs=num_epochs, prefetch=prefetch,
                      process_index=process_index, process_count=process_count,
                      columns=columns, place=place)
  return pipeline.MemoryFeed(split, shuffle_key, batch_size)


def build_splits(dataset: npy_dir.StreamDataset, config):
  """Train, val and test :class:`StreamSplit` s and the normaliser, as the in-memory path.

  ``validation_split`` holds out the same rows ``pipeline.split_validation`` would;
  the normaliser's statistics come from a chunked pass over the train rows.

  Returns:
    ``(train, val, test, normalizer)``; a missing split is ``None``.
  """
  if tuple(config.classes) or int(config.examples_per_class):
    raise JdlError("classes and examples_per_class need the data in memory; they are not "
                   "supported with dataset='npy_dir'")
  if config.task == "vae" and config.generative.binarize == "dynamic":
    raise JdlError("a VAE with generative.binarize='dynamic' binarizes whole val/test splits "
                   "in memory; with dataset='npy_dir' use binarize='threshold' or 'none'")
  d = dataset
  if d.x_val is not None:
    train_rows, val = None, (d.x_val, d.y_val, None)
  else:
    n = len(d.x_train)
    rows = np.arange(n)
    train_rows, _, val_rows, _ = pipeline.split_validation(
        rows, rows, float(config.validation_split), int(config.seed))
    train_rows = None if len(train_rows) == n else train_rows
    val = (d.x_train, d.y_train, val_rows) if len(val_rows) else None
  norm = npy_dir.fit_normalizer(d.x_train, train_rows, config.normalize)
  kwargs = dict(regression=d.task == "regression",
                target_is_input=config.task == "autoencoder")
  train = StreamSplit(d.x_train, d.y_train, train_rows, norm, **kwargs)
  val = StreamSplit(*val, norm, **kwargs) if val else None
  test = StreamSplit(d.x_test, d.y_test, None, norm, **kwargs) if d.x_test is not None else None
  return train, val, test, norm
