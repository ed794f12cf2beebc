"""Ready-to-use data sets (Keras-style ``jn.datasets.load_mnist()``).

Example:
    >>> import jimunet as jn
    >>> (x_train, y_train), (x_test, y_test) = jn.datasets.load_mnist()  # doctest: +SKIP
"""
from .data.mnist import MNISTUnavailableError, load_mnist

__all__ = ["load_mnist", "MNISTUnavailableError"]
