"""``load(name_or_path)``: any data set jimunet knows as ``Splits`` of ``Dataset`` objects.

Example:
    >>> import jimunet as jn
    >>> splits = jn.data.load("fashion-mnist")             # doctest: +SKIP
    >>> splits.class_names[:2], splits.image_shape, len(splits.train)  # doctest: +SKIP
    (('T-shirt/top', 'Trouser'), (28, 28, 1), 60000)
"""
from __future__ import annotations

import os
from pathlib import Path

from .cifar import load_cifar10_with_names
from .fashion import CLASS_NAMES as FASHION_CLASS_NAMES
from .fashion import load_fashion_mnist_arrays
from .mnist import default_root as mnist_root
from .mnist import load_mnist
from .dataset import ArrayDataset, Splits
from .download import idx_splits
from .folder import load_folder

__all__ = ["load", "NAMES"]

NAMES = ("mnist", "fashion-mnist", "cifar10")
_ALIASES = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
            "fashionmnist": "fashion-mnist", "cifar10": "cifar10", "cifar-10": "cifar10", "cifar_10": "cifar10"}
MNIST_CLASS_NAMES = tuple(str(i) for i in range(10))


def _splits(data, class_names, source: str, name: str) -> Splits:
    (x, y), (xt, yt) = data
    train, test = ArrayDataset(x, y, class_names), ArrayDataset(xt, yt, class_names)
    return Splits(train, test, tuple(class_names), train.image_shape, source, name)


def load(name_or_path, root=None, download: bool = True, progress: bool = True, **folder_options) -> Splits:
    """The train and test splits of a data set, by name or folder.

    Args:
        name_or_path: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, or the path of an image
            folder (``DIR/<class>/*`` or ``DIR/train/<class>`` + ``DIR/test/<class>``).
        root: the named data set's directory (default: its cache under ``~/.cache/jimunet``;
            MNIST's honours ``$JIMUNET_DATA``).
        download: fetch missing files (named data sets).
        progress: show download progress bars.
        folder_options: for a folder, passed to ``folder.load_folder`` (``size``, ``color``, ...).

    Returns:
        ``Splits(train, test, class_names, image_shape, source, name)``: ``train`` and ``test``
        are ``Dataset`` objects of uint8 images.

    Raises:
        ValueError: an unknown name that is no folder either. The loaders' errors (a
        ``RuntimeError`` subclass) when a data set cannot be obtained.
    """
    key = _ALIASES.get(str(name_or_path).lower()) if isinstance(name_or_path, str) else None
    if key is not None:  # a name wins over a folder of that name, which "./mnist" reaches
        if folder_options:
            raise ValueError(f"load: {', '.join(folder_options)} apply to image folders, not to {key}")
        if key == "mnist":
            where = Path(root).expanduser() if root is not None else mnist_root()
            return _splits(load_mnist(where, download, progress), MNIST_CLASS_NAMES, str(where), "mnist")
        if key == "fashion-mnist":
            arrays, source = load_fashion_mnist_arrays(root, download, progress)
            return _splits(idx_splits(arrays), FASHION_CLASS_NAMES, source, "fashion-mnist")
        data, names, path = load_cifar10_with_names(root, download, progress)
        return _splits(data, names, str(path), "cifar10")
    path = Path(os.fspath(name_or_path)).expanduser()
    if not path.is_dir():
        raise ValueError(f"load: {str(name_or_path)!r} is neither a data set jimunet knows "
                         f"({', '.join(NAMES)}) nor a folder of images")
    return load_folder(path, **folder_options)
