"""Per-example losses and a registry of them by name.

Every loss maps ``(outputs, targets)`` to a per-example loss of shape ``[batch]``,
averaging over any trailing non-batch dims, so that the caller can mask padded
examples before reducing. They are pure, jittable, and thin wrappers over
``optax.losses`` where optax has the formula.

Examples:
  >>> import jax.numpy as jnp
  >>> from jdl import losses
  >>> loss_fn = losses.get_loss("sparse_categorical_crossentropy",
  ...                           label_smoothing=0.1)
  >>> loss_fn(jnp.zeros((4, 3)), jnp.array([0, 1, 2, 0])).shape
  (4,)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdl import _registry, errors

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def _per_example(x: jax.Array) -> jax.Array:
  """Means ``x: [batch, ...]`` over its non-batch dims; returns ``[batch]``."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def widen(x: jax.Array) -> jax.Array:
  """``x`` as a float array of at least float32.

  Half-precision outputs (a bfloat16 or float16 model) are widened: a softmax's
  log-sum-exp or a squared error summed in 8 or 11 bits of mantissa loses the
  small differences that the gradient is made of, and float16 overflows at 65504.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return x.astype(jnp.float32)
  return x.astype(jnp.float32) if x.dtype.itemsize < 4 else x


def _match(outputs: jax.Array, targets: jax.Array,
           loss: str) -> tuple[jax.Array, jax.Array]:
  """Casts to float and reshapes ``targets`` like ``outputs`` ([B] vs [B, 1]).

  Reshaping rather than broadcasting avoids the silent ``[B] - [B, 1] -> [B, B]``
  mistake.

  Raises:
    JdlError: the two hold different numbers of elements.
  """
  outputs = widen(outputs)
  targets = jnp.asarray(targets)
  if targets.shape != outputs.shape:
    errors.require(
        targets.size == outputs.size,
        f"{loss}: targets of shape {targets.shape} do not match outputs of shape"
        f" {outputs.shape}",
    )
    targets = targets.reshape(outputs.shape)
  return outputs, targets.astype(outputs.dtype)


def mse(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean squared error. ``outputs, targets: [B, ...]``; returns ``[B]``."""
  outputs, targets = _match(outputs, targets, "mse")
  return _per_example(optax.losses.squared_error(outputs, targets))


def mae(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean absolute error. ``outputs, targets: [B, ...]``; returns ``[B]``."""
  outputs, targets = _match(outputs, targets, "mae")
  return _per_example(jnp.abs(outputs - targets))


def huber(outputs: jax.Array, targets: jax.Array, delta: float = 1.0) -> jax.Array:
  """Huber loss: quadratic within ``delta`` of the target, linear beyond.

  Args:
    outputs: predictions, ``[B, ...]``.
    targets: ``[B, ...]``, same number of elements as ``outputs``.
    delta: where the loss turns from quadratic to linear.

  Returns:
    ``[B]``: ``0.5 e^2`` for ``|e| <= delta`` else ``delta (|e| - delta / 2)``,
    averaged over trailing dims.
  """
  outputs, targets = _match(outputs, targets, "huber")
  return _per_example(optax.losses.huber_loss(outputs, targets, delta=delta))


def binary_crossentropy(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Sigmoid cross-entropy from logits.

  Args:
    outputs: logits, ``[B]`` or ``[B, 1]`` (or ``[B, ...]`` multi-label).
    targets: 0/1 (or probabilities), the shape of ``outputs`` or ``[B]``.

  Returns:
    ``[B]``.
  """
  outputs, targets = _match(outputs, targets, "binary_crossentropy")
  return _per_example(optax.losses.sigmoid_binary_cross_entropy(outputs, targets))


def categorical_crossentropy(
    outputs: jax.Array, targets: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """Softmax cross-entropy against probabilities or one-hot targets.

  Args:
    outputs: logits, ``[B, ..., C]``.
    targets: probabilities, ``[B, ..., C]``.
    label_smoothing: ``alpha``; targets become ``(1 - alpha) t + alpha / C``.

  Returns:
    ``[B]``.
  """
  outputs, targets = _match(outputs, targets, "categorical_crossentropy")
  # At alpha == 0 smoothing is the identity, so it needs no Python branch and
  # `label_smoothing` may even be traced.
  targets = optax.losses.smooth_labels(targets, label_smoothing)
  # The safe form takes 0 log 0 as 0: a class masked with a -inf logit and a target
  # of 0 adds nothing (the plain form gives 0 * -inf = NaN; the sparse loss does not).
  return _per_example(optax.losses.safe_softmax_cross_entropy(outputs, targets))


def sparse_categorical_crossentropy(
    outputs: jax.Array, targets: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """Softmax cross-entropy against integer labels.

  Args:
    outputs: logits, ``[B, ..., C]``.
    targets: int labels in ``[0, C)``, ``[B, ...]`` (a trailing 1 is allowed).
      Labels outside that range are not checked here, inside a traced function
      (a run checks its dataset's labels when it reads them); their loss
      is meaningless (NaN, the last class's, or the smoothing term alone,
      depending on the value and the smoothing).
    label_smoothing: ``alpha``; the one-hot target becomes
      ``(1 - alpha) onehot + alpha / C``.

  Returns:
    ``[B]``.
  """
  outputs = widen(outputs)
  targets = jnp.asarray(targets)
  errors.require(
      targets.size * outputs.shape[-1] == outputs.size,
      f"sparse_categorical_crossentropy: int labels of shape {targets.shape} do not "
      f"match logits of shape"
      f" {outputs.shape}",
  )
  targets = targets.reshape(outputs.shape[:-1]).astype(jnp.int32)
  if isinstance(label_smoothing, (int, float)) and label_smoothing == 0:
    # The integer-label path never materialises a [B, C] one-hot (large C).
    losses = optax.losses.softmax_cross_entropy_with_integer_labels(
        outputs, targets
    )
    return _per_example(losses)
  one_hot = jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
  return categorical_crossentropy(outputs, one_hot, label_smoothing)


def squared_hinge(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Squared hinge loss ``max(0, 1 - y f)^2``.

  Args:
    outputs: decision values, ``[B, ...]``.
    targets: ``{-1, +1}`` or ``{0, 1}`` labels, the shape of ``outputs`` or ``[B]``.

  Returns:
    ``[B]``.
  """
  outputs, targets = _match(outputs, targets, "squared_hinge")
  # Map 0 -> -1 element by element rather than by inspecting the whole batch
  # (as Keras does), so an example's loss never depends on its batch mates.
  targets = jnp.where(targets == 0, -1.0, targets).astype(outputs.dtype)
  return _per_example(jnp.square(optax.losses.hinge_loss(outputs, targets)))


def kl_divergence(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """``KL(targets || softmax(outputs))``, with ``0 log 0 = 0``.

  Args:
    outputs: logits, ``[B, ..., C]``.
    targets: probabilities, ``[B, ..., C]``; zeros are allowed.

  Returns:
    ``[B]``.
  """
  outputs, targets = _match(outputs, targets, "kl_divergence")
  log_probs = jax.nn.log_softmax(outputs, axis=-1)
  # Terms with a target of 0 are 0, also where a class is masked with a -inf logit.
  return _per_example(optax.losses.kl_divergence(log_probs, targets, where=targets != 0))


LOSSES: dict[str, Callable[..., jax.Array]] = {
    "mse": mse,
    "mae": mae,
    "huber": huber,
    "binary_crossentropy": binary_crossentropy,
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "squared_hinge": squared_hinge,
    "kl_divergence": kl_divergence,
}
_BUILT_IN = dict(LOSSES)


def is_built_in(name: str) -> bool:
  """Whether ``name`` is one of jdl's own losses (not registered, nor replaced)."""
  return name in _BUILT_IN and LOSSES.get(name) is _BUILT_IN[name]


# The tasks each loss trains. Classification takes integer class labels (one-hot
# encoded for the losses that compare distributions); regression float targets.
# The probability losses also take float targets that are probabilities: soft
# labels (distillation) for kl_divergence and categorical_crossentropy, a
# probability of class 1 for binary_crossentropy.
TASKS: dict[str, tuple[str, ...]] = {
    "mse": ("regression",),
    "mae": ("regression",),
    "huber": ("regression",),
    "binary_crossentropy": ("classification", "regression"),
    "categorical_crossentropy": ("classification", "regression"),
    "sparse_categorical_crossentropy": ("classification",),
    "squared_hinge": ("classification",),
    "kl_divergence": ("classification", "regression"),
}


# Losses of probabilities: as regression losses their float targets lie in [0, 1].
_PROBABILITY_LOSSES = ("binary_crossentropy", "categorical_crossentropy", "kl_divergence")


def check_task(name: str, task: str, dataset: str = "the dataset",
               targets: Any = None) -> None:
  """Raises a JdlError when loss ``name`` cannot train a ``task`` dataset.

  Args:
    name: a key of :data:`LOSSES`.
    task: ``'classification'`` or ``'regression'``.
    dataset: its name, for the message.
    targets: the train targets when in memory (``[N, D]``): float targets for a
      probability loss must lie in [0, 1] (``kl_divergence`` and
      ``categorical_crossentropy``: rows of at least 2 probabilities).
  """
  if name not in LOSSES:
    raise errors.JdlError(
        f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))} (your own: "
        "jdl.losses.register_loss, in each process that trains, resumes or evaluates the "
        "run; on the command line, in the get_config() file given to --config)")
  if task not in TASKS[name]:
    fits = ", ".join(n for n, t in TASKS.items() if task in t)
    raise errors.JdlError(f"loss {name!r} is a {' or '.join(TASKS[name])} loss, but "
                          f"{dataset!r} is a {task} dataset; use {fits}")
  if task != "regression" or name not in _PROBABILITY_LOSSES or targets is None:
    return
  y = np.asarray(targets)
  if y.size and not (y.min() >= 0 and y.max() <= 1):
    raise errors.JdlError(
        f"loss {name!r} takes probabilities as float targets, but {dataset!r} has targets "
        f"from {y.min():g} to {y.max():g}; use mse, mae or huber for other values")
  width = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1
  if name != "binary_crossentropy" and width < 2:
    raise errors.JdlError(
        f"loss {name!r} compares distributions over classes, but {dataset!r} has one target "
        "value per example; use binary_crossentropy for a probability of class 1")


def _check_kwargs(name: str, fn: Callable[..., jax.Array], kwargs: dict) -> None:
  """Raises a JdlError for a keyword ``fn`` does not take or a bad value."""
  valid = list(inspect.signature(fn).parameters)[2:]
  unknown = sorted(set(kwargs) - set(valid))
  errors.require(
      not unknown,
      f"loss {name!r} got unknown argument(s) {', '.join(unknown)}; it takes:"
      f" {', '.join(valid) or 'no arguments'}",
  )
  if "delta" in kwargs:
    delta = kwargs["delta"]
    errors.require(delta > 0, f"huber delta must be > 0, got {delta=}")
  if "label_smoothing" in kwargs:
    alpha = kwargs["label_smoothing"]
    errors.require(
        0 <= alpha < 1, f"label_smoothing must be in [0, 1), got {alpha=}"
    )


def register_loss(name: str, fn: LossFn, *, tasks: tuple[str, ...] = ("classification",),
                  replace: bool = False) -> None:
  """Makes ``config.loss = name`` train with ``fn`` (your own loss, for :func:`jdl.fit`).

  ``fn(outputs, targets) -> [batch]`` gives each example's loss, jittable. For a
  classification task the outputs are the ``[B, num_classes]`` logits and the
  targets the ``[B]`` integer labels; for regression, ``[B, D]`` predictions and
  float targets. A run that uses it resumes in a process that registered it again.

  Args:
    name: the name for ``config.loss``.
    fn: the per-example loss.
    tasks: the tasks it trains, of ``'classification'`` and ``'regression'``.
    replace: allow replacing an existing loss of that name (the same code registered
      again, as a config file loaded twice does, needs no ``replace``).

  Raises:
    JdlError: a taken name (without ``replace``), a non-callable or an unknown task.
  """
  _registry.check_name("loss", name)
  _registry.check_arity("loss", name, "fn", fn, "outputs, targets")  # Callable, too.
  tasks = _registry.check_tasks("loss", name, tasks)
  _registry.check_new("loss", name, name in LOSSES, replace=replace, same=(
      name in LOSSES and _registry.same_code((LOSSES[name], TASKS[name]), (fn, tasks))))
  LOSSES[name] = fn
  TASKS[name] = tasks


def get_loss(name: str, **kwargs: float) -> LossFn:
  """Returns the loss called ``name`` with ``kwargs`` bound.

  Args:
    name: a key of :data:`LOSSES`.
    **kwargs: the loss's hyper-parameters, e.g. ``delta`` or ``label_smoothing``.

  Returns:
    ``fn(outputs, targets) -> [batch]``, jittable.

  Raises:
    JdlError: unknown ``name``, a keyword the loss does not take, or a bad value.
  """
  fn = errors.lookup("loss", name, LOSSES)
  _check_kwargs(name, fn, kwargs)
  return functools.partial(fn, **kwargs) if kwargs else fn

__all__ = ["mse", "mae", "huber", "binary_crossentropy", "categorical_crossentropy",
    "sparse_categorical_crossentropy", "squared_hinge", "kl_divergence", "LOSSES",
    "TASKS", "check_task", "get_loss", "register_loss"]
