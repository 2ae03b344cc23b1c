"""Experiment configs: the base schema, loading ``get_config()`` files, overrides.

An experiment is an ``ml_collections.ConfigDict`` returned by ``get_config()`` in a
Python file (the Flax-examples convention). Every experiment starts from
:func:`base_config`, which declares every key jdl understands, and is locked after
loading so that a misspelt key is an error rather than a silently new setting.
Durations are given in epochs or steps in the config and converted once, by the
loop.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import ml_collections

from jdl import optim
from jdl import regularizers
from jdl.errors import JdlError, did_you_mean

# Where named experiments live: jdl/_configs/NAME.py in an installed wheel (a copy of
# experiments/configs, see pyproject.toml), else <checkout>/experiments/configs/NAME.py
# (a checkout, or an editable install of one).
_INSTALLED_CONFIGS = Path(__file__).resolve().parent / "_configs"
CONFIG_DIR = (_INSTALLED_CONFIGS if _INSTALLED_CONFIGS.is_dir()
              else Path(__file__).resolve().parent.parent / "experiments" / "configs")
DEFAULT_EXPERIMENT = "digits_cnn"

# The structural sequence keys each dataset reads; the others ignore them (dates is
# always characters), so that a change there refuses no resume or evaluation.
SEQUENCE_KEYS_READ = {
    "sst2": ("sequence.maxlen", "sequence.padding", "sequence.truncating", "sequence.level",
             "sequence.lowercase", "sequence.min_freq", "sequence.max_vocab"),
    "adding_problem": ("sequence.seq_len",),
}

# The structural generative keys and the tasks that read them (a VAE's latent size
# is its model's): the other tasks ignore them.
GENERATIVE_KEYS_READ = {"generative.binarize": ("vae",),
                        "generative.latent_dim": ("gan", "wgan_gp")}

# Keys whose change makes an existing checkpoint meaningless (resume refuses), or
# changes which examples are test examples, or how inputs are scaled (evaluate refuses).
STRUCTURAL_KEYS = ("dataset", "model", "seed", "batch_size", "task", "loss", "classes",
                   "examples_per_class", "test_split", "validation_split", "normalize",
                   "n_samples", "noise", "generative.latent_dim", "generative.binarize",
                   *(k for keys in SEQUENCE_KEYS_READ.values() for k in keys))
# Those that decide a finished run's test examples, their scaling (the normalizer
# is fitted on the train rows) and the model; evaluate refuses a change. Not
# batch_size (training only) or loss (the reported loss only).
EVALUATION_KEYS = tuple(k for k in STRUCTURAL_KEYS if k not in ("batch_size", "loss"))


def base_config() -> ml_collections.ConfigDict:
  """Returns the config every experiment starts from, with all keys declared."""
  c = ml_collections.ConfigDict()
  c.description = ""  # One line, shown in the run's summary.
  c.seed = 0
  # Bitwise reproducible GPU runs: --xla_gpu_deterministic_ops=true goes into XLA_FLAGS
  # before JAX starts (jdl/train/runtime.py). On an H200 that cost 8-15% on MNIST CNNs
  # and up to 29% on a small MLP; false buys it back. CPU runs are always reproducible.
  c.deterministic = True
  # XLA:CPU's region-based copy analysis (--xla_cpu_copy_insertion_use_region_analysis
  # into XLA_FLAGS before JAX starts): no per-step weight copies in fused blocks of
  # steps, ~7% faster MLP steps on CPU, same values (jdl/train/runtime.py).
  c.xla_cpu_region_analysis = True

  # Data.
  c.dataset = "digits"
  # MNIST-family IDX files, the .npz file for 'npz', the folder for 'npy_dir' or
  # for 'sst2' (its GLUE TSVs).
  c.data_dir = ""
  c.download = True  # Fetch missing MNIST-family files from the standard mirrors.
  c.test_split = 0.2  # For sources without their own test split.
  # Fraction of the train split held out for validation (unless the dataset has an
  # explicit validation set, e.g. x_val / y_val in an npz file).
  c.validation_split = 0.1
  # 'featurewise' (per-feature train-split mean/std: per pixel for images, as
  # scikit-learn's StandardScaler, not Keras' per channel), 'featurewise_center'
  # (mean only), 'global' (one mean/std over all train values: images), 'none'.
  c.normalize = "featurewise"
  # Generated sources (moons, circles, blobs, xor, linear, adding_problem, dates):
  # how many examples; 0 = the source's default.
  c.n_samples = 0
  c.classes = ()  # Keep only these classes, relabelled 0..k-1 in this order.
  # At most this many examples a class, taken before validation_split holds out its
  # share (so training sees about (1 - validation_split) times as many); 0 = all.
  c.examples_per_class = 0
  c.noise = -1.0  # Synthetic sources' noise (blobs: the clusters' std); < 0 = default.
  # dataset='npy_dir' (memory-mapped .npy files in data_dir, streamed from disk;
  # jdl/data/stream.py): training and evaluation blocks read this many blocks ahead
  # of the loop by a background thread.
  c.stream = ml_collections.ConfigDict({"prefetch": 2})

  # Transfer learning: parameters whose '/'-joined path matches `include` and not
  # `exclude` (regexes) are copied from the latest checkpoint of `workdir`, with the
  # batch-norm statistics of their layers; when the run starts, not when it resumes.
  c.init_from = ml_collections.ConfigDict({"workdir": "", "include": ".*", "exclude": ""})

  # Model and task.
  c.model = ml_collections.ConfigDict({"name": "mlp"})
  # 'classification', 'regression', 'seq2seq' (teacher forcing, masked token
  # cross-entropy), or a generative task (see `generative` below).
  c.task = "classification"
  c.loss = "sparse_categorical_crossentropy"
  c.label_smoothing = 0.0  # [0, 1); the two categorical cross-entropies only.
  # jdl.metrics' names (accuracy, macro_f1, top5_accuracy, mse, r2, ...) and your
  # own, registered with jdl.metrics.register_metric.
  c.metrics = ("accuracy",)

  # Augmentation of training batches inside the compiled step (jdl/data/augment.py);
  # all off by default. Image ops need [B, H, W, C] inputs; noise and mixup any.
  c.augment = ml_collections.ConfigDict({
      "noise_std": 0.0,  # Gaussian noise, in units of the normalised inputs.
      "hflip": False,  # Left-right flip, p=0.5 per example.
      "vflip": False,  # Up-down flip, p=0.5 per example.
      "width_shift": 0.0,  # Whole-pixel shifts up to round(fraction * size), [0, 1).
      "height_shift": 0.0,
      "fill": "zero",  # 'zero' or 'edge': pixels shifted/rotated/padded in.
      "rotation": 0.0,  # Largest angle in degrees; uniform in [-rotation, rotation].
      "crop_padding": 0,  # Pad by this many pixels, crop back at a random offset.
      "mixup_alpha": 0.0,  # lam ~ Beta(alpha, alpha), one per batch; 0 = off.
  })
  # bfloat16 compute with float32 parameters, optimizer state and loss, in jdl's
  # models (not seq2seq's; a module given to fit sets its own dtype).
  c.mixed_precision = False

  # Optimisation: optimizer, schedule, reduce_on_plateau sections.
  c.update(optim.default_config())

  # Regularization (jdl.regularizers). Patterns are regexes over '/'-joined paths
  # (fullmatch): parameters 'hidden_0/kernel', sown activations 'act_0' (an MLP's).
  c.regularization = ml_collections.ConfigDict({
      # Loss penalty l1 * sum|w| + l2 * sum w^2 (no 1/2, as Keras) on parameters
      # matching `include` and not `exclude`; both > 0 is the elastic net.
      "l1": 0.0,
      "l2": 0.0,
      "include": regularizers.KERNELS,  # Kernels and embeddings.
      "exclude": "",
      # Per-layer (pattern, l1, l2) tuples, checked first; the first match wins.
      "rules": (),
      # l1 * sum|a| / batch over the sown activations matching activity_include.
      "activity_l1": 0.0,
      "activity_include": ".*",
      # Each unit's incoming weight vector projected to L2 norm <= max_norm after
      # every update; 0 = off.
      "max_norm": 0.0,
      "max_norm_include": regularizers.MAX_NORM_KERNELS,
  })

  # Generative tasks (task = 'autoencoder', 'vae', 'gan' or 'wgan_gp'; jdl.generative).
  # Their inputs are pixels in [0, 1] (normalize='none'); their metrics are fixed
  # by the task (config.metrics names a subset, () = all).
  c.generative = ml_collections.ConfigDict({
      # VAE inputs: 'dynamic' (a fresh Bernoulli draw of each training image every
      # step, from the step's key; val/test drawn once with a fixed key), 'threshold'
      # (x > 0.5) or 'none' (grey levels as Bernoulli means).
      "binarize": "dynamic",
      "latent_dim": 100,  # GAN noise dimension (AE/VAE: the model's `latent`).
      "d_steps": 1,  # Discriminator / critic updates per generator update (n_critic).
      "d_learning_rate": 0.0,  # The discriminator's learning rate; 0 = optimizer's.
      "gp_weight": 10.0,  # WGAN-GP's lambda.
      # IS / Frechet distance of generated images in the feature space of a jdl
      # classifier: the workdir of its run (e.g. runs/mnist_fast); '' = not scored.
      "classifier_workdir": "",
      "eval_samples": 10000,  # Generated images scored by IS / FD (at most 100,000).
      "sample_every_epochs": 1,  # plots/samples_epoch_NNN.png from a fixed noise batch.
  })

  # Sequence data and models (jdl.sequence, jdl.data.text): datasets sst2 (text
  # classification), adding_problem (regression), dates (task 'seq2seq'). The
  # tokenizer keys (maxlen to max_vocab) apply to sst2: dates is always characters,
  # lowercased, every character kept. A resume or `jdl evaluate` refuses a change of
  # a key the run's dataset reads (config.SEQUENCE_KEYS_READ), of no other.
  c.sequence = ml_collections.ConfigDict({
      "maxlen": 0,  # Pad / truncate token ids to this length; 0 = the longest train text.
      "padding": "post",  # 'pre' or 'post': where <pad> (id 0) goes.
      "truncating": "post",  # 'pre' or 'post': which end of a long text is cut.
      "level": "word",  # Tokens: 'word' (whitespace-separated) or 'char'.
      "lowercase": True,
      "min_freq": 1,  # Vocabulary (train split only): least occurrences of a token,
      "max_vocab": 0,  # and most tokens, <pad> <unk> <bos> <eos> included; 0 = no limit.
      "seq_len": 100,  # The adding problem's sequence length T.
      # Seq2seq evaluation: beam search with this width and length penalty
      # (score / length**length_penalty) gives beam_exact_match in the test line and in
      # `jdl evaluate`; greedy decoding gives greedy_exact_match. 0 = no beam search.
      "beam_size": 5,
      "length_penalty": 0.0,
      "decode_max_len": 0,  # Longest decoded output; 0 = the target length.
  })

  # Loop.
  c.batch_size = 128
  c.eval_batch_size = 0  # 0 = batch_size.
  c.num_epochs = 10
  c.epoch_mode = "auto"  # 'auto', 'step' (one jitted call a step), 'scan'.
  # Steps fused into one compiled call in 'scan' mode; 0 = auto: the epoch, the
  # checkpoint cadence or 100 steps, the least; on a GPU, blocks of equal length
  # (a GPU's block loops a known number of times, and a last, shorter block's
  # padding rows cost a step each, so an explicit value should divide the epoch).
  c.scan_chunk = 0
  # Each step's loss and gradients one microbatch of this many examples at a time (a
  # lax.scan inside the step; the same update within float rounding; dropout draws
  # per microbatch). Needs a classification or regression task, one device and no
  # batch norm. 0 = auto: on one CPU device, microbatches when the gradient's
  # intermediates over the whole batch exceed 256 MiB, sized (>= 32) to hold <= 160
  # MiB (MNIST CNNs at batch 128: 32, 10-16% faster steps; LeNet-5 at 256: 128, 19%),
  # else whole batches (jdl/train/strategy.py). The batch size (or more) = whole batches.
  c.microbatch_size = 0
  c.print_every_epochs = 1  # Console lines; metrics.jsonl gets every epoch.

  # Devices (jdl/train/parallel.py). 'auto': 'data' on more than one device, else
  # 'none'; 'none': one device; 'data': jit over a 1-D mesh, batches sharded P('data'),
  # state replicated; 'shard_map': a per-device step with explicit lax.pmean of
  # gradients and batch-norm statistics. batch_size is the global batch and must
  # be divisible by the number of devices. A checkpoint restores on any count.
  c.parallel = "auto"
  # Multi-host: jax.distributed.initialize. initialize='auto' runs it when
  # coordinator_address (or $JAX_COORDINATOR_ADDRESS) is set; 'always' also lets
  # JAX detect SLURM / Open MPI / a Cloud TPU pod; 'never' skips it.
  # num_processes 0 / process_id -1 = $JAX_NUM_PROCESSES / $JAX_PROCESS_ID or detected.
  c.distributed = ml_collections.ConfigDict({
      "initialize": "auto",
      "coordinator_address": "",
      "num_processes": 0,
      "process_id": -1,
      "timeout_seconds": 300,
  })

  # Checkpoints.
  c.checkpoint_every_steps = 0  # Mid-epoch checkpoints; 0 = none.
  # Mid-epoch checkpoints by the clock: after the first block of steps that ends at
  # least this long after the last save, or after training (not compiling) began
  # (preemptible machines); 0 = none.
  c.checkpoint_every_seconds = 0.0
  c.checkpoint_every_epochs = 1  # >= 1: epoch-end checkpoints (the last epoch always).
  c.keep_checkpoints = 3  # The latest kept, besides the best by `monitor`.
  c.async_checkpoints = True  # Written by a background thread while training goes on.
  c.checkpoint_compression = False  # zstd: ~8% smaller float weights, ~25% more save CPU.

  # Callbacks.
  # The metric that picks the best checkpoint (what evaluate scores); '' = the latest.
  c.monitor = "val_loss"
  c.monitor_mode = "min"
  c.early_stopping = ml_collections.ConfigDict({
      "enabled": False,  # Off unless set (reduce_on_plateau's too).
      "monitor": "val_loss",
      "mode": "min",
      "patience": 5,  # Epochs without improvement that stop the run (as Keras).
      "min_delta": 0.0,
      "restore_best": True,
  })
  c.terminate_on_nan = True  # Stop when an epoch's loss is not finite.
  # A non-finite loss or gradient: 'stop' at once with an error naming the step and
  # the quantity, or 'skip' the update (optax.apply_if_finite) up to
  # max_nonfinite_skips consecutive times. No checkpoint with NaN/Inf is written.
  c.nonfinite = "stop"
  c.max_nonfinite_skips = 10
  # Where 'stop' looks for them: 'step' tests every gradient at every step; 'block'
  # tests the loss at every step and the parameters and optimizer state once per
  # block of steps, and re-runs a failing block with every gradient tested, so the
  # error names the same first step and quantity. 'block' saves a reduction over
  # all gradients per step (~10% of a small MLP's step on XLA:CPU) and keeps the
  # block's input state alive (one more copy of it). A non-finite gradient that
  # never reaches the state (a frozen parameter's; an Inf cut by clip_value) stops
  # a 'step' run but not a 'block' one. 'auto': 'block' on CPU with
  # nonfinite='stop' on one device, else 'step' (a GAN's always).
  c.nonfinite_check = "auto"
  c.tensorboard = True
  c.plots = True

  # Diagnostics (jdl.diagnostics), on the steps that are multiples of every_steps
  # (0 = off): gradient norm, per-layer update/parameter ratios, histograms of
  # activations and gradients, dead-ReLU or saturated-unit shares, learning rate;
  # to metrics.jsonl (split 'diagnostics') and TensorBoard. A warning line when a
  # layer's update ratio is outside [ratio_low, ratio_high] for warn_after_periods
  # diagnostic periods in a row (0 = never). activation: 'auto' (model.activation),
  # 'relu' (dead units), 'tanh' / 'sigmoid' (saturated units) or 'none'.
  # histograms=False skips the histograms (the scalars stay).
  c.diagnostics = ml_collections.ConfigDict({
      "every_steps": 0,
      "histogram_bins": 30,
      "histograms": True,
      "activation": "auto",
      "warn_after_periods": 3,
      "ratio_low": 1e-4,
      "ratio_high": 1e-2,
  })
  return c


def load_config(path_or_name: str | os.PathLike | None = None) -> ml_collections.ConfigDict:
  """Loads ``get_config()`` from a file path or a named experiment, and locks it.

  Args:
    path_or_name: a ``.py`` file path, a run's saved ``config.json`` (read as
      data), or an experiment name from ``experiments/configs`` (e.g.
      ``"mnist_cnn"``); ``None`` gives the default experiment.

  Returns:
    The locked config.

  Raises:
    JdlError: the file does not exist or does not define ``get_config()``.
  """
  if path_or_name is not None and not isinstance(path_or_name, (str, os.PathLike)):
    raise JdlError("load_config takes an experiment name or a config file's path, got "
                   f"{type(path_or_name).__name__} {path_or_name!r}")
  path = resolve_config_path(path_or_name)
  if path.suffix == ".json":  # A run's saved config: data, never executed.
    import json
    try:
      saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
      raise JdlError(f"config file {path} is not readable JSON ({e})") from None
    if not isinstance(saved, dict):
      raise JdlError(f"config file {path} does not hold a config (a JSON object)")
    return from_dict(saved)
  spec = importlib.util.spec_from_file_location(f"jdl_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  # A config may import a sibling config and override it (`from mnist_cnn import
  # get_config as base_config`), as in the Flax examples: its folder is importable
  # while it loads.
  folder = str(path.parent.resolve())
  # Same-named modules (e.g. experiments/gan_mnist.py beside configs/gan_mnist.py)
  # step aside while the config imports its siblings, and come back after.
  shadowed = {name: sys.modules.pop(name) for name in
              {p.stem for p in path.parent.glob("*.py")} & set(sys.modules)}
  before = set(sys.modules)
  sys.path.insert(0, folder)
  try:
    spec.loader.exec_module(module)
    config = module.get_config() if hasattr(module, "get_config") else None
  except JdlError:
    raise
  except Exception as e:  # A config file is user code: report, do not crash.
    raise JdlError(f"config file {path} failed to load: {type(e).__name__}: {e}") from None
  except SystemExit as e:  # Not an Exception: it would end jdl with its code, unsaid.
    raise JdlError(f"config file {path} called sys.exit({e.code!r}) while loading") from None
  finally:
    sys.path.remove(folder)
    for name in set(sys.modules) - before:  # The siblings leave no module behind.
      if str(Path(getattr(sys.modules[name], "__file__", None) or "").parent) == folder:
        del sys.modules[name]
    sys.modules.update(shadowed)
  if config is None:
    raise JdlError(f"config file {path} defines no get_config() function")
  if not isinstance(config, ml_collections.ConfigDict):
    raise JdlError(f"get_config() in {path} must return an ml_collections.ConfigDict")
  unknown = unknown_keys(config)
  if unknown:
    raise JdlError(f"get_config() in {path} sets {', '.join(repr(k) for k in unknown)}, "
                   "which the base config does not declare (a misspelt key would otherwise "
                   "be a silently ignored setting); see jdl.config.base_config()")
  config.lock()
  return config


def unknown_keys(config: ml_collections.ConfigDict) -> list[str]:
  """Dotted keys of ``config`` that :func:`base_config` does not declare (``model.*`` is free)."""
  found: list[str] = []

  def walk(node: Any, base: Any, path: str) -> None:
    for key in node.keys():
      where = f"{path}{key}"
      if where == "model":
        continue
      if key not in base:
        found.append(where)
      elif isinstance(node[key], ml_collections.ConfigDict) and isinstance(
          base[key], ml_collections.ConfigDict):
        walk(node[key], base[key], f"{where}.")

  walk(config, base_config(), "")
  return found


def _article(word: str) -> str:
  return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def resolve_config_path(path_or_name: str | os.PathLike | None) -> Path:
  """The config file ``--config`` names: a ``.py``/``.json`` path, or an experiment name.

  ``None`` or ``""`` is the default experiment. A name is looked up in
  :data:`CONFIG_DIR` (``experiments/configs/``, or the installed copy), and a name that is
  not there is refused with the names that are.
  """
  if path_or_name is None or str(path_or_name) == "":
    path_or_name = DEFAULT_EXPERIMENT
  path = Path(path_or_name)
  named = CONFIG_DIR / f"{path_or_name}.py"
  if not path.suffix and named.is_file():
    # `--config xor` beside a folder xor/ (e.g. the run's own workdir) or a file xor
    # (e.g. a log): a path without .py or .json is never a config file.
    return named
  if path.suffix in (".py", ".json") or path.exists():
    if path.is_dir():
      raise JdlError(f"--config {str(path)!r} is a folder; give a config file (a .py "
                     "file with get_config(), or a run's config.json) or an experiment name")
    if not path.is_file():
      raise JdlError(f"config file {str(path)!r} does not exist")
    if path.suffix not in (".py", ".json"):
      raise JdlError(f"config file {str(path)!r} is neither a .py file with get_config() "
                     "nor a run's config.json")
    return path
  if not named.is_file():
    raise JdlError(
        f"no config file or experiment named {str(path_or_name)!r}"
        f"{did_you_mean(str(path_or_name), list_experiments()) or ';'} experiments: "
        f"{', '.join(list_experiments())}")
  return named


def list_experiments() -> list[str]:
  """The named experiments (``jdl list``): the configs in :data:`CONFIG_DIR`, sorted."""
  if not CONFIG_DIR.is_dir():
    return []
  return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


def experiment_description(name: str) -> str:
  """The first line of an experiment config's module docstring; for a file that does
  not parse, what is wrong with it (``jdl list`` lists the others)."""
  path = CONFIG_DIR / f"{name}.py"
  try:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
  except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as e:
    line = getattr(e, "lineno", None)
    return (f"(unreadable: {type(e).__name__}{f' at line {line}' if line else ''}; "
            f"jdl config --config {name} says more)")
  return doc.strip().splitlines()[0] if doc.strip() else ""


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
  """Applies ``--config.a.b=value`` style overrides in place.

  Values are parsed to the type of the existing field (bool, int, float, str,
  tuple); ``model.*`` keys (``model.generator.*`` too) may add fields the model
  accepts (checked when the model is built).

  Raises:
    JdlError: an unknown key, or a value that does not parse to the field's type.
  """
  for dotted, raw in overrides.items():
    if not dotted or "" in dotted.split("."):
      raise JdlError(f"--config.{dotted}={raw} names no key (write --config.KEY=VALUE, "
                     "e.g. --config.num_epochs=5)")
    *parents, leaf = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = ".".join(parents[:i + 1])
        keys = node.keys() if isinstance(node, ml_collections.ConfigDict) else ()
        close = did_you_mean(part, keys)
        valid = f"{close or ';'} valid keys here: {', '.join(sorted(keys))}" if keys else close
        raise JdlError(f"unknown config key {where!r} (in --config.{dotted}){valid}")
      node = node[part]
    if not isinstance(node, ml_collections.ConfigDict):
      raise JdlError(f"unknown config key {dotted!r}")
    if parents[:1] == ["model"] and (leaf not in node or node[leaf] is None):
      # A model's field (a GAN player's too), new or untyped (None): a Python literal.
      with node.unlocked():
        node[leaf] = _parse_literal(raw)
      continue
    if leaf not in node:
      valid = ", ".join(sorted(node.keys()))
      nested = _nested_paths(node, leaf, prefix=parents)
      close = (f": did you mean {' or '.join(repr(p) for p in nested)}?" if nested
               else did_you_mean(leaf, node.keys()))
      raise JdlError(f"unknown config key {dotted!r}{close or ';'} valid keys here: {valid}")
    if dotted in REGEX_KEYS:
      _refuse_several_patterns(raw, dotted)
    node[leaf] = _parse_as(raw, node[leaf], dotted)


# The keys that take one regex (a string; fullmatch over '/'-joined paths).
# optimizer.freeze is a tuple of regexes, and regularization.rules one of
# (pattern, l1, l2) tuples: their tuples are parsed.
REGEX_KEYS = ("regularization.include", "regularization.exclude",
              "regularization.activity_include", "regularization.max_norm_include",
              "init_from.include", "init_from.exclude")


def _looks_like_tuple(raw: str) -> bool:
  """Whether ``raw`` reads as a Python tuple or list: it opens a bracket and has a
  comma that is not a regex's ``{m,n}`` (``(conv_[0-9]{1,2})`` is one regex)."""
  text = raw.strip()
  return text[:1] in "([" and "," in re.sub(r"\{\d*,\d*\}", "", text)


def _refuse_several_patterns(raw: str, key: str) -> None:
  """Refuses a tuple or list given to a key of one regex: taken as is it was one
  pattern ``"('Dense_0', 'Dense_1')"``, which matches no path (a quote or a comma is
  in none), silently when the key's coefficient is 0.

  Raises:
    JdlError: ``raw`` is a tuple, list or set literal, or looks like one.
  """
  try:
    value = ast.literal_eval(raw.strip())
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    value = None
  if not isinstance(value, (tuple, list, set)) and not _looks_like_tuple(raw):
    return
  if isinstance(value, (tuple, list, set)):
    items = [v for v in value if isinstance(v, str)]
  else:  # Unquoted: (Dense_0, Dense_1).
    items = [v.strip(" '\"") for v in raw.strip()[1:].rstrip(")]").split(",")]
  items = [v for v in items if v]
  example = "|".join(items) if items else "Dense_0/kernel|Dense_1/kernel"
  raise JdlError(f"--config.{key} takes one regex, not a tuple or list: got {raw!r}; "
                 f"join the alternatives with | in one regex (each must match a whole path), "
                 f"e.g. --config.{key}='{example}'")


def _nested_paths(node: ml_collections.ConfigDict, leaf: str, prefix: list[str]) -> list[str]:
  """Dotted paths of the keys named ``leaf`` in ``node``'s sections, at any depth
  (``optimizer.learning_rate`` for ``learning_rate``)."""
  found = []
  for key, value in sorted(node.items()):
    if isinstance(value, ml_collections.ConfigDict):
      path = [*prefix, key]
      if leaf in value:
        found.append(".".join([*path, leaf]))
      found.extend(_nested_paths(value, leaf, path))
  return found


def _parse_literal(raw: str) -> Any:
  """A Python literal (``None`` too, or ``null``); ``true``/``false`` in any case, as on
  the other keys; else the text. ``none`` is the text, as on a string key: a model
  field set by the override alone (``model.pool=none``) reads as where the experiment
  set it (the string was None there, and refused by ``pool``)."""
  low = raw.strip().lower()
  if low in ("true", "false"):
    return low == "true"  # Not the string "false", which is truthy.
  if raw.strip() in ("None", "null"):
    return None
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def _parse_as(raw: str, current: Any, key: str) -> Any:
  if isinstance(current, bool):
    low = raw.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise JdlError(f"--config.{key} expects true or false, got {raw!r}")
  if isinstance(current, (int, float)) and not isinstance(current, bool):
    try:
      value = float(raw) if isinstance(current, float) else int(raw)
    except ValueError:
      kind = "a number" if isinstance(current, float) else "an integer"
      raise JdlError(f"--config.{key} expects {kind}, got {raw!r}") from None
    return value
  if isinstance(current, (tuple, list)):
    if not raw.strip():  # --config.metrics= : none, not the one name ''.
      return ()
    value = _parse_literal(raw)
    if isinstance(value, str) and _looks_like_tuple(raw):
      # A tuple literal that does not parse, e.g. '(1,' ('(a|b)' is one regex).
      raise JdlError(f"--config.{key} expects a tuple such as (32, 64) or ('conv_0',), "
                     f"got {raw!r} (not a Python literal)")
    if isinstance(value, (int, float, str)):
      value = (value,)
    if not isinstance(value, (tuple, list)):
      raise JdlError(f"--config.{key} expects a tuple such as (32, 64), got {raw!r}")
    return tuple(value)
  if isinstance(current, ml_collections.ConfigDict):
    raise JdlError(f"--config.{key} is a section; set one of its keys: "
                   f"{', '.join(sorted(current.keys()))}")
  return raw


# config.json's records of where a run ran and where its data and model came from
# (not config keys; from_dict skips them).
RUNTIME_KEY = "runtime"
SOURCES_KEY = "sources"
_RECORDS = (RUNTIME_KEY, SOURCES_KEY)


def to_json(config: ml_collections.ConfigDict, runtime: dict[str, Any] | None = None,
            sources: dict[str, Any] | None = None) -> str:
  """The config as JSON; ``runtime`` (e.g. device counts) and ``sources`` (whether
  ``fit`` was given the dataset or the model) are recorded beside it."""
  tree = config.to_dict()
  for key, record in ((RUNTIME_KEY, runtime), (SOURCES_KEY, sources)):
    if record:
      tree[key] = record
  return json.dumps(tree, indent=2, sort_keys=True, default=list)


def given_sources(saved: dict) -> str | None:
  """What a saved config.json says ``fit`` was given (``"a dataset passed to
  fit(dataset=...) ('x')"``), which its config cannot rebuild; ``None`` if nothing."""
  sources = saved.get(SOURCES_KEY)
  if not isinstance(sources, dict):
    return None
  data, model = sources.get("data"), sources.get("model")
  given = []
  if isinstance(data, dict) and data.get("given"):
    given.append(f"a dataset passed to fit(dataset=...) ({data.get('name')!r})")
  if isinstance(model, dict) and model.get("given"):
    given.append(f"a model passed to fit(model=...) ({model.get('class')})")
  return " and ".join(given) or None


def from_dict(saved: dict) -> ml_collections.ConfigDict:
  """A locked config from a saved ``config.json`` (lists back to tuples).

  Keys the base config does not declare (a config written by another jdl version)
  are an error naming them; ``model`` takes whatever fields were saved.

  Raises:
    JdlError: an unknown key.
  """
  config = base_config()
  saved = {k: v for k, v in saved.items() if k not in _RECORDS}

  def merge(node: ml_collections.ConfigDict, values: dict, path: str) -> None:
    for key, value in values.items():
      where = f"{path}{key}"
      if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
        if key == "model" and not path:
          node[key] = ml_collections.ConfigDict(_tuples(value))
        else:
          merge(node[key], value, f"{where}.")
      elif key in node:
        current, value = node[key], _tuples(value)
        if isinstance(current, ml_collections.ConfigDict):
          raise JdlError(f"saved config key {where!r} is a section of keys, got {value!r}")
        if value is None and current is not None:
          raise JdlError(f"saved config key {where!r} is null; it needs "
                         f"{_article(type(current).__name__)} such as {current!r}")
        if (isinstance(value, bool) and isinstance(current, (int, float))
            and not isinstance(current, bool)):  # ml_collections would take true as 1.
          raise JdlError(f"saved config key {where!r} needs a number such as {current!r}, "
                         f"got {str(value).lower()}")
        try:
          node[key] = value
        except (TypeError, ValueError):
          raise JdlError(f"saved config key {where!r} needs {_article(type(current).__name__)} "
                         f"such as {current!r}, got {value!r}") from None
      else:
        raise JdlError(f"saved config has an unknown key {where!r}")

  merge(config, saved, "")
  config.lock()
  return config


def _tuples(value: Any) -> Any:
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def structural_diff(saved: dict, current: dict,
                    keys: tuple[str, ...] = STRUCTURAL_KEYS) -> list[str]:
  """Keys among ``keys`` (:data:`STRUCTURAL_KEYS`) whose values differ (dotted paths).

  A ``sequence.*`` key counts only where the saved run's or this run's dataset reads
  it (:data:`SEQUENCE_KEYS_READ`), a ``generative.*`` key only where either run's
  task does (:data:`GENERATIVE_KEYS_READ`). A key a config lacks (one written before
  the key existed) reads as its default: :func:`base_config`'s, and for a model
  field, the default of the registered model class's field.
  """
  read = {key for config in (saved, current)
          for key in SEQUENCE_KEYS_READ.get(_get(config, "dataset"), ())}
  tasks = {_get(config, "task") for config in (saved, current)}
  defaults = base_config().to_dict()
  saved, current = _with_model_defaults(saved), _with_model_defaults(current)
  diffs = []
  for key in keys:
    if key.startswith("sequence.") and key not in read:
      continue
    if key in GENERATIVE_KEYS_READ and not tasks & set(GENERATIVE_KEYS_READ[key]):
      continue
    _diff(_get_or_default(saved, key, defaults), _get_or_default(current, key, defaults),
          key, diffs)
  return diffs


def _get_or_default(tree: dict, dotted: str, defaults: dict) -> Any:
  """``tree``'s value at ``dotted``, or ``defaults``' where ``tree`` lacks the key."""
  node = tree
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return _get(defaults, dotted)
    node = node[part]
  return node


def _with_model_defaults(config: dict) -> dict:
  """``config`` with its ``model`` section's missing fields set to the registered
  model class's defaults: a field left out and the same field set to its default
  build the same model."""
  from jdl import models as models_lib
  model = config.get("model") if isinstance(config, dict) else None
  cls = models_lib.MODELS.get(model.get("name")) if isinstance(model, dict) else None
  if cls is None:
    return config
  model = dict(model)
  for name, field in models_lib.model_fields(cls).items():
    if name not in model and field.default is not dataclasses.MISSING:
      model[name] = _json_like(field.default)
  return {**config, "model": model}


def _json_like(value: Any) -> Any:
  return [_json_like(v) for v in value] if isinstance(value, (list, tuple)) else value


# The settings of one launch of a multi-host run, not of the run: the coordinator's
# address and this process's place in that job. `jdl train --workdir DIR`, which
# continues DIR's run from its config.json, does not bring them back (a resume in
# one process would wait for the old job's peers); an explicit --config keeps them.
LAUNCH_KEYS = ("distributed.coordinator_address", "distributed.num_processes",
               "distributed.process_id")


def editable_copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose values can be set: a ``FrozenConfigDict`` (a
  Trainer's ``config``) thawed, any other deep-copied."""
  if isinstance(config, ml_collections.FrozenConfigDict):
    return config.as_configdict()
  return copy.deepcopy(config)


def without_launch(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with :data:`LAUNCH_KEYS` at their defaults (``$JAX_*`` or detection)."""
  defaults = base_config()
  with config.unlocked():
    for key in LAUNCH_KEYS:
      section, name = key.split(".")
      if section in config and name in config[section]:
        config[section][name] = defaults[section][name]
  return config


def launch_neutral(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``config`` as a JSON tree without :data:`LAUNCH_KEYS`: equal on every process of
  one run."""
  tree = json.loads(config.to_json_best_effort(sort_keys=True))
  for key in LAUNCH_KEYS:
    section, name = key.split(".")
    if isinstance(tree.get(section), dict):
      tree[section].pop(name, None)
  return tree


def changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """``{dotted key: (saved value, current value)}`` for the config keys that differ.

  ``runtime`` (the machine a run was on), ``sources`` and :data:`LAUNCH_KEYS` are
  left out.
  """
  diffs: list[str] = []
  for key in sorted((set(saved) | set(current)) - set(_RECORDS)):
    _diff(saved.get(key), current.get(key), key, diffs)
  return {k: (_get(saved, k), _get(current, k)) for k in diffs if k not in LAUNCH_KEYS}


def value_diff(saved: dict, current: dict, *, limit: int = 6) -> list[str]:
  """``"key (saved -> current)"`` for the config keys whose values differ, first ``limit``.

  ``runtime`` (the machine a run was on), ``sources`` and :data:`LAUNCH_KEYS` are
  left out.
  """
  diffs = changes(saved, current)
  shown = [f"{k} ({old!r} -> {new!r})" for k, (old, new) in list(diffs.items())[:limit]]
  return shown + ([f"{len(diffs) - limit} more"] if len(diffs) > limit else [])


def _get(tree: dict, dotted: str) -> Any:
  for part in dotted.split("."):
    tree = tree.get(part) if isinstance(tree, dict) else None
  return tree


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      _diff(a.get(k), b.get(k), f"{path}.{k}", out)
  elif _norm(a) != _norm(b):
    out.append(path)


def _norm(v: Any) -> Any:
  return list(v) if isinstance(v, tuple) else v


__all__ = ["CONFIG_DIR", "DEFAULT_EXPERIMENT", "SEQUENCE_KEYS_READ", "STRUCTURAL_KEYS",
           "base_config", "load_config", "apply_overrides", "unknown_keys",
           "resolve_config_path", "list_experiments", "experiment_description", "to_json",
           "from_dict"]
