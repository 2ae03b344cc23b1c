"""Dataset sources: scikit-learn sets, synthetic generators, MNIST-family IDX files, npz.

Every source returns a :class:`Dataset` of numpy arrays with a train and a test split;
:func:`load_dataset` picks the source by name and validates the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import zipfile
import zlib
from collections.abc import Callable, Mapping

import numpy as np

from jdl.data import download as download_lib
from jdl.data import pipeline
from jdl.data import text as text_data
from jdl.data.idx import read_idx
from jdl.data.validate import check_example_shapes
from jdl.data.validate import check_stray_label
from jdl.data.validate import require_finite
from jdl.data.validate import validate_arrays
from jdl.errors import JdlError, is_integer, lookup
from jdl.sequence import text as text_lib


def _sklearn_datasets():
  """scikit-learn's datasets module, imported on first use (a ~1 s import)."""
  from sklearn import datasets
  return datasets


def _train_test_split(*args, **kwargs):
  from sklearn.model_selection import train_test_split
  return train_test_split(*args, **kwargs)

# The four files of an MNIST-family dataset, without the ``.gz`` suffix.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

_SYNTHETIC = ("moons", "circles", "blobs", "xor", "linear")
# Sources whose size n_samples sets (besides the synthetic ones above).
_SIZED = ("adding_problem", "dates")
_VOCABS = {"sst2": ("text",), "dates": ("src", "tgt")}  # The vocabularies a source reads.
# Sources that jdl's own code generates (from the seed and n_samples): another jdl
# version may generate other data for the same settings.
GENERATED = _SYNTHETIC + _SIZED

# The true coefficients of the ``linear`` regression set.
_LINEAR_W = np.array([1.5, -2.0, 0.5])
_LINEAR_B = 0.3


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A dataset: a train split, and optionally a test and a validation split.

  Attributes:
    x_train: inputs, ``[N, *input_shape]``: float32, or any numeric dtype (integers
      and float64 are normalised in float64, then fed as float32; token ids of a
      text model are fed as they are with ``normalize='none'``).
    y_train: integer class ids ``[N]`` (classification) or float targets ``[N]`` or
      ``[N, ...]`` (regression; a run reads them as ``[N, k]``).
    x_test: as ``x_train``, or ``None`` (the default): no test split.
    y_test: as ``y_train``, or ``None`` with ``x_test``.
    num_classes: the number of classes (labels ``0 .. num_classes - 1``); required
      for classification; 0 (the default) for regression.
    task: ``"classification"`` (the default) or ``"regression"``.
    name: the dataset's name (``"custom"`` by default).
    input_shape: the shape of one example, e.g. ``(28, 28, 1)``; by default that of
      ``x_train``'s rows.
    x_val: an explicit validation split (as ``x_train``), or ``None``: the trainer
      then holds out ``validation_split`` of the train split.
    y_val: its targets.
    vocab: text datasets: ``{name: Vocabulary}`` (``"text"`` for a classifier's
      inputs; ``"src"`` and ``"tgt"`` for seq2seq), built on the train split;
      ``x`` then holds int32 token ids. ``None`` otherwise.
    rebuild_vocab: text datasets whose vocabulary was built here: ``rebuild(rows)``
      is the dataset as loaded, with the vocabulary built on the train rows ``rows``
      only and every split encoded with it (changes made to the arrays since are
      not kept). A run that loads its dataset from the config calls it with the
      rows it trains on, so no word seen only in its validation rows gets an id; a
      dataset given to ``fit`` is used as it is. ``None`` otherwise.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray | None = None
  y_test: np.ndarray | None = None
  num_classes: int | None = None
  task: str = "classification"
  name: str = "custom"
  input_shape: tuple[int, ...] | None = None
  x_val: np.ndarray | None = None
  y_val: np.ndarray | None = None
  vocab: dict | None = None
  rebuild_vocab: Callable[[np.ndarray], Dataset] | None = dataclasses.field(default=None,
                                                                              repr=False)

  def __post_init__(self):
    """Checks what a mistake in the constructor's arguments would otherwise make a
    traceback (or a misleading error) later: the task, ``num_classes``, that the
    splits are arrays, and that a validation split has both its halves. The values
    are checked when a run reads them (:func:`jdl.data.validate_arrays`)."""
    from jdl.data.validate import TASKS
    lookup("task", self.task, {t: t for t in TASKS})
    if self.num_classes is None:
      if self.task != "regression":
        raise JdlError(f"a {self.task} dataset needs num_classes (the number of classes: "
                       "labels are 0 .. num_classes - 1)")
      object.__setattr__(self, "num_classes", 0)
    classes = self.num_classes
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 0:
      raise JdlError(f"num_classes must be a non-negative integer, got {classes!r}")
    if self.task == "regression" and classes:
      raise JdlError(f"a regression dataset has num_classes=0, got {classes} (classes are "
                     "for task='classification')")
    for name in ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val"):
      value = getattr(self, name)
      optional = name not in ("x_train", "y_train")
      if (value is None and optional) or hasattr(value, "shape") and hasattr(value, "dtype"):
        continue
      raise JdlError(f"{name} must be an array (numpy, one row per example), got "
                     f"{type(value).__name__}; convert it with np.asarray")
    for a, b in (("x_val", "y_val"), ("y_val", "x_val"), ("x_test", "y_test"),
                 ("y_test", "x_test")):
      if getattr(self, a) is not None and getattr(self, b) is None:
        raise JdlError(f"{a} is given without {b}: a split needs its inputs and targets")
    if self.input_shape is None:
      object.__setattr__(self, "input_shape", tuple(int(d) for d in self.x_train.shape[1:]))

  def __repr__(self) -> str:
    return describe(self)


def describe(dataset) -> str:
  """A dataset's repr: its arrays by dtype and shape (``float32[1437,8,8,1]``), not
  their values, which would fill a notebook cell; a missing split left out."""
  arrays = [f"{name}={np.dtype(a.dtype).name}[{','.join(str(int(d)) for d in a.shape)}]"
            for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
            if (a := getattr(dataset, name, None)) is not None]
  vocab = getattr(dataset, "vocab", None)
  return (f"{type(dataset).__name__}(name={dataset.name!r}, task={dataset.task!r}, "
          f"num_classes={dataset.num_classes}, input_shape={tuple(dataset.input_shape)}, "
          + ", ".join(arrays) + (f", vocab={sorted(vocab)}" if vocab else "") + ")")


_SPLIT_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
FINGERPRINT_ROWS = 256


def fingerprint(dataset, *, float64_as_float32: bool = False) -> str:
  """A short hash of a dataset's arrays: each one's shape and dtype, and up to
  :data:`FINGERPRINT_ROWS` evenly spaced rows of it (so it is cheap for any size).

  A run's checkpoints record it, so that resuming or reloading the run with other
  data is refused instead of silently scoring or training on it. Works for
  :class:`Dataset` and for the on-disk :class:`jdl.data.npy_dir.StreamDataset`.

  ``float64_as_float32``: hash float64 arrays as their float32 cast: the fingerprint
  that runs recorded before npz and npy_dir sources kept float64 inputs (2026-11-30).
  """
  def sampled(a):
    n = len(a)
    rows = np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_ROWS)).astype(np.int64))
    if hasattr(a, "paths"):  # On disk: read only these rows.
      sample = a.take(rows)
    else:  # An array (numpy or jax: gather the rows before copying to the host).
      sample = np.asarray(a[rows]) if hasattr(a, "shape") else np.asarray(a)[rows]
    if float64_as_float32 and sample.dtype == np.float64:
      sample = sample.astype(np.float32)
    return sample

  return _hash_splits(dataset, sampled)


def checksum(dataset) -> str | None:
  """A hash of every byte of a dataset's arrays held in memory (with each one's shape
  and dtype); ``None`` when a split streams from disk (``npy_dir``, whose sampled
  :func:`fingerprint` stands alone: reading every file at each start would cost
  what an epoch does).

  Checkpoints record it beside the fingerprint, whose sampled rows miss an edit of
  any other row. Hashing runs at about 2 GB/s (MNIST's train split in ~0.1 s).
  """
  return _hash_splits(dataset, lambda a: None if hasattr(a, "paths") else np.asarray(a))


def _hash_splits(dataset, content) -> str | None:
  """The hash of each split's name, shape, and the dtype and bytes of ``content(a)``
  (the rows hashed); a split absent hashes as such; ``None`` if ``content`` is."""
  h = hashlib.sha256()
  for name in _SPLIT_ARRAYS:
    a = getattr(dataset, name, None)
    if a is None:
      h.update(f"{name}:none;".encode())
      continue
    hashed = content(a)
    if hashed is None:
      return None
    hashed = np.ascontiguousarray(hashed)
    h.update(f"{name}:{tuple(getattr(a, 'shape', np.shape(a)))}:{hashed.dtype.str};".encode())
    h.update(hashed.reshape(-1).view(np.uint8))
  return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class _Request:
  name: str
  data_dir: str
  test_split: float
  seed: int
  n_samples: int | None
  noise: float | None
  download: bool
  text: text_data.TextOptions = text_data.TextOptions()
  vocab: dict | None = None


def _inputs(x, keep_float64: bool) -> np.ndarray:
  """float32 inputs; with ``keep_float64`` (a user's file) float64 ones as they are,
  and integers of 32 bits or more as float64 (:func:`pipeline.needs_float64`:
  normalised in float64, as a streamed npy_dir file is, so that a feature with a
  large offset, a Unix time, keeps its precision)."""
  x = np.asarray(x)
  if keep_float64 and pipeline.needs_float64(x.dtype):
    return x.astype(np.float64, copy=False)
  return x.astype(np.float32, copy=False)


def _make(name, x_train, y_train, x_test, y_test, num_classes, *,
          keep_float64: bool = False) -> Dataset:
  task = "classification" if num_classes else "regression"
  y_dtype = np.int32 if num_classes else np.float32
  return Dataset(
      x_train=_inputs(x_train, keep_float64),
      y_train=np.asarray(y_train, y_dtype),
      x_test=_inputs(x_test, keep_float64),
      y_test=np.asarray(y_test, y_dtype),
      num_classes=int(num_classes),
      task=task,
      name=name,
      input_shape=tuple(int(d) for d in np.shape(x_train)[1:]),
  )


def _validated(dataset: Dataset, where: str) -> Dataset:
  """Runs :func:`validate_arrays` on every split, naming ``where`` in any error.

  Also checks that the test and validation examples have the train examples' shape
  (what a model built for ``input_shape`` can take), for every source.
  """
  check_example_shapes(dataset, where)
  for split in ("train", "test", "val"):
    if split == "val" and dataset.x_val is None:
      continue
    try:
      validate_arrays(getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}"),
                      num_classes=dataset.num_classes, task=dataset.task, split=split)
    except JdlError as e:
      raise JdlError(f"{where}: {e}") from None
  return dataset


def _seed(req: _Request, *, sklearn: bool = False) -> int:
  """``req.seed``, checked where a source uses it: numpy's generators take a
  non-negative integer, scikit-learn's ``random_state`` one below 2**32. (Checked
  here, not up front: a source that ignores the seed takes any integer.)"""
  if sklearn and not 0 <= req.seed <= 2**32 - 1:
    raise JdlError(f"seed must be an integer in [0, 2**32 - 1] for {req.name} (scikit-learn's "
                   f"random_state), got {req.seed}")
  if req.seed < 0:
    raise JdlError(f"seed must be a non-negative integer for {req.name}, got {req.seed}")
  return req.seed


def _split(req: _Request, x, y, num_classes: int, *, where: str = "",
           keep_float64: bool = False) -> Dataset:
  """Splits ``x, y`` into train and test with scikit-learn (stratified if classifying)."""
  if not 0.0 < req.test_split < 1.0:
    raise JdlError(
        f"test_split must be a fraction in (0, 1), got {req.test_split}; "
        f"{req.name} has no test set of its own"
    )
  _seed(req, sklearn=True)
  if num_classes:
    labels, counts = np.unique(np.asarray(y), return_counts=True)
    rare = labels[counts < 2]
    if rare.size:
      shown = ", ".join(str(v) for v in rare[:5].tolist()) + (", ..." if rare.size > 5 else "")
      raise JdlError(
          f"cannot split {req.name}{where} with test_split={req.test_split}: {rare.size} "
          f"label(s) ({shown}) occur only once, and a stratified split needs at least 2 "
          "examples of each class; fix the stray labels or provide a test split of your own"
      )
  try:
    x_train, x_test, y_train, y_test = _train_test_split(
        x, y, test_size=req.test_split, random_state=req.seed,
        stratify=y if num_classes else None)
  except ValueError as e:
    raise JdlError(
        f"cannot split {req.name}{where} with test_split={req.test_split}: {e}") from None
  return _make(req.name, x_train, y_train, x_test, y_test, num_classes,
               keep_float64=keep_float64)


# scikit-learn's embedded sets.


def _load_digits(req: _Request) -> Dataset:
  bunch = _sklearn_datasets().load_digits()
  return _split(req, bunch.images[..., None] / 16.0, bunch.target, 10)


def _tabular(loader: str, num_classes: int) -> Callable[[_Request], Dataset]:
  def load(req: _Request) -> Dataset:
    x, y = getattr(_sklearn_datasets(), loader)(return_X_y=True)
    return _split(req, x, y, num_classes)

  return load


# Synthetic generators.


def _load_moons(req: _Request) -> Dataset:
  seed = _seed(req, sklearn=True)
  x, y = _sklearn_datasets().make_moons(
      n_samples=req.n_samples or 1000,
      noise=0.1 if req.noise is None else req.noise,
      random_state=seed)
  return _split(req, x, y, 2)


def _load_circles(req: _Request) -> Dataset:
  seed = _seed(req, sklearn=True)
  x, y = _sklearn_datasets().make_circles(
      n_samples=req.n_samples or 1000,
      noise=0.1 if req.noise is None else req.noise,
      factor=0.5,
      random_state=seed)
  return _split(req, x, y, 2)


def _load_blobs(req: _Request) -> Dataset:
  # ``noise`` is the clusters' standard deviation here.
  seed = _seed(req, sklearn=True)
  x, y = _sklearn_datasets().make_blobs(
      n_samples=req.n_samples or 1000,
      centers=3,
      n_features=2,
      cluster_std=1.0 if req.noise is None else req.noise,
      random_state=seed)
  return _split(req, x, y, 3)


def _load_xor(req: _Request) -> Dataset:
  points = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
  labels = np.array([0, 1, 1, 0], np.int32)
  n = 4 if req.n_samples is None else req.n_samples
  if n < 4:
    raise JdlError(f"xor needs n_samples >= 4 (all four points), got {n}")
  x = np.resize(points, (n, 2))
  if req.noise:
    x = x + np.random.default_rng(_seed(req)).normal(0.0, req.noise, x.shape)
  # The test set is the four clean points: the function itself.
  return _make(req.name, x, np.resize(labels, n), points, labels, 2)


def _load_linear(req: _Request) -> Dataset:
  rng = np.random.default_rng(_seed(req, sklearn=True))  # _split's random_state too.
  n = req.n_samples or 200
  x = rng.normal(size=(n, len(_LINEAR_W)))
  noise = 0.1 if req.noise is None else req.noise
  y = x @ _LINEAR_W + _LINEAR_B + noise * rng.normal(size=n)
  return _split(req, x, y, 0)


# MNIST-family IDX files.


def _find_idx(directory: pathlib.Path, base: str) -> pathlib.Path | None:
  for candidate in (directory / f"{base}.gz", directory / base):
    if candidate.is_file():
      return candidate
  return None


def _idx_dir(req: _Request) -> pathlib.Path:
  """The directory to read: ``data_dir`` (or its ``<name>`` subfolder), else the default."""
  if not req.data_dir:
    return download_lib.default_data_dir(req.name)
  directory = pathlib.Path(req.data_dir).expanduser()
  if directory.exists() and not directory.is_dir():
    raise JdlError(
        f"{req.name} data_dir {directory} is a file, not a directory; set "
        "--config.data_dir to the directory holding the four IDX files (gzip or raw)"
    )
  nested = directory / req.name
  if nested.is_dir() and not any(_find_idx(directory, b) for b in IDX_FILES.values()):
    return nested
  return directory


def _load_idx_family(req: _Request) -> Dataset:
  directory = _idx_dir(req)
  paths = {key: _find_idx(directory, base) for key, base in IDX_FILES.items()}
  missing = [f"{IDX_FILES[k]}.gz" for k, p in paths.items() if p is None]
  if missing:
    if not req.download:
      raise JdlError(
          f"{req.name} file(s) {', '.join(missing)} not found in {directory} and download "
          f"is off; put the files (gzip or raw IDX) there, set --config.data_dir to a "
          "directory that holds them, or enable download"
      )
    download_lib.download_files(req.name, missing, directory)
    paths = {key: _find_idx(directory, base) for key, base in IDX_FILES.items()}
  arrays = {key: read_idx(path) for key, path in paths.items()}
  for split in ("train", "test"):
    images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
    images_path, labels_path = paths[f"x_{split}"], paths[f"y_{split}"]
    if images.ndim != 3 or labels.ndim != 1:
      raise JdlError(
          f"{images_path} must hold images [N, height, width] and {labels_path} labels "
          f"[N], got shapes {images.shape} and {labels.shape}"
      )
    if len(images) != len(labels):
      raise JdlError(
          f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
          "labels; one of the files is wrong or from another dataset"
      )
    # MNIST-family files hold bytes: pixels 0..255 (scaled by 1/255 below), labels 0..9.
    for path, a in ((images_path, images), (labels_path, labels)):
      if a.dtype != np.uint8:
        raise JdlError(f"{path} holds {a.dtype} values; MNIST-family IDX files hold unsigned "
                       "bytes (dtype code 0x08)")
  train_size, test_size = arrays["x_train"].shape[1:], arrays["x_test"].shape[1:]
  if test_size != train_size:
    raise JdlError(
        f"{paths['x_test']} has images of size {test_size[0]}x{test_size[1]} but "
        f"{paths['x_train']} has {train_size[0]}x{train_size[1]}; the test images must have "
        "the training images' size (one of the files is from another dataset)"
    )
  scale = lambda a: a[..., None].astype(np.float32) / 255.0
  dataset = _make(req.name, scale(arrays["x_train"]), arrays["y_train"],
                  scale(arrays["x_test"]), arrays["y_test"], 10)
  return _validated(dataset, f"{req.name} files in {directory}")


# npz files.


def _npz_path(req: _Request) -> pathlib.Path:
  if not req.data_dir:
    raise JdlError(
        "the npz dataset needs data_dir: the path of a .npz file with arrays x, y (and "
        "optionally x_test, y_test), or of a directory holding data.npz"
    )
  path = pathlib.Path(req.data_dir).expanduser()
  if path.is_dir():
    path = path / "data.npz"
  if not path.is_file():
    raise JdlError(f"npz file {path} does not exist; set --config.data_dir to a .npz file")
  return path


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Reads the known arrays of ``path`` without ever unpickling."""
  try:
    # Opened here, not by numpy, so that the file is closed even when the zip is corrupt.
    with open(path, "rb") as f:
      loaded = np.load(f, allow_pickle=False)
      if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise JdlError(f"{path} is a single .npy array, not an npz archive of x and y")
      with loaded as npz:
        keys = set(npz.files)
        arrays = {}
        for key in ("x", "y", "x_test", "y_test", "x_val", "y_val"):
          if key in keys:
            try:
              arrays[key] = npz[key]
            except ValueError as e:
              raise JdlError(
                  f"npz file {path}: array {key!r} cannot be loaded ({e}); jdl loads npz "
                  "files with allow_pickle=False, so save plain numeric arrays"
              ) from None
  except JdlError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    # numpy takes a file that is neither a zip nor a .npy for a pickle, and says to
    # unpickle it: no advice to give here (jdl loads no pickle).
    why = ("not a zip archive of .npy arrays" if "pickle" in str(e) else str(e))
    raise JdlError(f"cannot read npz file {path}: it is corrupt or not an npz file ({why})"
                   ) from None
  if ("x" not in arrays or "y" not in arrays or ("x_test" in arrays) != ("y_test" in arrays)
      or ("x_val" in arrays) != ("y_val" in arrays)):
    raise JdlError(
        f"npz file {path} has arrays {sorted(keys)}; it needs 'x' and 'y', and optionally "
        "both 'x_test' and 'y_test', and both 'x_val' and 'y_val'"
    )
  for key, a in arrays.items():
    if a.dtype.kind not in "biuf":
      raise JdlError(f"npz file {path}: array {key!r} has non-numeric dtype {a.dtype}")
    if a.ndim < (2 if key.startswith("x") else 1):
      raise JdlError(
          f"npz file {path}: array {key!r} has shape {a.shape}; x needs one row per "
          "example, [N, ...] (reshape 1-D inputs to [N, 1])"
      )
    if 0 in a.shape[1:]:
      raise JdlError(f"npz file {path}: array {key!r} has shape {a.shape}; each example of it "
                     "is empty (0 values)")
  if len(arrays["x"]) == 0 or len(arrays["y"]) == 0:
    raise JdlError(f"npz file {path}: the dataset is empty (x has {len(arrays['x'])} rows, "
                   f"y has {len(arrays['y'])})")
  for split, x_key, y_key in (("train", "x", "y"), ("test", "x_test", "y_test"),
                              ("validation", "x_val", "y_val")):
    if x_key not in arrays:
      continue
    n_x, n_y = len(arrays[x_key]), len(arrays[y_key])
    if split != "train" and (n_x == 0 or n_y == 0):
      raise JdlError(
          f"npz file {path}: the {split} split is empty ({x_key} has {n_x} rows, {y_key} "
          f"has {n_y}); leave both arrays out of the file"
          + (" to split x by test_split" if split == "test" else "") + ", or fill them"
      )
    if n_x != n_y:
      raise JdlError(
          f"npz file {path}: {x_key} has {n_x} examples but {y_key} has {n_y}; they must "
          "have one target per input"
      )
  for key in ("x_test", "x_val"):
    if key in arrays and arrays[key].shape[1:] != arrays["x"].shape[1:]:
      raise JdlError(
          f"npz file {path}: {key} has examples of shape {arrays[key].shape[1:]} but "
          f"x has {arrays['x'].shape[1:]}; they must match"
      )
  width = lambda y: int(np.prod(y.shape[1:], dtype=np.int64))  # noqa: E731
  for key in ("y_test", "y_val"):
    if key in arrays and width(arrays[key]) != width(arrays["y"]):
      raise JdlError(
          f"npz file {path}: {key} has targets of shape {arrays[key].shape[1:]} but y has "
          f"{arrays['y'].shape[1:]}; they must match"
      )
  return arrays


def _load_npz(req: _Request) -> Dataset:
  path = _npz_path(req)
  arrays = _read_npz(path)
  for key in ("y", "y_test", "y_val"):  # Named as in the file, before any split.
    if key in arrays and arrays[key].dtype.kind == "f":
      require_finite(arrays[key], f"npz file {path}: {key}")
  ys = [arrays[k] for k in ("y", "y_test", "y_val") if k in arrays]
  y_all = np.concatenate([y.reshape(len(y), -1) for y in ys])
  regression = y_all.dtype.kind == "f" and not (
      np.isfinite(y_all).all() and (y_all == np.round(y_all)).all())
  if regression:
    num_classes = 0
  else:
    low, top = float(y_all.min()), float(y_all.max())
    if low < 0 or not top < 2**31 - 1:
      keys = ", ".join(k for k in ("y", "y_test", "y_val") if k in arrays)
      raise JdlError(
          f"npz file {path}: labels must be in [0, 2**31 - 1), got values from {low:g} to "
          f"{top:g} in {keys}; remap them to 0..num_classes-1"
      )
    check_stray_label(np.unique(y_all)[-2:], f"npz file {path}")
    num_classes = int(y_all.max()) + 1 if y_all.size else 0
    num_classes = max(num_classes, 1)
  for key in ("x", "x_test", "x_val"):  # Named as in the file, before any split.
    if key in arrays:
      require_finite(arrays[key], f"npz file {path}: {key}")
  if "x_test" not in arrays:
    dataset = _split(req, arrays["x"], arrays["y"], num_classes, where=f" ({path})",
                     keep_float64=True)
  else:
    dataset = _make(req.name, arrays["x"], arrays["y"], arrays["x_test"],
                    arrays["y_test"], num_classes, keep_float64=True)
  if "x_val" in arrays:
    y_dtype = dataset.y_train.dtype
    dataset = dataclasses.replace(dataset, x_val=_inputs(arrays["x_val"], True),
                                  y_val=np.asarray(arrays["y_val"]).astype(y_dtype))
  return _validated(dataset, f"npz file {path}")


def _load_npy_dir(req: _Request):
  """Memory-mapped ``.npy`` files: a :class:`jdl.data.npy_dir.StreamDataset` (no test_split)."""
  from jdl.data import npy_dir
  return npy_dir.open_dir(req.data_dir)


# Sequence sources (jdl.data.text).


def _load_sst2(req: _Request) -> Dataset:
  vocab = (req.vocab or {}).get("text")
  x_tr, y_tr, x_te, y_te, vocab, rebuild = text_data.load_sst2(req.data_dir, req.text, vocab)
  dataset = Dataset(x_tr, y_tr, x_te, y_te, num_classes=2, task="classification",
                    name=req.name, input_shape=tuple(x_tr.shape[1:]), vocab={"text": vocab})

  def rebuild_vocab(rows):
    x_tr, x_te, vocab = rebuild(rows)
    return dataclasses.replace(dataset, x_train=x_tr, x_test=x_te, vocab={"text": vocab})

  return dataset if rebuild is None else dataclasses.replace(dataset,
                                                             rebuild_vocab=rebuild_vocab)


def _load_adding_problem(req: _Request) -> Dataset:
  n, t, seed = req.n_samples or 10000, int(req.text.seq_len), _seed(req)
  x_tr, y_tr = text_data.adding_problem(n, t, seed=seed)
  # The test set comes from its own stream: never a copy of a train sequence.
  x_te, y_te = text_data.adding_problem(max(1, n // 10), t, seed=seed + 1_000_003)
  return _make(req.name, x_tr, y_tr, x_te, y_te, 0)


def _load_dates(req: _Request) -> Dataset:
  *splits, rebuild = text_data.load_dates(req.n_samples or 20000, _seed(req), req.vocab)

  def dataset(x_tr, y_tr, x_te, y_te, vocab, rebuild_vocab=None):
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes=len(vocab["tgt"]), task="seq2seq",
                   name=req.name, input_shape=tuple(x_tr.shape[1:]), vocab=vocab,
                   rebuild_vocab=rebuild_vocab)

  return dataset(*splits, None if rebuild is None else lambda rows: dataset(*rebuild(rows)))


_LOADERS: dict[str, Callable[[_Request], Dataset]] = {
    "digits": _load_digits,
    "iris": _tabular("load_iris", 3),
    "wine": _tabular("load_wine", 3),
    "breast_cancer": _tabular("load_breast_cancer", 2),
    "diabetes": _tabular("load_diabetes", 0),
    "moons": _load_moons,
    "circles": _load_circles,
    "blobs": _load_blobs,
    "xor": _load_xor,
    "linear": _load_linear,
    "mnist": _load_idx_family,
    "fashion_mnist": _load_idx_family,
    "npz": _load_npz,
    "npy_dir": _load_npy_dir,
    "sst2": _load_sst2,
    "adding_problem": _load_adding_problem,
    "dates": _load_dates,
}

DATASETS: tuple[str, ...] = tuple(sorted(_LOADERS))

# The scale of the built-in image sources' float inputs, which predict's inputs must
# be on too (their messages say it).
INPUT_SCALES = {
    "digits": "scikit-learn's 8x8 images / 16, in [0, 1]",
    "mnist": "pixels / 255, in [0, 1]",
    "fashion_mnist": "pixels / 255, in [0, 1]",
}


def _is_number(value) -> bool:
  return is_integer(value) or isinstance(value, (float, np.floating))


def _check_types(**args) -> None:
  """Refuses an argument of :func:`load_dataset` of the wrong type with one JdlError
  (the CLI casts its config values; a Python caller's ``test_split='0.2'`` reached
  scikit-learn or numpy as a TypeError). Values are checked where they are used."""
  path = args["data_dir"]
  good = {
      "data_dir": isinstance(path, (str, os.PathLike))
                  and isinstance(os.fspath(path), str),
      "test_split": _is_number(args["test_split"]),
      "seed": is_integer(args["seed"]),
      "n_samples": args["n_samples"] is None or is_integer(args["n_samples"]),
      "noise": args["noise"] is None or _is_number(args["noise"]),
      "download": isinstance(args["download"], (bool, np.bool_)),
      "text": args["text"] is None or isinstance(args["text"], text_data.TextOptions),
      "vocab": args["vocab"] is None or isinstance(args["vocab"], Mapping),
  }
  wanted = {
      "data_dir": 'a path (a str or os.PathLike; "" for the default)',
      "test_split": "a fraction in (0, 1), a number",
      "seed": "an integer",
      "n_samples": "a positive integer, or None for the default",
      "noise": "a non-negative finite number, or None for the default",
      "download": "True or False",
      "text": "a jdl.data.text.TextOptions, or None for the default",
      "vocab": "a dict {name: Vocabulary} (a finished run's), or None",
  }
  for name, ok in good.items():
    if not ok:
      value = args[name]
      raise JdlError(f"{name} must be {wanted[name]}, got {value!r} "
                     f"({type(value).__name__})")


def _check_vocab(name: str, vocab: Mapping) -> None:
  """Raises ``JdlError`` unless ``vocab`` holds exactly the vocabularies ``name`` reads."""
  wanted = _VOCABS.get(name)
  if wanted is None:
    raise JdlError(f"vocab applies only to the text datasets ({', '.join(_VOCABS)}), not "
                   f"to {name!r}; leave it unset")
  if set(vocab) != set(wanted):
    other = " (another dataset's run?)" if set(vocab).isdisjoint(wanted) else ""
    raise JdlError(f"dataset {name!r} reads the vocabularies {list(wanted)}, but vocab holds "
                   f"{list(vocab)}{other}")
  for key in wanted:
    if not isinstance(vocab[key], text_lib.Vocabulary):
      raise JdlError(f"vocab[{key!r}] must be a jdl.sequence.text.Vocabulary, got "
                     f"{type(vocab[key]).__name__}")


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] = "",
    test_split: float = 0.2,
    seed: int = 0,
    n_samples: int | None = None,
    noise: float | None = None,
    download: bool = True,
    text: text_data.TextOptions | None = None,
    vocab: dict | None = None,
) -> Dataset:
  """Loads a dataset by name, with a train and a test split, and validates it.

  Args:
    name: one of :data:`DATASETS`.
    data_dir: npy_dir: the directory of ``.npy`` files (:mod:`jdl.data.npy_dir`). MNIST family: the directory holding the four IDX files (``.gz`` or raw),
      or a directory with a ``<name>`` subfolder holding them; default
      ``$JDL_DATA_DIR/<name>``, else ``~/.cache/jdl/<name>``. npz: the ``.npz`` file, or
      a directory holding ``data.npz``. Ignored by the other sources.
    test_split: the test fraction for sources without a test set of their own
      (scikit-learn sets, synthetic sets but ``xor``, npz without ``x_test``).
    seed: the seed of the split and of the synthetic generators: an integer, ``>= 0``
      where one is used, and below ``2**32`` where scikit-learn draws (the split, moons,
      circles, blobs, linear).
    n_samples: the number of generated examples (synthetic sets, ``adding_problem``
      and ``dates`` only); defaults: moons, circles, blobs 1000; xor 4; linear 200;
      adding_problem 10000; dates 20000.
    noise: the noise of a synthetic set: moons, circles: sklearn's ``noise`` (default
      0.1); blobs: the clusters' std (default 1.0); xor: the std of Gaussian noise on
      the training points (default none); linear: the std of the target noise (default
      0.1).
    text: sequence sources: padding, truncation, tokenizer and vocabulary options
      (``config.sequence``); the adding problem's ``seq_len``.
    vocab: a saved ``{name: Vocabulary}`` that text sources use instead of building
      one on the train split (evaluation and prediction of a finished run).
    download: fetch missing MNIST-family files from the mirrors in
      :mod:`jdl.data.download`.

  Returns:
    The :class:`Dataset` (for ``npy_dir``, a :class:`jdl.data.npy_dir.StreamDataset`
    whose arrays stay on disk; its test split is ``x_test.npy``, or none). Images are
    ``[N, height, width, channels]`` scaled to [0, 1]; npz inputs are unscaled: float64
    ones kept (normalised in float64), others cast to float32. An npz ``y`` of floats
    that are not all integers makes a regression set; otherwise ``num_classes =
    max(y) + 1``.

  Raises:
    JdlError: an unknown name, an argument of the wrong type (a bool is not a number;
      numpy integers and floats are), an option the source does not take, a seed
      that the source's generator refuses, a missing or corrupt file, a failed
      download, or arrays that fail :func:`validate_arrays`.
  """
  loader = lookup("dataset", name, _LOADERS)
  _check_types(data_dir=data_dir, test_split=test_split, seed=seed, n_samples=n_samples,
               noise=noise, download=download, text=text, vocab=vocab)
  if vocab:
    _check_vocab(name, vocab)
  if name not in _SYNTHETIC:
    for option, value in (("n_samples", None if name in _SIZED else n_samples),
                          ("noise", noise)):
      if value is not None:
        raise JdlError(
            f"{option}={value} applies only to the synthetic datasets "
            f"({', '.join(_SYNTHETIC)}), not to {name!r}; leave it unset"
        )
  if n_samples is not None and n_samples < 1:
    raise JdlError(f"n_samples must be positive, got {n_samples}")
  if noise is not None and not (np.isfinite(noise) and noise >= 0):
    raise JdlError(f"noise must be non-negative and finite, got {noise}")
  # Python numbers: scikit-learn refuses a numpy float32 test_size.
  req = _Request(name=name, data_dir=os.fspath(data_dir), test_split=float(test_split),
                 seed=int(seed), n_samples=None if n_samples is None else int(n_samples),
                 noise=None if noise is None else float(noise), download=bool(download),
                 text=text or text_data.TextOptions(), vocab=vocab)
  dataset = loader(req)
  if not isinstance(dataset, Dataset):  # npy_dir: validated by its own chunked pass.
    return dataset
  return _validated(dataset, f"dataset {name!r}")
