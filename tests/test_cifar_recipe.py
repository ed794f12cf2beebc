"""``jimunet train --model cifar``: the recipe's network, loss and one-cycle schedule, its
configuration, a run on a generated image folder, and a resumed run ending bit for bit where
the uninterrupted one ends."""
import numpy as np
import pytest

import jimunet as jn
from jimunet.app.cli import main
from jimunet.app.recipes import CIFAR_DEFAULTS, ConfigError, MNISTConfig, build, recipe_defaults
from jimunet.app.training import train_mnist

from test_app_data import make_folder
from test_modelinfo import cifar_like


def test_defaults_and_build():
    assert recipe_defaults("cifar", "cifar10") == CIFAR_DEFAULTS == recipe_defaults("cifar", "some/folder")
    cfg = MNISTConfig(data="cifar10", **CIFAR_DEFAULTS).validate()
    model, loss_fn, optimizer, schedule = build(cfg, train_size=45000, input_shape=(32, 32, 3))
    assert model.summary().total_params == jn.models.cifar_resnet(rng=0).summary().total_params == 412954
    assert loss_fn.label_smoothing == 0.2
    assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["weight_decay"] == 5e-4
    total = 10 * (45000 // 256)
    peak = round(0.2 * total)
    assert schedule(0) == 0.0 and schedule(peak) == 0.2 and schedule(total) == 0.0
    assert schedule(peak // 2) == pytest.approx(0.1, rel=1e-2) and schedule((peak + total) // 2) < 0.2


def test_mnist_configurations_are_unchanged():
    d = MNISTConfig().to_dict()
    assert "label_smoothing" not in d  # an MNIST run's files read as before
    assert MNISTConfig.from_dict(d).label_smoothing == 0.0
    _, loss_fn, _, _ = build(MNISTConfig(model="resnet"), train_size=1000)
    assert loss_fn.label_smoothing == 0.0
    assert MNISTConfig(label_smoothing=0.2).to_dict()["label_smoothing"] == 0.2


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), "0.2", True])
def test_bad_label_smoothing(bad):
    with pytest.raises(ConfigError, match=r"label_smoothing must lie in \[0, 1\)"):
        MNISTConfig(label_smoothing=bad).validate()


def test_cli_trains_a_folder(tmp_path, capsys):
    folder = make_folder(tmp_path / "data", size=(32, 32), train=12, test=4)
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--model", "cifar", "--epochs", "1", "--batch-size", "8",
                 "--out", str(out), "--no-report", "--train-size", "24"]) == 0
    text = capsys.readouterr().out
    assert "model cifar for 32x32x3 images" in text and "label smoothing 0.2" in text
    assert (out / "model.npz").is_file()


class StopAfterEpoch1(jn.training.callbacks.Callback):
    """Ends a 2-epoch run after its first epoch, as an interruption would (same schedule)."""

    def on_epoch_end(self, trainer, epoch, record):
        trainer.stop_training = True


def test_resume_is_bit_identical(tmp_path):
    data = (cifar_like(64), cifar_like(20, seed=1))
    cfg = MNISTConfig(data="cifar10", **{**CIFAR_DEFAULTS, "epochs": 2, "batch_size": 16}, validation_size=16,
                      train_size=48, report=False)
    whole, part = tmp_path / "whole", tmp_path / "part"
    train_mnist(cfg.replace(out=str(whole)), data=data, echo=False)
    train_mnist(cfg.replace(out=str(part)), data=data, echo=False, callbacks=[StopAfterEpoch1()])
    train_mnist(cfg.replace(out=None), resume=str(part), data=data, echo=False)
    a, b = np.load(whole / "model.npz"), np.load(part / "model.npz")
    keys = [k for k in a.files if not k.startswith("__")]
    assert keys and all(a[k].tobytes() == b[k].tobytes() for k in keys)
