"""Batch normalisation over the last (channel / feature) axis."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import init as _init
from .._messages import shown
from ..backend import xp_of
from ..functional.padding import MAX_SIZE
from ..functional.rows import LONG_ROW, long_vector, per_channel
from ..parallel import BLOCKS, add_blocks_in_order, batch_sync, pfor, split
from .base import Layer, check_dtype_arg, check_number, register


class BatchNormCache(NamedTuple):
    """What ``BatchNorm.backward`` needs from its forward call."""
    training: bool  # batch statistics (True) or the running ones
    x: object  # training: this call's rows of the centred input x - μ_B, (rows, C); else the input
    inv: object  # 1/sqrt(var + eps) per channel
    shape: tuple  # the input's shape
    m: int = 0  # values per channel in the whole batch (training)
    sync: object = None  # the data-parallel exchange (``parallel.batch_sync``); None in one process
    xc_all: object = None  # with an exact exchange: the whole batch's x - μ_B, for backward's sums
    mean: object = None  # evaluation: the running mean the forward pass used


# Arrays of fewer values than this are worked on in one block on the calling thread: handing
# blocks to the threads costs ~40 µs a region, more than a 7×7×64 batch of 128's pass saves.
THREADED_SIZE = 1 << 19


#: Elementwise passes are cut finer than the sums: their cut changes no number.
ELEMENTWISE_SIZE = 1 << 17


def _blocks(a, size: int = THREADED_SIZE) -> list:
    """The fixed blocks of ``a``'s rows, one per ``size`` values (at most ``BLOCKS``): their
    number follows ``a``'s size, never the thread count."""
    return split(a.shape[0], max(1, min(BLOCKS, a.size // size)))


def _by_rows(fn, a) -> None:
    """``fn(rows)`` for each block of the (rows, C) array ``a``, on the threads. For
    elementwise work: every value's arithmetic is the same however the rows are cut."""
    pfor(fn, a.shape[0], a.size, like=a, parts=_blocks(a, ELEMENTWISE_SIZE), blas=False)


def _block_sums(a, fn) -> list:
    """Sums over the rows of the (rows, C) array ``a``, the same for every thread count:
    ``fn(rows)`` gives one block's per-channel partial sums (a tuple of arrays) for each of
    ``_blocks(a)``, on the threads, and they are added in block order."""
    blocks = _blocks(a)
    partials = [None] * len(blocks)

    def run(sl):
        for i in range(sl.start, sl.stop):
            partials[i] = fn(blocks[i])
    pfor(run, len(blocks), a.size, like=a, parts=[slice(i, i + 1) for i in range(len(blocks))], blas=False)
    sums = [list(by_block) for by_block in zip(*partials)]  # sums[k][i]: block i's share of sum k
    add_blocks_in_order(sums)
    return [s[0] for s in sums]


def _row_sums(a, b=None, dtype=None):
    """``Σ a`` over the rows of the (rows, C) block ``a`` (with ``b``: ``Σ a·b``), in ``dtype``.

    As rows of k·C values, k = ``LONG_ROW // C`` (NumPy's loop over rows of C values costs more
    than the additions: 3× on a 28×28×16 batch), then the k partial rows added in order, then
    the rows left over. Off the CPU, the plain reduction.
    """
    xp = xp_of(a)
    if dtype is None:
        dtype = a.dtype if b is None else xp.result_type(a.dtype, b.dtype)
    spec, ops = ("ij->j", (a,)) if b is None else ("ij,ij->j", (a, b))
    rows, c = a.shape
    k = max(1, LONG_ROW // c)
    whole = rows - rows % k
    if xp is not np or whole == 0:
        return xp.einsum(spec, *ops, dtype=dtype)
    head = np.einsum(spec, *(o[:whole].reshape(-1, k * c) for o in ops), dtype=dtype)
    total = head.reshape(k, c).sum(axis=0)
    if whole < rows:
        total += np.einsum(spec, *(o[whole:] for o in ops), dtype=dtype)
    return total


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

    How it computes: training keeps ``x - μ_B`` (x̂ is never stored) and outputs
    ``(x - μ_B)·(γ/sqrt(σ²_B + eps)) + β``; evaluation folds the running statistics into one
    multiply-add per value. Every sum over the batch (μ_B, σ²_B, dβ, dγ) adds fixed blocks of
    rows on the threads, each as long rows of channels (``_row_sums``), in a fixed order: the
    same numbers for any thread count, and closer to the exact sums than adding row after row.

    Data-parallel training (``jimunet.distributed``): a process that computes its share of a
    batch gets the statistics of the WHOLE batch, as one process would (``per_sample``): in
    the exact reduction every process gathers the whole batch's input (forward) and output
    gradient (backward) and computes the sums exactly as one process does, so the result is
    bit-identical; in the all-reduce the processes add their per-channel sums (Σx, then
    Σ(x-μ)², and Σdy, Σdy·(x-μ) for backward), equal to one process's up to float rounding.

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

    def _statistics(self, x2, dtype, m: int, sync=None):
        """Mean, biased variance, 1/sqrt(var + eps) and ``x2 - mean`` of the (rows, C) array
        ``x2``. With ``sync`` (the all-reduce), the per-channel sums of the processes' rows are
        added, so the statistics are the whole batch's (float rounding may differ from one
        process's); the exact reduction runs this very code on the gathered batch."""
        xp = xp_of(x2)
        whole = (lambda v: v) if sync is None else sync.add
        mean = whole(_block_sums(x2, lambda r: (_row_sums(x2[r], dtype=dtype),))[0]) / m
        xc = xp.empty(x2.shape, xp.result_type(x2.dtype, mean.dtype))
        mean_t = long_vector(mean)

        def centre(r):  # x - μ and its share of Σ(x - μ)², while the block is in cache
            per_channel(xp.subtract, x2[r], mean, xc[r], mean_t)
            return (_row_sums(xc[r], xc[r]),)
        var = whole(_block_sums(x2, centre)[0]) / m  # biased: the normalisation uses it
        return mean, var, 1.0 / xp.sqrt(var + self.eps), xc

    def _train_forward(self, x, x2, dtype):
        """Batch statistics (of the whole batch also when this is one process's share of it),
        the running estimates moved, and the cache; returns ``(x2 - μ_B, inv)``."""
        sync = batch_sync(x.shape[0])
        per = x2.shape[0] // max(1, x.shape[0])  # values per channel of one sample
        m = x2.shape[0] if sync is None else sync.total * per  # ... of the whole batch
        if m < 2:
            raise ValueError(f"{self.describe()}: training needs more than one value per channel to "
                             f"estimate a variance, got input of shape {tuple(x.shape)}"
                             f"{'' if sync is None else f' (of a batch of {sync.total})'}")
        xc_all = None
        if sync is None:
            mean, var, inv, xc = self._statistics(x2, dtype, m)
        elif sync.exact:
            whole = sync.gather(x).reshape(-1, self.num_features)
            mean, var, inv, xc_all = self._statistics(whole, dtype, m)
            xc = xc_all[sync.rows.start * per:sync.rows.stop * per]
        else:
            mean, var, inv, xc = self._statistics(x2, dtype, m, sync)
        mom = self.momentum
        rm, rv = self.running_mean.data, self.running_var.data
        rm[...] = (1 - mom) * rm + mom * mean
        rv[...] = (1 - mom) * rv + mom * (var * (m / (m - 1)))  # unbiased for the running estimate
        self.cache = BatchNormCache(True, xc, inv, x.shape, m, sync, xc_all)
        return xc, inv

    def forward(self, x, training: bool = False):
        return self._forward(x, training)

    def forward_relu(self, x, training: bool, relu):
        """``relu.forward(self.forward(x, training), training)``, bit for bit, with both layers'
        caches as after those two calls, but ReLU works in place on each block of the output
        while the block is still in cache (one pass over memory fewer, no second array)."""
        return self._forward(x, training, relu)

    def _forward(self, x, training, relu=None):
        self._check_input(x, None, self.num_features, "NHWC batch or (batch, features) array")
        if x.ndim not in (2, 4):
            raise ValueError(f"{self.describe()}: expected a 4-D NHWC batch or a 2-D (batch, features) array, "
                             f"got shape {tuple(x.shape)}")
        xp = xp_of(x)
        x2 = x.reshape(-1, self.num_features)
        dtype = np.result_type(x.dtype, self.weight.data.dtype)
        w, b = self.weight.data, self.bias.data
        if training:  # y = (x - μ_B)·(inv·γ) + β
            src, inv = self._train_forward(x, x2, dtype)
        else:  # folded: y = x·(inv·γ) + (β - μ·inv·γ)
            src, inv = x2, 1.0 / xp.sqrt(self.running_var.data.astype(dtype) + self.eps)
            self.cache = BatchNormCache(False, x2, inv, x.shape, mean=self.running_mean.data.astype(dtype))
        scale = inv * w
        shift = b if training else b - self.cache.mean * scale
        y = xp.empty(src.shape, xp.result_type(src.dtype, scale.dtype, shift.dtype))
        scale_t, shift_t = long_vector(scale), long_vector(shift)
        then = None if relu is None else relu.rows_forward(y, y, training, x.shape)

        def block(r):
            per_channel(xp.multiply, src[r], scale, y[r], scale_t)
            per_channel(xp.add, y[r], shift, y[r], shift_t)
            if then is not None:
                then(r)
        _by_rows(block, y)
        return y.reshape(x.shape)

    def _grad_sums(self, dy, grad, input_grad: bool):
        """``(Σdy, Σdy·x̂)`` per channel over the whole batch, after adding the parameters'
        share of them to their gradients (None for the sums where ``input_grad`` is False)."""
        xp = xp_of(dy)
        c = self.cache
        dtype = xp.result_type(dy.dtype, c.inv.dtype)  # float32 gradients of float64 parameters: summed in float64
        if not c.training:  # x̂ = (x - running mean)·inv, its x - μ made block by block
            def sums(r):
                xc = xp.empty(dy[r].shape, xp.result_type(c.x.dtype, c.mean.dtype))
                per_channel(xp.subtract, c.x[r], c.mean, xc)
                return _row_sums(dy[r], dtype=dtype), _row_sums(dy[r], xc)
        else:
            xc = c.x
            if c.sync is not None and c.sync.exact:  # the whole batch's sums, as one process
                dy, xc = c.sync.gather(grad).reshape(-1, self.num_features), c.xc_all

            def sums(r):
                return _row_sums(dy[r], dtype=dtype), _row_sums(dy[r], xc[r])
        dbeta, dyxc = _block_sums(dy, sums)
        dgamma = dyxc * c.inv
        self.bias.grad += dbeta  # the all-reduce adds the other processes' shares to these
        self.weight.grad += dgamma
        if c.sync is not None and not c.sync.exact and c.training and input_grad:
            dbeta, dgamma = c.sync.add(xp.stack([dbeta, dgamma]))
        return dbeta, dgamma

    def backward(self, grad, input_grad: bool = True):
        if self.cache is None:
            raise self._no_forward()
        c = self.cache
        self._check_grad(grad, c.shape)
        dy = grad.reshape(-1, self.num_features)
        dbeta, dgamma = self._grad_sums(dy, grad, input_grad)
        if not input_grad:
            return None
        xp = xp_of(grad)
        scale = self.weight.data * c.inv
        scale_t = long_vector(scale)
        if not c.training:
            dx = xp.empty(dy.shape, xp.result_type(dy.dtype, scale.dtype))
            _by_rows(lambda r: per_channel(xp.multiply, dy[r], scale, dx[r], scale_t), dy)
            return dx.reshape(c.shape)
        xc = c.x
        a, b = dgamma * c.inv / c.m, dbeta / c.m  # x̂·dγ/m = (x - μ)·(inv·dγ/m)
        dx = xp.empty(xc.shape, xp.result_type(xc.dtype, dy.dtype, a.dtype))
        a_t, b_t = long_vector(a), long_vector(b)

        def block(r):  # γ·inv/m·(m·dy - dβ - x̂·dγ), in one pass over the block
            per_channel(xp.multiply, xc[r], a, dx[r], a_t)
            per_channel(xp.add, dx[r], b, dx[r], b_t)
            xp.subtract(dy[r], dx[r], out=dx[r])
            per_channel(xp.multiply, dx[r], scale, dx[r], scale_t)
        _by_rows(block, dx)
        return dx.reshape(c.shape)
