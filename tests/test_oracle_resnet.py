"""PyTorch as the oracle for BatchNorm and for a residual block built with ``jn.Input``/``jn.Model``.

Everything in float64, compared with ``max|a - b| / max|b| <= 1e-12``: outputs, the input
gradient and every parameter gradient in training mode, the running statistics after
several training steps, and outputs and gradients in evaluation mode. Activations are NHWC
here and NCHW in torch; the tests transpose at the boundary.
"""
from __future__ import annotations

import numpy as np
import pytest

import torch  # the "test" extra pins it; a missing oracle must fail loudly, not skip

import jimunet as jn

L = jn.layers
TOL = 1e-12


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{a.shape} != {b.shape}"
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def nchw(a):
    return torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)), dtype=torch.float64)


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def hwio_to_oihw(w):
    return torch.tensor(np.ascontiguousarray(w.transpose(3, 2, 0, 1)), dtype=torch.float64)


def oihw_to_hwio(t):
    return t.detach().numpy().transpose(2, 3, 1, 0)


# -- BatchNorm alone -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (7, 5)], ids=["nhwc", "features"])
@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_batchnorm_matches_torch_over_several_steps(shape, momentum):
    rng = np.random.default_rng(1)
    c = shape[-1]
    ours = L.BatchNorm(c, momentum=momentum, eps=1e-3, dtype=np.float64)
    ref = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        c, momentum=momentum, eps=1e-3, dtype=torch.float64)
    g0, b0 = rng.uniform(0.5, 2, c), rng.normal(size=c)
    ours.weight.data[...], ours.bias.data[...] = g0, b0
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(g0))
        ref.bias.copy_(torch.tensor(b0))
    to_t = nchw if len(shape) == 4 else (lambda a: torch.tensor(a))
    from_t = nhwc if len(shape) == 4 else (lambda t: t.detach().numpy())
    for step in range(4):  # running statistics accumulate over the steps
        x = rng.normal(3.0, 2.0, shape)
        g = rng.normal(size=shape)
        y = ours.forward(x, training=True)
        ours.zero_grad()
        dx = ours.backward(g)
        xt = to_t(x).requires_grad_(True)
        ref.train()
        ref.zero_grad()
        yt = ref(xt)
        yt.backward(to_t(g))
        assert rel(y, from_t(yt)) <= TOL
        assert rel(dx, from_t(xt.grad)) <= TOL
        assert rel(ours.weight.grad, ref.weight.grad.numpy()) <= TOL
        assert rel(ours.bias.grad, ref.bias.grad.numpy()) <= TOL
        assert rel(ours.running_mean.data, ref.running_mean.numpy()) <= TOL
        assert rel(ours.running_var.data, ref.running_var.numpy()) <= TOL
    # evaluation uses the running statistics
    x, g = rng.normal(3.0, 2.0, shape), rng.normal(size=shape)
    y = ours.forward(x, training=False)
    ours.zero_grad()
    dx = ours.backward(g)
    ref.eval()
    ref.zero_grad()
    xt = to_t(x).requires_grad_(True)
    yt = ref(xt)
    yt.backward(to_t(g))
    assert rel(y, from_t(yt)) <= TOL
    assert rel(dx, from_t(xt.grad)) <= TOL
    assert rel(ours.weight.grad, ref.weight.grad.numpy()) <= TOL
    assert rel(ours.bias.grad, ref.bias.grad.numpy()) <= TOL


def test_batchnorm_buffers_are_not_parameters_and_no_optimizer_moves_them():
    bn = L.BatchNorm(3, dtype=np.float64)
    assert [p.name for p in bn.parameters()] == ["weight", "bias"]
    assert [b.name for b in bn.buffers()] == ["running_mean", "running_var"]
    model = jn.Sequential([L.Flatten(), L.Dense(4, 3, rng=0, dtype=np.float64), bn])
    opt = jn.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    x = np.random.default_rng(0).normal(size=(8, 2, 2))
    y = model.forward(x, training=True)
    after_forward = [b.data.copy() for b in bn.buffers()]
    model.backward(np.ones_like(y))
    opt.step()
    for b, before in zip(bn.buffers(), after_forward):
        np.testing.assert_array_equal(b.data, before)  # only forward passes in training move them
    assert set(model.state_dict()) >= {"2.running_mean", "2.running_var"}


def test_batchnorm_refuses_one_value_per_channel_in_training():
    with pytest.raises(ValueError, match="more than one value per channel"):
        L.BatchNorm(3).forward(np.zeros((1, 3), np.float32), training=True)
    assert L.BatchNorm(3).forward(np.zeros((1, 3), np.float32)).shape == (1, 3)  # evaluation is fine


# -- a residual block -------------------------------------------------------------------------

def _block(cin, cout, stride, rng):
    """jimunet: Conv → BN → ReLU → Conv → BN, plus identity or 1×1-projection (+BN) shortcut, then ReLU."""
    inp = jn.Input((8, 7, cin))
    h = L.Conv2D(cin, cout, 3, stride=stride, padding=1, use_bias=False, rng=rng, dtype=np.float64)(inp)
    h = L.ReLU()(L.BatchNorm(cout, dtype=np.float64)(h))
    h = L.Conv2D(cout, cout, 3, padding=1, use_bias=True, rng=rng, dtype=np.float64)(h)
    h = L.BatchNorm(cout, dtype=np.float64)(h)
    if cin == cout and stride == 1:
        sc = inp
    else:
        sc = L.Conv2D(cin, cout, 1, stride=stride, padding="valid", use_bias=False, rng=rng, dtype=np.float64)(inp)
        sc = L.BatchNorm(cout, dtype=np.float64)(sc)
    return jn.Model(inp, L.ReLU()(L.Add()([h, sc])))


class TorchBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        d = torch.float64
        self.c1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False, dtype=d)
        self.b1 = torch.nn.BatchNorm2d(cout, dtype=d)
        self.c2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=True, dtype=d)
        self.b2 = torch.nn.BatchNorm2d(cout, dtype=d)
        self.proj = None
        if cin != cout or stride != 1:
            self.proj = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, 0, bias=False, dtype=d),
                                            torch.nn.BatchNorm2d(cout, dtype=d))

    def forward(self, x):
        h = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(h + (x if self.proj is None else self.proj(x)))


def _pairs(model, ref):
    """(jimunet layer, torch module) in matching order."""
    convs = [layer for layer in model.layers if isinstance(layer, L.Conv2D)]
    bns = [layer for layer in model.layers if isinstance(layer, L.BatchNorm)]
    tconvs = [ref.c1, ref.c2] + ([ref.proj[0]] if ref.proj is not None else [])
    tbns = [ref.b1, ref.b2] + ([ref.proj[1]] if ref.proj is not None else [])
    assert len(convs) == len(tconvs) and len(bns) == len(tbns)
    return list(zip(convs, tconvs)), list(zip(bns, tbns))


@pytest.mark.parametrize("cin,cout,stride", [(4, 4, 1), (3, 5, 2), (4, 6, 1)],
                         ids=["identity", "projection_stride2", "projection"])
def test_residual_block_matches_torch(cin, cout, stride):
    rng = np.random.default_rng(cin * 10 + cout)
    model = _block(cin, cout, stride, rng)
    ref = TorchBlock(cin, cout, stride)
    convs, bns = _pairs(model, ref)
    with torch.no_grad():
        for ours, theirs in convs:
            theirs.weight.copy_(hwio_to_oihw(ours.weight.data))
            if ours.bias is not None:
                ours.bias.data[...] = rng.normal(size=ours.bias.data.shape)
                theirs.bias.copy_(torch.tensor(ours.bias.data))
        for ours, theirs in bns:
            ours.weight.data[...] = rng.uniform(0.5, 1.5, ours.num_features)
            ours.bias.data[...] = rng.normal(size=ours.num_features)
            theirs.weight.copy_(torch.tensor(ours.weight.data))
            theirs.bias.copy_(torch.tensor(ours.bias.data))
    for step in range(3):
        x, g = rng.normal(1.0, 2.0, (5, 8, 7, cin)), None
        y = model.forward(x, training=True)
        g = rng.normal(size=y.shape)
        model.zero_grad()
        dx = model.backward(g)
        ref.train()
        ref.zero_grad()
        xt = nchw(x).requires_grad_(True)
        yt = ref(xt)
        yt.backward(nchw(g))
        assert rel(y, nhwc(yt)) <= TOL, f"step {step}: output"
        assert rel(dx, nhwc(xt.grad)) <= TOL, f"step {step}: input gradient"
        for ours, theirs in convs:
            assert rel(ours.weight.grad, oihw_to_hwio(theirs.weight.grad)) <= TOL, ours.describe()
            if ours.bias is not None:  # a bias right before BatchNorm has zero gradient: rounding only
                err = np.abs(ours.bias.grad - theirs.bias.grad.numpy()).max()
                assert err <= TOL * np.abs(theirs.weight.grad.numpy()).max()
        for ours, theirs in bns:
            assert rel(ours.weight.grad, theirs.weight.grad.numpy()) <= TOL
            assert rel(ours.bias.grad, theirs.bias.grad.numpy()) <= TOL
            assert rel(ours.running_mean.data, theirs.running_mean.numpy()) <= TOL
            assert rel(ours.running_var.data, theirs.running_var.numpy()) <= TOL
    # evaluation mode: running statistics; output and gradients
    x = rng.normal(1.0, 2.0, (4, 8, 7, cin))
    y = model.forward(x, training=False)
    g = rng.normal(size=y.shape)
    model.zero_grad()
    dx = model.backward(g)
    ref.eval()
    ref.zero_grad()
    xt = nchw(x).requires_grad_(True)
    yt = ref(xt)
    yt.backward(nchw(g))
    assert rel(y, nhwc(yt)) <= TOL
    assert rel(dx, nhwc(xt.grad)) <= TOL
    for ours, theirs in convs:
        assert rel(ours.weight.grad, oihw_to_hwio(theirs.weight.grad)) <= TOL
