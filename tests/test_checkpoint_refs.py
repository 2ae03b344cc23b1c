"""Checkpointer: keep-N and best-by-metric with steps saved without the metric."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from jdl import checkpoint as ckpt_lib

TREE = {"w": jnp.arange(4.0)}


@pytest.mark.parametrize("mode, good, worse", [("min", 0.1, 0.9), ("max", 0.9, 0.1)])
def test_best_metric_ranks_a_step_without_it_last_in_either_mode(tmp_path, mode, good, worse):
  # Step 2 was saved with another metric (the monitor changed on a resume): it ranks
  # last, whichever the mode, and the best step by the metric is the one kept.
  ck = ckpt_lib.Checkpointer(tmp_path, keep=1, best_metric="m", best_mode=mode,
                             async_save=False)
  ck.save(1, TREE, metrics={"m": good})
  ck.save(2, TREE, metrics={"other": 1.0})
  ck.save(3, TREE, metrics={"m": worse})
  ck.save(4, TREE)  # Mid-epoch: no metrics.
  assert ck.best_step() == 1
  assert ck.steps() == [1, 4]
  ck.close()


def test_no_best_step_when_no_step_records_the_metric(tmp_path):
  ck = ckpt_lib.Checkpointer(tmp_path, keep=5, best_metric="m", async_save=False)
  ck.save(1, TREE, metrics={"other": 1.0})
  ck.save(2, TREE, metrics={"other": 0.5})
  ck.save(3, TREE)
  assert ck.best_step() is None and ck.latest_step() == 3
  ck.close()


def test_keep_prunes_mid_epoch_steps_and_keeps_the_best(tmp_path):
  # keep=2: the two latest, plus the best by the metric; steps saved without metrics
  # (mid-epoch) are pruned like any other.
  ck = ckpt_lib.Checkpointer(tmp_path, keep=2, best_metric="loss", async_save=False)
  ck.save(1, TREE, metrics={"loss": 0.5})
  for step in range(2, 6):
    ck.save(step, TREE)
  ck.wait()
  assert ck.steps() == [1, 4, 5]
  assert ckpt_lib.step_numbers(tmp_path) == [1, 4, 5]
  ck.close()
