"""Batch norm: convergence of a deep MLP with and without it, at a low and a high learning rate.

Trains configs/batchnorm.py (6 hidden ReLU layers of 256, SGD + momentum 0.9) on
1,000 MNIST images per class, with and without batch norm, at learning rates 0.005
and 0.2; 5,000 other training images are the validation set. Writes curves.png
(training loss and validation accuracy per epoch) and a table: epochs to reach a
validation accuracy, best validation accuracy and final test accuracy. A run whose
loss turns non-finite is reported as diverged, with its curves up to then.

Usage:  python experiments/batchnorm.py --data_dir ../shared/data/mnist [--epochs 15] [--tiny]
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jdl  # noqa: E402
from jdl.train.callbacks import Callback  # noqa: E402

NAME = "batchnorm"
EPOCHS = 15
LEARNING_RATES = {"low": 0.005, "high": 0.2}
TARGETS = {"mnist": (0.90, 0.94), "digits": (0.5, 0.8)}  # Validation accuracies to reach.
VAL_SIZE = {"mnist": 5000, "digits": 300}
TINY_VARIANTS = (("no BN", "low"), ("BN", "high"))


class EpochLog(Callback):
  """Keeps every epoch's logs, so a run stopped by an error still has its curves."""

  def __init__(self):
    self.logs: list[dict[str, float]] = []

  def on_epoch_end(self, trainer, epoch, logs):
    self.logs.append(dict(logs))


epochs_to = _common.epochs_to


def run_variant(name: str, bn: bool, lr: float, dataset, args, epochs: int) -> dict:
  config = jdl.load_config(NAME)
  _common.quiet_outputs(config)
  config.num_epochs = epochs
  config.model.batch_norm = bn
  config.optimizer.learning_rate = lr
  if args.tiny:
    config.model.hidden = (16,) * 3
    config.batch_size = 32
    config.examples_per_class = 0
  log = EpochLog()
  workdir = Path(args.workdir) / f"{'bn' if bn else 'nobn'}_lr{lr:g}"
  t0 = time.perf_counter()
  error, test = None, None
  try:
    result = _common.fit(config, workdir, dataset=dataset, callbacks=[log], quiet=True)
    fitted = time.perf_counter()
    history = result.history  # Whole, also when the run resumed from its workdir.
    test = result.test_metrics.get("accuracy")
    if not all(math.isfinite(v) for v in history["loss"]):
      error, test = "loss not finite", None
  except jdl.NonFiniteError as e:  # A non-finite loss or gradient stopped the run.
    error = str(e).split(". ")[0]
    history = {k: [l[k] for l in log.logs] for k in ("loss", "val_accuracy")}
  # A diverged run stopped in this call (its wall time); else the run's logged time.
  seconds = time.perf_counter() - t0 if error else _common.variant_seconds(workdir, fitted)
  record = {"batch_norm": bn, "learning_rate": lr, "test_accuracy": test, "error": error,
            "loss": list(history["loss"]), "val_accuracy": list(history["val_accuracy"]),
            "seconds": seconds}
  status = f"diverged ({error})" if error else f"test {_common.pct(test)}"
  print(f"{name}: {status} after {len(record['loss'])} epochs ({seconds:.0f} s)", flush=True)
  return record


def plot(records: dict[str, dict], path: Path, title: str) -> None:
  high = max(LEARNING_RATES.values())
  _common.plot_loss_and_val_accuracy(
      [(name, r, "-" if r["learning_rate"] == high else ":",
        "tab:blue" if r["batch_norm"] else "tab:red") for name, r in records.items()],
      path, title)


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
  args = _common.make_parser(__doc__, name=NAME, epochs=EPOCHS).parse_args(argv)
  epochs = args.epochs or (2 if args.tiny else EPOCHS)
  source = _common.load_source(args)
  dataset = _common.hold_out_validation(source, VAL_SIZE.get(source.name, 300))
  targets = TARGETS.get(dataset.name, TARGETS["digits"])
  out = _common.out_dir(args, NAME)
  records, rows = {}, []
  for level, lr in LEARNING_RATES.items():
    for bn_name, bn in (("no BN", False), ("BN", True)):
      if args.tiny and (bn_name, level) not in TINY_VARIANTS:
        continue
      name = f"{bn_name}, lr {lr:g}"
      r = records[name] = run_variant(name, bn, lr, dataset, args, epochs)
      reach = [epochs_to(r["val_accuracy"], t) for t in targets]
      missed = "never" if r["error"] else f"> {len(r['val_accuracy'])}"
      best = _common.pct(max(r["val_accuracy"])) if r["val_accuracy"] else "-"
      rows.append((name, *(str(e) if e else missed for e in reach),
                   best, "diverged" if r["error"] else _common.pct(r["test_accuracy"]),
                   f"{r['seconds']:.0f} s"))
  table = _common.markdown_table(
      ("model, learning rate", *(f"epochs to {t:.0%} val." for t in targets), "best val. acc.",
       "test acc. (last epoch)", "time"), rows)
  print(f"\n{dataset.name}, {epochs} epochs:\n{table}")
  plot(records, out / "curves.png",
       f"{dataset.name}: with and without batch norm, SGD + momentum "
       "(dotted: low lr, solid: high lr)")
  _common.write_results(out, table, {"dataset": dataset.name, "epochs": epochs, **records})
  return records


if __name__ == "__main__":
  _common.run(main, "batchnorm.py")
