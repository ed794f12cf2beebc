"""The one download-and-verify path of the data sets: IDX data sets described by a table
(``IDXSet``: files, checksums, mirrors, read-only local copies), and single files by URL
(``fetch_file``, for CIFAR-10's archive).

Every file is checked against a known SHA-256 of its content before use, wherever it comes from.
A user's file is never changed or deleted: a file that fails its check is reported (named as
the other data set's file when it is one, e.g. Fashion-MNIST's under MNIST's name); only a file
jimunet itself downloaded into a cache directory (listed in that directory's ``.jimunet-fetched``)
is moved aside to ``NAME.corrupt`` and fetched again.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm  # not tqdm.auto: in Jupyter without ipywidgets it warns on every import

from ..serialization import atomic_writer
from .idx import IDXFormatError, decode_idx, read_idx_bytes, write_idx_bytes

__all__ = ["FileSpec", "IDXSet", "DataUnavailableError", "CorruptFile", "load_idx_set", "fetch_file",
           "data_home", "FETCHED_LIST", "register"]

logger = logging.getLogger(__name__)

# Short, so that an unreachable mirror costs seconds, not minutes.
CONNECT_TIMEOUT_S = 10.0
FETCHED_LIST = ".jimunet-fetched"  # the files jimunet downloaded into a directory, one name a line
_ENV_VAR = "JIMUNET_DATA"


class DataUnavailableError(RuntimeError):
    """A data set is not where it was looked for and could not be obtained.

    Attributes:
        errors: ``(source, error message)`` for every source tried.
        root: the directory the files were expected in.
    """

    def __init__(self, message: str, errors: Sequence[Tuple[str, str]] = (), root: Optional[Path] = None):
        super().__init__(message)
        self.errors = list(errors)
        self.root = root


class CorruptFile(Exception):
    pass


@dataclass(frozen=True)
class FileSpec:
    name: str  # standard file name, without ".gz"
    shape: Tuple[int, ...]  # shape of the array in the IDX file
    sha256: str  # SHA-256 of the uncompressed IDX content
    gz_md5: str  # MD5 of the official .gz file (published)
    gz_sha256: Optional[str] = None  # SHA-256 of the official .gz file, when known


@dataclass(frozen=True)
class IDXSet:
    """One IDX data set: its ``files`` (key → FileSpec), ``mirrors`` (URL prefixes, tried in
    order), ``local_dirs`` (read-only copies, e.g. a Linux distribution's package, used in place),
    ``error`` (the exception class it raises) and ``how_to_get`` (a sentence for the error)."""

    name: str
    files: Dict[str, FileSpec]
    mirrors: Tuple[str, ...] = ()
    local_dirs: Tuple[str, ...] = ()
    error: type = DataUnavailableError
    how_to_get: str = ""


_REGISTRY: Dict[str, Tuple[str, str]] = {}  # content SHA-256 -> (data set name, file name)


def register(idx_set: IDXSet) -> IDXSet:
    """Make ``idx_set``'s files recognisable when they turn up under another data set's names."""
    for spec in idx_set.files.values():
        _REGISTRY[spec.sha256] = (idx_set.name, spec.name)
    return idx_set


def data_home() -> Path:
    """``~/.cache/jimunet``: the data sets' caches are its sub-directories."""
    return Path.home() / ".cache" / "jimunet"


def _env_root() -> Optional[Path]:
    env = os.environ.get(_ENV_VAR)
    return Path(env).expanduser() if env else None


# ---------------------------------------------------------------------------
# Checking files

def verified_array(data: bytes, spec: FileSpec, source: str, set_name: str = "the data set") -> np.ndarray:
    """Check ``data`` (uncompressed IDX) against ``spec``; raise ``CorruptFile`` if wrong."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        other = _REGISTRY.get(digest)
        what = (f"it is {other[0]}'s {other[1]}, not {set_name}'s {spec.name}" if other
                else f"SHA-256 of the IDX content is {digest}, expected {spec.sha256} ({len(data)} bytes)")
        raise CorruptFile(f"{source}: {what}")
    try:
        arr = decode_idx(data, name=source)
    except IDXFormatError as exc:  # only reachable if the table is inconsistent
        raise CorruptFile(str(exc)) from exc
    if arr.shape != spec.shape or arr.dtype != np.uint8:
        raise CorruptFile(f"{source}: expected uint8 {spec.shape}, found {arr.dtype} {arr.shape}")
    if arr.ndim == 1 and arr.size and arr.max() > 9:
        raise CorruptFile(f"{source}: labels must be 0..9, found {int(arr.max())}")
    return arr


def _fetched_names(root: Path) -> set:
    try:
        return set((root / FETCHED_LIST).read_text().split())
    except OSError:
        return set()


def record_fetched(root: Path, name: str) -> None:
    with open(root / FETCHED_LIST, "a") as f:
        f.write(name + "\n")


def load_file(root: Path, spec: FileSpec, idx_set: IDXSet, discard_fetched: bool) -> Optional[np.ndarray]:
    """The verified array of ``spec`` from ``root`` (plain or ``.gz``), or None when absent, or
    when it is corrupt, jimunet fetched it and ``discard_fetched``: then it is moved aside."""
    for path in (p for p in (root / spec.name, root / f"{spec.name}.gz") if p.exists()):
        try:
            return verified_array(read_idx_bytes(path), spec, str(path), idx_set.name)
        except (CorruptFile, IDXFormatError, OSError) as exc:
            if not (discard_fetched and path.name in _fetched_names(root)):
                raise idx_set.error(
                    f"{exc}\n  jimunet leaves your files as they are: move this one elsewhere, or keep "
                    f"{idx_set.name} in a directory of its own (each data set uses the same file names).",
                    root=root) from None
            moved = move_aside(path, idx_set.error)
            if moved is None:  # another process moved it first
                continue
            note = (f"{idx_set.name} file {path}, which jimunet downloaded, is damaged ({exc}); moved it to "
                    f"{moved} (nothing is deleted) and fetching it again.")
            print(f"jimunet: {note}", file=sys.stderr)
            logger.info(note)
    return None


def move_aside(path: Path, error: type = DataUnavailableError) -> Optional[Path]:
    """Rename ``path`` to ``path.corrupt`` (or ``.corrupt.1``, ``.2``, ...), never replacing a file.

    Returns the new name, or None if ``path`` is gone (another process moved it).
    """
    for i in range(10_000):
        dest = path.with_name(path.name + (".corrupt" if i == 0 else f".corrupt.{i}"))
        try:
            os.link(path, dest)  # fails if dest exists: unlike rename, it never replaces a file
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None
        except OSError:  # no hard links on this file system: rename, having checked the name is free
            if dest.exists() or dest.is_symlink():
                continue
            try:
                os.rename(path, dest)
            except FileNotFoundError:
                return None
            return dest
        path.unlink()
        return dest
    raise error(f"{path} fails its checksum, and 10000 names {path.name}.corrupt.N are taken; "
                "clean up that directory", root=path.parent)


# ---------------------------------------------------------------------------
# Downloading

def _read_url(url: str, desc: str, progress: bool, hashes: Sequence) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "jimunet (python urllib)"})
    chunks = []
    with urllib.request.urlopen(req, timeout=CONNECT_TIMEOUT_S) as resp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                  disable=not progress, leave=False) as bar:
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                for h in hashes:
                    h.update(chunk)
                chunks.append(chunk)
                bar.update(len(chunk))
    return b"".join(chunks)


def download_gz(url: str, spec: FileSpec, progress: bool) -> bytes:
    """Download one .gz file, check its checksum, return the uncompressed IDX bytes."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    # The .gz files are at most ~30 MB, so they are gathered in memory; only the verified,
    # uncompressed result is written to the cache (atomically, by the caller).
    data = _read_url(url, f"{spec.name}.gz", progress, (md5, sha))
    if spec.gz_sha256 and sha.hexdigest() != spec.gz_sha256:
        raise ValueError(f"SHA-256 mismatch: got {sha.hexdigest()}, expected {spec.gz_sha256}")
    if md5.hexdigest() != spec.gz_md5:
        raise ValueError(f"MD5 mismatch: got {md5.hexdigest()}, expected {spec.gz_md5}")
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise ValueError(f"corrupt gzip data: {exc}") from exc


def fetch_from_mirrors(root: Path, idx_set: IDXSet, specs: List[FileSpec], progress: bool,
                       errors: List[Tuple[str, str]], download: Callable = download_gz) -> List[FileSpec]:
    """Fetch what ``idx_set``'s mirrors give into ``root``; return the specs still missing."""
    remaining = list(specs)
    for mirror in idx_set.mirrors:
        if not remaining:
            break
        for spec in list(remaining):
            url = f"{mirror}{spec.name}.gz"
            try:
                data = download(url, spec, progress)
                verified_array(data, spec, url, idx_set.name)
            except Exception as exc:  # noqa: BLE001 -- every failure is reported at the end
                errors.append((url, str(exc) or "failed"))
                logger.info("%s mirror failed, trying the next source: %s: %s", idx_set.name, url, exc)
                # One failure usually means the whole mirror is unreachable; trying its
                # other files would only multiply the timeouts.
                break
            write_idx_bytes(root / spec.name, data)
            record_fetched(root, spec.name)
            remaining.remove(spec)
    return remaining


def fetch_file(url: str, dest: Path, *, md5: str, sha256: Optional[str] = None, size: Optional[int] = None,
               progress: bool = True) -> None:
    """Download ``url`` to ``dest`` atomically, streaming, keeping it only when ``size``, ``md5``
    and ``sha256`` (those given) match; records it as fetched by jimunet. ValueError otherwise."""
    dest = Path(dest)
    h_md5, h_sha = hashlib.md5(), hashlib.sha256()
    req = urllib.request.Request(url, headers={"User-Agent": "jimunet (python urllib)"})
    n = 0
    with urllib.request.urlopen(req, timeout=CONNECT_TIMEOUT_S) as resp, atomic_writer(dest) as f:
        total = int(resp.headers.get("Content-Length") or 0) or size
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                  disable=not progress, leave=False) as bar:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h_md5.update(chunk)
                h_sha.update(chunk)
                f.write(chunk)
                n += len(chunk)
                bar.update(len(chunk))
        problem = (size is not None and n != size and f"{n} bytes, expected {size}") or \
            (h_md5.hexdigest() != md5 and f"MD5 {h_md5.hexdigest()}, expected {md5}") or \
            (sha256 and h_sha.hexdigest() != sha256 and f"SHA-256 {h_sha.hexdigest()}, expected {sha256}")
        if problem:
            raise ValueError(f"{url}: {problem}")  # raised inside the writer: nothing is written
    record_fetched(dest.parent, dest.name)


# ---------------------------------------------------------------------------

def _load_local(idx_set: IDXSet, specs: List[FileSpec]) -> Tuple[Dict[str, np.ndarray], Optional[str]]:
    """The files of ``specs`` found, verified, in the first of ``idx_set.local_dirs`` that holds
    them all (read in place, never copied or changed)."""
    for d in idx_set.local_dirs:
        root = Path(d)
        if not all((root / s.name).exists() or (root / f"{s.name}.gz").exists() for s in specs):
            continue
        try:
            return {s.name: load_file(root, s, idx_set, discard_fetched=False) for s in specs}, d
        except idx_set.error as exc:
            logger.info("%s: %s", d, exc)
    return {}, None


def load_idx_set(idx_set: IDXSet, root: Path, download: bool, progress: bool,
                 fetch: Optional[Callable] = None) -> Tuple[Dict[str, np.ndarray], str]:
    """The verified arrays of ``idx_set`` (key → array) and where they came from.

    Sources, in order: ``root`` (plain or ``.gz`` files), the read-only ``local_dirs``, then, with
    ``download``, ``fetch(root, missing_specs, progress)`` (default: the mirrors) into ``root``.
    """
    found: Dict[str, np.ndarray] = {}
    for key, spec in idx_set.files.items():
        arr = load_file(root, spec, idx_set, discard_fetched=download)
        if arr is not None:
            found[key] = arr
    source = str(root)
    missing = [spec for key, spec in idx_set.files.items() if key not in found]
    if missing and idx_set.local_dirs:
        local, where = _load_local(idx_set, missing)
        if where is not None:
            by_name = {spec.name: key for key, spec in idx_set.files.items()}
            found.update({by_name[name]: arr for name, arr in local.items()})
            missing, source = [], where if len(missing) == len(idx_set.files) else f"{root} and {where}"
    if missing:
        if not download:
            raise idx_set.error(
                f"{idx_set.name} files missing from {root}: {', '.join(s.name for s in missing)} "
                f"(download=False).\n{manual_instructions(idx_set, root)}\nOr call it with download=True to fetch them.",
                root=root)
        root.mkdir(parents=True, exist_ok=True)  # only now: reading leaves no trace
        (fetch or _mirror_fetch(idx_set))(root, missing, progress)
        for key, spec in idx_set.files.items():
            if key not in found:
                arr = load_file(root, spec, idx_set, discard_fetched=False)
                if arr is None:  # pragma: no cover - fetch either wrote it or raised
                    raise idx_set.error(f"{spec.name} vanished from {root}", root=root)
                found[key] = arr
    return found, source


def idx_splits(arrays: Dict[str, np.ndarray]):
    """``((x_train, y_train), (x_test, y_test))`` from the four arrays: images NHWC uint8, labels int64."""
    def images(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape + (1,))

    return ((images(arrays["train_images"]), arrays["train_labels"].astype(np.int64)),
            (images(arrays["test_images"]), arrays["test_labels"].astype(np.int64)))


def _mirror_fetch(idx_set: IDXSet) -> Callable:
    def fetch(root, specs, progress):
        errors: List[Tuple[str, str]] = []
        remaining = fetch_from_mirrors(root, idx_set, specs, progress, errors)
        if remaining:
            raise_unavailable(idx_set, root, remaining, errors)
    return fetch


def raise_unavailable(idx_set: IDXSet, root: Path, remaining: List[FileSpec], errors) -> None:
    tried = "\n".join(f"  - {src}: {err}" for src, err in errors)
    raise idx_set.error(
        f"Could not obtain {idx_set.name} ({', '.join(s.name for s in remaining)} missing). "
        f"Sources tried:\n{tried}\n{manual_instructions(idx_set, root)}",
        errors=errors, root=root)


def manual_instructions(idx_set: IDXSet, root: Path) -> str:
    names = "\n".join(f"    {s.name}  (or {s.name}.gz)" for s in idx_set.files.values())
    where = "".join(f"\n  {m}<name>.gz" for m in idx_set.mirrors[:1])
    return (f"To install {idx_set.name} by hand, put these four files in {root}:\n{names}\n"
            f"(or pass root=... / --data-dir to the directory that holds them)."
            + (f" Download URL:{where}" if where else "") + (f"\n{idx_set.how_to_get}" if idx_set.how_to_get else ""))
