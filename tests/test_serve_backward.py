"""``jimunet serve``'s backward view through its JSON API: /api/backward, /api/gradcheck, /api/step,
the "predicted" field of /api/predict, the page's two dictionaries, and a model that is not a
digit model (pictures resized to its input)."""
import io
import json
import os
import re

import numpy as np
import pytest
from serve_helpers import ROOT, ThreadServer, digit, request

import jimunet as jn
import jimunet.app.serve_grads as sg
from jimunet.app.backward import FORMULAS, backward_view, gradcheck_cell
from jimunet.app.serve import DigitApp
from jimunet.app.server import MAX_BODY

STATIC = os.path.join(ROOT, "src", "jimunet", "app", "static")


@pytest.fixture(scope="module")
def server(random_cnn_file):
    s = ThreadServer(DigitApp.from_file(str(random_cnn_file)))
    yield s
    s.close()


def _post(server, path, doc):
    return request(server.url, "POST", path, body=doc)


def test_backward_loss_and_gradients_equal_the_loaded_models(server, random_cnn_file):
    status, _, doc = _post(server, "/api/backward", {"pixels": digit()[..., 0].tolist(), "target": 3})
    assert status == 200, doc
    model = jn.load(random_cnn_file)
    x = np.asarray(doc["input"], np.float32)[None, :, :, None]
    assert x.shape == (1, 28, 28, 1)
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    loss = float(loss_fn.forward(model.forward(x), np.array([3])))
    assert doc["loss"] == loss and doc["target"] == 3
    dx = model.backward(loss_fn.backward())
    g = doc["grads"][0]
    np.testing.assert_allclose(np.asarray(g["data"])[0] * g["scale"], dx[0, :, :, 0], atol=1e-3 * g["scale"])
    assert g["scale"] == pytest.approx(float(np.abs(dx).max()), rel=1e-6)
    for i, layer in enumerate(model.layers):
        rec = doc["blocks"][i]
        if rec["weight_grad"] is not None:
            assert rec["weight_grad"]["norm"] == pytest.approx(float(np.linalg.norm(layer.weight.grad)), rel=1e-5)
    # conv2 runs Winograd F(4x4, 5x5), and the block says so
    assert doc["blocks"][3]["algorithm"] == {"name": "winograd", "tile": [4, 4]}
    assert "F(4×4, 5×5)" in doc["blocks"][3]["forward"]
    assert doc["blocks"][0]["algorithm"] == {"name": "im2col", "tile": None}


def test_gradcheck_cells_agree_in_float64(server):
    px = digit()[..., 0].tolist()
    for block, tensor, index in [(0, "weight", [2, 2, 0, 4]), (0, "input", [14, 14, 0]), (3, "weight", [2, 2, 1, 0]),
                                 (7, "weight", [100, 3]), (9, "output", [5])]:
        status, _, doc = _post(server, "/api/gradcheck", {"pixels": px, "target": 3, "block": block,
                                                          "tensor": tensor, "index": index})
        assert status == 200, doc
        assert doc["dtype"] == "float64" and doc["relative_error"] <= 1e-6, doc


def test_steps_raise_the_target_probability_and_leave_the_file_alone(server, random_cnn_file):
    before = random_cnn_file.read_bytes()
    px = digit()[..., 0].tolist()
    status, _, doc = _post(server, "/api/step", {"pixels": px, "target": 3, "steps": 3, "lr": 0.001})
    assert status == 200, doc
    assert doc["probabilities"][3] > doc["probabilities_before"][3]
    assert doc["losses"][0] > doc["losses"][-1] > doc["loss"]
    assert len(doc["weights_moved"]) == 4 and all(m["relative_change"] > 0 for m in doc["weights_moved"])
    # stateless: the same request gives the same answer, and a request without steps the trained weights
    again = _post(server, "/api/step", {"pixels": px, "target": 3, "steps": 3, "lr": [0.001] * 3})[2]
    assert again["loss"] == doc["loss"]
    plain = _post(server, "/api/backward", {"pixels": px, "target": 3})[2]
    assert plain["loss"] == doc["losses"][0]
    assert random_cnn_file.read_bytes() == before


@pytest.mark.parametrize("path, doc, fragment", [
    ("/api/backward", {"pixels": [[0]]}, "28"),
    ("/api/backward", {"target": 3}, "pixels"),
    ("/api/backward", {"pixels": "PX", "target": 10}, "0..9"),
    ("/api/backward", {"pixels": "PX", "target": "3"}, "target"),
    ("/api/gradcheck", {"pixels": "PX", "block": 0, "tensor": "weight"}, "index"),
    ("/api/gradcheck", {"pixels": "PX", "block": 11, "tensor": "weight", "index": [0]}, "0..10"),
    ("/api/gradcheck", {"pixels": "PX", "block": 1, "tensor": "weight", "index": [0]}, "no weight"),
    ("/api/gradcheck", {"pixels": "PX", "block": 0, "tensor": "bias", "index": [0]}, "tensor"),
    ("/api/gradcheck", {"pixels": "PX", "block": 0, "tensor": "input", "index": [28, 0, 0]}, "shape"),
    ("/api/step", {"pixels": "PX"}, "steps"),
    ("/api/step", {"pixels": "PX", "steps": 1000}, "0..100"),
    ("/api/step", {"pixels": "PX", "steps": 2, "lr": [0.1]}, "one per step"),
    ("/api/step", {"pixels": "PX", "steps": 1, "lr": -1}, "(0, 10]"),
])
def test_bad_requests_get_400_with_a_message(server, path, doc, fragment):
    doc = {k: (digit()[..., 0].tolist() if v == "PX" else v) for k, v in doc.items()}
    status, _, answer = _post(server, path, doc)
    assert status == 400 and fragment in answer["error"], answer
    assert "Error" not in answer["error"] and "Traceback" not in answer["error"]


def test_backward_takes_a_png_with_fields_in_the_query_and_rejects_get(server):
    pil = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    pil.fromarray(digit()[..., 0]).save(buf, "PNG")
    status, _, doc = request(server.url, "POST", "/api/backward?target=2", body=buf.getvalue(),
                             headers={"Content-Type": "image/png"})
    assert status == 200 and doc["target"] == 2
    status, headers, _ = request(server.url, "GET", "/api/backward")
    assert status == 405 and headers["Allow"] == "POST"


def test_predict_answers_predicted_and_keeps_top_for_old_clients(server):
    status, _, doc = _post(server, "/api/predict", {"pixels": digit()[..., 0].tolist()})
    assert status == 200
    assert doc["predicted"] == doc["top"] == int(np.argmax(doc["probabilities"]))
    assert doc["class_names"] == [str(k) for k in range(10)]


def _dictionaries():
    src = open(os.path.join(STATIC, "i18n.js"), encoding="utf-8").read()
    start = src.index("const I18N = ") + len("const I18N = ")
    return json.loads(src[start:src.index("\n};\n", start) + 2])


def test_the_two_dictionaries_have_the_same_keys_and_every_key_the_page_uses():
    d = _dictionaries()
    assert set(d) == {"en", "zh"} and set(d["en"]) == set(d["zh"])
    for key in d["en"]:
        assert set(re.findall(r"\{(\w+)\}", d["en"][key])) == set(re.findall(r"\{(\w+)\}", d["zh"][key])), key
    used = set()
    for name in ("index.html", "app.js", "backward.js"):
        text = open(os.path.join(STATIC, name), encoding="utf-8").read()
        used |= set(re.findall(r'data-i18n(?:-aria)?="([\w.]+)"', text))
        used |= set(re.findall(r'\bt\("([\w./]+)"(?! \+)', text))
    assert used and used <= set(d["en"]), used - set(d["en"])
    for key, (fw, bw) in FORMULAS.items():  # the page's formulas are the API's (the README's table)
        assert d["en"][f"f.{key}.fw"] == fw and d["en"][f"f.{key}.bw"] == bw


def test_a_colour_model_serves_pictures_resized_to_its_input(tmp_path):
    """An untrained colour model (32x32x3, 4 named classes): pictures are resized to its input
    and the backward view works on it; the answers are those of the model on that input."""
    pil = pytest.importorskip("PIL.Image")
    from PIL import ImageOps
    model = jn.Sequential([jn.layers.Conv2D(3, 4, 3, rng=0), jn.layers.ReLU(), jn.layers.MaxPool2D(2),
                           jn.layers.Flatten(), jn.layers.Dense(16 * 16 * 4, 4, rng=1)])
    path = tmp_path / "colour.npz"
    model.save(path, metadata={"input_shape": [32, 32, 3], "class_names": ["cat", "dog", "ship", "frog"],
                               "normalize": {"mean": [120.0, 110.0, 100.0], "std": [60.0, 60.0, 60.0]},
                               "dataset": {"name": "folder", "path": str(tmp_path / "missing")}})
    s = ThreadServer(DigitApp.from_file(str(path)))
    try:
        info = request(s.url, path="/api/model")[2]
        assert info["digit_model"] is False and info["input_shape"] == [32, 32, 3]
        rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        buf = io.BytesIO()
        pil.fromarray(rgb).save(buf, "PNG")
        status, _, doc = request(s.url, "POST", "/api/predict", body=buf.getvalue(), headers={"Content-Type": "image/png"})
        assert status == 200, doc
        seen = np.asarray(doc["input"]["pixels"], np.float32)
        expect = np.asarray(ImageOps.fit(pil.fromarray(rgb), (32, 32), method=pil.Resampling.BICUBIC), np.float32)
        np.testing.assert_array_equal(seen, expect)
        x = (expect - np.float32([120, 110, 100])) / np.float32(60)
        logits = jn.load(path).forward(x[None].astype(np.float32))[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        assert doc["predicted_name"] == ["cat", "dog", "ship", "frog"][int(np.argmax(p))]
        np.testing.assert_allclose(doc["probabilities"], p / p.sum(), atol=2e-6)
        status, _, bw = _post(s, "/api/backward", {"pixels": seen.tolist(), "target": 1})
        assert status == 200 and bw["grads"][0]["shape"] == [32, 32, 3]
        status, _, chk = _post(s, "/api/gradcheck", {"pixels": seen.tolist(), "target": 1, "block": 0,
                                                     "tensor": "input", "index": [5, 6, 2]})
        assert status == 200 and chk["relative_error"] <= 1e-6
        status, _, err = request(s.url, path="/api/testimage?index=0")
        assert status == 503 and "Upload or drop a picture" in err["error"]
        # transparency is white (the folder policy), a huge picture 413, anything else 400
        buf = io.BytesIO()
        pil.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buf, "PNG")
        doc = request(s.url, "POST", "/api/predict", body=buf.getvalue(), headers={"Content-Type": "image/png"})[2]
        assert np.all(np.asarray(doc["input"]["pixels"]) == 255)
        buf = io.BytesIO()
        pil.new("L", (5000, 4000)).save(buf, "PNG")
        status, _, err = request(s.url, "POST", "/api/backward", body=buf.getvalue(), headers={"Content-Type": "image/png"})
        assert status == 413 and "5000x4000" in err["error"]
        status, _, err = request(s.url, "POST", "/api/predict", body=b"GIF89a no", headers={"Content-Type": "image/gif"})
        assert status == 400 and "not a readable image" in err["error"]
        status, _, err = _post(s, "/api/backward", {"pixels": np.zeros((28, 28)).tolist()})
        assert status == 400 and "(32, 32, 3)" in err["error"]
    finally:
        s.close()


def test_gradcheck_names_a_kink_where_the_loss_has_no_derivative(server):
    """A flat black background makes every 2x2 max-pool window of conv1's output a tie: moving
    one input pixel there bends the loss, and the answer says so (one-sided slopes differ)."""
    px = np.zeros((28, 28), np.uint8)
    px[10:18, 12:15] = 255
    status, _, doc = _post(server, "/api/gradcheck", {"pixels": px.tolist(), "target": 3, "block": 0,
                                                      "tensor": "input", "index": [2, 2, 0]})
    assert status == 200 and doc["kink"] is True
    left, right = doc["one_sided"]
    assert abs(left - right) > 1e-3 and doc["numeric"] == pytest.approx((left + right) / 2, rel=1e-4)
    status, _, smooth = _post(server, "/api/gradcheck", {"pixels": digit()[..., 0].tolist(), "target": 3,
                                                         "block": 0, "tensor": "input", "index": [2, 2, 0]})
    assert smooth["kink"] is False and smooth["relative_error"] <= 1e-6


def test_a_graph_model_predicts_and_the_backward_view_says_it_needs_a_sequential():
    app = DigitApp(jn.models.mnist_resnet(rng=0, stem=4, blocks=((4, 1),)))
    assert app.info()["backward"] is False  # the page hides the backward panel
    s = ThreadServer(app)
    try:
        px = digit()[..., 0].tolist()
        assert _post(s, "/api/predict", {"pixels": px})[0] == 200
        status, _, err = _post(s, "/api/backward", {"pixels": px})
        assert status == 422 and "Sequential" in err["error"]
    finally:
        s.close()


def test_the_backward_endpoints_keep_the_body_limit(server):
    status, _, err = request(server.url, "POST", "/api/step", body=b"x" * (MAX_BODY + 1),
                             headers={"Content-Type": "application/json"})
    assert status == 413 and f"{MAX_BODY:,}" in err["error"]


def test_backward_view_equals_model_backward_for_every_kind_of_block():
    """Block by block in list order (ReLU before MaxPool) gives what ``model.backward`` gives (in
    its fused order), for BatchNorm, AvgPool2D, GlobalAvgPool2D, LeakyReLU too; every weight
    passes the float64 check."""
    L = jn.layers
    bn = L.BatchNorm(4)
    bn.running_mean.data[...] = np.float32([0.1, -0.2, 0.3, 0.0])  # evaluation statistics that are not trivial
    model = jn.Sequential([L.Conv2D(3, 4, 3, rng=0), bn, L.ReLU(), L.MaxPool2D(2), L.Conv2D(4, 6, 3, rng=1),
                           L.LeakyReLU(), L.AvgPool2D(2), L.GlobalAvgPool2D(), L.Dense(6, 5, rng=2)])
    x = np.random.default_rng(0).standard_normal((12, 12, 3)).astype(np.float32)
    view = backward_view(model, x, 2)
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    loss = float(loss_fn.forward(model.forward(x[None]), np.array([2])))
    for layer in model.layers:
        layer.zero_grad()
    dx = model.backward(loss_fn.backward())
    assert view.loss == loss
    np.testing.assert_array_equal(view.grads[0], dx[0])
    for i in (0, 4, 8):
        np.testing.assert_array_equal(view.weight_grads[i], model.layers[i].weight.grad)
    for i, index in ((0, [1, 2, 0, 3]), (4, [0, 1, 2, 5]), (8, [3, 4])):
        assert gradcheck_cell(model, x, 2, i, "weight", index)["relative_error"] <= 1e-6
    assert gradcheck_cell(model, x, 2, 1, "input", [5, 6, 2])["relative_error"] <= 1e-6


def test_a_non_digit_model_serves_its_own_test_images():
    model = jn.Sequential([jn.layers.Flatten(), jn.layers.Dense(8 * 8 * 3, 2, rng=0)])
    model.metadata = {"input_shape": [8, 8, 3], "class_names": ["sky", "sea"], "dataset": {"name": "cifar10"}}
    x = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    app = DigitApp(model, test_set=(x, np.array([0, 1, 1, 0, 1])))
    doc = app.dataset_image(2)
    assert doc["label"] == 1 and doc["class_name"] == "sea" and doc["count"] == 5
    assert np.array_equal(np.asarray(doc["pixels"]), x[2])
    answer = app.predict(np.asarray(doc["pixels"], np.float32))
    assert answer["class_names"] == ["sky", "sea"] and answer["predicted_name"] in ("sky", "sea")


def test_the_formulas_are_the_readme_block_tables():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    rows = {line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| ")}
    for key, row in (("Conv2D/im2col", 'Conv2D, `algorithm="im2col"`'), ("Dense", "Dense"), ("ReLU", "ReLU")):
        spans = re.findall(r"`([^`]+)`", rows[row].split("](")[0])
        spans = [s for s in spans if ("=" in s or "·" in s) and "algorithm" not in s]  # formulas, not names
        assert spans and all(s in " ".join(FORMULAS[key]) for s in spans), (key, spans)
    assert "Aᵀ[(G W Gᵀ) ⊙ (Bᵀ d B)]A" in rows['Conv2D, `algorithm="winograd"` (stride 1)']
    assert "Aᵀ[(G W Gᵀ) ⊙ (Bᵀ d B)]A" in FORMULAS["Conv2D/winograd"][0]


def test_steps_that_overflow_get_a_400_not_a_500(monkeypatch, server):
    real = sg.backward_view

    def overflowing(model, x, target):
        view = real(model, x, target)
        view.loss = float("inf")
        return view

    monkeypatch.setattr(sg, "backward_view", overflowing)
    status, _, err = _post(server, "/api/step", {"pixels": digit()[..., 0].tolist(), "steps": 2, "lr": 5})
    assert status == 400 and "not finite after 2 SGD steps" in err["error"]


def test_a_fashion_mnist_model_offers_its_test_images_through_jn_data_load():
    """Debian's dataset-fashion-mnist files (.ci/run installs them); the page's /api/testimage."""
    if not os.path.exists("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Debian's dataset-fashion-mnist must be installed in CI")
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    model = jn.models.mnist_cnn(rng=0)
    model.metadata = {"input_shape": [28, 28, 1], "class_names": names, "dataset": {"name": "fashion-mnist"},
                      "normalize": {"mean": [72.9], "std": [90.0]}}
    s = ThreadServer(DigitApp(model, download=False))
    try:
        status, _, doc = request(s.url, path="/api/testimage?index=0")
        assert status == 200 and doc["count"] == 10000 and doc["class_name"] == "Ankle boot"  # its first test image
        assert np.asarray(doc["pixels"]).shape == (28, 28)
        status, _, answer = _post(s, "/api/predict", {"pixels": doc["pixels"]})
        assert status == 200 and answer["input"]["scaling"] == "(pixels - mean) / std per channel"
    finally:
        s.close()


def test_a_folder_model_offers_the_test_images_of_its_folder(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("ant", "bee"):
            (tmp_path / "pics" / split / name).mkdir(parents=True)
            for k in range(2):
                pil.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                    tmp_path / "pics" / split / name / f"{k}.png")
    model = jn.Sequential([jn.layers.Flatten(), jn.layers.Dense(16 * 16 * 3, 2, rng=0)])
    model.metadata = {"input_shape": [16, 16, 3], "class_names": ["ant", "bee"],
                      "dataset": {"name": "folder", "path": str(tmp_path / "pics")}}
    app = DigitApp(model)
    doc = app.dataset_image(3)
    assert doc["count"] == 4 and doc["class_name"] == "bee" and np.asarray(doc["pixels"]).shape == (16, 16, 3)
    expect = np.asarray(pil.open(tmp_path / "pics" / "test" / "bee" / "1.png"))
    assert np.array_equal(np.asarray(doc["pixels"]), expect)
