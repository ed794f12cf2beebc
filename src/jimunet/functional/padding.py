"""Padding rules shared by convolution and pooling (TensorFlow's ``"same"``/``"valid"``)."""
from __future__ import annotations

from .._messages import shown
from ..backend import xp_of


MAX_SIZE = 2 ** 31 - 1  # any one size, stride or padding: beyond it index arithmetic overflows


def pair(v, what: str = "value"):
    """``v`` as a pair of positive ints (an int ``k`` means ``(k, k)``)."""
    if isinstance(v, bool):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {shown(v)}")
    if isinstance(v, int):
        v = (v, v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {shown(v)}") from None
    if not (isinstance(a, int) and isinstance(b, int)) or isinstance(a, bool) or isinstance(b, bool) or \
            not (1 <= a <= MAX_SIZE and 1 <= b <= MAX_SIZE):
        raise ValueError(f"{what} must be a positive int or a pair of them (at most {MAX_SIZE:,}), got {shown(v)}")
    return int(a), int(b)


def normalize_padding(padding, what: str = "padding"):
    """``"same"``, ``"valid"``, or explicit symmetric padding ``((top, bottom), (left, right))``.

    ``what`` names the argument in error messages (e.g. ``"Conv2D padding"``).
    """
    if isinstance(padding, str):
        p = padding.lower()
        if p not in ("same", "valid"):
            raise ValueError(f'{what} must be "same", "valid", an int or a pair of ints, got {padding!r}')
        return p
    original = padding
    if isinstance(padding, int) and not isinstance(padding, bool):
        padding = (padding, padding)
    if isinstance(padding, (list, tuple)) and len(padding) == 2 and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and p[0] == p[1] for p in padding):
        padding = (padding[0][0], padding[1][0])  # the ((top, bottom), (left, right)) form get_config writes
    try:
        ph, pw = padding
        ok = all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SIZE for v in (ph, pw))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f'{what} must be "same", "valid", an int or a pair of ints from 0 to {MAX_SIZE:,}, got '
                         f'{shown(original)}')
    return ((ph, ph), (pw, pw))


def _axis_pad(n: int, k: int, s: int, padding, axis: int):
    if padding == "valid":
        return 0, 0
    if padding == "same":
        # TensorFlow: out = ceil(n/s); total = max((out-1)*s + k - n, 0); smaller half first.
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        return total // 2, total - total // 2
    return padding[axis]


def pad_amounts(in_hw, kernel, stride, padding):
    """``((top, bottom), (left, right))`` for an input of spatial size ``in_hw``."""
    (h, w), (kh, kw), (sh, sw) = in_hw, kernel, stride
    return _axis_pad(h, kh, sh, padding, 0), _axis_pad(w, kw, sw, padding, 1)


def conv_output_size(in_hw, kernel, stride, padding):
    """Spatial output size ``(out_h, out_w)`` of a convolution or pooling window."""
    (pt, pb), (pl, pr) = pad_amounts(in_hw, kernel, stride, padding)
    h, w = in_hw[0] + pt + pb, in_hw[1] + pl + pr
    (kh, kw), (sh, sw) = kernel, stride
    return (h - kh) // sh + 1, (w - kw) // sw + 1


def pad_nhwc(x, pads, value=0.0):
    """``x`` with ``((top, bottom), (left, right))`` rows/columns of ``value`` around H and W
    (``x`` itself when there is nothing to add)."""
    (pt, pb), (pl, pr) = pads
    if not (pt or pb or pl or pr):
        return x
    n, h, w, c = x.shape
    out = xp_of(x).full((n, h + pt + pb, w + pl + pr, c), value, dtype=x.dtype)
    out[:, pt:pt + h, pl:pl + w, :] = x
    return out
