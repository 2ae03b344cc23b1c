"""Sequence utilities: text to token ids, decoding (greedy, beam search) for encoder-decoder models.

The seq2seq task on the loop is :mod:`jdl.sequence.tasks` (imported by the trainer).
"""

from jdl.sequence.decoding import BeamResult
from jdl.sequence.decoding import DecodeResult
from jdl.sequence.decoding import beam_search
from jdl.sequence.decoding import greedy_decode
from jdl.sequence.text import Vocabulary
from jdl.sequence.text import pad_sequences
from jdl.sequence.text import tokenize

__all__ = [
    "BeamResult",
    "DecodeResult",
    "Vocabulary",
    "beam_search",
    "greedy_decode",
    "pad_sequences",
    "tokenize",
]
