"""A user's pictures as pixels for a model of any input shape (``jimunet predict``, ``explain``).

A digit model (``ModelInfo.is_digit_model``) reads pictures as handwritten digits, as it always
did (``data.images.load_inputs``: grayscale, cropped, scaled to 20 px and centred in 28×28).
Any other model takes a picture the way an image folder is read for training (``jimunet.data``'s
folder policy): turned upright by its EXIF orientation, transparency composited on white,
converted to RGB or grayscale for the model's channels, and scaled to cover the model's size,
then centre-cropped (bicubic, antialiased). ``.npy`` arrays are taken as they are: ``(H, W, C)``
or ``(N, H, W, C)`` of the model's shape (``(H, W)``, ``(N, H, W)`` for one channel), integer
pixels 0..255 or floats in [0, 1] (scaled by 255) or [0, 255].

Example:
    >>> import numpy as np, jimunet as jn
    >>> from jimunet.app.modelinfo import model_info
    >>> info = model_info(jn.models.mnist_cnn(rng=0))
    >>> as_model_pixels(np.zeros((2, 28, 28), np.uint8), info, "a.npy").shape
    (2, 28, 28, 1)
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np

from ..data.images import MAX_IMAGE_PIXELS, load_inputs, pixel_values, read_npy
from .modelinfo import ModelInfo

__all__ = ["load_pictures", "as_model_pixels", "picture_pixels"]

_WHITE = (255, 255, 255, 255)


def load_pictures(path, info: ModelInfo) -> np.ndarray:
    """The images of one file as float32 pixels 0..255 of ``info.input_shape``: ``(N, H, W, C)``.

    Raises ValueError naming the file (not an image, wrong shape, pixels out of range) and
    ImportError without Pillow.
    """
    path = os.fspath(path)
    if info.is_digit_model:
        return load_inputs(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    if path.lower().endswith(".npy"):
        return as_model_pixels(read_npy(path), info, path)
    with open(path, "rb") as f:
        return picture_pixels(f, info, path)[None]


def as_model_pixels(x, info: ModelInfo, name: str = "array") -> np.ndarray:
    """An array of images of ``info.input_shape`` as float32 pixels 0..255 ``(N, H, W, C)``."""
    x = np.asarray(x)
    shape = tuple(info.input_shape)
    if x.dtype.kind not in "uif":
        raise ValueError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    if shape[-1] == 1 and x.shape[-2:] == shape[:2] and x.ndim in (2, 3):
        x = x[..., None]
    if x.shape == shape:
        x = x[None]
    if x.ndim != 4 or x.shape[1:] != shape:
        h, w, c = shape
        one = f" ({h}, {w}) or (N, {h}, {w})," if c == 1 else ""
        raise ValueError(f"{name}: expected an array of shape{one} ({h}, {w}, {c}) or (N, {h}, {w}, {c}) (the model's "
                         f"input), got {x.shape}")
    return pixel_values(x, name)


def picture_pixels(source, info: ModelInfo, name: str = "image") -> np.ndarray:
    """One picture (a binary file object, or the file's bytes) as float32 pixels ``(H, W, C)``."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        from PIL import Image, ImageOps
    except ImportError:  # pragma: no cover - Pillow is a dependency of the image extras
        raise ImportError("reading pictures needs Pillow: pip install pillow") from None
    h, w, c = info.input_shape
    try:
        with warnings.catch_warnings():  # Pillow warns of sizes that are refused just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
        with im:
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                raise ValueError(f"{name}: the image is {im.size[0]}x{im.size[1]} "
                                 f"({im.size[0] * im.size[1] / 1e6:.1f} megapixels); at most "
                                 f"{MAX_IMAGE_PIXELS / 1e6:.1f} megapixels are read")
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                a = np.asarray(im, np.float64)
                top = 65535.0 if a.size and a.max() > 255 else 255.0
                im = Image.fromarray(np.clip(np.rint(a * 255.0 / top), 0, 255).astype(np.uint8))
            elif im.mode in ("RGBA", "RGBa", "LA", "La", "PA", "P") and (im.mode != "P" or "transparency" in im.info):
                im = Image.alpha_composite(Image.new("RGBA", im.size, _WHITE), im.convert("RGBA"))
            im = im.convert("RGB" if c == 3 else "L")
            if im.size != (w, h):
                im = ImageOps.fit(im, (w, h), method=Image.Resampling.BICUBIC)
            return np.asarray(im, np.float32).reshape(h, w, c)
    except ValueError as e:
        if str(e).startswith(name):
            raise
        raise ValueError(f"{name}: not a readable image ({e})") from None
    except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"{name}: not a readable image ({e})") from None
