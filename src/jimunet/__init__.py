"""jimunet (积木, "building blocks"): convolutional networks written on NumPy alone.

Example:
    >>> import numpy as np, jimunet as jn
    >>> jn.set_seed(0)
    >>> model = jn.Sequential([jn.layers.Conv2D(1, 8, 3), jn.layers.ReLU(), jn.layers.MaxPool2D(2),
    ...                        jn.layers.Flatten(), jn.layers.Dense(14 * 14 * 8, 10)])
    >>> loss_fn = jn.losses.SoftmaxCrossEntropy()
    >>> opt = jn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> x, y = np.random.rand(4, 28, 28, 1).astype(np.float32), np.array([0, 1, 2, 3])
    >>> loss = loss_fn.forward(model.forward(x, training=True), y)
    >>> _ = model.backward(loss_fn.backward()); opt.step(); opt.zero_grad()
"""
from ._version import __version__

from . import backend, data, datasets, distributed, functional, init, layers, losses, models, onnx, optim  # noqa: E402
from .allocator import keep_freed_memory  # noqa: E402
from .backend import DeviceError, asarray  # noqa: E402
from .gradcheck import GradcheckError, gradcheck  # noqa: E402
from .model import Sequential, Summary, load  # noqa: E402
from .graph import Input, Model  # noqa: E402
from .parallel import get_num_threads, set_num_threads  # noqa: E402
from .parameter import Parameter  # noqa: E402
from .random import set_seed  # noqa: E402
from .serialization import CheckpointError  # noqa: E402
from . import training  # noqa: E402
from .training import Trainer, evaluate, fit  # noqa: E402

__all__ = ["backend", "data", "datasets", "distributed", "functional", "init", "layers", "losses", "models", "onnx", "optim",
           "gradcheck", "GradcheckError", "Sequential", "Model", "Input", "Summary", "load", "Parameter", "set_seed",
           "CheckpointError", "set_num_threads", "get_num_threads", "asarray", "DeviceError", "training", "Trainer",
           "fit", "evaluate", "keep_freed_memory"]
