"""Builders of the pure training and evaluation steps of a supervised task.

A step is ``(state, batch) -> (state, metrics)`` where ``batch`` is a dict with
``x: [B, ...]``, ``y: [B, ...]`` and ``mask: [B]`` (1 for real examples, 0 for the
padding of a last partial evaluation batch), and ``metrics`` is a mergeable
metric state (:mod:`jdl.metrics`). The loop jit-compiles and fuses them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp

from jdl import errors
from jdl import metrics as metrics_lib
from jdl import regularizers
from jdl.data import augment as augment_lib
from jdl.optim.masks import keep_frozen_state
from jdl.optim.plateau import PlateauState
from jdl.train import parallel as parallel_lib
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
    penalty_rules: ``(pattern, l1, l2)`` rules of the weight penalty added to the
      loss (:func:`jdl.regularizers.penalty`); ``()`` for none.
    activity_l1: coefficient of the L1 activity penalty on the activations the
      model sows into ``"intermediates"`` (training only); 0 for none.
    activity_include: regex over the sown activations' paths.
  """
  apply_fn: Callable[..., Any]
  loss: Callable[[jax.Array, jax.Array], jax.Array]
  metric_names: tuple[str, ...]
  num_classes: int
  penalty_rules: tuple[regularizers.Rule, ...] = ()
  activity_l1: float = 0.0
  activity_include: str = ".*"
  # Whether training metrics score the augmented batch's targets (mixup's pairs
  # included) rather than the batch's: a reconstruction's target is what it was given.
  scores_train_batch = False

  def forward(self, params, model_state, batch: Batch, key: jax.Array, train: bool):
    """Returns ``(per_example_loss, outputs, new_model_state, activity_penalty)``.

    ``activity_penalty`` is that of this batch's activations (0 when off or not
    training): ``l1 * sum|a| / batch``.
    """
    variables = {"params": params, **model_state}
    activity = train and self.activity_l1 > 0
    if train:
      mutable = list(model_state.keys()) + (["intermediates"] if activity else [])
      outputs, new_model_state = self.apply_fn(
          variables, batch["x"], train=True, rngs={"dropout": key}, mutable=mutable)
      # Activations are for the penalty only, never part of the model state.
      intermediates = new_model_state.get("intermediates", {})
      new_model_state = {k: v for k, v in new_model_state.items() if k != "intermediates"}
    else:
      outputs, new_model_state = self.apply_fn(variables, batch["x"], train=False), model_state
    outputs = outputs.astype(jnp.float32)  # The loss in float32 under mixed precision too.
    per_example = self.loss(outputs, batch["y"])
    penalty = jnp.zeros((), jnp.float32)
    if activity:
      penalty = regularizers.activity_penalty(intermediates, self.activity_l1,
                                              self.activity_include)
    return per_example, outputs, new_model_state, penalty

  def loss_fn(self, params, model_state, batch: Batch, key: jax.Array, train: bool):
    """Returns ``(loss, (per_example_loss, outputs, new_model_state))``.

    ``loss`` is the masked mean of the per-example loss plus the penalties (the
    activity penalty in training only).
    """
    per_example, outputs, new_model_state, activity = self.forward(
        params, model_state, batch, key, train)
    if per_example.shape != batch["mask"].shape:  # At trace time, before it broadcasts.
      raise errors.JdlError(f"loss must be per-example, shape {batch['mask'].shape}, got "
                            f"{per_example.shape}")
    mask = batch["mask"].astype(per_example.dtype)
    loss = jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    if self.penalty_rules:
      loss = loss + regularizers.penalty(params, self.penalty_rules)
    if train and self.activity_l1 > 0:
      loss = loss + activity
    return loss, (per_example, outputs, new_model_state)

  def sown(self, params, model_state, batch: Batch, key: jax.Array) -> Any:
    """The ``"intermediates"`` the model sows in the training forward pass of
    ``batch`` with ``key`` (diagnostics: when :meth:`loss_fn` does not pass them on)."""
    _, collections = self.apply_fn(
        {"params": params, **model_state}, batch["x"], train=True, rngs={"dropout": key},
        mutable=[*model_state, "intermediates"])
    return collections.get("intermediates", {})

  def loss_count(self, batch: Batch) -> jax.Array:
    """What :meth:`loss_fn`'s data loss is a mean over: here the real examples."""
    return jnp.sum(batch["mask"].astype(jnp.float32))

  def metrics(self, names, outputs, batch: Batch, per_example_loss):
    return metrics_lib.from_outputs(names, outputs, batch["y"], batch["mask"],
                                    num_classes=self.num_classes, loss=per_example_loss)


def train_metric_names(names: tuple[str, ...]) -> tuple[str, ...]:
  """Metrics tracked during training: those with a fixed-size state."""
  return tuple(n for n in names if n != "roc_auc")


def augmented(task: SupervisedTask, augment, key: jax.Array, batch: Batch
              ) -> tuple[SupervisedTask, Batch]:
  """The task and batch a train step differentiates: ``augment``'s batch (its key
  ``fold_in(key, 1)``) and, since mixup's targets are pairs, the mixup-aware loss."""
  if augment is None:
    return task, batch
  return (dataclasses.replace(task, loss=augment_lib.mixup_loss(task.loss)),
          augment(jax.random.fold_in(key, 1), batch))


def check_batch(batch: Any) -> None:
  """Raises a JdlError unless ``batch`` is ``{"x": ..., "y": ..., "mask": ...}`` (at
  trace time: no cost in the compiled step)."""
  if not isinstance(batch, dict) or not {"x", "y", "mask"} <= set(batch):
    got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise errors.JdlError(f"a batch is a dict with 'x', 'y' and 'mask' (1.0 for each real "
                          f"example, e.g. jnp.ones(len(x))); got {got}")


def make_train_step(task: SupervisedTask, augment=None, *, axis_name: str | None = None,
                    check_gradients: bool = True, microbatch_size: int = 0,
                    freeze: tuple[str, ...] = ()):
  """``train_step(state, batch) -> (state, metrics)``: one optimizer update.

  ``batch`` is a dict: ``"x"`` the inputs ``[B, ...]``, ``"y"`` the targets ``[B, ...]``
  and ``"mask"`` ``[B]``: 1 for a real example, 0 for padding (so a last partial
  batch keeps the compiled shape); the loss weighs examples by it, the metrics count
  an example whose mask is not 0. ``metrics`` are sums to merge with
  :func:`jdl.metrics.merge` and finish with :func:`jdl.metrics.compute`. Padding
  rows must be valid examples (e.g. copies of a real row, as :func:`fit`'s
  evaluation pads; training batches in :func:`fit` are never padded): their loss is
  weighted by 0, but a NaN there stays NaN, batch norm's batch statistics include
  them, and the activity penalty averages over all ``B`` rows.

  Args:
    task: the task.
    augment: ``augment(key, batch) -> batch`` applied to the batch before the loss
      (:func:`jdl.data.augment.make_train_augment`), or ``None``. Its key is
      ``fold_in(step_key, 1)``; the dropout key stays the step key (in microbatches,
      see ``microbatch_size``). Under mixup the
      loss is ``lam * L(y_a) + (1 - lam) * L(y_b)`` while the other training
      metrics use the original labels.
    axis_name: ``None`` for the whole batch on one program (the default). Else the
      step is a per-device step inside ``jax.shard_map`` over the mapped axis
      ``axis_name``: the batch is the device's share, gradients and loss are
      ``lax.pmean``-ed, each device weighted by its share of the loss's count
      (:meth:`SupervisedTask.loss_count`: real examples, or a seq2seq task's
      target tokens), batch norm uses global-batch statistics
      (:func:`jdl.train.parallel.batch_norm_axis`), metric sums are merged over
      the devices, and the step's key is folded with the device index (so its
      draws: dropout, augmentation, a VAE's noise, differ from the one-device step).
    check_gradients: test every gradient for NaN/Inf (:func:`nonfinite_info`); a
      non-finite step leaves the model state as it was and enters no metric. With
      ``False`` only the loss is tested and every update is applied: the loop's
      per-block check (``nonfinite_check='block'``) then tests the state once per
      block, and re-runs a failing block with the gradients checked to name the
      first non-finite step.
    microbatch_size: ``0`` (or the batch size or more): the loss and gradients of
      the whole batch at once. Else the batch, after augmentation, is split into
      microbatches of this many examples (it must divide the batch), and a
      ``lax.scan`` adds up their gradients: the same update within float rounding,
      with less memory in flight (:func:`microbatched_loss`). Dropout draws from
      ``fold_in(key, i)`` in microbatch ``i``, where ``key`` is the step key, or
      ``fold_in(step_key, 2)`` when ``augment`` takes ``fold_in(step_key, 1)``
      (so no key serves two purposes). Needs a :class:`SupervisedTask` and a
      model without mutable state (batch norm would see microbatch statistics).
    freeze: ``optimizer.freeze``'s patterns: the model state of the layers they
      match (batch norm's running statistics) is not updated either
      (:func:`jdl.optim.masks.keep_frozen_state`); their parameters are frozen by
      the optimizer.
  """
  names = train_metric_names(task.metric_names)

  def train_step(state: TrainState, batch: Batch):
    check_batch(batch)
    key = jax.random.fold_in(state.key, state.step)
    if axis_name is not None:  # Each device draws its own examples' randomness.
      key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    loss_task, train_batch = augmented(task, augment, key, batch)
    grad_fn = jax.value_and_grad(loss_task.loss_fn, has_aux=True)
    dropout_key = key
    if 0 < microbatch_size < batch["mask"].shape[0]:
      grad_fn = functools.partial(microbatched_loss, loss_task, microbatch_size)
      if augment is not None:  # Microbatch 1's fold_in(key, 1) is augmentation's key.
        dropout_key = jax.random.fold_in(key, 2)
    if axis_name is None:
      (loss, (per_example, outputs, model_state)), grads = grad_fn(
          state.params, state.model_state, train_batch, dropout_key, True)
    else:
      # Each device's own gradient (not autodiff's sum over the devices), then the mean.
      params = parallel_lib.device_varying(state.params, axis_name)
      with parallel_lib.batch_norm_axis(axis_name):
        (loss, (per_example, outputs, model_state)), grads = grad_fn(
            params, state.model_state, train_batch, dropout_key, True)
      # Each device's loss is a mean over its own count (examples, or target tokens);
      # weighted by its share of the mean count, the devices' mean is the global mean
      # (with equal counts the weights are exactly 1).
      count = loss_task.loss_count(batch)
      mean_count = jax.lax.pmean(count, axis_name)
      weight = jnp.where(mean_count > 0, count / jnp.maximum(mean_count, 1e-30), 1.0)
      grads, loss = jax.lax.pmean(
          jax.tree.map(lambda a: a * weight.astype(a.dtype), (grads, loss)), axis_name)
      # Batch statistics are already global; other per-device state is averaged.
      model_state = parallel_lib.pmean_varying(model_state, axis_name)
    model_state = keep_frozen_state(model_state, state.model_state, freeze)
    nonfinite = nonfinite_info(loss, grads if check_gradients else {}, state.step)
    bad = nonfinite["count"] > 0
    if check_gradients:
      # A skipped update (optax.apply_if_finite) leaves the model state as it was too.
      model_state = jax.tree.map(lambda new, old: jnp.where(bad, old, new), model_state,
                                 state.model_state)
    new_state = state.apply_gradients(grads=grads, model_state=model_state)
    metrics = task.metrics(names, outputs, train_batch if task.scores_train_batch else batch,
                           per_example)
    if axis_name is not None:
      metrics = parallel_lib.merge_over_devices(metrics, metrics_lib.merge, axis_name)
    if check_gradients:
      # Non-finite steps do not enter the epoch's metrics (their loss is reported apart).
      metrics = jax.tree.map(lambda x: jnp.where(bad, jnp.zeros_like(x), x), metrics)
    return new_state, {**metrics, NONFINITE: nonfinite}

  return train_step


def microbatched_loss(task: SupervisedTask, size: int, params, model_state, batch: Batch,
                      key: jax.Array, train: bool = True):
  """``value_and_grad(task.loss_fn)``, one microbatch of ``size`` examples at a time.

  Returns ``((loss, (per_example_loss, outputs, model_state)), grads)`` as
  ``jax.value_and_grad(task.loss_fn, has_aux=True)`` does: the masked mean over the
  whole batch is the sum of each microbatch's masked sum divided by the whole
  batch's mask count, and each microbatch's activity penalty counts ``size / batch``
  of it. The weight penalty is added once. A ``lax.scan`` runs the microbatches,
  so only one microbatch's activations are alive at a time: on XLA:CPU a
  convolutional step then works in cache more (benchmarks/README.md,
  "Microbatches"). Dropout in microbatch ``i`` draws from ``fold_in(key, i)``.

  Raises:
    JdlError: ``size`` does not divide the batch, or the model has mutable state.
  """
  n = batch["mask"].shape[0]
  errors.require(n % size == 0, f"microbatch_size {size} must divide the batch of {n}")
  errors.require(not model_state, "microbatch_size needs a model without mutable state; "
                 f"this one has {sorted(model_state)} (batch norm would see each "
                 "microbatch's statistics): use --config.microbatch_size=0")
  # Arrays over the batch are scanned in microbatches; others (e.g. mixup's one
  # weight) are None in ``chunks`` and taken whole from ``batch``.
  chunks = jax.tree.map(lambda a: a.reshape(n // size, size, *a.shape[1:])
                        if a.ndim and a.shape[0] == n else None, batch)
  whole_where_none = lambda c, a: a if c is None else c  # noqa: E731

  count = jnp.maximum(jnp.sum(batch["mask"].astype(jnp.float32)), 1.0)

  def chunk_loss(p, chunk, chunk_key):
    per_example, outputs, _, activity = task.forward(p, model_state, chunk, chunk_key, train)
    masked = jnp.sum(per_example * chunk["mask"].astype(per_example.dtype))
    return masked / count + activity * (size / n), (per_example, outputs)

  grad_fn = jax.value_and_grad(chunk_loss, has_aux=True)

  def body(total, xs):
    chunk, i = xs
    chunk = jax.tree.map(whole_where_none, chunk, batch, is_leaf=lambda c: c is None)
    (loss, aux), grads = grad_fn(params, chunk, jax.random.fold_in(key, i))
    return jax.tree.map(jnp.add, total, (loss, grads)), aux

  zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  (loss, grads), (per_example, outputs) = jax.lax.scan(
      body, zero, (chunks, jnp.arange(n // size)))
  unsplit = lambda a: a.reshape(n, *a.shape[2:])  # noqa: E731
  if task.penalty_rules:
    weight, weight_grads = jax.value_and_grad(regularizers.penalty)(params, task.penalty_rules)
    loss, grads = loss + weight, jax.tree.map(jnp.add, grads, weight_grads)
  return (loss, (unsplit(per_example), jax.tree.map(unsplit, outputs), model_state)), grads


def activation_bytes(task: SupervisedTask, params, x, y, probe: int = 17) -> float:
  """Bytes of the intermediates of the loss's gradient, per example.

  The sum over the traced (not compiled) gradient's operations whose leading axis
  is the batch: a measure of the memory a step moves, before XLA's fusion. Traced
  at a batch of ``probe`` examples, a size no parameter axis is likely to share.
  """
  batch = {"x": jax.ShapeDtypeStruct((probe, *x.shape[1:]), x.dtype),
           "y": jax.ShapeDtypeStruct((probe, *y.shape[1:]), y.dtype),
           "mask": jax.ShapeDtypeStruct((probe,), jnp.float32)}
  grad_fn = jax.grad(lambda p, b: task.loss_fn(p, {}, b, jax.random.key(0), True)[0])
  shapes = [(var.aval.shape, var.aval.dtype)
            for eqn in jaxpr_equations(jax.make_jaxpr(grad_fn)(params, batch).jaxpr)
            for var in eqn.outvars if getattr(var.aval, "shape", ())]
  return sum(math.prod(shape) * dtype.itemsize
             for shape, dtype in shapes if shape[0] == probe) / probe


def jaxpr_equations(jaxpr):
  """Every equation of ``jaxpr``, those of the jaxprs inside it (loops, calls) too."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax_core.jaxprs_in_params(eqn.params):
      yield from jaxpr_equations(sub)


NONFINITE = "nonfinite"


def nonfinite_info(loss: jax.Array, grads, step: jax.Array) -> dict[str, jax.Array]:
  """Whether this step's loss or gradients are non-finite, and where first.

  Returns:
    ``count`` (0 or 1), ``step`` (the step's index), ``loss_finite`` (0 or 1) and
    ``param``: the index in ``jax.tree.leaves(grads)`` of the first non-finite
    gradient, or -1 (always with ``grads={}``: the loss alone is tested).
  """
  leaf_ok = _leaves_finite(jax.tree.leaves(grads))
  loss_ok = jnp.isfinite(loss)
  bad = ~loss_ok | ~jnp.all(leaf_ok)
  return {"count": bad.astype(jnp.int32), "step": step.astype(jnp.int32),
          "loss_finite": loss_ok.astype(jnp.int32),
          "param": jnp.where(jnp.all(leaf_ok), -1, jnp.argmin(leaf_ok)).astype(jnp.int32)}


def all_finite(tree) -> jax.Array:
  """Whether every floating-point element of ``tree`` is finite (a bool scalar)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(_leaves_finite(leaves))


@jax.jit
def state_finite(state) -> jax.Array:
  """Whether a state's parameters, optimizer state and model state are all finite.

  Not the plateau's best value so far: optax starts it at +inf (no epoch yet).
  """
  def best_cleared(s):
    if not isinstance(s, PlateauState):
      return s
    best = s.plateau_state.best_value
    return s._replace(plateau_state=s.plateau_state._replace(best_value=jnp.zeros_like(best)))

  opt_state = jax.tree.map(best_cleared, state.opt_state,
                           is_leaf=lambda s: isinstance(s, PlateauState))
  return all_finite((state.params, opt_state, state.model_state))


def _leaves_finite(leaves) -> jax.Array:
  """``[len(leaves)]`` bools (``[True]`` for none): each leaf finite throughout.

  ``sum(x * 0)`` is 0 when every element is finite and NaN otherwise (inf * 0 =
  NaN): one fused, vectorised reduction per leaf on XLA:CPU, where
  ``all(isfinite(x))`` materialised a boolean array and reduced it in two passes.
  """
  return jnp.stack([jnp.isfinite(jnp.sum(x * 0)) for x in leaves] or [jnp.array(True)])


def merge_nonfinite(a: dict[str, jax.Array], b: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Counts add; the first non-finite step's details are kept (``a`` is earlier)."""
  keep_a = a["count"] > 0
  merged = {k: jnp.where(keep_a, a[k], b[k]) for k in ("step", "loss_finite", "param")}
  return {"count": a["count"] + b["count"], **merged}


def merge_train_metrics(acc, metrics):
  """Merges a train step's metrics into the running sums of the epoch."""
  rest = {k: v for k, v in metrics.items() if k != NONFINITE}
  old = {k: v for k, v in acc.items() if k != NONFINITE}
  return {**metrics_lib.merge(old, rest),
          NONFINITE: merge_nonfinite(acc[NONFINITE], metrics[NONFINITE])}


def make_eval_step(task: SupervisedTask):
  """``eval_step(state, batch) -> (state, metrics)``: the model in inference mode.

  The state is returned unchanged, so train and eval steps share one signature;
  ``batch`` is as for :func:`make_train_step`.
  """

  def eval_step(state: TrainState, batch: Batch):
    check_batch(batch)
    _, (per_example, outputs, _) = task.loss_fn(
        state.params, state.model_state, batch, state.key, False)
    return state, task.metrics(task.metric_names, outputs, batch, per_example)

  return eval_step


def make_predict_fn(apply_fn):
  def predict(state: TrainState, x: jax.Array) -> jax.Array:
    return apply_fn(state.variables, x, train=False)
  return predict


def loop_steps(body: Callable, carry: Any, xs: Any, *, static: bool = False,
               axis_name: str | None = None) -> Any:
  """The carry after ``body`` has run over the leading rows of ``xs`` that are steps.

  ``xs`` (one array, or a tree whose first leaf is the block's step index) holds
  a block's steps along axis 0; trailing rows whose first index is negative are
  padding and run no step. So one compiled block serves every block length up to
  its size (a last block of an epoch, a block cut by a checkpoint, a resume off the
  block grid): no compile per length.

  The loop is a ``while_loop`` whose trip count is computed from the data, so XLA
  cannot see it: it neither removes a loop of one step nor specializes a loop's
  length, and a step gives the same bits however the steps are grouped into blocks
  (a resume with another block size). ``body(carry, x) -> (carry, _)``: as for
  ``jax.lax.scan``; its second output is dropped.

  ``static=True`` (jdl's choice on a GPU, :func:`jdl.train.strategy.static_loops`):
  a ``lax.scan`` over every row instead, each padding row's step computed and its
  carry discarded (``where``). XLA:GPU checks a loop's condition on the host, a
  device-to-host copy and a wait at every iteration, unless it knows the trip count:
  for a small model that wait is a large part of a step (benchmarks/README.md, "One
  GPU"). Padding then costs a step's work, so the blocks are balanced
  (:func:`jdl.train.strategy.choose_chunk`). ``axis_name``: the ``shard_map`` axis
  the loop runs under, if any.
  """
  first = jax.tree.leaves(xs)[0]
  if first.shape[0] == 1:  # A padding row: XLA slices a one-row block statically, and
    # the step's body then compiled otherwise (a train loss sum 1 ulp apart, seen with
    # scan_chunk=1 on an LSTM). With two rows it is the loop of every other block;
    # in a static loop the padding row's step is then computed and discarded (one
    # step more for a block of one: scan_chunk=1, a diagnostic block's diagnosed step).
    xs = jax.tree.map(lambda a: jnp.concatenate([a, jnp.full_like(a, -1)]), xs)
    first = jax.tree.leaves(xs)[0]
  rows = first.reshape(first.shape[0], -1)[:, 0]
  if static:
    if axis_name is not None:
      # Inside shard_map each device's rows are its own (typed device-varying): a
      # carry kept or replaced by them would leave the loop typed otherwise than it
      # came in. Every device has the same rows; their maximum is one value for all.
      rows = jax.lax.pmax(rows, axis_name)
    def masked(carry, row_x):
      row, x = row_x
      new = body(carry, x)[0]
      return jax.tree.map(lambda n, o: jnp.where(row >= 0, n, o), new, carry), None

    return jax.lax.scan(masked, carry, (rows, xs))[0]
  count = jnp.sum(rows >= 0, dtype=jnp.int32)  # Padding only trails the steps.

  def step(state):
    i, carry = state
    x = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), xs)
    return i + 1, body(carry, x)[0]

  return jax.lax.while_loop(lambda s: s[0] < count, step, (jnp.zeros((), jnp.int32), carry))[1]
