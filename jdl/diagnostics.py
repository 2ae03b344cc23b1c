"""Training diagnostics: gradient norm, update ratios, histograms, dead and saturated units.

Pure, jittable functions of parameters, gradients and activations. The loop calls
:func:`make_diagnose` only after the steps where diagnostics are due (every
``config.diagnostics.every_steps``), so the other steps cost nothing.

Definitions (thresholds are module constants):

- ``grad_norm``: the global L2 norm of the raw gradients (before clipping),
  ``sqrt(sum of squares over every leaf)`` of the trainable parameters (those
  ``optimizer.freeze`` leaves out are left out). Under gradient accumulation it is
  the gradient the update applied: the mean of the ``k`` accumulated steps'
  gradients.
- ``update_ratio/<layer>``: ``||w_after - w_before|| / ||w_before||`` per *layer*,
  where a layer is a module: all parameter leaves under the same parent path
  (``hidden_0/kernel`` and ``hidden_0/bias`` form ``hidden_0``), so a zero-initialised
  bias does not give a huge ratio on its own. Norms are Frobenius norms over the
  concatenated leaves; the denominator is floored at :data:`NORM_FLOOR`. A healthy
  ratio is about 1e-3.
- ``dead_relu/<act>``: the share of units of a sown activation whose value is 0 for
  every example (and every spatial position) of the batch. A unit is an entry of
  the last (feature / channel) axis.
- ``saturated/<act>``: the share of activation values in the saturated range:
  ``|a| > 0.99`` for tanh, ``a < 0.01`` or ``a > 0.99`` for sigmoid.
- Histograms with a fixed number of bins over ``[min, max]`` of the values (static
  shapes; the range is computed in the step).

Activations are those the model sows with
``self.sow("intermediates", f"act_{i}", y)``. A model class may say which of its
sown values are not its ``activation``'s outputs in a class variable
``sown_activations: ClassVar[dict[str, str | None]]``: sow name -> the name of the
model field that holds that value's activation (``{"code": "code_activation"}``), or
``None`` for a value that is no activation (attention weights); with
``diagnostics.activation='auto'`` those get the shares of their own kind, or none.
Parameters in metadata boxes (``nn.with_partitioning``) are read unboxed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax.core import meta
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jdl import errors
from jdl.optim import masks
from jdl.train import steps as steps_lib

TANH_SATURATION = 0.99  # |tanh(x)| above this is saturated.
SIGMOID_SATURATION = 0.01  # sigmoid(x) below this or above 1 - this is saturated.
NORM_FLOOR = 1e-12  # Floor of ||w|| in update ratios (a layer of zeros).
HEALTHY_RATIO = 1e-3
ACTIVATION_KINDS = ("relu", "tanh", "sigmoid", "none")
# Model activations whose dead units are exactly zero.
_RELU_LIKE = ("relu", "step")


def grad_norm(grads: Any) -> jax.Array:
  """Global L2 norm of a gradient PyTree: ``sqrt(sum_i sum(g_i ** 2))``."""
  leaves = jax.tree.leaves(grads)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves))


def layer_names(params: Any) -> list[str]:
  """The layer (module path) of each leaf of ``params``, in ``jax.tree.leaves`` order."""
  names = []
  for path, _ in jax.tree_util.tree_leaves_with_path(meta.unbox(params)):
    parts = jax.tree_util.keystr(path, simple=True, separator="/").split("/")
    names.append("/".join(parts[:-1]) or parts[-1])
  return names


def update_ratios(old_params: Any, new_params: Any) -> dict[str, jax.Array]:
  """Per layer ``||new - old|| / max(||old||, NORM_FLOOR)``.

  Args:
    old_params: parameters before the update.
    new_params: parameters after it (same structure).

  Returns:
    ``{layer: ratio}``, a layer being the parent path of the leaves
    (:func:`layer_names`).
  """
  old_params, new_params = meta.unbox(old_params), meta.unbox(new_params)
  names = layer_names(old_params)
  old, new = jax.tree.leaves(old_params), jax.tree.leaves(new_params)
  delta_sq: dict[str, jax.Array] = {}
  norm_sq: dict[str, jax.Array] = {}
  for name, a, b in zip(names, old, new):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    delta_sq[name] = delta_sq.get(name, 0.0) + jnp.sum(jnp.square(b - a))
    norm_sq[name] = norm_sq.get(name, 0.0) + jnp.sum(jnp.square(a))
  return {name: jnp.sqrt(delta_sq[name]) / jnp.maximum(jnp.sqrt(norm_sq[name]), NORM_FLOOR)
          for name in delta_sq}


def histogram(x: jax.Array, bins: int, range: tuple[Any, Any] | None = None  # noqa: A002
              ) -> dict[str, jax.Array]:
  """Counts of ``x`` in ``bins`` equal bins, with the summaries TensorBoard needs.

  Same convention as ``np.histogram``: bins are half-open ``[a, b)`` except the
  last, ``[a, b]``; values outside ``range`` are not counted; with ``range=None``
  it is ``(min(x), max(x))``, widened by 0.5 both sides when they are equal.
  The shapes are static (``bins`` is a Python int), the range may be traced.
  The counts are exactly ``np.histogram(x, edges)`` of the returned edges. The
  edges are ``np.linspace``'s within float32 rounding: run eagerly they are the
  same, but under ``jit`` XLA may compute one an ulp apart, and a value lying on
  such an edge is then counted in the neighbouring bin of ``np.histogram(x, bins)``.

  Returns:
    ``counts: [bins]`` (float32), ``edges: [bins + 1]``, and ``min``, ``max``,
    ``sum``, ``num`` and ``sum_sq_dev`` (the squared deviations from the mean,
    summed: the variance without the cancellation of ``sum(x**2) - n * mean**2``,
    nor its overflow for values above ~1.8e19) of all of ``x``.
  """
  x = jnp.ravel(x).astype(jnp.float32)
  lo, hi = (jnp.min(x), jnp.max(x)) if range is None else range
  lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
  same = lo == hi
  lo, hi = jnp.where(same, lo - 0.5, lo), jnp.where(same, hi + 0.5, hi)
  width = (hi - lo) / bins
  # A range wider than float32's largest number (values beyond +-1.7e38): halves,
  # whose differences do not overflow.
  wide = ~jnp.isfinite(hi - lo)
  half = (hi * 0.5 - lo * 0.5) / bins

  def edge(i):  # Edge i as np.linspace computes it (lo + i * step; hi last), in
    # float32; computed, not gathered (a gather is slow on CPU).
    i = i.astype(jnp.float32)
    return jnp.where(i >= bins, hi,
                     jnp.where(wide, lo + i * half + i * half, lo + i * width))

  edges = edge(jnp.arange(bins + 1))
  # The bin by arithmetic, then corrected against the edges themselves (as numpy
  # does), so a value on an edge lands where np.histogram with these edges puts it.
  position = jnp.where(wide, (x * 0.5 - lo * 0.5) / half, (x - lo) / width)
  idx = jnp.clip(jnp.floor(position), 0, bins - 1).astype(jnp.int32)
  idx = jnp.where((x < edge(idx)) & (idx > 0), idx - 1, idx)
  idx = jnp.where((x >= edge(idx + 1)) & (idx < bins - 1), idx + 1, idx)  # Last bin closed.
  inside = (x >= lo) & (x <= hi)
  counts = jnp.zeros((bins,), jnp.float32).at[jnp.where(inside, idx, bins)].add(
      1.0, mode="drop")
  total = jnp.sum(x)
  return {"counts": counts, "edges": edges, "min": jnp.min(x), "max": jnp.max(x),
          "sum": total, "sum_sq_dev": jnp.sum(jnp.square(x - total / x.size)),
          "num": jnp.asarray(x.size, jnp.float32)}


def dead_relu_fraction(acts: jax.Array) -> jax.Array:
  """Share of units (last axis) that are 0 for every example and position.

  Args:
    acts: ``[batch, ..., units]`` activations.
  """
  acts = acts.reshape((-1, acts.shape[-1]))
  dead = jnp.all(acts == 0, axis=0)
  return jnp.mean(dead.astype(jnp.float32))


def saturation_fraction(acts: jax.Array, kind: str) -> jax.Array:
  """Share of activation values in the saturated range of ``kind``.

  Args:
    acts: activations of any shape.
    kind: ``'tanh'`` (``|a| > 0.99``) or ``'sigmoid'`` (``a < 0.01`` or ``a > 0.99``).

  Raises:
    JdlError: another ``kind``.
  """
  acts = acts.astype(jnp.float32)
  if kind == "tanh":
    saturated = jnp.abs(acts) > TANH_SATURATION
  elif kind == "sigmoid":
    saturated = (acts < SIGMOID_SATURATION) | (acts > 1.0 - SIGMOID_SATURATION)
  else:
    raise errors.JdlError(f"saturation is defined for 'tanh' and 'sigmoid', got {kind!r}")
  return jnp.mean(saturated.astype(jnp.float32))


def activation_leaves(intermediates: Any) -> dict[str, jax.Array]:
  """``{name: activation}`` from a sown ``intermediates`` collection.

  Names are the sow paths (``act_0``, ``block_1/act_0``); a value sown more than
  once gets a ``#k`` suffix from its second occurrence on, and the parts of a value
  sown as a tuple or dict (an LSTM's ``(c, h)``) the position or key after it
  (``cell/state/0``, ``cell/state#1/1``).
  """
  return {name: value for name, _, value in _sown_entries(intermediates)}


def _sown_entries(intermediates: Any) -> list[tuple[str, str, jax.Array]]:
  """``(name, sow name, value)`` of each sown array (see :func:`activation_leaves`):
  the sow call's count is the first integer key of the path (``sow`` keeps a tuple
  of the values), the module path before it, the parts of the value after it."""
  out = []
  for path, value in jax.tree_util.tree_leaves_with_path(intermediates):
    keys = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", None))) for k in path]
    at = next((i for i, k in enumerate(keys) if isinstance(k, int)), len(keys))
    sow = "/".join(str(k) for k in keys[:at])
    name = sow if at == len(keys) or keys[at] == 0 else f"{sow}#{keys[at]}"
    parts = [str(k) for k in keys[at + 1:]]
    out.append(("/".join([name, *parts]), str(keys[at - 1]) if at else "", value))
  return out


def compute_diagnostics(state_before, state_after, grads, intermediates, *,
                        bins: int = 30, activation: str = "relu",
                        histograms: bool = True,
                        kinds: dict[str, str] | None = None) -> dict[str, Any]:
  """All diagnostics of one step (jittable).

  Args:
    state_before: the state the step started from (anything with ``.params``).
    state_after: the state it produced.
    grads: the step's gradients (same structure as the params).
    intermediates: the sown ``intermediates`` collection of the step's forward pass.
    bins: histogram bins.
    activation: ``'relu'`` (dead-unit shares), ``'tanh'`` or ``'sigmoid'``
      (saturation shares) or ``'none'``.
    histograms: include histograms of activations and gradients.
    kinds: ``{sow name: kind}`` for the sown values whose kind is not
      ``activation`` (:func:`sown_kinds`).

  Returns:
    ``grad_norm``, ``update_ratio: {layer: r}``, ``dead_relu: {act: f}`` (values of
    two or more axes: examples and units) and / or ``saturated: {act: f}``, and
    ``histograms: {'act/<name>' | 'grad/<leaf>': ...}`` (see :func:`histogram`).
  """
  # Empty values have no statistics (no min for a histogram, no units to be dead).
  entries = [(k, sow, a) for k, sow, a in _sown_entries(intermediates) if jnp.size(a)]
  grads = meta.unbox(grads)
  out: dict[str, Any] = {
      "grad_norm": grad_norm(grads),
      "update_ratio": update_ratios(state_before.params, state_after.params),
  }
  kinds = kinds or {}
  for name, sow, a in entries:
    kind = kinds.get(sow, activation)
    if kind == "relu" and jnp.ndim(a) >= 2:
      out.setdefault("dead_relu", {})[name] = dead_relu_fraction(a)
    elif kind in ("tanh", "sigmoid"):
      out.setdefault("saturated", {})[name] = saturation_fraction(a, kind)
  if histograms:
    hists = {f"act/{k}": histogram(a, bins) for k, _, a in entries}
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
      if jnp.size(g):
        hists[f"grad/{jax.tree_util.keystr(path, simple=True, separator='/')}"] = histogram(
            g, bins)
    out["histograms"] = hists
  return out


# -------------------------------------------------------------------- config
def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.diagnostics``.

  Raises:
    JdlError: a value out of range, naming it.
  """
  d = config.diagnostics
  for field in ("every_steps", "histogram_bins", "warn_after_periods"):
    value = d[field]  # A config.json's true would read as 1.
    errors.require(isinstance(value, int) and not isinstance(value, bool),
                   f"diagnostics.{field} must be an integer, got {value!r}")
  errors.require(int(d.every_steps) >= 0,
                 f"diagnostics.every_steps must be >= 0 (0 = off), got {d.every_steps}")
  errors.require(int(d.histogram_bins) >= 1,
                 f"diagnostics.histogram_bins must be >= 1, got {d.histogram_bins}")
  errors.require(int(d.warn_after_periods) >= 0,
                 f"diagnostics.warn_after_periods must be >= 0 (0 = never warn), got "
                 f"{d.warn_after_periods}")
  k, every = int(config.optimizer.get("accumulate_steps", 1)), int(d.every_steps)
  if every > 0 and k > 1 and every % k:
    raise errors.JdlError(
        f"diagnostics.every_steps={every} is not a multiple of optimizer.accumulate_steps="
        f"{k}: the parameters change only once every {k} steps, so the update ratios of "
        f"the steps between would read 0; use a multiple (e.g. {-(-every // k) * k})")
  errors.require(0 < float(d.ratio_low) < float(d.ratio_high),
                 f"diagnostics.ratio_low ({d.ratio_low}) and ratio_high ({d.ratio_high}) "
                 "must satisfy 0 < ratio_low < ratio_high")
  errors.require(d.activation == "auto" or d.activation in ACTIVATION_KINDS,
                 f"diagnostics.activation must be 'auto' or one of "
                 f"{', '.join(ACTIVATION_KINDS)}, got {d.activation!r}")


def activation_kind(config: ml_collections.ConfigDict, model: Any = None) -> str:
  """``config.diagnostics.activation``, with ``'auto'`` read from ``model.activation``:
  the built ``model``'s field when it has one (a field the config leaves out has the
  model's default: LeNet-5's and the recurrent models' are tanh), else the config's
  (ReLU when absent)."""
  kind = config.diagnostics.activation
  if kind != "auto":
    return kind
  name = getattr(model, "activation", None)
  if name is None:
    name = config.model.get("activation", "relu")
  return _kind_of(name)


def sown_kinds(config: ml_collections.ConfigDict, model: Any = None) -> dict[str, str]:
  """With ``diagnostics.activation='auto'``, ``{sow name: kind}`` of the values the
  model's class says are not its ``activation``'s outputs (``sown_activations``, see
  the module's docstring): the kind of the field it names, or ``'none'``."""
  if config.diagnostics.activation != "auto":
    return {}
  declared = getattr(type(model), "sown_activations", None) or {}
  return {sow: "none" if field is None else _kind_of(getattr(model, field, None))
          for sow, field in declared.items()}


def _kind_of(name: Any) -> str:
  """The diagnostics kind of a model's activation (by name)."""
  if not isinstance(name, str):
    return "none"
  if name in _RELU_LIKE:
    return "relu"
  return name if name in ("tanh", "sigmoid") else "none"


# ---------------------------------------------------------------------- step
def make_diagnose(task, *, learning_rate_fn: Callable | None, bins: int, activation: str,
                  histograms: bool = True, augment: Callable | None = None,
                  microbatch_size: int = 0, freeze: tuple[str, ...] = (),
                  kinds: dict[str, str] | None = None) -> Callable:
  """``diagnose(state, new_state, batch) -> diagnostics`` of the step ``state -> new_state``.

  The gradients and the sown activations are recomputed in one forward and
  backward pass of ``task.loss_fn`` with the ``intermediates`` collection made
  mutable, with the step's key (so dropout masks match) and the same augmented
  batch and (mixup) loss as the step's; the updates are ``new_state - state``.
  Should ``loss_fn`` not pass that collection through, one more forward pass gets
  it (the task's ``sown``). :func:`make_diagnostic_block` runs it beside the
  loop's own steps. A step taken in microbatches has its gradient recomputed in the
  same microbatches (with their dropout keys); its activations then come from one
  whole-batch forward pass.

  Args:
    task: the :class:`jdl.train.steps.SupervisedTask` of the train step.
    learning_rate_fn: ``opt_state -> lr`` (e.g. a partial of
      :func:`jdl.optim.current_learning_rate`), or ``None``.
    bins, activation, histograms, kinds: as in :func:`compute_diagnostics`.
    augment: the ``augment`` given to ``make_train_step``, or ``None``.
    microbatch_size: the ``microbatch_size`` given to ``make_train_step`` (0: none).
    freeze: ``optimizer.freeze``'s patterns: those parameters' gradients are left
      out (the update does not apply them).
  """

  def apply_sowing(variables, *inputs, **kwargs):  # A seq2seq model takes two inputs.
    mutable = kwargs.get("mutable")
    if isinstance(mutable, (list, tuple)) and "intermediates" not in mutable:
      kwargs["mutable"] = [*mutable, "intermediates"]
    return task.apply_fn(variables, *inputs, **kwargs)

  sowing_task = dataclasses.replace(task, apply_fn=apply_sowing)

  def diagnose(state, new_state, batch):
    key = jax.random.fold_in(state.key, state.step)
    # The step's own (mixup) loss on the step's own augmented batch.
    loss_task, seen = steps_lib.augmented(sowing_task, augment, key, batch)
    if 0 < microbatch_size < batch["mask"].shape[0]:
      # The step's gradient, microbatch by microbatch, with the step's dropout keys.
      dropout_key = jax.random.fold_in(key, 2) if augment is not None else key
      _, grads = steps_lib.microbatched_loss(loss_task, microbatch_size, state.params,
                                             state.model_state, seen, dropout_key, True)
      collections = None
    else:
      grads, (_, _, collections) = jax.grad(loss_task.loss_fn, has_aux=True)(
          state.params, state.model_state, seen, key, True)
    if isinstance(collections, dict) and "intermediates" in collections:
      sown = collections["intermediates"]
    else:
      sown = task.sown(state.params, state.model_state, seen, key)
    grads = applied_gradient(state.opt_state, grads)
    if freeze:  # Left out, as the update leaves them (None: no leaf).
      labels = masks.freeze_labels(meta.unbox(state.params), freeze)
      grads = jax.tree.map(lambda g, label: None if label == masks.FROZEN else g,
                           meta.unbox(grads), labels)
    diag = compute_diagnostics(state, new_state, grads, sown, bins=bins, activation=activation,
                               histograms=histograms, kinds=kinds)
    if learning_rate_fn is not None:
      diag["learning_rate"] = jnp.asarray(learning_rate_fn(state.opt_state), jnp.float32)
    return diag

  return diagnose


def applied_gradient(opt_state: Any, grads: Any) -> Any:
  """The gradient an update applies: ``grads`` itself, or under gradient
  accumulation (an ``optax.MultiSteps`` state in ``opt_state``, the state before the
  step) the mean of the steps accumulated so far and this one, as MultiSteps
  computes it. (At a step that only accumulates, the mean so far.)"""
  found = [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda s: isinstance(s, optax.MultiStepsState))
           if isinstance(s, optax.MultiStepsState)]
  if not found:
    return grads
  acc = found[0]
  return jax.tree.map(lambda g, a: (a + (g - a) / (acc.mini_step + 1)).astype(g.dtype),
                      grads, acc.acc_grads)


def make_diagnostic_block(run_block: Callable, diagnose: Callable, batch_size: int,
                          every: int, checked_block: Callable | None = None) -> Callable:
  """``run(state, acc, x, y, idx) -> (state, acc, diagnostics)``.

  With ``checked_block`` (the loop's ``run_checked_block`` of
  ``nonfinite_check='block'``: ``(state, acc, ok)``, its steps not testing each
  gradient) the steps other than the diagnosed one run through it, as the loop's
  plain blocks do, and ``run`` returns ``(state, acc, diagnostics, ok)``: ``ok``
  false asks for the block again from its inputs, without ``checked_block``.

  Runs the steps of ``idx: [size, batch]`` (its leading rows; trailing rows of -1
  are padding, as for the loop's blocks) with the loop's plain block
  ``run_block(state, acc, x, y, idx) -> (state, acc)``, and ``diagnose(state,
  new_state, batch)`` (:func:`make_diagnose`) of the last step whose number is a
  multiple of ``every``, run in a block of its own (the steps before it, it, the
  steps after it). So the diagnostics land on those multiples wherever blocks
  begin and end (an epoch's start need not be on their grid), in one compiled
  block for every block length. The block must hold such a step. The diagnostics
  see the states through an optimization barrier, so XLA cannot merge their
  recomputed gradients into the step's: the training stays bitwise that of a run
  without diagnostics.
  """

  others = run_block if checked_block is None else (lambda *a: checked_block(*a)[:2])

  def run(state, acc, x, y, idx):
    rows = idx.reshape(idx.shape[0], -1)[:, 0]
    n = jnp.sum(rows >= 0, dtype=jnp.int32)
    # Steps state.step + 1 .. state.step + n; the last multiple of `every` among them.
    first = jnp.asarray(state.step, jnp.int32)
    at = jnp.clip((first + n) // every * every - first - 1, 0, n - 1)
    position = jnp.arange(idx.shape[0]).reshape((-1,) + (1,) * (idx.ndim - 1))
    if idx.shape[0] > 1:
      state, acc = others(state, acc, x, y, jnp.where(position < at, idx, -1))
    before = state
    row = jax.lax.dynamic_slice_in_dim(idx, at, 1)
    state, acc = run_block(state, acc, x, y, row)
    batch = {"x": x[row[0]], "y": y[row[0]], "mask": jnp.ones((batch_size,), jnp.float32)}
    diag = diagnose(*jax.lax.optimization_barrier((before, state, batch)))
    if idx.shape[0] > 1:  # The steps after it, moved to the front.
      after = jnp.roll(idx, -(at + 1), axis=0)
      state, acc = others(state, acc, x, y, jnp.where(position < n - at - 1, after, -1))
    if checked_block is None:
      return state, acc, diag
    ok = (acc[steps_lib.NONFINITE]["count"] == 0) & steps_lib.state_finite(state)
    return state, acc, diag, ok

  return run


__all__ = [
    "grad_norm", "update_ratios", "histogram", "dead_relu_fraction", "saturation_fraction",
    "compute_diagnostics", "make_diagnose", "make_diagnostic_block", "applied_gradient",
    "validate_config",
    "activation_kind", "sown_kinds", "layer_names", "activation_leaves",
]
