"""Recurrent cells: SimpleRNN, LSTM and GRU, one time step each.

A cell maps ``(carry, x_t) -> (new_carry, h_t)``. To let a layer project the whole
input sequence with one matrix product before scanning (the recurrence is then one
``[batch, H] x [H, gates*H]`` product per step), each cell splits its step in two:

* ``project_inputs(x)``: ``W_x x + b`` for all gates, ``[..., F] -> [..., gates*H]``;
* ``step(carry, x_proj)``: the recurrence on a projected input.

``cell(carry, x_t)`` is ``step(carry, project_inputs(x_t))``.

Parameters (``H = features``, ``F`` = input width, ``G`` gates, gate blocks of width
``H`` side by side in the order given per cell):

* ``input/kernel [F, G*H]`` and ``input/bias [G*H]``: ``W_x`` and ``b``;
* ``recurrent/kernel [H, G*H]``: ``W_h`` (the GRU also has ``recurrent/bias``).

``W_f [h_{t-1}, x_t]`` of the textbook equations is ``W_h^f h_{t-1} + W_x^f x_t``
with ``W_f = [W_h^f; W_x^f]`` stacked on the input axis.

Carries are float32 whatever narrower ``dtype`` is (a bfloat16 cell state would
accumulate rounding error over time; a float64 cell carries float64,
:func:`carry_dtype`); the matrix products run in ``dtype`` and ``h_t`` is
returned in ``dtype``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl import errors
from jdl.models.initializers import get_initializer

Dtype = Any
Carry = Any

RECURRENT_INITS = ("orthogonal", "identity", "lecun_normal", "glorot_uniform")
SIMPLE_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def identity_init(gain: float = 1.0) -> Callable[..., jax.Array]:
  """``gain * I``: the identity initializer (Keras' ``Identity(gain=1.0)``).

  For a non-square ``[n, m]`` matrix it is ``gain`` times the first ``min(n, m)``
  columns/rows of the identity (``jnp.eye(n, m)``).

  References:
    Le, Jaitly & Hinton, "A simple way to initialize recurrent networks of rectified
    linear units", 2015 (IRNN).
  """
  def init(key, shape, dtype=jnp.float32):
    del key  # Deterministic.
    errors.require(len(shape) == 2, f"identity init needs a matrix, got shape {shape}")
    return gain * jnp.eye(shape[0], shape[1], dtype=dtype)

  return init


def recurrent_initializer(name: str, gain: float = 1.0,
                          num_blocks: int = 1) -> Callable[..., jax.Array]:
  """The initializer of a recurrent kernel ``[H, num_blocks * H]``.

  ``orthogonal`` and ``identity`` initialise each ``[H, H]`` gate block on its own
  (each block is orthogonal, or ``gain * I``), as the separate per-gate matrices of
  the textbook equations would be; the variance-scaling names (``lecun_normal``,
  ``glorot_uniform``) initialise the whole kernel.

  Args:
    name: one of :data:`RECURRENT_INITS`.
    gain: multiplies the orthogonal or identity matrices, or the standard deviation
      of the variance-scaling ones.
    num_blocks: number of gate blocks side by side on the output axis.

  Raises:
    JdlError: unknown name or a non-positive gain.
  """
  name = errors.lookup("recurrent_init", name, {n: n for n in RECURRENT_INITS})
  errors.require(isinstance(gain, (int, float)) and not isinstance(gain, bool)
                 and gain > 0, f"gain must be a positive number, got {gain!r}")
  if name not in ("orthogonal", "identity"):
    return get_initializer(name, float(gain))
  block = (jax.nn.initializers.orthogonal(float(gain)) if name == "orthogonal"
           else identity_init(float(gain)))

  def init(key, shape, dtype=jnp.float32):
    rows, cols = shape
    errors.require(cols == num_blocks * rows,
                   f"recurrent kernel {shape} is not {num_blocks} square blocks")
    keys = jax.random.split(key, num_blocks)
    return jnp.concatenate([block(k, (rows, rows), dtype) for k in keys], axis=1)

  return init


def _check_cell_fields(cell: nn.Module) -> None:
  errors.require(
      isinstance(cell.features, int) and not isinstance(cell.features, bool)
      and cell.features >= 1,
      f"features must be a positive integer, got {cell.features!r}")
  recurrent_initializer(cell.recurrent_init, cell.gain)
  get_initializer(cell.kernel_init)


def carry_dtype(dtype: Dtype | None) -> jnp.dtype:
  """The dtype a recurrent carry keeps for compute ``dtype``: float32, or ``dtype``
  when it is wider (float64, as in ``jdl check``'s gradient check)."""
  # By width, not jnp.promote_types: strict dtype promotion refuses bfloat16 + float32.
  wide = dtype is not None and jnp.dtype(dtype).itemsize > 4
  return jnp.dtype(dtype) if wide else jnp.dtype(jnp.float32)


class _Cell(nn.Module):
  """Shared fields and plumbing of the cells; see the module docstring."""

  features: int
  recurrent_init: str = "orthogonal"
  gain: float = 1.0
  kernel_init: str = "glorot_uniform"
  dtype: Dtype = jnp.float32

  num_gates: ClassVar[int] = 1
  recurrent_bias: ClassVar[bool] = False

  def __post_init__(self):
    super().__post_init__()
    _check_cell_fields(self)

  def _bias_init(self, key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype)

  def setup(self):
    width = self.num_gates * self.features
    self.input = nn.Dense(width, kernel_init=get_initializer(self.kernel_init),
                          bias_init=self._bias_init, dtype=self.dtype)
    self.recurrent = nn.Dense(
        width, use_bias=self.recurrent_bias,
        kernel_init=recurrent_initializer(self.recurrent_init, self.gain, self.num_gates),
        dtype=self.dtype)

  @property
  def carry_dtype(self):
    """float32, or ``dtype`` when wider (float64: a gradient check's whole model)."""
    return carry_dtype(self.dtype)

  def project_inputs(self, x: jax.Array) -> jax.Array:
    """``W_x x + b`` for every gate: ``[..., F] -> [..., gates * H]`` (the carry's dtype)."""
    return self.input(jnp.asarray(x, self.dtype)).astype(self.carry_dtype)

  def _recur(self, h: jax.Array) -> jax.Array:
    return self.recurrent(h.astype(self.dtype)).astype(self.carry_dtype)

  def __call__(self, carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
    """One step on a raw input ``x: [batch, F]``; returns ``(new_carry, h_t)``."""
    return self.step(carry, self.project_inputs(x))

  def step(self, carry: Carry, x_proj: jax.Array) -> tuple[Carry, jax.Array]:
    raise NotImplementedError

  def initialize_carry(self, batch_size: int) -> Carry:
    """The zero carry for ``batch_size`` sequences."""
    return jnp.zeros((batch_size, self.features), self.carry_dtype)

  @staticmethod
  def hidden(carry: Carry) -> jax.Array:
    """The hidden state ``h`` inside a carry, ``[batch, H]``."""
    return carry


class SimpleRNNCell(_Cell):
  """Elman cell: ``h_t = f(W_hh h_{t-1} + W_xh x_t + b)``; the carry is ``h``.

  Attributes:
    features: ``H``, the width of the hidden state.
    activation: ``'tanh'`` or ``'relu'`` (with ``recurrent_init='identity'``: the
      IRNN of Le et al., 2015).
    recurrent_init: initializer of ``W_hh``, one of :data:`RECURRENT_INITS`.
    gain: its gain (``identity`` gives ``W_hh = gain * I``).
    kernel_init: initializer of ``W_xh`` (name for :func:`get_initializer`).
    dtype: compute dtype of the matrix products; parameters and carry float32.

  Parameters: ``H * F + H * H + H``.
  """

  activation: str = "tanh"

  def __post_init__(self):
    super().__post_init__()
    errors.lookup("activation", self.activation, SIMPLE_ACTIVATIONS)

  def step(self, carry, x_proj):
    f = SIMPLE_ACTIVATIONS[self.activation]
    h = f(x_proj + self._recur(carry))
    return h, h.astype(self.dtype)


class LSTMCell(_Cell):
  """Long short-term memory; the carry is ``(c, h)``.

  Gate blocks in the order ``(i, f, g, o)``::

    f_t = sigmoid(W_f [h_{t-1}, x_t] + b_f)        forget
    i_t = sigmoid(W_i [h_{t-1}, x_t] + b_i)        input
    g_t = tanh(W_g [h_{t-1}, x_t] + b_g)           candidate C~_t
    C_t = f_t * C_{t-1} + i_t * g_t                cell
    o_t = sigmoid(W_o [h_{t-1}, x_t] + b_o)        output
    h_t = o_t * tanh(C_t)

  Attributes:
    features: ``H``.
    forget_bias: initial value of ``b_f`` (1.0, as Keras' ``unit_forget_bias``: the
      cell remembers by default at the start of training). The other biases start
      at 0.
    recurrent_init, gain, kernel_init, dtype: as :class:`SimpleRNNCell`; an
      orthogonal or identity init applies to each gate's ``[H, H]`` block.

  Parameters: ``4 * (H * (H + F) + H)``.

  References:
    Hochreiter & Schmidhuber, "Long short-term memory", 1997; Gers, Schmidhuber &
    Cummins, "Learning to forget", 2000.
  """

  forget_bias: float = 1.0
  num_gates: ClassVar[int] = 4

  def _bias_init(self, key, shape, dtype=jnp.float32):
    del key
    h = self.features
    return jnp.zeros(shape, dtype).at[h:2 * h].set(self.forget_bias)

  def step(self, carry, x_proj):
    c, h = carry
    z = x_proj + self._recur(h)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h.astype(self.dtype)

  def initialize_carry(self, batch_size):
    zeros = jnp.zeros((batch_size, self.features), self.carry_dtype)
    return zeros, zeros

  @staticmethod
  def hidden(carry):
    return carry[1]


class GRUCell(_Cell):
  """Gated recurrent unit (the "reset after" form of cuDNN, PyTorch and Keras 2).

  Gate blocks in the order ``(r, z, n)``; ``W`` act on ``x_t``, ``U`` on ``h_{t-1}``::

    r_t = sigmoid(W_r x_t + b_r + U_r h_{t-1} + c_r)        reset
    z_t = sigmoid(W_z x_t + b_z + U_z h_{t-1} + c_z)        update
    n_t = tanh(W_n x_t + b_n + r_t * (U_n h_{t-1} + c_n))   candidate
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

  The reset gate multiplies ``U_n h + c_n`` (not ``h`` before the product, as in
  Cho et al.), so the three recurrent products are one matrix product.

  Attributes:
    as :class:`SimpleRNNCell` (without ``activation``).

  Parameters: ``3 * (H * F + H * H + 2 * H)`` (input bias ``b`` and recurrent bias
  ``c``).

  References:
    Cho et al., "Learning phrase representations using RNN encoder-decoder for
    statistical machine translation", 2014.
  """

  num_gates: ClassVar[int] = 3
  recurrent_bias: ClassVar[bool] = True

  def step(self, carry, x_proj):
    h = carry
    xr, xz, xn = jnp.split(x_proj, 3, axis=-1)
    hr, hz, hn = jnp.split(self._recur(h), 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h = (1.0 - z) * n + z * h
    return h, h.astype(self.dtype)


CELLS: dict[str, type[_Cell]] = {"simple": SimpleRNNCell, "lstm": LSTMCell,
                                 "gru": GRUCell}


def make_cell(cell_type: str, features: int, *, activation: str = "tanh",
              forget_bias: float = 1.0, **kwargs: Any) -> _Cell:
  """Builds the cell ``cell_type`` (a key of :data:`CELLS`).

  ``activation`` applies to the simple cell and ``forget_bias`` to the LSTM; each
  is ignored by the other cells. ``kwargs`` are the common cell fields
  (``recurrent_init``, ``gain``, ``kernel_init``, ``dtype``, ``name``).

  Raises:
    JdlError: unknown cell type or a bad field.
  """
  cls = errors.lookup("cell", cell_type, CELLS)
  if cls is SimpleRNNCell:
    kwargs["activation"] = activation
  elif cls is LSTMCell:
    kwargs["forget_bias"] = forget_bias
  return cls(features, **kwargs)
