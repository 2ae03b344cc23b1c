"""Per-step jitted loop vs fused lax.scan epoch, on MNIST-shaped data.

Measures what `epoch_mode='auto'` chooses between: the training throughput of
jdl's `fit` in 'step' mode (one compiled call per step) and in 'scan' mode
(blocks of steps fused into one compiled lax.scan), for the MLP 784-512-512-10
and the Flax MNIST-example CNN, batch 128, Adam. Random data of MNIST's shape
(the speed does not depend on the values).

Usage:  python benchmarks/epoch_modes.py [--examples 3200] [--epochs 3] [--out FILE.json]
"""

from __future__ import annotations

import json
import platform

import jax
import numpy as np

import jdl
from _data import mnist_shaped
from _provenance import provenance
from _cli import ArgumentParser, at_least, guarded, out_file
from jdl.data import Dataset

MODELS = {
    "mlp": {"name": "mlp", "hidden": (512, 512)},
    "cnn": {"name": "cnn", "features": (32, 64), "pool": "avg", "dense": (256,)},
}


def measure(model: dict, mode: str, dataset: Dataset, epochs: int) -> dict:
  config = jdl.base_config()
  config.model = model
  config.update(dict(epoch_mode=mode, batch_size=128, num_epochs=epochs, validation_split=0.0,
                     normalize="none", tensorboard=False, plots=False, monitor=""))
  trainer = jdl.fit(config, dataset=dataset, quiet=True).trainer
  rates = trainer.epoch_rates  # The first epoch is a warm-up.
  return {"samples_per_sec": float(np.median(rates[1:] or rates)),
          "compile_seconds": trainer.compile_seconds, "mode": trainer.epoch_mode}


def main() -> None:
  parser = ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=at_least(1), default=3_200)
  parser.add_argument("--epochs", type=at_least(2), default=3,
                      help="the first, with compilation, is dropped")
  parser.add_argument("--out", type=out_file, default=None)
  args = parser.parse_args()
  n = args.examples
  dataset = mnist_shaped(n)
  rows = []
  for model_name, model in MODELS.items():
    for mode in ("step", "scan"):
      r = measure(model, mode, dataset, args.epochs)
      rows.append({"model": model_name, **r})
      print(f"{model_name:4s} {mode:5s} {r['samples_per_sec']:10.0f} samples/s  "
            f"compile {r['compile_seconds']:.2f}s", flush=True)
  auto = {m: jdl.Trainer(_cfg(model), dataset=dataset, quiet=True).epoch_mode
          for m, model in MODELS.items()}
  report = {"backend": jax.default_backend(), "devices": jax.device_count(),
            "machine": platform.processor() or platform.machine(), "jax": jax.__version__,
            "rows": rows, "auto_mode": auto, "provenance": provenance()}
  print(json.dumps(report["auto_mode"]))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)


def _cfg(model):
  config = jdl.base_config()
  config.model = model
  config.update(dict(batch_size=128, num_epochs=1, tensorboard=False, plots=False))
  return config


if __name__ == "__main__":
  guarded(main)()
