"""Data sets and batches: the ``Dataset`` protocol, ``ArrayDataset``, ``Subset``, ``Normalize``,
``BatchIterator``; the loaders (MNIST, Fashion-MNIST, CIFAR-10, image folders) behind ``load``;
the IDX file format; augmentation of training batches.

Example:
    >>> import numpy as np, jimunet as jn
    >>> ds = jn.data.ArrayDataset(np.zeros((6, 28, 28), np.uint8), np.arange(6) % 2)
    >>> it = jn.data.BatchIterator(ds, 4, shuffle=True, rng=0, normalize=jn.data.Normalize.mnist())
    >>> [xb.shape for xb, yb in it]
    [(4, 28, 28, 1), (2, 28, 28, 1)]
"""
from . import augment
from .augment import Compose, RandomCrop, RandomFlip, RandomShift
from .batching import BatchIterator
from .cifar import CIFAR10UnavailableError, load_cifar10
from .dataset import ArrayDataset, Dataset, Normalize, Splits, Subset, is_dataset
from .download import DataUnavailableError
from .fashion import FashionMNISTUnavailableError, load_fashion_mnist
from .folder import ImageFolder, load_folder
from .idx import IDXFormatError, read_idx, write_idx
from .loaders import load
from .mnist import MNISTUnavailableError, load_mnist

__all__ = ["augment", "RandomShift", "RandomCrop", "RandomFlip", "Compose", "Dataset", "ArrayDataset", "Subset",
           "Splits", "Normalize", "BatchIterator", "is_dataset", "load", "IDXFormatError", "read_idx", "write_idx",
           "DataUnavailableError", "MNISTUnavailableError", "load_mnist", "FashionMNISTUnavailableError",
           "load_fashion_mnist", "CIFAR10UnavailableError", "load_cifar10", "ImageFolder",
           "load_folder"]
