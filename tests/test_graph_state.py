"""Per-call state in graph models: a layer used at several nodes of a ``jn.Model`` keeps one
persistent state (weights, random stream, plans) and one per-call cache per node.

The shared-Dropout bug (issue #20): one Dropout object used at two nodes drew the SAME mask
at both (its Generator was copied per node), and the per-node copies were not in the
checkpoint, so a resumed run did not continue them.
"""
import numpy as np
import pytest

import jimunet as jn
from jimunet import layers as L
from jimunet.training import Trainer


def test_shared_dropout_draws_its_own_mask_at_each_node_from_one_stream():
    d = L.Dropout(0.5, rng=0)
    inp = jn.Input((200,))
    m = jn.Model(inp, [d(inp), d(inp)])
    x = np.ones((3, 200))
    y1, y2 = m.forward(x, training=True)
    assert not np.array_equal(y1, y2)
    lone = L.Dropout(0.5, rng=0)  # the same stream, drawn twice in node order
    assert np.array_equal(y1, lone.forward(x, training=True))
    assert np.array_equal(y2, lone.forward(x, training=True))
    assert d.rng.bit_generator.state == lone.rng.bit_generator.state
    g1, g2 = np.full((3, 200), 1.0), np.full((3, 200), 10.0)
    dx = m.backward([g1, g2])  # each node's backward applies its own mask
    assert np.array_equal(dx, g1 * y1 + g2 * y2)


def test_shared_layers_backward_reads_each_nodes_own_forward():
    # Layers whose backward reads buffers kept by the layer (im2col columns, Winograd tiles,
    # masks) used twice on inputs of the same shape: each node differentiates its own call.
    for algorithm in ("im2col", "winograd"):
        conv = L.Conv2D(8, 8, 3, rng=0, dtype=np.float64, algorithm=algorithm)
        inp = jn.Input((6, 6, 8))
        m = jn.Model(inp, conv(L.Tanh()(conv(inp))))
        x = np.random.default_rng(1).normal(size=(4, 6, 6, 8))
        g = np.random.default_rng(2).normal(size=(4, 6, 6, 8))
        m.zero_grad()
        m.forward(x, training=True)
        dx = m.backward(g)
        ref = L.Conv2D(8, 8, 3, rng=0, dtype=np.float64, algorithm="im2col")
        ref2 = L.Conv2D(8, 8, 3, rng=0, dtype=np.float64, algorithm="im2col")
        h = np.tanh(ref.forward(x, training=True))
        ref2.forward(h, training=True)
        dh = ref2.backward(g) * (1 - h ** 2)
        dref = ref.backward(dh)
        np.testing.assert_allclose(dx, dref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(conv.weight.grad, ref.weight.grad + ref2.weight.grad, rtol=1e-9, atol=1e-12)


def _graph(shared: bool, seed=0):
    rng = np.random.default_rng(seed)
    inp = jn.Input((6,))
    d1 = L.Dropout(0.3, rng=np.random.default_rng(seed + 1))
    d2 = d1 if shared else L.Dropout(0.3, rng=np.random.default_rng(seed + 2))
    h = d1(L.ReLU()(L.Dense(6, 8, rng=rng, dtype=np.float64)(inp)))
    h = d2(L.Tanh()(L.Dense(8, 8, rng=rng, dtype=np.float64)(h)))
    return jn.Model(inp, L.Dense(8, 3, rng=rng, dtype=np.float64)(h))


def _trainer(model):
    opt = jn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Trainer(model, jn.losses.SoftmaxCrossEntropy(), opt, batch_size=8, rng=5, progress=False,
                   log=lambda m: None)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "not-shared"])
def test_graph_model_with_dropout_resumes_bit_identically(tmp_path, shared):
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(40, 6)), rng.integers(0, 3, 40)
    straight = _graph(shared)
    t = _trainer(straight)
    t.fit(x, y, 2)

    first = _graph(shared)
    t1 = _trainer(first)
    t1.fit(x, y, 1)
    t1.save_checkpoint(tmp_path / "c.npz")
    resumed = _graph(shared, seed=100)  # other weights and streams: all must come from the file
    t2 = _trainer(resumed)
    t2.load_checkpoint(tmp_path / "c.npz")
    t2.fit(x, y, 2)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert np.array_equal(a.data, b.data)
    assert t.history.step_loss == t2.history.step_loss
    for a, b in zip(straight.layers, resumed.layers):
        if isinstance(a, L.Dropout):
            assert a.rng.bit_generator.state == b.rng.bit_generator.state


def test_nested_network_dropout_stream_is_saved():
    def build(seed):
        inner = jn.Sequential([L.Dense(4, 4, rng=seed, dtype=np.float64), L.Dropout(0.5, rng=seed)])
        inp = jn.Input((4,))
        return jn.Model(inp, L.Dense(4, 2, rng=seed, dtype=np.float64)(inner(inp)))
    a, b = build(0), build(1)
    a.forward(np.ones((5, 4)), training=True)
    b.set_rng_states(a.rng_states())
    x = np.ones((5, 4))
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.forward(x, training=True), b.forward(x, training=True))
