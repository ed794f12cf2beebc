"""The named data sets: Fashion-MNIST (the real files of Debian's dataset-fashion-mnist, and broken
copies), CIFAR-10 (small archives in the official layout), and ``jn.data.load``."""
import functools
import gzip
import hashlib
import http.server
import io
import os
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

import jimunet as jn
from jimunet.data import cifar, download, fashion, loaders
from jimunet.data.idx import decode_idx, encode_idx, write_idx

DEBIAN = Path(fashion.DEBIAN_DIR)
HAVE_DEBIAN = all((DEBIAN / f"{s.name}.gz").exists() for s in fashion._FILES.values())


def needs_debian():
    """Skip without Debian's Fashion-MNIST, except in CI, which installs it (.ci/run)."""
    if HAVE_DEBIAN:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{DEBIAN} is missing in CI: .ci/run installs dataset-fashion-mnist")
    pytest.skip(f"Debian's Fashion-MNIST is not installed ({DEBIAN}): apt-get install dataset-fashion-mnist")


@pytest.fixture
def server(tmp_path):
    """A throwaway HTTP server on localhost, serving files from a directory."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- Fashion-MNIST: the real files ------------------------------------------------------------------

def test_real_fashion_mnist_from_debians_package(tmp_path):
    needs_debian()
    root = tmp_path / "cache"
    (x, y), (xt, yt) = jn.datasets.load_fashion_mnist(root, download=False)
    assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8 and xt.shape == (10000, 28, 28, 1)
    assert y.dtype == yt.dtype == np.int64
    assert np.bincount(y).tolist() == [6000] * 10 and np.bincount(yt).tolist() == [1000] * 10
    assert fashion.CLASS_NAMES[y[0]] == "Ankle boot" and fashion.CLASS_NAMES[yt[0]] == "Ankle boot"
    assert not root.exists()  # read in place: nothing copied, no empty cache directory made
    splits = jn.data.load("fashion-mnist", root=root, download=False)
    assert splits.source == str(DEBIAN) and splits.name == "fashion-mnist"
    assert splits.class_names == fashion.CLASS_NAMES and splits.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(splits.test.get_batch([0, 1])[0], xt[:2])


def test_debians_files_are_the_official_ones_with_another_gzip_header():
    """Debian's .gz files lack the official header's file name: put back, each is the official
    file, with the MD5 the Fashion-MNIST README publishes (and the SHA-256 the table records)."""
    needs_debian()
    mtimes = {"train-images-idx3-ubyte": 0x59A7E9DE, "train-labels-idx1-ubyte": 0x59A7E9DE,
              "t10k-images-idx3-ubyte": 0x59A7E9F3, "t10k-labels-idx1-ubyte": 0x59A7E9F3}
    for spec in fashion._FILES.values():
        deb = (DEBIAN / f"{spec.name}.gz").read_bytes()
        official = (b"\x1f\x8b\x08\x08" + mtimes[spec.name].to_bytes(4, "little") + b"\x00\x03"
                    + spec.name.encode() + b"\x00" + deb[10:])
        assert hashlib.md5(official).hexdigest() == spec.gz_md5
        assert hashlib.sha256(official).hexdigest() == spec.gz_sha256
        assert hashlib.sha256(gzip.decompress(deb)).hexdigest() == spec.sha256


def test_user_copies_in_root_are_used(tmp_path):
    needs_debian()
    for spec in fashion._FILES.values():
        shutil.copy(DEBIAN / f"{spec.name}.gz", tmp_path / f"{spec.name}.gz")
    arrays, source = fashion.load_fashion_mnist_arrays(tmp_path, download=False)
    assert source == str(tmp_path) and arrays["train_labels"][0] == 9


def test_fashion_mnist_in_an_mnist_directory_is_named_and_left_alone(tmp_path):
    needs_debian()
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    shutil.copy(DEBIAN / "t10k-labels-idx1-ubyte.gz", target)
    before = target.read_bytes()
    with pytest.raises(jn.data.MNISTUnavailableError,
                       match="it is Fashion-MNIST's t10k-labels-idx1-ubyte, not MNIST's"):
        jn.datasets.load_mnist(tmp_path, download=True, progress=False)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


# -- Fashion-MNIST: broken files, no files ----------------------------------------------------------

def test_a_wrong_checksum_is_an_error_naming_the_file(tmp_path):
    needs_debian()
    labels = decode_idx(gzip.decompress((DEBIAN / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels = labels.copy()
    labels[0] = (labels[0] + 1) % 10
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, labels)
    before = path.read_bytes()
    with pytest.raises(fashion.FashionMNISTUnavailableError) as e:
        jn.datasets.load_fashion_mnist(tmp_path, progress=False)
    msg = str(e.value)
    assert str(path) in msg and "SHA-256" in msg and fashion._FILES["test_labels"].sha256 in msg
    assert "leaves your files as they are" in msg and "Error" not in msg
    assert path.read_bytes() == before


def test_a_truncated_gz_is_an_error_naming_the_file(tmp_path):
    raw = gzip.compress(encode_idx(np.zeros(10000, np.uint8)))
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(fashion.FashionMNISTUnavailableError) as e:
        jn.datasets.load_fashion_mnist(tmp_path, download=False)
    assert str(path) in str(e.value) and "gzip" in str(e.value)
    assert path.read_bytes() == raw[:len(raw) // 2]


def test_nothing_anywhere_says_how_to_get_the_files(tmp_path, monkeypatch, server):
    _, url = server
    monkeypatch.setattr(fashion, "DEBIAN_DIR", str(tmp_path / "not-installed"))
    with pytest.raises(fashion.FashionMNISTUnavailableError) as e:
        jn.datasets.load_fashion_mnist(tmp_path / "a", download=False)
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and fashion.MIRRORS[0] in msg and "download=True" in msg
    monkeypatch.setattr(fashion, "MIRRORS", (url + "missing/",))  # every file: 404
    with pytest.raises(fashion.FashionMNISTUnavailableError) as e:
        jn.datasets.load_fashion_mnist(tmp_path / "b", progress=False)
    msg = str(e.value)
    assert f"{url}missing/train-images-idx3-ubyte.gz" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert len(e.value.errors) == 1 and list((tmp_path / "b").iterdir()) == []


def test_download_checks_the_gz_sha256_then_stores_verified_files(tmp_path, monkeypatch, server):
    served, url = server
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
              "train_labels": np.array([9, 0, 3], np.uint8),
              "test_images": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
              "test_labels": np.array([1, 2], np.uint8)}
    specs = {}
    for key, arr in arrays.items():
        name = fashion._FILES[key].name
        gz = gzip.compress(encode_idx(arr))
        (served / f"{name}.gz").write_bytes(gz)
        specs[key] = download.FileSpec(name, arr.shape, hashlib.sha256(encode_idx(arr)).hexdigest(),
                                       hashlib.md5(gz).hexdigest(), hashlib.sha256(gz).hexdigest())
    (served / "bad").mkdir()
    (served / "bad" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(encode_idx(arrays["train_images"]),
                                                                              mtime=1))
    monkeypatch.setattr(fashion, "_FILES", specs)
    monkeypatch.setattr(fashion, "DEBIAN_DIR", str(tmp_path / "not-installed"))
    monkeypatch.setattr(fashion, "MIRRORS", (url + "bad/", url))
    root = tmp_path / "cache"
    (x, y), (xt, yt) = jn.datasets.load_fashion_mnist(root, progress=False)
    np.testing.assert_array_equal(x[..., 0], arrays["train_images"])
    assert y.tolist() == [9, 0, 3] and yt.tolist() == [1, 2]
    names = sorted(s.name for s in specs.values())
    assert sorted(p.name for p in root.iterdir()) == sorted(names + [download.FETCHED_LIST])
    assert sorted((root / download.FETCHED_LIST).read_text().split()) == names


# -- CIFAR-10 ---------------------------------------------------------------------------------------

def _records(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return np.concatenate([labels[:, None], pixels], 1).tobytes(), labels, pixels


def build_cifar(path, n=3, drop=(), resize=None, meta=None, order=None):
    """A cifar-10-binary.tar.gz in the official layout, ``n`` records per batch file."""
    members = {f"cifar-10-batches-bin/{m}": _records(n, i)[0]
               for i, m in enumerate(cifar.TRAIN_MEMBERS + (cifar.TEST_MEMBER,))}
    members["cifar-10-batches-bin/batches.meta.txt"] = (meta if meta is not None
                                                        else "\n".join(cifar.CLASS_NAMES) + "\n\n").encode()
    members["cifar-10-batches-bin/readme.html"] = b"<html></html>"
    for name in drop:
        del members[f"cifar-10-batches-bin/{name}"]
    if resize:
        name, size = resize
        members[f"cifar-10-batches-bin/{name}"] = members[f"cifar-10-batches-bin/{name}"][:size]
    with tarfile.open(path, "w:gz") as tar:
        d = tarfile.TarInfo("cifar-10-batches-bin")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name in order or sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    return path


@pytest.fixture
def small_cifar(monkeypatch):
    """Make the loader accept small archives: 3 records per batch, their own checksums."""
    monkeypatch.setattr(cifar, "RECORDS_PER_BATCH", 3)

    def accept(path):
        data = Path(path).read_bytes()
        monkeypatch.setattr(cifar, "SIZE", len(data))
        monkeypatch.setattr(cifar, "MD5", hashlib.md5(data).hexdigest())
        monkeypatch.setattr(cifar, "SHA256", hashlib.sha256(data).hexdigest())
    return accept


def test_cifar_archive_in_the_official_layout(tmp_path, small_cifar):
    path = build_cifar(tmp_path / cifar.ARCHIVE)
    small_cifar(path)
    (x, y), (xt, yt) = jn.datasets.load_cifar10(tmp_path, download=False)
    assert x.shape == (15, 32, 32, 3) and x.dtype == np.uint8 and xt.shape == (3, 32, 32, 3)
    assert y.dtype == np.int64
    _, labels, pixels = _records(3, 1)  # data_batch_2
    np.testing.assert_array_equal(y[3:6], labels)
    planes = pixels.reshape(3, 3, 32, 32)  # R, G, B planes of each record
    np.testing.assert_array_equal(x[3:6, 5, 7, 0], planes[:, 0, 5, 7])
    np.testing.assert_array_equal(x[3:6, 5, 7, 2], planes[:, 2, 5, 7])
    np.testing.assert_array_equal(x[3:6].transpose(0, 3, 1, 2), planes)
    np.testing.assert_array_equal(yt, _records(3, 5)[1])
    splits = jn.data.load("cifar10", root=tmp_path, download=False)
    assert splits.class_names == cifar.CLASS_NAMES and splits.image_shape == (32, 32, 3)
    assert splits.source == str(path) and len(splits.train) == 15


def test_cifar_members_in_any_order(tmp_path, small_cifar):
    names = [f"cifar-10-batches-bin/{m}" for m in
             ("test_batch.bin", "batches.meta.txt", "readme.html") + cifar.TRAIN_MEMBERS[::-1]]
    path = build_cifar(tmp_path / cifar.ARCHIVE, order=names)
    small_cifar(path)
    (x, _), _ = jn.datasets.load_cifar10(tmp_path, download=False)
    np.testing.assert_array_equal(x[:3].transpose(0, 3, 1, 2).reshape(3, -1), _records(3, 0)[2])


def test_cifar_wrong_checksum_is_an_error_and_the_file_stays(tmp_path, small_cifar):
    path = build_cifar(tmp_path / cifar.ARCHIVE)
    small_cifar(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(cifar.CIFAR10UnavailableError, match="is not the official cifar-10-binary.tar.gz .*MD5"):
        jn.datasets.load_cifar10(tmp_path, download=True)
    assert path.read_bytes() == bytes(data)


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_cifar_truncated_archive(tmp_path, small_cifar, cut):
    path = build_cifar(tmp_path / cifar.ARCHIVE)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * cut)])
    small_cifar(path)
    with pytest.raises(cifar.CIFAR10UnavailableError, match=f"{path}: truncated or damaged archive"):
        jn.datasets.load_cifar10(tmp_path, download=False)


def test_cifar_member_of_wrong_size_and_missing_member(tmp_path, small_cifar):
    path = build_cifar(tmp_path / cifar.ARCHIVE, resize=("data_batch_3.bin", 3073 * 2))
    small_cifar(path)
    with pytest.raises(cifar.CIFAR10UnavailableError,
                       match=r"data_batch_3.bin has 6146 bytes, expected 9219 \(3 records of 3073 bytes\)"):
        jn.datasets.load_cifar10(tmp_path, download=False)
    path = build_cifar(tmp_path / cifar.ARCHIVE, drop=("test_batch.bin",))
    small_cifar(path)
    with pytest.raises(cifar.CIFAR10UnavailableError, match="lacks cifar-10-batches-bin/test_batch.bin"):
        jn.datasets.load_cifar10(tmp_path, download=False)
    path = build_cifar(tmp_path / cifar.ARCHIVE, meta="airplane\nautomobile\n")
    small_cifar(path)
    with pytest.raises(cifar.CIFAR10UnavailableError, match="names 2 classes, expected 10"):
        jn.datasets.load_cifar10(tmp_path, download=False)


def test_cifar_missing_without_download_says_where_to_get_it(tmp_path):
    with pytest.raises(cifar.CIFAR10UnavailableError) as e:
        jn.datasets.load_cifar10(tmp_path, download=False)
    assert cifar.URL in str(e.value) and str(tmp_path) in str(e.value) and cifar.MD5 in str(e.value)


def test_cifar_download_is_checked_before_it_is_kept(tmp_path, small_cifar, monkeypatch, server):
    served, url = server
    good = build_cifar(served / cifar.ARCHIVE)
    small_cifar(good)
    monkeypatch.setattr(cifar, "URL", url + cifar.ARCHIVE)
    root = tmp_path / "cache"
    (x, _), _ = jn.datasets.load_cifar10(root, progress=False)
    assert x.shape == (15, 32, 32, 3)
    assert (root / cifar.ARCHIVE).read_bytes() == good.read_bytes()
    assert (root / download.FETCHED_LIST).read_text().split() == [cifar.ARCHIVE]
    monkeypatch.setattr(cifar, "MD5", "0" * 32)
    with pytest.raises(cifar.CIFAR10UnavailableError, match="Could not download CIFAR-10: .*MD5"):
        jn.datasets.load_cifar10(tmp_path / "other", progress=False)
    assert list((tmp_path / "other").iterdir()) == []  # nothing kept, no temporary file left


# -- jn.data.load -----------------------------------------------------------------------------------

def test_load_names_and_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="neither a data set jimunet knows .*mnist, fashion-mnist, cifar10"):
        jn.data.load(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="size apply to image folders, not to mnist"):
        jn.data.load("mnist", size=32)
    calls = []
    monkeypatch.setattr(loaders, "load_folder", lambda path, **kw: calls.append((path, kw)) or "splits")
    assert jn.data.load(tmp_path, size=32) == "splits" and calls == [(tmp_path, {"size": 32})]


def test_load_mnist_as_splits(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), np.array([3, 1, 4, 1])
    monkeypatch.setattr(loaders, "load_mnist",
                        lambda root, download, progress: ((x[..., None], y), (x[:2, ..., None], y[:2])))
    s = jn.data.load("MNIST", root=tmp_path)
    assert s.name == "mnist" and s.class_names == tuple("0123456789") and s.image_shape == (28, 28, 1)
    assert s.source == str(tmp_path) and len(s.train) == 4 and len(s.test) == 2
    assert isinstance(s.train, jn.data.Dataset)


def test_readme_data_set_example_runs(capsys):
    import re
    needs_debian()
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"### Data sets: `jn.data`.*?```python\n(.*?)```", text, re.S).group(1)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "('T-shirt/top', 'Trouser', 'Pullover') (28, 28, 1) 60000 images from" in out
    assert namespace["trainer"].epoch == 1 and float(out.split("accuracy")[1]) > 0.3
