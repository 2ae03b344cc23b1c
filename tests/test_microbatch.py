"""Microbatches: a step's loss and gradients one slice of the batch at a time."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import jdl
from jdl import regularizers
from jdl.data import augment as augment_lib
from jdl.models import create_model
from jdl.train import loop
from jdl.train import steps
from jdl.train import strategy

from conftest import make_config


def _task(model, loss=None, **kwargs):
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels
  return steps.SupervisedTask(apply_fn=model.apply, loss=loss or cross_entropy,
                              metric_names=("accuracy",), num_classes=5, **kwargs)


def _batch(n=12, shape=(8, 8, 1), padded=3):
  rng = np.random.default_rng(0)
  mask = np.ones(n, np.float32)
  mask[n - padded:] = 0.0  # The padding of a last partial batch.
  return {"x": jnp.asarray(rng.normal(size=(n, *shape)), jnp.float32),
          "y": jnp.asarray(rng.integers(0, 5, n)), "mask": jnp.asarray(mask)}


def _assert_same_as_whole_batch(task, params, batch, size):
  key = jax.random.key(3)
  (loss, (per_ex, out, state)), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
      params, {}, batch, key, True)
  (mloss, (mper_ex, mout, mstate)), mgrads = steps.microbatched_loss(
      task, size, params, {}, batch, key, True)
  np.testing.assert_allclose(mloss, loss, rtol=1e-6)
  np.testing.assert_allclose(mper_ex, per_ex, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(mout, out, rtol=1e-6, atol=1e-6)
  assert mstate == state == {}
  chex.assert_trees_all_close(mgrads, grads, rtol=1e-5, atol=1e-7)
  return float(loss)


CNN = {"name": "cnn", "features": (4, 8), "dense": (16,), "pool": "avg"}


@pytest.mark.parametrize("size", [3, 4, 6])
def test_microbatches_give_the_whole_batch_loss_and_gradients(size):
  # The masked mean over 12 examples (3 of them padding) as sums over 4, 3 or 2
  # microbatches; the reference is autodiff of the whole batch's loss.
  model = create_model(CNN, num_outputs=5)
  batch = _batch()
  params = model.init(jax.random.key(0), batch["x"][:1], train=False)["params"]
  _assert_same_as_whole_batch(_task(model), params, batch, size)


@pytest.mark.parametrize("size", [0, 3])
def test_a_padded_batch_loss_is_the_mean_over_its_real_examples(size):
  # Independently of the library's loss: numpy's cross-entropy of the model's logits,
  # summed over the 9 real examples and divided by 9 (not by the batch's 12); the
  # padding's gradient is zero.
  model = create_model(CNN, num_outputs=5)
  batch = _batch()
  params = model.init(jax.random.key(0), batch["x"][:1], train=False)["params"]
  task, key = _task(model), jax.random.key(3)
  if size:
    (loss, _), grads = steps.microbatched_loss(task, size, params, {}, batch, key, True)
  else:
    (loss, _), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
        params, {}, batch, key, True)
  logits = np.asarray(model.apply({"params": params}, batch["x"]), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -log_probs[np.arange(12), np.asarray(batch["y"])]
  np.testing.assert_allclose(loss, ce[:9].sum() / 9, rtol=1e-5)
  real = dict(batch, x=batch["x"].at[9:].set(1e3))  # Padding rows may hold anything.
  _, other = jax.value_and_grad(task.loss_fn, has_aux=True)(params, {}, real, key, True)
  chex.assert_trees_all_close(other, grads, rtol=1e-5, atol=1e-7)


def test_microbatches_with_weight_and_activity_penalties():
  # The weight penalty counts once, not once per microbatch; the activity penalty
  # (l1 * sum|a| / batch) is each microbatch's share of the whole batch's.
  model = create_model({"name": "mlp", "hidden": (16, 8)}, num_outputs=5)
  batch = _batch(padded=0, shape=(6,))
  params = model.init(jax.random.key(0), batch["x"][:1], train=False)["params"]
  rules = ((".*/kernel", 1e-3, 1e-2),)  # ("kernel" matched no path: no weight penalty.)
  plain = _assert_same_as_whole_batch(_task(model), params, batch, 4)
  penalised = _assert_same_as_whole_batch(
      _task(model, penalty_rules=rules, activity_l1=0.01), params, batch, 4)
  weight = float(regularizers.penalty(params, rules))
  assert weight > 0
  weighted = _assert_same_as_whole_batch(_task(model, penalty_rules=rules), params, batch, 4)
  np.testing.assert_allclose(weighted, plain + weight, rtol=1e-5)  # Once, not 4 times.
  assert penalised > plain + weight  # Both penalties are in the loss.


@pytest.mark.parametrize("per_example", [False, True])
def test_microbatches_split_mixup_targets(per_example):
  # One mixing weight for the whole batch stays whole; one per example is split.
  model = create_model(CNN, num_outputs=5)
  batch = _batch(padded=0)
  params = model.init(jax.random.key(0), batch["x"][:1], train=False)["params"]
  x, targets = augment_lib.mixup(jax.random.key(1), batch["x"], batch["y"], 0.4,
                                 per_example=per_example)
  assert targets.lam.shape == ((12,) if per_example else ())
  task = _task(model)
  task = dataclasses.replace(task, loss=augment_lib.mixup_loss(task.loss))
  _assert_same_as_whole_batch(task, params, {**batch, "x": x, "y": targets}, 4)


def test_training_in_microbatches_matches_whole_batches():
  # A digits CNN for two epochs (40 steps of 64): the same losses and parameters
  # within float rounding, also with every gradient checked at every step.
  common = dict(model__name="cnn", model__features=(8, 16), model__dense=(16,))
  whole = jdl.fit(make_config(microbatch_size=64, **common), quiet=True)
  assert whole.trainer.microbatch_size == 0
  for check in ("block", "step"):
    micro = jdl.fit(make_config(microbatch_size=16, nonfinite_check=check, **common),
                    quiet=True)
    assert micro.trainer.microbatch_size == 16
    np.testing.assert_allclose(micro.history["loss"], whole.history["loss"], rtol=1e-5)
    chex.assert_trees_all_close(jax.device_get(micro.state.params),
                                jax.device_get(whole.state.params), rtol=1e-4, atol=1e-6)


def _key_recording_step(key, microbatch_size=0):
  """A jitted augmented train step of a dropout MLP that records each key it hands
  out, its first state, a batch, and the list of (purpose, key bits) it fills."""
  seen = []

  def record(what, key):
    jax.debug.callback(lambda k: seen.append((what, tuple(np.asarray(k).ravel().tolist()))),
                       jax.random.key_data(key))

  class Recording(steps.SupervisedTask):
    def forward(self, params, model_state, batch, key, train):
      record("forward", key)
      return super().forward(params, model_state, batch, key, train)

  def augment(key, batch):
    record("augment", key)
    return batch

  model = create_model({"name": "mlp", "hidden": (8,), "dropout_rate": 0.5}, num_outputs=5)
  batch = _batch(padded=0, shape=(6,))
  task = Recording(apply_fn=model.apply, loss=optax.softmax_cross_entropy_with_integer_labels,
                   metric_names=("accuracy",), num_classes=5)
  state = jdl.create_train_state(model, optax.sgd(0.1), batch["x"], key=key)
  step = jax.jit(steps.make_train_step(task, augment, microbatch_size=microbatch_size))
  return step, state, batch, seen


@pytest.mark.parametrize("size", [0, 4])
def test_no_key_serves_two_purposes_in_an_augmented_step(size):
  # The keys the step hands out: augmentation's, and the forward passes' (dropout):
  # the whole batch's, or each microbatch's. Microbatch 1's fold_in(step_key, 1) was
  # augmentation's key.
  step, state, batch, seen = _key_recording_step(jax.random.key(0), size)
  jax.block_until_ready(step(state, batch))
  kinds = [what for what, _ in seen]
  assert kinds.count("augment") == 1 and kinds.count("forward") == (3 if size else 1)
  assert len({key for _, key in seen}) == len(seen), seen


def test_each_step_draws_its_keys_from_fold_in_of_the_state_key_and_step():
  # A step key not folded with state.step (in steps.py and in diagnostics' copy of
  # the derivation) passed every test: the same dropout and augmentation every step.
  # TrainState documents per-step keys fold_in(key, step); the augmentation key is
  # fold_in(step_key, 1) and dropout's the step key.
  step, state, batch, seen = _key_recording_step(jax.random.key(4))
  data = lambda k: tuple(np.asarray(jax.random.key_data(k)).ravel().tolist())  # noqa: E731
  want = []
  for s in range(3):
    k = jax.random.fold_in(state.key, s)
    want += [("augment", data(jax.random.fold_in(k, 1))), ("forward", data(k))]
  for _ in range(3):
    state, _ = step(state, batch)
  jax.effects_barrier()
  assert sorted(seen) == sorted(want)
  assert len({k for _, k in seen}) == 6  # Every step and purpose its own key.


def test_microbatch_size_errors():
  with pytest.raises(jdl.JdlError, match="microbatch_size=24 must divide batch_size=64"):
    loop.Trainer(make_config(microbatch_size=24), quiet=True)
  with pytest.raises(jdl.JdlError, match="microbatch_size must be >= 0"):
    loop.Trainer(make_config(microbatch_size=-8), quiet=True)
  with pytest.raises(jdl.JdlError, match="without mutable state"):
    loop.Trainer(make_config(microbatch_size=16, model__batch_norm=True), quiet=True)
  with pytest.raises(jdl.JdlError, match="classification and regression"):
    loop.Trainer(make_config(microbatch_size=16, task="autoencoder", model__name="dense_autoencoder",
                             normalize="none", metrics=()), quiet=True)


def _images(n=256, shape=(28, 28, 1)):
  rng = np.random.default_rng(0)
  return jdl.data.Dataset(
      x_train=rng.random((n, *shape), dtype=np.float32), y_train=rng.integers(0, 10, n),
      x_test=rng.random((32, *shape), dtype=np.float32), y_test=rng.integers(0, 10, 32),
      num_classes=10, task="classification", name="images", input_shape=shape)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU choice")
@pytest.mark.parametrize("model, batch, expected", [
    (CNN | {"features": (32, 64), "dense": (256,)}, 128, 32),  # The Flax-example CNN.
    (CNN | {"features": (32, 64), "dense": (256,)}, 64, 0),  # 243 MiB: whole.
    (CNN | {"features": (32, 64), "dense": (256,), "batch_norm": True}, 128, 0),
    ({"name": "lenet5", "activation": "relu", "pool": "max"}, 128, 0),  # 154 MiB: whole.
    ({"name": "lenet5", "activation": "relu", "pool": "max"}, 256, 128),  # Halved once.
    ({"name": "mlp", "hidden": (512, 512)}, 128, 0),
])
def test_auto_microbatches_on_cpu_by_activation_size(model, batch, expected):
  config = make_config(batch_size=batch, num_epochs=1, validation_split=0.0,
                       normalize="none")
  with config.unlocked():
    config.model = ml_collections.ConfigDict(dict(model))
  trainer = loop.Trainer(config, dataset=_images(), quiet=True)
  assert trainer.microbatch_size == expected


def test_activation_bytes_orders_the_models():
  # The measure behind the choice: at batch 128, the MNIST CNN's intermediates are
  # over the whole-batch line (and need microbatches of 32 to get under the
  # microbatch line), LeNet-5's and the MLP's are under it.
  def measure(spec):
    model = create_model(spec, num_outputs=10)
    x, y = np.zeros((1, 28, 28, 1), np.float32), np.zeros((1,), np.int32)
    params = model.init(jax.random.key(0), x, train=False)["params"]
    return steps.activation_bytes(_task(model), params, x, y)
  cnn = measure(CNN | {"features": (32, 64), "dense": (256,)})
  lenet = measure({"name": "lenet5", "activation": "relu", "pool": "max"})
  mlp = measure({"name": "mlp", "hidden": (512, 512)})
  assert 128 * cnn > strategy.AUTO_WHOLE_BATCH_BYTES > 128 * lenet > 20 * 128 * mlp
  assert 64 * cnn > strategy.AUTO_MICROBATCH_BYTES >= 32 * cnn
  assert 256 * lenet > strategy.AUTO_WHOLE_BATCH_BYTES
