"""Pictures for a model that is not a digit model: what ``jimunet serve`` does with them.

A digit model (28×28×1, data set MNIST) gets MNIST's treatment (``jimunet.data.images``:
inverted if needed, cropped, centred, ``(x - 127.5) / 255``). Any other model takes a picture
the way an image folder is read for training and ``jimunet predict`` reads it: turned upright
by its EXIF orientation, transparency composited on white, converted to RGB or grey for the
model's channels, scaled to cover the model's size and centre-cropped (bicubic), then
normalised per channel by the model's saved ``normalize`` (``(x - mean) / std``, pixel units).

``model_info``, ``picture_pixels`` and ``as_model_pixels`` follow the plan's contract for
``jimunet.app.modelinfo`` and ``jimunet.app.pictures`` (helper app's), with the same names and
policy, until those modules are on main; then serve imports theirs and this keeps ``scale``.

Example:
    >>> import numpy as np, jimunet as jn
    >>> info = model_info(jn.models.mnist_cnn(rng=0))
    >>> info.input_shape, info.is_digit_model
    ((28, 28, 1), True)
    >>> float(scale(np.zeros((28, 28, 1), np.uint8), info)[0, 0, 0])
    -0.5
"""
from __future__ import annotations

import io
from collections import namedtuple

import numpy as np

from ..data.images import ImageTooLarge, preprocess

ModelInfo = namedtuple("ModelInfo", "input_shape class_names normalize dataset is_digit_model")
_DIGITS = tuple(str(k) for k in range(10))
_WHITE = (255, 255, 255, 255)


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
    digit = shape == (28, 28, 1) and dataset.get("name") == "mnist"
    return ModelInfo(shape, names, normalize, dataset, digit)


def scale(pixels, info) -> np.ndarray:
    """Pixels ``(H, W, C)`` 0..255 → the model's input (float32): exactly ``preprocess`` for a
    digit model (MNIST's numbers), else the model's ``normalize`` (``(x - mean) / std``)."""
    norm = getattr(info, "normalize", None)
    if info.is_digit_model or norm is None:
        return preprocess(np.asarray(pixels))
    if callable(norm):  # jimunet.data.Normalize
        return np.asarray(norm(np.asarray(pixels, np.float32)), np.float32)
    mean = np.asarray(norm.mean, np.float32)
    std = np.asarray(norm.std, np.float32)
    return ((np.asarray(pixels, np.float32) - mean) / std).astype(np.float32)


def picture_pixels(source, info, name: str = "image") -> np.ndarray:
    """One picture (a binary file object, e.g. ``io.BytesIO``) as float32 pixels of
    ``info.input_shape``, by the policy in the module docstring; ``ValueError`` naming ``name``
    for what is not a readable picture."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError("reading pictures needs Pillow: pip install 'jimunet[serve]'") from None
    h, w, c = info.input_shape
    if c not in (1, 3):
        raise ValueError(f"{name}: the model takes {c} channels; pictures give 1 (grey) or 3 (colour)")
    try:
        with Image.open(source) as im:
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
    except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"{name}: not a readable image ({str(e)[:200]})") from None


def picture_size(data: bytes, name: str, max_pixels: int) -> None:
    """``ImageTooLarge`` for a picture with more than ``max_pixels`` (read from its header only)."""
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except ImportError:
        raise
    except Exception:  # not a picture: picture_pixels says so
        return
    if w * h > max_pixels:
        raise ImageTooLarge(f"{name} has {w}x{h} pixels; at most {max_pixels:,} are accepted")


def as_model_pixels(x, info, name: str = '"pixels"') -> np.ndarray:
    """Images of ``info.input_shape`` as float32 pixels 0..255 ``(N, H, W, C)``: ``(H, W, C)``
    (``(H, W)`` for one channel) or with a leading N; integers 0..255, floats in [0, 1] (scaled
    by 255) or [0, 255]."""
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


__all__ = ["ModelInfo", "model_info", "scale", "picture_pixels", "picture_size", "as_model_pixels"]
