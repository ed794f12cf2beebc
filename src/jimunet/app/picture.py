"""Pictures for a model that is not a digit model: the parts ``jimunet serve`` adds to
``jimunet.app.pictures`` (which reads them as ``jimunet predict`` and the image folders do).

``scale`` turns pixels into the model's input: exactly ``preprocess`` for a digit model (MNIST's
numbers), else the model's saved ``normalize``. ``picture_size`` refuses a picture too large to
decode from its header alone, so the server can answer 413 before decoding anything.

Example:
    >>> import numpy as np, jimunet as jn
    >>> from jimunet.app.modelinfo import model_info
    >>> info = model_info(jn.models.mnist_cnn(rng=0))
    >>> float(scale(np.zeros((28, 28, 1), np.uint8), info)[0, 0, 0])
    -0.5
"""
from __future__ import annotations

import io

import numpy as np

from ..data.images import ImageTooLarge, preprocess


def scale(pixels, info) -> np.ndarray:
    """Pixels ``(H, W, C)`` 0..255 → the model's input (float32): exactly ``preprocess`` for a
    digit model (MNIST's numbers), else the model's ``normalize`` (``(x - mean) / std``)."""
    if info.is_digit_model:
        return preprocess(np.asarray(pixels))
    return np.asarray(info.normalize(np.asarray(pixels, np.float32)), np.float32)


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


__all__ = ["scale", "picture_size"]
