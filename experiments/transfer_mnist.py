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
import time
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
                      help="the 8x8 digits, a narrow CNN, few epochs: a smoke run of seconds")
  args = parser.parse_args(argv)
  _common.require_mnist(args)
  root = Path(args.workdir)
  regimes = TINY_REGIMES if args.tiny else REGIMES

  def configure(config):
    if args.tiny:
      _common.tiny_digits(config)
    else:
      config.data_dir = args.data_dir
    return config

  pre = configure(jdl.load_config("transfer_mnist_pretrain"))
  t0 = time.perf_counter()
  pretrained = _common.fit(pre, root / "pretrain", quiet=True)
  print(f"pretrain on 0-4: test accuracy {pretrained.test_metrics['accuracy']:.4f} "
        f"({time.perf_counter() - t0:.0f} s)", flush=True)

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
      t0 = time.perf_counter()
      result = _common.fit(config, root / name, quiet=True)
      row[mode] = result.test_metrics["accuracy"]
      row[f"{mode} s"] = time.perf_counter() - t0
      print(f"{name}: test accuracy {row[mode]:.4f} ({row[f'{mode} s']:.0f} s)", flush=True)
    rows.append(row)

  print("\n| examples per class (5-9) | epochs | fine-tuned, frozen convs | from scratch |")
  print("|---|---:|---:|---:|")
  for row, epochs in zip(rows, regimes.values()):
    print(f"| {row['examples per class']} | {epochs} | "
          f"{row['fine-tune (frozen convs)']:.2%} | {row['from scratch']:.2%} |")
  return rows


if __name__ == "__main__":
  _common.run(main, "transfer_mnist.py")
