"""benchmarks/airbench_torch.py, the PyTorch port of the airbench recipe: its settings, schedule,
lookahead and test views are jimunet's, and a tiny run on a generated folder. (Its network is
checked against ``cifar_airbench`` in float64 in test_airbench.py.)"""
import os
import sys

import numpy as np
import pytest

import jimunet as jn
from jimunet.app.recipes import AIRBENCH_DEFAULTS, AIRBENCH_SCHEDULE, CIFAR10_DEFAULTS, MNISTConfig, build, recipe_callbacks


torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import airbench_torch  # noqa: E402
import cifar_torch  # noqa: E402
from test_app_data import make_folder  # noqa: E402
from test_cifar_torch import two_steps_on_a_generated_folder  # noqa: E402


def test_settings_are_the_recipes():
    a = airbench_torch
    d = CIFAR10_DEFAULTS
    assert (a.EPOCHS, a.BATCH, a.LR, a.MOMENTUM, a.WEIGHT_DECAY, a.SMOOTHING, a.CROP, a.TEST_SHIFT) == \
        (d["epochs"], d["batch_size"], d["lr"], d["momentum"], d["weight_decay"], d["label_smoothing"], d["crop"],
         d["test_shift"])
    assert (a.WARMUP, a.LR_START, a.LR_END) == AIRBENCH_SCHEDULE
    assert a.ACTIVATION == d["activation"]
    net = a.build_net()
    assert sum(p.numel() for p in net.parameters()) == jn.models.cifar_airbench(rng=0).summary((32, 32, 3)).total_params


def test_schedule_matches_the_recipe():
    cfg = MNISTConfig(data="cifar10", **AIRBENCH_DEFAULTS)
    schedule = build(cfg, train_size=45000, input_shape=(32, 32, 3))[3]
    total = 11 * (45000 // 1024)
    assert all(schedule(s) == pytest.approx(airbench_torch.lr_at(s, total), rel=1e-12) for s in range(0, total + 3))


def test_lookahead_is_jimunets():
    model = jn.models.cifar_airbench(rng=0, widths=(4, 8, 8), dtype=np.float64)
    net = airbench_torch.build_net(widths=(4, 8, 8)).double()
    airbench_torch.copy_from_jimunet(net, model)
    cfg = MNISTConfig(data="cifar10", **{**AIRBENCH_DEFAULTS, "epochs": 1, "batch_size": 2})
    ours = recipe_callbacks(cfg, model, jn.optim.SGD(model.parameters(), lr=0.1), train_size=24)[0]
    ours.on_train_begin(None)
    theirs = airbench_torch.Lookahead(net, total=12)
    rng = np.random.default_rng(0)
    for step in range(12):
        noise = [rng.standard_normal(p.data.shape) for p in model.parameters()]
        for p, e in zip(model.parameters(), noise):
            p.data += e
        airbench_torch.copy_from_jimunet(net, model)  # the same weights before the pull...
        ours.on_step_end(None, step, 0.0)
        theirs.step_end(step + 1)
        head = model.layers[-1].weight.data.T / airbench_torch.LOGIT_SCALE  # ...and after it
        np.testing.assert_allclose(net.head.weight.detach().numpy(), head, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(net.convs[0].weight.detach().numpy(),
                                   model.layers[2].weight.data.transpose(3, 2, 0, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", airbench_torch.ACTIVATIONS)
def test_test_views_are_flip_average_with_shift(activation):
    model = jn.models.cifar_airbench(rng=2, widths=(4, 8, 8), dtype=np.float64, activation=activation)
    net = airbench_torch.build_net(widths=(4, 8, 8), activation=activation).double()
    airbench_torch.copy_from_jimunet(net, model)
    x = np.random.default_rng(3).standard_normal((3, 32, 32, 3))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    theirs = cifar_torch.scores(net, xt, flip=True, shift=1).numpy()
    np.testing.assert_allclose(jn.training.FlipAverage(model, shift=1).predict(x), theirs, rtol=1e-10, atol=1e-10)


def test_two_steps_on_a_generated_folder(tmp_path):
    two_steps_on_a_generated_folder(airbench_torch, tmp_path)


def test_the_command_line_takes_the_activation(tmp_path, capsys, monkeypatch):
    folder = make_folder(tmp_path / "data", size=(32, 32), train=12, test=4)
    built = []
    real = airbench_torch.build_net
    monkeypatch.setattr(airbench_torch, "build_net", lambda *a, **k: built.append(k["activation"]) or real(*a, **k))
    for flag in ([], ["--activation", "relu"]):
        assert airbench_torch.main([str(folder), "--epochs", "1", "--threads", "1", *flag]) == 0
    assert built == ["gelu", "relu"] and capsys.readouterr().out.count("test error") == 2  # the recipe's: GELU
    with pytest.raises(SystemExit):
        airbench_torch.main([str(folder), "--activation", "swish"])


def test_the_gpu_sweep_runs_its_smoke_plan_anywhere(tmp_path, capsys):
    import airbench_gpu_sweep
    folder = make_folder(tmp_path / "data", size=(32, 32), train=12, test=4)
    assert airbench_gpu_sweep.main([str(folder), "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "loaded 36 + 12 images" in out and "smoke              seed 1  accuracy" in out
    assert [(n, s) for n, _, s in airbench_gpu_sweep.PLAN][:6] == [
        ("base15", 1), ("gelu15", 1), ("alt15", 1), ("gelu+alt15", 1), ("wide10", 1), ("wide-gelu+alt10", 1)]
