"""Weight initialisers. Each takes ``(shape, rng, dtype)`` and returns a NumPy array.

Fan-in and fan-out follow the layouts used here: Dense ``(in, out)`` and conv HWIO
``(kh, kw, in, out)``, so ``fan_in = kh*kw*in`` and ``fan_out = kh*kw*out``.

Example:
    >>> import numpy as np, jimunet as jn
    >>> w = jn.init.truncated_normal(0.1)((5, 5, 1, 32), np.random.default_rng(0), np.float32)
    >>> bool(abs(w).max() <= 0.2)
    True
"""
from __future__ import annotations

import math

import numpy as np

from ._messages import shown


def _fans(shape):
    if len(shape) < 2:
        return int(np.prod(shape)) or 1, int(np.prod(shape)) or 1
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def zeros():
    """All zeros."""
    def init(shape, rng, dtype=np.float32):
        return np.zeros(shape, dtype)
    init.config = {"name": "zeros"}
    return init


def constant(value: float):
    """Every entry equal to ``value``."""
    def init(shape, rng, dtype=np.float32):
        return np.full(shape, value, dtype)
    init.config = {"name": "constant", "value": float(value)}
    return init


def _truncated(rng, shape, std, mean=0.0):
    """Normal samples; any beyond 2 std are redrawn (TensorFlow's truncated_normal)."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std + mean


def truncated_normal(stddev: float = 0.1, mean: float = 0.0):
    """Normal(mean, stddev) with values beyond 2 stddev redrawn, as ``tf.truncated_normal``."""
    def init(shape, rng, dtype=np.float32):
        return _truncated(rng, shape, stddev, mean).astype(dtype)
    init.config = {"name": "truncated_normal", "stddev": float(stddev), "mean": float(mean)}
    return init


def he_normal():
    """He et al. 2015: truncated normal with std ``sqrt(2/fan_in)/.8796`` (Keras' he_normal)."""
    def init(shape, rng, dtype=np.float32):
        fan_in, _ = _fans(shape)
        # .87962566 is the std of a unit normal truncated at 2 std; dividing keeps the variance.
        return _truncated(rng, shape, math.sqrt(2.0 / fan_in) / 0.87962566103423978).astype(dtype)
    init.config = {"name": "he_normal"}
    return init


def he_uniform():
    """He et al. 2015 uniform: U(-l, l) with ``l = sqrt(6/fan_in)``."""
    def init(shape, rng, dtype=np.float32):
        fan_in, _ = _fans(shape)
        lim = math.sqrt(6.0 / fan_in)
        return rng.uniform(-lim, lim, shape).astype(dtype)
    init.config = {"name": "he_uniform"}
    return init


def glorot_uniform():
    """Glorot & Bengio 2010: U(-l, l) with ``l = sqrt(6/(fan_in+fan_out))`` (Keras' default)."""
    def init(shape, rng, dtype=np.float32):
        fan_in, fan_out = _fans(shape)
        lim = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-lim, lim, shape).astype(dtype)
    init.config = {"name": "glorot_uniform"}
    return init


def glorot_normal():
    """Glorot & Bengio 2010, truncated normal with std ``sqrt(2/(fan_in+fan_out))/.8796``."""
    def init(shape, rng, dtype=np.float32):
        fan_in, fan_out = _fans(shape)
        return _truncated(rng, shape, math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978).astype(dtype)
    init.config = {"name": "glorot_normal"}
    return init


_REGISTRY = {f.__name__: f for f in (zeros, constant, truncated_normal, he_normal, he_uniform,
                                      glorot_uniform, glorot_normal)}


def get(spec):
    """An initialiser from a callable, a name (``"he_normal"``) or a config dict."""
    if callable(spec):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, dict) and spec.get("name") in _REGISTRY:
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        return _REGISTRY[spec["name"]](**kwargs)
    raise ValueError(f"unknown initialiser: expected one of {sorted(_REGISTRY)} or a callable, got {shown(spec)}")


def config_of(init) -> dict | None:
    """The JSON description of an initialiser, or None for a user's own callable."""
    return getattr(init, "config", None)
