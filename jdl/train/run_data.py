"""A run's data: its splits loaded, validated, normalised and put on the device.

:func:`load_data` turns a config's dataset (or a :class:`jdl.data.Dataset` given
to ``fit``) into a :class:`RunData`: train, validation and test splits on the
device (or streamed from disk, ``dataset='npy_dir'``), normalised with the train
split's statistics, and what the checkpoints record of where they came from.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections
import numpy as np

from jdl import data as data_lib
from jdl.data import npy_dir
from jdl.data import pipeline
from jdl.data import stream
from jdl.data import text as text_data
from jdl.errors import JdlError
from jdl.generative import tasks as gen_tasks
from jdl.train import transfer


@dataclasses.dataclass(frozen=True)
class RunData:
  """The splits of one run and how its inputs are read.

  Attributes:
    train, val, test: the splits (``val`` and ``test`` ``None`` when empty).
    num_classes: classes of a classification dataset (else 0).
    task: the dataset's task (``'classification'`` or ``'regression'``).
    input_shape: one example's shape.
    name: the dataset's name.
    source: what checkpoints record of the data (name, given to ``fit``, fingerprint).
    normalizer: maps raw inputs as the train split's were mapped; ``None`` when the
      inputs are token ids, fed as they are.
    vocab: text datasets: ``{name: Vocabulary}`` of the train split.
    float_inputs: the dataset gives float inputs (``predict`` takes the same kind).
    integers_as_numbers: integer inputs without a vocabulary, cast to float32 and
      normalised as numbers.
  """
  train: pipeline.Split | stream.StreamSplit
  val: pipeline.Split | stream.StreamSplit | None
  test: pipeline.Split | stream.StreamSplit | None
  num_classes: int
  task: str
  input_shape: tuple[int, ...]
  name: str
  source: dict
  normalizer: pipeline.Normalizer | None
  vocab: dict | None = None
  float_inputs: bool = False
  integers_as_numbers: bool = False


def _training_rows(dataset: data_lib.Dataset, config: ml_collections.ConfigDict) -> np.ndarray:
  """The indices into ``dataset.x_train`` of the rows the run trains on.

  The same selections as :func:`load_data`'s (``classes``, ``examples_per_class``,
  then ``validation_split`` unless the dataset has its own validation split),
  made on the row numbers.
  """
  rows = np.arange(len(dataset.y_train))
  picked = transfer.subset(dataclasses.replace(dataset, x_train=rows),
                           classes=tuple(config.classes),
                           examples_per_class=int(config.examples_per_class),
                           seed=int(config.seed))
  if dataset.x_val is not None:
    return picked.x_train
  return pipeline.split_validation(picked.x_train, picked.y_train,
                                   float(config.validation_split), int(config.seed))[0]


def _check_pixels(dataset, task: str) -> None:
  """The generative tasks model pixels in [0, 1] (a Bernoulli likelihood, a sigmoid
  generator): other inputs trained to a negative "likelihood" or to nothing.

  Raises:
    JdlError: integer inputs (uint8 images: divide by 255), or values outside [0, 1].
  """
  for split in ("train", "val", "test"):
    x = getattr(dataset, f"x_{split}", None)
    if x is None or len(x) == 0:
      continue
    name = f"dataset {dataset.name!r}: x_{split}"
    if np.dtype(x.dtype).kind in "iu":
      raise JdlError(f"task {task!r} models pixels in [0, 1], but {name} holds {x.dtype} "
                     "values; scale them to floats in [0, 1] (uint8 images: x / 255)")
    low, high = (npy_dir.value_range(x) if isinstance(x, npy_dir.NpyRows)
                 else (float(np.min(x)), float(np.max(x))))
    if np.isfinite([low, high]).all() and not (0.0 <= low and high <= 1.0):  # NaN: later.
      raise JdlError(f"task {task!r} models pixels in [0, 1], but {name} holds values from "
                     f"{low:g} to {high:g}; scale them to [0, 1]")


def _check_two_classes(dataset, config: ml_collections.ConfigDict) -> None:
  if config.task == "classification" and dataset.num_classes < 2:
    kept = f" (classes={tuple(config.classes)} keeps one)" if config.classes else ""
    raise JdlError(f"classification needs at least 2 classes; {dataset.name!r} has "
                   f"{dataset.num_classes}{kept}")


def load_data(config: ml_collections.ConfigDict, dataset: data_lib.Dataset | None = None,
              vocab: dict | None = None) -> RunData:
  """The run's splits, from ``dataset`` or else ``config.dataset``.

  Args:
    config: the run's config (dataset, splits, normalisation, task, augmentation).
    dataset: a dataset given to ``fit``, used instead of ``config.dataset``.
    vocab: a finished run's vocabularies (text datasets keep their token ids).

  Raises:
    JdlError: splits of other shapes, labels out of range, a dataset of another
      task, token ids with normalisation or continuous augmentation.
  """
  given = dataset is not None
  if dataset is None:
    dataset = data_lib.load_dataset(
        config.dataset, data_dir=config.data_dir, test_split=float(config.test_split),
        seed=int(config.seed), n_samples=int(config.n_samples) or None,
        noise=None if config.noise < 0 else float(config.noise),
        download=bool(config.download),
        text=text_data.TextOptions.from_config(config.sequence), vocab=vocab)
    if getattr(dataset, "rebuild_vocab", None):  # Text: a vocabulary of the rows it trains on.
      dataset = dataset.rebuild_vocab(_training_rows(dataset, config))
  source = {"name": dataset.name, "given": given, "fingerprint": data_lib.fingerprint(dataset)}
  earlier = data_lib.fingerprint(dataset, float64_as_float32=True)
  if earlier != source["fingerprint"] and not given:  # A float64 npz or npy_dir source.
    source["float32_fingerprint"] = earlier  # What runs of it recorded before 2026-11-30.
  if (every_byte := data_lib.checksum(dataset)) is not None:  # Not streamed from disk.
    source["checksum"] = every_byte  # Rows the fingerprint does not sample (2026-12-03).
  data_lib.check_example_shapes(dataset, f"dataset {dataset.name!r}")
  task = dataset.task
  if task != config.task and config.task not in gen_tasks.TASKS:
    fix = (f"; set config.task = {task!r} (with a {task} loss and metrics, e.g. "
           "config.loss = 'mse', config.metrics = ('mse', 'r2'))" if task == "regression"
           else f"; set config.task = {task!r}")
    raise JdlError(f"dataset {dataset.name!r} is a {task} dataset but config.task is "
                   f"{config.task!r}{fix}")
  if config.task in gen_tasks.TASKS:
    _check_pixels(dataset, config.task)
  if isinstance(dataset, npy_dir.StreamDataset):  # Stays on disk; read block by block.
    _check_two_classes(dataset, config)
    train, val, test, norm = stream.build_splits(dataset, config)
    return RunData(train=train, val=val, test=test, num_classes=dataset.num_classes, task=task,
                   input_shape=dataset.input_shape, name=dataset.name, source=source,
                   normalizer=norm, float_inputs=np.dtype(dataset.x_train.dtype).kind == "f")
  for split, x, y in (("train", dataset.x_train, dataset.y_train),
                      ("test", dataset.x_test, dataset.y_test),
                      ("val", dataset.x_val, dataset.y_val)):
    if split != "train" and (x is None or len(x) == 0):
      continue
    data_lib.validate_arrays(x, y, num_classes=dataset.num_classes, task=task, split=split)
  if task == "regression":
    def as_2d(y):  # [N, k]; an empty split (no split, see put below) of its k columns.
      return None if y is None else y.reshape(
          len(y), int(np.prod(y.shape[1:], dtype=np.int64))).astype(np.float32)
    dataset = dataclasses.replace(dataset, y_train=as_2d(dataset.y_train),
                                  y_test=as_2d(dataset.y_test), y_val=as_2d(dataset.y_val))
  elif task == "classification":
    def as_ids(y):  # Checked above: whole numbers. Float ids (2.0) were kept as floats,
      return None if y is None else np.asarray(y).astype(np.int32)  # which mixup blended.
    dataset = dataclasses.replace(dataset, y_train=as_ids(dataset.y_train),
                                  y_test=as_ids(dataset.y_test), y_val=as_ids(dataset.y_val))
  dataset = transfer.subset(dataset, classes=tuple(config.classes),
                            examples_per_class=int(config.examples_per_class),
                            seed=int(config.seed))
  _check_two_classes(dataset, config)
  if dataset.x_val is not None:  # An explicit validation set replaces validation_split.
    x_tr, y_tr, x_val, y_val = dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val
  else:
    x_tr, y_tr, x_val, y_val = pipeline.split_validation(
        dataset.x_train, dataset.y_train, float(config.validation_split), int(config.seed))
  # Integer inputs are token ids in a text dataset (it has a vocabulary) and when
  # they are to be fed as they are (normalize='none': a user's own ids for an
  # embedding). Otherwise (uint8 images, counts) they are numbers: float32,
  # normalised (float64 ones in float64, then float32, as a streamed npy_dir dataset too).
  integer = np.issubdtype(np.asarray(x_tr).dtype, np.integer)
  tokens = integer and (dataset.vocab is not None or config.normalize == "none")
  if tokens and config.normalize != "none":
    raise JdlError(f"dataset {dataset.name!r} gives token ids; set normalize='none' (got "
                   f"{config.normalize!r})")
  continuous = [k for k in ("noise_std", "mixup_alpha") if config.augment[k]]
  if tokens and continuous:
    raise JdlError(f"dataset {dataset.name!r} gives token ids, which augment."
                   f"{', augment.'.join(continuous)} cannot act on (noise and mixup turn "
                   f"ids into other ids); set {'it' if len(continuous) == 1 else 'them'} "
                   "to 0")
  if tokens:
    norm = None
  elif config.normalize == "featurewise":
    norm = pipeline.Normalizer.fit(x_tr)
  elif config.normalize == "featurewise_center":
    norm = pipeline.Normalizer.fit_center(x_tr)
  elif config.normalize == "global":
    norm = pipeline.Normalizer.fit_global(x_tr)
  else:
    norm = pipeline.Normalizer.identity(x_tr.shape[1:])

  def put(x, y, split):
    if x is None or len(x) == 0:
      return None
    x = np.asarray(x, np.int32) if norm is None else norm(x)
    if config.task == "autoencoder":
      y = x  # The target is the clean input (augmentation noise touches x only).
    elif (config.task == "vae" and config.generative.binarize == "dynamic"
          and split != "train"):
      # Scored as binary images; its grey decoder means are compared with the grey ones.
      return gen_tasks.binarized_split(x, y)
    return pipeline.Split(jnp.asarray(x), jnp.asarray(y))

  return RunData(train=put(x_tr, y_tr, "train"), val=put(x_val, y_val, "val"),
                 test=put(dataset.x_test, dataset.y_test, "test"),
                 num_classes=dataset.num_classes, task=task,
                 input_shape=tuple(x_tr.shape[1:]), name=dataset.name, source=source,
                 normalizer=norm, vocab=dataset.vocab,
                 float_inputs=np.asarray(x_tr).dtype.kind == "f",
                 integers_as_numbers=integer and not tokens)
