"""Flatten: (N, ...) to (N, features)."""
from __future__ import annotations

import math

from .base import Layer, register


@register
class Flatten(Layer):
    """Collapse every axis but the batch axis, in C order (NHWC → ``h·W·C + w·C + c``).

    Shape:
        ``(N, d1, d2, ...)`` → ``(N, d1·d2·...)``.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> jn.layers.Flatten()(np.zeros((2, 7, 7, 64))).shape
        (2, 3136)
    """

    per_sample = True

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x, training: bool = False):
        self._check_input(x)
        if x.ndim < 2:
            raise ValueError(f"{self.describe()}: expected at least a 2-D (batch, ...) array, got shape "
                             f"{tuple(x.shape)}")
        self.cache = x.shape  # the input's shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad, input_grad: bool = True):
        shape = self.cache
        if shape is None:
            raise self._no_forward()
        self._check_grad(grad, (shape[0], math.prod(shape[1:])))
        return grad.reshape(shape)
