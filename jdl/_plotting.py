"""Figures drawn off-screen, for the PNG files jdl writes.

Each is a :class:`matplotlib.figure.Figure` on its own Agg canvas, which pyplot never
sees: jdl neither calls ``matplotlib.use`` nor registers figures with pyplot, so the
process's backend (a notebook's inline one, ``plt.show()``) and its open figures are
left as they were, and a figure is freed with its last reference.
"""

from __future__ import annotations

from pathlib import Path


def figure(figsize: tuple[float, float], dpi: float = 100):
  """An empty figure of ``figsize`` inches on its own Agg canvas."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=figsize, dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float],
             dpi: float = 100, **kwargs):
  """``(figure, axes)`` as ``pyplot.subplots`` gives them, on :func:`figure`."""
  fig = figure(figsize, dpi)
  return fig, fig.subplots(nrows, ncols, **kwargs)


def colormap(name: str):
  """A registered colormap by name (``pyplot.get_cmap`` without pyplot)."""
  import matplotlib
  return matplotlib.colormaps[name]


def save_png(fig, path: str | Path, **kwargs) -> Path:
  """Writes ``fig`` to ``path`` (its folder made if missing) as PNG; returns the path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, format="png", **kwargs)
  return path
