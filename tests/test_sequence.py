"""Sequence data and training: tokenizer, vocabulary, padding, TSV loader, generators,
the seq2seq task's masked loss, end to end through the CLI, exact resume with the
vocabulary. Tiny data only (SST-2 rows are written to tmp_path)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl
from jdl import cli
from jdl.config import base_config
from jdl.data import sources
from jdl.data import text as text_data
from jdl.errors import JdlError
from jdl.sequence import tasks as seq_tasks
from jdl.sequence import text as text_lib
from jdl.train import run_data

from conftest import Crash, write_sst2

# ------------------------------------------------------------------ vocabulary


def test_vocabulary_min_freq_max_size_unk_and_specials():
  texts = [["b", "a", "a", "c"], ["a", "b", "d"], ["<pad>", "c"]]
  v = text_lib.Vocabulary.build(texts)
  # Specials first, then by count (a: 3, b: 2, c: 2, d: 1), ties alphabetical;
  # a literal "<pad>" in the text is not counted as a word.
  assert v.tokens == ("<pad>", "<unk>", "<bos>", "<eos>", "a", "b", "c", "d")
  assert text_lib.Vocabulary.build(texts, min_freq=2).tokens[4:] == ("a", "b", "c")
  assert text_lib.Vocabulary.build(texts, max_size=6).tokens[4:] == ("a", "b")
  small = text_lib.Vocabulary.build(texts, min_freq=2)
  assert small.encode(["a", "d", "zzz"], bos=True, eos=True) == [2, 4, 1, 1, 3]
  # Words of text that read like specials are words: never padding, <bos> or <eos>.
  assert small.encode(["<pad>", "<bos>", "<eos>", "<unk>", "a"]) == [1, 1, 1, 1, 4]
  assert small.decode([2, 4, 5, 3, 6, 0]) == ["a", "b"]  # <bos> dropped, cut at <eos>.
  with pytest.raises(JdlError, match="max_vocab"):
    text_lib.Vocabulary.build(texts, max_size=4)
  with pytest.raises(JdlError, match="min_freq"):
    text_lib.Vocabulary.build(texts, min_freq=0)
  # Non-integers were a TypeError (a comparison with a str, a float slice index).
  for bad in ("2", 1.5, True):
    with pytest.raises(JdlError, match=rf"^sequence\.min_freq must be an integer >= 1, "
                                       rf"got {re.escape(repr(bad))}$"):
      text_lib.Vocabulary.build(texts, min_freq=bad)
  for bad in (5.5, "6", True):
    with pytest.raises(JdlError, match=rf"^sequence\.max_vocab must be an integer, 0 \(no "
                                       rf"limit\) or > 4 \(the special tokens\), "
                                       rf"got {re.escape(repr(bad))}$"):
      text_lib.Vocabulary.build(texts, max_size=bad)
  assert text_lib.Vocabulary.build(texts, min_freq=np.int64(2), max_size=np.int32(6)).tokens[4:] \
      == ("a", "b")
  # Texts that are not token lists: a TypeError, or worse, a vocabulary of characters.
  for bad, match in ((None, r"texts must be token lists .* got None"),
                     (["a b", "c"], r"text 0 is a string \('a b'\), not a token list; "
                                    r"tokenize it first"),
                     ([["a", ["b"]]], r"texts must be lists of string tokens"),
                     ([1, 2], r"texts must be lists of string tokens")):
    with pytest.raises(JdlError, match=rf"^Vocabulary\.build: {match}"):
      text_lib.Vocabulary.build(bad)
  with pytest.raises(JdlError, match=r"^token level must be one of word, char, got 'sentence'"):
    text_lib.Vocabulary.build(texts, level="sentence")
  assert text_lib.Vocabulary.build(["ab", "b"], level="char").tokens[4:] == ("b", "a")
  # Ties alphabetical whatever the order of first occurrence (or of a set's hashing).
  tie = [["zeta", "mu", "alpha", "beta", "mu"], ["omega", "delta"]]
  assert text_lib.Vocabulary.build(tie).tokens[4:] == (
      "mu", "alpha", "beta", "delta", "omega", "zeta")
  # Tokens that are not strings: a TypeError of the sort, or a vocabulary that its own
  # JSON could not load ([[1, 2]] built ('<pad>', ..., 1, 2)).
  for bad, shown in (([["a", 1]], "1 (int)"), ([[None, "a"]], "None (NoneType)"),
                     ([[1, 2]], "1 (int)"), ([[b"a"]], "b'a' (bytes)")):
    with pytest.raises(JdlError, match=rf"^Vocabulary\.build: texts must be lists of string "
                                       rf"tokens, got the token {re.escape(shown)}$"):
      text_lib.Vocabulary.build(bad)
  with pytest.raises(JdlError, match=r"^pad_sequences: value \(the fill id\) must be an "
                                     r"integer, got 'x'"):
    text_lib.pad_sequences([[1, 2]], 3, value="x")


def test_vocabulary_json_round_trip():
  v = text_lib.Vocabulary.build([list("3 march 1998")], level="char")
  back = text_lib.Vocabulary.from_json(json.loads(json.dumps(v.to_json())))
  assert back == v and back.level == "char"
  assert back.decode_text(back.encode_text("3 March", eos=True)) == "3 march"
  for bad in ({}, {"tokens": "abc"}, {"tokens": ["a", "b", "c", "d"]}, [1]):
    with pytest.raises(JdlError):
      text_lib.Vocabulary.from_json(bad)
  # A bad level or lowercase was taken as it came ('false' as True).
  tokens = list(v.tokens)
  for bad, match in (({"level": "sentence"}, r"'level' must be one of word, char, got 'sentence'"),
                     ({"lowercase": "false"}, r"'lowercase' must be true or false, got 'false'"),
                     ({"lowercase": 0}, r"'lowercase' must be true or false, got 0")):
    with pytest.raises(JdlError, match=rf"^not a vocabulary: {match}$"):
      text_lib.Vocabulary.from_json({"tokens": tokens, **bad})
  assert text_lib.Vocabulary.from_json({"tokens": tokens}) == text_lib.Vocabulary(tuple(tokens))
  # decode keeps <unk> (it stands for a word) and drops <pad> and <bos>.
  assert v.decode([2, 4, 1, 0, 5, 3, 6]) == [v.tokens[4], "<unk>", v.tokens[5]]


def test_tokenize_word_and_char():
  assert text_lib.tokenize("It 's  GOOD .") == ["it", "'s", "good", "."]
  assert text_lib.tokenize(" 3  May ", level="char") == list("3 may")
  assert text_lib.tokenize("A b", lowercase=False) == ["A", "b"]
  # Not a str: an AttributeError of lower(), or bytes tokens.
  for bad, match in ((None, r"got None \(NoneType\)$"), (["a b"], r"got \['a b'\] \(list\)$"),
                     (b"good film", r"got b'good film' \(bytes\) \(decode bytes first")):
    with pytest.raises(JdlError, match=rf"^tokenize: text must be a str, {match}"):
      text_lib.tokenize(bad)


@pytest.mark.parametrize("padding,truncating,expected", [
    ("pre", "pre", [[0, 0, 1, 2], [4, 5, 6, 7], [0, 0, 0, 9]]),
    ("post", "pre", [[1, 2, 0, 0], [4, 5, 6, 7], [9, 0, 0, 0]]),
    ("pre", "post", [[0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 9]]),
    ("post", "post", [[1, 2, 0, 0], [3, 4, 5, 6], [9, 0, 0, 0]]),
])
def test_pad_sequences_against_hand_written(padding, truncating, expected):
  seqs = [[1, 2], [3, 4, 5, 6, 7], [9]]
  out = text_lib.pad_sequences(seqs, 4, padding=padding, truncating=truncating)
  assert out.dtype == np.int32 and out.tolist() == expected


def test_pad_sequences_defaults_and_errors():
  assert text_lib.pad_sequences([[1], [2, 3]]).tolist() == [[0, 1], [2, 3]]  # Keras: 'pre'.
  with pytest.raises(JdlError, match="padding"):
    text_lib.pad_sequences([[1]], 2, padding="middle")
  # A non-integer maxlen was a TypeError; tokens instead of ids a ValueError of int().
  for bad in (2.5, "3", True):
    with pytest.raises(JdlError, match=rf"^maxlen must be an integer >= 1 \(or None or 0: "
                                       rf"the longest sequence\), got {re.escape(repr(bad))}$"):
      text_lib.pad_sequences([[1, 2, 3]], bad)
  for bad in ([[4], ["a", "b"]], [[4], [1.5]], [[4], [[1], [2]]], [[4], 5]):
    with pytest.raises(JdlError, match=r"^pad_sequences: sequences must hold integer token "
                                       r"ids, but sequence 1 is .*; map words to ids through "
                                       r"a Vocabulary first"):
      text_lib.pad_sequences(bad, 3)
  assert text_lib.pad_sequences([np.array([5, 6], np.int64), (), range(3)], 2).tolist() == [
      [5, 6], [0, 0], [1, 2]]
  # An id or fill value that int32 cannot hold wrapped (2**32 + 5 became 5) or raised
  # numpy's OverflowError.
  for seqs, value, shown in (([[2**32 + 5, 7]], 0, "0 to 4294967301"),
                             ([[1]], 2**40, "1 to 1099511627776"),
                             ([[-2**31 - 1]], 0, "-2147483649 to 0")):
    with pytest.raises(JdlError, match=rf"^pad_sequences: ids and the fill value must fit "
                                       rf"int32 \(-2147483648\.\.2147483647\), got values "
                                       rf"from {shown}$"):
      text_lib.pad_sequences(seqs, 3, value=value)
  assert text_lib.pad_sequences([[2**31 - 1]], 2, value=-2**31).tolist() == [[-2**31, 2**31 - 1]]
  assert text_lib.pad_sequences([[300]], 1, dtype=np.int64).dtype == np.int64
  # No sequences and no maxlen: there is no longest one (it said "maxlen must be >= 1").
  with pytest.raises(JdlError, match=r"^pad_sequences: no sequences to take the longest of; "
                                     r"pass maxlen$"):
    text_lib.pad_sequences([])
  assert text_lib.pad_sequences([], 3).shape == (0, 3)


# ---------------------------------------------------------------- TSV loader

TRAIN = "sentence\tlabel\n" + ("a charming and affecting journey \t1\n" "bleak and desperate \t0\n"
                               "a charming film \t1\n" "desperate and dull \t0\n") * 8
DEV = "sentence\tlabel\na charming journey \t1\ndull and bleak \t0\n"


def _sst2(tmp_path, train=TRAIN, dev=DEV):
  return write_sst2(tmp_path, train, dev)


def test_sst2_loader_builds_vocab_on_train_and_pads(tmp_path):
  opts = text_data.TextOptions(maxlen=4, min_freq=2, padding="post", truncating="post")
  d = sources.load_dataset("sst2", data_dir=_sst2(tmp_path), text=opts)
  v = d.vocab["text"]
  assert d.x_train.shape == (32, 4) and d.x_train.dtype == np.int32
  assert d.y_train.tolist()[:4] == [1, 0, 1, 0] and d.y_test.tolist() == [1, 0]
  assert d.x_train[2].tolist() == v.encode(["a", "charming", "film"]) + [0]
  assert "journey" in v.tokens and d.x_test[1].tolist() == v.encode(["dull", "and", "bleak"]) + [0]
  # A saved vocabulary replaces the one built on train.tsv.
  other = text_lib.Vocabulary.build([["dull"]])
  d2 = sources.load_dataset("sst2", data_dir=tmp_path, text=opts, vocab={"text": other})
  assert d2.vocab["text"] is other and d2.x_test[1].tolist() == [4, 1, 1, 0]
  # 'pre' padding and truncation apply to the dev split as to train.
  pre = dataclasses.replace(opts, maxlen=2, padding="pre", truncating="pre")
  d3 = sources.load_dataset("sst2", data_dir=tmp_path, text=pre)
  v3 = d3.vocab["text"]
  assert d3.x_train[2].tolist() == v3.encode(["charming", "film"])
  assert d3.x_test.tolist() == [v3.encode(["charming", "journey"]), v3.encode(["and", "bleak"])]
  d4 = sources.load_dataset("sst2", data_dir=tmp_path, text=dataclasses.replace(
      opts, maxlen=5, padding="pre"))
  assert d4.x_test[1].tolist() == [0, 0] + d4.vocab["text"].encode(["dull", "and", "bleak"])


def test_a_given_vocabulary_must_be_the_datasets_and_tokenize_as_the_config(tmp_path):
  # A vocabulary built without lower-casing, given with the default options, encoded
  # every word as <unk>, silently; a char-level one, given to word-level text, too.
  data_dir = _sst2(tmp_path, train=TRAIN.replace("a charming film", "A Charming film"))
  cased = text_data.TextOptions(lowercase=False)
  built = sources.load_dataset("sst2", data_dir=data_dir, text=cased)
  v = built.vocab["text"]
  assert not v.lowercase and "Charming" in v.tokens
  again = sources.load_dataset("sst2", data_dir=data_dir, text=cased, vocab={"text": v})
  np.testing.assert_array_equal(again.x_train, built.x_train)
  chars = text_lib.Vocabulary.build([list("abc")], level="char")
  for vocab, options, shown in (
      (v, text_data.TextOptions(), "level='word', sequence.lowercase=False, but the config "
                                   "tokenizes with level='word', lowercase=True"),
      (chars, text_data.TextOptions(), "level='char', sequence.lowercase=True, but the config "
                                       "tokenizes with level='word', lowercase=True")):
    with pytest.raises(JdlError, match=rf"^the vocabulary given was built with sequence\."
                                       rf"{re.escape(shown)}; set them to the vocabulary's"):
      sources.load_dataset("sst2", data_dir=data_dir, text=options, vocab={"text": vocab})
  # Keys and values: a KeyError, a TypeError of encode(), or a dates run's vocabularies
  # silently ignored (a new one built).
  dates = sources.load_dataset("dates", n_samples=40).vocab
  for name, vocab, match in (
      ("sst2", dates, r"dataset 'sst2' reads the vocabularies \['text'\], but vocab holds "
                      r"\['src', 'tgt'\] \(another dataset's run\?\)"),
      ("dates", {"text": v}, r"dataset 'dates' reads the vocabularies \['src', 'tgt'\], but "
                             r"vocab holds \['text'\]"),
      ("dates", {"src": dates["src"]}, r"dataset 'dates' reads the vocabularies \['src', 'tgt'\], "
                                       r"but vocab holds \['src'\]$"),
      ("dates", {**dates, "tgt": "x"}, r"vocab\['tgt'\] must be a "
                                       r"jdl\.sequence\.text\.Vocabulary, got str"),
      ("sst2", {"text": ["x"]}, r"vocab\['text'\] must be a jdl\.sequence\.text\.Vocabulary, "
                                r"got list"),
      ("digits", {"text": v}, r"vocab applies only to the text datasets \(sst2, dates\), "
                              r"not to 'digits'; leave it unset")):
    with pytest.raises(JdlError, match=rf"^{match}"):
      sources.load_dataset(name, data_dir=data_dir if name == "sst2" else "",
                           n_samples=40 if name == "dates" else None, vocab=vocab)
  same = sources.load_dataset("dates", n_samples=40, vocab=dates)
  assert same.vocab == dates


@pytest.mark.parametrize("field, value, message", [
    ("padding", "middle", r"sequence\.padding must be 'pre' or 'post', got 'middle'"),
    ("truncating", 1, r"sequence\.truncating must be 'pre' or 'post', got 1"),
    ("level", "sentence", r"sequence\.level must be 'word' or 'char', got 'sentence'"),
    ("lowercase", "yes", r"sequence\.lowercase must be True or False, got 'yes'"),
    ("maxlen", -1, r"sequence\.maxlen must be an integer >= 0 .*got -1"),
    ("maxlen", 2.5, r"sequence\.maxlen must be an integer >= 0 .*got 2\.5"),
    ("maxlen", True, r"sequence\.maxlen must be an integer >= 0 .*got True"),
    ("seq_len", 1, r"sequence\.seq_len \(the adding problem's length\) must be an integer >= 2"),
    ("min_freq", 0, r"sequence\.min_freq must be >= 1, got 0"),
    ("max_vocab", 2, r"sequence\.max_vocab must be 0 \(no limit\) or > 4"),
])
def test_text_options_refuse_a_bad_field_whichever_dataset_reads_it(field, value, message):
  # Each was accepted by the datasets that do not read it, and lowercase='yes' by sst2
  # too (as True); the Python API now refuses them as the CLI's config check does.
  with pytest.raises(JdlError, match=rf"^{message}"):
    text_data.TextOptions(**{field: value})
  sequence = {**base_config().sequence.to_dict(), field: value}
  with pytest.raises(JdlError, match=rf"^{message}"):
    text_data.TextOptions.from_config(sequence)
  assert text_data.TextOptions(lowercase=np.bool_(False), maxlen=np.int64(3)).maxlen == 3


# Each structural sequence key, another value of it, and the datasets (loaded with
# both values) whose arrays it changes: the others ignore it.
_SEQUENCE_CHANGES = {"maxlen": 3, "padding": "pre", "truncating": "pre", "level": "char",
                     "lowercase": False, "min_freq": 20, "max_vocab": 6, "seq_len": 7}


def test_a_sequence_key_is_structural_for_the_datasets_that_read_it(tmp_path):
  # A resume (or evaluation) of a dates run with another sequence.level was refused,
  # though dates is always characters. structural_diff now counts a sequence key
  # where the dataset reads it; here each key's reach is measured by loading the
  # datasets with and without the change.
  from jdl import config as config_lib
  assert {f"sequence.{k}" for k in _SEQUENCE_CHANGES} == {
      k for k in config_lib.STRUCTURAL_KEYS if k.startswith("sequence.")}
  upper = TRAIN.replace("a charming film", "A Charming film")  # For lowercase.
  data_dir = {"sst2": str(_sst2(tmp_path, train=upper)), "adding_problem": "", "dates": ""}
  for key, value in _SEQUENCE_CHANGES.items():
    for name in data_dir:
      def load(options, name=name):
        d = sources.load_dataset(name, data_dir=data_dir[name], text=options,
                                 n_samples=None if name == "sst2" else 60)
        return d.x_train, d.x_test
      # Truncation shows only where texts are cut: at maxlen 3 in both.
      base = text_data.TextOptions(maxlen=3 if key == "truncating" else 0)
      before = load(base)
      after = load(dataclasses.replace(base, **{key: value}))
      changes = any(a.shape != b.shape or not np.array_equal(a, b)
                    for a, b in zip(before, after))
      saved = json.loads(config_lib.to_json(base_config()))
      saved["dataset"] = name
      current = json.loads(json.dumps(saved))
      current["sequence"][key] = value
      diff = config_lib.structural_diff(saved, current)
      assert diff == ([f"sequence.{key}"] if changes else []), (name, key, diff)
  # Another dataset: the keys either one reads count.
  saved["dataset"], current["dataset"] = "sst2", "dates"
  current["sequence"]["level"] = "char"
  assert config_lib.structural_diff(saved, current) == ["dataset", "sequence.level"]


def test_a_runs_vocabulary_holds_no_word_seen_only_in_its_validation_rows(tmp_path):
  # Each of 20 train rows has a word of its own; validation_split holds out 5 rows,
  # whose own words must be <unk> (1) as a test word unseen in training is.
  rows = "".join(f"common w{i:02d}\t{i % 2}\n" for i in range(20))
  config = jdl.load_config("sst2_lstm")
  config.data_dir = str(_sst2(tmp_path, train="sentence\tlabel\n" + rows))
  config.validation_split, config.sequence.min_freq, config.sequence.maxlen = 0.25, 1, 0
  data = run_data.load_data(config)
  own_word = lambda split: np.asarray(split.x)[:, 1]  # noqa: E731
  assert data.train.x.shape == (15, 2) and data.val.x.shape == (5, 2)
  assert (own_word(data.train) > 3).all() and len(set(own_word(data.train).tolist())) == 15
  assert own_word(data.val).tolist() == [text_lib.UNK_ID] * 5
  assert len(data.vocab["text"]) == 4 + 1 + 15
  # The dataset alone (no run, so no held-out rows) has every train word.
  dataset = sources.load_dataset("sst2", data_dir=config.data_dir)
  assert len(dataset.vocab["text"]) == 4 + 1 + 20
  # A dataset given to a run is used as it is (with its own changes, its vocabulary).
  ones = np.ones_like(dataset.y_train)
  given = run_data.load_data(config, dataclasses.replace(dataset, y_train=ones))
  assert len(given.vocab["text"]) == 4 + 1 + 20
  assert np.concatenate([given.train.y, given.val.y]).tolist() == [1] * 20
  # With the rows given by classes= and examples_per_class=, the same: only trained rows.
  config.classes, config.examples_per_class, config.validation_split = (1, 0), 6, 0.5
  data = run_data.load_data(config)
  assert data.train.x.shape == (6, 2) and data.val.x.shape == (6, 2)
  assert (own_word(data.train) > 3).all()
  assert own_word(data.val).tolist() == [text_lib.UNK_ID] * 6
  assert len(data.vocab["text"]) == 4 + 1 + 6


@pytest.mark.parametrize("train,message", [
    (None, "does not exist"),
    ("", "is empty"),
    ("text\tlabel\nfoo\t1\n", "needs sentence, label"),
    ("sentence\tlabel\nfoo\t1\nbar\n", "line 3: 1 tab-separated fields"),
    ("sentence\tlabel\nfoo\tpositive\n", "line 2: label 'positive' is not an integer"),
    ("sentence\tlabel\nfoo\t1\nbar\t2\n", "train.tsv, line 3: label '2' is not a class id in 0..1"),
    ("sentence\tlabel\n", "no rows"),
])
def test_sst2_bad_files_are_one_line_errors_exit_2(tmp_path, capsys, train, message):
  if train is not None:
    _sst2(tmp_path, train=train)
  code = cli.main(["train", "--config", "sst2_lstm", "--workdir", str(tmp_path / "run"),
                   f"--config.data_dir={tmp_path}"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and message in err, err
  assert err.startswith("jdl: error: ") and not (tmp_path / "run").exists()


@pytest.mark.parametrize("config,override", [
    ("sst2_lstm", "--config.model.pad_id=1"),
    ("sst2_conv1d", "--config.model.pad_id=3"),
    ("seq2seq_dates", "--config.model.eos_id=7"),
    ("seq2seq_dates", "--config.model.bos_id=0"),
])
def test_special_token_ids_other_than_the_vocabularies_are_refused(tmp_path, capsys, config,
                                                                    override):
  # The data is padded with 0 and the loss and decoding use 0/2/3 whatever the model
  # was told: pad_id=1 masked <unk> tokens and attended to the padding.
  key = override.split("=")[0].rsplit(".", 1)[1]
  code = cli.main(["train", "--config", config, "--workdir", str(tmp_path / "run"),
                   f"--config.data_dir={_sst2(tmp_path / 'data')}", override])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1, err
  assert f"model.{key}=" in err and "jdl's vocabularies give that token id" in err, err
  assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- generators


def test_dates_are_deterministic_correct_and_test_days_held_out():
  a_train, a_test = text_data.dates_pairs(500, 100, seed=3)
  b_train, b_test = text_data.dates_pairs(500, 100, seed=3)
  assert a_train == b_train and a_test == b_test
  assert text_data.dates_pairs(500, 100, seed=4)[0] != a_train
  assert {t for _, t in a_train}.isdisjoint({t for _, t in a_test})
  date = datetime.date(1998, 3, 3)
  written = [text_data.format_date(date, s) for s in range(len(text_data._FORMATS))]
  assert "3 march 1998" in written and "tuesday, march 3, 1998" in written
  assert "3/3/98" in written and "3rd of march 1998" in written
  for _, iso in a_train:
    datetime.date.fromisoformat(iso)
  # At the experiment's size: the day pools are disjoint, and no pair occurs twice in a
  # split (58 of the 1,000 rows validation held out of train were copies of train rows;
  # '3 may 1998' is written alike in two formats).
  train, test = text_data.dates_pairs(20000, 2000, seed=0)
  assert {t for _, t in train}.isdisjoint({t for _, t in test})
  assert len(set(train)) == 20000 and len(set(test)) == 2000
  assert len({t for _, t in test}) <= int(36525 * 0.1)
  with pytest.raises(JdlError, match=r"^dates: 400000 train pairs asked, but its 32873 days in "
                                     r"12 formats make only 391673 distinct ones; lower n_samples"):
    text_data.dates_pairs(400_000, 10, seed=0)


def test_adding_problem_markers_and_targets():
  x, y = text_data.adding_problem(64, 20, seed=0)
  assert x.shape == (64, 20, 2) and y.shape == (64, 1)
  marks = x[..., 1]
  assert (marks.sum(1) == 2).all() and (marks[:, :10].sum(1) == 1).all()
  np.testing.assert_allclose(y[:, 0], (x[..., 0] * marks).sum(1), rtol=1e-6)
  np.testing.assert_array_equal(text_data.adding_problem(64, 20, seed=0)[0], x)


# ------------------------------------------------------- masked seq2seq loss


class _Causal(nn.Module):
  """Logits at t from tgt_in[:t+1] and the source's bag of tokens: causal, as a decoder."""

  @nn.compact
  def __call__(self, src, tgt_in, train=False):
    mask = (src != 0)[..., None]
    bag = jnp.sum(nn.Embed(9, 8)(src) * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1)
    h = jnp.cumsum(nn.Embed(9, 8)(tgt_in), axis=1) + bag[:, None]
    return nn.Dense(9)(jnp.tanh(h))


def test_masked_token_loss_ignores_padding():
  src = jnp.array([[5, 6, 0], [7, 0, 0]])
  tgt = jnp.array([[2, 4, 5, 3], [2, 6, 3, 0]])  # <bos> ... <eos> <pad>.
  model = _Causal()
  params = model.init(jax.random.key(0), src, tgt[:, :-1])["params"]
  task = seq_tasks.Seq2SeqTask(apply_fn=model.apply, loss=None, metric_names=seq_tasks.METRICS,
                               num_classes=0)

  @jax.jit
  def loss(src, tgt, mask):
    batch = {"x": src, "y": tgt, "mask": jnp.asarray(mask, jnp.float32)}
    value, (per_example, outputs, _) = task.loss_fn(params, {}, batch, jax.random.key(1), False)
    return value, task.metrics(task.metric_names, outputs, batch, per_example)

  base, m = loss(src, tgt, [1, 1])
  padded = jnp.pad(tgt, ((0, 0), (0, 5)))  # Five more <pad> columns.
  more_src = jnp.pad(src, ((0, 0), (0, 4)))
  np.testing.assert_allclose(loss(more_src, padded, [1, 1])[0], base, rtol=1e-6)
  # A padded example (mask 0) counts nowhere.
  with_pad_row = loss(jnp.concatenate([src, src[:1]]), jnp.concatenate([tgt, tgt[:1] * 0 + 5]),
                      [1, 1, 0])
  np.testing.assert_allclose(with_pad_row[0], base, rtol=1e-6)
  assert int(m["loss"]["count"]) == 5 and int(m["exact_match"]["count"]) == 2
  assert int(with_pad_row[1]["token_accuracy"]["count"]) == 5
  # The padded row's tokens are all masked: it must not count as an exact match.
  assert int(with_pad_row[1]["exact_match"]["count"]) == 2
  assert float(with_pad_row[1]["exact_match"]["sum"]) == float(m["exact_match"]["sum"])
  # By hand: mean CE over the 5 real target tokens.
  logits = model.apply({"params": params}, src, tgt[:, :-1])
  logp, tgt = np.asarray(jax.nn.log_softmax(logits)), np.asarray(tgt)
  real = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
  expected = -np.mean([logp[b, t, tgt[b, t + 1]] for b, t in real])
  np.testing.assert_allclose(base, expected, rtol=1e-5)


def test_label_smoothing_of_the_token_loss_against_the_smoothed_one_hot_formula():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 9)).astype(np.float32) * 3
  targets = rng.integers(0, 9, size=(2, 4))
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
  alpha = 0.2
  per_token, total, count = seq_tasks.masked_token_loss(jnp.asarray(logits),
                                                        jnp.asarray(targets),
                                                        jnp.asarray(mask), alpha)
  logp = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
  smoothed = (1 - alpha) * np.eye(9)[targets] + alpha / 9
  expected = -np.sum(smoothed * logp, axis=-1) * mask
  np.testing.assert_allclose(per_token, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(total, expected.sum(), rtol=1e-5)
  assert float(count) == 5


def test_seq2seq_config_label_smoothing_reaches_the_loss():
  import dataclasses
  config = jdl.load_config("seq2seq_dates")
  config.update({"n_samples": 96, "batch_size": 16, "label_smoothing": 0.3,
                 "tensorboard": False, "plots": False})
  with config.model.unlocked():
    config.model.update({"hidden": 8, "embed_dim": 4})
  trainer = jdl.Trainer(config, quiet=True)
  task, state = trainer.task, trainer.state
  batch = {"x": trainer.data.train.x[:16], "y": trainer.data.train.y[:16],
           "mask": jnp.ones((16,), jnp.float32)}
  losses = [t.loss_fn(state.params, state.model_state, batch, jax.random.key(0), False)[0]
            for t in (task, dataclasses.replace(task, label_smoothing=0.0))]
  assert task.label_smoothing == 0.3 and abs(float(losses[0] - losses[1])) > 1e-4


def test_strip_ids():
  assert seq_tasks.strip_ids([2, 5, 6, 3, 7], bos_id=2, eos_id=3) == (5, 6)
  assert seq_tasks.strip_ids([5, 6, 0, 0], bos_id=2, eos_id=3) == (5, 6)


# ------------------------------------------------- end to end and resume


def test_predict_text_of_a_run_on_swapped_classes_prints_the_datasets_label(tmp_path, capsys):
  # classes=(1, 0) trains label 1 as class 0: the printed label was the column index.
  config = base_config()
  config.update({"dataset": "sst2", "data_dir": str(_sst2(tmp_path / "data")),
                 "normalize": "none", "batch_size": 8, "num_epochs": 1, "classes": (1, 0),
                 "tensorboard": False, "plots": False, "validation_split": 0.0})
  config.sequence.maxlen = 6
  config.model.name = "text_rnn"
  with config.model.unlocked():
    config.model.update({"hidden": (4,), "embed_dim": 4, "bidirectional": False})
  jdl.fit(config, tmp_path / "run", quiet=True)
  capsys.readouterr()
  texts = ["a charming journey", "dull and bleak", "film"]
  assert cli.main(["predict", "--workdir", str(tmp_path / "run"),
                   *(a for t in texts for a in ("--text", t))]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [p["label"] for p in lines] == [(1, 0)[int(np.argmax(p["probabilities"]))]
                                         for p in lines]


def test_text_run_resumes_exactly_with_its_vocabulary_then_evaluate_predict_cli(
    tmp_path, capsys):
  data = _sst2(tmp_path / "data")
  config = base_config()
  config.update({"dataset": "sst2", "data_dir": str(data), "normalize": "none",
                 "batch_size": 8, "num_epochs": 3, "checkpoint_every_steps": 2,
                 "tensorboard": False, "plots": False, "async_checkpoints": False,
                 "validation_split": 0.0, "monitor": ""})
  config.sequence.maxlen = 6
  config.model.name = "text_rnn"
  with config.model.unlocked():
    config.model.update({"hidden": (8,), "embed_dim": 8, "dropout_rate": 0.2,
                         "bidirectional": False})
  config.optimizer.clip_norm = 1.0
  config.lock()
  full = jdl.fit(config, tmp_path / "full", quiet=True)
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(config, tmp_path / "resumed", quiet=True, callbacks=[Crash(at_step=7)])
  # 32 examples, 4 steps an epoch: the crash at step 8 leaves step 6, mid-epoch 2.
  assert max(int(p.name) for p in (tmp_path / "resumed" / "checkpoints").iterdir()
             if p.name.isdigit()) == 6
  resumed = jdl.fit(config, tmp_path / "resumed", quiet=True)
  chex.assert_trees_all_equal(jax.device_get(full.state.params),
                              jax.device_get(resumed.state.params))
  assert (tmp_path / "full" / "vocab.json").read_text() == (
      tmp_path / "resumed" / "vocab.json").read_text()
  saved = json.loads((tmp_path / "full" / "vocab.json").read_text())
  assert saved["text"]["tokens"][:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
  # The CLI on the finished run, with the vocabulary saved in its checkpoint.
  capsys.readouterr()
  assert cli.main(["evaluate", "--workdir", str(tmp_path / "full")]) == 0
  metrics = json.loads(capsys.readouterr().out)
  assert set(metrics) == {"accuracy", "loss"}
  assert metrics["accuracy"] == pytest.approx(full.test_metrics["accuracy"])
  assert cli.main(["predict", "--workdir", str(tmp_path / "full"), "--text",
                   "a charming journey", "--text", "unseen words only", "--text", ""]) == 0
  out, err = capsys.readouterr()
  lines = [json.loads(line) for line in out.splitlines()]
  assert [p["text"] for p in lines] == ["a charming journey", "unseen words only", ""]
  assert all(p["label"] in (0, 1) and abs(sum(p["probabilities"]) - 1) < 1e-3 for p in lines)
  # Answered, and said: a text of unknown words only, and one of no words.
  assert err.splitlines() == [
      "jdl: warning: --text 2 ('unseen words only'): none of its tokens is in the run's "
      "vocabulary", "jdl: warning: --text 3 (''): it has no tokens"], err
  assert cli.main(["predict", "--workdir", str(tmp_path / "full"), "--input", "x"]) == 2
  assert cli.main(["predict", "--workdir", str(tmp_path / "full"), "--text", "x",
                   "--greedy"]) == 2
  assert "--greedy is for seq2seq runs" in capsys.readouterr().err
  # The data moved (another host): its error's advice, --config.data_dir, is taken.
  moved = data.rename(tmp_path / "moved")
  predict = ["predict", "--workdir", str(tmp_path / "full"), "--text", "a charming journey"]
  assert cli.main(predict) == 2
  assert "set --config.data_dir" in capsys.readouterr().err
  assert cli.main(predict + [f"--config.data_dir={moved}"]) == 0
  assert json.loads(capsys.readouterr().out) == lines[0]
  assert cli.main(predict + ["--config.batch_size=4"]) == 2
  assert "takes only data_dir, download" in capsys.readouterr().err
  moved.rename(data)
  # A checkpoint trained on other text (so another vocabulary) refuses to resume, with
  # or without the data's fingerprint in its metadata.
  (data / "train.tsv").write_text(TRAIN.replace("charming", "lovely"))
  with pytest.raises(JdlError, match="another vocabulary"):
    jdl.fit(config, tmp_path / "resumed", quiet=True)
  for path in (tmp_path / "resumed").glob("checkpoints/*/meta/metadata"):
    meta = json.loads(path.read_text())
    del meta["data"]
    path.write_text(json.dumps(meta))
  with pytest.raises(JdlError, match="another vocabulary"):
    jdl.fit(config, tmp_path / "resumed", quiet=True)


def test_a_text_shorter_than_the_convolutions_window_is_said(tmp_path):
  # No feature survives the convolutions: "good" was answered as "" without a word.
  config = jdl.load_config("sst2_conv1d")
  config.data_dir, config.batch_size = str(_sst2(tmp_path)), 8
  trainer = jdl.Trainer(config, None, quiet=True)
  shortest = trainer.model.min_length()
  assert shortest > 2
  words = ["charming"] * (shortest - 1), ["charming"] * shortest
  assert trainer.text_problems([" ".join(w) for w in words]) == [
      f"it has {shortest - 1} tokens, fewer than the {shortest} the model's convolutions "
      "need for one feature: it is answered as an empty text", None]
  # Some words unknown: "isn't" and "good!" are <unk> where SST-2 writes "is n't".
  assert trainer.text_problems(["a charming film isn't good!"]) == [
      "2 of its 5 tokens are not in the run's vocabulary (\"isn't\", 'good!'): read as "
      "<unk>; words are split at spaces only, as the training text was (SST-2 writes "
      "\"is n't\", \"good !\")"]
  # Too short matters more than an unknown word: it is answered as an empty text.
  assert trainer.text_problems(["zzz " * (shortest - 2) + "charming"])[0].startswith(
      f"it has {shortest - 1} tokens, fewer than")
  empty, short = trainer.predict(trainer.encode_texts(["", " ".join(words[0])]))
  np.testing.assert_array_equal(empty, short)  # As the warning says.
  # Ids outside the vocabulary were read silently (NaN or clamped embeddings).
  ids = trainer.encode_texts(["a charming film"] * 3)
  n = len(trainer.vocab["text"])
  for bad in (n, -1):
    wrong = ids.copy()
    wrong[1, 0] = bad
    with pytest.raises(JdlError, match=rf"predict needs token ids in \[0, {n}\) \(the run's "
                                       rf"'text' vocabulary has {n} tokens\); 1 of 3 examples "
                                       rf"hold others, e.g. {bad} in example 1"):
      trainer.predict(wrong)


def test_teacher_forced_metrics_choose_among_the_tokens_decoding_can_emit():
  # Decoding never emits <pad> or <bos>; the metrics' argmax took them, so a model
  # whose largest logit was <pad> scored below its greedy decoding.
  from jdl.sequence.tasks import Seq2SeqTask
  pad, bos, eos = text_lib.PAD_ID, text_lib.BOS_ID, text_lib.EOS_ID
  y = np.array([[bos, 5, 6, eos], [bos, 7, eos, pad]], np.int32)
  logits = np.zeros((2, 3, 9), np.float32)
  for b, t, tok in [(0, 0, 5), (0, 1, 6), (0, 2, eos), (1, 0, 8), (1, 1, eos)]:
    logits[b, t, tok] = 1.0
  logits[0, 0, pad] = logits[0, 1, bos] = 2.0  # Larger, but never emitted.
  logits[1, 1, pad] = 2.0
  task = Seq2SeqTask(apply_fn=None, loss=None, metric_names=("token_accuracy", "exact_match"),
                     num_classes=0)
  batch = {"x": np.zeros((2, 2), np.int32), "y": y, "mask": np.ones(2, np.float32)}
  token_mask = (y[:, 1:] != pad).astype(np.float32)
  m = task.metrics(task.metric_names, (jnp.asarray(logits), jnp.asarray(token_mask)), batch,
                   jnp.zeros(2))
  # Reference: numpy argmax over the ids a sequence can emit.
  allowed = np.where(np.isin(np.arange(9), [pad, bos]), -np.inf, logits).argmax(-1)
  right = (allowed == y[:, 1:]) & (token_mask > 0)
  assert float(m["token_accuracy"]["sum"]) == right.sum() == 4
  assert float(m["exact_match"]["sum"]) == 1  # Row 1 chose 8 for 7.


def test_public_names():
  import jdl.sequence
  for name in ("Vocabulary", "pad_sequences", "tokenize", "greedy_decode", "beam_search"):
    assert hasattr(jdl.sequence, name)
  assert {"sst2", "adding_problem", "dates"} <= set(sources.DATASETS)


def test_seq2seq_resumes_exactly_then_evaluate_predict_cli(tmp_path, capsys):
  config = jdl.load_config("seq2seq_dates")
  config.update({"n_samples": 96, "batch_size": 16, "num_epochs": 2, "validation_split": 0.0,
                 "checkpoint_every_steps": 2, "tensorboard": False, "plots": False,
                 "async_checkpoints": False, "monitor": ""})
  with config.model.unlocked():
    config.model.update({"hidden": 8, "embed_dim": 4, "dropout_rate": 0.1})
  config.sequence.beam_size = 2
  full = jdl.fit(config, tmp_path / "full", quiet=True)
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(config, tmp_path / "resumed", quiet=True, callbacks=[Crash(at_step=7)])
  resumed = jdl.fit(config, tmp_path / "resumed", quiet=True)
  chex.assert_trees_all_equal(jax.device_get(full.state.params),
                              jax.device_get(resumed.state.params))
  assert full.test_metrics == resumed.test_metrics
  assert {"token_accuracy", "exact_match", "loss", "greedy_exact_match",
          "beam_exact_match"} <= set(full.test_metrics)
  # (Teacher-forced and greedy exact match agree: test_seq2seq.py checks it on models
  # that match; this run's tiny model matches no sequence, so 0 == 0 told nothing.)
  capsys.readouterr()
  assert cli.main(["evaluate", "--workdir", str(tmp_path / "full")]) == 0
  assert json.loads(capsys.readouterr().out) == pytest.approx(full.test_metrics)
  assert cli.main(["predict", "--workdir", str(tmp_path / "full"), "--input", "3 march 1998",
                   "--greedy"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["input"] == "3 march 1998" and isinstance(out["prediction"], str)
  assert cli.main(["predict", "--workdir", str(tmp_path / "full"), "--text", "x"]) == 2
  run = jdl.load_run(tmp_path / "full")
  src = run.encode_texts(["3 march 1998", "4 may 2001"], vocab="src")
  src[1, 2] = len(run.vocab["src"])
  with pytest.raises(JdlError, match=r"decode needs token ids in \[0, \d+\).* 1 of 2 "
                                     r"examples hold others"):
    run.decode(src, beam=False)
  # A run trained without beam search (beam_size=0) predicts greedily.
  saved = tmp_path / "full" / "config.json"
  run = json.loads(saved.read_text())
  run["sequence"]["beam_size"] = 0
  saved.write_text(json.dumps(run))
  capsys.readouterr()
  assert cli.main(["predict", "--workdir", str(tmp_path / "full"), "--input",
                   "3 march 1998"]) == 0
  assert json.loads(capsys.readouterr().out) == out


def test_texts_are_a_list_of_str_and_zero_sources_decode_to_empty_arrays():
  config = jdl.load_config("seq2seq_dates")
  config.update({"n_samples": 64, "batch_size": 16, "tensorboard": False, "plots": False,
                 "async_checkpoints": False})
  with config.model.unlocked():
    config.model.update({"hidden": 8, "embed_dim": 4})
  config.sequence.beam_size = 2
  trainer = jdl.Trainer(config, None, quiet=True)
  width = trainer.data.train.x.shape[1]
  # One string was iterated: '3 march 1998' gave 12 sources of one character each.
  for method in (trainer.encode_texts, trainer.text_problems):
    name = method.__name__
    with pytest.raises(JdlError, match=rf"^{name} takes a list of texts, got one str "
                                       r"\('3 march 1998'\); pass \[text\]$"):
      method("3 march 1998", vocab="src")
    with pytest.raises(JdlError, match=rf"^{name} takes texts as str, but text 1 is a bytes "
                                       r"\(b'4 may 2001'\); give each text as a str$"):
      method(["3 march 1998", b"4 may 2001"], vocab="src")
    with pytest.raises(JdlError, match=rf"^{name} takes a list of texts, got a value of "
                                       r"type int$"):
      method(3, vocab="src")
  src = trainer.encode_texts(["3 march 1998"], vocab="src")
  assert src.shape == (1, width)
  assert trainer.encode_texts([], vocab="src").shape == (0, width)
  # Zero sources raised a raw IndexError; they decode to arrays of the outputs' shapes.
  for beam in (False, True):
    tokens, attention = trainer.decode(src, beam=beam)
    none, no_attention = trainer.decode(src[:0], beam=beam)
    assert none.shape == (0, *tokens.shape[1:]) and none.dtype == tokens.dtype == np.int32
    assert no_attention.shape == (0, *attention.shape[1:]) == (0, tokens.shape[1], width)
    assert no_attention.dtype == attention.dtype == np.float32


def test_sst2_without_data_dir_reads_the_default_folder(tmp_path, monkeypatch):
  monkeypatch.setenv("JDL_DATA_DIR", str(tmp_path))
  with pytest.raises(JdlError, match=r"found no train.tsv in .*sst2 \(the default folder: "
                     r"\$JDL_DATA_DIR/sst2.*set --config.data_dir"):
    sources.load_dataset("sst2", data_dir="")
  _sst2(tmp_path / "sst2")
  default = sources.load_dataset("sst2", data_dir="", text=text_data.TextOptions(maxlen=4))
  given = sources.load_dataset("sst2", data_dir=tmp_path / "sst2",
                               text=text_data.TextOptions(maxlen=4))
  np.testing.assert_array_equal(default.x_train, given.x_train)
  assert jdl.load_config("sst2_lstm").data_dir == ""  # Not a path relative to the cwd.
