"""Sequence utilities: decoding (greedy, beam search) for encoder-decoder models."""

from jdl.sequence.decoding import BeamResult
from jdl.sequence.decoding import DecodeResult
from jdl.sequence.decoding import beam_search
from jdl.sequence.decoding import greedy_decode

__all__ = [
    "BeamResult",
    "DecodeResult",
    "beam_search",
    "greedy_decode",
]
