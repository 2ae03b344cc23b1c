"""PNG overlays of attributions on images (matplotlib, Agg, no global pyplot state)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jdl import _plotting
from jdl import errors
from jdl.explain import _checks

# The most pixels a PNG may have (8192 x 8192; its RGBA buffer is 256 MiB): a dpi
# of 1e6 asked Agg for ~9e12 pixels, a MemoryError.
MAX_PIXELS = 2 ** 26


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


def _check_size(figsize: Any, dpi: Any, what: str) -> tuple[float, float]:
  """``figsize`` (inches, ``(width, height)``) as floats, checked with ``dpi``.

  Args:
    figsize: the figure's size in inches.
    dpi: dots per inch.
    what: how the caller's argument gave ``figsize``, for the messages (e.g.
      ``"figsize"``, ``"panel_size"``).

  Raises:
    JdlError: ``figsize`` is not two positive finite numbers, ``dpi`` not a positive
      finite number, or the PNG would have a side under 1 pixel or more than
      :data:`MAX_PIXELS` pixels.
  """
  _checks.require_number(dpi, "dpi", positive=True)
  errors.require(isinstance(figsize, (tuple, list, np.ndarray)) and len(figsize) == 2,
                 f"{what} must be (width, height) in inches, got {figsize!r}")
  for i, side in enumerate(figsize):
    _checks.require_number(side, f"{what}[{i}]" if what == "figsize" else what, positive=True)
  width, height = (float(side) * float(dpi) for side in figsize)
  size = f"the PNG would be {width:.4g} x {height:.4g} pixels ({what} * dpi)"
  errors.require(min(width, height) >= 1,
                 f"{size}, under 1 pixel a side; give a larger {what} or dpi")
  errors.require(width * height <= MAX_PIXELS,
                 f"{size}, more than {MAX_PIXELS}; give a smaller {what} or dpi")
  return float(figsize[0]), float(figsize[1])


def _check_alpha(alpha: Any) -> None:
  """Requires an opacity: a real number in ``[0, 1]`` (not NaN, not a bool)."""
  ok = (isinstance(alpha, (int, float, np.integer, np.floating))
        and not isinstance(alpha, (bool, np.bool_)) and 0 <= alpha <= 1)
  errors.require(ok, f"alpha must be an opacity in [0, 1], got {alpha!r}")


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
    JdlError: bad shapes, NaN or Inf values, ``alpha`` outside ``[0, 1]``, a
      ``figsize`` or ``dpi`` that is not positive or makes a PNG of more than
      :data:`MAX_PIXELS` pixels, or a ``path`` that is not a writable ``.png`` file.
  """
  path = _png_path(path)
  figsize = _check_size(figsize, dpi, "figsize")
  _check_alpha(alpha)
  fig = _plotting.figure(figsize)
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
    JdlError: the lists differ in length, or are empty; ``alpha`` outside
      ``[0, 1]``; a ``panel_size`` or ``dpi`` that is not positive or makes a PNG of
      more than :data:`MAX_PIXELS` pixels; a ``path`` that is not a writable
      ``.png`` file.
  """
  path = _png_path(path)
  n = len(images)
  errors.require(n > 0 and len(attributions) == n and (titles is None or len(titles) == n),
                 f"save_overlay_grid needs as many attributions and titles as images (>= 1); "
                 f"got {n} images, {len(attributions)} attributions, "
                 f"{None if titles is None else len(titles)} titles")
  _checks.require_int(ncols, "ncols", allow_none=True)
  _checks.require_number(panel_size, "panel_size", positive=True)
  _check_alpha(alpha)
  ncols = min(ncols or n, n)
  nrows = math.ceil(n / ncols)
  fig = _plotting.figure(_check_size((ncols * panel_size, nrows * panel_size), dpi,
                                     "panel_size"))
  for i in range(n):
    _draw(fig, fig.add_subplot(nrows, ncols, i + 1), images[i], attributions[i],
          titles[i] if titles else None, alpha)
  fig.tight_layout(pad=0.3)
  return _save(fig, path, dpi)
