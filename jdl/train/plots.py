"""PNG plots of the curves in ``metrics.jsonl``: one figure per quantity."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from jdl.metrics import RECORD_FACTS, RECORD_TIMINGS

_SKIP = frozenset(RECORD_FACTS + RECORD_TIMINGS)


def read_metrics(path: str | Path) -> list[dict]:
  """The records of ``metrics.jsonl``; a ``null`` value (no finite number) reads as NaN."""
  path = Path(path)
  if not path.exists():
    return []
  return [{k: math.nan if v is None else v for k, v in json.loads(line).items()}
          for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: str | Path, out_dir: str | Path) -> list[Path]:
  """Writes ``<quantity>.png`` (train and val against epoch) for each logged quantity.

  Returns:
    The paths written.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  curves: dict[str, dict[str, tuple[list, list]]] = defaultdict(lambda: defaultdict(lambda: ([], [])))
  for rec in read_metrics(metrics_path):
    if rec.get("split") not in ("train", "val"):
      continue
    for k, v in rec.items():
      if k in _SKIP or not isinstance(v, (int, float)):
        continue
      xs, ys = curves[k][rec["split"]]
      xs.append(rec["epoch"])
      ys.append(v)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for name, by_split in curves.items():
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for split, (xs, ys) in sorted(by_split.items()):
      ax.plot(xs, ys, marker="o", markersize=3, label=split)
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    if name == "loss" or name == "learning_rate":
      if all(y > 0 for _, ys in by_split.values() for y in ys):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(name)
    fig.tight_layout()
    path = out_dir / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
  diagnostics = plot_diagnostics(metrics_path, out_dir)
  return written + ([diagnostics] if diagnostics else [])


def plot_diagnostics(metrics_path: str | Path, out_dir: str | Path) -> Path | None:
  """Writes ``diagnostics.png``: grad norm and per-layer update ratios against step.

  Returns:
    Its path, or ``None`` when ``metrics.jsonl`` holds no ``diagnostics`` lines.
  """
  records = [r for r in read_metrics(metrics_path) if r.get("split") == "diagnostics"]
  if not records:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps = [r["step"] for r in records]
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), dpi=100, sharex=True)
  top.plot(steps, [r.get("grad_norm", float("nan")) for r in records], marker="o", markersize=2)
  top.set_ylabel("gradient norm")
  layers = sorted({k for r in records for k in r if k.startswith("update_ratio/")})
  for key in layers:
    bottom.plot(steps, [r.get(key, float("nan")) for r in records], label=key.split("/", 1)[1])
  bottom.axhline(1e-3, color="gray", linestyle="--", linewidth=1, label="1e-3")
  bottom.set_ylabel("||update|| / ||weights||")
  bottom.set_xlabel("step")
  for ax in (top, bottom):
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
  bottom.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  path = Path(out_dir) / "diagnostics.png"
  fig.savefig(path)
  plt.close(fig)
  return path


def plot_confusion(matrix, path: str | Path, title: str = "confusion matrix") -> Path:
  """Writes a confusion matrix (rows: true class, columns: predicted) as a PNG: each
  cell coloured by its share of its row (the class's recall on the diagonal), with
  its count written in when there are at most 20 classes."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  counts = np.asarray(matrix)
  c = counts.shape[0]
  shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  size = min(max(4.0, 0.45 * c + 2.0), 14.0)
  fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=100)
  image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
  if c <= 20:
    for i in range(c):
      for j in range(c):
        ax.text(j, i, f"{counts[i, j]:,}", ha="center", va="center", fontsize=8,
                color="white" if shares[i, j] > 0.5 else "black")
  ticks = np.arange(c) if c <= 30 else np.arange(0, c, max(1, c // 15))
  ax.set_xticks(ticks)
  ax.set_yticks(ticks)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(title)
  fig.tight_layout()
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path
