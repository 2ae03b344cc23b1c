"""Costs around the compiled step: compilation, checkpoint saves (async vs sync).

Usage:  python benchmarks/overheads.py [--out FILE.json]

For the MLP 784-512-512-10 and the CNN of benchmarks/peers.py (MNIST-shaped random
data, batch 128, Adam), reports the ahead-of-time compile seconds of the train
block, and the train throughput with no mid-epoch checkpoints, with an async orbax
save every 50 steps, and with a synchronous save every 50 steps. The cost of
checkpointing is the relative drop in samples/s.
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
SIZES = {"mlp": 128 * 400, "cnn": 128 * 100}


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
    for label, async_save in (("async_every_50", True), ("sync_every_50", False)):
      rate, _ = run(model, SIZES[name], 50, async_save)
      row[label] = round(rate)
      row[label + "_cost_pct"] = round(100 * (1 - rate / base), 1)
    rows.append(row)
    print(json.dumps(row), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
