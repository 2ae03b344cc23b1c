"""Explaining a trained jdl run: its model and its input normalisation, bundled."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jdl import metrics as metrics_lib
from jdl.errors import JdlError
from jdl.explain import _checks


# The tasks whose model is one function of the inputs, ``apply(variables, x,
# train=False)``, that :func:`from_run` can bundle: a VAE's needs a sampling key, a
# GAN's state holds two models.
TASKS = ("classification", "regression", "autoencoder")


@dataclasses.dataclass(frozen=True)
class RunModel:
  """A trained model as the attribution functions take it.

  Attributes:
    apply_fn: the model's ``apply`` (``apply_fn(variables, x, train=False)``).
    variables: ``{'params': ..., **model_state}`` of the run's state.
    normalize: raw inputs ``[n, ...]`` -> the normalised inputs the model was
      trained on (the train split's statistics, as :class:`jdl.Trainer` does).
    input_shape: the shape of one example (``None``: unknown, not checked).
    task: the run's task (:data:`TASKS`); :meth:`probabilities` needs a classifier.

  Examples:
    >>> m = from_run(result)                                     # doctest: +SKIP
    >>> x = m.normalize(x_raw)                                   # doctest: +SKIP
    >>> ig = integrated_gradients(m.apply_fn, m.variables, x,    # doctest: +SKIP
    ...                           baseline=m.normalize(np.zeros_like(x_raw)))
  """
  apply_fn: Callable[..., jax.Array]
  variables: Any
  normalize: Callable[[np.ndarray], np.ndarray]
  input_shape: tuple[int, ...] | None = None
  task: str = "classification"

  def logits(self, x: jax.Array) -> jax.Array:
    """Model outputs for normalised inputs ``x: [n, ...]``.

    Raises:
      JdlError: ``x`` is not a non-empty batch of the run's examples.
    """
    _checks.check_batch(x, "x", self.input_shape)
    x = jnp.asarray(x, jnp.float32)
    if self.input_shape is not None and tuple(x.shape[1:]) != tuple(self.input_shape):
      # Another size (a sequence's length): one clear error if the model cannot.
      _checks.output_shape(functools.partial(self.apply_fn, self.variables, train=False), x)
    return _apply(self.apply_fn, self.variables, x)

  def probabilities(self, x: jax.Array) -> jax.Array:
    """Class probabilities ``[n, classes]`` (for LIME, which explains them): the
    softmax of :meth:`logits`; for one logit ``z`` an example (a binary classifier
    trained with ``binary_crossentropy``), ``[1 - sigmoid(z), sigmoid(z)]``.

    Raises:
      JdlError: the run is not a classifier (a regression's outputs are no logits:
        explain :meth:`logits` itself), or a bad ``x``.
    """
    if self.task != "classification":
      raise JdlError(f"probabilities are a classifier's; this is a {self.task} run, whose "
                     "outputs are no class logits: give LIME m.logits as its predict_fn "
                     "(it explains one output column, target=)")
    z = self.logits(x).astype(jnp.float32)
    if z.shape[-1] == 1:  # softmax((0, z)) = (1 - sigmoid(z), sigmoid(z)).
      z = metrics_lib.two_class_logits(z)
    return jax.nn.softmax(z, axis=-1)


def _apply(apply_fn, variables, x):
  return _jitted_apply(apply_fn)(variables, x)


@functools.lru_cache(maxsize=16)
def _jitted_apply(apply_fn):
  """One jitted ``apply`` per model, so repeated LIME batches do not recompile."""
  return jax.jit(lambda v, x: apply_fn(v, x, train=False))


def from_run(run) -> RunModel:
  """The :class:`RunModel` of a :class:`jdl.FitResult` or :class:`jdl.Trainer`.

  Raises:
    JdlError: ``run`` is neither, a run of a task other than :data:`TASKS` (a VAE
      samples, a GAN is two models), a run on token ids (text), or a Trainer of a
      trained workdir that holds its initial parameters (neither fitted nor loaded).
  """
  trainer = getattr(run, "trainer", run)
  state = getattr(run, "state", None)
  if state is None or not hasattr(trainer, "normalizer"):
    raise JdlError(f"from_run takes a jdl.FitResult or jdl.Trainer, got {type(run).__name__}")
  task = trainer.config.task
  if task not in TASKS:
    raise JdlError(f"from_run explains {', '.join(TASKS[:-1])} and {TASKS[-1]} runs, not "
                   f"task {task!r} (its model is not one deterministic function of the "
                   "inputs alone); give saliency or integrated_gradients an apply_fn of "
                   "your own")
  if run is trainer:  # A FitResult holds the run's state; a bare Trainer may not yet.
    trainer.check_holds_run_state()
  if trainer.normalizer is None:  # Token ids: integers, no gradient or perturbation.
    raise JdlError("jdl.explain attributes numeric inputs; this run takes token ids "
                   "(text), which have no gradient and no baseline (use jdl.predict, or "
                   "attribute a model over embeddings of your own)")
  input_shape = getattr(getattr(trainer, "data", None), "input_shape", None)
  return RunModel(state.apply_fn, state.variables,
                  functools.partial(_normalize, trainer, input_shape),
                  None if input_shape is None else tuple(input_shape), task=task)


def _normalize(trainer, input_shape, x) -> np.ndarray:
  """``trainer.normalizer(x)`` for raw inputs ``x: [n, *input_shape]``.

  Raises:
    JdlError: ``x`` is not a non-empty batch shaped as the run's examples.
  """
  trainer.check_input_kind(np.asarray(x), "x holds")
  x = np.asarray(x)  # The normaliser casts as it did for the splits.
  _checks.check_batch(x, "x", input_shape)
  try:
    return trainer.normalizer(x)
  except ValueError:  # The train split's statistics are of another example shape.
    raise JdlError(f"x of shape {x.shape} cannot be normalised like the run's examples "
                   f"{tuple(input_shape)}") from None
