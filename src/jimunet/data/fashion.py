"""Fashion-MNIST (Zalando Research): 70,000 28×28 grayscale images of 10 kinds of clothing, in
MNIST's IDX format and under MNIST's file names.

Sources, in order: the cache directory; Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``, read in place); the official URLs. Whatever the source,
the content is checked against the SHA-256 of the official files' content.

The official .gz files' MD5s are those the Fashion-MNIST README publishes; their SHA-256s were
computed from the official files as rebuilt from Debian's: Debian's .gz files differ from the
official ones only in the gzip header (no file name, another time stamp): with the official
header put back, each is byte for byte the official file (its MD5 is the published one, and
the git blob hash is that of the file in the zalandoresearch/fashion-mnist repository). The
content SHA-256s below are of the uncompressed IDX files, which are the same in both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from .download import DataUnavailableError, FileSpec, IDXSet, data_home, idx_splits, load_idx_set, register

__all__ = ["load_fashion_mnist", "FashionMNISTUnavailableError", "CLASS_NAMES", "DEBIAN_DIR"]

Split = Tuple[np.ndarray, np.ndarray]

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

_FILES: Dict[str, FileSpec] = {
    "train_images": FileSpec(
        "train-images-idx3-ubyte", (60000, 28, 28),
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    ),
    "train_labels": FileSpec(
        "train-labels-idx1-ubyte", (60000,),
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "25c81989df183df01b3e8a0aad5dffbe",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    ),
    "test_images": FileSpec(
        "t10k-images-idx3-ubyte", (10000, 28, 28),
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "bef4ecab320f06d8554ea6380940ec79",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    ),
    "test_labels": FileSpec(
        "t10k-labels-idx1-ubyte", (10000,),
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        "bb300cfdad3c16e7a12a480ee83cd310",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    ),
}

# The addresses the Fashion-MNIST README gives: its S3 bucket, then the files in its repository.
MIRRORS: Tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # plain http: every file is checked
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)


class FashionMNISTUnavailableError(DataUnavailableError):
    """Fashion-MNIST is not in the cache, nor installed, and could not be downloaded."""


def default_root() -> Path:
    """``~/.cache/jimunet/fashion-mnist``: where downloaded files go when no ``root`` is given."""
    return data_home() / "fashion-mnist"


def idx_set() -> IDXSet:
    """Fashion-MNIST's table, read from the module's ``_FILES``, ``MIRRORS`` and ``DEBIAN_DIR`` when called."""
    return IDXSet("Fashion-MNIST", _FILES, MIRRORS, (DEBIAN_DIR,), FashionMNISTUnavailableError,
                  f"On Debian or Ubuntu: apt-get install dataset-fashion-mnist (installs them in {DEBIAN_DIR}).")


register(idx_set())


def load_fashion_mnist(root=None, download: bool = True, progress: bool = True) -> Tuple[Split, Split]:
    """Load Fashion-MNIST: ``((x_train, y_train), (x_test, y_test))``, as ``load_mnist`` does.

    Args:
        root: directory of the four files (plain or ``.gz``); default
            ``~/.cache/jimunet/fashion-mnist``. Files missing there are read from Debian's
            package when it is installed, else (with ``download``) downloaded into ``root``.
        download: fetch missing files from the official URLs.
        progress: show download progress bars.

    Returns:
        ``x_train`` uint8 ``(60000, 28, 28, 1)``, ``y_train`` int64 ``(60000,)`` (class
        ``CLASS_NAMES[k]``), ``x_test`` uint8 ``(10000, 28, 28, 1)``, ``y_test`` int64 ``(10000,)``.

    Raises:
        FashionMNISTUnavailableError: (a ``RuntimeError``) files missing everywhere, or a file
            that is not Fashion-MNIST's; the message says how to get them.

    Example:
        >>> (x, y), (xt, yt) = load_fashion_mnist()  # doctest: +SKIP
        >>> x.shape, CLASS_NAMES[y[0]]               # doctest: +SKIP
        ((60000, 28, 28, 1), 'Ankle boot')
    """
    arrays, _ = load_fashion_mnist_arrays(root, download, progress)
    return idx_splits(arrays)


def load_fashion_mnist_arrays(root=None, download: bool = True, progress: bool = True,
                              ) -> Tuple[Dict[str, np.ndarray], str]:
    """The four arrays (key → uint8 array) and where they were found."""
    root = Path(root).expanduser() if root is not None else default_root()
    return load_idx_set(idx_set(), root, download, progress)
