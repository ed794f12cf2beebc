"""Ready-made architectures."""
from __future__ import annotations

import numpy as np

from . import init
from .layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from .model import Sequential
from .random import resolve_rng, spawn_rng


def mnist_cnn(rng=None, dropout: float = 0.5, num_classes: int = 10, dtype=np.float32) -> Sequential:
    """The network of TensorFlow's MNIST sample (``convolutional.py``), with its initialisation.

    conv 5×5×32 SAME → ReLU → maxpool 2×2/2 SAME → conv 5×5×64 SAME → ReLU → maxpool →
    fc 3136→512 → ReLU → dropout → fc 512→num_classes. Weights truncated normal with std 0.1;
    biases 0 for conv1 and 0.1 for the others, as the sample sets them.

    Args:
        rng: Generator or int seed for the weights and the dropout masks (default:
            the one ``jn.set_seed`` seeds).
        dropout: drop probability of the dropout layer (the sample's keep_prob 0.5).
        num_classes: outputs of the last layer.
        dtype: parameter dtype.

    Example:
        >>> import jimunet as jn
        >>> jn.models.mnist_cnn(rng=0).summary((28, 28, 1)).total_params
        1663370
    """
    rng = resolve_rng(rng)
    w, b0, b1 = init.truncated_normal(0.1), init.zeros(), init.constant(0.1)
    return Sequential([
        Conv2D(1, 32, 5, padding="same", weight_init=w, bias_init=b0, rng=rng, dtype=dtype),
        ReLU(),
        MaxPool2D(2, 2, padding="same"),
        Conv2D(32, 64, 5, padding="same", weight_init=w, bias_init=b1, rng=rng, dtype=dtype),
        ReLU(),
        MaxPool2D(2, 2, padding="same"),
        Flatten(),
        Dense(7 * 7 * 64, 512, weight_init=w, bias_init=b1, rng=rng, dtype=dtype),
        ReLU(),
        Dropout(dropout, rng=spawn_rng(rng)),
        Dense(512, num_classes, weight_init=w, bias_init=b1, rng=rng, dtype=dtype),
    ])
