"""Reading and writing the IDX file format used by MNIST.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element type,
``NN`` the number of dimensions), then ``NN`` big-endian uint32 dimension sizes,
then the elements in C order, big-endian. MNIST ships them gzip-compressed.

Example:
    >>> import numpy as np
    >>> from jimunet.data import read_idx, write_idx
    >>> write_idx("/tmp/labels-idx1-ubyte.gz", np.array([5, 0, 4], dtype=np.uint8))
    >>> read_idx("/tmp/labels-idx1-ubyte.gz")
    array([5, 0, 4], dtype=uint8)
"""
from __future__ import annotations

import gzip
import os
import zlib
from typing import Optional, Union

import numpy as np

from ..serialization import atomic_writer

__all__ = ["IDXFormatError", "read_idx", "write_idx", "encode_idx", "decode_idx"]

PathLike = Union[str, "os.PathLike[str]"]

# Type code -> big-endian element dtype, as given in the IDX specification.
_CODE_TO_DTYPE = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_SIZE_TO_CODE = {(dt.kind, dt.itemsize): code for code, dt in _CODE_TO_DTYPE.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DIM = 2**32 - 1  # dimension sizes are stored as uint32


class IDXFormatError(ValueError):
    """Raised when a file is not a valid IDX file (bad header, wrong size, corrupt gzip)."""


def _supported_codes() -> str:
    return ", ".join(f"0x{c:02X} ({dt.newbyteorder('=').name})" for c, dt in _CODE_TO_DTYPE.items())


def decode_idx(data: bytes, name: str = "<bytes>", ndim: Optional[int] = None) -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file.

    Args:
        data: the whole file content.
        name: what to call the data in error messages (usually the file path).
        ndim: if given, the number of dimensions the header must declare.

    Returns:
        A new, writable array in native byte order with the shape from the header.

    Raises:
        IDXFormatError: the magic number, dimension count or data length is wrong.

    Example:
        >>> decode_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]))
        array([7, 9], dtype=uint8)
    """
    view = memoryview(data)
    if len(view) < 4:
        raise IDXFormatError(
            f"{name}: not an IDX file: expected a 4-byte magic number, found only {len(view)} bytes"
        )
    if view[0] != 0 or view[1] != 0:
        raise IDXFormatError(
            f"{name}: bad IDX magic number: expected first two bytes 0x00 0x00, "
            f"found 0x{view[0]:02X} 0x{view[1]:02X}"
        )
    code, nd = view[2], view[3]
    if code not in _CODE_TO_DTYPE:
        raise IDXFormatError(
            f"{name}: unknown IDX type code 0x{code:02X}; expected one of {_supported_codes()}"
        )
    if nd == 0:
        raise IDXFormatError(f"{name}: IDX header declares 0 dimensions; expected at least 1")
    if ndim is not None and nd != ndim:
        raise IDXFormatError(f"{name}: expected {ndim} dimensions in the IDX header, found {nd}")
    header_len = 4 + 4 * nd
    if len(view) < header_len:
        raise IDXFormatError(
            f"{name}: truncated IDX header: {nd} dimensions need {header_len} header bytes, "
            f"found {len(view)} bytes in the file"
        )
    shape = tuple(int(d) for d in np.frombuffer(view, dtype=">u4", count=nd, offset=4))
    dtype = _CODE_TO_DTYPE[code]
    # Python ints, so a huge declared shape cannot overflow the comparison.
    expected = dtype.itemsize
    for d in shape:
        expected *= d
    found = len(view) - header_len
    if found != expected:
        what = "truncated" if found < expected else "trailing data after the elements"
        raise IDXFormatError(
            f"{name}: {what}: shape {shape} of {dtype.newbyteorder('=').name} needs exactly "
            f"{expected} data bytes after the {header_len}-byte header, found {found}"
        )
    arr = np.frombuffer(view, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    # astype copies: the result is writable, native-endian and does not pin `data`.
    return arr.reshape(shape).astype(dtype.newbyteorder("="))


def _maybe_gunzip(raw: bytes, name: str) -> bytes:
    # Sniff the content, not the suffix: browsers and servers often decompress
    # "*.gz" transparently, and an IDX file always starts with 00 00.
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise IDXFormatError(f"{name}: corrupt gzip data ({str(exc) or 'truncated'})") from exc


def read_idx_bytes(path: PathLike) -> bytes:
    """Return the uncompressed IDX bytes of ``path`` (gunzipping if it is gzip data).

    Raises:
        IDXFormatError: the gzip stream is corrupt or truncated.
        OSError: the file cannot be read.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    return _maybe_gunzip(raw, path)


def read_idx(path: PathLike, *, ndim: Optional[int] = None) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed.

    Args:
        path: file to read, e.g. ``train-images-idx3-ubyte`` or ``...-idx3-ubyte.gz``.
            Compression is detected from the content, so a ``.gz`` name holding plain
            data (or the reverse) still works.
        ndim: if given, the number of dimensions the header must declare.

    Returns:
        The array, in native byte order, with the header's shape and element type
        (uint8, int8, int16, int32, float32 or float64).

    Raises:
        IDXFormatError: (a ``ValueError``) bad magic number, unknown type code, wrong
            number of dimensions, truncated or trailing data, or corrupt gzip; the
            message names the file and what was expected vs found.
        OSError: the file cannot be opened.

    Example:
        >>> images = read_idx("train-images-idx3-ubyte.gz")   # doctest: +SKIP
        >>> images.shape, images.dtype                        # doctest: +SKIP
        ((60000, 28, 28), dtype('uint8'))
    """
    return decode_idx(read_idx_bytes(path), name=os.fspath(path), ndim=ndim)


def encode_idx(array: np.ndarray) -> bytes:
    """Return the uncompressed IDX bytes of ``array``.

    Args:
        array: uint8, int8, int16, int32, float32 or float64, 1 to 255 dimensions.

    Returns:
        Header followed by the big-endian elements in C order.

    Raises:
        ValueError: unsupported dtype, dimension count or dimension size.

    Example:
        >>> encode_idx(np.array([7, 9], dtype=np.uint8))
        b'\\x00\\x00\\x08\\x01\\x00\\x00\\x00\\x02\\x07\\t'
    """
    array = np.asarray(array)
    dt = array.dtype
    code = _KIND_SIZE_TO_CODE.get((dt.kind, dt.itemsize))
    if code is None:
        raise ValueError(
            f"IDX cannot store dtype {dt}; cast to one of {_supported_codes()} first"
        )
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX stores 1 to 255 dimensions, got an array with {array.ndim}")
    if any(d > _MAX_DIM for d in array.shape):
        raise ValueError(f"IDX dimension sizes must fit in uint32, got shape {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=_CODE_TO_DTYPE[code]).tobytes()
    return header + body


def write_idx_bytes(path: PathLike, data: bytes) -> None:
    """Atomically write already-encoded IDX bytes, gzip-compressed if ``path`` ends in ``.gz``."""
    with atomic_writer(path) as f:
        if os.fspath(path).endswith(".gz"):
            # mtime=0 and no embedded name: the same array always gives the same bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
                gz.write(data)
        else:
            f.write(data)


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, atomically.

    The data goes to a temporary file in the same directory, is fsynced, and is
    then renamed over ``path``, so an interrupted write never leaves a partial file.

    Args:
        path: destination; gzip-compressed if it ends in ``.gz``.
        array: uint8, int8, int16, int32, float32 or float64, 1 to 255 dimensions.

    Raises:
        ValueError: the array cannot be stored as IDX.
        OSError: the file cannot be written.

    Example:
        >>> write_idx("/tmp/t-idx1-ubyte", np.arange(10, dtype=np.uint8))
        >>> read_idx("/tmp/t-idx1-ubyte")[:3]
        array([0, 1, 2], dtype=uint8)
    """
    write_idx_bytes(path, encode_idx(array))
