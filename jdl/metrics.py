"""Exact metrics over a whole split, as mergeable PyTrees of sums (CLU style).

``from_outputs`` turns one batch into a state, ``merge`` combines two states and
``compute`` turns the total into python floats on the host. States hold counts
and sums, never per-batch averages, so an epoch metric equals the metric over the
whole split whatever the batch sizes, and padded examples (``mask == 0``) count
nowhere.

A state is ``dict[group, dict[field, Array]]``. Metrics that share sufficient
statistics share a group: ``precision``/``recall``/``f1`` share ``"binary"``
(tp, fp, fn), the ``macro_*`` metrics share ``"confusion"`` (a C x (C + 1) matrix),
``mse``/``mae`` share ``"errors"``. ``from_outputs(..., loss=...)`` adds a
``"loss"`` group, reported by ``compute`` as ``loss``. :func:`register_metric` adds
your own metrics, in the same form (a group of sums per metric).

Examples:
  >>> import jax.numpy as jnp
  >>> from jdl import metrics
  >>> names = ("accuracy", "macro_f1")
  >>> state = metrics.empty(names, num_classes=2)
  >>> logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, 0.0]])
  >>> labels = jnp.array([0, 0, 1])
  >>> mask = jnp.array([True, True, False])  # The last example is padding.
  >>> batch = metrics.from_outputs(names, logits, labels, mask, num_classes=2)
  >>> metrics.compute(names, metrics.merge(state, batch))["accuracy"]
  0.5
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdl import _registry, errors

Group = dict[str, jax.Array]
State = dict[str, Group]

CLASSIFICATION = (
    "accuracy", "precision", "recall", "f1", "macro_precision", "macro_recall",
    "macro_f1", "roc_auc",
)
REGRESSION = ("mse", "mae", "r2")
_VALID = {
    "classification": CLASSIFICATION + ("top{k}_accuracy",),
    "regression": REGRESSION,
}
_TOP_K = re.compile(r"top([1-9][0-9]*)_accuracy")

_BINARY = ("precision", "recall", "f1")
_MACRO = ("macro_precision", "macro_recall", "macro_f1")
# The keys of a metrics.jsonl line that are not metrics (jdl/train/loop.py writes them).
# Facts: where a line sits and where the run ran; timings: how long its epoch took and
# what it held. Plots leave out both, TensorBoard the facts only.
RECORD_FACTS = ("step", "epoch", "split", "num_devices", "num_processes", "cpu_cores",
                "parallel", "platform", "xla_flags")
RECORD_TIMINGS = ("epoch_seconds", "samples_per_sec", "compile_seconds", "checkpoint_seconds",
                  "peak_memory_mib")
# State groups of the built-in metrics, and the other keys of a state or of a
# metrics.jsonl line (jdl/train/loop.py writes them beside the metrics).
_RESERVED = frozenset((
    "binary", "confusion", "errors", "loss", "nonfinite", "learning_rate", "grad_norm",
    "histograms", *RECORD_FACTS, *RECORD_TIMINGS))


def better_direction(name: str) -> str | None:
  """``'max'`` for a metric that is better higher (accuracy, f1, r2, ...), ``'min'``
  for one better lower (a loss, mse, mae), ``None`` for a name it does not know."""
  if name in CLASSIFICATION or name == "r2" or _TOP_K.fullmatch(name):
    return "max"
  if name in ("loss", "mse", "mae") or name.endswith("_loss"):
    return "min"
  return CUSTOM[name].better if name in CUSTOM else None


class _Custom(NamedTuple):
  """A metric registered with :func:`register_metric`, in its sums form."""
  statistics: Callable[[jax.Array, jax.Array, jax.Array], Group]
  compute: Callable[[dict[str, np.ndarray]], float]
  tasks: tuple[str, ...]
  better: str | None
  source: tuple[Any, Any, Any]  # (fn, statistics, compute) as registered.


CUSTOM: dict[str, _Custom] = {}


def register_metric(
    name: str,
    fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    *,
    statistics: Callable[[jax.Array, jax.Array, jax.Array], Group] | None = None,
    compute: Callable[[dict[str, np.ndarray]], float] | None = None,
    tasks: Sequence[str] = ("classification",),
    better: str | None = None,
    replace: bool = False,
) -> None:
  """Makes ``name`` a metric for ``config.metrics``, exact over whole splits.

  Two forms:

  * ``fn(outputs, targets) -> [B]``: a value per example; the metric is its mean
    over a split's real examples (padding excluded), e.g. the Brier score.
  * ``statistics(outputs, targets, mask) -> {field: array}``, sums over a batch's
    real examples (``mask`` is ``[B]`` bool) of fixed shapes, added across batches
    and devices, and ``compute(totals) -> float`` on the host with numpy arrays,
    e.g. balanced accuracy from per-class counts.

  Both are traced under jit. They receive what the loss receives: for
  classification the ``[B, num_classes]`` logits (``[B]`` or ``[B, 1]`` for a single
  logit) and ``[B]`` integer labels; for regression the model's ``[B, ...]``
  predictions and float32 targets ``[B, k]`` (a dataset's targets of shape ``[N]``
  become ``[N, 1]``, of ``[N, ...]`` ``[N, k]``). ``mask`` is ``[B]``: weigh each
  example by its own entry (``mask[:, None] * err`` for ``err`` of shape ``[B, k]``).
  A run checks, before it trains, that a sums form leaves masked examples out
  (:func:`check_padding_ignored`). A run that logs the metric resumes, and
  :func:`jdl.load_run` / :func:`jdl.evaluate` reopen it, in a process that
  registered it again.

  Args:
    name: the name in ``config.metrics`` (logged as ``name``, ``val_name``, ...).
    fn: the per-example form.
    statistics: the sums form, with ``compute``.
    compute: the sums form's host function.
    tasks: the tasks it measures, of ``'classification'`` and ``'regression'``.
    better: ``'max'`` or ``'min'`` when known: a monitor whose mode contradicts it
      gets a warning, as the built-in metrics do.
    replace: allow replacing a metric registered before under that name (the same
      code registered again, as a config file loaded twice does, needs no ``replace``).

  Raises:
    JdlError: a name that is taken or not an identifier, a missing or doubled
      form, an unknown task or direction.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jdl import metrics
    >>> def brier(logits, labels):
    ...   p = jax.nn.softmax(logits)
    ...   return jnp.sum((p - jax.nn.one_hot(labels, p.shape[-1])) ** 2, axis=-1)
    >>> metrics.register_metric("brier_doc", brier, better="min")
    >>> state = metrics.from_outputs(("brier_doc",), jnp.zeros((2, 2)), jnp.array([0, 1]),
    ...                              None, num_classes=2)
    >>> metrics.compute(("brier_doc",), state)["brier_doc"]
    0.5
    >>> _ = metrics.CUSTOM.pop("brier_doc")
  """
  _registry.check_name("metric", name)
  errors.require(
      name not in CLASSIFICATION + REGRESSION and not _TOP_K.fullmatch(name)
      and name not in _RESERVED and not name.startswith(("val_", "test_"))
      and not name.endswith("_loss"),
      f"metric name {name!r} is taken by jdl (a built-in metric, a key of the logs or "
      "of the metric state, a split prefix or a loss); choose another")
  tasks = _registry.check_tasks("metric", name, tasks)
  known = CUSTOM.get(name)
  _registry.check_new("metric", name, known is not None, replace=replace, same=(
      known is not None and _registry.same_code((known.source, known.tasks, known.better),
                                                ((fn, statistics, compute), tasks, better))))
  per_example = fn is not None
  errors.require(per_example != (statistics is not None or compute is not None),
                 f"metric {name!r}: give either fn (a value per example) or statistics "
                 "and compute (sums and the host function), not both or neither")
  for what, f, arguments in (("fn", fn, "outputs, targets"),) if per_example else (
      ("statistics", statistics, "outputs, targets, mask"), ("compute", compute, "totals")):
    _registry.check_arity("metric", name, what, f, arguments)
  errors.require(better in (None, "max", "min"),
                 f"metric {name!r}: better must be 'max', 'min' or None, got {better!r}")
  source = (fn, statistics, compute)
  if per_example:
    statistics, compute = _mean_of(name, fn), _mean_value
  CUSTOM[name] = _Custom(statistics, compute, tasks, better, source)


def _mean_of(name: str, fn: Callable) -> Callable[[jax.Array, jax.Array, jax.Array], Group]:
  def statistics(outputs, targets, mask):
    values = jnp.asarray(fn(outputs, targets))
    errors.require(values.shape == mask.shape,
                   f"metric {name!r}: fn must give one value per example, shape "
                   f"{mask.shape}, got {values.shape}")
    return _mean_sums(values, mask)
  return statistics


def _mean_sums(values: jax.Array, mask: jax.Array) -> Group:
  """The sums of a mean over real examples (the loss, a per-example metric)."""
  return {"sum": jnp.sum(jnp.where(mask, values, 0.0), dtype=jnp.float32),
          "count": jnp.sum(mask, dtype=jnp.int32)}


def _mean_value(totals: dict[str, np.ndarray]) -> float:
  return _ratio(totals["sum"], totals["count"])


def _custom_statistics(name: str, outputs: jax.Array, targets: jax.Array,
                       mask: jax.Array) -> Group:
  try:
    sums = CUSTOM[name].statistics(outputs, targets, mask)
  except errors.JdlError:
    raise
  except Exception as e:
    e.add_note(f"(in metric {name!r}, registered with jdl.metrics.register_metric)")
    raise
  errors.require(isinstance(sums, dict) and sums and all(isinstance(k, str) for k in sums),
                 f"metric {name!r}: statistics must return a non-empty dict of arrays "
                 f"with string keys, got {type(sums).__name__}")
  return {k: jnp.asarray(v) for k, v in sums.items()}


def check_padding_ignored(names: Sequence[str], outputs: Any, targets: Any) -> None:
  """Checks that each metric of ``names`` registered in its sums form leaves out the
  examples its ``mask`` marks as padding, as every split's last batch has them.

  Its statistics of ``outputs``/``targets`` (three or more examples, run eagerly)
  with the last example masked must equal those of the others alone. A sum
  broadcast against the ``[B]`` mask fails: ``mask * (p - t) ** 2`` with ``p`` and
  ``t`` of shape ``[B, 1]`` (a regression target is ``[B, k]``) is ``[B, B]``, and
  counts every example ``sum(mask)`` times. So do statistics whose shapes change
  with the batch size (they could not be added across batches).

  Raises:
    JdlError: naming the metric and the fields that differ.
  """
  n = len(outputs)
  for name in names:
    custom = CUSTOM.get(name)
    if custom is None or custom.source[0] is not None or n < 2:  # fn: masked by jdl.
      continue
    real = jnp.arange(n) < n - 1
    padded = jax.device_get(_custom_statistics(name, outputs, targets, real))
    alone = jax.device_get(_custom_statistics(name, outputs[:-1], targets[:-1], real[:-1]))
    shapes = {k: np.shape(v) for k, v in padded.items()}
    errors.require(shapes == {k: np.shape(v) for k, v in alone.items()},
                   f"metric {name!r}: the statistics' shapes change with the batch size "
                   f"(of {n} examples: {shapes}; of {n - 1}: "
                   f"{ {k: np.shape(v) for k, v in alone.items()} }); they are added "
                   "across batches, so each must have one shape")
    differ = [k for k in padded if not np.allclose(
        np.asarray(padded[k], np.float64), np.asarray(alone[k], np.float64),
        rtol=1e-5, atol=1e-6, equal_nan=True)]
    target = "[B" + "".join(f", {d}" for d in np.shape(targets)[1:]) + "]"
    errors.require(
        not differ,
        f"metric {name!r}: its statistics {', '.join(map(repr, differ))} count examples "
        f"that mask marks as padding ({n} examples with the last masked give other sums "
        f"than the first {n - 1} alone). mask is [B] bool and the targets {target}: weigh "
        "each example by its own mask entry (e.g. jnp.sum(mask[:, None] * err) for err "
        f"of shape [B, k]), not by the [B] mask broadcast against {target}")


def _custom_value(name: str, totals: dict[str, np.ndarray]) -> float:
  try:
    value = CUSTOM[name].compute({k: np.asarray(v) for k, v in totals.items()})
    return float(value)
  except Exception as e:
    e.add_note(f"(in metric {name!r}, registered with jdl.metrics.register_metric)")
    raise


# ---------------------------------------------------------------------------
# Names.


def _top_k(name: str) -> int | None:
  match = _TOP_K.fullmatch(name)
  return int(match.group(1)) if match else None


def _task(name: str) -> str | None:
  if name in CLASSIFICATION or _top_k(name):
    return "classification"
  return "regression" if name in REGRESSION else None


def validate_names(
    names: Sequence[str], task: str, num_classes: int | None = None
) -> None:
  """Checks that every name is a metric of ``task`` (and of ``num_classes``).

  Args:
    names: metric names, e.g. ``("accuracy", "top5_accuracy")``.
    task: ``"classification"`` or ``"regression"``.
    num_classes: when known, binary metrics (precision, recall, f1, roc_auc)
      need 2 classes, and ``top{k}_accuracy`` needs ``k`` below it (else it is
      always 1).

  Raises:
    JdlError: an unknown task, or a name that is not a metric of ``task``.
  """
  valid = errors.lookup("task", task, _VALID)
  errors.require(
      not isinstance(names, str), f"metric names must be a sequence, got {names!r}"
  )
  for name in names:
    if name in CUSTOM:
      errors.require(task in CUSTOM[name].tasks,
                     f"metric {name!r} is registered for {' and '.join(CUSTOM[name].tasks)}, "
                     f"not {task}")
      continue
    if _task(name) != task:
      mine = [n for n, m in CUSTOM.items() if task in m.tasks]
      raise errors.JdlError(
          f"unknown {task} metric {name!r}; valid names: {', '.join(valid + tuple(mine))}"
          " (your own: jdl.metrics.register_metric, in each process that trains, "
          "resumes or evaluates the run; on the command line, in the get_config() file "
          "given to --config)")
    if task != "classification" or num_classes is None:
      continue
    if name == "roc_auc":
      errors.require(
          num_classes == 2,
          f"roc_auc is for binary models (2 classes, positive class 1), but there"
          f" are {num_classes} classes; jdl has no multi-class AUC (accuracy and"
          " macro_f1 rank several classes)",
      )
    elif name in _BINARY:
      errors.require(
          num_classes == 2,
          f"{name} is for binary models (2 classes, positive class 1), but there"
          f" are {num_classes} classes; use macro_{name} instead",
      )
    elif (k := _top_k(name)) is not None:
      errors.require(
          k < num_classes,
          f"{name} is always 1 with {num_classes} classes; k must be below"
          f" {num_classes}",
      )


def _group(name: str) -> str:
  """The state group holding ``name``'s statistics."""
  if name in CUSTOM:
    return name
  if _task(name) is None:
    valid = ", ".join(_VALID["classification"] + REGRESSION + tuple(CUSTOM))
    raise errors.JdlError(f"unknown metric {name!r}; valid names: {valid} (your own: "
                          "jdl.metrics.register_metric, in each process that trains, "
                          "resumes or evaluates the run)")
  if name in _BINARY:
    return "binary"
  if name in _MACRO:
    return "confusion"
  return "errors" if name in ("mse", "mae") else name


def _require_sequence(names: Sequence[str]) -> None:
  """A bare string would be read as its characters ('accuracy' as 'a', 'c', ...)."""
  errors.require(
      not isinstance(names, str), f"metric names must be a sequence, got {names!r}"
  )


def _groups(names: Sequence[str]) -> list[str]:
  _require_sequence(names)
  return list(dict.fromkeys(_group(name) for name in names))


# ---------------------------------------------------------------------------
# Empty states.


def _zero(dtype: jnp.dtype = jnp.int32, shape: tuple[int, ...] = ()) -> jax.Array:
  return jnp.zeros(shape, dtype)


def _empty_group(group: str, num_classes: int) -> Group:
  if group == "binary":
    return {"tp": _zero(), "fp": _zero(), "fn": _zero()}
  if group == "confusion":
    return {"matrix": _zero(jnp.int32, (num_classes, num_classes + 1))}
  if group == "roc_auc":
    return {
        "scores": _zero(jnp.float32, (0,)),
        "labels": _zero(jnp.int32, (0,)),
        "mask": _zero(jnp.bool_, (0,)),
    }
  if group == "errors":
    return {"sq": _zero(jnp.float32), "abs": _zero(jnp.float32), "count": _zero()}
  if group == "r2":
    # Shape [] broadcasts against the [outputs] moments of any batch in `merge`.
    f32 = jnp.float32
    return {"count": _zero(), "mean": _zero(f32), "m2": _zero(f32),
            "sse": _zero(f32)}
  return {"correct": _zero(), "count": _zero()}  # accuracy, top{k}_accuracy


def _class_count(num_classes: int | None) -> int:
  """Confusion-matrix size; a single-logit binary model has 2 classes."""
  errors.require(
      isinstance(num_classes, int) and num_classes >= 1,
      f"classification metrics need num_classes >= 1, got {num_classes=}",
  )
  return max(num_classes, 2)


def empty(names: Sequence[str], *, num_classes: int | None) -> State:
  """The state of no examples, the identity of :func:`merge`.

  Args:
    names: metric names.
    num_classes: number of classes (1 or 2 for a single-logit binary model);
      unused by regression metrics.

  Returns:
    A state with zero counts (without the groups of metrics registered in the
    statistics form, whose shapes come with the first batch: :func:`merge` takes
    them from it).

  Raises:
    JdlError: an unknown metric name or a bad ``num_classes``.
  """
  groups = _groups(names)
  classes = 0
  if any(_task(name) == "classification" for name in names):
    classes = _class_count(num_classes)
  state = {}
  for group in groups:
    if group not in CUSTOM:
      state[group] = _empty_group(group, classes)
    elif CUSTOM[group].compute is _mean_value:  # A value per example: shapes known.
      state[group] = _mean_sums(jnp.zeros((0,)), jnp.zeros((0,), jnp.bool_))
    # A registered statistics form takes its shapes from its first batch: its group
    # is absent here, merge takes it from the first state that has it, and compute
    # gives nan while no batch has.
  return state


# ---------------------------------------------------------------------------
# Per-batch statistics.


class _Classified(NamedTuple):
  logits: jax.Array  # [B, C]; [B, 2] as (0, logit) for a single logit.
  preds: jax.Array  # [B] int32.
  labels: jax.Array  # [B] int32.
  score: jax.Array | None  # [B] positive-class score, for binary models only.


def _labels(targets: jax.Array, batch: int, num_classes: int) -> jax.Array:
  """Int labels ``[B]`` from int labels ``[B]``/``[B, 1]`` or one-hot ``[B, C]``."""
  if targets.ndim == 2 and targets.shape[-1] == num_classes:
    return jnp.argmax(targets, axis=-1).astype(jnp.int32)
  errors.require(
      targets.size == batch,
      f"targets of shape {targets.shape} are neither int labels [{batch}] nor"
      f" one-hot [{batch}, {num_classes}]",
  )
  return targets.reshape(batch).astype(jnp.int32)


def two_class_logits(z: jax.Array) -> jax.Array:
  """A binary model's one logit ``z [..., 1]`` as two class logits ``[..., 2]``:
  ``(0, z)``, whose softmax is ``(1 - sigmoid(z), sigmoid(z))``."""
  return jnp.concatenate([jnp.zeros_like(z), z], axis=-1)


def _classify(
    outputs: jax.Array, targets: jax.Array, num_classes: int
) -> _Classified:
  """Predictions, labels and scores from logits ``[B, C]``, ``[B]``, ``[B, 1]``."""
  errors.require(
      outputs.ndim in (1, 2),
      "classification outputs must be logits [batch, classes] or [batch];"
      f" got shape {outputs.shape}",
  )
  batch = outputs.shape[0]
  if outputs.ndim == 1 or outputs.shape[-1] == 1:
    errors.require(
        num_classes == 2,
        f"a single-logit output is binary but {num_classes=}",
    )
    logit = outputs.reshape(batch)
    preds = jnp.where(jnp.isnan(logit), 2, (logit > 0).astype(jnp.int32))  # 2: none.
    logits = two_class_logits(logit[:, None])
    return _Classified(logits, preds, _labels(targets, batch, 2), logit)
  errors.require(
      outputs.shape[-1] == num_classes,
      f"outputs have {outputs.shape[-1]} classes but {num_classes=}",
  )
  # A row with a NaN predicts no class (the index num_classes): a miss for accuracy
  # and the macro metrics, as for top-k (argmax returned the NaN's index: a hit).
  preds = jnp.where(jnp.any(jnp.isnan(outputs), axis=-1), num_classes,
                    jnp.argmax(outputs, axis=-1)).astype(jnp.int32)
  # The logit margin ranks examples like the softmax probability of class 1,
  # without the float32 saturation of the probability near 0 and 1.
  # In float32 at least: a bfloat16 difference ties distinct margins (float16 overflows).
  wide = _widen(outputs)
  score = wide[:, 1] - wide[:, 0] if num_classes == 2 else None
  return _Classified(outputs, preds, _labels(targets, batch, num_classes), score)


def _hits(hit: jax.Array, mask: jax.Array) -> Group:
  return {"correct": jnp.sum(hit & mask, dtype=jnp.int32),
          "count": jnp.sum(mask, dtype=jnp.int32)}


def _in_top_k(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """``[B]`` bool: fewer than ``k`` classes score above the label (ties hit, as
  TensorFlow's ``in_top_k``); a row with a NaN, or whose label's logit is not
  finite, is a miss (every comparison with NaN is false, so it counted as a hit).
  Other classes masked with ``-inf`` rank last, as they should."""
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  valid = ~jnp.any(jnp.isnan(logits), axis=-1) & jnp.isfinite(label_logit[:, 0])
  return (jnp.sum(logits > label_logit, axis=-1) < k) & valid


def _require_binary(c: _Classified, name: str) -> None:
  errors.require(
      c.score is not None,
      f"{name} is for binary models (positive class 1), but the outputs have"
      f" {c.logits.shape[-1]} classes; use macro_precision, macro_recall or"
      " macro_f1 instead",
  )


def _binary_counts(c: _Classified, mask: jax.Array) -> Group:
  _require_binary(c, "precision/recall/f1")
  pred, true = c.preds == 1, c.labels == 1
  count = lambda x: jnp.sum(x & mask, dtype=jnp.int32)
  return {"tp": count(pred & true), "fp": count(pred & ~true),
          "fn": count(~pred & true)}


def _confusion(c: _Classified, mask: jax.Array, num_classes: int) -> jax.Array:
  """``[C, C + 1]`` int32 counts of (true, predicted) pairs of real examples; the last
  column counts the rows that predicted no class (a NaN output)."""
  # Integer segment sums are exact whatever the backend's matmul precision;
  # labels outside [0, C) fall outside [0, C*(C+1)) and are dropped.
  index = c.labels * (num_classes + 1) + c.preds
  counts = jax.ops.segment_sum(
      mask.astype(jnp.int32), index, num_segments=num_classes * (num_classes + 1)
  )
  return counts.reshape(num_classes, num_classes + 1)


def confusion_matrix(outputs, targets, num_classes: int) -> np.ndarray:
  """``[C, C]`` counts of (true, predicted) class pairs, as the classification
  metrics read a model's outputs (logits ``[B, C]``, or one logit ``[B]``/``[B, 1]``
  that is positive for class 1) and targets (int labels or one-hot); a row whose
  outputs hold a NaN predicts no class and is in no column."""
  c = _classify(jnp.asarray(outputs), jnp.asarray(targets), num_classes)
  counts = _confusion(c, jnp.ones(c.preds.shape, bool), num_classes)
  return np.asarray(counts)[:, :num_classes]


def _classification_group(
    group: str, c: _Classified, mask: jax.Array, num_classes: int
) -> Group:
  if group == "accuracy":
    return _hits(c.preds == c.labels, mask)
  if group == "binary":
    return _binary_counts(c, mask)
  if group == "confusion":
    return {"matrix": _confusion(c, mask, num_classes)}
  if group == "roc_auc":
    _require_binary(c, "roc_auc")
    return {"scores": c.score.astype(jnp.float32), "labels": c.labels,
            "mask": mask}
  return _hits(_in_top_k(c.logits, c.labels, _top_k(group)), mask)


def _regression_group(
    group: str, outputs: jax.Array, targets: jax.Array, mask: jax.Array
) -> Group:
  """Sums for ``outputs, targets: [B, D]``."""
  keep = mask[:, None]
  sq = jnp.where(keep, jnp.square(outputs - targets), 0.0)
  n = jnp.sum(mask, dtype=jnp.int32)
  if group == "errors":
    # Sums of each example's mean over its D outputs, and a count of examples: the
    # same means as sums over all n * D values, but an int32 count of values would
    # wrap at 2**31 (some 14,000 targets of 224x224x3), the count of examples never.
    absolute = jnp.where(keep, jnp.abs(outputs - targets), 0.0)
    return {"sq": jnp.sum(jnp.mean(sq, axis=1)), "abs": jnp.sum(jnp.mean(absolute, axis=1)),
            "count": n}
  denom = jnp.maximum(n, 1).astype(targets.dtype)
  # About the batch's first real target: constant targets give m2 exactly 0 (about
  # their float32 mean, rounding left ~1e-16 for seven 0.1s, and r2 read -1.8e12).
  shift = (targets[jnp.argmax(mask)] if targets.shape[0]
           else jnp.zeros(targets.shape[1:], targets.dtype))
  offset = jnp.sum(jnp.where(keep, targets - shift, 0.0), axis=0) / denom
  m2 = jnp.sum(jnp.where(keep, jnp.square(targets - shift - offset), 0.0), axis=0)
  # A batch of padding alone has mean 0, not its first row's target: a NaN or inf
  # there would turn `merge`'s zero-weighted delta into NaN.
  mean = jnp.where(n > 0, shift + offset, 0.0)
  return {"count": n, "mean": mean, "m2": m2, "sse": jnp.sum(sq, axis=0)}


def _widen(x: jax.Array) -> jax.Array:
  """``x`` as floats of at least float32 (:func:`jdl.losses.widen`'s rule; a floor,
  this module imports no other, ARCHITECTURE principle 5). By width: strict dtype
  promotion refuses ``promote_types(bfloat16, float32)``."""
  wide = jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize >= 4
  return x if wide else x.astype(jnp.float32)


def _as_regression(
    outputs: jax.Array, targets: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Float ``[B, D]`` views of ``outputs`` and ``targets`` (D = trailing size)."""
  errors.require(
      targets.size == outputs.size,
      f"targets of shape {targets.shape} do not match outputs of shape"
      f" {outputs.shape}",
  )
  outputs = _widen(outputs)
  shape = (outputs.shape[0], math.prod(outputs.shape[1:]))
  return outputs.reshape(shape), targets.reshape(shape).astype(outputs.dtype)


def _mask(mask: jax.Array | None, batch: int) -> jax.Array:
  if mask is None:
    return jnp.ones((batch,), jnp.bool_)
  mask = jnp.asarray(mask)
  errors.require(
      mask.shape == (batch,), f"mask must have shape [{batch}], got {mask.shape}"
  )
  return mask.astype(jnp.bool_)


def _loss_group(loss: jax.Array, mask: jax.Array) -> Group:
  loss = jnp.asarray(loss)
  errors.require(
      loss.shape == mask.shape,
      f"loss must be per-example, shape {mask.shape}, got {loss.shape}",
  )
  return _mean_sums(loss, mask)


def from_outputs(
    names: Sequence[str],
    outputs: jax.Array,
    targets: jax.Array,
    mask: jax.Array | None,
    *,
    num_classes: int | None,
    loss: jax.Array | None = None,
) -> State:
  """The state of one batch; jittable with ``names`` and ``num_classes`` static.

  Args:
    names: metric names, a tuple under jit.
    outputs: classification logits ``[B, C]`` or single-logit ``[B]``/``[B, 1]``;
      regression predictions ``[B, ...]``.
    targets: int labels ``[B]`` or one-hot ``[B, C]``; regression targets with as
      many elements as ``outputs``.
    mask: ``[B]`` bool or 0/1: which examples are real (not padding); ``None``
      means all.
    num_classes: number of classes (1 or 2 for a single logit); unused by
      regression metrics.
    loss: optional per-example loss ``[B]``; adds a ``"loss"`` group.

  Returns:
    A state holding the batch's sums over real examples.

  Raises:
    JdlError: an unknown metric name or mismatched shapes.
  """
  _require_sequence(names)
  outputs, targets = jnp.asarray(outputs), jnp.asarray(targets)
  mask = _mask(mask, outputs.shape[0])
  state = {}
  classified, regression = None, None
  for name in names:
    group = _group(name)
    if name in CUSTOM:
      state[group] = _custom_statistics(name, outputs, targets, mask)
    elif _task(name) == "classification":
      classes = _class_count(num_classes)
      if classified is None:
        classified = _classify(outputs, targets, classes)
      state[group] = _classification_group(group, classified, mask, classes)
    else:
      if regression is None:
        regression = _as_regression(outputs, targets)
      state[group] = _regression_group(group, *regression, mask)
  if loss is not None:
    state["loss"] = _loss_group(loss, mask)
  return state


# ---------------------------------------------------------------------------
# Merging.


def _add(a: Group, b: Group) -> Group:
  return jax.tree.map(jnp.add, a, b)


def _concat(a: Group, b: Group) -> Group:
  return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)


def _merge_moments(a: Group, b: Group) -> Group:
  """Chan et al.'s parallel update of count, mean and M2 (squared deviations).

  References:
    Chan, Golub and LeVeque, "Updating formulae and a pairwise algorithm for
    computing sample variances", 1979.
  """
  na, nb = a["count"].astype(jnp.float32), b["count"].astype(jnp.float32)
  frac = jnp.where(na + nb > 0, nb / jnp.maximum(na + nb, 1.0), 0.0)
  delta = b["mean"] - a["mean"]
  return {
      "count": a["count"] + b["count"],
      "mean": a["mean"] + delta * frac,
      "m2": a["m2"] + b["m2"] + jnp.square(delta) * na * frac,
      "sse": a["sse"] + b["sse"],
  }


_MERGE: dict[str, Callable[[Group, Group], Group]] = {
    "roc_auc": _concat,
    "r2": _merge_moments,
}


def merge(a: State, b: State) -> State:
  """Combines the states of two disjoint sets of examples.

  Counts and sums add, ``r2`` moments merge by Chan's formula and ``roc_auc``
  scores concatenate (so its state grows: merge it eagerly, outside jit). A group
  in only one state (e.g. ``loss`` against :func:`empty`) is taken as it is.

  Args:
    a: a state.
    b: a state.

  Returns:
    The state of the union.
  """
  merged = {}
  for group in list(a) + [g for g in b if g not in a]:
    if group not in b:
      merged[group] = a[group]
    elif group not in a:
      merged[group] = b[group]
    else:
      merged[group] = _MERGE.get(group, _add)(a[group], b[group])
  return merged


# ---------------------------------------------------------------------------
# Computing on the host.


def _ratio(num: np.ndarray, den: np.ndarray, *, zero: float = math.nan) -> float:
  """``num / den``, or ``zero`` when ``den`` is 0."""
  return float(num) / float(den) if den else zero


def _binary(name: str, g: dict[str, np.ndarray]) -> float:
  tp, fp, fn = (int(g[k]) for k in ("tp", "fp", "fn"))
  if name == "precision":
    return _ratio(tp, tp + fp, zero=0.0)
  if name == "recall":
    return _ratio(tp, tp + fn, zero=0.0)
  return _ratio(2 * tp, 2 * tp + fp + fn, zero=0.0)


def _macro(name: str, matrix: np.ndarray) -> float:
  """Macro average over the classes present in the labels or the predictions.

  As scikit-learn's default (``labels=None``, ``zero_division=0``): a present
  class with no predicted (true) examples has precision (recall) 0.
  """
  matrix = matrix.astype(np.float64)
  tp = np.diag(matrix)  # [C, C + 1]: its last column (no class predicted) is a miss.
  predicted, true = matrix[:, :-1].sum(axis=0), matrix.sum(axis=1)
  den = {"macro_precision": predicted, "macro_recall": true,
         "macro_f1": (predicted + true) / 2}[name]
  per_class = np.divide(tp, den, out=np.zeros_like(tp), where=den > 0)
  present = (predicted + true) > 0
  return float(per_class[present].mean()) if present.any() else 0.0


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of ``x``, ties sharing their average rank."""
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  last = np.cumsum(counts)
  return (last - (counts - 1) / 2.0)[inverse]


def _roc_auc(g: dict[str, np.ndarray]) -> float:
  """Exact ROC AUC as the Mann-Whitney U statistic; nan if a class is missing."""
  keep = g["mask"].astype(bool)
  scores = g["scores"][keep].astype(np.float64)
  positive = g["labels"][keep] == 1
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if not n_pos or not n_neg or np.isnan(scores).any():  # NaNs would share one rank.
    return math.nan
  rank_sum = _average_ranks(scores)[positive].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _r2(g: dict[str, np.ndarray]) -> float:
  """Mean over outputs of ``1 - SSE / SST``, finite like scikit-learn's."""
  if int(g["count"]) < 2:
    return math.nan
  sse = np.asarray(g["sse"], np.float64).reshape(-1)
  return float(np.mean(r2_columns(sse, np.asarray(g["m2"], np.float64))))


def r2_columns(sse, sst) -> np.ndarray:
  """Per output, ``1 - SSE / SST``; a target with no variance (``SST = 0``) scores 1
  when predicted exactly and 0 otherwise, finite like scikit-learn's ``r2_score``."""
  sse = np.asarray(sse, np.float64).reshape(-1)
  sst = np.broadcast_to(np.asarray(sst, np.float64), sse.shape)
  constant = np.where(sse == 0, 1.0, 0.0)  # Targets with no variance.
  safe = np.where(sst > 0, sst, 1.0)
  return np.where(sst > 0, 1.0 - sse / safe, constant)


def _compute_one(name: str, state: dict[str, dict[str, np.ndarray]]) -> float:
  group = _group(name)
  if name in CUSTOM and group not in state:
    return math.nan  # No batch yet (see empty); a ratio over no examples.
  errors.require(
      group in state,
      f"metric {name!r} has no state; pass it to empty/from_outputs",
  )
  g = state[group]
  if name in CUSTOM:
    return _custom_value(name, g)
  if group == "binary":
    return _binary(name, g)
  if group == "confusion":
    return _macro(name, g["matrix"])
  if group == "roc_auc":
    return _roc_auc(g)
  if group == "errors":
    return _ratio(g["sq"] if name == "mse" else g["abs"], g["count"])
  if group == "r2":
    return _r2(g)
  return _ratio(g["correct"], g["count"])


def compute(names: Sequence[str], state: State) -> dict[str, float]:
  """The metrics of a state, on the host.

  Args:
    names: metric names.
    state: a state from :func:`from_outputs` / :func:`merge`.

  Returns:
    ``{name: value}`` as python floats, plus ``"loss"`` (the mean per-example
    loss) when the state has one. Ratios over no examples are nan (the macro
    averages over no examples are 0); precision, recall and f1 with a
    zero denominator are 0, as scikit-learn's ``zero_division=0``, and a macro
    average is over the classes present in the labels or the predictions;
    ``roc_auc`` is nan unless both classes occur, or with NaN scores; a top-k hit
    counts ties (TensorFlow's ``in_top_k``), and a row with a NaN, or a label logit
    that is not finite, is a miss.

  Raises:
    JdlError: an unknown name, or one the state has no statistics for.
  """
  _require_sequence(names)
  host = jax.device_get(state)
  results = {name: _compute_one(name, host) for name in names}
  if "loss" in host:
    results["loss"] = _mean_value(host["loss"])
  return results

__all__ = ["CLASSIFICATION", "REGRESSION", "CUSTOM", "register_metric", "validate_names",
    "check_padding_ignored",
    "empty", "from_outputs", "merge", "compute", "better_direction", "two_class_logits",
    "r2_columns"]
