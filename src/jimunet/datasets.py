"""Ready-to-use data sets (Keras-style ``jn.datasets.load_mnist()``), as arrays.

Each returns ``((x_train, y_train), (x_test, y_test))``: uint8 NHWC images, int64 labels.
``jn.data.load(name)`` gives the same as ``Dataset`` objects with their class names.

Example:
    >>> import jimunet as jn
    >>> (x_train, y_train), (x_test, y_test) = jn.datasets.load_mnist()  # doctest: +SKIP
    >>> (x_train, y_train), (x_test, y_test) = jn.datasets.load_fashion_mnist()  # doctest: +SKIP
"""
from .data.cifar import CIFAR10UnavailableError, load_cifar10
from .data.fashion import FashionMNISTUnavailableError, load_fashion_mnist
from .data.mnist import MNISTUnavailableError, load_mnist

__all__ = ["load_mnist", "MNISTUnavailableError", "load_fashion_mnist", "FashionMNISTUnavailableError",
           "load_cifar10", "CIFAR10UnavailableError"]
