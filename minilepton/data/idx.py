"""Read and write IDX files, the format MNIST and Fashion-MNIST ship in, with NumPy only.

An IDX file is a header and a payload, all big-endian::

    bytes 0-1   0x00 0x00
    byte  2     type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     ndim
    4*ndim      the dimensions, uint32 each
    payload     prod(dims) items of the type, row-major

``read_idx`` accepts the raw file or a gzip of it (recognised by the gzip magic bytes 1f 8b, so a
misnamed file still reads) and checks every part: magic, type, that the header is complete and
that the payload holds exactly prod(dims) items. Anything else raises ``IDXError`` with one line
naming the file and the fault; it never returns a partial array.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from .errors import IDXError

GZIP_MAGIC = b"\x1f\x8b"
# type code -> big-endian dtype stored in the file
TYPE_CODES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODE_OF = {dt.newbyteorder("="): code for code, dt in TYPE_CODES.items()}


def file_bytes(path) -> bytes:
    """The IDX bytes of ``path``: the file itself, or its gzip content when it starts with 1f 8b."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise IDXError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        reason = str(exc) or type(exc).__name__
        raise IDXError(f"{path}: corrupt gzip stream ({reason})") from None


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of one IDX file into a native-endian array (a copy, writeable)."""
    if len(data) < 4:
        raise IDXError(f"{name}: truncated header ({len(data)} bytes, need at least 4)")
    if data[0] != 0 or data[1] != 0:
        raise IDXError(f"{name}: bad magic number {data[:4].hex()} (must start with 0000)")
    code, ndim = data[2], data[3]
    if code not in TYPE_CODES:
        raise IDXError(f"{name}: unknown type code 0x{code:02x} "
                       f"(expected one of {', '.join(f'0x{c:02x}' for c in TYPE_CODES)})")
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise IDXError(f"{name}: truncated header ({len(data)} bytes, {ndim} dimensions "
                       f"need {header_bytes})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = TYPE_CODES[code]
    expected_bytes = int(np.prod(dims, dtype=object)) * dtype.itemsize
    payload_bytes = len(data) - header_bytes
    if payload_bytes != expected_bytes:
        fault = "truncated payload" if payload_bytes < expected_bytes else "trailing bytes"
        raise IDXError(f"{name}: {fault}: shape {dims} of {dtype.newbyteorder('=').name} needs "
                       f"{expected_bytes} bytes, file has {payload_bytes}")
    flat = np.frombuffer(data, dtype=dtype, offset=header_bytes)
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def read_idx(path) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian NumPy array; ``IDXError`` if malformed."""
    return parse_idx(file_bytes(path), name=os.fspath(path))


def idx_bytes(array) -> bytes:
    """Encode ``array`` (uint8, int8, int16, int32, float32 or float64) as IDX bytes."""
    array = np.asarray(array)
    code = _CODE_OF.get(array.dtype.newbyteorder("="))
    if code is None:
        raise IDXError(f"IDX cannot store dtype {array.dtype} (use uint8, int8, int16, int32, "
                       f"float32 or float64)")
    if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise IDXError(f"IDX cannot store shape {array.shape} (at most 255 dims, each < 2**32)")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=TYPE_CODES[code]).tobytes()


def write_idx(path, array, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file; gzip it when ``compress`` is True (default: path ends .gz)."""
    data = idx_bytes(array)
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    if compress:
        data = gzip.compress(data, mtime=0)
    with open(path, "wb") as fh:
        fh.write(data)
