"""The optimizer config sections and the optax chain they describe.

The transformation returned by :func:`create_optimizer` is, from outside in::

  [plateau wrapper]        if reduce_on_plateau.enabled: state PlateauState
    [optax.MultiSteps]     if optimizer.accumulate_steps > 1
      [multi_transform]    if optimizer.freeze: 'trainable' / 'frozen' labels
        chain(clip, clip_by_global_norm, <optimizer>, decoupled weight decay,
              max_norm)

(optax.MultiSteps outside the freezing keeps a gradient buffer for frozen leaves
too: one parameter-sized copy of them. The order is the checkpoints' layout, so it
stays: swapping it would leave earlier runs unreadable.)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jdl import regularizers
from jdl.errors import lookup
from jdl.optim._checks import check
from jdl.optim.masks import (
    FROZEN, TRAINABLE, compile_patterns, freeze_labels, kernel_mask,
)
from jdl.optim.plateau import plateau_transform, scale_by_plateau
from jdl.optim.schedules import create_learning_rate_fn


def default_config() -> ml_collections.ConfigDict:
  """Returns the ``optimizer``, ``schedule`` and ``reduce_on_plateau`` sections."""
  config = ml_collections.ConfigDict()

  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = "adam"  # One of OPTIMIZERS.
  opt.learning_rate = 1e-3  # Peak / initial learning rate.
  opt.momentum = 0.9  # momentum, nesterov.
  opt.b1 = 0.9  # adam, adamw, adamax, nadam.
  opt.b2 = 0.999
  opt.eps = 1e-8  # Shared by all adaptive optimizers (optax defaults differ).
  opt.rho = 0.9  # rmsprop decay, adadelta rho.
  opt.initial_accumulator_value = 0.1  # adagrad.
  opt.weight_decay = 0.0  # Decoupled: param -= lr_t * weight_decay * param.
  opt.clip_value = 0.0  # Element-wise gradient clipping; 0 = off.
  opt.clip_norm = 0.0  # Global-norm gradient clipping; 0 = off.
  opt.accumulate_steps = 1  # Micro-batches per update (optax.MultiSteps).
  opt.freeze = ()  # Regexes over param paths such as 'Conv_0/kernel'.

  config.schedule = sched = ml_collections.ConfigDict()
  sched.name = "constant"  # One of SCHEDULES.
  sched.decay_every_epochs = 30.0  # step: lr * factor ** floor(epoch / every).
  sched.factor = 0.1
  sched.decay_rate = 0.95  # exponential: lr * decay_rate ** epoch.
  sched.tau_epochs = 10.0  # linear: anneal to alpha_final * lr over tau.
  sched.alpha_final = 0.01
  sched.alpha = 0.0  # cosine, warmup_cosine: final lr = alpha * lr.
  sched.warmup_epochs = 5.0  # warmup_cosine.

  config.reduce_on_plateau = plateau = ml_collections.ConfigDict()
  plateau.enabled = False
  plateau.monitor = "val_loss"  # Metric the training loop feeds update_plateau.
  plateau.mode = "min"  # 'min' or 'max' (the metric is then negated).
  plateau.factor = 0.5
  plateau.patience = 3  # Epochs without improvement before reducing.
  plateau.cooldown = 0  # Epochs to wait after a reduction.
  plateau.rtol = 0.0  # Improvement: value < (1 - rtol) * best - atol.
  plateau.atol = 1e-4
  plateau.min_scale = 1e-3  # The plateau never scales the lr below this.
  return config


def validate_optimizer(opt: ml_collections.ConfigDict) -> None:
  """Raises ``JdlError`` for an unknown ``optimizer.name`` or a value of the
  ``optimizer`` section out of its range."""
  lookup("optimizer", opt.name, OPTIMIZERS)
  check(0 < opt.learning_rate < math.inf, "optimizer.learning_rate", opt.learning_rate,
        "> 0 and finite")
  for key in ("momentum", "b1", "b2", "rho"):
    check(0 <= opt[key] < 1, f"optimizer.{key}", opt[key], "in [0, 1)")
  for key in ("eps", "initial_accumulator_value", "weight_decay", "clip_value",
              "clip_norm"):
    check(0 <= opt[key] < math.inf, f"optimizer.{key}", opt[key], ">= 0 and finite")
  if opt.name in _DIVIDES_BY_EPS:
    # Its update divides by sqrt(v) + eps (the adam family) or sqrt(v + eps) (rmsprop,
    # adadelta): a gradient entry that is always 0 gives 0/0 with eps = 0.
    check(opt.eps > 0, "optimizer.eps", opt.eps, f"> 0 for {opt.name} (its update divides "
          "by a root of the squared gradients' average with eps; 0 makes a NaN wherever a "
          "gradient is 0)")


# The optimizers whose update divides by a root of squared gradients and eps: adam,
# adamw, adamax, nadam by sqrt(v) + eps; optax's rmsprop and adadelta by sqrt(v + eps),
# eps inside the root (Keras and PyTorch put rmsprop's outside). optax's adagrad
# guards its division itself.
_DIVIDES_BY_EPS = ("adadelta", "rmsprop", "adam", "adamw", "adamax", "nadam")
# Zeiler's Adadelta takes no learning rate (1.0) and eps 1e-6 (PyTorch's and optax's
# defaults); the shared defaults (1e-3, 1e-8) make its steps ~3e-7 and it barely moves.
ADADELTA_MIN_LR = 0.1


def advice(opt: ml_collections.ConfigDict, schedule: ml_collections.ConfigDict | None = None,
           num_epochs: int | None = None) -> list[str]:
  """Warnings for settings that are valid but will hardly train, or do nothing.

  Args:
    opt: ``config.optimizer``.
    schedule: ``config.schedule`` (optional).
    num_epochs: the run's epochs, for the schedule's (optional).
  """
  lines = []
  if opt.name == "adadelta" and opt.learning_rate < ADADELTA_MIN_LR:
    lines.append(f"optimizer 'adadelta' with learning_rate={opt.learning_rate:g} takes steps "
                 f"about {1 / opt.learning_rate:.0f}x smaller than Zeiler's method, which "
                 "uses 1.0 (Adadelta adapts its own step size); set "
                 "--config.optimizer.learning_rate=1.0 (and eps=1e-6, as PyTorch and optax do)")
  if opt.name == "adamw" and opt.weight_decay == 0:
    lines.append("optimizer 'adamw' with weight_decay=0 is Adam (its decoupled weight decay "
                 "is off); set --config.optimizer.weight_decay (PyTorch's AdamW uses 1e-2)")
  if (schedule is not None and num_epochs and schedule.name == "step"
      and schedule.decay_every_epochs >= num_epochs):
    lines.append(f"schedule 'step' decays every {schedule.decay_every_epochs:g} epochs but the "
                 f"run has {num_epochs}: the learning rate stays {opt.learning_rate:g} "
                 "throughout; set --config.schedule.decay_every_epochs below num_epochs")
  return lines


OPTIMIZERS: dict[str, Callable[[Any, optax.Schedule], optax.GradientTransformation]] = {
    "sgd": lambda o, lr: optax.sgd(lr),
    "momentum": lambda o, lr: optax.sgd(lr, momentum=o.momentum),
    "nesterov": lambda o, lr: optax.sgd(lr, momentum=o.momentum, nesterov=True),
    "adagrad": lambda o, lr: optax.adagrad(
        lr, initial_accumulator_value=o.initial_accumulator_value, eps=o.eps),
    "adadelta": lambda o, lr: optax.adadelta(lr, rho=o.rho, eps=o.eps),
    "rmsprop": lambda o, lr: optax.rmsprop(lr, decay=o.rho, eps=o.eps),
    "adam": lambda o, lr: optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps),
    "adamw": lambda o, lr: optax.adamw(
        lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
        mask=kernel_mask),
    "adamax": lambda o, lr: optax.adamax(lr, b1=o.b1, b2=o.b2, eps=o.eps),
    "nadam": lambda o, lr: optax.nadam(lr, b1=o.b1, b2=o.b2, eps=o.eps),
}


def _decoupled_weight_decay(
    weight_decay: float, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """Adds ``-lr_t * weight_decay * param`` to the updates of kernels.

  Placed *after* an optimizer whose updates already carry ``-lr_t``; the decay
  schedule counts updates exactly as the optimizer's own learning-rate scaling,
  so both see the same ``lr_t``.
  """
  return optax.add_decayed_weights(
      lambda count: -weight_decay * learning_rate_fn(count), mask=kernel_mask
  )


def apply_updates(params: Any, updates: Any) -> Any:
  """``optax.apply_updates``, except that an update of exactly 0 leaves the
  parameter's bits as they are: ``p + 0.0`` turns ``-0.0`` into ``+0.0``, so a frozen
  parameter (``optax.set_to_zero``) would not stay bit-identical. The select fuses
  into the update's own loop."""
  def apply(p, u):
    if p is None:
      return None
    p = jnp.asarray(p)
    return jnp.where(u == 0, p, (p + u).astype(p.dtype))
  return jax.tree.map(apply, params, updates, is_leaf=lambda x: x is None)


def create_optimizer(
    config: ml_collections.ConfigDict,
    *,
    steps_per_epoch: float,
    num_epochs: int,
    learning_rate_fn: optax.Schedule | None = None,
    with_plateau: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Creates the optax transformation described by the config.

  Per optimizer update: element-wise clipping (``clip_value``), global-norm
  clipping (``clip_norm``), the optimizer with the schedule as learning rate, then
  decoupled weight decay on kernels (``adamw`` uses its own ``weight_decay`` and
  ``mask``; the others add ``-lr_t * weight_decay * param``), then, with
  ``regularization.max_norm > 0``, the max-norm projection
  (:func:`jdl.regularizers.max_norm`) of the trainable kernels. A plateau scale
  ``s <= 1`` applied after it moves the parameters a fraction ``s`` of the way to
  the projected point, which stays inside the (convex) max-norm ball. Frozen
  parameters get zero updates and are left out of the clipping norm. With
  ``accumulate_steps = k > 1`` the gradients of ``k`` train steps are averaged
  (``optax.MultiSteps``) and the updates of the first ``k - 1`` are zero. With
  ``reduce_on_plateau.enabled`` all updates are multiplied by the plateau scale,
  which only :func:`jdl.optim.update_plateau` advances.

  Optimizers (``optimizer.name``): sgd, momentum, nesterov, adagrad, adadelta,
  rmsprop, adam, adamw, adamax, nadam; the optax aliases of the same names
  (``momentum``/``nesterov`` are ``optax.sgd`` with ``momentum``).

  Args:
    config: the experiment config (reads ``optimizer``, ``schedule`` and, if
      present, ``reduce_on_plateau`` and ``regularization``).
    steps_per_epoch: train steps (micro-batches) per epoch; a fraction is an
      average over epochs (see :func:`jdl.optim.create_learning_rate_fn`).
    num_epochs: length of the run, in epochs.
    learning_rate_fn: a schedule over optimizer updates to use instead of the
      config's ``learning_rate`` and ``schedule`` (the learning-rate range test).
    with_plateau: ``False`` leaves out the plateau wrapper.

  Returns:
    The transformation; its state is a :class:`jdl.optim.PlateauState` when the
    plateau is enabled.

  Raises:
    JdlError: unknown optimizer or schedule name, invalid value or regex.

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019.
  """
  opt = config.optimizer
  validate_optimizer(opt)
  make = OPTIMIZERS[opt.name]
  if learning_rate_fn is None:
    learning_rate_fn = create_learning_rate_fn(
        config, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs
    )
  chain = []
  if opt.clip_value > 0:
    chain.append(optax.clip(opt.clip_value))
  if opt.clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt.clip_norm))
  chain.append(make(opt, learning_rate_fn))
  if opt.weight_decay > 0 and opt.name != "adamw":
    chain.append(_decoupled_weight_decay(opt.weight_decay, learning_rate_fn))
  reg = config.get("regularization")
  if reg is not None:
    regularizers.validate_config(reg)
    if reg.max_norm > 0:  # Last: it projects the final update.
      chain.append(regularizers.max_norm(float(reg.max_norm), include=reg.max_norm_include))
  tx = optax.chain(*chain)

  patterns = compile_patterns(opt.freeze)
  if patterns:
    tx = optax.multi_transform(
        {TRAINABLE: tx, FROZEN: optax.set_to_zero()},
        functools.partial(freeze_labels, patterns=patterns),
    )
  if opt.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=opt.accumulate_steps)
    tx = tx.gradient_transformation()
  if config.get("nonfinite", "stop") == "skip":
    tx = optax.apply_if_finite(tx, int(config.get("max_nonfinite_skips", 10)))
  plateau = plateau_transform(config) if with_plateau else None
  if plateau is not None:
    tx = scale_by_plateau(tx, plateau)
  return optax.with_extra_args_support(tx)
