"""Dropout inside a graph model (``jn.Model``): masks per node, and resuming from checkpoints.

One ``Dropout`` object used at two nodes draws its own mask at each node from the layer's one
generator, which the checkpoint saves (issue 20: before, the model copied the generator per node,
so both nodes drew the same mask, and a resumed run did not continue those copies).
"""
from __future__ import annotations

import numpy as np
import pytest

import jimunet as jn
from jimunet.training import Trainer

L = jn.layers


def test_dropout_in_a_graph_model_masks_in_training_only():
    inp = jn.Input((1000,))
    model = jn.Model(inp, L.Dropout(0.5, rng=0)(inp))
    x = np.ones((2, 1000), np.float32)
    y = model.forward(x, training=True)
    assert set(np.unique(y).tolist()) == {0.0, 2.0} and 0.4 < (y == 0).mean() < 0.6
    assert not np.array_equal(y[0], y[1])  # each sample its own mask
    np.testing.assert_array_equal(model.backward(np.ones_like(y)), y)  # the same mask, same scale
    assert not np.array_equal(model.forward(x, training=True), y)  # a new mask per call
    np.testing.assert_array_equal(model.forward(x, training=False), x)


def test_one_dropout_layer_at_two_nodes_draws_a_mask_per_node():
    drop = L.Dropout(0.5, rng=0)
    inp = jn.Input((1000,))
    model = jn.Model(inp, [drop(inp), drop(inp)])
    assert len(model.layers) == 1
    x = np.ones((2, 1000), np.float32)
    a, b = model.forward(x, training=True)
    for y in (a, b):
        assert set(np.unique(y).tolist()) == {0.0, 2.0}
    # each node's backward uses that node's mask: dX is the sum of the two masked gradients
    np.testing.assert_array_equal(model.backward([np.ones_like(a), np.ones_like(b)]), a + b)
    assert not np.array_equal(a, b), "both nodes of one Dropout layer drew the same mask"


def _model(shared: bool, seed: int):
    """Conv → Dense(16) → Dropout (at one node, or one layer at two nodes) → Dense(3)."""
    inp = jn.Input((6, 6, 1))
    h = L.Dense(2 * 4 * 4, 16, rng=2)(L.Flatten()(L.ReLU()(L.Conv2D(1, 2, 3, padding="valid", rng=1)(inp))))
    drop = L.Dropout(0.5, rng=seed)
    if shared:
        h = L.Add()([drop(h), drop(L.ReLU()(h))])
    else:
        h = drop(h)
    return jn.Model(inp, L.Dense(16, 3, rng=3)(h))


def _trainer(shared, seed, dropout_seed=None):
    model = _model(shared, seed if dropout_seed is None else dropout_seed)
    opt = jn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Trainer(model, jn.losses.SoftmaxCrossEntropy(), opt, batch_size=8, rng=seed, log=False, progress=False)


@pytest.mark.parametrize("shared", [False, True], ids=["one_node", "shared_at_two_nodes"])
def test_a_graph_model_with_dropout_resumes_bit_identically(tmp_path, shared):
    r = np.random.default_rng(0)
    x, y = r.normal(size=(32, 6, 6, 1)).astype(np.float32), r.integers(0, 3, 32)
    full = _trainer(shared, seed=7)
    full.fit(x, y, epochs=2)
    half = _trainer(shared, seed=7)
    half.fit(x, y, epochs=1)
    half.save_checkpoint(tmp_path / "ck.npz")
    resumed = _trainer(shared, seed=99)  # other streams: the checkpoint must restore them
    resumed.load_checkpoint(tmp_path / "ck.npz")
    resumed.fit(x, y, epochs=2)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert resumed.history.step_loss == full.history.step_loss
    # and the masks matter: other dropout streams give other weights
    other = _trainer(shared, seed=7, dropout_seed=8)
    other.fit(x, y, epochs=2)
    c = other.model.state_dict()
    assert not all(np.array_equal(a[k], c[k]) for k in a)
