"""Step time on 1 device vs 8 devices ('data' and 'shard_map'), same global batch.

Each measurement runs in its own subprocess (the device count is fixed when JAX
starts): ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` simulates 8 CPU
devices, which share this machine's cores, so the figure shows the cost of the
partitioned program and its collectives, not a speed-up. On GPUs the same config
spreads the batch over real devices. The time per step is the best epoch's
``epoch_seconds / steps`` (the first epoch left out: warm-up).

Usage:  python benchmarks/parallel_devices.py [--config digits_cnn] [--batch 256] [--epochs 4]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from _cli import ArgumentParser, at_least, child_failure, guarded

REPO = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys
import jdl
config = jdl.load_config(sys.argv[1])
config.batch_size, config.num_epochs, config.parallel = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
config.validation_split, config.tensorboard, config.plots = 0.0, False, False
r = jdl.fit(config, None, quiet=True)
t = r.trainer
print(json.dumps({"step_ms": [round(1000 * t.batch_size / s, 3) for s in t.epoch_rates[1:]],
                  "num_devices": t.parallel.num_devices, "mode": t.parallel.mode,
                  "steps_per_epoch": t.steps_per_epoch, "compile_seconds": t.compile_seconds}))
"""


def measure(config: str, batch: int, epochs: int, devices: int, mode: str) -> dict:
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  proc = subprocess.run([sys.executable, "-c", _CHILD, config, str(batch), str(epochs), mode],
                        env=env, capture_output=True, text=True)
  if proc.returncode:
    raise child_failure(f"the run on {devices} device(s), {mode}", proc.stderr)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="digits_cnn")
  parser.add_argument("--batch", type=at_least(1), default=256)
  parser.add_argument("--epochs", type=int, default=4,
                      help="epochs per setting, >= 2 (the first, with compilation, is dropped)")
  args = parser.parse_args()
  if args.epochs < 2:
    parser.error(f"--epochs must be >= 2 (the first is dropped), got {args.epochs}")
  if args.batch % 8:  # Split over the 8 simulated devices.
    parser.error(f"--batch must be divisible by 8 (the devices), got {args.batch}")
  import jdl  # pylint: disable=g-import-not-at-top
  jdl.load_config(args.config)  # An unknown config: one error here, not a child's traceback.
  print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{args.config}, global batch {args.batch}")
  for devices, mode in ((1, "none"), (8, "data"), (8, "shard_map")):
    r = measure(args.config, args.batch, args.epochs, devices, mode)
    print(f"{devices} device(s) {mode:>9}: {min(r['step_ms']):8.2f} ms/step (best of "
          f"{len(r['step_ms'])} epochs of {r['steps_per_epoch']} steps; compile "
          f"{r['compile_seconds']:.1f} s)", flush=True)


if __name__ == "__main__":
  guarded(main)()
