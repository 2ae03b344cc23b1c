"""The ``npy_dir`` source: ``.npy`` files read row by row from disk, never whole.

A directory holds ``x_train.npy`` and ``y_train.npy`` and optionally ``x_test`` /
``y_test`` and ``x_val`` / ``y_val``. Any of them may instead be split into per-file
shards ``x_train.0.npy, x_train.1.npy, ...`` (ordered by the numbers in their names)
that act as one array concatenated along the first axis. Files are opened with
``np.load(..., mmap_mode='r', allow_pickle=False)`` for their headers (nothing is
unpickled) and read with ``pread`` only when rows are asked for (:class:`NpyRows`).

Validation and the train split's normalisation statistics take sequential chunked
passes over the files, so memory stays at one chunk whatever the size.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

import numpy as np

from jdl.errors import JdlError
from jdl.data.validate import check_stray_label

SPLITS = ("train", "test", "val")
# Rows a chunked pass reads at once: about this many bytes of float64.
CHUNK_BYTES = 32 << 20


def _natural_key(path: pathlib.Path):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


class NpyRows:
  """Rows of one or more ``.npy`` shards, as one virtual array read on demand.

  Each file is opened with ``np.load(path, mmap_mode='r', allow_pickle=False)``, which
  checks its header and gives its shape, dtype and data offset; rows are then read
  with ``os.preadv`` straight into the caller's buffer, runs of consecutive rows in one
  call. Why not index the memory map: every page fault on a file mapping also maps up
  to 16 neighbouring pages (the kernel's fault-around), so gathering random rows of a
  memmap leaves the whole file in the process's resident memory within an epoch (seen
  here: 3.0 GiB RssFile for a 3.1 GiB file), and a file truncated while mapped kills
  the process with SIGBUS. ``pread`` keeps resident memory at the rows asked for and
  turns a short file into an error.

  Attributes:
    shape: ``(total_rows, *row_shape)``.
    dtype: the files' dtype.
    paths: the shard files, in order.
  """

  def __init__(self, paths: list[pathlib.Path]):
    self.paths = paths
    self._offsets = []
    shapes, dtypes = [], []
    for path in paths:
      try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
      except (OSError, ValueError, EOFError) as e:
        # numpy takes a file without the .npy header for a pickle, and says to unpickle
        # it: no advice to give here (jdl loads no pickle).
        why = "no .npy header" if "pickle" in str(e) else str(e)
        raise JdlError(f"cannot read {path}: it is corrupt or not a .npy file of numbers "
                       f"({why})") from None
      if not isinstance(a, np.ndarray):
        raise JdlError(f"{path} is not a single .npy array")
      if a.dtype.kind not in "biuf":
        raise JdlError(f"{path} has non-numeric dtype {a.dtype}; save plain numeric arrays")
      if a.ndim == 0:
        raise JdlError(f"{path} holds a scalar; it needs one row per example, [N, ...]")
      if a.ndim > 1 and a.size and not a.flags.c_contiguous:
        raise JdlError(f"{path} is stored in Fortran order; save it in C order "
                       "(np.save(path, np.ascontiguousarray(x)))")
      self._offsets.append(int(getattr(a, "offset", 0)))
      shapes.append(a.shape)
      dtypes.append(a.dtype)
      del a  # Only the header was needed; the mapping is closed.
    for path, shape, dtype in zip(paths[1:], shapes[1:], dtypes[1:]):
      if shape[1:] != shapes[0][1:] or dtype != dtypes[0]:
        raise JdlError(f"shard {path} has rows of shape {shape[1:]} and dtype {dtype} but "
                       f"{paths[0]} has {shapes[0][1:]} and {dtypes[0]}; shards must match")
    self.dtype = dtypes[0]
    self._starts = np.cumsum([0] + [s[0] for s in shapes])
    self.shape = (int(self._starts[-1]), *shapes[0][1:])
    self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

  def __len__(self) -> int:
    return self.shape[0]

  @property
  def name(self) -> str:
    return str(self.paths[0]) + (f" (+{len(self.paths) - 1} shards)" if len(self.paths) > 1 else "")

  def take(self, rows: np.ndarray) -> np.ndarray:
    """The rows ``rows`` (any order, repeats allowed), read in sorted order for locality.

    Each row is read straight into its place in the result (``preadv`` scatters a run
    of consecutive file rows into their output slots), so there is one copy only.
    """
    rows = np.asarray(rows, np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
      raise IndexError(f"rows outside [0, {len(self)}) of {self.name}")
    out = np.empty((len(rows), *self.shape[1:]), self.dtype)
    if len(rows) and self._row_bytes:
      order = np.argsort(rows, kind="stable")
      self._read_sorted(rows[order], order, out.reshape(len(rows), -1).view(np.uint8))
    return out

  def slice(self, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` (one read a shard)."""
    return self.take(np.arange(start, stop))

  def _read_sorted(self, rows: np.ndarray, dest: np.ndarray, out: np.ndarray) -> None:
    """Reads sorted ``rows`` into rows ``dest`` of ``out: [m, row_bytes]`` uint8."""
    rb = self._row_bytes
    shard = np.searchsorted(self._starts, rows, side="right") - 1
    bounds = np.searchsorted(shard, np.arange(len(self.paths) + 1))
    for s, path in enumerate(self.paths):
      lo, hi = int(bounds[s]), int(bounds[s + 1])
      if hi <= lo:
        continue
      local = rows[lo:hi] - self._starts[s]
      d = dest[lo:hi]
      # A run: consecutive rows in the file going to consecutive output rows (one
      # buffer); else one buffer a row. Sorted input (statistics, evaluation) is one run.
      breaks = np.flatnonzero((np.diff(local) != 1) | (np.diff(d) != 1)) + 1
      starts = np.concatenate([[0], breaks]).tolist()
      ends = np.concatenate([breaks, [hi - lo]]).tolist()
      local_l, d_l = local.tolist(), d.tolist()
      fd = os.open(path, os.O_RDONLY)
      try:
        for a, b in zip(starts, ends):
          view = out[d_l[a]:d_l[a] + b - a].reshape(-1).view(np.uint8)
          start, done = self._offsets[s] + local_l[a] * rb, 0
          while done < view.nbytes:  # Linux reads at most ~2 GiB a call.
            got = os.preadv(fd, [view[done:]], start + done)
            if got == 0:
              raise JdlError(f"{path} ended early: {done} of {view.nbytes} bytes at row "
                             f"{local_l[a]}; was it changed or truncated during the run?")
            done += got
      finally:
        os.close(fd)


def _find(directory: pathlib.Path, key: str) -> list[pathlib.Path]:
  single = directory / f"{key}.npy"
  candidates = sorted(directory.glob(f"{key}.*.npy"), key=_natural_key)
  shards = [p for p in candidates if re.fullmatch(rf"{re.escape(key)}\.\d+\.npy", p.name)]
  stray = [p.name for p in candidates if p not in shards]
  if stray:
    raise JdlError(f"{directory}: {', '.join(stray)} look like shards of {key} but are not "
                   f"numbered ({key}.0.npy, {key}.1.npy, ...); rename or move them")
  if single.is_file() and shards:
    raise JdlError(f"{directory} holds both {single.name} and shards {shards[0].name}, ...; "
                   "keep one of them")
  # The shards are read in their numbers' order: exactly 0..k-1, each once.
  names = [p.name for p in shards]
  expected = [f"{key}.{i}.npy" for i in range(len(shards))]
  if sorted(names) != sorted(expected):
    raise JdlError(f"{directory}: the shards of {key} must be numbered from {key}.0.npy "
                   f"on without gaps or leading zeros; found {', '.join(names)}")
  return [single] if single.is_file() else shards


@dataclasses.dataclass(frozen=True, eq=False)
class StreamDataset:
  """A dataset whose splits stay on disk (``x_*``/``y_*`` are :class:`NpyRows`).

  Attributes as :class:`jdl.data.Dataset`; a missing split is ``None``.
  """
  x_train: NpyRows
  y_train: NpyRows
  x_test: NpyRows | None
  y_test: NpyRows | None
  num_classes: int
  task: str
  name: str
  input_shape: tuple[int, ...]
  x_val: NpyRows | None = None
  y_val: NpyRows | None = None

  def __repr__(self) -> str:
    from jdl.data.sources import describe
    return describe(self)


def chunk_rows(rows: NpyRows) -> int:
  per_row = max(1, int(np.prod(rows.shape[1:], dtype=np.int64)) * 8)
  return max(1, CHUNK_BYTES // per_row)


def _chunks(a: NpyRows, rows: np.ndarray | None, size: int):
  n = len(a) if rows is None else len(rows)
  for start in range(0, n, size):
    if rows is None:
      chunk = a.slice(start, min(n, start + size))
    else:
      chunk = a.take(np.sort(rows[start:start + size]))
    yield chunk


def value_range(a: NpyRows) -> tuple[float, float]:
  """The smallest and largest value of ``a`` (one chunked pass; ``(inf, -inf)`` if empty)."""
  low, high = np.inf, -np.inf
  for chunk in _chunks(a, None, chunk_rows(a)):
    if chunk.size:
      low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
  return low, high


def open_dir(directory: str | pathlib.Path) -> StreamDataset:
  """Opens and validates an ``npy_dir`` directory (one chunked pass over the files).

  Raises:
    JdlError: a missing directory or file, an unpaired x/y, mismatched shapes or
      lengths, a non-numeric or pickled array, NaN/Inf inputs, bad labels.
  """
  if not directory:
    raise JdlError("the npy_dir dataset needs data_dir: a directory holding x_train.npy and "
                   "y_train.npy (optionally x_test/y_test, x_val/y_val, or shards "
                   "x_train.0.npy, x_train.1.npy, ...)")
  directory = pathlib.Path(directory).expanduser()
  if not directory.is_dir():
    raise JdlError(f"npy_dir data_dir {directory} is not a directory")
  arrays: dict[str, NpyRows] = {}
  for split in SPLITS:
    found = {k: _find(directory, f"{k}_{split}") for k in ("x", "y")}
    if bool(found["x"]) != bool(found["y"]):
      have, lack = ("x", "y") if found["x"] else ("y", "x")
      raise JdlError(f"{directory} has {have}_{split} but no {lack}_{split}.npy; the {split} "
                     "split needs both")
    if found["x"]:
      for k in ("x", "y"):
        arrays[f"{k}_{split}"] = NpyRows(found[k])
  if "x_train" not in arrays:
    raise JdlError(f"{directory} holds no x_train.npy and y_train.npy (or their shards "
                   "x_train.0.npy, ...); see the npy_dir section of the README")
  x_shape = arrays["x_train"].shape[1:]
  for split in SPLITS:
    if f"x_{split}" not in arrays:
      continue
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if len(x.shape) < 2:
      raise JdlError(f"{x.name} has shape {x.shape}; x needs one row per example, [N, ...] "
                     "(reshape 1-D inputs to [N, 1])")
    if 0 in x.shape[1:]:
      raise JdlError(f"{x.name} has shape {x.shape}: each example of it is empty")
    if x.shape[1:] != x_shape:
      raise JdlError(f"{x.name} has examples of shape {x.shape[1:]} but x_train has "
                     f"{x_shape}; they must match")
    if len(x) == 0:
      raise JdlError(f"the {split} split is empty (0 examples in {x.name})")
    if len(x) != len(y):
      raise JdlError(f"{split} split: {x.name} has {len(x)} examples but {y.name} has "
                     f"{len(y)}; they must have one target per input")
  num_classes, task = _scan_labels(arrays)
  for split in SPLITS:
    if f"x_{split}" in arrays:
      _check_finite(arrays[f"x_{split}"], f"x_{split}")
  get = arrays.get
  return StreamDataset(
      x_train=arrays["x_train"], y_train=arrays["y_train"], x_test=get("x_test"),
      y_test=get("y_test"), x_val=get("x_val"), y_val=get("y_val"), num_classes=num_classes,
      task=task, name=f"npy_dir:{directory.name}", input_shape=tuple(int(d) for d in x_shape))


def _scan_labels(arrays: dict[str, NpyRows]) -> tuple[int, str]:
  """The task (npz's rule: float targets that are not all integers = regression) and classes."""
  ys = [(s, arrays[f"y_{s}"]) for s in SPLITS if f"y_{s}" in arrays]
  integral, top, low = True, -np.inf, np.inf
  top_two = np.zeros(0)  # The two largest distinct labels.
  for _, y in ys:
    for chunk in _chunks(y, None, chunk_rows(y)):
      if y.dtype.kind == "f":
        finite = np.isfinite(chunk)
        integral = integral and bool(finite.all() and (chunk == np.round(chunk)).all())
        if not integral:
          break
      if chunk.size:
        top, low = max(top, float(chunk.max())), min(low, float(chunk.min()))
        top_two = np.union1d(top_two, np.unique(chunk)[-2:])[-2:]
  if not integral:
    width = {split: int(np.prod(y.shape[1:], dtype=np.int64)) for split, y in ys}
    for split, y in ys:
      if width[split] != width["train"]:
        raise JdlError(f"{y.name} has targets of shape {y.shape[1:]} but y_train has "
                       f"{arrays['y_train'].shape[1:]}; every split needs the same targets")
      _check_finite(y, f"y_{split}")
    return 0, "regression"
  for split, y in ys:
    if len(y.shape) != 1:
      raise JdlError(f"{y.name} has shape {y.shape}; classification labels must be one "
                     "integer class id per example, shape [N] (not one-hot)")
  if low < 0 or not top < 2**31 - 1:
    raise JdlError(f"labels must be in [0, 2**31 - 1), got values from {low:g} to {top:g} in "
                   f"{', '.join(y.name for _, y in ys)}; remap them to 0..num_classes-1")
  check_stray_label(top_two, ", ".join(y.name for _, y in ys))
  return max(int(top) + 1, 1), "classification"


def _check_finite(a: NpyRows, what: str) -> None:
  if a.dtype.kind != "f":
    return
  bad_rows = 0
  for chunk in _chunks(a, None, chunk_rows(a)):
    # As read for training: float32 (a float64 value beyond its range becomes Inf).
    with np.errstate(over="ignore"):
      chunk = chunk.astype(np.float32, copy=False)
    bad_rows += int((~np.isfinite(chunk.reshape(len(chunk), -1))).any(axis=1).sum())
  if bad_rows:
    raise JdlError(f"{what} ({a.name}) contains NaN or Inf values (as float32, as jdl reads "
                   f"them) in {bad_rows} of {len(a)} examples; clean or impute them before "
                   "training")


def fit_normalizer(x: NpyRows, rows: np.ndarray | None, mode: str):
  """The train split's :class:`jdl.data.pipeline.Normalizer`, in two chunked passes.

  Equal to ``Normalizer.fit*(x[rows])`` up to float64 summation order (the float32
  statistics agree to ~1 ulp, in practice exactly).

  Args:
    x: the inputs.
    rows: the train split's rows of ``x`` (``None``: all of them).
    mode: ``config.normalize``.
  """
  from jdl.data.pipeline import Normalizer, needs_float64, unit_where_constant
  shape = x.shape[1:]
  if mode == "none":
    return Normalizer.identity(shape)
  n = len(x) if rows is None else len(rows)
  size = chunk_rows(x)
  # As the loop reads the files: float64 and wide integer files in float64, others as
  # float32 (the statistics the in-memory path takes of the same values).
  wide = needs_float64(x.dtype)
  read = np.float64 if wide else np.float32
  total = np.zeros(shape, np.float64)
  for chunk in _chunks(x, rows, size):
    total += chunk.astype(read).sum(axis=0, dtype=np.float64)
  if mode == "global":
    mean = total.sum() / (n * max(1, int(np.prod(shape))))
  else:
    mean = total / n
  if mode == "featurewise_center":
    return Normalizer(mean, np.ones(shape), wide)
  squares = np.zeros(shape, np.float64)
  for chunk in _chunks(x, rows, size):
    d = chunk.astype(read).astype(np.float64) - mean
    squares += (d * d).sum(axis=0)
  if mode == "global":
    values = n * max(1, int(np.prod(shape)))
    std = float(unit_where_constant(np.sqrt(squares.sum() / values), mean, values))
    return Normalizer(np.full(shape, mean), np.full(shape, std), wide)
  return Normalizer(mean, unit_where_constant(np.sqrt(squares / n), mean, n), wide)
