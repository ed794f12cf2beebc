"""Data augmentation for image batches: random shifts by padding and cropping.

Everything is vectorised over the batch: the padded batch is viewed as a stack of
every possible crop (a strided window view, no copy) and each sample's crop is picked
by fancy indexing with its own random offsets.
"""
from __future__ import annotations

import numpy as np

from .._messages import shown
from ..backend import xp_of
from ..random import resolve_rng


class RandomShift:
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
        if not isinstance(max_shift, (int, np.integer)) or isinstance(max_shift, bool) or max_shift < 0:
            raise ValueError(f"RandomShift: max_shift must be a non-negative int, got {shown(max_shift)}")
        self.max_shift = int(max_shift)
        self.rng = resolve_rng(rng) if not isinstance(rng, (int, np.integer)) else np.random.default_rng(int(rng))

    def __repr__(self):
        return f"RandomShift(max_shift={self.max_shift})"

    def __call__(self, x):
        if not hasattr(x, "ndim") or x.ndim != 4:
            raise ValueError(f"RandomShift: expected an NHWC batch (batch, height, width, channels), got shape "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        s = self.max_shift
        n, h, w, c = x.shape
        if s == 0 or n == 0:
            return x
        xp = xp_of(x)
        oy = self.rng.integers(0, 2 * s + 1, n)
        ox = self.rng.integers(0, 2 * s + 1, n)
        xpad = xp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)), mode="edge")
        # windows[i, a, b] is the (c, h, w) crop of image i starting at row a, column b.
        windows = xp.lib.stride_tricks.sliding_window_view(xpad, (h, w), axis=(1, 2))
        crops = windows[xp.arange(n), xp.asarray(oy), xp.asarray(ox)]  # (n, c, h, w), a copy
        return xp.ascontiguousarray(crops.transpose(0, 2, 3, 1))

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
