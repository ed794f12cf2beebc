"""The device path (``model.to("cuda")``, training, evaluation, predict, files) run in CI on
tests/strict_xp.py, a stand-in for CuPy whose arrays refuse implicit conversion to NumPy and
mixing with NumPy arrays the way CuPy's do. A host/device mix-up anywhere on these paths
(``np.asarray`` of a device array, a NumPy array combined with a device array, a device
array written to a file) fails here, on every run, without a GPU.

tests/test_gpu.py runs its layer, optimizer and CLI tests on the same stand-in (and on a
real GPU where there is one); this file adds whole models (the sample CNN and the ResNet
graph model with BatchNorm), the Trainer, checkpoints, and checks that the stand-in is
strict. The numbers are NumPy's, so the device must give the CPU's results: float64, to a
relative 1e-12 (1e-10 after several optimizer steps).
"""
import pickle

import numpy as np
import pytest

import jimunet as jn
import strict_xp
from jimunet import backend, parallel
from jimunet.training import Trainer, evaluate

DEVICE = "cuda"


@pytest.fixture(autouse=True)
def strict_device():
    """``"cuda"`` is the strict stand-in for the duration of each test."""
    with strict_xp.installed() as xp:
        yield xp


def rel(a, b) -> float:
    a, b = backend.to_numpy(a).astype(np.float64), backend.to_numpy(b).astype(np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def on_device(a) -> bool:
    return isinstance(a, strict_xp.ndarray) and backend.device_of(a) == "cuda:0"


def small_resnet(seed):
    """A graph model (jn.Model) with BatchNorm, projection and identity shortcuts."""
    return jn.models.mnist_resnet(rng=seed, stem=4, blocks=((6, 2), (6, 1)), dtype=np.float64)


MODELS = {"cnn": lambda seed: jn.models.mnist_cnn(rng=seed, dropout=0.0, dtype=np.float64),
          "resnet": small_resnet}


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28, 1)), rng.integers(0, 10, n)


# -- the stand-in is strict ----------------------------------------------------------------------

def test_the_stand_in_refuses_what_cupy_refuses():
    x = jn.asarray(np.arange(6.0).reshape(2, 3), device=DEVICE)
    assert on_device(x) and backend.xp_of(x) is strict_xp
    host = np.ones(3)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.array(x, dtype=np.float32)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray([x[0, 0], x[0, 1]])
    for mix in (lambda: x + host, lambda: host * x, lambda: np.maximum(x, host),
                lambda: np.add(x, 1.0, out=np.empty((2, 3))), lambda: x @ host,
                lambda: np.concatenate([x, host[None]]), lambda: strict_xp.where(x > 1, x, host)):
        with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
            mix()
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        x[0] = host
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(x)
    # What CuPy allows: scalars, explicit copies, host index arrays, NumPy functions that
    # dispatch to the device module, and the syncing conversions of 0-d arrays.
    y = np.exp(x * np.float64(2) + 1)
    assert on_device(y) and on_device(x.sum()) and on_device(x[1, 2]) and float(x[1, 2]) == 5.0
    assert on_device(x[np.array([1, 0])]) and x.max().item() == 5.0 and bool((x >= 0).all())
    for host_copy in (x.get(), strict_xp.asnumpy(x), backend.to_numpy(x), backend.to_device(x, "cpu")):
        assert type(host_copy) is np.ndarray and host_copy.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert backend.device_of(host) == "cpu" and backend.xp_of(host) is np


def test_installing_the_stand_in_restores_what_was_there():
    previous = backend.use_device_module(None)  # as on a machine without CuPy
    try:
        with strict_xp.installed():
            assert backend.xp_of(jn.asarray(np.zeros(2), device=DEVICE)) is strict_xp
        with pytest.raises(jn.DeviceError, match="needs CuPy, which is not installed"):
            jn.asarray(np.zeros(2), device=DEVICE)
    finally:
        assert backend.use_device_module(previous) is None


def _device_run(model_name):
    model = MODELS[model_name](0).to(DEVICE)
    x, y = data(4)
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    loss_fn.forward(model.forward(jn.asarray(x, device=DEVICE), training=True), jn.asarray(y, device=DEVICE))
    model.backward(loss_fn.backward())


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_a_planted_host_device_mix_is_caught(model_name, monkeypatch):
    """A layer that converts its input with np.asarray, or adds a NumPy array to a device array:
    harmless on the CPU, an error on the stand-in, as on a GPU."""
    # rows_forward: every ReLU's forward goes through it, also when it runs fused with BatchNorm or Add
    original = jn.layers.ReLU.rows_forward
    monkeypatch.setattr(jn.layers.ReLU, "rows_forward", lambda self, x, *args, **kwargs:
                        original(self, np.asarray(x), *args, **kwargs))
    MODELS[model_name](0).forward(data(2)[0])  # on the CPU nothing is wrong
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        _device_run(model_name)
    monkeypatch.setattr(jn.layers.ReLU, "rows_forward", lambda self, x, *args, **kwargs:
                        original(self, x + np.zeros(x.shape[-1], x.dtype), *args, **kwargs))
    MODELS[model_name](0).forward(data(2)[0])
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        _device_run(model_name)


def test_a_planted_device_array_in_a_file_is_caught(tmp_path, monkeypatch):
    """Saving without the copy to the host (``to_numpy``) fails instead of writing device arrays."""
    import jimunet.model
    model = jn.models.mnist_cnn(rng=0).to(DEVICE)
    monkeypatch.setattr(jimunet.model, "to_numpy", lambda a: a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        model.save(tmp_path / "m.npz")


# -- whole models on the device --------------------------------------------------------------------

@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_forward_and_backward_on_device_match_cpu(model_name):
    x, y = data(6, seed=1)
    results = []
    for device in ("cpu", DEVICE):
        model = MODELS[model_name](3).to(device)
        loss_fn = jn.losses.SoftmaxCrossEntropy()
        logits = model.forward(jn.asarray(x, device=device), training=True)
        loss = loss_fn.forward(logits, jn.asarray(y, device=device))
        dx = model.backward(loss_fn.backward())
        evaluation = model.forward(jn.asarray(x, device=device))  # BatchNorm: running statistics
        arrays = [logits, loss, dx, evaluation] + [p.grad for p in model.parameters()] + \
                 [b.data for b in model.buffers()]
        assert all((backend.device_of(a) == "cpu") == (device == "cpu") for a in arrays)
        results.append(arrays)
    assert len(results[0]) == len(results[1])
    for a, b in zip(results[1], results[0]):
        assert rel(a, b) <= 1e-12


OPTIMIZERS = {"sgd-momentum": lambda ps: jn.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
              "adam": lambda ps: jn.optim.Adam(ps, lr=1e-3, weight_decay=1e-4)}


def _trainer(model_name, opt_name, device, **kwargs):
    model = MODELS[model_name](5).to(device)
    return Trainer(model, jn.losses.SoftmaxCrossEntropy(), OPTIMIZERS[opt_name](model.parameters()),
                   batch_size=8, rng=7, log=False, progress=False, **kwargs)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_trainer_on_device_matches_cpu(model_name, opt_name):
    (x, y), (xv, yv) = data(24, seed=2), data(10, seed=3)
    cpu, dev = _trainer(model_name, opt_name, "cpu"), _trainer(model_name, opt_name, DEVICE)
    h_cpu = cpu.fit(x, y, epochs=2, x_val=xv, y_val=yv)
    h_dev = dev.fit(x, y, epochs=2, x_val=xv, y_val=yv)  # host data: the Trainer moves it
    assert dev.model.device == "cuda:0" and dev.step == cpu.step == 6
    np.testing.assert_allclose(h_dev.step_loss, h_cpu.step_loss, rtol=1e-10)
    assert [r["val_error"] for r in h_dev.epochs] == [r["val_error"] for r in h_cpu.epochs]
    state = [v for st in dev.optimizer.state.values() for v in st.values() if hasattr(v, "shape")]
    assert state and all(on_device(v) for v in state)  # the optimizer's state lives on the device
    for p, q in zip(dev.model.parameters(), cpu.model.parameters()):
        assert on_device(p.data) and rel(p.data, q.data) <= 1e-10
    for b, c in zip(dev.model.buffers(), cpu.model.buffers()):
        assert on_device(b.data) and rel(b.data, c.data) <= 1e-10


def test_trainer_with_augmentation_on_device_matches_cpu():
    from jimunet.data.augment import RandomShift
    x, y = data(16, seed=14)
    runs = []
    for device in ("cpu", DEVICE):
        trainer = _trainer("cnn", "sgd-momentum", device, augment=RandomShift(2, rng=3))
        trainer.fit(x, y, epochs=1)
        runs.append(trainer)
    np.testing.assert_allclose(runs[1].history.step_loss, runs[0].history.step_loss, rtol=1e-10)
    for p, q in zip(runs[1].model.parameters(), runs[0].model.parameters()):
        assert on_device(p.data) and rel(p.data, q.data) <= 1e-10


def test_trainer_takes_data_already_on_the_device():
    (x, y), (xv, yv) = data(16, seed=4), data(6, seed=5)
    ref = _trainer("cnn", "adam", "cpu")
    ref.fit(x, y, epochs=1, x_val=xv, y_val=yv)
    dev = _trainer("cnn", "adam", DEVICE)
    move = lambda a: jn.asarray(a, device=DEVICE)  # noqa: E731
    dev.fit(move(x), move(y), epochs=1, x_val=move(xv), y_val=move(yv))
    assert dev.history.epochs[0]["val_error"] == ref.history.epochs[0]["val_error"]
    for p, q in zip(dev.model.parameters(), ref.model.parameters()):
        assert rel(p.data, q.data) <= 1e-10


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_evaluate_and_predict_on_device(model_name):
    x, y = data(30, seed=6)
    cpu = MODELS[model_name](1)
    dev = MODELS[model_name](1).to(DEVICE)
    ref = evaluate(cpu, x, y, batch_size=7)
    for xs, ys in ((x, y), (jn.asarray(x, device=DEVICE), jn.asarray(y, device=DEVICE))):
        got = evaluate(dev, xs, ys, batch_size=7)
        assert got.accuracy == ref.accuracy and np.array_equal(got.confusion, ref.confusion)
        out = dev.predict(xs, batch_size=7)
        assert on_device(out) and rel(out, cpu.predict(x, batch_size=7)) <= 1e-12
    empty = dev.predict(np.zeros((0, 28, 28, 1)))
    assert empty.shape == (0, 10)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_save_and_load_from_device(model_name, tmp_path):
    x = data(5, seed=8)[0]
    model = MODELS[model_name](2).to(DEVICE)
    ref = backend.to_numpy(model.predict(x))
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:  # plain host arrays in the file
        assert all(type(f[k]) is np.ndarray for k in f.files)
    loaded = jn.load(tmp_path / "m.npz")
    assert loaded.device == "cpu" and rel(loaded.predict(x), ref) <= 1e-12
    assert rel(loaded.to(DEVICE).predict(x), ref) <= 1e-12
    copied = model.copy()
    assert copied.device == "cuda:0" and rel(copied.predict(x), ref) <= 1e-12


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_checkpoint_from_device_resumes_on_either_device(model_name, opt_name, tmp_path):
    (x, y) = data(24, seed=9)
    whole = _trainer(model_name, opt_name, "cpu")
    whole.fit(x, y, epochs=2)
    first = _trainer(model_name, opt_name, DEVICE)
    first.fit(x, y, epochs=1)
    first.save_checkpoint(tmp_path / "ckpt.npz", metadata={"device": DEVICE})
    with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as f:
        assert all(type(f[k]) is np.ndarray for k in f.files)
    for device in ("cpu", DEVICE):
        resumed = _trainer(model_name, opt_name, device)
        assert resumed.load_checkpoint(tmp_path / "ckpt.npz") == {"device": DEVICE}
        assert resumed.model.device == ("cpu" if device == "cpu" else "cuda:0")
        resumed.fit(x, y, epochs=2)
        assert resumed.step == whole.step
        np.testing.assert_allclose(resumed.history.step_loss, whole.history.step_loss, rtol=1e-10)
        for p, q in zip(resumed.model.parameters(), whole.model.parameters()):
            assert (device == "cpu") != on_device(p.data) and rel(p.data, q.data) <= 1e-10
        state = [v for st in resumed.optimizer.state.values() for v in st.values() if hasattr(v, "shape")]
        assert state and all(on_device(v) == (device != "cpu") for v in state)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_the_thread_pool_is_bypassed_on_the_device(model_name, monkeypatch):
    calls = []
    real_pool = parallel._pool
    monkeypatch.setattr(parallel, "_pool", lambda: calls.append(1) or real_pool())
    threads = parallel.get_num_threads()
    parallel.set_num_threads(2)
    try:
        x, y = data(16, seed=10)
        for device in ("cpu", DEVICE):
            calls.clear()
            model = MODELS[model_name](0).to(device)
            loss_fn = jn.losses.SoftmaxCrossEntropy()
            loss_fn.forward(model.forward(jn.asarray(x, device=device), training=True), jn.asarray(y, device=device))
            model.backward(loss_fn.backward())
            if device == "cpu":
                assert calls, "the spy sees the pool on the CPU"
            else:
                assert not calls, "no CPU threads for device arrays"
    finally:
        parallel.set_num_threads(threads)


def test_a_training_step_reads_back_a_few_numbers_whatever_the_depth():
    """On a GPU every value read back to the host (``float()``, ``.item()``, ``bool()``) waits
    for the device. A step reads the loss, the weight-decay term, the labels' range and the
    input's NaN check, and each epoch one more for the check that every weight and buffer is
    finite: a handful, the same for the CNN's 2 convolutions as for the ResNet's 6 with
    BatchNorm, so nothing reads back per layer or per parameter."""
    reads, epochs = {}, 2
    for model_name in sorted(MODELS):
        trainer = _trainer(model_name, "sgd-momentum", DEVICE)
        x, y = (jn.asarray(a, device=DEVICE) for a in data(32, seed=11))
        trainer.fit(x[:8], y[:8], epochs=1)  # warm-up: the first step may set things up
        before, step0 = strict_xp.host_reads, trainer.step
        trainer.fit(x, y, epochs=epochs)
        steps = trainer.step - step0
        reads[model_name] = strict_xp.host_reads - before
    assert steps > epochs and reads["cnn"] == reads["resnet"] <= 5 * steps + epochs, (reads, steps)


def test_dropout_training_on_device_resumes_exactly(tmp_path):
    """The device's dropout masks come from the host Generators saved in the checkpoint: a
    run resumed on the device ends where an uninterrupted one does, to the bit."""
    def trainer():
        model = jn.models.mnist_cnn(rng=4, dropout=0.5, dtype=np.float64).to(DEVICE)
        return Trainer(model, jn.losses.SoftmaxCrossEntropy(), jn.optim.Adam(model.parameters(), lr=1e-3),
                       batch_size=8, rng=1, log=False, progress=False)
    x, y = data(16, seed=12)
    whole = trainer()
    whole.fit(x, y, epochs=2)
    first = trainer()
    first.fit(x, y, epochs=1)
    first.save_checkpoint(tmp_path / "ckpt.npz")
    resumed = trainer()
    resumed.load_checkpoint(tmp_path / "ckpt.npz")
    resumed.fit(x, y, epochs=2)
    assert resumed.history.step_loss == whole.history.step_loss
    for p, q in zip(resumed.model.parameters(), whole.model.parameters()):
        assert np.array_equal(backend.to_numpy(p.data), backend.to_numpy(q.data))


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_explain_a_model_on_the_device(model_name):
    """Explaining a model on the device shows the CPU's numbers (only the convolution
    algorithm differs: Winograd is a CPU path)."""
    import io

    from jimunet.app.explain import explain
    image = np.random.default_rng(13).integers(0, 256, (28, 28), dtype=np.uint8)
    texts = []
    for device in ("cpu", DEVICE):
        out = io.StringIO()
        explain(MODELS[model_name](0).to(device), image, file=out)
        texts.append([line for line in out.getvalue().splitlines() if not line.lstrip().startswith("algo")])
    assert texts[0] == texts[1]


def test_arrays_land_on_the_gpu_asked_for(monkeypatch):
    """``cuda:N``: CuPy copies an array from another GPU to the current one in ``asarray``, so
    the move must happen under GPU N (jn.asarray(x, device="cuda:1") once landed on cuda:0)."""
    monkeypatch.setattr(strict_xp, "device_count", 2)
    x = np.arange(4.0)
    one = jn.asarray(x, device="cuda:1")
    assert backend.device_of(one) == "cuda:1"
    assert backend.device_of(jn.asarray(one, dtype=np.float32)) == "cuda:1"
    assert backend.device_of(backend.to_device(one, "cuda:0")) == "cuda:0"
    assert backend.device_of(jn.asarray(one, device="cuda:0")) == "cuda:0"
    assert backend.to_device(one, "cuda:1") is one
    with pytest.raises(jn.DeviceError, match="this machine has 2 NVIDIA GPUs"):
        jn.asarray(x, device="cuda:2")


@pytest.mark.xfail(strict=True, raises=ValueError, reason=(
    "not fixed: CuPy runs kernels on the current GPU (0 unless the caller enters "
    "cupy.cuda.Device(1)), so a layer's output leaves cuda:1 and the next layer refuses it"))
def test_a_model_on_a_second_gpu_runs(monkeypatch):
    monkeypatch.setattr(strict_xp, "device_count", 2)
    model = jn.models.mnist_cnn(rng=0).to("cuda:1")
    out = model.forward(jn.asarray(np.zeros((2, 28, 28, 1), np.float32), device="cuda:1"))
    assert backend.device_of(out) == "cuda:1"


def test_onnx_export_from_the_device_writes_the_cpu_file(tmp_path):
    pytest.importorskip("onnx")
    from jimunet.onnx import export
    export(jn.models.mnist_cnn(rng=0), tmp_path / "cpu.onnx")
    export(jn.models.mnist_cnn(rng=0).to(DEVICE), tmp_path / "dev.onnx")
    assert (tmp_path / "cpu.onnx").read_bytes() == (tmp_path / "dev.onnx").read_bytes()


def test_the_resnet_recipe_trains_on_the_device(tmp_path):
    """The application's path (run directory, checkpoint, test evaluation) for the graph model."""
    from jimunet.app.training import train_mnist
    results = [train_mnist({"self_test": True, "model": "resnet", "epochs": 1, "device": device,
                            "out": str(tmp_path / device), "report": False, "progress": False}, echo=False)
               for device in ("cpu", DEVICE)]
    assert results[1].model.device == "cuda:0"
    np.testing.assert_allclose(results[1].history.step_loss, results[0].history.step_loss, rtol=1e-3)
    assert results[1].test_error == results[0].test_error
    loaded = jn.load(tmp_path / DEVICE / "model.npz")
    assert loaded.device == "cpu" and type(loaded).__name__ == "Model"
    assert rel(loaded.predict(data(3)[0]), results[1].model.predict(data(3)[0])) <= 1e-12
