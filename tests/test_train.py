"""The training engine: learning, determinism, exact resume, callbacks, workdir."""

from __future__ import annotations

import functools
import json
import shutil
import math
import re
import time

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl
from jdl.train import callbacks as cb
from jdl.train import loop
from jdl.train import resume

from conftest import Crash as _Crash
from conftest import small_digits_cnn
from conftest import make_config


def _params(result):
  return jax.device_get(result.state.params)


def test_fit_learns_digits_in_memory():
  result = jdl.fit(make_config(num_epochs=4, optimizer__learning_rate=1e-2), quiet=True)
  assert result.workdir is None
  assert result.test_metrics["accuracy"] > 0.9
  assert len(result.history["loss"]) == 4
  assert result.history["loss"][-1] < result.history["loss"][0]
  # 1,797 digits: 360 test, 144 val, 1,293 train = 20 full batches of 64.
  assert int(result.state.step) == 4 * (1293 // 64)
  # Its repr (a notebook cell's last line) sums the state up instead of printing it:
  # 64-32-10 is 64*32 + 32 + 32*10 + 10 = 2,410 parameters.
  text = repr(result)
  assert text.startswith("FitResult(workdir=None, step=80, params=2410, epochs=4, ")
  accuracy = float(f"{result.test_metrics['accuracy']:.4g}")
  assert f"'accuracy': {accuracy}" in text
  assert "'val_loss'" in text and "Array" not in text and len(text) < 400
  result.state.step.delete()  # As a step given the state with donation leaves it.
  assert "step=<deleted>" in repr(result)


def test_same_seed_is_bitwise_identical_and_seed_matters():
  config = make_config(model__dropout_rate=0.3)
  a = jdl.fit(config, quiet=True)
  b = jdl.fit(config, quiet=True)
  chex.assert_trees_all_equal(_params(a), _params(b))
  c = jdl.fit(make_config(model__dropout_rate=0.3, seed=1), quiet=True)
  assert not np.array_equal(jax.tree.leaves(_params(a))[0], jax.tree.leaves(_params(c))[0])


def test_scan_and_step_modes_agree():
  step = jdl.fit(make_config(epoch_mode="step"), quiet=True)
  scan = jdl.fit(make_config(epoch_mode="scan", scan_chunk=5), quiet=True)
  np.testing.assert_allclose(step.history["loss"], scan.history["loss"], rtol=1e-5)
  chex.assert_trees_all_close(_params(step), _params(scan), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["step", "scan"])
def test_resume_mid_epoch_equals_uninterrupted(tmp_path, mode):
  # 1,293 train examples / batch 64 = 20 steps an epoch; checkpoints every 6 steps.
  config = make_config(num_epochs=3, checkpoint_every_steps=6, epoch_mode=mode, scan_chunk=3,
                       model__dropout_rate=0.2, optimizer__name="momentum",
                       schedule__name="cosine")
  full = jdl.fit(config, tmp_path / "full", quiet=True)

  with pytest.raises(KeyboardInterrupt):
    jdl.fit(config, tmp_path / "resumed", quiet=True, callbacks=[_Crash(at_step=33)])
  saved = sorted(int(p.name) for p in (tmp_path / "resumed" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved[-1] == 32  # Mid-epoch 2 (batch 12 of 20): 20 + 2 * 6.
  resumed = jdl.fit(config, tmp_path / "resumed", quiet=True)

  chex.assert_trees_all_equal(_params(full), _params(resumed))
  chex.assert_trees_all_equal(jax.device_get(full.state.opt_state),
                              jax.device_get(resumed.state.opt_state))

  def lines(run):
    drop = {"epoch_seconds", "samples_per_sec", "compile_seconds", "checkpoint_seconds"}
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

  assert lines("full") == lines("resumed")


def test_rerun_of_finished_workdir_trains_no_more(tmp_path):
  config = make_config(num_epochs=1)
  first = jdl.fit(config, tmp_path, quiet=True)
  again = jdl.fit(config, tmp_path, quiet=True)
  chex.assert_trees_all_equal(_params(first), _params(again))
  assert int(again.state.step) == int(first.state.step)
  splits = [json.loads(line)["split"] for line in (tmp_path / "metrics.jsonl").open()]
  assert splits == ["train", "val", "test"]


def test_rerun_of_an_early_stopped_run_restoring_its_best_writes_one_test_line(tmp_path):
  # Its test line carries the restored (earlier) step: it survived the re-run's cut.
  config = make_config(num_epochs=5, optimizer__learning_rate=1e-12,
                       early_stopping__enabled=True, early_stopping__patience=1,
                       early_stopping__min_delta=1.0)
  for _ in range(2):
    jdl.fit(config, tmp_path, quiet=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["split"] for r in records] == ["train", "val", "train", "val", "test"]
    assert records[-1]["step"] == records[0]["step"]  # Epoch 1's state, restored.


def test_metrics_records_without_a_step_count_as_step_0(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"note": "x"}\n{"step": 7, "split": "train"}\n')
  assert jdl.train.callbacks.MetricsLogger(path).last_step() == 7
  path.write_text('{"note": "x"}\n')
  assert jdl.train.callbacks.MetricsLogger(path).last_step() == 0


def test_records_past_the_only_checkpoint_are_cut_not_moved_aside(tmp_path, capsys):
  # A zero-epoch run (its step-0 checkpoint) extended and killed before its first save.
  jdl.fit(make_config(num_epochs=0), tmp_path, quiet=True)
  with (tmp_path / "metrics.jsonl").open("a") as f:
    f.write(json.dumps({"step": 20, "epoch": 1, "split": "train", "loss": 1.0}) + "\n")
  capsys.readouterr()
  jdl.fit(make_config(num_epochs=1), tmp_path, quiet=True)
  assert "holds no checkpoint" not in capsys.readouterr().err
  assert not list(tmp_path.glob("previous-*"))
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  assert [(r["split"], r["step"]) for r in records] == [
      ("test", 0), ("train", 20), ("val", 20), ("test", 20)]


def test_a_finished_run_trained_further_keeps_its_test_result(tmp_path):
  first = jdl.fit(make_config(num_epochs=1), tmp_path, quiet=True)
  longer = jdl.fit(make_config(num_epochs=2), tmp_path, quiet=True)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  assert [(r["split"], r["epoch"]) for r in records] == [
      ("train", 1), ("val", 1), ("test", 1), ("train", 2), ("val", 2), ("test", 2)]
  assert records[2]["accuracy"] == first.test_metrics["accuracy"]
  assert records[5]["accuracy"] == longer.test_metrics["accuracy"]


def test_a_workdir_without_its_checkpoints_starts_over_and_keeps_the_old_records(
    tmp_path, capsys):
  jdl.fit(make_config(num_epochs=2), tmp_path, quiet=True)
  old = (tmp_path / "metrics.jsonl").read_text()
  shutil.rmtree(tmp_path / "checkpoints")
  capsys.readouterr()
  jdl.fit(make_config(num_epochs=1), tmp_path, quiet=True)
  err = capsys.readouterr().err
  assert "holds no checkpoint to resume, but its metrics.jsonl records a run to step" in err
  (previous,) = tmp_path.glob("previous-*")
  assert (previous / "metrics.jsonl").read_text() == old
  assert {p.name for p in previous.iterdir()} >= {"config.json", "summary.txt"}
  splits = [json.loads(line)["split"] for line in (tmp_path / "metrics.jsonl").open()]
  assert splits == ["train", "val", "test"]


def test_workdir_layout_and_metrics_lines(tmp_path):
  config = make_config(tensorboard=True, plots=True, metrics=("accuracy", "macro_f1"))
  jdl.fit(config, tmp_path, quiet=True)
  for name in ("config.json", "metrics.jsonl", "summary.txt", "checkpoints", "tb", "plots"):
    assert (tmp_path / name).exists(), name
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
  assert (tmp_path / "plots" / "loss.png").stat().st_size > 1000
  # One plot a quantity that was learned or scheduled; none of where the run ran.
  assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
      "accuracy.png", "confusion_test.png", "learning_rate.png", "loss.png", "macro_f1.png"]
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["split"] for r in records] == ["train", "val", "train", "val", "test"]
  for r in records:
    assert {"step", "epoch", "split", "loss", "accuracy", "macro_f1"} <= set(r)
  train = [r for r in records if r["split"] == "train"]
  assert all(r["samples_per_sec"] > 0 and r["epoch_seconds"] > 0 for r in train)
  assert json.loads((tmp_path / "config.json").read_text())["dataset"] == "digits"
  summary = (tmp_path / "summary.txt").read_text()
  assert "Total" in summary and "digits" in summary


def test_a_devices_peak_memory_is_logged_but_neither_plotted_nor_in_the_history(
    tmp_path, monkeypatch, capsys):
  # XLA:CPU keeps no count (runtime.peak_device_memory_mib is None here); a GPU's
  # allocator does, and the loop reads it through that function.
  from jdl.train import runtime
  seen = []
  monkeypatch.setattr(runtime, "peak_device_memory_mib",
                      lambda devices: seen.append(list(devices)) or 1234.5)
  result = jdl.fit(make_config(plots=True, tensorboard=True), tmp_path)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r.get("peak_memory_mib") for r in records] == [1234.5, None, 1234.5, None, None]
  assert seen and all(devices == jax.local_devices() for devices in seen)
  assert "peak_memory_mib" not in result.history
  assert not (tmp_path / "plots" / "peak_memory_mib.png").exists()
  assert (tmp_path / "plots" / "loss.png").exists()
  epoch_lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch ")]
  assert len(epoch_lines) == 2
  assert all(l.endswith("samples/s, 1,234 MiB peak)") for l in epoch_lines), epoch_lines


def test_nothing_compiles_inside_the_first_epochs_time(tmp_path):
  # epoch_seconds and samples/s must not hold compilation (compile_seconds does): the
  # epoch order's permutation, and a mid-epoch save's finiteness check and checksums,
  # compiled on first use inside epoch 1 (its samples/s ~100x under epoch 2's).
  compiles, armed = [], [False]

  def listener(event, seconds, **kwargs):
    if armed[0] and "backend_compile" in event:
      compiles.append(event)

  class Disarm(jdl.train.callbacks.Callback):
    def on_steps_end(self, trainer, step, num_steps):
      if step >= trainer.steps_per_epoch:
        armed[0] = False

  # 21 steps an epoch in blocks of 10: the last block is 1 step (padded, in scan mode).
  trainer = loop.Trainer(make_config(num_epochs=1, batch_size=60, checkpoint_every_steps=10),
                         tmp_path, quiet=True, callbacks=[Disarm()])
  warm_up = trainer._warm_up

  def warm_up_then_arm():
    seconds = warm_up()
    armed[0] = True
    return seconds

  trainer._warm_up = warm_up_then_arm
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    trainer.fit()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert trainer.steps_per_epoch == 21 and trainer.chunk == 10
  assert {10, 20} <= set(jdl.checkpoint.step_numbers(tmp_path / "checkpoints"))
  assert compiles == []


def test_a_nan_validation_loss_stops_the_run_and_says_so_even_when_quiet(tmp_path, capsys):
  # One validation input makes this model's outputs NaN: terminate_on_nan stops at
  # epoch 1's end. It was said only without quiet, and `jdl train` exited 0.
  import flax.linen as nn

  class NanOnLarge(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      out = nn.Dense(2)(x)
      return out * jnp.where(x[:, :1] > 100, jnp.nan, 1.0)

  rng = np.random.default_rng(0)
  x, xv = rng.normal(size=(40, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
  xv[3, 0] = 1000.0
  label = lambda a: (a[:, 1] > 0).astype(np.int32)  # noqa: E731
  ds = jdl.data.Dataset(x, label(x), x[:8], label(x[:8]), 2, "classification", "toy", (4,),
                        x_val=xv, y_val=label(xv))
  # Early stopping (it runs first) with patience 1 formatted its best, None, and raised.
  for patience in (None, 1):
    over = {} if patience is None else dict(early_stopping__enabled=True,
                                            early_stopping__patience=patience)
    config = make_config(normalize="none", batch_size=10, num_epochs=3, **over)
    workdir = tmp_path / str(patience)
    result = jdl.fit(config, workdir, dataset=ds, model=NanOnLarge(), quiet=True)
    err = capsys.readouterr().err
    assert result.trainer.nan_detected and result.test_metrics == {}
    # Said on the result too (a script saw a FitResult like a finished run's).
    assert result.stopped == "non-finite" and repr(result).endswith(", stopped='non-finite')")
    assert int(result.state.step) == 4
    assert "jdl: error: val_loss is nan at epoch 1 (step 4): training stopped" in err, err
    assert jdl.checkpoint.step_numbers(workdir / "checkpoints") == []


def test_tensorboard_off_leaves_no_tb_folder(tmp_path):
  jdl.fit(make_config(num_epochs=1, tensorboard=False), tmp_path, quiet=True)
  assert not (tmp_path / "tb").exists() and (tmp_path / "plots").is_dir()


def test_eval_metrics_are_exact_with_a_padded_last_batch():
  trainer = loop.Trainer(make_config(eval_batch_size=7), quiet=True)
  padded = trainer.evaluate_split(trainer.data.test)  # 360 = 51 * 7 + 3.
  logits = trainer.predict_normalized(trainer.data.test.x)
  labels = np.asarray(trainer.data.test.y)
  assert padded["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels), abs=1e-12)
  log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float64 if jax.config.x64_enabled
                                             else jnp.float32))
  ref_loss = -np.mean(np.take_along_axis(np.asarray(log_probs), labels[:, None], 1))
  assert padded["loss"] == pytest.approx(ref_loss, rel=1e-5)


def test_each_epoch_has_its_own_order_and_the_leftover_examples_rotate():
  # The indices the loop trains on: within an epoch each example at most once, a new
  # order each epoch (seeded: the same for a new trainer), and the examples that do
  # not fill a last batch differ between epochs, so every one is trained on.
  trainer = loop.Trainer(make_config(batch_size=64), quiet=True)
  n, spe = trainer.data.train.size, trainer.steps_per_epoch
  assert n % 64 and spe == n // 64
  epochs = [np.asarray(trainer.feed.block(e, 0, spe)[2]).ravel() for e in range(8)]
  for idx in epochs:
    assert len(set(idx.tolist())) == len(idx) == spe * 64 and idx.min() >= 0 and idx.max() < n
  assert len({tuple(idx.tolist()) for idx in epochs}) == 8
  assert len({frozenset(range(n)) - frozenset(idx.tolist()) for idx in epochs}) == 8
  assert set(np.concatenate(epochs).tolist()) == set(range(n))
  again = loop.Trainer(make_config(batch_size=64), quiet=True)
  np.testing.assert_array_equal(np.asarray(again.feed.block(3, 0, spe)[2]).ravel(), epochs[3])


def test_evaluation_runs_the_model_in_inference_mode():
  # Dropout and batch norm: in training mode the eval step would drop units and use
  # the batch's statistics. The reference is the model applied with train=False to
  # the whole split at once (running statistics, no dropout), after an epoch that
  # moved the running statistics away from their initial values.
  config = small_digits_cnn(eval_batch_size=7)
  with config.unlocked():
    config.model.batch_norm = True
  trainer = loop.Trainer(config, quiet=True)
  trainer.fit()
  x, labels = trainer.data.test.x, np.asarray(trainer.data.test.y)
  logits = np.asarray(trainer.state.apply_fn(trainer.state.variables, jnp.asarray(x),
                                             train=False))
  got = trainer.evaluate_split(trainer.data.test)
  assert got["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels), abs=1e-12)
  log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits)))
  ref_loss = -np.mean(np.take_along_axis(log_probs, labels[:, None], 1))
  assert got["loss"] == pytest.approx(ref_loss, rel=1e-5)


def test_early_stopping_stops_and_restores_best(tmp_path, capsys):
  # A learning rate this large makes the validation loss worsen quickly.
  config = make_config(num_epochs=30, optimizer__learning_rate=0.5, optimizer__name="sgd",
                       early_stopping__enabled=True, early_stopping__patience=1,
                       early_stopping__restore_best=True, print_every_epochs=100)
  result = jdl.fit(config, tmp_path)
  epochs = len(result.history["val_loss"])
  assert epochs < 30
  best = int(np.nanargmin(result.history["val_loss"]))
  assert epochs - 1 - best == 1  # Stopped after `patience` epochs without improvement.
  # The state is the best epoch's: its validation loss, evaluated again, is the logged one.
  trainer = result.trainer
  assert int(result.state.step) == (best + 1) * trainer.steps_per_epoch
  assert trainer.evaluate_split(trainer.data.val)["loss"] == pytest.approx(
      result.history["val_loss"][best], rel=1e-6)
  # The last epoch's line is shown off the print cadence, and the summary tells the
  # restored step from the last one trained.
  out = capsys.readouterr().out
  assert f"epoch {epochs}/30  step {epochs * trainer.steps_per_epoch}" in out, out
  assert (f"final step {int(result.state.step)} (restored; trained to step "
          f"{epochs * trainer.steps_per_epoch})") in (tmp_path / "summary.txt").read_text()


def test_the_best_epoch_is_saved_whatever_the_checkpoint_cadence(tmp_path):
  # digits_mlp at a high learning rate: val_loss is lowest at epoch 1, which a save
  # every 2 epochs skipped. Re-running the finished run must give the same state.
  config = jdl.load_config("digits_mlp")
  config.unlock()
  config.update(dict(num_epochs=30, checkpoint_every_epochs=2, tensorboard=False,
                     plots=False))
  config.optimizer.learning_rate = 3e-2
  config.early_stopping.update(dict(enabled=True, patience=2))
  config.lock()
  first = jdl.fit(config, tmp_path, quiet=True)
  assert int(np.argmin(first.history["val_loss"])) % 2 == 0  # An odd epoch (1, 3, ...).
  again = jdl.fit(config, tmp_path, quiet=True)
  chex.assert_trees_all_equal(jax.device_get(first.state.params),
                              jax.device_get(again.state.params))
  assert again.test_metrics == first.test_metrics


def test_a_longer_run_on_resume_warns_that_the_cosine_schedule_changes(tmp_path, capsys):
  jdl.fit(make_config(num_epochs=2, schedule__name="cosine"), tmp_path, quiet=True)
  capsys.readouterr()
  jdl.fit(make_config(num_epochs=3, schedule__name="cosine"), tmp_path, quiet=True)
  warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
  assert len(warnings) == 1 and "num_epochs is 3, the run had 2" in warnings[0]
  jdl.fit(make_config(num_epochs=3, schedule__name="cosine"), tmp_path, quiet=True)
  assert "warning" not in capsys.readouterr().err  # Same length: nothing to say.


def test_predict_on_no_examples_gives_no_outputs():
  result = jdl.fit(make_config(num_epochs=1), quiet=True)
  out = jdl.predict(result, np.zeros((0, 8, 8, 1), np.float32))
  assert out.shape == (0, 10) and out.dtype == np.float32


def test_early_stoppings_best_epoch_survives_pruning_with_min_delta(tmp_path):
  # With min_delta, early stopping's best epoch (here 7) is not the lowest val_loss
  # (epochs 8-10 improve by less than 0.02), so neither "latest 1" nor "best by
  # val_loss" keeps it. Re-running the finished run must still restore it.
  config = jdl.load_config("digits_mlp")
  config.unlock()
  config.update(dict(num_epochs=30, keep_checkpoints=1, tensorboard=False, plots=False))
  config.early_stopping.update(dict(enabled=True, patience=2, min_delta=0.02))
  config.lock()
  first = jdl.fit(config, tmp_path, quiet=True)
  losses, es_best = first.history["val_loss"], 0
  for i, loss in enumerate(losses):
    es_best = i if loss < losses[es_best] - 0.02 else es_best
  assert es_best != int(np.argmin(losses))  # The case in point.
  again = jdl.fit(config, tmp_path, quiet=True)
  chex.assert_trees_all_equal(jax.device_get(first.state.params),
                              jax.device_get(again.state.params))
  assert again.test_metrics == first.test_metrics
  # evaluate and load_run read the state the run ended with, not the lowest val_loss.
  assert jdl.evaluate(None, tmp_path) == pytest.approx(first.test_metrics)
  run = jdl.load_run(tmp_path)
  chex.assert_trees_all_equal(jax.device_get(run.state.params),
                              jax.device_get(first.state.params))
  # A reopened run writes nowhere: its repr names the workdir it read.
  assert repr(run) == (f"Trainer(dataset='digits', model='mlp', loaded_from='{tmp_path}', "
                       f"step={int(first.state.step)})")
  assert repr(first.trainer).startswith(f"Trainer(dataset='digits', model='mlp', "
                                        f"workdir='{tmp_path}', step=")


def test_zero_epochs_saves_the_initial_state_and_later_training_continues_it(tmp_path):
  zero = jdl.fit(make_config(num_epochs=0), tmp_path / "a", quiet=True)
  assert jdl.checkpoint.Checkpointer(tmp_path / "a" / "checkpoints").steps() == [0]
  assert set(zero.test_metrics) >= {"accuracy", "loss"}
  resumed = jdl.fit(make_config(num_epochs=2), tmp_path / "a", quiet=True)
  fresh = jdl.fit(make_config(num_epochs=2), tmp_path / "b", quiet=True)
  chex.assert_trees_all_equal(jax.device_get(resumed.state.params),
                              jax.device_get(fresh.state.params))
  assert resumed.history == fresh.history
  # A cosine schedule needs a length: zero epochs still build one, also when the
  # warm-up is longer than an epoch (it was refused as "leaving none of the run").
  for warmup in (0.5, 3):
    cosine = jdl.fit(make_config(num_epochs=0, schedule__name="warmup_cosine",
                                 schedule__warmup_epochs=warmup),
                     tmp_path / f"c{warmup}", quiet=True)
    assert int(cosine.state.step) == 0


def test_two_callbacks_of_one_class_resume_their_own_state(tmp_path):
  class Counter(jdl.train.callbacks.Callback):
    def __init__(self, by):
      self.by, self.total = by, 0

    def on_epoch_end(self, trainer, epoch, logs):
      self.total += self.by

    def state_dict(self):
      return {"total": self.total}

    def load_state_dict(self, state):
      self.total = state["total"]

  jdl.fit(make_config(num_epochs=2), tmp_path, quiet=True, callbacks=[Counter(1), Counter(10)])
  again = [Counter(1), Counter(10)]
  jdl.fit(make_config(num_epochs=3), tmp_path, quiet=True, callbacks=again)
  assert [c.total for c in again] == [3, 30]

  class KeyedCounter(Counter):  # Its key names its setting, so its place may change.
    @property
    def state_key(self):
      return f"KeyedCounter(by={self.by})"

  jdl.fit(make_config(num_epochs=2), tmp_path / "keyed", quiet=True,
          callbacks=[KeyedCounter(1), KeyedCounter(10)])
  swapped = [KeyedCounter(10), KeyedCounter(1)]
  jdl.fit(make_config(num_epochs=3), tmp_path / "keyed", quiet=True, callbacks=swapped)
  assert [c.total for c in swapped] == [30, 3]


def test_a_callback_that_cannot_load_its_state_moves_no_checkpoint_aside(tmp_path):
  # Its error was taken for a damaged checkpoint: every step was moved aside, and
  # the run could not resume even with the callback fixed.
  class Counter(jdl.train.callbacks.Callback):
    def __init__(self, fail=False):
      self.fail, self.n = fail, 0

    def on_epoch_end(self, trainer, epoch, logs):
      self.n += 1

    def state_dict(self):
      return {"n": self.n}

    def load_state_dict(self, state):
      if self.fail:
        raise KeyError("count")
      self.n = state["n"]

  jdl.fit(make_config(num_epochs=2), tmp_path, quiet=True, callbacks=[Counter()])
  files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
  with pytest.raises(jdl.JdlError, match=r"callback Counter could not load its state from "
                     r"the checkpoint at step \d+ \(KeyError: 'count'\)"):
    jdl.fit(make_config(num_epochs=3), tmp_path, quiet=True, callbacks=[Counter(fail=True)])
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == files
  fixed = Counter()
  jdl.fit(make_config(num_epochs=3), tmp_path, quiet=True, callbacks=[fixed])
  assert fixed.n == 3


def test_a_stop_request_at_an_epochs_end_saves_between_checkpoint_epochs(tmp_path):
  import os
  import signal

  class TermAt(jdl.train.callbacks.Callback):
    def on_steps_end(self, trainer, step, num_steps):
      if step == 2 * trainer.steps_per_epoch:  # The last block of epoch 2.
        os.kill(os.getpid(), signal.SIGTERM)

  config = make_config(num_epochs=6, checkpoint_every_epochs=3, validation_split=0.0)
  stopped = jdl.fit(config, tmp_path / "a", quiet=True, callbacks=[TermAt()])
  spe = stopped.trainer.steps_per_epoch
  assert stopped.trainer.preempted == stopped.stopped == "SIGTERM"
  assert stopped.trainer.step == 2 * spe
  assert jdl.checkpoint.Checkpointer(tmp_path / "a" / "checkpoints").steps() == [2 * spe]
  resumed = jdl.fit(config, tmp_path / "a", quiet=True)
  full = jdl.fit(config, tmp_path / "b", quiet=True)
  chex.assert_trees_all_equal(jax.device_get(resumed.state.params),
                              jax.device_get(full.state.params))


@pytest.mark.parametrize("when", ["last step", "test evaluation"])
def test_a_stop_request_after_the_last_step_lets_the_run_finish(tmp_path, capfd, when):
  # It printed "stopping after the current step and saving a checkpoint" and nothing
  # more, then finished and exited 0 (found by a reproducibility audit): a signal with
  # or after the last step now says that the run finishes, as a re-run would.
  import os
  import signal

  class Term(jdl.train.callbacks.Callback):
    def on_steps_end(self, trainer, step, num_steps):
      if when == "last step" and step == trainer.num_epochs * trainer.steps_per_epoch:
        os.kill(os.getpid(), signal.SIGTERM)

    def on_train_end(self, trainer):  # Before the test split is evaluated.
      if when == "test evaluation":
        os.kill(os.getpid(), signal.SIGTERM)

  result = jdl.fit(make_config(num_epochs=2), tmp_path, quiet=True, callbacks=[Term()])
  err = capfd.readouterr().err
  assert result.trainer.preempted is result.stopped is None and "accuracy" in result.test_metrics
  if when == "last step":  # The handler cannot know that the step was the last.
    assert err.index("jdl: SIGTERM received; stopping after the") < err.index(
        "jdl: SIGTERM came with the last step: finishing the run"), err
  else:
    assert "stopping after the" not in err, err
    assert ("jdl: SIGTERM received; training is over: finishing the run (its last "
            "checkpoint, the test evaluation) (Ctrl-C again to abort)") in err, err
  records = (tmp_path / "metrics.jsonl").read_text()
  assert '"split": "test"' in records


def test_the_loop_runs_at_most_one_block_ahead_of_the_device(tmp_path):
  # Without a sync (nonfinite_check='step') the loop dispatched blocks as fast as
  # Python went: an epoch ahead, and a stop request then waited for all of them (a
  # preemption's grace period could end first). When block k's on_steps_end runs,
  # block k - 1 is now done.
  class Watch(jdl.train.callbacks.Callback):
    def __init__(self):
      self.token, self.checked = None, 0

    def on_steps_end(self, trainer, step, num_steps):
      if self.token is not None and step % trainer.steps_per_epoch != num_steps:
        assert self.token.is_ready(), step  # The previous block's end.
        self.checked += 1
      self.token = trainer._in_flight  # Its step count, once this block is done.

  watch = Watch()
  result = jdl.fit(make_config(num_epochs=2, scan_chunk=2, nonfinite_check="step",
                               epoch_mode="scan"), quiet=True, callbacks=[watch])
  assert watch.checked >= result.trainer.num_epochs * (result.trainer.steps_per_epoch // 2 - 2)


@pytest.mark.parametrize("static", [False, True])
def test_loop_steps_runs_the_rows_before_the_padding_and_no_more(static):
  # static=True (a GPU's loop) runs the padding rows' steps too and discards them.
  from jdl.train import steps as steps_lib
  loop = functools.partial(steps_lib.loop_steps, static=static)
  idx = jnp.array([[3, 1], [2, 2], [5, 0], [-1, -1], [-1, -1]], jnp.int32)
  body = lambda c, row: ((c[0] + row.sum(), c[1] + 1), None)  # noqa: E731
  total, count = jax.jit(lambda i: loop(body, (0, 0), i))(idx)
  assert (int(total), int(count)) == (13, 3)
  tree = {"i": idx[:, 0], "w": jnp.arange(5.0)}  # A tree: the first leaf decides.
  total, count = loop(lambda c, r: ((c[0] + r["w"], c[1] + 1), None), (0.0, 0), tree)
  assert (float(total), int(count)) == (3.0, 3)
  # A typed PRNG key in the carry (the state's) advances by the steps alone; one row
  # of steps is padded to two (the one-step block).
  key = jax.random.key(3)
  for rows, steps in ((idx, 3), (idx[:1], 1), (idx[3:], 0)):
    out = loop(lambda k, r: (jax.random.fold_in(k, r[0]), None), key, rows)
    expected = key
    for r in np.asarray(rows[:steps, 0]):
      expected = jax.random.fold_in(expected, r)
    np.testing.assert_array_equal(jax.random.key_data(out), jax.random.key_data(expected))


@pytest.mark.full_opt
def test_static_loops_give_the_bits_of_the_while_loop(monkeypatch):
  # On a GPU a block is a scan of known length whose padding rows' steps are discarded
  # (strategy.static_loops); on the CPU here it must give the same bits, with dropout
  # and a padded last block (20 steps an epoch in blocks of 7), as the while loop.
  from jdl.train import strategy
  config = make_config(checkpoint_every_steps=7, model__dropout_rate=0.3)
  loop = jdl.fit(config, quiet=True)
  monkeypatch.setattr(strategy, "static_loops", lambda backend=None: True)
  scan = jdl.fit(config, quiet=True)
  assert scan.trainer.static_loops and not loop.trainer.static_loops
  assert scan.trainer.padded_blocks and list(scan.trainer._blocks) == [7]
  assert int(scan.state.step) == 40
  chex.assert_trees_all_equal(_params(scan), _params(loop))
  assert scan.history == loop.history


@pytest.mark.full_opt
@pytest.mark.parametrize("make, every", [
    (make_config, 7),
    # A CNN resumed with a first block of one step: XLA:CPU fuses a step compiled
    # alone differently from one in a loop body (1e-9 apart before loop_steps).
    (small_digits_cnn, 9)])
def test_resume_with_another_block_size_runs_in_the_one_compiled_block(tmp_path, make, every):
  # Saved at step `every` with blocks of `every`; resumed with blocks of 10, so the
  # first block is 10 - every steps: it runs in the block of 10, padded.
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(make(num_epochs=2, checkpoint_every_steps=every), tmp_path / "a",
            quiet=True, callbacks=[_Crash(at_step=every + 1)])
  resumed = jdl.fit(make(num_epochs=2, checkpoint_every_steps=10), tmp_path / "a", quiet=True)
  full = jdl.fit(make(num_epochs=2, checkpoint_every_steps=10), tmp_path / "b", quiet=True)
  assert resumed.trainer.epoch_mode == "scan" and list(resumed.trainer._blocks) == [10]
  chex.assert_trees_all_equal(jax.device_get((resumed.state.params, resumed.state.opt_state)),
                              jax.device_get((full.state.params, full.state.opt_state)))


@pytest.mark.full_opt
def test_blocks_of_every_length_share_one_compiled_block_and_its_bits():
  # 20 steps an epoch in blocks of 7: 7, 7 and a last block of 6, padded to 7.
  sevens = jdl.fit(make_config(checkpoint_every_steps=7), quiet=True)
  assert sevens.trainer.padded_blocks and list(sevens.trainer._blocks) == [7]
  assert int(sevens.state.step) == 40
  whole = jdl.fit(make_config(), quiet=True)  # Blocks of 20.
  assert list(whole.trainer._blocks) == [20]
  chex.assert_trees_all_equal(_params(sevens), _params(whole))
  assert sevens.history == whole.history


def test_resume_refuses_a_run_whose_epochs_changed_length(tmp_path):
  # More training data (a grown npy_dir, say) makes more batches an epoch: step 6 of
  # the old epochs is another position of other epochs, so there is no exact resume.
  import dataclasses
  digits = jdl.data.load_dataset("digits", test_split=0.2, seed=0)
  small = dataclasses.replace(digits, x_train=digits.x_train[:800],
                              y_train=digits.y_train[:800])
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(make_config(num_epochs=2, checkpoint_every_steps=3), tmp_path, quiet=True,
            dataset=small, callbacks=[_Crash(at_step=7)])
  def files():
    return {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

  before = files()
  with pytest.raises(jdl.JdlError, match=r"trained on other data: its arrays"):
    jdl.fit(make_config(num_epochs=2, checkpoint_every_steps=3), tmp_path, quiet=True,
            dataset=digits)
  assert files() == before  # Nothing moved aside as damaged, nothing rewritten.
  # A checkpoint without the data's fingerprint (an older jdl's) is still refused: its
  # epochs had another length.
  import json
  for path in tmp_path.glob("checkpoints/*/meta/metadata"):
    meta = json.loads(path.read_text())
    del meta["data"]
    path.write_text(json.dumps(meta))
  before = files()
  with pytest.raises(jdl.JdlError, match=r"written with \d+ steps per epoch, but this run has"):
    jdl.fit(make_config(num_epochs=2, checkpoint_every_steps=3), tmp_path, quiet=True,
            dataset=digits)
  assert files() == before


def test_a_second_fit_without_a_workdir_continues_from_the_trainer_state():
  config = make_config(num_epochs=2)
  trainer = jdl.Trainer(config, quiet=True)
  first = trainer.fit()
  history = {k: list(v) for k, v in first.history.items()}
  # The Trainer holds a read-only copy of the config it was built from: its schedule
  # and optimizer were made from that one, so neither config's later edits reach it.
  config.num_epochs = 3
  with pytest.raises(AttributeError, match="immutable"):
    trainer.config.num_epochs = 3
  with pytest.raises(AttributeError, match="immutable"):
    trainer.config.optimizer.learning_rate = 1.0
  again = trainer.fit()  # Already at num_epochs: nothing to train, no empty epoch.
  assert again.history == history and not trainer.nan_detected
  assert int(again.state.step) == 2 * trainer.steps_per_epoch
  assert trainer.config.num_epochs == 2 and config.num_epochs == 3


@pytest.mark.parametrize("mode", ["step", "scan"])
def test_a_callback_stops_training_after_the_block_in_flight(mode):
  class StopAtTen(jdl.train.callbacks.Callback):
    def on_steps_end(self, trainer, step, num_steps):
      if step >= 10:
        trainer.stop_training = True

  result = jdl.fit(make_config(num_epochs=3, epoch_mode=mode, scan_chunk=5), quiet=True,
                   callbacks=[StopAtTen()])
  # Step 10 of a 20-step epoch: a partial epoch is no epoch of the history.
  assert int(result.state.step) == 10 and result.history == {} and result.test_metrics == {}


class _StopAt(jdl.train.callbacks.Callback):
  def __init__(self, step):
    self.step = step

  def on_steps_end(self, trainer, step, num_steps):
    if step >= self.step:
      trainer.stop_training = True


class _StopOnceAt(_StopAt):
  """Stops the first fit() at ``step``; a second fit() of the trainer runs on."""

  def on_steps_end(self, trainer, step, num_steps):
    if self.step and step >= self.step:
      trainer.stop_training, self.step = True, 0


def test_a_callback_stopping_mid_epoch_leaves_a_run_that_resumes_exactly(tmp_path):
  # It was logged as a whole epoch, its checkpoint held emptied sums, and the re-run
  # logged that epoch twice with the sums of its second part only.
  config = make_config(num_epochs=3, scan_chunk=5, checkpoint_every_epochs=1)
  full = jdl.fit(config, tmp_path / "full", quiet=True)
  stopped = jdl.fit(config, tmp_path / "run", quiet=True, callbacks=[_StopAt(30)])
  assert int(stopped.state.step) == 30 and stopped.history["loss"] == full.history["loss"][:1]
  assert 30 in jdl.checkpoint.step_numbers(tmp_path / "run" / "checkpoints")
  resumed = jdl.fit(config, tmp_path / "run", quiet=True)
  chex.assert_trees_all_equal(jax.device_get(resumed.state.params),
                              jax.device_get(full.state.params))
  assert resumed.history == full.history and resumed.test_metrics == full.test_metrics
  lines = lambda d: [(r["split"], r["epoch"]) for r in map(  # noqa: E731
      json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())]
  assert lines("run") == lines("full")
  # Without a workdir, a second fit() of the trainer continues the epoch, its sums too.
  trainer = loop.Trainer(config, None, quiet=True, callbacks=[_StopOnceAt(30)])
  assert trainer.fit().history["loss"] == full.history["loss"][:1]
  assert trainer.fit().history == full.history


def test_a_second_fit_without_a_workdir_continues_from_the_state_reached_not_the_best():
  # restore_best put the best epoch's state back, and a second fit() of the trainer
  # trained again from it: epochs 2-3 twice in the history, or a stopped epoch lost.
  config = make_config(num_epochs=3, scan_chunk=5, early_stopping__enabled=True,
                       early_stopping__mode="max", early_stopping__patience=10)
  full = loop.Trainer(config, None, quiet=True)  # Best by the highest val_loss: epoch 1
  result = full.fit()  # (asserted below), so a later state is always put back.
  assert full.step == full.steps_per_epoch and full.trained_to == 3 * full.steps_per_epoch
  again = full.fit()
  assert again.history == result.history and full.step == full.steps_per_epoch
  chex.assert_trees_all_equal(jax.device_get(again.state.params),
                              jax.device_get(result.state.params))

  stopped = loop.Trainer(config, None, quiet=True, callbacks=[_StopOnceAt(30)])
  assert stopped.fit().history["loss"] == result.history["loss"][:1]
  assert stopped.step == stopped.steps_per_epoch  # The best epoch, put back at the stop.
  assert stopped.fit().history == result.history and stopped.trained_to == full.trained_to
  chex.assert_trees_all_equal(jax.device_get(stopped.state.params),
                              jax.device_get(result.state.params))


def test_blocks_end_on_the_mid_epoch_checkpoint_steps(tmp_path):
  # An explicit scan_chunk of 7 (or the epoch, 20) saved at steps 14, 28, 40, ... (or
  # only at epoch ends) instead of every 10 steps.
  for chunk in (7, 20):
    config = make_config(num_epochs=2, scan_chunk=chunk, checkpoint_every_steps=10,
                         keep_checkpoints=10)
    result = jdl.fit(config, tmp_path / str(chunk), quiet=True)
    assert 10 % result.trainer.chunk == 0
    assert jdl.checkpoint.step_numbers(tmp_path / str(chunk) / "checkpoints") == [10, 20, 30, 40]
  # A cadence of an epoch or more saves at epoch ends only: no block is shortened for it.
  assert loop.Trainer(make_config(scan_chunk=20, checkpoint_every_steps=30), quiet=True).chunk == 20


def test_a_resumed_run_hides_the_tensorboard_points_it_writes_again(tmp_path):
  import struct
  from tensorboardX.proto import event_pb2
  config = make_config(num_epochs=3, tensorboard=True, checkpoint_every_epochs=2)
  with pytest.raises(KeyboardInterrupt):  # Killed in epoch 3, after epoch 2's save (40).
    jdl.fit(config, tmp_path, quiet=True, callbacks=[_Crash(at_step=45)])
  jdl.fit(config, tmp_path, quiet=True)
  files = sorted((tmp_path / "tb").glob("events.out.tfevents.*"))
  # Two files (the resumed one named by its step), even within the same second.
  assert len(files) == 2 and files[1].name.endswith(".from_step_40"), files

  def events(path):
    data, out = path.read_bytes(), []
    while data:
      (n,) = struct.unpack("<Q", data[:8])
      event = event_pb2.Event()
      event.ParseFromString(data[12:12 + n])
      out.append(event)
      data = data[16 + n:]
    return out

  # TensorBoard drops earlier points from the step of a START session log on.
  starts = [e.step for e in events(files[1]) if e.HasField("session_log")
            and e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [41]


def test_reduce_on_plateau_lowers_the_learning_rate():
  config = make_config(num_epochs=6, optimizer__learning_rate=1e-9,
                       reduce_on_plateau__enabled=True, reduce_on_plateau__patience=1,
                       reduce_on_plateau__factor=0.5, reduce_on_plateau__atol=1e-3)
  result = jdl.fit(config, quiet=True)
  lrs = result.history["learning_rate"]
  assert lrs[0] == pytest.approx(1e-9)
  assert lrs[-1] < lrs[0] / 3  # At least two halvings on a flat validation loss.
  # The plateau's best value starts at +inf: no reason to re-run the first epoch's
  # blocks in search of a NaN (they were, each of them).
  assert result.trainer.nonfinite_check == "block"
  assert not result.trainer._replay_blocks


@pytest.mark.parametrize("mode, reduced", [("min", False), ("max", True)])
def test_reduce_on_plateau_follows_the_monitored_metric(mode, reduced):
  # The validation loss falls every epoch here: watched as a loss ("min") it never
  # plateaus and the rate stays; watched for a rise ("max") every epoch is a plateau.
  config = make_config(num_epochs=4, optimizer__name="sgd", optimizer__learning_rate=0.5,
                       reduce_on_plateau__enabled=True, reduce_on_plateau__patience=1,
                       reduce_on_plateau__monitor="val_loss", reduce_on_plateau__mode=mode)
  result = jdl.fit(config, quiet=True)
  assert np.all(np.diff(result.history["val_loss"]) < 0), result.history["val_loss"]
  lrs = result.history["learning_rate"]
  assert (lrs[-1] < lrs[0] / 3) == reduced, lrs
  if not reduced:
    np.testing.assert_allclose(lrs, 0.5, rtol=1e-6)


def test_the_logged_learning_rate_is_the_rate_each_epoch_trained_with():
  # A step schedule halving at each epoch's end: epoch e's updates all take
  # 0.01 * 0.5 ** (e - 1); the next epoch's rate is not logged against this one.
  config = make_config(num_epochs=3, optimizer__name="sgd", optimizer__learning_rate=0.01,
                       schedule__name="step", schedule__decay_every_epochs=1.0,
                       schedule__factor=0.5)
  result = jdl.fit(config, quiet=True)
  np.testing.assert_allclose(result.history["learning_rate"], [0.01, 0.005, 0.0025],
                             rtol=1e-6)


def _cosine(count, total, lr):
  return lr * 0.5 * (1 + np.cos(np.pi * min(count, total) / total))


def test_cosine_spans_the_run_when_accumulation_does_not_divide_the_epoch():
  # 20 train steps an epoch, an update every 3 (optax.MultiSteps counts across epoch
  # ends): floor(3 * 20 / 3) = 20 updates in 3 epochs, 6, 13 and 20 by each epoch's end.
  config = make_config(num_epochs=3, optimizer__accumulate_steps=3, schedule__name="cosine",
                       optimizer__name="sgd", optimizer__learning_rate=0.01)
  result = jdl.fit(config, quiet=True)
  assert result.trainer.steps_per_epoch == 20
  assert int(jdl.optim.update_count(result.state.opt_state)) == 20
  # The learning rate of each epoch's last update (update c - 1 of c), logged at its end.
  np.testing.assert_allclose(result.history["learning_rate"],
                             [_cosine(c - 1, 20, 0.01) for c in (6, 13, 20)], rtol=1e-5,
                             atol=1e-9)


def test_gan_generator_schedule_counts_its_updates_across_epochs():
  from test_generative_train import gan_config
  # The generator updates at every third train step of 20 an epoch: 6, 13, 20 updates.
  config = gan_config(num_epochs=3, generative__d_steps=3, schedule__name="cosine",
                      optimizer__learning_rate=0.01)
  result = jdl.fit(config, quiet=True)
  assert int(jdl.optim.update_count(result.state.opt_state["generator"])) == 20
  np.testing.assert_allclose(result.history["learning_rate"],
                             [_cosine(c - 1, 20, 0.01) for c in (6, 13, 20)], rtol=1e-5,
                             atol=1e-9)


def test_nonfinite_stop_names_the_step_and_writes_no_checkpoint(tmp_path):
  config = make_config(num_epochs=3, optimizer__name="sgd", optimizer__learning_rate=1e12,
                       normalize="none")
  with pytest.raises(jdl.JdlError, match=r"non-finite value at step \d+ \(epoch 1\): "
                     r"(the loss|the gradient of '.*') is NaN or Inf"):
    jdl.fit(config, tmp_path, quiet=True)
  assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


class _PoisonedMLP(flax.linen.Module):
  """An MLP whose output is NaN for any batch holding an input above 100."""

  @flax.linen.compact
  def __call__(self, x, *, train=False):
    x = x.reshape(x.shape[0], -1)
    y = flax.linen.Dense(2)(flax.linen.relu(flax.linen.Dense(8)(x)))
    return y + jnp.where(jnp.max(x) > 100.0, jnp.nan, 0.0)


@jax.custom_vjp
def _nan_gradient_if(p, poisoned):
  """``p``, whose gradient is NaN where ``poisoned`` (a float flag) is 1."""
  return p


def _nan_gradient_if_fwd(p, poisoned):
  return p, poisoned


def _nan_gradient_if_bwd(poisoned, g):
  return jnp.where(poisoned > 0, jnp.nan, g), jnp.zeros_like(poisoned)


_nan_gradient_if.defvjp(_nan_gradient_if_fwd, _nan_gradient_if_bwd)


class _PoisonedGradientMLP(flax.linen.Module):
  """An MLP whose outputs stay finite, but the gradient of its scale ``p`` is NaN for
  any batch holding an input above 100."""

  @flax.linen.compact
  def __call__(self, x, *, train=False):
    x = x.reshape(x.shape[0], -1)
    y = flax.linen.Dense(2)(flax.linen.relu(flax.linen.Dense(8)(x)))
    p = self.param("p", flax.linen.initializers.ones, ())
    return y * _nan_gradient_if(p, (jnp.max(x) > 100.0).astype(jnp.float32))


def _poisoned_dataset():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 4)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  x[7, 0] = 1000.0  # One poisoned example: one step of the first epoch is poisoned.
  return jdl.data.Dataset(x_train=x, y_train=y, x_test=x[8:72], y_test=y[8:72],
                          num_classes=2, task="classification", name="poisoned",
                          input_shape=(4,))


@pytest.mark.parametrize("model,what", [(_PoisonedMLP, "the loss"),
                                        (_PoisonedGradientMLP, "the gradient of 'p'")])
def test_nonfinite_check_per_block_names_the_same_first_step_as_per_step(tmp_path, model, what):
  # Blocks of 4 steps and a checkpoint every 2 steps: the block check finds the
  # non-finite state after the poisoned block and re-runs it with every gradient
  # tested, so its error is the per-step check's, word for word.
  errors, trainers = {}, {}
  for mode in ("step", "block"):
    config = make_config(nonfinite_check=mode, normalize="none", batch_size=16,
                         validation_split=0.0, monitor="", epoch_mode="scan", scan_chunk=4,
                         checkpoint_every_steps=2, keep_checkpoints=100)
    trainer = trainers[mode] = loop.Trainer(config, tmp_path / mode, dataset=_poisoned_dataset(),
                                            model=model(), quiet=True)
    assert trainer.nonfinite_check == mode
    with pytest.raises(jdl.JdlError, match=rf"non-finite value at step \d+ \(epoch 1\): "
                       rf"{what} is NaN or Inf; the last checkpoint \(step \d+\) is intact") as e:
      trainer.fit()
    errors[mode] = str(e.value)
  assert errors["step"] == errors["block"]
  step = int(errors["step"].split("at step ")[1].split()[0])
  assert (step - 1) % 4 < 3  # Steps followed it in its block, the state went on as NaN.
  assert trainers["block"]._replay_blocks  # The failing block ran again, checked.
  assert not trainers["step"]._replay_blocks
  for mode in ("step", "block"):  # Every checkpoint written is finite.
    with jdl.checkpoint.Checkpointer(tmp_path / mode / "checkpoints") as c:
      for step in c.steps():
        params = jdl.checkpoint.restore_params(tmp_path / mode / "checkpoints", step=step)
        assert all(np.all(np.isfinite(v)) for v in params.values()), (mode, step)
  step_saves = _steps(tmp_path / "step")
  assert step_saves == _steps(tmp_path / "block") and step_saves


def _steps(workdir):
  with jdl.checkpoint.Checkpointer(workdir / "checkpoints") as c:
    return c.steps()


@pytest.mark.full_opt
@pytest.mark.parametrize("model", [{}, {"model__name": "cnn", "model__features": (8,),
                                        "model__dense": (16,)}])
def test_nonfinite_check_per_block_trains_bitwise_as_per_step(model):
  runs = {}
  for mode in ("step", "block"):
    result = jdl.fit(make_config(nonfinite_check=mode, scan_chunk=5, **model), quiet=True)
    assert result.trainer.nonfinite_check == mode
    runs[mode] = result
  chex.assert_trees_all_equal(runs["step"].state.params, runs["block"].state.params)
  chex.assert_trees_all_equal(runs["step"].state.opt_state, runs["block"].state.opt_state)
  assert runs["step"].history == runs["block"].history


def test_nonfinite_check_auto_is_per_block_for_stop_on_one_cpu_device():
  auto = loop.Trainer(make_config(), quiet=True).nonfinite_check
  assert auto == ("block" if jax.default_backend() == "cpu" else "step")
  assert loop.Trainer(make_config(nonfinite="skip"), quiet=True).nonfinite_check == "step"


def test_nonfinite_skip_skips_the_poisoned_updates(tmp_path, capsys):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 4)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  x[7, 0] = 1000.0  # One poisoned example: its batch gives a NaN loss each epoch.
  ds = jdl.data.Dataset(x_train=x, y_train=y, x_test=x[8:72], y_test=y[8:72],
                        num_classes=2, task="classification", name="poisoned",
                        input_shape=(4,))
  config = make_config(num_epochs=5, nonfinite="skip", normalize="none", batch_size=32,
                       validation_split=0.0, monitor="", optimizer__learning_rate=1e-2)
  result = jdl.fit(config, tmp_path, dataset=ds, model=_PoisonedMLP(), quiet=True)
  warnings = [l for l in capsys.readouterr().err.splitlines() if "skipped" in l]
  assert len(warnings) == 5 and "non-finite" in warnings[0]  # One line an epoch.
  assert all(np.isfinite(v) for v in result.history["loss"])
  for leaf in jax.tree.leaves(result.state.params):
    assert np.all(np.isfinite(leaf))
  assert result.test_metrics["accuracy"] > 0.8


def test_skip_stops_with_its_own_message_when_the_parameters_overflow():
  # Finite gradients at a huge learning rate overflow the parameters: skipping
  # non-finite updates cannot undo that, and the error must not advise skipping.
  config = make_config(num_epochs=2, nonfinite="skip", optimizer__name="sgd",
                       optimizer__learning_rate=1e38)
  with pytest.raises(jdl.NonFiniteError, match=r"^the parameters or optimizer state are NaN "
                     r"or Inf by step \d+ \(epoch 1\).*Skipping updates cannot undo that") as e:
    jdl.fit(config, quiet=True)
  assert "nonfinite=skip" not in str(e.value)


def test_a_resumed_run_does_not_repeat_its_warnings(tmp_path, capsys):
  # The counts behind two warnings (non-finite updates skipped this epoch; a layer's
  # update ratio bad for N periods in a row) are saved with each checkpoint: a run
  # crashed after a warning and resumed warns as the uninterrupted run does.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 4)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  x[7, 0] = 1000.0  # Its batch gives a NaN loss each epoch.
  ds = jdl.data.Dataset(x_train=x, y_train=y, x_test=x[8:72], y_test=y[8:72],
                        num_classes=2, task="classification", name="poisoned",
                        input_shape=(4,))
  config = make_config(num_epochs=3, nonfinite="skip", normalize="none", batch_size=32,
                       validation_split=0.0, monitor="", optimizer__name="sgd",
                       optimizer__learning_rate=50.0, scan_chunk=1, checkpoint_every_steps=1,
                       diagnostics__every_steps=2, diagnostics__warn_after_periods=2,
                       diagnostics__histograms=False)

  def warnings():
    return [l for l in capsys.readouterr().err.splitlines() if l.startswith("jdl: warning")]

  def run(workdir, crash=None):
    return jdl.fit(config, workdir, dataset=ds, model=_PoisonedMLP(), quiet=True,
                   callbacks=[_Crash(crash)] if crash else [])

  run(tmp_path / "whole")
  whole = warnings()
  skipped = [l for l in whole if "skipped" in l]
  ratios = [l for l in whole if "update/parameter ratio" in l]
  assert len(skipped) == 3 and ratios, whole  # One a run of bad periods, not one a period.
  # Crash two steps after the second epoch's skipped update, once its warning is out.
  first = int(re.search(r"the first at step (\d+)", skipped[1]).group(1))
  assert first % 8, first  # Mid-epoch: the epoch's warning comes at a checkpoint.
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path / "crashed", crash=first + 2)
  before = warnings()
  run(tmp_path / "crashed")
  after = [l for l in warnings() if "is unreadable" not in l]
  assert before + after == whole


def test_checkpoint_every_seconds_saves_mid_epoch_by_the_clock(tmp_path):
  def steps(seconds):
    config = make_config(checkpoint_every_seconds=seconds, scan_chunk=5, epoch_mode="scan",
                         keep_checkpoints=100, monitor="")
    result = jdl.fit(config, tmp_path / str(seconds), quiet=True)
    with jdl.checkpoint.Checkpointer(tmp_path / str(seconds) / "checkpoints") as c:
      return c.steps(), result.trainer.steps_per_epoch

  # Always due: a save after every block of 5 steps; the epoch ends save as ever.
  saved, spe = steps(1e-9)
  ends = [spe, 2 * spe]
  blocks = [e * spe + p for e in range(2) for p in range(5, spe, 5)]
  assert saved == sorted(blocks + ends)
  # Never due within this run: the epoch ends only.
  assert steps(1e9)[0] == ends


class _ShiftedClock:
  """The ``time`` module, with the named clocks ``offset`` seconds ahead (a test moves
  it to make work look long without sleeping)."""

  def __init__(self, *clocks: str):
    self.offset, self._clocks = 0.0, clocks

  def __getattr__(self, name):
    value = getattr(time, name)
    return (lambda: value() + self.offset) if name in self._clocks else value


def test_checkpoint_clock_starts_after_compilation(tmp_path, monkeypatch):
  # A compilation longer than the interval is no training to protect: the first
  # block after it is not saved (before the fix, step 5 was). The loop's clock is
  # made to jump 1000 s during the warm-up, against an interval of 100 s.
  clock = _ShiftedClock("monotonic")
  warm_up = loop.Trainer._warm_up

  def slow_warm_up(self):
    seconds = warm_up(self)
    clock.offset += 1000.0
    return seconds

  monkeypatch.setattr(loop, "time", clock)
  monkeypatch.setattr(resume, "time", clock)  # Where _save reads the clock.
  monkeypatch.setattr(loop.Trainer, "_warm_up", slow_warm_up)
  config = make_config(checkpoint_every_seconds=100.0, scan_chunk=5, epoch_mode="scan",
                       keep_checkpoints=100, monitor="", num_epochs=1)
  result = jdl.fit(config, tmp_path, quiet=True)
  with jdl.checkpoint.Checkpointer(tmp_path / "checkpoints") as c:
    assert c.steps() == [result.trainer.steps_per_epoch]


def test_evaluate_restores_the_best_checkpoint(tmp_path):
  # The "best" by the lowest validation accuracy: an early epoch's, so the best
  # checkpoint is not the latest (with the two equal, any step would pass).
  config = make_config(num_epochs=3, monitor="val_accuracy", monitor_mode="min")
  result = jdl.fit(config, tmp_path, quiet=True)
  trainer = result.trainer
  best = int(np.argmin(result.history["val_accuracy"]))
  assert best < 2, result.history["val_accuracy"]
  metrics = jdl.evaluate(config, tmp_path)
  assert set(metrics) == {"loss", "accuracy"}
  trainer.state = trainer.restore_step((best + 1) * trainer.steps_per_epoch)
  assert metrics["loss"] == pytest.approx(trainer.evaluate_split(trainer.data.test)["loss"],
                                          rel=1e-6)
  assert metrics["loss"] != pytest.approx(result.test_metrics["loss"], rel=1e-3)


def test_evaluate_reads_the_state_an_early_stopping_passed_to_fit_restored(tmp_path):
  # val_loss falls every epoch; watched as 'max' its best is epoch 1's, while
  # config.monitor's best checkpoint (val_loss, min) is the last: fit's test line
  # scored the restored epoch, and evaluate and load_run scored the last.
  config = make_config(num_epochs=3)
  es = jdl.EarlyStopping("val_loss", "max", patience=10)
  result = jdl.fit(config, tmp_path, callbacks=[es], quiet=True)
  assert es.best_step == result.trainer.steps_per_epoch
  assert int(result.state.step) == es.best_step
  metrics = jdl.evaluate(config, tmp_path)
  assert metrics["loss"] == pytest.approx(result.test_metrics["loss"], rel=1e-6)
  assert int(jdl.load_run(tmp_path).state.step) == es.best_step
  # Without restore_best, the run ends in its last state, and so does evaluate.
  other = tmp_path / "other"
  kept = jdl.fit(config, other, quiet=True,
                 callbacks=[jdl.EarlyStopping("val_loss", "max", patience=10,
                                              restore_best=False)])
  assert int(kept.state.step) == 3 * kept.trainer.steps_per_epoch
  assert jdl.evaluate(config, other)["loss"] == pytest.approx(kept.test_metrics["loss"],
                                                              rel=1e-6)


def test_reading_a_run_whose_step_is_pruned_meanwhile_reads_the_next(tmp_path, monkeypatch):
  # `jdl evaluate` beside a training run: keep_checkpoints removed the step it had
  # picked, and it said the healthy checkpoint was "unreadable".
  config = make_config(num_epochs=3, monitor="")
  jdl.fit(config, tmp_path, quiet=True)
  steps = jdl.checkpoint.Checkpointer(tmp_path / "checkpoints").steps()
  real, pruned = jdl.checkpoint.Checkpointer.restore_meta, []

  def pruning(self, step):
    if not pruned:  # The run prunes the latest step as it is read (as a later save would).
      pruned.append(step)
      shutil.rmtree(tmp_path / "checkpoints" / str(step))
    return real(self, step)

  monkeypatch.setattr(jdl.checkpoint.Checkpointer, "restore_meta", pruning)
  trainer = jdl.load_run(tmp_path)
  assert pruned == [steps[-1]]
  assert int(trainer.state.step) == steps[-2]


def test_the_recorded_best_epoch_is_the_checkpoint_kept_for_it(tmp_path):
  # Tied epochs: orbax keeps the later one's checkpoint; the record named the first.
  values = [0.5, 0.9, 0.9, 0.7]
  ck = jdl.checkpoint.Checkpointer(tmp_path, keep=1, best_metric="val_accuracy",
                                   best_mode="max", async_save=False)
  for epoch, v in enumerate(values, 1):
    ck.save(epoch, {"x": jnp.ones(2)}, meta={}, metrics={"val_accuracy": v})
  trainer = loop.Trainer(make_config(monitor="val_accuracy", monitor_mode="max"), quiet=True)
  trainer.history = {"val_accuracy": values}
  assert ck.best_step() == 3  # Steps are epochs here.
  assert trainer._best() == {"metric": "val_accuracy", "value": 0.9, "epoch": 3}
  # So a tied epoch is saved whatever the cadence (checkpoint_every_epochs > 1).
  trainer.history = {"val_accuracy": values[:3]}
  assert trainer._is_new_best("val_accuracy", "max")
  trainer.history = {"val_loss": [0.5, 0.4, 0.4, 0.41]}
  assert not trainer._is_new_best("val_loss", "min")
  ck.close()


def test_a_killed_saves_unfinished_folder_is_removed_by_the_next_run(tmp_path):
  jdl.fit(make_config(num_epochs=1), tmp_path, quiet=True)
  unfinished = tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-1795980000123"
  (unfinished / "tree").mkdir(parents=True)
  jdl.fit(make_config(num_epochs=2), tmp_path, quiet=True)
  assert not unfinished.exists()


def test_l2_penalty_shrinks_kernels():
  plain = jdl.fit(make_config(num_epochs=3), quiet=True)
  l2 = jdl.fit(make_config(num_epochs=3, regularization__l2=1e-2), quiet=True)
  norm = lambda r: sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(r.state.params))  # noqa: E731
  assert norm(l2) < norm(plain)


def test_regression_task_on_linear_data():
  config = make_config(dataset="linear", task="regression", loss="mse", metrics=("mse", "r2"),
                       model__hidden=(), batch_size=32, num_epochs=30, normalize="none",
                       optimizer__learning_rate=0.05, monitor="")
  result = jdl.fit(config, quiet=True)
  assert result.test_metrics["r2"] > 0.95


def test_explicit_validation_set_from_npz(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(120, 5)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int64)
  np.savez(tmp_path / "d.npz", x=x[:80], y=y[:80], x_val=x[80:100], y_val=y[80:100],
           x_test=x[100:], y_test=y[100:])
  config = make_config(dataset="npz", data_dir=str(tmp_path / "d.npz"), batch_size=16,
                       validation_split=0.5)
  trainer = loop.Trainer(config, quiet=True)
  assert (trainer.data.train.size, trainer.data.val.size, trainer.data.test.size) == (80, 20, 20)
  np.testing.assert_allclose(trainer.predict_normalized(trainer.data.val.x).shape, (20, 2))


def test_mixed_precision_computes_in_bfloat16_with_float32_state():
  config = make_config(num_epochs=3, mixed_precision=True, optimizer__learning_rate=3e-3)
  result = jdl.fit(config, quiet=True)
  trainer = result.trainer
  assert trainer.model.dtype == "bfloat16"
  for leaf in jax.tree.leaves((result.state.params, result.state.opt_state)):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  x = trainer.data.test.x[:4]
  assert trainer.model.apply(result.state.variables, x).dtype == jnp.bfloat16
  full = jdl.fit(make_config(num_epochs=3, optimizer__learning_rate=3e-3), quiet=True)
  assert result.test_metrics["accuracy"] > 0.85
  assert abs(result.test_metrics["accuracy"] - full.test_metrics["accuracy"]) < 0.05


def test_predict_of_a_mixed_precision_model_returns_float32():
  # It returned the model's bfloat16, which np.savetxt and np.linalg.norm refuse.
  trainer = jdl.Trainer(make_config(mixed_precision=True), quiet=True)
  x = jdl.data.load_dataset("digits").x_test[:5]
  normalized = trainer.data.test.x[:5]
  logits = trainer.model.apply(trainer.state.variables, normalized)
  assert logits.dtype == jnp.bfloat16
  for out in (trainer.predict(x), trainer.predict_normalized(normalized),
              jdl.predict(trainer, x[:0])):
    assert out.dtype == np.float32 and out.shape[1:] == (10,)
  out = trainer.predict_normalized(normalized)  # The model's bfloat16 values, cast.
  np.testing.assert_array_equal(out, out.astype(jnp.bfloat16).astype(np.float32))
  np.testing.assert_allclose(out, np.asarray(logits, np.float32), rtol=1e-2, atol=1e-2)
  assert np.isfinite(np.linalg.norm(trainer.predict(x)))


@pytest.mark.parametrize("bad, where", [(np.inf, 1), (-np.inf, 2), (np.nan, 1), (None, -1)])
def test_nonfinite_info_flags_inf_and_nan_but_not_huge_finite(bad, where):
  # Leaves of float32 values near the maximum: their plain sum overflows to inf, yet
  # they are finite and must not be flagged; one inf/-inf/NaN element must be, with
  # the index of its leaf (jax.tree.leaves order: a, b, c).
  from jdl.train import steps as steps_lib
  big = np.full((4, 3), 3e38, np.float32)
  grads = {"a": jnp.asarray(big), "b": jnp.asarray(big), "c": jnp.asarray(-big)}
  if bad is not None:
    leaf = "abc"[where]
    grads[leaf] = grads[leaf].at[2, 1].set(bad)
  info = jax.jit(steps_lib.nonfinite_info)(jnp.float32(0.5), grads, jnp.int32(7))
  assert int(info["count"]) == (bad is not None)
  assert int(info["param"]) == where
  assert int(info["loss_finite"]) == 1 and int(info["step"]) == 7
  info = steps_lib.nonfinite_info(jnp.float32(np.nan), {"a": jnp.ones(3)}, jnp.int32(0))
  assert (int(info["count"]), int(info["loss_finite"]), int(info["param"])) == (1, 0, -1)


def test_an_early_stopping_state_of_another_metric_is_not_loaded():
  es = jdl.train.callbacks.EarlyStopping("val_accuracy", "max")
  other = jdl.train.callbacks.EarlyStopping("val_loss", "min")
  other.best, other.best_step = 0.36, 80
  es.load_state_dict(other.state_dict())
  assert es.best is None and es.best_step == -1
  same = jdl.train.callbacks.EarlyStopping("val_loss", "min")
  same.load_state_dict(other.state_dict())
  assert (same.best, same.best_step) == (0.36, 80)
  same.load_state_dict({"best": 0.5, "best_epoch": 2, "best_step": 40, "wait": 1,
                        "stopped_epoch": -1})  # Saved before monitor was part of it.
  assert (same.best, same.best_step) == (0.5, 40)


def test_early_stopping_takes_the_monitored_metrics_direction_unless_told():
  # EarlyStopping(monitor="val_accuracy") kept the lowest accuracy as the best ('min'
  # was the default whatever the name), silently.
  class Trainer:
    step, stop_training, log = 0, False, staticmethod(lambda message: None)

  def best_epoch(es, values):
    for epoch, value in enumerate(values):
      es.on_epoch_end(Trainer(), epoch, {es.monitor: value})
    return es.best_epoch

  accuracy = [0.5, 0.9, 0.7]
  assert best_epoch(jdl.train.callbacks.EarlyStopping("val_accuracy", restore_best=False),
                    accuracy) == 1
  assert best_epoch(jdl.train.callbacks.EarlyStopping("val_accuracy", "min",
                                                      restore_best=False), accuracy) == 0
  modes = {m: jdl.train.callbacks.EarlyStopping(m).mode
           for m in ("val_loss", "loss", "val_mse", "val_r2", "val_macro_f1", "val_top5_accuracy")}
  assert modes == {"val_loss": "min", "loss": "min", "val_mse": "min", "val_r2": "max",
                   "val_macro_f1": "max", "val_top5_accuracy": "max"}
  with pytest.raises(jdl.JdlError, match=r"^EarlyStopping: whether 'val_brier_t' is better "
                                         r"higher or lower is not known .* give mode='max' "):
    jdl.train.callbacks.EarlyStopping("val_brier_t")
  jdl.metrics.register_metric("brier_t", lambda out, y: jnp.zeros(len(y)), better="min")
  try:
    assert jdl.train.callbacks.EarlyStopping("val_brier_t").mode == "min"
  finally:
    del jdl.metrics.CUSTOM["brier_t"]


@pytest.mark.parametrize("patience", [0, 1, 2])
def test_early_stopping_counts_a_nan_first_epoch_as_keras_does(patience):
  # Keras' EarlyStopping starts from an infinite best, so a NaN first epoch is no
  # improvement, and never stops after the first epoch. This one stopped there
  # (patience 0 or 1) before.
  class Trainer:
    step, stop_training, log = 0, False, staticmethod(lambda message: None)

  es = jdl.train.callbacks.EarlyStopping("val_loss", "min", patience=patience,
                                         restore_best=False)
  trainer, stopped = Trainer(), None
  for epoch, value in enumerate([np.nan, np.nan, 0.5, 0.6, 0.7, 0.8]):
    trainer.step = 10 * (epoch + 1)
    es.on_epoch_end(trainer, epoch, {"val_loss": value})
    if trainer.stop_training:
      stopped = epoch
      break
  # Keras 3's rule on the same values: wait counts every epoch without improvement
  # (NaN < best is false) and stops once wait >= patience at an epoch after the first.
  best, wait, expected = np.inf, 0, None
  for epoch, value in enumerate([np.nan, np.nan, 0.5, 0.6, 0.7, 0.8]):
    wait += 1
    if value < best:
      best, wait = value, 0
      continue
    if wait >= patience and epoch > 0:
      expected = epoch
      break
  assert stopped == expected == {0: 1, 1: 1, 2: 1}[patience]
  assert es.stopped_epoch == stopped


class _TermAt(jdl.train.callbacks.Callback):
  """SIGTERM to this process once training has reached ``at`` (a graceful stop)."""

  def __init__(self, at):
    self.at, self.sent = at, False

  def on_steps_end(self, trainer, step, num_steps):
    if step >= self.at and not self.sent:
      import os
      import signal
      self.sent = True
      os.kill(os.getpid(), signal.SIGTERM)


_RESUME_CASES = {
    # Accumulation stopped mid-cycle, the plateau scale and early stopping's state in
    # the checkpoint, batch norm and dropout, asynchronous checkpoints.
    "accumulation, plateau, early stopping, batch norm": dict(
        num_epochs=4, async_checkpoints=True, optimizer__accumulate_steps=3,
        optimizer__learning_rate=0.05, reduce_on_plateau__enabled=True,
        reduce_on_plateau__patience=1, early_stopping__enabled=True,
        early_stopping__monitor="val_accuracy", early_stopping__mode="max",
        early_stopping__patience=1, keep_checkpoints=1, model__batch_norm=True,
        model__dropout_rate=0.2),
    "microbatches, mixed precision, augmentation": dict(
        num_epochs=2, microbatch_size=16, mixed_precision=True, augment__noise_std=0.1,
        augment__mixup_alpha=0.4, label_smoothing=0.1),
    "VAE": dict(num_epochs=2, task="vae", normalize="none", metrics=(), model__name="vae",
                model__hidden=(16,), model__latent=2),
    "denoising autoencoder": dict(num_epochs=2, task="autoencoder", normalize="none",
                                  metrics=(), model__name="dense_autoencoder",
                                  model__hidden=(16,), model__latent=4,
                                  augment__noise_std=0.2),
}


@pytest.mark.parametrize("case", sorted(_RESUME_CASES))
def test_stopped_twice_mid_epoch_then_resumed_is_bitwise_the_uninterrupted_run(tmp_path, case):
  over = _RESUME_CASES[case]
  config = make_config(checkpoint_every_steps=7, **over)
  full = jdl.fit(config, tmp_path / "full", quiet=True)
  first = jdl.fit(config, tmp_path / "run", quiet=True, callbacks=[_TermAt(9)])
  assert first.trainer.preempted == "SIGTERM" and first.trainer.step % 20 != 0
  with pytest.raises(KeyboardInterrupt):  # A kill after the next checkpoint.
    jdl.fit(config, tmp_path / "run", quiet=True, callbacks=[_Crash(at_step=31)])
  resumed = jdl.fit(config, tmp_path / "run", quiet=True)
  assert resumed.trainer.step == full.trainer.step
  chex.assert_trees_all_equal(
      jax.device_get((resumed.state.params, resumed.state.model_state,
                      resumed.state.opt_state, jax.random.key_data(resumed.state.key))),
      jax.device_get((full.state.params, full.state.model_state, full.state.opt_state,
                      jax.random.key_data(full.state.key))))
  assert resumed.history == full.history and resumed.test_metrics == full.test_metrics


def test_a_resume_on_another_core_count_and_an_extension_after_early_stopping_say_so(
    tmp_path, capfd):
  import json
  config = make_config(num_epochs=1)
  jdl.fit(config, tmp_path / "a", quiet=True)
  path = tmp_path / "a" / "config.json"
  saved = json.loads(path.read_text())
  assert saved["runtime"]["cpu_cores"] >= 1
  saved["runtime"]["cpu_cores"] += 7
  path.write_text(json.dumps(saved))
  capfd.readouterr()
  jdl.fit(make_config(num_epochs=2), tmp_path / "a", quiet=True)
  assert f"the run was on {saved['runtime']['cpu_cores']} CPU cores" in capfd.readouterr().err
  stopped = jdl.fit(make_config(num_epochs=6, early_stopping__enabled=True,
                                early_stopping__patience=0, optimizer__learning_rate=1.0),
                    tmp_path / "b")
  epochs = len(stopped.history["loss"])
  assert epochs < 6
  capfd.readouterr()
  jdl.fit(make_config(num_epochs=9, early_stopping__enabled=True, early_stopping__patience=0,
                      optimizer__learning_rate=1.0), tmp_path / "b")
  assert f"early stopping ended it at epoch {epochs}" in capfd.readouterr().out


def test_a_monitor_mode_against_its_metric_warns(capfd):
  jdl.Trainer(make_config(monitor="val_accuracy", monitor_mode="min",
                          early_stopping__enabled=True, early_stopping__monitor="val_loss",
                          early_stopping__mode="max"), quiet=True)
  err = capfd.readouterr().err
  assert "monitor='val_accuracy' is better higher, but monitor_mode='min'" in err
  assert "early_stopping.monitor='val_loss' is better lower, but early_stopping.mode='max'" in err
  jdl.Trainer(make_config(monitor="val_accuracy", monitor_mode="max"), quiet=True)
  assert "warning" not in capfd.readouterr().err


@pytest.mark.full_opt
def test_metrics_may_change_where_an_epoch_ends_but_not_within_one(tmp_path):
  # 20 steps an epoch. A run that logged accuracy resumes at an epoch's end logging
  # macro F1 as well; its training is the uninterrupted run's, bit for bit.
  first = jdl.fit(make_config(num_epochs=1, metrics=("accuracy",)), tmp_path / "run",
                  quiet=True)
  more = make_config(num_epochs=3, metrics=("accuracy", "macro_f1"))
  resumed = jdl.fit(more, tmp_path / "run", quiet=True)
  whole = jdl.fit(more, tmp_path / "whole", quiet=True)
  chex.assert_trees_all_equal(_params(resumed), _params(whole))
  for key in ("macro_f1", "val_macro_f1"):
    assert math.isnan(resumed.history[key][0]) and len(resumed.history[key]) == 3, key
    assert resumed.history[key][1:] == whole.history[key][1:], key
  assert resumed.history["val_accuracy"] == whole.history["val_accuracy"]
  assert {len(v) for v in resumed.history.values()} == {3}
  assert resumed.test_metrics == whole.test_metrics and "macro_f1" in resumed.test_metrics
  lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [("macro_f1" in r) for r in lines if r["split"] == "train"] == [False, True, True]
  # The epoch-1 checkpoint holds the old metric sums; a callback can still read it back.
  trainer = resumed.trainer
  chex.assert_trees_all_equal(jax.device_get(trainer.restore_step(20).params),
                              _params(first))

  # From the step-0 checkpoint of a zero-epoch run: the new metrics from the start.
  jdl.fit(make_config(num_epochs=0, metrics=("accuracy",)), tmp_path / "zero", quiet=True)
  from_zero = jdl.fit(more, tmp_path / "zero", quiet=True)
  assert from_zero.history == whole.history

  # Within an epoch the sums of its first steps are for other metrics: refused, and
  # nothing in the workdir is touched.
  mid = tmp_path / "mid"
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(make_config(num_epochs=2, checkpoint_every_steps=7), mid, quiet=True,
            callbacks=[_Crash(at_step=10)])
  files = {p: p.read_bytes() for p in mid.rglob("*") if p.is_file()}
  with pytest.raises(jdl.JdlError, match=r"at step 7 .*, at batch 7/20 of epoch 1, holds "
                     r"other metric sums .*change its metrics where an epoch ends"):
    jdl.fit(make_config(num_epochs=2, checkpoint_every_steps=7,
                        metrics=("accuracy", "top5_accuracy")), mid, quiet=True)
  assert {p: p.read_bytes() for p in mid.rglob("*") if p.is_file()} == files


@pytest.mark.full_opt
def test_a_mid_epoch_checkpoint_with_the_older_confusion_matrix_resumes_exactly(
    tmp_path, monkeypatch):
  # Checkpoints written before 2026-11-30 hold a C x C confusion matrix (C x (C + 1)
  # since, for NaN rows): such a step, mid-epoch, was refused as "other metric sums".
  from jdl import metrics as metrics_lib
  config = make_config(num_epochs=2, checkpoint_every_steps=6, metrics=("accuracy", "macro_f1"))
  full = jdl.fit(config, tmp_path / "full", quiet=True)
  with monkeypatch.context() as old:  # The earlier layout, for the interrupted run.
    def confusion(c, mask, num_classes):
      index = c.labels * num_classes + jnp.minimum(c.preds, num_classes - 1)
      counts = jax.ops.segment_sum(mask.astype(jnp.int32), index,
                                   num_segments=num_classes * num_classes)
      return counts.reshape(num_classes, num_classes)

    empty, macro = metrics_lib._empty_group, metrics_lib._macro
    old.setattr(metrics_lib, "_confusion", confusion)
    old.setattr(metrics_lib, "_macro", lambda name, m: macro(name, np.pad(m, ((0, 0), (0, 1)))))
    old.setattr(metrics_lib, "_empty_group", lambda group, n: (
        {"matrix": jnp.zeros((n, n), jnp.int32)} if group == "confusion" else empty(group, n)))
    with pytest.raises(KeyboardInterrupt):
      jdl.fit(config, tmp_path / "resumed", quiet=True, callbacks=[_Crash(at_step=33)])
  assert jdl.checkpoint.step_numbers(tmp_path / "resumed" / "checkpoints")[-1] == 32
  resumed = jdl.fit(config, tmp_path / "resumed", quiet=True)
  chex.assert_trees_all_equal(_params(full), _params(resumed))
  assert full.history == resumed.history  # Epoch 2's macro_f1 counts its first 12 steps.


def test_the_console_shows_small_values_in_significant_digits():
  # A learning rate of 3e-5 (and a cosine schedule's last one) printed as 0.0000.
  from jdl.train.callbacks import format_logs
  assert format_logs({"loss": 0.93331, "learning_rate": 3e-5, "val_mse": 4.2e-5,
                      "zero": 0.0, "big": 12345.6, "steps": 3}) == (
      "loss 0.9333  learning_rate 3e-05  val_mse 4.2e-05  zero 0.0000  big 1.235e+04  steps 3")


def test_epoch_seconds_leave_out_mid_epoch_checkpoint_saves(tmp_path, monkeypatch, capsys):
  # A save's time was counted as training: samples_per_sec fell 3x with
  # checkpoint_every_steps while the training was bitwise the same.
  # Each save takes 1000 s by the loop's clock (no real sleep).
  clock = _ShiftedClock("perf_counter")
  save = loop.Trainer._save

  def slow_save(self, *args, **kwargs):
    clock.offset += 1000.0
    return save(self, *args, **kwargs)

  monkeypatch.setattr(loop, "time", clock)
  monkeypatch.setattr(loop.Trainer, "_save", slow_save)
  config = make_config(num_epochs=1, scan_chunk=5, checkpoint_every_steps=5)
  result = jdl.fit(config, tmp_path)  # 20 steps: saves at 5, 10, 15 and 20.
  assert clock.offset == 4000.0
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = next(r for r in records if r["split"] == "train")
  assert train["epoch_seconds"] < 1000, train  # Three mid-epoch saves took 3000 s.
  assert train["samples_per_sec"] == pytest.approx(
      20 * config.batch_size / train["epoch_seconds"], rel=0.01)
  # What they held the loop is recorded apart (the epoch end's save in no line).
  # (Plus the saves' real time: seconds on a loaded 2-core CI machine, not 1000.)
  assert 3000 <= train["checkpoint_seconds"] < 3000 + 100, train
  epoch_line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch "))
  assert re.search(r"\(\d+\.\d\ds \+ 30\d\d\.\d\ds saving, \d+ samples/s\)$",
                   epoch_line), epoch_line
  assert result.trainer.step == 20
  assert "checkpoint_seconds" not in result.history
  # Without mid-epoch saves, no such key.
  jdl.fit(make_config(num_epochs=1), tmp_path / "plain", quiet=True)
  first = json.loads((tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()[0])
  assert first["split"] == "train" and "checkpoint_seconds" not in first


def test_metrics_jsonl_is_strict_json_and_tensorboard_holds_only_curves(tmp_path, capfd):
  # The r2 of a one-example validation split was written as a bare NaN token (no
  # JSON; most readers refuse the line), tensorboardX warned of it on stderr every
  # epoch, and the run's device and core counts were TensorBoard curves.
  from test_diagnostics import _tensorboard_tags
  config = jdl.load_config("linear_regression")
  config.num_epochs, config.validation_split, config.batch_size = 2, 0.005, 100
  config.tensorboard, config.plots = True, True
  jdl.fit(config, tmp_path, quiet=True)
  def refuse(token):
    raise AssertionError(f"{token} in metrics.jsonl")
  records = [json.loads(line, parse_constant=refuse)
             for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  val = [r for r in records if r["split"] == "val"]
  assert len(val) == 2 and all(r["r2"] is None and r["mse"] > 0 for r in val), val
  assert "NaN or Inf" not in capfd.readouterr().err
  tags = _tensorboard_tags(tmp_path / "tb")
  assert "val/mse:simple_value" in tags and "train/samples_per_sec:simple_value" in tags
  assert not {t for t in tags if t.split(":")[0] in (
      "train/num_devices", "train/num_processes", "train/cpu_cores")}, tags
  assert (tmp_path / "plots" / "r2.png").is_file()  # Plotted, its null points as gaps.


def test_rerunning_a_finished_run_writes_its_test_points_to_tensorboard_once(tmp_path):
  # Each re-run added another copy of test/* at the same step (metrics.jsonl's test
  # line is replaced).
  import struct
  from tensorboardX.proto import event_pb2
  config = make_config(num_epochs=1, tensorboard=True)
  for _ in range(3):
    jdl.fit(config, tmp_path, quiet=True)
  points = []
  for path in sorted((tmp_path / "tb").glob("events.out.tfevents.*")):
    data = path.read_bytes()
    while data:
      (n,) = struct.unpack("<Q", data[:8])
      event = event_pb2.Event.FromString(data[12:12 + n])
      points += [(v.tag, event.step) for v in event.summary.value if v.tag.startswith("test/")]
      data = data[16 + n:]
  assert sorted(points) == [("test/accuracy", 20), ("test/loss", 20)]


@pytest.mark.full_opt
def test_blocks_of_one_step_give_the_bits_of_longer_blocks():
  # A one-row block was sliced statically by XLA, and its step compiled otherwise:
  # an LSTM's logged train loss came out 1 ulp apart with scan_chunk=1 (parameters
  # equal; found by a reproducibility audit). It is now run as a two-row block.
  rng = np.random.default_rng(0)
  x = rng.integers(1, 200, size=(600, 20)).astype(np.int32)
  x[:, 15:] *= rng.integers(0, 2, size=(600, 5))
  y = (x[:, :5].sum(1) % 2).astype(np.int32)
  data = jdl.data.Dataset(x_train=x[:544], y_train=y[:544], x_test=x[544:], y_test=y[544:],
                          num_classes=2, task="classification", name="ids", input_shape=(20,))

  def run(chunk):
    config = make_config(num_epochs=2, scan_chunk=chunk, epoch_mode="scan", normalize="none",
                         batch_size=32, validation_split=0.0, model__name="text_rnn",
                         model__vocab_size=200, model__cell="lstm")
    return jdl.fit(config, dataset=data, quiet=True)

  one, two = run(1), run(2)
  assert one.trainer.chunk == 1 and two.trainer.chunk == 2
  assert one.history["loss"] == two.history["loss"]
  assert one.test_metrics == two.test_metrics
  chex.assert_trees_all_equal(_params(one), _params(two))


def test_confusion_matrix_counts_as_sklearn_and_its_diagonal_is_the_accuracy(tmp_path,
                                                                           monkeypatch):
  from sklearn import metrics as skm
  plotted, passes = [], []
  real_plot, real_matrix = loop.plots.plot_confusion, loop.Trainer.confusion_matrix

  def plot(matrix, *args, **kwargs):
    plotted.append(matrix)
    return real_plot(matrix, *args, **kwargs)

  def confusion(self, *args, **kwargs):
    passes.append(args)
    return real_matrix(self, *args, **kwargs)
  monkeypatch.setattr(loop.plots, "plot_confusion", plot)
  monkeypatch.setattr(loop.Trainer, "confusion_matrix", confusion)
  result = jdl.fit(make_config(num_epochs=1, plots=True), tmp_path, quiet=True)
  # Accuracy alone keeps no counts: the plot's matrix takes a pass of the model.
  assert len(plotted) == 1 and passes == [("test",)]
  trainer, digits = result.trainer, jdl.data.load_dataset("digits")
  test = trainer.data.test
  matrix = trainer.confusion_matrix("test")
  np.testing.assert_array_equal(plotted[0], matrix)
  logits = jdl.predict(result, digits.x_test)  # The raw inputs, through predict.
  expected = skm.confusion_matrix(digits.y_test, np.argmax(logits, axis=-1),
                                  labels=range(10))
  np.testing.assert_array_equal(matrix, expected)
  assert matrix.sum() == test.size == 360
  assert np.trace(matrix) / test.size == pytest.approx(result.test_metrics["accuracy"])
  assert (tmp_path / "plots" / "confusion_test.png").stat().st_size > 5000
  assert not (tmp_path / "plots" / "predictions_test.png").exists()  # Regression runs'.
  val = trainer.confusion_matrix("val")
  assert val.sum() == trainer.data.val.size
  # With a macro metric the test evaluation's counts are the plot's: no second pass.
  plotted.clear()
  passes.clear()
  macro = jdl.fit(make_config(num_epochs=1, plots=True, metrics=("accuracy", "macro_f1")),
                  tmp_path / "macro", quiet=True)
  assert len(plotted) == 1 and passes == []
  np.testing.assert_array_equal(plotted[0], macro.trainer.confusion_matrix("test"))
  assert plotted[0].shape == (10, 10) and plotted[0].sum() == 360
  # A single-logit binary model: class 1 where the logit is positive.
  xor = jdl.fit(jdl.load_config("xor"), tmp_path / "xor", quiet=True)
  out = xor.trainer.predict_normalized(xor.trainer.data.test.x)[:, 0]
  np.testing.assert_array_equal(
      xor.trainer.confusion_matrix("test"),
      skm.confusion_matrix(np.asarray(xor.trainer.data.test.y), (out > 0).astype(int),
                           labels=[0, 1]))
  with pytest.raises(jdl.JdlError, match="no val split"):
    xor.trainer.confusion_matrix("val")
  with pytest.raises(jdl.JdlError, match="for classification runs"):
    jdl.Trainer(make_config(task="regression", dataset="linear", loss="mse",
                            metrics=("mse",)), quiet=True).confusion_matrix()


def test_the_progress_bar_draws_in_a_notebook_and_counts_the_epochs_steps(monkeypatch, capsys):
  import sys
  import types

  import tqdm.auto
  assert not cb.in_notebook()  # pytest: no kernel.
  ipython = types.ModuleType("IPython")
  monkeypatch.setitem(sys.modules, "IPython", ipython)
  for config, kernel in (({"IPKernelApp": {"connection_file": "k.json"}}, True),
                         ({}, False)):  # A kernel's shell; IPython in a terminal.
    ipython.get_ipython = lambda config=config: types.SimpleNamespace(config=config)
    assert cb.in_notebook() is kernel
    assert cb.ProgressBar().enabled is kernel  # pytest's stderr is no terminal.
  ipython.get_ipython = lambda: None  # IPython imported, no shell running.
  assert not cb.in_notebook()

  def no_widgets(*args, **kwargs):  # tqdm's notebook bar without ipywidgets.
    raise ImportError("IProgress not found. Please update jupyter and ipywidgets.")
  monkeypatch.setattr(tqdm.auto, "tqdm", no_widgets)
  closed = []

  class TextBar(tqdm.std.tqdm):
    def close(self):
      if not self.disable:
        closed.append((self.desc, self.n, self.total))
      super().close()
  monkeypatch.setattr(tqdm.std, "tqdm", TextBar)
  capsys.readouterr()
  result = jdl.fit(make_config(num_epochs=2, scan_chunk=5), progress=True)
  err = capsys.readouterr().err
  # 1,293 train examples: 20 steps of 64 an epoch, counted on tqdm's text bar.
  assert int(result.state.step) == 40
  assert closed == [("epoch 1/2", 20, 20), ("epoch 2/2", 20, 20)]
  assert "epoch 1/2:   0%|" in err and "| 0/20 " in err


@pytest.mark.parametrize("overrides", [
    {},  # The epoch as compiled blocks of scan_chunk steps.
    {"epoch_mode": "step"},  # One jitted step a batch.
    {"scan_chunk": 7, "model__dropout_rate": 0.3},  # Blocks of 7, 7 and 6 steps; keys.
], ids=["scan", "step", "uneven blocks, dropout"])
def test_later_epochs_compile_nothing(overrides):
  # Every program a run needs is compiled in its first epoch (train blocks, the val
  # evaluation); a later epoch that traced again (a Python value turned static, a
  # shape that changes) would compile each epoch anew. JAX logs each compilation.
  import logging
  compiled = []

  class Compiles(logging.Handler):
    def emit(self, record):
      if record.getMessage().startswith("Compiling "):
        compiled.append(record.getMessage().split(" with ")[0])

  class AtEpochEnd(cb.Callback):
    def __init__(self):
      self.counts = []

    def on_epoch_end(self, trainer, epoch, logs):
      self.counts.append(len(compiled))

  handler, logger, epochs = Compiles(), logging.getLogger("jax"), AtEpochEnd()
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      jdl.fit(make_config(num_epochs=4, **overrides), quiet=True, callbacks=[epochs])
  finally:
    logger.removeHandler(handler)
  first = epochs.counts[0]
  assert first > 0 and "Compiling jit(eval_batch)" in compiled[:first]
  assert epochs.counts == [first] * 4, compiled[first:]
  # After the last epoch, only the test split's evaluation (360 rows, not val's 144).
  assert compiled[first:] == ["Compiling jit(eval_batch)"]


def test_a_regression_run_plots_its_test_predictions_with_sklearns_r2_and_mae(tmp_path):
  from sklearn import metrics as skm
  rng = np.random.default_rng(0)
  y = rng.normal(size=(50, 3))
  p = y + rng.normal(scale=[0.1, 1.0, 0.5], size=(50, 3))
  p[:, 2] = y[:, 2] = 1.5  # A constant column, predicted exactly: R2 1, as sklearn's.
  fits = jdl.train.plots.regression_fit(y, p)
  np.testing.assert_allclose([f["r2"] for f in fits],
                             skm.r2_score(y, p, multioutput="raw_values"))
  np.testing.assert_allclose([f["mae"] for f in fits],
                             skm.mean_absolute_error(y, p, multioutput="raw_values"))
  assert fits[2]["r2"] == 1.0 and fits[2]["mae"] == 0
  p[0, 2] = 2.0  # A constant column missed: 0.
  assert jdl.train.plots.regression_fit(y, p)[2]["r2"] == skm.r2_score(y[:, 2], p[:, 2]) == 0
  # Ten outputs: eight panels, said in the title; it draws, whatever the count.
  wide = jdl.train.plots.plot_predictions(rng.normal(size=(20, 10)), rng.normal(size=(20, 10)),
                                          tmp_path / "wide.png")
  assert wide.stat().st_size > 5000
  config = make_config(task="regression", dataset="linear", loss="mse",
                       metrics=("mse", "r2", "mae"), plots=True, num_epochs=20,
                       optimizer__learning_rate=0.05)
  result = jdl.fit(config, tmp_path / "run", quiet=True)
  test = result.trainer.data.test
  (fit,) = jdl.train.plots.regression_fit(test.y, result.trainer.predict_normalized(test.x))
  # The figure's numbers are the run's own test metrics.
  assert fit["r2"] == pytest.approx(result.test_metrics["r2"], rel=1e-5)
  assert fit["mae"] == pytest.approx(result.test_metrics["mae"], rel=1e-5)
  assert (tmp_path / "run" / "plots" / "predictions_test.png").stat().st_size > 5000
  assert not (tmp_path / "run" / "plots" / "confusion_test.png").exists()


def test_an_empty_regression_test_split_is_no_test_split(tmp_path):
  # Empty splits are no splits (as for classification); the regression targets'
  # [N] -> [N, 1] reshape raised numpy's "cannot reshape array of size 0" before.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(100, 3)).astype(np.float32)
  y = x @ np.array([1.0, -2.0, 0.5], np.float32)
  data = jdl.data.Dataset(x_train=x, y_train=y, x_test=x[:0], y_test=y[:0],
                          task="regression")
  config = make_config(task="regression", dataset="linear", loss="mse", metrics=("mse",),
                       plots=True, num_epochs=1)
  result = jdl.fit(config, tmp_path, dataset=data, quiet=True)
  assert result.test_metrics == {} and result.trainer.data.test is None
  assert int(result.state.step) == 90 // 64  # 10 of the 100 rows validate.
  assert (tmp_path / "plots" / "loss.png").is_file()
  assert not (tmp_path / "plots" / "predictions_test.png").exists()


def test_a_run_stopped_past_fewer_epochs_says_so_when_asked_for_fewer(tmp_path, capsys):
  # Stopped mid-epoch 2 and re-run with num_epochs=1: "training already complete", with
  # nothing said of the steps past epoch 1 (whole epochs past it were said).
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(make_config(num_epochs=2, checkpoint_every_steps=4), tmp_path, quiet=True,
            callbacks=[_Crash(at_step=30)])
  capsys.readouterr()
  fewer = jdl.fit(make_config(num_epochs=1, checkpoint_every_steps=4), tmp_path)
  spe = fewer.trainer.steps_per_epoch
  step = int(fewer.state.step)
  assert spe < step < 2 * spe
  assert (f"training already complete in this workdir (1 epoch and {step - spe} steps, more "
          "than num_epochs=1: nothing is undone)") in capsys.readouterr().out


# --------------------------------------------------- a loop review (2026-12-02)
def test_an_early_stopping_given_to_another_run_starts_afresh():
  # A reused instance (a sweep) judged run 2 by run 1's best val_loss: it stopped run 2
  # at its second epoch and restore_best handed back run 1's parameters.
  es = cb.EarlyStopping("val_loss", patience=1)
  first = jdl.fit(make_config(num_epochs=3), None, callbacks=[es], quiet=True)
  assert es.best == min(first.history["val_loss"])
  slow = jdl.fit(make_config(num_epochs=3, seed=1, optimizer__learning_rate=1e-4), None,
                 callbacks=[es], quiet=True)
  losses = slow.history["val_loss"]
  assert len(losses) == 3 and min(losses) > max(first.history["val_loss"])
  assert es.best == min(losses) and es.stopped_epoch == -1
  assert es.best_step == 3 * slow.trainer.steps_per_epoch == int(slow.state.step)
  # The same trainer's second fit() continues the run, early stopping's state too.
  assert slow.trainer.fit().history == slow.history and es.best == min(losses)


def test_a_restart_trainer_fitted_twice_moves_nothing_the_second_time(tmp_path):
  # The second fit() moved its own finished run aside, then "trained" an empty epoch
  # from the trained state: a NaN loss error and a record of step 40 with no loss.
  jdl.fit(make_config(num_epochs=1), tmp_path, quiet=True)
  trainer = loop.Trainer(make_config(num_epochs=2), tmp_path, quiet=True, restart=True)
  first = trainer.fit()
  second = trainer.fit()  # Resumes the run this trainer started: nothing to train.
  assert second.history == first.history and trainer.step == 2 * trainer.steps_per_epoch
  assert len([p for p in tmp_path.iterdir() if p.name.startswith("previous-")]) == 1
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["epoch"], r["split"]) for r in records] == [
      (1, "train"), (1, "val"), (2, "train"), (2, "val"), (2, "test")]
  # Its checkpoints deleted since: said, not an epoch from the trained state.
  shutil.rmtree(tmp_path / "checkpoints")
  with pytest.raises(jdl.JdlError, match=r"holds no checkpoint of the run this trainer "
                                         r"trained to step 40: make a new jdl.Trainer"):
    trainer.fit()


class _StopAtEpochEnd(cb.Callback):
  """Stops the run at the end of epoch ``epoch`` (from 1), as the README's example."""

  def __init__(self, epoch):
    self.epoch = epoch

  def on_epoch_end(self, trainer, epoch, logs):
    if epoch + 1 >= self.epoch:
      trainer.stop_training = True


def test_a_callbacks_stop_at_an_epochs_end_ends_the_run_as_early_stopping_does(tmp_path,
                                                                                capsys):
  # Each re-run trained one more epoch (and wrote a new test line): only early
  # stopping's own state recorded that the run had ended.
  config = make_config(num_epochs=4)
  stopped = jdl.fit(config, tmp_path, quiet=True, callbacks=[_StopAtEpochEnd(2)])
  spe = stopped.trainer.steps_per_epoch
  assert int(stopped.state.step) == 2 * spe and stopped.stopped is None
  capsys.readouterr()
  again = jdl.fit(config, tmp_path, callbacks=[_StopAtEpochEnd(2)])
  assert int(again.state.step) == 2 * spe and again.history == stopped.history
  assert again.test_metrics == stopped.test_metrics
  assert ("training already complete in this workdir (callback _StopAtEpochEnd ended it at "
          "epoch 2; num_epochs=4 does not restart it") in capsys.readouterr().out
  tests = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
           if '"test"' in line]
  assert len(tests) == 1 and json.loads(tests[0])["step"] == 2 * spe
  # Without a workdir: a second fit() of the trainer finds the run ended too.
  trainer = loop.Trainer(config, None, quiet=True, callbacks=[_StopAtEpochEnd(2)])
  assert trainer.fit().history == stopped.history
  assert trainer.fit().history == stopped.history and trainer.step == 2 * spe


def test_a_callbacks_own_stopped_epoch_attribute_does_not_end_training():
  # Keras' callbacks start with stopped_epoch = 0: any such attribute >= 0 made fit()
  # train nothing ("early stopping ended it at epoch 0") and score the initial state.
  class KerasStyle(cb.Callback):
    def __init__(self):
      self.stopped_epoch = 0

  result = jdl.fit(make_config(num_epochs=2), None, callbacks=[KerasStyle()], quiet=True)
  assert len(result.history["loss"]) == 2
  assert int(result.state.step) == 2 * result.trainer.steps_per_epoch


@pytest.mark.parametrize("every, saved", [(10, [10, 20, 30, 40, 50, 60]), (30, [20, 40, 60])])
def test_checkpoint_every_steps_leaves_no_gap_longer_than_it(tmp_path, every, saved):
  # Counted from each epoch's start, mid-epoch only: with checkpoint_every_epochs=3 and
  # 20-step epochs it saved 10, 30, 50, 60 (every 10) and 60 alone (every 30).
  config = make_config(num_epochs=3, checkpoint_every_steps=every, checkpoint_every_epochs=3,
                       keep_checkpoints=20, monitor="")
  jdl.fit(config, tmp_path, quiet=True)
  assert jdl.checkpoint.step_numbers(tmp_path / "checkpoints") == saved


def test_an_early_stopping_callback_of_an_unlogged_name_is_refused_before_training(tmp_path):
  # It failed at the first epoch's end, that epoch lost (no checkpoint).
  with pytest.raises(jdl.JdlError, match=r"^the EarlyStopping callback's monitor='val_f1' is "
                                         r"not logged by this run; it logs accuracy, "):
    loop.Trainer(make_config(), tmp_path, quiet=True, callbacks=[cb.EarlyStopping(
        "val_f1", mode="max")])
  assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_an_error_closes_the_progress_bar_and_a_second_fit_forgets_the_first_ones_stop(
    tmp_path):
  import os
  import signal

  class Fail(cb.Callback):
    def on_steps_end(self, trainer, step, num_steps):
      raise RuntimeError("a callback's bug")

  trainer = loop.Trainer(make_config(), None, quiet=True, callbacks=[Fail()])
  trainer.progress.enabled = True  # A terminal's bar: left open, the error was glued to it.
  with pytest.raises(RuntimeError):
    trainer.fit()
  assert trainer.progress._bar is None

  class InterruptOnce(cb.Callback):  # As a notebook's "interrupt the kernel".
    fired = False

    def on_steps_end(self, trainer, step, num_steps):
      if not self.fired:
        self.fired = True
        os.kill(os.getpid(), signal.SIGINT)

  trainer = loop.Trainer(make_config(scan_chunk=4), tmp_path, quiet=True,
                         callbacks=[InterruptOnce()])
  interrupted = trainer.fit()
  assert interrupted.stopped == "SIGINT" and trainer.step == 4
  resumed = trainer.fit()  # Reported "SIGINT" although it trained to the end.
  assert resumed.stopped is None and trainer.step == 2 * trainer.steps_per_epoch
  assert interrupted.stopped == "SIGINT"  # Each result says how its own fit() ended.
  assert "accuracy" in resumed.test_metrics


def test_a_run_with_plots_leaves_the_callers_matplotlib_alone(tmp_path):
  # Each plot called matplotlib.use("Agg") and drew through pyplot: jdl.fit in a
  # notebook switched its inline backend off (plt.show() then showed nothing).
  import matplotlib
  import matplotlib.pyplot as plt

  from jdl.train import plots
  before = matplotlib.get_backend()
  matplotlib.use("svg")
  try:
    opened = plt.figure()  # The caller's own figure stays open, and the only one.
    jdl.fit(make_config(num_epochs=1, plots=True), tmp_path / "a", quiet=True)
    written = plots.plot_comparison([plots.read_run(tmp_path / "a")], tmp_path / "compare")
    assert matplotlib.get_backend() == "svg" and plt.get_fignums() == [opened.number]
    plt.close(opened)
  finally:
    matplotlib.use(before)
  pngs = sorted((tmp_path / "a" / "plots").glob("*.png")) + written
  assert {"loss.png", "confusion_test.png"} <= {p.name for p in pngs}
  assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_nonfinite_stop_with_every_gradient_tested_stops_within_two_blocks():
  # nonfinite_check='step' (the GPU's and a parallel run's 'auto'): the error came at the
  # epoch's end, every step after the NaN one training on NaN parameters.
  import flax.linen as nn

  class Poisoned(nn.Module):  # NaN outputs for the batch holding the marked example.
    @nn.compact
    def __call__(self, x, *, train=False):
      out = nn.Dense(2)(x)
      return out + jnp.where(jnp.max(x) > 100.0, jnp.nan, 0.0)

  rng = np.random.default_rng(0)
  x = rng.normal(size=(1024, 4)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  x[[7, 300, 600, 900], 0] = 1000.0  # The first of them in step 13's batch.
  data = jdl.data.Dataset(x_train=x, y_train=y, x_test=x[8:72], y_test=y[8:72],
                          num_classes=2, task="classification", name="poisoned",
                          input_shape=(4,))
  config = make_config(nonfinite_check="step", normalize="none", batch_size=16,
                       validation_split=0.0, monitor="", scan_chunk=4, num_epochs=1)
  trainer = loop.Trainer(config, dataset=data, model=Poisoned(), quiet=True)
  with pytest.raises(jdl.JdlError, match=r"^non-finite value at step (\d+) \(epoch 1\)") as e:
    trainer.fit()
  first = int(re.search(r"step (\d+)", str(e.value)).group(1))
  block = -(-first // 4) * 4  # The end of the block of the first NaN step.
  assert first < 40 and block <= trainer.step <= block + 8, (first, trainer.step)


@pytest.mark.parametrize("chunk, message", [
    (1, "stopping after the current step and saving a checkpoint"),
    (5, "stopping after the blocks of 5 steps in flight (at most 10 steps), then saving a "
        "checkpoint")])
def test_a_stop_request_says_how_many_steps_still_run(chunk, message, capfd):
  # It said "after the current step" while blocks of up to 100 steps (~38 s on
  # ResNet-20) ran on, which invited a second Ctrl-C (that aborts, losing the epoch).
  import os
  import signal

  class Term(cb.Callback):
    def on_steps_end(self, trainer, step, num_steps):
      if step == 10:
        os.kill(os.getpid(), signal.SIGTERM)

  result = jdl.fit(make_config(scan_chunk=chunk, epoch_mode="step" if chunk == 1 else "scan"),
                   quiet=True, callbacks=[Term()])
  assert result.stopped == "SIGTERM" and 10 <= result.trainer.step <= 10 + 2 * chunk
  assert f"jdl: SIGTERM received; {message} (Ctrl-C again to abort)" in capfd.readouterr().err


def test_a_run_of_data_jdl_generates_otherwise_now_is_refused_with_fitting_advice(tmp_path):
  # Resuming a run of a generated dataset (dates' pairs changed in 03b1df5) said "Use
  # the run's data" or "--config.data_dir=DIR": neither exists for data jdl generates.
  import json
  config = make_config(dataset="moons", num_epochs=1, n_samples=200)
  jdl.fit(config, tmp_path, quiet=True)
  for path in tmp_path.glob("checkpoints/*/meta/metadata"):
    meta = json.loads(path.read_text())
    meta["data"]["fingerprint"] = "0" * len(meta["data"]["fingerprint"])  # Another version's.
    path.write_text(json.dumps(meta))
  config.num_epochs = 2
  advice = (r"'moons' is generated by jdl itself, and this version generates other data for "
            r"the run's settings than the version that trained it: score the run with that "
            r"version, or start over \(restart=True, --restart\)$")
  with pytest.raises(jdl.JdlError, match=r"trained on other data: its arrays \('moons', .*"
                                         + advice):
    jdl.fit(config, tmp_path, quiet=True)
  with pytest.raises(jdl.JdlError, match=advice):
    jdl.evaluate(config, tmp_path)
