"""Elementwise activations: ReLU, GELU, LeakyReLU, Sigmoid, Tanh."""
from __future__ import annotations

import math

from ..backend import xp_of
from ..functional.rows import relu_into
from ..parallel import pfor
from .base import Layer, check_number, register


#: Whether ``Sequential`` and ``Model`` run a ``BatchNorm`` or an ``Add`` and the ``ReLU`` (or
#: ``GELU``) that reads its output as one pass over memory (``fused_relu``). The results are bit
#: for bit those of the two layers run one after the other; tests turn it off to show that.
FUSE_RELU = True


def fused_relu(layer, following) -> bool:
    """Whether ``layer.forward_relu(x, training, following)`` may stand for ``layer``'s forward
    then ``following``'s, when nothing else reads ``layer``'s output (the ReLU overwrites it)."""
    return FUSE_RELU and type(following) in (ReLU, GELU) and hasattr(layer, "forward_relu")


class _Elementwise(Layer):
    """An activation: ``_forward(x)`` gives the output and the one array ``_backward`` needs
    (the input or the output), which is the layer's ``cache``."""

    per_sample = True
    activation = True

    def flops(self, input_shape):
        return math.prod(input_shape)

    def forward(self, x, training: bool = False):
        self._check_input(x)
        y, self.cache = self._forward(x)
        return y

    def backward(self, grad, input_grad: bool = True):
        if self.cache is None:
            raise self._no_forward()
        self._check_grad(grad, self.cache.shape)
        return self._backward(grad, self.cache)


class _ByRows(_Elementwise):
    """An activation whose forward pass is ``rows_forward``, run block by block on the threads;
    the same blocks let a ``BatchNorm`` or ``Add`` before it run it in place (``fused_relu``)."""

    def forward(self, x, training: bool = False):
        self._check_input(x)
        y = xp_of(x).empty_like(x)
        pfor(self.rows_forward(x, y, training), x.shape[0], x.size, like=x, blas=False)
        return y


@register
class ReLU(_ByRows):
    """``max(x, 0)``; gradient passes where the input was positive.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> jn.layers.ReLU()(np.array([-1.0, 2.0]))
        array([0., 2.])
    """

    def rows_forward(self, x, y, training: bool, shape=None):
        """This layer's forward pass of ``x`` into ``y`` (``x`` itself for in place), done piece
        by piece: returns ``fn(rows)`` that computes ``y[rows]``; every piece must be run. Sets
        the cache, of ``shape`` (the layer's input shape, when ``x`` is a reshaped view).

        ``BatchNorm`` and ``Add`` followed by a ReLU run it on each block of their output while
        that block is in cache (``fused_relu``)."""
        xp = xp_of(x)
        # Training keeps where x > 0 (a byte per value), not the output: the next layer may not
        # keep it (a Winograd conv keeps its transformed input, a max pool its winners).
        positive = xp.empty(x.shape, bool) if training else None

        def block(rows):
            if positive is not None:  # before the ReLU: y may be x
                xp.greater(x[rows], 0, out=positive[rows])
            relu_into(x[rows], y[rows])
        shape = x.shape if shape is None else shape
        self.cache = y.reshape(shape) if positive is None else positive.reshape(shape)
        self._out_dtype = y.dtype
        return block

    def _backward(self, grad, kept):
        xp = xp_of(grad)
        dx = xp.empty(grad.shape, xp.result_type(grad.dtype, self._out_dtype))
        pfor(lambda sl: xp.multiply(grad[sl], kept[sl] if kept.dtype == bool else kept[sl] > 0, out=dx[sl]),
             grad.shape[0], grad.size, like=grad, blas=False)
        return dx


#: GELU's tanh form: ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`` (Hendrycks & Gimpel, 2016).
GELU_C, GELU_K = math.sqrt(2.0 / math.pi), 0.044715


def _gelu_inner_tanh(x):
    """``tanh(√(2/π)·x·(1 + 0.044715·x²))``, a new array."""
    xp = xp_of(x)
    t = xp.multiply(x, x)
    t *= GELU_C * GELU_K
    t += GELU_C
    t *= x
    return xp.tanh(t, out=t)


@register
class GELU(_ByRows):
    """``x·Φ(x)`` in its tanh form, ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))``: PyTorch's
    ``GELU(approximate="tanh")``, as BERT and GPT-2 have it. A smooth ReLU: it lets a little of
    the negative inputs through and has a gradient everywhere. (The exact form needs ``erf``,
    which NumPy lacks; the two differ by less than 5e-4.)

    Example:
        >>> import numpy as np, jimunet as jn
        >>> jn.layers.GELU()(np.array([-1.0, 0.0, 2.0])).round(4)
        array([-0.1588,  0.    ,  1.9546])
    """

    def rows_forward(self, x, y, training: bool, shape=None):
        """As ``ReLU.rows_forward``: ``fn(rows)`` computes ``y[rows]`` (``y`` may be ``x``). The
        gradient needs the input: kept as it is, or copied block by block where ``y`` is ``x``."""
        xp = xp_of(x)
        kept = xp.empty(x.shape, x.dtype) if y is x else None

        def block(rows):
            src = x[rows]
            if kept is not None:  # before y, which may be x, is written
                kept[rows] = src
                src = kept[rows]
            t = _gelu_inner_tanh(src)
            t *= 0.5
            t += 0.5
            xp.multiply(src, t, out=y[rows])
        self.cache = (x if kept is None else kept).reshape(x.shape if shape is None else shape)
        return block

    def _backward(self, grad, x):
        # d/dx = 0.5·(1 + t) + 0.5·x·(1 - t²)·√(2/π)·(1 + 3·0.044715·x²), t the forward's tanh
        xp = xp_of(grad)
        dx = xp.empty(grad.shape, xp.result_type(grad.dtype, x.dtype))

        def block(sl):
            xs = x[sl]
            t = _gelu_inner_tanh(xs)
            slope = xp.multiply(xs, xs)
            slope *= 3 * GELU_K * GELU_C
            slope += GELU_C
            slope *= xs
            slope *= 1.0 - t * t
            t += 1.0
            t += slope
            t *= 0.5
            xp.multiply(grad[sl], t, out=dx[sl])
        pfor(block, grad.shape[0], grad.size, like=grad, blas=False)
        return dx


@register
class LeakyReLU(_Elementwise):
    """``x`` where positive, ``alpha·x`` elsewhere.

    Args:
        alpha: slope for negative inputs (default 0.01, as PyTorch); a finite number.
    """

    def __init__(self, alpha: float = 0.01):
        self.alpha = check_number("LeakyReLU", "alpha", alpha)

    def describe(self):
        return f"LeakyReLU(alpha={self.alpha})"

    def get_config(self):
        return {"alpha": self.alpha}

    def _forward(self, x):
        return xp_of(x).where(x > 0, x, x * self.alpha), x

    def _backward(self, grad, x):
        return xp_of(x).where(x > 0, grad, grad * self.alpha)


@register
class Sigmoid(_Elementwise):
    """``1/(1+e^-x)``, computed as ``(1+tanh(x/2))/2`` so large ``|x|`` cannot overflow."""

    def _forward(self, x):
        y = 0.5 * (1.0 + xp_of(x).tanh(0.5 * x))
        return y, y

    def _backward(self, grad, y):
        return grad * y * (1.0 - y)


@register
class Tanh(_Elementwise):
    """Hyperbolic tangent; gradient ``1 - tanh²``."""

    def _forward(self, x):
        y = xp_of(x).tanh(x)
        return y, y

    def _backward(self, grad, y):
        return grad * (1.0 - y * y)
