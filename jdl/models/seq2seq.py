"""Encoder-decoder with attention: teacher forcing, and one decoder step for decoding.

The encoder embeds the source and runs a (bidirectional) recurrent layer over it;
the decoder is a recurrent cell that attends to the encoder's outputs (the
*memory*) at each step. Two decoder flows, by ``attention``:

* ``bahdanau`` (additive): the previous decoder state queries the memory; the
  context joins the embedded previous token as the cell's input; the output
  feature is ``tanh(W_c [s_t; c_t])``.
* ``luong_dot`` / ``luong_general``: the cell runs first, on the embedded token
  and the previous output feature ("input feeding"); its new state queries the
  memory; the output feature is ``tanh(W_c [c_t; s_t])``.
* ``none``: a plain encoder-decoder; the output feature is the cell's state and
  the attention weights are zeros.

Logits are ``W_o feature + b``. Training (``__call__``) scans the same decoder step
as :meth:`Seq2Seq.decode_step` over the target with teacher forcing, so the two
agree exactly; :mod:`jdl.sequence.decoding` drives ``encode`` and ``decode_step``
for greedy decoding and beam search.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl import errors
from jdl.models import manual_axes
from jdl.models.attention import ATTENTIONS, Attention
from jdl.models.cells import carry_dtype, make_cell
from jdl.models.initializers import get_head_initializer
from jdl.models.mlp import check_common_fields, check_positive, check_token_id
from jdl.models.recurrent import RNN, Bidirectional

Dtype = Any
DECODER_CELLS = ("lstm", "gru")


class EncoderOutput(NamedTuple):
  """What the decoder needs from the source; every leaf has a leading batch axis.

  Attributes:
    memory: ``[batch, S, H]`` encoder outputs (zeros on padding).
    keys: ``[batch, S, K]`` the attention's precomputed source half.
    src_mask: ``[batch, S]`` true on real source tokens.
    carry: the initial decoder carry ``(cell_carry, feed)``: the cell's carry
      (``(c, h)`` for an LSTM, ``h`` for a GRU) starts from
      ``h_0 = tanh(W_b final_encoder_state + b)`` (``c_0 = 0``), and ``feed
      [batch, H]`` (Luong's input feeding) from zeros.
  """

  memory: jax.Array
  keys: jax.Array
  src_mask: jax.Array
  carry: Any


class _Decoder(nn.Module):
  """One decoder step on an embedded token; see the module docstring."""

  hidden: int
  cell_type: str
  attention: str
  recurrent_init: str
  dtype: Dtype

  def setup(self):
    self.cell = make_cell(self.cell_type, self.hidden, recurrent_init=self.recurrent_init,
                          dtype=self.dtype)
    if self.attention != "none":
      self.attend = Attention(self.attention, self.hidden, dtype=self.dtype)
      self.combine = nn.Dense(self.hidden, dtype=self.dtype)

  def keys(self, memory: jax.Array) -> jax.Array:
    if self.attention == "none":
      return jnp.zeros(memory.shape[:2] + (0,), self.dtype)
    return self.attend.keys(memory)

  def __call__(self, carry, emb: jax.Array, enc: EncoderOutput):
    """``(carry, emb [batch, E], enc) -> (carry, (feature [batch, H], attention [batch, S]))``."""
    cell_carry, feed = carry
    emb = jnp.asarray(emb, self.dtype)
    if self.attention == "none":
      cell_carry, s = self.cell(cell_carry, emb)
      weights = jnp.zeros(enc.src_mask.shape, jnp.float32)
      feature = s
    elif self.attention == "bahdanau":
      query = self.cell.hidden(cell_carry)
      context, weights = self.attend(query, enc.keys, enc.memory, enc.src_mask)
      cell_carry, s = self.cell(cell_carry, jnp.concatenate([emb, context], axis=-1))
      feature = jnp.tanh(self.combine(jnp.concatenate([s, context], axis=-1)))
    else:
      cell_carry, s = self.cell(
          cell_carry, jnp.concatenate([emb, feed.astype(self.dtype)], axis=-1))
      context, weights = self.attend(s, enc.keys, enc.memory, enc.src_mask)
      feature = jnp.tanh(self.combine(jnp.concatenate([context, s], axis=-1)))
    return (cell_carry, feature.astype(carry_dtype(self.dtype))), (feature, weights)


class Seq2Seq(nn.Module):
  """A recurrent encoder-decoder with attention over token ids.

  Attributes:
    src_vocab_size: source vocabulary size.
    tgt_vocab_size: target vocabulary size (the width of the logits).
    embed_dim: width of both embeddings.
    hidden: decoder width, and encoder memory width ``H`` (a bidirectional
      encoder has ``hidden // 2`` units per direction, so ``hidden`` must be even).
    cell: ``'lstm'`` or ``'gru'``, for encoder and decoder.
    attention: ``'bahdanau'``, ``'luong_dot'``, ``'luong_general'`` or ``'none'``.
    bidirectional_encoder: a bidirectional encoder.
    pad_id, bos_id, eos_id: special target (and, for ``pad_id``, source) ids.
    dropout_rate: dropout on both embeddings and on the output feature.
    recurrent_init: recurrent initializer of encoder and decoder cells.
    unroll: encoder scan unroll (speed only).
    tbptt: truncated BPTT in the encoder (see :class:`jdl.models.RNN`); 0, the
      default, is full BPTT. The decoder always backpropagates through all steps.
    dtype: compute dtype; parameters stay float32, carries float32 or wider
      (:func:`jdl.models.cells.carry_dtype`).

  Submodules ``src_embed``, ``tgt_embed``, ``encoder``, ``bridge``, ``decoder``
  (``decoder/cell``, ``decoder/attend``, ``decoder/combine``) and ``output``.
  """

  # The sown attention weights are no activation (no dead or saturated shares).
  sown_activations: ClassVar[dict[str, str | None]] = {"attention": None}

  src_vocab_size: int
  tgt_vocab_size: int
  embed_dim: int = 64
  hidden: int = 128
  cell: str = "lstm"
  attention: str = "bahdanau"
  bidirectional_encoder: bool = True
  pad_id: int = 0
  bos_id: int = 2
  eos_id: int = 3
  dropout_rate: float = 0.0
  recurrent_init: str = "orthogonal"
  unroll: int = 1
  tbptt: int = 0
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_positive("src_vocab_size", self.src_vocab_size)
    check_positive("tgt_vocab_size", self.tgt_vocab_size)
    check_positive("embed_dim", self.embed_dim)
    check_positive("hidden", self.hidden)
    # pad_id pads both the source and the target; bos_id and eos_id are targets.
    check_token_id("pad_id", self.pad_id, min(self.src_vocab_size, self.tgt_vocab_size),
                   "src_vocab_size" if self.src_vocab_size <= self.tgt_vocab_size
                   else "tgt_vocab_size")
    for field in ("bos_id", "eos_id"):
      check_token_id(field, getattr(self, field), self.tgt_vocab_size, "tgt_vocab_size")
    errors.lookup("cell", self.cell, {c: c for c in DECODER_CELLS})
    errors.lookup("attention", self.attention, {a: a for a in ATTENTIONS})
    errors.require(not self.bidirectional_encoder or self.hidden % 2 == 0,
                   f"a bidirectional encoder splits hidden={self.hidden} between two "
                   f"directions; use an even hidden")

  def setup(self):
    self.src_embed = nn.Embed(self.src_vocab_size, self.embed_dim, dtype=self.dtype)
    self.tgt_embed = nn.Embed(self.tgt_vocab_size, self.embed_dim, dtype=self.dtype)
    if self.bidirectional_encoder:
      self.encoder = Bidirectional(self.hidden // 2, cell=self.cell,
                                   recurrent_init=self.recurrent_init,
                                   unroll=self.unroll, tbptt=self.tbptt,
                                   dtype=self.dtype)
    else:
      self.encoder = RNN(self.hidden, cell=self.cell,
                         recurrent_init=self.recurrent_init, unroll=self.unroll,
                         tbptt=self.tbptt, dtype=self.dtype)
    self.bridge = nn.Dense(self.hidden, dtype=self.dtype)
    self.decoder = _Decoder(self.hidden, self.cell, self.attention, self.recurrent_init,
                            self.dtype)
    # Small output weights, as jdl's other heads: first predictions near uniform.
    self.output = nn.Dense(self.tgt_vocab_size, kernel_init=get_head_initializer("lecun_normal"),
                           dtype=self.dtype)
    self.drop = nn.Dropout(self.dropout_rate)

  def _dropout(self, x: jax.Array, train: bool) -> jax.Array:
    if self.dropout_rate > 0:
      return self.drop(x, deterministic=not train)
    return x

  def encode(self, src: jax.Array, *, train: bool = False) -> EncoderOutput:
    """Encodes ``src: [batch, S]`` token ids padded with ``pad_id``."""
    errors.require(src.ndim == 2, f"src must be [batch, S] token ids, got {tuple(src.shape)}")
    src = errors.token_ids(src, "Seq2Seq")
    mask = src != self.pad_id
    emb = self._dropout(self.src_embed(src), train)
    memory, final_h = self.encoder(emb, mask)
    h0 = jnp.tanh(self.bridge(final_h.astype(self.dtype))).astype(carry_dtype(self.dtype))
    cell_carry = (jnp.zeros_like(h0), h0) if self.cell == "lstm" else h0
    carry = (cell_carry, jnp.zeros_like(h0))
    return EncoderOutput(memory, self.decoder.keys(memory), mask, carry)

  def decode_step(self, carry, token: jax.Array, enc: EncoderOutput, *,
                  train: bool = False) -> tuple[Any, jax.Array, jax.Array]:
    """One decoder step.

    Args:
      carry: the decoder carry (``enc.carry`` at the first step).
      token: ``[batch]`` the previous target token (``bos_id`` first).
      enc: :meth:`encode`'s output.
      train: dropout on when true.

    Returns:
      ``(carry, logits [batch, tgt_vocab] float32, attention [batch, S])``.
    """
    emb = self._dropout(self.tgt_embed(errors.token_ids(token, "Seq2Seq.decode_step")), train)
    carry, (feature, weights) = self.decoder(carry, emb, enc)
    logits = self.output(self._dropout(feature, train))
    return carry, logits.astype(jnp.float32), weights

  def __call__(self, src: jax.Array, tgt_in: jax.Array, *,
               train: bool = False) -> jax.Array:
    """Teacher-forced logits.

    Args:
      src: ``[batch, S]`` source ids padded with ``pad_id``.
      tgt_in: ``[batch, T]`` decoder inputs: ``<bos>`` then the target shifted
        right.
      train: dropout on when true.

    Returns:
      ``[batch, T, tgt_vocab]`` float32 logits. The attention weights
      ``[batch, T, S]`` are sown as ``intermediates/attention``.
    """
    errors.require(tgt_in.ndim == 2,
                   f"tgt_in must be [batch, T] token ids, got {tuple(tgt_in.shape)}")
    enc = self.encode(src, train=train)  # Checks src is [batch, S].
    errors.require(src.shape[0] == tgt_in.shape[0],
                   f"src and tgt_in must have the same batch size, got src "
                   f"{tuple(src.shape)} and tgt_in {tuple(tgt_in.shape)}")
    emb = self._dropout(self.tgt_embed(errors.token_ids(tgt_in, "Seq2Seq")), train)

    def body(decoder, carry, emb_t, enc):
      return decoder(carry, emb_t, enc)

    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=(1, nn.broadcast), out_axes=1)
    carry = manual_axes.vary_like(enc.carry, emb)  # Per-device, as the body's (shard_map).
    _, (features, weights) = scan(self.decoder, carry, emb, enc)
    self.sow("intermediates", "attention", weights)
    logits = self.output(self._dropout(features, train))
    return logits.astype(jnp.float32)
