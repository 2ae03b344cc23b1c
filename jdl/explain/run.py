"""Explaining a trained jdl run: its model and its input normalisation, bundled."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jdl.errors import JdlError


@dataclasses.dataclass(frozen=True)
class RunModel:
  """A trained model as the attribution functions take it.

  Attributes:
    apply_fn: the model's ``apply`` (``apply_fn(variables, x, train=False)``).
    variables: ``{'params': ..., **model_state}`` of the run's state.
    normalize: raw inputs ``[n, ...]`` -> the normalised inputs the model was
      trained on (the train split's statistics, as :class:`jdl.Trainer` does).

  Examples:
    >>> m = from_run(result)                                     # doctest: +SKIP
    >>> x = m.normalize(x_raw)                                   # doctest: +SKIP
    >>> ig = integrated_gradients(m.apply_fn, m.variables, x,    # doctest: +SKIP
    ...                           baseline=m.normalize(np.zeros_like(x_raw)))
  """
  apply_fn: Callable[..., jax.Array]
  variables: Any
  normalize: Callable[[np.ndarray], np.ndarray]

  def logits(self, x: jax.Array) -> jax.Array:
    """Model outputs for normalised inputs ``x: [n, ...]``."""
    return _apply(self.apply_fn, self.variables, jnp.asarray(x, jnp.float32))

  def probabilities(self, x: jax.Array) -> jax.Array:
    """Softmax of :meth:`logits` (for LIME, which explains class probabilities)."""
    return jax.nn.softmax(self.logits(x).astype(jnp.float32), axis=-1)


def _apply(apply_fn, variables, x):
  return _jitted_apply(apply_fn)(variables, x)


@functools.lru_cache(maxsize=16)
def _jitted_apply(apply_fn):
  """One jitted ``apply`` per model, so repeated LIME batches do not recompile."""
  return jax.jit(lambda v, x: apply_fn(v, x, train=False))


def from_run(run) -> RunModel:
  """The :class:`RunModel` of a :class:`jdl.FitResult` or :class:`jdl.Trainer`.

  Raises:
    JdlError: ``run`` is neither.
  """
  trainer = getattr(run, "trainer", run)
  state = getattr(run, "state", None)
  if state is None or not hasattr(trainer, "normalizer"):
    raise JdlError(f"from_run takes a jdl.FitResult or jdl.Trainer, got {type(run).__name__}")
  return RunModel(state.apply_fn, state.variables,
                  lambda x: trainer.normalizer(np.asarray(x, np.float32)))
