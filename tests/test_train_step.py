"""The train step's contracts against references: the loss in float32 under bfloat16
compute, an all-padding batch adding nothing, a non-finite step leaving the state as
it was (its per-step keys: tests/test_microbatch.py). Found by a mutation audit: each
test catches a bug that passed every earlier test."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdl
from jdl.models import create_model
from jdl.train import steps


def _ce_task(model, **kwargs):
  return steps.SupervisedTask(apply_fn=model.apply,
                              loss=optax.softmax_cross_entropy_with_integer_labels,
                              metric_names=("accuracy",), num_classes=3, **kwargs)


def _batch(n=8, d=5, mask=None, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": jnp.asarray(rng.normal(size=(n, d)), jnp.float32),
          "y": jnp.asarray(rng.integers(0, 3, n)),
          "mask": jnp.ones(n) if mask is None else jnp.asarray(mask, jnp.float32)}


def test_the_loss_is_computed_in_float32_under_bfloat16_compute():
  # Outputs not cast to float32 before the loss passed: the loss of a bfloat16
  # model is the float32 cross-entropy of its (bfloat16) logits, in float32.
  model = create_model({"name": "mlp", "hidden": (16,), "dtype": "bfloat16"}, num_outputs=3)
  batch = _batch(n=64)
  params = model.init(jax.random.key(0), batch["x"][:1], train=False)["params"]
  task = _ce_task(model)
  loss, (per_example, outputs, _) = task.loss_fn(params, {}, batch, jax.random.key(1), True)
  assert loss.dtype == jnp.float32 and per_example.dtype == jnp.float32
  logits = np.asarray(model.apply({"params": params}, batch["x"]).astype(jnp.float32),
                      np.float64)
  assert model.apply({"params": params}, batch["x"]).dtype == jnp.bfloat16
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ref = -logp[np.arange(64), np.asarray(batch["y"])]
  np.testing.assert_allclose(per_example, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss, ref.mean(), rtol=1e-6)
  grads = jax.grad(lambda p: task.loss_fn(p, {}, batch, jax.random.key(1), True)[0])(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("size", [0, 4])
def test_a_batch_of_only_padding_has_zero_loss_and_zero_gradient(size):
  # The max(count, 1) guard dropped passed: a device share or microbatch set
  # with no real example must add 0, not NaN (0 * NaN stays NaN in the pmean).
  model = create_model({"name": "mlp", "hidden": (8,)}, num_outputs=3)
  batch = _batch(mask=np.zeros(8))
  params = model.init(jax.random.key(0), batch["x"][:1], train=False)["params"]
  task, key = _ce_task(model), jax.random.key(1)
  if size:
    (loss, _), grads = steps.microbatched_loss(task, size, params, {}, batch, key, True)
  else:
    (loss, _), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(params, {}, batch, key,
                                                                      True)
  assert float(loss) == 0.0
  for g in jax.tree.leaves(grads):
    np.testing.assert_array_equal(g, 0.0)


def test_a_nonfinite_step_leaves_the_model_state_and_metrics_as_they_were():
  # Batch statistics of a non-finite step kept passed: documented in
  # make_train_step(check_gradients=True).
  model = create_model({"name": "mlp", "hidden": (8,), "batch_norm": True}, num_outputs=3)
  batch = _batch()
  tx = optax.apply_if_finite(optax.sgd(0.1), 10)
  state = jdl.create_train_state(model, tx, batch["x"], key=0)
  step = jax.jit(steps.make_train_step(_ce_task(model)))
  state, _ = step(state, batch)  # One good step: the statistics move off their init.
  before = jax.device_get((state.params, state.model_state))
  poisoned = dict(batch, x=batch["x"].at[0, 0].set(jnp.nan))
  new, metrics = step(state, poisoned)
  assert int(metrics["nonfinite"]["count"]) == 1
  chex.assert_trees_all_equal(jax.device_get(new.model_state), before[1])
  chex.assert_trees_all_equal(jax.device_get(new.params), before[0])  # apply_if_finite.
  assert float(metrics["loss"]["sum"]) == 0.0 and int(metrics["loss"]["count"]) == 0
  assert int(new.step) == int(state.step) + 1  # A skipped step counts.
