"""Builders of the pure training and evaluation steps of a supervised task.

A step is ``(state, batch) -> (state, metrics)`` where ``batch`` is a dict with
``x: [B, ...]``, ``y: [B, ...]`` and ``mask: [B]`` (1 for real examples, 0 for the
padding of a last partial evaluation batch), and ``metrics`` is a mergeable
metric state (:mod:`jdl.metrics`). The loop jit-compiles and fuses them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jdl import metrics as metrics_lib
from jdl import optim
from jdl.train.state import TrainState

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class SupervisedTask:
  """A model trained on (x, y) pairs with a per-example loss.

  Attributes:
    apply_fn: the model's ``apply``.
    loss: per-example loss ``(outputs, targets) -> [B]``.
    metric_names: metrics reported besides the loss.
    num_classes: for classification metrics (0 for regression).
    l1, l2: penalties on kernels added to the training loss.
  """
  apply_fn: Callable[..., Any]
  loss: Callable[[jax.Array, jax.Array], jax.Array]
  metric_names: tuple[str, ...]
  num_classes: int
  l1: float = 0.0
  l2: float = 0.0

  def loss_fn(self, params, model_state, batch: Batch, key: jax.Array, train: bool):
    """Returns ``(loss, (per_example_loss, outputs, new_model_state))``.

    ``loss`` is the masked mean of the per-example loss plus the penalties.
    """
    variables = {"params": params, **model_state}
    if train:
      outputs, new_model_state = self.apply_fn(
          variables, batch["x"], train=True, rngs={"dropout": key},
          mutable=list(model_state.keys()))
    else:
      outputs, new_model_state = self.apply_fn(variables, batch["x"], train=False), model_state
    outputs = outputs.astype(jnp.float32)  # The loss in float32 under mixed precision too.
    per_example = self.loss(outputs, batch["y"])
    mask = batch["mask"].astype(per_example.dtype)
    loss = jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    if self.l1 or self.l2:
      loss = loss + optim.penalty(params, l1=self.l1, l2=self.l2)
    return loss, (per_example, outputs, new_model_state)

  def metrics(self, names, outputs, batch: Batch, per_example_loss):
    return metrics_lib.from_outputs(names, outputs, batch["y"], batch["mask"],
                                    num_classes=self.num_classes, loss=per_example_loss)


def train_metric_names(names: tuple[str, ...]) -> tuple[str, ...]:
  """Metrics tracked during training: those with a fixed-size state."""
  return tuple(n for n in names if n != "roc_auc")


def make_train_step(task: SupervisedTask):
  """``train_step(state, batch) -> (state, metrics)``: one optimizer update."""
  names = train_metric_names(task.metric_names)

  def train_step(state: TrainState, batch: Batch):
    key = jax.random.fold_in(state.key, state.step)
    grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)
    (_, (per_example, outputs, model_state)), grads = grad_fn(
        state.params, state.model_state, batch, key, True)
    state = state.apply_gradients(grads=grads, model_state=model_state)
    return state, task.metrics(names, outputs, batch, per_example)

  return train_step


def make_eval_step(task: SupervisedTask):
  """``eval_step(state, batch) -> (state, metrics)``: the model in inference mode.

  The state is returned unchanged, so train and eval steps share one signature.
  """

  def eval_step(state: TrainState, batch: Batch):
    _, (per_example, outputs, _) = task.loss_fn(
        state.params, state.model_state, batch, state.key, False)
    return state, task.metrics(task.metric_names, outputs, batch, per_example)

  return eval_step


def make_predict_fn(apply_fn):
  def predict(state: TrainState, x: jax.Array) -> jax.Array:
    return apply_fn(state.variables, x, train=False)
  return predict
