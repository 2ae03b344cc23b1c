"""PNG plots of the curves in ``metrics.jsonl``: one figure per quantity, of one run or
of several side by side (``jdl compare``)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from pathlib import Path
import warnings

import numpy as np

from jdl import _plotting
from jdl.metrics import RECORD_FACTS, RECORD_TIMINGS

_SKIP = frozenset(RECORD_FACTS + RECORD_TIMINGS)
MAX_DIAGNOSTIC_LAYERS = 10  # More: their spread, and the worst of them by name.


def _save(fig, path: str | Path) -> Path:
  """Lays ``fig`` out and writes it to ``path`` (its folder made if missing)."""
  fig.tight_layout()
  return _plotting.save_png(fig, path)


def read_metrics(path: str | Path) -> list[dict]:
  """The records of ``metrics.jsonl`` (``[]`` without the file); a ``null`` value (no
  finite number) reads as NaN. A partial last line (a run killed while writing it) is
  left out; any other unreadable line is an error naming it.

  Raises:
    JdlError: a line before the last is not a JSON record.
  """
  from jdl.errors import JdlError
  path = Path(path)
  if not path.exists():
    return []
  lines = path.read_bytes().splitlines()
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      if i == len(lines) - 1:
        continue
      raise JdlError(f"{path}, line {i + 1}, is not a JSON record; fix or remove it") from None
    if isinstance(record, dict):
      records.append({k: math.nan if v is None else v for k, v in record.items()})
  return records


def plot_metrics(metrics_path: str | Path, out_dir: str | Path, *,
                 ratio_bounds: tuple[float, float] = (1e-4, 1e-2)) -> list[Path]:
  """Writes ``<quantity>.png`` (train and val against epoch) for each logged quantity,
  and ``diagnostics.png`` (:func:`plot_diagnostics`, with ``ratio_bounds``) when the
  run logged diagnostics.

  Returns:
    The paths written.
  """
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
    fig, ax = _plotting.subplots(figsize=(6, 4))
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
    written.append(_save(fig, out_dir / f"{name}.png"))
  diagnostics = plot_diagnostics(metrics_path, out_dir, ratio_bounds=ratio_bounds)
  return written + ([diagnostics] if diagnostics else [])


def plot_diagnostics(metrics_path: str | Path, out_dir: str | Path, *,
                     ratio_bounds: tuple[float, float] = (1e-4, 1e-2)) -> Path | None:
  """Writes ``diagnostics.png``: grad norm and per-layer update ratios against step.

  The ratio panel shades ``ratio_bounds`` (``diagnostics.ratio_low`` and
  ``ratio_high``: outside them for long, the loop warns). Up to
  :data:`MAX_DIAGNOSTIC_LAYERS` layers get a line each; with more, the median over
  the layers with the band between the lowest and highest ratio of each step, and
  the layers that spent the most steps outside the bounds (at most
  :data:`MAX_DIAGNOSTIC_LAYERS`) by name. Layers whose parameters never moved (ratio 0
  throughout: frozen) have no point on the log scale; the title counts them.

  Returns:
    Its path, or ``None`` when ``metrics.jsonl`` holds no ``diagnostics`` lines.
  """
  records = [r for r in read_metrics(metrics_path) if r.get("split") == "diagnostics"]
  if not records:
    return None
  low, high = ratio_bounds
  steps = [r["step"] for r in records]
  fig, (top, bottom) = _plotting.subplots(2, 1, figsize=(9, 6.5), sharex=True)
  top.plot(steps, [r.get("grad_norm", float("nan")) for r in records], marker="o", markersize=2)
  top.set_ylabel("gradient norm")
  keys = sorted({k for r in records for k in r if k.startswith("update_ratio/")})
  ratios = {k: np.array([float(r.get(k, float("nan"))) for r in records]) for k in keys}
  # Never moved (frozen): every logged ratio 0. Never finite (null: diverged) apart.
  unknown = [k for k, v in ratios.items() if not np.isfinite(v).any()]
  still = [k for k, v in ratios.items() if k not in unknown and np.nanmax(v) <= 0.0]
  moving = {k: np.where(v > 0, v, np.nan) for k, v in ratios.items()
            if k not in still and k not in unknown}
  bottom.axhspan(low, high, color="tab:green", alpha=0.08, label=f"[{low:g}, {high:g}]")
  if len(moving) > MAX_DIAGNOSTIC_LAYERS:
    table = np.stack(list(moving.values()))  # [layers, steps]
    with np.errstate(all="ignore"), warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # A step no layer logged.
      lo, mid, hi = np.nanmin(table, 0), np.nanmedian(table, 0), np.nanmax(table, 0)
    bottom.fill_between(steps, lo, hi, color="gray", alpha=0.25,
                        label=f"lowest to highest of {len(moving)} layers")
    bottom.plot(steps, mid, color="black", linewidth=1.8, label="median layer")
    outside = {k: int(np.sum((v < low) | (v > high))) for k, v in moving.items()}
    shown = [k for k in sorted(outside, key=lambda k: -outside[k]) if outside[k]]
    shown = shown[:MAX_DIAGNOSTIC_LAYERS]
  else:
    shown = list(moving)
  for key in shown:
    bottom.plot(steps, moving[key], linewidth=1.0, label=key.split("/", 1)[1])
  bottom.set_ylabel("||update|| / ||weights||")
  bottom.set_xlabel("step")
  for ax in (top, bottom):
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
  if len(moving) > MAX_DIAGNOSTIC_LAYERS:
    title = (f"update ratios: {len(moving)} layers; by name the {len(shown)} most often "
             "outside the band" if shown else
             f"update ratios: {len(moving)} layers, none outside the band")
  else:
    title = "update ratio of each layer"
  if still:
    title += f" ({len(still)} never moved: not drawn)"
  if unknown:
    title += f" ({len(unknown)} never finite: not drawn)"
  bottom.set_title(title, fontsize=9)
  # Beside the axes, not over the curves.
  bottom.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
  return _save(fig, Path(out_dir) / "diagnostics.png")


def plot_confusion(matrix, path: str | Path, title: str = "confusion matrix", *,
                   labels=None) -> Path:
  """Writes a confusion matrix (rows: true class, columns: predicted) as a PNG: each
  cell coloured by its share of its row (the class's recall on the diagonal), with
  its count written in when there are at most 20 classes.

  Args:
    matrix: ``[C, C]`` counts.
    path: the PNG to write.
    title: the figure's title.
    labels: the ``C`` class labels of the rows and columns, in order (a run trained
      on ``config.classes`` relabels them ``0..C-1``: pass those classes); default
      ``0..C-1``.

  Raises:
    JdlError: ``labels`` does not hold one label a class.
  """
  import numpy as np

  from jdl.errors import JdlError
  counts = np.asarray(matrix)
  c = counts.shape[0]
  labels = list(range(c)) if labels is None or not len(labels) else list(labels)
  if len(labels) != c:
    raise JdlError(f"plot_confusion got {len(labels)} labels for a matrix of {c} classes; "
                   "give one label a class, in the matrix's order")
  shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  size = min(max(4.0, 0.45 * c + 2.0), 14.0)
  fig, ax = _plotting.subplots(figsize=(size + 1.0, size))
  image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
  if c <= 20:
    for i in range(c):
      for j in range(c):
        ax.text(j, i, f"{counts[i, j]:,}", ha="center", va="center", fontsize=8,
                color="white" if shares[i, j] > 0.5 else "black")
  ticks = np.arange(c) if c <= 30 else np.arange(0, c, max(1, c // 15))
  names = [str(labels[t]) for t in ticks]
  ax.set_xticks(ticks, names)
  ax.set_yticks(ticks, names)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(title)
  return _save(fig, path)


def regression_fit(targets, predictions) -> list[dict[str, float]]:
  """Per output column of ``[N, k]`` targets and predictions: ``r2`` (as the run's
  ``r2`` metric scores each output: :func:`jdl.metrics.r2_columns`) and ``mae``."""
  import numpy as np

  from jdl.metrics import r2_columns
  y, p = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (targets, predictions))
  r2 = r2_columns(((y - p) ** 2).sum(axis=0), ((y - y.mean(axis=0)) ** 2).sum(axis=0))
  return [{"r2": float(a), "mae": float(b)} for a, b in zip(r2, np.abs(y - p).mean(axis=0))]


MAX_POINTS = 5000  # A scatter of more examples shows an evenly spaced 5,000 of them.


def plot_predictions(targets, predictions, path: str | Path,
                     title: str = "predictions") -> Path:
  """Writes a regression run's predicted against true values as a PNG: one panel per
  output column (at most 8), the line ``predicted = true``, and each column's R2 and
  MAE (:func:`regression_fit`, over every example) in its title."""
  import numpy as np

  y = np.asarray(targets, np.float64).reshape(len(targets), -1)
  p = np.asarray(predictions, np.float64).reshape(len(predictions), -1)
  fits = regression_fit(y, p)
  k = min(y.shape[1], 8)
  shown = np.unique(np.linspace(0, len(y) - 1, min(len(y), MAX_POINTS)).astype(np.int64))
  cols = min(k, 4)
  rows = -(-k // cols)
  fig, axes = _plotting.subplots(rows, cols, figsize=(3.6 * cols + 0.6, 3.6 * rows + 0.6),
                                 squeeze=False)
  for j, ax in enumerate(axes.flat):
    if j >= k:
      ax.set_visible(False)
      continue
    ax.scatter(y[shown, j], p[shown, j], s=6, alpha=0.5, linewidths=0)
    finite = np.concatenate([y[:, j], p[:, j]])
    finite = finite[np.isfinite(finite)]
    if finite.size:
      lo, hi = float(finite.min()), float(finite.max())
      ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", linewidth=1)
    name = f"output {j}: " if k > 1 else ""
    ax.set_title(f"{name}R2 {fits[j]['r2']:.4f}, MAE {fits[j]['mae']:.4g}", fontsize=9)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.grid(True, alpha=0.3)
  more = f" (first {k} of {y.shape[1]} outputs)" if y.shape[1] > k else ""
  sample = f"; {len(shown):,} of {len(y):,} examples shown" if len(shown) < len(y) else ""
  fig.suptitle(f"{title}{more}{sample}", fontsize=10)
  return _save(fig, path)


def _run_records(workdir: Path) -> list[dict]:
  """:func:`read_metrics` of the run in ``workdir``, which must have the file."""
  from jdl.errors import JdlError
  if not workdir.is_dir():
    raise JdlError(f"{workdir} is not a directory")
  if not (workdir / "metrics.jsonl").is_file():
    raise JdlError(f"{workdir} holds no metrics.jsonl: not a jdl run, or one that has not "
                   "finished an epoch")
  return read_metrics(workdir / "metrics.jsonl")


@dataclasses.dataclass
class RunCurves:
  """One run's curves, as :func:`read_run` reads them from its ``metrics.jsonl``.

  Attributes:
    label: the name the run goes by in plots and tables.
    curves: ``{quantity: {'train' | 'val': (epochs, values)}}``; the last line of
      each epoch wins.
    test: the run's last test line's metrics (``{}`` without one).
    epochs: the epochs its train lines reach.
    train_seconds: the sum of its epochs' ``epoch_seconds`` (training steps only).
  """
  label: str
  curves: dict[str, dict[str, tuple[list[int], list[float]]]]
  test: dict[str, float]
  epochs: int
  train_seconds: float


def read_run(workdir: str | Path, label: str | None = None) -> RunCurves:
  """The curves of the run in ``workdir``, for :func:`plot_comparison`.

  Raises:
    JdlError: no such directory, no ``metrics.jsonl`` in it, or a damaged line.
  """
  workdir = Path(workdir)
  by_epoch: dict[tuple[str, int], dict] = {}
  test: dict[str, float] = {}
  for rec in _run_records(workdir):
    split, epoch = rec.get("split"), rec.get("epoch")
    if split == "test":
      test = {k: float(v) for k, v in rec.items() if _is_value(k, v)}
    elif split in ("train", "val") and isinstance(epoch, int):
      by_epoch[(split, epoch)] = rec
  curves: dict[str, dict[str, tuple[list, list]]] = defaultdict(lambda: defaultdict(lambda: ([], [])))
  for (split, epoch), rec in sorted(by_epoch.items(), key=lambda item: item[0][1]):
    for k, v in rec.items():
      if _is_value(k, v):
        xs, ys = curves[k][split]
        xs.append(epoch)
        ys.append(float(v))
  train = [rec for (split, _), rec in by_epoch.items() if split == "train"]
  return RunCurves(
      label=label or workdir.name, curves={k: dict(v) for k, v in curves.items()}, test=test,
      epochs=max((rec["epoch"] for rec in train), default=0),
      train_seconds=sum(rec.get("epoch_seconds", 0.0) for rec in train))


def _is_value(key: str, value) -> bool:
  """Whether a record's entry is a metric's value (not a fact of the run, a timing, a
  string or a flag)."""
  return (key not in _SKIP and isinstance(value, (int, float))
          and not isinstance(value, bool))


def run_labels(workdirs: list[str | Path]) -> list[str]:
  """Names for runs side by side: each workdir's own name, lengthened by its parent
  folders where two would share one (``x/run``, ``y/run``)."""
  from collections import Counter
  paths = [Path(w).resolve() for w in workdirs]
  depth = [1] * len(paths)
  while True:
    labels = ["/".join(p.parts[-d:]) for p, d in zip(paths, depth)]
    counts = Counter(labels)
    clashing = [i for i, label in enumerate(labels)
                if counts[label] > 1 and depth[i] < len(paths[i].parts) - 1]
    if not clashing:  # (The same run given twice keeps one name.)
      return labels
    for i in clashing:
      depth[i] += 1


def comparison_quantities(runs: list[RunCurves]) -> list[str]:
  """The quantities :func:`plot_comparison` plots (``<quantity>.png`` each)."""
  return list(dict.fromkeys(k for run in runs for k in run.curves))


def plot_comparison(runs: list[RunCurves], out_dir: str | Path) -> list[Path]:
  """Writes ``<quantity>.png`` for each quantity any run logged: one colour a run,
  its validation curve solid and its training curve dashed, against epoch.

  Returns:
    The paths written.
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  colours = _plotting.colormap("tab10" if len(runs) <= 10 else "tab20")
  written = []
  for name in comparison_quantities(runs):
    fig, ax = _plotting.subplots(figsize=(7, 4.5))
    values = []
    both = any("val" in run.curves.get(name, {}) for run in runs)  # Else train alone, solid.
    for i, run in enumerate(runs):
      colour = colours(i % colours.N)
      for split, style in (("val", "-"), ("train", "--" if both else "-")):
        if split not in run.curves.get(name, {}):
          continue
        xs, ys = run.curves[name][split]
        values += ys
        ax.plot(xs, ys, style, color=colour, marker="o" if split == "val" else None,
                markersize=3, linewidth=1.6 if split == "val" or not both else 1.0,
                label=f"{run.label} ({split})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    finite = [v for v in values if math.isfinite(v)]
    if (name.endswith("loss") or name == "learning_rate") and finite and min(finite) > 0:
      ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=1 + len(runs) // 8)
    ax.set_title(f"{name}: validation solid, training dashed" if both else name)
    written.append(_save(fig, out_dir / f"{name}.png"))
  return written


def comparison_table(runs: list[RunCurves]) -> str:
  """One row a run: its epochs, training time, test metrics (its last test line: the
  state ``fit`` ended with, not necessarily the best epoch's), and the best value of
  each validation metric with its epoch (best by the metric's direction: accuracy
  up, a loss down; of tied epochs the latest; a metric of unknown direction is left
  out)."""
  from jdl.metrics import better_direction
  tests = list(dict.fromkeys(k for run in runs for k in run.test))
  vals = [k for k in dict.fromkeys(k for run in runs for k in run.curves
                                   if "val" in run.curves[k]) if better_direction(k)]
  header = ["run", "epochs", "train s", *(f"test {k}" for k in tests),
            *(f"best val {k} (epoch)" for k in vals)]
  rows = []
  for run in runs:
    row = [run.label, str(run.epochs), f"{run.train_seconds:.1f}"]
    row += [_number(run.test[k]) if k in run.test else "-" for k in tests]
    for k in vals:
      xs, ys = run.curves.get(k, {}).get("val", ([], []))
      scored = [(y, x) for x, y in zip(xs, ys) if math.isfinite(y)]
      if not scored:
        row.append("-")
        continue
      # Of tied epochs the latest, as the best checkpoint is (evaluate scores it).
      sign = 1 if better_direction(k) == "max" else -1
      y, x = max(scored, key=lambda p: (sign * p[0], p[1]))
      row.append(f"{_number(y)} ({x})")
    rows.append(row)
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths)))
                   for r in [header, *rows])


def _number(x: float) -> str:
  return f"{x:.4g}" if math.isfinite(x) else "nan"
