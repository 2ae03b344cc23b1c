"""What the experiment drivers share: arguments, data, dotted overrides, tables, output.

A driver is ``python experiments/NAME.py [--workdir DIR] [--data_dir DIR]
[--epochs N] [--tiny]``. MNIST is used when ``--data_dir`` holds its IDX files;
otherwise (and always with ``--tiny``) scikit-learn's 8x8 digits, so the drivers
run anywhere and a ``--tiny`` run takes seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import jdl
from jdl import data

RESULTS = Path(__file__).resolve().parent / "results"
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def make_parser(doc: str, *, name: str, epochs: int | str) -> argparse.ArgumentParser:
  """The arguments every driver takes; ``doc`` is the driver's module docstring."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--workdir", default=f"runs/{name}",
                      help="one sub-directory per variant (jdl.fit resumes in it)")
  parser.add_argument("--data_dir", default="../shared/data/mnist",
                      help="MNIST IDX files; without them the 8x8 digits are used")
  parser.add_argument("--epochs", type=int, default=0, help=f"default {epochs}")
  parser.add_argument("--tiny", action="store_true",
                      help="digits, tiny models, 1-2 epochs: a smoke run of seconds")
  parser.add_argument("--out", default="",
                      help=f"plots and tables; default experiments/results/{name} "
                           "(WORKDIR/results with --tiny)")
  return parser


def out_dir(args: argparse.Namespace, name: str) -> Path:
  if args.out:
    path = Path(args.out)
  elif args.tiny:
    path = Path(args.workdir) / "results"
  else:
    path = RESULTS / name
  path.mkdir(parents=True, exist_ok=True)
  return path


def has_mnist(data_dir: str | Path) -> bool:
  d = Path(data_dir)
  return all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in _MNIST_FILES)


def load_source(args: argparse.Namespace) -> data.Dataset:
  """MNIST from ``args.data_dir`` when present and not ``--tiny``, else digits (no download)."""
  if not args.tiny and has_mnist(args.data_dir):
    return data.load_dataset("mnist", data_dir=args.data_dir, download=False)
  return data.load_dataset("digits", test_split=0.2, seed=0)


def hold_out_validation(dataset: data.Dataset, n_val: int, *, seed: int = 0) -> data.Dataset:
  """Moves ``n_val`` train examples (a seeded random choice) into an explicit validation set.

  The trainer then uses that set instead of ``validation_split``, and
  ``examples_per_class`` draws only from what is left, so a small training set
  and the validation set never share an image.
  """
  n = len(dataset.x_train)
  if not 0 < n_val < n:
    raise jdl.JdlError(f"n_val={n_val} must be in (0, {n}) for {dataset.name!r}")
  order = np.random.default_rng(seed).permutation(n)
  val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
  return dataclasses.replace(
      dataset, x_train=dataset.x_train[train], y_train=dataset.y_train[train],
      x_val=dataset.x_train[val], y_val=dataset.y_train[val])


def set_dotted(config, key: str, value: Any) -> None:
  """``set_dotted(config, "regularization.l2", 1e-4)``; a missing key is a JdlError."""
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  if leaf not in node:
    raise jdl.JdlError(f"config has no key {key!r}")
  node[leaf] = value


def apply_overrides(config, overrides: dict[str, Any]) -> None:
  for key, value in overrides.items():
    set_dotted(config, key, value)


def quiet_outputs(config) -> None:
  """No TensorBoard, no per-run plots, few checkpoints: the driver draws its own figures."""
  config.tensorboard = False
  config.plots = False
  config.keep_checkpoints = 1


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table; floats are printed as given (format them first)."""
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def write_results(out: Path, table: str, records: Any) -> None:
  """Writes ``table.md`` and ``results.json`` (the numbers behind table and plots: a
  dict, or a list of per-run records)."""
  (out / "table.md").write_text(table + "\n")
  (out / "results.json").write_text(json.dumps(records, indent=1, default=float) + "\n")


def pct(x: float | None) -> str:
  return "n/a" if x is None else f"{x:.2%}"


def save_figure(fig, axes, path: Path, title: str, *, legend_axes=None,
                legend_kwargs=None) -> None:
  """Grids every axis, adds legends (to ``legend_axes``, default all), saves, closes."""
  import matplotlib.pyplot as plt
  for ax in axes:
    ax.grid(True, which="both", alpha=0.3)
  for ax in axes if legend_axes is None else legend_axes:
    ax.legend(**(legend_kwargs or {"fontsize": 8}))
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def generative_config(name: str, args: argparse.Namespace, *,
                      tiny: dict[str, Any] | None = None):
  """Config ``name`` for a generative driver: MNIST from ``--data_dir``, else digits.

  With ``--tiny`` (or without the MNIST files) the dataset is scikit-learn's 8x8
  digits; ``tiny`` overrides (dotted keys: small models, 1-3 epochs) apply with
  ``--tiny`` only. ``--epochs`` wins over both.
  """
  config = jdl.load_config(name)
  quiet_outputs(config)
  if args.tiny or not has_mnist(args.data_dir):
    config.dataset = "digits"
  else:
    config.data_dir = str(args.data_dir)
    config.download = False
  if args.tiny:
    apply_overrides(config, tiny or {})
  if args.epochs:
    config.num_epochs = args.epochs
  return config



def training_seconds(workdir: str | Path) -> float:
  """Compile plus epoch seconds of a run, from its metrics.jsonl (resumed runs too).

  The wall time of a driver's ``jdl.fit`` call is near zero when the run had already
  finished in its workdir; the run's own log keeps what training took.
  """
  total = 0.0
  path = Path(workdir) / "metrics.jsonl"
  for line in path.read_text().splitlines() if path.exists() else []:
    record = json.loads(line)
    if record.get("split") == "train":
      total += record.get("epoch_seconds", 0.0) + record.get("compile_seconds", 0.0)
  return total
