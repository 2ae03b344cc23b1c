"""What one training step inside a compiled loop executes: jdl's block against the
hand-written ``lax.scan`` epoch (``peers.py``'s ``flax_scan``), operation by operation.

Compiles, without running them, the loop of jdl's block of steps and the hand-written
scan epoch of the same model, and counts the operations XLA left in each loop body
(fusions, matmuls, copies; not the bookkeeping of parameters, tuples and bitcasts).
On a GPU every one of them is a kernel, so a per-step count is a proxy for what a
small step pays beyond its arithmetic; this runs on the backend at hand (on a CPU,
XLA:CPU's fusion choices, which differ from XLA:GPU's in detail). jdl is compiled with
the GPU's loop (``static_loops``: a ``lax.scan`` over every row) under each
``nonfinite_check``; ``--by-source`` also lists each body's operations by the JAX
operation they came from.

Usage:  python benchmarks/loop_body_ops.py [--model mlp] [--batch-size 128] [--by-source]
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import bench_common as common  # noqa: E402
import bench_jax  # noqa: E402

import jdl  # noqa: E402
from _cli import ArgumentParser, at_least, guarded  # noqa: E402
from jdl.train import strategy  # noqa: E402

_BOOKKEEPING = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant"}
_STEPS = 20


def body_ops(hlo: str) -> list[tuple[str, str]]:
  """``(opcode, source)`` of each operation in the largest ``while`` body of ``hlo``
  (an optimized HLO module's text), bookkeeping left out."""
  bodies = set(re.findall(r"\bwhile\(.*?body=(%[\w.\-]+)", hlo))
  computations: dict[str, list[tuple[str, str]]] = {}
  current = None
  for line in hlo.splitlines():
    start = re.match(r"^(%[\w.\-]+) .*\{$", line)
    if start:
      current = computations.setdefault(start.group(1), [])
      continue
    if line.startswith("}"):
      current = None
    if current is None:
      continue
    op = re.search(r"= \S+ ([\w\-]+)\(", line)
    if op and op.group(1) not in _BOOKKEEPING:
      source = re.search(r'op_name="([^"]+)"', line)
      # The scope inside the loop: 'jit(run_block)/while/body/...' -> '...'.
      name = re.sub(r"^.*?/body/(closed_call/)?", "", source.group(1)) if source else "?"
      current.append((op.group(1), name))
  found = [computations.get(b, []) for b in bodies]
  if not found:
    raise jdl.JdlError("the compiled program holds no while loop")
  return max(found, key=len)


def jdl_body(model: str, batch_size: int, nonfinite_check: str) -> list[tuple[str, str]]:
  # XLA's default kernels, as the hand-written loop gets them (and peers.py's
  # --jdl-deterministic false): the deterministic ones are other kernels on a GPU.
  config, dataset = bench_jax.jdl_inputs(model, batch_size * _STEPS, 1, 0, batch_size,
                                         nonfinite_check=nonfinite_check, scan_chunk=_STEPS,
                                         deterministic=False)
  trainer = jdl.Trainer(config, dataset=dataset, quiet=True)
  block = trainer.fit_block  # The pure block fit runs; jitted as the loop jits it.
  compiled = jax.jit(block).lower(trainer.state, trainer.empty_acc(),
                                  *trainer.block_shapes(_STEPS)).compile()
  return body_ops(compiled.as_text())


def flax_scan_body(model: str, batch_size: int) -> list[tuple[str, str]]:
  x, y = common.make_data(model, batch_size * _STEPS, 0)
  state = bench_jax.create_train_state(model, 0)

  def train_epoch(state, key, x, y):  # As bench_jax.run_flax_scan's.
    perm = jax.random.permutation(key, x.shape[0]).reshape(_STEPS, batch_size)

    def body(state, idx):
      return bench_jax.train_step(state, x[idx], y[idx])

    state, metrics = jax.lax.scan(body, state, perm)
    return state, jax.tree.map(jnp.mean, metrics)

  compiled = jax.jit(train_epoch, donate_argnums=(0,)).lower(
      state, jax.random.key(1), jnp.asarray(x), jnp.asarray(y)).compile()
  return body_ops(compiled.as_text())


def main(argv=None) -> int:
  parser = ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="mlp", choices=sorted(common.INPUT_SHAPES))
  parser.add_argument("--batch-size", type=at_least(1), default=128)
  parser.add_argument("--by-source", action="store_true",
                      help="list each body's operations by their JAX source")
  args = parser.parse_args(argv)
  strategy.static_loops = lambda backend=None: True  # The GPU's loop, on any backend.
  bodies = {f"jdl, nonfinite_check={mode}": jdl_body(args.model, args.batch_size, mode)
            for mode in ("step", "block")}
  bodies["flax_scan (hand-written)"] = flax_scan_body(args.model, args.batch_size)
  print(f"{args.model}, batch {args.batch_size}; {jax.default_backend()} backend; "
        "operations in one step's loop body:")
  for name, ops in bodies.items():
    kinds = collections.Counter(op for op, _ in ops)
    print(f"  {name:28s} {len(ops):4d}  ({', '.join(f'{k} {v}' for k, v in kinds.most_common())})")
  if args.by_source:
    for name, ops in bodies.items():
      print(f"\n{name}:")
      for source, count in sorted(collections.Counter(s for _, s in ops).items()):
        print(f"  {count:3d}  {source}")
  return 0


if __name__ == "__main__":
  sys.exit(guarded(main)())
