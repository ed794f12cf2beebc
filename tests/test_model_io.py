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
