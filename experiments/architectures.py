"""Architectures: MLP, the course CNN, LeNet-5, VGG, Inception and ResNet-20 on one MNIST budget.

Each network trains from its own config (mnist_mlp, mnist_cnn, lenet5_mnist,
vgg_mnist, resnet20_mnist; Inception is vgg_mnist's training with a narrow
three-stage InceptionNet) on the same 1,000 training images a class, for the
same epochs, with Adam + cosine, batch 128, seed 0; 5,000 other training images
are the validation set, and the test set is MNIST's 10,000. Writes a table
(parameters, seconds an epoch after the first, best validation accuracy, test
accuracy after the last epoch) and accuracy.png: validation accuracy
per epoch, and test accuracy against parameters and against training time.

Usage:  python experiments/architectures.py --data_dir ../shared/data/mnist [--epochs 5]
            [--variants mlp,cnn,lenet5,vgg,inception,resnet20] [--tiny]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import ml_collections

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jdl  # noqa: E402

NAME = "architectures"
EPOCHS = 5
EXAMPLES_PER_CLASS = 1000
VAL_SIZE = {"mnist": 5000, "digits": 300}

# key -> (name, config, model overrides of a full run, of a --tiny run)
# Three stages, so that the maps are 7x7 before the global average pool, as ResNet-20's
# (two: 14x14, and 49% validation accuracy after one epoch instead of 80%).
_INCEPTION = {"name": "inception", "stem_features": 32, "batch_norm": True,
              "dropout_rate": 0.3,
              "stages": (((16, 16, 24, 4, 8, 8),), ((32, 24, 48, 8, 16, 16),),
                         ((48, 32, 64, 8, 24, 24),))}
VARIANTS: dict[str, tuple[str, str, dict, dict]] = {
    "mlp": ("MLP 512-512", "mnist_mlp", {}, {"hidden": (32,)}),
    "cnn": ("CNN 32-64", "mnist_cnn", {}, {"features": (8, 16), "dense": (32,)}),
    "lenet5": ("LeNet-5", "lenet5_mnist", {}, {}),
    "vgg": ("VGG 32-32/64-64", "vgg_mnist", {}, {"stages": ((8,), (16,)), "dense": (32,)}),
    "inception": ("Inception", "vgg_mnist", _INCEPTION,
                  {**_INCEPTION, "stem_features": 8, "stages": (((4, 4, 8, 2, 4, 4),),)}),
    "resnet20": ("ResNet-20", "resnet20_mnist", {},
                 {"name": "resnet", "stage_sizes": (1, 1), "num_filters": 8}),
}


def variant_config(key: str, args, epochs: int):
  """The variant's own config on the shared budget (``--tiny``: a narrow model)."""
  _, config_name, full, tiny = VARIANTS[key]
  config = jdl.load_config(config_name)
  _common.quiet_outputs(config)
  overrides = tiny if args.tiny else full
  if overrides.get("name", config.model.name) != config.model.name:
    config.model = ml_collections.ConfigDict(dict(overrides))
  else:
    with config.model.unlocked():
      config.model.update(dict(overrides))
  config.num_epochs = epochs
  config.schedule.name = "cosine"
  config.optimizer.name, config.optimizer.learning_rate = "adam", 1e-3
  config.batch_size = 32 if args.tiny else 128
  config.examples_per_class = 0 if args.tiny else EXAMPLES_PER_CLASS
  config.checkpoint_every_steps = 0
  config.metrics = ("accuracy",)
  config.monitor, config.monitor_mode = "val_accuracy", "max"
  if args.tiny:  # LeNet-5 pads the 8x8 digits to 32x32 itself.
    config.dataset, config.data_dir = "digits", ""
  return config


def run_variant(key: str, dataset, args, epochs: int) -> dict:
  config = variant_config(key, args, epochs)
  name = VARIANTS[key][0] + (" (narrow, --tiny)" if args.tiny and VARIANTS[key][3] else "")
  workdir = Path(args.workdir) / key
  result = _common.fit(config, workdir, dataset=dataset, quiet=True)
  trainer = result.trainer
  params = jdl.count_params(result.state.params)
  # From the run's log: a re-run over a finished run trains nothing in this process.
  logged = _common.train_records(workdir)
  rates = [r["samples_per_sec"] for r in logged]
  train_size = trainer.data.train.size
  record = {
      "name": name, "config": VARIANTS[key][1], "model": config.model.to_dict(), "parameters": params,
      "val_accuracy": list(result.history["val_accuracy"]),
      "test_accuracy": result.test_metrics["accuracy"],
      "samples_per_sec": rates, "train_examples": train_size,
      "compile_seconds": sum(r.get("compile_seconds", 0.0) for r in logged),
  }
  steady = rates[1:] or rates  # The first epoch's rate includes its warm-up.
  record["epoch_seconds"] = train_size / (sum(steady) / len(steady)) if steady else None
  print(f"{name}: {params:,} parameters, test {_common.pct(record['test_accuracy'])}, "
        f"{record['epoch_seconds'] or float('nan'):.1f} s an epoch", flush=True)
  return record


def plot(records: dict[str, dict], path: Path, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  for r in records.values():
    name = r["name"]
    epochs = range(1, len(r["val_accuracy"]) + 1)
    axes[0].plot(epochs, r["val_accuracy"], marker=".", label=name)
    seconds = r["epoch_seconds"] and r["epoch_seconds"] * len(r["val_accuracy"])
    for ax, x in ((axes[1], r["parameters"]), (axes[2], seconds)):
      if x:  # A point, labelled with the network's name.
        ax.scatter(x, r["test_accuracy"], label=name)
        ax.annotate(name, (x, r["test_accuracy"]), fontsize=8, textcoords="offset points",
                    xytext=(4, 4))
  axes[0].set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
  axes[0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  axes[1].set(xlabel="parameters", ylabel="test accuracy", xscale="log",
              title="test accuracy against size")
  axes[2].set(xlabel="training seconds (steady epochs x epochs)", ylabel="test accuracy",
              xscale="log", title="test accuracy against training time")
  for ax in axes[1:]:  # Decades only (minor labels overlap); room for the names.
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(x=0.25, y=0.08)
  _common.save_figure(fig, axes, path, title, legend_axes=[axes[0]])


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
  parser = _common.make_parser(__doc__, name=NAME, epochs=EPOCHS)
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated subset of {', '.join(VARIANTS)} (default: all)")
  args = parser.parse_args(argv)
  keys = [k.strip() for k in args.variants.split(",") if k.strip()]
  unknown = [k for k in keys if k not in VARIANTS]
  if unknown or not keys:
    parser.error(f"--variants: unknown {', '.join(unknown) or 'empty list'}; "
                 f"choose from {', '.join(VARIANTS)}")
  twice = sorted({k for k in keys if keys.count(k) > 1})
  if twice:  # The full set with one twice counted as the full run, its row twice.
    parser.error(f"--variants lists {', '.join(twice)} more than once")
  epochs = args.epochs or (2 if args.tiny else EPOCHS)
  source = _common.load_source(args)
  dataset = _common.hold_out_validation(source, VAL_SIZE.get(source.name, 300))
  out = _common.out_dir(args, NAME, partial=set(keys) != set(VARIANTS))
  records, rows = {}, []
  for key in keys:
    r = records[key] = run_variant(key, dataset, args, epochs)
    rows.append((r["name"], f"{r['parameters']:,}",
                 f"{r['epoch_seconds']:.1f}" if r["epoch_seconds"] else "-",
                 _common.pct(max(r["val_accuracy"])), _common.pct(r["test_accuracy"])))
  table = _common.markdown_table(
      ("network", "parameters", "s / epoch", "best val. acc.", "test acc."), rows)
  per_class = "all" if args.tiny else f"{EXAMPLES_PER_CLASS:,}"
  print(f"\n{dataset.name}, {per_class} training images a class, {epochs} epochs:\n{table}")
  plot(records, out / "accuracy.png",
       f"{dataset.name}: {len(keys)} architectures, {per_class} training images a class, "
       f"{epochs} epochs, Adam + cosine")
  _common.write_results(out, table, {"dataset": dataset.name, "epochs": epochs,
                                     "examples_per_class": per_class, **records})
  return records


if __name__ == "__main__":
  _common.run(main, "architectures.py")
