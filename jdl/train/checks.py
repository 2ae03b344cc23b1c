"""Checks of a run's settings, made before it trains: one clear error apiece.

:func:`validate_config` needs only the config; :func:`check_decoding` and
:func:`check_monitors` also what the run loaded (its vocabulary and targets, the
names it will log). :class:`jdl.train.loop.Trainer` calls them as it builds a run,
before it touches the workdir.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from typing import Sequence

import ml_collections
import numpy as np

from jdl import config as config_lib
from jdl import diagnostics as diagnostics_lib
from jdl import losses as losses_lib
from jdl import metrics as metrics_lib
from jdl import models as models_lib
from jdl import regularizers
from jdl.data import augment as augment_lib
from jdl.data import text as text_data
from jdl.errors import JdlError
from jdl.generative import tasks as gen_tasks
from jdl.optim import masks
from jdl.optim import plateau
from jdl.optim import schedules
from jdl.optim._chain import validate_optimizer
from jdl.train import parallel as parallel_lib

NORMALIZERS = ("featurewise", "featurewise_center", "global", "none")
# sequence.decode_max_len beyond this multiple of the longest target is refused: a
# typo (1e7) would decode for hours after training.
MAX_DECODE_FACTOR = 8


def check_is_config(config) -> None:
  """Refuses anything but a ConfigDict, naming the call that makes one."""
  if not isinstance(config, ml_collections.ConfigDict):
    hint = (f"; load the experiment {config!r} with jdl.load_config({config!r}) first"
            if isinstance(config, (str, os.PathLike)) else
            "; jdl.config.from_dict(d) makes one from a dict" if isinstance(config, dict)
            else "")
    raise JdlError("config must be an ml_collections.ConfigDict (jdl.load_config(NAME) or "
                   f"jdl.base_config()), got {type(config).__name__}{hint}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises one JdlError for the first setting of ``config`` that no run can honour.

  Checked before any data is read or the workdir is touched. Settings that
  depend on the data or the model are checked as the run is built.
  """
  check_is_config(config)
  # load_config locks a config; one built in Python from base_config() is not, and
  # a misspelt key there would be a silently ignored setting.
  unknown = config_lib.unknown_keys(config)
  if unknown:
    raise JdlError(f"config sets {', '.join(repr(k) for k in unknown)}, which "
                   "jdl.base_config() does not declare (a misspelt key?); see "
                   "jdl.config.base_config() for the keys jdl reads")
  _check_numbers(config, config_lib.base_config())
  if int(config.num_epochs) < 0:
    raise JdlError(f"num_epochs must be >= 0, got {config.num_epochs}")
  if int(config.batch_size) < 1:
    raise JdlError(f"batch_size must be a positive integer, got {config.batch_size!r}")
  # The sections training builds only once it has the data: refused before it is
  # read (and by `jdl config`), so far as the config alone allows.
  validate_optimizer(config.optimizer)
  masks.compile_patterns(config.optimizer.freeze)
  regularizers.validate_config(config.regularization)
  _check_loss(config)
  _check_devices(config)
  if int(config.microbatch_size) < 0:
    raise JdlError(f"microbatch_size must be >= 0 (0 = auto), got {config.microbatch_size}")
  schedules.validate_schedule(config)
  plateau.validate_plateau(config)
  augment_lib.check_values(config.augment)
  if int(config.eval_batch_size) < 0:
    raise JdlError(f"eval_batch_size must be >= 0 (0: batch_size), got {config.eval_batch_size}")
  # The splits' generators (numpy's, scikit-learn's) take seeds in [0, 2**32).
  if not 0 <= int(config.seed) < 2**32:
    raise JdlError(f"seed must be in [0, 2**32), got {config.seed}")
  if int(config.stream.prefetch) < 1:
    raise JdlError(f"stream.prefetch must be >= 1, got {config.stream.prefetch}")
  if int(config.scan_chunk) < 0:
    raise JdlError(f"scan_chunk must be >= 0 (0: automatic), got {config.scan_chunk}")
  bad = [m for m in tuple(config.metrics) if not isinstance(m, str)]
  if bad:
    raise JdlError(f"metrics must be names (strings), got {bad[0]!r} in {tuple(config.metrics)}")
  if len(set(config.metrics)) != len(tuple(config.metrics)):
    raise JdlError(f"metrics lists a name twice: {tuple(config.metrics)}")
  if not float(config.distributed.timeout_seconds) > 0:
    raise JdlError("distributed.timeout_seconds must be > 0, got "
                   f"{config.distributed.timeout_seconds}")
  es = config.early_stopping
  if not math.isfinite(float(es.min_delta)):
    raise JdlError(f"early_stopping.min_delta must be finite, got {es.min_delta}")
  if int(es.patience) < 0:
    raise JdlError(f"early_stopping.patience must be >= 0, got {es.patience}")
  tasks = ("classification", "regression", "seq2seq", *gen_tasks.TASKS)
  if config.task not in tasks:
    raise JdlError(f"task must be one of {', '.join(tasks)}, got {config.task!r}")
  if config.task in gen_tasks.TASKS:
    gen_tasks.validate_config(config)
    gen_tasks.metric_names(config.task, tuple(config.metrics))  # Its fixed list.
  if config.task == "seq2seq":
    from jdl.sequence import tasks as seq_tasks  # It imports jdl.train.steps.
    seq_tasks.metric_names(tuple(config.metrics))  # Its fixed list.
    # Its loss is the masked token cross-entropy, and its model takes two inputs.
    unsupported = [k for k, on in (
        ("loss", config.loss != "sparse_categorical_crossentropy"),
        ("regularization.activity_l1", config.regularization.activity_l1),
        ("mixed_precision", config.mixed_precision)) if on]
    if unsupported:
      raise JdlError(f"task 'seq2seq' does not support {' or '.join(unsupported)}; leave "
                     f"{'it' if len(unsupported) == 1 else 'them'} at the default (its loss "
                     "is the token cross-entropy, with label_smoothing if set, and its "
                     "model computes in float32)")
  if not 0.0 <= float(config.label_smoothing) < 1.0:
    raise JdlError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
  if config.epoch_mode not in ("auto", "step", "scan"):
    raise JdlError(f"epoch_mode must be 'auto', 'step' or 'scan', got {config.epoch_mode!r}")
  if config.normalize not in NORMALIZERS:
    raise JdlError(f"normalize must be one of {', '.join(NORMALIZERS)}, got "
                   f"{config.normalize!r}")
  if config.checkpoint_every_steps < 0:
    raise JdlError(f"checkpoint_every_steps must be >= 0, got {config.checkpoint_every_steps}")
  if not config.checkpoint_every_seconds >= 0:  # NaN too.
    raise JdlError("checkpoint_every_seconds must be >= 0, got "
                   f"{config.checkpoint_every_seconds}")
  if config.monitor_mode not in ("min", "max"):
    raise JdlError(f"monitor_mode must be 'min' or 'max', got {config.monitor_mode!r}")
  if config.early_stopping.mode not in ("min", "max"):
    raise JdlError(f"early_stopping.mode must be 'min' or 'max', got "
                   f"{config.early_stopping.mode!r}")
  if config.keep_checkpoints < 1:
    raise JdlError(f"keep_checkpoints must be >= 1, got {config.keep_checkpoints}")
  if config.get("print_every_epochs", 1) < 1:  # 0 printed every epoch, silently.
    raise JdlError(f"print_every_epochs must be >= 1, got {config.print_every_epochs}")
  if config.nonfinite not in ("stop", "skip"):
    raise JdlError(f"nonfinite must be 'stop' or 'skip', got {config.nonfinite!r}")
  if config.nonfinite_check not in ("auto", "step", "block"):
    raise JdlError("nonfinite_check must be 'auto', 'step' or 'block', got "
                   f"{config.nonfinite_check!r}")
  if config.nonfinite_check == "block" and config.nonfinite != "stop":
    raise JdlError("nonfinite_check='block' needs nonfinite='stop' (a skipped update is "
                   "decided at its step); use --config.nonfinite_check=step")
  if config.max_nonfinite_skips < 1:
    raise JdlError(f"max_nonfinite_skips must be >= 1, got {config.max_nonfinite_skips}")
  if config.checkpoint_every_epochs < 1:
    raise JdlError(f"checkpoint_every_epochs must be >= 1, got {config.checkpoint_every_epochs}")
  diagnostics_lib.validate_config(config)
  seq = config.sequence
  text_data.TextOptions.from_config(seq)  # Raises for a bad tokenizer or data key.
  for key in ("beam_size", "decode_max_len"):
    if int(seq[key]) < 0:
      raise JdlError(f"sequence.{key} must be >= 0, got {seq[key]}")
  _check_finite(config.to_dict())


# The losses label smoothing applies to (it smooths a target distribution).
CE_LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy")


def _check_loss(config: ml_collections.ConfigDict) -> None:
  """The loss by name (a registered one too) and label smoothing's pairing with it."""
  if config.task in gen_tasks.TASKS or config.task == "seq2seq":
    return  # Their tasks choose their losses (seq2seq's is checked below).
  losses_lib.get_loss(config.loss)
  if float(config.label_smoothing) and config.loss not in CE_LOSSES:
    raise JdlError(f"label_smoothing applies to {' and '.join(CE_LOSSES)}, not "
                   f"{config.loss!r}")


def _check_devices(config: ml_collections.ConfigDict) -> None:
  """``parallel`` and ``distributed`` values, before JAX starts or data is read."""
  parallel_lib.check_mode(config.parallel)
  parallel_lib.check_distributed(config.distributed)
  check_parallel_mode(config.parallel, config)


def check_parallel_mode(mode: str, config: ml_collections.ConfigDict) -> None:
  """What ``shard_map`` cannot run: a GAN's two-player step, the diagnostics."""
  if mode == "shard_map" and config.task in ("gan", "wgan_gp"):
    raise JdlError(f"parallel='shard_map' does not support task {config.task!r} (its "
                   "two-player step has no per-device form); use --config.parallel=data")
  if mode == "shard_map" and config.diagnostics.every_steps:
    raise JdlError("diagnostics.every_steps needs parallel='none' or 'data', not "
                   "'shard_map'; use --config.parallel=data")


_INT32_MAX = 2**31 - 1
_FLOAT32 = np.finfo(np.float32)


def _check_numbers(config, defaults, prefix: str = "") -> None:
  """The numbers of the keys ``jdl.base_config()`` declares (``model`` is the
  model's to check): numbers (true is an int to Python, and JSON's true was trained
  as 1), integers in int32 (counts and sizes reach compiled code as int32: an
  OverflowError traceback there), floats representable in float32 (the precision
  of training: 1e308 was inf, 1e-50 was 0)."""
  for key, default in defaults.items():
    name = f"{prefix}{key}"
    if name == "model" or key not in config:
      continue
    value = config[key]
    if isinstance(default, ml_collections.ConfigDict):
      if isinstance(value, ml_collections.ConfigDict):
        _check_numbers(value, default, f"{name}.")
      continue
    if isinstance(default, bool) or not isinstance(default, (int, float)):
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      kind = "an integer" if isinstance(default, int) else "a number"
      raise JdlError(f"{name} must be {kind}, got {value!r}")
    if isinstance(value, int) and name != "seed" and abs(value) > _INT32_MAX:
      raise JdlError(f"{name} must be at most 2**31 - 1 in size (jdl counts in int32), "
                     f"got {value}")
    if (isinstance(value, float) and math.isfinite(value) and value != 0
        and not float(_FLOAT32.tiny) <= abs(value) <= float(_FLOAT32.max)):
      raise JdlError(f"{name}={value:g} is beyond float32, in which jdl trains: use a value "
                     f"between {float(_FLOAT32.tiny):.3g} and {float(_FLOAT32.max):.3g} in size")


def _check_finite(tree, prefix: str = "") -> None:
  """Refuses a NaN or infinite number anywhere in the config: no setting means one
  (``checkpoint_every_seconds=inf`` is 0, off), and config.json is strict JSON."""
  items = tree.items() if isinstance(tree, dict) else enumerate(tree)
  for key, value in items:
    name = f"{prefix}.{key}" if isinstance(tree, dict) and prefix else (
        str(key) if isinstance(tree, dict) else f"{prefix}[{key}]")
    if isinstance(value, (dict, list, tuple)):
      _check_finite(value, name)
    elif isinstance(value, float) and not math.isfinite(value):
      raise JdlError(f"{name} must be a finite number, got {value}")


@contextlib.contextmanager
def named_rng_streams():
  """Turns flax's error for a random stream the steps do not give (a module's
  ``self.make_rng('noise')``) into one naming the stream jdl gives.

  Raises:
    JdlError: naming the stream; other errors pass through.
  """
  from flax import errors as flax_errors
  try:
    yield
  except flax_errors.InvalidRngError as e:
    match = re.search(r'needs PRNG for "([^"]+)"', str(e))
    if match is None:
      raise
    raise JdlError(f"the model draws random numbers from the stream {match.group(1)!r}, "
                   "which jdl does not give: its steps give a module the 'dropout' stream "
                   "(a new key each training step, the one nn.Dropout uses); draw with "
                   "self.make_rng('dropout')") from None


def check_fit_arguments(dataset, model, callbacks,
                        config: ml_collections.ConfigDict | None = None) -> None:
  """What ``fit`` (and ``load_run``) are given: a dataset, module instances and
  callback instances, each named when it is something else (a class instead of an
  instance, a tuple of arrays, a function); a traceback from deep inside before.
  With ``config``: no ``mixed_precision`` for a given module (it sets the dtype of
  jdl's own models only).

  Raises:
    JdlError: naming the argument and what it takes.
  """
  import flax.linen as nn

  from jdl.data import npy_dir
  from jdl.data.sources import Dataset
  from jdl.train import callbacks as cb
  if dataset is not None and not isinstance(dataset, (Dataset, npy_dir.StreamDataset)):
    raise JdlError(f"dataset must be a jdl.data.Dataset, got {type(dataset).__name__}: wrap "
                   "the arrays as jdl.data.Dataset(x_train=..., y_train=..., x_test=..., "
                   "y_test=..., num_classes=..., task=..., name=..., input_shape=...)")
  for m in model if isinstance(model, tuple) else (model,):  # A GAN's: (generator, critic).
    if m is None or isinstance(m, nn.Module):
      continue
    if isinstance(m, type) and issubclass(m, nn.Module):
      raise JdlError(f"model must be a module instance, got the class {m.__name__}: pass "
                     f"{m.__name__}(...)")
    raise JdlError(f"model must be a flax.linen Module instance, got {type(m).__name__}")
  if model is not None and config is not None and config.mixed_precision:
    raise JdlError("mixed_precision sets the compute dtype of jdl's own models; a module "
                   "given to fit computes in its own: give it dtype=jnp.bfloat16 (its "
                   "parameters stay float32) and leave mixed_precision False")
  if isinstance(callbacks, cb.Callback) or not isinstance(callbacks, (list, tuple)):
    raise JdlError(f"callbacks must be a list of callbacks, got {type(callbacks).__name__}"
                   + (": pass [callback]" if isinstance(callbacks, cb.Callback) else ""))
  for c in callbacks:
    if isinstance(c, cb.Callback):
      continue
    if isinstance(c, type) and issubclass(c, cb.Callback):
      raise JdlError(f"callbacks hold a class, {c.__name__}: pass an instance, "
                     f"{c.__name__}(...)")
    raise JdlError(f"callbacks must be instances of jdl.train.callbacks.Callback (subclass "
                   "it and override the hooks you need: on_epoch_end, on_steps_end, ...), "
                   f"got {type(c).__name__}")


def check_model_task(config: ml_collections.ConfigDict) -> None:
  """A classification or regression config naming a generative or seq2seq model gets
  the task that model trains, not "unknown model" (or the seq2seq model's missing
  vocabulary sizes)."""
  name = config.model.get("name")
  tasks = {**{n: "'autoencoder'" for n in gen_tasks.AUTOENCODERS}, "vae": "'vae'",
           **{n: "'gan' or 'wgan_gp'" for n in gen_tasks.GANS}, "seq2seq": "'seq2seq'"}
  if config.task in ("classification", "regression") and name in tasks:
    raise JdlError(f"model {name!r} is trained by task {tasks[name]}, not "
                   f"{config.task!r}: set config.task (--config.task) to that, or pick another "
                   f"model: {', '.join(sorted(set(models_lib.MODELS) - {'seq2seq'}))}")


def check_model(config: ml_collections.ConfigDict) -> None:
  """Builds ``config.model`` as far as the config alone allows, for ``jdl config``:
  one JdlError for a field no model can take. The data sets ``num_outputs`` and a
  text model's ``vocab_size`` (placeholders stand in for them here), and a model's
  fit to its input's shape is checked when the run builds it. A generative or seq2seq
  task's models are built from the data's shapes and vocabularies: not checked here.
  """
  if config.task in gen_tasks.TASKS or config.task == "seq2seq":
    return
  check_model_task(config)
  spec = config.model.to_dict()
  model = models_lib.MODELS.get(spec.get("name"))
  if model is not None and "vocab_size" in models_lib.model_fields(model) and not spec.get(
      "vocab_size"):  # Unset, None or 0: the data's (jdl.sequence.build.with_vocab_size).
    spec["vocab_size"] = 2
  models_lib.create_model(spec, num_outputs=spec.get("num_outputs", 2))


def check_token_ids(model, splits) -> None:
  """A text model's integer inputs are ids of its embedding: each in ``[0,
  model.vocab_size)``. An embedding reads a larger id as NaN (reported as a
  divergence at the first step) and a negative one as a row counted from the end.

  ``splits``: ``(name, x)`` pairs, arrays in memory. Models without ``vocab_size``
  and floating-point inputs (refused by the model, naming the dtype) are skipped.

  Raises:
    JdlError: an id out of range, naming the split, an example and the size needed.
  """
  n = getattr(model, "vocab_size", None)
  if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
    return
  for name, x in splits:
    x = np.asarray(x)
    if x.dtype.kind not in "iu" or not x.size:
      continue
    low, high = x.min(), x.max()
    if low < 0 or high >= n:
      bad = int(high) if high >= n else int(low)
      row = int(np.argmax((x.reshape(len(x), -1) == bad).any(axis=1)))
      need = (f"model.vocab_size must be at least {int(high) + 1}" if low >= 0 else
              "token ids are >= 0 (0 is padding)")
      raise JdlError(f"model.vocab_size={n}, but the {name} inputs hold token ids in "
                     f"[{int(low)}, {int(high)}] (e.g. {bad} in example {row}); {need}")


def check_decoding(seq: ml_collections.ConfigDict, vocab: dict | None, targets) -> None:
  """Decoding settings (``config.sequence``) a seq2seq run can honour, checked
  before it trains; ``targets``: the train split's ``[n, length]`` token ids."""
  if not math.isfinite(float(seq.length_penalty)):
    raise JdlError(f"sequence.length_penalty must be finite, got {seq.length_penalty}")
  tgt = vocab.get("tgt") if vocab else None
  if tgt is not None and int(seq.beam_size) > len(tgt):
    raise JdlError(f"sequence.beam_size={seq.beam_size} exceeds the {len(tgt)} tokens of "
                   "the target vocabulary (each beam is a distinct token sequence)")
  longest = int(targets.shape[1]) - 1  # Without <bos>.
  if int(seq.decode_max_len) > MAX_DECODE_FACTOR * longest:
    raise JdlError(f"sequence.decode_max_len={seq.decode_max_len} is more than "
                   f"{MAX_DECODE_FACTOR}x the longest target ({longest} tokens); 0 decodes "
                   "up to that length")


def check_monitors(config: ml_collections.ConfigDict, *, train_names: Sequence[str],
                   metric_names: Sequence[str], has_val: bool, warn,
                   callbacks: Sequence = ()) -> None:
  """Monitored names a run will not log are errors now, not after an epoch.

  Classification, regression and seq2seq runs log ``loss``, the train metrics,
  ``learning_rate`` and, with a validation split, ``val_`` and every metric's
  name. (Generative tasks' own names are checked at the first epoch's end, not
  here.) A ``val_`` ``config.monitor`` without a validation split is allowed: it
  ranks no checkpoint, and the latest is used. ``callbacks``: those given to fit;
  an :class:`~jdl.train.callbacks.EarlyStopping`'s monitor is checked too.
  """
  from jdl.train import callbacks as cb
  logged = {"loss", "learning_rate", *train_names}
  if has_val:
    logged |= {"val_loss", *(f"val_{n}" for n in metric_names)}
  c = config
  # config.monitor only ranks checkpoints: without a validation split a val_ name
  # just ranks none (the latest is used), as the default val_loss does. It must
  # still be a name a validation split would log (not a misspelt one).
  no_val = c.monitor.startswith("val_") and not has_val
  if no_val and c.monitor not in {"val_loss", *(f"val_{n}" for n in metric_names)}:
    raise JdlError(f"monitor={c.monitor!r} is not a name this run would log with a "
                   f"validation split; it would log val_loss"
                   f"{''.join(f', val_{n}' for n in metric_names)}")
  ranks = c.monitor and not no_val
  monitors = [("monitor", c.monitor)] if ranks else []
  if c.early_stopping.enabled:
    monitors.append(("early_stopping.monitor", c.early_stopping.monitor))
  if c.reduce_on_plateau.enabled:
    monitors.append(("reduce_on_plateau.monitor", c.reduce_on_plateau.monitor))
  modes = {"monitor": c.monitor_mode, "early_stopping.monitor": c.early_stopping.mode,
           "reduce_on_plateau.monitor": c.reduce_on_plateau.mode}
  for callback in callbacks:
    if isinstance(callback, cb.EarlyStopping):
      key = "the EarlyStopping callback's monitor"
      monitors.append((key, callback.monitor))
      modes[key] = callback.mode
  for key, name in monitors:
    if name not in logged:
      hint = (" (there is no validation split: set validation_split > 0)"
              if name.startswith("val_") and not has_val else "")
      raise JdlError(f"{key}={name!r} is not logged by this run{hint}; it logs "
                     f"{', '.join(sorted(logged))}")
    better = metrics_lib.better_direction(name.removeprefix("val_"))
    if better is not None and better != modes[key]:
      mode_key = "monitor_mode" if key == "monitor" else key.replace("monitor", "mode")
      higher = better == "max"
      warn(f"jdl: warning: {key}={name!r} is better {'higher' if higher else 'lower'}, "
           f"but {mode_key}={modes[key]!r} takes its {'lowest' if higher else 'highest'} "
           f"value as the best; set {mode_key}={better!r}")
