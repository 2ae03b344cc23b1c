"""Callbacks, run outputs and CLI config handling: behaviours a one-line change to
the code would break unseen otherwise (each test was checked to fail on such a
change). Small and fast: unit tests with a stub trainer, and two tiny runs.
"""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

import jdl
from jdl import cli
from jdl import optim
from jdl.train import callbacks as cb

from conftest import make_config


class _Trainer:
  """What EarlyStopping reads and sets of a Trainer."""

  def __init__(self):
    self.step, self.stop_training, self.lines = 0, False, []

  def log(self, message):
    self.lines.append(message)


def _watch(es, values, steps_per_epoch=10):
  """Feeds ``values`` (one an epoch) until early stopping stops; the trainer."""
  trainer = _Trainer()
  for epoch, value in enumerate(values):
    trainer.step = steps_per_epoch * (epoch + 1)
    es.on_epoch_end(trainer, epoch, {es.monitor: value})
    if trainer.stop_training:
      break
  return trainer


# ------------------------------------------------------------ early stopping rules


def test_early_stopping_a_tie_is_no_improvement():
  # As Keras (np.less(current - min_delta, best)): an equal value is no improvement,
  # also at min_delta=0.
  es = cb.EarlyStopping("val_loss", "min", patience=1, restore_best=False)
  trainer = _watch(es, [1.0, 1.0, 0.5])
  assert trainer.stop_training and es.stopped_epoch == 1
  assert (es.best, es.best_epoch, es.best_step, es.wait) == (1.0, 0, 10, 1)
  es = cb.EarlyStopping("val_accuracy", "max", patience=1, restore_best=False)
  assert _watch(es, [0.5, 0.5, 0.9]).stop_training and es.best_epoch == 0


def test_early_stopping_min_delta_in_max_mode_and_a_negative_min_delta():
  # mode='max': an improvement must exceed best + min_delta.
  es = cb.EarlyStopping("val_accuracy", "max", patience=2, min_delta=0.05,
                        restore_best=False)
  trainer = _watch(es, [0.5, 0.6, 0.62, 0.7, 0.72, 0.74])
  # 0.6 > 0.55 and 0.7 > 0.65 improve; 0.62, 0.72 and 0.74 do not (0.74 < 0.75).
  assert trainer.stop_training and es.stopped_epoch == 5
  assert (es.best, es.best_epoch, es.best_step) == (0.7, 3, 40)
  # A negative min_delta counts as its size (Keras' abs): 0.95 is not below 1.0 - 0.1.
  es = cb.EarlyStopping("val_loss", "min", patience=1, min_delta=-0.1, restore_best=False)
  assert es.min_delta == 0.1
  trainer = _watch(es, [1.0, 0.95, 0.5])
  assert trainer.stop_training and es.stopped_epoch == 1 and es.best == 1.0


@pytest.mark.parametrize("patience, stopped", [(0, 1), (1, 1), (2, 2), (3, 3)])
def test_early_stopping_stops_after_patience_epochs_without_improvement(patience, stopped):
  es = cb.EarlyStopping("val_loss", "min", patience=patience, restore_best=False)
  trainer = _watch(es, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5])
  assert trainer.stop_training and es.stopped_epoch == stopped
  assert es.wait == max(patience, 1) and es.best_epoch == 0
  assert trainer.lines == [f"early stopping at epoch {stopped + 1}: val_loss has not improved "
                           f"for {max(patience, 1)} epochs (best 1 at epoch 1)"]


def test_early_stopping_resets_its_wait_at_each_improvement():
  es = cb.EarlyStopping("val_loss", "min", patience=2, restore_best=False)
  # Never two epochs in a row without improvement: it never stops.
  trainer = _watch(es, [1.0, 1.1, 0.9, 1.0, 0.8, 0.85, 0.7])
  assert not trainer.stop_training and es.stopped_epoch == -1
  assert (es.best, es.best_epoch, es.best_step, es.wait) == (0.7, 6, 70, 0)


def test_early_stopping_state_round_trips_what_a_resume_needs():
  es = cb.EarlyStopping("val_loss", "min", patience=3, restore_best=False)
  _watch(es, [1.0, 0.8, 0.9, 0.95])
  state = json.loads(json.dumps(es.state_dict()))  # As checkpoint metadata.
  again = cb.EarlyStopping("val_loss", "min", patience=3, restore_best=False)
  again.load_state_dict(state)
  assert (again.best, again.best_epoch, again.best_step, again.wait, again.stopped_epoch) == (
      0.8, 1, 20, 2, -1)
  trainer = _Trainer()
  again.on_epoch_end(trainer, 4, {"val_loss": 0.99})  # The third epoch without improvement.
  assert trainer.stop_training and again.stopped_epoch == 4


# ------------------------------------------------------------ restore_best, in memory


def test_restore_best_without_a_workdir_puts_back_the_best_epochs_state(capsys):
  # val_loss falls every epoch; watched as 'max' its best is epoch 1's. No workdir:
  # the best state is the copy taken in memory.
  config = make_config(num_epochs=3, early_stopping__enabled=True,
                       early_stopping__monitor="val_loss", early_stopping__mode="max",
                       early_stopping__patience=10, early_stopping__restore_best=True,
                       print_every_epochs=2)
  result = jdl.fit(config)
  trainer = result.trainer
  # Every second epoch's line, and the last one's whatever the cadence.
  epochs = [line.split()[1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("epoch ")]
  assert epochs == ["2/3", "3/3"]
  assert int(result.state.step) == trainer.steps_per_epoch
  assert trainer.evaluate_split(trainer.data.val)["loss"] == pytest.approx(
      result.history["val_loss"][0], rel=1e-6)
  assert result.test_metrics["loss"] == pytest.approx(
      trainer.evaluate_split(trainer.data.test)["loss"], rel=1e-6)


# ------------------------------------------------------------ reduce on plateau


class _State:
  def __init__(self, opt_state):
    self.opt_state = opt_state

  def replace(self, opt_state):
    return _State(opt_state)


def test_reduce_on_plateau_callback_feeds_its_own_monitor():
  # The train loss improves every epoch, val_loss never does: the rate must be cut
  # by val_loss's plateau (patience 2: at epoch 3), whatever the loss does.
  config = optim.default_config()
  config.optimizer.update({"name": "sgd", "learning_rate": 0.1})
  config.reduce_on_plateau.update({"enabled": True, "patience": 2, "factor": 0.5,
                                   "monitor": "val_loss"})
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch=1, num_epochs=1)
  trainer = _Trainer()
  trainer.state = _State(tx.init({"kernel": jnp.zeros(2)}))
  callback = cb.ReduceLROnPlateau(config)
  lrs = []
  for epoch, loss in enumerate([1.0, 0.5, 0.25, 0.125, 0.06]):
    callback.on_epoch_end(trainer, epoch, {"loss": loss, "val_loss": 1.0})
    lrs.append(float(optim.current_learning_rate(trainer.state.opt_state, lr_fn)))
  np.testing.assert_allclose(lrs, 0.1 * np.array([1, 1, 0.5, 0.5, 0.25]), rtol=1e-6)


# ------------------------------------------------------------ metrics.jsonl


def test_metrics_lines_are_strict_json_at_any_depth():
  line = cb._strict_json({"step": 3, "loss": math.nan, "hist": [1.0, math.inf, [-math.inf]],
                          "nested": {"a": (math.nan, 2)}})
  assert json.loads(line) == {"step": 3, "loss": None, "hist": [1.0, None, [None]],
                              "nested": {"a": [None, 2]}}
  assert "NaN" not in line and "Infinity" not in line


def test_metrics_logger_cuts_after_a_step_and_tells_a_cut_last_line_from_damage(tmp_path):
  path = tmp_path / "metrics.jsonl"
  records = [{"step": 10, "epoch": 1, "split": "train", "loss": 1.0},
             {"step": 10, "epoch": 1, "split": "val", "loss": 1.1},
             {"step": 20, "epoch": 2, "split": "train", "loss": 0.9},
             {"step": 20, "epoch": 2, "split": "val", "loss": 1.0},
             # Two test lines end the file (restore_best scores an earlier step).
             {"step": 10, "epoch": 1, "split": "test", "loss": 1.05},
             {"step": 10, "epoch": 1, "split": "test", "loss": 1.04}]
  text = "".join(json.dumps(r) + "\n" for r in records)
  path.write_text(text + '{"step": 30, "epoch": 3, "spl')  # Killed while appending.
  logger = cb.MetricsLogger(path)
  assert logger.read()[1:] == (records, False)
  assert logger.last_step() == 20
  # The cut last line is no damage: dropped, no backup; the test lines are kept.
  assert logger.truncate_after(20, keep_test=True) is None
  assert path.read_text() == text and not list(tmp_path.glob("*.damaged-*"))
  # Without keep_test every test line that ends the file goes; past a step, its lines.
  assert logger.truncate_after(math.inf) is None
  assert path.read_text() == "".join(json.dumps(r) + "\n" for r in records[:4])
  logger.truncate_after(10)
  assert path.read_text() == "".join(json.dumps(r) + "\n" for r in records[:2])
  # An unreadable line before the last is damage: the file as it was is kept.
  damaged = text.replace(json.dumps(records[1]), "{oops")
  path.write_text(damaged)
  backup = logger.truncate_after(20)
  assert backup is not None and backup.read_text() == damaged
  assert [json.loads(line)["split"] for line in path.read_text().splitlines()] == [
      "train", "train", "val"]


def test_the_console_shows_four_significant_digits_below_one_thousandth():
  # 1.234e-4 in four decimals is 0.0001: three of its digits lost.
  assert cb.format_logs({"learning_rate": 1.234e-4, "loss": 0.001, "val_loss": -0.00099}) == (
      "learning_rate 0.0001234  loss 0.0010  val_loss -0.00099")


# ------------------------------------------------------------ CLI


def test_train_exits_2_when_terminate_on_nan_stopped_the_run(monkeypatch, tmp_path, capsys):
  # `jdl train` after terminate_on_nan: the run did not finish (its docstring and
  # TerminateOnNaN's say exit 2), though fit() returned normally.
  from jdl.train import loop

  class Trainer:
    preempted, nan_detected, step = None, True, 4

  class Result:
    trainer, workdir = Trainer(), tmp_path

  monkeypatch.setattr(loop, "fit", lambda *a, **k: Result())
  assert cli.main(["train", "--config", "xor", "--workdir", str(tmp_path), "--quiet"]) == 2
  Trainer.nan_detected = False
  assert cli.main(["train", "--config", "xor", "--workdir", str(tmp_path), "--quiet"]) == 0


def test_an_override_given_twice_takes_the_last_value(capsys):
  assert cli.main(["config", "--config", "xor", "--config.num_epochs=3",
                   "--config.num_epochs", "7"]) == 0
  assert json.loads(capsys.readouterr().out)["num_epochs"] == 7


@pytest.mark.parametrize("raw", ["2.5", "2.0", "1e3", "true"])
def test_an_integer_key_refuses_a_value_that_is_no_integer(raw, capsys):
  # int(float('2.5')) would train 2 epochs, silently.
  assert cli.main(["config", "--config", "xor", f"--config.num_epochs={raw}"]) == 2
  err = capsys.readouterr().err
  assert err == f"jdl: error: --config.num_epochs expects an integer, got {raw!r}\n"


def test_list_refuses_config_overrides(capsys):
  assert cli.main(["list", "--config.num_epochs=3"]) == 2
  assert capsys.readouterr().err == "jdl: error: list takes no --config overrides\n"


@pytest.mark.parametrize("raw, value", [("1", True), ("yes", True), ("TRUE", True),
                                        ("0", False), ("No", False), ("false", False)])
def test_a_bool_key_takes_the_usual_spellings(raw, value):
  config = jdl.load_config("xor")
  jdl.config.apply_overrides(config, {"plots": raw})
  assert config.plots is value
