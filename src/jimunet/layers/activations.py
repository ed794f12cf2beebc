"""Elementwise activations: ReLU, LeakyReLU, Sigmoid, Tanh."""
from __future__ import annotations

import math

from ..backend import xp_of
from ..functional.rows import relu_into
from ..parallel import pfor
from .base import Layer, check_number, register


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


@register
class ReLU(_Elementwise):
    """``max(x, 0)``; gradient passes where the input was positive.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> jn.layers.ReLU()(np.array([-1.0, 2.0]))
        array([0., 2.])
    """

    def forward(self, x, training: bool = False):
        self._check_input(x)
        xp = xp_of(x)
        y = xp.empty_like(x)
        # Training keeps where x > 0 (a byte per value), not the output: the next layer may not
        # keep it (a Winograd conv keeps its transformed input, a max pool its winners).
        positive = xp.empty(x.shape, bool) if training else None

        def block(sl):
            relu_into(x[sl], y[sl])
            if positive is not None:
                xp.greater(x[sl], 0, out=positive[sl])
        pfor(block, x.shape[0], x.size, like=x, blas=False)
        self.cache, self._out_dtype = (y if positive is None else positive), y.dtype
        return y

    def _backward(self, grad, kept):
        xp = xp_of(grad)
        dx = xp.empty(grad.shape, xp.result_type(grad.dtype, self._out_dtype))
        pfor(lambda sl: xp.multiply(grad[sl], kept[sl] if kept.dtype == bool else kept[sl] > 0, out=dx[sl]),
             grad.shape[0], grad.size, like=grad, blas=False)
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
