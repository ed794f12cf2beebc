"""``jimunet train --model cifar``: the recipes' networks, losses and schedules (the narrow ResNet-9's
one-cycle on MNIST and Fashion-MNIST, airbench's on colour images), their configurations, a run
on a generated image folder, and resumed runs ending bit for bit where the uninterrupted ones end,
on any thread count."""
import numpy as np
import pytest

import jimunet as jn
from jimunet.app.cli import main
from jimunet.app import recipes
from jimunet.app.recipes import (AIRBENCH_BIAS_LR, AIRBENCH_DEFAULTS, AIRBENCH_WHITEN_BIAS_EPOCHS, CIFAR10_DEFAULTS,
                                 CIFAR_DEFAULTS, FASHION_CIFAR_DEFAULTS, ConfigError, MNISTConfig, build, prepare_model,
                                 recipe_callbacks, recipe_defaults)
from jimunet.app.training import train_mnist

from test_app_data import make_folder
from test_modelinfo import cifar_like


def test_which_recipe_cifar_means():
    assert recipe_defaults("cifar", "cifar10") == CIFAR10_DEFAULTS == recipe_defaults("cifar", "some/folder")
    assert CIFAR10_DEFAULTS == {**AIRBENCH_DEFAULTS, "epochs": 15, "activation": "gelu"}
    assert "activation" not in AIRBENCH_DEFAULTS  # --model airbench: ReLU
    assert recipe_defaults("airbench", "mnist") == AIRBENCH_DEFAULTS and AIRBENCH_DEFAULTS["epochs"] == 11
    assert recipe_defaults("cifar", "fashion-mnist") == FASHION_CIFAR_DEFAULTS
    assert recipe_defaults("cifar", "mnist") == {**CIFAR_DEFAULTS, "test_flip": False}


def test_airbench_build():
    cfg = MNISTConfig(data="cifar10", **AIRBENCH_DEFAULTS).validate()
    model, loss_fn, optimizer, schedule = build(cfg, train_size=45000, input_shape=(32, 32, 3))
    assert model.summary((32, 32, 3)).total_params == 569656 and loss_fn.label_smoothing == 0.2
    groups = optimizer.param_groups
    whiten, head = model.layers[0], model.layers[-1]
    bns = [l for l in model.layers if isinstance(l, jn.layers.BatchNorm)]
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert id(whiten.weight) not in in_groups and not any(id(b.weight) in in_groups for b in bns)
    assert [len(g["params"]) for g in groups] == [6, 1, 6, 1] and groups[3]["params"] == [head.weight]
    wd = AIRBENCH_DEFAULTS["weight_decay"]
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0, AIRBENCH_BIAS_LR, 1 / 81]
    assert groups[2]["weight_decay"] == wd / AIRBENCH_BIAS_LR and groups[3]["weight_decay"] == wd * 81
    total = 11 * (45000 // 1024)
    peak = int(0.23 * total)
    assert schedule(0) == pytest.approx(0.3) and schedule(peak) == 1.5 and schedule(total) == pytest.approx(0.105)
    lookahead, freeze = recipe_callbacks(cfg, model, optimizer, 45000)
    assert lookahead.total == total and lookahead.every == 5
    freeze.on_epoch_begin(None, AIRBENCH_WHITEN_BIAS_EPOCHS)
    assert groups[1]["lr_scale"] == 1.0
    freeze.on_epoch_begin(None, AIRBENCH_WHITEN_BIAS_EPOCHS + 1)
    assert groups[1]["lr_scale"] == 0.0
    assert recipe_callbacks(cfg.replace(model="cifar"), model, optimizer, 45000) == []


def test_whitening_sample_is_a_random_choice_of_the_training_images(monkeypatch):
    """A folder lists its images class by class: the whitening layer must not see only the first classes."""
    monkeypatch.setattr(recipes, "AIRBENCH_WHITEN_IMAGES", 8)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 32, 32, 3)).astype(np.float32)
    x[:32] *= np.float32(0.1)  # the "first class": another covariance than the rest
    train = (x, np.repeat(np.arange(2), 32))
    cfg = MNISTConfig(data="cifar10", **AIRBENCH_DEFAULTS)

    def whitening(seed):
        model = build(cfg.replace(seed=seed), train_size=64, input_shape=(32, 32, 3))[0]
        prepare_model(cfg.replace(seed=seed), model, train, normalize=None)
        return model.layers[0].weight.data

    first = jn.init.patch_whitening(x[:8], 2).astype(np.float32)
    assert np.array_equal(whitening(1), whitening(1))  # a fixed choice for a seed (resume: kept in the checkpoint)
    assert not np.allclose(whitening(1), first, rtol=0.1) and not np.array_equal(whitening(1), whitening(2))


def test_defaults_and_build():
    cfg = MNISTConfig(data="cifar10", **CIFAR_DEFAULTS).validate()  # the ResNet-9 recipe, on colour images
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
    assert "model airbench for 32x32x3 images" in text and "lookahead every 5 steps" in text
    assert "24 train / 0 validation" in text  # airbench trains on every training image
    assert (out / "model.npz").is_file()
    assert main(["train", "--data", str(folder), "--model", "cifar", "--epochs", "1", "--batch-size", "8",
                 "--out", str(tmp_path / "held"), "--no-report", "--train-size", "20", "--validation-size", "3"]) == 0
    assert "20 train / 3 validation" in capsys.readouterr().out


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


class StopAfter(jn.training.callbacks.Callback):
    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_end(self, trainer, epoch, record):
        trainer.stop_training = epoch >= self.epochs


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_airbench_resume_and_threads_are_bit_identical(tmp_path, activation):
    """Past the whitening bias's freeze and across lookahead pulls, resumed on another thread count."""
    data = (cifar_like(64), cifar_like(20, seed=1))
    epochs = AIRBENCH_WHITEN_BIAS_EPOCHS + 2
    cfg = MNISTConfig(data="cifar10", **{**AIRBENCH_DEFAULTS, "epochs": epochs, "batch_size": 16, "validation_size": 16},
                      train_size=48, report=False, threads=1, activation=activation)
    whole, part = tmp_path / "whole", tmp_path / "part"
    train_mnist(cfg.replace(out=str(whole)), data=data, echo=False)
    train_mnist(cfg.replace(out=str(part), threads=2), data=data, echo=False,
                callbacks=[StopAfter(AIRBENCH_WHITEN_BIAS_EPOCHS + 1)])
    train_mnist(cfg.replace(out=None, threads=2), resume=str(part), data=data, echo=False)
    a, b = np.load(whole / "model.npz"), np.load(part / "model.npz")
    keys = [k for k in a.files if not k.startswith("__")]
    assert keys and all(a[k].tobytes() == b[k].tobytes() for k in keys)
    loaded = jn.model.load(whole / "model.npz")
    whiten = loaded.layers[0].weight.data  # set from the data, then kept
    assert whiten.shape == (2, 2, 3, 24) and np.abs(whiten).min() > 0
    assert type(loaded.layers[1]).__name__ == activation.upper().replace("RELU", "ReLU")


def test_the_activation_option():
    assert "activation" not in MNISTConfig().to_dict()  # run files of ReLU networks read as before
    cfg = MNISTConfig(data="cifar10", **{**CIFAR10_DEFAULTS, "activation": "gelu"}).validate()
    assert MNISTConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["activation"] == "gelu"
    model = build(cfg, train_size=1024, input_shape=(32, 32, 3))[0]
    assert sum(isinstance(layer, jn.layers.GELU) for layer in model.layers) == 7
    assert not any(isinstance(layer, jn.layers.ReLU) for layer in model.layers)
    assert "whitened first layer, GELU, label smoothing" in recipes.describe_recipe(cfg, 48)
    with pytest.raises(ConfigError, match="activation must be one of relu, gelu, got 'swish'"):
        cfg.replace(activation="swish").validate()
    with pytest.raises(ConfigError, match="activation 'gelu' is for the airbench network .* the 'resnet' network"):
        MNISTConfig(model="resnet", activation="gelu").validate()


def test_cli_trains_a_folder_with_gelu(tmp_path, capsys):
    folder = make_folder(tmp_path / "data", size=(32, 32), train=12, test=4)
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--model", "cifar", "--activation", "gelu", "--epochs", "1",
                 "--batch-size", "8", "--out", str(out), "--no-report", "--train-size", "24"]) == 0
    assert "whitened first layer, GELU" in capsys.readouterr().out
    assert any(isinstance(layer, jn.layers.GELU) for layer in jn.load(out / "model.npz").layers)
    with pytest.raises(SystemExit):  # argparse: not a choice
        main(["train", "--data", str(folder), "--model", "cifar", "--activation", "swish"])
