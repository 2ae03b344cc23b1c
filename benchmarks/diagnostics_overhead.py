"""Throughput cost of training diagnostics (config.diagnostics.every_steps).

Trains jdl's MLP 784-512-512-10 (ReLU; its hidden activations are sown, so
activation histograms and dead-ReLU shares are included) with Adam,
batch 128, on random MNIST-shaped data, with diagnostics off and every
``--every`` steps, alternating, ``--repeats`` times each. The throughput of a run
is its train samples over its epoch seconds, the first epoch left out (warm-up);
the best of the repeats is kept, and the overhead is ``1 - on / off``. The
acceptance target is < 3% at every 100 steps. On a busy machine the epoch rates
are noisy; the script also times one compiled block of ``--every`` steps with and
without the diagnostic last step (minimum of ``--block-reps`` calls), whose
difference bounds the overhead with less noise.

Usage:  python benchmarks/diagnostics_overhead.py [--examples 25600] [--epochs 4]
          [--every 100] [--repeats 3]
"""

from __future__ import annotations

import platform
import time

import jax

import jdl
from _data import mnist_shaped
from _cli import ArgumentParser, at_least, guarded
from jdl.data import Dataset


def block_seconds(trainer, reps: int) -> dict[str, float]:
  """Minimum seconds of one plain and one diagnostic block of ``trainer.chunk`` steps."""
  x, y = trainer.data.train.x, trainer.data.train.y
  idx = jax.numpy.arange(trainer.chunk * trainer.batch_size, dtype=jax.numpy.int32).reshape(
      trainer.chunk, trainer.batch_size) % trainer.data.train.size
  state, acc = trainer.state, trainer.empty_acc()
  plain, diag = trainer._blocks[trainer.chunk], trainer._diagnostics._blocks[trainer.chunk]
  best = {"plain": float("inf"), "diagnostic": float("inf")}
  for _ in range(reps):
    t0 = time.perf_counter()
    # (state, acc), or (state, acc, ok) with nonfinite_check='block' (CPU's default).
    state, acc = jax.block_until_ready(plain(state, acc, x, y, idx))[:2]
    best["plain"] = min(best["plain"], time.perf_counter() - t0)
    t0 = time.perf_counter()
    # (state, acc, diagnostics), or with nonfinite_check='block' (..., ok).
    state, acc = jax.block_until_ready(diag(state, acc, x, y, idx))[:2]
    best["diagnostic"] = min(best["diagnostic"], time.perf_counter() - t0)
  return {**best, "steps": trainer.chunk}


def throughput(dataset: Dataset, epochs: int, every: int, block_reps: int = 0):
  config = jdl.base_config()
  config.update(dict(batch_size=128, num_epochs=epochs, validation_split=0.0, normalize="none",
                     tensorboard=False, plots=False, monitor=""))
  config.diagnostics.every_steps = every
  trainer = jdl.fit(config, dataset=dataset, model=jdl.models.MLP(num_outputs=10, hidden=(512, 512)), quiet=True).trainer
  rates = trainer.epoch_rates[1:] or trainer.epoch_rates
  rate = len(rates) / sum(1.0 / r for r in rates)  # Samples over seconds, equal epochs.
  return rate, (block_seconds(trainer, block_reps) if every and block_reps else None)


def main() -> None:
  parser = ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=at_least(1), default=25_600)
  parser.add_argument("--epochs", type=at_least(1), default=4)
  parser.add_argument("--every", type=at_least(1), default=100)
  parser.add_argument("--repeats", type=at_least(1), default=3)
  parser.add_argument("--block-reps", type=at_least(1), default=10)
  args = parser.parse_args()
  if args.epochs < 2:  # The first epoch is a warm-up, not measured.
    parser.error(f"--epochs must be >= 2 (the first is not measured), got {args.epochs}")
  n = args.examples
  dataset = mnist_shaped(n)
  print(f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}, "
        f"{n // 128} steps/epoch, {args.epochs} epochs, diagnostics every {args.every} steps",
        flush=True)
  best = {"off": 0.0, "on": 0.0}
  for r in range(args.repeats):
    for name, every in (("off", 0), ("on", args.every)):
      rate, blocks = throughput(dataset, args.epochs, every, args.block_reps if r == 0 else 0)
      best[name] = max(best[name], rate)
      print(f"repeat {r + 1}: diagnostics {name:3s} {rate:9.0f} samples/s", flush=True)
      if blocks:  # The block holding a diagnostic step: one in every `every` steps.
        chunk, extra_s = blocks["steps"], blocks["diagnostic"] - blocks["plain"]
        extra = 100.0 * extra_s / blocks["plain"]
        per_every = 100.0 * extra_s / (blocks["plain"] / chunk * args.every)
        print(f"one block of {chunk} steps (min of {args.block_reps}): plain "
              f"{blocks['plain'] * 1e3:.1f} ms, with a diagnostic "
              f"{blocks['diagnostic'] * 1e3:.1f} ms ({extra:+.2f}% for that block, "
              f"{per_every:+.2f}% over the {args.every} steps of one diagnostic)", flush=True)
  overhead = 100.0 * (1.0 - best["on"] / best["off"])
  print(f"best of {args.repeats}: off {best['off']:.0f} samples/s, on {best['on']:.0f} "
        f"samples/s; overhead {overhead:.2f}% (target < 3%)")


if __name__ == "__main__":
  guarded(main)()
