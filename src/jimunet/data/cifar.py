"""CIFAR-10 (Krizhevsky, 2009): 60,000 32×32 colour images in 10 classes, from the official
binary archive ``cifar-10-binary.tar.gz``, read straight from the .tar.gz (nothing unpacked to
disk, no pickles).

The archive holds ``cifar-10-batches-bin/data_batch_1.bin`` .. ``data_batch_5.bin`` (training,
10,000 images each), ``test_batch.bin`` and ``batches.meta.txt`` (the class names, one a line).
Each record is 1 label byte and 3,072 pixel bytes: the red, green and blue 32×32 planes.

Checksums: the MD5 is the one the CIFAR page publishes; the SHA-256 and the size are not
published by the authors, but recorded alike by third parties who downloaded the file; the
archive must match all three.
"""
from __future__ import annotations

import hashlib
import tarfile
import zlib
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from .download import DataUnavailableError, data_home, fetch_file

__all__ = ["load_cifar10", "read_cifar10_archive", "CIFAR10UnavailableError", "CLASS_NAMES", "URL", "ARCHIVE"]

Split = Tuple[np.ndarray, np.ndarray]

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE = "cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
SIZE = 170_052_171
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

FOLDER = "cifar-10-batches-bin"
TRAIN_MEMBERS = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_MEMBER = "test_batch.bin"
META_MEMBER = "batches.meta.txt"
RECORDS_PER_BATCH = 10_000
RECORD = 1 + 3 * 32 * 32


class CIFAR10UnavailableError(DataUnavailableError):
    """CIFAR-10's archive is missing, fails its checksum, or is damaged."""


def default_root() -> Path:
    """``~/.cache/jimunet/cifar10``: where the archive is looked for and downloaded to."""
    return data_home() / "cifar10"


def _checksums(path: Path) -> Tuple[int, str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
            n += len(chunk)
    return n, md5.hexdigest(), sha.hexdigest()


def verify_archive(path: Path) -> None:
    """CIFAR10UnavailableError unless ``path`` has the official size, MD5 and SHA-256."""
    n, md5, sha = _checksums(path)
    problem = (n != SIZE and f"{n} bytes, expected {SIZE}") or (md5 != MD5 and f"MD5 {md5}, expected {MD5}") or \
        (sha != SHA256 and f"SHA-256 {sha}, expected {SHA256}")
    if problem:
        raise CIFAR10UnavailableError(
            f"{path} is not the official {ARCHIVE} ({problem}): a partial or damaged download? jimunet leaves "
            f"it as it is; move it elsewhere and download {URL} again.", root=path.parent)


def _records(data: bytes, name: str, path: Path) -> Tuple[np.ndarray, np.ndarray]:
    expected = RECORDS_PER_BATCH * RECORD
    if len(data) != expected:
        raise CIFAR10UnavailableError(f"{path}: {FOLDER}/{name} has {len(data)} bytes, expected {expected} "
                                      f"({RECORDS_PER_BATCH} records of {RECORD} bytes)", root=path.parent)
    rec = np.frombuffer(data, np.uint8).reshape(RECORDS_PER_BATCH, RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise CIFAR10UnavailableError(f"{path}: {FOLDER}/{name} has labels up to {int(labels.max())}, expected 0..9",
                                      root=path.parent)
    # Each record's pixels are the R, G, B planes (CHW); images are HWC.
    images = np.ascontiguousarray(rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def read_cifar10_archive(path) -> Tuple[Tuple[Split, Split], Tuple[str, ...]]:
    """``(((x_train, y_train), (x_test, y_test)), class_names)`` from a ``cifar-10-binary.tar.gz``,
    streamed (members in any order, each read once; nothing written to disk; no checksum check).

    Raises CIFAR10UnavailableError for a truncated or damaged archive, a missing member, or a
    member of the wrong size, naming the file.
    """
    path = Path(path)
    wanted = {f"{FOLDER}/{m}" for m in (*TRAIN_MEMBERS, TEST_MEMBER, META_MEMBER)}
    found: Dict[str, object] = {}
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                if member.name not in wanted or member.name in found:
                    continue
                if not member.isfile():
                    raise CIFAR10UnavailableError(f"{path}: {member.name} is not a regular file", root=path.parent)
                data = tar.extractfile(member).read()
                name = member.name.split("/", 1)[1]
                found[member.name] = data.decode("utf-8", "replace") if name == META_MEMBER \
                    else _records(data, name, path)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise CIFAR10UnavailableError(f"{path}: truncated or damaged archive ({e or 'unexpected end of data'}); "
                                      f"expected the official {ARCHIVE} from {URL}", root=path.parent) from None
    missing = sorted(wanted - set(found))
    if missing:
        raise CIFAR10UnavailableError(f"{path}: the archive lacks {', '.join(missing)}; expected the official "
                                      f"{ARCHIVE} from {URL}", root=path.parent)
    names = tuple(line.strip() for line in found[f"{FOLDER}/{META_MEMBER}"].splitlines() if line.strip())
    if len(names) != 10:
        raise CIFAR10UnavailableError(f"{path}: {META_MEMBER} names {len(names)} classes, expected 10",
                                      root=path.parent)
    train = [found[f"{FOLDER}/{m}"] for m in TRAIN_MEMBERS]
    x = np.concatenate([b[0] for b in train])
    y = np.concatenate([b[1] for b in train])
    return ((x, y), found[f"{FOLDER}/{TEST_MEMBER}"]), names


def load_cifar10(root=None, download: bool = True, progress: bool = True) -> Tuple[Split, Split]:
    """Load CIFAR-10: ``((x_train, y_train), (x_test, y_test))``, images uint8 NHWC.

    Args:
        root: directory of ``cifar-10-binary.tar.gz`` (default ``~/.cache/jimunet/cifar10``).
        download: when it is missing there, download it from ``URL`` (162 MB) into ``root``.
        progress: show a download progress bar.

    Returns:
        ``x_train`` uint8 ``(50000, 32, 32, 3)``, ``y_train`` int64 ``(50000,)`` (class
        ``CLASS_NAMES[k]``), ``x_test`` uint8 ``(10000, 32, 32, 3)``, ``y_test`` int64.

    Raises:
        CIFAR10UnavailableError: (a ``RuntimeError``) the archive is missing (and ``download``
            is off or failed), fails its checksum, or is damaged; a user's file is never changed.

    Example:
        >>> (x, y), (xt, yt) = load_cifar10()  # doctest: +SKIP
        >>> x.shape, CLASS_NAMES[y[0]]         # doctest: +SKIP
        ((50000, 32, 32, 3), 'frog')
    """
    return load_cifar10_with_names(root, download, progress)[0]


def load_cifar10_with_names(root=None, download: bool = True, progress: bool = True):
    """``(load_cifar10's result, class names from the archive, the archive's path)``."""
    root = Path(root).expanduser() if root is not None else default_root()
    path = root / ARCHIVE
    if not path.exists():
        if not download:
            raise CIFAR10UnavailableError(
                f"{path} is missing (download=False). Download {URL} (162 MB, MD5 {MD5}) into {root}, "
                "or call it with download=True.", root=root)
        root.mkdir(parents=True, exist_ok=True)
        try:
            fetch_file(URL, path, md5=MD5, sha256=SHA256, size=SIZE, progress=progress)
        except (OSError, ValueError) as e:
            raise CIFAR10UnavailableError(
                f"Could not download CIFAR-10: {URL}: {e}\nDownload it by hand into {root} "
                f"(MD5 {MD5}).", errors=[(URL, str(e))], root=root) from None
    verify_archive(path)
    splits, names = read_cifar10_archive(path)
    return splits, names, path
