"""Data loading: the IDX file format and the MNIST data set; augmentation of training batches."""
from . import augment
from .augment import RandomShift
from .folder import ImageFolder, load_folder
from .idx import IDXFormatError, read_idx, write_idx
from .mnist import MNISTUnavailableError, load_mnist

__all__ = ["augment", "RandomShift", "IDXFormatError", "read_idx", "write_idx", "MNISTUnavailableError", "load_mnist",
           "ImageFolder", "load_folder"]
