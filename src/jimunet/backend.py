"""The one place that knows which array module is in use, and on which device.

Every other module asks ``xp_of(array)`` for the module that owns an array, so the
same layer code runs on NumPy and on CuPy (NumPy's API on NVIDIA GPUs), the way
Chainer's ``get_array_module`` does. Devices are named like PyTorch's: ``"cpu"``,
``"cuda"`` (the current GPU) or ``"cuda:N"``.
"""
from __future__ import annotations

import numpy as np

from ._messages import shown

try:  # CuPy is an optional extra ("gpu"); NumPy alone is the default.
    import cupy as _cupy  # type: ignore
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None

GPU_INSTALL_HINT = ('pip install "jimunet[gpu]" for CUDA 12, or "jimunet[gpu-cuda13]" for CUDA 13 '
                    "(nvidia-smi shows the CUDA version of the driver)")


class DeviceError(ValueError):
    """A device that cannot be used here (a bad name, CuPy missing, no GPU)."""


def use_device_module(module):
    """Make ``module`` the array module of the ``"cuda"`` devices; returns the one it replaces.

    For tests: tests/strict_xp.py is a CuPy stand-in (NumPy underneath, refusing implicit
    host/device conversion like CuPy), so the device code runs in CI without a GPU. ``module``
    needs CuPy's ``ndarray``, ``asarray``, ``asnumpy``, ``cuda.Device``,
    ``cuda.runtime.getDeviceCount``, ``random.default_rng`` and ``lib.stride_tricks``.
    ``None`` means no GPU module. By default it is CuPy when installed.
    """
    global _cupy
    previous, _cupy = _cupy, module
    return previous


def xp_of(*arrays):
    """Return the array module (``numpy`` or ``cupy``) that owns the given arrays."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def all_finite(arrays) -> bool:
    """Whether every value of every array (on one device) is finite. One value is read back from
    the device however many arrays there are: on a GPU every read waits for the device."""
    arrays = list(arrays)
    if not arrays:
        return True
    xp = xp_of(arrays[0])
    return bool(xp.stack([xp.isfinite(a).all() for a in arrays]).all())


def parse_device(device) -> tuple[str, int]:
    """``("cpu", 0)`` or ``("cuda", N)`` for a device name; DeviceError for anything else."""
    name = str(device).strip().lower() if isinstance(device, str) else None
    if name == "cpu":
        return "cpu", 0
    if name is not None and (name == "cuda" or name.startswith("cuda:")):
        index = name[5:] if name.startswith("cuda:") else "0"
        if index.isdigit():
            return "cuda", int(index)
    raise DeviceError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {shown(device)}")


def check_device(device) -> str:
    """The canonical name of a usable device (``"cpu"`` or ``"cuda:N"``).

    Raises DeviceError saying what to install or check when the device is a GPU and CuPy
    is missing, or no NVIDIA GPU (or not GPU N) can be used. Never falls back silently.
    """
    kind, index = parse_device(device)
    if kind == "cpu":
        return "cpu"
    if _cupy is None:
        raise DeviceError(f"device {device!r} needs CuPy, which is not installed: {GPU_INSTALL_HINT}")
    try:
        count = _cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, no GPU, a CUDA version the driver does not support
        raise DeviceError(f"device {device!r}: CuPy is installed but cannot use a GPU ({str(e) or 'no details'}); "
                          f"check nvidia-smi, and that the CuPy build matches the driver's CUDA: "
                          f"{GPU_INSTALL_HINT}") from None
    if index >= count:
        raise DeviceError(f"device {device!r}: this machine has {count} NVIDIA GPU{'s' if count != 1 else ''}")
    return f"cuda:{index}"


def device_of(a) -> str:
    """``"cpu"`` for a NumPy array, ``"cuda:N"`` for a CuPy array on GPU N."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return f"cuda:{a.device.id}"
    return "cpu"


def to_device(a, device):
    """``a`` as an array on ``device`` (the array itself when it is already there)."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return to_numpy(a)
    check_device(device)
    if device_of(a) == f"cuda:{index}":
        return a
    with _cupy.cuda.Device(index):
        return _cupy.asarray(a)


def asarray(a, dtype=None, xp=None, device=None):
    """Convert ``a`` to an array of module ``xp`` (default: the one that owns ``a``), or onto ``device``."""
    if device is not None:
        a = to_device(a, device)
    xp = xp or xp_of(a)
    if xp is np:
        return xp.asarray(a, dtype=dtype)
    with _cupy.cuda.Device(a.device.id if isinstance(a, _cupy.ndarray) else None):
        return xp.asarray(a, dtype=dtype)  # on a's GPU: CuPy copies another GPU's array to the current one


def to_numpy(a) -> np.ndarray:
    """Return ``a`` as a NumPy array (copying from the GPU when needed)."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def uniform(rng: np.random.Generator, shape, dtype, like):
    """Uniform [0, 1) numbers of ``shape`` on ``like``'s device, all determined by ``rng``.

    On the CPU they are ``rng.random``'s. On a GPU they are drawn there (no host-to-device
    copy of the numbers) by a generator seeded from one draw of ``rng``, so the host
    Generator's state still fixes everything: same seed, same device, same numbers, and
    a checkpoint of ``rng`` resumes them exactly.
    """
    if xp_of(like) is np:
        return rng.random(shape, dtype=dtype)
    with _cupy.cuda.Device(like.device.id):
        return _cupy.random.default_rng(int(rng.integers(0, 2 ** 63 - 1))).random(shape, dtype=dtype)


def as_strided(x, shape, strides):
    """``as_strided`` for whichever module owns ``x`` (a read-only view)."""
    if xp_of(x) is np:
        return np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides, writeable=False)
    return _cupy.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)  # pragma: no cover
