"""Fully connected layer."""
from __future__ import annotations

import numpy as np

from .._messages import shown
from .. import init as _init
from ..functional.padding import MAX_SIZE
from ..parallel import pmatmul
from ..random import resolve_rng
from .base import Layer, check_bool, check_dtype_arg, register


@register
class Dense(Layer):
    """``y = x·W + b`` (TensorFlow's ``tf.matmul(x, W) + b``).

    Backward: ``dW = xᵀ·dY``, ``db = Σ dY``, ``dX = dY·Wᵀ``.

    Args:
        in_features, out_features: sizes of the input and output vectors.
        use_bias: add a learned bias.
        weight_init, bias_init: initialisers (see ``jimunet.init``) or their names.
        rng: Generator (or int seed) for the initial weights; default ``jn.set_seed``'s.
        dtype: parameter dtype, float32 by default.

    Shape:
        ``(N, in_features)`` → ``(N, out_features)``; weight ``(in, out)``, bias ``(out,)``.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> jn.layers.Dense(3136, 512)(np.zeros((4, 3136), np.float32)).shape
        (4, 512)
    """

    def __init__(self, in_features: int, out_features: int, use_bias: bool = True,
                 weight_init="glorot_uniform", bias_init="zeros", rng=None, dtype=np.float32):
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 1 <= v <= MAX_SIZE:
                raise ValueError(f"Dense: {name} must be a positive int (at most {MAX_SIZE:,}), got {shown(v)}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.use_bias = check_bool("Dense", "use_bias", use_bias)
        dtype = check_dtype_arg(dtype, "Dense")
        rng = resolve_rng(rng)
        self.weight = self._new_parameter(_init.get(weight_init), (self.in_features, self.out_features), rng,
                                          dtype, "weight")
        self.bias = self._new_parameter(_init.get(bias_init), (self.out_features,), rng, dtype, "bias") \
            if use_bias else None

    def describe(self):
        return f"Dense({self.in_features}->{self.out_features})"

    def parameters(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"{self.describe()}: expected per-sample input ({self.in_features},), got "
                             f"{tuple(input_shape)}" + ("; add a Flatten layer before it"
                                                        if len(input_shape) > 1 else ""))
        return (self.out_features,)

    def flops(self, input_shape):
        return 2 * self.in_features * self.out_features + (self.out_features if self.use_bias else 0)

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "use_bias": self.use_bias, "dtype": str(self.weight.data.dtype)}

    def forward(self, x, training: bool = False):
        self._check_input(x, 2, self.in_features, "(batch, features) array")
        y = pmatmul(x, self.weight.data)
        if self.bias is not None:
            y += self.bias.data
        self.cache = x  # the input: dW = xᵀ·dY
        return y

    def backward(self, grad, input_grad: bool = True):
        x = self.cache
        if x is None:
            raise self._no_forward()
        self._check_grad(grad, (x.shape[0], self.out_features))
        pmatmul(x.T, grad, out=self.weight.grad, accumulate=True)
        if self.bias is not None:
            self.bias.grad += grad.sum(axis=0)
        return pmatmul(grad, self.weight.data.T) if input_grad else None
