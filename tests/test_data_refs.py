"""The data pipeline, the text datasets and dataset validation against independent
references: scikit-learn's StandardScaler (its statistics and its constant-feature
rule), explicit batch indices and masks for tiny splits, numpy draws of the
documented key streams, hand-built vocabularies and padded ids for a small corpus,
hand-written dates, and the documented bounds and messages on both sides.

Found by a mutation audit of jdl/data/pipeline.py, jdl/data/text.py and
jdl/data/validate.py: each test's docstring names the planted bugs (P.., T.., V..)
it catches that the rest of the suite let pass.
"""

from __future__ import annotations

import datetime

import chex
import jax
import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from jdl.data import pipeline
from jdl.data import text as text_data
from jdl.data import validate
from jdl.errors import JdlError
from conftest import rbg_key, write_sst2

EPS = np.finfo(np.float64).eps


# ------------------------------------------------------------------ normalisers
def _scaler_columns(n=400, seed=0):
  """Features of every kind the constant-feature rule must tell apart: ordinary, a
  large offset, a spread of a few dozen float64 ulps (constant to the rule, as the
  rounding of n values makes), exact zeros (MNIST's borders), a constant 0.5, and
  real spreads of 1e-7 and 1e-12 (to be scaled, however small)."""
  rng = np.random.default_rng(seed)
  return np.stack([rng.normal(3.0, 2.0, n), 1e9 + rng.normal(0.0, 5.0, n),
                   1.0 + EPS * rng.integers(-40, 40, n), np.zeros(n), np.full(n, 0.5),
                   0.27 + 1e-7 * rng.normal(size=n), 1e-12 * rng.normal(size=n)], axis=1)


def test_featurewise_statistics_are_sklearns_standard_scaler_with_its_constant_rule():
  """Catches P33 (`var < bound`: an all-zero feature got std 0 and NaN outputs) and
  P37 (an absolute floor: a real spread of 1e-12 was called constant); the statistics
  are float64 and equal scikit-learn's, constant features std 1 and centred."""
  x = _scaler_columns()
  ref = StandardScaler().fit(x)
  norm = pipeline.Normalizer.fit(x)
  chex.assert_type([norm.mean, norm.std], np.float64)
  np.testing.assert_allclose(norm.mean, ref.mean_, rtol=1e-15, atol=0)
  np.testing.assert_allclose(norm.std, ref.scale_, rtol=1e-12, atol=0)
  np.testing.assert_array_equal(norm.std[2:5], 1.0)  # The constant ones, exactly.
  out = norm(x)
  chex.assert_type(out, np.float32)
  np.testing.assert_allclose(out, ref.transform(x), atol=2e-6)
  np.testing.assert_array_equal(out[:, 3:5], 0.0)


def test_global_statistics_are_sklearns_on_every_value_as_one_feature():
  """Catches P17 (the constant bound over the rows, not the values) and P18 (ddof=1):
  global normalisation is a StandardScaler of all train values as one feature, with
  n the number of values."""
  rng = np.random.default_rng(1)
  near_constant = 1.0 + EPS * rng.integers(-40, 40, (4, 100))  # Constant to 400 values.
  spread = rng.normal(5.0, 3.0, (6, 3, 2))
  for x in (near_constant, spread):
    ref = StandardScaler().fit(x.reshape(-1, 1))
    norm = pipeline.Normalizer.fit_global(x)
    chex.assert_shape([norm.mean, norm.std], x.shape[1:])
    np.testing.assert_allclose(norm.mean, ref.mean_[0], rtol=1e-15)
    np.testing.assert_allclose(norm.std, ref.scale_[0], rtol=1e-12)
  np.testing.assert_array_equal(pipeline.Normalizer.fit_global(near_constant).std, 1.0)


@pytest.mark.parametrize("fit", ["fit", "fit_global", "fit_center"])
def test_float32_inputs_get_the_float64_statistics_of_their_values(fit):
  """Catches P20 (fit_global's mean summed in float32: off by ~1e-4 at an offset of
  1000); every fit's statistics are the float64 ones scikit-learn computes."""
  x = (1000.0 + np.random.default_rng(2).normal(0.0, 1.0, (500, 3))).astype(np.float32)
  norm = getattr(pipeline.Normalizer, fit)(x)
  flat = fit == "fit_global"
  ref = StandardScaler(with_std=fit != "fit_center").fit(x.reshape(-1, 1) if flat else x)
  chex.assert_type([norm.mean, norm.std], np.float64)
  np.testing.assert_allclose(norm.mean, np.broadcast_to(ref.mean_, (3,)), rtol=1e-14)
  np.testing.assert_allclose(norm.std, np.broadcast_to(ref.scale_ if ref.scale_ is not None
                                                        else 1.0, (3,)), rtol=1e-12)
  assert norm.float64 is False


@pytest.mark.parametrize("std, mean, n, constant", [
    (2.0e-15, 1.0, 10, True), (2.5e-15, 1.0, 10, False),  # The mean term, (n*mean*eps)^2.
    (2.0e-14, 10.0, 10, True), (2.5e-14, 10.0, 10, False),
    (0.0, 0.0, 5, True), (1e-150, 0.0, 5, False),  # No floor: any spread about 0 scales.
])
def test_unit_where_constant_on_both_sides_of_sklearns_bound(std, mean, n, constant):
  """Catches P32 (float32's eps), P35 (n left out of the mean term) and P36 (the mean
  term not squared): a std just under the bound var <= n*eps*var + (n*mean*eps)^2 is
  constant (1), one just over it is kept."""
  got = pipeline.unit_where_constant(np.array([std]), np.array([mean]), n)
  np.testing.assert_array_equal(got, [1.0] if constant else [std])


def test_unit_where_constant_keeps_the_relative_term_n_eps_var():
  """Catches P34 (`n * eps * var` -> `eps * var`): at n = 1e9 the relative term moves
  the bound by 2.2e-7 of var, which a var 1e-7 over the mean term shows."""
  n, mean = 10**9, 1.0
  var = (n * mean * EPS) ** 2 * (1 + 1e-7)
  # sklearn's rule: var <= n*eps*var + (n*mean*eps)^2 holds, so the feature is constant.
  assert var <= n * EPS * var + (n * mean * EPS) ** 2
  got = pipeline.unit_where_constant(np.array([np.sqrt(var)]), np.array([mean]), n)
  np.testing.assert_array_equal(got, [1.0])


@pytest.mark.parametrize("fit", ["fit", "fit_global", "fit_center"])
def test_int32_times_are_normalised_in_float64_by_every_fit(fit):
  """Catches P15 (fit_center never in float64): Unix times in int32 are centred in
  float64 (float32's spacing at 1.7e9 is 128, which merges the 100 distinct values)."""
  x = (1_700_000_000 + np.arange(100)[:, None] * np.array([1, 2])).astype(np.int32)
  norm = getattr(pipeline.Normalizer, fit)(x)
  assert norm.float64 is True
  x64 = x.astype(np.float64)
  mean = x64.mean() if fit == "fit_global" else x64.mean(0)
  std = {"fit": x64.std(0), "fit_global": x64.std(), "fit_center": 1.0}[fit]
  out = norm(x)
  chex.assert_type(out, np.float32)
  np.testing.assert_allclose(out, (x64 - mean) / std, rtol=1e-6, atol=1e-6)
  assert len(np.unique(out[:, 0])) == 100


@pytest.mark.parametrize("x", [np.arange(6.0).reshape(3, 2), np.arange(6, dtype=np.int8).reshape(3, 2)],
                         ids=["float64", "int8"])
def test_every_normaliser_returns_float32(x):
  """Catches P26 (the identity returned the input's dtype) and P27 (the float64 path
  returned float64): the result is float32 either way, as documented."""
  for norm in (pipeline.Normalizer.identity((2,)), pipeline.Normalizer.fit(x),
               pipeline.Normalizer.fit_center(x)):
    out = norm(x)
    chex.assert_type(out, np.float32)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(out, (x64 - norm.mean) / norm.std, rtol=1e-6)


def test_float32_inputs_are_normalised_with_float32_statistics_bit_for_bit():
  """Catches P24 (stats(float32) handed out the float64 statistics) and P28 (a multiply by
  the reciprocal): float32 inputs are `(x - mean32) / std32` in float32, the streamed
  path's numpy operations, bit for bit."""
  x = np.random.default_rng(4).normal(7.0, 3.0, (50, 3)).astype(np.float32)
  norm = pipeline.Normalizer.fit(x)
  mean32, std32 = norm.stats(np.float32)
  chex.assert_type([mean32, std32], np.float32)
  np.testing.assert_array_equal(mean32, norm.mean.astype(np.float32))
  np.testing.assert_array_equal(std32, norm.std.astype(np.float32))
  mean64, std64 = norm.stats(np.float64)
  chex.assert_type([mean64, std64], np.float64)
  np.testing.assert_array_equal(norm(x), (x - norm.mean.astype(np.float32))
                                / norm.std.astype(np.float32))


@pytest.mark.parametrize("mean, std, identity", [
    ([0.0, 0.0], [1.0, 1.0], True), ([0.0, 1.0], [1.0, 1.0], False),
    ([0.0, 0.0], [1.0, 2.0], False), ([3.0, 3.0], [1.0, 1.0], False)])
def test_is_identity_only_for_zero_means_and_unit_stds(mean, std, identity):
  """Catches P21 (the mean ignored), P22 (`mean.all()`: one zero mean was enough) and
  P23 (`std.any()`): only all-zero means with all-one stds leave inputs as they are."""
  norm = pipeline.Normalizer(np.array(mean), np.array(std))
  assert norm.is_identity is identity
  x = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
  np.testing.assert_array_equal(norm(x), (x - np.array(mean, np.float32))
                                / np.array(std, np.float32))


# --------------------------------------------------------------- batch orders
def test_epoch_permutation_is_a_permutation_of_fold_in_key_epoch():
  """Catches P46 (fold_in(key, epoch + 1)) and P48 (a shuffled reversed arange): the
  order of `epoch` is exactly `jax.random.permutation(fold_in(key, epoch), n)`."""
  key = rbg_key(3)
  for epoch in (0, 1, 5):
    want = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), 11))
    got = np.asarray(pipeline.epoch_permutation(key, epoch, 11))
    chex.assert_type(got, np.int32)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n, bs, rows", [
    (8, 4, [[0, 1, 2, 3], [4, 5, 6, 7]]),  # n divisible: every example, 2 steps.
    (10, 4, [[0, 1, 2, 3], [4, 5, 6, 7]]),  # 2 left over: full batches only.
    (3, 3, [[0, 1, 2]]), (5, 1, [[0], [1], [2], [3], [4]])])
def test_train_batch_indices_are_the_permutations_full_batches_in_order(n, bs, rows):
  """Catches P49 (a batch dropped when n % batch_size == 0)."""
  perm = np.arange(n)[::-1].copy()  # A known order: its positions give the indices.
  got = np.asarray(pipeline.train_batch_indices(jax.numpy.asarray(perm), bs))
  np.testing.assert_array_equal(got, perm[np.array(rows)])


def test_memory_feed_blocks_are_rows_of_the_epochs_full_batches_then_minus_one():
  """Catches P52 (`arange(size) <= n`: one row past the block's steps kept) and P54 (the
  rows from pos + 1): blocks of epochs 0, 1 and 0 again are rows of fold_in(key,
  epoch)'s permutation in 5 full batches of 4 (22 examples), padded rows -1."""
  n, bs, key = 22, 4, rbg_key(5)
  split = pipeline.Split(np.zeros((n, 1), np.float32), np.zeros(n, np.int32))
  feed = pipeline.MemoryFeed(split, key, bs)
  for epoch in (0, 1, 0):
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
    batches = perm[:20].reshape(5, 4)
    np.testing.assert_array_equal(np.asarray(feed.block(epoch, 0, 5)[2]), batches)
    np.testing.assert_array_equal(np.asarray(feed.block(epoch, 1, 2)[2]), batches[1:3])
    minus = np.full((2, 4), -1)
    np.testing.assert_array_equal(np.asarray(feed.block(epoch, 1, 2, size=4)[2]),
                                  np.r_[batches[1:3], minus])
    np.testing.assert_array_equal(np.asarray(feed.block(epoch, 4, 1, size=3)[2]),
                                  np.r_[batches[4:5], minus])


@pytest.mark.parametrize("n, bs, idx, mask", [
    (5, 2, [[0, 1], [2, 3], [4, 0]], [[1, 1], [1, 1], [1, 0]]),
    (4, 4, [[0, 1, 2, 3]], [[1, 1, 1, 1]]),
    (1, 3, [[0, 0, 0]], [[1, 0, 0]]),
    (0, 2, [[0, 0]], [[0, 0]])])
def test_eval_batches_are_every_example_once_then_masked_padding(n, bs, idx, mask):
  """Catches P57 (a bool mask) and P58 (int64 indices): the documented int32 indices and
  float32 mask, and the batches Split.eval_batches yields, written out."""
  got_idx, got_mask = pipeline.eval_batch_indices(n, bs)
  chex.assert_type([got_idx, got_mask], [np.int32, np.float32])
  np.testing.assert_array_equal(got_idx, idx)
  np.testing.assert_array_equal(got_mask, mask)
  split = pipeline.Split(np.arange(max(n, 1), dtype=np.float32)[:, None],
                         np.zeros(max(n, 1), np.int32))
  batches = list(split.eval_batches(bs)) if n else []
  for (bx, _, bi, bm), want_i, want_m in zip(batches, idx, mask):
    assert bx is split.x
    np.testing.assert_array_equal(bi, want_i)
    np.testing.assert_array_equal(bm, want_m)
  assert len(batches) == (len(idx) if n else 0)


def test_select_classes_keeps_the_given_classes_relabelled_in_their_order_and_dtype():
  """Catches P65 (int64 labels): uint8 labels (as IDX files hold them) stay uint8,
  relabelled 0..k-1 in the order the classes are given."""
  y = np.array([0, 1, 2, 3, 4, 4, 2, 0], np.uint8)
  x = np.arange(8.0)[:, None]
  xs, ys = pipeline.select_classes(x, y, (4, 0, 2))
  np.testing.assert_array_equal(xs[:, 0], [0, 2, 4, 5, 6, 7])
  np.testing.assert_array_equal(ys, [1, 2, 0, 0, 2, 1])
  chex.assert_type(ys, np.uint8)


# ------------------------------------------------------------- validation split
@pytest.mark.parametrize("fraction, n_val", [(0.06, 1), (0.94, 9), (0.5, 5), (0.15, 2)])
def test_split_validation_holds_out_round_n_fraction_rows(fraction, n_val):
  """Both sides of the bounds below, accepted: round(n * fraction) rows held out
  (Python's round: 10 * 0.15 = 1.5000000000000002 -> 2)."""
  x = np.arange(10)
  x_tr, y_tr, x_va, y_va = pipeline.split_validation(x, x, fraction, seed=0)
  assert (len(x_va), len(x_tr)) == (n_val, 10 - n_val)
  assert sorted(np.r_[x_tr, x_va].tolist()) == list(range(10))


@pytest.mark.parametrize("fraction, message", [
    (1.0, r"validation_split must be in \[0, 1\), got 1.0"),
    (-0.01, r"validation_split must be in \[0, 1\), got -0.01"),
    (0.04, r"validation_split=0.04 of 10 train examples leaves 10 for training and 0 for "
           r"validation"),
    (0.05, r"validation_split=0.05 of 10 train examples leaves 10 for training and 0 for "
           r"validation"),  # round(0.5) = 0.
    (0.96, r"validation_split=0.96 of 10 train examples leaves 0 for training and 10 for "
           r"validation")])
def test_split_validation_refuses_fractions_that_leave_a_split_empty(fraction, message):
  """Catches P39 (1.0 let through the range check), P42 (no validation rows accepted)
  and P43 (no training rows accepted)."""
  x = np.arange(10)
  with pytest.raises(JdlError, match=f"^{message}"):
    pipeline.split_validation(x, x, fraction, seed=0)


@pytest.mark.parametrize("batch_size, n_train, message", [
    (10, 10, None), (1, 10, None),
    (11, 10, r"batch_size \(11\) is larger than the training set \(10 examples\)"),
    (0, 10, r"batch_size must be a positive integer, got 0"),
    (-1, 10, r"batch_size must be a positive integer, got -1"),
    (2.0, 10, r"batch_size must be a positive integer, got 2.0")])
def test_check_batch_size_on_both_sides_of_its_bounds(batch_size, n_train, message):
  """Catches P60 (a batch of the whole train split refused), P61 (one more than the
  train split accepted), P62 (0 accepted) and P63 (a float accepted)."""
  if message is None:
    pipeline.check_batch_size(batch_size, n_train)
  else:
    with pytest.raises(JdlError, match=message):
      pipeline.check_batch_size(batch_size, n_train)


# ----------------------------------------------------------------- SST-2 TSV
# A corpus small enough to build its vocabulary by hand. Lower-cased token counts:
# film 3, good 3, bad 2, is 2, the 2, ',' 1, a 1, acting 1; ids from 4 by count, ties
# in alphabetical order (',' < 'a' < 'acting').
TRAIN_TSV = ("sentence\tlabel\nThe film is good\t1\nthe film is BAD\t0\n"
             "a good , good film\t1\nbad acting\t0\n")
DEV_TSV = "sentence\tlabel\nthe acting is terrible\t0\nGood\t1\n"
FILM, GOOD, BAD, IS, THE, COMMA, A, ACTING = range(4, 12)
UNK = 1


def _sst2_dir(tmp_path, train=TRAIN_TSV, dev=DEV_TSV):
  return str(write_sst2(tmp_path, train, dev))


def _load_sst2(tmp_path, train=TRAIN_TSV, dev=DEV_TSV, **options):
  return text_data.load_sst2(_sst2_dir(tmp_path, train, dev), text_data.TextOptions(**options))


def test_sst2_ids_are_a_hand_built_vocabulary_padded_to_the_longest_train_text(tmp_path):
  """Catches T21 (int64 labels: the loader gives int32 ids and labels), T22 (dev padded to its own longest text, 4, instead of train's 5) and T30
  (the vocabulary built on train and dev: 'terrible' got an id)."""
  x_train, y_train, x_test, y_test, vocab, _ = _load_sst2(tmp_path)
  assert vocab.tokens[4:] == ("film", "good", "bad", "is", "the", ",", "a", "acting")
  np.testing.assert_array_equal(x_train, [[THE, FILM, IS, GOOD, 0], [THE, FILM, IS, BAD, 0],
                                          [A, GOOD, COMMA, GOOD, FILM], [BAD, ACTING, 0, 0, 0]])
  np.testing.assert_array_equal(x_test, [[THE, ACTING, IS, UNK, 0], [GOOD, 0, 0, 0, 0]])
  chex.assert_type([x_train, x_test, y_train, y_test], np.int32)  # Ids and labels.
  assert y_train.tolist() == [1, 0, 1, 0] and y_test.tolist() == [0, 1]


@pytest.mark.parametrize("padding, truncating, train, dev", [
    ("pre", "post", [[THE, FILM, IS], [THE, FILM, IS], [A, GOOD, COMMA], [0, BAD, ACTING]],
     [[THE, ACTING, IS], [0, 0, GOOD]]),
    ("post", "pre", [[FILM, IS, GOOD], [FILM, IS, BAD], [COMMA, GOOD, FILM], [BAD, ACTING, 0]],
     [[ACTING, IS, UNK], [GOOD, 0, 0]])])
def test_sst2_padding_and_truncating_each_take_their_own_option(tmp_path, padding, truncating,
                                                                 train, dev):
  """Catches T23 (the two options swapped), T24 (truncating always 'post') and T25
  (padding always 'post'), on both splits."""
  x_train, _, x_test, _, _, _ = _load_sst2(tmp_path, maxlen=3, padding=padding,
                                           truncating=truncating)
  np.testing.assert_array_equal(x_train, train)
  np.testing.assert_array_equal(x_test, dev)


def test_sst2_min_freq_max_vocab_and_case_reach_the_vocabulary(tmp_path):
  """Catches T26 (lowercase=False ignored), T28 (min_freq off by one) and T29 (max_vocab
  ignored)."""
  specials = ("<pad>", "<unk>", "<bos>", "<eos>")
  assert _load_sst2(tmp_path, min_freq=2)[4].tokens == specials + ("film", "good", "bad",
                                                                    "is", "the")
  assert _load_sst2(tmp_path, min_freq=3)[4].tokens == specials + ("film", "good")
  assert _load_sst2(tmp_path, max_vocab=7)[4].tokens == specials + ("film", "good", "bad")
  cased = _load_sst2(tmp_path, lowercase=False)
  # film 3, good 3, is 2; then the 1s in code-point order (upper case first).
  assert cased[4].tokens == specials + ("film", "good", "is", ",", "BAD", "The", "a", "acting",
                                        "bad", "the")
  assert not cased[4].lowercase
  np.testing.assert_array_equal(cased[2][1], [UNK, 0, 0, 0, 0])  # 'Good' is unknown.


def test_sst2_rebuild_takes_the_vocabulary_of_the_given_train_rows_only(tmp_path):
  """Catches T31 (rebuild ignored its rows): rows 2 and 3 hold good 2, then ',' a acting
  bad film once each."""
  rebuild = _load_sst2(tmp_path)[5]
  x_train, x_test, vocab = rebuild(np.array([2, 3]))
  assert vocab.tokens[4:] == ("good", ",", "a", "acting", "bad", "film")
  good, comma, a, acting, bad, film = range(4, 10)
  np.testing.assert_array_equal(x_train, [[UNK, film, UNK, good, 0], [UNK, film, UNK, bad, 0],
                                          [a, good, comma, good, film], [bad, acting, 0, 0, 0]])
  np.testing.assert_array_equal(x_test, [[UNK, acting, UNK, UNK, 0], [good, 0, 0, 0, 0]])


def test_sst2_columns_are_found_by_their_header_names(tmp_path):
  """Catches T16 (columns taken by position): a file with label first reads the same."""
  swapped = "".join("\t".join(line.split("\t")[::-1]) + "\n"
                    for line in TRAIN_TSV.strip("\n").split("\n"))
  x_train, y_train, x_test, _, vocab, _ = _load_sst2(tmp_path, train=swapped)
  assert vocab.tokens[4:] == ("film", "good", "bad", "is", "the", ",", "a", "acting")
  np.testing.assert_array_equal(x_train[2], [A, GOOD, COMMA, GOOD, FILM])
  assert y_train.tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize("train, dev, message", [
    ("sentence\tlabel\ngood\t1\nbad\t0\tx\n", DEV_TSV,
     r"train\.tsv, line 3: 3 tab-separated fields, the header has 2$"),
    ("sentence\tlabel\ngood\t1\n\t\n", DEV_TSV,  # A tab makes it a row, not a blank line.
     r"train\.tsv, line 3: label '' is not an integer class id$"),
    ("sentence\tlabel\n", DEV_TSV, r"train\.tsv has a header but no rows$"),
    ("text\tlabel\ngood\t1\n", DEV_TSV,
     r"train\.tsv has columns \['text', 'label'\] in its header line; it needs sentence, label$"),
    ("sentence\tlabel\na\t1\nb\t3\nc\t0\nd\t-1\n", DEV_TSV,
     r"train\.tsv, line 3: label '3' is not a class id in 0\.\.1 \(2 such lines\)$"),
    (TRAIN_TSV, "sentence\tlabel\ngood\t2\n",
     r"dev\.tsv, line 2: label '2' is not a class id in 0\.\.1 \(1 such line\)$"),
])
def test_sst2_bad_rows_are_one_error_naming_the_file_and_line(tmp_path, train, dev, message):
  """Catches T11 (a line of a tab alone skipped as blank), T14 (extra fields accepted),
  T15 (a header without rows accepted), T20 (the last bad label named, not the first),
  T35 (dev labels of 2 accepted) and T56 (a missing column a ValueError)."""
  with pytest.raises(JdlError, match=message):
    text_data.load_sst2(_sst2_dir(tmp_path, train, dev), text_data.TextOptions())


@pytest.mark.parametrize("options, message", [
    (dict(maxlen=-1), r"sequence\.maxlen must be an integer >= 0"),
    (dict(seq_len=1), r"sequence\.seq_len \(the adding problem's length\) must be an integer "
                      r">= 2, got 1"),
    (dict(min_freq=0), r"sequence\.min_freq must be >= 1, got 0"),
    (dict(max_vocab=4), r"sequence\.max_vocab must be 0 \(no limit\) or > 4"),
    (dict(lowercase=1), r"sequence\.lowercase must be True or False, got 1"),
    (dict(padding="both"), r"sequence\.padding must be 'pre' or 'post', got 'both'"),
    (dict(truncating="mid"), r"sequence\.truncating must be 'pre' or 'post', got 'mid'"),
    (dict(level="byte"), r"sequence\.level must be 'word' or 'char', got 'byte'"),
])
def test_text_options_refuse_values_just_outside_their_range(options, message):
  """Catches T01-T08 where the suite let them pass: each bound's first value outside."""
  with pytest.raises(JdlError, match=message):
    text_data.TextOptions(**options)


def test_text_options_accept_the_edges_of_their_range():
  """The first values inside each bound: maxlen 0 (the longest text), seq_len 2,
  min_freq 1, max_vocab 5 (one token beside the specials), numpy scalars."""
  opts = text_data.TextOptions(maxlen=0, seq_len=2, min_freq=1, max_vocab=5,
                               lowercase=np.bool_(False))
  assert (opts.maxlen, opts.seq_len, opts.max_vocab) == (0, 2, 5)


# ---------------------------------------------------------- adding problem
def test_adding_problem_marks_one_position_in_each_half_uniformly():
  """Catches T36 (the first marker never at 0), T37 (the second never last), T38 (the
  second marker in the first half) and T39 (values on [0, 2)): every position of each
  half is marked, values are U(0, 1), and predicting 1 scores MSE 1/6 as documented."""
  n, t = 4000, 10
  x, y = text_data.adding_problem(n, t, seed=1)
  chex.assert_shape([x, y], [(n, t, 2), (n, 1)])
  chex.assert_type([x, y], np.float32)
  marks = x[..., 1]
  assert set(np.unique(marks).tolist()) == {0.0, 1.0}
  np.testing.assert_array_equal(marks[:, :5].sum(1), 1)
  np.testing.assert_array_equal(marks[:, 5:].sum(1), 1)
  np.testing.assert_array_equal(np.sort(np.unique(marks[:, :5].argmax(1))), np.arange(5))
  np.testing.assert_array_equal(np.sort(np.unique(marks[:, 5:].argmax(1))), np.arange(5))
  values = x[..., 0]
  assert 0.0 <= values.min() and values.max() < 1.0
  np.testing.assert_allclose(y[:, 0], (values * marks).sum(1), rtol=1e-6)
  assert abs(np.mean((y - 1.0) ** 2) - 1 / 6) < 0.01  # ~3 standard errors at n=4000.


def test_adding_problem_of_length_2_and_1():
  """Catches T40 (seq_len 1 accepted): length 2 marks both steps; 1 is refused."""
  x, _ = text_data.adding_problem(3, 2, seed=0)
  np.testing.assert_array_equal(x[..., 1], np.ones((3, 2)))
  with pytest.raises(JdlError, match=r"^the adding problem needs sequence.seq_len >= 2, got 1$"):
    text_data.adding_problem(3, 1, seed=0)


# ------------------------------------------------------------------- dates
@pytest.mark.parametrize("date, written", [
    (datetime.date(2005, 3, 13), [
        "13 march 2005", "13 mar 2005", "march 13, 2005", "mar 13 2005", "13th of march 2005",
        "sunday, march 13, 2005", "sun 13 mar 2005", "13/03/2005", "13/3/05", "13.03.2005",
        "13 march 05", "2005/03/13"]),
    (datetime.date(1998, 3, 21), [
        "21 march 1998", "21 mar 1998", "march 21, 1998", "mar 21 1998", "21st of march 1998",
        "saturday, march 21, 1998", "sat 21 mar 1998", "21/03/1998", "21/3/98", "21.03.1998",
        "21 march 98", "1998/03/21"]),
    (datetime.date(1950, 1, 2), [
        "2 january 1950", "2 jan 1950", "january 2, 1950", "jan 2 1950", "2nd of january 1950",
        "monday, january 2, 1950", "mon 2 jan 1950", "02/01/1950", "2/1/50", "02.01.1950",
        "2 january 50", "1950/01/02"])])
def test_every_date_format_written_out_by_hand(date, written):
  """Catches T41 ('13rd'), T42 ('21th'), T43 (an unpadded two-digit year: '13/3/5'), T44
  (the weekday a day off) and T45 (a month-first dotted date)."""
  assert [text_data.format_date(date, s) for s in range(12)] == written


@pytest.mark.parametrize("n, seed", [(60, 0), (10, 8)])  # (10, 8): the test text is longest.
def test_load_dates_targets_are_bos_iso_eos_and_sources_untruncated(n, seed):
  """Catches T49 (no <eos>), T50 (a test split of n // 5), T51 (targets cut before
  <eos>), T52 (sources as long as the longest train text only: seed 8's test date, 24
  characters, was cut to train's 16) and T54 (the target vocabulary built on the
  sources: '-' unknown)."""
  x_train, y_train, x_test, y_test, vocabs, _ = text_data.load_dates(n, seed=seed)
  train, test = text_data.dates_pairs(n, n // 10, seed=seed)
  assert (len(x_train), len(x_test)) == (n, n // 10)
  width = max(len(s) for s, _ in train + test)
  chex.assert_shape([x_train, x_test, y_train, y_test], [(n, width), (n // 10, width),
                                                        (n, 12), (n // 10, 12)])
  src, tgt = vocabs["src"], vocabs["tgt"]
  for x, y, pairs in ((x_train, y_train, train), (x_test, y_test, test)):
    for row_x, row_y, (source, iso) in zip(x, y, pairs):
      ids = [tgt.tokens.index(c) for c in iso]
      assert row_y.tolist() == [2] + ids + [3]  # <bos> yyyy-mm-dd <eos>, no <unk>.
      # The whole source (a test character train lacks is <unk>), padded with 0s.
      want = [src.id(c) for c in source] + [0] * (width - len(source))
      assert row_x.tolist() == want


def test_load_dates_rebuild_uses_only_the_given_rows_characters():
  """Catches T53 (rebuild ignored its rows)."""
  rebuild = text_data.load_dates(30, seed=1)[5]
  train, _ = text_data.dates_pairs(30, 3, seed=1)
  rows = [0, 1]
  vocabs = rebuild(np.array(rows))[4]
  chars = sorted({c for i in rows for c in train[i][0]})
  assert sorted(vocabs["src"].tokens[4:]) == chars


# -------------------------------------------------------------- validation
def _validate(x, y, task="classification", num_classes=3):
  validate.validate_arrays(np.asarray(x), np.asarray(y), num_classes=num_classes, task=task,
                           split="train")


X3 = np.ones((3, 2), np.float32)


@pytest.mark.parametrize("x, y, task, num_classes", [
    (X3, [0, 1, 2], "classification", 3),
    (X3, [0.0, 1.0, 2.0], "classification", 3),
    (X3.astype(np.float16), np.array([0.0, 1.0, 2.0], np.float32), "classification", 3),
    (X3, [0, 0, 0], "classification", 1),  # One class: at least 1.
    (np.ones((3, 2), bool), [0, 1, 0], "classification", 2),  # Booleans are numbers.
    (np.array([[np.finfo(np.float32).max], [-np.finfo(np.float32).max], [0.0]]),
     [0.5, 1.5, 2.0], "regression", 0),  # float32's largest value, in float64, is finite.
    (X3, np.array([[0, 4], [1, 2], [3, 0]]), "seq2seq", 5),
    (X3, np.zeros((3, 0), np.int32), "seq2seq", 5),  # No target tokens at all.
])
def test_validate_arrays_accepts_the_edges_of_each_bound(x, y, task, num_classes):
  """Catches V22 (booleans refused), V30 (targets of no token crashed on y.min()) and V33
  (one class refused); the first values inside every bound below pass."""
  _validate(x, y, task, num_classes)


@pytest.mark.parametrize("x, y, task, num_classes, message", [
    (X3, [0, 1, 3], "classification", 3,
     r"^y_train has 1 labels outside \[0, 3\) \(e\.g\. 3\); remap the labels to 0\.\.2 or, "
     r"if there are 4 classes, set num_classes=4$"),
    (X3, [0, -1, 2], "classification", 3,
     r"^y_train has 1 labels outside \[0, 3\) \(e\.g\. -1\); remap the labels to 0\.\.2$"),
    (np.ones((7, 1)), [3, 4, 5, 6, 7, 8, 8], "classification", 3,
     r"^y_train has 7 labels outside \[0, 3\) \(e\.g\. 3, 4, 5, 6, 7, \.\.\.\); remap the labels "
     r"to 0\.\.2 or, if there are 9 classes, set num_classes=9$"),
    (np.ones((6, 1)), [3, 4, 5, 6, 7, 7], "classification", 3,
     r"\(e\.g\. 3, 4, 5, 6, 7\); remap"),  # Five distinct: no ellipsis.
    (X3, [0, 0, 0], "classification", 0,
     r"^num_classes must be at least 1 for classification, got 0$"),
    (X3, [0.0, 1.0, np.inf], "classification", 3,
     r"^y_train has 1 non-integer labels \(e\.g\. inf\); classification needs integer class "
     r"ids$"),
    (X3, [0.0, 0.5, 1.0], "classification", 3, r"^y_train has 1 non-integer labels \(e\.g\. 0\.5\)"),
    (X3, np.array([0.0, 1.0, 1.5], np.float32), "classification", 3,
     r"^y_train has 1 non-integer labels \(e\.g\. 1\.5\)"),
    (X3, np.zeros((3, 1), np.int32), "classification", 3,
     r"^y_train has shape \(3, 1\); classification labels must be one integer class id per "
     r"example, shape \[N\] \(not one-hot\)$"),
    (X3, np.array([[0, 5], [1, 2], [3, 0]]), "seq2seq", 5,
     r"^y_train has token ids outside \[0, 5\) \(the target vocabulary\)$"),
    (X3, np.array([[0, -1], [1, 2], [3, 0]]), "seq2seq", 5, r"token ids outside \[0, 5\)"),
    (X3, np.zeros((3, 2, 1), np.int32), "seq2seq", 5,
     r"^y_train has shape \(3, 2, 1\) and dtype int32; seq2seq targets are int token ids"),
    (X3, np.zeros((3, 2), np.float32), "seq2seq", 5,
     r"^y_train has shape \(3, 2\) and dtype float32; seq2seq targets are int token ids"),
    (X3, [0.0, np.nan, 1.0], "regression", 0,
     r"^y_train contains 1 NaN and 0 Inf values \(in 1 of 3 examples\)"),
    (np.array([[np.nan, np.nan], [1.0, 1.0], [np.inf, 1.0]]), [0, 1, 2], "classification", 3,
     r"^x_train contains 2 NaN and 1 Inf values \(in 2 of 3 examples\); clean or impute"),
    (np.array([[1.0], [-1e39], [0.0]]), [0, 1, 2], "classification", 3,
     r"^x_train contains 0 NaN and 0 Inf values and 1 beyond float32's range"),
    (np.array([[1.0], [np.inf], [0.0]], np.float16), [0, 1, 2], "classification", 3,
     r"^x_train contains 0 NaN and 1 Inf values"),
    (X3.astype(np.complex64), [0, 1, 2], "classification", 3,
     r"^x_train has non-numeric dtype complex64"),
    (X3, np.int64(1), "classification", 3,
     r"^train split: x and y must be arrays with one row per example, got shapes \(3, 2\) and "
     r"\(\)$"),
    (X3, [0, 1], "classification", 3,
     r"^train split: x has 3 examples but y has 2; they must have one target per input$"),
    (np.ones((0, 2)), np.zeros(0, int), "classification", 3,
     r"^the train split is empty \(0 examples\); check the data source$"),
    (X3, [0, 1, 2], "clasification", 3,
     r"^unknown task 'clasification'; valid names: classification, regression, seq2seq$"),
])
def test_validate_arrays_refuses_each_bad_split_with_its_documented_message(
    x, y, task, num_classes, message):
  """Catches V01/V02 (the examples' ellipsis and count), V05 (large negatives beyond
  float32 let through), V07 (bad values counted, not rows), V08 (float16 skipped), V18-V21
  and V23 (complex), V24-V29, V31, V32 (an inf label crashed int()), V34, V36-V42: the
  first value outside each bound, with the exact message."""
  with pytest.raises(JdlError, match=message):
    _validate(x, y, task, num_classes)


@pytest.mark.parametrize("top_two, refused", [
    ([5], False), ([1, 999], False), ([1, 1000], True),  # The 1000 bound.
    ([100, 1009], False), ([100, 1010], True),  # top + 1 > 10 * (second + 1): 1010 vs 1011.
    ([0, 9999], True), ([0, 500], False)])
def test_stray_label_bound_on_both_sides(top_two, refused):
  """Catches V09 (a single label crashed), V10 (1000 itself let through), V11 (exactly ten
  times refused), V12 (the ratio without +1), V13 and V14 (the bound 100 or 10000)."""
  if not refused:
    validate.check_stray_label(np.array(top_two), "here")
    return
  second, top = top_two
  with pytest.raises(JdlError, match=rf"^here: the labels run to {second} and then jump to "
                                     rf"{top}, which would give the model {top + 1} outputs"):
    validate.check_stray_label(np.array(top_two), "here")


@pytest.mark.parametrize("split, message", [
    (dict(x_val=np.ones((2, 4))), r"^mine: x_val has examples of shape \(4,\) but x_train has "
                                  r"\(3,\); they must match$"),
    (dict(x_test=np.ones((2, 3, 1))), r"^mine: x_test has examples of shape \(3, 1\)"),
    (dict(input_shape=(4,)), r"^mine: input_shape is \(4,\) but x_train has examples of shape "
                             r"\(3,\); they must match$"),
    (dict(x_val=np.zeros((0,)), x_test=np.ones((1, 3)), input_shape=(3,)), None)])
def test_check_example_shapes_compares_val_test_and_input_shape(split, message):
  """Catches V15 (an empty split of another rank refused), V16 (x_val not compared) and
  V17 (input_shape not compared)."""
  import types
  ds = types.SimpleNamespace(**{"x_train": np.ones((5, 3)), "x_val": None, "x_test": None,
                                "input_shape": None, **split})
  if message is None:
    validate.check_example_shapes(ds, "mine")
  else:
    with pytest.raises(JdlError, match=message):
      validate.check_example_shapes(ds, "mine")
