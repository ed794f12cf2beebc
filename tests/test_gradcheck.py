"""Numerical gradient checks (float64) for every layer, a stack of layers and the loss, and
proof that ``jn.gradcheck`` fails when a gradient is wrong.

Central differences with step 1e-6 carry their own error (rounding ~u/eps = 1e-10 of the
function's size, truncation ~eps^2; measured up to 1.6e-7 relative on small coordinates), so
these checks catch wrong formulas, not lost precision: that float64 layers really compute in
float64 (errors ~1e-15, not float32's ~1e-7) is enforced against PyTorch in
``test_oracle_torch.py`` (``TOL64 = 1e-12``)."""
from __future__ import annotations

import numpy as np
import pytest

import jimunet as jn
from jimunet import layers as L


def _rng(seed=0):
    return np.random.default_rng(seed)


# (id, layer factory, input shape, training). Shapes are tiny so the elementwise check
# (every coordinate of the input and of every parameter) stays fast.
CASES = [
    ("conv_same_3x3", lambda: L.Conv2D(2, 3, 3, rng=1, dtype=np.float64), (2, 4, 5, 2), False),
    ("conv_same_even_k_stride2", lambda: L.Conv2D(2, 2, 2, stride=2, rng=2), (2, 5, 5, 2), False),
    ("conv_valid_rect", lambda: L.Conv2D(1, 2, (3, 2), stride=(1, 2), padding="valid", rng=3), (2, 5, 6, 1), False),
    ("conv_explicit_pad", lambda: L.Conv2D(2, 2, 3, stride=2, padding=1, rng=4), (1, 5, 4, 2), False),
    ("conv_no_bias_5x5", lambda: L.Conv2D(1, 2, 5, use_bias=False, rng=5), (2, 4, 4, 1), False),
    ("conv_winograd_3x3", lambda: L.Conv2D(2, 3, 3, algorithm="winograd", winograd_tile=2, rng=21), (2, 5, 4, 2), False),
    ("conv_winograd_5x5_valid", lambda: L.Conv2D(2, 2, 5, padding="valid", algorithm="winograd", rng=22),
     (1, 7, 8, 2), False),
    ("conv_auto_winograd", lambda: L.Conv2D(8, 8, (3, 4), rng=23), (1, 4, 5, 8), False),
    ("maxpool_2", lambda: L.MaxPool2D(2), (2, 4, 4, 2), False),
    ("maxpool_3s2_same", lambda: L.MaxPool2D(3, 2, padding="same"), (2, 5, 6, 2), False),
    ("maxpool_overlap_pad", lambda: L.MaxPool2D((3, 2), (1, 1), padding=1), (1, 4, 4, 2), False),
    ("avgpool_2", lambda: L.AvgPool2D(2), (2, 4, 4, 2), False),
    ("avgpool_3s2_same", lambda: L.AvgPool2D(3, 2, padding="same"), (2, 5, 6, 2), False),
    ("avgpool_pad_exclude", lambda: L.AvgPool2D(3, 1, padding=1, count_include_pad=False), (1, 4, 5, 1), False),
    ("dense", lambda: L.Dense(6, 4, rng=6), (3, 6), False),
    ("dense_no_bias", lambda: L.Dense(5, 3, use_bias=False, rng=7), (2, 5), False),
    ("relu", lambda: L.ReLU(), (3, 7), False),
    ("leaky_relu", lambda: L.LeakyReLU(0.2), (2, 3, 3, 2), False),
    ("sigmoid", lambda: L.Sigmoid(), (3, 7), False),
    ("tanh", lambda: L.Tanh(), (2, 3, 3, 2), False),
    ("gelu", lambda: L.GELU(), (2, 3, 3, 2), False),
    ("flatten", lambda: L.Flatten(), (2, 3, 2, 2), False),
    ("dropout_train", lambda: L.Dropout(0.4, rng=8), (4, 6), True),
    ("dropout_train_4d", lambda: L.Dropout(0.5, rng=9), (2, 3, 3, 2), True),
    ("dropout_eval", lambda: L.Dropout(0.5, rng=10), (3, 5), False),
    ("batchnorm_train_nhwc", lambda: L.BatchNorm(2, momentum=0.3), (3, 3, 2, 2), True),
    ("batchnorm_train_features", lambda: L.BatchNorm(4), (5, 4), True),
    ("batchnorm_eval", lambda: _trained_bn(3), (2, 2, 2, 3), False),
    ("global_avg_pool", lambda: L.GlobalAvgPool2D(), (2, 3, 4, 2), False),
    ("graph_residual_train", lambda: _branching(), (3, 5, 4, 2), True),
    ("graph_residual_eval", lambda: _branching(), (2, 5, 4, 2), False),
    ("graph_shared_layers", lambda: _shared(), (3, 4), True),
    ("sequential", lambda: jn.Sequential([
        L.Conv2D(1, 2, 3, rng=11), L.ReLU(), L.MaxPool2D(2, padding="same"), L.Conv2D(2, 3, 2, padding="valid", rng=12),
        L.Tanh(), L.Flatten(), L.Dense(12, 5, rng=13), L.Sigmoid(), L.Dropout(0.3, rng=14), L.Dense(5, 3, rng=15)]),
     (2, 5, 5, 1), True),
    ("sequential_avg_leaky", lambda: jn.Sequential([
        L.Conv2D(2, 2, 3, stride=2, rng=16), L.LeakyReLU(0.1), L.AvgPool2D(2, 1, padding="same"), L.Flatten(),
        L.Dense(8, 3, rng=17)]), (2, 4, 4, 2), False),
]


def _trained_bn(c):
    bn = L.BatchNorm(c)
    r = _rng(c)
    for p in bn.parameters() + bn.buffers():
        p.data[...] = r.uniform(0.5, 1.5, c)
    return bn


def _branching():
    """A residual block with a projection shortcut, a Concatenate and a tensor read three times."""
    inp = jn.Input((5, 4, 2))
    h = L.ReLU()(L.BatchNorm(3)(L.Conv2D(2, 3, 3, stride=2, use_bias=False, rng=21)(inp)))
    h = L.BatchNorm(3)(L.Conv2D(3, 3, 3, rng=22)(h))
    sc = L.BatchNorm(3)(L.Conv2D(2, 3, 1, stride=2, rng=23)(inp))
    h = L.ReLU()(L.Add()([h, sc]))
    both = L.Concatenate()([h, sc, L.Tanh()(sc)])
    return jn.Model(inp, L.Dense(9, 3, rng=24)(L.GlobalAvgPool2D()(both)))


def _shared():
    """The same Dense and BatchNorm objects used at two nodes each (shared weights, summed gradients)."""
    inp = jn.Input((4,))
    dense, bn = L.Dense(4, 4, rng=25), L.BatchNorm(4)
    a = L.Tanh()(bn(dense(inp)))
    b = L.Sigmoid()(bn(dense(a)))
    return jn.Model(inp, L.Add()([a, b]))


# Finite differences divide the forward pass's rounding by the step. Winograd's float64
# rounding is ~10x im2col's (its transforms), so its cases take a larger step; a convolution
# is linear in its input and in its weights, so the larger step adds no truncation error.
EPS = {"conv_winograd_3x3": 1e-4, "conv_winograd_5x5_valid": 1e-4, "conv_auto_winograd": 1e-4}
PARAMS = [(*c[1:], EPS.get(c[0], 1e-6)) for c in CASES]


@pytest.mark.parametrize("make,shape,training,eps", PARAMS, ids=[c[0] for c in CASES])
def test_layer_gradcheck_random_directions(make, shape, training, eps):
    x = _rng(len(shape)).standard_normal(shape)
    res = jn.gradcheck(make(), x, training=training, directions=8, seed=1, eps=eps)
    assert res.ok and res.max_error < 1e-6, str(res)


@pytest.mark.parametrize("make,shape,training,eps", PARAMS, ids=[c[0] for c in CASES])
def test_layer_gradcheck_elementwise(make, shape, training, eps):
    x = _rng(sum(shape)).standard_normal(shape)
    res = jn.gradcheck(make(), x, training=training, directions=0, elementwise=True, seed=2, eps=eps)
    assert res.ok and res.max_error < 1e-6, str(res)


def test_gradcheck_cases_really_run_winograd():
    for name in EPS:
        make, shape, _ = dict((c[0], c[1:]) for c in CASES)[name]
        layer = make()
        layer.forward(np.zeros(shape))
        assert layer.last_algorithm[0] == "winograd", name


def test_gradcheck_covers_every_layer_class():
    covered = set()
    for _, make, _, _ in CASES:
        layer = make()
        for sub in getattr(layer, "layers", [layer]):
            covered.add(type(sub).__name__)
        covered.add(type(layer).__name__)
    expected = set(L.base._REGISTRY)  # every registered layer class
    assert len(expected) >= 10, sorted(expected)
    assert expected <= covered, f"no gradcheck for {sorted(expected - covered)}"
    assert "Sequential" in covered


def test_gradcheck_leaves_the_layer_untouched():
    layer = L.Dense(4, 3, rng=0)  # float32
    w = layer.weight.data.copy()
    jn.gradcheck(layer, _rng().standard_normal((2, 4)))
    assert layer.weight.data.dtype == np.float32
    np.testing.assert_array_equal(layer.weight.data, w)
    assert not layer.weight.grad.any()


def test_dropout_gradcheck_really_uses_a_mask():
    """The training-mode check is only meaningful if the mask drops something."""
    layer = L.Dropout(0.4, rng=8)
    y = layer.forward(np.ones((4, 6)), training=True)
    assert (y == 0).any() and (y != 0).any()


# --------------------------------------------------------------------------- the loss


def _loss_value(logits, labels):
    return float(jn.losses.SoftmaxCrossEntropy().forward(logits, labels))


@pytest.mark.parametrize("n,k,scale", [(1, 2, 1.0), (3, 4, 1.0), (5, 10, 3.0), (2, 3, 20.0)])
def test_softmax_cross_entropy_finite_differences(n, k, scale):
    rng = _rng(n * k)
    logits = rng.standard_normal((n, k)) * scale
    labels = rng.integers(0, k, size=n)
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    loss_fn.forward(logits, labels)
    grad = loss_fn.backward()
    eps = 1e-6
    # elementwise
    num = np.zeros_like(logits)
    for idx in np.ndindex(*logits.shape):
        e = np.zeros_like(logits)
        e[idx] = eps
        num[idx] = (_loss_value(logits + e, labels) - _loss_value(logits - e, labels)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)
    # random directions
    for _ in range(5):
        v = rng.standard_normal(logits.shape)
        fd = (_loss_value(logits + eps * v, labels) - _loss_value(logits - eps * v, labels)) / (2 * eps)
        ana = float((grad * v).sum())
        assert abs(fd - ana) <= 1e-8 + 1e-5 * max(abs(fd), abs(ana)), (fd, ana)
    # rows of the gradient sum to zero ((softmax - onehot) / N)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-15)


def test_softmax_cross_entropy_gradient_is_mean_not_sum():
    logits = np.zeros((4, 5))
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, np.array([0, 1, 2, 3]))
    assert np.isclose(loss, np.log(5))
    grad = loss_fn.backward()
    assert np.isclose(grad[0, 0], (0.2 - 1.0) / 4) and np.isclose(grad[0, 1], 0.2 / 4)


# --------------------------------------------------------------------------- gradcheck must fail


class _BrokenInputGrad(L.Dense):
    def backward(self, grad, input_grad=True):
        return super().backward(grad, input_grad) * 1.01  # dX 1% too big


class _BrokenWeightGrad(L.Dense):
    def backward(self, grad, input_grad=True):
        dx = super().backward(grad, input_grad)
        self.weight.grad[0, 0] += 0.05  # one wrong entry in dW
        return dx


class _BrokenBiasGrad(L.Dense):
    def backward(self, grad, input_grad=True):
        dx = super().backward(grad, input_grad)
        self.bias.grad *= 2.0  # db counted twice
        return dx


class _DropoutForgetsScale(L.Dropout):
    """Inverted dropout's forward with the tutorial's backward: the mask without the 1/(1-rate)
    scale. The tutorial's own layer is classic dropout (×(1-rate) at test), where a mask-only
    backward is right; paired with jimunet's inverted forward it is the bug gradcheck catches."""

    def backward(self, grad, input_grad=True):
        dx = super().backward(grad, input_grad)
        return dx * (1.0 - self.rate)


class _MaxPoolToAllTies(L.MaxPool2D):
    """Routes the gradient to every cell equal to the max (wrong on ties, fine otherwise)."""

    def forward(self, x, training=False):
        return super().forward(x, training=False)  # an inference pass keeps the input and output

    def backward(self, grad, input_grad=True):
        _, xpad, y, pads, x_shape = self.cache
        dx = np.zeros(x_shape)
        for s in self._slabs(y.shape[1:3]):
            dx[s] += np.where(xpad[s] == y, grad, 0)
        return dx


@pytest.mark.parametrize("make,label", [
    (lambda: _BrokenInputGrad(4, 3, rng=0), "input"),
    (lambda: _BrokenWeightGrad(4, 3, rng=0), "parameter 0"),
    (lambda: _BrokenBiasGrad(4, 3, rng=0), "parameter 1"),
])
def test_gradcheck_detects_wrong_gradients(make, label):
    x = _rng(3).standard_normal((2, 4))
    with pytest.raises(jn.GradcheckError) as info:
        jn.gradcheck(make(), x)
    assert label in str(info.value) and "FAIL" in str(info.value)
    res = jn.gradcheck(make(), x, raise_exception=False)
    assert not res and not res.ok and res.max_error > 1e-3
    # the correct layer passes the same check
    assert jn.gradcheck(L.Dense(4, 3, rng=0), x)


def test_gradcheck_detects_missing_dropout_scale():
    x = _rng(4).standard_normal((5, 6))
    assert jn.gradcheck(L.Dropout(0.5, rng=1), x, training=True)
    with pytest.raises(jn.GradcheckError):
        jn.gradcheck(_DropoutForgetsScale(0.5, rng=1), x, training=True)


def test_tie_routing_needs_the_oracle_not_gradcheck():
    """Max is not differentiable at a tie, so finite differences cannot judge tie routing:
    a layer that gives the gradient to EVERY tied cell passes gradcheck on tie-free input.
    That is why test_oracle_torch checks ties against torch; here we show the difference."""
    x = _rng(5).standard_normal((1, 4, 4, 1))
    assert jn.gradcheck(_MaxPoolToAllTies(2), x)
    ties = np.zeros((1, 2, 2, 1))
    good, bad = L.MaxPool2D(2), _MaxPoolToAllTies(2)
    good.forward(ties)
    bad.forward(ties)
    g = np.ones((1, 1, 1, 1))
    assert good.backward(g).sum() == 1.0 and bad.backward(g).sum() == 4.0


def test_gradcheck_broken_layer_inside_sequential_is_detected():
    model = jn.Sequential([L.Flatten(), _BrokenInputGrad(6, 4, rng=0), L.Tanh(), L.Dense(4, 2, rng=1)])
    with pytest.raises(jn.GradcheckError, match="input"):
        jn.gradcheck(model, _rng(6).standard_normal((3, 2, 3)))


def test_gradcheck_elementwise_catches_a_single_wrong_entry():
    """A 1e-3 error in one weight entry along a random direction may be diluted; the
    elementwise pass pins it."""

    class Tiny(L.Dense):
        def backward(self, grad, input_grad=True):
            dx = super().backward(grad, input_grad)
            self.weight.grad[1, 2] += 1e-3
            return dx

    x = _rng(7).standard_normal((2, 3))
    res = jn.gradcheck(Tiny(3, 4, rng=0), x, directions=0, elementwise=True, raise_exception=False)
    assert not res
    assert any("parameter 0" in line for line in res.lines)
