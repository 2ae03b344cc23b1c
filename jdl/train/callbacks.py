"""Callbacks: the side effects around the pure steps.

A callback sees the :class:`~jdl.train.loop.Trainer` (its ``state``, ``config``,
``workdir``, ``stop_training``) at the start of training, after each block of steps,
at each epoch end with that epoch's flat logs (``loss``, ``accuracy``,
``val_loss``, ...) and at the end. Anything a callback must remember across a
resume goes in ``state_dict()``, which is saved in every checkpoint's metadata.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jdl import metrics as metrics_lib
from jdl import optim
from jdl.errors import JdlError
from jdl.train import workdir as workdir_lib


class Callback:
  """Base class: every hook is optional.

  A hook may set ``trainer.stop_training = True``: training stops after the block of
  steps in flight (``on_steps_end``) or at the epoch's end (``on_epoch_end``), and
  ``on_train_end`` runs. A stop at an epoch's end ends the run, as early stopping
  does: its checkpoint records it, and a re-run (or a second ``fit()``) finds the
  run complete. A stop inside an epoch ends this ``fit()`` only: the partial epoch
  is checkpointed and a re-run continues it. ``state_dict()`` and
  ``load_state_dict(state)`` carry what the callback must remember across a resume (JSON
  values, saved in each checkpoint).
  """

  def on_train_begin(self, trainer) -> None:
    """Before the first step of this ``fit`` (after a resume has restored the state
    and this callback's ``state_dict``)."""

  def on_steps_end(self, trainer, step: int, num_steps: int) -> None:
    """After ``num_steps`` more steps have been dispatched; ``step`` is the new count."""

  def on_epoch_end(self, trainer, epoch: int, logs: dict[str, float]) -> None:
    """After epoch ``epoch`` (counted from 0; the console and ``metrics.jsonl`` count
    from 1) with its flat logs (``loss``, ``accuracy``, ``val_loss``, ...)."""

  def on_train_end(self, trainer) -> None:
    """When training ends and ``fit`` returns: at ``num_epochs``, on early stopping or
    on a callback's stop. Not after a signal's stop (a preemption: the run resumes)
    nor an error."""

  def kept_steps(self) -> tuple[int, ...]:
    """Steps whose checkpoints this callback reads back later: saved, never pruned."""
    return ()

  @property
  def state_key(self) -> str:
    """The name this callback's ``state_dict()`` is saved under: its class name. A
    callback class used several times in a run whose order may change between
    runs should return a key made of its settings; equal keys are told apart by
    order (``Key``, ``Key#2``, ...)."""
    return type(self).__name__

  def state_dict(self) -> dict[str, Any]:
    """What to remember across a resume: JSON values, saved in each checkpoint."""
    return {}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    """Takes back what :meth:`state_dict` returned, when a run resumes."""
    del state


def state_keys(callbacks: list[Callback]) -> list[str]:
  """The names under which the callbacks' states are saved: each one's ``state_key``,
  then ``Key#2``, ``Key#3``... for more callbacks of one key, in their order."""
  seen: dict[str, int] = {}
  keys = []
  for c in callbacks:
    name = c.state_key
    seen[name] = seen.get(name, 0) + 1
    keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
  return keys


def _better(mode: str, value: float, best: float | None, min_delta: float) -> bool:
  if best is None:
    return not math.isnan(value)
  if mode == "min":
    return value < best - min_delta
  return value > best + min_delta


def _monitored(logs: dict[str, float], monitor: str, who: str) -> float:
  if monitor not in logs:
    raise JdlError(f"{who} monitors {monitor!r}, which is not logged; "
                   f"logged: {', '.join(sorted(logs))}")
  return float(logs[monitor])


class EarlyStopping(Callback):
  """Stops once ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

  As Keras' and Lightning's: with ``patience=2`` and the best epoch 1, training
  stops after epoch 3 (``patience=0`` stops at the first epoch without improvement,
  as 1 does); ``reduce_on_plateau.patience`` counts the same way. As Keras', it
  never stops after the first epoch (whose value, unless NaN, is the first best).
  With ``restore_best`` the state of the best epoch is put back at the end.

  ``mode``: ``'min'`` or ``'max'``; by default the monitored metric's own direction
  (``val_accuracy`` is better higher, ``val_loss`` lower: ``jdl.metrics.better_direction``,
  which knows registered metrics by their ``better``). A name of unknown direction
  needs it given.
  """

  def __init__(self, monitor: str = "val_loss", mode: str | None = None, patience: int = 5,
               min_delta: float = 0.0, restore_best: bool = True):
    if mode is None:
      mode = metrics_lib.better_direction(monitor.removeprefix("val_"))
      if mode is None:
        raise JdlError(f"EarlyStopping: whether {monitor!r} is better higher or lower is not "
                       "known (not a built-in metric, nor one registered with better=); "
                       "give mode='max' or mode='min'")
    if mode not in ("min", "max"):
      raise JdlError(f"early_stopping.mode must be 'min' or 'max', got {mode!r}")
    if patience < 0:
      raise JdlError(f"early_stopping.patience must be >= 0, got {patience}")
    if not math.isfinite(min_delta):  # NaN: no value would count as better.
      raise JdlError(f"early_stopping.min_delta must be finite, got {min_delta}")
    self.monitor, self.mode, self.patience = monitor, mode, patience
    self.min_delta, self.restore_best = abs(float(min_delta)), restore_best  # As Keras.
    self._trainer = None  # A weak reference to the Trainer that runs it.
    self._reset()

  def _reset(self) -> None:
    self.best: float | None = None
    self.best_epoch = -1
    self.best_step = -1
    self.wait = 0
    self.stopped_epoch = -1
    self._best_state = None

  def bind(self, trainer) -> None:
    """Called by each :class:`~jdl.train.loop.Trainer` given this callback, as it is
    made. An instance given to another run (a sweep, a second ``jdl.fit``) starts
    afresh there (a resume then loads its saved state); it watched another run's
    values, and stopped or restored that run's best epoch on them."""
    if self._trainer is None or self._trainer() is not trainer:
      self._reset()
      self._trainer = weakref.ref(trainer)

  def on_epoch_end(self, trainer, epoch, logs):
    value = _monitored(logs, self.monitor, "early stopping")
    if _better(self.mode, value, self.best, self.min_delta):
      self.best, self.best_epoch, self.wait = value, epoch, 0
      self.best_step = int(trainer.step)
      if self.restore_best:
        self._best_state = jax.tree.map(lambda x: x.copy(), trainer.state)
      return
    self.wait += 1
    if self.wait >= self.patience and epoch > 0:
      self.stopped_epoch = epoch
      trainer.stop_training = True
      best = ("no finite value yet" if self.best is None  # NaN from the first epoch on.
              else f"best {self.best:.5g} at epoch {self.best_epoch + 1}")
      trainer.log(f"early stopping at epoch {epoch + 1}: {self.monitor} has not improved "
                  f"for {self.wait} epochs ({best})")

  def on_train_end(self, trainer):
    if not self.restore_best or self.best_step < 0 or self.best_step == int(trainer.step):
      return
    state = self._best_state
    if state is None:  # Resumed after the best epoch: reload it from its checkpoint.
      state = trainer.restore_step(self.best_step)
    if state is None:
      trainer.log(f"early stopping: the best epoch's checkpoint (step {self.best_step}) is "
                  "gone or unreadable; keeping the last state")
      return
    trainer.state = state
    trainer.log(f"restored the best state (epoch {self.best_epoch + 1}, "
                f"{self.monitor}={self.best:.5g})")

  def kept_steps(self):
    # Its best epoch is ranked with min_delta, so it need not be the best checkpoint.
    return (self.best_step,) if self.restore_best and self.best_step >= 0 else ()

  def state_dict(self):
    return {"best": self.best, "best_epoch": self.best_epoch, "best_step": self.best_step,
            "wait": self.wait, "stopped_epoch": self.stopped_epoch,
            "monitor": self.monitor, "mode": self.mode,
            # Whether the run ends in best_step's state: evaluate reads that state too.
            "restore_best": bool(self.restore_best)}

  # What state_dict() saves besides monitor and mode, with the JSON types it has.
  _STATE_TYPES = {"best": (int, float, type(None)), "best_epoch": int, "best_step": int,
                  "wait": int, "stopped_epoch": int}

  def load_state_dict(self, state):
    if not isinstance(state, dict):
      raise JdlError(f"the saved early-stopping state is not a JSON object ({state!r:.60})")
    state = dict(state)
    state.pop("restore_best", None)  # A record for evaluate; this instance's own holds.
    # The state of an early stopping that watched another metric (the callbacks
    # changed between runs) is not this one's: it starts afresh.
    if (state.pop("monitor", self.monitor), state.pop("mode", self.mode)) != (
        self.monitor, self.mode):
      return
    for k, v in state.items():  # Checked first: a wrong type failed an epoch later.
      kinds = self._STATE_TYPES.get(k)
      if kinds is None or isinstance(v, bool) or not isinstance(v, kinds):
        raise JdlError(f"the saved early-stopping state has {k}={v!r:.60}, not "
                       + ("one of its fields" if kinds is None else "a number"))
    for k, v in state.items():
      setattr(self, k, v)


class ReduceLROnPlateau(Callback):
  """Drives optax's reduce-on-plateau with a validation metric once per epoch.

  The plateau counters and the scale live in the optimizer state
  (:func:`jdl.optim.update_plateau`), so they are checkpointed with it.
  """

  def __init__(self, config):
    self.monitor = config.reduce_on_plateau.monitor
    self.rtol = float(config.reduce_on_plateau.rtol)
    self._update = jax.jit(functools.partial(optim.update_plateau, config))

  def on_epoch_end(self, trainer, epoch, logs):
    value = _monitored(logs, self.monitor, "reduce_on_plateau")
    if self.rtol > 0 and value < 0:
      # optax's test `value < (1 - rtol) * best - atol` is relative to a positive best:
      # below 0 it takes worse values for improvements, and the rate is never cut.
      raise JdlError(f"reduce_on_plateau.rtol={self.rtol:g} needs a metric >= 0, but "
                     f"{self.monitor} is {value:.6g} at epoch {epoch + 1}; use "
                     "--config.reduce_on_plateau.rtol=0 and atol")
    state = trainer.state
    trainer.state = state.replace(opt_state=self._update(state.opt_state, value))


class TerminateOnNaN(Callback):
  """Stops training, before any checkpoint is written, once the loss is not finite.

  Said on stderr even when quiet; the run is not finished (``trainer.nan_detected``;
  ``jdl train`` exits 2), and its checkpoints are all from before.
  """

  def on_epoch_end(self, trainer, epoch, logs):
    bad = [k for k, v in logs.items() if k.endswith("loss") and not math.isfinite(v)]
    if bad:
      trainer.stop_training = True
      trainer.nan_detected = True
      last = trainer.checkpointer.latest_step() if trainer.checkpointer is not None else None
      kept = (f"; the last checkpoint (step {last}) is intact" if last is not None else "")
      trainer.warn(f"jdl: error: {bad[0]} is {logs[bad[0]]} at epoch {epoch + 1} (step "
                   f"{trainer.step}): training stopped (terminate_on_nan), no checkpoint "
                   f"of this state is written{kept}")


class MetricsLogger(Callback):
  """Appends one JSON object a line to ``metrics.jsonl``."""

  def __init__(self, path: str | Path):
    self.path = Path(path)
    # The next test line replaces the test lines that end the file (a finished run
    # re-run), rather than following them.
    self.replace_test = False

  def truncate_after(self, step: int, *, keep_test: bool = False) -> Path | None:
    """Drops lines past ``step``: the resumed run writes them again. The test lines
    that end the file go too unless ``keep_test`` (a finished run that is trained
    further keeps the test result it had; one that is re-run writes it again);
    earlier test lines (of earlier stages) are kept.

    A partial last line (a run killed while appending) is dropped too. An unreadable
    line before it is damage, not a kill: the file as it was is then kept beside it,
    and its path returned (else ``None``).
    """
    return self.commit_truncation(self.plan_truncation(step, keep_test=keep_test))

  def read(self) -> tuple[bytes, list[dict], bool] | None:
    """``(the file, its readable records, whether it is damaged)``; ``None`` without
    a file.

    Raises:
      JdlError: the file cannot be read.
    """
    if not self.path.exists():
      return None
    try:
      raw = self.path.read_bytes()
    except OSError as e:
      raise JdlError(f"cannot read {self.path}: {e.strerror}") from None
    records, damaged = [], False
    lines = raw.splitlines()
    for i, line in enumerate(lines):
      try:
        record = json.loads(line.decode("utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError):
        damaged = damaged or i < len(lines) - 1
        continue
      if (isinstance(record, dict) and isinstance(record.get("step", 0), int)
          and not isinstance(record.get("step", 0), bool)):
        records.append(record)
      else:  # Valid JSON, but not a record of this logger's: damage too.
        damaged = True
    return raw, records, damaged

  def plan_truncation(self, step: int, *,
                      keep_test: bool = False) -> tuple[bytes, list[str], bool] | None:
    """Reads the file for :meth:`truncate_after` and writes nothing: ``(the file,
    the lines to keep, whether it is damaged)``, or ``None`` without a file.

    Raises:
      JdlError: the file cannot be read.
    """
    read = self.read()
    if read is None:
      return None
    raw, records, damaged = read
    records = [r for r in records if r.get("step", 0) <= step]
    if not keep_test:  # The finished run's own test lines: those after its last epoch.
      while records and records[-1].get("split") == "test":
        records.pop()
    return raw, [_strict_json(r) for r in records], damaged

  def last_step(self) -> int:
    """The largest step of the file's readable records (0 without any)."""
    read = self.read()
    return max((r.get("step", 0) for r in read[1]), default=0) if read else 0

  def commit_truncation(self, plan: tuple[bytes, list[str], bool] | None) -> Path | None:
    """Writes what :meth:`plan_truncation` planned; returns the backup's path, if any."""
    if plan is None:
      return None
    raw, kept, damaged = plan
    backup = None
    if damaged:
      backup = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
      backup.write_bytes(raw)
    workdir_lib.write_text(self.path, "".join(line + "\n" for line in kept))
    return backup

  def write(self, record: dict[str, Any]) -> None:
    if self.replace_test and record.get("split") == "test":
      self.replace_test = False
      self.commit_truncation(self.plan_truncation(math.inf, keep_test=False))
    try:
      with self.path.open("a") as f:
        f.write(_strict_json(record) + "\n")
    except OSError as e:  # A full disk: one line that names the file.
      raise JdlError(f"cannot append to {self.path}: {e.strerror or e}") from None


class _LazyWriter:
  """tensorboardX's ``SummaryWriter``, opened at its first use: its events file is
  created only when something is written (a re-run of a finished run, with nothing
  to train, added an events file to ``tb/`` each time). ``close`` and ``flush`` of a
  writer never opened do nothing; anything else opens it."""

  def __init__(self, writer_class, logdir: str, **kwargs):
    self._class, self._kwargs = writer_class, kwargs
    self._opened = None
    self.logdir = logdir

  def open(self):
    if self._opened is None:
      self._opened = self._class(self.logdir, **self._kwargs)
    return self._opened

  def flush(self) -> None:
    if self._opened is not None:
      self._opened.flush()

  def close(self) -> None:
    if self._opened is not None:
      self._opened.close()

  def __getattr__(self, name: str):
    if name.startswith("_"):  # Not set yet (copy, pickle): no writer to open.
      raise AttributeError(name)
    return getattr(self.open(), name)


class TensorBoard(Callback):
  """Scalars to TensorBoard event files under ``workdir/tb``.

  A resumed run passes ``purge_step``, the first step it will write again:
  TensorBoard then hides the points of earlier event files from that step on
  (those a killed run wrote past its last checkpoint), as ``metrics.jsonl`` drops
  its lines past it. The events file is created at the first point written: a run
  that writes none (a finished run re-run) leaves ``tb/`` as it was.
  """

  # Facts of the run, not curves (metrics.jsonl keeps them); timings are plotted.
  SKIP = metrics_lib.RECORD_FACTS

  def __init__(self, logdir: str | Path, purge_step: int | None = None):
    import logging
    from tensorboardX import SummaryWriter  # Imported lazily: a slow import.
    # A NaN metric (an undefined r2, a diverged loss) is written as NaN, as in
    # metrics.jsonl; tensorboardX would also warn of it on stderr at every epoch.
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
    # Event files are named by the second they open in: a resume within the same
    # second would reopen (and truncate) the earlier one, but for the suffix.
    suffix = f".from_step_{purge_step - 1}" if purge_step else ""
    self.writer = _LazyWriter(SummaryWriter, str(logdir), purge_step=purge_step,
                              filename_suffix=suffix)
    self.test_written = False  # True: a test record is not written again.

  def write(self, record: dict[str, Any]) -> None:
    split, step = record["split"], record["step"]
    if split == "test" and self.test_written:
      return
    try:
      for k, v in record.items():
        if k not in self.SKIP and isinstance(v, (int, float)):
          self.writer.add_scalar(f"{split}/{k}", v, step)
      self.writer.flush()
    except OSError as e:  # A full disk: one line that names the folder.
      raise JdlError(f"cannot write TensorBoard's events in {self.writer.logdir}: "
                     f"{e.strerror or e}") from None

  def on_train_end(self, trainer):
    self.writer.close()

  def abandon(self) -> None:
    """Closes the writer after an error, saying nothing. When its last flush fails
    too (a full disk) the file writer is marked closed: tensorboardX would try the
    flush again at exit and print a traceback after jdl's one-line error."""
    opened = self.writer._opened  # pylint: disable=protected-access
    if opened is None:
      return
    try:
      opened.close()
    except Exception:  # noqa: BLE001
      events = getattr(getattr(opened, "file_writer", None), "event_writer", None)
      if events is not None and hasattr(events, "_closed"):
        events._closed = True  # pylint: disable=protected-access


def in_notebook() -> bool:
  """Whether this process is a Jupyter (or Colab) kernel: its stderr is no terminal,
  yet the notebook shows a progress bar."""
  ipython = sys.modules.get("IPython")  # Imported by any kernel; never imported here.
  shell = getattr(ipython, "get_ipython", lambda: None)() if ipython else None
  return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class ProgressBar(Callback):
  """A tqdm bar per epoch, on a terminal or in a notebook (a widget where ipywidgets
  is installed, else tqdm's text bar)."""

  def __init__(self, enabled: bool | None = None):
    self.enabled = (sys.stderr.isatty() or in_notebook()) if enabled is None else enabled
    self._bar = None

  def start_epoch(self, epoch: int, num_epochs: int, total: int, initial: int) -> None:
    if not self.enabled:
      return
    from tqdm.auto import tqdm
    kwargs = dict(total=total, initial=initial, desc=f"epoch {epoch + 1}/{num_epochs}",
                  unit="step", leave=False, dynamic_ncols=True)
    try:
      self._bar = tqdm(**kwargs)
    except ImportError:  # tqdm's notebook widget without ipywidgets: its text bar.
      from tqdm.std import tqdm as text_tqdm
      self._bar = text_tqdm(**kwargs)

  def on_steps_end(self, trainer, step, num_steps):
    if self._bar is not None:
      self._bar.update(num_steps)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def on_epoch_end(self, trainer, epoch, logs):
    self.close()


def _strict_json(record: dict[str, Any]) -> str:
  """One line of strict JSON: a value that is not a finite number (a diverged loss,
  the r2 of one example) is ``null``, as ``jdl evaluate`` prints it (``NaN`` is no
  JSON token; Python reads it, most other readers refuse the line)."""
  return json.dumps(_finite_or_none(record), allow_nan=False)


def _finite_or_none(value: Any) -> Any:
  """``value`` with each non-finite float, at any depth (a diagnostics line's
  histograms), made ``None``."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _finite_or_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite_or_none(v) for v in value]
  return value


def format_logs(logs: dict[str, float]) -> str:
  """``name value`` pairs: four decimals, or four significant digits for values
  that decimals would hide (a learning rate of 1e-5 is not ``0.0000``) or that are
  large."""
  parts = []
  for k, v in logs.items():
    fixed = isinstance(v, float) and np.isfinite(v) and (v == 0 or 1e-3 <= abs(v) < 1e4)
    parts.append(f"{k} {v:.4f}" if fixed else f"{k} {v:.4g}")
  return "  ".join(parts)


__all__ = ["Callback", "EarlyStopping", "ReduceLROnPlateau", "TerminateOnNaN", "MetricsLogger",
           "TensorBoard", "ProgressBar"]
