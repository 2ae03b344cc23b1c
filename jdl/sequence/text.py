"""Text to token ids: a word- or character-level tokenizer, a vocabulary, padding.

A :class:`Vocabulary` is built on training text only (``min_freq``, ``max_size``)
and reserves four ids: ``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2, ``<eos>`` = 3
(the ids jdl's recurrent and seq2seq models assume). It round-trips through JSON,
so a run stores it in its checkpoint metadata and ``vocab.json``, and evaluation,
prediction and resume encode text with the very same ids.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
import dataclasses
import re

import numpy as np

from jdl.errors import JdlError, is_integer

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
LEVELS = ("word", "char")
PADDING = ("pre", "post")

_WS = re.compile(r"\s+")


def tokenize(text: str, *, level: str = "word", lowercase: bool = True) -> list[str]:
  """Splits ``text`` into tokens.

  ``word``: whitespace-separated tokens (SST-2 is already tokenized: ``it 's``,
  ``n't``); ``char``: every character, runs of whitespace collapsed to one space.

  Examples:
    >>> tokenize("It 's  a charming journey .")
    ['it', "'s", 'a', 'charming', 'journey', '.']
    >>> tokenize("3 May", level="char")
    ['3', ' ', 'm', 'a', 'y']
  """
  if level not in LEVELS:
    raise JdlError(f"token level must be one of {', '.join(LEVELS)}, got {level!r}")
  if not isinstance(text, str):
    hint = " (decode bytes first: data.decode('utf-8'))" if isinstance(text, bytes) else ""
    raise JdlError(f"tokenize: text must be a str, got {_preview(text)} "
                   f"({type(text).__name__}){hint}")
  if lowercase:
    text = text.lower()
  if level == "word":
    return text.split()
  return list(_WS.sub(" ", text.strip()))


def check_vocab_options(min_freq: int, max_size: int) -> None:
  """Raises ``JdlError`` for a ``min_freq`` (``sequence.min_freq``) that is not an
  integer >= 1, or a ``max_size`` (``sequence.max_vocab``) that is not an integer or
  that the special tokens alone would fill (``None`` is 0, no limit)."""
  if not is_integer(min_freq):
    raise JdlError(f"sequence.min_freq must be an integer >= 1, got {min_freq!r}")
  if max_size is not None and not is_integer(max_size):
    raise JdlError(f"sequence.max_vocab must be an integer, 0 (no limit) or > "
                   f"{len(SPECIALS)} (the special tokens), got {max_size!r}")
  if min_freq < 1:
    raise JdlError(f"sequence.min_freq must be >= 1, got {min_freq}")
  if max_size and max_size <= len(SPECIALS):
    raise JdlError(f"sequence.max_vocab must be 0 (no limit) or > {len(SPECIALS)} (the "
                   f"special tokens), got {max_size}")


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Tokens by id; ids 0-3 are ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``.

  Attributes:
    tokens: every token, in id order (the specials first).
    level: the tokenizer level the vocabulary was built with.
    lowercase: whether text is lower-cased before tokenizing.
  """
  tokens: tuple[str, ...]
  level: str = "word"
  lowercase: bool = True

  def __post_init__(self):
    if tuple(self.tokens[:4]) != SPECIALS:
      raise JdlError(f"a vocabulary must start with {', '.join(SPECIALS)}; got "
                     f"{list(self.tokens[:4])}")
    if len(set(self.tokens)) != len(self.tokens):
      raise JdlError("a vocabulary holds a token twice")
    # A text token reading like a special is unknown (see id()).
    object.__setattr__(self, "_ids", {t: i for i, t in enumerate(self.tokens)
                                      if i >= len(SPECIALS)})

  @classmethod
  def build(cls, texts: Iterable[Sequence[str]], *, min_freq: int = 1, max_size: int = 0,
            level: str = "word", lowercase: bool = True) -> Vocabulary:
    """A vocabulary of the tokens in ``texts`` (already tokenized).

    Args:
      texts: token lists (the train split's).
      min_freq: a token needs at least this many occurrences.
      max_size: at most this many tokens, the four specials included (the most
        frequent win; ties in alphabetical order); 0 = no limit.
      level: recorded for :meth:`encode_text`.
      lowercase: recorded for :meth:`encode_text`.

    Raises:
      JdlError: a bad ``min_freq`` or ``max_size``, or no token (besides the
        specials) left to keep.
    """
    check_vocab_options(min_freq, max_size)
    if level not in LEVELS:
      raise JdlError(f"token level must be one of {', '.join(LEVELS)}, got {level!r}")
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
      raise JdlError(f"Vocabulary.build: texts must be token lists (e.g. [tokenize(t) for t "
                     f"in texts]), got {_preview(texts)}")
    def tokens(text, i):
      if isinstance(text, str) and level == "word":  # Its characters would be the tokens.
        raise JdlError(f"Vocabulary.build: text {i} is a string ({_preview(text)}), not a "
                       "token list; tokenize it first (tokenize(text))")
      return text
    try:
      counts = collections.Counter(t for i, text in enumerate(texts) for t in tokens(text, i))
    except TypeError as e:  # A text that is not iterable, or a token that is unhashable.
      raise JdlError(f"Vocabulary.build: texts must be lists of string tokens ({e})") from None
    for odd in counts:
      if not isinstance(odd, str):
        raise JdlError(f"Vocabulary.build: texts must be lists of string tokens, got the "
                       f"token {odd!r} ({type(odd).__name__})")
    for s in SPECIALS:
      counts.pop(s, None)
    kept = sorted((t for t, c in counts.items() if c >= min_freq),
                  key=lambda t: (-counts[t], t))
    if not kept:
      if not counts:
        raise JdlError("cannot build a vocabulary: the train texts hold no tokens besides "
                       f"the specials {', '.join(SPECIALS)} (are they all empty?)")
      raise JdlError(
          f"sequence.min_freq={min_freq} keeps no token of the train texts (the most "
          f"frequent of their {len(counts)} distinct tokens occurs {max(counts.values())} "
          "times); every input would be <unk>, so lower min_freq"
      )
    if max_size:
      kept = kept[: max_size - len(SPECIALS)]
    return cls(SPECIALS + tuple(kept), level=level, lowercase=lowercase)

  def __len__(self) -> int:
    return len(self.tokens)

  def id(self, token: str) -> int:
    """The id of a token of text: ``<unk>`` when unknown, and for a text token that
    reads like a special (a literal ``<pad>`` in a sentence is a word, not padding)."""
    return self._ids.get(token, UNK_ID)

  def encode(self, tokens: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[int]:
    """Token ids of text tokens (:meth:`id`); ``bos``/``eos`` add those specials."""
    get = self._ids.get
    ids = [get(t, UNK_ID) for t in tokens]
    return ([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else [])

  def encode_text(self, text: str, **kwargs) -> list[int]:
    return self.encode(tokenize(text, level=self.level, lowercase=self.lowercase), **kwargs)

  def decode(self, ids: Iterable[int], *, strip: bool = True) -> list[str]:
    """Tokens of ``ids``; with ``strip``, up to the first ``<eos>``, with ``<pad>`` and
    ``<bos>`` dropped (``<unk>`` is kept: it stands for a token)."""
    out = []
    for i in ids:
      i = int(i)
      if strip and i == EOS_ID:
        break
      if strip and i in (PAD_ID, BOS_ID):
        continue
      out.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
    return out

  def decode_text(self, ids: Iterable[int]) -> str:
    sep = "" if self.level == "char" else " "
    return sep.join(self.decode(ids))

  def to_json(self) -> dict:
    return {"tokens": list(self.tokens), "level": self.level, "lowercase": self.lowercase}

  @classmethod
  def from_json(cls, data: dict) -> Vocabulary:
    """Inverse of :meth:`to_json`.

    Raises:
      JdlError: not a vocabulary's JSON.
    """
    if (not isinstance(data, dict) or not isinstance(data.get("tokens"), list)
        or not all(isinstance(t, str) for t in data["tokens"])):
      raise JdlError("not a vocabulary: expected a JSON object with a list of string 'tokens'")
    level, lowercase = data.get("level", "word"), data.get("lowercase", True)
    if level not in LEVELS:
      raise JdlError(f"not a vocabulary: 'level' must be one of {', '.join(LEVELS)}, got "
                     f"{level!r}")
    if not isinstance(lowercase, bool):
      raise JdlError(f"not a vocabulary: 'lowercase' must be true or false, got {lowercase!r}")
    return cls(tuple(data["tokens"]), level=level, lowercase=lowercase)


def pad_sequences(sequences: Sequence[Sequence[int]], maxlen: int | None = None, *,
                  padding: str = "pre", truncating: str = "pre", value: int = PAD_ID,
                  dtype=np.int32) -> np.ndarray:
  """Pads or truncates ``sequences`` to ``[N, maxlen]`` (Keras' ``pad_sequences``).

  Args:
    sequences: lists of ids.
    maxlen: the length; ``None`` or 0 = the longest sequence.
    padding: ``'pre'`` fills at the start, ``'post'`` at the end.
    truncating: ``'pre'`` drops tokens from the start of longer sequences,
      ``'post'`` from the end.
    value: the fill id.

  Raises:
    JdlError: a bad ``padding``, ``truncating`` or ``maxlen`` (none, and no sequence to
      take the longest of), a sequence that is not a flat sequence of integer ids (words
      not mapped through a vocabulary), or an id or ``value`` that ``dtype`` cannot hold.

  Examples:
    >>> pad_sequences([[1, 2, 3], [4]], 2, padding="post", truncating="pre").tolist()
    [[2, 3], [4, 0]]
  """
  for name, v in (("padding", padding), ("truncating", truncating)):
    if v not in PADDING:
      raise JdlError(f"{name} must be 'pre' or 'post', got {v!r}")
  if not is_integer(value):
    raise JdlError(f"pad_sequences: value (the fill id) must be an integer, got {value!r}")
  if maxlen is not None and not is_integer(maxlen):
    raise JdlError(f"maxlen must be an integer >= 1 (or None or 0: the longest sequence), "
                   f"got {maxlen!r}")
  rows = [_token_ids(s, i) for i, s in enumerate(sequences)]
  if np.issubdtype(np.dtype(dtype), np.integer):  # Else numpy would wrap ids silently.
    info = np.iinfo(dtype)
    ids = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    low = min(int(value), ids.min() if ids.size else int(value))
    high = max(int(value), ids.max() if ids.size else int(value))
    if low < info.min or high > info.max:
      raise JdlError(f"pad_sequences: ids and the fill value must fit {np.dtype(dtype).name} "
                     f"({info.min}..{info.max}), got values from {low} to {high}")
  if not maxlen and not rows:
    raise JdlError("pad_sequences: no sequences to take the longest of; pass maxlen")
  if not maxlen:
    maxlen = max((len(s) for s in rows), default=0)
  if maxlen < 1:
    raise JdlError(f"maxlen must be >= 1, got {maxlen}")
  out = np.full((len(rows), maxlen), value, dtype)
  for i, s in enumerate(rows):
    s = s[-maxlen:] if truncating == "pre" else s[:maxlen]
    if len(s):
      if padding == "post":
        out[i, :len(s)] = s
      else:
        out[i, maxlen - len(s):] = s
  return out


def _token_ids(sequence, index: int) -> np.ndarray:
  """``sequence`` (``index``-th of :func:`pad_sequences`') as a 1-D integer array.

  Raises:
    JdlError: not a flat sequence of integer ids (tokens as strings, floats, nesting).
  """
  try:
    ids = np.asarray(sequence if isinstance(sequence, np.ndarray) else list(sequence))
  except (TypeError, ValueError):
    ids = None
  if ids is None or ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
    raise JdlError(
        f"pad_sequences: sequences must hold integer token ids, but sequence {index} is "
        f"{_preview(sequence)}; map words to ids through a Vocabulary first "
        "(Vocabulary.encode or encode_text)")
  return ids


def _preview(sequence) -> str:
  text = repr(sequence)
  return text if len(text) <= 60 else text[:57] + "..."

