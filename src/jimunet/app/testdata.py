"""The test images a saved model is judged on (``evaluate``, ``report``, ``explain``, the page).

By default the test set of the data set the model was trained on (``ModelInfo.dataset``: MNIST
for a file without that information), else the one named: ``"mnist"``, ``"fashion-mnist"``,
``"cifar10"`` or an image folder. MNIST is read as it always was (``load_mnist``, ``preprocess``:
the same numbers); the others come from ``jimunet.data.load`` as Datasets of pixels that the
model's own ``Normalize`` turns into inputs batch by batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .. import data as jdata
from .. import datasets
from ..data.images import preprocess
from .modelinfo import ModelInfo

__all__ = ["TestSet", "TestDataError", "test_set", "DATASET_TITLES"]

DATASET_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


class TestDataError(ValueError):
    """The test images cannot be had for this model (a folder moved, another shape or classes)."""


@dataclass
class TestSet:
    """A model's test images.

    Attributes:
        args: ``(x, y)`` for ``evaluate``: preprocessed arrays (MNIST), or ``(dataset, None)``.
        normalize: ``{"normalize": Normalize}`` for a Dataset, ``{}`` for arrays (keyword arguments).
        size: the number of images. title: ``"MNIST"``, ``"CIFAR-10"``, ``"folder /path"``...
        name: the data set's name (``modelinfo.DATASET_NAMES``).
    """

    args: tuple
    normalize: dict
    size: int
    title: str
    name: str
    _pixels: object = field(default=None, repr=False)

    def pixels(self):
        """``(x uint8 (N, H, W, C), y int64 (N,))``: every test image as pixels (for figures)."""
        if isinstance(self._pixels, tuple):
            return self._pixels
        ds = self.args[0]
        x, y = ds.get_batch(np.arange(len(ds)))
        self._pixels = (np.asarray(x), np.asarray(y).astype(np.int64))
        return self._pixels


def test_set(info: ModelInfo, data: str | None = None, data_dir=None, download: bool = True) -> TestSet:
    """The test images for a model of ``info`` (``data``: another data set's, see the module docstring).

    Raises ``TestDataError`` when they do not fit the model (shape, number of classes) or the
    model's folder is gone; the loaders' own errors (e.g. ``MNISTUnavailableError``) pass through.
    """
    name = data if data is not None else _default_data(info)
    if name == "mnist":
        (_, _), (x, y) = datasets.load_mnist(root=data_dir)  # looked up now: tests replace it
        y = np.asarray(y).astype(np.int64)
        x4 = np.asarray(x).reshape(len(x), 28, 28, 1)
        _check_fits(info, (28, 28, 1), tuple(str(k) for k in range(10)), "MNIST")
        return TestSet((preprocess(x), y), {}, len(y), "MNIST", "mnist", (x4, y))
    if name not in DATASET_TITLES and not os.path.isdir(name):
        raise TestDataError(f"--data {name}: expected mnist, fashion-mnist, cifar10 or an image folder, and there "
                            f"is no such folder")
    splits = jdata.load(name, root=data_dir, download=download, progress=False)
    title = DATASET_TITLES.get(name) or f"folder {os.path.abspath(name)}"
    if len(splits.test) == 0:
        raise TestDataError(f"{title}: has no test images")
    _check_fits(info, tuple(splits.image_shape), tuple(splits.class_names), title)
    kind = name if name in DATASET_TITLES else "folder"
    return TestSet((splits.test, None), {"normalize": info.normalize}, len(splits.test), title, kind)


def _default_data(info: ModelInfo) -> str:
    name = info.dataset["name"]
    if name != "folder":
        return name
    path = info.dataset.get("path")
    if not path or not os.path.isdir(path):
        raise TestDataError(f"the model was trained on the image folder {path or '(path not recorded)'}, which is "
                            f"not there any more; name its test images with --data FOLDER")
    return path


def _check_fits(info: ModelInfo, shape: tuple, class_names: tuple, title: str) -> None:
    if tuple(shape) != tuple(info.input_shape):
        raise TestDataError(f"{title}'s images are {'x'.join(map(str, shape))}; the model takes "
                            f"{'x'.join(map(str, info.input_shape))} images")
    if len(class_names) > info.num_classes:  # fewer is fine: the model's other classes are never right
        raise TestDataError(f"{title} has {len(class_names)} classes; the model scores {info.num_classes}")
    if info.dataset["name"] == "folder" and tuple(class_names) != tuple(info.class_names):
        raise TestDataError(f"{title}'s classes ({', '.join(class_names[:4])}, ...) are not the model's "
                            f"({', '.join(info.class_names[:4])}, ...)")
