"""What one sample needs in memory on its way through layers, counted from shapes alone.

A saved architecture is untrusted: ``padding=100000`` or ``Conv2D(1 -> 1,000,000)`` are a few
bytes of description and gigabytes per image. ``jn.load`` refuses a model whose architecture
needs more than ``MAX_ACTIVATION_BYTES`` for one sample of its input shape, and ``predict`` runs
as many samples at a time as fit in that bound (``jimunet.model``).
"""
from __future__ import annotations

import math

from ..functional.padding import pad_amounts
from .conv import Conv2D
from .normalization import BatchNorm
from .pooling import AvgPool2D, MaxPool2D

# The MNIST network needs ~1.1 MB per sample (its 200-image predict chunk ~220 MB).
MAX_ACTIVATION_BYTES = 2 ** 30  # 1 GiB


class ActivationLimitError(ValueError):
    """One sample would need more memory than ``MAX_ACTIVATION_BYTES`` (or the bound given)."""


def activation_elements(layer, input_shape, output_shape) -> int:
    """Values one sample keeps or needs at once in ``layer``: its output, plus the padded input
    and im2col matrix of a convolution, the padded input of a pooling, BatchNorm's normalised
    copy (the layers' caches keep them until the next forward pass), or what a network used as
    a layer counts for itself (its ``summary``)."""
    if isinstance(output_shape, list):  # several outputs of a nested graph
        out = sum(math.prod(s) for s in output_shape)
    else:
        out = math.prod(output_shape)
    if isinstance(layer, (Conv2D, MaxPool2D, AvgPool2D)) and len(input_shape) == 3:
        window = layer.kernel_size if isinstance(layer, Conv2D) else layer.pool_size
        (pt, pb), (pl, pr) = pad_amounts(input_shape[:2], window, layer.stride, layer.padding)
        padded = (input_shape[0] + pt + pb) * (input_shape[1] + pl + pr) * input_shape[2]
        cols = math.prod(output_shape[:2]) * math.prod(window) * input_shape[2] if isinstance(layer, Conv2D) else 0
        return out + padded + cols
    if isinstance(layer, BatchNorm):
        return 2 * out
    if hasattr(layer, "summary"):  # a network used as a layer
        try:
            return layer.summary(input_shape).activation_elements
        except ValueError:
            return out
    return out


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"


def check_activation_bytes(per_sample: int, input_shape, limit: int, where: str = "") -> None:
    """``ActivationLimitError`` when one sample of ``input_shape`` needs more than ``limit`` bytes."""
    if per_sample > limit:
        raise ActivationLimitError(
            f"{where}one sample of shape {tuple(input_shape)} needs {format_bytes(per_sample)} "
            f"({per_sample:,} bytes) of intermediate results in this model, over the bound of "
            f"{format_bytes(limit)} ({limit:,} bytes); check its layers' sizes and padding (pass "
            f"max_activation_bytes=... to allow more)")


def recorded_input_shape(metadata):
    """The per-sample input shape a model file's metadata records (``input_shape``, else
    ``onnx.input_shape``), or None."""
    for source in (metadata, metadata.get("onnx") if isinstance(metadata, dict) else None):
        shape = source.get("input_shape") if isinstance(source, dict) else None
        if isinstance(shape, list) and 0 < len(shape) <= 8 and all(
                isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 2 ** 31 for d in shape):
            return tuple(shape)
    return None


def check_network_activations(model, input_shape=None, limit: int | None = None) -> None:
    """``ActivationLimitError`` when one sample of ``input_shape`` (None: a graph's own inputs)
    needs more than ``limit`` bytes (default ``MAX_ACTIVATION_BYTES``) in ``model``; nothing when
    the model cannot take that shape (whoever gives it one is told why then)."""
    try:
        per_sample = model.activation_bytes(input_shape)
    except (ValueError, TypeError):
        return
    check_activation_bytes(per_sample, input_shape or model.summary().input_shape,
                           MAX_ACTIVATION_BYTES if limit is None else int(limit))
