"""``jimunet serve``: the JSON API against a real server on a free localhost port, its limits and
errors, concurrency, and the command (model choice, clean stop). No MNIST download needed."""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image
from serve_helpers import ROOT, ServeProcess, ThreadServer, digit, request

import jimunet as jn
from jimunet.app import serve, server
from jimunet.data.images import load_inputs, preprocess
from jimunet.app.explain import walk
from jimunet.functional.softmax import softmax

N_TEST = 40


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "random.npz"
    jn.models.mnist_cnn(rng=0).save(path, metadata={"epoch": 0})
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return jn.load(model_path)


@pytest.fixture(scope="module")
def test_set():
    x = np.stack([digit(s, kind=7 if s % 2 else 1) for s in range(N_TEST)])
    y = np.arange(N_TEST, dtype=np.int64) % 10
    return x, y


@pytest.fixture(scope="module")
def srv(model_path, test_set):
    s = ThreadServer(serve.DigitApp.from_file(model_path, test_set=test_set))
    yield s
    s.close()


def predict_like_cli(model, pixels):
    """What ``jimunet predict`` computes for MNIST pixels (N, 28, 28, 1)."""
    return np.asarray(softmax(model.predict(preprocess(pixels), batch_size=100).astype(np.float64)))


def png_bytes(a, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


# -- answers ---------------------------------------------------------------------------------

def test_model_info_is_the_summary_and_explains_blocks(srv, model):
    status, headers, info = request(srv.url, path="/api/model")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    summary = model.summary((28, 28, 1))
    assert info["summary"]["total_params"] == summary.total_params == 1_663_370
    assert info["summary"]["total_flops"] == summary.total_flops
    assert info["summary"]["text"] == str(summary)
    assert [r["flops"] for r in info["summary"]["layers"]] == [r["flops"] for r in summary.rows]
    recs = walk(model, np.zeros((28, 28, 1), np.uint8))
    assert [b["details"] for b in info["blocks"]] == [r["details"] for r in recs]
    assert info["blocks"][0]["details"]["im2col"] == [784, 25]
    assert info["blocks"][3]["details"]["gemm"] == [[196, 800], [800, 64]]
    assert [(c["conv"], c["shown"]) for c in info["conv_blocks"]] == [(0, 1), (3, 4)]
    w = model.layers[0].weight.data
    f = np.array(info["filters"]["data"])
    assert f.shape == (32, 5, 5)
    np.testing.assert_allclose(f, np.transpose(w[:, :, 0, :], (2, 0, 1)), atol=1e-5)
    assert info["metadata"] == {"epoch": 0}


def test_predict_pixels_equals_predict_and_explain(srv, model):
    x = digit(3)
    status, _, doc = request(srv.url, "POST", "/api/predict", {"pixels": x[..., 0].tolist(), "activations": True})
    assert status == 200, doc
    want = predict_like_cli(model, x[None].astype(np.float32))[0]
    np.testing.assert_allclose(doc["probabilities"], want, atol=2e-6)
    assert doc["top"] == int(np.argmax(want))
    assert np.array_equal(np.array(doc["input"]["pixels"]), x[..., 0])
    recs = walk(model, x)
    assert [b["output_shape"] for b in doc["blocks"]] == [r["output_shape"] for r in recs]
    maps = doc["feature_maps"]
    assert [m["shape"] for m in maps] == [[28, 28, 32], [14, 14, 64]]
    for m, layer in zip(maps, (1, 4)):  # the ReLU after each conv, channels first
        got = np.array(m["data"])
        np.testing.assert_allclose(got, np.transpose(recs.outputs[layer], (2, 0, 1)), atol=6e-5)
        assert m["min"] == pytest.approx(float(recs.outputs[layer].min()), abs=1e-6)
    # activations are optional; floats in [0, 1] are pixels too (as in a .npy given to predict)
    status, _, doc2 = request(srv.url, "POST", "/api/predict", {"pixels": (x[..., 0] / 255.0).tolist()})
    assert status == 200 and "feature_maps" not in doc2
    np.testing.assert_allclose(doc2["probabilities"], doc["probabilities"], atol=2e-6)


@pytest.mark.parametrize("how", ["png", "jpeg", "multipart", "octet"])
def test_picture_upload_uses_predicts_preprocessing(srv, model, tmp_path, how):
    big = np.array(Image.fromarray(255 - digit(5)[..., 0]).resize((140, 180), Image.Resampling.BILINEAR))
    fmt = "JPEG" if how == "jpeg" else "PNG"
    data = png_bytes(big, fmt)
    path = tmp_path / f"d.{fmt.lower()}"
    path.write_bytes(data)
    seen = load_inputs(path)  # what `jimunet predict FILE` feeds the model
    if how == "multipart":
        boundary = "xYzBoundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    else:
        body = data
        headers = {"Content-Type": {"png": "image/png", "jpeg": "image/jpeg", "octet": "application/octet-stream"}[how]}
    status, _, doc = request(srv.url, "POST", "/api/predict?activations=1", body, headers)
    assert status == 200, doc
    np.testing.assert_allclose(np.array(doc["input"]["pixels"]), seen[0, :, :, 0], atol=0.051)
    want = predict_like_cli(model, seen)[0]
    np.testing.assert_allclose(doc["probabilities"], want, atol=2e-6)
    assert len(doc["feature_maps"]) == 2


def test_in_memory_readers_are_predicts_file_readers(tmp_path):
    from jimunet.data.images import ImageTooLarge, as_pixels, digit_from_bytes, load_digit_image

    data = png_bytes(np.array(Image.fromarray(255 - digit(2)[..., 0]).resize((90, 120))))
    (tmp_path / "d.png").write_bytes(data)
    assert np.array_equal(digit_from_bytes(data), load_digit_image(tmp_path / "d.png"))
    for a in (digit(1), digit(1)[..., 0], digit(1)[None].astype(np.float32) / 255):
        np.save(tmp_path / "a.npy", a)
        assert np.array_equal(as_pixels(a), load_inputs(tmp_path / "a.npy"))
    with pytest.raises(ImageTooLarge, match=r"40x30 \(0\.0 megapixels\); at most 1,000 pixels"):
        digit_from_bytes(png_bytes(np.zeros((30, 40), np.uint8)), max_pixels=1000)
    with pytest.raises(ValueError, match="upload: not a readable image"):
        digit_from_bytes(b"GIF89a...", name="upload")


def test_mnist_test_images_and_mistakes(srv, model, test_set):
    x, y = test_set
    status, _, doc = request(srv.url, path="/api/mnist?index=5")
    assert status == 200 and doc["index"] == 5 and doc["label"] == int(y[5]) and doc["count"] == N_TEST
    assert np.array_equal(np.array(doc["pixels"], np.uint8), x[5, :, :, 0])
    pred = predict_like_cli(model, x).argmax(1)
    wrong = set(np.flatnonzero(pred != y).tolist())
    assert wrong, "the random model should get some of these wrong"
    for _ in range(5):
        status, _, doc = request(srv.url, path="/api/mnist?mistake=1")
        assert status == 200 and doc["index"] in wrong
        assert doc["predicted"] == pred[doc["index"]] != doc["label"] and doc["mistakes"] == len(wrong)


def test_no_mistake_and_no_data_are_clear_answers(model, test_set, tmp_path):
    x, _ = test_set
    perfect = ThreadServer(serve.DigitApp(model, test_set=(x, predict_like_cli(model, x).argmax(1))))
    nodata = ThreadServer(serve.DigitApp(model, data_dir=tmp_path / "empty", download=False))
    try:
        status, _, doc = request(perfect.url, path="/api/mnist?mistake=1")
        assert status == 404 and "no mistake" in doc["error"]
        for q in ("index=0", "mistake=1"):
            status, _, doc = request(nodata.url, path=f"/api/mnist?{q}")
            assert status == 503 and "MNIST test images are not available" in doc["error"]
            assert "jimunet train" in doc["error"]
        status, _, doc = request(nodata.url, "POST", "/api/predict", {"pixels": digit()[..., 0].tolist()})
        assert status == 200 and 0 <= doc["top"] <= 9  # drawing works without the data
    finally:
        perfect.close()
        nodata.close()


def test_page_and_assets_are_served_from_the_package(srv):
    status, headers, html = request(srv.url, path="/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/static/app.js"' in html and b'href="/static/style.css"' in html
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, body = request(srv.url, path=f"/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(ctype) and len(body) > 500
    status, _, doc = request(srv.url, "HEAD", "/api/model")
    assert status == 200
    for path in ("/static/../serve.py", "/static/%2e%2e/serve.py", "/nope", "/static/"):
        status, _, doc = request(srv.url, path=path)
        assert status == 404 and "error" in doc


def test_assets_need_no_network_and_ship_as_package_data():
    static = os.path.join(ROOT, "src", "jimunet", "app", "static")
    names = sorted(os.listdir(static))
    assert {"index.html", "app.js", "style.css"} <= set(names)
    for name in names:
        text = open(os.path.join(static, name), encoding="utf-8").read()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
    import fnmatch
    import re

    text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    line = re.search(r'^"jimunet\.app" = \[(.*)\]$', text, re.M).group(1)
    globs = re.findall(r'"([^"]+)"', line)
    for name in names:
        assert any(fnmatch.fnmatch(f"static/{name}", g) for g in globs), f"{name} is not package data"


# -- bad input -------------------------------------------------------------------------------

BAD = [
    ({"Content-Type": "application/json"}, b"{not json", 400, "not valid JSON"),
    ({"Content-Type": "application/json"}, b"\xff\xfe", 400, "not valid JSON"),
    ({"Content-Type": "application/json"}, b"[1, 2]", 400, '"pixels"'),
    ({"Content-Type": "application/json"}, b'{"pixels": [1, 2]}', 400, "(28, 28)"),
    ({"Content-Type": "application/json"}, json.dumps({"pixels": [["a"] * 28] * 28}).encode(), 400, "numeric"),
    ({"Content-Type": "application/json"}, json.dumps({"pixels": [[0] * 28] * 27 + [[0] * 5]}).encode(), 400,
     "rectangular"),
    ({"Content-Type": "application/json"}, json.dumps({"pixels": [[300] * 28] * 28}).encode(), 400, "0..255"),
    ({"Content-Type": "application/json"}, json.dumps({"pixels": [[-1.5] * 28] * 28}).encode(), 400, "[0, 1]"),
    ({"Content-Type": "application/json"}, b'{"pixels": [' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28)
     + b"]}", 400, "NaN"),
    ({"Content-Type": "application/json"}, json.dumps({"pixels": [[[0] * 28] * 28] * 2}).encode(), 400, "one 28x28"),
    ({"Content-Type": "application/json"}, json.dumps({"pixels": [[0] * 28] * 28, "activations": "yes"}).encode(),
     400, "true or false"),
    ({"Content-Type": "application/json"}, b'{"pixels":' + b"[" * 100000 + b"]" * 100000 + b"}", 400, ""),
    ({"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n not really", 400, "not a readable image"),
    ({"Content-Type": "image/png"}, b"", 400, "empty"),
    ({"Content-Type": "image/png"}, png_bytes(np.full((50, 50), 255, np.uint8)), 400, "blank"),
    ({"Content-Type": "image/png"}, png_bytes(np.zeros((5000, 4000), np.uint8)), 413, "at most"),
    ({"Content-Type": "multipart/form-data; boundary=zz"}, b"--zz\r\n\r\n--zz--", 400, "no file"),
    ({"Content-Type": "multipart/form-data"}, b"garbage", 400, "multipart"),
    ({"Content-Type": "text/plain"}, b"7", 415, "image/png"),
    ({}, b"7", 415, "Content-Type"),
]


@pytest.mark.parametrize("headers,body,status,message", BAD, ids=[f"{i}-{b[3] or 'deep'}" for i, b in enumerate(BAD)])
def test_bad_bodies_get_a_json_4xx(srv, headers, body, status, message):
    got, _, doc = request(srv.url, "POST", "/api/predict", body, headers)
    assert got == status, doc
    assert isinstance(doc, dict) and message in doc["error"]


@pytest.mark.parametrize("method,path,status,message", [
    ("GET", "/api/predict", 405, "answers POST"),
    ("POST", "/api/model", 405, "answers GET"),
    ("DELETE", "/", 405, "answers GET"),
    ("GET", "/api/mnist", 400, "index="),
    ("GET", "/api/mnist?index=abc", 400, "integer"),
    ("GET", "/api/mnist?index=99999", 400, "0..39"),
    ("GET", "/api/mnist?mistake=maybe", 400, "mistake must be"),
    ("POST", "/api/predict?activations=2", 400, "activations must be"),
])
def test_bad_requests_get_a_json_4xx(srv, method, path, status, message):
    body = json.dumps({"pixels": digit()[..., 0].tolist()}).encode() if method == "POST" else None
    got, headers, doc = request(srv.url, method, path, body, {"Content-Type": "application/json"})
    assert got == status and message in doc["error"], doc
    if status == 405:
        assert headers["Allow"] in ("POST", "GET, HEAD")


def raw(url, data: bytes, read_timeout=30) -> bytes:
    """Send ``data`` over a plain socket and return everything the server answers."""
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            c = s.recv(65536)
            if not c:
                return b"".join(chunks)
            chunks.append(c)


def status_and_json(answer: bytes):
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("data,status,message", [
    (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n\r\n", 411, "Content-Length"),
    (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: image/png\r\n\r\n0\r\n\r\n",
     411, "chunked"),
    (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: -4\r\n\r\n", 400, "Content-Length"),
    (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999\r\n\r\nabc", 413, "at most"),
    (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\nabc", 400,
     "ended after 3 of the 100"),
    (b"BLAH\r\n\r\n", 400, "Bad request"),
    (b"BREW /pot HTTP/1.1\r\n\r\n", 501, "Unsupported method"),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431, "Too many headers"),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, ""),
], ids=["no-length", "chunked", "negative-length", "huge-length", "short-body", "garbage-line", "unknown-method",
        "too-many-headers", "long-url"])
def test_malformed_http_gets_a_json_4xx(srv, data, status, message):
    got, doc = status_and_json(raw(srv.url, data))
    assert got == status and message.lower() in doc["error"].lower(), doc


def test_oversized_upload_is_refused_and_the_client_reads_why(srv):
    body = b"\0" * (server.MAX_BODY + 1)
    status, _, doc = request(srv.url, "POST", "/api/predict", body, {"Content-Type": "image/png"})
    assert status == 413 and f"{server.MAX_BODY:,}" in doc["error"]


# -- concurrency and robustness --------------------------------------------------------------

def test_concurrent_requests_get_their_own_answers(srv, model):
    images = [digit(s, kind=7 if s % 3 else 1) for s in range(12)]
    want = predict_like_cli(model, np.stack(images).astype(np.float32))
    bodies = [(png_bytes(x[..., 0]), {"Content-Type": "image/png"}) if i % 2 else
              (json.dumps({"pixels": x[..., 0].tolist()}).encode(), {"Content-Type": "application/json"})
              for i, x in enumerate(images)]
    alone = [request(srv.url, "POST", "/api/predict?activations=1", *b)[2] for b in bodies]  # one at a time
    results = [[] for _ in images]
    errors = []

    def worker(i):
        try:
            for _ in range(3):
                status, _, doc = request(srv.url, "POST", "/api/predict?activations=1", *bodies[i])
                assert status == 200, doc
                results[i].append(doc)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i, docs in enumerate(results):
        assert len(docs) == 3 and all(doc == alone[i] for doc in docs)  # the same answer as alone
        if i % 2 == 0:  # JSON pixels: exactly the image given
            np.testing.assert_allclose(docs[0]["probabilities"], want[i], atol=2e-6)
    assert len({json.dumps(a["probabilities"]) for a in alone}) > 1  # the images differ, so do answers


def test_a_stalled_or_broken_client_does_not_block_others(srv):
    host, port = srv.url.split("//")[1].rstrip("/").rsplit(":", 1)
    stalled = socket.create_connection((host, int(port)), timeout=30)
    try:
        stalled.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                        b"Content-Length: 5000\r\n\r\n\x89PNG")  # and then nothing
        half = socket.create_connection((host, int(port)), timeout=30)
        half.sendall(b"GET /api/mod")  # an unfinished request line
        status, _, doc = request(srv.url, "POST", "/api/predict", {"pixels": digit()[..., 0].tolist()}, timeout=30)
        assert status == 200 and 0 <= doc["top"] <= 9
        half.close()
    finally:
        stalled.close()
    status, _, _ = request(srv.url, path="/api/model")
    assert status == 200


def test_model_use_is_serialized(model, monkeypatch):
    """Two forwards never overlap: layers keep caches and buffers, the worker pool one queue."""
    app = serve.DigitApp(model)
    active, overlap = [0], []
    lock = threading.Lock()
    real_walk = serve.walk

    def watched(m, x):
        with lock:
            active[0] += 1
            overlap.append(active[0])
        time.sleep(0.02)
        try:
            return real_walk(m, x)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(serve, "walk", watched)
    threads = [threading.Thread(target=app.predict, args=(digit(i).astype(np.float32),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(overlap) == 8 and max(overlap) == 1


# -- choosing the model, the command ---------------------------------------------------------

def test_models_that_do_not_fit_are_refused(tmp_path):
    m = jn.Sequential([jn.layers.Flatten(), jn.layers.Dense(28 * 28, 3)])
    m.metadata = {"class_names": [str(k) for k in range(10)]}  # 10 names, 3 scores
    with pytest.raises(serve.ServeError, match="10 class scores"):
        serve.DigitApp(m)
    with pytest.raises(serve.ServeError, match="cannot take 28x28x1"):
        serve.DigitApp(jn.Sequential([jn.layers.Dense(5, 10)]))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(serve.ServeError, match="cannot load"):
        serve.DigitApp.from_file(tmp_path / "bad.npz")


def test_newest_run_is_chosen_and_a_missing_one_says_how_to_get_one(tmp_path, model_path, monkeypatch):
    runs = tmp_path / "runs"
    with pytest.raises(serve.ServeError, match=r"python -m jimunet train.*--quick"):
        serve.choose_model(runs_dir=runs)
    for name, age in (("old", 100), ("new", 10), ("newest-no-best", 0)):
        (runs / name).mkdir(parents=True)
        if name != "newest-no-best":
            (runs / name / "best.npz").write_bytes(model_path.read_bytes())
            t = time.time() - age
            os.utime(runs / name / "best.npz", (t, t))
    assert serve.choose_model(runs_dir=runs) == str(runs / "new" / "best.npz")
    assert serve.choose_model("given.npz", runs_dir=runs) == "given.npz"
    with pytest.raises(serve.ServeError, match="not both"):
        serve.choose_model("given.npz", quick=True)
    # --quick: one epoch of the recipe through the usual trainer, then its best.npz
    seen = {}

    class Result:
        run_dir = str(tmp_path / "quick")

    def fake_train(config, **kw):
        seen["config"] = config
        return Result()
    monkeypatch.setattr(serve, "train_mnist", fake_train)
    assert serve.choose_model(quick=True, data_dir="D") == os.path.join(Result.run_dir, "best.npz")
    assert seen["config"].epochs == 1 and seen["config"].data_dir == "D"


def cli(*args, cwd=None, timeout=60):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    return subprocess.run([sys.executable, "-m", "jimunet", "serve", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.mark.parametrize("args,message", [
    ([], "none found in runs"),
    (["missing.npz"], "missing.npz: no such model file"),
    (["m.npz", "--quick"], "not both"),
    (["--port", "70000"], "0..65535"),
])
def test_command_errors_are_one_line(tmp_path, args, message):
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("jimunet serve: error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_command_serves_the_newest_run_and_stops_cleanly_on_sigterm_and_ctrl_c(tmp_path, model_path):
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "best.npz").write_bytes(model_path.read_bytes())
    for sig in (signal.SIGTERM, signal.SIGINT):
        p = ServeProcess("--port", "0", cwd=tmp_path)
        try:
            assert p.url.startswith("http://127.0.0.1:")
            status, _, info = request(p.url, path="/api/model")
            assert status == 200 and info["path"] == os.path.join("runs", "r1", "best.npz")
            status, _, page = request(p.url, path="/")
            assert status == 200 and b"Draw a digit" in page
            rc, out, err = p.stop(sig)
            assert rc == 0 and "jimunet serve: stopped" in out, (rc, out, err)
            assert "Traceback" not in err
        finally:
            p.close()


def test_port_in_use_and_all_interfaces_warning(tmp_path, model_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        r = cli(model_path, "--port", busy.getsockname()[1])
        assert r.returncode == 2 and "pick another with --port" in r.stderr, r.stderr
    finally:
        busy.close()
    p = ServeProcess(model_path, "--host", "0.0.0.0", "--port", "0")
    try:
        status, _, _ = request(p.url, path="/api/model")
        assert status == 200
        rc, _, err = p.stop()
        assert rc == 0 and "warning: listening on all interfaces" in err
    finally:
        p.close()
