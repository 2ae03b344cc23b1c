"""The static loop's open questions on a GPU, in one short run (~1-2 min on an H200).

On a GPU jdl's blocks are ``lax.scan`` s of a known length whose padding rows' steps
are computed and discarded (``jdl.train.strategy.static_loops``). The CPU test suite
runs that loop too (``tests/test_train.py``), but only on the CPU. This script checks
on the machine it runs on:

1. ``resume``: a run stopped inside an epoch with blocks of 7 steps, then resumed
   with blocks of 10, ends bitwise equal to an uninterrupted run with blocks of 10
   (``digits_cnn``, dropout on; jdl's default deterministic kernels, requested before
   JAX starts, as ``jdl train`` does). The first block after the resume holds padding
   rows.
2. ``parallel``: ``parallel='data'`` and ``'shard_map'`` on this machine's devices
   against ``'none'`` (dropout off): each trains, and its parameters and Adam moments
   after an epoch are within 1e-4 of ``'none'``'s.
3. ``cond``: whether XLA waits for the host at a ``lax.cond`` inside a loop (the GAN
   step's generator update is one): a 2,000-step ``lax.scan`` of a small update
   with a ``lax.cond`` against the same with ``jnp.where`` over both branches.

Prints one line per check and writes them as JSON (``--out``). On a CPU it runs too
(the while loop then, as the backend line says): a smoke run.

Usage:  python benchmarks/gpu_static_checks.py [--out FILE] [--checks resume,parallel,cond]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jdl
from _cli import ArgumentParser, guarded, out_file
from jdl.train import runtime
from jdl.train import strategy
from jdl.train.callbacks import Callback

CHECKS = ("resume", "parallel", "cond")


class _StopAt(Callback):
  """Stops training after the block that reaches ``step``."""

  def __init__(self, step: int):
    self.step = step

  def on_steps_end(self, trainer, step, num_steps):
    del num_steps
    if step >= self.step:
      trainer.stop_training = True


def _config(**values):
  config = jdl.load_config("digits_cnn")
  config.update({"num_epochs": 2, "tensorboard": False, "plots": False,
                 "async_checkpoints": False, **values})
  return config


def _leaves(result):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (result.state.params, result.state.opt_state)))]


def check_resume(root: Path) -> dict:
  stopped = jdl.fit(_config(scan_chunk=7, checkpoint_every_steps=7), root / "a", quiet=True,
                    callbacks=[_StopAt(20)])
  stopped_at = int(stopped.state.step)
  resumed = jdl.fit(_config(scan_chunk=10, checkpoint_every_steps=10), root / "a", quiet=True)
  full = jdl.fit(_config(scan_chunk=10, checkpoint_every_steps=10), root / "b", quiet=True)
  equal = all(np.array_equal(a, b) for a, b in zip(_leaves(resumed), _leaves(full)))
  return {"check": "resume", "stopped_at_step": stopped_at,
          "steps": int(full.state.step), "static_loops": full.trainer.static_loops,
          "padded_blocks": full.trainer.padded_blocks,
          "bitwise_equal": equal and resumed.history == full.history,
          "ok": equal and resumed.history == full.history and 0 < stopped_at < 41}


def check_parallel(root: Path) -> dict:
  del root
  # Dropout off: 'shard_map' folds its keys with the device index (README, "Several
  # GPUs on one machine"), so its draws differ from the other modes' by design.
  runs = {}
  for mode in ("none", "data", "shard_map"):
    config = _config(num_epochs=1, parallel=mode)
    config.model.dropout_rate = 0.0
    runs[mode] = jdl.fit(config, None, quiet=True)
  base = _leaves(runs["none"])
  out = {"check": "parallel", "devices": jax.device_count(), "ok": True}
  for mode in ("data", "shard_map"):
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(_leaves(runs[mode]), base))
    out[f"{mode}_max_abs_diff"] = diff
    out[f"{mode}_static_loops"] = runs[mode].trainer.static_loops
    out["ok"] = out["ok"] and diff < 1e-4
  return out


def check_cond(root: Path) -> dict:
  del root
  steps, width = 2_000, 256

  def body(use_cond):
    def step(carry, i):
      w, g = carry
      w = w - 1e-3 * jnp.tanh(w @ g)
      update = lambda w: w * 0.999  # The "generator update" of every 5th step.
      keep = lambda w: w
      if use_cond:
        w = jax.lax.cond(i % 5 == 0, update, keep, w)
      else:
        w = jnp.where(i % 5 == 0, update(w), keep(w))
      return (w, g), None
    return step

  out = {"check": "cond", "steps": steps}
  results = {}
  for name, use_cond in (("cond", True), ("where", False)):
    run = jax.jit(lambda w, g, c=use_cond: jax.lax.scan(body(c), (w, g), jnp.arange(steps))[0])
    w = jnp.ones((width, width), jnp.float32) / width
    g = jnp.eye(width, dtype=jnp.float32)
    jax.block_until_ready(run(w, g))
    times = []
    for _ in range(5):
      t0 = time.perf_counter()
      results[name] = jax.block_until_ready(run(w, g))
      times.append(time.perf_counter() - t0)
    out[f"{name}_us_per_step"] = 1e6 * min(times) / steps
  out["same_values"] = bool(np.allclose(results["cond"][0], results["where"][0]))
  out["ok"] = out["same_values"]
  return out


def main(argv=None) -> int:
  parser = ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=out_file, help="write the results as JSON here")
  parser.add_argument("--checks", default=",".join(CHECKS),
                      help=f"comma-separated subset of {', '.join(CHECKS)}")
  args = parser.parse_args(argv)
  chosen = [c.strip() for c in args.checks.split(",") if c.strip()]
  unknown = sorted(set(chosen) - set(CHECKS))
  if unknown or not chosen:
    parser.error(f"--checks: unknown {', '.join(unknown) or '(none given)'}; valid: "
                 f"{', '.join(CHECKS)}")
  # What jdl's Trainer asks of XLA before its backends start (config.deterministic and
  # xla_cpu_region_analysis, both on by default): the line below starts them.
  runtime.request_deterministic_ops(True)
  runtime.request_cpu_region_analysis(True)
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}, "
        f"{jax.device_count()} device(s)); static loops: {strategy.static_loops()}", flush=True)
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in chosen:
      t0 = time.perf_counter()
      result = globals()[f"check_{name}"](Path(tmp) / name)
      result["seconds"] = round(time.perf_counter() - t0, 1)
      results.append(result)
      print(json.dumps(result), flush=True)
      if args.out:  # After each check: a run cut short keeps what finished.
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
  return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
  sys.exit(guarded(main)())
