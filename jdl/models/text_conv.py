"""A 1-D convolutional text classifier (the course's Keras model), padding-exact."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl import errors
from jdl.models.conv import Conv
from jdl.models.initializers import get_initializer
from jdl.models.mlp import MLP, check_common_fields, check_positive, check_token_id, check_widths

Dtype = Any


def _window_all(mask: jax.Array, size: int, stride: int) -> jax.Array:
  """``[batch, time]`` -> true where every step of a 'VALID' window is real."""
  n = (mask.shape[1] - size) // stride + 1
  starts = jnp.arange(n) * stride
  idx = starts[:, None] + jnp.arange(size)[None, :]
  return jnp.all(mask[:, idx], axis=-1)


class Conv1DText(nn.Module):
  """Embedding -> [Conv1D(relu) -> MaxPool1D] ... -> Conv1D(relu) -> global average -> dense.

  The Keras model::

    Embedding -> Conv1D(128, 5, relu) -> MaxPooling1D(5) -> Conv1D(128, 5, relu)
      -> GlobalAveragePooling1D -> Dense

  with 'VALID' convolutions and pools. A max pool follows every conv but the last.
  Padding, 'pre' or 'post', does not change a sequence's output. Each row's leading
  pads are first moved to its end (so the pool windows start at its first token,
  as they would without padding); then a conv or pool output counts as real
  only when its whole window is real (as it would exist for the unpadded
  sequence), padded pool inputs are zeroed (ReLU outputs are non-negative, so a
  zero never wins a max over real values), and the global average runs over real
  positions only (zeros when none: a sequence shorter than the receptive field).

  Attributes:
    vocab_size: number of token ids.
    num_outputs: width of the output.
    embed_dim: embedding width.
    filters: output channels of each conv.
    kernel_size: conv window.
    pool_size: max-pool window and stride.
    dense: hidden widths of the :class:`MLP` head (ReLU).
    dropout_rate: dropout on the pooled features and in the head.
    pad_id: the padding token.
    kernel_init: initializer of the convs and hidden dense layers.
    conv_impl: ``'auto'``, ``'xla'``, ``'patches'`` or ``'hybrid'`` (see :mod:`jdl.models.conv`).
    dtype: compute dtype; parameters stay float32.

  Submodules ``embed``, ``conv_{i}`` and ``mlp``.
  """

  vocab_size: int
  num_outputs: int
  embed_dim: int = 128
  filters: Sequence[int] = (128, 128)
  kernel_size: int = 5
  pool_size: int = 5
  dense: Sequence[int] = ()
  dropout_rate: float = 0.0
  pad_id: int = 0
  kernel_init: str = "he_normal"
  conv_impl: str = "auto"
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_positive("vocab_size", self.vocab_size)
    check_positive("embed_dim", self.embed_dim)
    check_token_id("pad_id", self.pad_id, self.vocab_size, "vocab_size")
    check_widths("filters", self.filters)
    errors.require(len(self.filters) >= 1, "filters needs at least one conv layer")
    check_positive("kernel_size", self.kernel_size)
    check_positive("pool_size", self.pool_size)
    check_widths("dense", self.dense)

  def min_length(self) -> int:
    """The shortest sequence with at least one real position after the last conv."""
    # Walk backwards: a conv needs k inputs per output, a pool p per output.
    need = self.kernel_size
    for _ in self.filters[:-1]:
      need = need * self.pool_size + self.kernel_size - 1
    return need

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Args: ``x [batch, time]`` token ids padded with ``pad_id``.

    Returns:
      ``[batch, num_outputs]`` logits.

    Raises:
      JdlError: ``time`` shorter than :meth:`min_length`.
    """
    errors.require(x.ndim == 2, f"Conv1DText needs [batch, time] token ids, got "
                                f"{tuple(x.shape)}")
    errors.require(
        x.shape[1] >= self.min_length(),
        f"sequences of length {x.shape[1]} are shorter than the receptive field "
        f"({self.min_length()}) of filters={tuple(self.filters)}, kernel_size="
        f"{self.kernel_size}, pool_size={self.pool_size}; pad them longer")
    x = errors.token_ids(x, "Conv1DText")
    # 'pre' padding: rotate each row left past its leading pads (no-op for 'post').
    leading = jnp.argmax(x != self.pad_id, axis=1)  # 0 for a row of pads only.
    positions = (jnp.arange(x.shape[1])[None, :] + leading[:, None]) % x.shape[1]
    x = jnp.take_along_axis(x, positions, axis=1)
    mask = x != self.pad_id
    h = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name="embed")(x)
    init = get_initializer(self.kernel_init)
    last = len(self.filters) - 1
    for i, width in enumerate(self.filters):
      h = Conv(width, (self.kernel_size,), padding="VALID", kernel_init=init,
               dtype=self.dtype, impl=self.conv_impl, name=f"conv_{i}")(h)
      h = jax.nn.relu(h)
      mask = _window_all(mask, self.kernel_size, 1)
      self.sow("intermediates", f"conv_act_{i}", h)
      if i < last:
        h = jnp.where(mask[..., None], h, jnp.zeros_like(h))
        b, t, c = h.shape
        n = t // self.pool_size
        h = jnp.max(h[:, :n * self.pool_size].reshape(b, n, self.pool_size, c), axis=2)
        mask = _window_all(mask, self.pool_size, self.pool_size)
    m = mask[..., None]
    count = jnp.sum(mask, axis=1, keepdims=True).astype(h.dtype)
    h = jnp.sum(jnp.where(m, h, jnp.zeros_like(h)), axis=1) / jnp.maximum(
        count, jnp.ones_like(count))
    if self.dropout_rate > 0:
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    return MLP(self.num_outputs, hidden=tuple(self.dense), activation="relu",
               dropout_rate=self.dropout_rate, kernel_init=self.kernel_init,
               dtype=self.dtype, name="mlp")(h, train=train)
