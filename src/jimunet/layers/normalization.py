"""Batch normalisation over the last (channel / feature) axis."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import init as _init
from ..backend import xp_of
from ..functional.padding import MAX_SIZE
from .base import Layer, check_dtype_arg, check_number, register


class BatchNormCache(NamedTuple):
    """What ``BatchNorm.backward`` needs from its forward call."""
    training: bool  # batch statistics (True) or the running ones
    xhat: object  # the normalised input, (m, C)
    inv: object  # 1/sqrt(var + eps) per channel
    shape: tuple  # the input's shape


@register
class BatchNorm(Layer):
    """Batch normalisation (Ioffe & Szegedy, 2015) over the last axis of NHWC or (N, features) input.

    Training: each channel is normalised by the statistics of the batch (every axis but the
    last), ``y = γ·(x - μ_B)/sqrt(σ²_B + eps) + β`` with the BIASED batch variance
    ``σ²_B = mean((x - μ_B)²)``, and the running estimates move towards the batch's:
    ``running = (1 - momentum)·running + momentum·batch_stat``, where the variance that
    enters the running estimate is the UNBIASED one, ``σ²_B·m/(m-1)`` for ``m`` values per
    channel. These are PyTorch's conventions (``momentum=0.1`` there means Keras'
    ``momentum=0.9``). Evaluation: ``y = γ·(x - running_mean)/sqrt(running_var + eps) + β``.

    Backward in training, with ``x̂ = (x - μ_B)/sqrt(σ²_B + eps)``: ``dβ = Σ dy``,
    ``dγ = Σ dy·x̂`` and ``dx = γ/(m·sqrt(σ²_B + eps))·(m·dy - dβ - x̂·dγ)``; in evaluation
    the statistics are constants, so ``dx = γ·dy/sqrt(running_var + eps)``.

    ``running_mean`` and ``running_var`` are buffers: saved with the model and in
    checkpoints (``buffers()``), but not ``parameters()``, so no optimizer or weight decay
    ever changes them.

    Args:
        num_features: channels (the size of the last axis).
        momentum: weight of the newest batch in the running statistics, in (0, 1].
        eps: added to the variance before the square root.
        dtype: parameter and buffer dtype, float32 by default.

    Shape:
        ``(N, H, W, C)`` or ``(N, C)`` → the same; weight (γ) and bias (β) ``(C,)``.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> bn = jn.layers.BatchNorm(3)
        >>> y = bn(np.random.default_rng(0).normal(5, 2, (8, 4, 4, 3)), training=True)
        >>> bool(abs(y.mean()) < 1e-6), bn.running_mean.data.round(1)
        (True, array([0.5, 0.5, 0.5], dtype=float32))
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, dtype=np.float32):
        if not isinstance(num_features, (int, np.integer)) or isinstance(num_features, bool) or \
                not 1 <= num_features <= MAX_SIZE:
            raise ValueError(f"BatchNorm: num_features must be a positive int (at most {MAX_SIZE:,}), got "
                             f"{num_features!r}")
        momentum = check_number("BatchNorm", "momentum", momentum, 0, 1, low_open=True)
        eps = check_number("BatchNorm", "eps", eps, 0, 1e10, low_open=True)
        self.num_features, self.momentum, self.eps = int(num_features), float(momentum), float(eps)
        dtype = check_dtype_arg(dtype, "BatchNorm")
        c = (self.num_features,)
        self.weight = self._new_parameter(_init.constant(1.0), c, None, dtype, "weight")
        self.bias = self._new_parameter(_init.zeros(), c, None, dtype, "bias")
        self.running_mean = self._new_parameter(_init.zeros(), c, None, dtype, "running_mean")
        self.running_var = self._new_parameter(_init.constant(1.0), c, None, dtype, "running_var")

    def describe(self):
        return f"BatchNorm({self.num_features}, momentum={self.momentum}, eps={self.eps})"

    def parameters(self):
        return [self.weight, self.bias]

    def buffers(self):
        """State that is saved but not trained: ``[running_mean, running_var]``."""
        return [self.running_mean, self.running_var]

    def buffer_problem(self, name, value):
        """``running_var`` is a variance: no entry may be negative (its square root divides)."""
        if name == "running_var" and value.size and bool((value < 0).any()):
            return f"must be >= 0 (a variance), got a minimum of {float(value.min()):g}"
        return None

    def astype(self, dtype):
        super().astype(dtype)
        for b in self.buffers():
            b.data, b.grad = b.data.astype(dtype), b.grad.astype(dtype)
        return self

    def get_config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps,
                "dtype": str(self.weight.data.dtype)}

    def output_shape(self, input_shape):
        if len(input_shape) not in (1, 3) or input_shape[-1] != self.num_features:
            raise ValueError(f"{self.describe()}: expected per-sample input (height, width, {self.num_features}) "
                             f"or ({self.num_features},), got {tuple(input_shape)}")
        return tuple(input_shape)

    def flops(self, input_shape):
        return 2 * int(np.prod(input_shape))  # one multiply-add per value once folded

    def forward(self, x, training: bool = False):
        self._check_input(x, None, self.num_features, "NHWC batch or (batch, features) array")
        if x.ndim not in (2, 4):
            raise ValueError(f"{self.describe()}: expected a 4-D NHWC batch or a 2-D (batch, features) array, "
                             f"got shape {tuple(x.shape)}")
        xp = xp_of(x)
        c = self.num_features
        x2 = x.reshape(-1, c)
        m = x2.shape[0]
        dtype = np.result_type(x.dtype, self.weight.data.dtype)
        if training:
            if m < 2:
                raise ValueError(f"{self.describe()}: training needs more than one value per channel to "
                                 f"estimate a variance, got input of shape {tuple(x.shape)}")
            mean = x2.mean(axis=0, dtype=dtype)
            xc = x2 - mean
            var = xp.einsum("ij,ij->j", xc, xc) / m  # biased: the normalisation uses it
            inv = 1.0 / xp.sqrt(var + self.eps)
            xhat = xc
            xhat *= inv
            mom = self.momentum
            rm, rv = self.running_mean.data, self.running_var.data
            rm[...] = (1 - mom) * rm + mom * mean
            rv[...] = (1 - mom) * rv + mom * (var * (m / (m - 1)))  # unbiased for the running estimate
            self.cache = BatchNormCache(True, xhat, inv, x.shape)
        else:
            inv = 1.0 / xp.sqrt(self.running_var.data.astype(dtype) + self.eps)
            xhat = (x2 - self.running_mean.data) * inv
            self.cache = BatchNormCache(False, xhat, inv, x.shape)
        y = xhat * self.weight.data
        y += self.bias.data
        return y.reshape(x.shape)

    def backward(self, grad, input_grad: bool = True):
        if self.cache is None:
            raise self._no_forward()
        training, xhat, inv, shape = self.cache
        self._check_grad(grad, shape)
        xp = xp_of(grad)
        dy = grad.reshape(-1, self.num_features)
        dbeta = dy.sum(axis=0)
        dgamma = xp.einsum("ij,ij->j", dy, xhat)
        self.bias.grad += dbeta
        self.weight.grad += dgamma
        if not input_grad:
            return None
        scale = self.weight.data * inv
        if not training:
            return (dy * scale).reshape(shape)
        m = dy.shape[0]
        dx = xhat * (dgamma / m)
        dx += dbeta / m
        xp.subtract(dy, dx, out=dx)
        dx *= scale
        return dx.reshape(shape)
