"""Tests for jdl.data: sources, the IDX reader, downloads and validation."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import importlib
import inspect
import pathlib
import socket
import struct
import threading

import numpy as np
import pytest
from sklearn import datasets as skdata
from sklearn import model_selection

import jdl.data
from jdl.data import download
from jdl.data import npy_dir
from jdl.data import sources
from jdl.data import load_dataset
from jdl.data import read_idx
from jdl.data import validate_arrays
from jdl.data.text import TextOptions
from jdl.errors import JdlError
from jdl.sequence.text import Vocabulary
from conftest import write_sst2

_IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
              np.float32: 0x0D, np.float64: 0x0E}
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(a: np.ndarray) -> bytes:
  """Reference IDX encoder, written from the format description (not jdl's reader)."""
  header = struct.pack(">BBBB", 0, 0, _IDX_CODES[a.dtype.type], a.ndim)
  header += struct.pack(f">{a.ndim}i", *a.shape)
  return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_file(path: pathlib.Path, data: bytes, gz: bool) -> pathlib.Path:
  path = path.with_name(path.name + ".gz") if gz else path
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(gzip.compress(data) if gz else data)
  return path


def write_mnist(directory: pathlib.Path, *, gz: bool = True, n_train: int = 12,
                n_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
  """Writes a tiny MNIST-like set (4x3 images, to catch row/column mix-ups)."""
  rng = np.random.default_rng(seed)
  arrays = {
      "x_train": rng.integers(0, 256, (n_train, 4, 3), dtype=np.uint8),
      "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
      "x_test": rng.integers(0, 256, (n_test, 4, 3), dtype=np.uint8),
      "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
  }
  for file, a in zip(_MNIST_FILES, arrays.values()):
    write_file(directory / file, idx_bytes(a), gz)
  return arrays


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
  """Keeps every default data directory inside tmp_path."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.setenv("JDL_DATA_DIR", str(tmp_path / "jdl_data"))


def test_public_names():
  # Each exported name is the function or class of that name in the submodule that
  # defines it (jdl.data re-exports; test_api checks that the names exist).
  classes = {"Dataset", "NpyRows", "StreamDataset"}
  for name in set(jdl.data.__all__) - {"DATASETS"}:
    obj = getattr(jdl.data, name)
    assert (inspect.isclass if name in classes else inspect.isfunction)(obj), name
    assert obj.__name__ == name and obj.__module__.startswith("jdl.data."), name
    assert getattr(importlib.import_module(obj.__module__), name) is obj
  assert dataclasses.is_dataclass(jdl.data.Dataset)
  # DATASETS is the names load_dataset takes: those its unknown-name error lists.
  assert jdl.data.DATASETS == tuple(sorted(jdl.data.DATASETS))
  with pytest.raises(JdlError) as e:
    load_dataset("imagenet")
  assert str(e.value).endswith("valid names: " + ", ".join(jdl.data.DATASETS))
  assert set(jdl.data.DATASETS) >= {"digits", "iris", "wine", "breast_cancer", "diabetes",
                                    "moons", "circles", "blobs", "xor", "linear", "mnist",
                                    "fashion_mnist", "npz"}


# IDX reader.


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
def test_read_idx_roundtrip(tmp_path, gz, dtype):
  a = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
  path = write_file(tmp_path / "a-idx3", idx_bytes(a), gz)
  got = read_idx(path)
  assert got.dtype == np.dtype(dtype) and got.dtype.isnative
  np.testing.assert_array_equal(got, a)


_GOOD = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize("data, gz, match", [
    (_GOOD[:-2], False, "truncated"),
    (_GOOD[:-2], True, "truncated"),
    (_GOOD + b"\x00", False, "longer than its header"),
    (b"\x01\x00" + _GOOD[2:], False, "bad magic"),
    (_GOOD[:2] + b"\x07" + _GOOD[3:], False, "bad magic"),
    (_GOOD[:10], False, "truncated: the header"),
    (b"\x00\x00", False, "too short"),
    (b"", False, "too short"),
    (gzip.compress(_GOOD)[:-12], False, "gzip"),
], ids=["payload", "payload-gz", "extra", "magic", "dtype", "header", "tiny", "empty",
        "cut-gzip"])
def test_read_idx_rejects_bad_files(tmp_path, data, gz, match):
  path = write_file(tmp_path / "bad-idx1-ubyte", data, gz)
  with pytest.raises(JdlError, match=match) as e:
    read_idx(path)
  assert str(path) in str(e.value)


def test_read_idx_missing_file(tmp_path):
  with pytest.raises(JdlError, match="cannot read IDX file .*nothing"):
    read_idx(tmp_path / "nothing")


# MNIST family from local files.


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_family_from_data_dir(tmp_path, name, gz):
  arrays = write_mnist(tmp_path / "files", gz=gz)
  ds = load_dataset(name, data_dir=tmp_path / "files", download=False)
  assert (ds.name, ds.task, ds.num_classes, ds.input_shape) == (
      name, "classification", 10, (4, 3, 1))
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  np.testing.assert_allclose(ds.x_train[..., 0], arrays["x_train"] / 255.0, rtol=1e-6)
  np.testing.assert_allclose(ds.x_test[..., 0], arrays["x_test"] / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(ds.y_train, arrays["y_train"])
  np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
  assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_idx_family_directory_lookup(tmp_path, monkeypatch):
  # data_dir may be the parent of a <name> folder.
  write_mnist(tmp_path / "root" / "mnist")
  assert len(load_dataset("mnist", data_dir=tmp_path / "root", download=False).x_test) == 5
  # Without data_dir: $JDL_DATA_DIR/<name>, else ~/.cache/jdl/<name>.
  write_mnist(tmp_path / "jdl_data" / "mnist", n_test=6)
  assert len(load_dataset("mnist", download=False).x_test) == 6
  monkeypatch.delenv("JDL_DATA_DIR")
  write_mnist(tmp_path / "home" / ".cache" / "jdl" / "mnist", n_test=7)
  assert len(load_dataset("mnist", download=False).x_test) == 7


def test_idx_family_missing_files_without_download(tmp_path):
  with pytest.raises(JdlError, match="not found in .*empty.*data_dir"):
    load_dataset("mnist", data_dir=tmp_path / "empty", download=False)


def test_idx_family_count_mismatch(tmp_path):
  write_mnist(tmp_path)
  write_file(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(4, np.uint8)), True)
  with pytest.raises(JdlError, match="5 images but .*t10k-labels-idx1-ubyte.gz has 4"):
    load_dataset("mnist", data_dir=tmp_path, download=False)


def test_idx_family_label_out_of_range(tmp_path):
  write_mnist(tmp_path)
  labels = np.array([0, 1, 12, 3, 4], np.uint8)
  write_file(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels), True)
  with pytest.raises(JdlError, match=r"mnist files in .*outside \[0, 10\).*12"):
    load_dataset("mnist", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("name,array", [
    ("train-images-idx3-ubyte", np.full((12, 4, 3), 1000, np.int16)),  # Scaled to 3.9.
    ("t10k-labels-idx1-ubyte", np.array([0, 1, 2.7, 1, 0], np.float32)),  # Cut to 2.
])
def test_idx_family_files_of_other_than_bytes(tmp_path, name, array):
  write_mnist(tmp_path)
  write_file(tmp_path / name, idx_bytes(array), True)
  with pytest.raises(JdlError, match=rf"{name}.gz holds {array.dtype} values; MNIST-family "
                     r"IDX files hold unsigned bytes \(dtype code 0x08\)"):
    load_dataset("mnist", data_dir=tmp_path, download=False)


def test_idx_family_test_images_of_another_size(tmp_path):
  write_mnist(tmp_path)
  write_file(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((5, 2, 2), np.uint8)),
             True)
  with pytest.raises(JdlError, match=r"t10k-images-idx3-ubyte.gz has images of size 2x2 but "
                     r".*train-images-idx3-ubyte.gz has 4x3"):
    load_dataset("mnist", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("split", ["test", "val"])
def test_validated_checks_every_split_has_the_train_input_shape(split):
  # The shared check that every source's Dataset goes through.
  ds = sources._make("custom", np.ones((4, 2)), np.arange(4) % 2, np.ones((2, 2)),
                     np.array([0, 1]), 2)
  bad = {f"x_{split}": np.ones((2, 3)), f"y_{split}": np.array([0, 1])}
  with pytest.raises(JdlError, match=rf"^somewhere: x_{split} has examples of shape \(3,\) "
                     r"but x_train has \(2,\); they must match$"):
    sources._validated(dataclasses.replace(ds, **bad), "somewhere")


@pytest.mark.parametrize("download_on", [False, True])
def test_idx_family_data_dir_is_a_file(tmp_path, download_on):
  write_mnist(tmp_path)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  with pytest.raises(JdlError, match=r"data_dir .*train-images-idx3-ubyte.gz is a file, not "
                     "a directory"):
    load_dataset("mnist", data_dir=path, download=download_on)


def test_idx_family_corrupt_file_is_named(tmp_path):
  write_mnist(tmp_path)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-30])
  with pytest.raises(JdlError, match="train-images-idx3-ubyte.gz"):
    load_dataset("mnist", data_dir=tmp_path, download=False)


# Downloads from a local HTTP server.


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args):
    del args  # Keep the test output clean.


@pytest.fixture
def mirror(tmp_path):
  """Serves tmp_path/mirror on 127.0.0.1; yields (root, base_url)."""
  root = tmp_path / "mirror"
  root.mkdir()
  handler = functools.partial(_QuietHandler, directory=str(root))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  yield root, f"http://127.0.0.1:{server.server_address[1]}/"
  server.shutdown()
  server.server_close()
  thread.join()


def dead_url() -> str:
  """A URL on a port nobody listens on: connections are refused at once."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/"


def serve_mnist(root: pathlib.Path, monkeypatch, *mirrors: str) -> dict[str, np.ndarray]:
  arrays = write_mnist(root, gz=True)
  sums = {f"{f}.gz": hashlib.sha256((root / f"{f}.gz").read_bytes()).hexdigest()
          for f in _MNIST_FILES}
  monkeypatch.setitem(download.MIRRORS, "mnist", mirrors)
  monkeypatch.setitem(download.SHA256, "mnist", sums)
  return arrays


@pytest.mark.parametrize("first", ["none", "dead", "404"])
def test_download_lands_verified_files(tmp_path, mirror, monkeypatch, first):
  root, url = mirror
  mirrors = {"none": (url,), "dead": (dead_url(), url), "404": (url + "nowhere/", url)}
  arrays = serve_mnist(root, monkeypatch, *mirrors[first])
  ds = load_dataset("mnist")
  target = tmp_path / "jdl_data" / "mnist"
  assert sorted(p.name for p in target.iterdir()) == sorted(f"{f}.gz" for f in _MNIST_FILES)
  np.testing.assert_array_equal(ds.y_train, arrays["y_train"])
  # A second load reads the cached files, even with every mirror gone.
  monkeypatch.setitem(download.MIRRORS, "mnist", (dead_url(),))
  np.testing.assert_array_equal(load_dataset("mnist").y_test, arrays["y_test"])


def test_download_checksum_mismatch_leaves_nothing(tmp_path, mirror, monkeypatch):
  root, url = mirror
  serve_mnist(root, monkeypatch, url)
  monkeypatch.setitem(download.SHA256["mnist"], "train-images-idx3-ubyte.gz", "0" * 64)
  with pytest.raises(JdlError, match="SHA-256 mismatch") as e:
    load_dataset("mnist")
  target = tmp_path / "jdl_data" / "mnist"
  assert str(target) in str(e.value)
  # Neither the bad file nor a partial download, nor the folder made for them.
  assert not target.exists()


def test_download_all_mirrors_dead(tmp_path, monkeypatch):
  monkeypatch.setitem(download.MIRRORS, "mnist", (dead_url(), dead_url()))
  target = tmp_path / "jdl_data" / "mnist"
  with pytest.raises(JdlError) as e:
    load_dataset("mnist")
  message = str(e.value)
  assert f"in {target}" in message and "--config.data_dir" in message
  assert all(f"{f}.gz" in message for f in _MNIST_FILES)
  # The folders made for the download went again: an empty data folder was left
  # behind (outside the workdir: ../shared/data/mnist, ~/.cache/jdl/mnist).
  assert not target.exists() and not (tmp_path / "jdl_data").exists()
  (tmp_path / "mine").mkdir()  # A folder that was there stays.
  with pytest.raises(JdlError):
    load_dataset("mnist", data_dir=tmp_path / "mine")
  assert (tmp_path / "mine").is_dir()


def test_download_only_missing_files_into_data_dir(tmp_path, mirror, monkeypatch):
  root, url = mirror
  arrays = serve_mnist(root, monkeypatch, url)
  local = tmp_path / "local"
  local.mkdir()
  for f in _MNIST_FILES[1:]:
    (local / f"{f}.gz").write_bytes((root / f"{f}.gz").read_bytes())
  (root / "t10k-labels-idx1-ubyte.gz").unlink()  # Fetching it again would fail.
  ds = load_dataset("mnist", data_dir=local)
  np.testing.assert_allclose(ds.x_train[..., 0], arrays["x_train"] / 255.0, rtol=1e-6)
  assert not (tmp_path / "jdl_data").exists()


def test_download_files_arguments_and_progress(tmp_path, mirror, capsys):
  root, url = mirror
  (root / "f.gz").write_bytes(b"payload")
  paths = download.download_files(
      "custom", ["f.gz"], tmp_path / "out", mirrors=[url],
      sha256={"f.gz": hashlib.sha256(b"payload").hexdigest()}, progress=True)
  assert paths == [tmp_path / "out" / "f.gz"] and paths[0].read_bytes() == b"payload"
  assert "f.gz" in capsys.readouterr().err  # The tqdm bar.
  with pytest.raises(JdlError, match="no known SHA-256"):
    download.download_files("custom", ["g.gz"], tmp_path / "out", mirrors=[url], sha256={})


def test_mnist_sums_match_shared_sha256sums():
  sums_file = _shared_data_dir() / "SHA256SUMS" if _shared_data_dir() else None
  if sums_file is None or not sums_file.is_file():
    pytest.skip("shared/data/SHA256SUMS not available")
  listed = {}
  for line in sums_file.read_text().splitlines():
    digest, _, path = line.partition("  ")
    if path.startswith("mnist/"):
      listed[path.removeprefix("mnist/")] = digest
  assert listed == download.SHA256["mnist"]


# npz files.


def write_npz(path: pathlib.Path, **arrays) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **arrays)
  return path


def test_npz_split_by_test_split(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 3, 2)).astype(np.float64)
  y = np.repeat(np.arange(5), 10)
  ds = load_dataset("npz", data_dir=write_npz(tmp_path / "d.npz", x=x, y=y), test_split=0.2)
  assert (ds.task, ds.num_classes, ds.input_shape) == ("classification", 5, (3, 2))
  assert (len(ds.x_train), len(ds.x_test)) == (40, 10)
  # float64 inputs are kept, to be normalised in float64 (test_stream.py).
  assert ds.x_train.dtype == np.float64 and ds.y_train.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(ds.y_test), [2] * 5)  # Stratified.


@pytest.mark.parametrize("labels, stray", [([0, 1, 65535], True), ([0, 1, 2**31 - 2], True),
                                           ([0, 500, 1500], False), ([0, 1, 999], False)])
def test_npz_refuses_a_stray_label_far_above_the_others(tmp_path, labels, stray):
  # max(y) + 1 classes: one stray 65535 (a "missing" code) gave a 65,536-way model.
  y = np.array(labels * 4)
  path = write_npz(tmp_path / "data.npz", x=np.ones((12, 2)), y=y, x_test=np.ones((3, 2)),
                   y_test=np.array(labels))
  if stray:
    with pytest.raises(JdlError, match=f"run to 1 and then jump to {labels[-1]}"):
      load_dataset("npz", data_dir=path)
  else:
    assert load_dataset("npz", data_dir=path).num_classes == labels[-1] + 1


def test_npz_with_test_arrays_in_directory(tmp_path):
  write_npz(tmp_path / "data.npz", x=np.ones((6, 2)), y=np.array([0, 1, 2, 0, 1, 2]),
            x_test=np.zeros((2, 2)), y_test=np.array([3, 0]))
  ds = load_dataset("npz", data_dir=tmp_path)
  assert ds.num_classes == 4  # max over both splits + 1.
  np.testing.assert_array_equal(ds.x_test, np.zeros((2, 2), np.float32))
  np.testing.assert_array_equal(ds.y_test, [3, 0])


@pytest.mark.parametrize("y, task", [
    (np.array([0.5, 1.25, 2.0, 3.0] * 5), "regression"),
    (np.array([0.0, 1.0] * 10), "classification"),
    (np.array([True, False] * 10), "classification"),
])
def test_npz_task_inference(tmp_path, y, task):
  x = np.arange(2 * len(y), dtype=np.float32).reshape(len(y), 2)
  ds = load_dataset("npz", data_dir=write_npz(tmp_path / "d.npz", x=x, y=y))
  assert ds.task == task
  assert ds.num_classes == (2 if task == "classification" else 0)
  assert ds.y_train.dtype == (np.int32 if task == "classification" else np.float32)


def _truncated_npz(path):
  write_npz(path, x=np.ones((4, 2)), y=np.arange(4))
  path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("make, match", [
    (lambda p: write_npz(p, x=np.ones((4, 2))), "needs 'x' and 'y'"),
    (lambda p: write_npz(p, x=np.ones((4, 2)), y=np.arange(4), x_test=np.ones((2, 2))),
     "both 'x_test' and 'y_test'"),
    # numpy's own text said to unpickle it ("load it unsafely using allow_pickle=").
    (lambda p: p.write_bytes(b"this is not a zip archive" * 10),
     r"corrupt or not an npz file \(not a zip archive of \.npy arrays\)$"),
    (_truncated_npz, "corrupt or not an npz"),
    (lambda p: write_npz(p, x=np.ones((4, 2)), y=np.array([{}, 1, 2, 3], dtype=object)),
     "allow_pickle=False"),
    (lambda p: write_npz(p, x=np.ones((4, 2)), y=np.array(["a", "b", "a", "b"])),
     "non-numeric"),
    (lambda p: write_npz(p, x=np.ones(4), y=np.arange(4)), r"reshape 1-D inputs"),
    (lambda p: write_npz(p, x=np.array([[np.nan], [1.0], [np.inf], [2.0]]),
                         y=np.array([0, 1, 0, 1]), x_test=np.ones((2, 1)),
                         y_test=np.array([0, 1])),
     r": x contains 1 NaN and 1 Inf"),
    (lambda p: write_npz(p, x=np.ones((4, 2)), y=np.arange(4), x_test=np.ones((2, 3)),
                         y_test=np.arange(2)), "must match"),
    (lambda p: write_npz(p, x=np.ones((4, 2)), y=np.array([0, 0, 0, 1])), "cannot split"),
    (lambda p: write_npz(p, x=np.ones((4, 2)), y=np.full((4, 2), 0.5), x_test=np.ones((2, 2)),
                         y_test=np.full((2, 3), 0.5)),
     r"y_test has targets of shape \(3,\) but y has \(2,\); they must match"),
    (lambda p: np.save(p.with_suffix(".npy"), np.ones(3)) or
     p.with_suffix(".npy").rename(p), "single .npy array"),
    (lambda p: write_npz(p, x=np.where(np.arange(8)[:, None] == 7, np.nan, np.ones((8, 1))),
                         y=np.arange(8) % 2),  # No x_test: the file's key, not a split's.
     r": x contains 1 NaN and 0 Inf values \(in 1 of 8 examples\)"),
    (lambda p: write_npz(p, x=np.ones((6, 1)), y=np.array([0, 1, 0, 1, 0, np.nan])),
     r"bad.npz: y contains 1 NaN and 0 Inf"),  # Was named y_test, a split of the file's y.
], ids=["no-y", "half-test", "garbage", "truncated", "object", "strings", "1d-x", "nan",
        "test-shape", "unsplittable", "target-width"] + ["npy", "nan-no-test", "nan-y"])
def test_npz_rejects_bad_files(tmp_path, make, match):
  path = tmp_path / "bad.npz"
  make(path)
  with pytest.raises(JdlError, match=match) as e:
    load_dataset("npz", data_dir=path, test_split=0.5)
  assert str(path) in str(e.value)


@pytest.mark.parametrize("extra, match", [
    (dict(x_test=np.zeros((0, 2)), y_test=np.zeros(0, np.int64)),
     r"the test split is empty \(x_test has 0 rows, y_test has 0\); leave both arrays out "
     "of the file to split x by test_split"),
    (dict(x_test=np.zeros((0, 2)), y_test=np.array([0, 1])),
     r"the test split is empty \(x_test has 0 rows, y_test has 2\)"),
    (dict(x_val=np.zeros((0, 2)), y_val=np.zeros(0)),
     r"the validation split is empty \(x_val has 0 rows, y_val has 0\)"),
], ids=["test", "test-x-only", "val"])
def test_npz_empty_test_or_val_split_is_refused(tmp_path, extra, match):
  path = write_npz(tmp_path / "d.npz", x=np.ones((6, 2)), y=np.array([0, 1] * 3), **extra)
  with pytest.raises(JdlError, match=match) as e:
    load_dataset("npz", data_dir=path)
  assert str(path) in str(e.value)


@pytest.mark.parametrize("key", ["x", "y"])
def test_npz_examples_with_no_values(tmp_path, key):
  arrays = dict(x=np.ones((6, 2)), y=np.array([0, 1] * 3))
  arrays[key] = np.ones((6, 0))
  path = write_npz(tmp_path / "d.npz", **arrays)
  with pytest.raises(JdlError, match=rf"array '{key}' has shape \(6, 0\); each example"):
    load_dataset("npz", data_dir=path)


def test_npz_unequal_lengths_named(tmp_path):
  path = write_npz(tmp_path / "d.npz", x=np.ones((6, 2)), y=np.array([0, 1] * 2))
  with pytest.raises(JdlError, match="x has 6 examples but y has 4"):
    load_dataset("npz", data_dir=path)


@pytest.mark.parametrize("arrays, match", [
    (dict(y=np.array([0, 1, 2, -1] * 5)),
     r"labels must be in \[0, 2\*\*31 - 1\), got values from -1 to 2 in y; remap them"),
    (dict(y=np.array([0, 1] * 10), x_test=np.ones((2, 2)), y_test=np.array([-3, 1])),
     r"got values from -3 to 1 in y, y_test; remap"),
    (dict(y=np.array([0, 1] * 9 + [2**31, 0])),
     r"got values from 0 to 2\.14748e\+09 in y; remap"),
    (dict(y=np.array([0, 1] * 9 + [100_000, 0])),
     r"the labels run to 1 and then jump to 100000.*drop the examples labelled 100000"),
    (dict(y=np.array([0, 1] * 9 + [2, 0])),
     r"1 label\(s\) \(2\) occur only once.*stray labels"),
], ids=["negative", "negative-test", "huge", "stray", "single"])
def test_npz_bad_labels_before_splitting(tmp_path, arrays, match):
  x = np.arange(40, dtype=np.float32).reshape(20, 2)
  path = write_npz(tmp_path / "d.npz", x=x, **arrays)
  with pytest.raises(JdlError, match=match) as e:
    load_dataset("npz", data_dir=path)
  assert str(path) in str(e.value)


def test_npz_needs_an_existing_file(tmp_path):
  with pytest.raises(JdlError, match="needs data_dir"):
    load_dataset("npz")
  with pytest.raises(JdlError, match="data.npz does not exist"):
    load_dataset("npz", data_dir=tmp_path)


# scikit-learn and synthetic sets.


@pytest.mark.parametrize("name, total, shape, num_classes", [
    ("digits", 1797, (8, 8, 1), 10),
    ("iris", 150, (4,), 3),
    ("wine", 178, (13,), 3),
    ("breast_cancer", 569, (30,), 2),
    ("diabetes", 442, (10,), 0),
])
def test_sklearn_sets(name, total, shape, num_classes):
  ds = load_dataset(name, test_split=0.25, seed=1)
  assert len(ds.x_train) + len(ds.x_test) == total
  assert len(ds.x_test) == int(np.ceil(0.25 * total))
  assert (ds.input_shape, ds.num_classes) == (shape, num_classes)
  assert ds.x_train.shape[1:] == shape and ds.x_train.dtype == np.float32
  task = "classification" if num_classes else "regression"
  assert ds.task == task
  assert ds.y_train.dtype == (np.int32 if num_classes else np.float32)


def test_iris_split_matches_sklearn():
  x, y = skdata.load_iris(return_X_y=True)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      x, y, test_size=0.4, random_state=0, stratify=y)
  ds = load_dataset("iris", test_split=0.4, seed=0)
  np.testing.assert_array_equal(ds.x_train, x_train.astype(np.float32))
  np.testing.assert_array_equal(ds.x_test, x_test.astype(np.float32))
  np.testing.assert_array_equal(ds.y_train, y_train)
  np.testing.assert_array_equal(ds.y_test, y_test)
  assert (len(ds.y_train), len(ds.y_test)) == (90, 60)


def test_digits_are_images_in_unit_range():
  ds = load_dataset("digits")
  assert ds.x_train.shape[1:] == (8, 8, 1)
  assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
  images = skdata.load_digits().images
  assert np.isin(ds.x_test * 16, np.unique(images)).all()  # Scaled by exactly 1/16.


def test_xor():
  points = [[0, 0], [0, 1], [1, 0], [1, 1]]
  ds = load_dataset("xor")
  np.testing.assert_array_equal(ds.x_train, points)
  np.testing.assert_array_equal(ds.y_train, [0, 1, 1, 0])
  noisy = load_dataset("xor", n_samples=10, noise=0.05, seed=3)
  assert noisy.x_train.shape == (10, 2)
  np.testing.assert_array_equal(noisy.y_train, [0, 1, 1, 0] * 2 + [0, 1])
  np.testing.assert_allclose(noisy.x_train, np.resize(points, (10, 2)), atol=0.3)
  assert not np.array_equal(noisy.x_train, np.resize(points, (10, 2)))
  np.testing.assert_array_equal(noisy.x_test, points)  # Always the clean points.
  np.testing.assert_array_equal(noisy.y_test, [0, 1, 1, 0])
  with pytest.raises(JdlError, match="n_samples >= 4"):
    load_dataset("xor", n_samples=3)


@pytest.mark.parametrize("name, num_classes", [("moons", 2), ("circles", 2), ("blobs", 3),
                                               ("linear", 0)])
def test_synthetic_sets(name, num_classes):
  ds = load_dataset(name, n_samples=100, test_split=0.3, seed=5)
  assert (len(ds.x_train), len(ds.x_test), ds.num_classes) == (70, 30, num_classes)
  again = load_dataset(name, n_samples=100, test_split=0.3, seed=5)
  np.testing.assert_array_equal(ds.x_train, again.x_train)
  other = load_dataset(name, n_samples=100, test_split=0.3, seed=6)
  assert not np.array_equal(ds.x_train, other.x_train)


def _sorted_rows(x, y):
  """The examples of a split or set as rows ``[x..., y]``, in lexicographic order."""
  rows = np.c_[np.asarray(x, np.float64), np.asarray(y, np.float64)]
  return rows[np.lexsort(rows.T[::-1])]


_SKLEARN_SYNTHETIC = {
    # name: (scikit-learn's generator of the same set, the default noise)
    "moons": (lambda n, noise, seed: skdata.make_moons(n, noise=noise, random_state=seed), 0.1),
    "circles": (lambda n, noise, seed: skdata.make_circles(n, noise=noise, factor=0.5,
                                                           random_state=seed), 0.1),
    "blobs": (lambda n, noise, seed: skdata.make_blobs(n, centers=3, n_features=2,
                                                       cluster_std=noise, random_state=seed),
              1.0),
}


@pytest.mark.parametrize("noise", [None, 0.0, 0.3])
@pytest.mark.parametrize("name", sorted(_SKLEARN_SYNTHETIC))
def test_synthetic_sets_are_sklearns_with_the_same_noise_and_seed(name, noise):
  make, default = _SKLEARN_SYNTHETIC[name]
  ds = load_dataset(name, n_samples=120, test_split=0.25, seed=3, noise=noise)
  x, y = make(120, default if noise is None else noise, 3)
  assert (len(ds.x_train), len(ds.x_test)) == (90, 30)
  # Train and test together are scikit-learn's examples, each exactly once (the
  # split itself is checked against train_test_split for iris).
  got = _sorted_rows(np.r_[ds.x_train, ds.x_test], np.r_[ds.y_train, ds.y_test])
  np.testing.assert_array_equal(got, _sorted_rows(x.astype(np.float32), y))
  # Stratified: each class's share of the test split is its share of the set.
  np.testing.assert_array_equal(np.bincount(ds.y_test) * 4, np.bincount(y))


def test_synthetic_defaults():
  assert len(load_dataset("moons").x_train) + len(load_dataset("moons").x_test) == 1000
  ds = load_dataset("linear")
  assert len(ds.x_train) + len(ds.x_test) == 200 and ds.input_shape == (3,)
  # Least squares on the training split recovers the fixed true coefficients.
  design = np.c_[ds.x_train, np.ones(len(ds.x_train))]
  coef, *_ = np.linalg.lstsq(design, ds.y_train, rcond=None)
  np.testing.assert_allclose(coef, [1.5, -2.0, 0.5, 0.3], atol=0.05)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="imagenet"), "unknown dataset 'imagenet'; valid names: .*mnist"),
    (dict(name="iris", n_samples=10), "n_samples=10 applies only to the synthetic"),
    (dict(name="mnist", noise=0.1), "noise=0.1 applies only"),
    (dict(name="iris", test_split=1.5), r"test_split must be a fraction in \(0, 1\)"),
    (dict(name="moons", n_samples=0), "n_samples must be positive"),
    (dict(name="moons", noise=-1.0), "noise must be non-negative"),
])
def test_bad_options(kwargs, match):
  with pytest.raises(JdlError, match=match):
    load_dataset(**kwargs)


@pytest.mark.parametrize("name", ["xor", "moons", "blobs", "linear"])
@pytest.mark.parametrize("noise", [float("nan"), float("inf")])
def test_noise_must_be_finite(name, noise):
  with pytest.raises(JdlError, match=f"noise must be non-negative and finite, got {noise}"):
    load_dataset(name, noise=noise)


@pytest.mark.parametrize("kwargs, match", [
    # The review's cases: raw TypeErrors or scikit-learn errors before.
    (dict(name="iris", test_split="0.2"),
     r"test_split must be a fraction in \(0, 1\), a number, got '0.2' \(str\)"),
    (dict(name="moons", noise="a"),
     r"noise must be a non-negative finite number, or None .*, got 'a' \(str\)"),
    (dict(name="moons", n_samples=10.5),
     r"n_samples must be a positive integer, or None .*, got 10.5 \(float\)"),
    (dict(name="moons", seed=1.5), r"seed must be an integer, got 1.5 \(float\)"),
    (dict(name="npz", data_dir=3),
     r"data_dir must be a path \(a str or os.PathLike.*got 3 \(int\)"),
    # A bool is not a number; the other arguments the same way.
    (dict(name="moons", n_samples=True),
     r"n_samples must be a positive integer.*got True \(bool\)"),
    (dict(name="moons", noise=True), r"noise must be a non-negative finite number.*got True"),
    (dict(name="iris", test_split=True), r"test_split must be a fraction.*got True \(bool\)"),
    (dict(name="iris", seed=np.bool_(True)), r"seed must be an integer, got"),
    (dict(name="iris", seed="0"), r"seed must be an integer, got '0' \(str\)"),
    (dict(name="npz", data_dir=None), r"data_dir must be a path.*got None \(NoneType\)"),
    (dict(name="npz", data_dir=b"x.npz"), r"data_dir must be a path.*got b'x.npz' \(bytes\)"),
    (dict(name="mnist", download="no"), r"download must be True or False, got 'no' \(str\)"),
    (dict(name="adding_problem", text="x"), r"text must be a jdl.data.text.TextOptions.*got 'x'"),
    (dict(name="dates", vocab="x"), r"vocab must be a dict \{name: Vocabulary\}.*got 'x' \(str\)"),
    # A seed the source's generator refuses (raw numpy / scikit-learn errors before).
    (dict(name="moons", seed=-1), r"seed must be an integer in \[0, 2\*\*32 - 1\] for moons"),
    (dict(name="iris", seed=2**32), r"seed must be an integer in \[0, 2\*\*32 - 1\] for iris"),
    (dict(name="linear", seed=-1), r"seed must be an integer in \[0, 2\*\*32 - 1\] for linear"),
    (dict(name="xor", noise=0.1, seed=-1), r"seed must be a non-negative integer for xor, got -1"),
    (dict(name="adding_problem", n_samples=5, seed=-1), r"non-negative integer for adding_problem"),
    (dict(name="dates", n_samples=5, seed=-1), r"seed must be a non-negative integer for dates"),
])
def test_arguments_of_the_wrong_type_are_one_jdl_error(kwargs, match):
  with pytest.raises(JdlError, match=match):
    load_dataset(**kwargs)


def test_numpy_numbers_and_paths_are_accepted_as_arguments(tmp_path):
  base = load_dataset("moons", n_samples=40, noise=0.2, seed=3, test_split=0.25)
  # scikit-learn refuses a numpy float32 test_size: load_dataset passes Python numbers.
  ds = load_dataset("moons", n_samples=np.int64(40), noise=np.float64(0.2), seed=np.uint8(3),
                    test_split=np.float32(0.25), download=np.bool_(False))
  np.testing.assert_array_equal(ds.x_train, base.x_train)
  np.testing.assert_array_equal(ds.y_test, base.y_test)
  np.savez(tmp_path / "data.npz", x=np.random.rand(20, 2), y=np.arange(20) % 2)
  assert load_dataset("npz", data_dir=tmp_path, test_split=1 / 4).y_test.shape == (5,)
  assert load_dataset("npz", data_dir=str(tmp_path)).name == "npz"
  # A seed a source does not use is not checked (xor without noise draws nothing).
  assert load_dataset("xor", seed=-1).x_train.shape == (4, 2)
  assert load_dataset("blobs", n_samples=30, noise=np.float32(0.5)).num_classes == 3


# SST-2 TSV files.


def test_sst2_byte_order_mark_and_blank_lines(tmp_path):
  train = "sentence\tlabel\r\ngood film\t1\r\n\r\nbad film\t0\r\n  \ngood\t1\r\n\r\n\n"
  folder = write_sst2(tmp_path, train, "sentence\tlabel\ngood\t1\n\n", encoding="utf-8-sig")
  ds = load_dataset("sst2", data_dir=folder, text=TextOptions(maxlen=3))
  assert ds.y_train.tolist() == [1, 0, 1] and ds.y_test.tolist() == [1]
  vocab = ds.vocab["text"]
  assert "\ufeffsentence" not in vocab.tokens
  assert ds.x_train[1].tolist() == vocab.encode(["bad", "film"]) + [0]


def test_sst2_a_lone_carriage_return_is_whitespace_and_cr_line_ends_are_refused(tmp_path):
  # Read with universal newlines, a CR inside a sentence split its line in two: "line
  # 2: 1 tab-separated fields" for a line that has two.
  folder = write_sst2(tmp_path, "sentence\tlabel\ngood\rfilm \t1\nbad \t0\n")
  ds = load_dataset("sst2", data_dir=folder)
  assert ds.y_train.tolist() == [1, 0]
  assert ds.x_train[0].tolist() == ds.vocab["text"].encode(["good", "film"])
  # A file of CR line ends (classic Mac OS) was read as LF; now one clear error.
  write_sst2(tmp_path, "sentence\tlabel\rgood film \t1\rbad \t0\r")
  with pytest.raises(JdlError, match=r"train\.tsv ends its lines with CR alone \(classic Mac "
                                     r"OS\); convert it to LF or CRLF line ends$"):
    load_dataset("sst2", data_dir=tmp_path)


@pytest.mark.parametrize("label", ["\u00b2", "1.0", "99999999999999999999"])
def test_sst2_a_label_int_cannot_read_or_no_class_is_one_error(tmp_path, label):
  # '\u00b2' (superscript two) passes str.isdigit() but not int(): it escaped as StopIteration.
  write_sst2(tmp_path, f"sentence\tlabel\na\t1\nb\t{label}\n")
  with pytest.raises(JdlError, match=f"train.tsv, line 3: label '{label}' is not a"):
    load_dataset("sst2", data_dir=tmp_path)


def test_sst2_line_numbers_count_skipped_blank_lines(tmp_path):
  write_sst2(tmp_path, "sentence\tlabel\na\t1\n\n\nb\tpositive\n")
  with pytest.raises(JdlError, match="train.tsv, line 5: label 'positive' is not an integer"):
    load_dataset("sst2", data_dir=tmp_path)


def test_sst2_min_freq_that_keeps_no_token_is_refused(tmp_path):
  write_sst2(tmp_path, "sentence\tlabel\ngood film\t1\nbad film\t0\n")
  with pytest.raises(JdlError, match=r"sequence.min_freq=100000 keeps no token of the train "
                     r"texts \(the most frequent of their 3 distinct tokens occurs 2 times\)"):
    load_dataset("sst2", data_dir=tmp_path, text=TextOptions(min_freq=100_000))
  assert len(load_dataset("sst2", data_dir=tmp_path, text=TextOptions(min_freq=2))
             .vocab["text"]) == 5  # <pad> <unk> <bos> <eos> film.
  with pytest.raises(JdlError, match="hold no tokens besides the specials"):
    Vocabulary.build([[], ["<unk>"]])


# validate_arrays.


@pytest.mark.parametrize("x, y, kwargs, match", [
    (np.zeros((0, 2)), np.zeros(0), {}, "train split is empty"),
    (np.zeros((3, 2)), np.zeros(2), {}, "x has 3 examples but y has 2"),
    (np.array([["a"], ["b"]]), np.zeros(2), {}, "x_train has non-numeric dtype"),
    (np.ones((2, 1)), np.array(["a", "b"]), {}, "y_train has non-numeric dtype"),
    (np.array([[np.nan, 1.0], [np.inf, np.nan], [0.0, 0.0]]), np.zeros(3),
     dict(split="test"), r"x_test contains 2 NaN and 1 Inf values \(in 2 of 3 examples\)"),
    (np.ones((3, 1)), np.array([0, 1, 5]), {}, r"1 labels outside \[0, 3\) \(e.g. 5\)"),
    (np.ones((3, 1)), np.array([0, -1, 1]), {}, r"outside \[0, 3\) \(e.g. -1\)"),
    (np.ones((3, 1)), np.array([0.0, 0.5, 1.0]), {}, "1 non-integer labels"),
    (np.ones((3, 1)), np.eye(3), {}, "not one-hot"),
    (np.ones((2, 1)), np.array([0.0, np.nan]), dict(task="regression", num_classes=0),
     "y_train contains 1 NaN"),
    (np.ones((2, 1)), np.zeros(2), dict(task="ranking"), "unknown task 'ranking'"),
    # float64 values that float32, which jdl trains in, reads as Inf.
    (np.array([[1e39, 1.0], [np.inf, -4e38]]), np.zeros(2), {},
     r"x_train contains 0 NaN and 1 Inf values and 2 beyond float32's range .* \(in 2 of 2 "
     r"examples\)"),
    (np.ones((2, 1)), np.array([1e300, 0.0]), dict(task="regression", num_classes=0),
     "y_train contains 0 NaN and 0 Inf values and 1 beyond float32's range"),
])
def test_validate_arrays_errors(x, y, kwargs, match):
  kwargs = dict(dict(num_classes=3, task="classification", split="train"), **kwargs)
  with pytest.raises(JdlError, match=match):
    validate_arrays(x, y, **kwargs)


def test_validate_arrays_accepts_good_data():
  validate_arrays(np.ones((3, 2), np.float32), np.array([0, 2, 1]), num_classes=3,
                  task="classification", split="train")
  validate_arrays(np.ones((3, 2)), np.array([0.5, 2.0, -1.0]), num_classes=0,
                  task="regression", split="test")


# The real MNIST, when shared/data is present.


def _shared_data_dir() -> pathlib.Path | None:
  repo = pathlib.Path(__file__).resolve().parents[1]
  for candidate in (pathlib.Path("/work/shared/data"), repo.parent / "shared" / "data"):
    if candidate.is_dir():
      return candidate
  return None


def test_real_mnist():
  shared = _shared_data_dir()
  if shared is None or not all((shared / "mnist" / f"{f}.gz").is_file()
                               for f in _MNIST_FILES):
    pytest.skip("real MNIST files not available")
  ds = load_dataset("mnist", data_dir=shared / "mnist", download=False)
  assert (len(ds.x_train), len(ds.x_test)) == (60_000, 10_000)
  assert ds.input_shape == (28, 28, 1)
  assert abs(float(ds.x_train.mean()) - 0.1307) < 1e-4
  np.testing.assert_array_equal(np.bincount(ds.y_test), [980, 1135, 1032, 1010, 982, 892,
                                                         958, 1028, 974, 1009])


def test_a_datasets_repr_gives_shapes_not_values(tmp_path):
  # A notebook cell ending in a dataset printed every array (11,000 characters for the
  # digits); in memory and on disk alike, the repr names each split's dtype and shape.
  digits = load_dataset("digits")
  assert repr(digits) == (
      "Dataset(name='digits', task='classification', num_classes=10, input_shape=(8, 8, 1), "
      f"x_train=float32[{len(digits.x_train)},8,8,1], y_train=int32[{len(digits.y_train)}], "
      f"x_test=float32[{len(digits.x_test)},8,8,1], y_test=int32[{len(digits.y_test)}])")
  mine = jdl.data.Dataset(x_train=np.zeros((6, 3)), y_train=np.zeros(6), task="regression",
                          x_val=np.zeros((2, 3)), y_val=np.zeros(2))
  assert repr(mine) == ("Dataset(name='custom', task='regression', num_classes=0, "
                        "input_shape=(3,), x_train=float64[6,3], y_train=float64[6], "
                        "x_val=float64[2,3], y_val=float64[2])")
  np.save(tmp_path / "x_train.npy", np.zeros((5, 4), np.float32))
  np.save(tmp_path / "y_train.npy", np.arange(5, dtype=np.int64) % 2)
  assert repr(npy_dir.open_dir(tmp_path)) == (
      f"StreamDataset(name='npy_dir:{tmp_path.name}', task='classification', num_classes=2, "
      "input_shape=(4,), x_train=float32[5,4], y_train=int64[5])")


def test_float_class_ids_train_as_int_ids_mixup_and_class_selection_included():
  # Whole-number float labels (2.0) are accepted: they were kept as floats, so mixup
  # blended the labels themselves (0.7 * 2 + 0.3 * 0 = 1.4, read as class 1), and
  # config.classes indexed with floats (IndexError).
  import chex
  import jax.numpy as jnp
  from conftest import make_config
  from jdl.train.run_data import load_data
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 4)).astype(np.float32)
  y = np.arange(60) % 3
  as_int = sources.Dataset(x_train=x, y_train=y.astype(np.int32), num_classes=3, name="ids")
  as_float = sources.Dataset(x_train=x, y_train=y.astype(np.float32), num_classes=3,
                             name="ids")
  config = make_config(validation_split=0.0, augment__mixup_alpha=0.4, num_epochs=2,
                       batch_size=20)
  runs = [jdl.fit(config, dataset=d, quiet=True) for d in (as_int, as_float)]
  assert runs[0].history == runs[1].history
  chex.assert_trees_all_equal(runs[0].state.params, runs[1].state.params)
  picked = make_config(classes=(0, 2), validation_split=0.0, batch_size=20)
  data = load_data(picked, as_float)
  assert data.train.y.dtype == jnp.int32 and set(np.unique(data.train.y)) == {0, 1}
