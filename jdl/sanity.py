"""Sanity checks of an experiment before a long run: ``jdl check``.

:func:`run_checks` builds the experiment's data, model and loss (through
:class:`jdl.train.loop.Trainer`, without a workdir) and runs the checks of
Karpathy's "recipe for training neural networks" that need no training run:

* ``initial_loss``: with softmax cross-entropy over ``C`` classes a fresh model
  predicts nearly uniform probabilities, so the mean loss on the train split (as
  the first train step computes it, dropout off) is close to ``ln C`` (``ln 2``
  for binary cross-entropy). Pass when
  ``|loss - ln C| < 0.5 ln C``; skipped for other losses (no reference value).
* ``overfit``: Adam (``overfit_lr``; by default the config's learning rate when its
  optimizer is Adam-like, else 1e-3, then 1e-2 and 1e-1 until one fits) on a fixed
  random subset of ``overfit_examples`` train examples, dropout off (every
  ``*dropout_rate`` of the model), the whole subset as one batch,
  reaches 100% training accuracy (measured on each step's train-mode outputs) and
  a loss below 10% of its initial value (for label smoothing: within 10% of the way
  from it to the smoothed targets' entropy) within ``overfit_steps`` updates. For
  regression with mse, mae or huber: the subset's loss falls below 1% of the loss of
  predicting its mean target (an R^2 above 0.99 for mse); with other losses (or
  constant targets) below 1% of its initial value.
* ``gradcheck``: autodiff gradients against central finite differences of a
  float64 copy of the model (as its first train step runs it, dropout off: batch
  norm on the batch's statistics), along one random unit direction inside each
  parameter leaf: ``rel = |fd - ad| / max(|fd|, |ad|, 1e-6)``, with steps 1e-6,
  then 1e-5 and 1e-7 where a step disagrees (it crossed a ReLU's kink, or rounding
  swamped it); pass when the largest is below ``1e-4``. A leaf whose gradient is cut
  (``stop_gradient``) or wrong (a bad ``custom_vjp``) fails here by name.
* ``grad_nonzero``: every parameter leaf has some nonzero gradient of the data
  loss (penalties left out) on the subset, as the first train step computes it.
* ``data_balance``: the smallest and largest class share of the train split;
  pass when every class occurs and none is 10x rarer than the most common.
* ``data_inputs``: min / max / mean / std of the (normalised) train inputs; pass
  when ``std > 1e-6`` and ``max |x| <= 100`` (inputs on a sane scale).
* ``data_finite``: no NaN or Inf in the inputs and targets of any split.

Each check gives a :class:`CheckResult`; ``jdl check`` prints one line for each
and exits 1 when any fails.

References:
  A. Karpathy, `A Recipe for Training Neural Networks
  <https://karpathy.github.io/2019/04/25/recipe/>`_, 2019.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jdl import data as data_lib
from jdl import optim
from jdl.errors import JdlError, require

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
ADAM_LIKE = ("adam", "adamw", "adamax", "nadam")
# Adam's rates for a config whose optimizer is not Adam-like (its own rate is for
# another optimizer), tried in order until one fits: 1e-3 suits most nets, but in
# 300 steps it moves a weight by at most ~0.3, too little for a linear model of
# large weights (linear_regression fits at 1e-1).
DEFAULT_OVERFIT_LRS = (1e-3, 1e-2, 1e-1)
INITIAL_LOSS_RTOL = 0.5
GRADCHECK_TOL = 1e-4
# Step sizes of the central differences, tried in turn for a leaf until one agrees.
# A step that crosses a ReLU's kink (more likely the larger it is and the more
# activations a net has: 28 of ResNet-20's batch-norm-coupled leaves failed at 1e-5
# on some inputs) or one that rounding swamps (the smaller it is) gives a wrong
# difference at that step alone; a wrong gradient disagrees at every step.
GRADCHECK_EPS = (1e-6, 1e-5, 1e-7)
_GRADCHECK_FLOOR = 1e-6  # Directional derivatives below this count as 0 in `rel`.
_CE = {"sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy"}


@dataclasses.dataclass(frozen=True)
class CheckResult:
  """The outcome of one check.

  Attributes:
    name: e.g. ``'overfit'``.
    status: ``'PASS'``, ``'FAIL'`` or ``'SKIP'``.
    message: the numbers behind the status, one line.
    values: the same numbers, by name (e.g. ``{'steps': 23, 'loss': 0.01}``).
    leaves: parameter paths that the check names (failed or frozen leaves).
  """
  name: str
  status: str
  message: str
  values: dict[str, Any] = dataclasses.field(default_factory=dict)
  leaves: tuple[str, ...] = ()

  @property
  def failed(self) -> bool:
    return self.status == FAIL

  def line(self) -> str:
    return f"{self.status} {self.name:<13} {self.message}"


def run_checks(config: ml_collections.ConfigDict, *, dataset: data_lib.Dataset | None = None,
               model: nn.Module | None = None, overfit_examples: int = 32,
               overfit_steps: int = 300, overfit_lr: float | None = None,
               gradcheck_examples: int = 4) -> list[CheckResult]:
  """Runs every check on ``config``'s experiment.

  Args:
    config: an experiment config.
    dataset: a :class:`jdl.data.Dataset` to use instead of ``config.dataset``.
    model: a flax.linen module to use instead of ``config.model`` (same contract:
      ``apply(variables, x, train=...)``).
    overfit_examples: size of the fixed train subset (``overfit``, ``grad_nonzero``).
    overfit_steps: Adam updates allowed to fit it.
    overfit_lr: Adam's learning rate; ``None``: the config's own
      (``optimizer.learning_rate``) when its optimizer is Adam-like, else
      :data:`DEFAULT_OVERFIT_LRS` in turn.
    gradcheck_examples: examples in the finite-difference check.

  Returns:
    One :class:`CheckResult` per check, in the order listed in the module docstring.

  Raises:
    JdlError: a bad config, dataset or argument.
  """
  from jdl.train.loop import Trainer
  if config.task not in ("classification", "regression"):
    raise JdlError(f"jdl check supports classification and regression runs, not task "
                   f"{config.task!r}")
  require(overfit_examples >= 1, f"overfit_examples must be >= 1, got {overfit_examples}")
  require(overfit_steps >= 1, f"overfit_steps must be >= 1, got {overfit_steps}")
  if overfit_lr is not None:
    rates = (float(overfit_lr),)
  elif config.optimizer.name in ADAM_LIKE:  # A tiny model tuned at a larger rate (xor: 0.05).
    rates = (float(config.optimizer.learning_rate),)
  else:
    rates = DEFAULT_OVERFIT_LRS
  if overfit_lr is not None:
    require(0 < rates[0] < math.inf, f"overfit_lr must be > 0 and finite, got {overfit_lr}")
  else:  # The config's rate: named as the config's key.
    require(all(0 < r < math.inf for r in rates), "optimizer.learning_rate must be > 0 and "
            f"finite, got {config.optimizer.learning_rate}")
  require(gradcheck_examples >= 1, f"gradcheck_examples must be >= 1, got {gradcheck_examples}")
  trainer = Trainer(config, None, dataset=dataset, model=model, quiet=True, progress=False,
                    parallel="none")  # Its own one-device steps.
  train = trainer.data.train
  n = min(overfit_examples, train.size)
  rng = np.random.default_rng(int(config.seed))
  subset = np.sort(rng.choice(train.size, n, replace=False))
  x, y = train.x[subset], train.y[subset]
  key = jax.random.fold_in(trainer.state.key, 0x5A17)
  return [
      check_initial_loss(trainer),
      _first_fit(trainer, x, y, steps=overfit_steps, rates=rates, key=key),
      check_gradients(trainer, x[:gradcheck_examples], y[:gradcheck_examples],
                      seed=int(config.seed)),
      check_nonzero_gradients(trainer, x, y),
      *check_data(trainer),
  ]


def _first_fit(trainer, x, y, *, steps: int, rates: tuple[float, ...], key) -> CheckResult:
  """:func:`check_overfit` at each rate in turn, up to the first that fits."""
  for lr in rates:
    result = check_overfit(trainer, x, y, steps=steps, learning_rate=lr, key=key)
    if not result.failed:
      return result
  if len(rates) > 1:
    tried = ", ".join(f"{r:g}" for r in rates[:-1])
    result = dataclasses.replace(result, message=f"{result.message} (lr {tried} failed too)")
  return result


def _first_step_loss(model, loss, params, model_state, x, y):
  """The mean data loss as the first train step computes it, less its noise and
  penalties: no dropout (``model`` has none: :func:`_without_dropout`; a user's
  ``nn.Dropout`` layers keep one fixed mask), and batch norm on the batch's
  statistics. A fresh model's running statistics (mean 0, variance 1) normalise
  nothing: in eval mode ResNet-20's residual sums grow unchecked (loss 7.0 where
  its first step's is 2.3)."""
  variables = {"params": params, **model_state}
  if model_state:
    # A user's model may hold dropout that no *dropout_rate field turns off (an
    # nn.Dropout(deterministic=not train)): train mode needs its key. A fixed one, so
    # that every call (gradcheck's shifted parameters) draws the same mask.
    outputs, _ = model.apply(variables, x, train=True, mutable=list(model_state),
                             rngs={"dropout": jax.random.key(0)})
  else:
    outputs = model.apply(variables, x, train=False)
  return jnp.mean(loss(outputs, y))


def check_initial_loss(trainer, max_examples: int = 512) -> CheckResult:
  """``initial_loss``: the fresh model's loss against ``ln C``.

  A fresh classifier should be unsure: a loss far above ``ln C`` means large first
  logits (e.g. an output layer initialised at a ReLU layer's He scale, or unscaled
  inputs), which wastes the first epochs. ``digits_cnn`` starts at 2.42 (seed 0)
  against ln 10 = 2.30.
  """
  name, loss_name = "initial_loss", trainer.config.loss
  if trainer.data.task != "classification" or loss_name not in _CE:
    return CheckResult(name, SKIP, f"no reference value for loss {loss_name!r} "
                                   f"({trainer.data.task})")
  c = 2 if loss_name == "binary_crossentropy" else trainer.data.num_classes
  train, state = trainer.data.train, trainer.state
  m = min(max_examples, train.size)
  model = _without_dropout(trainer.model)
  value = float(jax.jit(functools.partial(_first_step_loss, model, trainer.loss))(
      state.params, state.model_state, train.x[:m], train.y[:m]))
  ref = math.log(c)
  tol = INITIAL_LOSS_RTOL * ref
  ok = abs(value - ref) < tol
  return CheckResult(
      name, PASS if ok else FAIL,
      f"loss {value:.4f} vs ln({c}) = {ref:.4f}: |diff| {abs(value - ref):.4f} "
      f"{'<' if ok else '>='} {tol:.4f} (on {m} train examples)",
      {"loss": value, "expected": ref, "tolerance": tol})


def _without_dropout(model: nn.Module) -> nn.Module:
  """The model with every ``*dropout_rate`` field (dense, conv, recurrent) at 0."""
  rates = {f.name: 0.0 for f in dataclasses.fields(model)
           if f.name.endswith("dropout_rate") and getattr(model, f.name)}
  return model.clone(**rates) if rates else model


def _num_correct(outputs: jax.Array, y: jax.Array) -> jax.Array:
  if outputs.shape[-1] == 1:
    pred = (outputs[..., 0] > 0).astype(jnp.int32)
  else:
    pred = jnp.argmax(outputs, axis=-1)
  return jnp.sum(pred == y.reshape(pred.shape))


def check_overfit(trainer, x: jax.Array, y: jax.Array, *, steps: int, learning_rate: float,
                  key: jax.Array) -> CheckResult:
  """``overfit``: Adam fits the fixed subset ``(x, y)`` within ``steps`` updates."""
  model = _without_dropout(trainer.model)
  loss, state = trainer.loss, trainer.state
  classification = trainer.data.task == "classification"
  tx = optax.adam(learning_rate)
  mutable = list(state.model_state.keys())

  @jax.jit
  def step(i, params, model_state, opt_state):
    def loss_fn(p):
      outputs, new_model_state = model.apply(
          {"params": p, **model_state}, x, train=True,
          rngs={"dropout": jax.random.fold_in(key, i)}, mutable=mutable)
      return jnp.mean(loss(outputs, y)), (outputs, new_model_state)

    (value, (outputs, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    correct = _num_correct(outputs, y) if classification else jnp.zeros((), jnp.int32)
    return optax.apply_updates(params, updates), model_state, opt_state, value, correct

  params, model_state, opt_state = state.params, state.model_state, tx.init(state.params)
  n = len(x)
  if classification:
    # Fitted: every example right, and the loss down to a tenth of its way from the
    # start to its floor (label smoothing's entropy): argmax accuracy alone passed
    # a model whose outputs went through softmax twice (its loss cannot go below 1.46).
    floor = _smoothed_floor(float(trainer.config.label_smoothing), trainer.data.num_classes)
  elif trainer.config.loss in _DISTANCE_LOSSES:
    # Fitted: the loss below 1% of that of predicting the subset's mean target (an
    # R^2 above 0.99 for mse); a share of the initial loss depended on the targets' offset.
    y64 = np.asarray(y, np.float64)
    floor = float(np.mean(loss(jnp.asarray(np.broadcast_to(y64.mean(axis=0), y64.shape),
                                           jnp.float32), y)))
    # Constant targets: the mean's loss is float32 rounding (~1e-16), not a scale.
    floor = floor if floor > 1e-6 * float(np.mean(np.square(y64))) else 0.0
  else:  # A probability loss or one of the user's: no constant to compare with.
    floor = 0.0
  # Soft targets: a cross-entropy cannot go below their entropy (0 for hard ones).
  least = (_target_entropy(trainer.config.loss, np.asarray(y, np.float64))
           if not classification and trainer.config.loss in _ENTROPY_LOSSES else 0.0)
  first = None
  for i in range(steps + 1):
    # The step's loss and accuracy are those of the parameters *before* its update,
    # so "reached at i" means after i updates; the last iteration only measures.
    new = step(i, params, model_state, opt_state)
    value, correct = float(new[3]), int(new[4])
    if i == 0:
      first = value
    if classification:
      done = correct == n and value - floor <= 0.1 * (first - floor)
    elif least > 0:
      done = value - least <= 0.01 * (first - least)
    else:
      done = value < 0.01 * (floor if floor > 0 else first)
    if done or i == steps:
      break
    params, model_state, opt_state = new[:3]
  what = ""  # What else than the loss a FAIL reports: a classifier's accuracy.
  if classification:
    goal = "100% training accuracy and the loss " + (
        f"below 10% of its start ({first:.3g})" if floor == 0 else
        f"within 10% of the way from its start ({first:.3g}) to label smoothing's "
        f"floor ({floor:.3g})")
    what = f"{correct}/{n} correct"
  elif least > 0:
    goal = (f"loss within 1% of the way from its start ({first:.3g}) to the soft targets' "
            f"entropy ({least:.3g}), the least it can be")
  else:
    goal = (f"loss < 1% of that of predicting the mean target ({floor:.3g})" if floor > 0
            else f"loss < 1% of its initial {first:.3g}")
  if done:
    message = (f"{goal} on {n} examples after {i} Adam steps (lr {learning_rate:g}); "
               f"loss {value:.4g}")
  else:
    stalled = ("; every example is right but the loss stalls: are the outputs bounded (a "
               "softmax applied twice, probabilities given to a loss of logits)?"
               if classification and correct == n else "")
    message = (f"not fitted after {steps} Adam steps (lr {learning_rate:g}) on {n} examples "
               f"(wanted: {goal}): {what + '; ' if what else ''}loss {value:.4g}{stalled}; "
               "a slow learner (a "
               "long-range sequence task) may need more steps (jdl check --overfit-steps)")
  return CheckResult("overfit", PASS if done else FAIL, message,
                     {"steps": i if done else None, "loss": value,
                      "accuracy": correct / n if classification else None})


# Regression losses that are a distance to the target (0 at the target): compared
# with the loss of predicting the mean target.
_DISTANCE_LOSSES = ("mse", "mae", "huber")


# Cross-entropies whose least value on probability targets is the targets' entropy.
_ENTROPY_LOSSES = ("binary_crossentropy", "categorical_crossentropy")


def _target_entropy(loss: str, y: np.ndarray) -> float:
  """The least mean ``loss`` any outputs reach on targets ``y`` (probabilities):
  their entropy, per row over classes (``categorical_crossentropy``) or per element
  as Bernoulli probabilities (``binary_crossentropy``)."""
  def plogp(p):
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  if loss == "binary_crossentropy":
    return float(np.mean(-(plogp(y) + plogp(1 - y))))
  return float(np.mean(-plogp(y).sum(axis=-1)))


def _smoothed_floor(alpha: float, num_classes: int) -> float:
  """The least cross-entropy with labels smoothed by ``alpha`` over ``num_classes``:
  the entropy of the target ``(1 - alpha) one_hot + alpha / C`` (0 without)."""
  if not alpha:
    return 0.0
  c = max(int(num_classes), 2)
  p = np.array([1 - alpha + alpha / c] + [alpha / c] * (c - 1))
  return float(-(p * np.log(p)).sum())


def _leaf_paths(tree) -> list[str]:
  return [optim.param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _as_float64(model: nn.Module) -> nn.Module:
  """The model computing in float64 (jdl models carry a compute ``dtype`` field)."""
  if "dtype" in {f.name for f in dataclasses.fields(model)}:
    return model.clone(dtype=jnp.float64)
  return model


def check_gradients(trainer, x: jax.Array, y: jax.Array, *, seed: int = 0) -> CheckResult:
  """``gradcheck``: autodiff vs central differences in float64, one direction a leaf.

  64-bit mode is switched on only inside this function (``jax.enable_x64``); the
  rest of the process keeps float32.
  """
  state = trainer.state
  paths = _leaf_paths(state.params)
  rng = np.random.default_rng(seed)
  x_np, y_np = np.asarray(x), np.asarray(y)
  with jax.enable_x64(True):
    model = _as_float64(_without_dropout(trainer.model))
    to64 = lambda a: (np.asarray(a, np.float64)  # noqa: E731
                      if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a))
    params = jax.tree.map(to64, state.params)
    model_state = jax.tree.map(to64, state.model_state)
    xs = to64(x_np)
    f = jax.jit(lambda p: _first_step_loss(model, trainer.loss, p, model_state, xs, y_np))
    grads = jax.tree.leaves(jax.jit(jax.grad(f))(params))
    leaves, treedef = jax.tree.flatten(params)
    errors = []
    for k, leaf in enumerate(leaves):
      d = rng.standard_normal(leaf.shape)
      d /= max(np.linalg.norm(d), 1e-30)

      def shifted(step, k=k, d=d):
        moved = list(leaves)
        moved[k] = leaves[k] + step * d
        return float(f(jax.tree.unflatten(treedef, moved)))

      ad = float(np.sum(np.asarray(grads[k]) * d))
      error = math.inf
      for eps in GRADCHECK_EPS:
        fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
        error = min(error, abs(fd - ad) / max(abs(fd), abs(ad), _GRADCHECK_FLOOR))
        if error < GRADCHECK_TOL:
          break
      errors.append(error)
  worst = int(np.argmax(errors))
  bad = tuple(p for p, e in zip(paths, errors) if not e < GRADCHECK_TOL)
  ok = not bad
  message = (f"max relative error {errors[worst]:.2e} ({paths[worst]}) "
             f"{'<' if ok else '>='} {GRADCHECK_TOL:g} over {len(paths)} leaves, float64, "
             f"steps {', '.join(f'{e:g}' for e in GRADCHECK_EPS)} (the next where one "
             "disagrees)")
  if bad:
    message += f"; wrong gradients: {', '.join(bad)}"
  return CheckResult("gradcheck", PASS if ok else FAIL, message,
                     {"max_rel_error": errors[worst], "errors": dict(zip(paths, errors))}, bad)


def check_nonzero_gradients(trainer, x: jax.Array, y: jax.Array) -> CheckResult:
  """``grad_nonzero``: every parameter leaf gets some nonzero gradient on ``(x, y)``."""
  state = trainer.state
  loss = functools.partial(_first_step_loss, _without_dropout(trainer.model), trainer.loss)
  grads = jax.jit(jax.grad(loss))(state.params, state.model_state, x, y)
  nonzero = [bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads)]
  paths = _leaf_paths(state.params)
  zero = tuple(p for p, nz in zip(paths, nonzero) if not nz)
  if zero:
    return CheckResult("grad_nonzero", FAIL,
                       f"{len(zero)} of {len(paths)} parameter leaves get zero gradient on "
                       f"{len(x)} examples: {', '.join(zero)}", {"zero": zero}, zero)
  return CheckResult("grad_nonzero", PASS,
                     f"all {len(paths)} parameter leaves get nonzero gradients on "
                     f"{len(x)} examples", {"zero": ()})


def check_data(trainer) -> list[CheckResult]:
  """``data_balance``, ``data_inputs`` and ``data_finite`` on the arrays trained on.

  The loaders refuse NaN and Inf in a dataset's files before a run is built, so
  ``data_finite`` catches what they cannot: values that normalisation made
  non-finite, or splits a caller's ``trainer`` holds that no loader checked.
  """
  data = trainer.data
  x = np.asarray(data.train.x)
  results = []
  if data.task == "classification":
    counts = np.bincount(np.asarray(data.train.y).reshape(-1), minlength=data.num_classes)
    share = counts / counts.sum()
    lo, hi = float(share.min()), float(share.max())
    ok = lo > 0 and lo >= 0.1 * hi
    from jdl.train import transfer
    ids = transfer.class_ids(trainer.config.classes, data.num_classes)  # A subset's own.
    results.append(CheckResult(
        "data_balance", PASS if ok else FAIL,
        f"{data.num_classes} classes, class share min {lo:.3f} (class {ids[share.argmin()]}) "
        f"max {hi:.3f} (class {ids[share.argmax()]}) over {counts.sum()} train examples"
        + ("" if ok else "; a class is missing or 10x rarer than the most common"),
        {"min_share": lo, "max_share": hi, "counts": counts.tolist()}))
  else:
    results.append(CheckResult("data_balance", SKIP, "regression: no classes"))
  if np.issubdtype(x.dtype, np.integer):  # Token ids: a scale check means nothing.
    results.append(CheckResult(
        "data_inputs", SKIP, f"train inputs {tuple(x.shape[1:])} are token ids "
        f"(0..{int(x.max())}, {float(np.mean(x == 0)):.1%} padding)"))
  else:
    finite = np.isfinite(x)
    xf = x[finite] if not finite.all() else x
    if xf.size == 0:
      xf = np.full(1, np.nan)  # No finite input: every statistic NaN, and FAIL below.
    stats = {"min": float(xf.min()), "max": float(xf.max()),
             "mean": float(xf.mean(dtype=np.float64)), "std": float(xf.std(dtype=np.float64))}
    ok = bool(stats["std"] > 1e-6 and max(abs(stats["min"]), abs(stats["max"])) <= 100)
    results.append(CheckResult(
        "data_inputs", PASS if ok else FAIL,
        f"train inputs {tuple(x.shape[1:])}: min {stats['min']:.3f} max {stats['max']:.3f} "
        f"mean {stats['mean']:.3f} std {stats['std']:.3f}"
        + ("" if ok else "; expected std > 1e-6 and |x| <= 100 (set config.normalize)"), stats))
  bad = {}
  for split in ("train", "val", "test"):
    s = getattr(data, split)
    if s is None:
      continue
    for kind, a in (("x", s.x), ("y", s.y)):
      a = np.asarray(a)
      count = int(a.size - np.isfinite(a).sum()) if np.issubdtype(a.dtype, np.floating) else 0
      if count:
        bad[f"{kind}_{split}"] = count
  results.append(CheckResult(
      "data_finite", FAIL if bad else PASS,
      ("non-finite values: " + ", ".join(f"{k} {v}" for k, v in bad.items())) if bad
      else "no NaN or Inf in the inputs and targets of " + ", ".join(
          s for s in ("train", "val", "test") if getattr(data, s) is not None),
      {"nonfinite": bad}))
  return results

__all__ = ["PASS", "FAIL", "SKIP", "CheckResult", "run_checks", "check_initial_loss",
    "check_overfit", "check_gradients", "check_nonzero_gradients", "check_data"]
