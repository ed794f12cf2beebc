"""Test-time flip: ``FlipAverage``, the ``test_flip`` setting, and the model files that remember it."""
import json

import numpy as np
import pytest

import jimunet as jn
from jimunet.app.cli import main
from jimunet.app.modelinfo import ModelInfoError, model_info
from jimunet.app.recipes import (CIFAR_DEFAULTS, FASHION_CIFAR_DEFAULTS, ConfigError, MNISTConfig, describe_recipe,
                                 recipe_defaults)
from jimunet.app.training import train_mnist
from jimunet.data import ArrayDataset, Normalize, Subset
from jimunet.training import FlipAverage, evaluate

from test_app_data import make_folder
from test_datasets import needs_debian


def images(n, shape=(28, 28, 1), seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def model64():
    return jn.models.mnist_resnet(rng=0, dtype=np.float64, input_shape=(12, 10, 3))


def test_the_mean_of_the_scores_of_an_image_and_its_mirror_image(model64):
    x = images(5, (12, 10, 3)).astype(np.float64)
    mirrored = np.ascontiguousarray(x[:, :, ::-1])
    expected = (model64.predict(x, batch_size=2) + model64.predict(mirrored, batch_size=2)) / 2
    got = FlipAverage(model64).predict(x, batch_size=2)
    np.testing.assert_array_equal(got, expected)
    assert not np.allclose(model64.predict(x), expected)  # the network is not symmetric: the flip matters


def test_with_shifts_the_mean_over_six_views(model64):
    x = images(4, (12, 10, 3)).astype(np.float64)
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    views = [x, pad[:, 2:14, 2:12], pad[:, 0:12, 0:10]]  # each pixel from (1, 1) further down-right, up-left
    expected = sum(model64.predict(np.ascontiguousarray(v), batch_size=2)
                   + model64.predict(np.ascontiguousarray(v[:, :, ::-1]), batch_size=2) for v in views) / 6
    np.testing.assert_array_equal(FlipAverage(model64, shift=1).predict(x, batch_size=2), expected)
    assert "6 views" in FlipAverage(model64, 1).describe() and "mirror image" in FlipAverage(model64).describe()


def test_an_image_and_its_mirror_image_get_bit_identical_scores():
    m = jn.models.cifar_resnet(rng=1, input_shape=(28, 28, 1))
    x = images(6)
    tta = FlipAverage(m)
    np.testing.assert_array_equal(tta.predict(x), tta.predict(x[:, :, ::-1]))


def test_a_dataset_gives_the_same_scores_as_its_arrays(model64):
    pixels = np.random.default_rng(2).integers(0, 256, (7, 12, 10, 3), dtype=np.uint8)
    norm = Normalize([120.0, 110.0, 100.0], [60.0, 61.0, 62.0])
    tta = FlipAverage(model64)
    from_arrays = tta.predict(norm(pixels, np.float64), batch_size=3)
    from_dataset = tta.predict(ArrayDataset(pixels, np.zeros(7, np.int64)), batch_size=3,
                               normalize=lambda x: norm(x, np.float64))
    np.testing.assert_array_equal(from_dataset, from_arrays)


def test_evaluate_takes_it_like_a_model(model64):
    x = images(9, (12, 10, 3)).astype(np.float64)
    y = np.arange(9) % 10
    tta = FlipAverage(model64)
    res = evaluate(tta, x, y)
    assert res.accuracy == float((tta.predict(x).argmax(1) == y).mean())
    assert res.confusion.sum() == 9
    assert FlipAverage(model64).predict(x[:0]).shape == (0, 10)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="expected a model with a predict method, got int"):
        FlipAverage(3)
    for bad in (-1, 5, 1.0, True):
        with pytest.raises(ValueError, match=r"shift must be an integer from 0 to 4 pixels, got"):
            FlipAverage(jn.models.mnist_cnn(rng=0), bad)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, height, width, channels\), "
                                         r"got shape \(4, 784\)"):
        FlipAverage(jn.models.mnist_cnn(rng=0)).predict(np.zeros((4, 784), np.float32))


def test_the_setting_is_checked_and_leaves_old_run_files_alone():
    with pytest.raises(ConfigError, match="test_flip must be True or False, got 'yes'"):
        MNISTConfig(test_flip="yes").validate()
    with pytest.raises(ConfigError, match=r"test_shift must be 0 to 4 pixels, and needs test_flip, got 1 "
                                          r"\(test_flip False\)"):
        MNISTConfig(test_shift=1).validate()
    with pytest.raises(ConfigError, match="test_shift must be 0 to 4 pixels"):
        MNISTConfig(test_flip=True, test_shift=5).validate()
    assert "test_flip" not in MNISTConfig().to_dict()  # an MNIST run's files read as before
    assert MNISTConfig(test_flip=True).to_dict()["test_flip"] is True
    cfg = MNISTConfig(**FASHION_CIFAR_DEFAULTS, data="fashion-mnist")
    assert "shifts up to 2 px, horizontal flips, tested with flips and 1-px shifts" in describe_recipe(cfg, 214)


def test_the_fashion_recipe_is_the_cifar_recipe_with_shifts_and_flips():
    assert recipe_defaults("cifar", "fashion-mnist") == FASHION_CIFAR_DEFAULTS
    assert FASHION_CIFAR_DEFAULTS == {**CIFAR_DEFAULTS, "epochs": FASHION_CIFAR_DEFAULTS["epochs"], "shift": 2,
                                      "flip": True, "test_flip": True, "test_shift": 1}
    assert CIFAR_DEFAULTS["test_flip"] is True and recipe_defaults("cifar", "cifar10")["test_flip"] is True
    assert recipe_defaults("cifar", "mnist")["test_flip"] is False  # digits are not tested mirrored


def test_model_info_reads_it():
    m = jn.models.mnist_cnn(rng=0)
    assert model_info(m).predictor(m) is m
    m.metadata = {"test_flip": True}
    assert isinstance(model_info(m).predictor(m), FlipAverage)
    m.metadata = {"test_flip": True, "test_shift": 2}
    assert model_info(m).predictor(m).shift == 2
    m.metadata = {"test_flip": "yes"}
    with pytest.raises(ModelInfoError, match="test_flip must be true or false, got 'yes'"):
        model_info(m)
    for bad in ({"test_shift": 1}, {"test_flip": True, "test_shift": 9}, {"test_flip": True, "test_shift": "1"}):
        m.metadata = bad
        with pytest.raises(ModelInfoError, match=r"test_shift must be 0 to 4 pixels \(with test_flip\)"):
            model_info(m)


def test_a_run_with_test_flip_tests_saves_and_evaluates_with_flips(tmp_path, capsys):
    folder = make_folder(tmp_path / "colours")
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--epochs", "1", "--batch-size", "8", "--out", str(out),
                 "--no-report", "--test-flip", "--test-shift", "1"]) == 0
    log = capsys.readouterr().out
    assert "tested with flips and 1-px shifts" in log and "18 images, each averaged over 6 views: " in log
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("model.npz", "best.npz"):
        assert jn.load(out / name).metadata["test_flip"] is True and jn.load(out / name).metadata["test_shift"] == 1
    model = jn.load(out / "model.npz")
    info = model_info(model)
    test = jn.data.load(str(folder)).test
    expected = evaluate(FlipAverage(model, 1), test, normalize=info.normalize)
    assert metrics["test_accuracy"] == expected.accuracy
    assert main(["evaluate", str(out / "model.npz")]) == 0
    shown = capsys.readouterr().out
    assert "each averaged over 6 views: itself and moved 1 px diagonally both ways, and their mirror images " \
           "(the model was tested so)" in shown
    assert f"accuracy {100 * expected.accuracy:.2f}%" in shown
    # training does not depend on it: the same run without it has the same weights
    plain = tmp_path / "plain"
    assert main(["train", "--data", str(folder), "--epochs", "1", "--batch-size", "8", "--out", str(plain),
                 "--no-report"]) == 0
    a, b = jn.load(out / "model.npz"), jn.load(plain / "model.npz")
    assert all(np.array_equal(p.data, q.data) for p, q in zip(a.parameters(), b.parameters()))
    assert "test_flip" not in b.metadata and "test_shift" not in b.metadata


def test_the_fashion_recipe_runs_on_real_fashion_mnist(tmp_path):
    needs_debian()
    cfg = {**FASHION_CIFAR_DEFAULTS, "data": "fashion-mnist", "epochs": 1, "train_size": 512,
           "validation_size": 64, "test_size": 128, "out": str(tmp_path / "run"), "report": False, "progress": False}
    result = train_mnist(cfg, echo=False)
    model = jn.load(tmp_path / "run" / "model.npz")
    assert model.metadata["test_flip"] is True and model.metadata["test_shift"] == 1
    assert model.metadata["dataset"] == {"name": "fashion-mnist"}
    test = Subset(jn.data.load("fashion-mnist").test, np.arange(128))
    flipped = evaluate(FlipAverage(model, 1), test, normalize=model_info(model).normalize)
    assert result.test_accuracy == flipped.accuracy and np.array_equal(result.confusion, flipped.confusion)
