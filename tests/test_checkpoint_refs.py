"""Checkpointing and resume: keep-N, best-by-metric, restore, background write
failures, damaged steps, history records, refusals and forced saves (each test was
checked to fail on a one-line change to the code that passed the rest of the suite)."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl
from jdl import checkpoint as ckpt_lib

from conftest import Crash, make_config, snapshot

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


def test_restore_gives_back_the_saved_key_and_the_callers_meta(tmp_path):
  # A typed PRNG key restores as the one saved, not the target's; the meta as given
  # (without the checksums save() adds).
  saved = {"k": jax.random.key(1), "w": jnp.arange(3.0)}
  with ckpt_lib.Checkpointer(tmp_path, async_save=False) as ck:
    ck.save(1, saved, meta={"a": 1, "b": [1.5, "x"]})
    tree, meta = ck.restore(1, {"k": jax.random.key(2), "w": jnp.zeros(3)})
    assert meta == {"a": 1, "b": [1.5, "x"]}
    assert ck.restore_meta(1) == meta
  assert jax.dtypes.issubdtype(tree["k"].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(tree["k"]),
                                jax.random.key_data(saved["k"]))
  np.testing.assert_array_equal(tree["w"], saved["w"])


@pytest.mark.parametrize("call", ["wait", "close"])
def test_a_background_write_failure_surfaces_at_wait_and_close(tmp_path, monkeypatch, call):
  # An asynchronous save's failure is raised by orbax's wait_until_finished: wait()
  # and close() must wait for it and report it in jdl's words.
  import errno

  import orbax.checkpoint as ocp
  ck = ckpt_lib.Checkpointer(tmp_path, async_save=True)
  ck.save(1, TREE)
  real = ocp.CheckpointManager.wait_until_finished
  failed = []

  def failing(self):
    real(self)
    if not failed:
      failed.append(True)
      raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", failing)
  with pytest.raises(jdl.JdlError, match=r"^cannot write the checkpoint at step 1 in .*: No "
                     r"space left on device; the steps saved before are intact$"):
    getattr(ck, call)()
  assert failed
  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", real)
  ck.close()


def test_a_resumed_run_has_the_uninterrupted_history_and_step_records(tmp_path):
  config = make_config(num_epochs=2, checkpoint_every_steps=6, keep_checkpoints=20,
                       monitor="")
  full = jdl.fit(config, tmp_path / "full", quiet=True)
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(config, tmp_path / "resumed", quiet=True, callbacks=[Crash(at_step=27)])
  resumed = jdl.fit(config, tmp_path / "resumed", quiet=True)
  assert set(full.history) == set(resumed.history)
  for name, values in full.history.items():
    np.testing.assert_array_equal(values, resumed.history[name], err_msg=name)
  chex.assert_trees_all_equal(jax.device_get(full.state.params),
                              jax.device_get(resumed.state.params))
  spe = full.trainer.steps_per_epoch
  with ckpt_lib.Checkpointer(tmp_path / "resumed" / "checkpoints") as ck:
    steps = ck.steps()
    assert steps == [6, 12, 18, 20, 26, 32, 38, 40]
    for step in steps:
      meta = ck.restore_meta(step)
      assert (meta["step"], meta["epoch"], meta["position"], meta["steps_per_epoch"]) == (
          step, step // spe, step % spe, spe)
      # The history holds the epochs completed at that step.
      assert len(meta["history"].get("loss", [])) == step // spe


@pytest.mark.parametrize("name", ["meta/metadata", "tree/_METADATA", "_CHECKPOINT_METADATA"])
def test_a_step_missing_a_required_metadata_file_is_damaged(tmp_path, name):
  with ckpt_lib.Checkpointer(tmp_path, async_save=False) as ck:
    ck.save(1, TREE, meta={"a": 1})
    ck.save(2, TREE, meta={"a": 2})
  (tmp_path / "2" / name).unlink()
  assert ckpt_lib.find_damaged(tmp_path) == {2: f"missing {name}"}
  ckpt_lib.require_undamaged(tmp_path, step=1)  # Only step 2 is damaged.
  with pytest.raises(jdl.JdlError, match=rf"step 2: missing {name}"):
    ckpt_lib.require_undamaged(tmp_path)


def test_a_structural_config_change_is_refused_before_the_workdir_is_touched(tmp_path):
  config = make_config(num_epochs=1, monitor="")
  jdl.fit(config, tmp_path, quiet=True)
  # What a run killed inside a save leaves; a resume would remove it.
  (tmp_path / "checkpoints" / "40.orbax-checkpoint-tmp-1234").mkdir()
  before = snapshot(tmp_path, folders=True)
  with pytest.raises(jdl.JdlError, match=r"seed differs") as refused:
    jdl.fit(make_config(num_epochs=2, monitor="", seed=1), tmp_path, quiet=True)
  assert snapshot(tmp_path, folders=True) == before  # Refused, touching nothing.
  assert re.search(r"holds a run with a different config \(seed differs\); use another "
                   r"--workdir, or --restart", str(refused.value))


@pytest.mark.parametrize("at", ["mid-epoch save", "epoch-end save"])
def test_a_stop_request_right_after_a_save_writes_it_once(tmp_path, at):
  # The step the stop request ends on was just saved (a mid-epoch checkpoint, or an
  # epoch's end): the stop saves nothing more, and the run resumes from that step.
  import os
  import signal

  class TermAt(jdl.train.callbacks.Callback):
    def on_steps_end(self, trainer, step, num_steps):
      if step == self.step:
        os.kill(os.getpid(), signal.SIGTERM)

  term = TermAt()
  config = make_config(num_epochs=3, checkpoint_every_steps=6, keep_checkpoints=20,
                       monitor="")
  trainer = jdl.Trainer(config, tmp_path, quiet=True, callbacks=[term])
  spe = trainer.steps_per_epoch  # 20
  term.step = 6 if at == "mid-epoch save" else spe
  stopped = trainer.fit()
  assert stopped.stopped == "SIGTERM" and int(stopped.state.step) == term.step
  with ckpt_lib.Checkpointer(tmp_path / "checkpoints") as ck:
    assert ck.steps() == [s for s in (6, 12, 18, 20) if s <= term.step]


def test_every_new_best_epoch_is_saved_between_checkpoint_epochs(tmp_path):
  # checkpoint_every_epochs=3 saves only epoch 3 by its cadence; an epoch whose
  # val_loss ties or beats the earlier ones' (epoch 1 always) is saved whatever the
  # cadence, since the best checkpoint must then be on disk.
  config = make_config(num_epochs=3, checkpoint_every_epochs=3, keep_checkpoints=20,
                       monitor="val_loss")
  result = jdl.fit(config, tmp_path, quiet=True)
  spe = result.trainer.steps_per_epoch
  values = result.history["val_loss"]
  new_best = [e for e in range(len(values)) if all(values[e] <= v for v in values[:e])]
  assert new_best[0] == 0
  best = max(e for e in range(len(values)) if values[e] == min(values))  # Latest of ties.
  with ckpt_lib.Checkpointer(tmp_path / "checkpoints", best_metric="val_loss") as ck:
    assert ck.steps() == sorted({(e + 1) * spe for e in new_best} | {3 * spe})
    assert ck.best_step() == (best + 1) * spe
    assert ck.restore_meta(3 * spe)["best"] == {"metric": "val_loss", "value": values[best],
                                                "epoch": best + 1}


def test_early_stoppings_best_epoch_is_saved_so_a_resumed_run_restores_it(tmp_path):
  # Early stopping ranks by its own settings (here the lowest val_accuracy: an early
  # epoch), not config.monitor (none) or the cadence (epoch 3 only): its best epoch
  # is saved anyway, so that a run stopped after it and resumed restores that state
  # at the end, as the uninterrupted run does from memory.
  import os
  import signal

  class TermAt(jdl.train.callbacks.Callback):
    def on_steps_end(self, trainer, step, num_steps):
      if step == 2 * trainer.steps_per_epoch + 6:  # Inside epoch 3.
        os.kill(os.getpid(), signal.SIGTERM)

  config = make_config(num_epochs=3, checkpoint_every_epochs=3, keep_checkpoints=20,
                       monitor="", epoch_mode="scan", scan_chunk=2,
                       early_stopping__enabled=True,
                       early_stopping__monitor="val_accuracy", early_stopping__mode="min",
                       early_stopping__patience=10)
  full = jdl.fit(config, tmp_path / "full", quiet=True)
  stopped = jdl.fit(config, tmp_path / "resumed", quiet=True, callbacks=[TermAt()])
  assert stopped.stopped == "SIGTERM"
  resumed = jdl.fit(config, tmp_path / "resumed", quiet=True)
  assert int(full.state.step) < 3 * full.trainer.steps_per_epoch  # An earlier epoch's.
  chex.assert_trees_all_equal(jax.device_get(full.state.params),
                              jax.device_get(resumed.state.params))
