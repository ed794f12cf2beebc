"""The backward view of ``jimunet serve`` in headless Chromium (as tests/test_serve_browser.py):
gradient tiles, click-to-gradcheck, SGD steps, both languages, a phone's width, a colour model.

``python tests/test_serve_browser_backward.py --screenshots`` (re)makes docs/serve-*.png: the
desktop and phone views in English and Chinese.
"""
import io
import os
import re
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_helpers import ROOT, ServeProcess  # noqa: E402
from test_serve_browser import (ARGS, CHROMIUM, SETTLED, TIMEOUT_MS, browser, draw, page,  # noqa: E402,F401
                                serving)

import jimunet as jn  # noqa: E402

BW_SETTLED = SETTLED + " && bwWanted > 0 && document.body.dataset.bw === String(bwWanted)"
SEVEN = [(80, 60), (200, 60), (190, 90), (160, 150), (135, 235)]
# Words that stay as they are in the Chinese page: names of things, not sentences.
KEEP = {"jimunet", "serve", "MNIST", "SGD", "GEMM", "FLOPs", "im2col", "Winograd", "float64", "explain", "predict",
        "max", "pad", "cols", "shift", "shift_", "softmax", "onehot", "logsumexp", "running_mean", "running_var", "mean",
        "English", "float64"}
UNTRANSLATED = """() => {
  const words = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest('[data-raw], pre, script, style, [hidden]') || !el.getClientRects().length) continue;
    for (const w of n.textContent.match(/[A-Za-z_][A-Za-z0-9_]{2,}/g) || []) words.push(w);
  }
  return words;
}"""


def _wait_bw(page):
    page.wait_for_function(BW_SETTLED)


def _check(page, selector, at):
    """Click ``selector`` at ``at`` (fractions of its box); the finished check's numbers."""
    before = int(page.get_attribute("body", "data-checks") or 0)
    target = page.locator(selector).first
    target.scroll_into_view_if_needed()
    box = target.bounding_box()
    page.mouse.click(box["x"] + at[0] * box["width"], box["y"] + at[1] * box["height"])
    page.wait_for_function(f"() => Number(document.body.dataset.checks || 0) > {before}")
    el = page.locator("#check")
    return {k: el.get_attribute(f"data-{k}") for k in ("analytic", "numeric", "error", "tensor")}, el.inner_text()


def test_backward_view_gradcheck_steps_and_languages(request, page, random_cnn_file):
    server = serving(request, random_cnn_file)
    page.goto(server.url)
    page.wait_for_function("() => document.body.dataset.model === 'ready'")
    draw(page, SEVEN)
    _wait_bw(page)
    page.click("#targets .target[data-class='3']")
    _wait_bw(page)
    assert page.locator("#targets .target.on").get_attribute("data-class") == "3"
    for b in range(11):  # every block: dL/dY and dL/dX tiles, and dL/dW for Conv2D and Dense
        blk = f".bwblock[data-block='{b}']"
        assert page.locator(f"{blk} .gradbox").count() == (3 if b in (0, 3, 7, 10) else 2)
        assert page.locator(f"{blk} canvas[data-grad]").count() >= 2
    assert page.locator(".bwblock[data-block='0'] canvas[data-wblock]").count() == 32
    assert "Winograd F(4×4, 5×5)" in page.inner_text(".bwblock[data-block='3'] .algo")
    assert "Winograd F(4×4, 5×5)" in page.inner_text("#blocks tbody tr:nth-child(4)")
    assert "im2col" in page.inner_text(".bwblock[data-block='0'] .algo")

    numbers, text = _check(page, ".bwblock[data-block='0'] canvas[data-wblock]", (0.5, 0.5))  # a 5x5 weight tile
    assert numbers["tensor"] == "weight" and float(numbers["error"]) <= 1e-6 and float(numbers["analytic"]) != 0
    assert "relative error" in text
    # input pixels on the stroke's grey edge; where the drawing's flat black makes max-pool ties
    # (kinks, no derivative) the page must say so, everywhere else agree
    seen = np.asarray(page.evaluate("inputPixels"))
    edge = np.argwhere((seen > 40) & (seen < 215))
    agreed = 0
    for r, c in edge[np.linspace(0, len(edge) - 1, 6).astype(int)]:
        numbers, text = _check(page, ".bwblock[data-block='0'] canvas[data-grad='0']", ((c + 0.5) / 28, (r + 0.5) / 28))
        assert numbers["tensor"] == "input"
        if page.get_attribute("#check", "data-kink") == "true":
            assert "kink" in text
        else:
            assert float(numbers["error"]) <= 1e-6, text
            agreed += 1
    assert agreed >= 1

    p0 = float(page.get_attribute("body", "data-ptarget"))
    page.fill("#lr", "0.001")
    for _ in range(3):
        page.click("#step")
        _wait_bw(page)
    assert page.inner_text("#steps") == "3"
    assert float(page.get_attribute("body", "data-ptarget")) > p0
    assert "SGD steps from the trained weights: 3;" in page.inner_text("#step-line")

    page.click("#lang")
    page.wait_for_function("() => document.body.dataset.lang === 'zh'")
    assert page.inner_text("#step") == "走一步 SGD" and "反向" in page.inner_text("#backward-panel")
    allowed = KEEP | set(re.findall(r"[A-Za-z_][A-Za-z0-9_]{2,}", str(random_cnn_file)))
    left = sorted(set(page.evaluate(UNTRANSLATED)) - allowed)
    assert not left, left
    page.click("#lang")
    page.wait_for_function("() => document.body.dataset.lang === 'en'")
    assert page.inner_text("#step") == "One SGD step"
    assert not page.errors, page.errors


def test_phone_width_has_no_horizontal_scroll(request, browser, random_cnn_file):
    server = serving(request, random_cnn_file)
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.url)
        page.wait_for_function("() => document.body.dataset.model === 'ready'")
        draw(page, [(x * 0.8, y * 0.8) for x, y in SEVEN])
        page.wait_for_function(BW_SETTLED)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        pad, probs = page.locator("#pad").bounding_box(), page.locator("#prob-panel").bounding_box()
        assert probs["y"] - (pad["y"] + pad["height"]) < 260  # the prediction right under the canvas's card
        assert page.evaluate("getComputedStyle(document.querySelector('#blocks-panel .scroll')).overflowX") == "auto"
    finally:
        context.close()


def test_colour_model_answers_an_uploaded_picture(request, page, tmp_path):
    """An untrained colour model (built, not trained: its answers are arbitrary but must be the
    model's own): the page offers a file input instead of the canvas and answers the picture."""
    pil = pytest.importorskip("PIL.Image")
    from PIL import ImageOps
    model = jn.Sequential([jn.layers.Conv2D(3, 4, 3, rng=0), jn.layers.ReLU(), jn.layers.MaxPool2D(2),
                           jn.layers.Flatten(), jn.layers.Dense(16 * 16 * 4, 3, rng=1)])
    path = tmp_path / "colour.npz"
    model.save(path, metadata={"input_shape": [32, 32, 3], "class_names": ["red", "green", "blue"],
                               "normalize": {"mean": [127.5] * 3, "std": [64.0] * 3}})
    rgb = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    picture = tmp_path / "picture.png"
    pil.fromarray(rgb).save(picture)
    fitted = ImageOps.fit(pil.fromarray(rgb), (32, 32), method=pil.Resampling.BICUBIC)  # the folder policy
    x = (np.asarray(fitted, np.float32) - 127.5) / np.float32(64)
    expect = ["red", "green", "blue"][int(np.argmax(jn.load(path).forward(x[None])[0]))]

    server = serving(request, path)
    page.goto(server.url)
    page.wait_for_function("() => document.body.dataset.model === 'ready'")
    assert page.get_attribute("body", "data-mode") == "picture"
    assert page.locator("#file").is_visible() and not page.locator("#clear").is_visible()
    page.set_input_files("#file", str(picture))
    page.wait_for_function(BW_SETTLED)
    assert page.inner_text("#prediction") == expect
    assert page.locator(".bwblock[data-block='0'] canvas[data-grad='0']").count() == 3  # one tile per channel
    assert not page.errors, page.errors


def make_screenshots(out_dir=os.path.join(ROOT, "docs")):
    """docs/serve-{desktop,phone}-{en,zh}.png: a briefly trained model (1 epoch on 4,096 MNIST
    images, as test_serve_browser.py's), a drawn 7, and on the desktop the backward view for
    the target "what if it were a 3?"."""
    import tempfile

    from playwright.sync_api import sync_playwright

    from jimunet.app.recipes import MNISTConfig
    from jimunet.app.training import train_mnist

    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        train_mnist(MNISTConfig(epochs=1, train_size=4096, test_size=500, out=run, report=False, progress=False),
                    echo=False)
        server = ServeProcess(os.path.join(run, "best.npz"), "--port", "0")
        try:
            with sync_playwright() as pw:
                b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                for view, size in (("desktop", (1280, 1000)), ("phone", (390, 844))):
                    for lang in ("en", "zh"):
                        ctx = b.new_context(viewport={"width": size[0], "height": size[1]},
                                            locale="zh-CN" if lang == "zh" else "en-US")
                        pg = ctx.new_page()
                        pg.goto(server.url)
                        pg.wait_for_function("() => document.body.dataset.model === 'ready'")
                        k = 1 if view == "desktop" else 0.8
                        draw(pg, [(x * k, y * k) for x, y in SEVEN])
                        pg.wait_for_function(BW_SETTLED)
                        if view == "desktop":
                            pg.click("#targets .target[data-class='3']")
                            pg.wait_for_function(BW_SETTLED)
                            pg.evaluate("document.querySelector('#backward-panel').scrollIntoView()")
                        pg.screenshot(path=os.path.join(out_dir, f"serve-{view}-{lang}.png"))
                        ctx.close()
                b.close()
        finally:
            server.close()



def test_ci_installs_a_cjk_font_for_the_chinese_page():
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    line = '[ -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || packages="$packages fonts-noto-cjk"'
    assert ci.index(line) < ci.index("apt-get install -y $packages") < ci.index("python -m pytest")
    css = open(os.path.join(ROOT, "src", "jimunet", "app", "static", "style.css"), encoding="utf-8").read()
    assert '"Noto Sans CJK SC"' in css and '"Microsoft YaHei"' in css and '"PingFang SC"' in css


if __name__ == "__main__" and "--screenshots" in sys.argv:
    make_screenshots()
