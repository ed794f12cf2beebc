"""2-D convolution on NHWC activations with HWIO weights, by im2col and one GEMM."""
from __future__ import annotations

import numpy as np

from .. import init as _init
from ..backend import xp_of
from ..functional.im2col import im2col
from ..functional.padding import conv_output_size, normalize_padding, pad_amounts, pair
from ..parallel import paccumulate_tmatmul, pfor
from ..random import resolve_rng
from .base import Layer, check_dtype_arg, register


class _Workspace:
    """Scratch arrays kept between calls, keyed by name, reused while shape and dtype match.

    Re-allocating a 40 MB im2col matrix every step costs page faults worth ~10% of a
    training step; these buffers never leave the layer, so reusing them is safe.
    """

    def __init__(self):
        self._bufs = {}

    def buffer(self, name, shape, dtype, xp, zeros: bool = False):
        """The buffer kept under ``name`` if it still fits, else a new one (zero-filled if asked)."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or xp_of(buf) is not xp:
            buf = self._bufs[name] = (xp.zeros if zeros else xp.empty)(shape, dtype)
        return buf

    def __deepcopy__(self, memo):  # copies of a layer start with empty scratch space
        return _Workspace()


def _fmt_pad(padding):
    return padding if isinstance(padding, str) else [list(padding[0]), list(padding[1])]


@register
class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in TensorFlow and PyTorch).

    Forward copies every window into a row of an im2col matrix and multiplies it once by
    the weight reshaped to ``(kh*kw*in, out)``. Backward: ``dW = colsᵀ·dY``,
    ``db = Σ dY`` and ``dX`` = for each kernel offset, ``dY·W[i,j]ᵀ`` added into the
    shifted input slab that offset read from.

    Args:
        in_channels: channels of the input (its last axis).
        out_channels: number of filters.
        kernel_size: int or ``(kh, kw)``; odd and even sizes both work.
        stride: int or ``(sh, sw)``, each ≥ 1.
        padding: ``"same"`` (TensorFlow's rule: output ``ceil(n/stride)``, the smaller half of
            the padding before), ``"valid"`` (none), or an int / pair of zero rows per side.
        use_bias: add a learned bias per output channel.
        weight_init, bias_init: initialisers (see ``jimunet.init``) or their names.
        rng: Generator (or int seed) for the initial weights; default ``jn.set_seed``'s.
        dtype: parameter dtype, float32 by default.

    Shape:
        input ``(N, H, W, in_channels)`` → output ``(N, H_out, W_out, out_channels)``;
        weight ``(kh, kw, in_channels, out_channels)``, bias ``(out_channels,)``.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> conv = jn.layers.Conv2D(1, 32, 5)
        >>> conv(np.zeros((2, 28, 28, 1), np.float32)).shape
        (2, 28, 28, 32)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding="same",
                 use_bias: bool = True, weight_init="glorot_uniform", bias_init="zeros", rng=None,
                 dtype=np.float32):
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Conv2D: {name} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "Conv2D kernel_size")
        self.stride = pair(stride, "Conv2D stride")
        self.padding = normalize_padding(padding, "Conv2D padding")
        self.use_bias = bool(use_bias)
        self.weight_init, self.bias_init = _init.get(weight_init), _init.get(bias_init)
        dtype = check_dtype_arg(dtype)
        rng = resolve_rng(rng)
        kh, kw = self.kernel_size
        self.weight = self._new_parameter(self.weight_init, (kh, kw, self.in_channels, self.out_channels), rng,
                                          dtype, "weight")
        self.bias = self._new_parameter(self.bias_init, (self.out_channels,), rng, dtype, "bias") \
            if use_bias else None
        self._cache = None
        self._work = _Workspace()

    def describe(self) -> str:
        kh, kw = self.kernel_size
        return f"Conv2D({self.in_channels}->{self.out_channels}, {kh}x{kw}, stride={self.stride}, " \
               f"padding={_fmt_pad(self.padding)})"

    def parameters(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def _geometry(self, hw):
        pads = pad_amounts(hw, self.kernel_size, self.stride, self.padding)
        out_hw = conv_output_size(hw, self.kernel_size, self.stride, self.padding)
        if out_hw[0] < 1 or out_hw[1] < 1:
            raise ValueError(f"{self.describe()}: input of height x width {tuple(hw)} is smaller than the "
                             f"{self.kernel_size[0]}x{self.kernel_size[1]} kernel after padding")
        return pads, out_hw

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] != self.in_channels:
            raise ValueError(f"{self.describe()}: expected per-sample input (height, width, "
                             f"{self.in_channels}), got {tuple(input_shape)}")
        _, out_hw = self._geometry(input_shape[:2])
        return (*out_hw, self.out_channels)

    def flops(self, input_shape):
        oh, ow, o = self.output_shape(input_shape)
        kh, kw = self.kernel_size
        return 2 * oh * ow * o * kh * kw * self.in_channels + (oh * ow * o if self.use_bias else 0)

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": _fmt_pad(self.padding), "use_bias": self.use_bias,
                "dtype": str(self.weight.data.dtype)}

    def forward(self, x, training: bool = False):
        self._check_input(x, 4, self.in_channels, "NHWC batch (batch, height, width, channels)")
        xp = xp_of(x)
        n, h, w, c = x.shape
        pads, (oh, ow) = self._geometry((h, w))
        (pt, pb), (pl, pr) = pads
        kh, kw = self.kernel_size
        pad_shape = (n, h + pt + pb, w + pl + pr, c)
        padded = pad_shape != x.shape
        # The padded input and the im2col matrix live in reused scratch buffers; the border
        # of the padded buffer is zeroed once and only its interior is rewritten.
        xpad = self._work.buffer("xpad", pad_shape, x.dtype, xp, zeros=True) if padded else x
        rows = oh * ow
        cols = self._work.buffer("cols", (n * rows, kh * kw * c), x.dtype, xp)
        w2 = self.weight.data.reshape(-1, self.out_channels)
        y = xp.empty((n * rows, self.out_channels), np.result_type(x.dtype, w2.dtype))

        def block(sl):  # samples sl: pad, im2col, GEMM, bias; each writes only its own rows
            r = slice(sl.start * rows, sl.stop * rows)
            if padded:
                xpad[sl, pt:pt + h, pl:pl + w, :] = x[sl]
            im2col(xpad[sl], self.kernel_size, self.stride, (oh, ow), out=cols[r])
            xp.matmul(cols[r], w2, out=y[r])
            if self.bias is not None:
                y[r] += self.bias.data
        pfor(block, n, cols.size, like=x)
        self._cache = (cols, x.shape, pad_shape, pads, (oh, ow))
        return y.reshape(n, oh, ow, self.out_channels)

    def backward(self, grad, input_grad: bool = True):
        if self._cache is None:
            raise self._no_forward()
        cols, x_shape, xpad_shape, pads, (oh, ow) = self._cache
        n = x_shape[0]
        self._check_grad(grad, (n, oh, ow, self.out_channels))
        xp = xp_of(grad)
        dy = grad.reshape(-1, self.out_channels)
        paccumulate_tmatmul(cols, dy, self.weight.grad.reshape(cols.shape[1], self.out_channels),
                            b_sum_out=None if self.bias is None else self.bias.grad)
        if not input_grad:
            return None
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        c, rows, w = self.in_channels, oh * ow, self.weight.data
        dxpad = xp.empty(xpad_shape, dtype=np.result_type(grad.dtype, w.dtype))

        def block(sl):
            # dX is a sum over kernel offsets: the slab each offset read gets dY·W[i,j]ᵀ.
            # Small GEMMs straight into the slabs avoid a (rows × kh·kw·C) dcols buffer.
            dxb = dxpad[sl]
            dxb[...] = 0
            dyb = dy[sl.start * rows:sl.stop * rows]
            m = sl.stop - sl.start
            for i in range(kh):
                for j in range(kw):
                    dxb[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] += \
                        xp.matmul(dyb, w[i, j].T).reshape(m, oh, ow, c)
        pfor(block, n, dy.size * kh * kw, like=dy)
        (pt, _), (pl, _) = pads
        return dxpad[:, pt:pt + x_shape[1], pl:pl + x_shape[2], :]
