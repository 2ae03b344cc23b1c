"""Where a training step's time goes, XLA operation by operation (``jdl profile``).

The trainer's compiled block of steps (the ``lax.scan`` that ``fit`` runs) is
called a few times under ``jax.profiler``. XLA:CPU records one event per executed
operation (a fusion, a matmul, a copy) on its worker threads, and
``jax.profiler.ProfileData`` reads them back without TensorBoard. The events are
summed per operation and shown in milliseconds per training step, each with its
output shape and the JAX operation it came from (its ``op_name``). The same time
is then grouped by layer and pass: ``jvp(...)`` marks the forward pass and
``transpose(jvp(...))`` the backward.

The per-operation times need not add up to the wall time, which is printed too:
operations run side by side on the worker threads (the sum can exceed it), and the
loop's own work between them (dispatch, the scan's bookkeeping, idle threads) is in
no operation (the sum can fall short: a third of a tiny MLP's step). Only the
CPU backend's events are read; on a GPU, use ``jax.profiler.trace`` with
TensorBoard or XProf.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import re
import shutil
import tempfile
import time
from typing import Any

import jax

from jdl.errors import JdlError

_HLO_LINE = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) .*\{\s*$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_OPERAND = re.compile(r"%([\w.\-]+)")
_CONTAINERS = ("while", "conditional", "call")
# Operations between devices; their time includes waiting for the other devices.
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                "collective-permute")
COLLECTIVES_LAYER = "across devices (all-reduce etc., waiting included)"


def hlo_ops(compiled_text: str) -> dict[str, tuple[str, str, str]]:
  """``{instruction: (output shape, opcode, op_name)}`` of an optimized HLO module.

  A fusion XLA made without an ``op_name`` of its own takes the commonest ``op_name``
  of the operations fused in it; one whose fused operations name none either (mixed
  precision's casts of the weights to bfloat16) that of the first operation it feeds
  that has one: a weight's cast is booked to the layer that uses it.
  """
  ops: dict[str, tuple[str, str, str]] = {}
  calls: dict[str, str] = {}
  users: dict[str, list[str]] = collections.defaultdict(list)
  names_in: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  computation = ""
  for line in compiled_text.splitlines():
    m = _HLO_LINE.match(line)
    if m:
      op_name = _OP_NAME.search(line)
      ops[m.group(1)] = (m.group(2), m.group(3), op_name.group(1) if op_name else "")
      if op_name:
        names_in[computation][op_name.group(1)] += 1
      called = _CALLS.search(line)
      if called and not op_name:
        calls[m.group(1)] = called.group(1)
      for operand in _OPERAND.findall(_operands(line, m.end())):
        users[operand].append(m.group(1))
    else:
      c = _COMPUTATION.match(line)
      if c:
        computation = c.group(1)
  unnamed = [name for name in calls if ops[name][1] == "fusion"]
  for name in unnamed:
    if names_in[calls[name]]:
      shape, opcode, _ = ops[name]
      ops[name] = (shape, opcode, names_in[calls[name]].most_common(1)[0][0])
  for _ in range(3):  # A cast feeding a cast: the name comes back along the chain.
    for name in unnamed:
      fed = [ops[u][2] for u in users[name] if u in ops and ops[u][2]]
      if not ops[name][2] and fed:
        ops[name] = (*ops[name][:2], fed[0])
  return ops


def _operands(line: str, start: int) -> str:
  """The text of an instruction's operand list, from just after its ``(``."""
  depth = 1
  for i in range(start, len(line)):
    depth += {"(": 1, ")": -1}.get(line[i], 0)
    if depth == 0:
      return line[start:i]
  return line[start:]


# Segments of an op_name that are the program's structure, not a layer: loops,
# branches, calls, transformations, and flax's method scopes ('Seq2Seq.encode',
# 'decoder.body': the module's own segment follows them). A loop's 'body' and
# 'cond' only after its 'while', and a branch's 'cond' only before its
# 'branch_N_fun': a module may be named 'body' or 'cond'.
_STRUCTURE = re.compile(r"while|branch_\d+_fun|closed_call|checkpoint|remat\d*"
                        r"|rematted_computation|\w+\(.*\)|.*\..*")
_BRANCH = re.compile(r"branch_\d+_fun")


def _modules(segments: list[str], start: int) -> list[str]:
  """The module names among an op_name's ``segments[start:]``, outermost first."""
  names = []
  for i, segment in enumerate(segments[start:], start):
    before = segments[i - 1] if i else ""
    after = segments[i + 1] if i + 1 < len(segments) else ""
    loop = segment in ("body", "cond") and before == "while"
    branch = segment == "cond" and _BRANCH.fullmatch(after)
    if not (_STRUCTURE.fullmatch(segment) or loop or branch):
      names.append(segment)
  return names


def model_names(op_names) -> set[str]:
  """The models whose passes ``op_names`` hold: the ``CNN`` of ``jvp(CNN)``."""
  return {m for name in op_names for m in re.findall(r"jvp\((\w+)\)", name)}


def layer_of(op_name: str, models: frozenset[str] | set[str] = frozenset()) -> str:
  """``'conv_1 (backward)'`` from ``'jit(run_block)/.../transpose(jvp(CNN))/conv_1/dot_general'``.

  The pass is ``backward`` under ``transpose(...)``, ``forward`` under ``jvp(...)``.
  Operations of the model outside its submodules (e.g. pooling written inline) are
  the model's own (``'CNN (forward)'``), those of the loss function ``'loss'``, and
  the rest of the step (the optimizer update, metrics) ``'update and metrics'``.
  ``models``: the step's models (:func:`model_names`). With two or more (a GAN's
  generator and discriminator) a layer is named with its model
  (``'MLPGenerator/hidden_0 (forward)'``), and a model's operations outside any
  gradient (the generator making the discriminator's fakes) are its
  ``(forward, no gradient)``.
  """
  if not op_name:
    return "(no op_name: made by XLA)"
  path = source_of(op_name).split("/")
  passes = [p for p in path if p.startswith(("transpose(", "jvp("))]
  if passes:
    kind = "backward" if passes[0].startswith("transpose(") else "forward"
    model = re.search(r"jvp\((\w*)\)", passes[0])  # jvp(CNN): a module; jvp(): a function.
    model = model.group(1) if model else ""
    start = path.index(passes[0]) + 1
  else:  # A model called outside any gradient, else the update.
    called = [p for p in path[:-1] if p in models] if len(models) > 1 else []
    if not called:
      return "update and metrics"
    kind, model, start = "forward, no gradient", called[0], path.index(called[0]) + 1
  modules = _modules(path[:-1], start)
  layer = modules[0] if modules else (model or "loss")
  if len(models) > 1 and model and modules:
    layer = f"{model}/{layer}"
  return f"{layer} ({kind})"


def source_of(op_name: str) -> str:
  """``op_name`` inside the block's loop: the block's loop body is a closed_call, whose
  path before it is dropped; calls inside a layer (dropout's random bits:
  ``.../jvp(CNN)/Dropout_0/jit(_bernoulli)/.../closed_call/add``) keep their path."""
  head, sep, tail = op_name.partition("closed_call/")
  return tail if sep and not re.search(r"(transpose|jvp)\(", head) else op_name


def compiled_first_block(trainer, steps: int):
  """The block of ``steps`` training steps that ``fit`` runs, compiled ahead of time.

  Returns ``(compiled, args, compile_s)``: ``compiled(*args)`` runs the first
  ``steps`` steps of epoch 1 from the trainer's initial state. Not donated, so the
  same inputs can run again and again; the trainer's feed is closed.
  """
  with contextlib.closing(trainer.feed):
    x, y, idx = trainer._place(*trainer.feed.block(0, 0, steps))  # pylint: disable=protected-access
  args = (trainer.state, trainer.empty_acc(), x, y, idx)
  t0 = time.perf_counter()
  compiled = jax.jit(trainer.fit_block).lower(*args).compile()
  return compiled, args, time.perf_counter() - t0


def profile_block(trainer, steps: int, calls: int = 2) -> dict[str, Any]:
  """Per-operation times of ``trainer``'s compiled block of ``steps`` training steps.

  The block is the one ``fit`` runs (with ``nonfinite_check='block'``, the block
  that tests the state once), on the first ``steps`` steps of epoch 1, from the
  trainer's initial state; nothing is trained or written. With
  ``epoch_mode='step'`` (one call a step, as ``fit`` then runs) the block is one
  step, called ``steps`` times. Each call starts from the state the previous one
  ended with, so the steps are numbered on (a GAN's generator trains on its steps);
  a GAN's ``steps`` are rounded up to a multiple of ``generative.d_steps`` (its
  generator's share of the time). With several devices (``parallel``) an operation's
  time is the mean over the devices, and the operations between them have a layer
  of their own, :data:`COLLECTIVES_LAYER`.

  Returns:
    ``wall_ms_per_step`` (no profiler), ``compile_s``, ``steps``,
    ``nonfinite_check``, ``ops_ms_per_step`` and ``ops``: one dict per operation
    (``op``, ``opcode``, ``shape``, ``op_name``, ``layer``, ``ms_per_step``,
    ``runs_per_step``), the slowest first.

  Raises:
    JdlError: not the CPU backend, another ``jax.profiler`` trace is running, or
      the trace holds no operation events.
  """
  if jax.default_backend() != "cpu":
    raise JdlError(f"profile reads XLA:CPU's events; the backend is {jax.default_backend()}. "
                   "Use jax.profiler.trace with TensorBoard or XProf there")
  if steps < 1 or calls < 1:
    raise JdlError(f"steps and calls must be >= 1, got {steps} and {calls}")
  if trainer.gan:  # The generator trains on every d_steps-th step.
    d_steps = int(trainer.config.generative.d_steps)
    steps = -(-steps // d_steps) * d_steps
  if trainer.epoch_mode == "step":  # One step a call: more calls instead.
    steps, calls = 1, calls * min(steps, trainer.steps_per_epoch)
  else:
    steps = min(steps, trainer.steps_per_epoch)
  compiled, args, compile_s = compiled_first_block(trainer, steps)
  state = args[0]

  def run():  # From the last call's state: the steps are numbered on.
    nonlocal state
    state = jax.block_until_ready(compiled(state, *args[1:]))[0]

  run()
  t0 = time.perf_counter()
  for _ in range(calls):
    run()
  wall_ms = 1e3 * (time.perf_counter() - t0) / (calls * steps)
  trace_dir = tempfile.mkdtemp(prefix="jdl-profile-")
  try:
    try:
      jax.profiler.start_trace(trace_dir)
    except RuntimeError as e:
      raise JdlError(f"another jax.profiler trace is running in this process; stop it "
                     f"first ({str(e).splitlines()[0][:160]})") from None
    try:
      for _ in range(calls):
        run()
    finally:
      jax.profiler.stop_trace()
    traces = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    data = jax.profiler.ProfileData.from_file(traces[0]) if traces else None
  finally:
    shutil.rmtree(trace_dir, ignore_errors=True)
  ops = hlo_ops(compiled.as_text())
  total_ns, count = collections.Counter(), collections.Counter()
  for plane in data.planes if data else ():
    # XLA:CPU runs an operation on one of its worker threads or, when they are
    # busy, on the calling thread: every host thread counts.
    for line in plane.lines if plane.name.startswith("/host:") else ():
      for event in line.events:
        # Not the executor's or the thread pool's own spans, nor loops and calls,
        # whose spans hold the operations of their bodies.
        if event.name in ops and ops[event.name][1] not in _CONTAINERS:
          total_ns[event.name] += event.duration_ns
          count[event.name] += 1
  if not total_ns:
    raise JdlError("the trace holds no events of the block's operations on the host "
                   "threads; this jax version records them differently")
  devices = len(getattr(getattr(args[2], "sharding", None), "device_set", ())) or 1
  per_step = calls * steps * devices  # Each device runs each operation.
  models = model_names(op_name for _, _, op_name in ops.values())
  rows = []
  for name, ns in total_ns.most_common():
    shape, opcode, op_name = ops[name]
    layer = (COLLECTIVES_LAYER if opcode.startswith(_COLLECTIVES)
             else layer_of(op_name, models))
    rows.append({"op": name, "opcode": opcode, "shape": shape, "op_name": op_name,
                 "layer": layer, "ms_per_step": ns / 1e6 / per_step,
                 "runs_per_step": count[name] / per_step})
  return {"wall_ms_per_step": wall_ms, "compile_s": compile_s, "steps": steps,
          "devices": devices, "nonfinite_check": trainer.nonfinite_check,
          "ops_ms_per_step": sum(r["ms_per_step"] for r in rows), "ops": rows}


def format_report(result: dict[str, Any], top: int = 25) -> str:
  """The slowest ``top`` operations, then the time by layer and pass, as text."""
  total = result["ops_ms_per_step"]
  devices = result.get("devices", 1)
  lines = [f"wall {result['wall_ms_per_step']:.3f} ms/step (blocks of {result['steps']} "
           f"steps, NaN/Inf checked per {result['nonfinite_check']}, no profiler); "
           f"operations {total:.3f} ms/step under the profiler"
           + (f" (each device's: the mean over {devices} devices)" if devices > 1 else ""), "",
           f"{'ms/step':>8} {'share':>6}  {'operation':30} {'output':34} source"]
  for row in result["ops"][:top]:
    source = source_of(row["op_name"])[-60:] or "-"
    lines.append(f"{row['ms_per_step']:8.3f} {100 * row['ms_per_step'] / total:5.1f}%  "
                 f"{row['op'][:30]:30} {row['shape'][:34]:34} {source}")
  if len(result["ops"]) > top:
    rest = sum(r["ms_per_step"] for r in result["ops"][top:])
    lines.append(f"{rest:8.3f} {100 * rest / total:5.1f}%  ({len(result['ops']) - top} more)")
  layers = collections.Counter()
  for row in result["ops"]:
    layers[row["layer"]] += row["ms_per_step"]
  lines += ["", f"{'ms/step':>8} {'share':>6}  layer (pass)"]
  lines += [f"{ms:8.3f} {100 * ms / total:5.1f}%  {layer}" for layer, ms in layers.most_common()]
  return "\n".join(lines)
