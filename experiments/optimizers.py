"""Optimizers compared: SGD, momentum, Nesterov, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, Nadam.

Trains configs/optimizers.py (MLP 784-256-256-10, batch 128, 10 epochs) on 1,000
MNIST images per class once per optimizer, each at the learning rate its paper or
the common libraries use (RATES), from the same initial parameters and the same
data order; 5,000 other training images are the validation set. Writes curves.png
(training loss and validation accuracy per epoch, one curve per optimizer) and a
table: epochs to reach a validation accuracy, best validation accuracy, final
training loss, test accuracy and time.

Usage:  python experiments/optimizers.py --data_dir ../shared/data/mnist [--epochs 10] [--tiny]
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jdl  # noqa: E402

NAME = "optimizers"
EPOCHS = 10
# optimizer.* settings of each run, with where the learning rate comes from.
RATES: dict[str, tuple[dict[str, Any], str]] = {
    "sgd": ({"learning_rate": 0.1}, "common"),
    "momentum": ({"learning_rate": 0.01, "momentum": 0.9}, "Sutskever et al. 2013"),
    "nesterov": ({"learning_rate": 0.01, "momentum": 0.9}, "Sutskever et al. 2013"),
    "adagrad": ({"learning_rate": 0.01}, "PyTorch's default"),
    "rmsprop": ({"learning_rate": 1e-3, "rho": 0.9}, "Hinton's lecture 6e"),
    "adadelta": ({"learning_rate": 1.0, "rho": 0.95, "eps": 1e-6}, "Zeiler 2012"),
    "adam": ({"learning_rate": 1e-3}, "Kingma & Ba 2015"),
    "adamw": ({"learning_rate": 1e-3, "weight_decay": 1e-4}, "optax's default decay"),
    "adamax": ({"learning_rate": 2e-3}, "Kingma & Ba 2015"),
    "nadam": ({"learning_rate": 2e-3}, "Dozat 2016"),
}
TARGETS = {"mnist": (0.94, 0.96), "digits": (0.5, 0.8)}  # Validation accuracies to reach.
VAL_SIZE = {"mnist": 5000, "digits": 300}
TINY = ("sgd", "adadelta", "adam")


def settings(name: str) -> str:
  """``lr 0.01, momentum 0.9``: the run's optimizer settings, for the table."""
  values = RATES[name][0]
  parts = [f"lr {values['learning_rate']:g}"]
  parts += [f"{k} {v:g}" for k, v in values.items() if k != "learning_rate"]
  return ", ".join(parts)


def run_variant(name: str, dataset, args, epochs: int) -> dict:
  config = jdl.load_config(NAME)
  _common.quiet_outputs(config)
  config.num_epochs = epochs
  config.optimizer.name = name
  config.optimizer.update(RATES[name][0])
  if args.tiny:
    config.model.hidden = (16,)
    config.batch_size = 32
    config.examples_per_class = 0
  workdir = Path(args.workdir) / name
  t0 = time.perf_counter()
  error, test = None, None
  try:
    result = _common.fit(config, workdir, dataset=dataset, quiet=True)
    fitted = time.perf_counter()
    history = result.history  # Whole, also when the run resumed from its workdir.
    test = result.test_metrics.get("accuracy")
  except jdl.NonFiniteError as e:  # Reported as a result: a rate too high for it.
    error, history = str(e).split(". ")[0], {"loss": [], "val_accuracy": []}
  seconds = time.perf_counter() - t0 if error else _common.variant_seconds(workdir, fitted)
  record = {"optimizer": name, **RATES[name][0], "rate_from": RATES[name][1],
            "test_accuracy": test, "error": error, "loss": list(history["loss"]),
            "val_accuracy": list(history["val_accuracy"]), "seconds": seconds}
  status = f"diverged ({error})" if error else f"test {_common.pct(test)}"
  print(f"{name} ({settings(name)}): {status} ({seconds:.0f} s)", flush=True)
  return record


def plot(records: dict[str, dict], path: Path, title: str) -> None:
  _common.plot_loss_and_val_accuracy(  # Ten curves: tab10's colours, dashed after five.
      [(f"{name} ({settings(name)})", r, "--" if i >= 5 else "-", f"C{i}")
       for i, (name, r) in enumerate(records.items())], path, title, figsize=(13, 4.8))


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
  args = _common.make_parser(__doc__, name=NAME, epochs=EPOCHS).parse_args(argv)
  epochs = args.epochs or (2 if args.tiny else EPOCHS)
  source = _common.load_source(args)
  dataset = _common.hold_out_validation(source, VAL_SIZE.get(source.name, 300))
  targets = TARGETS.get(dataset.name, TARGETS["digits"])
  out = _common.out_dir(args, NAME)
  records, rows = {}, []
  for name in RATES:
    if args.tiny and name not in TINY:
      continue
    r = records[name] = run_variant(name, dataset, args, epochs)
    reach = [_common.epochs_to(r["val_accuracy"], t) for t in targets]
    missed = "never" if r["error"] else f"> {len(r['val_accuracy'])}"
    final_loss = r["loss"][-1] if r["loss"] else math.nan
    rows.append((name, settings(name), RATES[name][1],
                 *(str(e) if e else missed for e in reach),
                 _common.pct(max(r["val_accuracy"])) if r["val_accuracy"] else "-",
                 "-" if r["error"] else f"{final_loss:.4f}",
                 "diverged" if r["error"] else _common.pct(r["test_accuracy"]),
                 f"{r['seconds']:.0f} s"))
  table = _common.markdown_table(
      ("optimizer", "settings", "rate from", *(f"epochs to {t:.0%} val." for t in targets),
       "best val. acc.", "final train loss", "test acc. (last epoch)", "time"), rows)
  print(f"\n{dataset.name}, {epochs} epochs:\n{table}")
  plot(records, out / "curves.png",
       f"{dataset.name}: one MLP, the same initial parameters and data order, "
       "each optimizer at its usual learning rate")
  _common.write_results(out, table, {"dataset": dataset.name, "epochs": epochs, **records})
  return records


if __name__ == "__main__":
  _common.run(main, "optimizers.py")
