"""Layers that merge several inputs into one: ``Add`` and ``Concatenate``.

Their ``forward`` takes a list of arrays and their ``backward`` returns a list of
gradients, one per input, in the same order. In a graph model (``jn.Model``) they join
branches: ``jn.layers.Add()([shortcut, h])``.
"""
from __future__ import annotations

import math

from .._messages import shown
from ..backend import xp_of
from ..parallel import pfor
from .base import Layer, register


def add_arrays(xs, then=None):
    """``xs[0] + xs[1] + ...`` (two or more arrays of one shape) into a new array: the arrays
    added left to right, the samples split over the threads. ``then(y)``, given the new array,
    returns a function of a block of samples run on each block of the sum right after it.
    ``Add`` and a graph model's gradient sums (a tensor read by several nodes) add this way."""
    xp = xp_of(xs[0])
    y = xp.empty(xs[0].shape, xp.result_type(*xs))
    then = None if then is None else then(y)

    def block(sl):
        xp.add(xs[0][sl], xs[1][sl], out=y[sl])
        for x in xs[2:]:
            y[sl] += x[sl]
        if then is not None:
            then(sl)
    pfor(block, y.shape[0], y.size * len(xs), like=y, blas=False)
    return y


class _Merge(Layer):
    """``cache``: the inputs' shapes, in order."""

    multi_input = True  # forward takes a list, backward returns one
    per_sample = True  # each sample's output is made of that sample's inputs alone

    def _check_inputs(self, xs):
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            raise ValueError(f"{self.describe()}: expected a list of at least 2 arrays, got "
                             f"{type(xs).__name__}{'' if not isinstance(xs, (list, tuple)) else f' of {len(xs)}'}")
        for x in xs:
            self._check_input(x)
        dts = {x.dtype for x in xs}
        if len(dts) > 1:
            raise ValueError(f"{self.describe()}: inputs have different dtypes {sorted(map(str, dts))}")
        if len({x.shape[0] for x in xs}) > 1:
            raise ValueError(f"{self.describe()}: inputs have different batch sizes "
                             f"{[tuple(x.shape) for x in xs]}")
        self.output_shape([tuple(x.shape[1:]) for x in xs])  # raises on shapes that do not meet

    def _check_grads(self, grad, expected):
        if self.cache is None:
            raise self._no_forward()
        self._check_grad(grad, expected)


@register
class Add(_Merge):
    """Elementwise sum of two or more inputs of the same shape (a residual shortcut).

    Backward: every input receives the upstream gradient itself (the same array, not
    copies: layers never write into their arguments).

    Example:
        >>> import numpy as np, jimunet as jn
        >>> jn.layers.Add()([np.ones((2, 3)), np.ones((2, 3))])[0]
        array([2., 2., 2.])
    """

    def output_shape(self, input_shapes):
        shapes = [tuple(s) for s in input_shapes]
        if len(shapes) < 2 or any(s != shapes[0] for s in shapes):
            raise ValueError(f"{self.describe()}: the inputs must all have the same per-sample shape, got "
                             f"{', '.join(map(str, shapes))}")
        return shapes[0]

    def flops(self, input_shapes):
        return (len(input_shapes) - 1) * math.prod(input_shapes[0])

    def forward(self, xs, training: bool = False):
        return self._forward(xs, training)

    def forward_relu(self, xs, training: bool, relu):
        """``relu.forward(self.forward(xs, training), training)``, bit for bit, with both layers'
        caches as after those two calls; ReLU works in place on each block of the sum."""
        return self._forward(xs, training, relu)

    def _forward(self, xs, training, relu=None):
        self._check_inputs(xs)
        self.cache = [x.shape for x in xs]
        return add_arrays(xs, None if relu is None else lambda y: relu.rows_forward(y, y, training))

    def backward(self, grad, input_grad: bool = True):
        self._check_grads(grad, self.cache[0] if self.cache else None)
        return [grad for _ in self.cache]


@register
class Concatenate(_Merge):
    """Join inputs along ``axis`` (default the last, channel axis); the other axes must agree.

    Backward: the upstream gradient is cut back into the inputs' slices.

    Args:
        axis: a non-batch axis, counted as in NumPy on the batched array (``-1`` or ``3``
            for NHWC channels); axis 0, the batch, is refused.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> jn.layers.Concatenate()([np.zeros((2, 4, 4, 3)), np.ones((2, 4, 4, 5))]).shape
        (2, 4, 4, 8)
    """

    def __init__(self, axis: int = -1):
        if not isinstance(axis, int) or isinstance(axis, bool) or axis == 0:
            raise ValueError(f"Concatenate: axis must be a non-zero int (axis 0 is the batch), got {shown(axis)}")
        self.axis = axis

    def describe(self):
        return f"Concatenate(axis={self.axis})"

    def get_config(self):
        return {"axis": self.axis}

    def _sample_axis(self, ndim):
        """The axis in per-sample shapes of ``ndim`` dimensions."""
        a = self.axis - 1 if self.axis > 0 else ndim + self.axis
        if not 0 <= a < ndim:
            raise ValueError(f"{self.describe()}: axis {self.axis} does not exist for inputs of {ndim + 1} "
                             f"dimensions (batch included)")
        return a

    def output_shape(self, input_shapes):
        shapes = [tuple(s) for s in input_shapes]
        if len(shapes) < 2 or any(len(s) != len(shapes[0]) for s in shapes):
            raise ValueError(f"{self.describe()}: expected at least 2 inputs of the same rank, got "
                             f"{', '.join(map(str, shapes))}")
        a = self._sample_axis(len(shapes[0]))
        rest = {s[:a] + s[a + 1:] for s in shapes}
        if len(rest) > 1:
            raise ValueError(f"{self.describe()}: the inputs must agree on every axis but axis {self.axis}, got "
                             f"{', '.join(map(str, shapes))}")
        return shapes[0][:a] + (sum(s[a] for s in shapes),) + shapes[0][a + 1:]

    def forward(self, xs, training: bool = False):
        self._check_inputs(xs)
        self.cache = [x.shape for x in xs]
        return xp_of(xs[0]).concatenate(xs, axis=self._sample_axis(xs[0].ndim - 1) + 1)

    def backward(self, grad, input_grad: bool = True):
        shapes = self.cache
        if shapes is None:
            raise self._no_forward()
        out = self.output_shape([s[1:] for s in shapes])
        self._check_grad(grad, (shapes[0][0], *out))
        a = self._sample_axis(len(out)) + 1
        grads, start = [], 0
        for s in shapes:
            idx = [slice(None)] * grad.ndim
            idx[a] = slice(start, start + s[a])
            grads.append(grad[tuple(idx)].copy())
            start += s[a]
        return grads
