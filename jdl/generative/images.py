"""PNG figures of generative models: sample grids, reconstructions, latent spaces, ROC.

Images are ``[num, height, width, channels]`` arrays in ``[0, 1]`` with 1 (grey,
drawn with the ``gray`` colour map) or 3 (RGB) channels. Figures are drawn with
matplotlib's Agg backend on ``Figure`` objects that pyplot never sees, so no global
figure state is left behind; every function creates the parent folders of its path
and returns the path written.

Examples:
  >>> import numpy as np
  >>> from jdl.generative import images
  >>> images.image_grid(np.zeros((5, 28, 28, 1)), pad=2).shape
  (62, 92, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jdl import _plotting
from jdl import errors

# The value of the padding between tiles (white: it separates dark MNIST tiles).
PAD_VALUE = 1.0
# Pixel values may leave [0, 1] by this much (round-off of a sigmoid) before it is an error.
_RANGE_ATOL = 1e-4


def _images(images: np.ndarray, what: str = "images") -> np.ndarray:
  """Checks ``[N, H, W, C]`` in ``[0, 1]`` with ``C`` in (1, 3); returns float64, clipped."""
  x = np.asarray(images, np.float64)
  errors.require(x.ndim == 4 and x.shape[0] >= 1 and x.shape[-1] in (1, 3),
                 f"{what} must have shape [num, height, width, channels] with 1 or 3"
                 f" channels and num >= 1, got {x.shape}")
  errors.require(bool(np.all(np.isfinite(x))), f"{what} holds non-finite values")
  lo, hi = float(x.min()), float(x.max())
  errors.require(lo >= -_RANGE_ATOL and hi <= 1.0 + _RANGE_ATOL,
                 f"{what} must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; map tanh"
                 " outputs with (x + 1) / 2 and logits with a sigmoid")
  return np.clip(x, 0.0, 1.0)


def image_grid(images: np.ndarray, *, nrow: int | None = None, pad: int = 2) -> np.ndarray:
  """Tiles ``images`` into one image, ``nrow`` tiles per row, row-major.

  Tile ``i`` sits at row ``i // nrow``, column ``i % nrow``, with its top-left
  pixel at ``(pad + row * (H + pad), pad + col * (W + pad))``. The padding around
  and between tiles, and the empty cells of an incomplete last row, are
  :data:`PAD_VALUE`.

  Args:
    images: ``[N, H, W, C]`` in ``[0, 1]``, ``C`` in (1, 3).
    nrow: tiles per row; default ``ceil(sqrt(N))``.
    pad: pixels of padding around every tile.

  Returns:
    ``[rows * (H + pad) + pad, nrow * (W + pad) + pad, C]`` float64 with
    ``rows = ceil(N / nrow)``.

  Raises:
    JdlError: a bad shape, values outside ``[0, 1]``, ``nrow < 1`` or ``pad < 0``.
  """
  x = _images(images)
  n, h, w, c = x.shape
  if nrow is None:
    nrow = math.ceil(math.sqrt(n))
  errors.require(isinstance(nrow, (int, np.integer)) and nrow >= 1,
                 f"nrow must be a positive integer, got {nrow!r}")
  errors.require(isinstance(pad, (int, np.integer)) and pad >= 0,
                 f"pad must be a non-negative integer, got {pad!r}")
  rows = math.ceil(n / nrow)
  grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), PAD_VALUE)
  for i in range(n):
    top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
    grid[top:top + h, left:left + w] = x[i]
  return grid


def _save(fig, path: str | Path) -> Path:
  # Titles stay whole.
  return _plotting.save_png(fig, path, bbox_inches="tight", pad_inches=0.05)


def _show(ax, grid: np.ndarray) -> None:
  if grid.shape[-1] == 1:
    ax.imshow(grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  else:
    ax.imshow(grid, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def _grid_figure(grid: np.ndarray, title: str | None):
  """A figure sized to ``grid``: about 0.03 inch per pixel, 2 to 12 inches wide, but
  never under one output pixel (at 100 dpi) per grid pixel, so big grids stay legible."""
  h, w = grid.shape[:2]
  width = max(float(np.clip(w * 0.03, 2.0, 12.0)), w / 100)
  lines = title.count("\n") + 1 if title else 0
  fig = _plotting.figure((width, width * h / w + 0.3 * lines))
  ax = fig.add_subplot()
  _show(ax, grid)
  if title:
    ax.set_title(title, fontsize=9)
  return fig, ax


def save_image_grid(images: np.ndarray, path: str | Path, *, nrow: int | None = None,
                    title: str | None = None) -> Path:
  """Writes :func:`image_grid` of ``images`` as a PNG; returns ``path``.

  Raises:
    JdlError: see :func:`image_grid`.
  """
  fig, _ = _grid_figure(image_grid(images, nrow=nrow), title)
  fig.tight_layout(pad=0.2)
  return _save(fig, path)


def save_reconstructions(originals: np.ndarray, reconstructions: np.ndarray, path: str | Path,
                         *, n: int = 10, title: str | None = None) -> Path:
  """Writes the first ``n`` originals (top row) over their reconstructions (bottom).

  Args:
    originals: ``[N, H, W, C]`` inputs in ``[0, 1]``.
    reconstructions: the decoded inputs, shaped like ``originals``.
    path: the PNG file.
    n: how many pairs (at most ``N``).
    title: the figure title.

  Raises:
    JdlError: bad or different shapes, or ``n < 1``.
  """
  x = _images(originals, "originals")
  y = _images(reconstructions, "reconstructions")
  errors.require(x.shape == y.shape, f"originals and reconstructions must have the same shape,"
                 f" got {x.shape} and {y.shape}")
  errors.require(isinstance(n, (int, np.integer)) and n >= 1,
                 f"n must be a positive integer, got {n!r}")
  n = min(n, x.shape[0])
  fig, ax = _grid_figure(image_grid(np.concatenate([x[:n], y[:n]]), nrow=n), title)
  h = x.shape[1] + 2
  ax.set_yticks([1 + h / 2, 1 + h + h / 2], ["original", "reconstruction"], fontsize=7)
  ax.tick_params(length=0)
  fig.tight_layout(pad=0.2)
  return _save(fig, path)


def save_interpolation(rows: np.ndarray, path: str | Path, *, title: str | None = None) -> Path:
  """Writes ``R`` rows of ``S`` images each (e.g. decoded latent interpolations).

  Args:
    rows: ``[R, S, H, W, C]`` in ``[0, 1]``.
    path: the PNG file.
    title: the figure title.

  Raises:
    JdlError: ``rows`` is not 5-D or not valid images.
  """
  r = np.asarray(rows)
  errors.require(r.ndim == 5, "rows must have shape [rows, steps, height, width, channels],"
                 f" got {r.shape}")
  fig, _ = _grid_figure(image_grid(r.reshape((-1,) + r.shape[2:]), nrow=r.shape[1]), title)
  fig.tight_layout(pad=0.2)
  return _save(fig, path)


def save_latent_scatter(z2: np.ndarray, labels: np.ndarray, path: str | Path, *,
                        title: str | None = None) -> Path:
  """Writes a scatter plot of 2-D codes coloured by label.

  Integer labels with at most 20 distinct values are drawn as classes with a
  legend; any other labels get a continuous colour map with a colorbar.

  Args:
    z2: ``[N, 2]`` codes (e.g. a 2-D latent, or a projection of one).
    labels: ``[N]`` class labels or values.
    path: the PNG file.
    title: the figure title.

  Raises:
    JdlError: bad shapes or non-finite codes.
  """
  z = np.asarray(z2, np.float64)
  y = np.asarray(labels)
  errors.require(z.ndim == 2 and z.shape[1] == 2 and z.shape[0] >= 1,
                 f"z2 must have shape [num, 2], got {z.shape}")
  errors.require(y.shape == (z.shape[0],), f"labels must have shape ({z.shape[0]},), got"
                 f" {y.shape}")
  errors.require(bool(np.all(np.isfinite(z))), "z2 holds non-finite values")
  fig = _plotting.figure((5.5, 4.5))
  ax = fig.add_subplot()
  classes = np.unique(y)
  if np.issubdtype(y.dtype, np.integer) and len(classes) <= 20:
    import matplotlib
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for i, label in enumerate(classes):
      sel = y == label
      ax.scatter(z[sel, 0], z[sel, 1], s=4, alpha=0.7, color=cmap(i), label=str(label))
    ax.legend(title="class", markerscale=3, fontsize=7, loc="best")
  else:
    points = ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.7, c=y.astype(np.float64),
                        cmap="viridis")
    fig.colorbar(points, ax=ax)
  ax.set_xlabel("z[0]")
  ax.set_ylabel("z[1]")
  if title:
    ax.set_title(title)
  fig.tight_layout()
  return _save(fig, path)


def save_roc_curve(scores: np.ndarray, labels: np.ndarray, path: str | Path, *,
                   title: str | None = None) -> tuple[Path, float]:
  """Writes the ROC curve of anomaly scores; returns ``(path, auc)``.

  Args:
    scores: ``[N]`` anomaly scores (higher = more anomalous, e.g. a reconstruction
      error).
    labels: ``[N]`` 1 for an anomaly, 0 for a normal example; both must occur.
    path: the PNG file.
    title: the figure title.

  Returns:
    The path and the area under the curve (``sklearn.metrics.roc_auc_score``).

  Raises:
    JdlError: bad shapes, non-finite scores, labels other than 0/1, or one class only.
  """
  from sklearn.metrics import roc_auc_score
  from sklearn.metrics import roc_curve
  s = np.asarray(scores, np.float64)
  y = np.asarray(labels)
  errors.require(s.ndim == 1 and y.shape == s.shape,
                 f"scores and labels must be vectors of the same length, got {s.shape} and"
                 f" {y.shape}")
  errors.require(bool(np.all(np.isfinite(s))), "scores holds non-finite values")
  errors.require(bool(np.all((y == 0) | (y == 1))), "labels must be 0 (normal) or 1 (anomaly),"
                 f" got values {np.unique(y)[:10].tolist()}")
  errors.require(0 < int(np.sum(y == 1)) < len(y), "labels must contain both normal (0) and"
                 " anomalous (1) examples for a ROC curve")
  y = y.astype(np.int64)
  auc = float(roc_auc_score(y, s))
  fpr, tpr, _ = roc_curve(y, s)
  fig = _plotting.figure((4.5, 4.5))
  ax = fig.add_subplot()
  ax.plot(fpr, tpr, label=f"AUC = {auc:.4f}")
  ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.01)
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.grid(True, alpha=0.3)
  ax.legend(loc="lower right")
  if title:
    ax.set_title(title)
  fig.tight_layout()
  return _save(fig, path), auc


def save_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                *, xlabel: str, ylabel: str, title: str | None = None) -> Path:
  """Writes one line per named ``(xs, ys)`` curve (e.g. critic and generator losses).

  Args:
    curves: label -> ``(xs, ys)`` of equal lengths.
    path: the PNG file.
    xlabel: the x axis label.
    ylabel: the y axis label.
    title: the figure title.

  Raises:
    JdlError: no curves, or a curve whose ``xs`` and ``ys`` differ in length.
  """
  errors.require(len(curves) > 0, "curves is empty; pass at least one label -> (xs, ys)")
  fig = _plotting.figure((6.0, 4.0))
  ax = fig.add_subplot()
  for label, xy in curves.items():
    errors.require(len(xy) == 2, f"curve {label!r} must be a pair (xs, ys)")
    xs, ys = np.asarray(xy[0], np.float64), np.asarray(xy[1], np.float64)
    errors.require(xs.ndim == 1 and xs.shape == ys.shape, f"curve {label!r}: xs and ys must be"
                   f" vectors of the same length, got {xs.shape} and {ys.shape}")
    ax.plot(xs, ys, label=str(label))
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  ax.legend()
  if title:
    ax.set_title(title)
  fig.tight_layout()
  return _save(fig, path)
