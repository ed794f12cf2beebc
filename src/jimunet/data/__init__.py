"""Data loading: the IDX file format and the MNIST data set."""
from .idx import IDXFormatError, read_idx, write_idx
from .mnist import MNISTUnavailableError, load_mnist

__all__ = ["IDXFormatError", "read_idx", "write_idx", "MNISTUnavailableError", "load_mnist"]
