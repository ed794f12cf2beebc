"""BatchNorm → ReLU and Add → ReLU run as one pass (``layers.activations.fused_relu``): the same
numbers, caches and gradients as the two layers one after the other, and never when something
else reads the output the ReLU overwrites."""
from __future__ import annotations

import numpy as np
import pytest

import jimunet as jn
from jimunet.layers import activations

L = jn.layers


@pytest.fixture
def spy(monkeypatch):
    """Counts the fused calls, by the class of the first layer."""
    calls = {"BatchNorm": 0, "Add": 0}
    for cls in (L.BatchNorm, L.Add):
        real = cls.forward_relu

        def counted(self, *a, _real=real, **k):
            calls[type(self).__name__] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(cls, "forward_relu", counted)
    return calls


def _run(make, x, fuse, monkeypatch):
    """Training forward, backward of a fixed gradient, then an evaluation forward, with fusion on or off."""
    monkeypatch.setattr(activations, "FUSE_RELU", fuse)
    model = make()
    y = model.forward(x, training=True)
    caches = [c for layer in model.layers for c in _arrays(layer.cache)]
    dx = model.backward(np.linspace(-1, 1, y.size, dtype=y.dtype).reshape(y.shape))
    grads = [p.grad.copy() for p in model.parameters()]
    buffers = [b.data.copy() for layer in model.layers for b in getattr(layer, "buffers", list)()]
    return [y, dx, model.forward(x, training=False)] + caches + grads + buffers


def _arrays(cache):
    if cache is None:
        return []
    if isinstance(cache, np.ndarray):
        return [cache.copy()]
    if isinstance(cache, (tuple, list)):
        return [a for c in cache for a in _arrays(c)]
    return []


def _graph_with_shared_relu_and_bn_output_read_twice(dtype):
    inp = jn.Input((6, 6, 3))
    h = L.Conv2D(3, 4, 3, rng=0, dtype=dtype)(inp)
    bn_out = L.BatchNorm(4, dtype=dtype)(h)
    relu = L.ReLU()
    a = relu(bn_out)  # bn_out is also read by the Add: this pair must not fuse
    b = relu(L.Add()([a, bn_out]))  # the shared ReLU fuses with this Add
    out = L.Dense(4, 3, rng=1, dtype=dtype)(L.GlobalAvgPool2D()(b))
    return jn.Model(inp, out)


def _graph_with_gelus(dtype):
    """BatchNorm → GELU and Add → GELU (a residual block with GELU)."""
    inp = jn.Input((6, 6, 3))
    h = L.GELU()(L.BatchNorm(4, dtype=dtype)(L.Conv2D(3, 4, 3, rng=0, dtype=dtype)(inp)))
    h = L.GELU()(L.Add()([h, L.Conv2D(3, 4, 1, rng=1, dtype=dtype)(inp)]))
    return jn.Model(inp, L.Dense(4, 3, rng=2, dtype=dtype)(L.GlobalAvgPool2D()(h)))


MODELS = {
    "mnist_resnet": (lambda dt: jn.models.mnist_resnet(rng=0, dtype=dt), (28, 28, 1), 6, {"BatchNorm": 4, "Add": 3}),
    # the last block's ReLU runs after its max pool (Sequential's fuse), so 5 of its 6 BatchNorms
    "cifar_airbench": (lambda dt: jn.models.cifar_airbench(rng=0, dtype=dt), (32, 32, 3), 4, {"BatchNorm": 5, "Add": 0}),
    "cifar_airbench_gelu": (lambda dt: jn.models.cifar_airbench(rng=0, dtype=dt, activation="gelu"), (32, 32, 3), 4,
                            {"BatchNorm": 6, "Add": 0}),  # GELU does not commute with the max pool
    "cifar_resnet": (lambda dt: jn.models.cifar_resnet(rng=0, dtype=dt), (32, 32, 3), 2, {"BatchNorm": 6, "Add": 2}),
    "gelus": (_graph_with_gelus, (6, 6, 3), 5, {"BatchNorm": 1, "Add": 1}),
    "shared": (_graph_with_shared_relu_and_bn_output_read_twice, (6, 6, 3), 5, {"BatchNorm": 0, "Add": 1}),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(MODELS))
def test_fused_runs_give_the_unfused_results_bit_for_bit(name, dtype, spy, monkeypatch):
    make, shape, batch, fused = MODELS[name]
    x = np.random.default_rng(3).normal(size=(batch, *shape)).astype(dtype)
    on = _run(lambda: make(dtype), x, True, monkeypatch)
    assert spy == {k: 2 * v for k, v in fused.items()}  # a training and an evaluation forward
    spy.update(BatchNorm=0, Add=0)
    off = _run(lambda: make(dtype), x, False, monkeypatch)
    assert spy == {"BatchNorm": 0, "Add": 0}
    assert len(on) == len(off)
    for a, b in zip(on, off):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_an_output_read_elsewhere_is_not_overwritten(spy):
    """A BatchNorm whose output is also a model output keeps it: no fusion there."""
    inp = jn.Input((4, 4, 2))
    bn_out = L.BatchNorm(2)(inp)
    model = jn.Model(inp, [bn_out, L.ReLU()(bn_out)])
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 2)).astype(np.float32)
    y_bn, y_relu = model.forward(x, training=True)
    assert spy["BatchNorm"] == 0
    assert (y_bn < 0).any()
    np.testing.assert_array_equal(y_relu, np.maximum(y_bn, 0))


def test_sequential_fuse_false_runs_each_layer(spy):
    layers = [L.Conv2D(1, 3, 3, rng=0), L.BatchNorm(3), L.ReLU(), L.Flatten(), L.Dense(48, 2, rng=1)]
    x = np.random.default_rng(1).normal(size=(4, 4, 4, 1)).astype(np.float32)
    fused = jn.Sequential(layers).forward(x, training=True)
    assert spy["BatchNorm"] == 1
    plain = jn.Sequential(layers, fuse=False).forward(x, training=True)
    assert spy["BatchNorm"] == 1
    np.testing.assert_array_equal(fused, plain)


def test_a_stage_cut_between_the_two_layers_is_kept(spy):
    """``stages`` that end at BatchNorm's output return it, not its ReLU (data-parallel cuts)."""
    model = jn.models.mnist_resnet(rng=0)
    x = np.random.default_rng(2).normal(size=(4, 28, 28, 1)).astype(np.float32)
    names = [layer for _, layer, _ in model.graph_steps()]
    cut = next(i for i in range(1, len(names)) if isinstance(names[i - 1], L.BatchNorm)
               and isinstance(names[i], L.ReLU))
    whole = model.forward(x, training=True)
    bn_out = model.forward(x, training=True, stages=slice(0, cut))
    assert (bn_out < 0).any()  # BatchNorm's output, before the ReLU
    np.testing.assert_array_equal(model.forward(bn_out, training=True, stages=slice(cut, None)), whole)
