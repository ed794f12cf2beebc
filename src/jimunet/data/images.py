"""From pixels to model input: MNIST's preprocessing of digit images, and the network's scaling.

Two conventions meet here:

* **MNIST pixels**: a white (255) digit on a black (0) background, 28×28, the digit scaled
  so its longer side is 20 px and centred by its centre of mass. ``load_digit_image`` turns
  any photo or scan of a single digit into this form; ``load_inputs`` also reads ``.npy``.
* **Model input**: ``preprocess(pixels) = (pixels - 127.5) / 255`` as float32 (the TF
  sample's scaling, values in [-0.5, 0.5]); training, evaluation and prediction all use it,
  and so do ``explain`` and the report (with ``auto=True``: floats in [0, 1] pass unscaled).

Pillow (the ``image`` extra: ``pip install -e ".[image]"``) is needed for PNG/JPEG only.

Example:
    >>> import numpy as np
    >>> from jimunet.data.images import preprocess
    >>> preprocess(np.array([0, 255], np.uint8)).tolist()
    [-0.5, 0.5]
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np

from ..serialization import read_npy_header

__all__ = ["preprocess", "looks_like_pixels", "load_digit_image", "load_inputs", "normalize_digit", "digit_from_bytes",
           "as_pixels", "pixel_values", "read_npy", "ImageTooLarge", "IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS"]

SIZE = 28          # MNIST field
BOX = 20           # the digit's longer side inside the field
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def looks_like_pixels(x) -> bool:
    """True for MNIST pixels 0..255 (integers, or floats above 1); False for model inputs."""
    x = np.asarray(x)
    if x.dtype.kind in "uib":
        return True
    return bool(x.size) and float(np.nanmax(x)) > 1.0


def preprocess(x, dtype=np.float32, *, auto: bool = False) -> np.ndarray:
    """MNIST pixels (uint8 or float, 0..255) → model input ``(x - 127.5) / 255`` in ``dtype``.

    The one preprocessing of jimunet: training, evaluation, prediction, the web page, the
    report and ``explain`` all use it. It works on host (NumPy) arrays: ``x`` is pixels as
    read from files or data sets, and the result goes to the model's device with the batch.

    Args:
        x: pixels, any shape.
        dtype: of the result (default float32; the report and ``explain`` pass the model's).
        auto: how to read float arrays. False (the default, what training, evaluation and
            prediction do): ``x`` is pixels whatever its values, so floats are always scaled
            (an all-black float image, every value 0, becomes -0.5). True (what ``explain``
            and the report do with images a user passes): only integer arrays and floats with
            a value above 1 are pixels (``looks_like_pixels``); other floats, e.g. in [0, 1] or
            [-0.5, 0.5], are taken as already scaled model inputs and only cast to ``dtype``
            (no copy when they already have it).

    Example:
        >>> preprocess(np.array([0.0, 1.0], np.float32)).tolist()
        [-0.5, -0.4960784316062927]
        >>> preprocess(np.array([0.0, 1.0], np.float32), auto=True).tolist()
        [0.0, 1.0]
    """
    x = np.asarray(x)
    if auto and not looks_like_pixels(x):
        return x.astype(dtype, copy=False)
    dtype = np.dtype(dtype).type
    return (x.astype(dtype) - dtype(127.5)) / dtype(255)


def _require_pillow():
    try:
        from PIL import Image, ImageOps  # noqa: F401
    except ImportError:
        raise ImportError('reading PNG/JPEG images needs Pillow: pip install pillow (in a checkout: pip install -e ".[image]")') from None
    return Image, ImageOps


def _border(a: np.ndarray) -> np.ndarray:
    """The pixels of the outer frame (about 4% of each side, at least 1 px)."""
    h, w = a.shape
    t = max(1, min(h, w) // 25)
    return np.concatenate([a[:t].ravel(), a[-t:].ravel(), a[:, :t].ravel(), a[:, -t:].ravel()])


def normalize_digit(gray, name: str = "image") -> np.ndarray:
    """MNIST-style normalisation of one grayscale digit image (any size, any polarity).

    Steps: if the border is brighter than mid-grey the image is inverted (dark ink on light
    paper → light digit on black); the background level (the border's median) is subtracted
    and the contrast stretched to 0..255; the image is cropped to the digit's bounding box
    (pixels above 25% of the peak), scaled with anti-aliasing so the longer side is 20 px
    (aspect ratio kept) and its peak is 255 again, and pasted into a 28×28 field so that its
    centre of mass lies at pixel (14, 14), where MNIST's digits have it (MNIST's own
    procedure; shifted back inside the field if the digit would spill over).

    Args:
        gray: 2-D array of grey levels in 0..255 (uint8 or float).
        name: what to call the image in error messages.

    Returns:
        float32 ``(28, 28, 1)`` in 0..255, white digit on black.

    Raises:
        ValueError: the image is blank (no digit stands out from the background).
    """
    Image, _ = _require_pillow()
    a = np.asarray(gray, dtype=np.float32)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name}: expected a 2-D grayscale image, got shape {a.shape}")
    if np.median(_border(a)) > 127.5:
        a = 255.0 - a
    a = np.clip(a - np.median(_border(a)), 0.0, None)
    peak = float(a.max())
    if peak < 16.0:  # under ~6% of full scale: nothing stands out from the background
        raise ValueError(f"{name}: the image looks blank (no digit stands out from the background)")
    a *= 255.0 / peak
    rows = np.flatnonzero((a > 0.25 * 255.0).any(axis=1))
    cols = np.flatnonzero((a > 0.25 * 255.0).any(axis=0))
    a = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = a.shape
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = Image.fromarray(np.ascontiguousarray(a, np.float32)).resize((nw, nh), Image.Resampling.LANCZOS)
    small = np.asarray(small, np.float32)
    small = np.clip(small, 0.0, None)
    small *= 255.0 / max(float(small.max()), 1e-6)  # MNIST strokes reach full white
    total = float(small.sum())
    if total <= 0:  # pragma: no cover - guarded by the peak test above
        raise ValueError(f"{name}: the image looks blank")
    cy = float((small.sum(axis=1) * np.arange(nh)).sum() / total)
    cx = float((small.sum(axis=0) * np.arange(nw)).sum() / total)
    centre = SIZE / 2.0  # MNIST digits have their centre of mass at index (14, 14), measured
    top = int(np.clip(round(centre - cy), 0, SIZE - nh))
    left = int(np.clip(round(centre - cx), 0, SIZE - nw))
    out = np.zeros((SIZE, SIZE, 1), np.float32)
    out[top:top + nh, left:left + nw, 0] = small
    return out


# Largest picture decoded: 2**24 pixels (16.8 megapixels, e.g. 4096×4096). A digit needs a
# few thousand pixels; this still takes a 12-megapixel phone photo (4032×3024) or an A4 page
# scanned at 300 dpi (8.7 MP) uncropped. Pillow's own limit is 179 MP, and a 168 KB PNG can
# declare 144 MP.
MAX_IMAGE_PIXELS = 2 ** 24
# Memory: Pillow holds the decoded picture at most 4 bytes a pixel in every mode it decodes to
# (RGBA, RGB, CMYK, I, F; I;16 takes 2, L 1): at most 64 MiB. Everything after that works on
# tiles of about TILE×TILE pixels, and a picture over REDUCED_PIXELS is averaged over f×f
# blocks tile by tile (JPEG: decoded at 1/2, 1/4 or 1/8 scale already), so the grey image that
# ``normalize_digit`` sees has at most about a megapixel (4 MiB of float32). One picture
# therefore costs at most about 100 MB however it is encoded (measured at 4096×4096: float TIFF
# 98 MB, RGBA PNG 89 MB, 16-bit PNG 62 MB, JPEG 21 MB; before, 280-720 MB).
REDUCED_PIXELS = 2 ** 20
TILE = 512


def _raw_mode(im) -> str:
    """How the file stores its samples (e.g. 'I;16B', 'I;32S'), from the first decoder tile."""
    args = im.tile[0].args if getattr(im, "tile", None) else ""
    return str(args[0] if isinstance(args, tuple) and args else args)


def _white_level(im) -> float:
    """The sample value that means white for Pillow's integer modes (8-bit modes: 255)."""
    if im.mode.startswith("I;16"):
        return 65535.0
    if im.mode == "I":  # 32-bit ints; a 16- or 8-bit file decoded into them keeps its scale
        raw = _raw_mode(im)
        if "16" in raw:
            return 65535.0
        if raw.endswith(";8") or raw == "L":
            return 255.0
        return 0.0  # 32-bit: decided by the values (see _scaled_gray)
    return 255.0


def _scaled_gray(a: np.ndarray, lo: float, hi: float, mode: str, white: float, path: str) -> np.ndarray:
    """Grey levels (float64 ``a``; ``lo``..``hi`` the picture's range) of more than 8 bits, scaled to 0..255."""
    if mode == "F":  # floats carry no bit depth: the same rule as float .npy inputs
        if lo >= 0.0 and hi <= 1.0:
            return (a * 255.0).astype(np.float32)
        if lo >= 0.0 and hi <= 255.0:
            return a.astype(np.float32)
        raise ValueError(f"{path}: floating-point pixels must lie in [0, 1] or [0, 255], got {lo:g}..{hi:g}")
    if lo < 0:
        raise ValueError(f"{path}: negative pixel values ({lo:g}); expected grey levels 0 and up")
    if not white:  # 32-bit ints: tools mostly store 16-bit data this way; else the full range
        white = 65535.0 if hi <= 65535 else float(2 ** 31 - 1)
    return (a * (255.0 / white)).astype(np.float32)


class ImageTooLarge(ValueError):
    """An image with more pixels than accepted (``MAX_IMAGE_PIXELS``, or a caller's lower bound)."""


def _reduction(w: int, h: int) -> int:
    """The block side ``f``: the picture averaged over f×f blocks has at most ``REDUCED_PIXELS``."""
    f = 1
    while -(-w // f) * -(-h // f) > REDUCED_PIXELS:
        f += 1
    return f


def _tiles(im, f: int):
    """``(row, col, tile)``: the picture in tiles of whole f×f blocks; row/col count blocks."""
    w, h = im.size
    step = f * max(1, TILE // f)
    for y in range(0, h, step):
        for x in range(0, w, step):
            yield y // f, x // f, im.crop((x, y, min(x + step, w), min(y + step, h)))


def _block_mean(a: np.ndarray, f: int, counts: np.ndarray) -> np.ndarray:
    """``a`` averaged over f×f blocks (partial blocks at the edges over what they hold)."""
    if f == 1:
        return a
    s = np.add.reduceat(np.asarray(a, np.float64), np.arange(0, a.shape[0], f), axis=0)
    s = np.add.reduceat(s, np.arange(0, a.shape[1], f), axis=1)
    return s / counts[:s.shape[0], :s.shape[1]]


def _alpha_background(im) -> float:
    """255 when the opaque pixels (the ink) are mostly dark, else 0: what transparency stands for."""
    hist = np.zeros(256, np.int64)
    for _, _, tile in _tiles(im, 1):
        rgba = tile.convert("RGBA")
        opaque = np.asarray(rgba.getchannel("A")) >= 128  # alpha / 255 > 0.5
        hist += np.bincount(np.asarray(rgba.convert("L"))[opaque], minlength=256)
    n = int(hist.sum())
    if not n:
        return 0.0
    cum = np.cumsum(hist)  # the median of the opaque grey levels, as np.median takes it
    median = (int(np.searchsorted(cum, (n - 1) // 2 + 1)) + int(np.searchsorted(cum, n // 2 + 1))) / 2.0
    return 255.0 if median < 127.5 else 0.0


def _decoded_gray(im, f: int, white: float, path: str) -> np.ndarray:
    """A loaded picture as float32 grey levels 0..255 (alpha resolved), averaged over f×f blocks."""
    w, h = im.size
    rows, cols = np.minimum(f, h - np.arange(0, h, f)), np.minimum(f, w - np.arange(0, w, f))
    counts = np.outer(rows, cols).astype(np.float64)
    wide = im.mode in ("I", "F") or im.mode.startswith("I;16")
    alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    bg = _alpha_background(im) if alpha else 0.0
    out = np.empty((len(rows), len(cols)), np.float64 if (wide or f > 1) else np.float32)
    lo, hi = np.inf, -np.inf
    for r, c, tile in _tiles(im, f):
        if wide:
            g = np.asarray(tile, dtype=np.float64)
            if im.mode == "F" and not np.isfinite(g).all():
                raise ValueError(f"{path}: contains NaN or infinite pixel values")
            if g.size:
                lo, hi = min(lo, float(g.min())), max(hi, float(g.max()))
        elif alpha:
            rgba = tile.convert("RGBA")
            a = np.asarray(rgba.getchannel("A"), np.float32) / 255.0
            g = np.asarray(rgba.convert("L"), np.float32) * a + bg * (1.0 - a)
        else:
            g = np.asarray(tile.convert("L"), np.float32)
        g = _block_mean(g, f, counts[r:, c:])
        out[r:r + g.shape[0], c:c + g.shape[1]] = g
    if wide:
        return _scaled_gray(out, lo, hi, im.mode, white, path)
    return out.astype(np.float32, copy=False)


def _oriented(gray: np.ndarray, orientation) -> np.ndarray:
    """``gray`` turned as the EXIF orientation tag says (what ``ImageOps.exif_transpose`` does)."""
    Image, _ = _require_pillow()
    t = Image.Transpose
    method = {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE, 6: t.ROTATE_270,
              7: t.TRANSVERSE, 8: t.ROTATE_90}.get(orientation)
    if method is None:
        return gray
    return np.asarray(Image.fromarray(gray).transpose(method), np.float32)


def _open_gray(source, name=None, max_pixels=None) -> np.ndarray:
    """Read an image (a path or a binary file object) as float32 grey levels 0..255, alpha resolved.

    Images of more than 8 bits (16-bit greyscale, 32-bit int or float) are scaled by their
    own white level, so a 16-bit picture gives the same grey levels as its 8-bit version.
    A picture of more than ``REDUCED_PIXELS`` comes back averaged over f×f blocks (at most
    about a megapixel); memory stays bounded as described at ``REDUCED_PIXELS``.

    Raises ImageTooLarge for an image over ``max_pixels`` (at most ``MAX_IMAGE_PIXELS``),
    from its header, before it is decoded.
    """
    Image, _ = _require_pillow()
    path = name or os.fspath(source)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else min(max_pixels, MAX_IMAGE_PIXELS)
    try:
        with warnings.catch_warnings():  # Pillow warns of sizes that are refused just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)  # reads the header only
        with im:
            w, h = im.size
            if w * h > limit:
                at_most = f"{limit / 1e6:.1f} megapixels" if limit >= 10 ** 6 else f"{limit:,} pixels"
                raise ImageTooLarge(f"{path}: the image is {w}x{h} ({w * h / 1e6:.1f} megapixels); at most "
                                    f"{at_most} are read (a digit needs far fewer: crop or scale it down)")
            white = _white_level(im)
            f = _reduction(w, h)
            if f > 1 and im.format == "JPEG":  # the decoder scales by 1/2, 1/4 or 1/8 while decoding
                im.draft(im.mode, (-(-w // f), -(-h // f)))
                f = _reduction(*im.size)
            im.load()
            gray = _decoded_gray(im, f, white, path)
            orientation = im.getexif().get(0x0112)  # after load: a PNG may keep its EXIF after the pixels
        return _oriented(gray, orientation)
    except (FileNotFoundError, ImageTooLarge):
        raise
    except Image.DecompressionBombError as e:  # over Pillow's own limit, refused by Image.open
        raise ValueError(f"{path}: the image is too large ({e}); at most {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels "
                         "are read (a digit needs far fewer: crop or scale it down)") from None
    except ValueError as e:
        if str(e).startswith(path):  # ours, already clear
            raise
        raise ValueError(f"{path}: not a readable image ({e})") from None
    except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"{path}: not a readable image ({e})") from None


def digit_from_bytes(data: bytes, name: str = "image", max_pixels=None) -> np.ndarray:
    """``load_digit_image`` for an image held in memory (the bytes of a PNG, JPEG, ... file).

    The same steps as for a file (``normalize_digit``), so an upload and the same picture
    given to ``jimunet predict`` become the same 28×28 input. ``max_pixels`` lowers the
    decoded-size bound (checked from the header); a larger image raises ``ImageTooLarge``
    (a ``ValueError``).

    Returns:
        float32 ``(28, 28, 1)``, values 0..255, white digit on black.
    """
    return normalize_digit(_open_gray(io.BytesIO(data), name=name, max_pixels=max_pixels), name=name)


def load_digit_image(path) -> np.ndarray:
    """One digit from a PNG/JPEG (or other Pillow-readable) file, in MNIST's convention.

    Any size up to ``MAX_IMAGE_PIXELS``, any bit depth (8- or 16-bit, 32-bit int, float: each
    scaled by its own white level), light or dark background, colour or grey, with or
    without alpha: the image is
    made grayscale and normalised by ``normalize_digit`` (inverted when the background is
    light, cropped, scaled to 20 px, centred by centre of mass in 28×28). ``.npy`` files are
    accepted too (see ``load_inputs``) when they hold exactly one image.

    Returns:
        float32 ``(28, 28, 1)``, values 0..255, white digit on black.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable image, looks blank, or has more than
            ``MAX_IMAGE_PIXELS`` pixels (refused from its header, before decoding).
        ImportError: Pillow is not installed (PNG/JPEG only).
    """
    path = os.fspath(path)
    if path.lower().endswith(".npy"):
        x = load_inputs(path)
        if len(x) != 1:
            raise ValueError(f"{path}: holds {len(x)} images; load_digit_image wants exactly one "
                             "(use load_inputs for batches)")
        return x[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    return normalize_digit(_open_gray(path), name=path)


def read_npy(path: str) -> np.ndarray:
    """A ``.npy`` file's array, its header checked against the file's size before any data is
    read (a header may declare any size); never unpickles. Raises ``ValueError`` naming ``path``."""
    try:
        with open(path, "rb") as f:
            header, offset = read_npy_header(f, "its header")
        size = os.path.getsize(path)
        if offset + header.nbytes != size:
            raise ValueError(f"its header declares {header.dtype} {header.shape} ({header.nbytes:,} bytes of "
                             f"data), the file holds {size - offset:,} bytes after the header")
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from None


def as_pixels(x, name: str = "array") -> np.ndarray:
    """An array ALREADY in MNIST's convention as float32 pixels ``(N, 28, 28, 1)`` in 0..255.

    Shapes ``(28, 28)``, ``(28, 28, 1)``, ``(N, 28, 28)`` or ``(N, 28, 28, 1)``; integers are
    pixels 0..255, floats all within [0, 1] are scaled by 255, floats in [0, 255] are kept.
    What ``load_inputs`` does with a ``.npy`` file. Raises ``ValueError`` naming ``name``.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "uif" or x.dtype.kind == "b":
        raise ValueError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    if x.shape == (SIZE, SIZE):
        x = x[None, :, :, None]
    elif x.shape == (SIZE, SIZE, 1):
        x = x[None]
    elif x.ndim == 3 and x.shape[1:] == (SIZE, SIZE):
        x = x[..., None]
    elif not (x.ndim == 4 and x.shape[1:] == (SIZE, SIZE, 1)):
        raise ValueError(f"{name}: expected an array of shape (28, 28), (28, 28, 1), (N, 28, 28) or "
                         f"(N, 28, 28, 1), got {x.shape}")
    return pixel_values(x, name)


def pixel_values(x: np.ndarray, name: str = "array") -> np.ndarray:
    """A numeric batch ``(N, ...)`` as float32 pixels 0..255, by ``as_pixels``'s rule for values:
    integers must lie in 0..255; floats all within [0, 1] are scaled by 255, floats in [0, 255]
    are kept; NaN, infinities and an empty batch are refused. Raises ``ValueError`` naming ``name``.
    """
    if len(x) == 0:
        raise ValueError(f"{name}: holds no images")
    if x.dtype.kind in "ui":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{name}: integer pixels must lie in 0..255, got {lo}..{hi}")
        return x.astype(np.float32)
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0.0 and hi <= 1.0:
        return x * np.float32(255.0)
    if lo >= 0.0 and hi <= 255.0:
        return x
    raise ValueError(f"{name}: float pixels must lie in [0, 1] or [0, 255], got {lo:g}..{hi:g}")



def load_inputs(path) -> np.ndarray:
    """Images from one file as MNIST pixels: float32 ``(N, 28, 28, 1)`` in 0..255.

    * ``.npy``: shape ``(28, 28)``, ``(28, 28, 1)``, ``(N, 28, 28)`` or ``(N, 28, 28, 1)``,
      ALREADY in MNIST's convention (white digit on black, centred) — it is not inverted or
      re-centred. Integer arrays are pixels 0..255; float arrays whose values all lie in
      [0, 1] are scaled by 255, floats in [0, 255] are taken as they are.
    * anything else: an image file, one digit, normalised by ``load_digit_image``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    if path.lower().endswith(".npy"):
        return as_pixels(read_npy(path), name=path)
    return load_digit_image(path)[None]
