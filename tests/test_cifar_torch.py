"""benchmarks/cifar_torch.py, the PyTorch port of ``--model cifar``: the same network (parameter
count, output shape, and in float64 the same logits from the same weights, in training and
evaluation mode) and a tiny run on a generated folder."""
import os
import sys

import numpy as np
import pytest

import jimunet as jn

from test_app_data import make_folder

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import cifar_torch  # noqa: E402


def test_same_parameter_count_and_output_shape():
    net = cifar_torch.build_net()
    model = jn.models.cifar_resnet(rng=0)
    assert sum(p.numel() for p in net.parameters()) == model.summary().total_params == 412954
    x = np.zeros((2, 32, 32, 3), np.float32)
    assert tuple(net(torch.zeros(2, 3, 32, 32)).shape) == model.forward(x).shape == (2, 10)


def randomize_batchnorm(model, rng):
    """Non-trivial BatchNorm parameters and statistics, so that a port's mistakes in them show."""
    for layer in model.layers:
        if isinstance(layer, jn.layers.BatchNorm):
            c = layer.weight.data.shape
            layer.weight.data[...] = rng.uniform(0.5, 1.5, c)
            layer.bias.data[...] = rng.normal(0, 0.2, c)
            layer.running_mean.data[...] = rng.normal(0, 0.3, c)
            layer.running_var.data[...] = rng.uniform(0.5, 2.0, c)


@pytest.mark.parametrize("training", [False, True])
def test_same_logits_from_the_same_weights_float64(training):
    model = jn.models.cifar_resnet(rng=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    randomize_batchnorm(model, rng)
    net = cifar_torch.build_net().double()
    cifar_torch.copy_from_jimunet(net, model)
    x = rng.standard_normal((4, 32, 32, 3))
    ours = model.forward(x, training=training)
    net.train(training)
    with torch.no_grad():
        theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)


def test_test_time_flip_gives_the_same_scores_as_jimunets():
    from jimunet.app.recipes import CIFAR_DEFAULTS
    from jimunet.training import FlipAverage
    assert cifar_torch.TEST_FLIP is CIFAR_DEFAULTS["test_flip"] is True
    model = jn.models.cifar_resnet(rng=2, dtype=np.float64)
    net = cifar_torch.build_net().double()
    cifar_torch.copy_from_jimunet(net, model)
    x = np.random.default_rng(3).standard_normal((3, 32, 32, 3))
    theirs = cifar_torch.scores(net, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), flip=True).numpy()
    np.testing.assert_allclose(FlipAverage(model).predict(x), theirs, rtol=1e-10, atol=1e-10)
    plain = cifar_torch.scores(net, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert not np.allclose(plain, theirs, rtol=1e-6, atol=1e-6)


def test_schedule_matches_the_recipe():
    from jimunet.app.recipes import CIFAR_DEFAULTS, MNISTConfig, build
    cfg = MNISTConfig(data="cifar10", **CIFAR_DEFAULTS)
    schedule = build(cfg, train_size=45000, input_shape=(32, 32, 3))[3]
    total = 10 * (45000 // 256)
    assert all(schedule(s) == cifar_torch.lr_at(s, total) for s in range(0, total + 5, 7))


def test_augment_crops_and_flips():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3) + 1
    out = cifar_torch.augment(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.uint8


def two_steps_on_a_generated_folder(port, tmp_path):
    """A port's ``train`` for 2 epochs of one step each on a tiny generated folder: its result and lines."""
    folder = make_folder(tmp_path / "data", size=(32, 32), train=12, test=4)
    lines = []
    result = port.train(str(folder), epochs=2, threads=1, steps=1, echo=lines.append)
    assert len(result["epochs"]) == 2 and (12 * result["test_accuracy"]).is_integer()  # right answers / 12 images
    assert lines[0].startswith("epoch   1/2  train loss") and lines[-1].startswith("test error")


def test_two_steps_on_a_generated_folder(tmp_path):
    two_steps_on_a_generated_folder(cifar_torch, tmp_path)
