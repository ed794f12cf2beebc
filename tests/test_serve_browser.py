"""The page of ``jimunet serve`` in a real browser: Debian's ``chromium`` driven by Playwright.

Playwright's own browser download is not used (not reachable here): the tests launch the
system chromium (``apt-get install chromium``; ``.ci/run`` installs it). Without it or
without playwright they skip with the reason, except under ``CI=true``, where they fail.
"""
import base64
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from serve_helpers import ROOT, ServeProcess

import jimunet as jn
from jimunet.app.recipes import MNISTConfig
from jimunet.app.training import train_mnist

CHROMIUM = os.environ.get("JIMUNET_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--headless", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
TIMEOUT_MS = 120_000  # generous: finding the mistakes loads MNIST and runs 10,000 images on a shared CI machine

# Wait until nothing is pending on the page and the newest request's answer is on screen.
SETTLED = ("() => document.body.dataset.model === 'ready' && !drawing && timer === null && !inFlight && "
           "pending === null && document.body.dataset.shown === String(wanted)")


def _browser_or_skip():
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "playwright is not installed (pip install -e '.[test]')"
    if problem is None and not os.path.exists(CHROMIUM):
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the browser tests must run in CI: {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="module")
def browser():
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=TIMEOUT_MS)
    except BaseException:
        pw.stop()
        raise
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    yield page
    context.close()


def serving(request, *args):
    """``jimunet serve ARGS --port 0``, stopped when the test (or module) ends, pass or fail."""
    proc = ServeProcess(*args, "--port", "0")
    request.addfinalizer(proc.close)
    return proc


def predict_cli(model, *files):
    """The top class ``jimunet predict MODEL FILES --top 1`` prints for each image."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    r = subprocess.run([sys.executable, "-m", "jimunet", "predict", str(model), *map(str, files), "--top", "1"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    return [int(m) for m in re.findall(r": (\d) \(", r.stdout)]


def draw(page, points, steps=5):
    box = page.locator("#pad").bounding_box()
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + points[0][0], y0 + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x0 + x, y0 + y, steps=steps)
    page.mouse.up()


def lit_pixels(page, selector):
    """For each canvas matching ``selector``: (width, height, number of pixels that are not black)."""
    return page.eval_on_selector_all(selector, """els => els.map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lit = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 30) lit++;
        return [c.width, c.height, lit];
    })""")


def test_draw_a_digit_and_see_prediction_and_feature_maps(request, page, random_cnn_file, tmp_path):
    server = serving(request, random_cnn_file)
    page.goto(server.url)
    page.wait_for_function("() => document.body.dataset.model === 'ready'")
    assert "1,663,370 parameters" in page.inner_text("#model-line")
    assert page.inner_text("#prediction") == "–"

    draw(page, [(80, 60), (200, 60), (190, 90), (160, 150), (135, 235)])  # a 7
    page.wait_for_function(SETTLED)
    top = page.inner_text("#prediction")
    assert re.fullmatch(r"\d", top) and page.get_attribute("body", "data-top") == top
    assert int(page.get_attribute("body", "data-predictions")) >= 1
    bars = page.locator("#probs .bar")
    assert bars.count() == 10
    assert page.locator("#probs .bar.top").get_attribute("data-class") == top
    widths = [float(w.rstrip("%")) for w in page.eval_on_selector_all("#probs .fill", "els => els.map(e => e.style.width)")]
    assert abs(sum(widths) - 100) < 1.5 and widths[int(top)] == max(widths)
    assert "your drawing" in page.inner_text("#status")

    # the 28x28 input, both conv blocks' feature maps and the filters are drawn
    (seen,) = lit_pixels(page, "#seen")
    assert seen[:2] == [28, 28] and 20 < seen[2] < 400
    block1, block2 = lit_pixels(page, "#maps canvas[data-block='0']"), lit_pixels(page, "#maps canvas[data-block='1']")
    assert len(block1) == 32 and all(c[:2] == [28, 28] for c in block1)
    assert len(block2) == 64 and all(c[:2] == [14, 14] for c in block2)
    assert sum(c[2] > 0 for c in block1) >= 8 and sum(c[2] > 0 for c in block2) >= 8
    filters = lit_pixels(page, "#filters canvas")
    assert len(filters) == 32 and all(c[:2] == [5, 5] for c in filters)
    facts = page.inner_text("#maps")
    assert "im2col   784 × 25" in facts and "(196 × 800) · (800 × 64)" in facts and "FLOPs    20,082,944" in facts
    assert page.locator("#blocks tbody tr").count() == 11
    assert page.inner_text("#blocks td.range[data-layer='1']").endswith("zero)")

    # the page's answer is what `jimunet predict` says about the same picture
    data_url = page.evaluate("pad.toDataURL('image/png')")
    png = tmp_path / "drawn.png"
    png.write_bytes(base64.b64decode(data_url.split(",", 1)[1]))
    assert predict_cli(random_cnn_file, png) == [int(top)]

    page.click("#clear")
    assert page.inner_text("#prediction") == "–"
    assert not page.errors, page.errors


@pytest.fixture(scope="module")
def mnist_test():
    """MNIST's test set, downloaded (checksummed) through the package's loader when missing."""
    return jn.datasets.load_mnist(progress=False)[1]


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, mnist_test):
    """A briefly trained model (a few hundred steps), so its predictions differ from image to image."""
    out = tmp_path_factory.mktemp("run") / "run"
    train_mnist(MNISTConfig(epochs=1, train_size=4096, test_size=500, out=str(out), report=False, progress=False),
                echo=False)
    return out / "best.npz"


def test_mnist_test_images_match_jimunet_predict(request, page, trained_model, mnist_test, tmp_path):
    x, y = mnist_test
    server = serving(request, trained_model)
    page.goto(server.url)
    page.wait_for_function("() => document.body.dataset.model === 'ready'")
    indices = [0, 1, 2, 3, 4, 8, 18, 247]
    shown = []
    for i in indices:
        page.fill("#index", str(i))
        page.click("#load")
        page.wait_for_function(SETTLED)
        assert f"MNIST test image {i}, label {int(y[i])}" in page.inner_text("#status")
        shown.append(int(page.inner_text("#prediction")))
    np.save(tmp_path / "x.npy", x[indices])
    assert shown == predict_cli(trained_model, tmp_path / "x.npy")
    assert len(set(shown)) > 3  # a trained model: the answers depend on the image

    page.click("#mistake")
    page.wait_for_function(SETTLED)
    status = page.inner_text("#status")
    m = re.search(r"MNIST test image (\d+), label (\d) \(one of this model's (\d+) mistakes\): (\d)", status)
    assert m, status
    index, label, predicted = int(m.group(1)), int(m.group(2)), int(m.group(4))
    assert label == int(y[index]) != predicted == int(page.inner_text("#prediction"))
    np.save(tmp_path / "m.npy", x[index])
    assert predict_cli(trained_model, tmp_path / "m.npy") == [predicted]
    assert not page.errors, page.errors


def test_ci_installs_chromium_and_runs_these_tests_unskipped():
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    install = ci.index("apt-get install -y $packages")
    assert ci.index('[ -x /usr/bin/chromium ] || packages="$packages chromium"') < install
    assert ci.index("apt-get update") < install < ci.index("python -m pytest")
    assert 'SUDO=""' in ci  # root without sudo works
    assert ci.index("export CI=true") < ci.index("python -m pytest")
