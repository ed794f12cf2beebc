"""BatchNorm, Add, GlobalAvgPool2D and ReLU on the thread pool: the same numbers for every thread
count, and the same numbers as the one-pass NumPy arithmetic they replace (so the recorded
ResNet runs, e.g. ``tests/fixtures/resume_run``, stay bit-identical)."""
import numpy as np
import pytest

import jimunet as jn
from jimunet.layers.normalization import _channel_mean, _channel_sum


@pytest.fixture(autouse=True)
def restore_threads():
    saved = jn.get_num_threads()
    yield
    jn.set_num_threads(saved)


def _bn_reference(x, w, b, dy, eps, training, rm=None, rv=None):
    """BatchNorm's arithmetic as written before the threaded passes (whole-array NumPy)."""
    c = x.shape[-1]
    x2, g = x.reshape(-1, c), dy.reshape(-1, c)
    dtype = np.result_type(x.dtype, w.dtype)
    if training:
        m = x2.shape[0]
        mean = x2.mean(axis=0, dtype=dtype)
        xc = x2 - mean
        inv = 1.0 / np.sqrt(np.einsum("ij,ij->j", xc, xc) / m + eps)
        xhat = xc
        xhat *= inv
    else:
        inv = 1.0 / np.sqrt(rv.astype(dtype) + eps)
        xhat = (x2 - rm) * inv
    y = xhat * w
    y += b
    dbeta, dgamma = g.sum(axis=0), np.einsum("ij,ij->j", g, xhat)
    scale = w * inv
    if training:
        dx = xhat * (dgamma / m)
        dx += dbeta / m
        np.subtract(g, dx, out=dx)
        dx *= scale
    else:
        dx = g * scale
    return y.reshape(x.shape), dx.reshape(x.shape), dbeta, dgamma


def _bn_run(x, dy, training, dtype):
    c = x.shape[-1]
    rng = np.random.default_rng(3)
    bn = jn.layers.BatchNorm(c, dtype=dtype)
    bn.weight.data[...] = rng.normal(1, 0.3, c)
    bn.bias.data[...] = rng.normal(0, 0.3, c)
    bn.running_mean.data[...] = rng.normal(0, 1, c)
    bn.running_var.data[...] = rng.uniform(0.5, 2, c)
    rm, rv = bn.running_mean.data.copy(), bn.running_var.data.copy()
    y = bn.forward(x, training=training)
    dx = bn.backward(dy)
    ref = _bn_reference(x, bn.weight.data, bn.bias.data, dy, bn.eps, training, rm, rv)
    return (y, dx, bn.bias.grad.copy(), bn.weight.grad.copy(), bn.running_mean.data, bn.running_var.data), ref


BN_SHAPES = [(128, 28, 28, 16), (128, 14, 14, 32), (64, 7, 7, 64), (5, 3, 3, 3), (24, 10), (24, 1), (3, 2, 2, 1)]


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_is_bit_identical_to_whole_array_numpy_for_any_thread_count(shape, training, dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(2, 3, shape).astype(dtype)
    dy = rng.normal(0, 1, shape).astype(dtype)
    first = None
    for threads in (1, 2, 3):
        jn.set_num_threads(threads)
        got, ref = _bn_run(x, dy, training, dtype)
        y, dx, dbeta, dgamma = got[:4]
        assert y.dtype == ref[0].dtype and dx.dtype == ref[1].dtype
        for a, r in zip((y, dx, dbeta, dgamma), ref):
            assert np.array_equal(a, r)
        if first is None:
            first = got
        for a, f in zip(got, first):
            assert np.array_equal(a, f)


def test_batchnorm_with_float32_input_and_float64_parameters_matches_whole_array_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (16, 5, 5, 8)).astype(np.float32)
    dy = rng.normal(0, 1, x.shape).astype(np.float32)
    got, ref = _bn_run(x, dy, True, np.float64)
    for a, r in zip(got[:2], ref):
        assert a.dtype == r.dtype and np.array_equal(a, r)
    for a, r in zip(got[2:4], ref[2:]):  # the parameters' float64 gradients hold the sums exactly
        assert np.array_equal(a, r.astype(a.dtype))


@pytest.mark.parametrize("rows", [2, 3, 17, 1000, 25088])
@pytest.mark.parametrize("c", [1, 2, 3, 8, 16, 33, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_sums_equal_numpys_reductions_bit_for_bit(rows, c, dtype):
    a = np.random.default_rng(rows * c).normal(1, 3, (rows, c)).astype(dtype)
    assert np.array_equal(_channel_sum(a), a.sum(axis=0))
    assert np.array_equal(_channel_mean(a, dtype), a.mean(axis=0, dtype=dtype))
    t = np.asfortranarray(a)  # strided: the reduction's own order
    assert np.array_equal(_channel_sum(t), t.sum(axis=0))
    assert np.array_equal(_channel_mean(a, np.float64), a.mean(axis=0, dtype=np.float64))
