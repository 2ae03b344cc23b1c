"""Mergeable means: the metric statistics of the generative tasks; per-example keys.

A group ``{"sum", "count"}`` per quantity, merged by addition
(:func:`jdl.metrics.merge`), so an epoch value is the exact mean over its
examples whatever the batch sizes, and padded examples count nowhere.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jdl.errors import JdlError
from jdl.train import steps as steps_lib


def mean_group(values: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """The mergeable statistics of a mean over the examples where ``mask`` is set.

  ``values`` are ``[batch]`` or ``[batch, ...]`` (a critic's ``[batch, 1]`` scores, a
  patch discriminator's map): an example's value is the mean of its entries.
  """
  mask = mask.astype(bool)
  if values.ndim > 1:  # Broadcast against [batch], they were summed batch times over.
    values = jnp.mean(values, axis=tuple(range(1, values.ndim)))
  return {"sum": jnp.sum(jnp.where(mask, values, 0.0), dtype=jnp.float32),
          "count": jnp.sum(mask, dtype=jnp.int32)}


def compute(names, state) -> dict[str, float]:
  """``{name: mean}`` on the host, plus ``loss`` when the state has it."""
  host = jax.device_get(state)
  out = {}
  for name in (*names, *(("loss",) if "loss" in host and "loss" not in names else ())):
    g = host.get(name)
    if g is None:
      raise JdlError(f"no statistics for metric {name!r}; the task reports "
                     f"{', '.join(k for k in host if k != steps_lib.NONFINITE)}")
    out[name] = float(g["sum"]) / float(g["count"]) if g["count"] else math.nan
  return out


def _mix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 that mixes every bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def example_keys(key: jax.Array, x: jax.Array) -> jax.Array:
  """``[batch]`` keys: ``key`` folded with a 32-bit hash of each example's float32 bits.

  Equal examples get equal keys wherever they sit; the hash is a wrapping uint32 sum
  of mixed (bits, position) words, exact in any summation order, so the same on
  every backend and sharding.
  """
  words = jax.lax.bitcast_convert_type(x.reshape(x.shape[0], -1).astype(jnp.float32),
                                       jnp.uint32)
  position = jnp.arange(words.shape[1], dtype=jnp.uint32) * jnp.uint32(0x9E3779B9)
  h = _mix32(jnp.sum(_mix32(words ^ position), axis=1, dtype=jnp.uint32))
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, h)
