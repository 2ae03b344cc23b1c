"""jdl's ``fit`` against hand-written JAX loops, Keras 3 (JAX backend) and PyTorch.

Trains three models (MLP 784-512-512-10, the Flax MNIST-example CNN with average
pooling, CIFAR ResNet-20) at batch 128 with Adam(1e-3) and softmax cross-entropy
on random data of MNIST's or CIFAR's shape, with each of these peers:

* ``jdl``: ``jdl.fit`` (public API, in-memory ``jdl.data.Dataset``);
* ``flax_step``: a hand-written Flax + optax jitted step, donating the state, fed
  numpy batches of a per-epoch permutation (the Flax examples' loop);
* ``flax_scan``: a hand-written ``lax.scan`` over a whole epoch of on-device data;
* ``keras``: Keras 3 ``model.fit`` with ``KERAS_BACKEND=jax``;
* ``torch``: a PyTorch eager loop (a thread per core this process may use, denormals
  flushed, as XLA does);
* ``torch_compile``: the same loop on ``torch.compile(model)``;
* ``torch_graphs``: the same loop on ``torch.compile(model, mode='reduce-overhead')``
  (CUDA graphs on a GPU) with the fused Adam kernel: PyTorch's fastest setup for small
  steps without rewriting the loop (on the CPU, with no CUDA graphs to replay, it is
  ``torch_compile`` with the usual Adam).

Every measurement runs in its own subprocess (so peak RSS is per run and the
frameworks cannot interfere), one after another. Reported per run: the median
samples/s of the epochs after the first, compilation seconds (measured ahead of
time for the JAX peers; ``~`` marks an estimate, first epoch minus a steady one,
where compilation happens inside the first epoch), the first epoch's seconds, peak
RSS, on a GPU the peak device memory (``peak_device_mib``, in the JSON and the
console lines), and "other cores": the CPU that other processes on the machine used
during the run. A machine busy with other work slows the peers unequally, so a run
whose other cores exceed 0.1 is marked ``*`` in the tables, a ``jdl-bench: warning``
line names it, and the exit status is 1 unless ``--allow-load`` is given.

Training FLOPs per example come from XLA's cost analysis of the hand-written Flax
step; "% peak" is the achieved FLOP rate over a jitted 2048x2048 float32 matmul in
JAX, timed 10 times at the start of the run and 10 times at its end: the best of
the 20 times is the peak (both measurements are in the JSON, ``matmul`` and
``matmul_end``; a percentage still above 100% is warned of). "% peak 3xfwd" counts
3x XLA's forward count instead of its count of the training step (the issue's
3x-forward convention uses an analytic count: the same for the MLP, ~6% higher for
the CNN, whose zero-padding taps XLA does not count).

The hand-written ``lax.scan`` epoch is pathologically slow on XLA:CPU for conv
nets (the convolutions inside a loop take a slow path: about 100 samples/s for the
CNN, 6 for ResNet-20), so its epochs are capped (see ``SIZES``).

Peers are optional: one whose package is missing is skipped with a line saying so
(``pip install -e '.[bench]'`` installs Keras and PyTorch).

With ``--gpu`` the same peers run on the first CUDA GPU: JAX's default backend and
PyTorch on ``cuda`` with the data on the GPU, TF32 matmuls in both (JAX's default
precision there; ``torch.set_float32_matmul_precision('high')``), larger epochs
(``SIZES['gpu']``), an 8192x8192 matmul for the peak, and by default the peers of
the GPU comparison (jdl, the hand-written step and scan, PyTorch eager and compiled). jdl
runs with its default ``config.deterministic=True`` (XLA's deterministic GPU kernels,
bitwise-reproducible runs); the other peers use their frameworks' default kernels,
which are not. ``--jdl-deterministic=false`` compares like with like.

``--jdl-set KEY=VALUE`` (repeatable) gives jdl's runs a config value, as
``--config.KEY=VALUE`` does (e.g. ``nonfinite_check=block``), to time one setting.
``--out`` is written after every run (marked ``"partial": true`` until the end).

Usage:
  python benchmarks/peers.py [--quick | --gpu] [--batch-sizes 128,512]
      [--out results.json] [--md results.md] [--models mlp,cnn,resnet20]
      [--peers jdl,flax_step,...] [--jdl-deterministic true|false] [--allow-load]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.util
import json
import os
from pathlib import Path
import platform
import resource
import subprocess
import sys
import time
import traceback
from typing import Any

HELPERS = Path(__file__).resolve().parent / "peers"
sys.path.insert(0, str(HELPERS))

import bench_common as common  # pylint: disable=g-import-not-at-top,wrong-import-position
import bench_report as report  # pylint: disable=g-import-not-at-top,wrong-import-position
from _cli import ArgumentParser, out_file  # pylint: disable=wrong-import-position
from _provenance import cpu_name as _cpu_name  # pylint: disable=wrong-import-position
from _provenance import git_commit as _git_commit  # pylint: disable=wrong-import-position


@dataclasses.dataclass(frozen=True)
class Peer:
  """How to run one peer: ``module.function(**kwargs)`` in a child process."""
  module: str
  function: str
  requires: tuple[str, ...]
  kwargs: tuple[tuple[str, Any], ...] = ()
  env: tuple[tuple[str, str], ...] = ()


PEERS = {
    "jdl": Peer("bench_jax", "run_jdl", ("jdl",)),
    "flax_step": Peer("bench_jax", "run_flax_step", ("flax", "optax")),
    "flax_scan": Peer("bench_jax", "run_flax_scan", ("flax", "optax")),
    "keras": Peer("bench_keras", "run_keras", ("keras", "jax"),
                  env=(("KERAS_BACKEND", "jax"),)),
    "torch": Peer("bench_torch", "run_torch", ("torch",), kwargs=(("compile", False),)),
    "torch_compile": Peer("bench_torch", "run_torch", ("torch",),
                          kwargs=(("compile", True),)),
    "torch_graphs": Peer("bench_torch", "run_torch", ("torch",),
                         kwargs=(("compile", True), ("graphs", True))),
}
MATMUL = {"jax": Peer("bench_jax", "run_matmul", ("jax",)),
          "torch": Peer("bench_torch", "run_matmul", ("torch",))}
# flax_scan is the like-for-like peer of jdl's on-device epochs (the step loop feeds
# numpy batches from the host; PyTorch keeps its data on the GPU). It was missing
# from the seventh session's GPU runs.
GPU_PEERS = ("jdl", "flax_step", "flax_scan", "torch", "torch_compile", "torch_graphs")
# Counted on the CPU backend even for --gpu runs: XLA's GPU cost analysis gives no FLOPs
# for the convolutions it hands to cuDNN (it put ResNet-20 at 4.6 M instead of 230 M).
FLOPS = Peer("bench_jax", "run_flops", ("flax", "optax"), env=(("JAX_PLATFORMS", "cpu"),))
# --jdl-set checked before any run, in a child (this process imports no framework).
CHECK_JDL = Peer("bench_jax", "check_jdl_config", ("jdl", "flax", "optax"),
                 env=(("JAX_PLATFORMS", "cpu"),))

# Examples per epoch and epochs, per model; the peers in `caps` run smaller epochs.
# On a quiet 2-core machine the default run takes about 11 minutes, --quick 3.
SIZES = {
    "default": {
        "mlp": {"n": 102_400, "epochs": 4},
        "cnn": {"n": 12_800, "epochs": 4,
                "caps": {"flax_scan": {"n": 640, "epochs": 3}}},
        "resnet20": {"n": 1_920, "epochs": 4,
                     "caps": {"flax_scan": {"n": 256, "epochs": 2}}},
    },
    "quick": {
        "mlp": {"n": 6_400, "epochs": 3},
        "cnn": {"n": 1_280, "epochs": 3,
                "caps": {"flax_scan": {"n": 256, "epochs": 2}}},
        "resnet20": {"n": 256, "epochs": 3, "caps": {"flax_scan": None}},
    },
    # One GPU: epochs of many steps, so that launch gaps and timers do not dominate (jdl's
    # MLP epochs took 0.04-0.1 s on an H200; the others' up to ~2 s).
    "gpu": {
        "mlp": {"n": 204_800, "epochs": 4},
        "cnn": {"n": 102_400, "epochs": 4},
        "resnet20": {"n": 25_600, "epochs": 4},
    },
}
SEED = 0


def _missing(peer: Peer) -> list[str]:
  return [name for name in peer.requires if importlib.util.find_spec(name) is None]


def _cpu_busy_seconds() -> tuple[float, float]:
  """(busy, steal) CPU-seconds of the whole machine since boot, from /proc/stat."""
  try:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
  except OSError:
    return 0.0, 0.0
  user, nice, system, _, _, irq, softirq, steal = fields[:8]
  hz = os.sysconf("SC_CLK_TCK")
  return (user + nice + system + irq + softirq) / hz, steal / hz


def _children_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def run_child(peer: Peer, timeout: float, **kwargs) -> dict[str, Any]:
  """Runs ``peer`` in a fresh Python process; returns its result and the run's context.

  Returns:
    The child's result dict with ``status`` ``'ok'``, or ``{'status': 'failed: ...'}``;
    both carry ``wall_s``, ``load_before``, ``other_cores`` and ``steal_cores``.
  """
  spec = {"module": peer.module, "function": peer.function,
          "kwargs": {**dict(peer.kwargs), **kwargs}}
  env = {**os.environ, **dict(peer.env), "PYTHONUNBUFFERED": "1"}
  context = {"load_before": round(os.getloadavg()[0], 2)}
  busy0, steal0 = _cpu_busy_seconds()
  child0, t0 = _children_cpu_seconds(), time.perf_counter()
  try:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
  except subprocess.TimeoutExpired:
    result = {"status": f"failed: timed out after {timeout:.0f} s"}
  else:
    lines = [l for l in proc.stdout.splitlines() if l.startswith(common.RESULT_MARKER)]
    if lines:
      result = json.loads(lines[-1][len(common.RESULT_MARKER):])
    else:
      tail = [l for l in proc.stderr.strip().splitlines() if l.strip()][-1:] or ["no output"]
      result = {"status": f"failed: exit {proc.returncode}: {tail[0][:200]}"}
    if not result["status"].startswith("ok"):
      sys.stderr.write(proc.stderr[-3000:])
  wall = time.perf_counter() - t0
  busy1, steal1 = _cpu_busy_seconds()
  own = _children_cpu_seconds() - child0
  context.update(wall_s=round(wall, 1),
                 other_cores=max(busy1 - busy0 - own, 0.0) / wall,
                 steal_cores=(steal1 - steal0) / wall)
  return {**result, **context}


def child_main(spec_json: str) -> None:
  """Runs one measurement in this process and prints its result for the driver."""
  spec = json.loads(spec_json)
  try:
    function = getattr(importlib.import_module(spec["module"]), spec["function"])
    result = {"status": "ok", **function(**spec["kwargs"])}
    peak = _device_peak_mib(spec["module"])
    if peak is not None:
      result["peak_device_mib"] = peak
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    message = (str(e).strip().splitlines() or [""])[0][:200]
    result = {"status": f"failed: {type(e).__name__}: {message}"}
  common.emit(result)


def _device_peak_mib(module: str) -> float | None:
  """The peak memory this child's run held on its GPU, MiB (None on a CPU): JAX's
  allocator's ``peak_bytes_in_use``, or PyTorch's ``max_memory_allocated``."""
  if module == "bench_jax":  # jdl's own reading (its module imports nothing else).
    import jax  # pylint: disable=g-import-not-at-top
    from jdl.train import runtime  # pylint: disable=g-import-not-at-top
    return runtime.peak_device_memory_mib(jax.local_devices())
  torch = sys.modules.get("torch")
  if module == "bench_torch" and torch is not None and torch.cuda.is_initialized():
    return torch.cuda.max_memory_allocated() / 2**20
  return None


def _log(message: str) -> None:
  print(message, flush=True)


def _warn(message: str) -> None:
  print(f"jdl-bench: warning: {message}", file=sys.stderr, flush=True)


def _select(parser: argparse.ArgumentParser, arg: str | None, valid: list[str],
            what: str) -> list[str]:
  """The comma list ``arg`` (``None``: all of ``valid``); a parser error (one line,
  exit status 2) for an unknown name or a list that names none."""
  if arg is None:
    return valid
  chosen = list(dict.fromkeys(s.strip() for s in arg.split(",") if s.strip()))
  if not chosen:
    parser.error(f"--{what} {arg!r} names no {what}; valid: {', '.join(valid)}")
  unknown = [c for c in chosen if c not in valid]
  if unknown:
    parser.error(f"unknown {what} {', '.join(unknown)}; valid: {', '.join(valid)}")
  return chosen


def _run_matmuls(timeout: float, versions: dict[str, str], gpu: bool,
                 names: tuple[str, ...] = tuple(MATMUL), when: str = "start") -> dict[str, Any]:
  out = {}
  size = 8192 if gpu else 2048
  for name in names:
    peer = MATMUL[name]
    missing = _missing(peer)
    if missing:
      _log(f"matmul {name} ({when}): skipped: {', '.join(missing)} not installed")
      continue
    kwargs = {"size": size, **({"device": "cuda"} if gpu and name == "torch" else {})}
    r = run_child(peer, timeout, **kwargs)
    versions.update(r.pop("versions", {}))
    out[name] = r
    if r["status"] == "ok":
      _log(f"matmul {name} ({when}): {size}x{size} float32 {r['gflops']:.1f} GFLOP/s median "
           f"({r['gflops_best']:.1f} best; other cores {r['other_cores']:.2f}"
           f"{'*' if report.loaded(r) else ''})")
    else:
      _log(f"matmul {name} ({when}): {r['status']}")
  return out


def _check_jdl_set(parser: argparse.ArgumentParser, overrides: dict[str, str],
                   runs: list[tuple[str, int, int]], deterministic: bool,
                   timeout: float) -> None:
  """Applies ``--jdl-set`` to the configs of jdl's runs (in a child) and checks them as
  training would: a parser error now, not a failed run after the others."""
  r = run_child(CHECK_JDL, timeout, runs=runs, overrides=overrides,
                deterministic=deterministic)
  if r["status"] != "ok":
    parser.error(f"--jdl-set: the values could not be checked: {r['status']}")
  if r["error"]:
    parser.error(f"--jdl-set: {r['error']}")


def _peak(*runs: dict[str, Any] | None) -> float | None:
  """The matmul peak, GFLOP/s: of the JAX matmul runs that finished, the best time."""
  best = [r["gflops_best"] for r in runs if r and r.get("status") == "ok"]
  return max(best) if best else None


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
  parser.add_argument("--gpu", action="store_true",
                      help="run on the first CUDA GPU (JAX default backend, torch on cuda)")
  parser.add_argument("--batch-sizes", default=str(common.BATCH_SIZE),
                      help="comma-separated batch sizes (default: %(default)s)")
  parser.add_argument("--out", type=out_file, help="write the results as JSON here")
  parser.add_argument("--md", type=out_file, help="write a Markdown table here")
  parser.add_argument("--models",
                      help=f"comma-separated subset of {', '.join(common.INPUT_SHAPES)}")
  parser.add_argument("--peers", help=f"comma-separated subset of {', '.join(PEERS)}")
  parser.add_argument("--jdl-deterministic", choices=("true", "false"), default="true",
                      help="jdl's config.deterministic (default true, jdl's default): "
                           "on a GPU, false gives jdl XLA's default kernels, as the "
                           "other peers have")
  parser.add_argument("--jdl-set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config value of jdl's runs, as --config.KEY=VALUE (e.g. "
                           "nonfinite_check=block, scan_chunk=1600); repeatable")
  parser.add_argument("--timeout", type=float, default=900.0,
                      help="seconds one run may take before it is reported failed")
  parser.add_argument("--allow-load", action="store_true",
                      help="exit status 0 even when other processes used more than "
                           f"{report.LOAD_LIMIT} cores during a run (such runs are "
                           "marked * and warned of either way; without it the exit "
                           "status is 1)")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    child_main(args.child)
    return 0

  if args.gpu and args.quick:
    parser.error("--gpu and --quick exclude each other")
  if not args.timeout > 0:
    parser.error(f"--timeout must be > 0 seconds, got {args.timeout:g}")
  jdl_overrides = {}
  for item in args.jdl_set:  # The keys and values are checked by jdl, below.
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      parser.error(f"--jdl-set takes KEY=VALUE (e.g. nonfinite_check=block), got {item!r}")
    jdl_overrides[key.strip()] = value
  mode = "gpu" if args.gpu else "quick" if args.quick else "default"
  sizes = SIZES[mode]
  models = _select(parser, args.models, list(common.INPUT_SHAPES), "models")
  peers = _select(parser, args.peers if args.peers is not None
                  else ",".join(GPU_PEERS) if args.gpu else None, list(PEERS), "peers")
  try:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
  except ValueError:
    parser.error(f"--batch-sizes must be integers, got {args.batch_sizes!r}")
  if not batch_sizes or min(batch_sizes) < 1:
    parser.error(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
  for model in models:  # A batch no epoch holds fails every peer, each its own way.
    caps = sizes[model].get("caps", {})
    n = min(c["n"] for c in [sizes[model], *(caps.get(p, sizes[model]) for p in peers)] if c)
    if max(batch_sizes) > n:
      parser.error(f"--batch-sizes: {max(batch_sizes)} is larger than the {n} examples of a "
                   f"{model} epoch in this mode")
  if jdl_overrides:
    runs = []
    for model in models:
      size = sizes[model].get("caps", {}).get("jdl", sizes[model])
      runs += [(model, size["epochs"], b) for b in batch_sizes] if size else []
    _check_jdl_set(parser, jdl_overrides, runs, args.jdl_deterministic == "true",
                   args.timeout)
  if args.gpu:  # A CPU run labelled a GPU run otherwise (in a child: JAX would hold the GPU).
    probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                           capture_output=True, text=True)
    backend = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else "none"
    if backend != "gpu":
      parser.error(f"--gpu: JAX's default backend here is {backend!r}, not a CUDA GPU")
  started = time.perf_counter()
  meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
          "jdl_commit": _git_commit(), "mode": mode,
          "batch_sizes": batch_sizes, "load_at_start": os.getloadavg(),
          "jdl_deterministic": args.jdl_deterministic == "true",
          "jdl_overrides": jdl_overrides, "load_limit": report.LOAD_LIMIT,
          "allow_load": args.allow_load}
  versions: dict[str, str] = {}
  _log(f"{meta['cpu']}, {meta['cpu_count']} CPUs; load average "
       f"{' '.join(f'{v:.2f}' for v in meta['load_at_start'])}")
  matmul = _run_matmuls(args.timeout, versions, args.gpu)

  rows, flops, flops_3x = [], {}, {}
  for model in models:
    size = sizes[model]
    for batch, name in [(b, p) for b in batch_sizes for p in peers]:
      peer = PEERS[name]
      row = {"model": model, "batch": batch, "peer": name}
      cap = size.get("caps", {}).get(name, size)
      missing = _missing(peer)
      if missing:
        row["status"] = f"skipped: {', '.join(missing)} not installed"
      elif cap is None:
        row["status"] = "skipped: too slow for --quick"
      else:
        n, epochs = cap["n"], cap["epochs"]
        extra = {"device": "cuda"} if args.gpu and peer.module == "bench_torch" else {}
        if name == "jdl":
          extra["deterministic"] = args.jdl_deterministic == "true"
          if jdl_overrides:
            extra["overrides"] = jdl_overrides
        result = run_child(peer, args.timeout, model=model, n=n, epochs=epochs, seed=SEED,
                           batch_size=batch, **extra)
        versions.update(result.pop("versions", {}))
        row.update(result, n_train=n, epochs=epochs,
                   samples_per_epoch=(n // batch) * batch)
        if cap is not size:
          row["note"] = (row.get("note", "") + f" capped: {epochs} epochs of {n:,}").strip()
      rows.append(row)
      if row["status"] == "ok":
        _log(f"{model:8s} {batch:5d} {name:13s} {row['samples_per_s']:10,.0f} samples/s  "
             f"epochs {', '.join(f'{r:,.0f}' for r in row['epoch_rates'])}  "
             f"RSS {row['peak_rss_mib']:,.0f} MiB  "
             + (f"GPU peak {row['peak_device_mib']:,.0f} MiB  " if "peak_device_mib" in row
                else "")
             + f"wall {row['wall_s']:.0f} s  "
             f"other cores {row['other_cores']:.2f}{'*' if report.loaded(row) else ''}")
      else:
        _log(f"{model:8s} {batch:5d} {name:13s} {row['status']}")
      if args.out:  # So that a run stopped early (a lease's end) keeps its rows.
        Path(args.out).write_text(json.dumps(
            {"meta": meta, "matmul": matmul, "rows": rows, "partial": True}, indent=2) + "\n")
    if model not in flops and not _missing(FLOPS):
      r = run_child(FLOPS, args.timeout, model=model, seed=SEED)
      if r["status"] != "ok":
        rows.append({"model": model, "batch": batch_sizes[0], "peer": "(FLOP count)",
                     "status": r["status"]})
        _log(f"{model:8s} FLOP count: {r['status']}")
      else:
        flops[model] = r["flops_per_sample"]
        flops_3x[model] = 3 * r["forward_flops_per_sample"]

  # The peak again: a machine whose speed changed during the run (load, clocks) has
  # the faster of the two, so that no percentage divides by a peak measured low.
  matmul_end = _run_matmuls(args.timeout, versions, args.gpu, names=("jax",), when="end")
  peak = _peak(matmul.get("jax"), matmul_end.get("jax"))
  report.add_derived(rows, flops, peak, flops_3x)
  param_lines = report.check_params(rows)
  meta.update(load_at_end=os.getloadavg(), total_wall_s=round(time.perf_counter() - started),
              versions=versions)
  header = [
      f"{meta['cpu']}, {meta['cpu_count']} CPUs; jdl {meta['jdl_commit'] or '?'}; "
      + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
      f"batch {', '.join(map(str, batch_sizes))}, Adam(1e-3), random data; "
      f"{'one GPU (' + str(matmul.get('jax', {}).get('device')) + '); ' if args.gpu else ''}"
      "median samples/s of epochs "
      f"after the first; load average {meta['load_at_start'][0]:.2f} at start, "
      f"{meta['load_at_end'][0]:.2f} at end; {meta['total_wall_s']} s in all",
  ]
  if peak:
    jax_runs = {when: m["jax"] for when, m in (("start", matmul), ("end", matmul_end))
                if m.get("jax", {}).get("status") == "ok"}
    msize = next(iter(jax_runs.values())).get("size", 2048)
    header.append(f"% peak: of a jitted {msize}x{msize} float32 matmul in JAX"
                  f"{' (TF32)' if args.gpu else ''}, {peak:.1f} GFLOP/s, the best time of "
                  f"its runs at the {' and the '.join(jax_runs)} (medians "
                  + ", ".join(f"{when} {r['gflops']:.1f}{'*' if report.loaded(r) else ''}"
                              for when, r in jax_runs.items())
                  + (f"; PyTorch: {matmul['torch']['gflops']:.1f}"
                     if matmul.get("torch", {}).get("status") == "ok" else "") + ")")
  header.append("training FLOPs per example (XLA CPU cost analysis of the Flax step): "
                + ", ".join(f"{m} {f / 1e6:.1f} M" for m, f in flops.items())
                + "; \"% peak 3xfwd\" counts 3x XLA's forward count instead: "
                + ", ".join(f"{m} {f / 1e6:.1f} M" for m, f in flops_3x.items()))
  busy = [r for r in rows if r["status"] == "ok" and report.loaded(r)]
  busy_peak = [m for m in (matmul.get("jax"), matmul_end.get("jax"))
               if m and m["status"] == "ok" and report.loaded(m)]
  notes = [report.LOAD_FOOTNOTE] if busy or busy_peak else []
  _log("\n" + "\n".join(header) + "\n")
  _log(report.console_table(rows))
  _log("\n".join(["", *notes, *param_lines]))
  if args.out:
    Path(args.out).write_text(json.dumps(
        {"meta": meta, "matmul": matmul, "matmul_end": matmul_end, "peak_gflops": peak,
         "flops_per_sample": flops, "flops_per_sample_3x_forward": flops_3x, "rows": rows},
        indent=2) + "\n")
  if args.md:
    escape = lambda text: text.replace("*", "\\*")  # noqa: E731  (a literal * in Markdown)
    Path(args.md).write_text("\n\n".join(
        ["\n".join(f"- {escape(line)}" for line in header),
         # A note right under the table would be read as one more row of it.
         report.markdown_table(rows), *map(escape, notes),
         "\n".join(f"- {line}" for line in param_lines)]) + "\n")
  failed = [f"{r['model']}/{r['batch']}/{r['peer']}" for r in rows
            if r["status"].startswith("failed")]
  failed += [f"matmul {name} ({when})" for when, runs in (("start", matmul), ("end", matmul_end))
             for name, m in runs.items() if str(m.get("status", "ok")).startswith("failed")]
  if failed:
    _log(f"\n{len(failed)} run(s) failed: {', '.join(failed)}")
  busy_runs = [f"{r['model']}/{r['batch']}/{r['peer']} {r['other_cores']:.2f}" for r in busy]
  busy_runs += [f"matmul {name} ({when}) {m['other_cores']:.2f}"
                for when, runs in (("start", matmul), ("end", matmul_end))
                for name, m in runs.items() if m["status"] == "ok" and report.loaded(m)]
  if busy_runs:
    _warn(f"other processes used more than {report.LOAD_LIMIT} cores during "
          f"{len(busy_runs)} run(s) (other cores: {', '.join(busy_runs)}): their figures "
          "and ratios are not comparable (marked *); re-run on a quiet machine"
          + (" (--allow-load: exit status 0)" if args.allow_load
             else ", or pass --allow-load to accept them (exit status 1)"))
  over = [f"{r['model']}/{r['batch']}/{r['peer']} {pct:.1f}%" for r in rows
          for pct in [max(r.get("pct_matmul_peak") or 0, r.get("pct_matmul_peak_3x") or 0)]
          if pct > 100]
  if over:
    _warn(f"% peak above 100% in {len(over)} row(s) ({', '.join(over)}): the matmul peak "
          f"({peak:.1f} GFLOP/s) was measured below what training reached (a machine "
          "whose load or clock changed during the run?)")
  mismatch = any("MISMATCH" in line for line in param_lines)
  return 1 if failed or mismatch or (busy_runs and not args.allow_load) else 0


if __name__ == "__main__":
  sys.exit(main())
