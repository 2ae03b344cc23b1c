"""Sanity checks on dataset arrays, run before anything reaches a model."""

from __future__ import annotations

import numpy as np

from jdl.errors import JdlError

TASKS = ("classification", "regression", "seq2seq")

# Booleans, signed and unsigned integers, floats; complex numbers are not data jdl trains on.
_NUMERIC_KINDS = "biuf"


def _examples(values: np.ndarray, limit: int = 5) -> str:
  shown = ", ".join(str(v) for v in values[:limit].tolist())
  return shown + (", ..." if values.size > limit else "")


def require_finite(a: np.ndarray, what: str) -> None:
  """One JdlError naming ``what`` when a float array holds NaN or Inf, or (a wider
  float) values beyond float32's range, which training in float32 reads as Inf."""
  if a.dtype.kind != "f":
    return
  finite = np.isfinite(a)
  big = np.zeros((), bool)
  if a.dtype.itemsize > 4:
    with np.errstate(invalid="ignore"):
      big = finite & (np.abs(a) > np.finfo(np.float32).max)
    finite &= ~big
  if finite.all():
    return
  n_nan, n_big = int(np.isnan(a).sum()), int(big.sum())
  n_inf = a.size - int(finite.sum()) - n_nan - n_big
  bad_rows = int((~finite.reshape(len(a), -1)).any(axis=1).sum())
  beyond = (f" and {n_big} beyond float32's range (+-3.4e38: Inf in float32, as jdl "
            "trains)" if n_big else "")
  raise JdlError(
      f"{what} contains {n_nan} NaN and {n_inf} Inf values{beyond} (in {bad_rows} of "
      f"{len(a)} examples); clean or impute them before training"
  )


# A largest label of at least this, over ten times the next largest, is refused as
# a stray code (65535 for "missing"): the model would get that many outputs.
_STRAY_LABEL = 1000


def check_stray_label(top_two: np.ndarray, where: str) -> None:
  """Refuses a largest class id far above all the others.

  ``top_two``: the two largest distinct labels of every split, ascending (one
  value if only one occurs).

  Raises:
    JdlError: the largest is at least 1000 and over ten times the next one plus 1.
  """
  if len(top_two) < 2:
    return
  second, top = (int(v) for v in top_two[-2:])
  if top >= _STRAY_LABEL and top + 1 > 10 * (second + 1):
    raise JdlError(f"{where}: the labels run to {second} and then jump to {top}, which "
                   f"would give the model {top + 1} outputs; remap the labels to "
                   f"0..num_classes-1 or drop the examples labelled {top} (a stray code?)")


def check_example_shapes(dataset, where: str) -> None:
  """Checks that the validation and test examples have the train examples' shape,
  and that ``dataset.input_shape`` is that shape.

  A model built for ``input_shape`` takes only such examples, and the train split's
  per-feature normalisation statistics would otherwise broadcast over other shapes
  and score garbage without an error.

  Args:
    dataset: a :class:`jdl.data.Dataset` or :class:`jdl.data.StreamDataset`.
    where: what the data is, for messages (e.g. ``"dataset 'mine'"``).

  Raises:
    JdlError: naming the split and both shapes.
  """
  train_shape = tuple(int(d) for d in np.shape(dataset.x_train)[1:])
  for split in ("val", "test"):
    x = getattr(dataset, f"x_{split}", None)
    if x is None or (np.ndim(x) >= 1 and len(x) == 0):
      continue
    shape = tuple(int(d) for d in np.shape(x)[1:])
    if shape != train_shape:
      raise JdlError(f"{where}: x_{split} has examples of shape {shape} but x_train has "
                     f"{train_shape}; they must match")
  given = getattr(dataset, "input_shape", None)
  if given is not None and tuple(int(d) for d in given) != train_shape:
    raise JdlError(f"{where}: input_shape is {tuple(given)} but x_train has examples of "
                   f"shape {train_shape}; they must match")


def validate_arrays(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    task: str,
    split: str,
) -> None:
  """Checks that ``x`` and ``y`` form a usable dataset split.

  Args:
    x: inputs, ``[N, ...]``.
    y: targets, ``[N]`` class ids for classification, ``[N]`` or ``[N, K]`` for
      regression, ``[N, T]`` token ids for seq2seq.
    num_classes: the number of classes (classification) or target tokens (seq2seq);
      ignored for regression.
    task: one of :data:`TASKS`.
    split: the split's name for messages, e.g. ``"train"``.

  Raises:
    JdlError: the split is empty; ``x`` and ``y`` differ in length; a dtype is not
      numeric; ``x`` (or a regression ``y``) holds NaN or Inf; classification labels are
      not integers or not in ``[0, num_classes)``.
  """
  if task not in TASKS:
    raise JdlError(f"unknown task {task!r}; valid names: {', '.join(TASKS)}")
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim == 0 or y.ndim == 0:
    raise JdlError(
        f"{split} split: x and y must be arrays with one row per example, got shapes "
        f"{x.shape} and {y.shape}"
    )
  if len(x) == 0:
    raise JdlError(f"the {split} split is empty (0 examples); check the data source")
  if len(x) != len(y):
    raise JdlError(
        f"{split} split: x has {len(x)} examples but y has {len(y)}; they must have one "
        "target per input"
    )
  for key, a in (("x", x), ("y", y)):
    if a.dtype.kind not in _NUMERIC_KINDS:
      raise JdlError(
          f"{key}_{split} has non-numeric dtype {a.dtype}; convert it to numbers (labels "
          "to integer class ids 0..num_classes-1)"
      )
  require_finite(x, f"x_{split}")
  if task == "regression":
    require_finite(y, f"y_{split}")
    return
  if task == "seq2seq":
    if y.ndim != 2 or y.dtype.kind not in "iu":
      raise JdlError(f"y_{split} has shape {y.shape} and dtype {y.dtype}; seq2seq targets "
                     "are int token ids [N, T]")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise JdlError(f"y_{split} has token ids outside [0, {num_classes}) (the target "
                     "vocabulary)")
    return
  if y.ndim != 1:
    raise JdlError(
        f"y_{split} has shape {y.shape}; classification labels must be one integer class "
        "id per example, shape [N] (not one-hot)"
    )
  if y.dtype.kind == "f":
    non_integer = y[~np.isfinite(y) | (y != np.round(y))]
    if non_integer.size:
      raise JdlError(
          f"y_{split} has {non_integer.size} non-integer labels (e.g. "
          f"{_examples(non_integer)}); classification needs integer class ids"
      )
  if num_classes < 1:
    raise JdlError(f"num_classes must be at least 1 for classification, got {num_classes}")
  outside = y[(y < 0) | (y >= num_classes)]
  if outside.size:
    top = int(outside.max())
    more = (f" or, if there are {top + 1} classes, set num_classes={top + 1}"
            if outside.min() >= 0 else "")
    raise JdlError(
        f"y_{split} has {outside.size} labels outside [0, {num_classes}) (e.g. "
        f"{_examples(np.unique(outside))}); remap the labels to 0..{num_classes - 1}{more}"
    )
