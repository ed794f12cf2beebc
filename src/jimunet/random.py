"""Seeded randomness: every random draw in jimunet comes from an explicit Generator.

``set_seed(n)`` reseeds the default Generator. Layers built without their own
``rng`` take one derived from it at construction time, so building the same model
after the same ``set_seed`` gives the same weights and the same dropout masks.
"""
from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from ._messages import shown

_default = np.random.default_rng(0)


def set_seed(seed: int) -> None:
    """Reseed the default Generator (weights and dropout masks of layers built afterwards)."""
    global _default
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"set_seed expects a non-negative integer, got {shown(seed)}")
    _default = np.random.default_rng(int(seed))


def default_rng() -> np.random.Generator:
    """The current default Generator."""
    return _default


def resolve_rng(rng=None) -> np.random.Generator:
    """``rng`` itself, a new Generator if it is an int seed, else the default Generator."""
    if rng is None:
        return _default
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def spawn_rng(rng=None) -> np.random.Generator:
    """A new independent Generator seeded from ``rng`` (or the default one)."""
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    parent = resolve_rng(rng)
    return np.random.default_rng(parent.integers(0, 2**63 - 1))


# Data-parallel training runs each process on a slice of the batch; random layers must still
# draw what one process would draw for the whole batch (see ``batch_shard``).
_shard: contextvars.ContextVar = contextvars.ContextVar("jimunet_batch_shard", default=None)


@contextlib.contextmanager
def batch_shard(start: int, stop: int, total: int):
    """Inside, the batches a model sees are rows ``start:stop`` of a batch of ``total``.

    Random layers (``Dropout``) then draw for all ``total`` rows, from the same stream, and
    keep rows ``start:stop``: each process of a data-parallel job gets exactly the masks a
    single process would use for its samples, and every process's Generator stays in step.
    """
    if not 0 <= start < stop <= total:
        raise ValueError(f"batch_shard: need 0 <= start < stop <= total, got {start}, {stop}, {total}")
    token = _shard.set((int(start), int(stop), int(total)))
    try:
        yield
    finally:
        _shard.reset(token)


def current_batch_shard():
    """``(start, stop, total)`` inside ``batch_shard``, else None."""
    return _shard.get()
