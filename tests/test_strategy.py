"""The choices behind 'auto' settings (jdl.train.strategy), as pure functions."""

from __future__ import annotations

import jax
import pytest

from conftest import make_config
from jdl.errors import JdlError
from jdl.train import parallel
from jdl.train import strategy


@pytest.mark.parametrize("mode, scan_chunk, every_steps, steps_per_epoch, expected", [
    ("step", 0, 0, 50, 1),           # One compiled call a step.
    ("step", 7, 3, 50, 1),           # Whatever the other settings say.
    ("scan", 0, 0, 50, 50),          # The whole epoch.
    ("scan", 0, 0, 469, 100),        # At most MAX_AUTO_CHUNK steps.
    ("scan", 0, 8, 50, 8),           # No longer than the checkpoint cadence.
    ("scan", 0, 200, 50, 50),
    ("scan", 7, 3, 50, 7),           # An explicit scan_chunk wins over the cadence.
    ("scan", 70, 0, 50, 50),         # No longer than an epoch.
])
def test_the_block_length(mode, scan_chunk, every_steps, steps_per_epoch, expected):
  config = make_config(scan_chunk=scan_chunk, checkpoint_every_steps=every_steps)
  assert strategy.choose_chunk(config, mode, steps_per_epoch) == expected
  assert strategy.MAX_AUTO_CHUNK == 100


@pytest.mark.parametrize("scan_chunk, every_steps, steps_per_epoch, expected", [
    (0, 0, 469, 94),      # 5 blocks of 94 (one padding row), not 4 of 100 and one of 69.
    (0, 0, 400, 100),     # Already equal.
    (0, 0, 101, 51),
    (0, 0, 50, 50),
    (0, 250, 469, 84),    # Balanced within the checkpoint cadence (the loop aligns it).
    (0, 8, 50, 8),
    (30, 0, 469, 30),     # An explicit scan_chunk is kept.
])
def test_static_loops_balance_the_automatic_block_length(scan_chunk, every_steps,
                                                         steps_per_epoch, expected):
  # A GPU's blocks loop a known number of times, so a padding row costs a step.
  config = make_config(scan_chunk=scan_chunk, checkpoint_every_steps=every_steps)
  assert strategy.choose_chunk(config, "scan", steps_per_epoch, static=True) == expected
  assert strategy.choose_chunk(config, "step", steps_per_epoch, static=True) == 1


def test_static_loops_on_a_gpu_only():
  assert strategy.static_loops("gpu")
  assert not strategy.static_loops("cpu") and not strategy.static_loops("tpu")
  assert not strategy.static_loops()  # This machine's CPU.


def test_the_nonfinite_check():
  one = parallel.resolve("none")
  assert jax.default_backend() == "cpu"
  # 'auto': once a block on one CPU device when a NaN stops the run; else at each step.
  assert strategy.choose_nonfinite_check(make_config(), one, gan=False) == "block"
  assert strategy.choose_nonfinite_check(make_config(nonfinite="skip"), one, gan=False) == "step"
  assert strategy.choose_nonfinite_check(make_config(), one, gan=True) == "step"
  assert strategy.choose_nonfinite_check(make_config(nonfinite_check="step"), one,
                                         gan=False) == "step"
  with pytest.raises(JdlError, match="nonfinite_check='block' needs one device and a "
                                     "one-model task"):
    strategy.choose_nonfinite_check(make_config(nonfinite_check="block"), one, gan=True)
