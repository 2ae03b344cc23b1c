"""PNG plots of the curves in ``metrics.jsonl``: one figure per quantity."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

_SKIP = {"step", "epoch", "split", "epoch_seconds", "samples_per_sec", "compile_seconds"}


def read_metrics(path: str | Path) -> list[dict]:
  path = Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
  return written
