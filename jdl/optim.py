"""Optimizers, learning-rate schedules and regularisation, built from optax.

Three config sections drive this module (see :func:`default_config`):
``optimizer``, ``schedule`` and ``reduce_on_plateau``. Durations in the config are
given in epochs and converted to optimizer updates once, here.

Vocabulary:

* ``steps_per_epoch`` is always the number of *train steps* (batches, micro-batches
  when accumulating) per epoch, as the training loop counts them. With
  ``optimizer.accumulate_steps = k`` the optimizer updates the parameters every
  ``k`` train steps, so schedules see ``steps_per_epoch // k`` updates per epoch.
* Parameter paths are the ``'/'``-joined keys of the params tree handed to the
  optimizer, i.e. ``variables['params']`` *without* a leading collection name:
  ``'Conv_0/kernel'``, ``'Block_1/Dense_0/bias'``.

The transformation returned by :func:`create_optimizer` is, from outside in::

  [plateau wrapper]        if reduce_on_plateau.enabled: state PlateauState
    [optax.MultiSteps]     if optimizer.accumulate_steps > 1
      [multi_transform]    if optimizer.freeze: 'trainable' / 'frozen' labels
        chain(clip, clip_by_global_norm, <optimizer>, decoupled weight decay)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax import contrib as optax_contrib

from jdl.errors import JdlError, lookup, require

KERNEL_NAMES = ("kernel", "embedding")
TRAINABLE, FROZEN = "trainable", "frozen"


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
  opt.l1 = 0.0  # Loss penalties on kernels, see `penalty`.
  opt.l2 = 0.0
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


# ------------------------------------------------------------------ validation


def _check(ok: bool, key: str, value: Any, requirement: str) -> None:
  require(ok, f"{key} must be {requirement}, got {value!r}")


def _epochs_to_steps(key: str, epochs: float, steps_per_epoch: int) -> int:
  _check(epochs >= 0, key, epochs, ">= 0")
  return int(round(epochs * steps_per_epoch))


def _updates_per_epoch(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  k = config.optimizer.accumulate_steps
  _check(
      isinstance(k, int) and k >= 1, "optimizer.accumulate_steps", k,
      "an integer >= 1",
  )
  require(
      steps_per_epoch >= k,
      f"steps_per_epoch ({steps_per_epoch}) must be >= optimizer.accumulate_steps"
      f" ({k}): an epoch must hold at least one optimizer update",
  )
  return steps_per_epoch // k


def _validate_optimizer(opt: ml_collections.ConfigDict) -> None:
  _check(opt.learning_rate > 0, "optimizer.learning_rate", opt.learning_rate, "> 0")
  for key in ("momentum", "b1", "b2", "rho"):
    _check(0 <= opt[key] < 1, f"optimizer.{key}", opt[key], "in [0, 1)")
  for key in ("eps", "initial_accumulator_value", "weight_decay", "clip_value",
              "clip_norm", "l1", "l2"):
    _check(opt[key] >= 0, f"optimizer.{key}", opt[key], ">= 0")


# ------------------------------------------------------------------- schedules


def _constant(sched, lr, per_epoch, num_epochs):
  del sched, per_epoch, num_epochs
  return optax.constant_schedule(lr)


def _step(sched, lr, per_epoch, num_epochs):
  del num_epochs
  every = _epochs_to_steps(
      "schedule.decay_every_epochs", sched.decay_every_epochs, per_epoch
  )
  _check(every > 0, "schedule.decay_every_epochs", sched.decay_every_epochs,
         "at least one optimizer update long")
  _check(0 < sched.factor <= 1, "schedule.factor", sched.factor, "in (0, 1]")
  return optax.exponential_decay(lr, every, sched.factor, staircase=True)


def _exponential(sched, lr, per_epoch, num_epochs):
  del num_epochs
  _check(0 < sched.decay_rate <= 1, "schedule.decay_rate", sched.decay_rate,
         "in (0, 1]")
  return optax.exponential_decay(lr, per_epoch, sched.decay_rate)


def _linear(sched, lr, per_epoch, num_epochs):
  del num_epochs
  tau = _epochs_to_steps("schedule.tau_epochs", sched.tau_epochs, per_epoch)
  _check(tau > 0, "schedule.tau_epochs", sched.tau_epochs,
         "at least one optimizer update long")
  _check(sched.alpha_final >= 0, "schedule.alpha_final", sched.alpha_final, ">= 0")
  return optax.linear_schedule(lr, sched.alpha_final * lr, tau)


def _total_steps(per_epoch: int, num_epochs: int | None) -> int:
  require(num_epochs is not None,
          "cosine schedules need num_epochs; pass num_epochs=...")
  _check(num_epochs > 0, "num_epochs", num_epochs, "> 0")
  return per_epoch * num_epochs


def _cosine(sched, lr, per_epoch, num_epochs):
  _check(0 <= sched.alpha <= 1, "schedule.alpha", sched.alpha, "in [0, 1]")
  return optax.cosine_decay_schedule(
      lr, _total_steps(per_epoch, num_epochs), alpha=sched.alpha
  )


def _warmup_cosine(sched, lr, per_epoch, num_epochs):
  _check(0 <= sched.alpha <= 1, "schedule.alpha", sched.alpha, "in [0, 1]")
  total = _total_steps(per_epoch, num_epochs)
  warmup = _epochs_to_steps("schedule.warmup_epochs", sched.warmup_epochs, per_epoch)
  _check(warmup < total, "schedule.warmup_epochs", sched.warmup_epochs,
         f"shorter than the run ({num_epochs} epochs)")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=total,
      end_value=sched.alpha * lr,
  )


SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    "constant": _constant,
    "step": _step,
    "exponential": _exponential,
    "linear": _linear,
    "cosine": _cosine,
    "warmup_cosine": _warmup_cosine,
}


def create_learning_rate_fn(
    config: ml_collections.ConfigDict,
    *,
    steps_per_epoch: int,
    num_epochs: int | None = None,
) -> optax.Schedule:
  """Creates the learning-rate schedule, indexed by optimizer update count.

  Schedules (``schedule.name``), with ``lr = optimizer.learning_rate``, ``k`` the
  update count and ``E`` updates per epoch:

  * ``constant``: ``lr``.
  * ``step``: ``lr * factor ** floor(k / (decay_every_epochs * E))``.
  * ``exponential``: ``lr * decay_rate ** (k / E)`` (smooth, per epoch).
  * ``linear``: ``(1 - k / tau) * lr + (k / tau) * alpha_final * lr`` for
    ``k <= tau = tau_epochs * E``, ``alpha_final * lr`` afterwards.
  * ``cosine``: from ``lr`` to ``alpha * lr`` over ``num_epochs``.
  * ``warmup_cosine``: linear from 0 to ``lr`` over ``warmup_epochs``, then
    cosine to ``alpha * lr`` at the end of ``num_epochs``.

  Args:
    config: the experiment config (reads ``optimizer`` and ``schedule``).
    steps_per_epoch: train steps (micro-batches) per epoch; divided here by
      ``optimizer.accumulate_steps`` to get optimizer updates per epoch.
    num_epochs: length of the run; needed by ``cosine`` and ``warmup_cosine``.

  Returns:
    A schedule mapping the optimizer update count to the learning rate.

  Raises:
    JdlError: unknown schedule name or invalid value.

  References:
    Goodfellow, Bengio & Courville, *Deep Learning*, 2016, sec. 8.3.1 (linear).
    Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
    <https://arxiv.org/abs/1608.03983>`_, 2017 (cosine).
    Goyal et al., `Accurate, Large Minibatch SGD
    <https://arxiv.org/abs/1706.02677>`_, 2017 (warmup).
  """
  make = lookup("schedule", config.schedule.name, SCHEDULES)
  lr = config.optimizer.learning_rate
  _check(lr > 0, "optimizer.learning_rate", lr, "> 0")
  per_epoch = _updates_per_epoch(config, steps_per_epoch)
  return make(config.schedule, lr, per_epoch, num_epochs)


# ------------------------------------------------------------------ optimizers


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


def create_optimizer(
    config: ml_collections.ConfigDict,
    *,
    steps_per_epoch: int,
    num_epochs: int,
) -> optax.GradientTransformationExtraArgs:
  """Creates the optax transformation described by the config.

  Per optimizer update: element-wise clipping (``clip_value``), global-norm
  clipping (``clip_norm``), the optimizer with the schedule as learning rate, then
  decoupled weight decay on kernels (``adamw`` uses its own ``weight_decay`` and
  ``mask``; the others add ``-lr_t * weight_decay * param``). Frozen parameters
  get zero updates and are left out of the clipping norm. With
  ``accumulate_steps = k > 1`` the gradients of ``k`` train steps are averaged
  (``optax.MultiSteps``) and the updates of the first ``k - 1`` are zero. With
  ``reduce_on_plateau.enabled`` all updates are multiplied by the plateau scale,
  which only :func:`update_plateau` advances.

  Optimizers (``optimizer.name``): sgd, momentum, nesterov, adagrad, adadelta,
  rmsprop, adam, adamw, adamax, nadam; the optax aliases of the same names
  (``momentum``/``nesterov`` are ``optax.sgd`` with ``momentum``).

  Args:
    config: the experiment config (reads ``optimizer``, ``schedule`` and, if
      present, ``reduce_on_plateau``).
    steps_per_epoch: train steps (micro-batches) per epoch.
    num_epochs: length of the run, in epochs.

  Returns:
    The transformation; its state is a :class:`PlateauState` when the plateau is
    enabled.

  Raises:
    JdlError: unknown optimizer or schedule name, invalid value or freeze regex.

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019.
  """
  opt = config.optimizer
  make = lookup("optimizer", opt.name, OPTIMIZERS)
  _validate_optimizer(opt)
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
  tx = optax.chain(*chain)

  patterns = _compile_patterns(opt.freeze)
  if patterns:
    tx = optax.multi_transform(
        {TRAINABLE: tx, FROZEN: optax.set_to_zero()},
        functools.partial(freeze_labels, patterns=patterns),
    )
  if opt.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=opt.accumulate_steps)
    tx = tx.gradient_transformation()
  plateau = _plateau_transform(config)
  if plateau is not None:
    tx = scale_by_plateau(tx, plateau)
  return optax.with_extra_args_support(tx)


# --------------------------------------------------------------- param masks


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def param_path(path: Sequence[Any]) -> str:
  """Joins a ``jax.tree_util`` key path as ``'Conv_0/kernel'``."""
  return "/".join(_key_name(k) for k in path)


def kernel_mask(params: Any) -> Any:
  """Returns a tree like ``params``: True for leaves named kernel or embedding.

  Biases, normalisation scales and offsets, and any other leaf are False. Used to
  mask weight decay and the loss penalties.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(path) and _key_name(path[-1]) in KERNEL_NAMES, params
  )


def penalty(params: Any, *, l1: float = 0.0, l2: float = 0.0) -> jax.Array:
  """Returns ``l1 * sum|w| + l2 * sum w**2`` over kernels, to add to the loss.

  There is no 1/2 factor on the l2 term (the Keras convention): its gradient is
  ``2 * l2 * w``. Only leaves selected by :func:`kernel_mask` count; ``l1`` and
  ``l2`` together give the elastic net.

  Args:
    params: the params tree.
    l1: coefficient of the L1 norm.
    l2: coefficient of the squared L2 norm.

  Returns:
    A float32 scalar.

  References:
    Zou & Hastie, `Regularization and variable selection via the elastic net
    <https://doi.org/10.1111/j.1467-9868.2005.00503.x>`_, 2005.
  """
  kernels = [
      w for w, is_kernel in zip(jax.tree.leaves(params),
                                jax.tree.leaves(kernel_mask(params)))
      if is_kernel
  ]
  # Skip a term only for a literal 0 (the common config value); coefficients may
  # also be traced arrays.
  use_l1 = not (isinstance(l1, (int, float)) and l1 == 0)
  use_l2 = not (isinstance(l2, (int, float)) and l2 == 0)
  total = jnp.zeros([], jnp.float32)
  for w in kernels:
    if use_l1:
      total += l1 * jnp.sum(jnp.abs(w))
    if use_l2:
      total += l2 * jnp.sum(jnp.square(w))
  return total


def _compile_patterns(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
  require(not isinstance(patterns, str),
          f"optimizer.freeze must be a tuple of regexes, got {patterns!r}")
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except (re.error, TypeError) as e:
      raise JdlError(
          f"optimizer.freeze: invalid regex {pattern!r} ({e})"
      ) from None
  return tuple(compiled)


def _matches(pattern: re.Pattern[str], path: str) -> bool:
  # A pattern matches a parameter or any enclosing module: 'Dense_0' freezes
  # 'Dense_0/kernel' and 'Dense_0/bias', as 'Dense_0/.*' does.
  parts = path.split("/")
  return any(pattern.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1))


def freeze_labels(params: Any, patterns: Sequence[str | re.Pattern[str]]) -> Any:
  """Labels each param ``'frozen'`` or ``'trainable'``; for optax.multi_transform.

  A parameter is frozen when a pattern fully matches its path (``'Conv_0/kernel'``,
  no collection name) or the path of an enclosing module (``'Conv_0'``).

  Raises:
    JdlError: a pattern matches no parameter.
  """
  patterns = tuple(re.compile(p) for p in patterns)
  paths = [param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  unused = [p.pattern for p in patterns if not any(_matches(p, s) for s in paths)]
  require(
      not unused,
      f"optimizer.freeze patterns {unused} match no parameter; parameter paths"
      f" look like {paths[:4]} (no leading 'params/')",
  )
  return jax.tree_util.tree_map_with_path(
      lambda path, _: FROZEN if any(_matches(p, param_path(path)) for p in patterns)
      else TRAINABLE,
      params,
  )


def check_freeze_patterns(config: ml_collections.ConfigDict, params: Any) -> None:
  """Raises a :class:`JdlError` if a ``optimizer.freeze`` pattern is invalid or
  matches no parameter. ``tx.init(params)`` checks the same; this is for failing
  before anything is compiled."""
  patterns = _compile_patterns(config.optimizer.freeze)
  if patterns:
    freeze_labels(params, patterns)


# ------------------------------------------------------------ reduce on plateau


class PlateauState(NamedTuple):
  """State of :func:`scale_by_plateau`."""

  inner_state: optax.OptState
  plateau_state: optax_contrib.ReduceLROnPlateauState


def scale_by_plateau(
    inner: optax.GradientTransformation,
    plateau: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
  """Multiplies ``inner``'s updates by the plateau scale, without advancing it.

  The plateau is advanced once per epoch by :func:`update_plateau` with a
  validation metric, not by the per-step training loss.

  Args:
    inner: the per-step transformation.
    plateau: ``optax.contrib.reduce_on_plateau(...)``.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return PlateauState(inner.init(params), plateau.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    updates, inner_state = inner.update(
        updates, state.inner_state, params, **extra_args
    )
    scale = state.plateau_state.scale
    updates = jax.tree.map(lambda u: (scale * u).astype(u.dtype), updates)
    return updates, PlateauState(inner_state, state.plateau_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _plateau_transform(
    config: ml_collections.ConfigDict,
) -> optax.GradientTransformationExtraArgs | None:
  plateau = config.get("reduce_on_plateau")
  if plateau is None or not plateau.enabled:
    return None
  _check(plateau.mode in ("min", "max"), "reduce_on_plateau.mode", plateau.mode,
         "'min' or 'max'")
  _check(0 < plateau.factor < 1, "reduce_on_plateau.factor", plateau.factor,
         "in (0, 1)")
  _check(isinstance(plateau.patience, int) and plateau.patience >= 1,
         "reduce_on_plateau.patience", plateau.patience, "an integer >= 1")
  _check(isinstance(plateau.cooldown, int) and plateau.cooldown >= 0,
         "reduce_on_plateau.cooldown", plateau.cooldown, "an integer >= 0")
  _check(0 <= plateau.rtol <= 1, "reduce_on_plateau.rtol", plateau.rtol,
         "in [0, 1]")
  _check(plateau.atol >= 0, "reduce_on_plateau.atol", plateau.atol, ">= 0")
  require(plateau.rtol > 0 or plateau.atol > 0,
          "reduce_on_plateau: one of rtol, atol must be > 0")
  # optax's test `value < (1 - rtol) * best - atol` assumes best > 0; the negated
  # metric of mode='max' is negative, where rtol would accept worse values.
  require(plateau.mode == "min" or plateau.rtol == 0,
          "reduce_on_plateau.rtol must be 0 with mode='max'; use atol")
  _check(0 <= plateau.min_scale <= 1, "reduce_on_plateau.min_scale",
         plateau.min_scale, "in [0, 1]")
  return optax_contrib.reduce_on_plateau(
      factor=plateau.factor, patience=plateau.patience, rtol=plateau.rtol,
      atol=plateau.atol, cooldown=plateau.cooldown, accumulation_size=1,
      min_scale=plateau.min_scale,
  )


def update_plateau(
    config: ml_collections.ConfigDict, opt_state: optax.OptState, value: jax.Array
) -> optax.OptState:
  """Advances the plateau once with an epoch's validation metric.

  Pure and jittable (bind ``config`` with ``functools.partial``). Uses optax's
  logic for patience, cooldown, factor and ``min_scale``. A no-op when
  ``reduce_on_plateau.enabled`` is False, so the loop may call it always.

  Args:
    config: the experiment config (reads ``reduce_on_plateau``).
    opt_state: the state of :func:`create_optimizer`'s transformation.
    value: the monitored metric, e.g. the validation loss of the epoch.

  Returns:
    ``opt_state`` with a new plateau state.
  """
  plateau = _plateau_transform(config)
  if plateau is None:
    return opt_state
  if not isinstance(opt_state, PlateauState):
    raise TypeError(
        f"update_plateau needs the state of create_optimizer with"
        f" reduce_on_plateau enabled, got {type(opt_state).__name__}"
    )
  value = jnp.asarray(value)
  if config.reduce_on_plateau.mode == "max":
    value = -value
  _, plateau_state = plateau.update((), opt_state.plateau_state, value=value)
  return opt_state._replace(plateau_state=plateau_state)


def update_count(opt_state: optax.OptState) -> jax.Array:
  """Returns the number of optimizer updates applied so far.

  This is the count the schedule is indexed by: with gradient accumulation it
  grows once per ``accumulate_steps`` train steps.
  """
  count = optax.tree.get(
      opt_state, "count",
      filtering=lambda path, _: getattr(path[-1], "tuple_name", None)
      == "ScaleByScheduleState",
  )
  if count is None:
    raise ValueError("opt_state was not made by jdl.optim.create_optimizer")
  return count


def current_learning_rate(
    opt_state: optax.OptState, learning_rate_fn: optax.Schedule
) -> jax.Array:
  """Returns the learning rate of the next update, for logging.

  ``learning_rate_fn(update_count) * plateau scale``; jittable.

  Args:
    opt_state: the state of :func:`create_optimizer`'s transformation.
    learning_rate_fn: :func:`create_learning_rate_fn` called with the same
      config, ``steps_per_epoch`` and ``num_epochs`` as :func:`create_optimizer`.
  """
  lr = jnp.asarray(learning_rate_fn(update_count(opt_state)))
  if isinstance(opt_state, PlateauState):
    lr = lr * opt_state.plateau_state.scale
  return lr
