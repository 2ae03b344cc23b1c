"""Transfer learning: parameters from another run's checkpoint, and data subsets."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax
import jax.numpy as jnp
import numpy as np

from jdl import checkpoint as ckpt_lib
from jdl import regularizers
from jdl.data import Dataset
from jdl.data import pipeline
from jdl.errors import JdlError


def init_params_from(params: Any, workdir: str | Path, *, include: str = ".*",
                     exclude: str = "", model_state: Any = None
                     ) -> tuple[Any, Any, list[str]]:
  """Copies parameters and model state from ``workdir``'s latest checkpoint by path.

  A parameter of ``params`` whose '/'-joined path fully matches ``include`` and not
  ``exclude`` (regexes) takes the checkpoint's value; the others keep theirs. An
  entry of ``model_state`` (batch norm's running statistics, ``batch_stats/bn_0/
  mean``) is copied with its layer: when a parameter of ``bn_0`` is, so that a copied
  batch-norm layer brings the statistics its scale and bias were trained with (as
  Keras' ``set_weights`` and PyTorch's ``load_state_dict`` do).

  Returns:
    ``(params, model_state, copied_paths)``; model-state paths keep their collection.

  Raises:
    JdlError: no checkpoint, a shape mismatch, or no parameter copied at all.
  """
  keep = regularizers.compile_regex(include, "init_from.include")
  drop = regularizers.compile_regex(exclude, "init_from.exclude") if exclude else None
  if not (Path(workdir) / "checkpoints").is_dir():
    raise JdlError(f"init_from.workdir {str(workdir)!r} holds no checkpoints/")
  source = ckpt_lib.restore_params(Path(workdir) / "checkpoints", model_state=True)
  copied = []

  def copy(tree, wanted):
    flat = flax.traverse_util.flatten_dict(tree, sep="/")
    for path, value in flat.items():
      if not wanted(path) or path not in source:
        continue
      if source[path].shape != value.shape:
        raise JdlError(f"init_from: {path!r} has shape {source[path].shape} in {workdir} "
                       f"but {value.shape} in this model; exclude its layer "
                       "(--config.init_from.exclude=...)")
      flat[path] = jnp.asarray(source[path], value.dtype)
      copied.append(path)
    return flax.traverse_util.unflatten_dict(flat, sep="/")

  params = copy(params, lambda p: keep.fullmatch(p) and not (drop and drop.fullmatch(p)))
  if not copied:
    raise JdlError(f"init_from: no parameter of this model matches include={include!r} / "
                   f"exclude={exclude!r} in {workdir}; its parameters: "
                   f"{', '.join(sorted(source)[:8])}")
  layers = {p.rsplit("/", 1)[0] for p in copied}
  if model_state:  # 'batch_stats/bn_0/mean' goes with the layer 'bn_0'.
    model_state = copy(flax.core.unfreeze(model_state),
                       lambda p: p.split("/", 1)[-1].rsplit("/", 1)[0] in layers)
  return params, model_state, copied


def class_ids(classes, num_classes: int) -> tuple[int, ...]:
  """The dataset's class id of each of a run's ``num_classes`` classes: ``classes``
  (``config.classes``, which :func:`subset` relabels ``0..k-1`` in that order), or
  ``0..num_classes-1`` when the run kept every class."""
  return tuple(int(c) for c in classes) or tuple(range(num_classes))


def subset(dataset: Dataset, *, classes: tuple[int, ...] = (), examples_per_class: int = 0,
           seed: int = 0) -> Dataset:
  """Keeps ``classes`` (relabelled 0..k-1) and at most ``examples_per_class`` to train on.

  Raises:
    JdlError: a regression dataset, labels outside the dataset, or a negative count.
  """
  if not classes and not examples_per_class:
    return dataset
  if dataset.task != "classification":
    raise JdlError("classes / examples_per_class apply to classification datasets only")
  if examples_per_class < 0:
    raise JdlError(f"examples_per_class must be >= 0, got {examples_per_class}")
  if classes:
    if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in classes):
      raise JdlError(f"classes must be integer labels such as (0, 1), got {tuple(classes)}")
    if (any(not 0 <= int(c) < dataset.num_classes for c in classes)
        or len(set(classes)) != len(classes)):
      raise JdlError(f"classes {tuple(classes)} must be distinct labels of {dataset.name!r} "
                     f"(0..{dataset.num_classes - 1})")

    def pick(x, y):
      return (x, y) if x is None else pipeline.select_classes(x, y, classes)

    x_tr, y_tr = pick(dataset.x_train, dataset.y_train)
    x_te, y_te = pick(dataset.x_test, dataset.y_test)
    x_va, y_va = pick(dataset.x_val, dataset.y_val)
    dataset = dataclasses.replace(dataset, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                                  x_val=x_va, y_val=y_va, num_classes=len(classes))
  if examples_per_class:
    x_tr, y_tr = pipeline.limit_per_class(dataset.x_train, dataset.y_train, examples_per_class,
                                          seed)
    dataset = dataclasses.replace(dataset, x_train=x_tr, y_train=y_tr)
  return dataset
