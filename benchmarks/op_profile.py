"""Where a jdl training step's time goes, XLA operation by operation (CPU backend).

Usage:
  python benchmarks/op_profile.py --model cnn [--steps 10] [--top 25] [--out FILE.json]
  jdl profile --config mnist_cnn --config.data_dir=../shared/data/mnist   # an experiment

``--model`` (mlp, cnn or resnet20) profiles the model of ``benchmarks/peers.py`` on
random data of its input shape at batch 128. ``jdl profile`` does the same for any
experiment, on its own data. Both call :func:`jdl.train.profile.profile_block`:
the block of steps that ``fit`` runs, recorded with ``jax.profiler``, its XLA:CPU
operations summed in ms per step, each with its output shape and source, then
grouped by layer and pass.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

import bench_common as common  # noqa: E402  pylint: disable=g-import-not-at-top
import bench_jax  # noqa: E402  pylint: disable=g-import-not-at-top

import jdl  # noqa: E402  pylint: disable=g-import-not-at-top
from jdl.train import loop  # noqa: E402  pylint: disable=g-import-not-at-top
from jdl.train import profile  # noqa: E402  pylint: disable=g-import-not-at-top
from _cli import ArgumentParser, out_file  # noqa: E402
from _provenance import provenance  # noqa: E402


def build_trainer(model: str, batch_size: int, steps: int,
                  nonfinite_check: str = "auto") -> loop.Trainer:
  """The trainer of a peers model on ``batch_size * steps`` random examples."""
  config, dataset = bench_jax.jdl_inputs(model, batch_size * steps, 1, 0, batch_size,
                                         scan_chunk=steps, nonfinite_check=nonfinite_check)
  return loop.Trainer(config, dataset=dataset, quiet=True)


def main() -> None:
  parser = ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", choices=sorted(common.JDL_MODELS), default="cnn")
  parser.add_argument("--steps", type=int, default=10, help="training steps per block")
  parser.add_argument("--batch-size", type=int, default=common.BATCH_SIZE)
  parser.add_argument("--top", type=int, default=25, help="operations listed")
  parser.add_argument("--nonfinite-check", choices=("auto", "step", "block"), default="auto",
                      help="config.nonfinite_check of the profiled block")
  parser.add_argument("--out", type=out_file, help="also write the result as JSON")
  args = parser.parse_args()
  if min(args.steps, args.top, args.batch_size) < 1:
    parser.error("--steps, --top and --batch-size must be >= 1")
  trainer = build_trainer(args.model, args.batch_size, args.steps, args.nonfinite_check)
  result = profile.profile_block(trainer, args.steps)
  result.update(model=args.model, batch_size=trainer.batch_size, jax=jax.__version__,
                jdl=jdl.__version__, device=jax.devices()[0].device_kind,
                provenance=provenance())
  print(profile.format_report(result, args.top))
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
  main()
