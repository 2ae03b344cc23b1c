"""Data parallelism with ``jax.sharding``: meshes, placements, the shard_map block.

``config.parallel`` picks how the loop spreads a global batch over devices:

- ``'none'``: one device (the default one); the loop's single-device path.
- ``'data'``: a 1-D :class:`~jax.sharding.Mesh` over all devices with the axis
  ``'data'``; each block's batch indices are sharded ``P(None, 'data')``, the
  state, the metric sums and the (small) in-memory data splits are replicated (a
  streamed split's blocks arrive sharded instead: see below), and ``jit``
  (GSPMD) inserts the collectives. Batch-norm statistics, the loss and metric sums
  are those of the global batch, and random draws (dropout, augmentation) are
  those of the global batch too (``jax_threefry_partitionable``), so a run equals
  the one-device run within float tolerance.
- ``'shard_map'``: the same mesh and placements, but each device runs the step on
  its ``batch_size / num_devices`` examples inside :func:`jax.shard_map`, with
  explicit ``lax.pmean`` of gradients and loss (each device weighted by what its
  loss is a mean over: its examples, or a seq2seq share's target tokens) and of
  batch-norm statistics (:func:`batch_norm_axis`), and an exact all-gather-and-merge
  of the metric sums. The step's key is folded with the device index, so its
  random draws (dropout, augmentation, a VAE's sampling noise and dynamic
  binarisation) differ from the one-device run; everything else agrees within
  float tolerance.
- ``'auto'`` (default): ``'data'`` when there is more than one device, else ``'none'``.

Multi-host (:func:`initialize_distributed`): every process computes the same
shuffled order of each epoch and feeds its devices only its own columns of each
global batch (a deterministic per-process split of the order). An in-memory split
is loaded whole on every process (replicated; the block's indices are sharded). A
streamed split (``dataset='npy_dir'``) is read only in this process's columns
(:func:`process_columns`): its blocks arrive pre-gathered, ``[num_steps, batch, ...]``
sharded ``P(None, 'data')`` (:func:`global_rows`), and the compiled block takes
step ``i``'s batch as ``x[i]`` (:func:`compile_block` with ``gathered=True``).
Checkpoints are written by orbax with all processes taking part, and only process 0
writes logs, plots and the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jdl.errors import JdlError
from jdl.models.manual_axes import varying_axes, vary_over

AXIS = "data"
MODES = ("auto", "none", "data", "shard_map")
INITIALIZE = ("auto", "always", "never")


@dataclasses.dataclass(frozen=True)
class Parallel:
  """The resolved parallel mode and its mesh (``None`` for ``'none'``)."""
  mode: str
  mesh: Mesh | None = None

  @property
  def enabled(self) -> bool:
    return self.mode != "none"

  @property
  def num_devices(self) -> int:
    return 1 if self.mesh is None else int(self.mesh.devices.size)

  @property
  def num_processes(self) -> int:
    return jax.process_count()

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch_sharding(self) -> NamedSharding:
    """Leading (batch) axis split over the devices."""
    return NamedSharding(self.mesh, P(AXIS))

  @property
  def block_sharding(self) -> NamedSharding:
    """``[num_steps, batch]`` block indices: the batch axis split over the devices."""
    return NamedSharding(self.mesh, P(None, AXIS))


def check_mode(mode: str) -> None:
  """Raises ``JdlError`` unless ``mode`` is one of :data:`MODES` (``config.parallel``)."""
  if mode not in MODES:
    raise JdlError(f"parallel must be one of {', '.join(MODES)}, got {mode!r}")


def check_distributed(spec) -> None:
  """Raises ``JdlError`` for a value of the ``distributed`` section out of its range (the
  environment's ``$JAX_*`` are read, and checked, only when it starts)."""
  if spec.initialize not in INITIALIZE:
    raise JdlError(f"distributed.initialize must be one of {', '.join(INITIALIZE)}, got "
                   f"{spec.initialize!r}")
  if spec.coordinator_address:
    check_address(spec.coordinator_address, "distributed.coordinator_address")
  if int(spec.num_processes) < 0:
    raise JdlError(f"distributed.num_processes must be >= 0 (0: from the environment), got "
                   f"{spec.num_processes}")
  if int(spec.process_id) < -1:
    raise JdlError(f"distributed.process_id must be >= -1 (-1: from the environment), got "
                   f"{spec.process_id}")


def resolve(mode: str) -> Parallel:
  """The :class:`Parallel` of ``config.parallel`` on the devices JAX sees.

  Raises:
    JdlError: an unknown mode, or ``'none'`` in a multi-process run.
  """
  check_mode(mode)
  if mode == "auto":
    mode = "data" if jax.device_count() > 1 else "none"
  if mode == "none":
    if jax.process_count() > 1:
      raise JdlError(f"parallel='none' cannot run on {jax.process_count()} processes (each "
                     "would train alone); use --config.parallel=data or shard_map")
    return Parallel("none")
  return Parallel(mode, Mesh(np.asarray(jax.devices()), (AXIS,)))


def check_batch_size(batch_size: int, num_devices: int, what: str = "batch_size") -> None:
  """A global batch must split evenly over the devices (never silently changed).

  Raises:
    JdlError: naming both values and the remedy.
  """
  if batch_size % num_devices:
    lower = batch_size // num_devices * num_devices
    hint = f"{lower} or {lower + num_devices}" if lower else str(num_devices)
    raise JdlError(f"{what} ({batch_size}) must be divisible by the number of devices "
                   f"({num_devices}); use e.g. --config.{what}={hint}, or "
                   "--config.parallel=none to train on one device (a resumed run keeps its "
                   f"{what}: use parallel=none, or devices that divide it)")


# ------------------------------------------------------------------ multi-host
def check_address(address: str, what: str) -> None:
  """``host:port`` (``[ipv6]:port``) with a port in 1..65535, else one JdlError (JAX
  would fail with an IndexError, a crash, or a wait until its timeout)."""
  host, sep, port = address.rpartition(":")
  if not (sep and host.strip("[]") and port.isdigit() and 1 <= int(port) <= 65535):
    raise JdlError(f"{what} must be HOST:PORT with a port in 1..65535 (e.g. "
                   f"10.0.0.1:1234, process 0's machine), got {address!r}")


def initialize_distributed(spec) -> bool:
  """``jax.distributed.initialize`` from ``config.distributed`` or the environment.

  ``spec.initialize``: ``'never'``; ``'always'`` (``jax.distributed.initialize``
  with the values below, ``None`` where unset, so JAX detects SLURM, Open MPI or a
  Cloud TPU pod); ``'auto'`` (default): only when ``spec.coordinator_address`` or
  ``$JAX_COORDINATOR_ADDRESS`` is set. ``num_processes`` / ``process_id`` come from
  the config, else ``$JAX_NUM_PROCESSES`` / ``$JAX_PROCESS_ID``. Idempotent: an
  already initialised runtime is left alone.

  Returns:
    Whether the runtime is (now) multi-process.

  Raises:
    JdlError: a bad setting, or JAX refused (e.g. it already ran a computation).
  """
  check_distributed(spec)
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  address = spec.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if spec.initialize == "auto" and not address and (
      int(spec.num_processes) > 1 or int(spec.process_id) > 0):
    # It would train alone as process 0, silently, while the others wait for it.
    raise JdlError(
        f"distributed.num_processes={spec.num_processes} and process_id={spec.process_id} "
        "ask for a multi-process run, but no coordinator is named: set "
        "distributed.coordinator_address (or $JAX_COORDINATOR_ADDRESS) to process 0's "
        "HOST:PORT, or distributed.initialize='always' to let JAX find it (SLURM, Open MPI, "
        "a Cloud TPU pod)")
  if spec.initialize == "never" or (spec.initialize == "auto" and not address):
    return False
  if address and not spec.coordinator_address:  # The config's: check_distributed.
    check_address(address, "$JAX_COORDINATOR_ADDRESS")

  def env_int(name: str, value: int) -> int | None:
    if value >= 0:
      return value
    raw = os.environ.get(name)
    try:
      return int(raw) if raw not in (None, "") else None
    except ValueError:
      raise JdlError(f"${name} must be an integer, got {raw!r}") from None

  num_processes = env_int("JAX_NUM_PROCESSES", int(spec.num_processes) or -1)
  process_id = env_int("JAX_PROCESS_ID", int(spec.process_id))
  try:
    jax.distributed.initialize(
        coordinator_address=address or None, num_processes=num_processes,
        process_id=process_id, initialization_timeout=int(spec.timeout_seconds))
  except (RuntimeError, ValueError) as e:
    raise JdlError(f"jax.distributed.initialize failed: {str(e).splitlines()[0]} "
                   "(set distributed.coordinator_address, num_processes and process_id, "
                   "or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, "
                   "before anything else uses JAX)") from None
  return jax.process_count() > 1


def sync(name: str) -> None:
  """A barrier across processes (nothing on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is set on any process (``flag`` itself on one process)."""
  return any_process_each(flag)[0]


def any_process_each(*flags: bool) -> tuple[bool, ...]:
  """For each of ``flags``, whether it is set on any process, in one gather.

  The loop asks this after every block, so a stop request (SIGTERM, a callback's)
  that reaches the processes at different moments stops them all after the same
  block.
  """
  if jax.process_count() == 1:
    return tuple(bool(f) for f in flags)
  from jax.experimental import multihost_utils
  gathered = multihost_utils.process_allgather(np.asarray([int(f) for f in flags], np.int32))
  return tuple(bool(v) for v in np.any(np.reshape(gathered, (-1, len(flags))), axis=0))


def processes_differing(text: str) -> list[int]:
  """The processes whose ``text`` differs from process 0's (none on one process).

  Compares a SHA-256 digest of ``text`` across the processes (one all-gather).
  """
  if jax.process_count() == 1:
    return []
  from jax.experimental import multihost_utils
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
  digests = np.asarray(multihost_utils.process_allgather(digest))
  return [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]


def is_primary() -> bool:
  """Whether this process writes logs, plots and summaries (process 0)."""
  return jax.process_index() == 0


# ------------------------------------------------------------------ placement
def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _put(x, sharding: NamedSharding):
  """``x`` (the same value on every process) as a global array of ``sharding``."""
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  if _is_key(x):
    impl = jax.random.key_impl(x)
    return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding), impl=impl)
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(par: Parallel, tree: Any) -> Any:
  """Every leaf of ``tree`` replicated over the mesh (unchanged for ``'none'``)."""
  if not par.enabled:
    return tree
  return jax.tree.map(lambda x: _put(x, par.replicated), tree)


def block_indices(par: Parallel, idx: Any) -> Any:
  """A block's ``[num_steps, batch]`` indices, batch axis sharded over the devices.

  ``idx`` is the same on every process (it comes from the seed and the epoch);
  each process's devices receive only their own columns of it.
  """
  if not par.enabled:
    return idx
  return _put(np.asarray(idx), par.block_sharding)


def batch_rows(par: Parallel, rows: Any) -> Any:
  """An evaluation batch's ``[batch]`` indices or mask, sharded over the devices."""
  if not par.enabled:
    return rows
  return _put(np.asarray(rows), par.batch_sharding)


def process_columns(par: Parallel, size: int) -> tuple[int, int]:
  """``(lo, hi)``: the columns of a ``[size]`` batch axis sharded ``P('data')`` that
  this process's devices hold (``(0, size)`` on one process or for ``'none'``).

  With the usual device order (each process's devices next to each other in the
  mesh) it is ``[p * size / P, (p + 1) * size / P)`` for process ``p`` of ``P``.

  Raises:
    JdlError: this process's devices do not hold one contiguous range of columns.
  """
  if not par.enabled:
    return 0, size
  index_map = par.batch_sharding.addressable_devices_indices_map((size,))
  spans = sorted({s[0].indices(size)[:2] for s in index_map.values()})
  if any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
    raise JdlError(f"process {jax.process_index()}'s devices hold non-contiguous columns "
                   f"{spans} of the batch; streamed input needs each process's devices "
                   "next to each other in the mesh")
  return spans[0][0], spans[-1][1]


def global_rows(local: Any, global_shape, sharding: NamedSharding) -> jax.Array:
  """A global array of ``global_shape`` and ``sharding`` from this process's rows.

  ``local`` is this process's part (its :func:`process_columns` of the batch axis
  of ``sharding``); no process holds, reads or sends the others' rows.
  """
  return jax.make_array_from_process_local_data(sharding, np.asarray(local),
                                                tuple(global_shape))


def eval_batch_size(par: Parallel, batch_size: int) -> int:
  """Evaluation pads and masks its last batch, so its size rounds up to a device multiple."""
  n = par.num_devices
  return -(-batch_size // n) * n


# ------------------------------------------------------------------ compiling
def compile_block(par: Parallel, run_block: Callable, gathered: bool = False) -> Callable:
  """``jit`` of the loop's ``run_block(state, acc, x, y, idx)`` for ``par``'s mode.

  ``'none'``: plain ``jit``. ``'data'``: ``jit`` with replicated state, sums and
  data and ``P(None, 'data')`` indices. ``'shard_map'``: ``run_block`` is the
  per-device block (its step built with ``axis_name=AXIS``), wrapped in
  :func:`jax.shard_map`; the state and sums it returns are device-invariant.

  ``gathered``: the block's rows come pre-gathered (a streamed split), ``x, y:
  [num_steps, batch, ...]`` sharded ``P(None, 'data')``, and ``idx: [num_steps]``
  (the step numbers) replicated.
  """
  if not par.enabled:
    return jax.jit(run_block, donate_argnums=(0, 1))
  rep = par.replicated
  if par.mode == "data":
    data = (par.block_sharding,) * 2 if gathered else (rep, rep)
    idx = rep if gathered else par.block_sharding
    return jax.jit(run_block, donate_argnums=(0, 1),
                   in_shardings=(rep, rep, *data, idx), out_shardings=(rep, rep))
  return jax.jit(global_block(par, run_block, gathered), donate_argnums=(0, 1))


def global_block(par: Parallel, run_block: Callable, gathered: bool = False) -> Callable:
  """``run_block`` as a function of the global arrays: under ``'shard_map'`` the
  per-device block wrapped in :func:`jax.shard_map` (see :func:`compile_block`),
  else ``run_block`` itself."""
  if par.mode != "shard_map" or not par.enabled:
    return run_block
  specs = ((P(None, AXIS), P(None, AXIS), P()) if gathered
           else (P(), P(), P(None, AXIS)))
  return jax.shard_map(run_block, mesh=par.mesh, in_specs=(P(), P(), *specs),
                       out_specs=(P(), P()))


def compile_eval(par: Parallel, eval_batch: Callable) -> Callable:
  """``jit`` of ``eval_batch(state, x, y, idx, mask)``; sharded rows, replicated sums."""
  if not par.enabled:
    return jax.jit(eval_batch)
  rep, rows = par.replicated, par.batch_sharding
  return jax.jit(eval_batch, in_shardings=(rep, rep, rep, rows, rows), out_shardings=rep)


def compile_eval_rows(par: Parallel, eval_rows: Callable) -> Callable:
  """``jit`` of ``eval_rows(state, x, y, mask)``: a pre-gathered (streamed) batch, its
  rows sharded like the mask, replicated sums."""
  if not par.enabled:
    return jax.jit(eval_rows)
  rep, rows = par.replicated, par.batch_sharding
  return jax.jit(eval_rows, in_shardings=(rep, rows, rows, rows), out_shardings=rep)


def constrain_batch(par: Parallel) -> Callable | None:
  """In ``'data'`` mode, pins a gathered batch to ``P('data')`` (``None`` otherwise)."""
  if par.mode != "data":
    return None
  return functools.partial(jax.lax.with_sharding_constraint, shardings=par.batch_sharding)


def shape_struct(par: Parallel, shape, dtype, sharding: NamedSharding | None = None):
  """A ``ShapeDtypeStruct`` for ahead-of-time lowering, with ``sharding`` when enabled."""
  if not par.enabled:
    return jax.ShapeDtypeStruct(shape, dtype)
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding or par.block_sharding)


# ------------------------------------------------------- explicit collectives
@contextlib.contextmanager
def batch_norm_axis(axis_name: str):
  """Inside, every ``flax.linen.BatchNorm`` without an ``axis_name`` uses ``axis_name``.

  So its training-mode mean and variance are ``lax.pmean``-ed over the devices
  (global-batch statistics) for any model, jdl's or a user's, without a model
  field to thread through. Acts at trace time, only in the per-device step.
  """
  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name == "__call__" and isinstance(module, nn.BatchNorm)
        and module.axis_name is None):
      object.__setattr__(module, "axis_name", axis_name)  # Modules are frozen dataclasses.
      try:
        return next_fun(*args, **kwargs)
      finally:
        object.__setattr__(module, "axis_name", None)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    yield


def gather_invariant(tree: Any, axis_name: str) -> Any:
  """Each leaf stacked over the devices, ``[num_devices, ...]``, the same on all.

  An all-gather written as a ``psum`` of zero-padded rows (exact: the other rows
  add zeros), whose result is device-invariant for ``shard_map``'s checks.
  """
  n = jax.lax.axis_size(axis_name)
  i = jax.lax.axis_index(axis_name)

  def gather(x):
    return jax.lax.psum(jnp.zeros((n, *x.shape), x.dtype).at[i].set(x), axis_name)

  return jax.tree.map(gather, tree)


def merge_over_devices(metrics: Any, merge: Callable, axis_name: str) -> Any:
  """The metric sums of the global batch: each device's, merged in device order."""
  stacked = gather_invariant(metrics, axis_name)
  n = jax.lax.axis_size(axis_name)
  parts = [jax.tree.map(lambda x, k=k: x[k], stacked) for k in range(n)]
  return functools.reduce(merge, parts)


def device_varying(tree: Any, axis_name: str) -> Any:
  """``tree``'s device-invariant leaves as values that vary over ``axis_name``.

  Inside ``shard_map`` (with its type checks on, the default) autodiff sums over the
  devices the gradient of an input that is the same on every device: differentiating
  a per-device loss with respect to the replicated parameters would return
  ``num_devices`` times the mean gradient, and a ``lax.pmean`` of that sum leaves it
  as it is. Differentiating with respect to a varying copy instead gives each device
  its own gradient, which ``lax.pmean`` then averages.
  """
  return jax.tree.map(lambda x: vary_over(x, (axis_name,)), tree)


def pmean_varying(tree: Any, axis_name: str) -> Any:
  """``lax.pmean`` of the leaves that still differ across devices (others as they are)."""
  def mean(x):
    if axis_name in varying_axes(x):
      return jax.lax.pmean(x, axis_name)
    return x
  return jax.tree.map(mean, tree)
