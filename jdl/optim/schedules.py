"""Learning-rate schedules, indexed by optimizer update count.

Durations in the ``schedule`` config section are given in epochs and converted to
optimizer updates once, here. ``steps_per_epoch`` is always the number of *train
steps* (batches, micro-batches when accumulating) per epoch, as the training loop
counts them. With ``optimizer.accumulate_steps = k`` the optimizer updates the
parameters every ``k`` train steps. ``optax.MultiSteps`` counts train steps across
epoch ends, so an epoch holds ``steps_per_epoch / k`` updates on average (not
necessarily a whole number), and a run of ``n`` epochs ``floor(n * steps_per_epoch
/ k)``: the schedules are sized on those counts.
"""

from __future__ import annotations

import fractions
import math
from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import optax

from jdl.errors import lookup, require
from jdl.optim._checks import check


def _epochs_to_steps(key: str, epochs: float, steps_per_epoch: float) -> int:
  check(epochs >= 0, key, epochs, ">= 0")
  steps = epochs * steps_per_epoch
  # optax counts updates in int32 (tau_epochs=1e9 overflowed inside optax).
  most = math.floor((2**31 - 2) / steps_per_epoch * 1e3) / 1e3  # Rounded down: allowed.
  check(steps < 2**31 - 1, key, epochs, f"at most {most} epochs (2**31 - 1 updates)")
  return int(round(steps))


def validate_schedule(config: ml_collections.ConfigDict) -> None:
  """Checks ``schedule`` and ``optimizer.accumulate_steps`` as far as the config
  alone allows (``jdl config`` and a run before it reads data); what needs the
  steps per epoch (a duration shorter than one update) is checked as the schedule
  is built.

  Raises:
    JdlError: an unknown schedule name, or the first value out of its range.
  """
  sched = config.schedule
  lookup("schedule", sched.name, SCHEDULES)
  k = config.optimizer.accumulate_steps
  check(isinstance(k, int) and not isinstance(k, bool) and k >= 1,
        "optimizer.accumulate_steps", k, "an integer >= 1")
  if sched.name == "step":
    check(sched.decay_every_epochs > 0, "schedule.decay_every_epochs",
          sched.decay_every_epochs, "> 0")
    check(0 < sched.factor <= 1, "schedule.factor", sched.factor, "in (0, 1]")
  elif sched.name == "exponential":
    check(0 < sched.decay_rate <= 1, "schedule.decay_rate", sched.decay_rate, "in (0, 1]")
  elif sched.name == "linear":
    check(sched.tau_epochs > 0, "schedule.tau_epochs", sched.tau_epochs, "> 0")
    check(0 <= sched.alpha_final < float("inf"), "schedule.alpha_final", sched.alpha_final,
          ">= 0 and finite")
  elif sched.name in ("cosine", "warmup_cosine"):
    check(0 <= sched.alpha <= 1, "schedule.alpha", sched.alpha, "in [0, 1]")
  if sched.name == "warmup_cosine":
    check(0 <= sched.warmup_epochs < float("inf"), "schedule.warmup_epochs",
          sched.warmup_epochs, ">= 0 and finite")


def _updates_per_epoch(config: ml_collections.ConfigDict, steps_per_epoch: float) -> float:
  validate_schedule(config)
  k = config.optimizer.accumulate_steps
  check(steps_per_epoch > 0, "steps_per_epoch", steps_per_epoch, "> 0")
  require(
      k == 1 or steps_per_epoch >= k,
      f"an epoch of {steps_per_epoch} steps (train examples // batch_size) must hold at "
      f"least optimizer.accumulate_steps ({k}) of them: one optimizer update",
  )
  return steps_per_epoch / k


def _constant(sched, lr, per_epoch, num_epochs):
  del sched, per_epoch, num_epochs
  return optax.constant_schedule(lr)


def _step(sched, lr, per_epoch, num_epochs):
  del num_epochs
  every = _epochs_to_steps(
      "schedule.decay_every_epochs", sched.decay_every_epochs, per_epoch
  )
  check(every > 0, "schedule.decay_every_epochs", sched.decay_every_epochs,
        "at least one optimizer update long")
  # floor(k / period) with the period an exact fraction num / den (E is one when
  # accumulate_steps does not divide steps_per_epoch), in integers: the decays stay
  # on the epochs' boundaries however many there are (a rounded period drifts). A
  # period with no small exact form (num * den >= 2**31) is rounded, as other
  # durations are.
  period = (fractions.Fraction(sched.decay_every_epochs).limit_denominator(10**4)
            * fractions.Fraction(per_epoch).limit_denominator(10**4))
  if period <= 0 or period.numerator * period.denominator >= 2**31:
    return optax.exponential_decay(lr, every, sched.factor, staircase=True)
  num, den = period.numerator, period.denominator
  decay = optax.exponential_decay(lr, 1, sched.factor, staircase=True)  # lr * factor**n.

  def schedule(count):
    count = jnp.asarray(count, jnp.int32)
    return decay((count // num) * den + (count % num) * den // num)  # floor(count / period)

  return schedule


def _exponential(sched, lr, per_epoch, num_epochs):
  del num_epochs
  return optax.exponential_decay(lr, per_epoch, sched.decay_rate)


def _linear(sched, lr, per_epoch, num_epochs):
  del num_epochs
  tau = _epochs_to_steps("schedule.tau_epochs", sched.tau_epochs, per_epoch)
  check(tau > 0, "schedule.tau_epochs", sched.tau_epochs,
        "at least one optimizer update long")
  return optax.linear_schedule(lr, sched.alpha_final * lr, tau)


def _total_steps(per_epoch: float, num_epochs: int | None) -> int:
  """The updates a run of ``num_epochs`` makes: the last incomplete accumulation makes none."""
  require(num_epochs is not None,
          "cosine schedules need num_epochs; pass num_epochs=...")
  check(num_epochs > 0, "num_epochs", num_epochs, "> 0")
  return math.floor(per_epoch * num_epochs + 1e-9)


def _cosine(sched, lr, per_epoch, num_epochs):
  return optax.cosine_decay_schedule(
      lr, _total_steps(per_epoch, num_epochs), alpha=sched.alpha
  )


def _warmup_steps(sched, per_epoch: float) -> int:
  """The warm-up's optimizer updates: a warm-up asked for is at least one long."""
  warmup = _epochs_to_steps("schedule.warmup_epochs", sched.warmup_epochs, per_epoch)
  return max(warmup, 1) if sched.warmup_epochs > 0 else warmup


def _warmup_cosine(sched, lr, per_epoch, num_epochs):
  total = _total_steps(per_epoch, num_epochs)
  warmup = _warmup_steps(sched, per_epoch)
  require(warmup < total,
          f"schedule.warmup_epochs={sched.warmup_epochs} is {warmup} optimizer updates, "
          f"which leaves none of the run's {total} ({num_epochs} epoch"
          f"{'s' if num_epochs != 1 else ''}) to decay; "
          "it must be at least one update shorter")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=total,
      end_value=sched.alpha * lr,
  )


def shortest_run(config: ml_collections.ConfigDict, *, steps_per_epoch: float) -> int:
  """The fewest epochs a run of ``config``'s schedule can span (1, or for
  ``warmup_cosine`` one update more than its warm-up).

  What a run of ``num_epochs=0`` builds its (never used) schedule over.

  Raises:
    JdlError: as :func:`create_learning_rate_fn`.
  """
  per_epoch = _updates_per_epoch(config, steps_per_epoch)
  sched = config.schedule
  if sched.name != "warmup_cosine":
    return 1
  warmup = _warmup_steps(sched, per_epoch)
  epochs = max(1, math.ceil((warmup + 1) / per_epoch))
  while _total_steps(per_epoch, epochs) <= warmup:  # Its rounding, not ceil's.
    epochs += 1
  return epochs


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
    steps_per_epoch: float,
    num_epochs: int | None = None,
) -> optax.Schedule:
  """Creates the learning-rate schedule, indexed by optimizer update count.

  Schedules (``schedule.name``), with ``lr = optimizer.learning_rate``, ``k`` the
  update count and ``E`` updates per epoch (``steps_per_epoch / accumulate_steps``,
  a fraction when the two do not divide; ``tau`` and warm-ups round to the nearest
  whole update, halves to even as Python's ``round`` (2.5 -> 2, 7.5 -> 8); ``step``
  decays at the first update at or past each boundary):

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
      ``optimizer.accumulate_steps`` to get optimizer updates per epoch. A
      fraction is an average over epochs (a GAN's generator, updated every
      ``d_steps`` train steps, counts ``steps_per_epoch / d_steps``).
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
  per_epoch = _updates_per_epoch(config, steps_per_epoch)  # Validates the section.
  make = SCHEDULES[config.schedule.name]
  lr = config.optimizer.learning_rate
  check(lr > 0, "optimizer.learning_rate", lr, "> 0")
  return make(config.schedule, lr, per_epoch, num_epochs)
