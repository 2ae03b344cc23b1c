"""Sequence models from a config and a run's vocabularies.

The vocabulary sizes come from the data (the vocabulary built on the train
split), never from the config: a text model's ``vocab_size`` and a seq2seq
model's ``src_vocab_size`` / ``tgt_vocab_size`` are filled in here, as
``num_outputs`` is for the other models.
"""

from __future__ import annotations

import functools

import ml_collections

from jdl.errors import JdlError
from jdl.sequence import text as text_lib

TEXT_MODELS = ("text_rnn", "text_conv1d")


def with_vocab_size(model_config, vocab: dict) -> ml_collections.ConfigDict:
  """A copy of ``model_config`` with ``vocab_size`` from ``vocab['text']``.

  Raises:
    JdlError: the config sets a different ``vocab_size``, or a ``pad_id`` other
      than the vocabularies' (the data is padded with it).
  """
  spec = model_config.to_dict()
  if "text" not in vocab:
    return ml_collections.ConfigDict(spec)
  size = len(vocab["text"])
  if spec.get("vocab_size") not in (None, 0, size):
    raise JdlError(f"model.vocab_size={spec['vocab_size']} but the vocabulary built on the "
                   f"train split has {size} tokens; remove model.vocab_size from the config")
  spec["vocab_size"] = size
  _check_special_ids(spec, {"pad_id": text_lib.PAD_ID})  # The models' default.
  return ml_collections.ConfigDict(spec)


def _check_special_ids(spec: dict, ids: dict[str, int]) -> None:
  """Refuses special token ids other than those the data pipeline, the loss and
  decoding use.

  Raises:
    JdlError: the config sets another id (padding would count as tokens).
  """
  for key, value in ids.items():
    if spec.get(key) not in (None, value):
      raise JdlError(f"model.{key}={spec[key]!r}, but jdl's vocabularies give that token id "
                     f"{value} (the data is padded, and decoded, with it); remove "
                     f"model.{key} from the config")


def create_seq2seq(config, vocab: dict | None):
  """The ``seq2seq`` model of ``config.model`` with the data's vocabulary sizes."""
  from jdl import models as models_lib  # Models import nothing of jdl's upper floors.
  from jdl.models import seq2seq as seq2seq_lib
  if not vocab or "src" not in vocab or "tgt" not in vocab:
    raise JdlError(f"task 'seq2seq' needs a dataset with source and target vocabularies "
                   f"(e.g. dates), got {config.dataset!r}")
  spec = config.model.to_dict()
  name = spec.pop("name", None)
  if name != "seq2seq":
    raise JdlError(f"task 'seq2seq' needs model.name='seq2seq', got {name!r}")
  sizes = {"src_vocab_size": len(vocab["src"]), "tgt_vocab_size": len(vocab["tgt"])}
  for key, size in sizes.items():
    if spec.get(key) not in (None, 0, size):
      raise JdlError(f"model.{key}={spec[key]} but the data's vocabulary has {size} tokens; "
                     f"remove model.{key} from the config")
  spec.update(sizes)
  special = {"pad_id": text_lib.PAD_ID, "bos_id": text_lib.BOS_ID, "eos_id": text_lib.EOS_ID}
  _check_special_ids(spec, special)
  spec.update(special)
  cls = seq2seq_lib.Seq2Seq
  valid = models_lib.model_fields(cls)
  unknown = sorted(set(spec) - set(valid))
  if unknown:
    raise JdlError(f"unknown field(s) {', '.join(unknown)} for model 'seq2seq'; valid fields: "
                   f"{', '.join(sorted(valid))}")
  freeze = lambda v: tuple(freeze(x) for x in v) if isinstance(v, (list, tuple)) else v  # noqa: E731
  return _seq2seq(tuple(sorted((k, freeze(v)) for k, v in spec.items())))


@functools.lru_cache(maxsize=8)
def _seq2seq(fields: tuple):
  """One module instance per field values: decoding's jit caches (keyed by
  ``model.apply``, static) are then shared by every run of that model in a process."""
  from jdl import models as models_lib
  from jdl.models import seq2seq as seq2seq_lib
  return models_lib.build(seq2seq_lib.Seq2Seq, dict(fields))
