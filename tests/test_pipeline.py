"""The data pipeline against references: normalisers (numpy statistics of the rows
trained on only), validation and test splits (exact sizes, disjoint, seeded, as
scikit-learn's), epoch permutations, padded blocks and evaluation batches, classes and
examples_per_class. Each test compares with numpy / scikit-learn, exact counts or set
algebra, not with another path of jdl; each catches a bug (found by a mutation audit)
that passed every earlier test."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sklearn import datasets as skdata
from sklearn import model_selection

from jdl.data import npy_dir
from jdl.data import pipeline
from jdl.data import sources
from jdl.train import run_data

from conftest import make_config


# ------------------------------------------------------------------ normalisers


def test_global_normaliser_centres_a_constant_input_instead_of_dividing_by_zero():
  x = np.full((10, 3), 0.5, np.float32)  # Exactly representable: numpy's std is 0.0.
  norm = pipeline.Normalizer.fit_global(x)
  np.testing.assert_array_equal(norm.std, np.ones(3))
  out = norm(x)
  assert np.isfinite(out).all()
  np.testing.assert_array_equal(out, np.zeros_like(out))


def test_a_constant_float64_input_is_centred_by_global_normalisation_streamed_or_not(tmp_path):
  # Its float64 mean is often an ulp off: the std came out ~1e-16 (only an exact 0 was
  # floored to 1) and every value mapped to +1, where featurewise gave 0 and the
  # streamed path (other summation order) gave 0.
  v = 0.2697867137638703
  for n in (7, 11, 1001):
    x = np.full((n, 2), v, np.float64)
    for norm in (pipeline.Normalizer.fit_global(x), pipeline.Normalizer.fit(x)):
      np.testing.assert_array_equal(norm.std, 1.0)
      assert np.abs(norm(x)).max() < 1e-12
    np.save(tmp_path / "x.npy", x)
    streamed = npy_dir.fit_normalizer(npy_dir.NpyRows([tmp_path / "x.npy"]), None, "global")
    np.testing.assert_array_equal(streamed.std, 1.0)
  # A small but real spread is still scaled to unit variance.
  x = v + np.arange(10.0)[:, None] * 1e-7
  np.testing.assert_allclose(pipeline.Normalizer.fit_global(x).std, x.std(), rtol=1e-9)


@pytest.mark.parametrize("dtype, wide", [
    (np.float32, False), (np.float16, False), (np.int8, False), (np.int16, False),
    (np.uint16, False), (np.int32, True), (np.uint32, True), (np.int64, True),
    (np.float64, True), (">f8", True), (">i4", True)])
def test_needs_float64_is_float64_and_integers_of_32_bits_or_more(dtype, wide):
  assert pipeline.needs_float64(dtype) is wide


def test_int32_times_are_normalised_in_float64_like_numpy():
  # 1.7e9 + 0..99 in int32: float32's spacing there is 128, so a float32 path
  # collapses the 100 values to 1 or 2.
  rng = np.random.default_rng(0)
  x = (1_700_000_000 + rng.integers(0, 100, (300, 1))).astype(np.int32)
  norm = pipeline.Normalizer.fit(x)
  ref = (x.astype(np.float64) - x.mean(0, dtype=np.float64)) / x.std(0, dtype=np.float64)
  out = norm(x)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  assert len(np.unique(out)) == len(np.unique(x))


def test_a_zero_mean_feature_is_still_scaled():
  # Means exactly 0, stds 2 and 4: not the identity normaliser.
  x = np.array([[-2.0, -4.0], [2.0, 4.0], [-2.0, -4.0], [2.0, 4.0]], np.float32)
  norm = pipeline.Normalizer.fit(x)
  np.testing.assert_array_equal(norm.mean, [0.0, 0.0])
  np.testing.assert_array_equal(norm.std, [2.0, 4.0])
  assert not norm.is_identity
  np.testing.assert_array_equal(norm(x), x / np.array([2.0, 4.0], np.float32))


# ------------------------------------------------------------- validation split


@pytest.mark.parametrize("n, fraction", [(19, 0.1), (11, 0.1), (1500, 0.1), (7, 0.5), (40, 0.25)])
def test_split_validation_sizes_and_partition(n, fraction):
  x = np.arange(n, dtype=np.float32)[:, None]
  y = np.arange(n)
  x_tr, y_tr, x_va, y_va = pipeline.split_validation(x, y, fraction, seed=3)
  n_val = int(round(n * fraction))  # Python's round: 19*0.1 -> 2, 11*0.1 -> 1.
  assert (len(y_va), len(y_tr)) == (n_val, n - n_val)
  assert set(y_tr.tolist()).isdisjoint(y_va.tolist())
  assert sorted(y_tr.tolist() + y_va.tolist()) == list(range(n))
  np.testing.assert_array_equal(x_tr[:, 0], y_tr)  # x and y rows stay paired.
  np.testing.assert_array_equal(x_va[:, 0], y_va)


def test_split_validation_is_a_seeded_random_subset():
  n, k = 200, 20
  y = np.arange(n)
  val = {s: frozenset(pipeline.split_validation(y, y, 0.1, seed=s)[3].tolist()) for s in range(4)}
  assert val[0] == frozenset(pipeline.split_validation(y, y, 0.1, seed=0)[3].tolist())
  assert len(set(val.values())) == 4  # Each seed its own rows.
  for rows in val.values():  # Not a block of rows (Keras' last rows, or the first).
    assert rows not in (frozenset(range(n - k, n)), frozenset(range(k)))
    assert min(rows) < n // 2 <= max(rows)


def _row_id_dataset(n_train=80, n_test=20, with_val=False):
  """A regression dataset whose targets are the row numbers: a split's y says which
  rows it holds, so every selection can be checked with numpy."""
  rng = np.random.default_rng(7)
  x = rng.normal([3.0, -1.0, 50.0], [2.0, 0.5, 10.0], (n_train + n_test + 10, 3))
  x = x.astype(np.float32)
  ids = np.arange(len(x), dtype=np.float32)
  kw = dict(x_val=x[n_train + n_test:], y_val=ids[n_train + n_test:]) if with_val else {}
  ds = sources.Dataset(x_train=x[:n_train], y_train=ids[:n_train],
                       x_test=x[n_train:n_train + n_test], y_test=ids[n_train:n_train + n_test],
                       num_classes=0, task="regression", name="rows", input_shape=(3,), **kw)
  return ds, x


def _rows(split):
  return np.asarray(split.y)[:, 0].astype(int)


@pytest.mark.parametrize("mode", ["featurewise", "featurewise_center", "global", "none"])
def test_load_data_fits_the_normaliser_on_the_rows_trained_on_only(mode):
  ds, x = _row_id_dataset()
  data = run_data.load_data(make_config(task="regression", normalize=mode,
                                        validation_split=0.25, seed=5), ds)
  tr, va, te = _rows(data.train), _rows(data.val), _rows(data.test)
  assert (len(tr), len(va), len(te)) == (60, 20, 20)
  assert set(tr.tolist()).isdisjoint(va.tolist())
  assert sorted(np.r_[tr, va].tolist()) == list(range(80))  # Val taken from the train split.
  np.testing.assert_array_equal(te, np.arange(80, 100))  # Test untouched, in order.
  ref = x[tr].astype(np.float64)
  mean, std = {"featurewise": (ref.mean(0), ref.std(0)),
               "featurewise_center": (ref.mean(0), np.ones(3)),
               "global": (ref.mean(), ref.std()),
               "none": (0.0, 1.0)}[mode]
  for split, rows in ((data.train, tr), (data.val, va), (data.test, te)):
    np.testing.assert_allclose(np.asarray(split.x), (x[rows] - mean) / std, atol=2e-5)


def test_load_data_uses_an_explicit_validation_set_and_fits_on_train_only():
  ds, x = _row_id_dataset(with_val=True)
  data = run_data.load_data(make_config(task="regression", normalize="featurewise",
                                        validation_split=0.5), ds)
  np.testing.assert_array_equal(_rows(data.train), np.arange(80))
  np.testing.assert_array_equal(_rows(data.val), np.arange(100, 110))
  ref = x[:80].astype(np.float64)
  np.testing.assert_allclose(np.asarray(data.val.x), (x[100:110] - ref.mean(0)) / ref.std(0),
                             atol=2e-5)


# -------------------------------------------------------------------- batching


def test_epoch_permutation_depends_on_the_seed_and_the_epoch():
  n = 100
  perms = {(s, e): np.asarray(pipeline.epoch_permutation(jax.random.PRNGKey(s), e, n))
           for s in (0, 1) for e in (0, 1)}
  for p in perms.values():
    np.testing.assert_array_equal(np.sort(p), np.arange(n))
  assert len({tuple(p.tolist()) for p in perms.values()}) == 4
  np.testing.assert_array_equal(  # Deterministic.
      perms[1, 1], np.asarray(pipeline.epoch_permutation(jax.random.PRNGKey(1), 1, n)))


def test_a_padded_block_holds_its_steps_then_rows_of_minus_one():
  n, bs = 50, 8  # 6 full batches, 2 examples left over.
  split = pipeline.Split(np.zeros((n, 1), np.float32), np.zeros(n, np.int32))
  key = jax.random.PRNGKey(4)
  feed = pipeline.MemoryFeed(split, key, bs)
  full = np.asarray(pipeline.epoch_permutation(key, 1, n))[:48].reshape(6, bs)
  np.testing.assert_array_equal(np.asarray(feed.block(1, 2, 3)[2]), full[2:5])
  got = np.asarray(feed.block(1, 2, 3, size=5)[2])
  np.testing.assert_array_equal(got[:3], full[2:5])
  np.testing.assert_array_equal(got[3:], -1)
  got = np.asarray(feed.block(1, 5, 1, size=4)[2])  # Past the epoch's end: padding.
  np.testing.assert_array_equal(got[0], full[5])
  np.testing.assert_array_equal(got[1:], -1)


@pytest.mark.parametrize("n, bs", [(10, 4), (8, 4), (3, 5), (0, 4)])
def test_eval_batch_indices_cover_every_example_once_and_pad_with_example_0(n, bs):
  idx, mask = pipeline.eval_batch_indices(n, bs)
  batches = max(1, -(-n // bs))
  assert idx.shape == mask.shape == (batches, bs)
  flat, m = idx.ravel(), mask.ravel()
  np.testing.assert_array_equal(flat[m == 1], np.arange(n))
  np.testing.assert_array_equal(m, (np.arange(batches * bs) < n).astype(np.float32))
  np.testing.assert_array_equal(flat[m == 0], 0)  # Padding points at example 0.


# ------------------------------------------------------ classes / examples_per_class


def test_limit_per_class_draws_a_seeded_subset_of_each_class():
  y = np.repeat(np.arange(3), [10, 4, 7])
  x = np.arange(len(y), dtype=np.float32)[:, None]
  picks = {}
  for seed in range(5):
    xs, ys = pipeline.limit_per_class(x, y, 5, seed)
    np.testing.assert_array_equal(np.bincount(ys), [5, 4, 5])
    rows = xs[:, 0].astype(int)
    np.testing.assert_array_equal(y[rows], ys)  # Rows of the data, paired, sorted.
    assert (np.diff(rows) > 0).all()
    picks[seed] = tuple(rows.tolist())
  assert len(set(picks.values())) > 1  # The seed chooses which.
  assert tuple(pipeline.limit_per_class(x, y, 5, 3)[0][:, 0].astype(int).tolist()) == picks[3]


def _classes_dataset():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(120, 4)).astype(np.float32)
  y = (np.arange(120) % 4).astype(np.int32)
  return sources.Dataset(x_train=x[:60], y_train=y[:60], x_test=x[60:100], y_test=y[60:100],
                         x_val=x[100:], y_val=y[100:], num_classes=4, task="classification",
                         name="four", input_shape=(4,)), x, y


def test_classes_are_selected_and_relabelled_in_every_split():
  ds, x, y = _classes_dataset()
  data = run_data.load_data(make_config(classes=(3, 1), normalize="none"), ds)
  assert data.num_classes == 2
  for split, lo, hi in ((data.train, 0, 60), (data.test, 60, 100), (data.val, 100, 120)):
    keep = np.isin(y[lo:hi], (3, 1))
    np.testing.assert_array_equal(np.asarray(split.x), x[lo:hi][keep])
    np.testing.assert_array_equal(np.asarray(split.y), np.where(y[lo:hi][keep] == 3, 0, 1))


def test_examples_per_class_limits_the_train_split_only():
  ds, x, y = _classes_dataset()
  data = run_data.load_data(make_config(examples_per_class=3, normalize="none"), ds)
  np.testing.assert_array_equal(np.bincount(np.asarray(data.train.y)), [3, 3, 3, 3])
  np.testing.assert_array_equal(np.asarray(data.test.x), x[60:100])  # Untouched.
  np.testing.assert_array_equal(np.asarray(data.val.x), x[100:])


# ------------------------------------------------------------ sources._split


@pytest.mark.parametrize("name, loader", [("iris", skdata.load_iris), ("wine", skdata.load_wine)])
@pytest.mark.parametrize("seed", [1, 7])
def test_split_is_sklearns_stratified_split_for_each_seed(name, loader, seed):
  x, y = loader(return_X_y=True)
  x_tr, x_te, y_tr, y_te = model_selection.train_test_split(
      x, y, test_size=0.3, random_state=seed, stratify=y)
  ds = sources.load_dataset(name, test_split=0.3, seed=seed)
  np.testing.assert_array_equal(ds.x_train, x_tr.astype(np.float32))
  np.testing.assert_array_equal(ds.y_test, y_te)
  other = sources.load_dataset(name, test_split=0.3, seed=seed + 1)
  assert not np.array_equal(ds.y_test, other.y_test) or not np.array_equal(ds.x_test,
                                                                             other.x_test)
