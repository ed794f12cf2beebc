"""Graph models (``jn.Input``/``jn.Model``): building, errors, shared layers, saving, loading,
training with resume, and the ``--model resnet`` recipe's pieces."""
from __future__ import annotations

import json

import numpy as np
import pytest

import jimunet as jn
from jimunet.app.recipes import MNISTConfig, RESNET_DEFAULTS, build
from jimunet.serialization import save_npz
from jimunet.app.training import train_mnist
from jimunet.training import Trainer, TrainingInterrupted

L = jn.layers


def residual(dt=np.float64):
    inp = jn.Input((6, 6, 1))
    h = L.ReLU()(L.BatchNorm(4, dtype=dt)(L.Conv2D(1, 4, 3, use_bias=False, rng=1, dtype=dt)(inp)))
    h = L.BatchNorm(4, dtype=dt)(L.Conv2D(4, 4, 3, rng=2, dtype=dt)(h))
    sc = L.Conv2D(1, 4, 1, rng=3, dtype=dt)(inp)
    out = L.Dense(4, 3, rng=4, dtype=dt)(L.GlobalAvgPool2D()(L.ReLU()(L.Add()([h, sc]))))
    return jn.Model(inp, out)


# -- building and errors ------------------------------------------------------------------------

def test_calling_a_layer_on_an_array_still_computes_and_on_a_tensor_records():
    conv = L.Conv2D(1, 2, 3, rng=0)
    assert conv(np.zeros((1, 4, 4, 1), np.float32)).shape == (1, 4, 4, 2)
    t = conv(jn.Input((4, 4, 1)))
    assert isinstance(t, jn.graph.SymbolicTensor) and t.shape == (4, 4, 2)


def test_summary_shows_branches_shapes_params_and_flops():
    m = residual()
    s = m.summary()
    assert s.output_shape == (3,)
    assert s.total_params == sum(p.size for p in m.parameters()) == 36 + 8 + 144 + 4 + 8 + 4 + 4 + 15
    add = next(r for r in s.rows if r["layer"] == "Add()")
    assert len(add["inputs"]) == 2
    text = str(s)
    assert "inputs" in text and ", ".join(add["inputs"]) in text
    # shapes flow from any input size: a fully convolutional net takes 10x8 images too
    assert m.summary((10, 8, 1)).output_shape == (3,)


def test_add_refuses_shapes_that_do_not_meet():
    inp = jn.Input((6, 6, 1))
    a = L.Conv2D(1, 4, 3, rng=0)(inp)
    b = L.Conv2D(1, 5, 3, rng=0)(inp)
    with pytest.raises(ValueError, match=r"Add\(\).*same per-sample shape.*\(6, 6, 4\).*\(6, 6, 5\)"):
        L.Add()([a, b])
    with pytest.raises(ValueError, match="agree on every axis but"):
        L.Concatenate()([a, L.MaxPool2D(2)(b)])
    with pytest.raises(ValueError, match="takes a list"):
        L.Add()(a)


def test_merge_layers_called_on_arrays_check_their_inputs():
    with pytest.raises(ValueError, match="same per-sample shape"):
        L.Add()([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match="list of at least 2"):
        L.Add()(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="different batch sizes"):
        L.Concatenate()([np.zeros((2, 3)), np.zeros((3, 3))])
    with pytest.raises(ValueError, match="different dtypes"):
        L.Add()([np.zeros((2, 3)), np.zeros((2, 3), np.float32)])
    with pytest.raises(RuntimeError, match="before forward"):
        L.Concatenate().backward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="axis 0 is the batch"):
        L.Concatenate(axis=0)
    cat = L.Concatenate(axis=1)
    y = cat([np.ones((2, 1, 3)), np.zeros((2, 2, 3))])
    assert y.shape == (2, 3, 3)
    a, b = cat.backward(np.arange(18.).reshape(2, 3, 3))
    assert a.shape == (2, 1, 3) and b.shape == (2, 2, 3) and a[0, 0, 0] == 0 and b[0, 0, 0] == 3


def test_output_not_reachable_from_the_inputs():
    a, b = jn.Input((3,), name="a"), jn.Input((3,), name="b")
    out = L.Add()([L.Dense(3, 2, rng=0)(a), L.Dense(3, 2, rng=1)(b)])
    with pytest.raises(ValueError, match="not reachable from the inputs.*depends on input b"):
        jn.Model(a, out)


def test_an_input_never_used():
    a, b = jn.Input((3,), name="a"), jn.Input((3,), name="unused_b")
    with pytest.raises(ValueError, match="input unused_b is never used"):
        jn.Model([a, b], L.Dense(3, 2, rng=0)(a))


def test_inputs_must_be_input_tensors():
    a = jn.Input((3,))
    h = L.Dense(3, 3, rng=0)(a)
    with pytest.raises(ValueError, match="must be jn.Input tensors"):
        jn.Model(h, L.ReLU()(h))
    with pytest.raises(ValueError, match="symbolic tensors"):
        jn.Model(a, np.zeros(3))


def _config_with(**changes):
    cfg = residual().get_config()
    cfg.update(changes)
    return cfg


def test_a_cycle_in_a_described_graph_is_refused():
    cfg = residual().get_config()
    # make the first conv read the output of the last Add: a cycle
    add = next(n["name"] for n, spec in ((n, cfg["layers"][n["layer"]]) for n in cfg["nodes"])
               if spec["class"] == "Add")
    cfg["nodes"][0]["inputs"] = [add]
    with pytest.raises(ValueError, match="cycle"):
        jn.Model.from_config(cfg)


@pytest.mark.parametrize("change,message", [
    (lambda c: c["nodes"][1].update(inputs=["nowhere"]), "unknown node"),
    (lambda c: c.update(outputs=["nowhere"]), "outputs refer to unknown"),
    (lambda c: c["nodes"][1].update(layer=99), "refers to layer 99"),
    (lambda c: c["nodes"][1].update(name=c["nodes"][0]["name"]), "more than once"),
    (lambda c: c.update(nodes="x"), "non-empty list"),
    (lambda c: c["nodes"][2].update(inputs=[c["inputs"][0]["name"], c["inputs"][0]["name"]]), "takes one tensor"),
])
def test_malformed_graph_descriptions_get_clear_errors(change, message):
    cfg = residual().get_config()
    change(cfg)
    with pytest.raises(ValueError, match=message):
        jn.Model.from_config(cfg)


# -- computing ----------------------------------------------------------------------------------

def test_tensor_used_twice_receives_the_sum_of_gradients():
    inp = jn.Input((3,))
    m = jn.Model(inp, L.Add()([inp, inp, L.ReLU()(inp)]))
    x = np.array([[1.0, -2.0, 3.0]])
    assert np.array_equal(m.forward(x), 3 * x * (x > 0) + 2 * x * (x <= 0))
    assert np.array_equal(m.backward(np.ones((1, 3))), [[3.0, 2.0, 3.0]])


def test_shared_layer_has_one_set_of_weights_and_summed_gradients():
    inp = jn.Input((4,))
    dense = L.Dense(4, 4, rng=0, dtype=np.float64)
    m = jn.Model(inp, dense(L.Tanh()(dense(inp))))
    assert m.layers.count(dense) == 1 and len(m.parameters()) == 2
    assert [r["shared"] for r in m.summary().rows] == [False, False, True]
    x = np.random.default_rng(0).normal(size=(5, 4))
    w, b = dense.weight.data, dense.bias.data
    h = np.tanh(x @ w + b)
    np.testing.assert_allclose(m.forward(x), h @ w + b, rtol=1e-13)
    g = np.random.default_rng(1).normal(size=(5, 4))
    m.zero_grad()
    dx = m.backward(g)
    dh = (g @ w.T) * (1 - h ** 2)
    np.testing.assert_allclose(dense.weight.grad, h.T @ g + x.T @ dh, rtol=1e-12)
    np.testing.assert_allclose(dx, dh @ w.T, rtol=1e-12)


def test_several_inputs_and_outputs():
    a, b = jn.Input((2,)), jn.Input((3,))
    cat = L.Concatenate()([a, b])
    m = jn.Model([a, b], [L.Dense(5, 1, rng=0, dtype=np.float64)(cat), cat])
    xa, xb = np.ones((4, 2)), np.full((4, 3), 2.0)
    y1, y2 = m.forward([xa, xb])
    assert y1.shape == (4, 1) and np.array_equal(y2, np.concatenate([xa, xb], axis=1))
    da, db = m.backward([np.zeros((4, 1)), np.ones((4, 5))])
    assert np.array_equal(da, np.ones((4, 2))) and np.array_equal(db, np.ones((4, 3)))
    with pytest.raises(ValueError, match="expected a list of 2"):
        m.forward(xa)


def test_forward_checks_the_data_once_and_backward_needs_a_forward():
    m = residual(np.float32)
    with pytest.raises(RuntimeError, match="before forward"):
        m.backward(np.zeros((1, 3), np.float32))
    x = np.zeros((2, 6, 6, 1), np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.forward(x)
    with pytest.raises(ValueError, match="dtype"):
        m.forward(np.zeros((2, 6, 6, 1), np.int64))


def test_results_do_not_depend_on_the_thread_count():
    m = residual(np.float32)
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 1)).astype(np.float32)
    outs = []
    for n in (1, 3):
        jn.set_num_threads(n)
        try:
            c = m.copy()
            y = c.forward(x, training=True)
            dx = c.backward(np.ones_like(y))
            outs.append((y, dx, [p.grad.copy() for p in c.parameters()]))
        finally:
            jn.set_num_threads(2)
    (y1, d1, g1), (y2, d2, g2) = outs
    assert np.array_equal(y1, y2) and np.array_equal(d1, d2)
    assert all(np.array_equal(a, b) for a, b in zip(g1, g2))


# -- saving and loading ----------------------------------------------------------------------------

def test_save_and_load_restore_weights_buffers_and_the_graph(tmp_path):
    m = residual(np.float32)
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 1)).astype(np.float32)
    for _ in range(3):
        m.forward(x, training=True)  # moves the running statistics
    m.save(tmp_path / "g.npz", metadata={"note": "graph"})
    loaded = jn.load(tmp_path / "g.npz")
    assert isinstance(loaded, jn.Model) and loaded.metadata == {"note": "graph"}
    assert loaded.get_config() == m.get_config()
    assert set(loaded.state_dict()) == set(m.state_dict())
    assert any(k.endswith("running_var") for k in loaded.state_dict())
    np.testing.assert_array_equal(loaded.forward(x), m.forward(x))  # evaluation: running statistics
    np.testing.assert_array_equal(loaded.predict(x, batch_size=3), m.predict(x))


def _write_model_file(path, arch, arrays):
    save_npz(path, arrays, {"format": "jimunet-model", "version": 1, "architecture": arch, "metadata": {}})


@pytest.mark.parametrize("edit,message", [
    (lambda a: a["nodes"][0].update(inputs=["ghost"]), "unknown node"),
    (lambda a: a["nodes"][0].update(inputs=[a["nodes"][-1]["name"]]), "cycle"),
    (lambda a: a.update(nodes=a["nodes"] * 5001), "at most 10,000"),
])
def test_load_refuses_a_malformed_graph_with_a_clear_error(tmp_path, edit, message):
    m = residual(np.float32)
    arch = m.get_config()
    edit(arch)
    path = tmp_path / "bad.npz"
    _write_model_file(path, arch, {f"param/{k}": v for k, v in m.state_dict().items()})
    with pytest.raises(jn.CheckpointError, match=message):
        jn.load(path)


def test_load_refuses_non_finite_buffers(tmp_path):
    m = residual(np.float32)
    state = {f"param/{k}": v.copy() for k, v in m.state_dict().items()}
    key = next(k for k in state if k.endswith("running_var"))
    state[key][0] = np.inf
    _write_model_file(tmp_path / "inf.npz", m.get_config(), state)
    with pytest.raises(jn.CheckpointError, match="running_var.*NaN or infinite"):
        jn.load(tmp_path / "inf.npz")


# -- training, checkpoints and resume -------------------------------------------------------------

def _trainer(model, seed=0):
    opt = jn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    return Trainer(model, jn.losses.SoftmaxCrossEntropy(), opt, batch_size=8, rng=seed, log=False,
                   augment=jn.data.augment.RandomShift(1, rng=seed))


def test_trainer_checkpoint_resumes_a_graph_model_bit_identically(tmp_path):
    r = np.random.default_rng(0)
    x, y = r.normal(size=(32, 6, 6, 1)).astype(np.float32), r.integers(0, 3, 32)
    full = _trainer(residual(np.float32))
    full.fit(x, y, epochs=2)
    half = _trainer(residual(np.float32))
    half.fit(x, y, epochs=1)
    half.save_checkpoint(tmp_path / "ck.npz")
    resumed = _trainer(residual(np.float32), seed=123)  # different RNGs: the checkpoint must restore them
    resumed.load_checkpoint(tmp_path / "ck.npz")
    resumed.fit(x, y, epochs=2)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert resumed.history.step_loss == full.history.step_loss


def _tiny_mnist(n_train=200, n_test=50):
    r = np.random.default_rng(0)
    ytr, yte = r.integers(0, 10, n_train), r.integers(0, 10, n_test)
    # a class-dependent bright square on a dark background, so there is something to learn
    def images(y):
        x = r.integers(0, 40, (len(y), 28, 28, 1)).astype(np.uint8)
        for k in range(10):
            x[y == k, 2 * k + 2:2 * k + 8, 8:20] = 250
        return x
    return (images(ytr), ytr), (images(yte), yte)


class _StopAfterEpoch(jn.training.Callback):
    def on_epoch_end(self, trainer, epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt


def test_resnet_recipe_trains_saves_and_resumes(tmp_path):
    data = _tiny_mnist()
    cfg = MNISTConfig(**{**RESNET_DEFAULTS, "epochs": 2, "batch_size": 32, "validation_size": 40,
                         "report": False, "progress": False})
    full = train_mnist(cfg.replace(out=str(tmp_path / "full")), data=data, echo=False)
    assert isinstance(full.model, jn.Model)
    log = (tmp_path / "full" / "train.log").read_text()
    assert "model mnist_resnet" in log and "random shifts up to 2 px" in log and "cosine" in log
    with pytest.raises(TrainingInterrupted):
        train_mnist(cfg.replace(out=str(tmp_path / "cut")), data=data, callbacks=[_StopAfterEpoch()], echo=False)
    resumed = train_mnist(resume=str(tmp_path / "cut"), data=data, echo=False)
    a, b = jn.load(tmp_path / "full" / "model.npz"), jn.load(tmp_path / "cut" / "model.npz")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert resumed.test_error == full.test_error


def test_resnet_recipe_optimizer_leaves_batchnorm_and_biases_undecayed():
    cfg = MNISTConfig(**RESNET_DEFAULTS)
    model, _, opt, schedule = build(cfg, train_size=55000)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.name == "weight" and p.data.ndim >= 2 for p in decayed["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(model.parameters())
    steps = 10 * (55000 // 128)
    assert schedule(0) == pytest.approx(0.2) and schedule(steps // 2) == pytest.approx(0.1)
    assert schedule(steps) == pytest.approx(0.0, abs=1e-12)
    s = model.summary()
    assert s.total_params < 1_663_370  # fewer than the TF sample's network
    assert s.output_shape == (10,)


# -- augmentation -------------------------------------------------------------------------------

def test_random_shift_moves_each_image_by_its_own_offset_and_is_seeded():
    r = np.random.default_rng(0)
    x = r.normal(size=(64, 9, 7, 2)).astype(np.float32)
    x_copy = x.copy()
    aug = jn.data.augment.RandomShift(2, rng=5)
    y = aug(x)
    np.testing.assert_array_equal(x, x_copy)  # the batch itself is untouched
    assert y.shape == x.shape and y.dtype == x.dtype and y.flags.c_contiguous
    # the same draws, replayed: image i is the edge-padded image cropped at (oy[i], ox[i])
    g = np.random.default_rng(5)
    oy, ox = g.integers(0, 5, 64), g.integers(0, 5, 64)
    pad = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    for i in range(64):  # a per-sample loop is fine as a reference in a test
        np.testing.assert_array_equal(y[i], pad[i, oy[i]:oy[i] + 9, ox[i]:ox[i] + 7])
    assert len({(a, b) for a, b in zip(oy, ox)}) > 10  # offsets really vary per image
    np.testing.assert_array_equal(jn.data.augment.RandomShift(2, rng=5)(x), y)
    assert jn.data.augment.RandomShift(0, rng=5)(x) is x


def test_random_shift_state_round_trip_and_bad_input():
    aug = jn.data.augment.RandomShift(1, rng=0)
    x = np.random.default_rng(1).normal(size=(8, 5, 5, 1))
    state = aug.state()
    first = aug(x)
    aug.set_state(state)
    np.testing.assert_array_equal(aug(x), first)
    with pytest.raises(ValueError, match="NHWC"):
        aug(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="max_shift"):
        jn.data.augment.RandomShift(-1)


# -- explain and report ---------------------------------------------------------------------------

def test_explain_walks_the_nodes_and_shows_the_branches():
    from jimunet.app.explain import explain
    from jimunet.app.inspect import trace
    m = residual(np.float32)
    recs = explain(m, np.zeros((6, 6, 1), np.uint8), file=None)
    add = next(r for r in recs if r["kind"] == "Add")
    assert len(add["reads"]) == 2 and add["input_shape"] == [[6, 6, 4], [6, 6, 4]]
    first_conv = recs[0]
    assert first_conv["reads"] == [-1]
    shortcut = next(r for r in recs if r["kind"] == "Conv2D" and r["details"]["kernel"] == [1, 1])
    assert shortcut["reads"] == [-1]  # the shortcut branch reads the input, too
    assert sum(r["params"] for r in recs) == sum(p.size for p in m.parameters())
    x = np.zeros((1, 6, 6, 1), np.float32) - 0.5
    np.testing.assert_array_equal(trace(m, x)[-1], m.forward(x))
    import io
    buf = io.StringIO()
    explain(m, np.zeros((6, 6, 1), np.uint8), file=buf)
    text = buf.getvalue()
    assert f"reads    [{add['reads'][0]}], [{add['reads'][1]}]" in text and "shortcut joins here" in text
    assert "running statistics" in text


def test_report_on_a_graph_model_run(tmp_path):
    from jimunet.app.report import write_report
    data = _tiny_mnist(n_train=64, n_test=40)
    cfg = MNISTConfig(**{**RESNET_DEFAULTS, "epochs": 1, "batch_size": 32, "validation_size": 20,
                         "report": False, "progress": False, "out": str(tmp_path / "run")})
    train_mnist(cfg, data=data, echo=False)
    html = write_report(tmp_path / "run", data=data[1])
    text = open(html).read()
    assert "Conv2D" in text and (tmp_path / "run" / "report-filters.png").exists()


def test_batchnorm_in_a_sequential_saves_loads_and_checkpoints_its_running_statistics(tmp_path):
    def make():
        return jn.Sequential([L.Conv2D(1, 3, 3, rng=0), L.BatchNorm(3), L.ReLU(), L.Flatten(), L.Dense(48, 2, rng=1)])
    r = np.random.default_rng(0)
    x, y = r.normal(size=(16, 4, 4, 1)).astype(np.float32), r.integers(0, 2, 16)
    def trainer_of(model):
        return Trainer(model, jn.losses.SoftmaxCrossEntropy(), jn.optim.SGD(model.parameters(), lr=0.1),
                       batch_size=4, rng=0, log=False)
    trainer = trainer_of(make())
    trainer.fit(x, y, epochs=1)
    bn = trainer.model.layers[1]
    assert not np.array_equal(bn.running_var.data, np.ones(3))
    trainer.model.save(tmp_path / "m.npz")
    loaded = jn.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.layers[1].running_mean.data, bn.running_mean.data)
    np.testing.assert_array_equal(loaded.forward(x), trainer.model.forward(x))
    trainer.save_checkpoint(tmp_path / "ck.npz")
    fresh = trainer_of(make())
    fresh.load_checkpoint(tmp_path / "ck.npz")
    np.testing.assert_array_equal(fresh.model.layers[1].running_var.data, bn.running_var.data)
