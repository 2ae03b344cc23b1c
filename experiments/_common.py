"""What the experiment drivers share: arguments, data, dotted overrides, tables, output.

A driver is ``python experiments/NAME.py [--workdir DIR] [--data_dir DIR]
[--epochs N] [--tiny]``. A full run reads MNIST from ``--data_dir`` (without
the IDX files it is an error, not a quiet run on other data whose figures would
replace the published ones); ``--tiny`` uses scikit-learn's 8x8 digits, so a
smoke run works anywhere and takes seconds. Only a driver's full run (no
``--tiny``, ``--epochs`` or subset) writes ``experiments/results/NAME`` unless
``--out`` says otherwise (:func:`out_dir`), and a workdir holding a longer run is
refused (:func:`check_epochs`). Bad arguments and jdl's errors are one
``NAME.py: error: ...`` line and exit status 2 (:func:`run`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

import jdl
from jdl import data
from jdl.cli import ArgumentParser  # One-line argument errors, exit 2.

RESULTS = Path(__file__).resolve().parent / "results"
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def epochs_arg(raw: str) -> int:
  """``--epochs``: an integer >= 1 (0, the default, keeps the driver's own)."""
  try:
    value = int(raw)
  except ValueError:
    raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from None
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be >= 1 (0: the default), got {value}")
  return value


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
  """An argparse ``type``: an integer in ``[low, high]`` (no upper bound: ``high=None``)."""
  def parse(raw: str) -> int:
    try:
      value = int(raw)
    except ValueError:
      raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from None
    if value < low or (high is not None and value > high):
      span = f">= {low}" if high is None else f"in {low}..{high}"
      raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
    return value
  return parse


def int_list(low: int, high: int | None = None) -> Callable[[str], list[int]]:
  """An argparse ``type``: a comma list of distinct integers in ``[low, high]``."""
  one = int_in(low, high)

  def parse(raw: str) -> list[int]:
    values = [one(part.strip()) for part in raw.split(",")]
    if len(set(values)) != len(values):
      raise argparse.ArgumentTypeError(f"lists a value twice: {raw!r}")
    return values
  return parse


def run(main: Callable[[], Any], prog: str) -> None:
  """Runs a driver's ``main()`` as a command: a jdl error or a refused file write is
  one ``PROG: error: ...`` line and exit status 2, as for ``jdl`` itself."""
  try:
    main()
  except jdl.JdlError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:
    where = f"{e.filename}: " if e.filename else ""
    print(f"{prog}: error: {where}{e.strerror or e}", file=sys.stderr)
    sys.exit(2)


def require_mnist(args: argparse.Namespace) -> None:
  """A full run is an MNIST run: without the files, one error (not a quiet digits run
  whose figures would replace the published ones)."""
  if not args.tiny and not has_mnist(args.data_dir):
    raise jdl.JdlError(f"--data_dir {args.data_dir} holds no MNIST IDX files; give the "
                       "folder that has them, or --tiny for a smoke run on the 8x8 digits")


def make_parser(doc: str, *, name: str, epochs: int | str,
                out_help: str | None = None) -> argparse.ArgumentParser:
  """The arguments every driver takes; ``doc`` is the driver's module docstring."""
  parser = ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--workdir", default=f"runs/{name}",
                      help="one sub-directory per variant (jdl.fit resumes in it)")
  parser.add_argument("--data_dir", default="../shared/data/mnist",
                      help="the MNIST IDX files (not read with --tiny)")
  parser.add_argument("--epochs", type=epochs_arg, default=0, help=f"default {epochs}")
  # An --epochs equal to the full run's (one count for all variants) is the full run.
  parser.set_defaults(full_epochs=epochs if isinstance(epochs, int) else None)
  parser.add_argument("--tiny", action="store_true",
                      help="digits, tiny models, a few epochs: a smoke run of about a minute or less")
  parser.add_argument("--out", default="",
                      help=out_help or f"plots and tables; default experiments/results/{name} "
                                       "(WORKDIR/results with --tiny, --epochs or a subset)")
  return parser


def out_dir(args: argparse.Namespace, name: str, *, partial: bool = False) -> Path:
  """Where a run's figures and tables go: ``--out``; else, for the driver's full run,
  ``experiments/results/NAME`` (the published figures); else ``WORKDIR/results``.

  A run is partial with ``--tiny``, an ``--epochs`` other than the full run's, or
  ``partial`` (a subset of the variants): it must not replace the published table
  with a shorter one.
  """
  epochs = getattr(args, "epochs", 0)
  if args.out:
    path = Path(args.out)
  elif args.tiny or partial or (epochs and epochs != getattr(args, "full_epochs", None)):
    path = Path(args.workdir) / "results"
    if not args.tiny:
      print(f"a partial run (--epochs, a subset or another setting): figures and tables go "
            f"to {path}, not "
            f"experiments/results/{name} (--out to choose)", file=sys.stderr)
  else:
    path = RESULTS / name
  path.mkdir(parents=True, exist_ok=True)  # Checked before any training (OSError: run()).
  return path


def fit(config, workdir, **kwargs) -> jdl.FitResult:
  """``jdl.fit``, refusing a finished run of more epochs than ``config.num_epochs``
  (:func:`check_epochs`)."""
  return check_epochs(jdl.fit(config, workdir, **kwargs), config, workdir)


def check_epochs(result: jdl.FitResult, config, workdir) -> jdl.FitResult:
  """``result``, unless its run trained more epochs than ``config.num_epochs``.

  jdl reuses such a run as it is ("nothing is undone"); a driver would then label
  the longer run's figures with the shorter count.

  Raises:
    JdlError: the workdir's run trained more epochs than asked.
  """
  trained = len(result.history.get("loss", ()))
  if trained > int(config.num_epochs):
    raise jdl.JdlError(f"{workdir} holds a run of {trained} epochs, more than the "
                       f"{config.num_epochs} asked for; its figures would be labelled "
                       f"{config.num_epochs}: give another --workdir, or ask for {trained} "
                       "epochs")
  return result


def tiny_digits(config) -> None:
  """Turns an MNIST CNN config into ``--tiny``'s: the 8x8 digits (embedded, no
  download), a narrow network, a few epochs."""
  config.dataset, config.data_dir, config.test_split = "digits", "", 0.2
  config.model.features, config.model.dense = (8, 16), (32,)
  config.batch_size, config.num_epochs = 32, 4
  config.optimizer.learning_rate = 3e-3
  config.tensorboard = False


def has_mnist(data_dir: str | Path) -> bool:
  d = Path(data_dir)
  return all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in _MNIST_FILES)


def load_source(args: argparse.Namespace) -> data.Dataset:
  """MNIST from ``args.data_dir``, or digits with ``--tiny`` (no download).

  Raises:
    JdlError: a full run without the MNIST files.
  """
  require_mnist(args)
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


def epochs_to(values: list[float], target: float) -> int | None:
  """The first epoch (1-based) whose value is at least ``target``; None if none."""
  return next((i + 1 for i, v in enumerate(values) if v >= target), None)


def plot_loss_and_val_accuracy(curves: Sequence[tuple[str, dict, str, Any]], path: Path,
                               title: str, *, figsize=(13, 4.5)) -> None:
  """Training loss (log scale) and validation accuracy per epoch, side by side.

  ``curves``: ``(label, record, line style, colour)``, the record with per-epoch
  ``loss`` and ``val_accuracy`` lists (a diverged run's up to where it stopped).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=figsize)
  for label, r, style, color in curves:
    epochs = range(1, len(r["loss"]) + 1)
    axes[0].plot(epochs, r["loss"], style, marker=".", color=color, label=label)
    axes[1].plot(epochs, r["val_accuracy"], style, marker=".", color=color, label=label)
  axes[0].set(xlabel="epoch", ylabel="training loss", yscale="log",
              title="training loss (running mean over the epoch)")
  axes[1].set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
  save_figure(fig, axes, path, title)


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
  """Config ``name`` for a generative driver: MNIST from ``--data_dir``, or digits.

  With ``--tiny`` the dataset is scikit-learn's 8x8 digits and the ``tiny``
  overrides (dotted keys: small models, 1-3 epochs) apply. ``--epochs`` wins over
  both. A full run without the MNIST files is an error.
  """
  require_mnist(args)
  config = jdl.load_config(name)
  quiet_outputs(config)
  if args.tiny:
    config.dataset = "digits"
  else:
    config.data_dir = str(args.data_dir)
    config.download = False
  if args.tiny:
    apply_overrides(config, tiny or {})
  if args.epochs:
    config.num_epochs = args.epochs
  return config



def variant_seconds(workdir: str | Path, fitted: float) -> float:
  """A variant's time: its training (from its log, so a re-run over a finished run
  does not report the reload) plus the analysis since ``fitted`` (perf_counter)."""
  return training_seconds(workdir) + time.perf_counter() - fitted


def train_records(workdir: str | Path) -> list[dict]:
  """A run's per-epoch train lines of metrics.jsonl, in epoch order (resumed runs too).

  The wall time of a driver's ``jdl.fit`` call is near zero when the run had already
  finished in its workdir; the run's own log keeps what training took.
  """
  path = Path(workdir) / "metrics.jsonl"
  records = [json.loads(line) for line in
             (path.read_text().splitlines() if path.exists() else [])]
  return [r for r in records if r.get("split") == "train"]


def epoch_seconds(workdir: str | Path) -> float:
  """The seconds of a run's epochs (compilation left out), from its log."""
  return sum(r.get("epoch_seconds", 0.0) for r in train_records(workdir))


def training_seconds(workdir: str | Path) -> float:
  """Compile plus epoch seconds of a run, from its log (:func:`train_records`)."""
  return sum(r.get("epoch_seconds", 0.0) + r.get("compile_seconds", 0.0)
             for r in train_records(workdir))
