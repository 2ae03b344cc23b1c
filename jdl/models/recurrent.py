"""Recurrent layers and models: a cell scanned over time, stacks, bidirectional.

Sequences are ``[batch, time, features]`` with an optional ``mask: [batch, time]``
(true on real steps). A padded step leaves the carry unchanged and outputs zeros,
so the final state is the state at each sequence's last real token and padding
never changes a sequence's outputs, whether it comes after the tokens ('post') or
before them ('pre'). Masked steps are selected with ``jnp.where``
inside one ``lax.scan`` (through ``nn.scan``): every length within a padded bucket
shares one compiled program.

Gradients flow back through the whole scan (backpropagation through time); with
``tbptt=k`` they stop at the carry every ``k`` real steps (truncated BPTT, see
:class:`RNN`), the forward values unchanged.

The cells are in :mod:`jdl.models.cells` and re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl import errors
from jdl.models import manual_axes
from jdl.models.cells import CELLS, GRUCell, LSTMCell, RECURRENT_INITS
from jdl.models.cells import SIMPLE_ACTIVATIONS, SimpleRNNCell, identity_init, make_cell
from jdl.models.cells import recurrent_initializer
from jdl.models.initializers import get_head_initializer
from jdl.models.mlp import check_common_fields, check_positive, check_tbptt, check_token_id
from jdl.models.mlp import check_widths
from jdl.models.text_conv import Conv1DText

Dtype = Any
POOLINGS = ("last", "mean", "max")
# The fields of RecurrentOptions that go to the cell (make_cell's keyword arguments)
# and those that go to the time loop.
CELL_OPTIONS = ("activation", "recurrent_init", "gain", "forget_bias", "kernel_init", "dtype")
LOOP_OPTIONS = ("unroll", "tbptt")


class RecurrentOptions(nn.Module, kw_only=True):
  """The cell and loop options (keyword-only) of every recurrent module here.

  Each module hands them down unchanged to its layers, cells and time loop; see
  :class:`RNN` for what they mean.
  """
  activation: str = "tanh"
  recurrent_init: str = "orthogonal"
  gain: float = 1.0
  forget_bias: float = 1.0
  kernel_init: str = "glorot_uniform"
  unroll: int = 1
  tbptt: int = 0
  dtype: Dtype = jnp.float32

  ACTIVATIONS = SIMPLE_ACTIVATIONS  # The simple cell's (the only one with an activation).


def _options(module: nn.Module, names: Sequence[str] = CELL_OPTIONS + LOOP_OPTIONS
             ) -> dict[str, Any]:
  """``{name: module.name}`` for ``names``: the keyword arguments passed down."""
  return {name: getattr(module, name) for name in names}

# Token embeddings; the padding id is handled by the masks of the layers above.
Embedding = nn.Embed


def _as_mask(mask: jax.Array | None, x: jax.Array) -> jax.Array:
  if mask is None:
    return jnp.ones(x.shape[:2], bool)
  errors.require(tuple(mask.shape) == tuple(x.shape[:2]),
                 f"mask shape {tuple(mask.shape)} does not match the sequence's "
                 f"[batch, time] {tuple(x.shape[:2])}")
  return mask.astype(bool)


def _cut_points(mask: jax.Array, k: int, reverse: bool) -> jax.Array:
  """``[batch, time]``: true where truncated BPTT stops the gradient of the carry.

  A cut is at a real step that has ``s > 0`` real steps before it in the scan
  order (from the end with ``reverse``) and ``s % k == 0``: padding, before or
  after the tokens, moves no cut.
  """
  m = mask.astype(jnp.int32)
  before = (jnp.flip(jnp.cumsum(jnp.flip(m, 1), axis=1), 1) if reverse
            else jnp.cumsum(m, axis=1)) - m
  return mask & (before > 0) & (before % k == 0)


class RNN(RecurrentOptions):
  """A recurrent cell scanned over time (``nn.scan``, parameters shared over steps).

  Attributes:
    features: ``H``, the width of the hidden state.
    cell: ``'lstm'``, ``'gru'`` or ``'simple'``.
    reverse: scan from the last step to the first (outputs stay in input order).
      With a mask, trailing padding is skipped, so the backward pass of a padded
      sequence starts at its last real token, and ``final_h`` is the state after
      its first token.
    activation: ``'tanh'`` or ``'relu'`` (simple cell only).
    recurrent_init: ``'orthogonal'``, ``'identity'``, ``'lecun_normal'`` or
      ``'glorot_uniform'`` for the recurrent kernel.
    gain: gain of the recurrent init.
    forget_bias: initial forget-gate bias (LSTM only).
    kernel_init: initializer of the input kernel.
    unroll: steps unrolled per scan iteration (speed only).
    tbptt: ``0`` (default): full backpropagation through time. ``k > 0``:
      truncated BPTT; the gradient through the carry is cut (``stop_gradient``)
      before every ``k``-th real step, so a step's output or the final state
      gets gradients from the inputs of its own window of ``k`` steps only.
      Windows are counted in real (unmasked) steps along the layer's own scan
      order: from the first real token forwards, or with ``reverse`` from the
      last real token backwards, so 'pre' and 'post' padding give the same
      gradients. The last window holds ``length mod k`` steps when ``k`` does
      not divide the sequence's real length: the final state then gets gradients
      from fewer than ``k`` inputs (as a sequence cut into chunks of ``k`` from
      its start). The forward values are unchanged, and so are time and memory
      (the whole sequence is still one scan, every step kept for the backward
      pass): it limits how far back gradients reach, for long sequences whose
      gradient through the full scan is noisy or explodes.
    dtype: compute dtype; parameters stay float32, carries float32 or wider
      (:func:`jdl.models.cells.carry_dtype`).

  Truncated BPTT (Williams & Peng, 1990) here is the variant Sutskever (2013)
  writes TBPTT(k1, k2) with ``k1 = k2 = k``, within one forward pass: the
  sequence's windows of ``k`` steps each backpropagate their losses to the start
  of their window, and the summed gradient makes one update per batch (not one
  update per window as in the on-line algorithm; the carry still passes forward
  from window to window).

  The cell's parameters are under ``cell/`` (see :mod:`jdl.models.cells`).
  ``features`` is the first field, as in the cells: ``RNN(128, cell='gru')``.

  References:
    Williams & Peng, "An efficient gradient-based algorithm for on-line training of
    recurrent network trajectories", Neural Computation 2(4), 1990; Sutskever,
    "Training recurrent neural networks", PhD thesis, University of Toronto, 2013.
  """

  features: int
  cell: str = "lstm"
  reverse: bool = False

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_positive("unroll", self.unroll)
    # Validates the cell fields at construction, not at the first call.
    make_cell(self.cell, self.features, **_options(self, CELL_OPTIONS), parent=None)

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """Runs the cell over ``x``.

    Args:
      x: ``[batch, time, F]``.
      mask: ``[batch, time]``, true on real steps; ``None``: all real.

    Returns:
      ``(outputs, final_h)``: ``outputs [batch, time, H]`` (zeros on padded
      steps, in ``dtype``) and ``final_h [batch, H]`` (the carry's dtype), the hidden state
      after each sequence's last real step (first, with ``reverse``).
    """
    errors.require(x.ndim == 3, f"RNN needs [batch, time, features], got {tuple(x.shape)}")
    mask = _as_mask(mask, x)
    cell = make_cell(self.cell, self.features, **_options(self, CELL_OPTIONS),
                     name="cell")
    # Padding's values reach no output, and with zeros no gradient either: a NaN or inf
    # pad times the zero gradient of a discarded step would be NaN in the kernel's.
    x = jnp.where(mask[..., None], x, jnp.zeros_like(x))
    x_proj = cell.project_inputs(x)  # One product for all steps, outside the loop.
    inputs = (x_proj, mask)
    if self.tbptt:
      inputs += (_cut_points(mask, self.tbptt, self.reverse),)

    def body(cell, carry, inputs):
      xp_t, m_t, *cut_t = inputs
      if cut_t:  # Same values; the gradient stops on the rows cut at this step.
        carry = jax.tree.map(
            lambda c: jnp.where(cut_t[0][:, None], jax.lax.stop_gradient(c), c), carry)
      new_carry, h = cell.step(carry, xp_t)
      new_carry = jax.tree.map(lambda n, o: jnp.where(m_t[:, None], n, o),
                               new_carry, carry)
      return new_carry, jnp.where(m_t[:, None], h, jnp.zeros_like(h))

    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1, reverse=self.reverse, unroll=self.unroll)
    # Typed as per-device as the inputs are (under jax.shard_map; else unchanged).
    init = manual_axes.vary_like(cell.initialize_carry(x.shape[0]), x_proj)
    carry, outputs = scan(cell, init, inputs)
    return outputs, cell.hidden(carry)


class Bidirectional(RecurrentOptions):
  """A forward and a backward :class:`RNN` on the same input and mask.

  Attributes:
    as :class:`RNN` (without ``reverse``); each direction has ``features`` units.
    With ``tbptt``, each direction counts its windows in its own scan order (the
    backward one from the last real token).

  Returns from ``__call__(x, mask=None)``: ``outputs [batch, time, 2H]``
  (forward then backward, both aligned with the input; zeros on padding) and
  ``final_h [batch, 2H]``: the forward state at the last real token and the
  backward state at the first. Submodules ``forward`` and ``backward``.
  """

  features: int
  cell: str = "lstm"

  def __post_init__(self):
    super().__post_init__()
    check_positive("features", self.features)
    check_tbptt(self.tbptt)

  def _rnn(self, reverse: bool, name: str) -> RNN:
    return RNN(self.features, cell=self.cell, reverse=reverse, **_options(self),
               name=name)

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    fwd_out, fwd_h = self._rnn(False, "forward")(x, mask)
    bwd_out, bwd_h = self._rnn(True, "backward")(x, mask)
    return (jnp.concatenate([fwd_out, bwd_out], axis=-1),
            jnp.concatenate([fwd_h, bwd_h], axis=-1))


class StackedRNN(RecurrentOptions):
  """Recurrent layers on top of each other, optionally bidirectional.

  Attributes:
    hidden: units of each layer (per direction).
    bidirectional: :class:`Bidirectional` layers instead of :class:`RNN`.
    dropout_rate: dropout between layers (not after the last), in training.
    cell, activation, recurrent_init, gain, forget_bias, kernel_init,
      unroll, tbptt, dtype: as :class:`RNN`, for every layer.

  ``__call__(x, mask=None, train=False) -> (outputs, final_h)`` of the last layer;
  each layer's outputs are sown as ``intermediates/outputs_{i}`` (a sow under a
  submodule's name is a scope clash). Submodules ``layer_{i}``.
  """

  hidden: Sequence[int] = (128,)
  bidirectional: bool = False
  dropout_rate: float = 0.0
  cell: str = "lstm"

  def __post_init__(self):
    super().__post_init__()
    check_widths("hidden", self.hidden)
    errors.require(len(self.hidden) >= 1, "hidden needs at least one layer")
    check_common_fields(self)

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array, jax.Array]:
    layer_cls = Bidirectional if self.bidirectional else RNN
    final_h = None
    for i, width in enumerate(self.hidden):
      if i > 0 and self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x, final_h = layer_cls(width, cell=self.cell, **_options(self),
                             name=f"layer_{i}")(x, mask)
      self.sow("intermediates", f"outputs_{i}", x)
    return x, final_h


def pool_sequence(outputs: jax.Array, mask: jax.Array, kind: str) -> jax.Array:
  """Masked mean or max over time: ``[batch, time, H] -> [batch, H]``.

  A sequence without a real step pools to zeros.
  """
  m = mask[..., None]
  count = jnp.sum(mask, axis=1, keepdims=True).astype(outputs.dtype)
  if kind == "mean":
    total = jnp.sum(jnp.where(m, outputs, jnp.zeros_like(outputs)), axis=1)
    return total / jnp.maximum(count, jnp.ones_like(count))
  low = jnp.full_like(outputs, -jnp.inf)
  best = jnp.max(jnp.where(m, outputs, low), axis=1)
  return jnp.where(count > 0, best, jnp.zeros_like(best))


class TextClassifier(RecurrentOptions):
  """Embedding -> (bi)recurrent stack -> pooling -> dense head, on token ids.

  Attributes:
    vocab_size: number of token ids.
    num_outputs: width of the output (classes).
    embed_dim: embedding width.
    cell: ``'lstm'``, ``'gru'`` or ``'simple'``.
    hidden: units of each recurrent layer (per direction).
    bidirectional: bidirectional recurrent layers.
    dropout_rate: dropout on the embeddings, between layers and before the head.
    pad_id: the padding token; ``mask = x != pad_id``.
    pooling: ``'last'`` (the final states: forward at the last real token,
      backward at the first), ``'mean'`` or ``'max'`` over real steps.
    activation, recurrent_init, gain, forget_bias, kernel_init, unroll, tbptt:
      as :class:`RNN`.
    dtype: compute dtype; parameters stay float32.

  Submodules ``embed``, ``rnn`` (a :class:`StackedRNN`) and ``head``.
  """

  vocab_size: int
  num_outputs: int
  embed_dim: int = 128
  cell: str = "lstm"
  hidden: Sequence[int] = (128,)
  bidirectional: bool = True
  dropout_rate: float = 0.0
  pad_id: int = 0
  pooling: str = "last"

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_positive("vocab_size", self.vocab_size)
    check_positive("embed_dim", self.embed_dim)
    check_token_id("pad_id", self.pad_id, self.vocab_size, "vocab_size")
    errors.lookup("pooling", self.pooling, {p: p for p in POOLINGS})

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Classifies token sequences.

    Args:
      x: ``[batch, time]`` integer token ids, padded with ``pad_id``.
      train: dropout on when true.

    Returns:
      ``[batch, num_outputs]`` logits.
    """
    errors.require(x.ndim == 2, f"TextClassifier needs [batch, time] token ids, got "
                                f"{tuple(x.shape)}")
    x = errors.token_ids(x, "TextClassifier")
    mask = x != self.pad_id
    h = Embedding(self.vocab_size, self.embed_dim, dtype=self.dtype, name="embed")(x)
    if self.dropout_rate > 0:
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    outputs, final_h = StackedRNN(
        tuple(self.hidden), bidirectional=self.bidirectional,
        dropout_rate=self.dropout_rate, cell=self.cell, **_options(self),
        name="rnn")(h, mask, train=train)
    if self.pooling == "last":
      features = final_h.astype(self.dtype)
    else:
      features = pool_sequence(outputs, mask, self.pooling)
    if self.dropout_rate > 0:
      features = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
    return nn.Dense(self.num_outputs, kernel_init=get_head_initializer(self.kernel_init),
                    dtype=self.dtype, name="head")(features)


class SequenceRegressor(RecurrentOptions):
  """A recurrent stack over real-valued sequences, a dense head on the last state.

  The model of the adding problem (Hochreiter & Schmidhuber, 1997): ``x [batch,
  time, F]`` to ``[batch, num_outputs]`` from the final hidden state.

  Attributes:
    num_outputs: width of the output.
    cell: ``'lstm'``, ``'gru'`` or ``'simple'``.
    hidden: units of each recurrent layer.
    activation: ``'tanh'`` or ``'relu'`` for the simple cell.
    recurrent_init: ``'orthogonal'``, ``'identity'``, ``'lecun_normal'``,
      ``'glorot_uniform'``.
    gain: gain of the recurrent init.
    forget_bias, kernel_init, unroll, tbptt: as :class:`RNN`
      (``tbptt=50`` at ``T = 200``: the final state's gradient reaches 50 steps
      back; at ``T = 210`` only 10, the last window being ``T mod k`` steps long,
      as windows start at the first real step).
    dtype: compute dtype; parameters stay float32.

  Submodules ``rnn`` (a :class:`StackedRNN`) and ``head``.
  """

  num_outputs: int = 1
  cell: str = "lstm"
  hidden: Sequence[int] = (128,)

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False,
               mask: jax.Array | None = None) -> jax.Array:
    """Args: ``x [batch, time, F]``; ``mask [batch, time]`` optional.

    Returns:
      ``[batch, num_outputs]``.
    """
    del train  # No dropout or batch norm.
    errors.require(x.ndim == 3, f"SequenceRegressor needs [batch, time, features], "
                                f"got {tuple(x.shape)}")
    _, final_h = StackedRNN(tuple(self.hidden), cell=self.cell, **_options(self),
                            name="rnn")(x, mask)
    return nn.Dense(self.num_outputs, kernel_init=get_head_initializer(self.kernel_init),
                    dtype=self.dtype, name="head")(final_h.astype(self.dtype))


__all__ = [
    "Bidirectional",
    "CELLS",
    "Conv1DText",
    "Embedding",
    "GRUCell",
    "LSTMCell",
    "POOLINGS",
    "RECURRENT_INITS",
    "RNN",
    "SequenceRegressor",
    "SimpleRNNCell",
    "StackedRNN",
    "TextClassifier",
    "check_tbptt",
    "identity_init",
    "make_cell",
    "pool_sequence",
    "recurrent_initializer",
]
