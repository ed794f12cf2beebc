"""Label smoothing in SoftmaxCrossEntropy: PyTorch's float64 value and gradient, central
differences, the unchanged ε = 0 path, and the argument check."""
import numpy as np
import pytest

import jimunet as jn

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.2, 0.5])
@pytest.mark.parametrize("n,k,scale", [(1, 2, 1.0), (7, 10, 3.0), (4, 5, 30.0)])
def test_matches_torch_float64(eps, n, k, scale):
    rng = np.random.default_rng(n * k)
    logits = rng.standard_normal((n, k)) * scale
    labels = rng.integers(0, k, n)
    loss_fn = jn.losses.SoftmaxCrossEntropy(label_smoothing=eps)
    value = loss_fn.forward(logits, labels)
    grad = loss_fn.backward()
    t = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.tensor(labels), label_smoothing=eps)
    ref.backward()
    np.testing.assert_allclose(value, ref.item(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_finite_differences(eps):
    rng = np.random.default_rng(3)
    logits, labels = rng.standard_normal((3, 6)) * 2, np.array([0, 5, 2])
    loss_fn = jn.losses.SoftmaxCrossEntropy(eps)
    loss_fn.forward(logits, labels)
    grad = loss_fn.backward()
    h, num = 1e-6, np.zeros_like(logits)
    for idx in np.ndindex(*logits.shape):
        e = np.zeros_like(logits)
        e[idx] = h
        num[idx] = (float(loss_fn.forward(logits + e, labels)) - float(loss_fn.forward(logits - e, labels))) / (2 * h)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_zero_smoothing_is_bit_identical_to_the_default():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((64, 10)).astype(np.float32), rng.integers(0, 10, 64)
    a, b = jn.losses.SoftmaxCrossEntropy(), jn.losses.SoftmaxCrossEntropy(0.0)
    va, vb = a.forward(logits, labels), b.forward(logits, labels)
    assert va.dtype == np.float32 and va.tobytes() == vb.tobytes()
    assert a.backward().tobytes() == b.backward().tobytes()


def test_smoothing_keeps_float32():
    logits = np.zeros((2, 10), np.float32)
    loss_fn = jn.losses.SoftmaxCrossEntropy(0.2)
    assert loss_fn.forward(logits, np.array([1, 2])).dtype == np.float32
    assert loss_fn.backward().dtype == np.float32


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2, float("nan"), "0.1", True, None])
def test_bad_label_smoothing(bad):
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\)"):
        jn.losses.SoftmaxCrossEntropy(label_smoothing=bad)
