"""LIME: local surrogate models for tabular inputs and images.

The model is probed on perturbations of one input; a weighted ridge regression
(closed form, float64) of the explained output on an interpretable representation
of the perturbations, weighted by proximity to the input, gives one weight per
feature (tabular) or per superpixel (images; here the cells of a regular grid, so
no segmentation library is needed). Sampling uses an explicit PRNG key: the same
key gives the same explanation.

References:
  Ribeiro, Singh, Guestrin (2016), "'Why Should I Trust You?': Explaining the
  Predictions of Any Classifier", KDD, arXiv:1602.04938: eq. 1-2 (the weighted
  local fit, kernel ``exp(-D(x, z)^2 / sigma^2)``), sec. 3.3 (sampling).

The kernel is the paper's. The ``lime`` package's explainers take its square root,
``exp(-D^2 / (2 sigma^2))``, so at the same width their weights fall off more slowly
(at ``D = sigma``: 0.61 there, 0.37 here); a width ``sqrt(2)`` times larger gives
the package's weights.
"""

from __future__ import annotations

import inspect

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdl import errors
from jdl.explain import _checks

PredictFn = Callable[[jax.Array], jax.Array]


class LimeExplanation(NamedTuple):
  """What :func:`lime_tabular` and :func:`lime_image` return.

  Attributes:
    weights: the surrogate's coefficients: ``[d]`` per feature (tabular) or
      ``[cells_h, cells_w]`` per grid cell (images).
    intercept: the surrogate's intercept.
    r2: the weighted R^2 of the surrogate on the perturbations (local fidelity).
    target: the explained output index.
    prediction: the model's target output at the input.
    attribution: ``weights`` spread over the input: ``[d]`` (tabular) or
      ``[height, width]`` (images, each pixel gets its cell's weight).
  """
  weights: np.ndarray
  intercept: float
  r2: float
  target: int
  prediction: float
  attribution: np.ndarray


def weighted_ridge(features: np.ndarray, y: np.ndarray, sample_weight: np.ndarray,
                   alpha: float = 1.0) -> tuple[np.ndarray, float, float]:
  """Weighted ridge regression in closed form; the intercept is not penalised.

  Minimises ``sum_i w_i (y_i - b - z_i . beta)^2 + alpha mean(w) |beta|^2``: the
  penalty is per unit of average weight, so scaling every weight changes nothing
  (scikit-learn's ``Ridge(alpha=alpha * mean(w))`` with the same weights gives the
  same fit). With the weights normalised to sum to one, ``p = w / sum(w)``, the
  weighted means ``z_bar``, ``y_bar`` and centred ``Z``, ``y``:
  ``beta = (Z^T P Z + (alpha / m) I)^-1 Z^T P y`` and ``b = y_bar - z_bar . beta``.

  Args:
    features: ``[m, d]``.
    y: ``[m]``.
    sample_weight: ``[m]`` non-negative, not all zero.
    alpha: the ridge penalty (>= 0).

  Returns:
    ``(beta [d], intercept, weighted R^2)``.

  Raises:
    JdlError: shapes that do not match, weights that are negative, not finite or
      all zero, a negative or non-finite ``alpha``, or a singular fit with
      ``alpha=0``.
  """
  z = np.asarray(features, np.float64)
  y = np.asarray(y, np.float64)
  w = np.asarray(sample_weight, np.float64)
  errors.require(z.ndim == 2 and y.shape == w.shape == (len(z),),
                 f"weighted_ridge needs features [m, d], y [m] and sample_weight [m], got "
                 f"shapes {z.shape}, {y.shape} and {w.shape}")
  errors.require(bool(np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0),
                 "sample_weight must be finite, >= 0 and not all zero")
  _checks.require_number(alpha, "alpha (the ridge penalty)")
  w = w / w.sum()
  z_bar, y_bar = w @ z, w @ y
  zc, yc = z - z_bar, y - y_bar
  gram = zc.T @ (w[:, None] * zc)
  singular = errors.JdlError(
      f"the weighted least-squares fit of {len(y)} samples on {z.shape[1]} features is "
      "singular (too few distinct samples for ridge=0): use ridge > 0 or more num_samples")
  # np.linalg.solve raises only on an exactly zero pivot: a rank-deficient fit
  # (fewer distinct samples than features) returned arbitrary weights with R^2 = 1.
  if alpha == 0 and np.linalg.matrix_rank(np.sqrt(w)[:, None] * zc) < z.shape[1]:
    raise singular
  # With p summing to one, alpha / m is alpha per unit of average weight.
  try:
    beta = np.linalg.solve(gram + alpha / len(y) * np.eye(z.shape[1]), zc.T @ (w * yc))
  except np.linalg.LinAlgError:
    raise singular from None
  residual = yc - zc @ beta
  total = w @ yc**2
  # A constant target is fitted exactly by the intercept (its centred values are
  # rounding noise, not variance to explain).
  r2 = 1.0 if np.ptp(y) == 0 or total <= 0 else 1.0 - (w @ residual**2) / total
  return beta, float(y_bar - z_bar @ beta), float(r2)


def _kernel(distance: np.ndarray, width: float) -> np.ndarray:
  return np.exp(-(distance**2) / width**2)


def _predict_chunk(predict_fn: PredictFn, chunk: jax.Array) -> np.ndarray:
  """``[m, k]`` outputs of ``predict_fn`` for ``chunk: [m, ...]``, one row per input."""
  out = np.asarray(predict_fn(chunk), np.float64)
  errors.require(out.ndim >= 1 and out.shape[0] == len(chunk) and out.size > 0,
                 f"predict_fn must return [m] or [m, k] scores, one row per input: for "
                 f"m = {len(chunk)} inputs it returned shape {out.shape}")
  return out.reshape(len(chunk), -1)


def _predict(predict_fn: PredictFn, batch: jax.Array, batch_size: int) -> np.ndarray:
  """``[m, k]`` outputs of ``predict_fn`` over ``batch`` in chunks of ``batch_size``."""
  outs = [_predict_chunk(predict_fn, batch[i:i + batch_size])
          for i in range(0, len(batch), batch_size)]
  widths = sorted({o.shape[1] for o in outs})
  errors.require(len(widths) == 1, f"predict_fn must return the same number of scores per "
                 f"input for every batch, got {widths}")
  out = np.concatenate(outs)
  errors.require(np.isfinite(out).all(), f"predict_fn must return finite scores, got NaN or "
                 f"Inf for {int(np.sum(~np.isfinite(out).all(axis=1)))} of {len(out)} "
                 "perturbed inputs")
  return out


def _check_common(num_samples, kernel_width, ridge, batch_size) -> None:
  _checks.require_int(num_samples, "num_samples", at_least=2)
  _checks.require_number(kernel_width, "kernel_width", positive=True, allow_none=True)
  _checks.require_number(ridge, "ridge")
  _checks.require_int(batch_size, "batch_size")


def _pick_target(outputs: np.ndarray, target: int | None) -> int:
  """The explained output column: ``target`` or the argmax at the input (row 0)."""
  if target is None:
    return int(np.argmax(outputs[0]))
  errors.require(isinstance(target, (int, np.integer))
                 and not isinstance(target, (bool, np.bool_)),
                 f"target must be an integer (an output column), got {target!r}")
  errors.require(0 <= target < outputs.shape[1],
                 f"target {target!r} is out of range for a model with {outputs.shape[1]} "
                 "outputs")
  return int(target)


def _explain(predict_fn, inputs, features, distance, width, target, ridge, batch_size):
  outputs = _predict(predict_fn, inputs, batch_size)
  t = _pick_target(outputs, target)
  y = outputs[:, t]
  beta, intercept, r2 = weighted_ridge(features, y, _kernel(distance, width), ridge)
  return beta, intercept, r2, t, float(y[0])


# The kernel width of binary masks at their cosine distance (the LIME package's).
MASK_KERNEL_WIDTH = 0.25


def _mask_distance(masks: np.ndarray) -> np.ndarray:
  """Cosine distance of each binary mask from the all-ones mask (LIME's choice)."""
  on = masks.sum(axis=1)
  return 1.0 - np.sqrt(on / masks.shape[1])  # cos = on / (sqrt(on) sqrt(d)).


def lime_tabular(predict_fn: PredictFn, x: np.ndarray, *, key: jax.Array,
                 mode: str = "sample", std: np.ndarray | None = None,
                 mean: np.ndarray | None = None, center: str = "instance",
                 baseline: float | np.ndarray = 0.0, num_samples: int = 2000,
                 kernel_width: float | None = None, ridge: float = 1.0,
                 target: int | None = None, batch_size: int = 1024) -> LimeExplanation:
  """LIME for one tabular input ``x: [d]``.

  Two perturbation schemes:

  * ``mode='sample'``: ``z = c + std * e``, ``e ~ N(0, I)``, centred at the input
    (``center='instance'``) or at the train mean (``center='mean'``, as the LIME
    package does). The surrogate is fit on ``(z - x) / std``, so weights are per
    train standard deviation (``weights / std`` is the slope per unit) and the
    intercept is the surrogate's value at ``x``. Distance: Euclidean in these
    units; default kernel width ``0.75 sqrt(d)``.
  * ``mode='mask'``: binary masks ``m ~ Bernoulli(0.5)^d``; ``z = where(m, x,
    baseline)``; the surrogate is fit on ``m``, so a weight is the effect of
    replacing the feature by the baseline. Distance: cosine from the all-ones
    mask; default kernel width 0.25.

  The input itself is the first sample.

  Args:
    predict_fn: ``[m, d] -> [m, k]`` (or ``[m]``) model scores, e.g. class
      probabilities.
    x: ``[d]`` the input to explain.
    key: a PRNG key.
    mode: ``'sample'`` or ``'mask'``.
    std: ``[d]`` (or scalar) train standard deviations, >= 0; required by
      ``'sample'``. A feature constant in the train split (std 0) is perturbed and
      scaled with std 1, as scikit-learn's ``StandardScaler`` leaves it.
    mean: ``[d]`` train means; required by ``center='mean'``.
    center: ``'instance'`` or ``'mean'`` (``mode='sample'`` only).
    baseline: the value of masked features (``mode='mask'`` only).
    num_samples: perturbations, the input included.
    kernel_width: sigma of the proximity kernel (default per mode, above).
    ridge: the ridge penalty, per unit of average sample weight
      (:func:`weighted_ridge`).
    target: the output column to explain; default: the predicted one.
    batch_size: the largest batch passed to ``predict_fn``.

  Returns:
    A :class:`LimeExplanation` with ``weights: [d]``.

  Raises:
    JdlError: bad arguments (a missing ``std``, an unknown ``mode``, a key that is
      not a PRNG key, a ``std``, ``mean`` or ``baseline`` not of shape ``[d]``, a
      negative ``std``, NaN inputs), or a ``predict_fn`` that does not return one finite row per input.
  """
  _check_common(num_samples, kernel_width, ridge, batch_size)
  _checks.require_key(key)
  x = np.asarray(x, np.float32)
  errors.require(x.ndim == 1, f"lime_tabular explains one input of shape [d], got shape "
                 f"{x.shape}; use lime_image for images")
  _checks.require_finite(x, "x")
  d = x.shape[0]
  if mode == "sample":
    errors.require(std is not None, "mode='sample' needs the train split's std (std=...), "
                   "e.g. x_train.std(axis=0); or use mode='mask'")
    errors.require(center in ("instance", "mean"),
                   f"center must be 'instance' or 'mean', got {center!r}")
    errors.require(center == "instance" or mean is not None,
                   "center='mean' needs the train split's mean (mean=...)")
    scale = _checks.broadcast(std, (d,), "std", "the input's")
    errors.require((scale >= 0).all(), "std must be >= 0 (standard deviations), got "
                   f"{scale.min():g} for feature {int(np.argmin(scale))}")
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    c = x if center == "instance" else _checks.broadcast(mean, (d,), "mean", "the input's")
    e = np.asarray(jax.random.normal(key, (num_samples - 1, d), jnp.float32))
    inputs = np.concatenate([x[None], c + scale * e]).astype(np.float32)
    features = (inputs - x) / scale
    distance = np.linalg.norm(features.astype(np.float64), axis=1)
    width = kernel_width or 0.75 * math.sqrt(d)
  elif mode == "mask":
    masks = np.asarray(jax.random.bernoulli(key, 0.5, (num_samples - 1, d)))
    masks = np.concatenate([np.ones((1, d), bool), masks])
    base = _checks.broadcast(baseline, (d,), "baseline", "the input's")
    inputs = np.where(masks, x, base).astype(np.float32)
    features = masks.astype(np.float64)
    distance = _mask_distance(features)
    width = kernel_width or MASK_KERNEL_WIDTH
  else:
    raise errors.JdlError(f"mode must be 'sample' or 'mask', got {mode!r}")
  beta, intercept, r2, t, pred = _explain(predict_fn, jnp.asarray(inputs), features, distance,
                                          width, target, ridge, batch_size)
  return LimeExplanation(beta, intercept, r2, t, pred, beta)


def grid_cells(height: int, width: int, cell_size: int | tuple[int, int]) -> np.ndarray:
  """``[height, width]`` the grid-cell index of each pixel (row-major cells)."""
  sizes = (cell_size, cell_size) if isinstance(cell_size, (int, np.integer)) else cell_size
  ok = (isinstance(sizes, (tuple, list)) and len(sizes) == 2
        and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 1
                for c in sizes))
  errors.require(ok, f"cell_size must be a positive integer or a pair (height, width) of "
                 f"them, got {cell_size!r}")
  ch, cw = sizes
  gw = -(-width // cw)
  rows, cols = np.arange(height) // ch, np.arange(width) // cw
  return rows[:, None] * gw + cols[None, :]


def lime_image(predict_fn: PredictFn, image: np.ndarray, *, key: jax.Array,
               cell_size: int | tuple[int, int] = 4, baseline: float | np.ndarray = 0.0,
               num_samples: int = 1000, kernel_width: float | None = MASK_KERNEL_WIDTH,
               ridge: float = 1.0,
               target: int | None = None, batch_size: int = 256) -> LimeExplanation:
  """LIME for one image, with the cells of a regular grid as superpixels.

  Each perturbation keeps a random half of the cells (``Bernoulli(0.5)`` each)
  and sets the others to ``baseline``; the surrogate is fit on the binary masks,
  weighted by ``exp(-D^2 / kernel_width^2)`` with ``D`` the cosine distance of
  the mask from the all-ones mask (the distance and width 0.25 of the LIME
  package's image explainer, with the paper's kernel: see the module's note).

  Args:
    predict_fn: ``[m, height, width(, channels)] -> [m, k]`` model scores, e.g.
      class probabilities.
    image: ``[height, width]`` or ``[height, width, channels]``.
    key: a PRNG key.
    cell_size: the cells' side in pixels (an int, or ``(rows, cols)``); edge
      cells may be smaller.
    baseline: the value of hidden cells: a scalar or an array like ``image`` (for
      a normalised image, the normalised black value).
    num_samples: perturbations, the image itself included.
    kernel_width: sigma of the proximity kernel (``None``: the default, 0.25).
    ridge: the ridge penalty, per unit of average sample weight
      (:func:`weighted_ridge`).
    target: the output column to explain; default: the predicted one.
    batch_size: the largest batch passed to ``predict_fn``.

  Returns:
    A :class:`LimeExplanation` with ``weights: [cells_h, cells_w]`` and
    ``attribution: [height, width]``.

  Raises:
    JdlError: bad arguments (a key that is not a PRNG key, a ``baseline`` that does
      not broadcast to the image, a NaN pixel), or a ``predict_fn`` that does not
      return one finite row per input.
  """
  _check_common(num_samples, kernel_width, ridge, batch_size)
  _checks.require_key(key)
  image = np.asarray(image, np.float32)
  errors.require(image.ndim in (2, 3), f"lime_image explains one image [height, width] or "
                 f"[height, width, channels], got shape {image.shape}")
  _checks.require_finite(image, "image")
  base = jnp.asarray(_checks.broadcast(baseline, image.shape, "baseline", "the image's"))
  h, w = image.shape[:2]
  cells = grid_cells(h, w, cell_size)
  num_cells = int(cells.max()) + 1
  masks = np.asarray(jax.random.bernoulli(key, 0.5, (num_samples - 1, num_cells)))
  masks = np.concatenate([np.ones((1, num_cells), bool), masks])
  pixel_masks = jnp.asarray(masks)[:, cells]  # [m, h, w]
  if image.ndim == 3:
    pixel_masks = pixel_masks[..., None]
  inputs = jnp.where(pixel_masks, jnp.asarray(image), base)
  features = masks.astype(np.float64)
  width = kernel_width or MASK_KERNEL_WIDTH
  beta, intercept, r2, t, pred = _explain(predict_fn, inputs, features, _mask_distance(features),
                                          width, target, ridge, batch_size)
  grid = beta.reshape(-1, int(cells[0, -1]) + 1)  # [cells_h, cells_w]
  return LimeExplanation(grid, intercept, r2, t, pred, beta[cells])


def lime(predict_fn: PredictFn, x: np.ndarray, *, key: jax.Array, **kwargs) -> LimeExplanation:
  """LIME for one input: :func:`lime_tabular` for ``x: [d]``, else :func:`lime_image`.

  Args:
    predict_fn: the model's scores for a batch of inputs shaped like ``x``.
    x: ``[d]`` features, or an image ``[height, width(, channels)]``.
    key: a PRNG key.
    **kwargs: passed on (see the two functions).
  """
  fn = lime_tabular if np.ndim(x) == 1 else lime_image
  takes = set(inspect.signature(fn).parameters) - {"predict_fn", "x", "image", "key"}
  extra = sorted(set(kwargs) - takes)
  errors.require(not extra, f"{fn.__name__} (for an input of shape {np.shape(x)}) takes no "
                 f"{', '.join(extra)}; its options: {', '.join(sorted(takes))}")
  return fn(predict_fn, x, key=key, **kwargs)
