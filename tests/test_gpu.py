"""The same layers, model, optimizers and CLI on an NVIDIA GPU through CuPy.

Each test runs twice: on CuPy, marked ``gpu``, only where CuPy and a GPU are usable
(``python -m pytest -m gpu``; ``benchmarks/gpu_check.sh`` runs them with the GPU benchmark)
and skipped, with that reason, elsewhere; and on tests/strict_xp.py, a stand-in for CuPy
that runs everywhere (CI too): NumPy underneath, but its arrays refuse implicit conversion to
NumPy and mixing with NumPy arrays the way CuPy's do, so a host/device mix-up fails on
every run. Each compares the device with the CPU: float64 to 1e-12 relative (on a GPU the
same sums, in another order: a few ulps, as in the PyTorch oracle), float32 within 1e-5.
"""
import numpy as np
import pytest

import jimunet as jn
import strict_xp
from jimunet import backend
from jimunet.layers import GELU, AvgPool2D, Conv2D, Dense, Dropout, Flatten, LeakyReLU, MaxPool2D, ReLU, Sigmoid, Tanh


def _gpu_usable() -> bool:
    try:
        backend.check_device("cuda")
        return True
    except jn.DeviceError:
        return False


@pytest.fixture(autouse=True, params=[
    pytest.param("cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(not _gpu_usable(),
                                                                     reason="needs CuPy and an NVIDIA GPU")]),
    "strict_xp"])
def device_module(request):
    """``"cuda"`` is CuPy on a real GPU, or the strict stand-in (tests/strict_xp.py)."""
    if request.param == "cupy":
        yield None  # CuPy as installed
    else:
        with strict_xp.installed():
            yield strict_xp


TOL = {np.float64: 1e-12, np.float32: 1e-5}


def rel(a, b) -> float:
    a, b = backend.to_numpy(a).astype(np.float64), backend.to_numpy(b).astype(np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


LAYERS = [
    lambda dt: Conv2D(3, 5, 3, stride=1, padding="same", dtype=dt, rng=0),
    lambda dt: Conv2D(3, 4, 5, stride=2, padding="valid", dtype=dt, rng=1),
    lambda dt: Conv2D(3, 4, (2, 3), stride=(2, 1), padding=1, dtype=dt, rng=2),
    lambda dt: MaxPool2D(2), lambda dt: MaxPool2D(3, stride=2, padding="same"),
    lambda dt: AvgPool2D(2, padding="same"), lambda dt: ReLU(), lambda dt: GELU(), lambda dt: LeakyReLU(0.1),
    lambda dt: Sigmoid(), lambda dt: Tanh(), lambda dt: Flatten(),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("make", LAYERS)
def test_layer_on_gpu_matches_cpu(make, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 9, 8, 3)).astype(dtype)
    x[0, 0, :2, 0] = x[0, 1, :2, 0] = 0.5  # ties for the pools
    cpu, gpu = make(dtype), make(dtype).to("cuda")
    y = cpu.forward(x, training=True)
    yg = gpu.forward(jn.asarray(x, device="cuda"), training=True)
    assert backend.device_of(yg).startswith("cuda") and yg.dtype == y.dtype
    assert rel(yg, y) <= TOL[dtype]
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dxg = cpu.backward(dy), gpu.backward(jn.asarray(dy, device="cuda"))
    assert rel(dxg, dx) <= TOL[dtype]
    for p, pg in zip(cpu.parameters(), gpu.parameters()):
        assert backend.device_of(pg.grad).startswith("cuda") and rel(pg.grad, p.grad) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_and_loss_on_gpu_match_cpu(dtype):
    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((7, 30)).astype(dtype), rng.integers(0, 6, 7)
    cpu, gpu = Dense(30, 6, dtype=dtype, rng=0), Dense(30, 6, dtype=dtype, rng=0).to("cuda")
    loss_c, loss_g = jn.losses.SoftmaxCrossEntropy(), jn.losses.SoftmaxCrossEntropy()
    lc = loss_c.forward(cpu.forward(x), labels)
    lg = loss_g.forward(gpu.forward(jn.asarray(x, device="cuda")), jn.asarray(labels, device="cuda"))
    assert rel(lg, lc) <= TOL[dtype]
    assert rel(gpu.backward(loss_g.backward()), cpu.backward(loss_c.backward())) <= TOL[dtype]
    assert rel(gpu.weight.grad, cpu.weight.grad) <= TOL[dtype]


def _steps(model, opt, batches, device):
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    for x, y in batches:
        loss_fn.forward(model.forward(jn.asarray(x, device=device), training=True), jn.asarray(y, device=device))
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("make_opt", [lambda ps: jn.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
                                      lambda ps: jn.optim.Adam(ps, lr=1e-3)])
def test_training_moves_between_devices_and_the_optimizer_follows(make_opt):
    rng = np.random.default_rng(2)
    batches = [(rng.random((8, 28, 28, 1)), rng.integers(0, 10, 8)) for _ in range(6)]
    ref = jn.models.mnist_cnn(rng=5, dropout=0.0, dtype=np.float64)
    _steps(ref, make_opt(ref.parameters()), batches, "cpu")
    model = jn.models.mnist_cnn(rng=5, dropout=0.0, dtype=np.float64)
    opt = make_opt(model.parameters())
    _steps(model, opt, batches[:2], "cpu")
    _steps(model.to("cuda"), opt, batches[2:4], "cuda")   # optimizer state follows to the GPU
    assert all(backend.device_of(v).startswith("cuda") for st in opt.state.values() for v in st.values()
               if hasattr(v, "shape"))
    _steps(model.to("cpu"), opt, batches[4:], "cpu")     # and back
    for p, q in zip(model.parameters(), ref.parameters()):
        assert rel(p.data, q.data) <= 1e-10  # float64, 6 steps: rounding differences grow a little


def test_dropout_on_gpu_is_seeded_and_scaled():
    x = jn.asarray(np.ones((64, 1000), np.float32), device="cuda")
    a, b = Dropout(0.5, rng=3), Dropout(0.5, rng=3)
    ya, yb = a.forward(x, training=True), b.forward(x, training=True)
    assert np.array_equal(backend.to_numpy(ya), backend.to_numpy(yb))  # same seed, same device: same masks
    values = np.unique(backend.to_numpy(ya))
    assert values.tolist() == [0.0, 2.0] and abs(float((ya != 0).mean()) - 0.5) < 0.01


def test_predict_and_save_from_gpu(tmp_path):
    model = jn.models.mnist_cnn(rng=0)
    x = np.random.default_rng(0).random((250, 28, 28, 1)).astype(np.float32)
    ref = model.predict(x)
    model.to("cuda")
    assert rel(model.predict(x), ref) <= 1e-5          # host input, chunks moved to the GPU
    model.save(tmp_path / "m.npz")                      # always host arrays in the file
    assert rel(jn.load(tmp_path / "m.npz").predict(x), ref) <= 1e-5
    with pytest.raises(ValueError, match="the input is on cpu, the layer's parameters on cuda"):
        model.layers[0].forward(x)


def test_cli_trains_on_the_gpu_and_resumes_on_the_cpu(tmp_path, capsys):
    from jimunet.app.cli import main
    out = tmp_path / "run"
    assert main(["train", "--self-test", "--epochs", "2", "--device", "cuda", "--out", str(out), "--no-report"]) == 0
    assert "test error 0.00%" in capsys.readouterr().out
    assert main(["train", "--resume", str(out), "--epochs", "3", "--no-report"]) == 0  # on the CPU
    capsys.readouterr()
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8))
    printed = []
    for device in ("cpu", "cuda"):
        assert main(["predict", str(out / "model.npz"), str(tmp_path / "x.npy"), "--device", device]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and printed[0].count("\n") == 5


GRAPH_MODELS = {
    "resnet": lambda: jn.models.mnist_resnet(rng=3, stem=4, blocks=((6, 2), (6, 1)), dtype=np.float64),
    "airbench": lambda: jn.models.cifar_airbench(rng=3, widths=(8, 12, 12), dtype=np.float64),
    "airbench-gelu": lambda: jn.models.cifar_airbench(rng=3, widths=(8, 12, 12), dtype=np.float64, activation="gelu"),
}


@pytest.mark.parametrize("name", sorted(GRAPH_MODELS))
def test_batchnorm_models_on_gpu_match_cpu(name):
    """Whole networks with BatchNorm, shortcuts and the whitening conv, float64, one training step."""
    model = GRAPH_MODELS[name]()
    shape = model.summary((28, 28, 1) if name == "resnet" else (32, 32, 3)).input_shape
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, *shape)), rng.integers(0, 10, 6)
    for p in model.parameters():  # away from the initial values, where BatchNorm's scale-invariance makes
        p.data = p.data + 0.2 * rng.standard_normal(p.data.shape)  # some gradients exactly zero (all rounding)
    results = []
    for device in ("cpu", "cuda"):
        m = GRAPH_MODELS[name]()
        for p, q in zip(m.parameters(), model.parameters()):
            p.data = q.data.copy()
        m.to(device)
        loss_fn = jn.losses.SoftmaxCrossEntropy(label_smoothing=0.2)
        loss = loss_fn.forward(m.forward(jn.asarray(x, device=device), training=True), jn.asarray(y, device=device))
        dx = m.backward(loss_fn.backward())
        results.append([loss, dx, m.forward(jn.asarray(x, device=device))] + [p.grad for p in m.parameters()]
                       + [b.data for b in m.buffers()])
    assert len(results[0]) == len(results[1]) > 5
    for a, b in zip(results[1], results[0]):
        assert rel(a, b) <= 1e-10  # float64 sums over a batch in another order: far below this


def test_the_cifar_recipe_trains_on_the_gpu(tmp_path, monkeypatch):
    """airbench's recipe (whitening from the data, lookahead, flips, label smoothing, flipped test
    views) through the application, on the GPU against the CPU, float32. The CPU runs im2col here,
    as the GPU does: Winograd's float32 rounding, grown over 6 steps of this small batch, moves the
    logits by ~6% and would hide what the comparison is for."""
    from jimunet.app.recipes import AIRBENCH_DEFAULTS, MNISTConfig
    from jimunet.app.training import train_mnist
    from test_modelinfo import cifar_like
    monkeypatch.setattr(Conv2D, "_choose", lambda self, *args, **kwargs: ("im2col", None))
    data = (cifar_like(64), cifar_like(20, seed=1))
    cfg = MNISTConfig(data="cifar10", **{**AIRBENCH_DEFAULTS, "epochs": 2, "batch_size": 16, "validation_size": 16},
                      train_size=48, report=False, progress=False)
    runs = [train_mnist(cfg.replace(out=str(tmp_path / device), device=device), data=data, echo=False)
            for device in ("cpu", "cuda")]
    assert runs[1].model.device.startswith("cuda") and runs[0].model.device == "cpu"
    np.testing.assert_allclose(runs[1].history.step_loss, runs[0].history.step_loss, rtol=1e-3)
    x = cifar_like(8, seed=2)[0].astype(np.float32) / 255
    cpu, gpu = (jn.load(tmp_path / device / "model.npz").predict(x) for device in ("cpu", "cuda"))
    print(f"logits, GPU against CPU: {rel(gpu, cpu):.2e} relative")
    assert rel(gpu, cpu) <= 1e-2  # the stand-in: 2.5e-4 (the GPU sums a batch whole, the CPU in blocks)
