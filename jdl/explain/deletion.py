"""Deletion check: do the most attributed inputs matter most to the model?

Setting the top-k attributed input elements of each example to a baseline should
hurt the model's accuracy far more than setting k random elements (or k elements
chosen by a naive score such as the input's intensity) to it.

References:
  Samek et al. (2017), "Evaluating the Visualization of What a Deep Neural Network
  Has Learned", IEEE TNNLS, arXiv:1509.06321 (region perturbation, "most relevant
  first"). Petsiuk, Das, Saenko (2018), "RISE", BMVC, arXiv:1806.07421 (deletion).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jdl import errors
from jdl.explain import _checks


@jax.jit
def _remove_top_k(x, scores, baseline, k):
  n = x.shape[0]
  order = jnp.argsort(-scores.reshape(n, -1), axis=1, stable=True)
  # k is traced (one compilation for every k): remove the elements ranked below k.
  ranks = jnp.zeros(order.shape, jnp.int32).at[jnp.arange(n)[:, None], order].set(
      jnp.arange(order.shape[1], dtype=jnp.int32))
  return jnp.where((ranks < k).reshape(x.shape), baseline, x)


def remove_top_k(x: jax.Array, scores: jax.Array, k: int,
                 baseline: float | jax.Array = 0.0) -> np.ndarray:
  """Sets the ``k`` highest-scoring elements of each example to ``baseline``.

  Args:
    x: ``[n, ...]`` inputs.
    scores: ``[n, ...]`` shaped like ``x`` (e.g. attributions; random numbers for
      the random reference). Ties are broken by position.
    k: elements removed per example, ``0 <= k <= x[0].size``.
    baseline: a scalar or an array broadcastable to ``x``.

  Returns:
    ``[n, ...]`` the inputs with those elements replaced.

  Raises:
    JdlError: ``k`` out of range, ``scores`` shaped unlike ``x``, or NaN or Inf in
      either.
  """
  x = jnp.asarray(x, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  size = int(np.prod(x.shape[1:]))
  errors.require(scores.shape == x.shape,
                 f"scores of shape {scores.shape} must have the inputs' shape {x.shape}")
  _checks.require_finite(x, "x")  # A NaN score ranks last: never removed.
  _checks.require_finite(scores, "scores")
  _checks.check_batch(x, "x")  # A 1-D x was n examples of one element: all removed.
  errors.require(isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))
                 and 0 <= k <= size,
                 f"k must be an integer in [0, {size}], got {k!r}")
  base = jnp.asarray(_checks.broadcast(baseline, x.shape, "baseline", "the inputs'"))
  return np.asarray(_remove_top_k(x, scores, base, jnp.int32(k)))
