"""Every layout conversion between jimunet and ONNX, in one place.

jimunet: activations NHWC, conv weights HWIO ``(kh, kw, in, out)``, Dense weights
``(in, out)``, padding ``((top, bottom), (left, right))``, Flatten in NHWC order.
ONNX: activations NCHW, conv weights OIHW, ``pads = [top, left, bottom, right]``,
Flatten in the order of whatever tensor it is given.

A 4-D ONNX tensor is described by its *view* of the jimunet activation it holds: the axis
permutation ``v`` with ``onnx_tensor = jimunet_tensor.transpose(v)``. NCHW is ``(0, 3, 1, 2)``,
NHWC is ``(0, 1, 2, 3)``. A flattened ONNX tensor is described by how its features are
ordered (``flatten_order``), a few ints however large the tensor.
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
    """How ``flatten(onnx_tensor)`` orders ``flatten(jimunet_tensor)``'s features, or None when alike.

    ``jn_shape`` is jimunet's per-sample shape, ``view`` the full-rank view (batch first).
    The order is returned as ``(jn_shape, sample_view)``, a description of a few ints: no
    index array is made, so a declared shape of any size costs nothing (``dense_rows_from_onnx``
    applies it to the weights that read the flat tensor). The two flatten orders agree when
    the axes of more than one element come in the same order in both views.
    """
    jn_shape = tuple(int(d) for d in jn_shape)
    sample_view = tuple(v - 1 for v in view[1:])
    moved = [a for a in sample_view if jn_shape[a] != 1]
    return None if moved == sorted(moved) else (jn_shape, sample_view)


def dense_rows_from_onnx(w_in_out: np.ndarray, order) -> np.ndarray:
    """Rows of an ONNX ``(in, out)`` weight that reads ``onnx_flat``, rearranged to read ``jimunet_flat``.

    ``order`` is ``flatten_order``'s: row ``i`` of ``w_in_out`` is the feature at ONNX position
    ``i`` of the per-sample tensor of shape ``jn_shape`` transposed by ``sample_view``. Viewed as
    that transposed shape plus the output axis, the weight is transposed back, one copy of the
    weight and no index arrays. ``in`` must be ``prod(jn_shape)``.
    """
    if order is None:
        return w_in_out
    jn_shape, sample_view = order
    n_in, n_out = w_in_out.shape
    onnx_shape = [jn_shape[a] for a in sample_view]
    back = [int(j) for j in np.argsort(sample_view)] + [len(sample_view)]
    rows = np.asarray(w_in_out).reshape(*onnx_shape, n_out).transpose(back)
    return np.ascontiguousarray(rows).reshape(n_in, n_out)
