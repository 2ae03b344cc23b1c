"""dataset='npy_dir': memory-mapped sources, the prefetch thread, exact equality and resume."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jdl
from jdl import cli
from jdl.data import npy_dir
from jdl.data import pipeline
from jdl.data import sources
from jdl.data import stream
from jdl.errors import JdlError
from jdl.train import callbacks as cb
from jdl.train import run_data

from conftest import Crash, make_config


def _digits():
  from sklearn import datasets
  b = datasets.load_digits()
  return (b.images[..., None] / 16.0).astype(np.float32), b.target.astype(np.int64)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  """Digits as npy files: x_train in three uneven shards, y_train whole, a test split."""
  d = tmp_path_factory.mktemp("npy")
  x, y = _digits()
  for i, (lo, hi) in enumerate([(0, 400), (400, 1000), (1000, 1500)]):
    np.save(d / f"x_train.{i}.npy", x[lo:hi])
  np.save(d / "y_train.npy", y[:1500])
  np.save(d / "x_test.npy", x[1500:])
  np.save(d / "y_test.npy", y[1500:])
  return d


def _in_memory(x, y):
  return sources.Dataset(x_train=x[:1500], y_train=y[:1500].astype(np.int32), x_test=x[1500:],
                         y_test=y[1500:].astype(np.int32), num_classes=10,
                         task="classification", name="digits", input_shape=(8, 8, 1))


def _leaves_equal(a, b) -> bool:
  return all(bool((np.asarray(u) == np.asarray(v)).all())
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _prefetch_threads() -> list[threading.Thread]:
  return [t for t in threading.enumerate() if t.name == "jdl-prefetch" and t.is_alive()]


def _streamed(digits_dir, **kw):
  return make_config(dataset="npy_dir", data_dir=str(digits_dir), **kw)


# ------------------------------------------------------------- equality
# 1350 train rows (validation_split 0.1 holds out the same 150 in both paths), 21 steps
# an epoch in blocks of 4: a remainder block of 1, and the permutation's remainder rotating.
KW = dict(num_epochs=2, scan_chunk=4, checkpoint_every_steps=8)


@pytest.fixture(scope="module")
def in_memory_run():
  return jdl.fit(make_config(**KW), dataset=_in_memory(*_digits()), quiet=True)


def _assert_same_run(a, b):
  assert _leaves_equal(a.state.params, b.state.params)
  assert _leaves_equal(a.state.opt_state, b.state.opt_state)
  assert a.history == b.history  # Train and val metrics of every epoch.
  assert a.test_metrics == b.test_metrics


@pytest.mark.full_opt
def test_streamed_training_is_bitwise_the_in_memory_training(digits_dir, in_memory_run):
  streamed = jdl.fit(_streamed(digits_dir, **KW), quiet=True)
  _assert_same_run(in_memory_run, streamed)
  mem_norm, norm = in_memory_run.trainer.normalizer, streamed.trainer.normalizer
  for a, b in zip(mem_norm.stats(np.float32), norm.stats(np.float32)):  # Those applied.
    np.testing.assert_array_equal(a, b)
  assert not _prefetch_threads()


@pytest.mark.full_opt
def test_streamed_blocks_in_static_loops_are_bitwise_the_in_memory_training(
    digits_dir, in_memory_run, monkeypatch):
  # A GPU's blocks loop a known number of times (strategy.static_loops). Streamed
  # blocks are compiled at their own lengths, 4 and a remainder of 1 (which
  # loop_steps pads to 2 rows): the same bits as the in-memory run's while loop.
  from jdl.train import strategy
  monkeypatch.setattr(strategy, "static_loops", lambda backend=None: True)
  streamed = jdl.fit(_streamed(digits_dir, **KW), quiet=True)
  assert streamed.trainer.static_loops and not streamed.trainer.padded_blocks
  _assert_same_run(in_memory_run, streamed)


def _unix_times():
  """A feature with a large offset and a small spread (a Unix time in seconds): cast
  to float32 before normalising, 270 distinct times became 5 or 6 distinct values,
  and a float32 mean left the train split's mean 0.2-0.3 std off 0."""
  rng = np.random.default_rng(0)
  t = 1.7e9 + np.sort(rng.uniform(0, 600, 300))
  x = np.stack([t, rng.normal(size=300)], axis=1)
  return x, (x[:, 1] > 0).astype(np.int32)


def _save_splits(root, x, y, n_train: int = 270):
  """``root/data.npz`` and the same splits as ``.npy`` files in ``root/npy``, returned."""
  splits = dict(x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
  np.savez(root / "data.npz", x=splits["x_train"], y=splits["y_train"], x_test=splits["x_test"],
           y_test=splits["y_test"])
  npy = root / "npy"
  npy.mkdir()
  for name, a in splits.items():
    np.save(npy / f"{name}.npy", a)
  return npy


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_float64_inputs_keep_their_precision_on_every_path(tmp_path, byte_order):
  # Big-endian float64 ('>f8', e.g. written on another machine) was not "float64" to
  # the check (dtype == np.float64) and was normalised in float32: 6 distinct times.
  x, y = _unix_times()
  x = x.astype(f"{byte_order}f8")
  ref_mean, ref_std = x[:270].mean(0), x[:270].std(0)  # numpy, in float64.
  ref = ((x - ref_mean) / ref_std).astype(np.float32)
  npy = _save_splits(tmp_path, x, y)
  kw = dict(normalize="featurewise", validation_split=0.0)
  ds = sources.Dataset(x[:270], y[:270], x[270:], y[270:], 2, "classification", "t", (2,))
  for data in (run_data.load_data(make_config(**kw), ds),
               run_data.load_data(make_config(dataset="npz", data_dir=str(tmp_path), **kw)),
               run_data.load_data(make_config(dataset="npy_dir", data_dir=str(npy), **kw))):
    train, test = data.train, data.test
    got = np.asarray(train.x[np.arange(270)])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref[:270], atol=2e-6)
    np.testing.assert_allclose(np.asarray(test.x[np.arange(30)]), ref[270:], atol=2e-6)


def test_int64_inputs_are_normalised_in_float64_in_memory_as_streamed(tmp_path):
  # An npz file's int64 Unix times were cast to float32 before normalising (2 distinct
  # values of 100 left), while the same file streamed from npy_dir kept them.
  rng = np.random.default_rng(0)
  x = np.stack([1_700_000_000 + rng.integers(0, 100, 300), rng.integers(-9, 9, 300)], axis=1)
  y = (x[:, 1] > 0).astype(np.int32)
  assert x.dtype == np.int64
  ref = ((x - x[:270].mean(0)) / x[:270].std(0)).astype(np.float32)  # numpy, float64.
  npy = _save_splits(tmp_path, x, y)
  kw = dict(normalize="featurewise", validation_split=0.0)
  runs = [run_data.load_data(make_config(dataset=name, data_dir=str(path), **kw))
          for name, path in (("npz", tmp_path), ("npy_dir", npy))]
  for data in runs:
    got = np.asarray(data.train.x[np.arange(270)])
    np.testing.assert_allclose(got, ref[:270], atol=2e-6)
    assert len(np.unique(got[:, 0])) == len(np.unique(x[:270, 0]))
  np.testing.assert_array_equal(np.asarray(runs[0].train.x[np.arange(270)]),
                                np.asarray(runs[1].train.x[np.arange(270)]))
  # Runs of such a file recorded the fingerprint of its float32 cast: they still resume.
  then = sources.load_dataset("npz", data_dir=tmp_path)
  then = dataclasses.replace(then, x_train=x[:270].astype(np.float32),
                             x_test=x[270:].astype(np.float32))
  assert runs[0].source["float32_fingerprint"] == sources.fingerprint(then)


def test_predict_and_explain_normalise_float64_inputs_as_the_splits_were():
  x, y = _unix_times()
  ds = sources.Dataset(x[:270], y[:270], x[270:], y[270:], 2, "classification", "t", (2,))
  run = jdl.fit(make_config(normalize="featurewise", validation_split=0.0, num_epochs=1,
                            model__hidden=(8,)), dataset=ds, quiet=True)
  trainer = run.trainer
  want = trainer.predict_normalized(trainer.data.test.x)
  np.testing.assert_array_equal(trainer.predict(x[270:]), want)
  from jdl import explain
  np.testing.assert_array_equal(explain.from_run(run).normalize(x[270:]),
                                np.asarray(trainer.data.test.x))


@pytest.mark.full_opt
def test_step_mode_global_normalisation_and_early_stopping_match_too(digits_dir):
  kw = dict(num_epochs=6, epoch_mode="step", normalize="global", early_stopping__enabled=True,
            early_stopping__patience=0, early_stopping__min_delta=10.0,
            diagnostics__every_steps=7)  # The diagnostic block takes the feed's inputs too.
  mem = jdl.fit(make_config(**kw), dataset=_in_memory(*_digits()), quiet=True)
  streamed = jdl.fit(_streamed(digits_dir, **kw), quiet=True)
  _assert_same_run(mem, streamed)
  assert len(streamed.history["loss"]) == 2  # Stopped early: the thread ends too.
  assert not _prefetch_threads()


class _Signal(cb.Callback):
  """Sends this process ``sig`` once training reaches ``at_step`` (the loop's stop path)."""

  def __init__(self, at_step, sig=signal.SIGTERM):
    self.at_step, self.sig, self.sent = at_step, sig, False

  def on_steps_end(self, trainer, step, num_steps):
    if step >= self.at_step and not self.sent:
      self.sent = True
      os.kill(os.getpid(), self.sig)


@pytest.mark.full_opt
def test_interrupted_streamed_runs_resume_bitwise_exactly(digits_dir, in_memory_run, tmp_path):
  # SIGTERM in epoch 1: the block in flight finishes, a checkpoint, a clean return.
  stopped = jdl.fit(_streamed(digits_dir, **KW), tmp_path, quiet=True,
                    callbacks=[_Signal(at_step=13)])
  assert stopped.trainer.preempted == "SIGTERM" and stopped.trainer.step == 16
  assert not _prefetch_threads()
  # Then a crash (an exception) at step 37 of epoch 2, past the step-29 checkpoint.
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(_streamed(digits_dir, **KW), tmp_path, quiet=True, callbacks=[Crash(at_step=37)])
  assert not _prefetch_threads()
  # Resumed from step 29 (epoch 2, batch 8): the uninterrupted run, bit for bit.
  resumed = jdl.fit(_streamed(digits_dir, **KW), tmp_path, quiet=True)
  _assert_same_run(in_memory_run, resumed)


# ------------------------------------------------------------- the thread
def test_an_error_in_the_prefetch_thread_is_one_clear_error_in_the_caller():
  def produce(k):
    if k == 3:
      raise OSError("disk on fire")
    return k

  feeder = stream.Prefetcher(range(10), produce, depth=2)
  assert [feeder.get()[1] for _ in range(3)] == [0, 1, 2]
  with pytest.raises(JdlError, match="reading the streamed data failed: OSError: disk on fire"):
    feeder.get()
  feeder.close()
  assert not feeder.alive


def test_close_stops_a_producer_blocked_on_a_full_queue():
  feeder = stream.Prefetcher(iter(int, 1), lambda k: np.zeros(1000), depth=1)  # Endless.
  feeder.get()
  time.sleep(0.2)  # The producer now waits on the full queue.
  t0 = time.perf_counter()
  feeder.close()
  assert not feeder.alive and time.perf_counter() - t0 < 2


def test_process_slices_partition_every_global_batch(digits_dir):
  ds = npy_dir.open_dir(digits_dir)
  split = stream.StreamSplit(ds.x_train, ds.y_train, None, pipeline.Normalizer.identity((8, 8, 1)),
                             regression=False)
  key = jax.random.key(3)
  sched = dict(chunk=4, steps_per_epoch=1500 // 64, num_epochs=2)
  whole = stream.StreamFeed(split, key, 64, **sched)
  parts = [stream.StreamFeed(split, key, 64, process_index=p, process_count=4, **sched)
           for p in range(4)]
  for epoch, pos, n in [(0, 0, 4), (1, 20, 3)]:
    rows = whole.block_rows(epoch, pos, n)
    np.testing.assert_array_equal(
        np.concatenate([f.block_rows(epoch, pos, n) for f in parts], axis=1), rows)
    x, y = whole.fetch(epoch, pos, n)
    xs, ys = zip(*(f.fetch(epoch, pos, n) for f in parts))
    np.testing.assert_array_equal(
        np.concatenate([a.reshape(n, 16, 8, 8, 1) for a in xs], axis=1).reshape(x.shape), x)
    np.testing.assert_array_equal(
        np.concatenate([a.reshape(n, 16) for a in ys], axis=1).reshape(-1), y)
  with pytest.raises(JdlError, match=r"batch_size \(64\) must be divisible by the number of "
                                     r"processes \(3\)"):
    stream.StreamFeed(split, key, 64, process_count=3, **sched)


def test_column_feeds_and_eval_batches_cover_each_batch_once(digits_dir):
  """``columns`` (what a process's devices hold) and ``place`` (the thread's placement):
  two halves read every row of every block and padded evaluation batch exactly once."""
  ds = npy_dir.open_dir(digits_dir)
  split = stream.StreamSplit(ds.x_test, ds.y_test, None, pipeline.Normalizer.identity((8, 8, 1)),
                             regression=False)
  key, sched = jax.random.key(3), dict(chunk=2, steps_per_epoch=297 // 32, num_epochs=1)
  placed = []
  halves = [stream.StreamFeed(split, key, 32, columns=c, place=lambda n, x, y: placed.append(n)
                              or (x.reshape(n, 16, -1), y.reshape(n, 16)), **sched)
            for c in ((0, 16), (16, 32))]
  assert [f.local_batch for f in halves] == [16, 16]
  whole = stream.StreamFeed(split, key, 32, **sched)
  try:
    x, y, _ = whole.block(0, 2, 2)
    parts = [f.block(0, 2, 2)[:2] for f in halves]
  finally:
    for f in (whole, *halves):
      f.close()
  assert placed[:1] == [2] and [f.rows_read > 0 for f in halves] == [True, True]
  np.testing.assert_array_equal(np.concatenate([p[0] for p in parts], 1).reshape(x.shape), x)
  np.testing.assert_array_equal(np.concatenate([p[1] for p in parts], 1).reshape(-1), y)
  with pytest.raises(JdlError, match=r"columns \(16, 40\) are not a slice of a batch of 32"):
    stream.StreamFeed(split, key, 32, columns=(16, 40), **sched)

  ref = [(np.asarray(x), np.asarray(y), np.asarray(m)) for x, y, _, m in split.eval_batches(128)]
  before = split.eval_rows_read
  halves = [list(split.eval_batches(128, columns=c, place=lambda *a: a))
            for c in ((0, 64), (64, 128))]
  assert split.eval_rows_read - before == 384  # 297 padded to 3 x 128, each row once.
  for b, (x, y, m) in enumerate(ref):
    assert halves[0][b][2] is None  # No indices: the rows come pre-gathered.
    for k, whole_part in ((0, x), (1, y), (3, m)):
      np.testing.assert_array_equal(np.concatenate([h[b][k] for h in halves]), whole_part)


# ------------------------------------------------------------- sources
def test_a_block_of_a_length_off_the_schedule_holds_that_many_steps(digits_dir):
  # jdl profile's block(0, 0, steps): the restarted schedule's block of `chunk` steps
  # came back instead (40 steps run and timed as 2 on several devices).
  ds = npy_dir.open_dir(digits_dir)
  split = stream.StreamSplit(ds.x_train, ds.y_train, None, pipeline.Normalizer.identity((8, 8, 1)),
                             regression=False)
  key = jax.random.key(3)
  feed = stream.StreamFeed(split, key, 32, chunk=8, steps_per_epoch=1500 // 32, num_epochs=1)
  try:
    for pos, n in ((0, 2), (3, 5), (0, 8)):
      x, y, idx = feed.block(0, pos, n)
      assert x.shape[0] == n * 32 and idx.shape == (n, 32)
      want_x, want_y = feed.fetch(0, pos, n)
      np.testing.assert_array_equal(np.asarray(x)[np.asarray(idx).reshape(-1)], want_x)
      np.testing.assert_array_equal(np.asarray(y)[np.asarray(idx).reshape(-1)], want_y)
  finally:
    feed.close()


def test_shards_read_as_one_array_in_any_order(digits_dir):
  x, y = _digits()
  rows = npy_dir.open_dir(digits_dir).x_train
  assert rows.shape == (1500, 8, 8, 1) and len(rows.paths) == 3
  idx = np.random.default_rng(0).integers(0, 1500, 300)  # Unsorted, with repeats.
  np.testing.assert_array_equal(rows.take(idx), x[idx])


def test_short_reads_are_continued_and_only_a_read_of_nothing_is_truncation(
    digits_dir, monkeypatch):
  # Linux reads at most 2,147,479,552 bytes a call: a run of rows over 2 GiB in an
  # intact file was refused as "ended early". Here every read stops after 100 bytes.
  x, _ = _digits()
  rows = npy_dir.open_dir(digits_dir).x_train
  preadv, calls = os.preadv, []

  def short(fd, buffers, offset):
    calls.append(offset)
    return preadv(fd, [memoryview(buffers[0]).cast("B")[:100]], offset)

  monkeypatch.setattr(npy_dir.os, "preadv", short)
  np.testing.assert_array_equal(rows.slice(0, 1000), x[:1000])
  assert len(calls) >= x[:1000].nbytes // 100
  idx = np.random.default_rng(0).integers(0, 1500, 50)
  np.testing.assert_array_equal(rows.take(idx), x[idx])
  monkeypatch.setattr(npy_dir.os, "preadv", lambda fd, buffers, offset: 0)
  with pytest.raises(JdlError, match=r"x_train\.0\.npy ended early: 0 of \d+ bytes at row 0"):
    rows.slice(0, 10)


def test_a_streamed_run_of_float_inputs_refuses_integer_inputs_to_predict(digits_dir):
  # As a run of the same data in memory does: uint8 pixels taken 1:1 would be misread.
  trainer = jdl.Trainer(_streamed(digits_dir, num_epochs=1), quiet=True)
  assert trainer.data.float_inputs
  with pytest.raises(JdlError, match=r"predict got uint8 inputs, but dataset .* gives float"):
    trainer.predict(np.ones((2, 8, 8, 1), np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["featurewise", "featurewise_center", "global"])
def test_chunked_statistics_equal_numpy(tmp_path, monkeypatch, mode, dtype):
  monkeypatch.setattr(npy_dir, "CHUNK_BYTES", 8 * 50 * 12)  # 12 rows a chunk.
  x = np.random.default_rng(0).normal(3.0, 2.0, (203, 5, 10)).astype(dtype)
  x[:, 0, 0] = 7.0  # A constant feature: std 1, as in memory.
  if dtype == np.float64:  # A large offset and a small scale: float32 would lose both.
    x[:, 1, 0] += 1.7e9
    x[:, 1, 1] *= 1e-7
  np.save(tmp_path / "x.npy", x)
  src = npy_dir.NpyRows([tmp_path / "x.npy"])
  rows = np.random.default_rng(1).permutation(203)[:150]
  ref = x[rows].astype(np.float64)  # numpy's statistics of the values as stored.
  if mode == "global":
    mean, std = np.full(x.shape[1:], ref.mean()), np.full(x.shape[1:], ref.std())
  else:
    mean, std = ref.mean(0), ref.std(0)
    std[0, 0] = 1.0
    if mode == "featurewise_center":
      std = np.ones_like(std)
  for got in (npy_dir.fit_normalizer(src, rows, mode),
              {"featurewise": pipeline.Normalizer.fit, "global": pipeline.Normalizer.fit_global,
               "featurewise_center": pipeline.Normalizer.fit_center}[mode](x[rows])):
    np.testing.assert_allclose(got.mean, mean, rtol=1e-12, atol=0)
    np.testing.assert_allclose(got.std, std, rtol=1e-9, atol=0)


def test_inputs_are_normalised_in_the_precision_of_the_train_split():
  # A run trained on float32 data normalises float64 inputs (images / 16.0 from
  # predict) in float32, as its splits were: bitwise the test split's values.
  x32 = _digits()[0].reshape(-1, 64)
  norm = pipeline.Normalizer.fit(x32)
  assert not norm.float64
  np.testing.assert_array_equal(norm(x32.astype(np.float64)), norm(x32))
  # One trained on float64 (or int64) data normalises in float64, whatever is given.
  t = 1.7e9 + np.arange(100.0)[:, None]
  for train in (t, t.astype(np.int64)):
    wide = pipeline.Normalizer.fit(train)
    assert wide.float64
    np.testing.assert_allclose(wide(t), (t - t.mean()) / t.std(), atol=1e-6)


def test_small_scale_features_are_scaled_and_constant_ones_centred():
  # scikit-learn's StandardScaler scales a feature of std 1e-7 to unit variance; an
  # absolute threshold (std < 1e-6: "constant") left it 1e7 times too small.
  rng = np.random.default_rng(0)
  x = np.stack([rng.normal(size=500), 1e-7 * rng.normal(size=500),
                np.full(500, 0.3)], axis=1).astype(np.float32)
  out = pipeline.Normalizer.fit(x)(x).astype(np.float64)
  np.testing.assert_allclose(out[:, :2].std(0), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out[:, 2], 0.0, atol=1e-7)  # Centred, not blown up.


def _write(d: Path, **arrays):
  d.mkdir()
  for name, a in arrays.items():
    if isinstance(a, bytes):
      (d / f"{name}.npy").write_bytes(a)
    else:
      np.save(d / f"{name}.npy", a, allow_pickle=True)
  return d


X, Y = np.zeros((8, 3), np.float32), np.arange(8) % 2
BAD = {
    "no x_train": (dict(x_test=X, y_test=Y), "holds no x_train.npy and y_train.npy"),
    "x without y": (dict(x_train=X), "has x_train but no y_train.npy"),
    "pickled": (dict(x_train=np.array([{"a": 1}] * 8, object), y_train=Y),
                r"is corrupt or not a \.npy file of numbers \(.*Python objects"),
    # numpy's own text for a file without the .npy header said to unpickle it.
    "a pickle": (dict(x_train=b"\x80\x04K\x01.", y_train=Y),
                 r"x_train.npy: it is corrupt or not a \.npy file of numbers \(no \.npy "
                 r"header\)$"),
    "a CSV": (dict(x_train=b"1,2,3\n4,5,6\n", y_train=Y), r"\(no \.npy header\)$"),
    "corrupt": (dict(x_train=b"\x93NUMPY garbage", y_train=Y), "is corrupt or not a .npy"),
    "lengths": (dict(x_train=X, y_train=Y[:5]), "x_train.npy has 8 examples but"),
    "1-D x": (dict(x_train=X[:, 0], y_train=Y), "x needs one row per example"),
    "test shape": (dict(x_train=X, y_train=Y, x_test=X[:, :2], y_test=Y),
                   r"has examples of shape \(2,\) but x_train has \(3,\)"),
    "NaN": (dict(x_train=np.where(np.eye(8, 3) > 0, np.nan, X), y_train=Y),
            r"x_train .* contains NaN or Inf values \(as float32, as jdl reads them\) in 3 of "
            "8 examples"),
    "beyond float32": (dict(x_train=np.where(np.eye(8, 3) > 0, 1e39, X.astype(np.float64)),
                            y_train=Y), "in 3 of 8 examples"),
    "negative label": (dict(x_train=X, y_train=Y - 1), r"labels must be in \[0, 2\*\*31 - 1\)"),
    "one-hot": (dict(x_train=X, y_train=np.eye(8, 2, dtype=np.int64)), "not one-hot"),
    "a stray label": (dict(x_train=X, y_train=np.where(np.arange(8) == 3, 65535, Y)),
                      "the labels run to 1 and then jump to 65535"),
    "strings": (dict(x_train=X, y_train=np.array(["a"] * 8)), "non-numeric dtype"),
    "regression widths": (dict(x_train=X, y_train=X[:, :1] + 0.5, x_test=X, y_test=X + 0.5),
                          r"y_test.npy has targets of shape \(3,\) but y_train has \(1,\)"),
    "unnumbered shard": ({"x_train.0": X, "x_train.1": X, "x_train.old": X, "y_train.0": Y,
                          "y_train.1": Y}, "x_train.old.npy look like shards of x_train"),
    # A gap, and a leading zero (x_train.01 read beside x_train.1: rows twice).
    "shard gap": ({"x_train.0": X, "x_train.2": X, "y_train.0": Y, "y_train.2": Y},
                  "shards of x_train must be numbered from x_train.0.npy on without gaps or "
                  "leading zeros; found x_train.0.npy, x_train.2.npy"),
    "shard leading zero": ({"x_train.0": X, "x_train.1": X, "x_train.01": X, "y_train": Y},
                           "found x_train.0.npy, x_train.01.npy, x_train.1.npy"),
    "empty examples": (dict(x_train=np.zeros((8, 0), np.float32), y_train=Y),
                       r"x_train.npy has shape \(8, 0\): each example of it is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_are_one_clear_error(tmp_path, case):
  arrays, message = BAD[case]
  d = _write(tmp_path / "d", **arrays)
  with pytest.raises(JdlError, match=message):
    npy_dir.open_dir(d)


def test_a_single_class_is_refused_as_in_memory(tmp_path):
  # The streamed path returned before the in-memory check and trained at loss 0.
  for dataset, data_dir in (("npy_dir", _write(tmp_path / "d", x_train=X, y_train=0 * Y)),
                            ("npz", tmp_path / "d.npz")):
    if dataset == "npz":
      np.savez(data_dir, x=X, y=0 * Y)
    with pytest.raises(JdlError, match="classification needs at least 2 classes; .* has 1$"):
      run_data.load_data(make_config(dataset=dataset, data_dir=str(data_dir)))


def test_shards_must_agree_and_the_cli_exits_2_touching_nothing(tmp_path, capsys):
  d = _write(tmp_path / "d", **{"x_train.0": X, "x_train.1": X[:, :2], "y_train": Y})
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("x")
  before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in workdir.rglob("*")}
  assert cli.main(["train", "--workdir", str(workdir), "--config.dataset=npy_dir",
                   f"--config.data_dir={d}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "shards must match" in err[0], err
  assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in workdir.rglob("*")} == before


def test_slices_cross_shard_boundaries(digits_dir):
  x, _ = _digits()
  rows = npy_dir.open_dir(digits_dir).x_train
  for lo, hi in [(0, 1500), (350, 1020), (400, 1000), (999, 1001), (5, 5)]:
    np.testing.assert_array_equal(rows.slice(lo, hi), x[lo:hi])


@pytest.mark.full_opt
def test_streamed_regression_and_lr_finder_match_in_memory(tmp_path):
  from jdl import lr_finder
  ds = sources.load_dataset("linear", n_samples=300)
  d = _write(tmp_path / "lin", x_train=ds.x_train, y_train=ds.y_train.astype(np.float64),
             x_test=ds.x_test, y_test=ds.y_test.astype(np.float64))
  kw = dict(task="regression", loss="mse", metrics=("mse", "r2"), batch_size=32, num_epochs=2,
            epoch_mode="step")
  mem = jdl.fit(make_config(dataset="linear", n_samples=300, **kw), quiet=True)
  streamed = jdl.fit(make_config(dataset="npy_dir", data_dir=str(d), **kw), quiet=True)
  assert streamed.trainer.data.task == "regression"
  _assert_same_run(mem, streamed)
  c = make_config(dataset="npy_dir", data_dir=str(d), **kw)
  a = lr_finder.find_lr(make_config(dataset="linear", n_samples=300, **kw), steps=12)
  b = lr_finder.find_lr(c, steps=12)
  np.testing.assert_array_equal(a.losses, b.losses)


def test_split_views_read_only_the_rows_asked_for(digits_dir, monkeypatch):
  x, y = _digits()
  ds = npy_dir.open_dir(digits_dir)
  norm = pipeline.Normalizer.fit(x[:1500])
  split = stream.StreamSplit(ds.x_test, ds.y_test, None, norm, regression=False)
  assert split.x.shape == (297, 8, 8, 1) and split.y.shape == (297,) and len(split.x) == 297
  read, take = [], npy_dir.NpyRows.take
  monkeypatch.setattr(npy_dir.NpyRows, "take",
                      lambda self, rows: read.append(len(rows)) or take(self, rows))
  np.testing.assert_array_equal(np.asarray(split.x[5:9]), norm(x[1505:1509]))
  np.testing.assert_array_equal(np.asarray(split.y[[3, -1]]), y[[1503, -1]])
  assert max(read) <= 4, read  # Never the whole split (297 rows) for a few of them.
  # The targets alone read no inputs (they read and normalised every x row).
  files = []
  monkeypatch.setattr(npy_dir.NpyRows, "take",
                      lambda self, rows: files.append(self.paths[0].name) or take(self, rows))
  np.testing.assert_array_equal(np.asarray(split.y), y[1500:])
  assert files == ["y_test.npy"], files
  monkeypatch.setattr(npy_dir.NpyRows, "take",
                      lambda self, rows: read.append(len(rows)) or take(self, rows))
  np.testing.assert_array_equal(np.asarray(split.x), norm(x[1500:]))  # Whole, on request.
  batches = list(split.eval_batches(128))
  assert [int(np.asarray(m).sum()) for *_, m in batches] == [128, 128, 41]
  np.testing.assert_array_equal(np.asarray(batches[2][1])[41:], y[1500])  # Padding: row 0.


def test_a_file_truncated_during_the_run_is_one_clear_error(tmp_path):
  x, y = _digits()
  d = _write(tmp_path / "d", x_train=x[:256], y_train=y[:256])
  ds = npy_dir.open_dir(d)
  split = stream.StreamSplit(ds.x_train, ds.y_train, None, pipeline.Normalizer.identity((8, 8, 1)),
                             regression=False)
  feed = stream.StreamFeed(split, jax.random.key(0), 32, chunk=2, steps_per_epoch=8,
                           num_epochs=1, prefetch=1)
  feed.block(0, 0, 2)
  with open(d / "x_train.npy", "r+b") as f:
    f.truncate(2000)
  with pytest.raises(JdlError, match=r"reading the streamed data failed: .*x_train.npy ended "
                                     r"early: .* was it changed or truncated during the run\?"):
    for pos in range(2, 8, 2):
      feed.block(0, pos, 2)
  feed.close()
  assert not _prefetch_threads()


def test_build_splits_holds_out_the_in_memory_rows_or_uses_x_val(digits_dir, tmp_path):
  x, y = _digits()
  ds = npy_dir.open_dir(digits_dir)
  train, val, test, _ = stream.build_splits(ds, make_config(normalize="none"))
  x_tr, y_tr, x_val, y_val = pipeline.split_validation(x[:1500], y[:1500], 0.1, 0)
  np.testing.assert_array_equal(np.asarray(train.x), x_tr)
  np.testing.assert_array_equal(np.asarray(val.y), y_val)
  assert test.size == 297
  d = _write(tmp_path / "v", x_train=x[:100], y_train=y[:100], x_val=x[100:130],
             y_val=y[100:130])
  train, val, test, _ = stream.build_splits(npy_dir.open_dir(d), make_config())
  assert (train.size, val.size, test) == (100, 30, None)
  with pytest.raises(JdlError, match="classes and examples_per_class need the data in memory"):
    stream.build_splits(ds, make_config(classes=(0, 1)))
  with pytest.raises(JdlError, match="binarize='dynamic'"):
    stream.build_splits(ds, make_config(task="vae"))


def test_runs_of_a_float64_npz_from_before_it_was_kept_float64_still_resume(tmp_path):
  # Until 2026-11-30 an npz source cast float64 inputs to float32, and its runs'
  # checkpoints recorded that fingerprint: resuming them must not say "other data".
  from jdl.train import resume
  x, y = _unix_times()
  np.savez(tmp_path / "data.npz", x=x[:270], y=y[:270], x_test=x[270:], y_test=y[270:])
  config = make_config(dataset="npz", data_dir=str(tmp_path), validation_split=0.0)
  source = run_data.load_data(config).source
  then = sources.load_dataset("npz", data_dir=tmp_path)
  then = dataclasses.replace(then, x_train=then.x_train.astype(np.float32),
                             x_test=then.x_test.astype(np.float32))
  assert source["float32_fingerprint"] == sources.fingerprint(then) != source["fingerprint"]
  model = {"given": False, "class": "MLP"}
  for recorded in (source["fingerprint"], source["float32_fingerprint"]):
    resume.check_provenance({"data": {"fingerprint": recorded, "given": False}}, 1, tmp_path,
                            source, model, call="fit")
  with pytest.raises(resume.ResumeRefused, match="trained on other data"):
    resume.check_provenance({"data": {"fingerprint": "0" * 16, "given": False}}, 1, tmp_path,
                            source, model, call="fit")
