"""What a saved model is for: its input shape, class names, normalisation and data set.

``jimunet train`` stores these in the model file's metadata (``model.save(path, metadata)``):
``"input_shape": [H, W, C]``, ``"class_names": [...]``, ``"normalize": {"mean": [...], "std":
[...]}`` (``Normalize.to_dict()``) and ``"dataset": {"name": "mnist" | "fashion-mnist" |
"cifar10" | "folder", "path": "/abs/path"}`` (path: folders only), and ``"test_flip": true`` (with
``"test_shift": n``) for a model to be used with test-time flips (and shifts;
``info.predictor(model)``). ``model_info(model)`` reads them, and gives a file written before
they existed (or by ``jimunet import``) the defaults of an MNIST digit model: 28×28×1, classes
"0".."9", ``Normalize.mnist()``, data set mnist. Every command and the server read a model's
purpose through it, none reads the keys itself.

Example:
    >>> import jimunet as jn
    >>> from jimunet.app.modelinfo import model_info, model_metadata
    >>> info = model_info(jn.models.mnist_cnn(rng=0))        # no metadata: an MNIST digit model
    >>> info.input_shape, info.class_names[:3], info.dataset["name"], info.is_digit_model
    ((28, 28, 1), ('0', '1', '2'), 'mnist', True)
    >>> meta = model_metadata((32, 32, 3), ["cat", "dog"], jn.data.Normalize([125.3, 123.0, 113.9], [63.0, 62.1, 66.7]),
    ...                       {"name": "folder", "path": "/data/pets"})
    >>> m = jn.models.mnist_cnn(rng=0, num_classes=2, input_shape=(32, 32, 3)); m.metadata = meta
    >>> info = model_info(m)
    >>> info.input_shape, info.class_names, info.is_digit_model
    ((32, 32, 3), ('cat', 'dog'), False)
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ..data import Normalize
from ..training.evaluation import FlipAverage

__all__ = ["ModelInfo", "ModelInfoError", "model_info", "model_metadata", "predictor_for", "DATASET_NAMES",
           "MNIST_SHAPE"]

DATASET_NAMES = ("mnist", "fashion-mnist", "cifar10", "folder")
MNIST_SHAPE = (28, 28, 1)
MAX_CLASSES = 100_000
_MAX_NAME = 200


class ModelInfoError(ValueError):
    """A model file's metadata names an input shape, classes or normalisation that cannot be right."""


@dataclass(frozen=True)
class ModelInfo:
    """A model's purpose (see the module docstring).

    Attributes:
        input_shape: ``(H, W, C)`` of one image.
        class_names: one name per model output.
        normalize: the ``Normalize`` that turns pixels (0..255) into the model's inputs.
        dataset: ``{"name": ..., "path": ...}`` (path only for a folder).
        is_digit_model: an MNIST digit model (28×28×1, data set mnist): pictures are read as
            handwritten digits (cropped, centred), and the page offers its drawing canvas.
        test_flip: the model was tested with each image's scores averaged with its mirror
            image's; ``predictor`` gives it that way.
        test_shift: ... and with the views moved this many pixels (``FlipAverage``'s ``shift``).
    """

    input_shape: tuple
    class_names: tuple
    normalize: Normalize
    dataset: dict
    is_digit_model: bool
    test_flip: bool = False
    test_shift: int = 0

    def predictor(self, model):
        """What gives this model's class scores as it was tested (``predictor_for``)."""
        return predictor_for(model, self.test_flip, self.test_shift)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.input_shape[-1]

    @property
    def dataset_name(self) -> str:
        return self.dataset["name"]

    def describe_dataset(self) -> str:
        """``"MNIST"``, ``"Fashion-MNIST"``, ``"CIFAR-10"`` or ``"the folder /path"``."""
        name = self.dataset["name"]
        if name == "folder":
            return f"the folder {self.dataset.get('path') or '(unknown path)'}"
        return {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}[name]


def predictor_for(model, test_flip: bool, test_shift: int = 0):
    """``model``, or with ``test_flip`` ``FlipAverage(model, test_shift)``: what a run with these
    settings tests, and what its model file (which records them) is used as."""
    return FlipAverage(model, test_shift) if test_flip else model


def model_metadata(input_shape, class_names, normalize: Normalize, dataset: dict) -> dict:
    """The metadata keys ``model_info`` reads, as ``jimunet train`` saves them (JSON-able)."""
    return {"input_shape": [int(d) for d in input_shape], "class_names": [str(c) for c in class_names],
            "normalize": normalize.to_dict(), "dataset": dict(dataset)}


def model_info(model) -> ModelInfo:
    """The ``ModelInfo`` of ``model`` (from ``model.metadata``; defaults for files without it).

    A model without ``class_names`` gets ``"0"``, ``"1"``, ... for each of its outputs (ten for an
    MNIST model). Raises ``ModelInfoError`` (a ValueError) naming the key when a stored value
    cannot be right: not a shape of 3 positive integers, class names that are not strings,
    a normalisation whose mean and std do not have one finite value per channel (std > 0).
    """
    meta = getattr(model, "metadata", None)
    meta = meta if isinstance(meta, dict) else {}
    shape = _input_shape(meta)
    dataset = _dataset(meta.get("dataset"))
    normalize = _normalize(meta.get("normalize"), shape[-1])
    names = _class_names(meta.get("class_names"), model, shape)
    digit = dataset["name"] == "mnist" and shape == MNIST_SHAPE
    flip, shift = meta.get("test_flip", False), meta.get("test_shift", 0)
    if not isinstance(flip, bool):
        raise ModelInfoError(f"the model's metadata: test_flip must be true or false, got {_short(flip)}")
    if not (isinstance(shift, int) and not isinstance(shift, bool) and 0 <= shift <= FlipAverage.MAX_SHIFT
            and (flip or not shift)):
        raise ModelInfoError(f"the model's metadata: test_shift must be 0 to {FlipAverage.MAX_SHIFT} pixels "
                             f"(with test_flip), got {_short(shift)}")
    return ModelInfo(shape, names, normalize, dataset, digit, flip, shift)


def _input_shape(meta: dict) -> tuple:
    shape = meta.get("input_shape")
    if shape is None:
        onnx = meta.get("onnx")  # a model imported by jimunet import records the one it came with
        shape = onnx.get("input_shape") if isinstance(onnx, dict) else None
        if not (isinstance(shape, list) and len(shape) == 3):  # none, or not an image's (an MLP's (784,))
            return MNIST_SHAPE
    ok = (isinstance(shape, (list, tuple)) and len(shape) == 3
          and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 1_000_000 for d in shape))
    if not ok:
        raise ModelInfoError(f"the model's metadata: input_shape must be [height, width, channels] (3 positive "
                             f"integers), got {_short(shape)}")
    return tuple(shape)


def _dataset(d) -> dict:
    if d is None:
        return {"name": "mnist"}
    if not isinstance(d, dict) or d.get("name") not in DATASET_NAMES:
        raise ModelInfoError(f"the model's metadata: dataset must be {{\"name\": one of {', '.join(DATASET_NAMES)}}}, "
                             f"got {_short(d)}")
    out = {"name": d["name"]}
    if d["name"] == "folder":
        path = d.get("path")
        out["path"] = path if isinstance(path, str) and os.path.isabs(path) else None
    return out


def _normalize(d, channels: int) -> Normalize:
    if d is None:
        return Normalize.mnist()
    try:
        mean, std = d["mean"], d["std"]
        ok = all(isinstance(v, list) and len(v) in (1, channels) for v in (mean, std)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in mean + std) \
            and all(v > 0 for v in std)
    except (TypeError, KeyError):
        ok = False
    if not ok:
        raise ModelInfoError(f"the model's metadata: normalize must be {{\"mean\": [...], \"std\": [...]}} with one "
                             f"finite value per channel ({channels}) and std > 0, got {_short(d)}")
    return Normalize.from_dict({"mean": mean, "std": std})


def _class_names(names, model, shape) -> tuple:
    if names is None:
        return tuple(str(k) for k in range(_outputs(model, shape) or 10))
    if not (isinstance(names, list) and 2 <= len(names) <= MAX_CLASSES
            and all(isinstance(n, str) and 0 < len(n) <= _MAX_NAME for n in names)):
        raise ModelInfoError(f"the model's metadata: class_names must be a list of 2 to {MAX_CLASSES:,} non-empty "
                             f"strings of at most {_MAX_NAME} characters, got {_short(names)}")
    return tuple(names)


def _outputs(model, shape) -> int | None:
    """The number of class scores ``model`` gives an image of ``shape`` (None if it gives no vector)."""
    try:
        out = model.output_shape(shape)
    except (ValueError, TypeError, AttributeError):
        return None
    return int(out[0]) if len(out) == 1 else None


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."
