"""Streaming from memory-mapped .npy files (dataset='npy_dir') vs data in memory.

Two measurements, each run in its own subprocess (so peak memory is per run):

1. **Speed**: MNIST-shaped random data (``--speed-rows`` float32 images), the MLP
   784-512-512-10, batch 128, Adam: train samples/s of the epochs after the first
   (the loop's own ``samples_per_sec``, compilation excluded), in memory
   (a :class:`jdl.data.Dataset`) and streamed from an ``npy_dir`` of the same arrays;
   the final parameters are compared bit for bit.
2. **Memory**: a large ``npy_dir`` (``--rows`` float32 images, x_train in 4 shards,
   several GB): open and validate it, compute the normalisation statistics, train
   ``--steps`` steps (stopped by the loop's own SIGTERM path), evaluate a 50,000-row
   test split; a sampler thread records the process's peak resident memory (VmRSS;
   its anonymous part RssAnon; RssFile, pages mapped from the files) against the
   files' size.

Usage:
  python benchmarks/streaming.py [--rows 1000000] [--speed-rows 60000] [--steps 300]
      [--dir /tmp/jdl-streaming-bench] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from _cli import ArgumentParser, at_least, child_failure, guarded

REPO = Path(__file__).resolve().parent.parent


def _status() -> dict[str, int]:
  """Memory fields of /proc/self/status, in bytes."""
  out = {}
  for line in Path("/proc/self/status").read_text().splitlines():
    key, _, value = line.partition(":")
    if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
      out[key] = int(value.split()[0]) * 1024
  return out


class _Sampler:
  """Peak VmRSS / RssAnon / RssFile, sampled every 20 ms in a thread."""

  def __init__(self):
    self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    while not self._stop.is_set():
      for k, v in _status().items():
        if k in self.peak:
          self.peak[k] = max(self.peak[k], v)
      time.sleep(0.02)

  def stop(self) -> dict[str, int]:
    self._stop.set()
    self._thread.join()
    return self.peak


def _config(**kw):
  import jdl
  c = jdl.config.base_config()
  c.model.name = "mlp"
  with c.model.unlocked():
    c.model.hidden = (512, 512)
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.batch_size, c.tensorboard, c.plots = 128, False, False
  c.validation_split, c.normalize, c.print_every_epochs = 0.0, "global", 1000
  for k, v in kw.items():
    c[k] = v
  c.lock()
  return c


def _worker_speed(directory: str, streamed: bool, epochs: int) -> dict:
  import jax
  import jdl
  base = _status()  # After the imports: jaxlib's shared objects alone are ~0.2 GB of RssFile.
  sampler = _Sampler()
  if streamed:
    config, dataset = _config(dataset="npy_dir", data_dir=directory, num_epochs=epochs), None
  else:
    d = Path(directory)
    x, y = np.load(d / "x_train.npy"), np.load(d / "y_train.npy")
    xt, yt = np.load(d / "x_test.npy"), np.load(d / "y_test.npy")
    dataset = jdl.data.Dataset(x_train=x, y_train=y, x_test=xt, y_test=yt, num_classes=10,
                               task="classification", name="mnist-shaped",
                               input_shape=x.shape[1:])
    config = _config(num_epochs=epochs)
  t0 = time.perf_counter()
  result = jdl.fit(config, dataset=dataset, quiet=True)
  wall = time.perf_counter() - t0
  peak = sampler.stop()
  params = np.concatenate([np.asarray(p).ravel() for p in jax.tree.leaves(result.state.params)])
  rates = result.trainer.epoch_rates
  return {"streamed": streamed, "samples_per_sec": float(np.median(rates[1:] or rates)),
          "epoch_rates": rates, "wall_s": round(wall, 1), "peak": peak, "base": base,
          "test": result.test_metrics, "params_sha": __import__("hashlib").sha256(
              params.tobytes()).hexdigest()}


def _worker_memory(directory: str, steps: int) -> dict:
  import jdl
  from jdl.train import callbacks as cb
  base = _status()
  sampler = _Sampler()
  timings = {}

  class StopAt(cb.Callback):
    def on_steps_end(self, trainer, step, num_steps):
      if step >= steps and "train_s" not in timings:
        timings["train_s"] = time.perf_counter() - timings["t_train"]
        os.kill(os.getpid(), signal.SIGTERM)  # The loop's preemption path: a clean stop.

    def on_train_begin(self, trainer):
      timings["open_s"] = time.perf_counter() - timings["t0"]
      timings["t_train"] = time.perf_counter()

  timings["t0"] = time.perf_counter()
  config = _config(dataset="npy_dir", data_dir=directory, num_epochs=1, scan_chunk=50)
  result = jdl.fit(config, quiet=True, callbacks=[StopAt()])
  trainer = result.trainer
  t = time.perf_counter()
  test = trainer.evaluate_split(trainer.data.test)
  eval_s = time.perf_counter() - t
  peak = sampler.stop()
  return {"steps": trainer.step, "preempted": trainer.preempted, "open_and_stats_s":
          round(timings["open_s"], 1), "train_s": round(timings["train_s"], 1),
          "samples_per_sec_incl_compile": round(trainer.step * 128 / timings["train_s"], 1),
          "eval_rows": trainer.data.test.size, "eval_s": round(eval_s, 1), "test": test,
          "peak": peak, "base": base, "final": _status()}


def _write_dir(d: Path, rows: int, test_rows: int, shards: int, seed: int = 0) -> int:
  """Random MNIST-shaped float32 images in [0, 1), written chunk by chunk; returns bytes."""
  d.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  bounds = np.linspace(0, rows, shards + 1).astype(int)
  names = ["x_train.npy"] if shards == 1 else [f"x_train.{i}.npy" for i in range(shards)]
  for name, lo, hi in zip(names, bounds[:-1].tolist(), bounds[1:].tolist()):
    out = np.lib.format.open_memmap(d / name, mode="w+", dtype=np.float32,
                                    shape=(hi - lo, 28, 28, 1))
    for s in range(0, hi - lo, 50_000):
      e = min(hi - lo, s + 50_000)
      out[s:e] = rng.random((e - s, 28, 28, 1), dtype=np.float32)
    out.flush()
    del out
  np.save(d / "y_train.npy", (np.arange(rows) % 10).astype(np.int32))
  np.save(d / "x_test.npy", rng.random((test_rows, 28, 28, 1), dtype=np.float32))
  np.save(d / "y_test.npy", (np.arange(test_rows) % 10).astype(np.int32))
  return sum(p.stat().st_size for p in d.iterdir())


def _run_worker(args: list[str]) -> dict:
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run([sys.executable, __file__, "--worker", *args], env=env,
                       capture_output=True, text=True)
  if out.returncode:
    raise child_failure(f"the worker {args[0]!r}", out.stderr)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  p = ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", type=at_least(0), default=1_000_000, help="memory part; 0 skips it")
  p.add_argument("--speed-rows", type=at_least(1), default=60_000)
  p.add_argument("--epochs", type=at_least(1), default=3)
  p.add_argument("--steps", type=at_least(1), default=300)
  p.add_argument("--dir", default="/tmp/jdl-streaming-bench",
                 help="where the data sets are written, in DIR/speed and DIR/big (which must "
                      "not exist); only those are deleted at the end")
  p.add_argument("--keep", action="store_true", help="keep the generated files")
  p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    kind, *rest = args.worker
    if kind == "speed":
      res = _worker_speed(rest[0], rest[1] == "1", int(rest[2]))
    else:
      res = _worker_memory(rest[0], int(rest[1]))
    print(json.dumps(res))
    return

  root = Path(args.dir)
  made_root = not root.exists()
  ours = [root / "speed", root / "big"]
  taken = [str(d) for d in ours if d.exists()]
  if taken:
    p.error(f"{' and '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; the benchmark writes its data sets there "
            "and deletes them at the end: give another --dir")
  import jax
  gb = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
  mb = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}")
  try:
    small = root / "speed"
    _write_dir(small, args.speed_rows, 10_000, shards=1)
    runs = {}
    for streamed in (False, True):
      runs[streamed] = r = _run_worker(["speed", str(small), str(int(streamed)), str(args.epochs)])
      print(f"speed  {'streamed ' if streamed else 'in memory'}: {r['samples_per_sec']:,.0f} "
            f"samples/s (epochs {r['epoch_rates']}), peak RSS {mb(r['peak']['VmRSS'])} "
            f"({mb(r['peak']['VmRSS'] - r['base']['VmRSS'])} above the imports), "
            f"wall {r['wall_s']} s, test {r['test']}")
    same = runs[False]["params_sha"] == runs[True]["params_sha"]
    print(f"speed  streamed / in memory: "
          f"{runs[True]['samples_per_sec'] / runs[False]['samples_per_sec']:.2f}; final "
          f"parameters bitwise equal: {same}")
    if args.rows <= 0:
      return
    big = root / "big"
    t = time.perf_counter()
    size = _write_dir(big, args.rows, 50_000, shards=4)
    print(f"memory files: {args.rows:,} train + 50,000 test float32 28x28x1 rows, "
          f"{gb(size)} ({time.perf_counter() - t:.0f} s to write)")
    r = _run_worker(["memory", str(big), str(args.steps)])
    pk = r["peak"]
    print(f"memory open+validate+statistics {r['open_and_stats_s']} s; {r['steps']} steps "
          f"in {r['train_s']} s ({r['samples_per_sec_incl_compile']:,.0f} samples/s incl. "
          f"compile), stopped by {r['preempted']}; test eval of {r['eval_rows']:,} rows in "
          f"{r['eval_s']} s")
    b = r["base"]
    print(f"memory after importing jax and jdl: VmRSS {mb(b['VmRSS'])} (RssAnon "
          f"{mb(b['RssAnon'])}, RssFile {mb(b['RssFile'])}: mostly jaxlib's shared objects)")
    print(f"memory peak VmRSS {mb(pk['VmRSS'])} (RssAnon {mb(pk['RssAnon'])}, RssFile "
          f"{mb(pk['RssFile'])}) = {pk['VmRSS'] / size:.1%} of the {gb(size)} of files; "
          f"above the import baseline: {mb(pk['VmRSS'] - b['VmRSS'])} = "
          f"{(pk['VmRSS'] - b['VmRSS']) / size:.1%}")
  finally:
    if not args.keep:  # Only what this run wrote (DIR too if it made it and it is empty).
      for d in ours:
        shutil.rmtree(d, ignore_errors=True)
      if made_root:
        with contextlib.suppress(OSError):
          root.rmdir()


if __name__ == "__main__":
  guarded(main)()
