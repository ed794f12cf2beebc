"""jimunet.data.images: picture files and .npy arrays → MNIST-convention pixels → model input."""
import numpy as np
import pytest

from jimunet.data.images import load_digit_image, load_inputs, looks_like_pixels, normalize_digit, preprocess

PIL = pytest.importorskip("PIL", reason="Pillow (the 'image' extra) is part of the test extra")
from PIL import Image, ImageDraw  # noqa: E402


def draw_seven(w, h, ink, paper, mode="L"):
    """A '7'-like glyph (bar on top, diagonal stroke down-left) filling the middle of a w×h canvas."""
    im = Image.new(mode, (w, h), paper)
    d = ImageDraw.Draw(im)
    s = min(w, h)
    x0, y0 = (w - s) / 2, (h - s) / 2
    pts = [(x0 + 0.25 * s, y0 + 0.2 * s), (x0 + 0.75 * s, y0 + 0.2 * s), (x0 + 0.4 * s, y0 + 0.85 * s)]
    d.line(pts, fill=ink, width=max(2, s // 10))
    return im


def correlation(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def check_mnist_like(x):
    assert x.shape == (28, 28, 1) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() == pytest.approx(255.0, abs=1.0)
    rows = np.flatnonzero(x[..., 0].max(axis=1) > 64)
    cols = np.flatnonzero(x[..., 0].max(axis=0) > 64)
    # longer side of the digit ~20 px (MNIST's box)
    assert 18 <= max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 21
    # centre of mass where MNIST has it, pixel (14, 14) (±1 px)
    m = x[..., 0]
    cy = (m.sum(1) * np.arange(28)).sum() / m.sum()
    cx = (m.sum(0) * np.arange(28)).sum() / m.sum()
    assert abs(cy - 14) <= 1.0 and abs(cx - 14) <= 1.0


@pytest.mark.parametrize("size,ink,paper,ext", [
    ((100, 100), 0, 255, ".png"),        # black ink on white paper
    ((300, 300), 255, 0, ".png"),        # white on black, larger
    ((64, 40), 20, 230, ".png"),         # wide canvas, grey levels
    ((200, 260), 30, 220, ".jpg"),       # tall JPEG (lossy)
])
def test_pictures_give_the_same_centred_white_on_black_digit(tmp_path, size, ink, paper, ext):
    ref_path = tmp_path / "ref.png"
    draw_seven(100, 100, 255, 0).save(ref_path)
    ref = load_digit_image(ref_path)
    path = tmp_path / f"digit{ext}"
    draw_seven(*size, ink, paper).save(path)
    x = load_digit_image(path)
    check_mnist_like(x)
    assert correlation(x, ref) > 0.9
    # orientation: the 7's bar is at the top; its stroke ends bottom-left
    ink = x[..., 0] > 64
    rows = np.flatnonzero(ink.any(axis=1))
    assert ink[rows[0]].sum() >= 10 and ink[rows[-1]].sum() <= 5   # wide bar on top, thin foot below
    assert ink[rows[-1], :14].sum() > ink[rows[-1], 14:].sum()     # the foot is on the left


def test_colour_and_alpha_images(tmp_path):
    rgb = draw_seven(120, 120, (200, 0, 0), (250, 250, 240), mode="RGB")
    rgb.save(tmp_path / "rgb.png")
    # transparent background, opaque black strokes (a typical drawing-app export)
    rgba = Image.new("RGBA", (120, 120), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).line([(30, 24), (90, 24), (48, 102)], fill=(0, 0, 0, 255), width=12)
    rgba.save(tmp_path / "rgba.png")
    ref = load_digit_image(draw_seven_path(tmp_path))
    for name in ("rgb.png", "rgba.png"):
        x = load_digit_image(tmp_path / name)
        check_mnist_like(x)
        assert correlation(x, ref) > 0.85, name


def draw_seven_path(tmp_path):
    p = tmp_path / "ref7.png"
    draw_seven(120, 120, 255, 0).save(p)
    return p


def test_real_mnist_digit_survives_a_round_trip_through_a_picture(tmp_path):
    """An MNIST digit printed large, dark on light, comes back close to the original."""
    from jimunet.datasets import load_mnist
    (_, _), (x_test, _) = load_mnist(progress=False)
    for i in range(5):  # (digit 8 of the test set is an outlier: its thin stroke fades when enlarged)
        digit = x_test[i, :, :, 0]
        big = Image.fromarray(255 - digit).resize((112, 112), Image.Resampling.BICUBIC)
        big.save(tmp_path / f"d{i}.png")
        back = load_digit_image(tmp_path / f"d{i}.png")
        assert correlation(back, digit.astype(np.float32)) > 0.9, i


def test_npy_inputs(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    np.save(tmp_path / "a.npy", u8)
    np.save(tmp_path / "b.npy", u8[:, :, None])
    np.save(tmp_path / "c.npy", np.stack([u8, u8])[..., None])
    np.save(tmp_path / "d.npy", u8.astype(np.float32) / 255.0)          # floats in [0, 1]
    np.save(tmp_path / "e.npy", u8.astype(np.float64))                 # floats in [0, 255]
    expect = u8.astype(np.float32)[None, :, :, None]
    for name in "abde":
        x = load_inputs(tmp_path / f"{name}.npy")
        assert x.shape == (1, 28, 28, 1) and x.dtype == np.float32
        np.testing.assert_allclose(x, expect, atol=1e-3)
    c = load_inputs(tmp_path / "c.npy")
    assert c.shape == (2, 28, 28, 1)
    np.testing.assert_array_equal(load_digit_image(tmp_path / "a.npy"), expect[0])
    with pytest.raises(ValueError, match="exactly one"):
        load_digit_image(tmp_path / "c.npy")


@pytest.mark.parametrize("array,match", [
    (np.zeros((27, 28)), "shape"),
    (np.full((28, 28), 300, np.int32), "0..255"),
    (np.full((28, 28), -2.0), r"\[0, 1\]"),
    (np.array(["x"] * 784).reshape(28, 28), "numeric"),
])
def test_bad_npy_arrays(tmp_path, array, match):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=match):
        load_inputs(tmp_path / "bad.npy")


def test_unreadable_files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_digit_image(text)
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_inputs(junk)
    with pytest.raises(FileNotFoundError):
        load_digit_image(tmp_path / "missing.png")
    blank = tmp_path / "blank.png"
    Image.new("L", (50, 50), 255).save(blank)
    with pytest.raises(ValueError, match="blank"):
        load_digit_image(blank)


def test_normalize_digit_array_and_preprocess():
    a = np.zeros((40, 40), np.uint8)
    a[10:30, 18:22] = 255                      # a '1'
    x = normalize_digit(a)
    check_mnist_like(x)
    p = preprocess(x)
    assert p.dtype == np.float32 and p.min() == -0.5 and p.max() == 0.5
    np.testing.assert_array_equal(preprocess(np.array([0, 127.5, 255], np.float32)), [-0.5, 0.0, 0.5])
    u8 = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(preprocess(u8), (u8.astype(np.float32) - 127.5) / 255)


def test_preprocess_reads_floats_as_pixels_unless_auto():
    """The one preprocessing (once two functions): float arrays are read two ways, on purpose."""
    blank = np.zeros((28, 28, 1), np.float32)  # a float image with no value above 1
    f01 = np.array([0.0, 0.5, 1.0], np.float32)
    # default (training, evaluate, predict, the web page's predictions): floats are pixels 0..255
    assert preprocess(blank).dtype == np.float32 and np.all(preprocess(blank) == -0.5)
    np.testing.assert_array_equal(preprocess(f01), (f01 - np.float32(127.5)) / np.float32(255))
    # auto=True (explain, the report): floats without a value above 1 are model inputs already
    assert preprocess(f01, auto=True) is f01  # cast only: nothing to do here
    np.testing.assert_array_equal(preprocess(blank, auto=True), blank)
    scaled = np.array([-0.5, 0.25], np.float32)
    np.testing.assert_array_equal(preprocess(scaled, auto=True), scaled)
    assert not looks_like_pixels(f01) and not looks_like_pixels(scaled)
    # ... and integers, or floats with a value above 1, are pixels both ways
    for px in (np.array([0, 255], np.uint8), np.array([0.0, 255.0], np.float32), np.array([0.0, 1.5])):
        assert looks_like_pixels(px)
        np.testing.assert_array_equal(preprocess(px, auto=True), preprocess(px))
    # dtype: the result's (the report and explain pass the model's), computed in it
    d = preprocess(np.array([0, 255], np.uint8), np.float64)
    assert d.dtype == np.float64 and d.tolist() == [-0.5, 0.5]
    assert preprocess(f01, np.float64, auto=True).dtype == np.float64
    assert preprocess([0, 127.5, 255]).tolist() == [-0.5, 0.0, 0.5]


# --------------------------------------------------------------------------- bit depths and sizes

def _seven_8bit(tmp_path):
    """A dark 7 on white paper, 8-bit, and its grey levels (to re-save at other depths)."""
    im = draw_seven(60, 48, ink=20, paper=240)
    im.save(tmp_path / "seven8.png")
    return np.asarray(im, np.float64), load_digit_image(tmp_path / "seven8.png")


@pytest.mark.parametrize("kind", ["I;16 png", "I;16 tiff", "I tiff", "I tiff 32-bit", "F tiff 0..1", "F tiff 0..255",
                                  "P png", "LA png"])
def test_every_bit_depth_gives_the_8bit_result(tmp_path, kind):
    """A 16-bit PNG used to be clipped to 0/255 (a dark 7 on white became blank); every mode
    is scaled by its own white level into the 0..255 that 8-bit images have."""
    levels, expected = _seven_8bit(tmp_path)
    mode, ext = kind.split()[0], kind.split()[1]
    if mode == "I;16":
        im = Image.fromarray(np.round(levels * 257).astype(np.uint16))
    elif kind == "I tiff":
        im = Image.fromarray(np.round(levels * 257).astype(np.int32))  # 16-bit data in 32-bit ints
    elif kind == "I tiff 32-bit":
        im = Image.fromarray(np.round(levels * (2 ** 31 - 1) / 255).astype(np.int32))
    elif kind == "F tiff 0..1":
        im = Image.fromarray((levels / 255).astype(np.float32))
    elif kind == "F tiff 0..255":
        im = Image.fromarray(levels.astype(np.float32))
    elif mode == "P":
        im = Image.fromarray(levels.astype(np.uint8)).convert("P")
    else:  # LA: opaque grey with alpha
        im = Image.fromarray(levels.astype(np.uint8)).convert("LA")
    path = tmp_path / f"seven.{ext}"
    im.save(path)
    with Image.open(path) as saved:
        assert saved.mode == mode
    got = load_digit_image(path)
    np.testing.assert_allclose(got, expected, atol=1.0)


def test_float_images_outside_both_ranges_are_refused(tmp_path):
    Image.fromarray(np.linspace(-1, 300, 400, dtype=np.float32).reshape(20, 20)).save(tmp_path / "f.tiff")
    with pytest.raises(ValueError, match=r"f\.tiff: floating-point pixels must lie in \[0, 1\] or \[0, 255\]"):
        load_digit_image(tmp_path / "f.tiff")


def _png_header_only(width, height):
    """A PNG signature and IHDR chunk (8-bit grey) with no pixel data: ~50 bytes declaring any size."""
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(12000, 12000), (4097, 4097), (70000, 300), (20000, 20000)])
def test_huge_images_are_refused_from_their_header(tmp_path, size):
    """A 168 KB 12000x12000 PNG used to take 2.3 GB and 11 s; the size in the header is
    enough to refuse it, so this file (which has no pixel data at all) gets the same answer."""
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(*size))
    shown = f"{size[0]}x{size[1]} " if size[0] * size[1] < 2 * 89478485 else "too large"  # else Pillow refuses it
    with pytest.raises(ValueError, match=rf"huge\.png: the image is {shown}.* at most 16\.8 megapixels"):
        load_inputs(path)


def test_npy_header_claiming_more_data_than_the_file_holds(tmp_path):
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (10 ** 11, 28, 28)})
    (tmp_path / "big.npy").write_bytes(buf.getvalue() + bytes(784))
    with pytest.raises(ValueError, match=r"big\.npy: not a readable \.npy array .*header declares uint8 "
                                         r"\(100000000000, 28, 28\) .* the file holds 784 bytes"):
        load_inputs(tmp_path / "big.npy")
    np.savez(tmp_path / "zipped.npy", x=np.zeros((28, 28)))  # an .npz under an .npy name
    import shutil
    shutil.move(tmp_path / "zipped.npy.npz", tmp_path / "zipped.npy")
    with pytest.raises(ValueError, match=r"zipped\.npy: not a readable \.npy array"):
        load_inputs(tmp_path / "zipped.npy")
