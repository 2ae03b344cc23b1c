"""Overfitting: a large MLP on 1,000 MNIST images, without and with four regularisers.

Trains configs/overfitting.py (784-1024-1024-10, Adam) on 100 training images per
class with no regularisation, L2, dropout, early stopping and data augmentation;
5,000 other training images are the validation set and the full test set the
judge. Writes curves.png (train and validation accuracy and loss of every
variant) and a table: final train / validation / test accuracy and the train-val
gap (all measured on the final state in inference mode; with early stopping that
is the restored best epoch).

Usage:  python experiments/overfitting.py --data_dir ../shared/data/mnist [--epochs 50] [--tiny]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jdl  # noqa: E402

NAME = "overfitting"
EPOCHS = 50
VAL_SIZE = {"mnist": 5000, "digits": 300}  # Held out of the train split, before the 1,000.
# Variant -> config overrides (dotted keys). A variant whose top-level section is not
# in the config (e.g. `augment` before that section exists) is reported "pending".
L2 = {"regularization.l2": 2e-4}  # Kernels (and embeddings), Keras semantics.
AUGMENT = {"augment.width_shift": 0.1, "augment.height_shift": 0.1,  # Fractions of the image.
           "augment.rotation": 10.0}  # Degrees.
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "L2": L2,
    "dropout 0.5": {"model.dropout_rate": 0.5},
    "early stopping": {"early_stopping.enabled": True},
    "augmentation": AUGMENT,
}
TINY_VARIANTS = ("none", "early stopping")


def pending(config, overrides: dict[str, Any]) -> bool:
  """Whether a variant needs a config section this checkout does not have yet."""
  return any(key.split(".")[0] not in config for key in overrides)


def run_variant(name: str, config, dataset, args) -> dict:
  workdir = Path(args.workdir) / name.split()[0].lower()
  result = _common.fit(config, workdir, dataset=dataset, quiet=True)
  fitted = time.perf_counter()
  trainer = result.trainer
  train = trainer.evaluate_split(trainer.data.train)["accuracy"]
  val = trainer.evaluate_split(trainer.data.val)["accuracy"]
  seconds = _common.variant_seconds(workdir, fitted)
  h = result.history
  record = {
      "train_accuracy": train, "val_accuracy": val, "gap": train - val,
      "test_accuracy": result.test_metrics.get("accuracy"), "epochs_run": len(h.get("loss", [])),
      "seconds": seconds, "history": {k: h.get(k, []) for k in
                                      ("loss", "accuracy", "val_loss", "val_accuracy")},
  }
  print(f"{name}: train {train:.2%}, val {val:.2%}, test {_common.pct(record['test_accuracy'])}"
        f" after {record['epochs_run']} epochs ({seconds:.0f} s)", flush=True)
  return record


def plot(records: dict[str, dict], path: Path, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for (name, r), color in zip(records.items(), colors):
    h = r["history"]
    epochs = range(1, len(h["loss"]) + 1)
    for ax, key in zip(axes, ("accuracy", "loss")):
      ax.plot(epochs, h[key], "-", color=color, label=f"{name} train")
      ax.plot(epochs, h[f"val_{key}"], "--", color=color, label=f"{name} val")
  axes[0].set(xlabel="epoch", ylabel="accuracy", title="accuracy (solid: train, dashed: val)",
              ylim=(0.5, 1.005))
  axes[1].set(xlabel="epoch", ylabel="loss", yscale="log",
              title="loss (train: running mean in training mode)")
  _common.save_figure(fig, axes, path, title, legend_axes=axes[1:],
                      legend_kwargs={"fontsize": 7, "ncol": 2})


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
  args = _common.make_parser(__doc__, name=NAME, epochs=EPOCHS).parse_args(argv)
  epochs = args.epochs or (3 if args.tiny else EPOCHS)
  source = _common.load_source(args)
  dataset = _common.hold_out_validation(source, VAL_SIZE.get(source.name, 300))
  out = _common.out_dir(args, NAME)
  records, rows = {}, []
  for name, overrides in VARIANTS.items():
    config = jdl.load_config(NAME)
    _common.quiet_outputs(config)
    config.num_epochs = epochs
    if args.tiny:
      config.model.hidden = (32, 32)
    if pending(config, overrides):
      rows.append((name, "pending", "", "", "", "", ""))
      print(f"{name}: pending (config has no {next(iter(overrides)).split('.')[0]!r} section)")
      continue
    if args.tiny and name not in TINY_VARIANTS:
      continue
    _common.apply_overrides(config, overrides)
    r = records[name] = run_variant(name, config, dataset, args)
    rows.append((name, f"{r['epochs_run']}", _common.pct(r["train_accuracy"]),
                 _common.pct(r["val_accuracy"]), f"{100 * r['gap']:.2f}",
                 f"**{_common.pct(r['test_accuracy'])}**", f"{r['seconds']:.0f} s"))
  table = _common.markdown_table(
      ("regularisation", "epochs", "train acc.", "val acc.", "train-val gap (points)",
       "test acc.", "time"), rows)
  print(f"\n{dataset.name}, 100 images per class, up to {epochs} epochs:\n{table}")
  plot(records, out / "curves.png",
       f"MLP 1024-1024 on 100 {dataset.name} images per class: train vs validation")
  _common.write_results(out, table, {"dataset": dataset.name, "epochs": epochs,
                                     "pending": [r[0] for r in rows if r[1] == "pending"],
                                     **records})
  return records


if __name__ == "__main__":
  _common.run(main, "overfitting.py")
