"""BatchNorm, Add, GlobalAvgPool2D, ReLU and a whole ResNet step: the same numbers for every
thread count, and the same numbers as the whole-array NumPy arithmetic they were written with
(so recorded ResNet runs, e.g. ``tests/fixtures/resume_run``, stay bit-identical whatever way
these layers split their work)."""
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


def _for_each_thread_count(run):
    """``run()``'s arrays at 1, 2 and 3 threads, checked equal bit for bit; returns the first."""
    results = []
    for threads in (1, 2, 3):
        jn.set_num_threads(threads)
        results.append(run())
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    return results[0]


@pytest.mark.parametrize("shape", [(64, 14, 14, 32), (3, 5, 5, 2), (40, 10)])
@pytest.mark.parametrize("n_inputs", [2, 3])
def test_add_is_bit_identical_to_numpy_for_any_thread_count(shape, n_inputs):
    rng = np.random.default_rng(5)
    xs = [rng.normal(0, 1, shape).astype(np.float32) for _ in range(n_inputs)]
    (y,) = _for_each_thread_count(lambda: [jn.layers.Add()(xs)])
    ref = xs[0] + xs[1]
    for x in xs[2:]:
        ref += x
    assert y.dtype == ref.dtype and np.array_equal(y, ref)


@pytest.mark.parametrize("shape", [(128, 7, 7, 64), (3, 2, 5, 3), (1, 1, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_avg_pool_is_bit_identical_to_numpy_for_any_thread_count(shape, dtype):
    rng = np.random.default_rng(6)
    x = rng.normal(1, 2, shape).astype(dtype)
    dy = rng.normal(0, 1, (shape[0], shape[3])).astype(dtype)

    def run():
        pool = jn.layers.GlobalAvgPool2D()
        return pool.forward(x, training=True), pool.backward(dy)
    y, dx = _for_each_thread_count(run)
    assert y.dtype == dtype and np.array_equal(y, x.mean(axis=(1, 2)))
    ref = np.empty_like(x)
    ref[...] = (dy / (shape[1] * shape[2]))[:, None, None, :]
    assert np.array_equal(dx, ref)


def test_relu_is_bit_identical_to_numpy_for_any_thread_count():
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (128, 14, 14, 32)).astype(np.float32)
    dy = rng.normal(0, 1, x.shape).astype(np.float32)

    def run():
        relu = jn.layers.ReLU()
        return relu.forward(x, training=True), relu.backward(dy)
    y, dx = _for_each_thread_count(run)
    assert np.array_equal(y, np.maximum(x, 0)) and np.array_equal(dx, dy * (x > 0))


def test_resnet_training_is_bit_identical_for_any_thread_count():
    def run():
        model = jn.models.mnist_resnet(rng=3)
        opt = jn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss_fn = jn.losses.SoftmaxCrossEntropy()
        rng = np.random.default_rng(4)
        for _ in range(2):
            x = rng.random((16, 28, 28, 1)).astype(np.float32)
            loss_fn.forward(model.forward(x, training=True), rng.integers(0, 10, 16))
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
            opt.zero_grad()
        return [p.data.copy() for p in model.parameters()] + [model.predict(x, batch_size=8)]
    _for_each_thread_count(run)
