"""Sample-quality metrics of generative models: Inception Score and Frechet distance.

Host-side numpy (float64) on arrays that a classifier or a feature extractor has
already produced: class probabilities for :func:`inception_score`, features for
:func:`frechet_distance`. Which network produces them (an MNIST classifier, an
Inception net) is the caller's choice, and numbers are comparable only between
runs that used the same one.

Examples:
  >>> import numpy as np
  >>> from jdl.generative import evaluation
  >>> probs = np.eye(4)[np.arange(8) % 4]  # Confident and all classes equally often.
  >>> round(evaluation.inception_score(probs, splits=2)[0], 6)
  4.0
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
from scipy.special import xlogy

from jdl import errors

# Rows of ``probs`` must sum to 1 within this (float32 softmax outputs do to ~1e-6).
_ROW_SUM_ATOL = 1e-3
# Added to both covariances' diagonals when the plain matrix square root fails.
_SQRTM_EPS = 1e-6
# An imaginary part of ``sqrtm`` below this (relative to the trace scale) is round-off.
_IMAG_RTOL = 1e-3


def inception_score(probs: np.ndarray, *, splits: int = 10) -> tuple[float, float]:
  """The Inception Score ``exp(E_x KL(p(y|x) || p(y)))``: mean and std over splits.

  ``probs`` is cut into ``splits`` consecutive chunks (``np.array_split``: sizes
  differ by at most one when ``N`` is not a multiple of ``splits``); in each chunk
  ``p(y)`` is the chunk's mean of ``p(y|x)``. The score lies in ``[1, C]``: ``C``
  for confident predictions spread evenly over the classes, 1 when every example
  gets the same prediction.

  Args:
    probs: ``[N, C]`` class probabilities ``p(y|x)`` of ``N`` generated samples.
    splits: the number of chunks (10 in Salimans et al. 2016).

  Returns:
    ``(mean, std)`` of the per-chunk scores (population std, ddof=0).

  Raises:
    JdlError: ``probs`` is not 2-D, holds non-finite or negative values, a row does
      not sum to 1, or ``N < splits``.

  References:
    Salimans et al., "Improved Techniques for Training GANs", NeurIPS 2016, sec. 4.
  """
  p = np.asarray(probs, np.float64)
  errors.require(p.ndim == 2 and p.shape[1] >= 1,
                 f"probs must have shape [num_samples, num_classes], got {p.shape}")
  errors.require(isinstance(splits, (int, np.integer)) and splits >= 1,
                 f"splits must be a positive integer, got {splits!r}")
  errors.require(p.shape[0] >= splits,
                 f"inception_score needs at least splits={splits} samples, got {p.shape[0]};"
                 " pass more samples or a smaller splits")
  errors.require(bool(np.all(np.isfinite(p))), "probs holds non-finite values")
  errors.require(bool(p.min() >= 0.0),
                 f"probs must be probabilities, got a negative value {p.min():.3g};"
                 " apply a softmax to logits first")
  sums = p.sum(axis=1)
  worst = int(np.argmax(np.abs(sums - 1.0)))
  errors.require(abs(sums[worst] - 1.0) <= _ROW_SUM_ATOL,
                 f"rows of probs must sum to 1, row {worst} sums to {sums[worst]:.6g};"
                 " apply a softmax to logits first")
  scores = []
  for chunk in np.array_split(p, splits):
    marginal = chunk.mean(axis=0, keepdims=True)
    # xlogy: 0 * log 0 = 0; where p(y|x) > 0, p(y) > 0 too.
    kl = np.sum(xlogy(chunk, chunk) - xlogy(chunk, marginal), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))


def _stats(features: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
  f = np.asarray(features, np.float64)
  errors.require(f.ndim == 2, f"{what} must have shape [num_samples, dim], got {f.shape}")
  errors.require(f.shape[0] >= 2, f"{what} needs at least 2 samples for a covariance, got"
                 f" {f.shape[0]}")
  errors.require(bool(np.all(np.isfinite(f))), f"{what} holds non-finite values")
  return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """The Frechet distance between Gaussians fitted to two sets of features (FID).

  Args:
    features_a: ``[N, D]`` features of one set (e.g. real images).
    features_b: ``[M, D]`` features of the other (e.g. generated images).

  Returns:
    See :func:`frechet_distance_from_stats`; the covariances are unbiased
    (``np.cov``).

  Raises:
    JdlError: a set is not 2-D, has fewer than 2 samples or non-finite values, or
      the feature sizes differ.
  """
  mu1, sigma1 = _stats(features_a, "features_a")
  mu2, sigma2 = _stats(features_b, "features_b")
  errors.require(mu1.shape == mu2.shape, f"features_a and features_b must have the same"
                 f" feature size, got {mu1.shape[0]} and {mu2.shape[0]}")
  return frechet_distance_from_stats(mu1, sigma1, mu2, sigma2)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float | None:
  """``Tr((sigma1 sigma2)^(1/2))``, or ``None`` when ``sqrtm`` is not usable."""
  with warnings.catch_warnings():
    # A singular product makes sqrtm warn; the result is checked below instead.
    warnings.simplefilter("ignore")
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.all(np.isfinite(root)):
    return None
  if np.iscomplexobj(root):
    scale = max(abs(np.trace(sigma1)), abs(np.trace(sigma2)), 1.0)
    if np.max(np.abs(np.diag(root).imag)) > _IMAG_RTOL * scale:
      return None
    root = root.real
  return float(np.trace(root))


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                                sigma2: np.ndarray) -> float:
  """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two Gaussians.

  ``(S1 S2)^(1/2)`` comes from ``scipy.linalg.sqrtm``; a negligible imaginary part
  (round-off) is dropped. When the product is singular and ``sqrtm`` returns
  non-finite values or a large imaginary part, it is retried with ``1e-6 * I``
  added to both covariances (a bias of order ``1e-6 * D``, as in the reference FID
  code). Round-off can make the result a tiny negative number; it is clamped to 0.

  Args:
    mu1: ``[D]`` mean of one set.
    sigma1: ``[D, D]`` its covariance.
    mu2: ``[D]`` mean of the other.
    sigma2: ``[D, D]`` its covariance.

  Returns:
    The squared Frechet (2-Wasserstein) distance, ``>= 0``.

  Raises:
    JdlError: the shapes do not fit, a value is not finite, or the square root
      fails even after the regularisation.

  References:
    Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
    Nash Equilibrium", NeurIPS 2017 (FID); Dowson & Landau 1982.
  """
  mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
  sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
  errors.require(mu1.ndim == 1 and mu1.shape == mu2.shape,
                 f"mu1 and mu2 must be vectors of the same size, got {mu1.shape} and {mu2.shape}")
  d = mu1.shape[0]
  errors.require(sigma1.shape == (d, d) and sigma2.shape == (d, d),
                 f"sigma1 and sigma2 must have shape ({d}, {d}), got {sigma1.shape} and"
                 f" {sigma2.shape}")
  for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
    errors.require(bool(np.all(np.isfinite(a))), f"{name} holds non-finite values")
  tr_root = _trace_sqrt_product(sigma1, sigma2)
  if tr_root is None:
    offset = _SQRTM_EPS * np.eye(d)
    sigma1, sigma2 = sigma1 + offset, sigma2 + offset
    tr_root = _trace_sqrt_product(sigma1, sigma2)
  errors.require(tr_root is not None, "the matrix square root of sigma1 @ sigma2 failed even"
                 f" with {_SQRTM_EPS} * I added; check that the covariances are symmetric"
                 " positive semi-definite")
  diff = mu1 - mu2
  fd = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_root)
  return max(fd, 0.0)
