"""Learning-rate schedules against their documented closed forms, with every duration
computed independently in exact fractions (``round`` of a ``Fraction`` rounds halves
to even, as the docstring says the durations do), and each config value tested on
both sides of the end of its documented range.

Found by a mutation audit of jdl/optim/schedules.py: each test's docstring names the
planted bugs (S..) it catches that the rest of the suite let pass.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest

from jdl import optim
from jdl.errors import JdlError

LR = 0.5


def _config(schedule, **optimizer):
  config = optim.default_config()
  config.optimizer.update({"learning_rate": LR, **optimizer})
  config.schedule.update(schedule)
  return config


def _lrs(schedule, counts):
  return np.asarray(schedule(jnp.asarray(counts, jnp.int32)), np.float64)


def _updates(epochs, steps_per_epoch, accumulate=1):
  """``epochs * E`` rounded to the nearest update, halves to even, in exact arithmetic."""
  return round(Fraction(str(epochs)) * Fraction(steps_per_epoch, accumulate))


def ref_linear(k, tau, alpha_final):
  k = np.minimum(k, tau)
  return LR * ((1 - k / tau) + (k / tau) * alpha_final)


def ref_cosine(k, total, alpha):
  k = np.minimum(k, total)
  return LR * (alpha + (1 - alpha) * 0.5 * (1 + np.cos(np.pi * k / total)))


def ref_warmup_cosine(k, warmup, total, alpha):
  """optax.warmup_cosine_decay_schedule: 0 to ``LR`` linearly over ``warmup`` updates,
  then cosine to ``alpha * LR`` at update ``total`` (the warm-up included)."""
  k = np.asarray(k, np.float64)
  decay = (alpha + (1 - alpha) * 0.5
           * (1 + np.cos(np.pi * np.minimum(k - warmup, total - warmup) / (total - warmup))))
  return np.where(k < warmup, LR * k / max(warmup, 1), LR * decay)


# ------------------------------------------------------------------ durations
@pytest.mark.parametrize("tau_epochs, spe, accumulate", [
    (0.5, 5, 1),  # 2.5 updates: 2 (halves to even).
    (1.5, 5, 1),  # 7.5 updates: 8.
    (5.0, 10, 3),  # 50/3 = 16.67 updates: 17 (not 5 * round(10/3) = 15).
    (0.7, 10, 4),  # 7/4 = 1.75 updates: 2.
])
def test_linear_tau_is_the_nearest_whole_update_halves_to_even(tau_epochs, spe, accumulate):
  """``tau = round(tau_epochs * E)``, E = steps_per_epoch / accumulate_steps, and the
  rate is the docstring's straight line to ``alpha_final * lr`` at ``tau``. Catches S03
  (halves rounded up: 2.5 -> 3) and S50 (tau from a rounded E)."""
  config = _config({"name": "linear", "tau_epochs": tau_epochs, "alpha_final": 0.1},
                   accumulate_steps=accumulate)
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=spe, num_epochs=1)
  tau = _updates(tau_epochs, spe, accumulate)
  k = np.arange(tau + 4)
  np.testing.assert_allclose(_lrs(lr, k), ref_linear(k, tau, 0.1), rtol=1e-6)


@pytest.mark.parametrize("warmup_epochs, spe, accumulate, num_epochs", [
    (0.5, 5, 1, 3),  # 2.5 updates: 2.
    (2.0, 10, 3, 10),  # 20/3 = 6.67 updates: 7 (not 2 * round(10/3) = 6); 33 in the run.
    (1.3, 13, 3, 27),  # 5.63 updates: 6; the run 13 * 27 / 3 = 117 exactly.
])
def test_warmup_cosine_matches_optax_definition_with_exact_durations(warmup_epochs, spe,
                                                                      accumulate, num_epochs):
  """Linear from 0 over ``round(warmup_epochs * E)`` updates, cosine to ``alpha * lr`` at
  the run's last update ``floor(num_epochs * E)``. Catches S03 (2.5 -> 3), S36 (the
  run's length in float: 13/3 * 27 floors to 116) and S49 (the warm-up from a rounded
  E)."""
  config = _config({"name": "warmup_cosine", "warmup_epochs": warmup_epochs, "alpha": 0.2},
                   accumulate_steps=accumulate)
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=spe, num_epochs=num_epochs)
  warmup = _updates(warmup_epochs, spe, accumulate)
  total = math.floor(Fraction(spe, accumulate) * num_epochs)
  k = np.arange(total + 3)
  np.testing.assert_allclose(_lrs(lr, k), ref_warmup_cosine(k, warmup, total, 0.2),
                             rtol=1e-5, atol=1e-7)


def test_cosine_ends_at_the_runs_exact_last_update():
  """13 steps an epoch, 3 to an update, 27 epochs: exactly 117 updates (float
  ``13 / 3 * 27`` is 116.99999999999999). The rate reaches ``alpha * lr`` at 117, not
  before. Catches S36 (floor without the epsilon)."""
  config = _config({"name": "cosine", "alpha": 0.0}, accumulate_steps=3)
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=13, num_epochs=27)
  k = np.array([0, 58, 115, 116, 117, 120])
  np.testing.assert_allclose(_lrs(lr, k), ref_cosine(k, 117, 0.0), rtol=1e-4, atol=1e-9)
  assert _lrs(lr, [116])[0] > 0


@pytest.mark.parametrize("every, spe, factor", [
    (0.1234, 468, 0.9),  # A period of 617/5000 * 468 = 57.7512 updates.
    (0.37, 100, 0.95),  # 37 updates.
    (2.5, 7, 0.8),  # 17.5 updates.
])
def test_step_schedule_is_factor_to_the_floor_of_count_over_the_exact_period(every, spe,
                                                                            factor):
  """``lr * factor ** floor(k / (decay_every_epochs * E))`` at every update up to 3,000
  (about 50 decays of 0.1234 epochs of 468 updates), the period computed in exact
  fractions. Catches S26 (the period's fraction limited to denominators <= 100: 0.1234
  became 10/81, and the decays drifted off the epochs by a whole update after ~40)."""
  config = _config({"name": "step", "decay_every_epochs": every, "factor": factor})
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=spe, num_epochs=1)
  period = Fraction(str(every)) * spe
  k = np.arange(3000)
  n = np.array([math.floor(Fraction(int(i)) / period) for i in k])
  np.testing.assert_allclose(_lrs(lr, k), LR * factor ** n, rtol=1e-5)


def test_a_step_period_under_one_update_that_rounds_to_one_is_accepted():
  """0.2 epochs of 4 updates is 0.8 updates: at least one update once rounded (as
  every duration is), so valid, and it decays at ``floor(k / 0.8)``: twice at update
  4. Catches S53 (the length checked truncated: 0.8 -> 0 refused)."""
  config = _config({"name": "step", "decay_every_epochs": 0.2, "factor": 0.5})
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=4, num_epochs=1)
  k = np.arange(10)
  np.testing.assert_allclose(_lrs(lr, k), LR * 0.5 ** np.floor(k / 0.8 + 1e-9), rtol=1e-6)


# ---------------------------------------------------------------- valid ranges
@pytest.mark.parametrize("schedule, expected", [
    ({"name": "step", "factor": 1.0, "decay_every_epochs": 1.0}, lambda k: LR + 0 * k),
    ({"name": "exponential", "decay_rate": 1.0}, lambda k: LR + 0 * k),
    ({"name": "linear", "alpha_final": 0.0, "tau_epochs": 2.0},
     lambda k: ref_linear(k, 8, 0.0)),
    ({"name": "cosine", "alpha": 1.0}, lambda k: LR + 0 * k),
    ({"name": "warmup_cosine", "alpha": 1.0, "warmup_epochs": 1.0},
     lambda k: np.where(k < 4, LR * k / 4, LR)),
], ids=["step-factor-1", "exponential-rate-1", "linear-alpha_final-0", "cosine-alpha-1",
        "warmup_cosine-alpha-1"])
def test_values_at_the_closed_end_of_their_range_are_accepted(schedule, expected):
  """``factor`` and ``decay_rate`` in (0, 1], ``alpha_final`` >= 0, ``alpha`` in [0, 1]:
  each closed end is a valid schedule (1: no decay; 0: to zero). Catches S06, S08,
  S10 and S12 (the closed end refused)."""
  config = _config(schedule)
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=4, num_epochs=5)
  k = np.arange(24)
  np.testing.assert_allclose(_lrs(lr, k), expected(k), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("schedule, optimizer, kwargs, message", [
    ({"name": "step", "factor": 0.0}, {}, {}, r"schedule.factor must be in \(0, 1\], got 0.0"),
    ({"name": "exponential", "decay_rate": 1.01}, {}, {},
     r"schedule.decay_rate must be in \(0, 1\], got 1.01"),
    ({"name": "linear", "alpha_final": math.inf}, {}, {},
     "schedule.alpha_final must be >= 0 and finite, got inf"),
    ({"name": "cosine", "alpha": 1.01}, {}, {}, r"schedule.alpha must be in \[0, 1\], got 1.01"),
    ({"name": "warmup_cosine", "alpha": 1.5}, {}, {},
     r"schedule.alpha must be in \[0, 1\], got 1.5"),
    ({"name": "step", "decay_every_epochs": 0.0}, {}, {},
     "schedule.decay_every_epochs must be > 0, got 0.0"),
    ({"name": "step", "decay_every_epochs": 0.1}, {}, {},
     "schedule.decay_every_epochs must be at least one optimizer update long, got 0.1"),
    ({"name": "linear", "tau_epochs": 1e9}, {}, {},
     r"schedule.tau_epochs must be at most 536870911.5 epochs \(2\*\*31 - 1 updates\), "
     r"got 1000000000.0"),
    ({}, {"accumulate_steps": True}, {},
     "optimizer.accumulate_steps must be an integer >= 1, got True"),
    ({}, {}, {"steps_per_epoch": 0}, "steps_per_epoch must be > 0, got 0"),
    ({"name": "cosine"}, {}, {"num_epochs": 0}, "num_epochs must be > 0, got 0"),
    ({}, {"learning_rate": 0.0}, {}, "optimizer.learning_rate must be > 0, got 0.0"),
], ids=["step-factor-0", "exponential-rate-above-1", "linear-alpha_final-inf",
        "cosine-alpha-above-1", "warmup_cosine-alpha-above-1", "step-every-0",
        "step-every-under-one-update", "linear-tau-beyond-int32", "accumulate-bool",
        "steps_per_epoch-0", "cosine-num_epochs-0", "learning_rate-0"])
def test_values_just_outside_their_range_are_one_named_error(schedule, optimizer, kwargs,
                                                              message):
  """Each is a JdlError naming the key, the range and the value, from
  create_learning_rate_fn itself. Catches S05 (no int32 bound: optax's count
  overflows), S07, S09, S11, S13 (warmup_cosine's alpha unchecked), S14 (0 epochs
  reported as too short), S15, S19, S27 (a period under one update built), S37, S48."""
  config = _config(schedule, **optimizer)
  kwargs = {"steps_per_epoch": 4, "num_epochs": 5, **kwargs}
  with pytest.raises(JdlError, match=message):
    optim.create_learning_rate_fn(config, **kwargs)
