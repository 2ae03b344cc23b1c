"""Costs around the compiled step: compilation, checkpoint saves (async vs sync).

Usage:  python benchmarks/overheads.py [--out FILE.json]

For the MLP 784-512-512-10 and the CNN of benchmarks/peers.py (MNIST-shaped random
data, batch 128, Adam), reports the ahead-of-time compile seconds of the train
block, and the train throughput with no mid-epoch checkpoints, with an async orbax
save every 200 and every 50 steps, and with a synchronous save every 50 steps. The
cost of checkpointing is the relative drop in samples/s; ``ms_per_save`` is the
epoch time it adds divided by the saves in an epoch.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np

import jdl
from jdl.data import Dataset

MODELS = {
    "mlp": {"name": "mlp", "hidden": (512, 512)},
    "cnn": {"name": "cnn", "features": (32, 64), "pool": "avg", "dense": (256,)},
}
SIZES = {"mlp": 128 * 800, "cnn": 128 * 400}
RUNS = (("async_every_200", 200, True), ("async_every_50", 50, True), ("sync_every_50", 50, False))


def run(model: dict, n: int, every: int, async_save: bool) -> tuple[float, float]:
  rng = np.random.default_rng(0)
  ds = Dataset(x_train=rng.random((n, 28, 28, 1), dtype=np.float32),
               y_train=(np.arange(n) % 10).astype(np.int32),
               x_test=rng.random((128, 28, 28, 1), dtype=np.float32),
               y_test=(np.arange(128) % 10).astype(np.int32), num_classes=10,
               task="classification", name="bench", input_shape=(28, 28, 1))
  config = jdl.base_config()
  config.model = model
  config.update(dict(batch_size=128, num_epochs=3, validation_split=0.0, normalize="none",
                     tensorboard=False, plots=False, monitor="", checkpoint_every_steps=every,
                     async_checkpoints=async_save, scan_chunk=50))
  with tempfile.TemporaryDirectory() as workdir:
    trainer = jdl.fit(config, workdir if every else None, dataset=ds, quiet=True).trainer
  return float(np.median(trainer.epoch_rates[1:])), trainer.compile_seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  rows = []
  for name, model in MODELS.items():
    base, compile_s = run(model, SIZES[name], 0, True)
    row = {"model": name, "compile_seconds": round(compile_s, 2), "no_checkpoints": round(base)}
    steps = SIZES[name] // 128
    for label, every, async_save in RUNS:
      rate, _ = run(model, SIZES[name], every, async_save)
      saves = (steps - 1) // every  # Mid-epoch saves; the epoch end's is not timed.
      row[label] = round(rate)
      row[label + "_cost_pct"] = round(100 * (1 - rate / base), 1)
      row[label + "_ms_per_save"] = round(1e3 * SIZES[name] * (1 / rate - 1 / base) / saves, 1)
    rows.append(row)
    print(json.dumps(row), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
