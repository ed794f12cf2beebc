"""BatchNorm, Add, GlobalAvgPool2D, ReLU and a whole ResNet step: the same numbers for every
thread count. Add, GlobalAvgPool2D and ReLU also give exactly the whole-array NumPy results;
BatchNorm sums its channels over fixed blocks of rows, as long rows (``normalization.
_row_sums``), so it is checked against a float64 reference instead, at float32's precision."""
import numpy as np
import pytest

import jimunet as jn
from jimunet.layers.normalization import THREADED_SIZE, _block_sums, _row_sums


@pytest.fixture(autouse=True)
def restore_threads():
    saved = jn.get_num_threads()
    yield
    jn.set_num_threads(saved)


def _bn_reference(x, w, b, dy, eps, training, rm=None, rv=None):
    """BatchNorm's forward and backward in float64, whole-array NumPy, from the formulas."""
    c = x.shape[-1]
    x2, g, w, b = (a.astype(np.float64) for a in (x.reshape(-1, c), dy.reshape(-1, c), w, b))
    if training:
        m = x2.shape[0]
        mean = x2.mean(axis=0)
        xhat = (x2 - mean) / np.sqrt(((x2 - mean) ** 2).mean(axis=0) + eps)
    else:
        xhat = (x2 - rm) / np.sqrt(rv.astype(np.float64) + eps)
    y = xhat * w + b
    dbeta, dgamma = g.sum(axis=0), (g * xhat).sum(axis=0)
    if training:
        dx = w / np.sqrt(((x2 - mean) ** 2).mean(axis=0) + eps) / m * (m * g - dbeta - xhat * dgamma)
    else:
        dx = g * w / np.sqrt(rv.astype(np.float64) + eps)
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
TOL = {np.float32: 2e-6, np.float64: 1e-13}  # of the largest |value| of each result


def _close(a, ref, dtype):
    assert np.abs(a.astype(np.float64) - ref).max() <= TOL[dtype] * max(np.abs(ref).max(), 1.0)


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_is_bit_identical_for_any_thread_count_and_matches_float64(shape, training, dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(2, 3, shape).astype(dtype)
    dy = rng.normal(0, 1, shape).astype(dtype)
    first = None
    for threads in (1, 2, 3):
        jn.set_num_threads(threads)
        got, ref = _bn_run(x, dy, training, dtype)
        assert got[0].dtype == dtype and got[1].dtype == dtype
        for a, r in zip(got[:4], ref):
            _close(a, r, dtype)
        if first is None:
            first = got
        for a, f in zip(got, first):
            assert np.array_equal(a, f)


def test_batchnorm_with_float32_input_and_float64_parameters_computes_in_float64():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (16, 5, 5, 8)).astype(np.float32)
    dy = rng.normal(0, 1, x.shape).astype(np.float32)
    got, ref = _bn_run(x, dy, True, np.float64)
    for a, r in zip(got[:4], ref):
        assert a.dtype == np.float64
        _close(a, r, np.float64)


@pytest.mark.parametrize("rows, c", [(r, c) for r in (1, 2, 3, 17, 1000, 25088) for c in (1, 2, 3, 8, 16, 33, 64)] +
                         [(THREADED_SIZE // 4 + 5, 16), (THREADED_SIZE * 3 // 64 + 1, 64), (1500, 1500)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_sums_are_the_sums_and_the_same_for_any_thread_count(rows, c, dtype):
    rng = np.random.default_rng(rows * c)
    a = rng.normal(1, 3, (rows, c)).astype(dtype)
    b = rng.normal(0, 1, (rows, c)).astype(dtype)
    sums = []
    for threads in (1, 2, 3):
        jn.set_num_threads(threads)
        sums.append(_block_sums(a, lambda r: (_row_sums(a[r]), _row_sums(a[r], b[r]),
                                              _row_sums(a[r], dtype=np.float64))))
    for other in sums[1:]:
        for s, o in zip(sums[0], other):
            assert s.dtype == o.dtype and np.array_equal(s, o)
    total, dot, wide = sums[0]
    assert total.dtype == dtype and dot.dtype == dtype and wide.dtype == np.float64
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    scale = np.abs(a64).sum(axis=0)  # what bounds a sum's rounding error
    tol = 1e-6 if dtype == np.float32 else 1e-14
    assert (np.abs(total - a64.sum(axis=0)) <= tol * scale).all()
    assert (np.abs(dot - (a64 * b64).sum(axis=0)) <= tol * np.abs(a64 * b64).sum(axis=0)).all()
    assert (np.abs(wide - a64.sum(axis=0)) <= 1e-14 * scale).all()
    strided = _row_sums(np.asfortranarray(a))  # another memory layout: still the sums
    assert (np.abs(strided - a64.sum(axis=0)) <= tol * scale).all()


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
