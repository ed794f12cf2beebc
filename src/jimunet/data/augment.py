"""Data augmentation for image batches: random shifts and crops by padding and cropping,
horizontal flips, and ``Compose`` to chain them.

Everything is vectorised over the batch: the padded batch is viewed as a stack of
every possible crop (a strided window view, no copy) and each sample's crop is picked
by fancy indexing with its own random offsets.
"""
from __future__ import annotations

import numpy as np

from .._messages import shown
from ..backend import xp_of
from ..random import resolve_rng


class _Seeded:
    """An augmentation whose draws come from ``self.rng`` alone: its state is the generator's,
    so a checkpoint resumes it exactly."""

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


class RandomShift(_Seeded):
    """Shift each image of an NHWC batch by a random whole number of pixels.

    Each image is padded by ``max_shift`` pixels on every side, repeating its edge
    pixels (MNIST's border is background, so a shifted digit keeps a clean background),
    and a crop of the original size is taken at an offset drawn uniformly from
    ``{0, ..., 2·max_shift}`` in each direction, independently per image: a shift of up
    to ``max_shift`` pixels in any direction. The draws come from ``rng`` only, so a seeded
    run is reproducible and ``state``/``set_state`` let a checkpoint resume it exactly.

    Args:
        max_shift: the largest shift in pixels (0 returns the batch unchanged).
        rng: Generator or int seed.

    Example:
        >>> import numpy as np
        >>> aug = RandomShift(2, rng=0)
        >>> x = np.zeros((4, 28, 28, 1), np.float32); x[:, 10:18, 10:18] = 1
        >>> y = aug(x)
        >>> y.shape, float(y.sum()) == float(x.sum())
        ((4, 28, 28, 1), True)
    """

    def __init__(self, max_shift: int = 2, rng=None):
        self.max_shift = _check_count(max_shift, "RandomShift", "max_shift")
        self.rng = resolve_rng(rng)

    def __repr__(self):
        return f"RandomShift(max_shift={self.max_shift})"

    def __call__(self, x):
        _check_batch(x, "RandomShift")
        return _pad_and_crop(x, self.max_shift, self.rng, "edge")


def _check_batch(x, who: str) -> None:
    if not hasattr(x, "ndim") or x.ndim != 4:
        raise ValueError(f"{who}: expected an NHWC batch (batch, height, width, channels), got shape "
                         f"{getattr(x, 'shape', type(x).__name__)}")


def _check_count(value, who: str, what: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{who}: {what} must be a non-negative int, got {shown(value)}")
    return int(value)


def _pad_and_crop(x, s: int, rng, mode: str):
    """Pad each image by ``s`` on every side (``mode`` as ``np.pad``) and crop the original size at
    offsets drawn from ``rng`` (rows first, then columns, one per image)."""
    n, h, w, c = x.shape
    if s == 0 or n == 0:
        return x
    xp = xp_of(x)
    oy = rng.integers(0, 2 * s + 1, n)
    ox = rng.integers(0, 2 * s + 1, n)
    xpad = xp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)), mode=mode)
    # windows[i, a, b] is the (c, h, w) crop of image i starting at row a, column b.
    windows = xp.lib.stride_tricks.sliding_window_view(xpad, (h, w), axis=(1, 2))
    crops = windows[xp.arange(n), xp.asarray(oy), xp.asarray(ox)]  # (n, c, h, w), a copy
    return xp.ascontiguousarray(crops.transpose(0, 2, 3, 1))


class RandomCrop(_Seeded):
    """Pad each image of an NHWC batch with ``padding`` zeros on every side and crop the original
    size at a random offset, independently per image (the CIFAR recipes' augmentation).

    Zero is black in pixels; ``BatchIterator`` and ``Trainer`` augment before normalising, so
    the padding is black whatever the normalisation. Offsets are uniform in
    ``{0, ..., 2·padding}`` in each direction, drawn from ``rng`` only.

    Example:
        >>> import numpy as np
        >>> y = RandomCrop(4, rng=0)(np.ones((8, 32, 32, 3), np.uint8))
        >>> y.shape, y.dtype, bool(y.min() == 0), bool(y.max() == 1)
        ((8, 32, 32, 3), dtype('uint8'), True, True)
    """

    def __init__(self, padding: int = 4, rng=None):
        self.padding = _check_count(padding, "RandomCrop", "padding")
        self.rng = resolve_rng(rng)

    def __repr__(self):
        return f"RandomCrop(padding={self.padding})"

    def __call__(self, x):
        _check_batch(x, "RandomCrop")
        return _pad_and_crop(x, self.padding, self.rng, "constant")


class RandomFlip(_Seeded):
    """Mirror each image of an NHWC batch left-right with probability 0.5, independently.

    Example:
        >>> import numpy as np
        >>> x = np.arange(2 * 1 * 3 * 1).reshape(2, 1, 3, 1)
        >>> y = RandomFlip(rng=1)(x)
        >>> all((y[i] == x[i]).all() or (y[i] == x[i, :, ::-1]).all() for i in range(2))
        True
    """

    def __init__(self, rng=None):
        self.rng = resolve_rng(rng)

    def __repr__(self):
        return "RandomFlip()"

    def __call__(self, x):
        _check_batch(x, "RandomFlip")
        n = x.shape[0]
        if n == 0:
            return x
        xp = xp_of(x)
        flip = xp.asarray(self.rng.random(n) < 0.5).reshape(n, 1, 1, 1)
        return xp.where(flip, x[:, :, ::-1], x)


class Compose:
    """Apply ``augmentations`` in order; its state is theirs, in that order.

    Example:
        >>> import numpy as np
        >>> aug = Compose([RandomCrop(4, rng=0), RandomFlip(rng=1)])
        >>> aug(np.zeros((2, 32, 32, 3), np.uint8)).shape, len(aug.state())
        ((2, 32, 32, 3), 2)
    """

    def __init__(self, augmentations):
        self.augmentations = list(augmentations)
        for a in self.augmentations:
            if not callable(a):
                raise ValueError(f"Compose: every augmentation must be callable, got {shown(a)}")

    def __repr__(self):
        return f"Compose({self.augmentations!r})"

    def __call__(self, x):
        for a in self.augmentations:
            x = a(x)
        return x

    def state(self) -> list:
        return [a.state() if hasattr(a, "state") else None for a in self.augmentations]

    def set_state(self, state) -> None:
        if not isinstance(state, (list, tuple)) or len(state) != len(self.augmentations):
            raise ValueError(f"Compose: the saved state is for {len(state) if isinstance(state, (list, tuple)) else '?'} "
                             f"augmentations, this one has {len(self.augmentations)}")
        for a, s in zip(self.augmentations, state):
            if s is not None and hasattr(a, "set_state"):
                a.set_state(s)
