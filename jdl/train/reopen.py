"""A finished (or interrupted) run reopened from its workdir: ``load_run``,
``evaluate``, ``predict``.

Reopening reads the run's ``config.json`` (or a given config), rebuilds its
:class:`jdl.train.loop.Trainer` without a workdir, checks that the data and model
are the ones the checkpoints record, and restores the best (else latest) state.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jdl import checkpoint as ckpt_lib
from jdl import config as config_lib
from jdl import data as data_lib
from jdl.errors import JdlError
from jdl.sequence import text as text_lib
from jdl.train import parallel as parallel_lib
from jdl.train import resume
from jdl.train import workdir as workdir_lib
from jdl.train.loop import FitResult, Trainer


def load_run(workdir: str | Path, config: ml_collections.ConfigDict | None = None, *,
             best: bool = True, dataset: data_lib.Dataset | None = None,
             model=None) -> Trainer:
  """A :class:`Trainer` holding a finished (or interrupted) run's state.

  It runs in this process alone: a multi-host run's ``distributed`` settings are
  not applied (unless JAX is already initialised for several processes).

  Args:
    workdir: the run's directory.
    config: its config; ``None`` reads ``workdir/config.json``.
    best: restore early stopping's restored epoch (``config.early_stopping`` with
      ``restore_best``: the state ``fit`` returned), else the best checkpoint by
      ``config.monitor``, which need not be the final state; ``False``, or no
      monitor: the latest. (An ``EarlyStopping`` given to ``fit(callbacks=...)``
      instead of the config is not recorded in the run: the best by ``monitor``.)
    dataset: the run's dataset, when it was trained with ``fit(dataset=...)``
      (its normalisation and splits come from it).
    model: the run's module, when it was trained with ``fit(model=...)``.

  Raises:
    JdlError: no config or no checkpoint in the workdir; the run was trained on
      another dataset or model than these arguments give (checked against the
      fingerprint its checkpoints record).
  """
  if not isinstance(workdir, (str, os.PathLike)) or not str(workdir):
    raise JdlError(f"load_run needs the run's workdir (a path), got {workdir!r}")
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    raise JdlError(f"load_run's config must be a config (ml_collections.ConfigDict) or None "
                   f"(the run's config.json), got {type(config).__name__} {config!r:.40}; "
                   "jdl.load_config(name) makes one")
  for attempt in range(3):  # A run training there may prune the step chosen.
    try:
      return _load_run(workdir, config, best=best, dataset=dataset, model=model)
    except ckpt_lib.StepRemoved:
      if attempt == 2:
        raise
  raise AssertionError("unreachable")


def _load_run(workdir, config, *, best, dataset, model) -> Trainer:
  workdir = Path(workdir)
  if config is None:
    path = workdir / "config.json"
    if not path.is_file():
      raise JdlError(f"{workdir} holds no jdl run (no config.json); train one there first: "
                     f"`jdl train --config NAME --workdir {workdir}`")
    config = config_lib.from_dict(workdir_lib.read_json(path, workdir_lib.READ_REMEDY))
  if config.init_from.workdir:  # The run's own checkpoint holds its parameters: the
    config = config_lib.editable_copy(config)  # source run need not exist any more.
    config.init_from.workdir = ""
  if "distributed" in config and config.distributed.initialize != "never":
    # Reading a run is one process's work: a multi-host run's coordinator and process
    # id (or $JAX_COORDINATOR_ADDRESS in a job script) do not describe this process,
    # and orbax below starts JAX before a Trainer could initialise it.
    config = config_lib.editable_copy(config)
    config.distributed.initialize = "never"
  ckdir = workdir / "checkpoints"
  if not ckdir.is_dir():
    if (workdir / "config.json").is_file():
      raise JdlError(f"no checkpoints in {workdir}; train first: `jdl train --workdir "
                     f"{workdir}` continues its run")
    raise JdlError(f"no checkpoints in {workdir}; train first: `jdl train --config "
                   f"FILE_OR_NAME --workdir {workdir}` with the experiment to evaluate")
  with _checkpoints(ckdir, config) as (ck, latest):
    step, why = resume.final_step(config, ck, latest) if best else (latest, "the latest")
    with ckpt_lib.unreadable_as_error(ckdir, step):
      meta = ck.restore_meta(step)
    _check_evaluation_keys(config, meta, workdir, step)
    vocab = None
    if isinstance(meta, dict) and meta.get("vocab"):  # Text: the run's own token ids.
      try:
        vocab = {k: text_lib.Vocabulary.from_json(v) for k, v in meta["vocab"].items()}
      except (AttributeError, JdlError) as e:
        raise JdlError(f"checkpoint {step} in {ckdir}: bad vocabulary ({e})") from None
    # Reading trains nothing: what only training on several devices refuses (a
    # batch_size they do not divide, explicit microbatches, the per-block NaN check:
    # a run trained elsewhere) reads on one device instead of being refused.
    devices, bs = parallel_lib.resolve(config.parallel), int(config.batch_size)
    fits = not devices.enabled or (bs % devices.num_devices == 0
                                   and not 0 < int(config.get("microbatch_size", 0)) < bs
                                   and config.get("nonfinite_check") != "block")
    if not fits and jax.process_count() > 1:  # No one-device fallback there.
      raise JdlError(
          f"the run in {workdir} (batch_size {bs}, microbatch_size "
          f"{config.get('microbatch_size', 0)}, nonfinite_check "
          f"{config.get('nonfinite_check')!r}) cannot be read across the "
          f"{devices.num_devices} devices of this job's {jax.process_count()} "
          "processes: its batch or settings are for one device. Read it in a single "
          f"process (e.g. `jdl evaluate --workdir {workdir}`)")
    # Before the config's own data and model are built: their shapes need not fit.
    resume.check_given(meta, f"the checkpoint at step {step} in {workdir}",
                       data_given=dataset is not None, model_given=model is not None,
                       loads=config.dataset, call="jdl.load_run")
    trainer = Trainer(config, None, quiet=True, vocab=vocab, dataset=dataset, model=model,
                      parallel=None if fits else "none")
    resume.check_provenance(meta, step, workdir, trainer.data_source, trainer.model_source,
                            call="jdl.load_run")
    target = {"state": trainer.state, "acc": trainer.empty_acc()}
    # The epoch's metric sums are not read: the run reopens with other config.metrics
    # (more metrics, a newly registered one) as well.
    diffs = [d for d in ck.layout_mismatch(step, target) or [] if not d.startswith("acc/")]
    if diffs:
      saved = resume.saved_config(workdir, ck, step)
      if isinstance(saved, dict) and isinstance(saved.get("distributed"), dict):
        # Set to 'never' above, not by the caller: no difference to report.
        saved["distributed"]["initialize"] = config.distributed.initialize
      remedy = ("Use the run's own config: leave out --config and the overrides (jdl "
                "evaluate), or config=None (jdl.load_run), and config.json is used")
      if model is not None:
        remedy = f"Pass the module that trained it (model=...). {remedy}"
      raise JdlError(resume.mismatch_message(
          workdir, step, diffs, saved, config, remedy=remedy,
          model=trainer.model_source["class"] if model is not None else None))
    with ckpt_lib.unreadable_as_error(ckdir, step):
      tree, _ = ck.restore(step, {"state": trainer.state}, partial=True)
  trainer.state = tree["state"]
  trainer.holds_run_state = True
  trainer.loaded_as = why
  # The run's own epochs (a batch_size given here may count others).
  spe = meta.get("steps_per_epoch") if isinstance(meta, dict) else None
  trainer.loaded_epoch = step / (spe if isinstance(spe, int) and spe > 0
                                 else trainer.steps_per_epoch)
  trainer.loaded_from = workdir
  return trainer


def _check_evaluation_keys(config, meta, workdir: Path, step: int) -> None:
  """Refuses a config whose split, classes, scaling or model (:data:`jdl.config.
  EVALUATION_KEYS`) differ from the run's: the checkpoint's recorded config, else
  its ``config.json``. Scored on another split, a "test" row could be a training
  row; with other classes or scaling the scores are of another problem."""
  run = meta.get("config") if isinstance(meta, dict) else None
  where = f"the config its checkpoint at step {step} records"
  if not isinstance(run, dict):
    try:
      run = workdir_lib.read_json(workdir / "config.json", workdir_lib.READ_REMEDY)
    except JdlError:
      return
    where = "its config.json"
  changed = config_lib.structural_diff(run, json.loads(config_lib.to_json(config)),
                                       keys=config_lib.EVALUATION_KEYS)
  if changed:
    raise JdlError(f"{', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from "
                   f"the run's config ({where}): the test split, the inputs or the model "
                   "would not be the ones it was trained with; leave "
                   f"{'it' if len(changed) == 1 else 'them'} as the run had "
                   f"{'it' if len(changed) == 1 else 'them'} (without --config, or with "
                   "config=None, the run's own config is used)")


def scored_step(workdir: str | Path) -> int:
  """The step :func:`evaluate` scores (and ``predict``, ``sample`` read) in a run's
  workdir, chosen from its ``config.json`` and its checkpoints' metadata alone:
  early stopping's restored epoch, else the best by ``config.monitor``, else the
  latest.

  Raises:
    JdlError: no config.json or no checkpoint, or a step's metadata is unreadable.
  """
  workdir = Path(workdir)
  path = workdir / "config.json"
  if not path.is_file():
    raise JdlError(f"{workdir} holds no config.json, which names the metric to rank by")
  config = config_lib.from_dict(workdir_lib.read_json(path, workdir_lib.READ_REMEDY))
  with _checkpoints(workdir / "checkpoints", config) as (ck, latest):
    return resume.final_step(config, ck, latest)[0]


@contextlib.contextmanager
def _checkpoints(ckdir: Path, config: ml_collections.ConfigDict):
  """``(checkpointer, latest step)`` of a run's undamaged ``checkpoints/``, ranked by
  ``config.monitor``; closed on exit.

  Raises:
    JdlError: a damaged or unreadable step, or no checkpoint.
  """
  ckpt_lib.require_undamaged(ckdir)
  with ckpt_lib.unreadable_as_error(ckdir, None):
    ck = ckpt_lib.Checkpointer(ckdir, best_metric=config.monitor or None,
                               best_mode=config.monitor_mode, async_save=False)
  with ck:
    latest = ck.latest_step()
    if latest is None:
      raise JdlError(f"no checkpoints in {ckdir}")
    yield ck, latest


def evaluate(config: ml_collections.ConfigDict | str | Path | None = None,
             workdir: str | Path | None = None, *, split: str = "test",
             dataset: data_lib.Dataset | None = None, model=None,
             best: bool = True) -> dict[str, float]:
  """Metrics on ``split`` of the state :func:`load_run` restores: early stopping's
  restored epoch, else the best checkpoint by ``config.monitor``, else the latest
  (``best=False``: the latest). The best by ``monitor`` need not be the final state,
  which ``fit``'s own test line scores.

  Generative runs add their scores: ``neg_elbo`` (nats) for a VAE, and with
  ``generative.classifier_workdir`` set, ``inception_score`` and
  ``frechet_distance`` for a VAE or a GAN.

  Args:
    config: the run's config; ``None`` reads its ``config.json``. A path alone,
      ``evaluate("runs/x")``, is the workdir.
    workdir: the run's directory.
    split: ``'test'``, ``'val'`` or ``'train'``.
    dataset, model, best: as for :func:`load_run`.

  Returns:
    ``{metric: value}``, as ``fit``'s test line.

  Raises:
    JdlError: no workdir, no checkpoint in it, an empty split, or data or a model
      other than the run's.
  """
  return evaluate_run(config, workdir, split=split, dataset=dataset, model=model,
                      best=best)[0]


def evaluate_run(config: ml_collections.ConfigDict | str | Path | None,
                 workdir: str | Path | None = None, *, split: str = "test",
                 dataset: data_lib.Dataset | None = None, model=None,
                 best: bool = True) -> tuple[dict[str, float], Trainer]:
  """:func:`evaluate`'s metrics, and the :class:`Trainer` of the state it scored
  (its ``step``, and ``loaded_as``: why that step)."""
  if workdir is None and isinstance(config, (str, os.PathLike)):
    config, workdir = None, config  # evaluate("runs/x"), as load_run("runs/x").
  if workdir is None:
    raise JdlError("evaluate needs the run's workdir: jdl.evaluate(workdir) or "
                   "jdl.evaluate(config, workdir)")
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    raise JdlError(f"evaluate's config must be a config (ml_collections.ConfigDict) or None, "
                   f"got {type(config).__name__} {config!r}; the workdir is the second "
                   "argument, or the only one")
  if split not in ("test", "val", "train"):
    raise JdlError(f"split must be 'test', 'val' or 'train', got {split!r}")
  trainer = load_run(workdir, config, best=best, dataset=dataset, model=model)
  data = {"test": trainer.data.test, "val": trainer.data.val, "train": trainer.data.train}[split]
  if data is None:
    raise JdlError(f"the {split} split of {trainer.data.name!r} is empty")
  generative = trainer.config.get("generative")
  if (split == "train" and trainer.config.task == "vae" and generative is not None
      and generative.binarize == "dynamic" and isinstance(data, data_lib.pipeline.Split)):
    # Scored as the val and test splits are: on one fixed binary draw of its images
    # (it trains on a fresh draw each step; its grey images are no Bernoulli targets).
    from jdl.generative import tasks as gen_tasks
    data = gen_tasks.binarized_split(data.x, data.y)
  results = trainer.evaluate_split(data)
  trainer.load_judge_or_warn()
  return ({**results, **trainer.sequence_scores(data), **trainer.generative_scores(data)},
          trainer)


def predict(run: FitResult | Trainer | str | Path, x: np.ndarray) -> np.ndarray:
  """Model outputs (logits or predictions) for raw inputs ``x: [n, ...]``.

  Inputs are normalised with the train split's statistics, as in training.

  Args:
    run: the result of :func:`jdl.train.loop.fit`, a :class:`Trainer`, or a run's
      workdir, which :func:`load_run` restores (its best state, as :func:`evaluate`
      scores); for many calls, ``trainer = jdl.load_run(workdir)`` once and
      ``jdl.predict(trainer, x)``.
    x: inputs shaped like the dataset's examples.
  """
  if isinstance(run, (str, os.PathLike)):
    run = load_run(run)
  if isinstance(run, FitResult):
    return run.trainer.predict(x, run.state)
  if not isinstance(run, Trainer):
    raise JdlError("predict takes the result of jdl.fit, a Trainer (jdl.load_run(workdir)) "
                   f"or a run's workdir, got {type(run).__name__}")
  return run.predict(x)
