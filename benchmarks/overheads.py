"""Costs around the compiled step: compilation, checkpoint saves (async vs sync).

Usage:  python benchmarks/overheads.py [--out FILE.json]

For the MLP 784-512-512-10 and the CNN of benchmarks/peers.py (MNIST-shaped random
data, batch 128, Adam), reports the ahead-of-time compile seconds of the train
block, and the train throughput with no mid-epoch checkpoints, with an async orbax
save every 200 and every 50 steps, and with a synchronous save every 50 steps. An
epoch's time is its training time (``epoch_seconds``) plus the time its mid-epoch
saves held the loop (``checkpoint_seconds``; for an async save, the call before the
writing goes on in the background); the call of the epoch end's save is in no
epoch's time. The cost of checkpointing is the relative drop in samples/s;
``ms_per_save`` is the epoch time it adds divided by the saves that cost a timed
epoch (epochs 2 and 3): its mid-epoch saves and, for async runs, the previous epoch
end's save too, whose background writing runs during the epoch (every epoch ends
with a save when ``checkpoint_every_steps`` is set). With every step count here
dividing the epoch, that is ``steps // every`` saves for an async run and
``(steps - 1) // every`` for a synchronous one.

``--parts cadence`` measures the cost of checkpointing at the cadences a user would
pick rather than at a fixed step count: on MNIST-sized epochs (469 steps of 128),
the whole training time (``fit``'s wall time less its compile seconds, the final
save's wait included) with no checkpoints, with jdl's default (an async save at each
epoch's end), and with ``checkpoint_every_seconds=1`` (plus the epoch ends); after
a warm-up fit the three alternate (five rounds for the MLP, three for the CNN), and
the cost is the median of the rounds' relative time added.

``--parts orbax`` (also in the default) measures what one save costs the machine,
apart from training: the process CPU time (all threads) of a save through jdl's
``Checkpointer`` and the wait for it, median over 20 saves, for trees of 1, 20 and
60 four-element leaves (orbax's fixed and per-leaf costs) and for the MLP's and the
CNN's parameters with two Adam moments (a TrainState's bulk), the latter also
through orbax's ``PyTreeCheckpointHandler`` with and without compression.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time

import numpy as np

import jdl
from jdl.data import Dataset

from _cli import ArgumentParser, out_file
from _provenance import provenance

MODELS = {
    "mlp": {"name": "mlp", "hidden": (512, 512)},
    "cnn": {"name": "cnn", "features": (32, 64), "pool": "avg", "dense": (256,)},
}
SIZES = {"mlp": 128 * 800, "cnn": 128 * 400}
RUNS = (("async_every_200", 200, True), ("async_every_50", 50, True), ("sync_every_50", 50, False))


def _dataset(n: int) -> Dataset:
  rng = np.random.default_rng(0)
  return Dataset(x_train=rng.random((n, 28, 28, 1), dtype=np.float32),
                 y_train=(np.arange(n) % 10).astype(np.int32),
                 x_test=rng.random((128, 28, 28, 1), dtype=np.float32),
                 y_test=(np.arange(128) % 10).astype(np.int32), num_classes=10,
                 task="classification", name="bench", input_shape=(28, 28, 1))


def _config(model: dict, **overrides):
  """jdl's config for ``model`` at batch 128: no validation split, plots or TensorBoard."""
  config = jdl.base_config()
  config.model = model
  config.update(dict(batch_size=128, validation_split=0.0, normalize="none",
                     tensorboard=False, plots=False, monitor="", **overrides))
  return config


def run(model: dict, n: int, every: int, async_save: bool) -> tuple[float, float]:
  ds = _dataset(n)
  config = _config(model, num_epochs=3, checkpoint_every_steps=every,
                   async_checkpoints=async_save, scan_chunk=50)
  with tempfile.TemporaryDirectory() as workdir:
    trainer = jdl.fit(config, workdir if every else None, dataset=ds, quiet=True).trainer
    if not every:
      return float(np.median(trainer.epoch_rates[1:])), trainer.compile_seconds
    with open(f"{workdir}/metrics.jsonl") as f:
      lines = [json.loads(line) for line in f]
  rates = [n / (r["epoch_seconds"] + r.get("checkpoint_seconds", 0.0))
           for r in lines if r["split"] == "train"]
  return float(np.median(rates[1:])), trainer.compile_seconds


def saves_per_epoch(steps: int, every: int, async_save: bool) -> int:
  """The saves whose cost falls in one timed epoch (not the first) of ``steps`` steps,
  with a save every ``every`` steps (counted from the epoch's start) and at its end.

  The mid-epoch saves (their call is timed) and, when async, the previous epoch end's
  save: its call is in no epoch's time, but its writing goes on in the background
  during this epoch. A synchronous save does all its work in its call.
  """
  mid = (steps - 1) // every
  return mid + 1 if async_save else mid


LEAF_SHAPES = {
    "mlp": [(784, 512), (512,), (512, 512), (512,), (512, 10), (10,)],
    "cnn": [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (3136, 256), (256,), (256, 10), (10,)],
}


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def save_cost(tree, *, compression: bool | None = None, saves: int = 20) -> dict:
  """CPU ms (all threads) and wall ms of one async save plus its wait, medians.

  ``compression=None`` saves through jdl's Checkpointer; True/False through a bare
  orbax manager with ``PyTreeCheckpointHandler(use_compression=...)``.
  """
  import orbax.checkpoint as ocp

  from jdl.checkpoint import Checkpointer
  with tempfile.TemporaryDirectory() as directory:
    if compression is None:
      manager = Checkpointer(directory, keep=2)
      save = lambda step: manager.save(step, tree, meta={"step": step})  # noqa: E731
      wait, close = manager.wait, manager.close
    else:
      orbax_manager = ocp.CheckpointManager(
          directory, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
          item_names=("tree",),
          item_handlers={"tree": ocp.PyTreeCheckpointHandler(use_compression=compression)})
      save = lambda step: orbax_manager.save(  # noqa: E731
          step, args=ocp.args.Composite(tree=ocp.args.PyTreeSave(tree)), force=True)
      wait, close = orbax_manager.wait_until_finished, orbax_manager.close
    save(0)
    wait()
    cpu, wall = [], []
    for step in range(1, saves + 1):
      c0, t0 = _cpu_seconds(), time.perf_counter()
      save(step)
      wait()
      cpu.append(_cpu_seconds() - c0)
      wall.append(time.perf_counter() - t0)
    close()
  return {"cpu_ms": round(1e3 * float(np.median(cpu)), 1),
          "wall_ms": round(1e3 * float(np.median(wall)), 1)}


def orbax_rows() -> list[dict]:
  rng = np.random.default_rng(0)
  rows = []
  for leaves in (1, 20, 60):
    tree = {f"leaf{i}": np.full((4,), i, np.float32) for i in range(leaves)}
    rows.append({"tree": f"{leaves} leaves of 4 floats", "leaves": leaves, "MB": 0.0,
                 "via": "jdl Checkpointer", **save_cost(tree)})
    print(json.dumps(rows[-1]), flush=True)
  for name, shapes in LEAF_SHAPES.items():
    tree = {f"{part}{i}": rng.normal(size=shape).astype(np.float32)
            for part in ("params", "mu", "nu") for i, shape in enumerate(shapes)}
    size = round(sum(x.nbytes for x in tree.values()) / 1e6, 2)
    for via, compression in (("jdl Checkpointer", None), ("orbax, compressed", True),
                             ("orbax, uncompressed", False)):
      rows.append({"tree": f"{name} params + Adam moments", "leaves": len(tree), "MB": size,
                   "via": via, **save_cost(tree, compression=compression)})
      print(json.dumps(rows[-1]), flush=True)
  return rows


def fit_rows() -> list[dict]:
  rows = []
  for name, model in MODELS.items():
    base, compile_s = run(model, SIZES[name], 0, True)
    row = {"model": name, "compile_seconds": round(compile_s, 2), "no_checkpoints": round(base)}
    steps = SIZES[name] // 128
    for label, every, async_save in RUNS:
      rate, _ = run(model, SIZES[name], every, async_save)
      saves = saves_per_epoch(steps, every, async_save)
      row[label] = round(rate)
      row[label + "_cost_pct"] = round(100 * (1 - rate / base), 1)
      row[label + "_ms_per_save"] = (round(1e3 * SIZES[name] * (1 / rate - 1 / base) / saves, 1)
                                     if saves else None)
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows


CADENCE_EPOCHS = {"mlp": 5, "cnn": 2}
CADENCE_REPEATS = {"mlp": 5, "cnn": 3}
CADENCES = (("none", None), ("epoch_ends", 0.0), ("every_second", 1.0))


def train_seconds(model: dict, epochs: int, every_seconds: float | None) -> tuple[float, int]:
  """Wall seconds of ``fit`` less compilation, and the checkpoints it wrote.

  ``every_seconds=None``: no workdir at all; ``0``: jdl's default cadence.
  """
  from jdl import checkpoint
  config = _config(model, num_epochs=epochs, checkpoint_every_seconds=every_seconds or 0.0)
  dataset = _dataset(128 * 469)
  saves = []
  save = checkpoint.Checkpointer.save

  def counted(self, step, *args, **kwargs):
    saves.append(step)
    return save(self, step, *args, **kwargs)

  checkpoint.Checkpointer.save = counted
  try:
    with tempfile.TemporaryDirectory() as workdir:
      t0 = time.perf_counter()
      result = jdl.fit(config, None if every_seconds is None else workdir, dataset=dataset,
                       quiet=True)
      seconds = time.perf_counter() - t0
  finally:
    checkpoint.Checkpointer.save = save
  return seconds - result.trainer.compile_seconds, len(saves)


def cadence_rows() -> list[dict]:
  rows = []
  for name, model in MODELS.items():
    epochs = CADENCE_EPOCHS[name]
    train_seconds(model, 1, None)  # Warm-up: the first fit in a process runs slower.
    times = {label: [] for label, _ in CADENCES}
    saves = {label: 0 for label, _ in CADENCES}
    for _ in range(CADENCE_REPEATS[name]):
      for label, every in CADENCES:
        seconds, saves[label] = train_seconds(model, epochs, every)
        times[label].append(seconds)
    row = {"model": name, "epochs": epochs, "steps_per_epoch": 469,
           **{f"{label}_seconds": [round(t, 2) for t in ts] for label, ts in times.items()}}
    for label, _ in CADENCES[1:]:
      costs = [100 * (t / base - 1) for t, base in zip(times[label], times["none"])]
      row[f"{label}_saves"] = saves[label]
      row[f"{label}_cost_pct"] = round(float(np.median(costs)), 1)
      row[f"{label}_cost_pct_runs"] = [round(c, 1) for c in costs]
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows


def main() -> None:
  parser = ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=out_file, default=None)
  parser.add_argument("--parts", default="fit,orbax",
                      help="comma-separated: fit (throughput with saves), cadence (training "
                      "time with saves at epoch ends or every second), orbax (cost of a save)")
  args = parser.parse_args()
  parts = set(args.parts.split(","))
  known = {"fit", "cadence", "orbax"}
  if parts - known:
    parser.error(f"unknown parts: {sorted(parts - known)}")
  rows = ((fit_rows() if "fit" in parts else []) + (cadence_rows() if "cadence" in parts else [])
          + (orbax_rows() if "orbax" in parts else []))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"provenance": provenance(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
