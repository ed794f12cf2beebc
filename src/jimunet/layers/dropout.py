"""Inverted dropout with its own seeded Generator."""
from __future__ import annotations

import math
from typing import NamedTuple

from ..backend import uniform
from ..random import current_batch_shard, resolve_rng, spawn_rng
from .base import Layer, building_placeholders, check_number, register


class DropoutCache(NamedTuple):
    """What ``Dropout.backward`` needs: the input's shape and the scaled mask (None: identity)."""
    shape: tuple
    mask: object


@register
class Dropout(Layer):
    """Zero each activation with probability ``rate`` during training, scaling the survivors
    by ``1/(1-rate)`` so the expected value is unchanged; identity at evaluation.

    Backward applies the same mask and scale. (The ai-edu tutorial's layer is classic dropout:
    a 0/1 mask in training, ``× (1-rate)`` at test, and a mask-only backward, consistent as
    written; that mask-only backward under this inverted forward would make every gradient
    ``1-rate`` times too small, which ``jn.gradcheck`` catches.)

    The generator is the layer's one stream: a Dropout used at several nodes of a
    ``jn.Model`` draws each node's mask from it in turn, and checkpoints save it
    (``Network.rng_states``). The mask of the last call is the layer's ``cache``.

    Args:
        rate: probability of DROPPING, in ``[0, 1)`` (Keras/PyTorch meaning; the TF 1.x
            sample's ``keep_prob=0.5`` is the same as ``rate=0.5``).
        rng: Generator (used as is) or int seed for the masks; by default a new one spawned
            from the default Generator at construction, so ``jn.set_seed`` fixes the masks.

    Shape:
        any; output has the input's shape.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> d = jn.layers.Dropout(0.5, rng=0)
        >>> sorted(set(d(np.ones(1000), training=True).tolist()))
        [0.0, 2.0]
    """

    per_sample = True

    def __init__(self, rate: float, rng=None):
        self.rate = check_number("Dropout", "rate", rate, 0, 1, high_open=True)
        # Its own stream, so adding or removing other random layers leaves these masks alone.
        # A layer rebuilt from a file draws nothing at load time (loading leaves the default
        # Generator alone); it spawns its stream when first used.
        self._rng = None if rng is None and building_placeholders() else \
            spawn_rng() if rng is None else resolve_rng(rng)

    @property
    def rng(self):
        if self._rng is None:
            self._rng = spawn_rng()
        return self._rng

    @rng.setter
    def rng(self, value):
        self._rng = value

    def describe(self):
        return f"Dropout(rate={self.rate})"

    def get_config(self):
        return {"rate": self.rate}

    def flops(self, input_shape):
        return math.prod(input_shape)

    def forward(self, x, training: bool = False):
        self._check_input(x)
        if not training or self.rate == 0.0:
            self.cache = DropoutCache(x.shape, None)
            return x
        # One uniform draw per activation, in the input's precision (float32 halves the work).
        dtype = x.dtype if x.dtype.itemsize in (4, 8) else "float64"
        shard = current_batch_shard()
        if shard is None:
            u = uniform(self.rng, x.shape, dtype, like=x)
        else:  # x is rows start:stop of a larger batch: draw the whole batch's mask, keep ours
            start, stop, total = shard
            if x.shape[0] != stop - start:
                raise ValueError(f"{self.describe()}: inside batch_shard({start}, {stop}, {total}) expected "
                                 f"{stop - start} samples, got {x.shape[0]}")
            u = uniform(self.rng, (total, *x.shape[1:]), dtype, like=x)[start:stop]
        mask = (u >= self.rate).astype(x.dtype)
        mask *= 1.0 / (1.0 - self.rate)
        self.cache = DropoutCache(x.shape, mask)
        return x * mask

    def backward(self, grad, input_grad: bool = True):
        if self.cache is None:
            raise self._no_forward()
        shape, mask = self.cache
        self._check_grad(grad, shape)
        return grad if mask is None else grad * mask
