"""Safe, atomic ``.npz`` files: arrays plus a JSON description, never pickles.

Nested state (optimizer buffers, RNG states, configs) is split by ``pack`` into flat
named arrays and a JSON skeleton that refers to them, so loading needs only .npy headers,
raw array bytes and ``json.loads``.

A file to load is untrusted: ``NpzReader`` checks the zip directory, every .npy header and
the JSON description (size, nesting) before any array data is read, refuses object and
non-numeric dtypes, and bounds the total size (``MAX_LOAD_BYTES``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import re
import tempfile
import zipfile

import numpy as np

from .backend import to_numpy

META_KEY = "__meta__"
_REF = "__array__"
_TEMP_SUFFIX = ".part"


class CheckpointError(ValueError):
    """A file that is not a valid jimunet ``.npz`` (corrupt, truncated, or of another kind)."""


class WriteError(OSError):
    """A file could not be written (a full disk, no permission, a missing directory): says which
    file and why in one line; ``path``, ``errno`` and ``strerror`` as for any OSError. What
    ``atomic_writer`` raises, so the file keeps its previous contents. ``note``: a sentence the
    message ends with (what the failure means for the caller)."""

    def __init__(self, path, cause: OSError, note: str = ""):
        super().__init__(cause.errno, cause.strerror or str(cause), os.fspath(path))
        self.path, self.note = os.fspath(path), note

    def __str__(self):
        return f"cannot write {self.path}: {self.strerror}" + (f"; {self.note}" if self.note else "")


class NpyHeaderError(ValueError):
    """An .npy header that jimunet refuses (objects, non-numeric dtypes, impossible sizes)."""


def pack(tree, arrays: dict, prefix: str = ""):
    """Replace every array in ``tree`` by ``{"__array__": key}``, storing it in ``arrays``."""
    if hasattr(tree, "shape") and hasattr(tree, "dtype") and getattr(tree, "ndim", 0) > 0:
        key = prefix or f"a{len(arrays)}"
        arrays[key] = to_numpy(tree)
        return {_REF: key}
    if hasattr(tree, "dtype") and hasattr(tree, "item"):  # numpy scalar
        return tree.item()
    if isinstance(tree, dict):
        return {str(k): pack(v, arrays, f"{prefix}/{k}" if prefix else str(k)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [pack(v, arrays, f"{prefix}/{i}") for i, v in enumerate(tree)]
    return tree


def unpack(tree, arrays):
    """Inverse of ``pack``."""
    if isinstance(tree, dict):
        if set(tree) == {_REF}:
            try:
                return arrays[tree[_REF]]
            except KeyError:
                raise CheckpointError(f"the file refers to array {tree[_REF]!r}, which it does not contain") from None
        return {k: unpack(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unpack(v, arrays) for v in tree]
    return tree


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(name: str) -> str:
    return f".{name}."


def temp_file_pattern(name: str) -> "re.Pattern":
    """The names ``atomic_writer`` gives the temporary files of a target file called ``name``.

    A process killed while writing leaves such a file behind; whoever owns the directory can
    find (and remove) exactly these, and nothing else, with ``pattern.fullmatch(entry)``.
    """
    return re.compile(re.escape(_temp_prefix(name)) + r"[A-Za-z0-9_]+" + re.escape(_TEMP_SUFFIX))


@contextlib.contextmanager
def atomic_writer(path):
    """Open a temporary file next to ``path``; on success fsync it and move it into place.

    Readers therefore see either the old file or the complete new one, never a
    partial write, even if the process dies. On error the temporary file is removed, and
    an OSError (a full disk, no permission, a missing directory) becomes ``WriteError``,
    which names ``path``.

    Example:
        >>> with atomic_writer("/tmp/x.bin") as f:   # doctest: +SKIP
        ...     f.write(b"data")
    """
    path = pathlib.Path(path)
    # Same directory, so os.replace is a rename within one file system.
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=_TEMP_SUFFIX)
    except OSError as e:
        raise WriteError(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(path, e) from None
        raise
    # Persist the rename itself; not possible (nor needed) on every platform.
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_npz(path, arrays: dict, meta: dict) -> None:
    """Write ``arrays`` and the JSON ``meta`` to ``path`` atomically.

    The file appears complete or not at all: it is written next to ``path`` under a
    temporary name, flushed to disk, then renamed over it.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    payload = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    if META_KEY in payload:
        raise ValueError(f"array name {META_KEY!r} is reserved")
    payload[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_writer(path) as f:
        np.savez(f, **payload)


# Limits on what a load may allocate. A file is untrusted: its headers could claim any size,
# and a few kilobytes of deflated zeros inflate to gigabytes. jimunet's own files are far
# below these (the MNIST network with Adam state in float64 is ~80 MB); pass ``max_bytes``
# to ``load_npz`` / ``jimunet.load`` for a larger model.
MAX_LOAD_BYTES = 2 ** 30          # 1 GiB of array data (as declared in the .npy headers)
MAX_META_BYTES = 16 * 2 ** 20     # the JSON description (a long run's history is ~1 MB)
MAX_META_DEPTH = 64               # nesting of the JSON description
MAX_ARRAYS = 100_000              # entries in the zip directory
_HEADER_BYTES = 100_000           # an .npy header (NumPy's own default limit is 10,000)


class ArrayHeader:
    """Shape, dtype and memory order of one stored array, read from its .npy header."""

    def __init__(self, shape, dtype, fortran: bool = False):
        self.shape, self.dtype, self.fortran = tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran)

    def __repr__(self):
        return f"ArrayHeader(shape={self.shape}, dtype={self.dtype})"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def referenced_arrays(meta) -> set:
    """Names of the arrays the JSON skeleton ``meta`` refers to (see ``pack``)."""
    names, stack = set(), [meta]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if set(node) == {_REF} and isinstance(node[_REF], str):
                names.add(node[_REF])
            else:
                stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return names


def json_depth(tree) -> int:
    """Nesting depth of a JSON value, without recursion (a crafted file may nest deeply)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def read_npy_header(f, what: str) -> tuple[ArrayHeader, int]:
    """The header of the .npy stream ``f`` and its length in bytes; data is left unread."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=_HEADER_BYTES)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=_HEADER_BYTES)
    else:
        raise NpyHeaderError(f"{what}: .npy format version {version} is not supported (1.0 and 2.0 are)")
    if any(d < 0 for d in shape):
        raise NpyHeaderError(f"{what}: negative size in shape {shape}")
    if dtype.hasobject:
        raise NpyHeaderError(f"{what}: holds Python objects (dtype {dtype}); jimunet never unpickles")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
        raise NpyHeaderError(f"{what}: dtype {dtype} is not a plain numeric type (bool, int or float)")
    return ArrayHeader(shape, dtype, fortran), f.tell()


class NpzReader:
    """A ``save_npz`` file opened for checked, bounded reading; use as a context manager.

    Opening reads only the zip directory, the JSON description (bounded in size and
    nesting) and each array's .npy header, so names, shapes and dtypes can be checked
    before any array data is decompressed. ``read(name)`` then allocates exactly what
    the header declared, which ``check_size`` bounds.

    Attributes:
        meta: the JSON description (a dict).
        headers: ``{name: ArrayHeader(shape, dtype)}`` for every stored array.
    """

    def __init__(self, path, kind: str | None = None):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no such file: {self.path}")
        self._zip = None
        try:
            self._zip = zipfile.ZipFile(self.path)
            infos = self._zip.infolist()
            if len(infos) > MAX_ARRAYS:
                raise CheckpointError(f"{self.path}: holds {len(infos)} entries; a jimunet file holds at "
                                      f"most {MAX_ARRAYS}")
            self._infos = {}
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise CheckpointError(f"{self.path}: unexpected entry {info.filename!r} (a jimunet .npz "
                                          "holds only .npy arrays)")
                name = info.filename[:-len(".npy")]
                if name in self._infos:
                    raise CheckpointError(f"{self.path}: the array {name!r} is stored twice")
                self._infos[name] = info
            if META_KEY not in self._infos:
                raise CheckpointError(f"{self.path}: an .npz file, but not one written by jimunet "
                                      f"(no {META_KEY} entry)")
            self.headers = {}
            for name, info in self._infos.items():
                with self._zip.open(info) as f:
                    header, offset = read_npy_header(f, f"array {name!r}")
                if offset + header.nbytes != info.file_size:
                    raise NpyHeaderError(f"array {name!r}: its header declares {header.nbytes:,} bytes of data "
                                     f"{header.dtype} {header.shape}, the zip entry holds "
                                     f"{info.file_size - offset:,}")
                self.headers[name] = header
            self.meta = self._read_meta()
        except CheckpointError:
            self.close()
            raise
        except NpyHeaderError as e:
            self.close()
            raise CheckpointError(f"{self.path}: {e}") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, KeyError,
                NotImplementedError, RuntimeError) as e:  # RuntimeError: encrypted entries
            self.close()
            raise CheckpointError(f"{self.path}: not a readable jimunet .npz file ({_reason(e)}); "
                                  "it may be truncated or corrupt") from None
        if kind is not None and self.meta.get("format") != kind:
            self.close()
            raise CheckpointError(f"{self.path}: expected a {kind!r} file, got {self.meta.get('format')!r}")

    def _read_meta(self) -> dict:
        header = self.headers.pop(META_KEY)
        if header.dtype != np.uint8 or len(header.shape) != 1:
            raise CheckpointError(f"{self.path}: its {META_KEY} entry should be 1-D uint8 (JSON text), got "
                                  f"{header.dtype} {header.shape}")
        if header.nbytes > MAX_META_BYTES:
            raise CheckpointError(f"{self.path}: its JSON description is {header.nbytes:,} bytes; at most "
                                  f"{MAX_META_BYTES:,} are read")
        raw = self._read(META_KEY, header).tobytes()
        try:
            meta = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: its JSON description is corrupt ({e})") from None
        except RecursionError:
            raise CheckpointError(f"{self.path}: its JSON description is nested more than "
                                  f"{MAX_META_DEPTH} levels deep") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{self.path}: its JSON description is a {type(meta).__name__}, not an object; "
                                  "not a jimunet file")
        if json_depth(meta) > MAX_META_DEPTH:
            raise CheckpointError(f"{self.path}: its JSON description is nested more than "
                                  f"{MAX_META_DEPTH} levels deep")
        return meta

    def check_names(self, expected) -> None:
        """Refuse arrays not in ``expected`` (before any of them is read)."""
        unknown = sorted(set(self.headers) - set(expected))
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise CheckpointError(f"{self.path}: holds arrays this kind of file does not have: "
                                  f"{', '.join(map(repr, unknown[:5]))}{more}")

    def check_size(self, max_bytes: int | None = None) -> int:
        """Total declared array bytes; CheckpointError if over ``max_bytes`` (default MAX_LOAD_BYTES)."""
        limit = MAX_LOAD_BYTES if max_bytes is None else int(max_bytes)
        total = sum(h.nbytes for h in self.headers.values())
        if total > limit:
            raise CheckpointError(f"{self.path}: its arrays declare {total:,} bytes in all, over the limit of "
                                  f"{limit:,} bytes (pass max_bytes=... to load a file this large)")
        return total

    def _read(self, name, header):
        out = np.empty(header.shape, header.dtype, order="F" if header.fortran else "C")
        view = memoryview(out.reshape(-1, order="A").view(np.uint8))
        with self._zip.open(self._infos[name]) as f:
            read_npy_header(f, f"array {name!r}")
            filled = 0
            while filled < len(view):  # zipfile checks the CRC once the entry is read to its end
                n = f.readinto(view[filled:])
                if not n:
                    raise ValueError(f"array {name!r}: data shorter than its header says")
                filled += n
            if f.read(1):
                raise ValueError(f"array {name!r}: data longer than its header says")
        return out

    def read(self, name) -> np.ndarray:
        """One array, exactly as declared by its (already checked) header."""
        try:
            return self._read(name, self.headers[name])
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as e:
            raise CheckpointError(f"{self.path}: not a readable jimunet .npz file ({_reason(e)}); "
                                  "it may be truncated or corrupt") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _reason(e: BaseException) -> str:
    """A reading error in words (the library's message; no exception class names)."""
    if isinstance(e, KeyError):
        return f"no entry {e.args[0]!r}" if e.args else "an entry is missing"
    if isinstance(e, RuntimeError) and "encrypt" in str(e).lower():
        return "an encrypted entry"
    return str(e) or {zipfile.BadZipFile: "not a zip file", EOFError: "ends early"}.get(type(e), "unreadable")


def load_npz(path, kind: str | None = None, expected=None, max_bytes: int | None = None):
    """Read ``(arrays, meta)`` written by ``save_npz``; ``kind`` checks ``meta["format"]``.

    Args:
        expected: the array names the file may hold, or a function of ``meta`` returning
            them (e.g. ``referenced_arrays``); others are refused before anything is read.
            None accepts any names.
        max_bytes: bound on the arrays' total size (default ``MAX_LOAD_BYTES``).
    """
    with NpzReader(path, kind=kind) as r:
        if expected is not None:
            r.check_names(expected(r.meta) if callable(expected) else expected)
        r.check_size(max_bytes)
        return {name: r.read(name) for name in r.headers}, r.meta
