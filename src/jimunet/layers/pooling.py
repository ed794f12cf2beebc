"""Max and average pooling over NHWC windows (any size, stride, overlap, padding)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import xp_of
from ..functional.padding import conv_output_size, normalize_padding, pad_amounts, pad_nhwc, pair
from ..parallel import pfor
from .base import Layer, check_bool, register
from .conv import _fmt_pad


class MaxPoolCache(NamedTuple):
    """What ``MaxPool2D.backward`` needs: which cell of each window won (``winner``: the window
    offset in row-major order, in the smallest unsigned type that holds it; a training pass's)
    or the padded input and the output to find it from (an inference pass's, which keeps
    references only), the padding and the input's shape."""
    winner: object
    xpad: object
    y: object
    pads: tuple
    x_shape: tuple


class AvgPoolCache(NamedTuple):
    """What ``AvgPool2D.backward`` needs: shapes, the per-output divisors and the padding."""
    xpad_shape: tuple
    counts: object
    pads: tuple
    x_shape: tuple
    y_shape: tuple


class _Pool2D(Layer):
    kind = "Pool"
    per_sample = True

    def __init__(self, pool_size=2, stride=None, padding="valid"):
        self.pool_size = pair(pool_size, f"{type(self).__name__} pool_size")
        self.stride = self.pool_size if stride is None else pair(stride, f"{type(self).__name__} stride")
        self.padding = normalize_padding(padding, f"{type(self).__name__} padding")
        if isinstance(self.padding, tuple):
            for (a, b), k in zip(self.padding, self.pool_size):
                if 2 * a > k:
                    raise ValueError(f"{type(self).__name__}: explicit padding {a} exceeds half the window "
                                     f"{k}; a window could then see padding only")

    def describe(self):
        return f"{type(self).__name__}(pool_size={self.pool_size}, stride={self.stride}, " \
               f"padding={_fmt_pad(self.padding)})"

    def get_config(self):
        return {"pool_size": list(self.pool_size), "stride": list(self.stride),
                "padding": _fmt_pad(self.padding)}

    def _geometry(self, hw):
        pads = pad_amounts(hw, self.pool_size, self.stride, self.padding)
        out_hw = conv_output_size(hw, self.pool_size, self.stride, self.padding)
        if out_hw[0] < 1 or out_hw[1] < 1:
            raise ValueError(f"{self.describe()}: input of height x width {tuple(hw)} is smaller than the window")
        return pads, out_hw

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.describe()}: expected per-sample input (height, width, channels), "
                             f"got {tuple(input_shape)}")
        _, out_hw = self._geometry(input_shape[:2])
        return (*out_hw, input_shape[2])

    def flops(self, input_shape):
        oh, ow, c = self.output_shape(input_shape)
        return oh * ow * c * self.pool_size[0] * self.pool_size[1]

    def _slabs(self, out_hw):
        """Yield, for each window offset in row-major order, the strided slab of ``a`` it reads."""
        (kh, kw), (sh, sw), (oh, ow) = self.pool_size, self.stride, out_hw
        for i in range(kh):
            for j in range(kw):
                yield (slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))


@register
class MaxPool2D(_Pool2D):
    """Max pooling. On ties the gradient goes to ONE cell: the first maximum in row-major
    window order, as PyTorch and TensorFlow do (MNIST's flat backgrounds tie often).

    Args:
        pool_size: int or ``(ph, pw)``.
        stride: int or pair; defaults to ``pool_size``. Smaller strides overlap windows.
        padding: ``"valid"``, ``"same"`` (TensorFlow's rule) or an int / pair; padding
            cells are -inf, so they never win.

    Shape:
        ``(N, H, W, C)`` → ``(N, H_out, W_out, C)``.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> jn.layers.MaxPool2D(2)(np.arange(16.).reshape(1, 4, 4, 1))[0, :, :, 0]
        array([[ 5.,  7.],
               [13., 15.]])
    """

    def forward(self, x, training: bool = False):
        self._check_input(x, 4, None, "NHWC batch (batch, height, width, channels)")
        pads, (oh, ow) = self._geometry(x.shape[1:3])
        xp = xp_of(x)
        xpad = pad_nhwc(x, pads, -np.inf)
        y = xp.empty((x.shape[0], oh, ow, x.shape[3]), x.dtype)
        # Training keeps each window's winner, a byte per output, where the input and output it
        # could be found from are ~5x the output's bytes (a 2x2 pool): kept for a backward pass
        # that may never come, and at batch 1024 hundreds of MB.
        winner = xp.zeros(y.shape, self._winner_dtype()) if training else None

        def block(sl):
            yb, xb = y[sl], xpad[sl]
            wb = None if winner is None else winner[sl]
            if wb is not None:
                above, offset = xp.empty(yb.shape, bool), xp.empty_like(wb)
            for k, s in enumerate(self._slabs((oh, ow))):
                if k == 0:
                    yb[...] = xb[s]
                    continue
                if wb is not None:
                    # Strictly above: on ties the first maximum keeps the window. The offsets
                    # rise, so the winner is the largest k that was above (a max, where a
                    # masked copy costs 10x as much).
                    xp.greater(xb[s], yb, out=above)
                    xp.maximum(wb, xp.multiply(above, wb.dtype.type(k), out=offset), out=wb)
                xp.maximum(yb, xb[s], out=yb)
        pfor(block, x.shape[0], x.size, like=x, blas=False)
        self.cache = MaxPoolCache(winner, None if training else xpad, None if training else y, pads, x.shape)
        return y

    def _winner_dtype(self):
        return np.min_scalar_type(self.pool_size[0] * self.pool_size[1] - 1)  # uint8 up to 16x16 windows

    def _winners(self, xpad, y):
        """Each window's winner from an inference pass's input and output: its first cell equal to the max."""
        xp = xp_of(y)
        winner = xp.zeros(y.shape, self._winner_dtype())

        def block(sl):
            wb, xb, yb = winner[sl], xpad[sl], y[sl]
            found, hit, offset = xp.zeros(yb.shape, bool), xp.empty(yb.shape, bool), xp.empty_like(wb)
            for k, s in enumerate(self._slabs(y.shape[1:3])):
                xp.equal(xb[s], yb, out=hit)
                xp.greater(hit, found, out=hit)  # not found before
                xp.maximum(wb, xp.multiply(hit, wb.dtype.type(k), out=offset), out=wb)
                found |= hit
        pfor(block, y.shape[0], xpad.size, like=y, blas=False)
        return winner

    def backward(self, grad, input_grad: bool = True):
        if self.cache is None:
            raise self._no_forward()
        winner, xpad, y, pads, x_shape = self.cache
        if winner is None:
            winner = self._winners(xpad, y)
        self._check_grad(grad, winner.shape)
        xp = xp_of(grad)
        (pt, pb), (pl, pr) = pads
        pad_shape = (x_shape[0], x_shape[1] + pt + pb, x_shape[2] + pl + pr, x_shape[3])
        dxpad = xp.empty(pad_shape, dtype=grad.dtype)
        (kh, kw), (sh, sw), (oh, ow) = self.pool_size, self.stride, winner.shape[1:3]
        disjoint = sh >= kh and sw >= kw
        # Disjoint windows that tile the whole input write every cell exactly once.
        tiled = disjoint and (sh, sw) == (kh, kw) and pad_shape[1:3] == (oh * kh, ow * kw)

        def block(sl):
            dxb, wb, gb = dxpad[sl], winner[sl], grad[sl]
            if not tiled:
                dxb[...] = 0
            hit = xp.empty(wb.shape, bool)
            for k, s in enumerate(self._slabs((oh, ow))):
                xp.equal(wb, k, out=hit)
                if disjoint:
                    xp.multiply(gb, hit, out=dxb[s])
                else:
                    dxb[s] += gb * hit
        pfor(block, grad.shape[0], dxpad.size, like=grad, blas=False)
        return dxpad[:, pt:pt + x_shape[1], pl:pl + x_shape[2], :]


@register
class AvgPool2D(_Pool2D):
    """Average pooling.

    With ``"same"`` padding the padded cells are not counted (TensorFlow's rule), so every
    output is the mean of the real cells under its window. With explicit padding,
    ``count_include_pad`` chooses (PyTorch's default, True, counts them).

    Shape:
        ``(N, H, W, C)`` → ``(N, H_out, W_out, C)``.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> jn.layers.AvgPool2D(2)(np.ones((1, 4, 4, 3))).shape
        (1, 2, 2, 3)
    """

    def __init__(self, pool_size=2, stride=None, padding="valid", count_include_pad: bool = True):
        super().__init__(pool_size, stride, padding)
        self.count_include_pad = check_bool(type(self).__name__, "count_include_pad", count_include_pad)

    def get_config(self):
        return {**super().get_config(), "count_include_pad": self.count_include_pad}

    def _counts(self, x, pads, out_hw):
        """Per-output divisor, shape (1, out_h, out_w, 1)."""
        xp = xp_of(x)
        if self.padding == "same" or not self.count_include_pad:
            ones = pad_nhwc(xp.ones((1, x.shape[1], x.shape[2], 1), dtype=x.dtype), pads)
            return sum(ones[s] for s in self._slabs(out_hw))
        return xp.asarray(float(self.pool_size[0] * self.pool_size[1]), dtype=x.dtype)

    def forward(self, x, training: bool = False):
        self._check_input(x, 4, None, "NHWC batch (batch, height, width, channels)")
        pads, out_hw = self._geometry(x.shape[1:3])
        xpad = pad_nhwc(x, pads)
        y = None
        for s in self._slabs(out_hw):
            y = xpad[s].copy() if y is None else xp_of(x).add(y, xpad[s], out=y)
        counts = self._counts(x, pads, out_hw)
        y /= counts
        self.cache = AvgPoolCache(xpad.shape, counts, pads, x.shape, y.shape)
        return y

    def backward(self, grad, input_grad: bool = True):
        if self.cache is None:
            raise self._no_forward()
        xpad_shape, counts, pads, x_shape, y_shape = self.cache
        self._check_grad(grad, y_shape)
        dxpad = xp_of(grad).zeros(xpad_shape, dtype=grad.dtype)
        share = grad / counts
        for s in self._slabs(y_shape[1:3]):
            dxpad[s] += share
        (pt, _), (pl, _) = pads
        return dxpad[:, pt:pt + x_shape[1], pl:pl + x_shape[2], :]


@register
class GlobalAvgPool2D(Layer):
    """The mean of each channel over height and width: ``(N, H, W, C)`` → ``(N, C)``.

    Backward spreads each channel's gradient evenly: ``dx[n, h, w, c] = dy[n, c] / (H·W)``.
    It replaces Flatten before the classifier of a fully convolutional network, so the
    Dense layer's size no longer depends on the image size.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> jn.layers.GlobalAvgPool2D()(np.arange(8.).reshape(1, 2, 2, 2))
        array([[3., 4.]])
    """

    per_sample = True  # each sample's mean over its own pixels

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.describe()}: expected per-sample input (height, width, channels), "
                             f"got {tuple(input_shape)}")
        return (input_shape[2],)

    def flops(self, input_shape):
        return int(np.prod(input_shape))

    def forward(self, x, training: bool = False):
        self._check_input(x, 4, None, "NHWC batch (batch, height, width, channels)")
        self.cache = x.shape  # the input's shape
        xp = xp_of(x)
        y = xp.empty((x.shape[0], x.shape[3]), xp.result_type(x.dtype, 1.0))
        pfor(lambda sl: xp.mean(x[sl], axis=(1, 2), out=y[sl]), x.shape[0], x.size, like=x, blas=False)  # per sample
        return y

    def backward(self, grad, input_grad: bool = True):
        if self.cache is None:
            raise self._no_forward()
        n, h, w, c = self.cache
        self._check_grad(grad, (n, c))
        if not input_grad:
            return None
        dx = xp_of(grad).empty(self.cache, grad.dtype)
        share = (grad / (h * w))[:, None, None, :]

        def block(sl):
            dx[sl] = share[sl]
        pfor(block, n, dx.size, like=dx, blas=False)
        return dx
