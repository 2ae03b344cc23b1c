"""Runs the transfer_mnist experiment and prints its results table (Markdown).

Pretrains on digits 0-4 (configs/transfer_mnist_pretrain.py), then trains on
digits 5-9 with 100, 1,000 and all examples per class, once fine-tuned from the
pretrained network with frozen convolutions (configs/transfer_mnist.py) and once
from scratch, with the same number of optimizer steps per regime.

Usage:  python experiments/transfer_mnist.py --data_dir ../shared/data/mnist [--workdir runs/transfer]
        python experiments/transfer_mnist.py --tiny --workdir /tmp/transfer   # 8x8 digits, seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jdl  # noqa: E402

# Epochs per regime, so that the small-data runs take a reasonable number of steps.
REGIMES = {100: 40, 1000: 8, 0: 3}
TINY_REGIMES = {20: 4}  # The 8x8 digits have ~180 images a class.


def main(argv=None) -> list[dict]:
  parser = _common.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default="../shared/data/mnist")
  parser.add_argument("--workdir", default="runs/transfer")
  parser.add_argument("--tiny", action="store_true",
                      help="the 8x8 digits, a narrow CNN, few epochs: a smoke run of about a minute or less")
  parser.add_argument("--out", default="",
                      help="table.md and results.json; default WORKDIR/results")
  args = parser.parse_args(argv)
  _common.require_mnist(args)
  root = Path(args.workdir)
  out = Path(args.out) if args.out else root / "results"
  out.mkdir(parents=True, exist_ok=True)  # Before training: a bad --out fails at once.
  regimes = TINY_REGIMES if args.tiny else REGIMES

  def configure(config):
    if args.tiny:
      _common.tiny_digits(config)
    else:
      config.data_dir = args.data_dir
    return config

  pre = configure(jdl.load_config("transfer_mnist_pretrain"))
  pretrained = _common.fit(pre, root / "pretrain", quiet=True)
  print(f"pretrain on 0-4: test accuracy {pretrained.test_metrics['accuracy']:.4f} "
        f"({_common.training_seconds(root / 'pretrain'):.0f} s of training)", flush=True)

  rows = []
  for per_class, epochs in regimes.items():
    row = {"examples per class": per_class or "all"}
    for mode in ("fine-tune (frozen convs)", "from scratch"):
      config = configure(jdl.load_config("transfer_mnist"))
      config.examples_per_class = per_class
      config.num_epochs = epochs
      if mode == "from scratch":
        config.init_from.workdir = ""
        config.optimizer.freeze = ()
      else:
        config.init_from.workdir = str(root / "pretrain")
      name = f"{per_class or 'all'}-{'scratch' if mode == 'from scratch' else 'finetune'}"
      result = _common.fit(config, root / name, quiet=True)
      row[mode] = result.test_metrics["accuracy"]
      # From the run's log: a re-run over a finished run trains nothing here.
      row[f"{mode} s"] = _common.training_seconds(root / name)
      print(f"{name}: test accuracy {row[mode]:.4f} ({row[f'{mode} s']:.0f} s)", flush=True)
    rows.append(row)

  table = _common.markdown_table(
      ("examples per class (5-9)", "epochs", "fine-tuned, frozen convs", "from scratch"),
      [(row["examples per class"], epochs, f"{row['fine-tune (frozen convs)']:.2%}",
        f"{row['from scratch']:.2%}") for row, epochs in zip(rows, regimes.values())])
  print("\n" + table)
  _common.write_results(out, table, {
      "pretrain_accuracy": pretrained.test_metrics["accuracy"],
      "regimes": [{**row, "epochs": epochs} for row, epochs in zip(rows, regimes.values())]})
  return rows


if __name__ == "__main__":
  _common.run(main, "transfer_mnist.py")
