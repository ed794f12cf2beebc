"""jn.set_num_threads: one setting, and the same numbers for every thread count."""
import numpy as np
import pytest

import jimunet as jn
from jimunet.parallel import pfor, pmatmul


@pytest.fixture(autouse=True)
def restore_threads():
    saved = jn.get_num_threads()
    yield
    jn.set_num_threads(saved)


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
