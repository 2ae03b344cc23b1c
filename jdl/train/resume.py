"""The workdir side of a run: config check, checkpoints, exact resume.

:class:`jdl.train.loop.Trainer` mixes this in. A run's workdir holds
``config.json`` (checked against the current config before anything is written),
``checkpoints/`` (orbax, through :class:`jdl.checkpoint.Checkpointer`: the state,
the epoch's running metric sums, and JSON metadata with the history and the
callbacks' state), ``metrics.jsonl``, ``summary.txt``, ``plots/`` and ``tb/``.
Damaged checkpoints are moved aside with a warning and the previous one is used;
a checkpoint is never written with a non-finite value in it.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jdl import checkpoint as ckpt_lib
from jdl import config as config_lib
from jdl.data import sources
from jdl.errors import JdlError
from jdl.train import callbacks as cb
from jdl.train import parallel as parallel_lib
from jdl.train import workdir as workdir_lib
from jdl.train.state import TrainState


def saved_config(workdir, checkpointer, step: int) -> dict | None:
  """The run's config: ``config.json``, else the one in the step's metadata."""
  try:
    return json.loads((workdir / "config.json").read_text())
  except (OSError, ValueError):
    pass
  try:
    config = checkpointer.restore_meta(step).get("config")
  except Exception:  # noqa: BLE001 (a damaged step: no config to compare)
    return None
  return config if isinstance(config, dict) else None


RESUME_REMEDY = ("Use the run's own config, another --workdir, or --restart to start over "
                 "(the old run is moved aside)")


def mismatch_message(workdir, step: int, diffs: list[str], saved: dict | None,
                     config, remedy: str = RESUME_REMEDY,
                     steps_per_epoch: int | None = None, model: str | None = None) -> str:
  """One line: a checkpoint's arrays differ from the config's; which keys changed.

  ``model``: the class of the module this call was given (``fit(model=...)``), which
  builds the parameters instead of the config."""
  current = json.loads(config_lib.to_json(config))
  changed = config_lib.value_diff(saved, current) if isinstance(saved, dict) else []
  keys = f"; the config differs from the run's in {', '.join(changed)}" if changed else ""
  more = f" and {len(diffs) - 2} more" if len(diffs) > 2 else ""
  if all(d.startswith("acc/") for d in diffs):  # Only the epoch's metric sums differ.
    where = ""
    if steps_per_epoch:  # Mid-epoch (at an epoch's end the metrics may change).
      epoch, pos = divmod(step, steps_per_epoch)
      where = f", at batch {pos}/{steps_per_epoch} of epoch {epoch + 1},"
    return (f"the checkpoint at step {step} in {workdir}{where} holds other metric sums "
            f"than this run keeps ({'; '.join(diffs[:2])}{more}){keys}: config.metrics, or "
            "the statistics of a metric registered with jdl.metrics.register_metric, "
            "changed. A run can change its metrics where an epoch ends, not within one: "
            "keep the run's metrics until its next epoch-end checkpoint, or use --restart "
            "(or another workdir) to start over")
  builds = f"this call's model {model} and config build" if model else "this config builds"
  return (f"the checkpoint at step {step} in {workdir} holds another model or optimizer "
          f"state than {builds} ({'; '.join(diffs[:2])}{more}){keys}. {remedy}")


def final_step(config, ck: ckpt_lib.Checkpointer, latest: int,
               callback_states: dict | None = None) -> tuple[int, str]:
  """The state a run ends with, as ``jdl evaluate``, ``predict`` and ``sample`` read
  it, and why: early stopping's restored epoch, else the best checkpoint by
  ``config.monitor``, else ``latest``.

  ``callback_states``: the callbacks' states as ``latest`` saved them, from a run
  that holds them (fit); otherwise they are read from ``latest``'s metadata, a
  collective read that every process of a multi-process run must make together.
  """
  chosen = _early_stopping_best(config, ck, latest, callback_states)
  if chosen is not None:
    return chosen
  if config.monitor:
    step = ck.best_step()
    if step is not None:
      return step, f"the best by {config.monitor} ({config.monitor_mode})"
    return latest, f"the latest (no checkpoint records a value of {config.monitor})"
  return latest, "the latest"


def _early_stopping_best(config, ck: ckpt_lib.Checkpointer, latest: int,
                         saved: dict | None = None) -> tuple[int, str] | None:
  """The step early stopping restores at the end of the run (``restore_best``), as
  the latest checkpoint's callback states record it, and why; ``None`` without one.

  It ranks epochs by its own monitor and ``min_delta``, so it need not be the best
  checkpoint by ``config.monitor``: the run's test line scores this state, and so
  must ``evaluate``. The config's early stopping and one passed to ``fit`` alike
  record ``restore_best``; of several, the last restores last (its state is kept).
  Checkpoints written before the record: the config's, as it is now.
  """
  if saved is None:
    with ckpt_lib.unreadable_as_error(ck.directory, latest):
      meta = ck.restore_meta(latest)
    saved = meta.get("callbacks") if isinstance(meta, dict) else None
  es = config.early_stopping
  chosen = None
  for key, state in (saved.items() if isinstance(saved, dict) else ()):
    if not isinstance(state, dict) or not {"best_step", "monitor", "mode"} <= state.keys():
      continue  # Not an early stopping's state.
    restores = state.get("restore_best")
    if restores is None:  # Saved before the record: the config's, if it still matches.
      restores = (key == "EarlyStopping" and es.enabled and es.restore_best
                  and (state["monitor"], state["mode"]) == (es.monitor, es.mode))
    step = state["best_step"]
    if restores is True and isinstance(step, int) and not isinstance(step, bool) and step >= 0:
      chosen = step
  if chosen is None:
    return None
  if chosen in ck.steps():
    return chosen, "early stopping's restored epoch"
  # Its step gone (removed by hand: early stopping keeps it), fit kept the last state.
  return latest, f"the latest (early stopping's best step {chosen} is gone)"


class ResumeRefused(JdlError):
  """A readable checkpoint this run must not resume from: refuse, touch nothing."""


def check_provenance(meta: dict, step: int, workdir, data_source: dict, model_source: dict,
                     *, call: str) -> None:
  """Refuses a checkpoint trained on other data, or on data or a model given to
  ``fit(dataset=..., model=...)`` that this run was not given.

  ``meta`` is the step's metadata (older checkpoints, without the record, pass);
  ``call`` names what to call again with the argument (``fit``, ``load_run``).

  Raises:
    ResumeRefused: naming what differs and what to pass.
  """
  where = f"the checkpoint at step {step} in {workdir}"
  check_given(meta, where, data_given=data_source["given"], model_given=model_source["given"],
              loads=data_source["name"], call=call)
  saved_model = meta.get("model") if isinstance(meta, dict) else None
  if (isinstance(saved_model, dict) and saved_model.get("given") and model_source["given"]
      and saved_model.get("class") not in (None, model_source["class"])):
    # The parameters may fit another module (the same layers, another activation):
    # restored, they would compute something else, silently.
    raise ResumeRefused(
        f"{where} was trained with the module {saved_model['class']}, passed to "
        f"fit(model=...); this call passes {model_source['class']}. Pass the module that "
        f"trained it: {call}(..., model={saved_model['class']}(...))"
        + (", or use another workdir, or start over (restart=True)" if call == "fit" else ""))
  saved = meta.get("data") if isinstance(meta, dict) else None
  if not isinstance(saved, dict):
    return
  other = saved.get("fingerprint") not in (None, data_source["fingerprint"],
                                           data_source.get("float32_fingerprint"))
  # The same sampled rows, another byte elsewhere (checkpoints since 2026-12-03).
  edited = (not other and None not in (saved.get("checksum"), data_source.get("checksum"))
            and saved["checksum"] != data_source["checksum"])
  if other or edited:
    name = data_source["name"]
    if not data_source["given"] and name == saved.get("name") and name in sources.GENERATED:
      advice = (f"{name!r} is generated by jdl itself, and this version generates other "
                "data for the run's settings than the version that trained it: score the "
                "run with that version, or start over (restart=True, --restart)")
    elif call == "fit":
      advice = "Use the run's data, another workdir, or start over (restart=True, --restart)"
    else:
      advice = ("Read the run's own data: from the command line --config.data_dir=DIR (jdl "
                f"evaluate, predict, sample), from Python {call}(..., dataset=...)")
    key = "fingerprint" if other else "checksum"
    raise ResumeRefused(
        f"{where} was trained on other data: its arrays ({saved.get('name')!r}, "
        f"{key} {saved.get(key)}) differ from this call's "
        f"({data_source['name']!r}, {data_source[key]}). " + advice)


def check_given(record: dict | None, where: str, *, data_given: bool, model_given: bool,
                loads: str, call: str) -> None:
  """Refuses a call without the dataset or the module that a run was given
  (``record``: a checkpoint's metadata or config.json's sources, ``{"data": {"given":
  ..., "name": ...}, "model": {"given": ..., "class": ...}}``), before this call
  builds the config's own (whose shapes may not even fit the run's).

  Raises:
    ResumeRefused: naming what was given and what to pass.
  """
  record = record if isinstance(record, dict) else {}
  saved_model, saved = record.get("model"), record.get("data")
  if isinstance(saved_model, dict) and saved_model.get("given") and not model_given:
    raise ResumeRefused(
        f"{where} was trained with a model passed to fit(model=...) "
        f"({saved_model.get('class')}), which the config cannot rebuild; pass the same "
        f"module: {call}(..., model=...)")
  if isinstance(saved, dict) and saved.get("given") and not data_given:
    raise ResumeRefused(
        f"{where} was trained on a dataset passed to fit(dataset=...) "
        f"({saved.get('name')!r}); this call loads {loads!r} from the config "
        f"instead. Pass the same dataset: {call}(..., dataset=...)")


def check_given_in_config_json(workdir: Path, *, data_given: bool, model_given: bool,
                               loads: str) -> None:
  """:func:`check_given` of ``fit`` against the sources a workdir's config.json
  records, when the workdir holds checkpoints to resume (an unreadable config.json
  is left to the workdir's own checks)."""
  path = Path(workdir) / "config.json"
  if (data_given and model_given) or not (Path(workdir) / "checkpoints").is_dir():
    return
  try:
    sources = json.loads(path.read_text(encoding="utf-8")).get(config_lib.SOURCES_KEY)
  except (OSError, ValueError, AttributeError):
    return
  check_given(sources, f"the run in {workdir}", data_given=data_given,
              model_given=model_given, loads=loads, call="fit")


def _square_confusion(acc: dict) -> dict | None:
  """``acc`` with the C x C confusion matrix that checkpoints written before
  2026-11-30 hold (since then C x (C + 1): a column for NaN rows, which predict no
  class); ``None`` without a confusion matrix."""
  if "confusion" not in acc:
    return None
  matrix = acc["confusion"]["matrix"]
  return {**acc, "confusion": {**acc["confusion"], "matrix": matrix[:, :-1]}}


def _epochs(numbers: list[int]) -> str:
  """``[1, 2, 3, 5]`` as ``'epochs 1-3, 5'``; ``[4]`` as ``'epoch 4'``."""
  spans: list[list[int]] = []
  for n in sorted(numbers):
    if spans and n == spans[-1][1] + 1:
      spans[-1][1] = n
    else:
      spans.append([n, n])
  text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
  return f"epoch{'s' if len(numbers) > 1 else ''} {text}"


class VocabularyMismatch(ResumeRefused):
  """A checkpoint's vocabulary differs from the one the train split gives now."""


class ResumableRun:
  """Opens, resumes and checkpoints a trainer's workdir."""

  def _open_workdir(self) -> int:
    """Creates or resumes the workdir; returns the step training resumes from.

    In a multi-process run only process 0 writes files; every process checks the
    saved config and opens the checkpoints (orbax saves and restores with all of
    them taking part).
    """
    wd = self.workdir
    for name in workdir_lib.RUN_FILES:  # Before anything is written.
      path, folder = wd / name, "." not in name
      if path.exists() and path.is_dir() != folder:
        raise JdlError(f"{path} is a {'file' if folder else 'folder'}, where a run keeps "
                       f"its {name} {'folder' if folder else 'file'}; move it away or use "
                       "another --workdir")
    if self.primary:
      wd.mkdir(parents=True, exist_ok=True)
    config_json = wd / "config.json"
    current = json.loads(config_lib.to_json(self.config))
    saved = None
    notes = []  # Warnings about the resume: once it is not refused.
    if config_json.exists():
      saved = workdir_lib.read_json(config_json)
      diffs = config_lib.structural_diff(saved, current)
      if diffs and (wd / "checkpoints").exists():
        raise JdlError(
            f"workdir {wd} holds a run with a different config ({', '.join(diffs)} "
            f"{'differs' if len(diffs) == 1 else 'differ'}); "
            "use another --workdir, or --restart to start over (the old run is moved aside)")
      before = saved.get(config_lib.RUNTIME_KEY, {}).get("cpu_cores")
      runtime = self.runtime()
      now = runtime["cpu_cores"]
      if (before and before != now and runtime["platform"] == "cpu"
          and (wd / "checkpoints").exists()):
        notes.append(f"jdl: warning: the run was on {before} CPU cores, this process may use "
                  f"{now}: XLA:CPU sums convolutions in another order, so the run continues "
                  "within float tolerance rather than bitwise (same core count: bitwise)")
      schedule = current.get("schedule", {}).get("name")
      old_epochs, new_epochs = saved.get("num_epochs"), current.get("num_epochs")
      if (old_epochs != new_epochs and schedule in ("cosine", "warmup_cosine")
          and (wd / "checkpoints").exists()):
        notes.append(f"jdl: warning: num_epochs is {new_epochs}, the run had {old_epochs}: its "
                  f"{schedule} schedule now spans {new_epochs} epochs, so the learning rate "
                  "continues on the new curve (not the one the run started on)")
    self._damaged_steps = []
    self._trained_with = None  # The config the resumed checkpoint recorded, if any.
    if self.primary:  # It holds the lock: a save in flight there died with its run.
      ckpt_lib.remove_unfinished(wd / "checkpoints")
    damaged = ckpt_lib.find_damaged_folders(wd / "checkpoints") if self.primary else {}
    for name, reason in sorted(damaged.items(), key=lambda item: int(item[0])):
      step = int(name)
      self._damaged_steps.append(step)
      self._move_aside(step, reason, name)
    parallel_lib.sync("jdl_workdir_ready")  # Process 0 has tidied the checkpoints.
    self._open_checkpointer()
    start = self._resume_latest_readable()
    self._check_best_readable(start)
    for line in notes:
      self.warn(line)
    if not self.primary:
      return start
    # After the checkpoint's config is checked: a refused run leaves no folder.
    for sub in ("plots", "tb") if self.config.tensorboard else ("plots",):
      (wd / sub).mkdir(exist_ok=True)
    # The run's files are rewritten only now that it resumes (or starts), and
    # metrics.jsonl last (read first: an unreadable one is an error before any
    # write): a write that fails (disk full) leaves the old run's results, test line
    # included, as they were.
    self.logger = cb.MetricsLogger(wd / "metrics.jsonl")
    last = self.logger.last_step() if self.checkpointer.latest_step() is None else 0
    if last > 0:  # Its checkpoints/ were removed, or it died before its first save.
      moved = workdir_lib.move_aside(wd, workdir_lib.RECORD_FILES)
      self.warn(f"jdl: warning: {wd} holds no checkpoint to resume, but its metrics.jsonl "
                f"records a run to step {last}: starting over; that run's records were "
                f"moved to {moved}")
      for sub in ("plots", "tb") if self.config.tensorboard else ("plots",):
        (wd / sub).mkdir(exist_ok=True)
      saved = None
    sources = {"data": self.data_source, "model": self.model_source}
    complete = self._finished(start)
    # A finished run that trains further keeps its test line; one re-run (nothing
    # left to train) writes it again, replacing the old one only then (an error
    # before, e.g. a damaged best checkpoint, leaves it).
    extends = (start < self.num_epochs * self.steps_per_epoch and not complete)
    truncation = self.logger.plan_truncation(start, keep_test=True)
    self.logger.replace_test = not extends
    # A finished run's record (config.json, summary.txt) stays as it was trained.
    self.record_kept = saved is not None and complete
    if not self.record_kept:
      # Against the config the resumed checkpoint recorded, when it did: a setting
      # edited by hand in config.json is a change too (config.json's own values else).
      base = self._trained_with or saved
      undo = (self._record_config_changes(base, current, start)
              if saved is not None and start > 0 else None)
      try:
        workdir_lib.write_text(config_json,
                               config_lib.to_json(self.config, self.runtime(), sources) + "\n")
      except BaseException:
        if undo is not None:  # config.json still holds the old values: no change to record.
          undo()
        raise
      workdir_lib.write_text(wd / "summary.txt", self.summary() + "\n")
    if self.vocab:
      workdir_lib.write_text(wd / "vocab.json", json.dumps(self.vocab_json()) + "\n")
    self._write_normalizer()
    backup = self.logger.commit_truncation(truncation)
    if backup:
      self.warn(f"jdl: warning: {self.logger.path} had unreadable lines, which were "
                f"dropped; the file as it was is kept as {backup}")
    elif start > 0:
      self._warn_missing_epochs(start, truncation)
    if self.config.tensorboard:  # Points past the checkpoint are written again.
      self.tb = cb.TensorBoard(wd / "tb", purge_step=start + 1 if start else None)
      # A re-run with nothing to train scores the same state again: its test points
      # are in the event files already (they are at or before the purge step).
      self.tb.test_written = complete and truncation is not None and any(
          json.loads(line).get("split") == "test" for line in truncation[1])
    return start

  def _warn_missing_epochs(self, start: int, truncation) -> None:
    """One warning when the resumed run's metrics.jsonl lacks the train line of an
    epoch the checkpoint at ``start`` holds (the file removed, emptied or cut by
    hand): the run continues, but its file, and the plots, ``jdl compare`` and
    tables read from it, lack those epochs (the checkpoint's history has them)."""
    done = start // self.steps_per_epoch
    lines = truncation[1] if truncation is not None else []
    recorded = set()
    for line in lines:
      record = json.loads(line)
      if record.get("split") == "train" and isinstance(record.get("epoch"), int):
        recorded.add(record["epoch"])
    missing = [e for e in range(1, done + 1) if e not in recorded]
    if not missing:
      return
    path = self.logger.path
    state = ("is missing" if truncation is None
             else "is empty" if not lines else "has gaps")
    self.warn(f"jdl: warning: {path} {state}, but the run resumes after epoch {done}: "
              f"the earlier epochs' metrics ({_epochs(missing)}) are missing from "
              "metrics.jsonl, and so from its plots and jdl compare; the run continues, "
              "nothing was deleted")

  def _write_normalizer(self) -> None:
    """``normalizer.npz``: the mean and std the inputs are scaled with before the
    model (statistics of the train rows; ``jdl export`` copies them beside the
    parameters). ``float64``: whether inputs are scaled in float64, else in float32
    with ``mean``/``std`` as stored. None for token ids or ``normalize='none'``."""
    path = self.workdir / workdir_lib.NORMALIZER_FILE
    norm = self.normalizer
    if norm is None or norm.is_identity:
      path.unlink(missing_ok=True)  # Of a run moved aside or restarted: not this one's.
      return
    dtype = np.float64 if norm.float64 else np.float32
    mean, std = norm.stats(dtype)
    buffer = io.BytesIO()
    np.savez(buffer, mean=mean, std=std, float64=np.asarray(norm.float64))
    workdir_lib.write_bytes(path, buffer.getvalue())

  def _record_config_changes(self, saved: dict, current: dict, step: int):
    """A resume with other settings than the run's (a learning rate, more epochs):
    one line, and the old and new values appended to ``config_changes.jsonl``, since
    config.json then holds only the new ones.

    Returns:
      ``None`` when nothing changed, else a function that takes the record back
      (if config.json cannot be rewritten).
    """
    changed = config_lib.changes(saved, current)
    if not changed:
      return None
    record = {"step": step, "epoch": round(step / self.steps_per_epoch, 4),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "changes": {k: list(v) for k, v in changed.items()}}
    path = self.workdir / "config_changes.jsonl"
    size = path.stat().st_size if path.exists() else None

    def undo() -> None:
      if size is None:
        path.unlink(missing_ok=True)
      else:
        os.truncate(path, size)

    try:
      with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=list) + "\n")
    except BaseException:
      undo()
      raise
    self.log(f"resuming at step {step} with a changed config: "
             f"{', '.join(config_lib.value_diff(saved, current))} (recorded in {path.name})")
    return undo

  def _open_checkpointer(self) -> None:
    c = self.config
    self.checkpointer = ckpt_lib.Checkpointer(
        self.workdir / "checkpoints", keep=int(c.keep_checkpoints),
        best_metric=c.monitor or None, best_mode=c.monitor_mode,
        async_save=bool(c.async_checkpoints), compression=bool(c.checkpoint_compression),
        keep_steps=self.kept_steps)

  def kept_steps(self) -> set[int]:
    """The steps the callbacks will read back (early stopping's best epoch)."""
    return {int(s) for c in self.callbacks for s in c.kept_steps()}

  def _resume_latest_readable(self) -> int:
    """Resumes from the newest checkpoint that restores; 0 when there is none.

    A damaged checkpoint (truncated, emptied, half written) gets one warning line
    and the previous one is tried.

    Raises:
      JdlError: checkpoints exist but none can be read.
    """
    steps = self.checkpointer.steps()
    for step in reversed(steps):
      try:
        meta = self.checkpointer.restore_meta(step)
      except Exception:  # noqa: BLE001 (a damaged step: the restore below tells)
        meta = None
      if meta is not None:  # The config first (an edited config.json), then the
        self._check_saved_config(meta, step)  # vocabulary: the more specific message.
        self._check_vocabulary(meta, step)
        check_provenance(meta, step, self.workdir, self.data_source, self.model_source,
                         call="fit")
      metrics_changed = self._check_layout(step, meta)
      try:
        start = self._resume(step, metrics_changed)
      except ResumeRefused:
        raise  # A readable checkpoint of other data: refuse, touch nothing.
      except Exception as e:  # orbax/tensorstore raise many types for damaged files.
        self._set_aside_unrestorable(step, e)
        continue
      return start
    damaged_dir = self.workdir / "damaged-checkpoints"
    earlier = sorted(p.name for p in damaged_dir.iterdir()) if damaged_dir.is_dir() else []
    if steps or self._damaged_steps or earlier:
      # Also on a later run: an empty checkpoints/ beside moved-aside steps is not a
      # fresh workdir, and starting over would overwrite the old run's history.
      moved = (f"steps {sorted(set(steps) | set(self._damaged_steps))} moved"
               if steps or self._damaged_steps else f"{', '.join(earlier)} moved earlier")
      raise JdlError(f"no readable checkpoint in {self.checkpointer.directory} ({moved} to "
                     f"{damaged_dir}); use --restart (restart=True in Python) to start over (the old "
                     "run is moved aside, not deleted)")
    return 0

  def _finished(self, step: int) -> bool:
    """Whether a run resumed at ``step`` has nothing left to train."""
    return step > 0 and (step // self.steps_per_epoch >= self.num_epochs
                         or self._stopped_before())

  def _check_best_readable(self, resumed: int) -> None:
    """On a re-run of a finished run (nothing left to train: what a damaged step's
    error advises), restores the best step by ``config.monitor`` once when it is not
    the resumed one. evaluate, predict and sample read it, and orbax keeps it for
    good: a damaged one is moved aside now (:meth:`restore_step`), as a damaged
    latest step is, instead of failing each of them on every call. Early stopping's
    restored step (a kept step) is checked by its own restore at the run's end.
    Not on other resumes: a second state on the device costs time and memory.
    """
    if not (self._finished(resumed) and self.config.monitor) or self.kept_steps():
      return
    tried = {resumed}
    while (best := self.checkpointer.best_step()) is not None and best not in tried:
      tried.add(best)
      if self.restore_step(best) is not None:
        return

  def _check_saved_config(self, meta: dict, step: int) -> None:
    """Refuses a structural change against the config the checkpoint recorded:
    config.json is compared first, but it is a file a hand can edit (a seed changed
    there resumed silently, on another shuffle)."""
    saved = meta.get("config")
    self._trained_with = saved if isinstance(saved, dict) else None
    if not isinstance(saved, dict):
      return
    diffs = config_lib.structural_diff(saved, json.loads(config_lib.to_json(self.config)))
    if diffs:
      raise ResumeRefused(
          f"the checkpoint at step {step} in {self.workdir} was trained with another "
          f"config ({', '.join(diffs)} {'differs' if len(diffs) == 1 else 'differ'} from "
          "the one it recorded; config.json may have been edited). " + RESUME_REMEDY)

  def _check_layout(self, step: int, meta: dict | None = None) -> bool:
    """Refuses, touching nothing, a readable step that holds another state's arrays.

    A config change outside :data:`jdl.config.STRUCTURAL_KEYS` can still change the
    state (another optimizer, clipping, accumulation): that is a mismatch to name,
    not damage to move aside. Other metric sums are no mismatch at an epoch's end,
    where the sums are empty: the run continues with the config's metrics.

    Returns:
      Whether the step holds other metric sums than this run keeps.
    """
    self._square_confusion = False
    target = {"state": self.state, "acc": self.empty_acc()}
    diffs = self.checkpointer.layout_mismatch(step, target)
    if not diffs:  # [] matches; None: unreadable metadata, the restore will tell.
      return False
    old = _square_confusion(target["acc"])
    if old is not None and self.checkpointer.layout_mismatch(
        step, {"state": self.state, "acc": old}) == []:
      self._square_confusion = True  # Written before the no-class column: padded.
      return False
    acc_only = all(d.startswith("acc/") for d in diffs)
    # Where the step is in its epoch, by the epochs it was written in (the resume
    # refuses another epoch length itself).
    try:
      spe = int(meta["steps_per_epoch"])
    except (KeyError, TypeError, ValueError):  # No readable metadata: this run's.
      spe = self.steps_per_epoch
    if acc_only and spe > 0 and step % spe == 0:
      return True
    saved = saved_config(self.workdir, self.checkpointer, step)
    remedy = RESUME_REMEDY
    if self.model_source["given"]:
      remedy = f"Pass the module that trained it (fit(model=...)). {remedy}"
    raise JdlError(mismatch_message(self.workdir, step, diffs, saved, self.config, remedy,
                                    model=self.model_source["class"] if self.model_source[
                                        "given"] else None,
                                    steps_per_epoch=spe if acc_only else None))

  def _check_vocabulary(self, meta: dict, step: int) -> None:
    if self.vocab and meta.get("vocab") != self.vocab_json():
      raise VocabularyMismatch(
          f"the checkpoint at step {step} was trained with another vocabulary than the one "
          "built now from the train split: the text data changed, or the run is older than "
          "jdl's vocabulary of the rows a run trains on (2026-11-29; before, train.tsv's "
          "held-out validation rows were in it too); use another --workdir, or --restart "
          "(jdl evaluate, predict and export still read it)")

  def _resume(self, step: int, metrics_changed: bool = False) -> int:
    # Other metrics (at an epoch's end, see _check_layout): the stored sums, all
    # empty there, are not read; this run's start empty.
    square = getattr(self, "_square_confusion", False) and not metrics_changed
    acc = _square_confusion(self.empty_acc()) if square else self.empty_acc()
    target = {"state": self.state} if metrics_changed else {"state": self.state, "acc": acc}
    tree, meta = self.checkpointer.restore(step, target, partial=metrics_changed)
    if square:  # No example of that run predicted "no class": a zero column.
      matrix = tree["acc"]["confusion"]["matrix"]
      tree["acc"]["confusion"]["matrix"] = jnp.pad(matrix, ((0, 0), (0, 1)))
    ckpt_lib.validate_meta(meta, step)
    self._check_vocabulary(meta, step)
    saved_spe = int(meta["steps_per_epoch"])
    if saved_spe != self.steps_per_epoch:
      raise ResumeRefused(
          f"the checkpoint at step {step} was written with {saved_spe} steps per epoch, "
          f"but this run has {self.steps_per_epoch} ({self.data.train.size} train examples, "
          f"batch {self.batch_size}): the train split or the batch size changed, so the "
          "run cannot resume where it stopped. Train with the data and config of that "
          "run, or use --restart (or another --workdir) to start over")
    self.state, self._acc = tree["state"], self.empty_acc() if metrics_changed else tree["acc"]
    self.history = {k: list(v) for k, v in meta.get("history", {}).items()}
    self.stopped_at = meta.get("stopped")  # Checked by validate_meta.
    if metrics_changed:
      before, now = (meta.get("config") or {}).get("metrics"), list(self.config.metrics)
      what = (f"the metrics changed ({before} -> {now})" if before != now
              else "the metric sums' layout changed (a registered metric's statistics)")
      self.log(f"{what}: from epoch {step // self.steps_per_epoch + 1} on the run logs its "
               "config's metrics; a metric's history holds NaN for the epochs it was not "
               "logged in")
    self._load_warning_state(meta)
    saved = meta.get("callbacks", {})
    for key, callback in zip(cb.state_keys(self.callbacks), self.callbacks):
      if saved.get(key):
        try:
          callback.load_state_dict(saved[key])
        except Exception as e:  # noqa: BLE001  (user code: its error, not damage)
          if isinstance(e, JdlError) and type(callback).__module__.startswith("jdl."):
            # One of jdl's own refuses the state it wrote: damaged metadata, which the
            # caller sets aside as it does metadata that validate_meta refuses.
            raise JdlError(f"a damaged {type(callback).__name__} state: {e}") from None
          raise ResumeRefused(
              f"callback {type(callback).__name__} could not load its state from the "
              f"checkpoint at step {step} ({type(e).__name__}: {e}); the checkpoint is "
              "kept as it is: fix the callback's load_state_dict (or resume without "
              "it)") from e
    epoch, pos = divmod(step, self.steps_per_epoch)
    where = (f"the end of epoch {epoch}" if pos == 0 and epoch > 0
             else f"epoch {epoch + 1}, batch {pos}/{self.steps_per_epoch}")
    self.log(f"resuming from the checkpoint at step {step} ({where})")
    return step

  def restore_step(self, step: int) -> TrainState | None:
    """The state saved at ``step``, or ``None`` when that checkpoint is gone or
    damaged (then moved to ``damaged-checkpoints/`` with one warning, as a damaged
    latest step is on resume: left in place, it failed every later run)."""
    if self.checkpointer is None or step not in self.checkpointer.steps():
      return None
    try:
      # Not the step's metric sums: an earlier step may hold other metrics.
      tree, _ = self.checkpointer.restore(step, {"state": self.state}, partial=True)
    except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many types)
      self._set_aside_unrestorable(step, e)
      return None
    return tree["state"]

  def _move_aside(self, step: int, reason: str, name: str | None = None) -> None:
    """Moves a damaged step to ``damaged-checkpoints/`` (kept), with one warning."""
    moved = ckpt_lib.quarantine(self.workdir / "checkpoints", step, name)
    self.warn(f"jdl: warning: the checkpoint at step {step} is unreadable ({reason}); "
              f"moved it to {moved}")

  def _set_aside_unrestorable(self, step: int, error: Exception) -> None:
    """A step whose restore failed: process 0 moves it aside, every process then
    reopens the checkpoints without it.

    Raises:
      JdlError: the machine failed the read (out of memory, too many open files, no
        permission), not the checkpoint: it stays where it is.
    """
    failure = ckpt_lib.machine_failure(f"the checkpoint at step {step}",
                                       self.checkpointer.directory, error)
    if failure is not None:
      raise failure
    self.checkpointer.close()
    if self.primary:
      self._move_aside(step, ckpt_lib.error_summary(error))
    parallel_lib.sync(f"jdl_quarantined_{step}")
    self._open_checkpointer()

  def _save(self, metrics: dict[str, float] | None = None) -> None:
    if (self.checkpointer is None or self.nan_detected
        or self.checkpointer.latest_step() == self.step):  # Already saved (e.g. a stop
      return                                              # request right after a save).
    self._check_finite()  # Never a checkpoint with NaN/Inf in it: not from a loss or
    self.check_state_finite()  # gradient, nor from an update that overflowed.
    meta = {
        "step": self.step,
        "epoch": self.step // self.steps_per_epoch,
        "position": self.step % self.steps_per_epoch,
        "steps_per_epoch": self.steps_per_epoch,
        "history": self.history,
        "best": self._best(),
        "callbacks": self._callback_states(),
        "warnings": self._warning_state(),
        "data": self.data_source,
        "model": self.model_source,
        "config": json.loads(config_lib.to_json(self.config)),
    }
    if self.stopped_at is not None:  # A callback ended the run at this epoch's end.
      meta["stopped"] = self.stopped_at
    if self.vocab:  # Evaluation, prediction and resume encode text with these ids.
      meta["vocab"] = self.vocab_json()
    self.checkpointer.save(self.step, self.checkpoint_tree(), meta=meta,
                           metrics=metrics)
    self.saved_at = time.monotonic()

  def checkpoint_tree(self) -> dict[str, Any]:
    """What a checkpoint holds: the state and the running epoch's metric sums."""
    return {"state": self.state, "acc": self._acc}

  def _warning_state(self) -> dict[str, Any]:
    """What the warnings already given count, so that a resumed run gives the same."""
    ratios = self._diagnostics.monitor.state_dict() if self._diagnostics else {}
    return {"nonfinite_reported": int(self._nonfinite_reported), "update_ratio": ratios}

  def _load_warning_state(self, meta: dict) -> None:
    """Sets the counts of :meth:`_warning_state` (absent from older checkpoints)."""
    saved = meta.get("warnings", {})  # Checked by checkpoint.validate_meta.
    self._nonfinite_reported = saved.get("nonfinite_reported", 0)
    if self._diagnostics is not None:
      self._diagnostics.monitor.load_state_dict(saved.get("update_ratio", {}))

  def _callback_states(self) -> dict[str, Any]:
    """Each stateful callback's ``state_dict()`` by its key; JSON, checked here so that
    a bad value names its callback (before anything is written)."""
    states = {}
    for key, callback in zip(cb.state_keys(self.callbacks), self.callbacks):
      if state := callback.state_dict():
        ckpt_lib.check_json(state, f"the state_dict() of callback {key!r}")
        states[key] = state
    return states

  def _best(self) -> dict[str, Any] | None:
    """The best value of ``config.monitor`` so far, and its epoch."""
    values = self.history.get(self.config.monitor)
    finite = [(v, i) for i, v in enumerate(values or []) if math.isfinite(v)]
    if not finite:
      return None
    pick = min if self.config.monitor_mode == "min" else max
    # Of tied epochs the latest, as the checkpoints kept by best_metric (orbax).
    value, index = pick(reversed(finite), key=lambda t: t[0])
    return {"metric": self.config.monitor, "value": value, "epoch": index + 1}
