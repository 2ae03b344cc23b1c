"""Saving and restoring any PyTree plus JSON metadata, through orbax-checkpoint.

This module knows nothing of training: it takes a PyTree of arrays (typed PRNG keys
allowed) and a JSON-able dict. Steps are kept by orbax's preservation policies:
the latest ``keep`` steps, the best one by a monitored metric, and any steps the
caller still needs (early stopping's best epoch).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from jdl import errors as errors_lib
from jdl.errors import JdlError


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_savable(tree: Any) -> Any:
  """A nested dict of plain arrays: typed keys become their uint32 key data, numpy
  scalars 0-d arrays (orbax saves ``np.float32(1)`` but cannot restore into it)."""
  def plain(x):
    if _is_key(x):
      return jax.random.key_data(x)
    return np.asarray(x) if isinstance(x, np.generic) else x
  return flax.serialization.to_state_dict(jax.tree.map(plain, tree))


def _check_step(step: Any, call: str) -> int:
  if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
    raise JdlError(f"Checkpointer.{call}: step must be an int >= 0, got {step!r}")
  return int(step)


def from_savable(target: Any, restored: Any) -> Any:
  """Inverse of :func:`to_savable`, shaped like ``target``."""
  plain_target = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, target)
  tree = flax.serialization.from_state_dict(plain_target, restored)
  return jax.tree.map(
      lambda t, x: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
      target, tree)


# Where orbax moves the steps it deletes (inside the checkpoint folder); emptied by
# the Checkpointer when it opens, before each save and when it waits or closes.
TRASH = ".deleted-steps"

# The meta entry where save() records each array's checksum: {path: [sum, dtype]}.
CHECKSUMS_KEY = "_checksums"


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """An array's bits as unsigned words ``w_i`` (1, 2 or 4 bytes each), summed as
  ``sum_i w_i * (2 i + 1) mod 2**32``. Every weight is odd, so one flipped bit always
  changes the sum; computed where the array is (no copy to the host)."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16}.get(x.dtype.itemsize, jnp.uint32)
  words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  weights = 2 * jnp.arange(words.size, dtype=jnp.uint32).reshape(words.shape) + 1
  return jnp.sum(words * weights, dtype=jnp.uint32)


_checksums_jit = jax.jit(lambda leaves: [_leaf_checksum(x) for x in leaves])


def checksums(tree: Any) -> dict[str, list]:
  """``{path: [checksum, dtype name]}`` of a savable tree's JAX arrays (of 8 bits an
  element or more: packed 4-bit types are left out, as are numpy leaves)."""
  flat = [(jax.tree_util.keystr(path, simple=True, separator="/"), leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if isinstance(leaf, jax.Array) and (leaf.dtype == jnp.bool_ or
                                              jax.dtypes.itemsize_bits(leaf.dtype) >= 8)]
  if not flat:
    return {}
  sums = jax.device_get(_checksums_jit([leaf for _, leaf in flat]))
  return {path: [int(value), np.dtype(leaf.dtype).name]
          for (path, leaf), value in zip(flat, sums)}


def verify_checksums(tree: Any, meta: dict, where: str) -> None:
  """Raises :class:`CorruptCheckpoint` when an array of a restored savable ``tree``
  differs from what was saved (steps written before the record pass)."""
  saved = meta.get(CHECKSUMS_KEY)
  if not isinstance(saved, dict):
    return
  for path, (value, dtype) in checksums(tree).items():
    if path in saved and saved[path] != [value, dtype] and saved[path][1] == dtype:
      raise CorruptCheckpoint(f"{where} is corrupt: {path!r} does not match the checksum "
                              "written with it (a changed byte on disk)")


class CorruptCheckpoint(JdlError):
  """A restored array's bits differ from the checksum saved with them."""


class _KeepSteps:
  """orbax preservation policy: keeps the steps a callable names at each pruning."""

  def __init__(self, steps: Callable[[], Iterable[int]]):
    self._steps = steps

  def should_preserve(self, checkpoints, *, context):
    del context
    keep = {int(s) for s in self._steps()}
    return [int(c.step) in keep for c in checkpoints]


GLOB_CHARACTERS = "[]*?"


def check_directory_name(directory: str | os.PathLike) -> None:
  """Refuses a checkpoint folder whose absolute path holds a glob character.

  orbax finds the parts of a step it must merge with ``directory.glob(...)``, which
  reads ``[x]`` in the path as a pattern: the step is committed incomplete, exit 0,
  and never restores (``*`` and ``?`` could match another run's folders).
  """
  path = str(Path(directory).absolute())
  bad = sorted({c for c in path if c in GLOB_CHARACTERS})
  if bad:
    raise JdlError(f"{path}: a run's path cannot contain {' or '.join(map(repr, bad))} "
                   "(orbax-checkpoint reads it as a glob pattern and would write steps "
                   "that never restore); rename the folder")


class Checkpointer:
  """Keeps the last ``keep`` steps, the best by ``best_metric`` and ``keep_steps()``.

  Args:
    directory: where the step folders go (created).
    keep: how many of the latest steps to keep.
    best_metric: the metric name in ``save(..., metrics=)`` that ranks steps;
      ``None`` keeps only the latest.
    best_mode: ``'min'`` or ``'max'``.
    async_save: write in a background thread (the step returns at once).
    compression: compress the arrays (orbax's zstd). Off by default: float weights
      shrink by only ~8%, while compressing is about a quarter of an async save's
      CPU time, which on a small machine is taken from training
      (``benchmarks/overheads.py --parts orbax``). Either kind restores.
    keep_steps: called at each pruning; the steps it returns are never deleted
      (e.g. the one early stopping restores, which is ranked with its own
      ``min_delta`` and so need not be the best by any metric).
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3,
               best_metric: str | None = None, best_mode: str = "min",
               async_save: bool = True, compression: bool = False,
               keep_steps: Callable[[], Iterable[int]] | None = None):
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
      raise JdlError(f"Checkpointer: keep must be an int >= 1, got {keep!r}")
    if best_mode not in ("min", "max"):
      raise JdlError(f"Checkpointer: best_mode must be 'min' or 'max', got {best_mode!r}")
    if not isinstance(directory, (str, os.PathLike)) or not str(directory):
      raise JdlError(f"Checkpointer: directory must be a path, got {directory!r}")
    self.directory = Path(directory).resolve()
    check_directory_name(self.directory)
    policies: list[Any] = [ocm.LatestN(n=keep)]
    best_fn = None
    worst = math.inf if best_mode == "min" else -math.inf  # Where a step without it ranks.
    self._best = (best_metric, worst)
    if best_metric:
      best_fn = functools.partial(_rank, metric=best_metric, worst=worst)
      policies.append(ocm.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                keep_checkpoints_without_metrics=False))
    if keep_steps is not None:
      policies.append(_KeepSteps(keep_steps))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn,
        best_mode=best_mode,
        preservation_policy=ocm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        create=True,
        # A step orbax deletes is first renamed out of the way, in one atomic
        # rename, and removed by _purge_trash: a run killed while a step is removed
        # leaves no half-deleted step among the real ones.
        todelete_subdir=TRASH,
        # The step's folders are made in save() itself. Made in orbax's background
        # threads (its default), a folder that cannot be made (permission denied)
        # leaves the threads writing into it waiting for a signal that never comes,
        # for orbax's 300 s barrier timeout, and the process cannot exit meanwhile.
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
    )
    self._async = bool(async_save)
    self._unconfirmed: list[int] = []  # Saved steps not yet known to be on disk.
    self._purger: threading.Thread | None = None  # save()'s removal of the trash.
    try:  # orbax reads every step's metadata here.
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, item_names=("tree", "meta"),
          item_handlers={"tree": ocp.PyTreeCheckpointHandler(use_compression=compression)})
    except Exception as e:  # noqa: BLE001 (what find_damaged cannot see: many types)
      gone = getattr(e, "filename", None)
      if (isinstance(e, FileNotFoundError) and gone and Path(gone).parent == self.directory
          and not Path(gone).exists()):  # A step pruned while orbax listed the steps.
        raise StepRemoved(f"the checkpoint at step {Path(gone).name} in {self.directory} was "
                          "removed while the checkpoints were opened (a run in progress "
                          "there keeps only its last keep_checkpoints steps); run the "
                          "command again") from None
      failure = machine_failure("the checkpoints", self.directory, e)
      raise failure or JdlError(
          f"the checkpoints in {self.directory} could not be opened ({error_summary(e)}); "
          "if a step's metadata files there are damaged, move that step's folder out (or "
          "start over with --restart: the old run is moved aside, not deleted)") from None
    self._purge_trash()

  def _purge_trash(self) -> None:
    """Removes the steps orbax has moved to :data:`TRASH` (whole renamed folders;
    one being moved in meanwhile is left for the next time)."""
    if self._purger is not None:  # A background purge first: one at a time.
      self._purger.join()
      self._purger = None
    self._remove_trash()

  def _remove_trash(self) -> None:
    trash = self.directory / TRASH
    if trash.is_dir():
      for entry in list(trash.iterdir()):
        shutil.rmtree(entry, ignore_errors=True)

  def save(self, step: int, tree: Any, *, meta: dict[str, Any] | None = None,
           metrics: dict[str, float] | None = None) -> None:
    """Saves ``tree`` and ``meta`` as ``step`` (asynchronously if so configured).

    ``meta`` holds JSON values only (dicts with string keys, lists, str, int, float,
    bool, None): anything else is a :class:`JdlError` naming where it is, before
    anything is written. ``metrics`` rank the step for ``best_metric`` (a step
    without that metric ranks last).
    """
    step = _check_step(step, "save")
    meta = {} if meta is None else meta
    check_json(meta, "meta")
    if metrics is not None:  # orbax writes them as JSON, in its background threads.
      if not isinstance(metrics, dict):
        raise JdlError(f"Checkpointer.save: metrics must be a dict of numbers, got "
                       f"{type(metrics).__name__}")
      check_json(metrics, "metrics")
    savable = to_savable(tree)
    for path, leaf in jax.tree_util.tree_leaves_with_path(savable):
      if getattr(leaf, "size", 1) == 0:
        raise JdlError(f"Checkpointer.save: {jax.tree_util.keystr(path)} is an empty array "
                       f"(shape {leaf.shape}); orbax cannot save arrays of zero size")
    # Each array's checksum, so that a restore can tell a changed byte on disk
    # (tensorstore's files carry none) from the saved state.
    meta = {**meta, CHECKSUMS_KEY: checksums(savable)}
    args = ocp.args.Composite(tree=ocp.args.PyTreeSave(savable),
                              meta=ocp.args.JsonSave(meta))
    self._purge_trash_in_background()
    # orbax first waits for the previous asynchronous save: its failure surfaces here.
    self._unconfirmed.append(int(step))
    # A step without metrics (mid-epoch) ranks last, as documented; orbax would warn
    # of it on every such save.
    quiet = _absl_quiet() if metrics is None else contextlib.nullcontext()
    try:
      with self._write_errors(), quiet:
        self._manager.save(step, args=args, metrics=metrics, force=True)
    except ocp.checkpoint_manager.StepAlreadyExistsError:
      self._unconfirmed.remove(step)
      raise JdlError(f"Checkpointer.save: step {step} is already saved in "
                     f"{self.directory}") from None
    if not self._async:
      self._unconfirmed.clear()

  def _purge_trash_in_background(self) -> None:
    """:meth:`_purge_trash` in a thread, unless one is still at it: removing a step's
    files (~8 ms for the MLP's on an ext4 VM) would hold the training loop. A run
    killed meanwhile leaves whole folders in the trash, removed the next time."""
    if self._purger is not None and self._purger.is_alive():
      return
    if not (self.directory / TRASH).is_dir():
      return
    thread = threading.Thread(target=self._remove_trash, name="jdl-checkpoint-trash",
                              daemon=True)
    thread.start()
    self._purger = thread

  @contextlib.contextmanager
  def _write_errors(self):
    """Turns a failed write (disk full, permission denied) into one clear error.

    orbax writes each step into a temporary folder and renames it when complete, so
    the steps already on disk stay intact whatever happens to this one.
    """
    try:
      yield
    except (OSError, ValueError) as e:
      if isinstance(e, ValueError) and not _is_write_failure(e):
        raise
      # orbax's abandoned write tasks hold the same error; asyncio would log each one
      # with a traceback when collected. This error reports the failure once.
      logging.getLogger("asyncio").setLevel(logging.CRITICAL)
      steps = " or ".join(map(str, self._unconfirmed[-2:]))
      folder = os.path.basename(getattr(e, "filename", None) or "")
      if re.fullmatch(r"\d+\.orbax-checkpoint-tmp.*", folder):  # This step's own folder.
        steps = folder.split(".", 1)[0]
      what = f"the checkpoint at step {steps}" if steps else "a checkpoint"
      reason = getattr(e, "strerror", None) or _write_failure_reason(e)
      raise JdlError(f"cannot write {what} in {self.directory}: {reason}; the steps "
                     "saved before are intact") from None

  def restore(self, step: int, target: Any, *,
              partial: bool = False) -> tuple[Any, dict[str, Any]]:
    """Restores ``step`` into the structure, shapes and dtypes of ``target``.

    ``partial``: ``target`` names only some of the step's top-level entries (e.g.
    the state without the metric sums of a run reopened with other
    ``config.metrics``); the others are not read.
    """
    step = _check_step(step, "restore")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_savable(target))
    _quiet_abandoned_reads()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          tree=ocp.args.PyTreeRestore(
              abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
              partial_restore=partial),
          meta=ocp.args.JsonRestore()))
    except Exception:
      self._missing(step, "restore")
      diffs = self.layout_mismatch(step, target)
      if partial and diffs:  # Entries it does not name are not read.
        diffs = [d for d in diffs if not d.endswith(" is in the checkpoint only")]
      if diffs:  # Another model or optimizer's state: no damage.
        raise JdlError(f"Checkpointer.restore: the checkpoint at step {step} in "
                       f"{self.directory} does not fit the target: {'; '.join(diffs[:5])}"
                       f"{' ...' if len(diffs) > 5 else ''}") from None
      raise
    meta = dict(restored["meta"])
    verify_checksums(restored["tree"], meta, f"the checkpoint at step {step} in "
                     f"{self.directory}")
    meta.pop(CHECKSUMS_KEY, None)  # The caller's meta, as it was saved.
    return from_savable(target, restored["tree"]), meta

  def layout_mismatch(self, step: int, target: Any) -> list[str] | None:
    """How ``step``'s stored arrays differ from ``target``'s (paths, shapes, dtypes).

    Read from the step's metadata, without restoring. ``[]`` when they match;
    ``None`` when the metadata cannot be read (a damaged step: restoring it will
    tell). A mismatch is not damage: the step holds another model or optimizer.
    """
    try:
      with _absl_quiet():  # orbax warns that it cannot read "meta" without its handler.
        stored = self._manager.item_metadata(int(step))["tree"]
      have = _layout(stored)
    except Exception:  # noqa: BLE001 (orbax/tensorstore raise many types)
      return None
    want = _layout(jax.tree.map(ocp.utils.to_shape_dtype_struct, to_savable(target)))
    diffs = [(path, f"{path} is not in the checkpoint") for path in want if path not in have]
    diffs += [(path, f"{path} is in the checkpoint only") for path in have if path not in want]
    diffs += [(path, f"{path} is {have[path][0]} {have[path][1]} in the checkpoint, "
               f"{want[path][0]} {want[path][1]} here") for path in want
              if path in have and have[path] != want[path]]
    # Parameters first: the most telling difference.
    return [d for _, d in sorted(diffs, key=lambda d: ("/params/" not in d[0], d[0]))]

  def restore_meta(self, step: int) -> dict[str, Any]:
    """The JSON metadata saved with ``step`` (config, sources, callbacks' states)."""
    step = _check_step(step, "restore_meta")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception:
      self._missing(step, "restore_meta")
      raise
    meta = dict(restored["meta"])
    meta.pop(CHECKSUMS_KEY, None)
    return meta

  def _missing(self, step: int, call: str) -> None:
    """After a failed read: raises if ``step``'s folder is not there.

    Raises:
      StepRemoved: it was there when this Checkpointer last looked (pruned since by
        a run in progress).
      JdlError: it never was.
    """
    if (self.directory / str(step)).exists():
      return
    if step in self._manager.all_steps():  # orbax's list as this manager last read it.
      raise StepRemoved(f"the checkpoint at step {step} in {self.directory} was removed "
                        "while it was read (a run in progress there keeps only its last "
                        "keep_checkpoints steps); run the command again") from None
    on_disk = ", ".join(map(str, step_numbers(self.directory))) or "none"
    raise JdlError(f"Checkpointer.{call}: no checkpoint at step {step} in {self.directory} "
                   f"(steps there: {on_disk})") from None

  def steps(self) -> list[int]:
    """The steps on disk, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The last step saved, or ``None``."""
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step saved with the best ``best_metric`` (``best_mode``), among the steps
    saved with that metric; ``None`` when there is none (or no ``best_metric``:
    then the latest, orbax's ``best_step``)."""
    step = self._manager.best_step()
    metric, worst = self._best
    if not metric or step is None:
      return step
    # orbax ranks the steps without the metric (saved with others, e.g. a run trained
    # with another monitor) last, but returns one of them when they all tie.
    try:
      recorded = json.loads((self.directory / str(step) / "metrics" / "metrics").read_text())
    except (OSError, ValueError):
      return step  # Unreadable here: orbax's answer.
    return None if _rank(recorded, metric=metric, worst=worst) == worst else step

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    with self._write_errors():
      self._manager.wait_until_finished()
    self._unconfirmed.clear()
    self._purge_trash()

  def close(self) -> None:
    """Waits for a save in flight, then releases orbax's manager."""
    with self._write_errors():
      self._manager.wait_until_finished()
    self._unconfirmed.clear()
    self._manager.close()
    self._purge_trash()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# tensorstore reports a failed write as a ValueError with a status and the OS error.
_WRITE_FAILURES = ("Error writing", "os_error_code", "RESOURCE_EXHAUSTED", "PERMISSION_DENIED")


def _is_write_failure(e: ValueError) -> bool:
  return any(mark in str(e) for mark in _WRITE_FAILURES)


def error_summary(e: BaseException) -> str:
  """The first line of an exception's message (orbax's run to pages), else its type.

  TensorStore's messages are a chain of contexts ("Error opening "cast" driver: Error
  opening "zarr" driver: ...: <what failed>: <why>") followed by JSON specs: the
  specs are dropped, and a chain longer than 200 characters keeps its last links
  (up to 150 characters) and the last file it names.
  """
  text = str(e).strip()
  if not text:
    return type(e).__name__
  line = text.splitlines()[0]
  for junk in (" [tensorstore_spec", " See full TensorStore details"):
    line = line.split(junk)[0]
  if len(line) > 200 and _TS_STATUS.match(line):
    links, kept = line.split(": "), []
    while links and len(": ".join([links[-1], *kept])) <= 150:
      kept.insert(0, links.pop())
    kept = kept or [links[-1][-150:]]
    files = _TS_FILE.findall(line)
    line = ": ".join(kept) + (f" (file {files[-1]})" if files else "")
  return line[:300]


_TS_FILE = re.compile(r'local file "([^"]+)"')
# TensorStore's (absl's) status codes, which start its error messages.
_TS_STATUS = re.compile(r"(CANCELLED|UNKNOWN|INVALID_ARGUMENT|DEADLINE_EXCEEDED|NOT_FOUND|"
                        r"ALREADY_EXISTS|PERMISSION_DENIED|RESOURCE_EXHAUSTED|"
                        r"FAILED_PRECONDITION|ABORTED|OUT_OF_RANGE|UNIMPLEMENTED|INTERNAL|"
                        r"UNAVAILABLE|DATA_LOSS|UNAUTHENTICATED): ")


def environment_failure(e: BaseException) -> str | None:
  """Why a restore failed when the machine, not the checkpoint, is at fault; else None.

  Out of memory (host or device), too many open files, or no permission to read:
  the same checkpoint restores once that is mended, so it must not be moved aside
  as damaged. Looks through the exception's causes (orbax re-raises from its
  threads) and tensorstore's ``os_error_code=N``.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, MemoryError):
      return "out of memory"
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
      found = _OS_ERROR_CODE.search(str(e))
      code = int(found.group(1)) if found else None
    if code in _ENVIRONMENT_ERRNOS:
      return os.strerror(code)
    if "RESOURCE_EXHAUSTED" in str(e):
      return "the device is out of memory"
    e = e.__cause__ or e.__context__
  return None


_ENVIRONMENT_ERRNOS = (errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EACCES, errno.EPERM)


def machine_failure(which: str, directory: str | os.PathLike,
                    e: BaseException) -> JdlError | None:
  """The error for a read of ``which`` (e.g. "the checkpoint at step 40") that the
  machine failed (:func:`environment_failure`, or a JAX backend that cannot start:
  orbax starts it inside the read), else ``None`` (damage)."""
  try:
    jax.devices()
  except (RuntimeError, AssertionError) as backend:
    return JdlError(errors_lib.backend_message(backend))
  reason = environment_failure(e)
  if reason is None:
    return None
  return JdlError(f"could not read {which} in {directory}: {reason} ({error_summary(e)}); "
                  "nothing was moved or deleted: mend that and run again")


def _write_failure_reason(e: BaseException) -> str:
  """The OS's words for a tensorstore write error ('No space left on device'), else its first line.

  tensorstore appends ``[os_error_code='28']`` (quoted, escaped or bare, after a space,
  a newline or inside a list of errors): the code is mapped back through
  ``os.strerror`` rather than cutting the text around it.
  """
  text = str(e)
  found = _OS_ERROR_CODE.search(text)
  words = os.strerror(int(found.group(1))) if found else ""
  if words and not words.startswith("Unknown error"):
    return words
  for words in _WRITE_ERRNO_WORDS:  # The OS's words without a code.
    if words in text:
      return words
  return error_summary(e)


_OS_ERROR_CODE = re.compile(r"os_error_code=[\\'\"]*(\d+)")
_WRITE_ERRNO_WORDS = tuple(os.strerror(code) for code in (
    errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO))


def _layout(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """``{'state/params/Dense_0/kernel': (shape, dtype name), ...}`` of a tree of arrays."""
  return {jax.tree_util.keystr(path, simple=True, separator="/"):
          (tuple(leaf.shape), np.dtype(leaf.dtype).name)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def flatten_params(params: Any) -> dict[str, np.ndarray]:
  """``{'hidden_0/kernel': array, ...}``: parameters keyed by '/'-joined paths."""
  flat = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(params), sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def restore_params(directory: str | os.PathLike, *, step: int | None = None,
                   model_state: bool = False) -> dict[str, np.ndarray]:
  """Flat parameters of a checkpoint written by jdl's trainer (no config needed).

  Only the step read must be intact: it is read on its own, not through orbax's
  manager (which parses every step's metrics and fails on any damaged one).

  Args:
    directory: the ``checkpoints/`` folder.
    step: the step to read; the latest when ``None``.
    model_state: also the model's other variables, keyed by their collection
      (``'batch_stats/bn_0/mean'``): what evaluation needs besides the parameters.

  Raises:
    JdlError: no such step, or the step is damaged.
  """
  root = Path(directory).resolve()
  steps = step_numbers(root)
  if not steps:
    raise JdlError(f"no checkpoints in {directory}")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise JdlError(f"no checkpoint at step {step} in {directory}; steps: {steps}")
  require_undamaged(directory, step)
  _quiet_abandoned_reads()
  with _absl_quiet(), unreadable_as_error(directory, step):  # orbax warns of the step's
    return _restore_params(root / str(step) / "tree", model_state)  # metadata, read elsewhere.


def remove_unfinished(directory: str | os.PathLike) -> list[str]:
  """Removes the folders of saves that never finished (``40.orbax-checkpoint-tmp...``:
  a run killed while writing); returns their names. Only the process that holds the
  workdir's lock may call it: no save of another process can be in flight."""
  root = Path(directory)
  gone = []
  for path in sorted(root.glob("*.orbax-checkpoint-tmp*")) if root.is_dir() else ():
    if path.is_dir():
      shutil.rmtree(path, ignore_errors=True)
      gone.append(path.name)
  return gone


def step_numbers(directory: str | os.PathLike) -> list[int]:
  """The steps in a ``checkpoints/`` folder, sorted (orbax's unfinished writes have
  other names: ``40.orbax-checkpoint-tmp``)."""
  root = Path(directory)
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def _restore_params(item: Path, model_state: bool = False) -> dict[str, np.ndarray]:
  with ocp.StandardCheckpointer() as reader:
    tree = reader.restore(item, _on_first_device(reader.metadata(item).item_metadata))
  meta = {}
  if (item.parent / "meta").is_dir():  # The step's JsonSave item (older steps may lack it).
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as reader:
      meta = reader.restore(item.parent / "meta")
  verify_checksums(tree, meta if isinstance(meta, dict) else {},
                   f"the checkpoint at step {item.parent.name} in {item.parent.parent}")
  flat = flatten_params(tree["state"]["params"])
  if model_state:
    flat.update(flatten_params(tree["state"].get("model_state", {})))
  return flat


def _on_first_device(stored: Any) -> Any:
  """Restore targets for stored arrays' metadata: their shapes and dtypes on this
  process's first device, whatever devices wrote them (orbax would otherwise refuse
  a checkpoint saved on another device count)."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                      stored)


@contextlib.contextmanager
def _absl_quiet():
  """orbax's routine absl warnings off for the block (errors still pass)."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(max(level, logging.ERROR))
  try:
    yield
  finally:
    absl_logger.setLevel(level)


class _AbandonedReads(logging.Filter):
  """Drops asyncio's "Task/Future exception was never retrieved" records of TensorStore
  errors ("OUT_OF_RANGE: Error opening ...").

  A damaged step fails several of orbax's concurrent array reads: orbax raises the
  first, which jdl reports in one line (and acts on); asyncio logged the others'
  tracebacks whenever they were collected, often after that line. Other records,
  and other exceptions never retrieved, pass.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if "exception was never retrieved" not in str(record.msg) or not record.exc_info:
      return True
    text = str(record.exc_info[1])
    if text.startswith(_ORBAX_READ_FAILED):  # orbax's wrapper of such an error.
      return False
    return not (_TS_STATUS.match(text) and ("tensorstore" in text or "OCDBT" in text
                                            or 'driver: ' in text))


_ABANDONED_READS = _AbandonedReads()
_ORBAX_READ_FAILED = "Encountered error while reading array index"


def _is_abandoned_read(unraisable: Any) -> bool:
  """Whether ``sys.unraisablehook``'s argument is one of orbax's array reads of a
  damaged step, closed unfinished when collected: each printed "Exception ignored in:
  <coroutine object _read_array_index_and_device_put>" and a traceback, after the one
  line that reported the damage."""
  code = getattr(unraisable.object, "cr_code", None)
  return (getattr(code, "co_name", None) == "_read_array_index_and_device_put"
          and str(unraisable.exc_value).startswith(_ORBAX_READ_FAILED))


def _drop_abandoned_reads(previous: Callable[[Any], None]) -> Callable[[Any], None]:
  def hook(unraisable: Any) -> None:
    if not _is_abandoned_read(unraisable):
      previous(unraisable)

  hook.jdl_drops_abandoned_reads = True  # type: ignore[attr-defined]
  return hook


def _quiet_abandoned_reads() -> None:
  """Installs :class:`_AbandonedReads` on asyncio's logger and drops the abandoned
  reads' "Exception ignored" reports (once, for good: both come when the failed reads
  are collected, after the restore returns). Anything else passes as before."""
  asyncio_logger = logging.getLogger("asyncio")
  if _ABANDONED_READS not in asyncio_logger.filters:
    asyncio_logger.addFilter(_ABANDONED_READS)
  if not getattr(sys.unraisablehook, "jdl_drops_abandoned_reads", False):
    sys.unraisablehook = _drop_abandoned_reads(sys.unraisablehook)


def require_undamaged(directory: str | os.PathLike, step: int | None = None) -> None:
  """For the commands that only read a run: one error naming its damaged steps.

  Args:
    directory: the ``checkpoints/`` folder.
    step: only this step must be undamaged; ``None``: every step (the latest or
      the best one is picked among them).

  Raises:
    JdlError: some step's files are visibly damaged (:func:`find_damaged`).
  """
  damaged = find_damaged(directory)
  if step is not None:
    damaged = {s: r for s, r in damaged.items() if s == step}
  if damaged:
    listed = "; ".join(f"step {s}: {r}" for s, r in sorted(damaged.items()))
    raise JdlError(f"damaged checkpoints in {directory} ({listed}); `jdl train` with this "
                   "workdir moves them aside and resumes from the last good one")


@contextlib.contextmanager
def unreadable_as_error(directory: str | os.PathLike, step: int | None):
  """Turns a failed read of a step (orbax, tensorstore, JSON) into one clear error.

  Raises:
    StepRemoved: the step's folder is gone (a run in progress pruned it).
    JdlError: any other failure.
  """
  try:
    yield
  except JdlError:
    raise
  except Exception as e:  # noqa: BLE001 (orbax/tensorstore raise many types for damage)
    if step is not None and not (Path(directory) / str(step)).exists():
      raise StepRemoved(f"the checkpoint at step {step} in {directory} was removed while it "
                        "was read (a run in progress there keeps only its last "
                        "keep_checkpoints steps); run the command again") from None
    which = f"the checkpoint at step {step}" if step is not None else "the latest checkpoint"
    failure = machine_failure(which, directory, e)
    if failure is not None:  # The machine, not the files: nothing to set aside.
      raise failure from None
    raise JdlError(f"{which} in {directory} is unreadable ({error_summary(e)}); `jdl train` "
                   "in its workdir moves it to damaged-checkpoints/ and continues from the "
                   "checkpoint before") from None


class StepRemoved(JdlError):
  """A checkpoint step disappeared while it was read (pruned by a running job)."""


_JSON_FILES = ("_CHECKPOINT_METADATA", "metrics/metrics", "meta/metadata", "tree/_METADATA")


def find_damaged(directory: str | os.PathLike) -> dict[int, str]:
  """Steps whose files are visibly damaged (empty files, unparsable JSON metadata).

  A cheap check before orbax reads the directory (orbax's manager reads every
  step's metrics when it starts, and fails on a truncated one). Damage it cannot
  see shows up when the step is restored.

  Returns:
    ``{step: reason}``.
  """
  return {int(name): reason for name, reason in find_damaged_folders(directory).items()}


def find_damaged_folders(directory: str | os.PathLike) -> dict[str, str]:
  """:func:`find_damaged` by folder name (``'0300'`` and ``'300'`` are both step 300
  to a listing, and only one of them may be damaged)."""
  damaged = {}
  root = Path(directory)
  if not root.is_dir():
    return damaged
  for step_dir in root.iterdir():
    if not step_dir.name.isdigit() or not step_dir.is_dir():
      continue
    try:
      reason = _damage(step_dir)
    except FileNotFoundError:
      reason = None
    # A run in progress may prune a step while it is looked at: gone is not damaged.
    if reason and step_dir.is_dir():
      damaged[step_dir.name] = reason
  return damaged


def _damage(step_dir: Path) -> str | None:
  """Why one step's folder is visibly damaged; ``None`` if it is not."""
  files = [p for p in step_dir.rglob("*") if p.is_file()]
  if not files:
    return "no files"
  empty = [p for p in files if p.stat().st_size == 0 and p.name != "commit_success.txt"]
  if empty:
    return f"empty file {empty[0].relative_to(step_dir)}"
  for name in _JSON_FILES:
    path = step_dir / name
    if not path.exists():
      if name in ("_CHECKPOINT_METADATA", "meta/metadata", "tree/_METADATA"):
        return f"missing {name}"
      continue
    try:
      value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
      return f"corrupt {name}"
    problem = _json_layout_problem(name, value)
    if problem:  # Valid JSON of the wrong shape: orbax would fail on it when it opens
      return f"corrupt {name} ({problem})"  # the checkpoints, on every later run.
  return None


# The fields of orbax's _CHECKPOINT_METADATA, with the JSON types its reader accepts.
_STEP_METADATA_TYPES = {"item_handlers": (dict, str), "metrics": (dict,),
                        "performance_metrics": (dict,), "init_timestamp_nsecs": (int,),
                        "commit_timestamp_nsecs": (int,), "custom_metadata": (dict,)}


def _json_layout_problem(name: str, value: Any) -> str | None:
  """What makes a parsed metadata file unusable, or ``None``: each is a JSON object;
  ``metrics/metrics`` maps names to numbers (ranked by ``best_metric``), and
  ``_CHECKPOINT_METADATA`` holds its fields' types."""
  if not isinstance(value, dict):
    return f"a JSON {type(value).__name__}, not an object"
  if name == "metrics/metrics":
    for key, v in value.items():
      if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"the metric {key!r} is {v!r}, not a number"
  elif name == "_CHECKPOINT_METADATA":
    for key, types in _STEP_METADATA_TYPES.items():
      v = value.get(key)
      if v is not None and (not isinstance(v, types) or isinstance(v, bool)):
        return f"{key} is {v!r}"
  return None


def _rank(metrics: Any, *, metric: str, worst: float) -> float:
  """A step's rank for ``best_metric``: its value, or ``worst`` when the step has no
  such number (a mid-epoch step, or a value that is not a finite number)."""
  value = metrics.get(metric, worst) if isinstance(metrics, dict) else worst
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return worst
  return float(value)


def quarantine(directory: str | os.PathLike, step: int, name: str | None = None) -> Path:
  """Moves a damaged step out of the checkpoint directory (kept, not deleted).

  ``name``: the folder, when it is not ``str(step)`` (a copied-in ``'0300'``);
  without it, ``str(step)`` (the folder orbax reads for ``step``), else the one
  folder whose number is ``step``.
  """
  root = Path(directory)
  if name is None and not (root / str(step)).is_dir():
    names = [p.name for p in root.iterdir() if p.name.isdigit() and int(p.name) == step]
    name = names[0] if len(names) == 1 else None
  folder = root / (name or str(step))
  target_root = root.parent / "damaged-checkpoints"
  target_root.mkdir(exist_ok=True)
  target = target_root / f"{folder.name}-{int(time.time())}"
  folder.rename(target)
  return target


# The JSON metadata jdl's trainer writes with every step: key -> accepted types.
META_SCHEMA = {"step": int, "epoch": int, "position": int, "steps_per_epoch": int,
               "history": dict, "callbacks": dict, "config": dict, "best": (dict, type(None))}


def check_json(value: Any, where: str) -> None:
  """Raises a JdlError naming the first value in ``value`` that is not plain JSON
  (e.g. a numpy scalar: convert it with ``float()`` / ``int()`` / ``.tolist()``)."""
  if value is None or isinstance(value, (str, bool, int, float)):
    return
  if isinstance(value, dict):
    for k, v in value.items():
      if not isinstance(k, str):
        raise JdlError(f"{where} has the key {k!r} of type {type(k).__name__}; checkpoint "
                       "metadata is JSON, whose keys are strings")
      check_json(v, f"{where}[{k!r}]")
    return
  if isinstance(value, (list, tuple)):
    for i, v in enumerate(value):
      check_json(v, f"{where}[{i}]")
    return
  raise JdlError(f"{where} is a {type(value).__module__}.{type(value).__name__} ({value!r:.60}); "
                 "checkpoint metadata is JSON: use plain int, float, str, bool, None, lists "
                 "and dicts (e.g. float(x) for a numpy scalar)")


def validate_meta(meta: Any, step: int) -> None:
  """Checks checkpoint metadata against :data:`META_SCHEMA` (JSON only, never code).

  Raises:
    JdlError: a missing key, a value of the wrong type, or a step that disagrees.
  """
  if not isinstance(meta, dict):
    raise JdlError(f"checkpoint {step}: metadata is not a JSON object")
  for key, kinds in META_SCHEMA.items():
    if key not in meta:
      raise JdlError(f"checkpoint {step}: metadata lacks {key!r}")
    if not isinstance(meta[key], kinds) or isinstance(meta[key], bool):
      raise JdlError(f"checkpoint {step}: metadata {key!r} has the wrong type "
                     f"({type(meta[key]).__name__})")
  if meta["step"] != step:
    raise JdlError(f"checkpoint {step}: metadata says step {meta['step']}")
  for name, values in meta["history"].items():
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
      raise JdlError(f"checkpoint {step}: history {name!r} is not a list of numbers")
  _validate_warning_counts(meta.get("warnings", {}), step)
  stopped = meta.get("stopped")  # Optional: a callback ended the run at this epoch.
  if stopped is not None and not (
      isinstance(stopped, dict) and set(stopped) == {"epoch", "by"}
      and isinstance(stopped["epoch"], int) and not isinstance(stopped["epoch"], bool)
      and stopped["epoch"] >= 1 and isinstance(stopped["by"], str)):
    raise JdlError(f"checkpoint {step}: metadata 'stopped' is not a record of the epoch "
                   f"a callback stopped the run at ({str(stopped)[:80]})")


def _validate_warning_counts(warnings: Any, step: int) -> None:
  """The optional ``warnings`` entry: ``{"nonfinite_reported": int, "update_ratio":
  {layer: int}}`` (checkpoints written before it lack it)."""
  def count(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0

  ratios = warnings.get("update_ratio", {}) if isinstance(warnings, dict) else None
  if not (isinstance(ratios, dict) and count(warnings.get("nonfinite_reported", 0))
          and all(count(n) for n in ratios.values())):
    raise JdlError(f"checkpoint {step}: metadata 'warnings' is not a record of warning "
                   f"counts ({str(warnings)[:80]})")


__all__ = ["Checkpointer", "CorruptCheckpoint", "StepRemoved", "restore_params",
           "flatten_params", "step_numbers", "find_damaged", "require_undamaged",
           "remove_unfinished", "quarantine"]
