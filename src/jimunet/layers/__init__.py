"""Stateful building blocks, one family per file."""
from .activations import GELU, LeakyReLU, ReLU, Sigmoid, Tanh
from .base import Layer, from_config, register
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .merge import Add, Concatenate
from .normalization import BatchNorm
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .reshape import Flatten

__all__ = ["Layer", "Conv2D", "MaxPool2D", "AvgPool2D", "Dense", "ReLU", "GELU", "LeakyReLU", "Sigmoid", "Tanh",
           "Flatten", "Dropout", "BatchNorm", "Add", "Concatenate", "GlobalAvgPool2D", "from_config",
           "register"]
