"""The training, validation and test images of a ``jimunet train`` run, as model inputs.

MNIST goes the way it always went (``load_mnist``, ``preprocess``: the published numbers stay
bit-identical). Every other data set comes from ``jimunet.data.load`` (Fashion-MNIST, CIFAR-10,
an image folder): the first ``validation_size`` training images are held out for validation as
for MNIST (a folder, which lists its images class by class: a fixed random choice of them, at most
a tenth of its training images), and the images are normalised with ``Normalize.mnist()`` (Fashion-MNIST) or with the
per-channel mean and standard deviation of the training images (computed once; the model file
keeps them in its metadata, see ``modelinfo``).
"""
from __future__ import annotations

import os
from collections import namedtuple

import numpy as np

from .. import data as jdata
from .. import datasets
from ..data import ArrayDataset, Normalize, Subset, is_dataset
from ..data.cifar import CLASS_NAMES as CIFAR10_CLASSES
from ..data.fashion import CLASS_NAMES as FASHION_CLASSES
from ..data.images import preprocess
from .modelinfo import model_metadata
from .recipes import SELF_TEST_EVAL, SELF_TEST_TRAIN, ConfigError, MNISTConfig, fake_data

__all__ = ["MNISTData", "load_data", "check_data", "part_size", "part_args", "fixed_order"]

MNISTData = namedtuple("MNISTData", ["train", "validation", "test", "source", "meta", "normalize"],
                       defaults=(None, None))
MNISTData.__doc__ = """The training, validation and test sets: ``(x, y)`` pairs of model inputs and int64
labels (MNIST, the self-test), or Datasets of pixels that ``normalize`` turns into model inputs
batch by batch; where they came from (``"MNIST"``, ``"self-test fake data"``, a path...) and the
model metadata they imply (``modelinfo``'s keys)."""


def part_size(part) -> int:
    """The number of images of one of ``MNISTData``'s sets."""
    return len(part) if is_dataset(part) else len(part[0])


def part_args(part) -> tuple:
    """``part`` as ``Trainer.fit``'s and ``evaluate``'s ``(x, y)`` arguments."""
    return (part, None) if is_dataset(part) else tuple(part)

_FOLDER_SPLIT_SEED = 20_170_822  # the validation images of a folder: a fixed choice
_STATS_SAMPLES = 10_000  # training images the per-channel mean and std are estimated from


def _mnist_meta() -> dict:
    return model_metadata((28, 28, 1), [str(k) for k in range(10)], Normalize.mnist(), {"name": "mnist"})


def load_data(cfg: MNISTConfig, data=None, normalize: Normalize | None = None) -> MNISTData:
    """The three sets of ``cfg`` (``data``: ``((x_train, y_train), (x_test, y_test))`` arrays of
    pixels to use instead of loading ``cfg.data``, in ``load_mnist``'s format or NHWC;
    ``normalize``: the one a resumed run computed, instead of computing it again)."""
    if cfg.self_test:
        xt, yt = fake_data(SELF_TEST_TRAIN)
        (xv, yv), (xs, ys) = fake_data(SELF_TEST_EVAL), fake_data(SELF_TEST_EVAL)
        if cfg.train_size is not None:
            xt, yt = xt[:cfg.train_size], yt[:cfg.train_size]
        if cfg.test_size is not None:
            xs, ys = xs[:cfg.test_size], ys[:cfg.test_size]
        return MNISTData((xt, yt), (xv, yv), (xs, ys), "self-test fake data", _mnist_meta())
    if cfg.data == "mnist":
        if data is None:
            data = datasets.load_mnist(root=cfg.data_dir, download=cfg.download, progress=True)
        (x_all, y_all), (x_test, y_test) = data
        (tr, va, te) = _split(cfg, len(x_all), len(x_test))
        as_labels = lambda a: np.asarray(a).astype(np.int64)  # noqa: E731
        return MNISTData((preprocess(x_all[tr]), as_labels(y_all[tr])), (preprocess(x_all[va]), as_labels(y_all[va])),
                         (preprocess(x_test[te]), as_labels(y_test[te])), "MNIST", _mnist_meta())
    return _other_data(cfg, data, normalize)


def check_data(cfg: MNISTConfig) -> None:
    """ConfigError when ``cfg.data`` is neither a data set's name nor a folder (before a run directory is made)."""
    if cfg.data_kind == "folder" and not cfg.self_test and not os.path.isdir(cfg.data):
        raise ConfigError(f"--data {cfg.data}: expected mnist, fashion-mnist, cifar10 or an image folder, and there "
                          f"is no such folder")


def _split(cfg, n_all: int, n_test: int, folder: bool = False):
    """Slices of the training, validation and test images ``cfg`` asks for, checked against the data
    (a folder's validation images are at most a tenth of its training images: a small folder trains
    with the default ``validation_size``)."""
    v = min(cfg.validation_size, n_all // 10) if folder else cfg.validation_size
    if v >= n_all:
        raise ConfigError(f"validation_size {v} leaves no training images (the data has {n_all})")
    n = n_all - v if cfg.train_size is None else cfg.train_size
    if n > n_all - v:
        raise ConfigError(f"train_size {n} exceeds the {n_all - v} training images available")
    t = n_test if cfg.test_size is None else min(cfg.test_size, n_test)
    return slice(v, v + n), slice(0, v), slice(0, t)


def _other_data(cfg: MNISTConfig, data, normalize=None) -> MNISTData:
    kind = cfg.data_kind
    if data is not None:  # arrays given for a named data set (tests, notebooks)
        (xa, ya), (xb, yb) = data
        names = {"fashion-mnist": FASHION_CLASSES, "cifar10": CIFAR10_CLASSES}.get(kind)
        train, test = ArrayDataset(xa, ya, class_names=names), ArrayDataset(xb, yb, class_names=names)
        class_names, shape, source = train.class_names, tuple(train.image_shape), "arrays"
    else:
        check_data(cfg)
        try:
            splits = jdata.load(cfg.data, root=cfg.data_dir, download=cfg.download, progress=True)
        except (ValueError, FileNotFoundError) as e:  # the loaders' one-line messages (a malformed folder...)
            raise ConfigError(str(e)) from None
        train, test = splits.train, splits.test
        class_names, shape, source = tuple(splits.class_names), tuple(splits.image_shape), splits.source
        notes = getattr(train, "notes", ())  # a folder's ignored files, classes without training images
        if notes:
            source = "; ".join((source, *notes))
    if len(test) == 0:
        raise ConfigError(f"{cfg.data}: the data has no test images")
    tr, va, te = _split(cfg, len(train), len(test), folder=kind == "folder")
    # A folder lists its images class by class: its validation images (and a train_size's or a
    # test_size's) are a fixed random choice, the same for every run and seed; the named data sets
    # come shuffled.
    order, order_test = (fixed_order(len(ds), kind) for ds in (train, test))
    parts = [Subset(train, np.sort(order[tr])), Subset(train, np.sort(order[va])),
             Subset(test, np.sort(order_test[te]))]
    if normalize is None:
        normalize = Normalize.mnist() if kind == "fashion-mnist" else \
            Normalize.estimate(parts[0], samples=_STATS_SAMPLES)
    dataset = {"name": kind, **({"path": os.path.abspath(cfg.data)} if kind == "folder" else {})}
    meta = model_metadata(shape, class_names, normalize, dataset)
    return MNISTData(*parts, source, meta, normalize)


def fixed_order(n: int, kind: str) -> np.ndarray:
    """The order a data set's first images are taken in: a folder's is a fixed random one."""
    return np.random.default_rng(_FOLDER_SPLIT_SEED).permutation(n) if kind == "folder" else np.arange(n)
