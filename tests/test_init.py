"""Initialisers (bounds and variances, checked statistically on seeded draws) and seeding."""
from __future__ import annotations

import math

import numpy as np
import pytest

import jimunet as jn
from jimunet import init

TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated at +-2


def _draw(initialiser, shape, seed=0, dtype=np.float64):
    return initialiser(shape, np.random.default_rng(seed), dtype)


@pytest.mark.parametrize("stddev,mean", [(0.1, 0.0), (1.0, 0.0), (0.05, 0.3)])
def test_truncated_normal_bounds_and_std(stddev, mean):
    w = _draw(init.truncated_normal(stddev, mean), (400, 500))
    assert np.abs(w - mean).max() <= 2 * stddev * (1 + 1e-12)
    assert np.abs(w - mean).max() > 1.9 * stddev  # it does reach near the bound (not clipped early)
    assert w.mean() == pytest.approx(mean, abs=0.01 * stddev + 1e-12)
    # a normal truncated at 2 std keeps 0.8796 of the std (what tf.truncated_normal gives)
    assert w.std() == pytest.approx(stddev * TRUNC_STD, rel=0.01)
    # redrawn, not clipped: no pile-up at the bound
    assert (np.abs(w - mean) > 1.99 * stddev).mean() < 0.002


def test_truncated_normal_shape_and_dtype():
    w = _draw(init.truncated_normal(0.1), (5, 5, 1, 32), dtype=np.float32)
    assert w.shape == (5, 5, 1, 32) and w.dtype == np.float32
    assert np.abs(w).max() <= np.float32(0.2)


@pytest.mark.parametrize("shape,fan_in,fan_out", [((3136, 512), 3136, 512), ((5, 5, 32, 64), 800, 1600),
                                                  ((3, 3, 16, 8), 144, 72), ((300, 100), 300, 100)])
def test_he_and_glorot_variances(shape, fan_in, fan_out):
    n = int(np.prod(shape))
    rel = 4 * math.sqrt(2 / n) + 0.01  # a few standard errors of a variance estimate, loosely
    he = 2.0 / fan_in
    glorot = 2.0 / (fan_in + fan_out)
    w = _draw(init.he_normal(), shape, seed=1)
    assert w.var() == pytest.approx(he, rel=rel)
    assert np.abs(w).max() <= 2 * math.sqrt(he) / TRUNC_STD * (1 + 1e-12)
    w = _draw(init.he_uniform(), shape, seed=2)
    assert w.var() == pytest.approx(he, rel=rel)
    assert np.abs(w).max() <= math.sqrt(6.0 / fan_in)
    w = _draw(init.glorot_uniform(), shape, seed=3)
    assert w.var() == pytest.approx(glorot, rel=rel)
    assert np.abs(w).max() <= math.sqrt(6.0 / (fan_in + fan_out))
    w = _draw(init.glorot_normal(), shape, seed=4)
    assert w.var() == pytest.approx(glorot, rel=rel)
    assert np.abs(w).max() <= 2 * math.sqrt(glorot) / TRUNC_STD * (1 + 1e-12)
    for w in (_draw(init.he_normal(), shape, seed=5), _draw(init.glorot_uniform(), shape, seed=6)):
        assert abs(w.mean()) < 4 * w.std() / math.sqrt(n)


def test_layers_use_their_initialisers():
    conv = jn.layers.Conv2D(32, 64, 5, rng=0)  # Keras' default glorot_uniform, HWIO fans
    lim = math.sqrt(6 / (800 + 1600))
    assert np.abs(conv.weight.data).max() <= lim
    assert conv.weight.data.var() == pytest.approx(lim ** 2 / 3, rel=0.03)
    assert not conv.bias.data.any()
    dense = jn.layers.Dense(300, 100, weight_init="he_normal", bias_init={"name": "constant", "value": 0.1}, rng=0)
    assert dense.weight.data.var() == pytest.approx(2 / 300, rel=0.05)
    np.testing.assert_array_equal(dense.bias.data, np.full(100, 0.1, np.float32))


def test_constant_and_zeros():
    np.testing.assert_array_equal(_draw(init.constant(0.1), (3,)), [0.1, 0.1, 0.1])
    z = _draw(init.zeros(), (2, 2), dtype=np.float32)
    assert z.dtype == np.float32 and not z.any()


def test_get_accepts_names_configs_and_callables():
    assert init.get("he_normal").config == {"name": "he_normal"}
    assert init.get({"name": "truncated_normal", "stddev": 0.2}).config["stddev"] == 0.2
    fn = lambda shape, rng, dtype=np.float32: np.ones(shape, dtype)  # noqa: E731
    assert init.get(fn) is fn
    assert init.config_of(fn) is None
    with pytest.raises(ValueError, match="unknown initialiser"):
        init.get("lecun_magic")
    with pytest.raises(ValueError, match="unknown initialiser"):
        jn.layers.Dense(3, 2, weight_init="nope")


def test_mnist_cnn_initialisation_follows_the_tf_sample():
    model = jn.models.mnist_cnn(rng=0)
    conv1, conv2, fc1, fc2 = model[0], model[3], model[7], model[10]
    for layer in (conv1, conv2, fc1, fc2):
        w = layer.weight.data
        assert w.dtype == np.float32
        assert np.abs(w).max() <= np.float32(0.2)
    assert fc1.weight.data.std() == pytest.approx(0.1 * TRUNC_STD, rel=0.01)
    assert not conv1.bias.data.any()
    for layer in (conv2, fc1, fc2):
        np.testing.assert_allclose(layer.bias.data, 0.1)


# --------------------------------------------------------------------------- seeding


def _weights(model):
    return [p.data.copy() for p in model.parameters()]


def _dropout_outputs(model, seed=0):
    h = np.random.default_rng(seed).random((4, 512)).astype(np.float32) + 0.5
    drop = model[9]
    assert isinstance(drop, jn.layers.Dropout)
    return [drop.forward(h, training=True) for _ in range(3)]


def test_set_seed_twice_gives_identical_weights_and_masks():
    jn.set_seed(123)
    a = jn.models.mnist_cnn()
    jn.set_seed(123)
    b = jn.models.mnist_cnn()
    for wa, wb in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(wa, wb)
    for ya, yb in zip(_dropout_outputs(a), _dropout_outputs(b)):
        np.testing.assert_array_equal(ya, yb)
    # the masks really are masks, and successive calls draw new ones
    ys = _dropout_outputs(a)
    assert (ys[0] == 0).any() and not np.array_equal(ys[0] == 0, ys[1] == 0)


def test_same_seed_same_training_step():
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    y = np.array([0, 1, 2, 3])
    results = []
    for _ in range(2):
        jn.set_seed(7)
        model = jn.models.mnist_cnn()
        loss_fn = jn.losses.SoftmaxCrossEntropy()
        loss = loss_fn.forward(model.forward(x, training=True), y)
        model.backward(loss_fn.backward())
        results.append((float(loss), [p.grad.copy() for p in model.parameters()]))
    assert results[0][0] == results[1][0]
    for ga, gb in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(ga, gb)


def test_different_seeds_give_different_weights_and_masks():
    jn.set_seed(1)
    a = jn.models.mnist_cnn()
    jn.set_seed(2)
    b = jn.models.mnist_cnn()
    assert all(not np.array_equal(wa, wb) for wa, wb in zip(_weights(a)[::2], _weights(b)[::2]))
    assert not np.array_equal(_dropout_outputs(a)[0], _dropout_outputs(b)[0])


def test_explicit_rng_ignores_the_global_seed():
    jn.set_seed(1)
    a = jn.models.mnist_cnn(rng=42)
    jn.set_seed(2)
    b = jn.models.mnist_cnn(rng=42)
    for wa, wb in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(wa, wb)
    for ya, yb in zip(_dropout_outputs(a), _dropout_outputs(b)):
        np.testing.assert_array_equal(ya, yb)


def test_standalone_dropout_follows_set_seed():
    x = np.ones((50, 50))
    jn.set_seed(9)
    a = jn.layers.Dropout(0.5).forward(x, training=True)
    jn.set_seed(9)
    b = jn.layers.Dropout(0.5).forward(x, training=True)
    np.testing.assert_array_equal(a, b)
    jn.set_seed(10)
    c = jn.layers.Dropout(0.5).forward(x, training=True)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None])
def test_set_seed_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="set_seed"):
        jn.set_seed(bad)
