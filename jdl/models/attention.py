"""Additive (Bahdanau) and multiplicative (Luong) attention over an encoder memory.

An attention has two halves so that the source side is computed once per sequence:
``keys(memory)`` before decoding, then ``__call__(query, keys, memory, mask)`` at
every decoder step.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl import errors

Dtype = Any
ATTENTIONS = ("bahdanau", "luong_dot", "luong_general", "none")


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax over the last axis restricted to ``mask``; exactly 0 off the mask.

  A row without a real position gives zeros (not NaN).
  """
  scores = scores.astype(jnp.float32)
  low = jnp.finfo(jnp.float32).min
  weights = jax.nn.softmax(jnp.where(mask, scores, low), axis=-1)
  return jnp.where(mask, weights, jnp.zeros_like(weights))


class Attention(nn.Module):
  """Scores ``query [batch, Q]`` against ``memory [batch, S, M]``.

  * ``bahdanau``: ``score_j = v^T tanh(W_q q + W_k m_j + b)`` (additive);
  * ``luong_dot``: ``score_j = q . m_j`` (needs ``Q == M``);
  * ``luong_general``: ``score_j = q^T W_a m_j``.

  Attributes:
    kind: one of ``'bahdanau'``, ``'luong_dot'``, ``'luong_general'``.
    features: width of the additive attention's hidden layer, and of ``q`` for
      ``luong_general``.
    dtype: compute dtype of the products; scores and weights are float32.

  References:
    Bahdanau, Cho & Bengio, "Neural machine translation by jointly learning to
    align and translate", 2015; Luong, Pham & Manning, "Effective approaches to
    attention-based neural machine translation", 2015.
  """

  kind: str
  features: int
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    errors.lookup("attention", self.kind,
                  {k: k for k in ATTENTIONS if k != "none"})
    if self.kind != "luong_dot":  # The dot product has no width of its own.
      errors.require(isinstance(self.features, int) and not isinstance(self.features, bool)
                     and self.features >= 1, f"{self.kind} attention's features must be "
                     f"a positive integer, got {self.features!r}")

  def setup(self):
    if self.kind == "bahdanau":
      self.key_proj = nn.Dense(self.features, dtype=self.dtype)
      self.query_proj = nn.Dense(self.features, use_bias=False, dtype=self.dtype)
      self.energy = nn.Dense(1, use_bias=False, dtype=self.dtype)
    elif self.kind == "luong_general":
      self.key_proj = nn.Dense(self.features, use_bias=False, dtype=self.dtype)

  def keys(self, memory: jax.Array) -> jax.Array:
    """The query-independent half: ``[batch, S, M] -> [batch, S, K]``."""
    memory = jnp.asarray(memory, self.dtype)
    if self.kind == "luong_dot":
      return memory
    return self.key_proj(memory)

  def __call__(self, query: jax.Array, keys: jax.Array, memory: jax.Array,
               mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Attends.

    Args:
      query: ``[batch, Q]``.
      keys: ``keys(memory)``, ``[batch, S, K]``.
      memory: ``[batch, S, M]``, the values.
      mask: ``[batch, S]``, true on real source positions.

    Returns:
      ``(context [batch, M], weights [batch, S])``: the weights sum to 1 over the
      real positions and are 0 on padding.
    """
    query = jnp.asarray(query, self.dtype)
    if self.kind == "bahdanau":
      hidden = jnp.tanh(keys + self.query_proj(query)[:, None, :])
      scores = self.energy(hidden)[..., 0]
    else:
      errors.require(query.shape[-1] == keys.shape[-1],
                     f"{self.kind} attention needs a query as wide as its keys, got "
                     f"{query.shape[-1]} and {keys.shape[-1]}")
      scores = jnp.einsum("bk,bsk->bs", query, keys)
    weights = masked_softmax(scores, mask)
    context = jnp.einsum("bs,bsm->bm", weights.astype(self.dtype),
                         jnp.asarray(memory, self.dtype))
    return context, weights
