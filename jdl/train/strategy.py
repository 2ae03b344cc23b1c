"""How a run executes, chosen once as it is built: the choices behind ``'auto'``.

The NaN/Inf check (per step or per block), microbatches, the epoch mode (one
compiled call a step, or blocks of steps in one ``lax.scan``-like loop) and the
block length. Each setting's explicit value is checked here; ``'auto'`` picks
what measured fastest on the backend (benchmarks/README.md) without changing
what a step computes beyond float rounding.
"""

from __future__ import annotations

import jax
import ml_collections

from jdl.errors import JdlError
from jdl.train import parallel as parallel_lib
from jdl.train import steps as steps_lib

# config.microbatch_size=0 on one CPU device. steps_lib.activation_bytes measures the
# intermediates of the loss's gradient per example; over the whole batch, up to
# AUTO_WHOLE_BATCH_BYTES trains in whole batches, and more in microbatches: the batch
# halved while the microbatch's intermediates exceed AUTO_MICROBATCH_BYTES, down to
# AUTO_MICROBATCH examples. Fitted on this Xeon VM (benchmarks/microbatch.py;
# benchmarks/README.md, "Microbatches"): at batch 128 the MNIST CNNs (3.8-5.1 MiB an
# example) train 10-16% faster in microbatches of 32, LeNet-5 (1.2 MiB) trains
# fastest whole, and at batch 256-512 LeNet-5 trains 19-31% faster in microbatches
# of 128.
AUTO_MICROBATCH = 32
AUTO_WHOLE_BATCH_BYTES = 256 * 2**20
AUTO_MICROBATCH_BYTES = 160 * 2**20
# The longest block of steps that 'auto' compiles into one call.
MAX_AUTO_CHUNK = 100


def choose_nonfinite_check(config: ml_collections.ConfigDict,
                           parallel: parallel_lib.Parallel, gan: bool) -> str:
  """``'step'`` or ``'block'``: see ``config.nonfinite_check``."""
  mode = config.nonfinite_check
  if mode == "auto":
    block = (jax.default_backend() == "cpu" and config.nonfinite == "stop"
             and not parallel.enabled and not gan)
    return "block" if block else "step"
  if mode == "block" and (parallel.enabled or gan):
    raise JdlError("nonfinite_check='block' needs one device and a one-model task; use "
                   "--config.nonfinite_check=step")
  return mode


def choose_microbatch_size(config: ml_collections.ConfigDict, *, batch_size: int, task,
                           parallel: parallel_lib.Parallel, params, model_state,
                           x, y) -> int:
  """0 (the whole batch at once) or the microbatch size: see ``config.microbatch_size``.

  Args:
    config: the run's config.
    batch_size: the global batch size.
    task: the run's task (:class:`jdl.train.steps.SupervisedTask` alone takes
      microbatches).
    parallel: the run's devices.
    params, model_state: the initial parameters and mutable state.
    x, y: the train split's inputs and targets (``'auto'`` measures one example).
  """
  size, bs = int(config.microbatch_size), batch_size
  if size < 0:
    raise JdlError(f"microbatch_size must be >= 0 (0 = auto), got {size}")
  supervised = type(task) is steps_lib.SupervisedTask
  if size >= bs:
    return 0
  if size:
    where = ("classification and regression tasks" if not supervised
             else "parallel='none'" if parallel.enabled
             else "a model without mutable state" if model_state else None)
    if where:
      raise JdlError(f"microbatch_size={size} needs {where}; set it to 0 (auto) or to "
                     f"the batch size ({bs}) for whole batches")
    if bs % size:
      raise JdlError(f"microbatch_size={size} must divide batch_size={bs}")
    return size
  if (jax.default_backend() != "cpu" or not supervised or parallel.enabled
      or model_state or bs < 2 * AUTO_MICROBATCH):
    return 0
  per_example = steps_lib.activation_bytes(task, params, x, y)
  if bs * per_example <= AUTO_WHOLE_BATCH_BYTES:
    return 0
  size = bs  # Halved while even, >= AUTO_MICROBATCH and over AUTO_MICROBATCH_BYTES.
  while (size % 2 == 0 and size // 2 >= AUTO_MICROBATCH
         and size * per_example > AUTO_MICROBATCH_BYTES):
    size //= 2
  return 0 if size == bs else size


def choose_epoch_mode(config: ml_collections.ConfigDict, train_step, state, batch) -> str:
  """``'step'`` or ``'scan'``: see ``config.epoch_mode``.

  ``train_step(state, batch)`` is traced (not run) to see what it holds.
  """
  mode = config.epoch_mode
  if mode != "auto":
    return mode
  # XLA:CPU runs the gradient of a convolution inside a loop on a slow generic
  # path (about 20x slower; jax-ml/jax#12868). jdl's own conv layers lower to
  # patches and matmuls on CPU, or to XLA forward convolutions only ('hybrid'),
  # and scan safely; a step that holds autodiff's convolutions (conv_impl='xla',
  # or a user's module) steps one call at a time.
  if jax.default_backend() == "cpu" and has_loop_slow_conv(train_step, state, batch):
    return "step"
  return "scan"


def static_loops(backend: str | None = None) -> bool:
  """Whether blocks of steps loop a known number of times (padding rows masked), not
  a data-dependent number (:func:`jdl.train.steps.loop_steps`): on a GPU, whose
  loops of unknown length wait for the host at every step.

  Args:
    backend: ``jax.default_backend()``'s name (the default backend when None).
  """
  return (backend or jax.default_backend()) == "gpu"


def choose_chunk(config: ml_collections.ConfigDict, mode: str, steps_per_epoch: int,
                 static: bool = False) -> int:
  """The steps of one compiled block: 1 in ``'step'`` mode; else ``config.scan_chunk``,
  or (0, auto) the epoch, the checkpoint cadence or :data:`MAX_AUTO_CHUNK`, the least.

  With ``static`` loops (:func:`static_loops`) a padding row costs a step, so the
  automatic length is balanced: as many blocks as :data:`MAX_AUTO_CHUNK` gives, of
  equal length (469 steps: 5 blocks of 94, one padding row; not 4 of 100 and a last
  one of 69 padded with 31 rows).
  """
  if mode == "step":
    return 1
  if config.scan_chunk:
    return max(1, min(int(config.scan_chunk), steps_per_epoch))
  n = steps_per_epoch
  if config.checkpoint_every_steps:
    n = min(n, int(config.checkpoint_every_steps))
  chunk = max(1, min(n, MAX_AUTO_CHUNK))
  if static:
    blocks = -(-n // chunk)
    chunk = -(-n // blocks)
  return chunk


def has_loop_slow_conv(fn, *args) -> bool:
  """Whether ``fn(*args)`` traces to a convolution XLA:CPU runs slowly inside a loop.

  Forward-style convolutions (channel-last specs, no input dilation, no groups), as
  in :func:`jdl.models.conv.conv_hybrid`, run fast in a scan; the transposed ones
  that autodiff makes of a convolution (a kernel gradient: batch and feature axes
  swapped; a strided input gradient: input dilation) and any other layout do not.
  """
  def slow(params) -> bool:
    dn = params["dimension_numbers"]
    n = len(dn.lhs_spec)
    channel_last = (0, n - 1, *range(1, n - 1))
    return (dn.lhs_spec != channel_last or dn.out_spec != channel_last
            or dn.rhs_spec != (n - 1, n - 2, *range(n - 2))
            or any(d != 1 for d in params["lhs_dilation"])
            or params["feature_group_count"] != 1 or params["batch_group_count"] != 1)

  return any(eqn.primitive.name == "conv_general_dilated" and slow(eqn.params)
             for eqn in steps_lib.jaxpr_equations(jax.make_jaxpr(fn)(*args).jaxpr))

