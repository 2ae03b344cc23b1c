"""The training loop: :class:`Trainer` and ``fit``.

:class:`Trainer` builds everything from a config (data on the device, the model,
the optax chain, the :class:`TrainState`), validates it all *before* it touches
the workdir, resumes from the workdir's latest checkpoint, and runs epochs of the
pure, jitted, donated train step. In ``'scan'`` mode a block of steps is one
compiled ``lax.scan``; in ``'step'`` mode each step is one compiled call. Either
way the data order of every epoch is a function of the seed and the epoch, and
per-step keys are ``fold_in(key, step)``, so a run resumed at any checkpoint ends
bitwise equal to an uninterrupted one. On several devices or hosts the blocks run
data-parallel (``config.parallel``; meshes, shardings and the ``shard_map`` step
live in :mod:`jdl.train.parallel`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jdl import checkpoint as ckpt_lib
from jdl import config as config_lib
from jdl import data as data_lib
from jdl import losses as losses_lib
from jdl import metrics as metrics_lib
from jdl import models as models_lib
from jdl import optim
from jdl import regularizers
from jdl import summary as summary_lib
from jdl.data import augment as augment_lib
from jdl.data import pipeline
from jdl.data import stream
from jdl.errors import JdlError, NonFiniteError
from jdl.generative import stats as gen_stats
from jdl.generative import tasks as gen_tasks
from jdl.sequence import build as seq_models
from jdl.sequence import tasks as seq_tasks
from jdl.train import callbacks as cb
from jdl.train import checks
from jdl.train import diagnose
from jdl.train import parallel as parallel_lib
from jdl.train import plots
from jdl.train import resume
from jdl.train import run_data
from jdl.train import runtime as runtime_lib
from jdl.train import steps as steps_lib
from jdl.train import strategy
from jdl.train import transfer
from jdl.train import workdir as workdir_lib
from jdl.train.outputs import GenerativeOutputs, Predictions, SequenceOutputs
from jdl.train.resume import ResumableRun
from jdl.train.state import TrainState, create_train_state

# Losses of one logit an example (the probability of class 1).
_BINARY_LOSSES = ("binary_crossentropy", "squared_hinge")
# (section, key) of the settings that may differ between the processes of one run:
# where each host finds its files, and how it reads them.
_HOST_LOCAL = ((None, "data_dir"), (None, "download"), ("init_from", "workdir"),
               ("generative", "classifier_workdir"), ("stream", "prefetch"))


@dataclasses.dataclass
class FitResult:
  """What :func:`fit` returns.

  Attributes:
    state: the final (or, with early stopping's ``restore_best``, best) state.
    history: per-epoch logs, e.g. ``history['val_accuracy'][epoch]``.
    test_metrics: metrics on the test split of ``state`` (``{}`` when there is
      none): the final state, or the best epoch's when early stopping restored
      it. ``jdl.evaluate`` (``jdl evaluate``) scores the checkpoint
      :func:`jdl.load_run` restores: without early stopping's restore, the best by
      ``config.monitor``, which can differ from the final state.
    workdir: where checkpoints, logs and plots went (``None`` if nowhere).
    trainer: the :class:`Trainer` that produced it (its data, model, steps).
    stopped: why the run ended before it finished, else ``None`` (early stopping
      finishes a run): ``'non-finite'`` (``terminate_on_nan`` stopped it at a NaN or
      Inf loss: no test line, no checkpoint of that state), or the signal that stopped
      it (``'SIGTERM'``, ``'SIGINT'``: a checkpoint was saved; fit again to resume).
  """
  state: TrainState
  history: dict[str, list[float]]
  test_metrics: dict[str, float]
  workdir: Path | None
  trainer: Trainer = dataclasses.field(repr=False, default=None)

  def __post_init__(self):
    # Of this fit(): a later fit() of the trainer (a resume) clears the trainer's.
    t = self.trainer
    self._stopped = (None if t is None else str(t.preempted) if t.preempted
                     else "non-finite" if t.nan_detected else None)

  @property
  def stopped(self) -> str | None:
    return self._stopped

  def __repr__(self) -> str:
    # The state's arrays would fill a notebook cell: their count and the step instead.
    step = getattr(self.state, "step", None)
    if getattr(step, "is_deleted", lambda: False)():  # Donated to a step since.
      step = "<deleted>"
    elif step is not None:
      step = int(jax.device_get(step))
    params = summary_lib.count_params(getattr(self.state, "params", {}))
    epochs = max((len(v) for v in self.history.values()), default=0)
    metrics = {k: float(f"{v:.4g}") if isinstance(v, (int, float)) else v
               for k, v in self.test_metrics.items()}
    workdir = None if self.workdir is None else str(self.workdir)
    stopped = f", stopped={self.stopped!r}" if self.stopped else ""
    return (f"FitResult(workdir={workdir!r}, step={step}, params={params}, epochs={epochs}, "
            f"test_metrics={metrics}, history_keys={list(self.history)}{stopped})")


class Trainer(ResumableRun, Predictions, GenerativeOutputs, SequenceOutputs):
  """Owns one run: config, data, state, workdir. See :func:`fit`.

  ``Trainer(config, workdir, dataset=, model=, callbacks=, quiet=, restart=)`` takes
  :func:`fit`'s arguments, and ``trainer.fit()`` trains. ``trainer.config`` is a
  read-only copy of ``config`` (an ``ml_collections.FrozenConfigDict``): the model,
  optimizer and data are built from it at construction, so a changed setting needs a
  new Trainer. Also ``progress`` (the
  progress bar: ``None`` draws it on a terminal or in a notebook, unless ``quiet``),
  ``parallel`` (overrides ``config.parallel``) and ``vocab`` (a finished run's
  vocabularies, which :func:`jdl.load_run` passes).

  The workdir and checkpoint methods are in :class:`jdl.train.resume.ResumableRun`;
  predictions, samples and decoding in :mod:`jdl.train.outputs`. The checks of the
  settings are in :mod:`jdl.train.checks`, the data's loading in
  :mod:`jdl.train.run_data`, the choices behind ``'auto'`` settings in
  :mod:`jdl.train.strategy`.
  """

  @checks.named_rng_streams()  # Where the steps are first traced: a stream they lack.
  def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path | None = None, *,
               dataset: data_lib.Dataset | None = None, model=None,
               callbacks: Sequence[cb.Callback] = (), quiet: bool = False,
               progress: bool | None = None, restart: bool = False,
               parallel: str | None = None, vocab: dict | None = None):
    self.restart = restart
    self.preempted: str | None = None  # The signal that stopped training early.
    self.trained_to: int | None = None  # The last step trained (before a restore_best).
    if workdir is not None and not isinstance(workdir, (str, os.PathLike)):
      raise JdlError(f"workdir must be a path or None, got {type(workdir).__name__} {workdir!r}")
    self.workdir = Path(workdir) if workdir else None
    if self.workdir is not None:
      ckpt_lib.check_directory_name(self.workdir)
    self.quiet = quiet
    self.stop_training = False
    self._acc = None  # The running epoch's metric sums (set by fit).
    # (restored state, state training reached) after a callback put an earlier state
    # back: a second fit() without a workdir continues from the one reached.
    self._reached = None
    self.loaded_as: str | None = None  # Why jdl.load_run restored this state's step.
    self.loaded_from: Path | None = None  # The workdir it read (it writes in none).
    self.nan_detected = False
    # A callback's stop at an epoch's end, early stopping's too, ends the run (as its
    # checkpoint records): {"epoch": epochs trained, "by": the callback's class}.
    self.stopped_at: dict[str, Any] | None = None
    # False until fit() or load_run() has put the run's state in place: a Trainer
    # of a workdir with checkpoints holds initial parameters before then.
    self.holds_run_state = False
    self.record_kept = False  # A re-run of a finished run keeps its config.json, summary.
    checks.validate_config(config)
    checks.check_fit_arguments(dataset, model, callbacks, config)
    # A read-only copy: the model, optimizer, schedule and data are built from it
    # here, so a later edit (to the caller's config or to this one) could only half
    # apply. Editing this one raises; the caller's stays theirs to change.
    self.config = ml_collections.FrozenConfigDict(config)
    config = self.config
    self.generative = config.task in gen_tasks.TASKS
    self.gan = config.task in ("gan", "wgan_gp")
    runtime_lib.request_deterministic_ops(config.deterministic)
    runtime_lib.request_cpu_region_analysis(config.xla_cpu_region_analysis)
    parallel_lib.initialize_distributed(config.distributed)
    self.parallel = parallel_lib.resolve(parallel or config.parallel)
    self.primary = parallel_lib.is_primary()
    checks.check_parallel_mode(self.parallel.mode, config)  # The argument's mode too.
    self.seq2seq = config.task == "seq2seq"
    if self.workdir is not None and not restart:  # Before the config's data and model.
      resume.check_given_in_config_json(self.workdir, data_given=dataset is not None,
                                        model_given=model is not None, loads=config.dataset)
    # vocab: a finished run's vocabulary (load_run), else None.
    self.data = run_data.load_data(config, dataset, vocab=vocab)
    self._check_processes_agree()
    if config.loss in _BINARY_LOSSES and not (self.generative or self.seq2seq):
      self._check_binary_loss()  # Before a model is built or given outputs are read.
    self.vocab = self.data.vocab
    if self.seq2seq:
      checks.check_decoding(config.sequence, self.vocab, self.data.train.y)
    self.model = model or self._create_model()
    if not (self.vocab or self.generative or self.seq2seq
            or isinstance(self.data.train, stream.StreamSplit)):  # A vocabulary's ids fit.
      checks.check_token_ids(self.model, [(name, split.x) for name, split in (
          ("train", self.data.train), ("validation", self.data.val),
          ("test", self.data.test)) if split is not None])
    # What the checkpoints record of where the data and the model came from, so that
    # a resume or a reload with other ones is refused (resume.check_provenance).
    self.model_source = {"given": model is not None,
                         "class": ", ".join(type(m).__name__ for m in (
                             self.model if isinstance(self.model, tuple) else (self.model,)))}
    if self.generative:
      self.loss = None
      names = gen_tasks.metric_names(config.task, tuple(config.metrics))
    elif self.seq2seq:
      self.loss = None
      names = seq_tasks.metric_names(tuple(config.metrics))
    else:
      self.loss = self._make_loss()
      names = tuple(config.metrics)
      metrics_lib.validate_names(names, self.data.task, self.data.num_classes)
    self.metric_names = names

    bs = int(config.batch_size)
    pipeline.check_batch_size(bs, self.data.train.size)
    parallel_lib.check_batch_size(bs, self.parallel.num_devices)
    self.batch_size = bs
    self.eval_batch_size = int(config.eval_batch_size) or bs
    if self.eval_batch_size <= 0:
      raise JdlError(f"eval_batch_size must be positive, got {config.eval_batch_size}")
    # No larger than the largest split: the one batch would be mostly padding.
    largest = max(s.size for s in (self.data.train, self.data.val, self.data.test)
                  if s is not None)
    self.eval_batch_size = min(self.eval_batch_size, max(bs, largest))
    self.eval_batch_size = parallel_lib.eval_batch_size(self.parallel, self.eval_batch_size)
    self.steps_per_epoch = self.data.train.size // bs
    if self.gan and self.steps_per_epoch < int(config.generative.d_steps):
      raise JdlError(
          f"generative.d_steps={config.generative.d_steps} exceeds the {self.steps_per_epoch} "
          f"train steps of an epoch ({self.data.train.size} examples, batch_size {bs}), so "
          "some epochs would have no generator update; use a smaller batch_size, more "
          "data or fewer d_steps")
    self.num_epochs = int(config.num_epochs)
    # What the learning-rate schedules span: num_epochs=0 takes no update, but a
    # cosine schedule still needs a length, and a warm-up one longer than its warm-up
    # (never used: a later run with more epochs builds its own). A GAN's generator
    # makes the fewest updates an epoch.
    self.schedule_epochs = self.num_epochs or optim.shortest_run(
        config, steps_per_epoch=self.steps_per_epoch / (
            int(config.generative.d_steps) if self.gan else 1))
    self.total_steps = self.steps_per_epoch * self.num_epochs

    tx = optim.create_optimizer(config, steps_per_epoch=self.steps_per_epoch,
                                num_epochs=self.schedule_epochs)
    root = jax.random.key(int(config.seed))
    init_key, self.shuffle_key = jax.random.split(root)
    self.sample_key = jax.random.fold_in(root, 7)  # The fixed noise of sample grids.
    example = self.data.train.x[:1]
    try:
      if self.gan:
        self.state = self._create_gan_state(example, init_key)
      else:
        init_kwargs = {"key": "key"} if config.task == "vae" else None
        if self.seq2seq:  # The decoder's teacher-forced input, y[:, :-1].
          init_kwargs = {"tgt_in": self.data.train.y[:1, :-1]}
        self.state = create_train_state(self.model, tx, example, key=init_key,
                                        init_kwargs=init_kwargs)
    except (TypeError, ValueError) as e:
      if isinstance(e, JdlError):
        raise
      what = (f"model {self.model_source['class']}" if self.model_source["given"]
              else f"model {config.model.get('name')!r}")
      if "shape" in str(e).lower():
        raise JdlError(f"{what} cannot take inputs of shape {tuple(example.shape[1:])}: "
                       f"{e}") from None
      hint = ("; the dataset's integer inputs were cast to float32 and normalised as "
              "numbers (no vocabulary): to feed them as token ids, set normalize='none'"
              if self.data.integers_as_numbers else "")
      if "unexpected keyword argument 'train'" in str(e):
        hint = ("; jdl calls a model as model.apply(variables, x, train=...): give its "
                "__call__ a train: bool = False argument (it turns dropout and batch "
                "norm's batch statistics on while training)")
      raise JdlError(f"{what} failed to initialise on inputs of shape "
                     f"{tuple(example.shape[1:])}: {e}{hint}") from None
    if config.task == "vae" and self.model_source["given"]:
      gen_tasks.check_vae_model(self.model, self.state.variables, example)
    if self.model_source["given"] and not (self.generative or self.seq2seq):
      self._check_outputs(example)
    self.init_from_copied: list[str] = []  # What init_from copied (when the run started).
    if config.init_from.workdir:
      for key in ("include", "exclude"):  # Checked on a resume too (the copy is not).
        if config.init_from[key]:
          regularizers.compile_regex(config.init_from[key], f"init_from.{key}")
      if not self._resumes():  # Else the checkpoint's state.
        self._init_from(config.init_from)
    optim.check_freeze_patterns(config, self.state.params)
    # A GAN's players have an optimizer each, which sees its own parameter paths.
    regularizers.check_patterns(config.regularization, *(
        self.state.params.values() if self.gan else [self.state.params]))

    reg = config.regularization
    if self.gan:
      self.task = gen_tasks.make_gan_task(config, names)
    elif self.generative:
      self.task = gen_tasks.make_task(config, self.state.apply_fn,
                                      regularizers.rules_from_config(reg), names)
    elif self.seq2seq:
      self.task = seq_tasks.Seq2SeqTask(
          apply_fn=self.state.apply_fn, loss=None, metric_names=names, num_classes=0,
          penalty_rules=regularizers.rules_from_config(reg),
          label_smoothing=float(config.label_smoothing))
    else:
      self.task = steps_lib.SupervisedTask(
          apply_fn=self.state.apply_fn, loss=self.loss, metric_names=names,
          num_classes=self.data.num_classes,
          penalty_rules=regularizers.rules_from_config(reg),
          activity_l1=float(reg.activity_l1), activity_include=reg.activity_include)
      self._check_metric_masks(names)
    if reg.activity_l1 > 0 and not (self.gan or self.seq2seq):
      regularizers.check_activity_include(self.state.apply_fn, self.state.variables,
                                          self.data.train.x[:1], reg.activity_include)
    self.train_names = steps_lib.train_metric_names(names)
    if not self.generative:
      checks.check_monitors(config, train_names=self.train_names, metric_names=names,
                            has_val=self.data.val is not None, warn=self.warn,
                            callbacks=callbacks)
    # A streamed split on a mesh: each process reads only its columns of every batch,
    # and blocks arrive pre-gathered, [num_steps, batch, ...] sharded P(None, 'data').
    self.gathered = self.parallel.enabled and isinstance(self.data.train, stream.StreamSplit)
    if self.parallel.enabled:  # In-memory splits and the state replicated over the mesh.
      rep = functools.partial(parallel_lib.replicate, self.parallel)
      self.data = dataclasses.replace(self.data, **{
          name: pipeline.Split(*rep((split.x, split.y)), images=split.images)
          for name in ("train", "val", "test")
          if isinstance(split := getattr(self.data, name), pipeline.Split)})
      self.state = rep(self.state)
    self.nonfinite_check = strategy.choose_nonfinite_check(config, self.parallel, self.gan)
    self.static_loops = strategy.static_loops()
    self.microbatch_size = strategy.choose_microbatch_size(
        config, batch_size=bs, task=self.task, parallel=self.parallel,
        params=self.state.params, model_state=self.state.model_state,
        x=self.data.train.x, y=self.data.train.y)
    self._compile()
    self.epoch_mode = strategy.choose_epoch_mode(config, self.train_step, self.state,
                                                 self._example_batch())
    # Blocks end on the mid-epoch checkpoints' steps (when an epoch holds one: they
    # count from its start), then on the diagnostics' (those win when both are set):
    # an explicit scan_chunk is lowered to a divisor of them.
    ce = int(config.checkpoint_every_steps)
    self.chunk = diagnose.align_chunk(diagnose.align_chunk(
        strategy.choose_chunk(config, self.epoch_mode, self.steps_per_epoch,
                              self.static_loops),
        ce if ce < self.steps_per_epoch else 0), int(config.diagnostics.every_steps))
    self._diagnostics = diagnose.DiagnosticsHook(self) if config.diagnostics.every_steps else None
    # Where each block of steps gets its inputs: the device-resident split, or
    # blocks streamed from disk by a background thread (dataset='npy_dir').
    feed_kw = {}
    if self.gathered:
      feed_kw = dict(columns=parallel_lib.process_columns(self.parallel, bs),
                     place=self._global_block)
    self.feed = stream.make_feed(self.data.train, self.shuffle_key, bs, chunk=self.chunk,
                                 steps_per_epoch=self.steps_per_epoch,
                                 num_epochs=self.num_epochs, prefetch=int(config.stream.prefetch),
                                 **feed_kw)
    self._step_numbers: dict[int, jax.Array] = {}
    # Blocks shorter than the chunk run in the chunk's compiled block, their indices
    # padded with rows of -1 (steps_lib.loop_steps): one compile whatever the block
    # lengths. Not for streamed blocks, whose rows are the block's own.
    self.padded_blocks = (self.epoch_mode == "scan"
                          and isinstance(self.feed, pipeline.MemoryFeed))

    self.history: dict[str, list[float]] = {}
    self.epoch_rates: list[float] = []  # Train samples/s of each epoch run here.
    self.compile_seconds = 0.0
    self.callbacks = self._make_callbacks(callbacks, progress)
    self.checkpointer: ckpt_lib.Checkpointer | None = None
    self.logger: cb.MetricsLogger | None = None
    self.tb: cb.TensorBoard | None = None

  # ----------------------------------------------------------------- building
  def _check_processes_agree(self) -> None:
    """Every process must train the same run on the same data: other settings on one
    process would drift its "replicated" parameters from the others' with no error.
    (Host-local paths and settings, ``_HOST_LOCAL``, may differ from host to host; the
    data's fingerprint may not.)"""
    tree = config_lib.launch_neutral(self.config)
    for section, key in _HOST_LOCAL:
      (tree.get(section) or {} if section else tree).pop(key, None)
    data = [self.data_source["fingerprint"], self.data_source.get("checksum")]
    text = json.dumps({"config": tree, "data": data},
                      sort_keys=True)
    differ = parallel_lib.processes_differing(text)
    if differ:
      raise JdlError(f"process{'es' if len(differ) > 1 else ''} "
                     f"{', '.join(map(str, differ))} got another config or other data than "
                     "process 0; give every process the same --config and overrides (only "
                     "distributed.process_id differs) and the same data")

  def _create_model(self):
    if self.generative:
      return gen_tasks.create_models(self.config, self.data.input_shape)
    if self.seq2seq:
      return seq_models.create_seq2seq(self.config, self.vocab)
    checks.check_model_task(self.config)
    model_config = self.config.model
    if self.vocab:
      model_config = seq_models.with_vocab_size(model_config, self.vocab)
    if self.config.mixed_precision:
      model_config = ml_collections.ConfigDict(model_config.to_dict())
      model_config.dtype = "bfloat16"  # Compute dtype; parameters stay float32.
    return models_lib.create_model(model_config, num_outputs=self._num_outputs())

  def _create_gan_state(self, example, key) -> gen_tasks.GANState:
    """Both players; the generator's schedule counts its own (fewer) updates."""
    c, d_steps = self.config, int(self.config.generative.d_steps)
    # The generator updates every d_steps-th train step, counted across epoch ends.
    g_tx = optim.create_optimizer(c, steps_per_epoch=self.steps_per_epoch / d_steps,
                                  num_epochs=self.schedule_epochs)
    d_config = c
    if c.generative.d_learning_rate:
      d_config = ml_collections.ConfigDict(c.to_dict())
      d_config.optimizer.learning_rate = float(c.generative.d_learning_rate)
    d_tx = optim.create_optimizer(d_config, steps_per_epoch=self.steps_per_epoch,
                                  num_epochs=self.schedule_epochs)
    generator, discriminator = self.model
    state = gen_tasks.create_gan_state(generator, discriminator, g_tx, d_tx, example,
                                       int(c.generative.latent_dim), key=key)
    if c.task == "wgan_gp":  # Before anything is written.
      gen_tasks.check_critic(state.model_state["discriminator"])
    return state

  def _resumes(self) -> bool:
    """Whether ``fit`` will resume a run (its workdir holds checkpoints, no restart)."""
    return (self.workdir is not None and not self.restart
            and bool(ckpt_lib.step_numbers(self.workdir / "checkpoints")))

  def _init_from(self, spec) -> None:
    """Copies the matching parameters (and batch statistics) of another run's latest
    checkpoint into the state; says what it copied.

    Raises:
      JdlError: also a frozen parameter that was not copied (it would stay at its
        random initial value).
    """
    params, model_state, self.init_from_copied = transfer.init_params_from(
        self.state.params, spec.workdir, include=spec.include, exclude=spec.exclude,
        model_state=self.state.model_state)
    names = sorted(flax.traverse_util.flatten_dict(params, sep="/"))
    left = [p for p in names if p not in self.init_from_copied]
    frozen = optim.frozen_paths(self.config, params)
    stuck = [p for p in left if p in frozen]
    if stuck:
      raise JdlError(f"init_from: {', '.join(stuck[:5])}{', ...' if len(stuck) > 5 else ''} "
                     f"{'is' if len(stuck) == 1 else 'are'} frozen (optimizer.freeze) but not "
                     f"in {spec.workdir} (or not included): {'it' if len(stuck) == 1 else 'they'}"
                     " would stay at the random initial value; copy or unfreeze them")
    self.state = self.state.replace(params=params, model_state=model_state)
    self.log(f"init_from {spec.workdir}: copied {len(self.init_from_copied)} arrays "
             f"({len(names) - len(left)} of {len(names)} parameters); kept their initial "
             f"values: {', '.join(left[:6]) + (', ...' if len(left) > 6 else '') or 'none'}")

  def _output_shape(self, x):
    """The model's outputs on ``x`` as shapes and dtypes (traced, not computed)."""
    return jax.eval_shape(lambda v, x: self.state.apply_fn(v, x, train=False),
                          self.state.variables, x)

  def _check_outputs(self, example) -> None:
    """A given model returns one array, of the width its loss takes: otherwise the
    loss fails inside the compiled step with a message about shapes, or trains on
    NaN (one logit a example under a softmax of 2 classes)."""
    out = self._output_shape(example)
    what = f"model {self.model_source['class']}"
    if not isinstance(out, jax.ShapeDtypeStruct):
      kind, n = type(out).__name__, len(jax.tree.leaves(out))
      raise JdlError(f"{what} returns a {kind} ({n} array{'s' if n != 1 else ''}); jdl's "
                     f"loss {self.config.loss!r} and metrics take one array, the logits (or "
                     "a regression's outputs): return that from __call__, and anything else "
                     "through self.sow or a method of its own")
    width = out.shape[1:]
    loss = self.config.loss
    if not losses_lib.is_built_in(loss):  # A registered loss takes what it takes.
      return
    size = math.prod(width)
    if self.data.task == "regression":
      k = self._num_outputs()
      if size != k:
        raise JdlError(f"{what} returns outputs of shape {width} an example, but the "
                       f"dataset's targets have {k} value{'s' if k > 1 else ''} an example "
                       f"(loss {loss!r} compares them one to one)")
      return
    n = self.data.num_classes
    if loss in _BINARY_LOSSES:
      if size != 1:
        raise JdlError(f"{what} returns outputs of shape {width} an example; loss {loss!r} "
                       "takes one logit an example (outputs [batch] or [batch, 1])")
    elif width != (n,):
      hint = ("; for one logit an example, set config.loss='binary_crossentropy'"
              if n == 2 and size == 1 else "")
      raise JdlError(f"{what} returns outputs of shape {width} an example, but loss "
                     f"{loss!r} takes one logit per class: [batch, {n}] for the "
                     f"{n} classes of dataset {self.data.name!r}{hint}")

  def _num_outputs(self) -> int:
    if self.data.task == "regression":
      return int(self.data.train.y.shape[1])
    if self.config.loss in _BINARY_LOSSES:
      return 1
    return self.data.num_classes

  def _check_binary_loss(self) -> None:
    """A loss of one logit a example needs 2 classes (checked before a given model's
    outputs are, so that the message names the cause)."""
    if self.data.task == "classification" and self.data.num_classes != 2:
      raise JdlError(f"loss {self.config.loss!r} needs 2 classes (one logit an example); "
                     f"dataset {self.data.name!r} has {self.data.num_classes}")

  def _make_loss(self):
    streamed = isinstance(self.data.train, stream.StreamSplit)  # Not read just for this.
    losses_lib.check_task(self.config.loss, self.data.task, self.data.name,
                          targets=None if streamed else self.data.train.y)
    kwargs = {}
    if self.config.label_smoothing:  # A cross-entropy (checks.validate_config).
      kwargs["label_smoothing"] = float(self.config.label_smoothing)
    loss = losses_lib.get_loss(self.config.loss, **kwargs)
    if self.data.task == "classification" and self.config.loss in (
        "categorical_crossentropy", "kl_divergence"):
      # Labels are stored as integers; these losses take probabilities.
      n = self.data.num_classes
      return lambda out, y: loss(out, jax.nn.one_hot(y, n, dtype=out.dtype))
    return loss

  def _compile(self) -> None:
    par = self.parallel
    if self.gan:
      train_step, eval_step = self.task.train_step, self.task.eval_step
      self.augment = None
      block_step = train_step
    else:
      augment = augment_lib.make_train_augment(self.config.augment, self.data.input_shape)
      self.augment = augment  # The diagnostics' gradient is of the same batch.
      freeze = tuple(self.config.optimizer.freeze)
      train_step = steps_lib.make_train_step(self.task, augment=augment,
                                             microbatch_size=self.microbatch_size,
                                             freeze=freeze)
      block_step = train_step
      if par.mode == "shard_map":  # The per-device step of the block.
        block_step = steps_lib.make_train_step(self.task, augment=augment,
                                               axis_name=parallel_lib.AXIS, freeze=freeze)
      eval_step = steps_lib.make_eval_step(self.task)
    merge = steps_lib.merge_train_metrics
    constrain = parallel_lib.constrain_batch(par)
    axis = parallel_lib.AXIS if par.mode == "shard_map" else None

    def block_of(step_fn):
      def run_block(state, acc, x, y, idx):
        """Runs the train steps of ``idx: [num_steps, batch]``; returns (state, acc).

        Rows of ``-1`` after the steps are padding and run no step (a block shorter
        than the compiled one). ``batch`` is the device's share of the global batch
        inside ``shard_map``.
        A pre-gathered block (:attr:`gathered`) has ``x, y: [num_steps, batch, ...]``
        and ``idx: [num_steps]``, the step numbers: step ``i`` takes ``x[i]``.
        """
        ones = jnp.ones((x.shape[1] if idx.ndim == 1 else idx.shape[-1],), jnp.float32)

        def body(carry, i):
          state, acc = carry
          batch = {"x": x[i], "y": y[i], "mask": ones}
          if constrain is not None:
            batch = constrain(batch)
          state, m = step_fn(state, batch)
          return (state, merge(acc, m)), None

        # Read when traced: the mode is chosen after the step is built.
        if idx.shape[0] == 1 and self.epoch_mode == "step":  # One step, compiled alone.
          return body((state, acc), idx[0])[0]
        # A loop whose length XLA cannot see (steps_lib.loop_steps): rows of -1 after
        # the steps are padding, so one compiled block runs every shorter block, and
        # a resume with another block size gives the uninterrupted run's bits. On a
        # GPU a loop of known length with the padding rows' steps discarded.
        return steps_lib.loop_steps(body, (state, acc), idx, static=self.static_loops,
                                    axis_name=axis)
      return run_block

    run_block = block_of(block_step)
    self.run_checked_block = None  # With nonfinite_check='block': (state, acc, ok).
    if self.nonfinite_check == "block":
      fast_block = block_of(steps_lib.make_train_step(
          self.task, augment=augment, check_gradients=False,
          microbatch_size=self.microbatch_size, freeze=freeze))

      def run_checked_block(state, acc, x, y, idx):
        """The block with the loss tested at each step; ``ok``: nothing non-finite
        in the losses, the parameters, the optimizer state or the model state."""
        state, acc = fast_block(state, acc, x, y, idx)
        ok = (acc[steps_lib.NONFINITE]["count"] == 0) & steps_lib.state_finite(state)
        return state, acc, ok

      self.run_checked_block = run_checked_block  # Pure, as run_block.
      # Not donated: a failing block re-runs from its inputs.
      self._run_checked_block = jax.jit(run_checked_block)

    def eval_batch(state, x, y, idx, mask):
      return eval_step(state, {"x": x[idx], "y": y[idx], "mask": mask})[1]

    def eval_rows(state, x, y, mask):  # A pre-gathered (streamed, sharded) batch.
      return eval_step(state, {"x": x, "y": y, "mask": mask})[1]

    self.train_step, self.eval_step = train_step, eval_step
    self.run_block = run_block  # Pure; the diagnostics block reuses it.
    self._run_block = parallel_lib.compile_block(par, run_block, gathered=self.gathered)
    self._eval_batch = parallel_lib.compile_eval(par, eval_batch)
    self._eval_rows = parallel_lib.compile_eval_rows(par, eval_rows)
    if not self.gan:
      self._predict = jax.jit(steps_lib.make_predict_fn(self.state.apply_fn))
    d_steps = int(self.config.generative.d_steps) if self.gan else 1
    lr_fn = optim.create_learning_rate_fn(
        self.config, steps_per_epoch=self.steps_per_epoch / d_steps,
        num_epochs=self.schedule_epochs)
    # The rate of the epoch's last update (its plateau scale too): the rate the
    # logged epoch trained with, not the next one's.
    lr = functools.partial(optim.current_learning_rate, learning_rate_fn=lr_fn,
                           last_update=True)
    # A GAN logs its generator's learning rate.
    self._current_lr = jax.jit((lambda o: lr(o["generator"])) if self.gan else lr)

  def vocab_json(self) -> dict | None:
    """The run's vocabularies as JSON (``{name: {"tokens": [...], ...}}``)."""
    return {k: v.to_json() for k, v in self.vocab.items()} if self.vocab else None

  def compute_metrics(self, names, acc) -> dict[str, float]:
    """Host values of merged metric sums (the task's own metrics when generative)."""
    if self.generative or self.seq2seq:
      return gen_stats.compute(names, acc)
    return metrics_lib.compute(names, acc)

  def _make_callbacks(self, extra, progress):
    c = self.config
    callbacks: list[cb.Callback] = []
    if c.reduce_on_plateau.enabled:
      callbacks.append(cb.ReduceLROnPlateau(c))
    if c.early_stopping.enabled:
      es = c.early_stopping
      callbacks.append(cb.EarlyStopping(es.monitor, es.mode, int(es.patience),
                                        float(es.min_delta), bool(es.restore_best)))
    if c.terminate_on_nan:
      callbacks.append(cb.TerminateOnNaN())
    self.progress = cb.ProgressBar(enabled=False if self.quiet or not self.primary else progress)
    callbacks.append(self.progress)
    callbacks.extend(extra)
    for callback in callbacks:
      if isinstance(callback, cb.EarlyStopping):
        callback.bind(self)  # A reused instance forgets another run's best epoch.
    return callbacks

  # ------------------------------------------------------------------ helpers
  @property
  def step(self) -> int:
    return int(self.state.step)

  @property
  def normalizer(self):
    """Maps raw inputs as the train split's were mapped (``None``: token ids)."""
    return self.data.normalizer

  @property
  def data_source(self) -> dict:
    """What the checkpoints record of the data: name, given to fit, fingerprint."""
    return self.data.source

  def log(self, message: str) -> None:
    if not self.quiet and self.primary:
      print(message, flush=True)

  def _check_metric_masks(self, names) -> None:
    """Registered metrics in their sums form leave padding out
    (:func:`jdl.metrics.check_padding_ignored`), checked on three train examples and
    random outputs of the model's output shape."""
    if not any(n in metrics_lib.CUSTOM for n in names) or self.data.train.size < 3:
      return
    x, y = self.data.train.x[:3], jnp.asarray(self.data.train.y[:3])
    outputs = jax.random.normal(jax.random.key(0), self._output_shape(x).shape, jnp.float32)
    metrics_lib.check_padding_ignored(names, outputs, y)

  def _example_batch(self) -> steps_lib.Batch:
    return {"x": self.data.train.x[:self.batch_size], "y": self.data.train.y[:self.batch_size],
            "mask": jnp.ones((self.batch_size,), jnp.float32)}

  def empty_acc(self):
    """Zero metric sums shaped like the train step's metrics (merge's identity)."""
    _, shapes = jax.eval_shape(self.train_step, self.state, self._example_batch())
    acc = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return parallel_lib.replicate(self.parallel, acc)

  def runtime(self) -> dict[str, Any]:
    """Where this run runs: recorded in config.json and the first metrics line."""
    return {"num_devices": self.parallel.num_devices, "num_processes": jax.process_count(),
            "parallel": self.parallel.mode, "platform": jax.devices()[0].platform,
            "cpu_cores": runtime_lib.usable_cpu_cores(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}

  def __repr__(self) -> str:
    if not hasattr(self, "state"):  # Its __init__ failed before it had one.
      return object.__repr__(self)
    model = (self.model_source["class"] if self.model_source["given"]
             else self.config.model.get("name"))
    where = (f"workdir={str(self.workdir)!r}" if self.workdir is not None
             else f"loaded_from={str(self.loaded_from)!r}" if self.loaded_from is not None
             else "workdir=None")
    step = "<deleted>" if self.state.step.is_deleted() else self.step
    return f"Trainer(dataset={self.data.name!r}, model={model!r}, {where}, step={step})"

  def summary(self) -> str:
    d = self.data
    model = (f"{self.model_source['class']} (given to fit)" if self.model_source["given"]
             else self.config.model.get("name"))
    lines = [
        f"experiment: {self.config.description or '(no description)'}",
        f"dataset: {d.name} ({d.task}"
        + (f" data, task {self.config.task}" if self.config.task != d.task else "")
        + f"); train {d.train.size}, "
        f"val {d.val.size if d.val else 0}, test {d.test.size if d.test else 0}; "
        f"input shape {d.input_shape}" + (f"; {d.num_classes} classes" if d.num_classes else ""),
        f"model: {model}  optimizer: {self.config.optimizer.name}  "
        f"schedule: {self.config.schedule.name}",
        f"batch size {self.batch_size}"
        + (f" (microbatches of {self.microbatch_size})" if self.microbatch_size else "")
        + f", {self.steps_per_epoch} steps/epoch, "
        f"{self.num_epochs} epochs, epoch mode {self.epoch_mode}"
        + (f" (blocks of {self.chunk} steps)" if self.epoch_mode == "scan" else "")
        + f", NaN/Inf checked per {self.nonfinite_check}",
        f"devices: {self.parallel.num_devices} x {jax.devices()[0].platform} "
        f"(parallel {self.parallel.mode!r}, {jax.process_count()} process"
        f"{'es' if jax.process_count() > 1 else ''})",
        "",
        summary_lib.param_table(self.state.variables,
                                frozen=tuple(self.config.optimizer.freeze)),
    ]
    return "\n".join(lines)

  def warn(self, message: str) -> None:
    """One line on stderr, even when quiet."""
    print(message, file=sys.stderr, flush=True)

  def _record(self, record: dict[str, Any]) -> None:
    if self.logger is not None:
      self.logger.write(record)
    if self.tb is not None:
      self.tb.write(record)

  # -------------------------------------------------------------------- fit
  @checks.named_rng_streams()
  def fit(self) -> FitResult:
    """Trains to ``num_epochs`` (or an early stop), resuming from the workdir.

    SIGTERM / SIGINT stop training after the step (or scan block) in flight, with a
    checkpoint written; ``result.trainer.preempted`` then names the signal.
    """
    self.holds_run_state = True  # Resumed from the workdir, or trained here.
    for line in optim.advice(self.config.optimizer, self.config.schedule,
                             int(self.config.num_epochs)):
      self.warn(f"jdl: warning: {line}")
    self.load_judge_or_warn()  # Said now, not after training: it scores the finished run.
    try:
      return self._fit_here()
    except BaseException:
      self.progress.close()  # The error's line goes on a line of its own.
      raise

  def _fit_here(self) -> FitResult:
    with workdir_lib.StopRequests() as stop, contextlib.closing(self.feed):
      if self.workdir is None:
        return self._fit(stop)
      if self.workdir.exists() and not self.workdir.is_dir():
        raise JdlError(f"workdir {self.workdir} is a file, not a folder; use another "
                       "--workdir")
      if self.workdir.is_symlink() and not self.workdir.exists():
        raise JdlError(f"workdir {self.workdir} is a broken symbolic link (to "
                       f"{os.readlink(self.workdir)}); make its target or use another "
                       "--workdir")
      workdir_lib.check_outside_runs(self.workdir)
      try:
        self.workdir.mkdir(parents=True, exist_ok=True)
      except OSError as e:
        raise JdlError(f"cannot create workdir {self.workdir}: {e.strerror}") from None
      with contextlib.ExitStack() as held:
        error = None
        if self.primary:  # Process 0 alone locks the workdir and moves a run aside.
          try:
            held.enter_context(workdir_lib.locked(self.workdir, self.warn))
            if self.restart:
              moved = workdir_lib.move_aside(self.workdir)
              if moved is not None:
                self.warn(f"jdl: --restart: moved the previous run to {moved}")
              # Once: a second fit() of this trainer resumes the run it started.
              self.restart = False
          except Exception as e:  # noqa: BLE001  (an OSError of the move too)
            error = e
        # The others learn of its failure here, not by waiting at the barrier until
        # the timeout kills them.
        if parallel_lib.any_process(error is not None):
          raise error or JdlError(f"process 0 could not start the run in {self.workdir}; "
                                  "its error is on its output")
        parallel_lib.sync("jdl_restart")  # Every process sees the workdir after the move.
        try:
          return self._fit(stop)
        except BaseException:
          # The checkpoint an error message calls intact is on disk, not in flight.
          # (One process alone: several may wait on each other to finish a save.)
          if self.checkpointer is not None and jax.process_count() == 1:
            with contextlib.suppress(Exception):
              self.checkpointer.wait()
          if self.tb is not None:
            self.tb.abandon()
          raise

  def _fit(self, stop: workdir_lib.StopRequests) -> FitResult:
    if self._reached is not None and self.state is self._reached[0]:
      self.state = self._reached[1]  # Not the best epoch restore_best put back.
    self._reached = None
    # Without a workdir a second fit() continues a stopped one: inside an epoch, with
    # that epoch's running sums (a workdir's checkpoint restores them).
    if self.workdir or self.step % self.steps_per_epoch == 0 or self._acc is None:
      self._acc = self.empty_acc()
    # A stop inside an epoch ended the previous fit() only (one at an epoch's end
    # ended the run: stopped_at), as did a signal or a non-finite value.
    self.stop_training = False
    self.preempted, self.nan_detected = None, False
    self._nonfinite_reported = 0
    self._param_names = [jax.tree_util.keystr(path, simple=True, separator="/")
                         for path, _ in jax.tree_util.tree_leaves_with_path(self.state.params)]
    # Without a workdir a second fit() of the same trainer continues from its state.
    start = self._open_workdir() if self.workdir else self.step
    if start != self.step:  # Its checkpoints were deleted since this trainer trained.
      raise JdlError(f"workdir {self.workdir} holds no checkpoint of the run this trainer "
                     f"trained to step {self.step}: make a new jdl.Trainer to train "
                     "it from the start")
    self.log(self.summary())
    for callback in self.callbacks:
      callback.on_train_begin(self)
    spe, ce = self.steps_per_epoch, int(self.config.checkpoint_every_steps)
    # nonfinite='stop' with every gradient tested: a non-finite step's update is still
    # applied, so the loop stops within two blocks of it, not at the epoch's end (the
    # per-block check stops after its block by itself).
    stop_at_nonfinite = self.nonfinite_check == "step" and self.config.nonfinite == "stop"
    stop.block_steps = self.chunk  # What a stop request's message says it waits for.
    every_seconds = float(self.config.checkpoint_every_seconds)
    epoch = start // spe
    if self.num_epochs == 0 and start == 0:
      self.log("num_epochs is 0: nothing to train; the initial state is evaluated"
               + (" and saved as step 0" if self.workdir else ""))
      self._save()  # So that evaluate, export and init_from can read it.
    elif epoch >= self.num_epochs or self._stopped_before():
      why = ""
      if epoch < self.num_epochs:
        by = (self.stopped_at or {}).get("by", "EarlyStopping")
        who = "early stopping" if by == "EarlyStopping" else f"callback {by}"
        why = (f" ({who} ended it at epoch {epoch}; num_epochs={self.num_epochs} does "
               "not restart it: use --restart (restart=True in Python), or another "
               "workdir, to train longer)")
      elif epoch > self.num_epochs or start % spe:  # A run stopped mid-epoch counts too.
        done = f"{epoch} epoch{'s' * (epoch != 1)}" + (
            f" and {start % spe} steps" if start % spe else "")
        why = f" ({done}, more than num_epochs={self.num_epochs}: nothing is undone)"
      self.log("training already complete" + (" in this workdir" if self.workdir else "")
               + why)
    else:
      self.compile_seconds = self._warm_up()
    compile_seconds = self.compile_seconds
    # When the last checkpoint was written (_save); the clock of checkpoint_every_seconds
    # starts with training, so compiling is not work a save would protect.
    self.saved_at = time.monotonic()
    while epoch < self.num_epochs and not self.stop_training and not self._stopped_before():
      pos = self.step - epoch * spe
      self.progress.start_epoch(epoch, self.num_epochs, spe, pos)
      t0 = time.perf_counter()
      steps_run, last_save, stopping = 0, self.step, False
      save_seconds = 0.0  # Held by mid-epoch saves: not training time.
      # The loop dispatches block k, then waits for block k - 1: the device always has
      # a block queued, and a stop request is acted on within two blocks (without the
      # wait the loop could run an epoch ahead, and a preemption's grace period end
      # before the checkpoint: the save waits for every block dispatched).
      self._in_flight = previous = previous_bad = None
      while pos < spe:
        n = min(self.chunk - pos % self.chunk, spe - pos)
        size, pad = (self.chunk, (self.chunk,)) if self.padded_blocks else (n, ())
        x, y, block = self._place(*self.feed.block(epoch, pos, n, *pad))
        if self._diagnostics and self._diagnostics.due(epoch * spe + pos, epoch * spe + pos + n):
          self._diagnostics.run(self, x, y, block, epoch)
        else:
          self._train_block(size, x, y, block)
        pos, steps_run = pos + n, steps_run + n
        if previous is not None:
          previous.block_until_ready()
          stop.step_seconds = (time.perf_counter() - t0 - save_seconds) / max(
              steps_run - n, 1)  # The blocks done (this one is in flight).
        if previous_bad is not None and int(previous_bad):
          self._check_finite()  # Raises, naming the first non-finite step.
        # Not donated: ready when this block is done.
        previous = self._in_flight = self.state.step + 0
        if stop_at_nonfinite:  # The block's count, read once it is done (above).
          previous_bad = self._acc[steps_lib.NONFINITE]["count"] + 0
        for callback in self.callbacks:
          callback.on_steps_end(self, epoch * spe + pos, n)
        if pos < spe:  # Mid-epoch checkpoints (the epoch's end saves in _end_epoch).
          due = bool(ce) and epoch * spe + pos - last_save >= ce
          if every_seconds:  # The processes agree, whatever their clocks say.
            due = parallel_lib.any_process(
                due or time.monotonic() - self.saved_at >= every_seconds)
          if due:
            last_save = epoch * spe + pos
            jax.block_until_ready(self.state)  # The block in flight is training time;
            saved = time.perf_counter()  # the save's own work is not.
            self._save()
            save_seconds += time.perf_counter() - saved
        # A signal, or a callback's stop: all processes stop after the same block.
        stopping, self.stop_training = parallel_lib.any_process_each(stop.requested,
                                                                    self.stop_training)
        if stopping or self.stop_training:
          break
      if stopping and pos < spe:
        return self._stop_early(stop.signal_name or "a signal to another process")
      if self.stop_training and pos < spe:
        return self._stop_mid_epoch()
      self.progress.close()  # Before a warning of skipped steps.
      self._check_finite()
      train_logs = self.compute_metrics(self.train_names, self._acc)  # Syncs the device.
      seconds = time.perf_counter() - t0 - save_seconds
      self._acc = self.empty_acc()
      self._nonfinite_reported = 0
      self._end_epoch(epoch, train_logs, seconds, steps_run, compile_seconds, save_seconds)
      compile_seconds = None
      epoch += 1
      if parallel_lib.any_process(stop.requested) and epoch < self.num_epochs:
        return self._stop_early(stop.signal_name or "a signal to another process")
    stop.finishing = True  # A signal now (or in the last block) lets the run finish.
    if stop.requested:
      self.warn(f"jdl: {stop.signal_name} came with the last step: finishing the run")
    if self.checkpointer is not None:
      self.checkpointer.wait()
    trained_to = self.step
    self._end_callbacks()
    self.trained_to = trained_to
    test = self._finish()
    return FitResult(self.state, self.history, test, self.workdir, self)

  def _train_block(self, n: int, x, y, idx) -> None:
    """Advances :attr:`state` and the epoch's sums by a block of ``n`` rows of
    indices (its steps, then padding: :attr:`padded_blocks`)."""
    if n not in self._blocks:
      # A block size _warm_up did not compile: without padded blocks, a resume from
      # a checkpoint written with another block size (scan_chunk,
      # checkpoint_every_steps, epoch_mode...).
      self._blocks[n] = self.compile_block(self._block_fn(), n)
    if self.nonfinite_check == "step":
      self.state, self._acc = self._blocks[n](self.state, self._acc, x, y, idx)
      return
    self.keep_or_replay(self._blocks[n](self.state, self._acc, x, y, idx),
                        functools.partial(self._replay_block, n), x, y, idx)

  def _replay_block(self, n: int):
    if n not in self._replay_blocks:
      self._replay_blocks[n] = self.compile_block(self._run_block, n)
    return self._replay_blocks[n]

  def keep_or_replay(self, outputs, replay, x, y, idx) -> tuple:
    """Takes a block run without testing each gradient (``nonfinite_check='block'``):
    ``outputs = (state, acc, *rest, ok)``. Keeps them when ``ok``; else runs the block
    again from its inputs with ``replay()(state, acc, x, y, idx)`` (every gradient
    tested; compiled on first use) and raises the error naming the first non-finite
    step. Returns ``rest``."""
    *outputs, ok = outputs
    if bool(ok):  # Waits for the block; its inputs were kept until now.
      self.state, self._acc, *rest = outputs
      return tuple(rest)
    # A non-finite loss, parameter or optimizer state.
    del outputs
    self.state, self._acc, *rest = replay()(self.state, self._acc, x, y, idx)
    self._check_finite()  # Raises, naming the first non-finite loss or gradient;
    self.check_state_finite()  # else an update overflowed the state: raises too.
    return tuple(rest)

  def _check_finite(self) -> None:
    """Acts on non-finite steps since the epoch began (syncs the device).

    ``nonfinite='stop'``: raises an error naming the first such step and quantity.
    ``'skip'``: optax.apply_if_finite skipped those updates; one warning line, and an
    error once it gives up (parameters or optimizer state no longer finite).

    Raises:
      JdlError: as above; the checkpoints on disk are all from before.
    """
    info = jax.device_get(self._acc[steps_lib.NONFINITE])
    count = int(info["count"])
    if count == 0 or count == self._nonfinite_reported:
      return
    step = int(info["step"]) + 1
    names = self._param_names
    what = ("the loss" if not info["loss_finite"] else
            f"the gradient of {names[int(info['param'])]!r}")
    epoch = (step - 1) // self.steps_per_epoch + 1
    where = f"step {step} (epoch {epoch})"
    healthy = bool(steps_lib.state_finite(self.state))
    last = self.checkpointer.latest_step() if self.checkpointer else None
    kept = f"; the last checkpoint (step {last}) is intact" if last is not None else ""
    if not healthy and self.config.nonfinite == "skip":
      self.nan_detected = True
      limit = int(self.config.get("max_nonfinite_skips", 10))
      raise NonFiniteError(
          f"the parameters or optimizer state are NaN or Inf by {where} (the first "
          f"skipped update: {what} was non-finite){kept}. Skipping updates cannot undo "
          "that: an update with finite gradients overflowed them, or "
          f"{limit} non-finite steps in a row (max_nonfinite_skips) made "
          "optax.apply_if_finite apply one. Lower the learning rate or clip gradients "
          "(--config.optimizer.clip_norm=1.0)")
    if self.config.nonfinite == "stop" or not healthy:
      self.nan_detected = True
      raise NonFiniteError(
          f"non-finite value at {where}: {what} is NaN or Inf{kept}. Lower the learning "
          "rate, clip gradients (--config.optimizer.clip_norm=1.0), or skip such steps "
          "(--config.nonfinite=skip)")
    self.warn(f"jdl: warning: skipped {count - self._nonfinite_reported} non-finite "
              f"update(s) this epoch, the first at {where} ({what})")
    self._nonfinite_reported = count

  def check_state_finite(self) -> None:
    """Raises if the parameters, optimizer state or model state hold NaN or Inf.

    A step whose loss and gradients are finite can still overflow the state (a huge
    learning rate); the checks of :meth:`_check_finite` look at losses and gradients.

    Raises:
      NonFiniteError: naming the step; the checkpoints on disk are all from before.
    """
    if bool(steps_lib.state_finite(self.state)):
      return
    self.nan_detected = True
    last = self.checkpointer.latest_step() if self.checkpointer else None
    kept = f"; the last checkpoint (step {last}) is intact" if last is not None else ""
    epoch = max(self.step - 1, 0) // self.steps_per_epoch + 1
    raise NonFiniteError(
        f"the parameters or optimizer state are NaN or Inf by step {self.step} (epoch "
        f"{epoch}) although every loss and gradient was finite: an update overflowed "
        f"them{kept}. Lower the learning rate or clip gradients "
        "(--config.optimizer.clip_norm=1.0)")

  def _stop_early(self, signal_name: str) -> FitResult:
    """After a stop request: write the checkpoint (unless this step has one), flush
    and return."""
    self.preempted = signal_name
    self.progress.close()
    self._save()
    self._close_writers()
    return FitResult(self.state, self.history, {}, self.workdir, self)

  def _close_writers(self) -> None:
    """Closes the checkpointer (after its save in flight) and TensorBoard's writer."""
    if self.checkpointer is not None:
      self.checkpointer.close()
    if self.tb is not None:
      self.tb.writer.close()

  def _stop_mid_epoch(self) -> FitResult:
    """A callback stopped training inside an epoch: that partial epoch is no epoch of
    the history. Its state and running sums are checkpointed (as a preemption's), so
    re-running resumes the epoch exactly; the test split is not evaluated."""
    self.progress.close()
    self._check_finite()
    self._save()
    self.log(f"a callback stopped training at step {self.step}, inside epoch "
             f"{self.step // self.steps_per_epoch + 1}: "
             + ("its checkpoint holds the partial epoch, which a re-run continues"
                if self.checkpointer is not None else "the partial epoch is not recorded"))
    self._end_callbacks()  # Before the close: restore_best may read a checkpoint.
    self._close_writers()
    return FitResult(self.state, self.history, {}, self.workdir, self)

  def _scored_elsewhere(self) -> str:
    """`` (...)`` naming the step ``jdl evaluate`` scores when it is not this state's
    (fit scores its final state; evaluate the best checkpoint by ``monitor``)."""
    ck = self.checkpointer
    latest = ck.latest_step() if ck is not None and self.primary else None
    if latest is None:
      return ""
    # This run's callbacks hold what `latest` saved: no read of its metadata, which
    # would be a collective restore on this (primary) process alone.
    step, why = resume.final_step(self.config, ck, latest, self._callback_states())
    return "" if step == self.step else (
        f" (the state at step {self.step}; jdl evaluate scores step {step}: {why})")

  def _end_callbacks(self) -> None:
    """Every callback's ``on_train_end``. Early stopping may put an earlier state back;
    without a workdir (whose checkpoints hold it) the state training reached is kept
    for a second fit(), which would otherwise train again from the best epoch."""
    reached = self.state
    for callback in self.callbacks:
      callback.on_train_end(self)
    if self.state is not reached and not self.workdir:
      self._reached = (self.state, reached)

  def _stopped_before(self) -> bool:
    """Whether a callback's stop at an epoch's end ended the run (early stopping's
    state alone records it in checkpoints written before ``stopped_at``)."""
    return self.stopped_at is not None or any(
        isinstance(c, cb.EarlyStopping) and c.stopped_epoch >= 0 for c in self.callbacks)

  def _warm_up(self) -> float:
    """Compiles the train block ahead of time; returns the seconds it took."""
    t0 = time.perf_counter()
    shapes = {self.chunk, self.steps_per_epoch % self.chunk or self.chunk}
    block = self._block_fn()
    self._blocks, self._replay_blocks = {}, {}
    for n in ({self.chunk} if self.padded_blocks else shapes):
      self._blocks[n] = self.compile_block(block, n)
    if self._diagnostics:
      self._diagnostics.compile(self, {self.chunk} if self.padded_blocks else shapes)
    # What else compiles on first use, here rather than inside epoch 1's time: the
    # blocks' indices (the epochs' order), and a save's finiteness check and checksums.
    if hasattr(self.feed, "warm_up"):  # Blocks of n steps, of `size` rows when padded.
      sizes = ({(n, self.chunk) for n in shapes} if self.padded_blocks
               else {(n, None) for n in shapes})
      self.feed.warm_up(sorted(sizes, key=str))
    if self.checkpointer is not None:
      jax.block_until_ready(steps_lib.state_finite(self.state))
      ckpt_lib.checksums(ckpt_lib.to_savable(self.checkpoint_tree()))
    return time.perf_counter() - t0

  def _block_fn(self):
    return self._run_checked_block if self.nonfinite_check == "block" else self._run_block

  @property
  def fit_block(self):
    """The pure ``(state, acc, x, y, idx)`` block function that :meth:`fit` runs, on
    the global arrays: ``run_checked_block`` under ``nonfinite_check='block'``, else
    ``run_block`` (in ``shard_map`` under ``parallel='shard_map'``)."""
    if self.nonfinite_check == "block":
      return self.run_checked_block
    return parallel_lib.global_block(self.parallel, self.run_block, gathered=self.gathered)

  def compile_block(self, block, num_steps: int):
    """``block`` (a jitted ``(state, acc, x, y, idx)`` function) compiled ahead of time
    for blocks of ``num_steps`` steps."""
    return block.lower(self.state, self._acc, *self.block_shapes(num_steps)).compile()

  def block_shapes(self, num_steps: int) -> tuple[Any, Any, Any]:
    """``(x, y, idx)`` of a block of ``num_steps`` steps, for ahead-of-time lowering.

    The feed's inputs (the resident split, or a streamed block's rows) with the
    indices placed as :meth:`_place` places them.
    """
    if self.gathered:  # [num_steps, batch, ...] sharded rows; the step numbers.
      s, par = self.data.train, self.parallel
      x, y = (jax.ShapeDtypeStruct((num_steps, self.batch_size, *shape[1:]), dtype,
                                   sharding=par.block_sharding)
              for shape, dtype in ((s.x_shape, np.float32), (s.y_shape, s.y_dtype)))
      return x, y, jax.ShapeDtypeStruct((num_steps,), jnp.int32, sharding=par.replicated)
    x, y, _ = self.feed.shapes(num_steps)
    return x, y, parallel_lib.shape_struct(self.parallel, (num_steps, self.batch_size),
                                           jnp.int32)

  def _place(self, x, y, idx):
    """A block's inputs placed for the parallel mode (unchanged on one device).

    The indices' batch axis is split over the devices. A streamed block
    (:attr:`gathered`) is already a global array (:meth:`_global_block`, built by
    the feed's thread from this process's rows); it runs with its step numbers.
    """
    if not self.parallel.enabled:
      return x, y, idx
    if self.gathered:
      n = x.shape[0]
      if n not in self._step_numbers:
        self._step_numbers[n] = parallel_lib.replicate(self.parallel,
                                                       np.arange(n, dtype=np.int32))
      return x, y, self._step_numbers[n]
    return x, y, parallel_lib.block_indices(self.parallel, idx)

  def _global_block(self, n: int, x: np.ndarray, y: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """A streamed block's rows of this process, ``[n * cols, ...]``, as the global
    ``[n, batch_size, ...]`` arrays sharded ``P(None, 'data')`` (no other rows read)."""
    sharding = self.parallel.block_sharding
    out = []
    for a in (x, y):
      a = a.reshape(n, -1, *a.shape[1:])
      out.append(parallel_lib.global_rows(a, (n, self.batch_size, *a.shape[2:]), sharding))
    return tuple(out)

  def _end_epoch(self, epoch, train_logs, seconds, steps_run, compile_seconds,
                 save_seconds: float = 0.0) -> None:
    self.progress.close()  # Before the epoch's line is printed.
    step = self.step
    lr = float(self._current_lr(self.state.opt_state))
    record = {"step": step, "epoch": epoch + 1, "split": "train", **train_logs,
              "learning_rate": lr, "epoch_seconds": round(seconds, 4),
              "samples_per_sec": round(steps_run * self.batch_size / max(seconds, 1e-9), 1)}
    self.epoch_rates.append(record["samples_per_sec"])
    if compile_seconds is not None:
      record["compile_seconds"] = round(compile_seconds, 3)
    if save_seconds:  # What the epoch's mid-epoch saves held the loop (async: the call).
      record["checkpoint_seconds"] = round(save_seconds, 4)
    peak = runtime_lib.peak_device_memory_mib(jax.local_devices())
    if peak is not None:  # A GPU's or TPU's: XLA:CPU keeps no count.
      record["peak_memory_mib"] = peak
    if epoch == 0:  # The first line says where the run ran (config.json: the latest session).
      record.update({k: v for k, v in self.runtime().items()
                     if k not in ("platform", "xla_flags")})
    self._record(record)
    logs = dict(train_logs)
    if self.data.val is not None:
      val = self.evaluate_split(self.data.val)
      self._record({"step": step, "epoch": epoch + 1, "split": "val", **val})
      logs.update({f"val_{k}": v for k, v in val.items()})
    logs["learning_rate"] = lr
    # One value an epoch in every list: NaN for the epochs before a metric was added
    # on a resume, and after one was dropped (see ResumableRun._check_layout).
    for k in [*logs, *(k for k in self.history if k not in logs)]:
      values = self.history.setdefault(k, [])
      values.extend([math.nan] * (epoch - len(values)))
      values.append(logs.get(k, math.nan))
    last = epoch + 1 == self.num_epochs
    memory = (f", {record['peak_memory_mib']:,.0f} MiB peak" if "peak_memory_mib" in record
              else "")
    saves = f" + {save_seconds:.2f}s saving" if save_seconds else ""
    line = (f"epoch {epoch + 1}/{self.num_epochs}  step {step}  {cb.format_logs(logs)}  "
            f"({seconds:.2f}s{saves}, {record['samples_per_sec']:.0f} samples/s{memory})")
    printed = last or (epoch + 1) % max(1, int(self.config.print_every_epochs)) == 0
    if printed:
      self.log(line)
    generates = self.config.task in ("vae", "gan", "wgan_gp")
    if (self.workdir is not None and self.config.plots and generates
        and (last or (epoch + 1) % int(self.config.generative.sample_every_epochs) == 0)):
      self.save_samples(self.workdir / "plots" / f"samples_epoch_{epoch + 1:03d}.png",
                        title=f"epoch {epoch + 1}")
    by = "a callback's on_steps_end" if self.stop_training else None
    for callback in self.callbacks:
      callback.on_epoch_end(self, epoch, logs)
      if self.stop_training and by is None:
        by = type(callback).__name__
    if self.stop_training and not self.nan_detected:  # Ends the run: a re-run finds it so.
      self.stopped_at = {"epoch": epoch + 1, "by": by}
    if self.stop_training and not printed:  # The run's last epoch is always shown.
      self.log(line)
    monitor, mode = self.config.monitor, self.config.monitor_mode
    metrics = ({monitor: logs[monitor]} if monitor and monitor in logs
               and math.isfinite(logs[monitor]) else {})
    # A new best epoch is saved whatever the cadence: it is the state that the best
    # checkpoint must find on disk later; so is a step a callback will read back
    # (early stopping's best epoch, for restore_best).
    new_best = bool(metrics) and self._is_new_best(monitor, mode)
    # checkpoint_every_steps: every epoch's end too, so that no two saves are further
    # apart than it (mid-epoch saves count from the epoch's start).
    if (last or self.stop_training or new_best or self.step in self.kept_steps()
        or int(self.config.checkpoint_every_steps) > 0
        or (epoch + 1) % int(self.config.checkpoint_every_epochs) == 0):
      self._save(metrics or None)

  def _is_new_best(self, metric: str, mode: str) -> bool:
    """Whether this epoch's ``metric`` equals or beats every earlier epoch's (history,
    so resumes too). A tie counts: of tied epochs the best checkpoint (orbax) and the
    recorded best are the latest, which must then be on disk."""
    *earlier, now = self.history[metric]
    earlier = [v for v in earlier if math.isfinite(v)]
    if not earlier:
      return True
    return now <= min(earlier) if mode == "min" else now >= max(earlier)

  def _finish(self) -> dict[str, float]:
    test, sums = {}, None
    if self.data.test is not None and not self.nan_detected:
      sums = self.split_sums(self.data.test)
      test = self.metrics_of(sums)
      test.update(self.sequence_scores(self.data.test))
      try:
        test.update(self.generative_scores(self.data.test))
      except JdlError as e:  # A missing judge must not fail a finished run.
        self.warn(f"jdl: warning: generated images not scored: {e}")
      self._record({"step": self.step, "epoch": self.step // self.steps_per_epoch,
                    "split": "test", **test})
      self.log(f"test: {cb.format_logs(test)}{self._scored_elsewhere()}")
    if self.workdir is not None:
      if self.tb is not None:
        self.tb.writer.close()
      if self.config.plots and self.primary:
        d = self.config.diagnostics
        plots.plot_metrics(self.workdir / "metrics.jsonl", self.workdir / "plots",
                           ratio_bounds=(float(d.ratio_low), float(d.ratio_high)))
      if (self.config.plots and self.primary and test and self.config.task == "classification"
          and 2 <= self.data.num_classes <= 100 and isinstance(self.data.test, pipeline.Split)
          and jax.process_count() == 1):
        # Of the state scored just above: the macro metrics' counts, else a pass of
        # the model over the split.
        matrix = (np.asarray(jax.device_get(sums["confusion"]["matrix"]))[:, :-1]
                  if isinstance(sums, dict) and "confusion" in sums
                  else self.confusion_matrix("test"))
        share = np.trace(matrix) / max(self.data.test.size, 1)
        plots.plot_confusion(matrix, self.workdir / "plots" / "confusion_test.png",
                             title=f"test split, step {self.step}: accuracy {share:.2%}",
                             labels=transfer.class_ids(self.config.classes, len(matrix)))
      if (self.config.plots and self.primary and test and self.config.task == "regression"
          and isinstance(self.data.test, pipeline.Split) and self.data.test.size
          and jax.process_count() == 1):
        plots.plot_predictions(self.data.test.y, self.predict_normalized(self.data.test.x),
                               self.workdir / "plots" / "predictions_test.png",
                               title=f"test split, step {self.step}")
      if self.config.plots and self.config.task in ("autoencoder", "vae") and not self.nan_detected:
        self.save_reconstructions(self.workdir / "plots" / "reconstructions.png")
      if self.primary and not self.record_kept:
        with (self.workdir / "summary.txt").open("a") as f:
          restored = (f" (restored; trained to step {self.trained_to})"
                      if self.trained_to not in (None, self.step) else "")
          f.write(f"\nfinal step {self.step}{restored}; test: {json.dumps(test)}\n")
      self.checkpointer.close()
    return test

  # ------------------------------------------------------------- evaluation
  def evaluate_split(self, split: pipeline.Split, state: TrainState | None = None) -> dict[str, float]:
    """Exact metrics of ``state`` (default: the current one) over a whole split."""
    return self.metrics_of(self.split_sums(split, state))

  def metrics_of(self, sums) -> dict[str, float]:
    """The run's metrics (its task's, for a GAN) from :meth:`split_sums`."""
    names = gen_tasks.EVAL_METRICS[self.config.task] if self.gan else self.metric_names
    return self.compute_metrics([n for n in names if n in self.metric_names], sums)

  def split_sums(self, split: pipeline.Split, state: TrainState | None = None):
    """The metric sums (``jdl.metrics``' state) of ``state`` over a whole split."""
    state = self.state if state is None else state
    acc = None
    bs, prefetch = self.eval_batch_size, int(self.config.stream.prefetch)
    if self.parallel.enabled and not isinstance(split, pipeline.Split):
      # Streamed: each process reads only its columns of each padded batch.
      rows = self.parallel.batch_sharding

      def place(x, y, mask):
        return tuple(parallel_lib.global_rows(a, (bs, *a.shape[1:]), rows) for a in (x, y, mask))

      columns = parallel_lib.process_columns(self.parallel, bs)
      for x, y, _, mask in split.eval_batches(bs, prefetch, columns=columns, place=place):
        m = self._eval_rows(state, x, y, mask)
        acc = m if acc is None else metrics_lib.merge(acc, m)
    else:
      for x, y, idx, mask in split.eval_batches(bs, prefetch):
        if self.parallel.enabled:
          idx, mask = (parallel_lib.batch_rows(self.parallel, a) for a in (idx, mask))
        m = self._eval_batch(state, x, y, idx, mask)
        acc = m if acc is None else metrics_lib.merge(acc, m)
    return acc

def fit(config: ml_collections.ConfigDict, workdir: str | Path | None = None, *,
        dataset: data_lib.Dataset | None = None, model=None,
        callbacks: Sequence[cb.Callback] = (), quiet: bool = False,
        restart: bool = False, progress: bool | None = None) -> FitResult:
  """Trains ``config``'s experiment; resumes if ``workdir`` holds a checkpoint.

  Args:
    config: an experiment config (see :func:`jdl.config.base_config`).
    workdir: where checkpoints, ``metrics.jsonl``, TensorBoard events, plots and
      the summary go; ``None`` keeps everything in memory.
    dataset: a :class:`jdl.data.Dataset` to use instead of ``config.dataset``.
    model: a flax.linen module instance to use instead of ``config.model`` (for
      ``task='gan'``/``'wgan_gp'``: a ``(generator, discriminator)`` pair).
    callbacks: a list of extra :class:`jdl.train.callbacks.Callback` instances.
    quiet: print nothing but warnings.
    restart: move a previous run in ``workdir`` aside and start over.
    progress: the bar of each epoch's steps: ``None`` draws it on a terminal and in
      a notebook, ``False`` nowhere (the epoch lines stay); ``quiet`` leaves it out.

  Returns:
    A :class:`FitResult`.

  Raises:
    JdlError: a bad config value, dataset, model or callback, or a workdir whose run
      cannot be resumed with these (each named in one line; nothing written is lost).
    NonFiniteError: (a ``JdlError``) a NaN or Inf loss, gradient or state with
      ``nonfinite='stop'``, naming the step; the checkpoints on disk are from before.
  """
  trainer = Trainer(config, workdir, dataset=dataset, model=model, callbacks=callbacks,
                    quiet=quiet, restart=restart, progress=progress)
  return trainer.fit()


