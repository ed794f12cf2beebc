"""Safe, atomic ``.npz`` files: arrays plus a JSON description, never pickles.

Nested state (optimizer buffers, RNG states, configs) is split by ``pack`` into flat
named arrays and a JSON skeleton that refers to them, so loading needs only
``np.load(..., allow_pickle=False)`` and ``json.loads``.
"""
from __future__ import annotations

import contextlib
import io
import json
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
    partial write, even if the process dies. On error the temporary file is removed.

    Example:
        >>> with atomic_writer("/tmp/x.bin") as f:   # doctest: +SKIP
        ...     f.write(b"data")
    """
    path = pathlib.Path(path)
    # Same directory, so os.replace is a rename within one file system.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
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


def load_npz(path, kind: str | None = None):
    """Read ``(arrays, meta)`` written by ``save_npz``; ``kind`` checks ``meta["format"]``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable jimunet .npz file ({type(e).__name__}: {e}); "
                              "it may be truncated or corrupt") from None
    if META_KEY not in arrays:
        raise CheckpointError(f"{path}: an .npz file, but not one written by jimunet (no {META_KEY} entry)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: its JSON description is corrupt ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its JSON description is a {type(meta).__name__}, not an object; "
                              "not a jimunet file")
    if kind is not None and meta.get("format") != kind:
        raise CheckpointError(f"{path}: expected a {kind!r} file, got {meta.get('format')!r}")
    return arrays, meta
