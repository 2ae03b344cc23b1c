"""Microbatches on XLA:CPU: jdl's compiled block of steps at several microbatch sizes.

For each model, jdl's own block of training steps (the function ``fit`` runs: a
``lax.scan`` of ``--steps`` steps at batch ``--batch-size``) is compiled once per
``config.microbatch_size`` and timed in alternating rounds (median of 3 calls per
round, after a warm-up). It prints milliseconds per step, the speed-up over whole
batches, the measure behind the automatic choice
(:func:`jdl.train.steps.activation_bytes`, MiB per example) and what
``microbatch_size=0`` (auto) picks. Data are random, 28x28x1 (32x32x3 for
``cifar_cnn``).

Usage:
  python benchmarks/microbatch.py [--models cnn,mnist_cnn,lenet5,cifar_cnn,mlp]
      [--sizes 128,64,32,16] [--batch-size 128] [--steps 10] [--rounds 3] [--out FILE.json]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import jdl  # noqa: E402
from jdl.train import loop  # noqa: E402
from jdl.train import profile  # noqa: E402
from jdl.train import steps as steps_lib  # noqa: E402
from _provenance import provenance  # noqa: E402
from _cli import ArgumentParser, at_least, guarded, int_list, out_file  # noqa: E402

MNIST = (28, 28, 1)
MODELS = {
    # The Flax MNIST example's CNN, as in peers.py.
    "cnn": ({"name": "cnn", "features": (32, 64), "pool": "avg", "dense": (256,)}, MNIST),
    # experiments/configs/mnist_cnn.py and mnist_fast.py.
    "mnist_cnn": ({"name": "cnn", "features": (32, 64), "kernel_size": 3, "pool": "max",
                   "dense": (128,), "dropout_rate": 0.3}, MNIST),
    "lenet5": ({"name": "lenet5", "activation": "relu", "pool": "max"}, MNIST),
    "cifar_cnn": ({"name": "cnn", "features": (64, 128), "pool": "max", "dense": (256,)},
                  (32, 32, 3)),
    "mlp": ({"name": "mlp", "hidden": (512, 512)}, (784,)),
}


def build(model: str, batch_size: int, steps: int, microbatch_size: int) -> loop.Trainer:
  spec, shape = MODELS[model]
  rng = np.random.default_rng(0)
  n = batch_size * steps
  dataset = jdl.data.Dataset(
      x_train=rng.normal(size=(n, *shape)).astype(np.float32),
      y_train=rng.integers(0, 10, n), x_test=rng.normal(size=(64, *shape)).astype(np.float32),
      y_test=rng.integers(0, 10, 64), num_classes=10, task="classification", name="random",
      input_shape=shape)
  config = jdl.base_config()
  config.model = ml_collections.ConfigDict(spec)
  config.update(dict(validation_split=0.0, normalize="none", tensorboard=False, plots=False,
                     monitor="", batch_size=batch_size, num_epochs=1, scan_chunk=steps,
                     microbatch_size=microbatch_size))
  return loop.Trainer(config, dataset=dataset, quiet=True)


def compiled_block(trainer: loop.Trainer, steps: int):
  """``ms_per_step()``: the median of 3 calls of the block ``fit`` runs."""
  compiled, args, _ = profile.compiled_first_block(trainer, steps)

  def ms_per_step() -> float:
    times = []
    for _ in range(3):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times) / steps

  ms_per_step()  # Warm-up.
  return ms_per_step


def main() -> int:
  parser = ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--sizes", type=int_list(1), default=[128, 64, 32, 16],
                      help="microbatch sizes; the batch size = whole batches")
  parser.add_argument("--batch-size", type=at_least(1), default=128)
  parser.add_argument("--steps", type=at_least(1), default=10)
  parser.add_argument("--rounds", type=at_least(1), default=3)
  parser.add_argument("--out", type=out_file)
  args = parser.parse_args()
  models = [m for m in args.models.split(",") if m]
  unknown = sorted(set(models) - set(MODELS))
  if unknown:
    parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
  sizes = list(args.sizes)
  if args.batch_size not in sizes:
    sizes.insert(0, args.batch_size)
  bad = [s for s in sizes if s < 1 or args.batch_size % s]
  if bad or min(args.steps, args.rounds) < 1:
    parser.error(f"sizes must divide --batch-size {args.batch_size} (got {bad}); "
                 "--steps and --rounds must be >= 1")
  results = []
  for model in models:
    auto = build(model, args.batch_size, args.steps, 0)
    mib = steps_lib.activation_bytes(auto.task, auto.state.params, auto.data.train.x,
                                     auto.data.train.y) / 2**20
    timers = {s: compiled_block(build(model, args.batch_size, args.steps, s), args.steps)
              for s in sizes}
    rounds = {s: [] for s in sizes}
    for _ in range(args.rounds):
      for s in sizes:
        rounds[s].append(timers[s]())
    whole = statistics.median(rounds[args.batch_size])
    row = {"model": model, "activation_mib_per_example": round(mib, 2),
           "auto_microbatch_size": auto.microbatch_size or args.batch_size,
           "ms_per_step": {s: round(statistics.median(r), 2) for s, r in rounds.items()},
           "rounds": {s: [round(t, 2) for t in r] for s, r in rounds.items()}}
    results.append(row)
    cells = "  ".join(f"{s}: {row['ms_per_step'][s]:7.2f} ms ({whole / row['ms_per_step'][s]:.2f}x)"
                      for s in sizes)
    print(f"{model:10s} {mib:6.2f} MiB/example  auto {row['auto_microbatch_size']:4d}  {cells}",
          flush=True)
  meta = {"batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
          "jax": jax.__version__, "device": jax.devices()[0].device_kind,
          "backend": jax.default_backend(), **provenance()}
  if args.out:
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(guarded(main)())
