"""Reader for the IDX file format of the MNIST family.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim``
big-endian int32 dimensions, then the row-major payload in big-endian ``dtype``. Files
may be gzip-compressed; compression is detected from the content, not the file name.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

from jdl.errors import JdlError

# The dtype code (third magic byte) -> big-endian numpy dtype.
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
  """Returns the content of ``path``, decompressed if it is gzip."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise JdlError(f"cannot read IDX file {os.fspath(path)}: {e.strerror or e}") from None
  if not raw.startswith(_GZIP_MAGIC):
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    # EOFError: the gzip stream ends early, i.e. the download was cut off.
    raise JdlError(
        f"IDX file {os.fspath(path)} is a corrupt or truncated gzip file ({e}); "
        "delete it and download it again"
    ) from None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads an IDX file (gzip-compressed or raw) into a numpy array.

  Args:
    path: the file, e.g. ``train-images-idx3-ubyte.gz``.

  Returns:
    An array with the shape and dtype of the header, in native byte order (e.g.
    ``uint8 [60000, 28, 28]`` for MNIST training images).

  Raises:
    JdlError: the file cannot be read, is not gzip-decodable, has a bad magic number
      or dtype code, or its payload length differs from what the header announces.
  """
  name = os.fspath(path)
  data = _read_bytes(path)
  if len(data) < 4:
    raise JdlError(
        f"IDX file {name} is truncated: {len(data)} bytes, too short for the 4-byte "
        "magic number"
    )
  zero, code, ndim = data[:2], data[2], data[3]
  if zero != b"\x00\x00" or code not in IDX_DTYPES:
    raise JdlError(
        f"{name} is not an IDX file: bad magic number 0x{data[:4].hex()} (expected "
        f"0x0000<dtype><ndim> with dtype code one of "
        f"{', '.join(f'0x{c:02x}' for c in IDX_DTYPES)})"
    )
  header_len = 4 + 4 * ndim
  if len(data) < header_len:
    raise JdlError(
        f"IDX file {name} is truncated: the header announces {ndim} dimensions "
        f"({header_len} header bytes) but the file has {len(data)} bytes"
    )
  shape = struct.unpack(f">{ndim}i", data[4:header_len])
  if any(d < 0 for d in shape):
    raise JdlError(f"IDX file {name} has negative dimensions {shape} in its header")
  dtype = np.dtype(IDX_DTYPES[code])
  expected = math.prod(shape) * dtype.itemsize
  actual = len(data) - header_len
  if actual != expected:
    what = "truncated" if actual < expected else "longer than its header says"
    raise JdlError(
        f"IDX file {name} is {what}: shape {shape} of {dtype.newbyteorder('=').name} "
        f"needs {expected} payload bytes but the file has {actual}"
    )
  array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
  return array.astype(dtype.newbyteorder("="))
