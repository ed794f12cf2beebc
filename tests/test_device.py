"""Choosing a device: names, clear errors without CuPy or a GPU, and ``to("cpu")`` that
changes nothing. The GPU itself is exercised by tests/test_gpu.py (marked ``gpu``)."""
import os

import numpy as np
import pytest

import jimunet as jn
from jimunet import backend
from jimunet.app.cli import main


@pytest.fixture
def no_cupy(monkeypatch):
    """This machine as one without CuPy, whatever is installed."""
    monkeypatch.setattr(backend, "_cupy", None)


@pytest.mark.parametrize("name, parsed", [("cpu", ("cpu", 0)), ("CPU", ("cpu", 0)), ("cuda", ("cuda", 0)),
                                          ("cuda:0", ("cuda", 0)), ("cuda:3", ("cuda", 3))])
def test_device_names(name, parsed):
    assert backend.parse_device(name) == parsed


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:-1", "cuda:x", "tpu", "", None, 0])
def test_bad_device_names_are_refused(bad):
    with pytest.raises(jn.DeviceError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        backend.check_device(bad)


def test_cuda_without_cupy_says_what_to_install(no_cupy):
    with pytest.raises(jn.DeviceError, match=r'needs CuPy, which is not installed: pip install "jimunet\[gpu\]"'):
        jn.models.mnist_cnn(rng=0).to("cuda")
    with pytest.raises(jn.DeviceError, match="CuPy"):
        jn.asarray(np.zeros(3), device="cuda:1")


def test_to_cpu_keeps_everything_and_training_goes_on():
    def run(move):
        model = jn.models.mnist_cnn(rng=3, dropout=0.5, dtype=np.float64)
        opt = jn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss_fn = jn.losses.SoftmaxCrossEntropy()
        rng = np.random.default_rng(0)
        for step in range(4):
            if move and step == 2:
                assert model.to("cpu") is model and model.device == "cpu"
            x, y = rng.random((6, 28, 28, 1)), rng.integers(0, 10, 6)
            loss_fn.forward(model.forward(x, training=True), y)
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
            opt.zero_grad()
        return [p.data for p in model.parameters()]
    for a, b in zip(run(False), run(True)):
        assert np.array_equal(a, b)


def test_asarray_on_the_cpu_is_numpy():
    x = jn.asarray([1.0, 2.0], device="cpu")
    assert type(x) is np.ndarray and x.tolist() == [1.0, 2.0]
    assert backend.device_of(x) == "cpu" and jn.layers.ReLU().device == "cpu"


@pytest.mark.parametrize("argv", [["train", "--self-test", "--device", "cuda"],
                                  ["evaluate", "{model}", "--device", "cuda"],
                                  ["predict", "{model}", "{npy}", "--device", "cuda:0"]])
def test_cli_device_cuda_without_cupy_is_a_clear_error(argv, tmp_path, capsys, no_cupy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jn.models.mnist_cnn(rng=0).save(tmp_path / "m.npz")
    np.save(tmp_path / "x.npy", np.zeros((28, 28), np.uint8))
    argv = [a.format(model=tmp_path / "m.npz", npy=tmp_path / "x.npy") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jimunet {argv[0]}: error: ") and 'pip install "jimunet[gpu]"' in err
    assert not os.path.exists(tmp_path / "runs")  # no run directory made for a run that cannot start


def test_cli_bad_device_name(tmp_path, capsys):
    assert main(["train", "--self-test", "--device", "tpu", "--out", str(tmp_path / "r")]) == 2
    assert "device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_resumed_run_uses_the_device_given_now(tmp_path):
    from jimunet.app.training import load_run_config, train_mnist
    out = tmp_path / "run"
    train_mnist({"self_test": True, "epochs": 1, "out": str(out), "report": False, "progress": False}, echo=False)
    # A checkpoint says nothing about this machine's devices: resuming defaults to the CPU.
    assert load_run_config(out).device == "cpu"
