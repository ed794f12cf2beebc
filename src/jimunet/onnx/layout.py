"""Every layout conversion between jimunet and ONNX, in one place.

jimunet: activations NHWC, conv weights HWIO ``(kh, kw, in, out)``, Dense weights
``(in, out)``, padding ``((top, bottom), (left, right))``, Flatten in NHWC order.
ONNX: activations NCHW, conv weights OIHW, ``pads = [top, left, bottom, right]``,
Flatten in the order of whatever tensor it is given.

A 4-D ONNX tensor is described by its *view* of the jimunet activation it holds: the axis
permutation ``v`` with ``onnx_tensor = jimunet_tensor.transpose(v)``. NCHW is ``(0, 3, 1, 2)``,
NHWC is ``(0, 1, 2, 3)``. A flattened ONNX tensor is described by an index array ``order``
with ``onnx_flat = jimunet_flat[:, order]``.
"""
from __future__ import annotations

import numpy as np

NHWC = (0, 1, 2, 3)
NCHW = (0, 3, 1, 2)            # as a view: onnx = jimunet.transpose(NCHW)
NHWC_TO_NCHW = (0, 3, 1, 2)    # Transpose perms
NCHW_TO_NHWC = (0, 2, 3, 1)


def conv_weight_to_onnx(w_hwio: np.ndarray) -> np.ndarray:
    """``(kh, kw, in, out)`` → ``(out, in, kh, kw)``."""
    return np.ascontiguousarray(np.asarray(w_hwio).transpose(3, 2, 0, 1))


def conv_weight_from_onnx(w_oihw: np.ndarray) -> np.ndarray:
    """``(out, in, kh, kw)`` → ``(kh, kw, in, out)``."""
    return np.ascontiguousarray(np.asarray(w_oihw).transpose(2, 3, 1, 0))


def pads_to_onnx(pads) -> list:
    """``((top, bottom), (left, right))`` → ``[top, left, bottom, right]``."""
    (t, b), (l, r) = pads
    return [int(t), int(l), int(b), int(r)]


def pads_from_onnx(pads) -> tuple:
    """``[top, left, bottom, right]`` → ``((top, bottom), (left, right))``."""
    t, l, b, r = (int(p) for p in pads)
    return (t, b), (l, r)


def compose(view, perm) -> tuple:
    """The view of ``tensor.transpose(perm)`` when ``tensor`` has ``view``."""
    return tuple(view[p] for p in perm)


def view_before(perm, wanted) -> tuple:
    """The view a tensor must have so that after ``transpose(perm)`` its view is ``wanted``."""
    view = [0] * len(perm)
    for i, p in enumerate(perm):
        view[p] = wanted[i]
    return tuple(view)


def flatten_order(jn_shape, view):
    """``order`` with ``flatten(onnx_tensor) = flatten(jimunet_tensor)[:, order]``.

    ``jn_shape`` is jimunet's per-sample shape, ``view`` the full-rank view (batch first).
    Returns None when the two flatten orders agree.
    """
    sample_view = [v - 1 for v in view[1:]]
    order = np.arange(int(np.prod(jn_shape, dtype=np.int64))).reshape(jn_shape).transpose(sample_view).ravel()
    return None if np.array_equal(order, np.arange(order.size)) else order


def dense_rows_from_onnx(w_in_out: np.ndarray, order) -> np.ndarray:
    """Rows of an ONNX ``(in, out)`` weight that reads ``onnx_flat``, rearranged to read
    ``jimunet_flat``: since ``onnx_flat[i] = jimunet_flat[order[i]]``, row ``i`` moves to ``order[i]``."""
    if order is None:
        return w_in_out
    out = np.empty_like(w_in_out)
    out[order] = w_in_out
    return out
