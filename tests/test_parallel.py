"""jn.set_num_threads: one setting, and the same numbers for every thread count."""
import threading

import numpy as np
import pytest

import jimunet as jn
from blas_rounding import rounding_by_shape
from jimunet.parallel import paccumulate_tmatmul, pfor, pmatmul


@pytest.fixture(autouse=True)
def restore_threads():
    saved = jn.get_num_threads()
    yield
    jn.set_num_threads(saved)


@pytest.fixture
def blas_rounding_by_shape(monkeypatch):
    """``np.matmul`` rounding by its operands' shapes (``blas_rounding``): a split whose GEMM
    shapes follow the thread count then changes the numbers here too, on any CPU. Returns
    the list of shapes multiplied, to show the patch was used."""
    calls = []
    lock = threading.Lock()

    def record(shapes):
        with lock:
            calls.append(shapes)
    monkeypatch.setattr(np, "matmul", rounding_by_shape(np.matmul, record))
    return calls


def _train_steps(threads, steps=3, batch=24, dtype=np.float32):
    jn.set_num_threads(threads)
    model = jn.models.mnist_cnn(rng=7, dtype=dtype)
    opt = jn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(1)
    losses = []
    for _ in range(steps):
        x = rng.random((batch, 28, 28, 1)).astype(dtype)
        y = rng.integers(0, 10, batch)
        losses.append(float(loss_fn.forward(model.forward(x, training=True), y)))
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        opt.zero_grad()
    return losses, [p.data.copy() for p in model.parameters()], model.predict(x, batch_size=10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_is_bit_identical_for_any_thread_count(dtype):
    ref_losses, ref_params, ref_pred = _train_steps(1, dtype=dtype)
    for threads in (2, 3):
        losses, params, pred = _train_steps(threads, dtype=dtype)
        assert losses == ref_losses
        for a, b in zip(params, ref_params):
            assert np.array_equal(a, b)
        assert np.array_equal(pred, ref_pred)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_product_has_the_same_shapes_for_any_thread_count(blas_rounding_by_shape, dtype):
    # Batch sizes divisible by 1, 2 and 3 threads, and ones that are not.
    for batch in (1, 4, 10, 16, 23):
        results = []
        for threads in (1, 2, 3):
            blas_rounding_by_shape.clear()
            results.append(_train_steps(threads, steps=2, batch=batch, dtype=dtype))
            shapes = sorted(blas_rounding_by_shape)
            assert any(len(a) == 2 and a[1] == 25 for a, _ in shapes)  # conv1's im2col GEMM ran patched
            assert any(a == (8, 8) for a, _ in shapes)  # and conv2's Winograd F(4x4, 5x5) transform (auto)
            if threads == 1:
                ref_shapes = shapes
            assert shapes == ref_shapes, f"batch {batch}: the GEMM shapes change with {threads} threads"
        (ref_losses, ref_params, ref_pred), *others = results
        for losses, params, pred in others:
            assert losses == ref_losses, f"batch {batch}"
            assert all(np.array_equal(a, b) for a, b in zip(params, ref_params)), f"batch {batch}"
            assert np.array_equal(pred, ref_pred), f"batch {batch}"


@pytest.mark.parametrize("n, work", [(1, None), (2, None), (7, None), (64, None), (1000, 1 << 20), (1000, 10)])
def test_pfor_cuts_the_same_slices_for_any_thread_count(n, work):
    seen = {}
    for threads in (1, 2, 3, 5, 8):
        jn.set_num_threads(threads)
        got, lock = [], threading.Lock()

        def record(sl):
            with lock:
                got.append((sl.start, sl.stop))
        pfor(record, n, work)
        seen[threads] = sorted(got)
    assert all(v == seen[1] for v in seen.values()), seen
    bounds = seen[1]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # disjoint, contiguous, complete


def test_blocked_reductions_do_not_depend_on_threads(blas_rounding_by_shape):
    rng = np.random.default_rng(3)
    a, b = rng.random((997, 40)).astype(np.float32), rng.random((997, 24)).astype(np.float32)
    w = rng.random((40, 24)).astype(np.float32)
    outs = []
    for threads in (1, 2, 3):
        jn.set_num_threads(threads)
        out, bias = np.zeros((40, 24), np.float32), np.zeros(24, np.float32)
        paccumulate_tmatmul(a, b, out, b_sum_out=bias)
        outs.append((out, bias, pmatmul(a, w), pmatmul(b.T, a)))
    for got in outs[1:]:
        assert all(np.array_equal(x, y) for x, y in zip(got, outs[0]))


def test_blocked_reduction_takes_its_operand_block_by_block():
    # A list of each block's rows (conv1 keeps its transposed windows that way) sums exactly
    # as the one array they come from.
    rng = np.random.default_rng(4)
    a, b = rng.random((50, 25)).astype(np.float32), rng.random((50, 8)).astype(np.float32)
    parts = [slice(0, 7), slice(7, 30), slice(30, 50)]
    whole, blocks = np.zeros((25, 8), np.float32), np.zeros((25, 8), np.float32)
    paccumulate_tmatmul(a, b, whole, parts=parts)
    paccumulate_tmatmul([np.asfortranarray(a[p]) for p in parts], b, blocks, parts=parts)
    assert np.array_equal(whole, blocks)
    with pytest.raises(ValueError, match="one per block"):
        paccumulate_tmatmul([a[p] for p in parts], b, blocks)


def test_pfor_covers_every_index_once_and_reraises():
    jn.set_num_threads(3)
    hits = np.zeros(1 << 17, np.int64)

    def add(sl):
        hits[sl] += 1
    pfor(add, hits.size, work=hits.size)
    assert (hits == 1).all()

    def boom(sl):
        if sl.start > 0:
            raise KeyError("from a worker")
    with pytest.raises(KeyError, match="from a worker"):
        pfor(boom, hits.size, work=hits.size)
    pfor(add, hits.size, work=hits.size)  # the pool still works after an error
    assert (hits == 2).all()


@pytest.mark.parametrize("shape", [(500, 300, 200), (6, 700, 900)])
def test_pmatmul_matches_matmul(shape):
    jn.set_num_threads(2)
    m, k, n = shape
    rng = np.random.default_rng(0)
    a, b = rng.random((m, k)), rng.random((k, n))
    np.testing.assert_allclose(pmatmul(a, b), a @ b, rtol=1e-12)
    np.testing.assert_allclose(pmatmul(a[:, ::2].T.T, b[::2]), a[:, ::2] @ b[::2], rtol=1e-12)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="positive int"):
        jn.set_num_threads(bad)
