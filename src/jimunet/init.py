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


def torch_uniform():
    """PyTorch's default for ``Conv2d`` and ``Linear`` weights: U(-l, l) with ``l = 1/sqrt(fan_in)``."""
    def init(shape, rng, dtype=np.float32):
        fan_in, _ = _fans(shape)
        lim = 1.0 / math.sqrt(fan_in)
        return rng.uniform(-lim, lim, shape).astype(dtype)
    init.config = {"name": "torch_uniform"}
    return init


def partial_dirac():
    """``torch_uniform``, then for a conv (HWIO) the first ``min(in, out)`` filters set to
    identities: filter ``i`` passes input channel ``i`` through its kernel's centre tap
    (airbench's partial identity initialisation, ``torch.nn.init.dirac_`` on those filters)."""
    base = torch_uniform()

    def init(shape, rng, dtype=np.float32):
        if len(shape) != 4:
            raise ValueError(f"partial_dirac: expected a conv weight shape (kh, kw, in, out), got {tuple(shape)}")
        w = base(shape, rng, dtype)
        n = min(shape[2], shape[3])
        w[:, :, :, :n] = 0
        w[shape[0] // 2, shape[1] // 2, np.arange(n), np.arange(n)] = 1
        return w
    init.config = {"name": "partial_dirac"}
    return init


def patch_whitening(images, kernel_size: int = 2, eps: float = 5e-4):
    """HWIO weights of a ``kernel_size`` conv that whitens the patches of ``images``.

    The ``n = k·k·C`` eigenvectors of the patches' (uncentred) covariance, each divided by
    ``sqrt(eigenvalue + eps)``, then the same filters negated: ``2n`` filters, largest
    eigenvalue first. The conv's first ``n`` outputs have (up to ``eps``) the identity as
    covariance over these patches, so the first layer starts decorrelated, as in airbench
    (whose recipe freezes these weights).

    Args:
        images: float array (N, H, W, C), already normalised as the network's inputs are.
        kernel_size: the patch size ``k`` (airbench: 2).
        eps: added to each eigenvalue (airbench: 5e-4).

    Returns:
        float64 array (k, k, C, 2·k·k·C).
    """
    x = np.asarray(images)
    k = int(kernel_size)
    if x.ndim != 4 or x.dtype.kind != "f" or not len(x) or min(x.shape[1:3]) < k or k < 1:
        raise ValueError(f"patch_whitening: expected float images (N, H, W, C) at least {k}x{k} and "
                         f"N >= 1, got {x.dtype} array of shape {x.shape}")
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"patch_whitening: eps must be a positive number, got {shown(eps)}")
    c = x.shape[3]
    patches = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # N, H', W', C, k, k
    flat = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, k * k * c).astype(np.float64)
    if not np.isfinite(flat).all():
        raise ValueError("patch_whitening: the images contain NaN or infinite values")
    cov = flat.T @ flat / len(flat)
    values, vectors = np.linalg.eigh(cov)
    filters = (vectors / np.sqrt(values + eps)).T[::-1]  # rows: filters, largest eigenvalue first
    filters = np.concatenate([filters, -filters])
    return filters.reshape(-1, k, k, c).transpose(1, 2, 3, 0)


_REGISTRY = {f.__name__: f for f in (zeros, constant, truncated_normal, he_normal, he_uniform,
                                      glorot_uniform, glorot_normal, torch_uniform, partial_dirac)}


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
