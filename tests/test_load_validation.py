"""Issue #21: every layer's hyper-parameters and buffers are validated on construction and on
load, a description of any shape gets a one-line error naming the field, activation sizes are
bounded from the architecture, and nothing jimunet cannot load is ever written."""
import copy
import io
import json
import re
import zipfile

import numpy as np
import pytest

import jimunet as jn
from jimunet.app import cli
from jimunet.layers import memory
from jimunet.layers.base import placeholder_parameters
from jimunet.model import ActivationLimitError, build_architecture
from jimunet.serialization import CheckpointError, load_npz, save_npz
from jimunet.training import Callback, Trainer, TrainingDiverged

L = jn.layers
CLASS_NAMES = re.compile(r"\b(TypeError|KeyError|AttributeError|IndexError|RecursionError|OverflowError|ValueError|"
                         r"ZeroDivisionError|MemoryError|Traceback)\b")


def _one_line(message: str) -> None:
    assert "\n" not in message and not CLASS_NAMES.search(message), message


def _raises(fn, *substrings, exc=ValueError):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    _one_line(msg)
    for s in substrings:
        assert s in msg, (s, msg)
    return msg


# --------------------------------------------------------------------------- constructors

@pytest.mark.parametrize("fn,substrings", [
    (lambda: L.LeakyReLU(float("nan")), ["LeakyReLU", "alpha", "finite", "nan"]),
    (lambda: L.LeakyReLU(float("inf")), ["LeakyReLU", "alpha", "inf"]),
    (lambda: L.LeakyReLU(1e308), ["LeakyReLU", "alpha", "1e+308"]),  # infinite in float32: NaN outputs
    (lambda: L.LeakyReLU("0.1"), ["LeakyReLU", "alpha", "'0.1'"]),
    (lambda: L.LeakyReLU(True), ["LeakyReLU", "alpha", "True"]),
    (lambda: L.LeakyReLU(None), ["LeakyReLU", "alpha", "None"]),
    (lambda: L.BatchNorm(3, eps=float("nan")), ["BatchNorm", "eps", "nan"]),
    (lambda: L.BatchNorm(3, eps=0), ["BatchNorm", "eps", "(0,"]),
    (lambda: L.BatchNorm(3, eps=1e20), ["BatchNorm", "eps", "1e+20"]),
    (lambda: L.BatchNorm(3, eps="1e-5"), ["BatchNorm", "eps", "'1e-5'"]),
    (lambda: L.BatchNorm(3, momentum=0), ["BatchNorm", "momentum", "(0, 1]"]),
    (lambda: L.BatchNorm(3, momentum=1.5), ["BatchNorm", "momentum", "1.5"]),
    (lambda: L.BatchNorm(3, momentum=float("nan")), ["BatchNorm", "momentum", "nan"]),
    (lambda: L.BatchNorm(3, momentum=10 ** 400), ["BatchNorm", "momentum"]),
    (lambda: L.BatchNorm(3, dtype=np.float16), ["BatchNorm", "dtype", "float32 or float64", "float16"]),
    (lambda: L.BatchNorm(3, dtype="garbage"), ["BatchNorm", "dtype", "'garbage'"]),
    (lambda: L.Dense(3, 2, use_bias="false"), ["Dense", "use_bias", "true or false", "'false'"]),
    (lambda: L.Dense(3, 2, dtype=[1]), ["Dense", "dtype", "[1]"]),
    (lambda: L.Conv2D(1, 2, 3, use_bias=0), ["Conv2D", "use_bias", "0"]),
    (lambda: L.Conv2D(1, 2, 3, algorithm=["im2col"]), ["Conv2D", "algorithm", "['im2col']"]),
    (lambda: L.Conv2D(1, 2, 3, stride=(1, True)), ["Conv2D", "stride", "True"]),
    (lambda: L.Conv2D(1, 2, 3, dtype=np.float16), ["Conv2D", "dtype", "float16"]),
    (lambda: L.MaxPool2D((2, True)), ["MaxPool2D", "pool_size", "True"]),
    (lambda: L.AvgPool2D(2, count_include_pad="yes"), ["AvgPool2D", "count_include_pad", "'yes'"]),
    (lambda: L.Concatenate(axis=0), ["Concatenate", "axis", "0"]),
    (lambda: L.Concatenate(axis="1"), ["Concatenate", "axis", "'1'"]),
    (lambda: L.Concatenate(axis=1.0), ["Concatenate", "axis", "1.0"]),
    (lambda: L.Dropout(float("nan")), ["Dropout", "rate", "nan"]),
    # sizes NumPy could not even index: refused by name instead of "Maximum allowed dimension exceeded"
    (lambda: L.Conv2D(1, 2, 10 ** 30), ["Conv2D kernel_size", "at most 2,147,483,647"]),
    (lambda: L.Conv2D(1, 2, 3, stride=(10 ** 30, 1)), ["Conv2D stride", "at most 2,147,483,647"]),
    (lambda: L.Conv2D(1, 2, 3, padding=2 ** 62), ["Conv2D padding", "from 0 to 2,147,483,647"]),
    (lambda: L.Conv2D(2 ** 31, 2, 3), ["Conv2D", "in_channels", "at most 2,147,483,647"]),
    (lambda: L.Dense(3, 10 ** 30), ["Dense", "out_features", "at most"]),
    (lambda: L.BatchNorm(2 ** 40), ["BatchNorm", "num_features", "at most"]),
    (lambda: L.Conv2D(2 ** 30, 2 ** 30, 2 ** 15), ["Conv2D", "weight would be of shape", "at most 1,099,511,627,776"]),
    (lambda: jn.Input((2 ** 40, 1)), ["Input", "shape", "1 to 8 positive ints"]),
])
def test_constructors_refuse_bad_hyper_parameters(fn, substrings):
    _raises(fn, *substrings)


def test_valid_hyper_parameters_still_build():
    assert L.LeakyReLU(np.float32(0.2)).alpha == pytest.approx(0.2)
    assert L.LeakyReLU(-1).alpha == -1.0 and L.LeakyReLU(0).alpha == 0.0
    bn = L.BatchNorm(np.int64(3), momentum=1, eps=np.float64(1e-3), dtype="float64")
    assert (bn.momentum, bn.eps, bn.weight.data.dtype) == (1.0, 1e-3, np.float64)
    assert L.Conv2D(1, 2, 3, use_bias=np.bool_(False)).bias is None


# --------------------------------------------------------------------------- files

def _bn_model():
    return jn.Sequential([L.Conv2D(1, 3, 3, rng=0), L.BatchNorm(3), L.LeakyReLU(0.1), L.GlobalAvgPool2D(),
                          L.Dense(3, 10, rng=1)])


def _rewrite(path, edit_meta=None, edit_arrays=None):
    """Rewrite a saved model file: ``edit_meta(meta)`` and ``edit_arrays(arrays)`` change it in place."""
    arrays, meta = load_npz(path)
    if edit_meta:
        edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    save_npz(path, arrays, meta)


@pytest.mark.parametrize("value,expected", [(-1.0, "must be >= 0 (a variance), got a minimum of -1"),
                                            (np.inf, "contains NaN or infinite values"),
                                            (np.nan, "contains NaN or infinite values")])
def test_a_bad_batchnorm_variance_in_a_file_is_refused(tmp_path, value, expected):
    path = tmp_path / "m.npz"
    _bn_model().save(path)

    def poison(arrays):
        arrays["param/1.running_var"][1] = value
    _rewrite(path, edit_arrays=poison)
    msg = _raises(lambda: jn.load(path), "1.running_var", expected, exc=CheckpointError)
    assert str(path) in msg


def test_load_state_dict_refuses_a_negative_variance_and_assigns_nothing():
    model = _bn_model()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = {k: v + 1 for k, v in before.items()}
    state["1.running_var"] = np.array([1.0, -0.5, 1.0], np.float32)
    _raises(lambda: model.load_state_dict(state), "load_state_dict", "1.running_var", ">= 0")
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # nothing half-loaded


def test_predict_and_evaluate_refuse_a_negative_variance_file(tmp_path, capsys):
    path = tmp_path / "m.npz"
    _bn_model().save(path)
    _rewrite(path, edit_arrays=lambda a: a["param/1.running_var"].__setitem__(0, -1.0))
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.uint8))
    capsys.readouterr()
    assert cli.main(["predict", str(path), str(tmp_path / "digit.npy")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "running_var must be >= 0" in err and "nan%" not in err
    _one_line(err.strip())
    assert cli.main(["evaluate", str(path)]) == 2  # refused at load, before MNIST is read
    assert "running_var must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("alpha", ["NaN", "Infinity", 1e308, "0.1", True])
def test_a_leaky_relu_with_a_bad_alpha_in_a_file_is_refused(tmp_path, alpha):
    path = tmp_path / "m.npz"
    _bn_model().save(path)
    raw = json.dumps(alpha) if alpha not in ("NaN", "Infinity") else alpha

    def edit(meta):
        meta["architecture"]["layers"][2]["config"]["alpha"] = "@ALPHA@"
    _rewrite(path, edit_meta=edit)
    arrays, meta = load_npz(path)
    text = json.dumps(meta).replace('"@ALPHA@"', raw)  # NaN/Infinity: what json.loads accepts
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(text.encode(), np.uint8))
    entries["__meta__.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for n, b in entries.items():
            z.writestr(n, b)
    _raises(lambda: jn.load(path), "layer 2", "LeakyReLU", "alpha", exc=CheckpointError)


# --------------------------------------------------------------------------- descriptions

@pytest.mark.parametrize("arch,expected", [
    ({"layers": ["Dense"]}, "layer 0: a layer description must be an object"),
    ({"layers": [{"class": "Dense", "config": "in_features=3"}]}, "layer 0 (Dense): 'config' must be an object"),
    ({"layers": [{"class": "Dense", "config": {"in_features": 3}}]}, "missing argument(s) ['out_features']"),
    ({"layers": [{"class": "Dense", "config": {"in_features": 3, "out_features": 2, "bogus": 1}}]},
     "unknown argument(s) ['bogus']"),
    ({"layers": [{"class": "Dense", "config": {"in_features": "3", "out_features": 2}}]},
     "layer 0: Dense: in_features must be a positive int (at most 2,147,483,647), got '3'"),
    ({"layers": [{"class": ["Dense"]}]}, "layer 0: unknown layer a list"),
    ({"layers": [{"class": "ReLU", "config": {}, "extra": 1}]}, "unexpected field(s) ['extra']"),
    ({"layers": "Dense"}, "'layers' must be a list"),
    ({"layers": [], "fuse": "no"}, "'fuse' must be true or false"),
    ({"class": "Swish", "layers": []}, "'class' must be one of"),
    ("Sequential", "the description is a string, not an object"),
])
def test_malformed_descriptions_get_one_line_naming_the_field(arch, expected):
    _raises(lambda: build_architecture(arch, "m.npz"), "m.npz: cannot rebuild the architecture", expected,
            exc=CheckpointError)


def test_a_deeply_nested_description_is_refused_without_recursion():
    deep = []
    for _ in range(200_000):
        deep = [deep]
    _raises(lambda: build_architecture({"layers": deep}, "m.onnx"), "nested more than 64 levels", exc=CheckpointError)


def _graph(single_input=True):
    inp = jn.Input((28, 28, 1))
    h = L.Conv2D(1, 2, 3, rng=0)(inp)
    out = L.Dense(2, 10, rng=1)(L.GlobalAvgPool2D()(L.Add()([h, L.Conv2D(1, 2, 3, rng=2)(inp)])))
    return jn.Model(inp if single_input else [inp], out)


@pytest.mark.parametrize("value", [0, "false", None])
def test_graph_flags_must_be_booleans(tmp_path, value):
    path = tmp_path / "g.npz"
    _graph().save(path)
    _rewrite(path, edit_meta=lambda m: m["architecture"].__setitem__("single_input", value))
    _raises(lambda: jn.load(path), "'single_input' must be true or false", exc=CheckpointError)


def test_a_graph_taking_a_list_of_inputs_is_a_clear_error_in_predict(tmp_path, capsys):
    path = tmp_path / "g.npz"
    _graph().save(path)
    _rewrite(path, edit_meta=lambda m: m["architecture"].__setitem__("single_input", False))
    model = jn.load(path)  # a valid graph: it takes a list of one input
    assert model.summary([(28, 28, 1)]).output_shapes == [(10,)]
    _raises(lambda: model.summary((28, 28, 1)), "expected a list of 1 per-sample input shapes")
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.uint8))
    capsys.readouterr()
    assert cli.main(["predict", str(path), str(tmp_path / "digit.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot take a 28x28x1 MNIST image" in err and "takes a list of inputs" in err
    _one_line(err)


_BAD_VALUES = [None, False, -1, 1e308, "x", [], {}, [[[[1]]]], {"class": "Dense"}]


def _paths(tree, prefix=()):
    yield prefix
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


@pytest.mark.parametrize("make", [lambda: jn.Sequential([L.Conv2D(1, 2, 3, rng=0), L.BatchNorm(2), L.LeakyReLU(0.1),
                                                         L.AvgPool2D(2, padding=1, count_include_pad=False),
                                                         L.Dropout(0.2), L.Flatten(), L.Dense(32, 3, rng=0)]),
                                  _graph], ids=["sequential", "graph"])
def test_fuzzed_descriptions_load_or_get_one_clear_line(tmp_path, make):
    """Every value of the JSON description replaced by values of the wrong type: each file loads
    (and predicts) or is refused with one CheckpointError line that names no exception class."""
    path, probe = tmp_path / "m.npz", tmp_path / "probe.npz"
    make().save(path, {"input_shape": [28, 28, 1]})
    arrays, meta = load_npz(path)
    refused = 0
    for where in list(_paths(meta["architecture"])):
        for value in _BAD_VALUES:
            m = copy.deepcopy(meta)
            if not where:
                m["architecture"] = copy.deepcopy(value)
            else:
                node = m["architecture"]
                for k in where[:-1]:
                    node = node[k]
                node[where[-1]] = copy.deepcopy(value)
            save_npz(probe, arrays, m)
            try:
                model = jn.load(probe)
            except CheckpointError as e:
                _one_line(str(e))
                refused += 1
                continue
            try:
                model.predict(np.zeros((2, 28, 28, 1), np.float32))
            except ValueError as e:  # e.g. a layer swapped for another: the shapes no longer chain
                _one_line(str(e))
    assert refused > 100


# --------------------------------------------------------------------------- activation sizes

def _padding_bomb():
    return jn.Sequential([L.Conv2D(1, 2, 3, padding=100_000, rng=0), L.GlobalAvgPool2D(), L.Dense(2, 10, rng=0)])


def _wide_bomb():
    """The issue's consistent 48 MB model: Conv2D(1 -> 1,000,000) needs 3 GB per 28x28 image."""
    with placeholder_parameters():
        return jn.Sequential([L.Conv2D(1, 1_000_000, 3), L.GlobalAvgPool2D(), L.Dense(1_000_000, 2)])


def test_activation_sizes_come_from_the_architecture():
    m = jn.models.mnist_cnn(rng=0)
    per_sample = m.activation_bytes((28, 28, 1))
    assert 0.5e6 < per_sample < 2e6  # ~1.1 MB: a 200-image chunk stays ~220 MB
    assert _wide_bomb().activation_bytes((28, 28, 1)) > 28 * 28 * 1_000_000 * 4
    assert _padding_bomb().activation_bytes((28, 28, 1)) > 200_000 ** 2 * 4


@pytest.mark.parametrize("make", [_padding_bomb, _wide_bomb])
def test_predict_refuses_a_model_whose_one_sample_exceeds_the_bound_before_allocating(make, monkeypatch):
    model = make()
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("forward ran"))
    _raises(lambda: model.predict(np.zeros((3, 28, 28, 1), np.float32)), "predict: one sample of shape (28, 28, 1)",
            "over the bound of 1.0 GiB", "max_activation_bytes=", exc=ActivationLimitError)


def test_predict_runs_as_many_samples_at_a_time_as_fit_the_bound(monkeypatch):
    model = jn.models.mnist_cnn(rng=0)
    x = np.random.default_rng(0).normal(size=(50, 28, 28, 1)).astype(np.float32)
    expected = model.forward(x)
    per_sample = model.activation_bytes((28, 28, 1), np.float32)
    sizes, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda x, **k: (sizes.append(len(x)), forward(x, **k))[1])
    y = model.predict(x, batch_size=200, max_activation_bytes=7 * per_sample + 1)
    assert sizes == [7] * 7 + [1]
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)  # other chunks, other rounding
    sizes.clear()
    model.predict(x, batch_size=20)  # far below the default bound: the chunk asked for
    assert sizes == [20, 20, 10]


def test_load_bounds_activations_for_the_recorded_or_given_input_shape(tmp_path, monkeypatch):
    path = tmp_path / "pad.npz"
    _padding_bomb().save(path)
    jn.load(path)  # no input shape known: predict bounds it
    _raises(lambda: jn.load(path, input_shape=(28, 28, 1)), str(path), "one sample of shape (28, 28, 1) needs",
            "GiB", exc=CheckpointError)
    _padding_bomb().save(path, {"input_shape": [28, 28, 1]})
    _raises(lambda: jn.load(path), "over the bound of 1.0 GiB", exc=CheckpointError)
    assert jn.load(path, max_activation_bytes=2 ** 50).layers[0].padding == ((100_000, 100_000),) * 2
    inp = jn.Input((4096, 4096, 1))  # a graph records its input shape itself
    big = jn.Model(inp, L.Conv2D(1, 64, 3, rng=0)(inp))
    big.save(tmp_path / "g.npz")
    _raises(lambda: jn.load(tmp_path / "g.npz"), "one sample of shape (4096, 4096, 1)", exc=CheckpointError)
    monkeypatch.setattr(memory, "MAX_ACTIVATION_BYTES", 2 ** 40)
    assert jn.load(tmp_path / "g.npz").summary().output_shape == (4096, 4096, 64)


def test_predict_command_refuses_an_activation_bomb_at_load(tmp_path, capsys):
    path = tmp_path / "pad.npz"
    _padding_bomb().save(path)
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.uint8))
    capsys.readouterr()
    assert cli.main(["predict", str(path), str(tmp_path / "digit.npy")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "one sample of shape (28, 28, 1) needs 1,788.6 GiB" in err
    _one_line(err.strip())


# --------------------------------------------------------------------------- never write what cannot load

@pytest.mark.parametrize("value,expected", [(np.inf, "2.running_var contains NaN or infinite values"),
                                            (-1.0, "2.running_var must be >= 0")])
def test_save_refuses_a_state_load_would_refuse_and_keeps_the_old_file(tmp_path, value, expected):
    model = jn.Sequential([L.Flatten(), L.Dense(4, 3, rng=0), L.BatchNorm(3)])
    path = tmp_path / "best.npz"
    model.save(path)
    before = path.read_bytes()
    model.layers[2].running_var.data[0] = value
    _raises(lambda: model.save(path), f"cannot save {path}", expected, "jn.load would refuse")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["best.npz"]
    _raises(lambda: model.save(tmp_path / "new.npz"), "cannot save")
    assert not (tmp_path / "new.npz").exists()


def _bn_trainer(callbacks=()):
    model = jn.Sequential([L.Flatten(), L.Dense(4, 3, rng=0), L.BatchNorm(3)])
    return Trainer(model, jn.losses.SoftmaxCrossEntropy(), jn.optim.Adam(model.parameters(), lr=0.01), batch_size=8,
                   rng=0, progress=False, log=False, callbacks=list(callbacks))


def _bn_checkpoint(tmp_path):
    """A BatchNorm model's trainer after one epoch, and the checkpoint it saved."""
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    t = _bn_trainer()
    t.fit(x, np.arange(16) % 3, epochs=1)
    path = tmp_path / "checkpoint.npz"
    t.save_checkpoint(path)
    return t, path


def test_save_checkpoint_refuses_non_finite_buffers_and_optimizer_state(tmp_path):
    t, path = _bn_checkpoint(tmp_path)
    before = path.read_bytes()
    t.model.layers[2].running_var.data[1] = np.inf
    _raises(lambda: t.save_checkpoint(path), "cannot save the checkpoint", "2.running_var contains NaN")
    t.model.layers[2].running_var.data[1] = 1.0
    t.optimizer.state_dict()  # the Adam moments exist after one epoch
    next(iter(t.optimizer.state.values()))["exp_avg_sq"][...] = np.nan
    _raises(lambda: t.save_checkpoint(path), "cannot save the checkpoint", "optimizer state", "NaN or infinite")
    assert path.read_bytes() == before


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_huge_inputs_that_make_batchnorm_buffers_infinite_stop_training_before_any_file(tmp_path):
    """The issue's probe: inputs ~1e19 in float32 make running_var infinite while the loss stays
    finite. Training stops as diverged; every file written before loads."""
    written = []

    class WriteFiles(Callback):  # what train_mnist's RunFiles does after each epoch
        def on_epoch_end(self, trainer, epoch, record):
            trainer.model.save(tmp_path / f"best{epoch}.npz")
            trainer.save_checkpoint(tmp_path / f"checkpoint{epoch}.npz")
            written.append(epoch)
    t = _bn_trainer([WriteFiles()])
    x = (np.random.default_rng(0).normal(size=(40, 4)) * 1e19).astype(np.float32)
    with pytest.raises(TrainingDiverged, match="the weights contain NaN or infinite values"):
        t.fit(x, np.arange(40) % 3, epochs=2, x_val=x, y_val=np.arange(40) % 3)
    assert not np.isfinite(t.model.layers[2].running_var.data).all()
    assert written == []
    _raises(lambda: t.model.save(tmp_path / "best.npz"), "running_var contains NaN or infinite")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_train_mnist_stops_when_a_batchnorm_buffer_turns_infinite_and_every_file_it_wrote_loads(tmp_path):
    """``jimunet train --model resnet``'s path: the loss shows nothing (training normalises by the
    batch), the run ends "diverged" and best.npz / checkpoint.npz hold the last good epoch."""
    from jimunet.app.recipes import MNISTConfig
    from jimunet.app.training import train_mnist

    class PoisonBuffer(Callback):
        def on_step_end(self, trainer, step, loss):
            if trainer.epoch == 1:  # in epoch 2 (trainer.epoch counts completed epochs)
                bn = next(layer for layer in trainer.model.layers if isinstance(layer, L.BatchNorm))
                bn.running_var.data[0] = np.inf
    run = tmp_path / "run"
    cfg = MNISTConfig(model="resnet", self_test=True, epochs=3, batch_size=64, out=str(run), report=False)
    with pytest.raises(TrainingDiverged, match=r"\(epoch 2\): the weights contain NaN or infinite"):
        train_mnist(cfg, callbacks=[PoisonBuffer()], echo=False)
    assert json.loads((run / "run.json").read_text())["status"] == "diverged"
    files = sorted(p.name for p in run.glob("*.npz"))
    assert "checkpoint.npz" in files and "model.npz" not in files
    for name in files:
        if name == "checkpoint.npz":
            assert load_npz(run / name)[1]["state"]["epoch"] == 1
        else:
            assert jn.load(run / name).metadata["epoch"] == 1


def test_a_checkpoint_with_a_negative_variance_is_refused_at_resume(tmp_path):
    t, path = _bn_checkpoint(tmp_path)
    arrays, meta = load_npz(path)
    arrays[meta["state"]["model"]["2.running_var"]["__array__"]][0] = -2.0
    save_npz(path, arrays, meta)
    _raises(lambda: _bn_trainer().load_checkpoint(path), "does not fit this model/optimizer",
            "2.running_var must be >= 0", exc=CheckpointError)
