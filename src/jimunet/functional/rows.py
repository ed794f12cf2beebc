"""Elementwise ufunc calls with a per-channel vector, laid out for NumPy's fast loops.

NumPy runs a ufunc as an outer loop over an inner one. With a (C,) vector broadcast over the
rows of a (rows, C) array, the inner loop covers C values, and a call per row of 16 or 32
values costs more than the arithmetic: ``multiply`` of a 28×28×16 batch block by a (16,)
vector took 2.6× as long as the same product with the vector tiled to 1,024 values and the
block seen as rows of 1,024 (and ``maximum(x, 0)``, a scalar broadcast, 4.6× as long as
against a row of zeros). Each value's arithmetic is the same either way, so the results are
bit for bit those of the plain broadcast.
"""
from __future__ import annotations

import numpy as np

from ..backend import xp_of

LONG_ROW = 1024  # values per row of the long layout


def long_vector(v):
    """``v`` (C,) tiled to about ``LONG_ROW`` values, for ``per_channel``'s ``vt``."""
    xp = xp_of(v)
    k = max(1, LONG_ROW // max(1, v.size))
    out = xp.empty((k, v.size), v.dtype)
    out[...] = v  # np.tile's Python costs ~10 µs a call; a layer makes several per pass
    return out.reshape(-1)


def per_channel(ufunc, a, v, out, vt=None):
    """``ufunc(a, v, out=out)`` for a (rows, C) array ``a`` and a (C,) vector ``v``, bit for bit.

    Whole groups of k = len(vt) // C rows go through as rows of k·C values against ``vt``
    (``long_vector(v)``, which callers that run this per block make once); the last
    rows % k rows against ``v``. ``out`` must be C-contiguous (a block of rows of a C-contiguous
    array is); ``a`` may be ``out``. Arrays off the CPU take the plain call.
    """
    if vt is None:
        vt = long_vector(v)
    rows, c = a.shape
    k = vt.shape[0] // max(1, c)
    if k <= 1 or xp_of(a) is not np or not out.flags.c_contiguous:
        ufunc(a, v, out=out)
        return out
    whole = rows - rows % k
    if whole:
        ufunc(a[:whole].reshape(-1, k * c), vt, out=out[:whole].reshape(-1, k * c))
    if whole < rows:
        ufunc(a[whole:], v, out=out[whole:])
    return out


def relu_into(x, out):
    """``maximum(x, 0, out=out)`` for any contiguous ``x``, bit for bit (NaN and -0.0 included),
    against a row of zeros instead of the slow scalar loop."""
    if xp_of(x) is not np or not (x.flags.c_contiguous and out.flags.c_contiguous):
        return xp_of(x).maximum(x, 0, out=out)
    zeros = _zeros(out.dtype)
    per_channel(np.maximum, x.reshape(-1, 1), zeros[:1], out.reshape(-1, 1), zeros)
    return out


_ZERO_ROWS: dict = {}


def _zeros(dtype):
    dtype = np.dtype(dtype)
    if dtype not in _ZERO_ROWS:
        _ZERO_ROWS[dtype] = np.zeros(LONG_ROW, dtype)
    return _ZERO_ROWS[dtype]
