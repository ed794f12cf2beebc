"""The one place that knows which array module is in use.

Every other module asks ``xp_of(array)`` for the module that owns an array, so the
same layer code runs on NumPy today and on CuPy (a drop-in GPU array library) once
it is installed, the way Chainer's ``get_array_module`` does.
"""
from __future__ import annotations

import numpy as np

try:  # CuPy is an optional extra ("gpu"); NumPy alone is the default.
    import cupy as _cupy  # type: ignore
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None


def xp_of(*arrays):
    """Return the array module (``numpy`` or ``cupy``) that owns the given arrays."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def asarray(a, dtype=None, xp=None):
    """Convert ``a`` to an array of module ``xp`` (default: the one that owns ``a``)."""
    xp = xp or xp_of(a)
    return xp.asarray(a, dtype=dtype)


def to_numpy(a) -> np.ndarray:
    """Return ``a`` as a NumPy array (copying from the GPU when needed)."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def as_strided(x, shape, strides):
    """``as_strided`` for whichever module owns ``x`` (a read-only view)."""
    if xp_of(x) is np:
        return np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides, writeable=False)
    return _cupy.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)  # pragma: no cover
