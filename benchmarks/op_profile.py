"""Where a jdl training step's time goes, XLA operation by operation (CPU backend).

Usage:
  python benchmarks/op_profile.py --model cnn [--steps 10] [--top 25] [--out FILE.json]
  python benchmarks/op_profile.py --config mnist_cnn --config.data_dir=../shared/data/mnist

``--model`` (mlp, cnn or resnet20) profiles the model of ``benchmarks/peers.py`` on
random data of its input shape at batch 128; ``--config`` (a named experiment or a
config file, with ``--config.key=value`` overrides) profiles that experiment on its
own data.

The script builds jdl's trainer, compiles its block of ``--steps`` training steps
(the ``lax.scan`` that ``fit`` runs), warms it up, and records two calls with
``jax.profiler``. XLA:CPU records one event per executed operation (a fusion, a
matmul, a copy) on its worker threads. The script sums them per operation and prints
milliseconds per training step. Each operation is shown with its output shape and
the JAX operation it came from (its ``op_name``: the module path, with
``jvp(...)`` in the forward pass and ``transpose(jvp(...))`` in the backward).
It then prints the same time grouped by layer and pass. Operations without an
``op_name`` are ones XLA created itself, e.g. by splitting a large reduction.

The per-operation times add up to a little more than the wall time: the profiler
costs something, and small operations can overlap. Only the CPU backend is read.
On a GPU, use ``jax.profiler.trace`` with TensorBoard or XProf instead.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

import bench_common as common  # noqa: E402  pylint: disable=g-import-not-at-top

import jdl  # noqa: E402  pylint: disable=g-import-not-at-top
from jdl.train import loop  # noqa: E402  pylint: disable=g-import-not-at-top

_HLO_LINE = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][\w\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def build_trainer(args, overrides: dict[str, str]) -> loop.Trainer:
  """The trainer of ``--model`` (random data) or of ``--config`` (its own data)."""
  if args.config:
    from jdl import config as config_lib  # pylint: disable=g-import-not-at-top
    config = config_lib.load_config(args.config)
    config_lib.apply_overrides(config, overrides)
    with config.unlocked():
      config.tensorboard, config.plots = False, False
    return loop.Trainer(config, quiet=True)
  if overrides:
    raise SystemExit("op_profile: --config.key=value overrides need --config")
  n = args.batch_size * args.steps
  x, y = common.make_data(args.model, n, 0)
  x_test, y_test = common.make_data(args.model, args.batch_size, 1)
  config = jdl.base_config()
  config.model = ml_collections.ConfigDict(common.JDL_MODELS[args.model])
  config.update(dict(validation_split=0.0, normalize="none", tensorboard=False, plots=False,
                     monitor="", batch_size=args.batch_size, num_epochs=1,
                     scan_chunk=args.steps))
  dataset = jdl.data.Dataset(
      x_train=x, y_train=y, x_test=x_test, y_test=y_test, num_classes=common.NUM_CLASSES,
      task="classification", name="random", input_shape=common.INPUT_SHAPES[args.model])
  return loop.Trainer(config, dataset=dataset, quiet=True)


def hlo_ops(compiled_text: str) -> dict[str, tuple[str, str, str]]:
  """``{instruction: (output shape, opcode, op_name)}`` of an optimized HLO module."""
  ops = {}
  for line in compiled_text.splitlines():
    m = _HLO_LINE.match(line)
    if m:
      op_name = _OP_NAME.search(line)
      ops[m.group(1)] = (m.group(2), m.group(3), op_name.group(1) if op_name else "")
  return ops


def layer_of(op_name: str) -> str:
  """``'conv_1 (backward)'`` from ``'jit(run_block)/.../transpose(jvp(CNN))/conv_1/dot_general'``.

  The pass is ``backward`` under ``transpose(...)``, ``forward`` under ``jvp(...)``.
  Operations of the model outside its submodules (e.g. pooling written inline) are
  the model's own (``'CNN (forward)'``), those of the loss function ``'loss'``, and
  the rest of the step (the optimizer update, metrics) ``'update and metrics'``.
  """
  if not op_name:
    return "(no op_name: made by XLA)"
  path = op_name.split("closed_call/", 1)[-1].split("/")
  passes = [p for p in path if p.startswith(("transpose(", "jvp("))]
  if not passes:
    return "update and metrics"
  kind = "backward" if passes[0].startswith("transpose(") else "forward"
  model = re.search(r"jvp\((\w*)\)", passes[0])  # jvp(CNN): a module; jvp(): a function.
  model = model.group(1) if model else ""
  rest = path[path.index(passes[0]) + 1:-1]
  modules = [p for p in rest if not p.startswith(("jit(", "jvp(", "transpose("))]
  return f"{modules[0] if modules else (model or 'loss')} ({kind})"


def profile_block(trainer: loop.Trainer, steps: int, calls: int = 2) -> dict:
  """Per-operation times of ``trainer``'s compiled block of ``steps`` steps."""
  with contextlib.closing(trainer.feed):
    x, y, idx = trainer._place(*trainer.feed.block(0, 0, steps))  # pylint: disable=protected-access
  state, acc = trainer.state, trainer.empty_acc()
  # What fit runs (with nonfinite_check='block', the block that tests the state once);
  # not donated: the same inputs run several times.
  block = jax.jit(trainer.run_checked_block if trainer.nonfinite_check == "block"
                  else trainer.run_block)
  t0 = time.perf_counter()
  compiled = block.lower(state, acc, x, y, idx).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(state, acc, x, y, idx))
  t0 = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(compiled(state, acc, x, y, idx))
  wall_ms = 1e3 * (time.perf_counter() - t0) / (calls * steps)
  trace_dir = tempfile.mkdtemp(prefix="jdl-op-profile-")
  try:
    jax.profiler.start_trace(trace_dir)
    for _ in range(calls):
      jax.block_until_ready(compiled(state, acc, x, y, idx))
    jax.profiler.stop_trace()
    trace = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    data = jax.profiler.ProfileData.from_file(trace[0])
  finally:
    shutil.rmtree(trace_dir, ignore_errors=True)
  ops = hlo_ops(compiled.as_text())
  total_ns, count = collections.Counter(), collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):  # XLA:CPU's worker threads.
        continue
      for event in line.events:
        if event.name in ops:  # Not the executor's or the thread pool's own spans.
          total_ns[event.name] += event.duration_ns
          count[event.name] += 1
  if not total_ns:
    raise SystemExit("op_profile: the trace holds no events of the block's operations on "
                     "XLA:CPU's threads (tf_XLAEigen*); this jax records them differently")
  per_step = calls * steps
  rows = []
  for name, ns in total_ns.most_common():
    shape, opcode, op_name = ops[name]
    rows.append({"op": name, "opcode": opcode, "shape": shape, "op_name": op_name,
                 "layer": layer_of(op_name), "ms_per_step": ns / 1e6 / per_step,
                 "runs_per_step": count[name] / per_step})
  return {"wall_ms_per_step": wall_ms, "compile_s": compile_s, "steps": steps,
          "nonfinite_check": trainer.nonfinite_check,
          "ops_ms_per_step": sum(r["ms_per_step"] for r in rows), "ops": rows}


def print_report(result: dict, top: int) -> None:
  total = result["ops_ms_per_step"]
  print(f"wall {result['wall_ms_per_step']:.3f} ms/step (blocks of {result['steps']} steps, "
        f"NaN/Inf checked per {result['nonfinite_check']}, no profiler); operations "
        f"{total:.3f} ms/step under the profiler")
  print(f"\n{'ms/step':>8} {'share':>6}  {'operation':30} {'output':34} source")
  for row in result["ops"][:top]:
    source = row["op_name"].split("closed_call/", 1)[-1][-60:] or "-"
    print(f"{row['ms_per_step']:8.3f} {100 * row['ms_per_step'] / total:5.1f}%  "
          f"{row['op'][:30]:30} {row['shape'][:34]:34} {source}")
  if len(result["ops"]) > top:
    rest = sum(r["ms_per_step"] for r in result["ops"][top:])
    print(f"{rest:8.3f} {100 * rest / total:5.1f}%  ({len(result['ops']) - top} more)")
  layers = collections.Counter()
  for row in result["ops"]:
    layers[row["layer"]] += row["ms_per_step"]
  print(f"\n{'ms/step':>8} {'share':>6}  layer (pass)")
  for layer, ms in layers.most_common():
    print(f"{ms:8.3f} {100 * ms / total:5.1f}%  {layer}")


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  rest = [a for a in argv if not a.startswith("--config.")]
  overrides = {}
  for arg in argv:
    if arg.startswith("--config."):
      key, eq, value = arg[len("--config."):].partition("=")
      if not eq:
        raise SystemExit(f"op_profile: write {arg}=VALUE")
      overrides[key] = value
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--model", choices=sorted(common.JDL_MODELS), default="cnn")
  source.add_argument("--config", help="a named experiment or a config file")
  parser.add_argument("--steps", type=int, default=10, help="training steps per block")
  parser.add_argument("--batch-size", type=int, default=common.BATCH_SIZE,
                      help="with --model only; a --config sets its own")
  parser.add_argument("--top", type=int, default=25, help="operations listed")
  parser.add_argument("--out", help="also write the result as JSON")
  args = parser.parse_args(rest)
  if jax.default_backend() != "cpu":
    parser.error(f"reads XLA:CPU's events only; the backend is {jax.default_backend()}")
  if args.steps < 1 or args.top < 1 or args.batch_size < 1:
    parser.error("--steps, --top and --batch-size must be >= 1")
  trainer = build_trainer(args, overrides)
  steps = min(args.steps, trainer.steps_per_epoch)
  result = profile_block(trainer, steps)
  result.update(model=args.config or args.model, batch_size=trainer.batch_size,
                jax=jax.__version__, jdl=jdl.__version__, device=jax.devices()[0].device_kind)
  print_report(result, args.top)
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
  main()
