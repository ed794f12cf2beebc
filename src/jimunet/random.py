"""Seeded randomness: every random draw in jimunet comes from an explicit Generator.

``set_seed(n)`` reseeds the default Generator. Layers built without their own
``rng`` take one derived from it at construction time, so building the same model
after the same ``set_seed`` gives the same weights and the same dropout masks.
"""
from __future__ import annotations

import numpy as np

_default = np.random.default_rng(0)


def set_seed(seed: int) -> None:
    """Reseed the default Generator (weights and dropout masks of layers built afterwards)."""
    global _default
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"set_seed expects a non-negative integer, got {seed!r}")
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
