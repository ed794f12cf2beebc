"""Batch normalisation over the last (channel / feature) axis."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import init as _init
from .._messages import shown
from ..backend import xp_of
from ..functional.padding import MAX_SIZE
from ..parallel import batch_sync, pfor
from .base import Layer, check_dtype_arg, check_number, register


class BatchNormCache(NamedTuple):
    """What ``BatchNorm.backward`` needs from its forward call."""
    training: bool  # batch statistics (True) or the running ones
    xhat: object  # the normalised input, (rows, C): this call's rows
    inv: object  # 1/sqrt(var + eps) per channel
    shape: tuple  # the input's shape
    m: int = 0  # values per channel in the whole batch (training)
    sync: object = None  # the data-parallel exchange (``parallel.batch_sync``); None in one process
    xhat_all: object = None  # with an exact exchange: the whole batch's x̂, for backward's sums


def _by_rows(fn, a) -> None:
    """``fn(rows)`` over ``pfor``'s blocks of the rows of the (rows, C) array ``a``, on the
    threads. For elementwise work only: every value's arithmetic is the same however the rows
    are cut, so the result does not depend on the thread count. (Smaller, cache-sized chunks
    were measured slower: a NumPy call per chunk costs more than staying in L2 saves.)"""
    pfor(fn, a.shape[0], a.size, like=a)


def _fast_sum(a, dtype) -> bool:
    """Whether einsum adds ``a``'s rows exactly as ``a.sum(axis=0, dtype=dtype)`` does: for C ≥ 2
    both add row after row into the C sums. With one channel the reduction sums pairwise and
    einsum would not, so that case, casts, strided input and device arrays keep the reduction
    (``tests/test_parallel_layers.py`` checks the equality)."""
    return xp_of(a) is np and a.ndim == 2 and a.shape[1] >= 2 and a.flags.c_contiguous and \
        (dtype is None or np.dtype(dtype) == a.dtype)


def _channel_sum(a, dtype=None):
    """``a.sum(axis=0, dtype=dtype)`` of a (rows, C) array, bit for bit; einsum's loop costs a
    quarter of the reduction's per row (~0.6 instead of 2.4 ms for a 28×28×16 batch of 128)."""
    return np.einsum("ij->j", a) if _fast_sum(a, dtype) else a.sum(axis=0, dtype=dtype)


def _channel_mean(a, dtype):
    """``a.mean(axis=0, dtype=dtype)``, bit for bit: where ``_fast_sum``, the same sum divided
    by the count in ``a``'s dtype (the mean divides in float64 and rounds to float32; with a
    count below 2**53 the two roundings give float32's one)."""
    return np.einsum("ij->j", a) / a.shape[0] if _fast_sum(a, dtype) else a.mean(axis=0, dtype=dtype)


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

    Data-parallel training (``jimunet.distributed``): a process that computes its share of a
    batch gets the statistics of the WHOLE batch, as one process would (``per_sample``): in
    the exact reduction every process gathers the whole batch's input (forward) and output
    gradient (backward) and computes the sums exactly as one process does, so the result is
    bit-identical; in the all-reduce the processes add their per-channel sums (Σx, then
    Σ(x-μ)², and Σdy, Σdy·x̂ for backward), equal to one process's up to float rounding.

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

    per_sample = True  # its batch statistics come from the whole batch through ``parallel.batch_sync``

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, dtype=np.float32):
        if not isinstance(num_features, (int, np.integer)) or isinstance(num_features, bool) or \
                not 1 <= num_features <= MAX_SIZE:
            raise ValueError(f"BatchNorm: num_features must be a positive int (at most {MAX_SIZE:,}), got "
                             f"{shown(num_features)}")
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

    def _statistics(self, x2, dtype, m: int):
        """Mean, biased variance, 1/sqrt(var + eps) and ``x2 - mean`` (x̂ once multiplied by the
        former: ``forward`` does it in the pass that computes the output) of the (rows, C) array
        ``x2`` (one process's arithmetic: the exact reduction runs this very code on the gathered
        batch)."""
        xp = xp_of(x2)
        mean = _channel_mean(x2, dtype)
        xc = self._centred(x2, mean)
        var = xp.einsum("ij,ij->j", xc, xc) / m  # biased: the normalisation uses it
        return mean, var, 1.0 / xp.sqrt(var + self.eps), xc

    @staticmethod
    def _centred(x2, mean):
        """``x2 - mean`` into a new array, through ``_by_rows``."""
        xp = xp_of(x2)
        xc = xp.empty(x2.shape, xp.result_type(x2.dtype, mean.dtype))
        _by_rows(lambda r: xp.subtract(x2[r], mean, out=xc[r]), x2)
        return xc

    def _summed_statistics(self, x2, dtype, m: int, sync):
        """``_statistics`` of the whole batch from this process's rows ``x2``, with the per-channel
        sums added over the processes (the all-reduce's exchange; float rounding may differ)."""
        xp = xp_of(x2)
        mean = sync.add(_channel_sum(x2, dtype)) / m
        xc = self._centred(x2, mean)
        var = sync.add(xp.einsum("ij,ij->j", xc, xc)) / m
        return mean, var, 1.0 / xp.sqrt(var + self.eps), xc

    def _train_forward(self, x, x2, dtype):
        """Batch statistics (of the whole batch also when this is one process's share of it),
        the running estimates moved, and the cache; returns ``(a, inv, scaled)``: a is x̂ of
        ``x2``'s rows if ``scaled``, else ``x2 - mean``, to be multiplied by inv in place."""
        sync = batch_sync(x.shape[0])
        per = x2.shape[0] // max(1, x.shape[0])  # values per channel of one sample
        m = x2.shape[0] if sync is None else sync.total * per  # ... of the whole batch
        if m < 2:
            raise ValueError(f"{self.describe()}: training needs more than one value per channel to "
                             f"estimate a variance, got input of shape {tuple(x.shape)}"
                             f"{'' if sync is None else f' (of a batch of {sync.total})'}")
        xhat_all, scaled = None, False
        if sync is None:
            mean, var, inv, xhat = self._statistics(x2, dtype, m)
        elif sync.exact:
            whole = sync.gather(x).reshape(-1, self.num_features)
            mean, var, inv, xhat_all = self._statistics(whole, dtype, m)
            _by_rows(lambda r: xp_of(x).multiply(xhat_all[r], inv, out=xhat_all[r]), xhat_all)  # all of x̂: backward sums it
            xhat, scaled = xhat_all[sync.rows.start * per:sync.rows.stop * per], True
        else:
            mean, var, inv, xhat = self._summed_statistics(x2, dtype, m, sync)
        mom = self.momentum
        rm, rv = self.running_mean.data, self.running_var.data
        rm[...] = (1 - mom) * rm + mom * mean
        rv[...] = (1 - mom) * rv + mom * (var * (m / (m - 1)))  # unbiased for the running estimate
        self.cache = BatchNormCache(True, xhat, inv, x.shape, m, sync, xhat_all)
        return xhat, inv, scaled

    def forward(self, x, training: bool = False):
        self._check_input(x, None, self.num_features, "NHWC batch or (batch, features) array")
        if x.ndim not in (2, 4):
            raise ValueError(f"{self.describe()}: expected a 4-D NHWC batch or a 2-D (batch, features) array, "
                             f"got shape {tuple(x.shape)}")
        xp = xp_of(x)
        x2 = x.reshape(-1, self.num_features)
        dtype = np.result_type(x.dtype, self.weight.data.dtype)
        rm = self.running_mean.data
        if training:
            xhat, inv, scaled = self._train_forward(x, x2, dtype)
        else:
            inv = 1.0 / xp.sqrt(self.running_var.data.astype(dtype) + self.eps)
            xhat, scaled = xp.empty(x2.shape, xp.result_type(x2.dtype, rm.dtype)), False
            self.cache = BatchNormCache(False, xhat, inv, x.shape)
        w, b = self.weight.data, self.bias.data
        y = xp.empty(xhat.shape, xp.result_type(xhat.dtype, w.dtype))

        def block(r):  # the roundings of (x - μ)·inv·γ + β one after the other, in one pass
            if not training:
                xp.subtract(x2[r], rm, out=xhat[r])
            if not scaled:
                xhat[r] *= inv
            xp.multiply(xhat[r], w, out=y[r])
            y[r] += b
        _by_rows(block, xhat)
        return y.reshape(x.shape)

    def _grad_sums(self, grad, dy, input_grad: bool):
        """``(Σdy, Σdy·x̂)`` per channel over the whole batch, after adding the parameters'
        share of them to their gradients (None for the sums where ``input_grad`` is False)."""
        xp = xp_of(grad)
        c = self.cache
        if c.sync is not None and c.sync.exact and c.training:  # the whole batch's sums, as one process
            dy_all = c.sync.gather(grad).reshape(-1, self.num_features)
            dbeta = _channel_sum(dy_all)
            dgamma = xp.einsum("ij,ij->j", dy_all, c.xhat_all)
        else:
            dbeta = _channel_sum(dy)
            dgamma = xp.einsum("ij,ij->j", dy, c.xhat)
        self.bias.grad += dbeta  # the all-reduce adds the other processes' shares to these
        self.weight.grad += dgamma
        if c.sync is not None and not c.sync.exact and c.training and input_grad:
            dbeta, dgamma = c.sync.add(xp.stack([dbeta, dgamma]))
        return dbeta, dgamma

    def backward(self, grad, input_grad: bool = True):
        if self.cache is None:
            raise self._no_forward()
        training, xhat, inv, shape = self.cache[:4]
        self._check_grad(grad, shape)
        dy = grad.reshape(-1, self.num_features)
        dbeta, dgamma = self._grad_sums(grad, dy, input_grad)
        if not input_grad:
            return None
        xp = xp_of(grad)
        scale = self.weight.data * inv
        if not training:
            dx = xp.empty(dy.shape, xp.result_type(dy.dtype, scale.dtype))
            _by_rows(lambda r: xp.multiply(dy[r], scale, out=dx[r]), dy)
            return dx.reshape(shape)
        m = self.cache.m
        a, b = dgamma / m, dbeta / m
        dx = xp.empty(xhat.shape, xp.result_type(xhat.dtype, a.dtype))

        def block(r):  # γ/(m·σ)·(m·dy - dβ - x̂·dγ), the same four roundings, in one pass
            xp.multiply(xhat[r], a, out=dx[r])
            dx[r] += b
            xp.subtract(dy[r], dx[r], out=dx[r])
            dx[r] *= scale
        _by_rows(block, dx)
        return dx.reshape(shape)
