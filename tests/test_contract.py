"""One contract, every layer (Keras' ``run_layer_test`` idea): shapes agree with ``summary``,
dtypes are preserved, arguments are never mutated, parameter gradients accumulate, results do
not depend on the batch, call order errors name the layer, and ``layer(x) == layer.forward(x)``.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

import jimunet as jn
from jimunet import layers as L

# (id, factory(dtype) -> layer, per-sample input shape)
LAYERS = [
    ("Conv2D_same", lambda dt: L.Conv2D(3, 4, 3, rng=0, dtype=dt), (6, 5, 3)),
    ("Conv2D_stride2_even_k", lambda dt: L.Conv2D(2, 3, 2, stride=2, rng=1, dtype=dt), (7, 6, 2)),
    ("Conv2D_valid_rect", lambda dt: L.Conv2D(1, 2, (3, 1), stride=(2, 1), padding="valid", rng=2, dtype=dt),
     (7, 4, 1)),
    ("Conv2D_pad_nobias", lambda dt: L.Conv2D(2, 2, 5, padding=2, use_bias=False, rng=3, dtype=dt), (5, 5, 2)),
    ("MaxPool2D", lambda dt: L.MaxPool2D(2), (6, 6, 3)),
    ("MaxPool2D_overlap_same", lambda dt: L.MaxPool2D(3, 2, padding="same"), (7, 5, 2)),
    ("MaxPool2D_pad", lambda dt: L.MaxPool2D((2, 3), 1, padding=(1, 1)), (4, 5, 2)),
    ("AvgPool2D", lambda dt: L.AvgPool2D(2), (6, 6, 3)),
    ("AvgPool2D_same", lambda dt: L.AvgPool2D(3, 2, padding="same"), (7, 5, 2)),
    ("AvgPool2D_pad_exclude", lambda dt: L.AvgPool2D(3, 1, padding=1, count_include_pad=False), (4, 5, 2)),
    ("Dense", lambda dt: L.Dense(10, 4, rng=4, dtype=dt), (10,)),
    ("Dense_nobias", lambda dt: L.Dense(6, 3, use_bias=False, rng=5, dtype=dt), (6,)),
    ("ReLU", lambda dt: L.ReLU(), (4, 4, 3)),
    ("LeakyReLU", lambda dt: L.LeakyReLU(0.1), (9,)),
    ("Sigmoid", lambda dt: L.Sigmoid(), (3, 2, 2)),
    ("Tanh", lambda dt: L.Tanh(), (8,)),
    ("GELU", lambda dt: L.GELU(), (3, 2, 2)),
    ("Flatten", lambda dt: L.Flatten(), (3, 4, 2)),
    ("Dropout", lambda dt: L.Dropout(0.5, rng=6), (5, 4)),
    ("BatchNorm_nhwc", lambda dt: _bn(3, dt), (4, 3, 3)),
    ("BatchNorm_features", lambda dt: _bn(5, dt), (5,)),
    ("GlobalAvgPool2D", lambda dt: L.GlobalAvgPool2D(), (4, 3, 2)),
    ("Model_branches", lambda dt: _graph(dt), (5, 6, 2)),
    ("Sequential", lambda dt: jn.Sequential([
        L.Conv2D(1, 2, 3, rng=7, dtype=dt), L.ReLU(), L.MaxPool2D(2, padding="same"), L.Flatten(),
        L.Dense(2 * 3 * 3, 4, rng=8, dtype=dt), L.Dropout(0.3, rng=9), L.Tanh(), L.Dense(4, 2, rng=10, dtype=dt)]),
     (5, 6, 1)),
]
IDS = [c[0] for c in LAYERS]


def _bn(c, dt):
    """A BatchNorm whose γ, β and running statistics are not at their initial values."""
    bn = L.BatchNorm(c, momentum=0.3, dtype=dt)
    r = np.random.default_rng(c)
    for p in bn.parameters() + bn.buffers():
        p.data[...] = r.uniform(0.5, 1.5, c)
    return bn


def _graph(dt):
    """Branches: a conv and BatchNorm path added to a 1x1 shortcut, then concatenated with it. (A layer
    used twice is tested in test_graph.py: its gradient is a sum, so "twice the gradient after two
    backward calls" holds there only to rounding.)"""
    inp = jn.Input((5, 6, 2))
    h = L.ReLU()(_bn(3, dt)(L.Conv2D(2, 3, 3, rng=11, dtype=dt)(inp)))
    sc = L.Conv2D(2, 3, 1, rng=12, dtype=dt)(inp)
    h = L.Concatenate()([L.Add()([h, sc]), sc])
    out = L.Dense(6, 4, rng=14, dtype=dt)(L.Tanh()(L.Dense(6, 6, rng=13, dtype=dt)(L.GlobalAvgPool2D()(h))))
    return jn.Model(inp, out)
PARAMS = [c[1:] for c in LAYERS]
DTYPES = [np.float32, np.float64]


def _x(shape, n, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(dtype)


def _grads(layer):
    return [p.grad.copy() for p in layer.parameters()]


def test_every_layer_class_is_covered():
    # Each class must be a case of its own (not only inside the Sequential case), and every
    # class in the layer registry (what ``jn.load`` can rebuild, i.e. every layer a user can
    # save) must be one, so a newly registered layer cannot be left out of the contract.
    # Layers that join several inputs (Add, Concatenate) cannot take the single array of this
    # harness: they must appear inside the branching model's case instead.
    covered = {type(make(np.float32)).__name__ for _, make, _ in LAYERS}
    expected = set(L.base._REGISTRY)
    joins = {name for name in expected if getattr(L.base._REGISTRY[name], "multi_input", False)}
    assert len(expected) >= 10 and joins >= {"Add", "Concatenate"}, sorted(expected)
    assert (expected - joins) | {"Sequential", "Model"} <= covered, \
        f"no contract case for {sorted(expected - joins - covered)}"
    in_graph = {type(layer).__name__ for layer in _graph(np.float32).layers}
    assert joins <= in_graph, f"no branching-model case uses {sorted(joins - in_graph)}"


@pytest.mark.parametrize("make,shape", PARAMS, ids=IDS)
@pytest.mark.parametrize("training", [False, True])
def test_output_shape_matches_summary(make, shape, training):
    layer = make(np.float64)
    x = _x(shape, 3, np.float64)
    y = layer.forward(x, training=training)
    expected = Sequential_summary_shape(layer, shape)
    assert tuple(y.shape) == (3, *expected)
    assert tuple(layer.output_shape(shape)) == expected
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape
    for p in layer.parameters():
        assert p.grad.shape == p.data.shape


def Sequential_summary_shape(layer, shape):
    return tuple(jn.Sequential([layer]).summary(shape).output_shape)


@pytest.mark.parametrize("make,shape", PARAMS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("training", [False, True])
def test_dtype_is_preserved(make, shape, dtype, training):
    layer = make(dtype)
    for p in layer.parameters():
        assert p.data.dtype == dtype and p.grad.dtype == dtype
    x = _x(shape, 2, dtype)
    y = layer.forward(x, training=training)
    assert y.dtype == dtype
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == dtype
    for p in layer.parameters():
        assert p.grad.dtype == dtype and p.data.dtype == dtype


@pytest.mark.parametrize("make,shape", PARAMS, ids=IDS)
@pytest.mark.parametrize("training", [False, True])
def test_arguments_are_never_mutated(make, shape, training):
    layer = make(np.float64)
    x = _x(shape, 4, np.float64, seed=1)
    x[0].flat[::3] = 0.0  # zeros too (ReLU kinks, MNIST-like backgrounds)
    x_copy = x.copy()
    y = layer.forward(x, training=training)
    g = np.random.default_rng(2).standard_normal(y.shape)
    g_copy = g.copy()
    layer.backward(g)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(g, g_copy)
    # and a second backward sees the same untouched arrays
    layer.backward(g)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(g, g_copy)


@pytest.mark.parametrize("make,shape", PARAMS, ids=IDS)
@pytest.mark.parametrize("training", [False, True])
def test_gradients_accumulate(make, shape, training):
    layer = make(np.float64)
    x = _x(shape, 3, np.float64, seed=3)
    y = layer.forward(x, training=training)
    g = np.random.default_rng(4).standard_normal(y.shape)
    layer.zero_grad()
    dx1 = layer.backward(g).copy()
    once = _grads(layer)
    dx2 = layer.backward(g)
    np.testing.assert_array_equal(dx2, dx1)  # dX does not accumulate
    for a, b in zip(_grads(layer), once):
        np.testing.assert_array_equal(a, 2 * b)
    if layer.parameters():
        assert any(np.abs(b).sum() > 0 for b in once), "backward left every parameter gradient at zero"
    layer.zero_grad()
    for p in layer.parameters():
        assert not p.grad.any()


@pytest.mark.parametrize("make,shape", PARAMS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_batch_independence(make, shape, dtype):
    """Sample i gives the same output and dX in a batch of 7 as alone (eval mode)."""
    rtol, atol = (1e-5, 1e-6) if dtype == np.float32 else (1e-12, 1e-13)
    layer = make(dtype)
    x = _x(shape, 7, dtype, seed=5)
    y7 = layer.forward(x, training=False).copy()
    g = np.random.default_rng(6).standard_normal(y7.shape).astype(dtype)
    dx7 = layer.backward(g).copy()
    for i in range(7):
        y1 = layer.forward(x[i:i + 1], training=False)
        np.testing.assert_allclose(y1[0], y7[i], rtol=rtol, atol=atol)
        dx1 = layer.backward(g[i:i + 1])
        np.testing.assert_allclose(dx1[0], dx7[i], rtol=rtol, atol=atol)


@pytest.mark.parametrize("make,shape", PARAMS, ids=IDS)
def test_backward_before_forward_raises(make, shape):
    layer = make(np.float32)
    y_shape = (2, *layer.output_shape(shape))
    with pytest.raises(RuntimeError) as info:
        layer.backward(np.ones(y_shape, np.float32))
    msg = str(info.value)
    name = type(layer.layers[-1] if isinstance(layer, jn.Sequential) else layer).__name__
    assert name in msg and "forward" in msg


@pytest.mark.parametrize("make,shape", PARAMS, ids=IDS)
@pytest.mark.parametrize("training", [False, True])
def test_call_equals_forward(make, shape, training):
    a = make(np.float64)
    b = copy.deepcopy(a)  # same weights and the same RNG state (same dropout masks)
    x = _x(shape, 3, np.float64, seed=7)
    np.testing.assert_array_equal(a(x, training=training), b.forward(x, training=training))
    if not training:
        np.testing.assert_array_equal(a(x), b.forward(x))


@pytest.mark.parametrize("make,shape", PARAMS, ids=IDS)
def test_parameters_weight_before_bias(make, shape):
    layer = make(np.float32)
    for sub in getattr(layer, "layers", [layer]):
        names = [p.name for p in sub.parameters()]
        assert names in ([], ["weight"], ["weight", "bias"])
        if names:
            assert sub.parameters()[0] is sub.weight


@pytest.mark.parametrize("make,shape", PARAMS, ids=IDS)
def test_config_rebuilds_an_equivalent_layer(make, shape):
    layer = make(np.float64)
    if isinstance(layer, (jn.Sequential, jn.Model)):
        clone = type(layer).from_config(layer.get_config())
    else:
        clone = L.from_config({"class": type(layer).__name__, "config": layer.get_config()})
    assert type(clone) is type(layer)
    assert clone.output_shape(shape) == layer.output_shape(shape)
    assert [p.shape for p in clone.parameters()] == [p.shape for p in layer.parameters()]
    assert [p.data.dtype for p in clone.parameters()] == [p.data.dtype for p in layer.parameters()]
    assert clone.describe() == layer.describe()
