"""Reduce-on-plateau: a learning-rate scale advanced once per epoch, and lr logging.

The ``reduce_on_plateau`` config section drives this module. The scale wraps the
per-step transformation (:func:`scale_by_plateau`) but only
:func:`update_plateau`, fed an epoch's validation metric, advances it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax import contrib as optax_contrib

from jdl.errors import require
from jdl.optim._checks import check


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


def plateau_transform(
    config: ml_collections.ConfigDict,
) -> optax.GradientTransformationExtraArgs | None:
  """Validates ``reduce_on_plateau`` and builds optax's transformation.

  Returns:
    ``optax.contrib.reduce_on_plateau(...)``, or None when the section is absent
    or not enabled.

  Raises:
    JdlError: an invalid value.
  """
  plateau = config.get("reduce_on_plateau")
  if plateau is None or not plateau.enabled:
    return None
  validate_plateau(config)
  return optax_contrib.reduce_on_plateau(
      factor=plateau.factor, patience=plateau.patience, rtol=plateau.rtol,
      atol=plateau.atol, cooldown=plateau.cooldown, accumulation_size=1,
      min_scale=plateau.min_scale,
  )


def validate_plateau(config: ml_collections.ConfigDict) -> None:
  """Checks an enabled ``reduce_on_plateau`` section.

  Raises:
    JdlError: the first value out of its range.
  """
  plateau = config.get("reduce_on_plateau")
  if plateau is None or not plateau.enabled:
    return
  check(plateau.mode in ("min", "max"), "reduce_on_plateau.mode", plateau.mode,
        "'min' or 'max'")
  check(0 < plateau.factor < 1, "reduce_on_plateau.factor", plateau.factor,
        "in (0, 1)")
  check(isinstance(plateau.patience, int) and plateau.patience >= 1,
        "reduce_on_plateau.patience", plateau.patience, "an integer >= 1")
  check(isinstance(plateau.cooldown, int) and plateau.cooldown >= 0,
        "reduce_on_plateau.cooldown", plateau.cooldown, "an integer >= 0")
  check(0 <= plateau.rtol <= 1, "reduce_on_plateau.rtol", plateau.rtol,
        "in [0, 1]")
  check(plateau.atol >= 0, "reduce_on_plateau.atol", plateau.atol, ">= 0")
  require(plateau.rtol > 0 or plateau.atol > 0,
          "reduce_on_plateau: one of rtol, atol must be > 0")
  # optax's test `value < (1 - rtol) * best - atol` assumes best > 0; the negated
  # metric of mode='max' is negative, where rtol would accept worse values.
  require(plateau.mode == "min" or plateau.rtol == 0,
          "reduce_on_plateau.rtol must be 0 with mode='max'; use atol")
  check(0 <= plateau.min_scale <= 1, "reduce_on_plateau.min_scale",
        plateau.min_scale, "in [0, 1]")


def update_plateau(
    config: ml_collections.ConfigDict, opt_state: optax.OptState, value: jax.Array
) -> optax.OptState:
  """Advances the plateau once with an epoch's validation metric.

  Pure and jittable (bind ``config`` with ``functools.partial``). Uses optax's
  logic for patience, cooldown, factor and ``min_scale``. A no-op when
  ``reduce_on_plateau.enabled`` is False, so the loop may call it always.

  Args:
    config: the experiment config (reads ``reduce_on_plateau``).
    opt_state: the state of :func:`jdl.optim.create_optimizer`'s transformation.
    value: the monitored metric, e.g. the validation loss of the epoch.

  Returns:
    ``opt_state`` with a new plateau state.
  """
  plateau = plateau_transform(config)
  if plateau is None:
    return opt_state
  require(isinstance(opt_state, PlateauState),
          "update_plateau needs the state of create_optimizer with reduce_on_plateau "
          f"enabled, got {type(opt_state).__name__}")
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
  require(count is not None, "opt_state was not made by jdl.optim.create_optimizer (it has "
          "no schedule count)")
  return count


def current_learning_rate(
    opt_state: optax.OptState, learning_rate_fn: optax.Schedule, *,
    last_update: bool = False,
) -> jax.Array:
  """Returns the learning rate of the next update, or of the last one, for logging.

  ``learning_rate_fn(update_count) * plateau scale``; jittable.

  Args:
    opt_state: the state of :func:`jdl.optim.create_optimizer`'s transformation.
    learning_rate_fn: :func:`jdl.optim.create_learning_rate_fn` called with the
      same config, ``steps_per_epoch`` and ``num_epochs`` as
      :func:`jdl.optim.create_optimizer`.
    last_update: the rate of the last update taken,
      ``learning_rate_fn(update_count - 1)`` (the first update's before any), with
      the plateau scale it was taken at. What ``fit`` logs at an epoch's end: the
      rate the epoch ended with, before reduce-on-plateau acts on it.
  """
  count = update_count(opt_state)
  if last_update:
    count = jnp.maximum(count - 1, 0)
  lr = jnp.asarray(learning_rate_fn(count))
  if isinstance(opt_state, PlateauState):
    lr = lr * opt_state.plateau_state.scale
  return lr
