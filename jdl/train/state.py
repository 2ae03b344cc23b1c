"""The training state: one PyTree that holds everything a run's future depends on."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jdl.errors import JdlError
from jdl import optim


class TrainState(struct.PyTreeNode):
  """Step, parameters, model state, optimizer state and PRNG key.

  Attributes:
    step: number of train steps taken (int32 scalar array). With gradient
      accumulation the optimizer updates once every ``accumulate_steps`` of them
      (:func:`jdl.optim.update_count` counts the updates); a step skipped as
      non-finite counts too.
    params: the trainable parameters.
    model_state: the other variable collections, e.g. ``{'batch_stats': ...}``.
    opt_state: the optax state of ``tx``.
    key: a typed PRNG key; per-step keys are ``fold_in(key, step)``.
    apply_fn: the model's ``apply`` (static).
    tx: the optax transformation (static).
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: optax.OptState
  key: jax.Array
  apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def apply_gradients(self, *, grads: Any, model_state: Any) -> TrainState:
    """One optimizer update; returns the new state (nothing is mutated)."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(
        step=self.step + 1,
        params=optim.apply_updates(self.params, updates),
        model_state=model_state,
        opt_state=opt_state,
    )

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, **self.model_state}


def create_train_state(model: flax.linen.Module, tx: optax.GradientTransformation,
                       example_input: jax.Array, *, key: jax.Array,
                       init_kwargs: dict[str, Any] | None = None) -> TrainState:
  """Initialises the model on ``example_input`` (``[batch, ...]``) and the optimizer.

  Args:
    model: a flax.linen module following jdl's model contract.
    tx: the optax transformation.
    example_input: an input batch (only its shape and dtype matter).
    key: a PRNG key (``jax.random.key(seed)``), or an int seed made into one; split
      here into init keys and the state's key.
    init_kwargs: extra keyword arguments of the model's ``__call__`` at init; a
      value ``"key"`` is replaced by a PRNG key (e.g. a VAE's sampling key).
  """
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= key < 2**64:
    key = jax.random.key(int(key))
  elif not (isinstance(key, jax.Array) and (
      (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ())
      or (key.shape == (2,) and key.dtype == jnp.uint32))):
    what = (f"{key!r:.40}" if isinstance(key, (int, np.integer))
            else f"{type(key).__name__} of shape {key.shape}" if isinstance(key, jax.Array)
            else type(key).__name__)
    raise JdlError("create_train_state: key must be one PRNG key (jax.random.key(seed)) or an "
                   f"int seed in [0, 2**64), got {what}")
  init_key, dropout_key, state_key = jax.random.split(key, 3)
  kwargs = dict(init_kwargs or {})

  def init(k1, k2, x):
    extra = {k: (k2 if isinstance(v, str) and v == "key" else v) for k, v in kwargs.items()}
    return model.init({"params": k1, "dropout": k2}, x, train=False, **extra)

  variables = jax.jit(init)(init_key, dropout_key, example_input)
  variables = flax.core.unfreeze(variables)
  params = variables.pop("params")
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state=variables,
      opt_state=tx.init(params),
      key=state_key,
      apply_fn=model.apply,
      tx=tx,
  )
