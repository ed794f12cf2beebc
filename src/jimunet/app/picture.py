"""Pictures for a model that is not a digit model: what ``jimunet serve`` does with them.

A digit model (28×28×1, classes "0".."9") gets MNIST's treatment (``jimunet.data.images``:
inverted if needed, cropped, centred, ``(x - 127.5) / 255``). Any other model gets the picture
resized to its input: decoded with Pillow (EXIF orientation applied), converted to grey (``L``)
for one channel or ``RGB`` for three, transparency composited on black, then resized to the
model's height × width with bilinear filtering, the whole picture (no crop: the aspect ratio
is not kept), and normalised per channel by the model's saved ``normalize`` (``(x - mean) /
std``, pixel units).

``model_info`` reads the model's metadata with the defaults of a file saved before metadata
existed (28×28×1, "0".."9", MNIST's scaling); it is the plan's ``jimunet.app.modelinfo``
contract, kept here until that module exists on main.

Example:
    >>> import numpy as np, jimunet as jn
    >>> info = model_info(jn.models.mnist_cnn(rng=0))
    >>> info.input_shape, info.is_digit_model
    ((28, 28, 1), True)
    >>> scale(np.zeros((28, 28, 1), np.uint8), info)[0, 0, 0]
    -0.5
"""
from __future__ import annotations

import io
from collections import namedtuple

import numpy as np

from ..data.images import ImageTooLarge, preprocess

ModelInfo = namedtuple("ModelInfo", "input_shape class_names normalize dataset is_digit_model")
_DIGITS = tuple(str(k) for k in range(10))


class _Normalize:
    """Per-channel ``(x - mean) / std`` in pixel units (the fields of ``Normalize.to_dict()``)."""

    def __init__(self, mean, std):
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)


def model_info(model) -> ModelInfo:
    """Input shape, class names, normalisation and data set of ``model`` (defaults for old files)."""
    meta = getattr(model, "metadata", None) or {}
    shape = meta.get("input_shape")
    shape = tuple(int(v) for v in shape) if isinstance(shape, (list, tuple)) and len(shape) == 3 else (28, 28, 1)
    names = meta.get("class_names")
    names = tuple(str(n) for n in names) if isinstance(names, (list, tuple)) and names else _DIGITS
    norm = meta.get("normalize")
    normalize = None
    if isinstance(norm, dict) and "mean" in norm and "std" in norm:
        normalize = _Normalize(norm["mean"], norm["std"])
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {"name": "mnist"}
    digit = shape == (28, 28, 1) and names == _DIGITS
    return ModelInfo(shape, names, normalize, dataset, digit)


def scale(pixels, info) -> np.ndarray:
    """Pixels ``(H, W, C)`` 0..255 → the model's input (float32): MNIST's scaling for a digit
    model or a model without a saved ``normalize``, else ``(x - mean) / std`` per channel."""
    norm = getattr(info, "normalize", None)
    if info.is_digit_model or norm is None or not hasattr(norm, "mean"):
        return preprocess(np.asarray(pixels))
    mean = np.asarray(norm.mean, np.float32)
    std = np.asarray(norm.std, np.float32)
    return ((np.asarray(pixels, np.float32) - mean) / std).astype(np.float32)


def picture_from_bytes(data: bytes, shape, name: str = "the uploaded image", max_pixels: int = 4096 * 4096):
    """A PNG/JPEG/... file's bytes as uint8 pixels of ``shape`` (H, W, C with C 1 or 3), by the
    policy in the module docstring. ``ValueError`` for what is not a readable picture,
    ``ImageTooLarge`` for one with more than ``max_pixels`` (checked from its header)."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError("reading pictures needs Pillow: pip install 'jimunet[serve]'") from None
    h, w, c = shape
    if c not in (1, 3):
        raise ValueError(f"{name}: the model takes {c} channels; pictures give 1 (grey) or 3 (colour)")
    try:
        im = Image.open(io.BytesIO(data))
        if im.width * im.height > max_pixels:
            raise ImageTooLarge(f"{name} has {im.width}x{im.height} pixels; at most {max_pixels:,} are accepted")
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            black = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(black, im)
        im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    except ImageTooLarge:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{name} is not a picture Pillow can read (PNG, JPEG, ...): {str(e)[:200]}") from None
    a = np.asarray(im, np.uint8)
    return a.reshape(h, w, c)


def pixels_from_array(arr, shape, name: str = '"pixels"') -> np.ndarray:
    """JSON pixels for a model of input ``shape``: ``(H, W, C)`` or ``(H, W)`` when C is 1,
    integers 0..255 or floats all in [0, 1] (scaled by 255) or in [0, 255]; float32 0..255."""
    x = np.asarray(arr)
    h, w, c = shape
    if x.dtype.kind not in "uif":
        raise ValueError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    if c == 1 and x.shape == (h, w):
        x = x[..., None]
    if x.shape != (h, w, c):
        extra = f" or ({h}, {w})" if c == 1 else ""
        raise ValueError(f"{name}: expected an array of shape ({h}, {w}, {c}){extra}, got {x.shape}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"{name}: pixels must lie in 0..255 (or 0..1), got {lo:g}..{hi:g}")
    return x * 255 if hi <= 1.0 and x.dtype.kind == "f" and np.asarray(arr).dtype.kind == "f" else x


__all__ = ["ModelInfo", "model_info", "scale", "picture_from_bytes", "pixels_from_array"]
