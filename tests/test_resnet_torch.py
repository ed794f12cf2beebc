"""benchmarks/resnet_torch.py, bench.py's PyTorch reference for ``mnist_resnet``: the same network
(parameter count, and in float64 the same logits and gradients from the same weights)."""
import os
import sys

import numpy as np
import pytest

import jimunet as jn

from test_cifar_torch import randomize_batchnorm

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import cifar_torch  # noqa: E402
import resnet_torch  # noqa: E402


@pytest.mark.parametrize("training", [False, True])
def test_same_logits_and_gradients_float64(training):
    model = jn.models.mnist_resnet(rng=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    randomize_batchnorm(model, rng)
    net = resnet_torch.build_net().double()
    assert sum(p.numel() for p in net.parameters()) == model.summary().total_params == 147066
    cifar_torch.copy_from_jimunet(net, model)
    x = rng.standard_normal((4, 28, 28, 1))
    ours = model.forward(x, training=training)
    g = rng.standard_normal(ours.shape)
    model.backward(g, input_grad=False)
    net.train(training)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    theirs = net(xt)
    theirs.backward(torch.from_numpy(g))
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-10)
    convs = [l for l in model.layers if isinstance(l, jn.layers.Conv2D)]
    for mine, their in zip(convs, net.convs):  # the stride-2 convs' padding shows here
        np.testing.assert_allclose(mine.weight.grad, their.weight.grad.numpy().transpose(2, 3, 1, 0),
                                   rtol=1e-9, atol=1e-10)
