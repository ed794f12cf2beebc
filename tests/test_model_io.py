"""Sequential: save/load (atomic, never unpickles, clear errors), summary, predict, backward."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import jimunet as jn
from jimunet import layers as L
from jimunet.serialization import CheckpointError, load_npz, save_npz


def _small_model(dtype=np.float32, seed=0):
    return jn.Sequential([
        L.Conv2D(1, 4, 3, rng=seed, dtype=dtype), L.ReLU(), L.MaxPool2D(2, padding="same"),
        L.Conv2D(4, 6, (2, 3), stride=(1, 2), padding=1, rng=seed + 1, dtype=dtype), L.LeakyReLU(0.2),
        L.AvgPool2D(3, 1, padding=1, count_include_pad=False), L.Flatten(),
        L.Dense(6 * 3 * 6, 8, rng=seed + 2, dtype=dtype), L.Tanh(), L.Dropout(0.25, rng=seed + 3),
        L.Dense(8, 5, rng=seed + 4, dtype=dtype), L.Sigmoid()])


def _x(n=6, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 9, 9, 1)).astype(dtype)


def _files(directory):
    return sorted(os.listdir(directory))


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip(tmp_path, dtype):
    model = _small_model(dtype)
    for p in model.parameters():  # non-trivial biases too
        p.data += np.random.default_rng(1).standard_normal(p.shape).astype(dtype) * 0.1
    x = _x(dtype=dtype)
    path = tmp_path / "model.npz"
    model.save(path, metadata={"epochs": 3, "note": "unit test"})
    assert _files(tmp_path) == ["model.npz"]  # atomic write: no temporary files left behind
    loaded = jn.load(path)
    assert isinstance(loaded, jn.Sequential)
    assert [type(a) for a in loaded] == [type(b) for b in model]
    assert [a.describe() for a in loaded] == [b.describe() for b in model]
    for (na, a), (nb, b) in zip(loaded.named_parameters(), model.named_parameters()):
        assert na == nb and a.data.dtype == b.data.dtype == dtype
        np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.metadata == {"epochs": 3, "note": "unit test"}
    assert loaded.summary((9, 9, 1)).total_params == model.summary((9, 9, 1)).total_params


def test_save_mnist_cnn_round_trip(tmp_path):
    model = jn.models.mnist_cnn(rng=0)
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    model.save(tmp_path / "cnn.npz")
    loaded = jn.load(tmp_path / "cnn.npz")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.summary((28, 28, 1)).total_params == 1_663_370


def test_save_overwrites_atomically_and_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = _small_model(seed=0)
    old.save(path)
    new = _small_model(seed=10)
    new.save(path)  # overwriting works
    np.testing.assert_array_equal(jn.load(path).predict(_x()), new.predict(_x()))

    def broken_savez(f, **arrays):  # write half a file, then die (disk full, Ctrl-C ...)
        f.write(b"PK\x03\x04 partial")
        raise OSError("simulated failure while writing")

    monkeypatch.setattr(jn.serialization.np, "savez", broken_savez)
    with pytest.raises(OSError, match="simulated"):
        old.save(path)
    monkeypatch.undo()
    assert _files(tmp_path) == ["model.npz"]  # no temporary left behind
    np.testing.assert_array_equal(jn.load(path).predict(_x()), new.predict(_x()))  # old content intact


def test_save_creates_missing_directories(tmp_path):
    path = tmp_path / "a" / "b" / "m.npz"
    _small_model().save(path)
    assert jn.load(str(path)).summary((9, 9, 1)).output_shape == (5,)


def test_file_from_another_architecture_is_refused(tmp_path):
    """A file whose weights do not fit the architecture it describes (e.g. weights of another
    network under this network's description) is a CheckpointError naming what does not fit."""
    a = _small_model()
    b = jn.Sequential([L.Flatten(), L.Dense(81, 5, rng=0)])
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    arrays_a, _ = load_npz(tmp_path / "a.npz")
    _, meta_b = load_npz(tmp_path / "b.npz")
    save_npz(tmp_path / "mixed.npz", arrays_a, meta_b)
    with pytest.raises(CheckpointError, match=r"mixed\.npz.*do not match this model") as info:
        jn.load(tmp_path / "mixed.npz")
    msg = str(info.value)
    assert "missing ['1.weight', '1.bias']" in msg and "'0.weight'" in msg.split("unexpected")[1]
    # same parameter names, different shapes
    c = jn.Sequential([L.Flatten(), L.Dense(81, 7, rng=0)])
    arrays_c = {k: v for k, v in load_npz(_save(c, tmp_path / "c.npz"))[0].items()}
    save_npz(tmp_path / "shapes.npz", arrays_c, meta_b)
    with pytest.raises(CheckpointError, match=r"1\.weight has shape \(81, 7\) in the file, \(81, 5\) in the model"):
        jn.load(tmp_path / "shapes.npz")
    # and loading another network's weights into a live model fails before changing anything
    before = [p.data.copy() for p in b.parameters()]
    with pytest.raises(ValueError, match="has shape"):
        b.load_state_dict(jn.load(tmp_path / "c.npz").state_dict())
    for p, w in zip(b.parameters(), before):
        np.testing.assert_array_equal(p.data, w)


def _save(model, path):
    model.save(path)
    return path


def test_unknown_layer_in_the_description_is_refused(tmp_path):
    arrays, meta = load_npz(_save(_small_model(), tmp_path / "m.npz"))
    meta["architecture"]["layers"][1]["class"] = "Swish"
    save_npz(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(CheckpointError, match="cannot rebuild the architecture.*Swish"):
        jn.load(tmp_path / "bad.npz")
    del meta["architecture"]
    save_npz(tmp_path / "bad2.npz", arrays, meta)
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        jn.load(tmp_path / "bad2.npz")


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_refused(tmp_path, fraction):
    data = _save(_small_model(), tmp_path / "m.npz").read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="truncated.npz"):
        jn.load(bad)


@pytest.mark.parametrize("where", [0.02, 0.3, 0.5, 0.75])
def test_corrupt_file_is_refused(tmp_path, where):
    model = _small_model()
    data = bytearray(_save(model, tmp_path / "m.npz").read_bytes())
    i = int(len(data) * where)
    data[i:i + 16] = bytes((b ^ 0x5A) for b in data[i:i + 16])
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(bytes(data))
    try:
        loaded = jn.load(bad)
    except CheckpointError:
        return
    # Where the layout puts these bytes on fields no reader uses (a zip local header repeats
    # the central directory's sizes and CRC), loading must still give exactly the saved model.
    assert [a.get_config() for a in loaded] == [b.get_config() for b in model]
    for (_, a), (_, b) in zip(loaded.named_parameters(), model.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_corrupt_bytes_in_any_stored_entry_are_refused(tmp_path):
    import zipfile
    path = _save(_small_model(), tmp_path / "m.npz")
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        entries = [(info.filename, info.header_offset, info.compress_size) for info in z.infolist()]
    assert len(entries) >= 5
    for name, offset, size in entries:
        # the entry's stored bytes follow its 30-byte local header and its name
        start = offset + 30 + len(name.encode())
        i = start + size // 2
        bad_data = bytearray(data)
        bad_data[i] ^= 0x5A
        bad = tmp_path / "corrupt.npz"
        bad.write_bytes(bytes(bad_data))
        with pytest.raises(CheckpointError):
            jn.load(bad)


def test_garbage_and_empty_files_are_refused(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_text("this is not a model\n")
    for name in ("empty.npz", "text.npz"):
        with pytest.raises(CheckpointError, match="not a readable jimunet .npz"):
            jn.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        jn.load(tmp_path / "missing.npz")


def test_non_jimunet_npz_is_refused(tmp_path):
    np.savez(tmp_path / "plain.npz", weights=np.arange(3.0))
    with pytest.raises(CheckpointError, match="not one written by jimunet"):
        jn.load(tmp_path / "plain.npz")
    save_npz(tmp_path / "other_kind.npz", {"a": np.ones(2)}, {"format": "jimunet-optimizer"})
    with pytest.raises(CheckpointError, match="expected a 'jimunet-model' file, got 'jimunet-optimizer'"):
        jn.load(tmp_path / "other_kind.npz")


@pytest.mark.parametrize("meta", [b"[1, 2]", b"3", b'"jimunet-model"', b"null", b"{not json"])
def test_bad_json_description_is_refused(tmp_path, meta):
    np.savez(tmp_path / "m.npz", __meta__=np.frombuffer(meta, np.uint8))
    with pytest.raises(CheckpointError, match="m.npz"):
        jn.load(tmp_path / "m.npz")


def test_loading_never_unpickles(tmp_path):
    """An object array would run arbitrary code on unpickling; it must be refused unread."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    meta = {"format": "jimunet-model", "architecture": {"layers": []}}
    path = tmp_path / "evil.npz"
    np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8),
             **{"param/0.weight": np.array([Evil()], dtype=object)})
    # numpy itself refuses it without pickles ...
    with pytest.raises(ValueError, match="allow_pickle"):
        with np.load(path, allow_pickle=False) as z:
            z["param/0.weight"]
    # ... and our wrapper turns that into a CheckpointError
    with pytest.raises(CheckpointError, match="evil.npz"):
        jn.load(path)
    with pytest.raises(CheckpointError):
        load_npz(path)
    assert not marker.exists()


def test_save_npz_refuses_the_reserved_name(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_npz(tmp_path / "x.npz", {"__meta__": np.ones(2)}, {})
    assert _files(tmp_path) == []


# --------------------------------------------------------------------------- summary


def test_mnist_cnn_summary_totals():
    s = jn.models.mnist_cnn(rng=0).summary((28, 28, 1))
    assert s.total_params == 1_663_370
    assert [r["params"] for r in s.rows] == [832, 0, 0, 51_264, 0, 0, 0, 1_606_144, 0, 0, 5_130]
    assert [r["output_shape"] for r in s.rows] == [
        (28, 28, 32), (28, 28, 32), (14, 14, 32), (14, 14, 64), (14, 14, 64), (7, 7, 64), (3136,),
        (512,), (512,), (512,), (10,)]
    assert s.output_shape == (10,)
    text = str(s)
    assert "1,663,370" in text and "(N, 7, 7, 64)" in text
    # a leading None batch axis is accepted, like Keras
    assert jn.models.mnist_cnn(rng=0).summary((None, 28, 28, 1)).total_params == 1_663_370
    # FLOPs: the two convolutions dominate; check the first by hand
    assert s.rows[0]["flops"] == 2 * 28 * 28 * 32 * 5 * 5 * 1 + 28 * 28 * 32


def test_summary_matches_forward_shapes():
    model = _small_model(np.float64)
    s = model.summary((9, 9, 1))
    x = _x(2, np.float64)
    for layer, row in zip(model, s.rows):
        x = layer.forward(x)
        assert tuple(x.shape[1:]) == row["output_shape"]


def test_impossible_stack_fails_naming_the_layer():
    model = jn.Sequential([L.Conv2D(1, 2, 5, padding="valid"), L.Conv2D(2, 2, 5, padding="valid"),
                           L.Conv2D(2, 2, 5, padding="valid")])
    with pytest.raises(ValueError, match=r"layer 2 \(Conv2D\(2->2, 5x5.*\(N, 2, 2, 2\)"):
        model.summary((10, 10, 1))
    cnn = jn.models.mnist_cnn(rng=0)
    with pytest.raises(ValueError, match=r"layer 7 \(Dense\(3136->512\)\)"):
        cnn.summary((32, 32, 1))  # 8*8*64 features reach a Dense built for 7*7*64


# --------------------------------------------------------------------------- predict / backward


@pytest.mark.parametrize("batch_size", [1, 4, 7, 100])
def test_predict_in_chunks_equals_one_forward(batch_size):
    model = _small_model(np.float64)
    x = _x(13, np.float64)
    full = model.forward(x, training=False)
    np.testing.assert_allclose(model.predict(x, batch_size=batch_size), full, rtol=1e-12, atol=1e-14)


def test_predict_is_evaluation_mode_and_validates_batch_size():
    model = jn.Sequential([L.Dropout(0.9, rng=0)])
    x = np.ones((5, 3))
    np.testing.assert_array_equal(model.predict(x, batch_size=2), x)
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(x, batch_size=0)


@pytest.mark.parametrize("make", [lambda: _small_model(np.float64),
                                  lambda: jn.Sequential([L.Flatten(), L.Dense(81, 3, rng=0), L.ReLU(),
                                                         L.Dense(3, 2, rng=1)])],
                         ids=["conv_first", "flatten_first"])
def test_backward_without_input_grad(make):
    x = _x(4, np.float64)
    a, b = make(), make()
    ya = a.forward(x, training=True)
    yb = b.forward(x, training=True)
    np.testing.assert_array_equal(ya, yb)
    g = np.random.default_rng(3).standard_normal(ya.shape)
    dx = a.backward(g)
    assert dx.shape == x.shape
    assert b.backward(g, input_grad=False) is None
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        assert pa.grad.any()
        np.testing.assert_array_equal(pa.grad, pb.grad)


def test_state_dict_round_trip_and_copy():
    model = _small_model(np.float64)
    other = _small_model(np.float64, seed=50)
    other.load_state_dict(model.state_dict())
    x = _x(3, np.float64)
    np.testing.assert_array_equal(other.predict(x), model.predict(x))
    clone = model.copy()
    clone.parameters()[0].data += 1.0
    assert not np.array_equal(clone.parameters()[0].data, model.parameters()[0].data)
    with pytest.raises(ValueError, match="missing"):
        model.load_state_dict({})


def test_fused_relu_maxpool_order_gives_identical_results():
    """fuse=True runs ReLU→MaxPool2D as MaxPool2D→ReLU; outputs and all gradients are equal."""
    def build(fuse):
        return jn.Sequential([jn.layers.Conv2D(2, 3, 3, rng=1, dtype=np.float64), jn.layers.ReLU(),
                              jn.layers.MaxPool2D(2, padding="same"), jn.layers.ReLU(), jn.layers.MaxPool2D(3, 2),
                              jn.layers.Flatten()], fuse=fuse)
    rng = np.random.default_rng(3)
    # integer-valued inputs and weights make ties and exact zeros common
    x = rng.integers(-2, 3, (4, 9, 9, 2)).astype(np.float64)
    results = []
    for fuse in (True, False):
        m = build(fuse)
        m.layers[0].weight.data[...] = np.random.default_rng(5).integers(-1, 2, m.layers[0].weight.data.shape)
        y = m.forward(x, training=True)
        g = np.random.default_rng(6).standard_normal(y.shape)
        dx = m.backward(g)
        results.append((y, dx, m.layers[0].weight.grad.copy(), m.layers[0].bias.grad.copy()))
    assert build(True)._order() == [0, 2, 1, 4, 3, 5]
    assert build(False)._order() == list(range(6))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- untrusted files
# Crafted files are built by hand (zip entries holding .npy bytes), small, and never make
# the loader allocate what their headers claim.

import io  # noqa: E402
import tracemalloc  # noqa: E402
import zipfile  # noqa: E402

from jimunet import serialization  # noqa: E402


def _npy(array=None, *, shape=None, descr="<f4", data=b""):
    """.npy bytes of ``array``, or a bare header claiming ``shape``/``descr`` followed by ``data``."""
    buf = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
        return buf.getvalue()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def _meta_npy(meta):
    return _npy(np.frombuffer(json.dumps(meta).encode() if isinstance(meta, dict) else meta, np.uint8))


def _model_meta(layers):
    return {"format": "jimunet-model", "version": 1, "architecture": {"layers": layers}, "metadata": {}}


def _dense(n_in, n_out):
    return {"class": "Dense", "config": {"in_features": n_in, "out_features": n_out}}


def _write_npz(path, entries, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, payload in entries.items():
            z.writestr(name, payload)
    return path


def _tiny_model_file(path, weight=None, bias=None, extra=()):
    w = np.ones((3, 2), np.float32) if weight is None else weight
    b = np.zeros(2, np.float32) if bias is None else bias
    entries = {"__meta__.npy": _meta_npy(_model_meta([_dense(3, 2)])),
               "param/0.weight.npy": _npy(w), "param/0.bias.npy": _npy(b)}
    entries.update(extra)
    return _write_npz(path, entries)


@pytest.mark.parametrize("weight,shown", [
    (np.ones((3, 2), np.int64), "int64"),
    (np.ones((3, 2), bool), "bool"),
    (np.ones((3, 2), np.float16), "float16"),
    (np.ones((3, 2), np.complex64), "complex64"),
    (np.full((3, 2), "ab"), "<U2"),
    (np.zeros((3, 2), [("a", "<f4"), ("b", "<f4")]), "('a', '<f4')"),
])
def test_only_float32_and_float64_weights_load(tmp_path, weight, shown):
    path = _tiny_model_file(tmp_path / "m.npz", weight=weight)
    with pytest.raises(CheckpointError, match="0.weight") as info:
        jn.load(path)
    assert shown in str(info.value) and "m.npz" in str(info.value)
    model = jn.Sequential([L.Dense(3, 2)])
    if weight.dtype.kind in "bif":  # arrays a caller could hand to load_state_dict
        with pytest.raises(ValueError, match=r"0\.weight has dtype .*float32 or float64"):
            model.load_state_dict({"0.weight": weight, "0.bias": np.zeros(2, np.float32)})


def test_object_weights_are_refused_unread(tmp_path):
    path = _tiny_model_file(tmp_path / "m.npz", extra={"param/0.weight.npy": _npy(shape=(3, 2), descr="|O")})
    with pytest.raises(CheckpointError, match="objects"):
        jn.load(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(tmp_path, bad):
    w = np.ones((3, 2), np.float32)
    w[1, 1] = bad
    with pytest.raises(CheckpointError, match=r"0\.weight .*NaN or infinite"):
        jn.load(_tiny_model_file(tmp_path / "m.npz", weight=w))
    b = np.zeros(2, np.float64)
    b[0] = bad
    with pytest.raises(CheckpointError, match=r"0\.bias .*NaN or infinite"):
        jn.load(_tiny_model_file(tmp_path / "b.npz", bias=b))
    model = jn.Sequential([L.Dense(3, 2, rng=0)])
    before = model.state_dict()["0.weight"].copy()
    with pytest.raises(ValueError, match="0.weight contains NaN or infinite"):
        model.load_state_dict({"0.weight": w, "0.bias": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(model.state_dict()["0.weight"], before)  # nothing half-loaded


def test_a_valid_handmade_file_loads(tmp_path):
    """The crafting helpers make files jimunet accepts when nothing is wrong (so the refusals
    above are about the one thing each test changes); float64 weights become float32."""
    w = np.arange(6, dtype=np.float64).reshape(3, 2)
    model = jn.load(_tiny_model_file(tmp_path / "m.npz", weight=w))
    assert model[0].weight.data.dtype == np.float32
    np.testing.assert_array_equal(model[0].weight.data, w)
    assert model.predict(np.ones((1, 3), np.float32)).tolist() == [[6.0, 9.0]]


def test_architecture_is_checked_before_anything_is_allocated(tmp_path):
    """A 454-byte file describing Dense(3*10**8, 1) without its weights used to allocate
    3.5 GB before noticing; now the shapes are compared with the stored headers first."""
    meta = _model_meta([_dense(3 * 10 ** 8, 1)])
    path = _write_npz(tmp_path / "bomb.npz", {"__meta__.npy": _meta_npy(meta)})
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"missing \['0.weight', '0.bias'\]"):
            jn.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2 ** 20, f"loading a refused file allocated {peak:,} bytes"
    # the same with weights of the wrong shape stored: still nothing of the declared size
    path = _write_npz(tmp_path / "bomb2.npz", {"__meta__.npy": _meta_npy(meta),
                                               "param/0.weight.npy": _npy(np.ones((3, 1), np.float32)),
                                               "param/0.bias.npy": _npy(np.ones(1, np.float32))})
    with pytest.raises(CheckpointError, match=r"0\.weight has shape \(3, 1\) in the file, \(300000000, 1\)"):
        jn.load(path)


def test_load_initialises_no_weights_and_leaves_the_default_generator_alone(tmp_path, monkeypatch):
    model = jn.models.mnist_cnn(rng=0)  # Conv2D, Dense and Dropout layers
    model.save(tmp_path / "m.npz")
    jn.set_seed(123)
    state = jn.random.default_rng().bit_generator.state
    calls = []

    def counting(factory):
        def make(*args, **kwargs):
            init = factory(*args, **kwargs)
            return lambda shape, rng, dtype=np.float32: (calls.append(shape), init(shape, rng, dtype))[1]
        return make

    for name, factory in list(jn.init._REGISTRY.items()):
        monkeypatch.setitem(jn.init._REGISTRY, name, counting(factory))
    jn.layers.Dense(2, 3)  # (the counting works)
    assert calls == [(2, 3), (3,)]
    jn.set_seed(123)
    calls.clear()
    loaded = jn.load(tmp_path / "m.npz")
    assert jn.random.default_rng().bit_generator.state == state
    assert calls == []  # no initial weights were drawn
    for (name, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
        assert q.data.flags.writeable and q.data.flags.c_contiguous and not q.grad.any()
    # the loaded model trains: its Dropout draws from its own stream once used
    x = np.random.default_rng(0).standard_normal((2, 28, 28, 1)).astype(np.float32)
    out = loaded.forward(x, training=True)
    loaded.backward(np.ones_like(out))
    assert all(np.isfinite(p.grad).all() for p in loaded.parameters())


def test_unknown_arrays_are_refused_before_they_are_read(tmp_path):
    """An extra array (here 2 MB of deflated zeros, ~2 KB on disk) is named and refused;
    the zip directory and headers suffice, its data is never inflated."""
    zeros = _npy(np.zeros(2 ** 19, np.float32))
    for name in ("param/9.weight.npy", "junk.npy"):
        path = tmp_path / "extra.npz"
        _write_npz(path, {"__meta__.npy": _meta_npy(_model_meta([_dense(3, 2)])),
                          "param/0.weight.npy": _npy(np.ones((3, 2), np.float32)),
                          "param/0.bias.npy": _npy(np.zeros(2, np.float32)), name: zeros},
                   zipfile.ZIP_DEFLATED)
        assert path.stat().st_size < 20_000
        with pytest.raises(CheckpointError, match="unexpected .*" + name[:-4].split("/")[-1]):
            jn.load(path)
    path = _tiny_model_file(tmp_path / "x.npz", extra={"notes.txt": b"hello"})
    with pytest.raises(CheckpointError, match="unexpected entry 'notes.txt'"):
        jn.load(path)


def test_total_size_is_bounded_before_reading(tmp_path, monkeypatch):
    model = jn.Sequential([L.Dense(512, 1024, rng=0)])  # 2 MB of weights
    model.save(tmp_path / "m.npz")
    monkeypatch.setattr(serialization, "MAX_LOAD_BYTES", 2 ** 20)
    with pytest.raises(CheckpointError, match=r"2,101,248 bytes in all, over the limit of 1,048,576 bytes"):
        jn.load(tmp_path / "m.npz")
    with pytest.raises(CheckpointError, match="over the limit"):
        load_npz(tmp_path / "m.npz")
    assert jn.load(tmp_path / "m.npz", max_bytes=4 * 2 ** 20)[0].weight.shape == (512, 1024)


@pytest.mark.parametrize("shape", [(10 ** 11,), (10 ** 6, 10 ** 6), (2 ** 62, 4)])
def test_a_header_claiming_a_huge_array_is_a_clear_error(tmp_path, shape):
    path = _tiny_model_file(tmp_path / "m.npz", extra={"param/0.weight.npy": _npy(shape=shape, data=b"\0" * 64)})
    with pytest.raises(CheckpointError, match=r"header declares [\d,]+ bytes of data"):
        jn.load(path)
    with pytest.raises(CheckpointError, match="header declares"):
        load_npz(path)


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_json_is_a_clear_error(tmp_path, depth):
    meta = b'{"format": "jimunet-model", "metadata": ' + b"[" * depth + b"]" * depth + b"}"
    path = _write_npz(tmp_path / "deep.npz", {"__meta__.npy": _meta_npy(meta)})
    with pytest.raises(CheckpointError, match="nested more than 64 levels"):
        jn.load(path)


def test_oversized_json_description_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(serialization, "MAX_META_BYTES", 1000)
    meta = _model_meta([_dense(3, 2)])
    meta["metadata"] = {"notes": "x" * 2000}
    path = _tiny_model_file(tmp_path / "m.npz", extra={"__meta__.npy": _meta_npy(meta)})
    with pytest.raises(CheckpointError, match="JSON description is 2,[0-9]+ bytes; at most 1,000"):
        jn.load(path)


def test_checkpoint_files_refuse_arrays_they_do_not_refer_to(tmp_path):
    arrays = {"state/w": np.ones(2)}
    save_npz(tmp_path / "c.npz", {**arrays, "stowaway": np.zeros(3)},
             {"format": "ckpt", "state": {"w": {"__array__": "state/w"}}})
    with pytest.raises(CheckpointError, match="'stowaway'"):
        load_npz(tmp_path / "c.npz", expected=serialization.referenced_arrays)
    assert set(load_npz(tmp_path / "c.npz")[0]) == {"state/w", "stowaway"}


@pytest.mark.parametrize("make,x,expected", [
    (lambda: jn.models.mnist_cnn(rng=0), np.zeros((0, 28, 28, 1), np.float32), ((0, 10), np.float32)),
    (lambda: jn.models.mnist_cnn(rng=0), np.zeros((0, 28, 28, 1), np.float64), ((0, 10), np.float64)),
    (lambda: jn.Sequential([L.Flatten(), L.Dense(4, 3, rng=0)]), np.zeros((0, 2, 2), np.float32),
     ((0, 3), np.float32)),
    (lambda: jn.Sequential([L.Conv2D(1, 2, 3, rng=0)]), np.zeros((0, 5, 7, 1), np.float32),
     ((0, 5, 7, 2), np.float32)),
])
def test_predict_on_an_empty_batch_keeps_the_output_shape(make, x, expected):
    y = make().predict(x)
    assert (y.shape, y.dtype) == expected


def test_predict_on_an_empty_batch_still_checks_the_sample_shape():
    with pytest.raises(ValueError, match="Dense"):
        jn.Sequential([L.Flatten(), L.Dense(4, 3, rng=0)]).predict(np.zeros((0, 3, 3), np.float32))


def test_too_many_layers_are_refused_before_any_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr(jn.model, "MAX_LAYERS", 100)
    path = _write_npz(tmp_path / "deep.npz", {"__meta__.npy": _meta_npy(_model_meta([{"class": "ReLU"}] * 101))})
    with pytest.raises(CheckpointError, match="describes 101 layers; at most 100"):
        jn.load(path)
    _write_npz(tmp_path / "ok.npz", {"__meta__.npy": _meta_npy(_model_meta([{"class": "ReLU"}] * 100))})
    assert len(jn.load(tmp_path / "ok.npz")) == 100


def test_fortran_order_arrays_read_back_exactly(tmp_path):
    a = np.asfortranarray(np.arange(24, dtype=np.float64).reshape(2, 3, 4))
    np.savez(tmp_path / "f.npz", __meta__=np.frombuffer(b'{"format": "x"}', np.uint8), a=a, b=np.array(7))
    arrays, meta = load_npz(tmp_path / "f.npz", kind="x")
    np.testing.assert_array_equal(arrays["a"], a)
    assert arrays["b"].shape == () and arrays["b"] == 7 and meta == {"format": "x"}
