"""Downloads of the MNIST-family IDX files from public mirrors, verified by SHA-256.

The mirror and checksum tables are module-level so that tests (or a site with a local
mirror) can replace them; :func:`download_files` also takes both as arguments.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import pathlib
import sys
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence

from jdl.errors import JdlError

# Base URLs, tried in order; a file's URL is the base followed by its name.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion_mnist": (
        # Zalando's own S3 bucket (its website endpoint serves HTTP only; the SHA-256
        # check below is what makes the plain-HTTP download safe).
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    ),
}

# SHA-256 of each distributed file. MNIST: the sums of the original files (as in
# shared/data/SHA256SUMS). Fashion-MNIST: the sums published for Zalando's files and
# pinned alike by several independent projects (their md5s are the ones torchvision
# pins: 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...).
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz":
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz":
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz":
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz":
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz":
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz":
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz":
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz":
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}

# Seconds without progress before a connection or read gives up.
TIMEOUT_S = 30.0

_CHUNK = 1 << 16

log = logging.getLogger(__name__)


class _ChecksumError(Exception):
  """The downloaded bytes do not have the expected SHA-256."""


def default_data_dir(name: str) -> pathlib.Path:
  """Returns ``$JDL_DATA_DIR/<name>`` if the variable is set, else ``~/.cache/jdl/<name>``."""
  root = os.environ.get("JDL_DATA_DIR")
  base = pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "jdl"
  return base / name


def _fetch(url: str, dest: pathlib.Path, sha256: str, timeout: float, progress: bool) -> None:
  """Downloads ``url`` to ``dest`` through a temporary file renamed only once verified."""
  fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
  try:
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
      length = resp.headers.get("Content-Length")
      bar = None
      if progress:
        from tqdm import tqdm  # pylint: disable=g-import-not-at-top

        bar = tqdm(total=int(length) if length else None, unit="B", unit_scale=True,
                   unit_divisor=1024, desc=dest.name, file=sys.stderr)
      try:
        while chunk := resp.read(_CHUNK):
          out.write(chunk)
          digest.update(chunk)
          if bar is not None:
            bar.update(len(chunk))
      finally:
        if bar is not None:
          bar.close()
    if digest.hexdigest() != sha256.lower():
      raise _ChecksumError(
          f"SHA-256 mismatch: expected {sha256}, got {digest.hexdigest()}")
    os.replace(tmp_name, dest)
  finally:
    if os.path.exists(tmp_name):
      os.unlink(tmp_name)


def download_files(
    name: str,
    files: Sequence[str],
    target_dir: str | os.PathLike[str],
    *,
    mirrors: Sequence[str] | None = None,
    sha256: Mapping[str, str] | None = None,
    timeout: float | None = None,
    progress: bool | None = None,
) -> list[pathlib.Path]:
  """Downloads ``files`` of dataset ``name`` into ``target_dir``, trying each mirror.

  Each file is written to a temporary file in ``target_dir``, checked against its
  SHA-256 and only then renamed into place, so an interrupted or corrupt download never
  leaves a file that looks complete.

  Args:
    name: the dataset, a key of :data:`MIRRORS` and :data:`SHA256` unless both
      ``mirrors`` and ``sha256`` are given.
    files: file names, e.g. ``["train-images-idx3-ubyte.gz"]``.
    target_dir: where the files go; created if missing.
    mirrors: base URLs to try in order; defaults to ``MIRRORS[name]``.
    sha256: file name -> expected hex SHA-256; defaults to ``SHA256[name]``.
    timeout: seconds before a stalled connection fails; defaults to :data:`TIMEOUT_S`.
    progress: show a tqdm progress bar; defaults to whether stderr is a terminal.

  Returns:
    The paths of the downloaded files, in the order of ``files``.

  Raises:
    JdlError: a file has no known checksum, or no mirror delivered a file with the
      right checksum; the message lists the missing files and where to put them.
  """
  target = pathlib.Path(target_dir)
  urls = tuple(MIRRORS.get(name, ()) if mirrors is None else mirrors)
  sums = SHA256.get(name, {}) if sha256 is None else sha256
  timeout = TIMEOUT_S if timeout is None else timeout
  progress = sys.stderr.isatty() if progress is None else progress
  unknown = [f for f in files if f not in sums]
  if unknown:
    raise JdlError(
        f"no known SHA-256 for {name} file(s) {', '.join(unknown)}; jdl downloads only "
        f"verified files, so put them in {target} yourself"
    )
  made = [p for p in (target, *target.parents) if not p.exists()]  # Deepest first.
  try:
    target.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise JdlError(
        f"cannot create the data directory {target} ({e.strerror or e}); set "
        "--config.data_dir or $JDL_DATA_DIR to a writable directory"
    ) from None
  done: list[pathlib.Path] = []
  try:
    _download_each(name, files, target, urls, sums, timeout, progress, done)
  except BaseException:
    if not done:  # Nothing came: the folders made for it go again (if still empty).
      for folder in made:
        with contextlib.suppress(OSError):
          folder.rmdir()
    raise
  return done


def _download_each(name, files, target, urls, sums, timeout, progress, done) -> None:
  """The loop of :func:`download_files`: appends each file's path to ``done``."""
  for i, file in enumerate(files):
    dest = target / file
    failures = []
    for base in urls:
      url = base.rstrip("/") + "/" + file
      log.info("Downloading %s to %s", url, dest)
      try:
        _fetch(url, dest, sums[file], timeout, progress)
        break
      except (OSError, ValueError, http.client.HTTPException, _ChecksumError) as e:
        # OSError covers urllib's URLError/HTTPError, refused connections and timeouts.
        log.info("Download of %s failed: %s", url, e)
        failures.append(f"{url}: {e}")
    else:
      missing = ", ".join(files[i:])
      tried = "; ".join(failures) if failures else f"no mirrors are known for {name!r}"
      raise JdlError(
          f"cannot download the {name} file(s) {missing} ({tried}). Put the files (gzip "
          f"or raw IDX) in {target}, or set --config.data_dir to a directory that holds "
          "them"
      )
    done.append(dest)
