"""Sequence datasets: SST-2 TSV files, the adding problem, date normalisation.

* ``sst2``: GLUE's SST-2 TSV files (``sentence<TAB>label`` with a header line) in
  ``data_dir``: ``train.tsv`` for training, ``dev.tsv`` as the test split (GLUE's
  ``test.tsv`` has no labels). Text is tokenized (:mod:`jdl.sequence.text`), the
  vocabulary built on ``train.tsv`` alone (a run builds it again on the rows it
  trains on, without those ``validation_split`` holds out), and every split padded /
  truncated to ``maxlen`` token ids (int32).
* ``adding_problem`` (Hochreiter & Schmidhuber 1997; Le et al. 2015's version):
  ``x: [N, T, 2]``, a uniform value and a marker channel with exactly two 1s, one
  in each half; the target is the sum of the two marked values. Predicting the
  mean (1) scores MSE 1/6.
* ``dates``: dates written in many formats (``3 march 1998``, ``03/03/98``,
  ``tuesday, march 3, 1998``, ...) to translate into ISO ``1998-03-03``,
  character level on both sides. Test dates are held out: no calendar day of the
  test split occurs in the train split, in any format; no (day, format) pair occurs
  twice in a split, so validation rows held out of train are not copies of train
  rows (their days may occur in train in other formats).
"""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
from collections.abc import Sequence

import numpy as np

from jdl.data import download as download_lib
from jdl.errors import JdlError, is_integer
from jdl.sequence import text as text_lib


@dataclasses.dataclass(frozen=True)
class TextOptions:
  """How text becomes padded token ids (``config.sequence``)."""
  maxlen: int = 0
  padding: str = "post"
  truncating: str = "post"
  level: str = "word"
  lowercase: bool = True
  min_freq: int = 1
  max_vocab: int = 0
  seq_len: int = 100

  def __post_init__(self):
    # Every field is checked, whichever dataset reads it: a bad value is a typo.
    for key in ("padding", "truncating"):
      if getattr(self, key) not in text_lib.PADDING:
        raise JdlError(f"sequence.{key} must be 'pre' or 'post', got {getattr(self, key)!r}")
    if self.level not in text_lib.LEVELS:
      raise JdlError(f"sequence.level must be 'word' or 'char', got {self.level!r}")
    if not isinstance(self.lowercase, (bool, np.bool_)):
      raise JdlError(f"sequence.lowercase must be True or False, got {self.lowercase!r}")
    if not is_integer(self.maxlen) or self.maxlen < 0:
      raise JdlError(f"sequence.maxlen must be an integer >= 0 (0: the longest train "
                     f"text), got {self.maxlen!r}")
    if not is_integer(self.seq_len) or self.seq_len < 2:
      raise JdlError(f"sequence.seq_len (the adding problem's length) must be an integer "
                     f">= 2, got {self.seq_len!r}")
    text_lib.check_vocab_options(self.min_freq, self.max_vocab)

  @classmethod
  def from_config(cls, seq) -> TextOptions:
    """The options of ``config.sequence``; raises ``JdlError`` for a bad value."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: seq[k] for k in names if k in seq})


# ------------------------------------------------------------------- SST-2
def read_tsv(path: pathlib.Path, columns: Sequence[str], *,
             line_numbers: list[int] | None = None) -> dict[str, list[str]]:
  """The named columns of a TSV file with a header line (no quoting, as GLUE's).

  The file is UTF-8, optionally with a byte-order mark, with LF or CRLF line ends
  (a CR inside a line is whitespace); blank lines (only whitespace, no tab), such as
  a trailing one, are skipped.

  Args:
    path: the file.
    columns: the header names of the columns to return.
    line_numbers: if given, receives the file's line number (1-based) of each row.

  Raises:
    JdlError: a missing or unreadable file, a missing column, a row with the
      wrong number of fields, or no rows; the message names the file and line.
  """
  if not path.is_file():
    raise JdlError(f"TSV file {path} does not exist; set --config.data_dir to the folder "
                   "holding train.tsv and dev.tsv")
  try:
    # utf-8-sig: spreadsheet tools often start the file with a byte-order mark. Lines
    # end at LF (CRLF's CR is stripped below); a CR inside a line is whitespace.
    text = path.read_bytes().decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise JdlError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
  body = text.rstrip("\r\n")
  if "\r" in body and "\n" not in body:
    raise JdlError(f"{path} ends its lines with CR alone (classic Mac OS); convert it to "
                   "LF or CRLF line ends")
  # Blank lines (no tab, only whitespace), e.g. trailing ones, hold no row: skipped.
  numbered = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)
              if "\t" in line or line.strip()]
  if not numbered:
    raise JdlError(f"{path} is empty; expected a header line with columns "
                   f"{', '.join(columns)}")
  header = numbered[0][1].split("\t")
  missing = [c for c in columns if c not in header]
  if missing:
    raise JdlError(f"{path} has columns {header} in its header line; it needs "
                   f"{', '.join(columns)}")
  where = [header.index(c) for c in columns]
  out: dict[str, list[str]] = {c: [] for c in columns}
  for n, line in numbered[1:]:
    fields = line.split("\t")
    if len(fields) != len(header):
      raise JdlError(f"{path}, line {n}: {len(fields)} tab-separated fields, the header "
                     f"has {len(header)}")
    for c, i in zip(columns, where):
      out[c].append(fields[i])
    if line_numbers is not None:
      line_numbers.append(n)
  if not out[columns[0]]:
    raise JdlError(f"{path} has a header but no rows")
  return out


def _labels(values: list[str], path: pathlib.Path, lines: Sequence[int], *,
            num_classes: int = 2) -> np.ndarray:
  ids = []
  for i, v in enumerate(values):
    try:
      ids.append(int(v))
    except ValueError:
      raise JdlError(f"{path}, line {lines[i]}: label {v!r} is not an integer class id"
                     ) from None
  outside = [i for i, label in enumerate(ids) if not 0 <= label < num_classes]
  if outside:
    bad = outside[0]
    raise JdlError(f"{path}, line {lines[bad]}: label {values[bad]!r} is not a class id in "
                   f"0..{num_classes - 1} ({len(outside)} such line"
                   f"{'s' if len(outside) > 1 else ''})")
  return np.array(ids, np.int32)


def load_sst2(data_dir: str, options: TextOptions, vocab: text_lib.Vocabulary | None = None):
  """``(x_train, y_train, x_test, y_test, vocab, rebuild)``: padded int32 ids and labels.

  The vocabulary is built on every row of train.tsv; ``rebuild(rows)`` gives
  ``(x_train, x_test, vocab)`` again with it built on the train rows ``rows``
  only (the rows a run trains on, once ``validation_split`` has held out its
  own). ``vocab`` (e.g. a run's saved one) replaces the built vocabulary, and
  ``rebuild`` is then ``None``.

  Raises:
    JdlError: a missing or bad file, or ``options`` that tokenize otherwise than
      ``vocab`` was built (its ids would mean other tokens).
  """
  if not data_dir:  # $JDL_DATA_DIR/sst2, else ~/.cache/jdl/sst2, as for MNIST.
    folder = download_lib.default_data_dir("sst2")
    if not (folder / "train.tsv").is_file():
      raise JdlError(f"dataset sst2 found no train.tsv in {folder} (the default folder: "
                     "$JDL_DATA_DIR/sst2, else ~/.cache/jdl/sst2); set --config.data_dir to "
                     "the folder holding GLUE's train.tsv and dev.tsv (e.g. "
                     "../shared/data/sst2)")
  else:
    folder = pathlib.Path(data_dir).expanduser()
  train_lines, test_lines = [], []
  train = read_tsv(folder / "train.tsv", ("sentence", "label"), line_numbers=train_lines)
  test = read_tsv(folder / "dev.tsv", ("sentence", "label"), line_numbers=test_lines)
  # The files' own errors (bad labels) come before those of the vocabulary settings.
  y_train = _labels(train["label"], folder / "train.tsv", train_lines)
  y_test = _labels(test["label"], folder / "dev.tsv", test_lines)
  if vocab is not None:  # Its ids mean the tokens of its own tokenizer.
    _check_tokenizer(vocab, options)
  tok = lambda s: text_lib.tokenize(s, level=options.level, lowercase=options.lowercase)  # noqa: E731
  train_tokens = [tok(s) for s in train["sentence"]]
  test_tokens = [tok(s) for s in test["sentence"]]

  def encode(vocab, rows=None):
    if vocab is None:
      kept = train_tokens if rows is None else [train_tokens[int(i)] for i in rows]
      vocab = text_lib.Vocabulary.build(kept, min_freq=options.min_freq,
                                        max_size=options.max_vocab, level=options.level,
                                        lowercase=options.lowercase)
    pad = lambda seqs, maxlen: text_lib.pad_sequences(  # noqa: E731
        seqs, maxlen, padding=options.padding, truncating=options.truncating)
    x_train = pad([vocab.encode(t) for t in train_tokens], options.maxlen or None)
    x_test = pad([vocab.encode(t) for t in test_tokens], x_train.shape[1])
    return x_train, x_test, vocab

  rebuild = None if vocab is not None else (lambda rows: encode(None, rows))
  x_train, x_test, vocab = encode(vocab)
  return x_train, y_train, x_test, y_test, vocab, rebuild


def _check_tokenizer(vocab: text_lib.Vocabulary, options: TextOptions) -> None:
  """Raises ``JdlError`` when ``options`` tokenize otherwise than ``vocab`` was built:
  its ids would then mean other tokens (every word ``<unk>``, say)."""
  given = (options.level, bool(options.lowercase))
  built = (vocab.level, bool(vocab.lowercase))
  if given != built:
    raise JdlError(
        f"the vocabulary given was built with sequence.level={built[0]!r}, "
        f"sequence.lowercase={built[1]}, but the config tokenizes with level={given[0]!r}, "
        f"lowercase={given[1]}; set them to the vocabulary's (its ids mean those tokens)")


# ---------------------------------------------------------- adding problem
def adding_problem(n: int, seq_len: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``x: [n, seq_len, 2]`` float32 (values, markers) and ``y: [n, 1]`` float32."""
  if seq_len < 2:
    raise JdlError(f"the adding problem needs sequence.seq_len >= 2, got {seq_len}")
  rng = np.random.default_rng(seed)
  values = rng.uniform(0.0, 1.0, (n, seq_len)).astype(np.float32)
  half = seq_len // 2
  first = rng.integers(0, half, n)
  second = rng.integers(half, seq_len, n)
  markers = np.zeros((n, seq_len), np.float32)
  markers[np.arange(n), first] = 1.0
  markers[np.arange(n), second] = 1.0
  y = (values[np.arange(n), first] + values[np.arange(n), second])[:, None]
  return np.stack([values, markers], axis=-1), y.astype(np.float32)


# ------------------------------------------------------------------- dates
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
FIRST_DAY, LAST_DAY = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)


def _ordinal(d: int) -> str:
  suffix = "th" if 11 <= d % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
  return f"{d}{suffix}"


# Day-first numeric formats throughout; two-digit years are 1950-2049.
_FORMATS = (
    lambda t: f"{t.day} {MONTHS[t.month - 1]} {t.year}",
    lambda t: f"{t.day} {MONTHS[t.month - 1][:3]} {t.year}",
    lambda t: f"{MONTHS[t.month - 1]} {t.day}, {t.year}",
    lambda t: f"{MONTHS[t.month - 1][:3]} {t.day} {t.year}",
    lambda t: f"{_ordinal(t.day)} of {MONTHS[t.month - 1]} {t.year}",
    lambda t: f"{DAYS[t.weekday()]}, {MONTHS[t.month - 1]} {t.day}, {t.year}",
    lambda t: f"{DAYS[t.weekday()][:3]} {t.day} {MONTHS[t.month - 1][:3]} {t.year}",
    lambda t: f"{t.day:02d}/{t.month:02d}/{t.year}",
    lambda t: f"{t.day}/{t.month}/{t.year % 100:02d}",
    lambda t: f"{t.day:02d}.{t.month:02d}.{t.year}",
    lambda t: f"{t.day} {MONTHS[t.month - 1]} {t.year % 100:02d}",
    lambda t: f"{t.year}/{t.month:02d}/{t.day:02d}",
)


def format_date(date: datetime.date, style: int) -> str:
  """``date`` written in format ``style`` (0..len(_FORMATS)-1)."""
  return _FORMATS[style](date)


def dates_pairs(n_train: int, n_test: int, *, seed: int, test_fraction: float = 0.1):
  """``(train_pairs, test_pairs)`` of ``(source text, ISO date)``.

  Test days are held out (no calendar day of the test pairs is in the train pairs),
  and within each split no (day, format) pair occurs twice: rows a run holds out of
  the train pairs for validation are never copies of rows it trains on.

  Raises:
    JdlError: more pairs asked of a split than its days have (day, format) pairs.
  """
  rng = np.random.default_rng(seed)
  days = (LAST_DAY - FIRST_DAY).days + 1
  order = rng.permutation(days)
  n_test_days = int(days * test_fraction)
  test_days, train_days = order[:n_test_days], order[n_test_days:]

  def draw(pool, n, split):
    out, seen = [], set()
    # (day, format) pairs in random order; a text that two formats write alike
    # ('3 may 1998' in full and abbreviated) is taken once.
    for pick in rng.permutation(len(pool) * len(_FORMATS)):
      day, style = divmod(int(pick), len(_FORMATS))
      date = FIRST_DAY + datetime.timedelta(days=int(pool[day]))
      text = format_date(date, style)
      if text not in seen:
        seen.add(text)
        out.append((text, date.isoformat()))
        if len(out) == n:
          return out
    raise JdlError(f"dates: {n} {split} pairs asked, but its {len(pool)} days in "
                   f"{len(_FORMATS)} formats make only {len(out)} distinct ones; lower "
                   "n_samples")

  return draw(train_days, n_train, "train"), draw(test_days, n_test, "test")


def encode_pairs(pairs, src_vocab, tgt_vocab, src_len: int, tgt_len: int):
  """Source ids ``[N, src_len]`` and targets ``[N, tgt_len]`` = <bos> ... <eos> <pad>..."""
  src = text_lib.pad_sequences([src_vocab.encode_text(s) for s, _ in pairs], src_len,
                               padding="post", truncating="post")
  tgt = text_lib.pad_sequences([tgt_vocab.encode_text(t, bos=True, eos=True) for _, t in pairs],
                               tgt_len, padding="post", truncating="post")
  return src, tgt


def load_dates(n_train: int, seed: int, vocabs: dict | None = None):
  """``(x_train, y_train, x_test, y_test, {"src": vocab, "tgt": vocab}, rebuild)``.

  As :func:`load_sst2`: the vocabularies are built on every train pair, and
  ``rebuild(rows)`` gives ``(x_train, y_train, x_test, y_test, vocabs)`` with
  them built on the train pairs ``rows`` only; ``None`` when ``vocabs`` is given.
  """
  train, test = dates_pairs(n_train, max(1, n_train // 10), seed=seed)
  src_len = max(len(s) for s, _ in train + test)
  tgt_len = 10 + 2  # yyyy-mm-dd, <bos>, <eos>.

  def encode(vocabs, rows=None):
    if vocabs is None:
      kept = train if rows is None else [train[int(i)] for i in rows]
      chars = lambda k: [text_lib.tokenize(pair[k], level="char") for pair in kept]  # noqa: E731
      vocabs = {"src": text_lib.Vocabulary.build(chars(0), level="char"),
                "tgt": text_lib.Vocabulary.build(chars(1), level="char")}
    x_train, y_train = encode_pairs(train, vocabs["src"], vocabs["tgt"], src_len, tgt_len)
    x_test, y_test = encode_pairs(test, vocabs["src"], vocabs["tgt"], src_len, tgt_len)
    return x_train, y_train, x_test, y_test, vocabs

  rebuild = None if vocabs is not None else (lambda rows: encode(None, rows))
  return (*encode(vocabs), rebuild)
