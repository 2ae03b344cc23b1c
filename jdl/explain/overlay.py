"""PNG overlays of attributions on images (matplotlib, Agg, no global pyplot state)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from jdl import errors
from jdl.explain import _checks


def _to_2d(a: np.ndarray, what: str) -> np.ndarray:
  """``[h, w]`` from ``[h, w]`` or ``[h, w, c]`` (channels summed, as attributions add)."""
  a = np.asarray(a, np.float64)
  if a.ndim == 3:
    a = a.sum(axis=-1)
  errors.require(a.ndim == 2, f"{what} must have shape [height, width] or [height, width, "
                 f"channels], got {a.shape}")
  return a


def _grey(image: np.ndarray) -> np.ndarray:
  img = np.asarray(image, np.float64)
  if img.ndim == 3:
    img = img.mean(axis=-1)
  return _to_2d(img, "image")


def _draw(fig, ax, image, attribution, title, alpha) -> None:
  grey = _grey(image)
  _checks.require_finite(grey, "image")  # Else a blank or misleading picture.
  lo, hi = float(grey.min()), float(grey.max())
  # Under a heat map, the image is dimmed to the lower half of the grey range.
  top = hi if attribution is None else hi + (hi - lo or 1.0)
  ax.imshow(grey, cmap="gray", vmin=lo, vmax=top, interpolation="nearest")
  if attribution is not None:
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    a = _to_2d(attribution, "attribution")
    _checks.require_finite(a, "attribution")
    errors.require(a.shape == grey.shape, f"attribution of shape {a.shape} does not match "
                   f"the image's {grey.shape}")
    # The colour scale ends at the 99th percentile of |a| (larger values saturate), so
    # that a few extreme pixels do not wash out the rest.
    peak = float(np.percentile(np.abs(a), 99)) or float(np.abs(a).max()) or 1.0
    signed = a.min() < 0  # Signed: a diverging map centred on zero.
    cmap = matplotlib.colormaps["bwr" if signed else "hot"]
    norm = Normalize(-peak if signed else 0.0, peak)
    rgba = cmap(norm(a))
    rgba[..., 3] = alpha * np.sqrt(np.minimum(np.abs(a) / peak, 1.0))  # Opaque where large.
    ax.imshow(rgba, interpolation="nearest")
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, fraction=0.046, pad=0.04)
  if title:
    ax.set_title(title, fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])


def _figure(figsize):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig


def _png_path(path: str | Path) -> Path:
  """``path`` as a :class:`Path`, checked before drawing: a ``.png`` file to write.

  Raises:
    JdlError: not a ``.png`` path, a directory, or under a file.
  """
  errors.require(isinstance(path, (str, os.PathLike)),
                 f"path must be a str or a Path, got {type(path).__name__}")
  path = Path(path)
  errors.require(path.suffix.lower() == ".png",
                 f"path must name a .png file (overlays are PNG images), got {str(path)!r}")
  errors.require(not path.is_dir(), f"path {str(path)!r} is a directory, not a .png file")
  blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
  errors.require(blocker is None,
                 f"path {str(path)!r}: {str(blocker)!r} is a file, not a folder")
  return path


def _save(fig, path: Path, dpi: int) -> Path:
  """Writes ``fig`` to ``path`` as a PNG, parent folders created; OS errors are JdlErrors."""
  _checks.require_number(dpi, "dpi", positive=True)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    errors.require(os.access(path.parent, os.W_OK),
                   f"path {str(path)!r}: its folder is not writable")
    fig.savefig(path, dpi=dpi, format="png")
  except OSError as e:
    raise errors.JdlError(f"path {str(path)!r}: cannot write it ({e.strerror or e})") from None
  return path


def save_overlay(image: np.ndarray, attribution: np.ndarray | None, path: str | Path, *,
                 title: str | None = None, alpha: float = 0.9,
                 figsize: tuple[float, float] = (3.0, 3.0), dpi: int = 100) -> Path:
  """Writes ``image`` in grey with ``attribution`` as a heat map and a colorbar.

  The image is dimmed to dark greys; signed attributions get a blue-white-red map
  centred on zero, non-negative ones a black-red-yellow map; the colour scale ends
  at the 99th percentile of ``|attribution|``.

  Args:
    image: ``[height, width]`` or ``[height, width, channels]`` (shown as the
      channel mean, in grey).
    attribution: shaped like ``image`` (channels are summed) or ``None`` (the
      image alone).
    path: the ``.png`` file to write (parent folders are created).
    title: a title over the panel.
    alpha: the heat map's opacity where ``|attribution|`` is largest (it fades as
      ``sqrt(|attribution| / peak)``, so small attributions let the image through).
    figsize: inches; the PNG is ``figsize * dpi`` pixels.
    dpi: dots per inch.

  Returns:
    The path written.

  Raises:
    JdlError: bad shapes, NaN or Inf values, or a ``path`` that is not a writable
      ``.png`` file.
  """
  path = _png_path(path)
  fig = _figure(figsize)
  _draw(fig, fig.add_subplot(1, 1, 1), image, attribution, title, alpha)
  return _save(fig, path, dpi)


def save_overlay_grid(images: Sequence[np.ndarray], attributions: Sequence[np.ndarray | None],
                      path: str | Path, *, titles: Sequence[str] | None = None,
                      ncols: int | None = None, alpha: float = 0.9,
                      panel_size: float = 2.0, dpi: int = 100) -> Path:
  """Writes a grid of overlays, one panel per ``(images[i], attributions[i])``.

  Args:
    images: the panels' images (see :func:`save_overlay`).
    attributions: one per image, or ``None`` for the image alone.
    path: the ``.png`` file to write (parent folders are created).
    titles: one per panel.
    ncols: panels per row (default: all in one row).
    alpha: the heat maps' opacity.
    panel_size: inches per panel side; the PNG is ``(ncols * panel_size * dpi,
      nrows * panel_size * dpi)`` pixels.
    dpi: dots per inch.

  Returns:
    The path written.

  Raises:
    JdlError: the lists differ in length, or are empty; a ``path`` that is not a
      writable ``.png`` file.
  """
  path = _png_path(path)
  n = len(images)
  errors.require(n > 0 and len(attributions) == n and (titles is None or len(titles) == n),
                 f"save_overlay_grid needs as many attributions and titles as images (>= 1); "
                 f"got {n} images, {len(attributions)} attributions, "
                 f"{None if titles is None else len(titles)} titles")
  _checks.require_int(ncols, "ncols", allow_none=True)
  ncols = min(ncols or n, n)
  nrows = math.ceil(n / ncols)
  fig = _figure((ncols * panel_size, nrows * panel_size))
  for i in range(n):
    _draw(fig, fig.add_subplot(nrows, ncols, i + 1), images[i], attributions[i],
          titles[i] if titles else None, alpha)
  fig.tight_layout(pad=0.3)
  return _save(fig, path, dpi)
