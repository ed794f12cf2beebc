"""What a model is for (``jimunet.app.modelinfo``): the metadata training saves, the defaults of old files."""
import json
import os
import tarfile

import numpy as np
import pytest

import jimunet as jn
from jimunet.app.cli import main
from jimunet.app.modelinfo import MNIST_SHAPE, ModelInfoError, model_info, model_metadata
from jimunet.app.recipes import MNISTConfig
from jimunet.app.training import train_mnist

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_like(n, seed=0):
    """Colour 32x32 images whose class shows in the mean of one channel: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    x[np.arange(n), :, :, y % 3] += (y * 19).astype(np.uint8)[:, None, None]
    return x, y


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar") / "run"
    cfg = MNISTConfig(data="cifar10", model="resnet", epochs=1, batch_size=16, lr=0.05, dropout=0.0, lr_decay=1.0,
                      validation_size=32, train_size=96, out=str(out), report=False)
    result = train_mnist(cfg, data=(cifar_like(128), cifar_like(40, seed=1)), echo=False)
    return out, result


def test_a_file_without_metadata_is_an_mnist_digit_model():
    info = model_info(jn.models.mnist_cnn(rng=0))
    assert info.input_shape == MNIST_SHAPE and info.class_names == tuple("0123456789")
    assert info.normalize == jn.data.Normalize.mnist() and info.dataset == {"name": "mnist"}
    assert info.is_digit_model and info.describe_dataset() == "MNIST"


def test_the_old_runs_best_model_reads_as_mnist(tmp_path):
    with tarfile.open(os.path.join(FIXTURES, "resume_run.tar.xz"), "r:xz") as tar:
        tar.extract("resume_run/best.npz", tmp_path)
    model = jn.load(tmp_path / "resume_run" / "best.npz")
    assert "class_names" not in model.metadata  # written before the keys existed
    info = model_info(model)
    assert info.is_digit_model and info.input_shape == (28, 28, 1) and info.num_classes == 10


def test_class_names_default_to_the_models_outputs():
    info = model_info(jn.models.mnist_cnn(rng=0, num_classes=3))
    assert info.class_names == ("0", "1", "2")


def test_training_saves_the_metadata_in_every_file(cifar_run):
    out, result = cifar_run
    expected = {"input_shape": [32, 32, 3], "class_names": CIFAR, "dataset": {"name": "cifar10"}}
    for name in ("best.npz", "model.npz"):
        model = jn.load(out / name)
        assert {k: model.metadata[k] for k in expected} == expected, name
        info = model_info(model)
        assert info.input_shape == (32, 32, 3) and info.class_names == tuple(CIFAR) and not info.is_digit_model
        assert len(info.normalize.mean) == 3  # per channel, from the training images
    with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
        meta = json.loads(z["__meta__"].tobytes())["metadata"]
    assert {k: meta[k] for k in expected} == expected and meta["config"]["data"] == "cifar10"
    assert meta["config"]["crop"] == 4 and meta["config"]["flip"] is True  # colour images: crops and flips


def test_mnist_runs_store_no_new_config_fields():
    assert {"data", "flip", "crop"}.isdisjoint(MNISTConfig().to_dict())
    assert MNISTConfig.from_dict(MNISTConfig().to_dict()) == MNISTConfig()


@pytest.mark.parametrize("key, value, words", [
    ("input_shape", [28, 28], "input_shape must be [height, width, channels]"),
    ("input_shape", "28x28x1", "input_shape must be"),
    ("class_names", ["a", 3], "class_names must be a list"),
    ("class_names", ["only one"], "class_names must be a list of 2"),
    ("normalize", {"mean": [0.0, 0.0], "std": [1.0, 1.0]}, "one finite value per channel (1)"),
    ("normalize", {"mean": [0.0], "std": [0.0]}, "std > 0"),
    ("normalize", {"mean": "x"}, "normalize must be"),
    ("dataset", {"name": "imagenet"}, "dataset must be"),
])
def test_metadata_that_cannot_be_right_is_named(key, value, words):
    model = jn.models.mnist_cnn(rng=0)
    model.metadata = {key: value}
    with pytest.raises(ModelInfoError, match=None) as e:
        model_info(model)
    assert words in str(e.value) and "the model's metadata" in str(e.value)


def test_a_command_reports_bad_metadata_in_one_line(tmp_path, capsys):
    path = tmp_path / "m.npz"
    jn.models.mnist_cnn(rng=0).save(path, metadata={"input_shape": [28, 28, 1], "class_names": ["a", 1]})
    assert main(["predict", str(path), str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "class_names must be" in err
    assert "Error" not in err


def test_class_names_must_match_the_models_outputs(tmp_path, capsys):
    path = tmp_path / "m.npz"
    jn.models.mnist_cnn(rng=0).save(path, metadata={"class_names": ["a", "b"]})
    assert main(["evaluate", str(path)]) == 2
    assert "scores 10 classes but its metadata names 2" in capsys.readouterr().err


def test_model_metadata_is_json():
    meta = model_metadata((32, 32, 3), ("a", "b"), jn.data.Normalize([1, 2, 3], [4, 5, 6]),
                          {"name": "folder", "path": "/x"})
    assert json.loads(json.dumps(meta)) == meta
