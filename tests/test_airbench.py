"""The pieces of the airbench recipe: per-group ``lr_scale``, ``training.Lookahead``,
``init.patch_whitening`` / ``partial_dirac`` / ``torch_uniform`` and ``models.cifar_airbench``
(against PyTorch in float64), and the head's 1/9 logit scale folded into its weights."""
import os
import sys

import numpy as np
import pytest

import jimunet as jn
from jimunet.training import Trainer
from jimunet.training.lookahead import Lookahead

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import airbench_torch  # noqa: E402


# -- lr_scale ---------------------------------------------------------------------------------

@pytest.mark.parametrize("opt", ["SGD", "Adam"])
def test_lr_scale_multiplies_the_groups_learning_rate(opt):
    def run(scaled):
        a, b = jn.Parameter(np.ones(3)), jn.Parameter(np.ones(3))
        groups = [{"params": [a]}, {"params": [b], **({"lr_scale": 4.0} if scaled else {"lr": 0.4})}]
        o = getattr(jn.optim, opt)(groups, lr=0.1)
        for step in range(3):
            a.grad[:] = b.grad[:] = [1.0, -2.0, 0.5]
            if step == 2:
                o.set_lr(0.05) if scaled else [g.update(lr=lr) for g, lr in zip(o.param_groups, (0.05, 0.2))]
            o.step()
        return a.data, b.data, [g["lr"] for g in o.param_groups]
    a1, b1, lrs1 = run(True)
    a2, b2, lrs2 = run(False)
    assert lrs1 == lrs2 == [0.05, 0.2]
    assert a1.tobytes() == a2.tobytes() and b1.tobytes() == b2.tobytes()


def test_lr_scale_is_saved_and_checked():
    p, q = jn.Parameter(np.zeros(2)), jn.Parameter(np.zeros(2))
    o = jn.optim.SGD([{"params": [p]}, {"params": [q], "lr_scale": 0.5}], lr=0.2, momentum=0.9)
    sd = o.state_dict()
    assert [g["lr_scale"] for g in sd["param_groups"]] == [1.0, 0.5] and sd["param_groups"][1]["lr"] == 0.1
    o2 = jn.optim.SGD([{"params": [p]}, {"params": [q]}], lr=0.2, momentum=0.9)
    o2.load_state_dict(sd)
    o2.set_lr(1.0)
    assert [g["lr"] for g in o2.param_groups] == [1.0, 0.5]
    for bad in (-1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="lr_scale"):
            jn.optim.SGD([{"params": [p], "lr_scale": bad}], lr=0.1)


def test_head_scale_folded_into_the_weights_trains_the_same():
    """airbench's logits·(1/9) after Dense(W), trained with (lr, wd), is Dense(W/9) trained with
    (lr/81, 81·wd): the same weights (÷9) after every step, up to rounding."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 6)), rng.integers(0, 4, 32)
    w0 = rng.standard_normal((6, 4))
    loss = jn.losses.SoftmaxCrossEntropy(label_smoothing=0.2)
    a, b = jn.layers.Dense(6, 4, use_bias=False, dtype=np.float64), jn.layers.Dense(6, 4, use_bias=False,
                                                                                   dtype=np.float64)
    a.weight.data[...], b.weight.data[...] = w0, w0 / 9
    oa = jn.optim.SGD([{"params": [a.weight], "weight_decay": 1e-2}], lr=1.5, momentum=0.85, nesterov=True)
    ob = jn.optim.SGD([{"params": [b.weight], "weight_decay": 81e-2, "lr_scale": 1 / 81}], lr=1.5, momentum=0.85,
                      nesterov=True)
    for step in range(5):
        for layer, opt, scale in ((a, oa, 1 / 9), (b, ob, 1.0)):
            opt.set_lr(1.5 * (1 - step / 10))
            layer.weight.zero_grad()
            loss(layer.forward(x, training=True) * scale, y)
            layer.backward(loss.backward() * scale)
            opt.step()
        np.testing.assert_allclose(b.weight.data * 9, a.weight.data, rtol=1e-12, atol=1e-13)
    assert not np.allclose(a.weight.data, w0)


# -- Lookahead ----------------------------------------------------------------------------------

def _toy(seed=0):
    model = jn.Sequential([jn.layers.Dense(4, 8, rng=seed, dtype=np.float64), jn.layers.BatchNorm(8, dtype=np.float64),
                           jn.layers.ReLU(), jn.layers.Dense(8, 3, rng=seed + 1, dtype=np.float64)])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 4))
    return model, x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)


def test_lookahead_follows_its_formula():
    model, x, y = _toy()
    arrays = [p.data for p in model.parameters() + model.buffers()]
    la = Lookahead(model, total_steps=7, every=2, base=0.5, power=1.0)
    la.on_train_begin(None)
    avg = [a.copy() for a in arrays]
    rng = np.random.default_rng(1)
    for step in range(7):
        for a in arrays:
            a += rng.standard_normal(a.shape) * 0.1
        expected = [a.copy() for a in arrays]
        n = step + 1
        if n % 2 == 0:
            d = 0.5 * n / 7
            for v, a in zip(avg, arrays):
                v += (1 - d) * (a - v)
            expected = avg
        if n == 7:
            expected = avg
        la.on_step_end(None, step, 0.0)
        for e, a in zip(expected, arrays):
            np.testing.assert_array_equal(a, e)
    assert la.decay(7) == 0.5 and la.decay(0) == 0.0
    for v, a in zip(la.average, arrays):
        np.testing.assert_array_equal(v, a)


def test_lookahead_resume_is_bit_identical(tmp_path):
    def trainer(model):
        opt = jn.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
        return Trainer(model, jn.losses.SoftmaxCrossEntropy(), opt, batch_size=8, rng=0, progress=False, log=False,
                       callbacks=[Lookahead(model, total_steps=20, every=3)])
    model, x, y = _toy()
    trainer(model).fit(x, y, epochs=4)
    whole = {k: v.copy() for k, v in model.state_dict().items()}
    model, _, _ = _toy()
    t = trainer(model)
    t.fit(x, y, epochs=2)
    t.save_checkpoint(tmp_path / "c.npz")
    model, _, _ = _toy(seed=5)  # other weights: everything comes from the checkpoint
    t = trainer(model)
    t.load_checkpoint(tmp_path / "c.npz")
    t.fit(x, y, epochs=4)
    assert all(whole[k].tobytes() == v.tobytes() for k, v in model.state_dict().items())


def test_lookahead_refuses_bad_arguments_and_state():
    model, _, _ = _toy()
    for kwargs in ({"total_steps": 0}, {"total_steps": 5, "every": 0}, {"total_steps": 5, "base": 1.5},
                   {"total_steps": 2.5}):
        with pytest.raises(ValueError, match="Lookahead"):
            Lookahead(model, **kwargs)
    la = Lookahead(model, total_steps=5)
    nan = [np.full(p.data.shape, np.nan) for p in model.parameters() + model.buffers()]
    for bad in ({}, {"average": [np.zeros(3)]}, {"average": "x"}, {"average": nan}):
        with pytest.raises(ValueError, match="Lookahead.load_state_dict"):
            la.load_state_dict(bad)


# -- initialisers -------------------------------------------------------------------------------

def test_patch_whitening_decorrelates_the_patches():
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((3, 3))
    x = (rng.standard_normal((60, 9, 9, 3)) @ mix).astype(np.float32)
    w = jn.init.patch_whitening(x, 2, eps=1e-9)
    assert w.shape == (2, 2, 3, 24)
    conv = jn.layers.Conv2D(3, 24, 2, padding="valid", use_bias=False, dtype=np.float64)
    conv.weight.data[...] = w
    out = conv.forward(x.astype(np.float64)).reshape(-1, 24)
    cov = out[:, :12].T @ out[:, :12] / len(out)  # uncentred, as the patches' covariance is
    np.testing.assert_allclose(cov, np.eye(12), atol=1e-6)
    np.testing.assert_array_equal(out[:, 12:], -out[:, :12])
    variances = np.diag(np.linalg.inv(np.diag(1 / np.sqrt(np.linalg.eigvalsh(cov)))))  # sorted, largest first
    assert variances.shape == (12,)


@pytest.mark.parametrize("bad", [np.zeros((5, 9, 9)), np.zeros((5, 1, 9, 3)), np.zeros((0, 9, 9, 3)),
                                 np.zeros((5, 9, 9, 3), np.int64), np.full((2, 4, 4, 3), np.nan)])
def test_patch_whitening_refuses_bad_images(bad):
    with pytest.raises(ValueError, match="patch_whitening"):
        jn.init.patch_whitening(bad, 2)


def test_partial_dirac_passes_the_first_channels_through():
    w = jn.init.partial_dirac()((3, 3, 4, 6), np.random.default_rng(0), np.float64)
    conv = jn.layers.Conv2D(4, 6, 3, use_bias=False, dtype=np.float64)
    conv.weight.data[...] = w
    x = np.random.default_rng(1).standard_normal((2, 5, 5, 4))
    np.testing.assert_array_equal(conv.forward(x)[..., :4], x)
    assert np.abs(w[..., 4:]).max() <= 1 / 6 and np.abs(w[..., 4:]).max() > 0.1  # torch_uniform, bound 1/sqrt(36)
    with pytest.raises(ValueError, match="partial_dirac"):
        jn.init.partial_dirac()((4, 6), np.random.default_rng(0))
    assert jn.init.get("partial_dirac").config == {"name": "partial_dirac"}


def test_torch_uniform_has_pytorchs_bound():
    layer = torch.nn.Conv2d(16, 8, 3)
    bound = float(torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)[0]) ** -0.5
    w = jn.init.torch_uniform()((3, 3, 16, 8), np.random.default_rng(0), np.float64)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert float(layer.weight.detach().abs().max()) <= bound


# -- the network ---------------------------------------------------------------------------------

def test_cifar_airbench_shapes_and_sizes():
    model = jn.models.cifar_airbench(rng=0)
    assert isinstance(model, jn.Sequential)  # a chain
    s = model.summary((32, 32, 3))
    assert (s.total_params, round(s.total_flops / 1e6, 1)) == (569656, 108.7)
    assert model.forward(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 10)
    assert not model.layers[0].weight.data.any()  # set by patch_whitening in the recipe
    for shape in ((28, 28, 1), (40, 64, 3), (9, 9, 3)):
        m = jn.models.cifar_airbench(rng=0, widths=(8, 16, 16), input_shape=shape, num_classes=5)
        assert m.forward(np.zeros((1, *shape), np.float32)).shape == (1, 5)
    with pytest.raises(ValueError, match="too small"):
        jn.models.cifar_airbench(input_shape=(8, 8, 3))
    with pytest.raises(ValueError, match="widths"):
        jn.models.cifar_airbench(widths=(8, 16))


@pytest.mark.parametrize("training", [False, True])
def test_cifar_airbench_matches_pytorch_float64(training):
    model = jn.models.cifar_airbench(rng=1, widths=(8, 16, 12), dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 32, 32, 3))
    model.layers[0].weight.data[...] = jn.init.patch_whitening(x, 2)
    model.layers[0].bias.data[...] = rng.normal(0, 0.1, 24)
    for layer in model.layers[1:]:
        # random filters: the partial identities copy ReLU's zeros, whose 2x2 pools tie up to the
        # last bit, and a tie may go to another cell in each framework's rounding
        if isinstance(layer, jn.layers.Conv2D):
            layer.weight.data[...] = rng.normal(0, 0.2, layer.weight.data.shape)
        if isinstance(layer, jn.layers.BatchNorm):
            c = layer.bias.data.shape
            layer.bias.data[...] = rng.normal(0, 0.2, c)
            layer.running_mean.data[...] = rng.normal(0, 0.3, c)
            layer.running_var.data[...] = rng.uniform(0.5, 2.0, c)
    net = airbench_torch.build_net(widths=(8, 16, 12)).double()
    airbench_torch.copy_from_jimunet(net, model)
    net.train(training)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    theirs = net(xt)
    ours = model.forward(x, training=training)
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(ours.shape)
    theirs.backward(torch.from_numpy(g))
    dx = model.backward(g)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-9, atol=1e-12)
    convs = [l for l in model.layers if isinstance(l, jn.layers.Conv2D)]
    for c, t in zip(convs, [net.whiten, *net.convs]):
        np.testing.assert_allclose(c.weight.grad, t.weight.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-9, atol=1e-12)
    bns = [l for l in model.layers if isinstance(l, jn.layers.BatchNorm)]
    for b, t in zip(bns, net.bns):
        np.testing.assert_allclose(b.bias.grad, t.bias.grad.numpy(), rtol=1e-9, atol=1e-12)
    head = model.layers[-1]  # holds airbench's 1/9 in its weights: 9x the gradient
    np.testing.assert_allclose(head.weight.grad, net.head.weight.grad.numpy().T * 9, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("training", [False, True])
def test_cifar_airbench_gradcheck(training):
    """The whole network against finite differences (tiny widths; random filters, so that no
    max pool holds a tie that a finite step could flip)."""
    model = jn.models.cifar_airbench(rng=3, widths=(3, 4, 4), input_shape=(12, 12, 3), num_classes=5,
                                     dtype=np.float64)
    rng = np.random.default_rng(4)
    for layer in model.layers:
        if isinstance(layer, jn.layers.Conv2D):
            layer.weight.data[...] = rng.normal(0, 0.5, layer.weight.data.shape)
    res = jn.gradcheck(model, rng.standard_normal((4, 12, 12, 3)), training=training, directions=8, seed=1, eps=1e-5)
    assert res.ok and res.max_error < 1e-6, str(res)

