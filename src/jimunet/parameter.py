"""``Parameter``: a trainable array and the gradient accumulated for it."""
from __future__ import annotations

from .backend import xp_of
from .parallel import pfor


class Parameter:
    """A trainable array with its gradient.

    ``grad`` has the shape and dtype of ``data``; layers ADD into it during
    ``backward`` (PyTorch semantics) and ``zero_grad`` resets it.

    Args:
        data: the array (NumPy or CuPy). It is owned, not copied.
        name: a short label used in summaries and checkpoints (``"weight"``, ``"bias"``).

    Example:
        >>> import numpy as np
        >>> p = Parameter(np.zeros(3, np.float32), "bias")
        >>> p.grad.shape
        (3,)
    """

    __slots__ = ("data", "grad", "name")

    def __init__(self, data, name: str = ""):
        self.data = data
        self.grad = xp_of(data).zeros_like(data)
        self.name = name

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self) -> int:
        return int(self.data.size)

    def zero_grad(self) -> None:
        pfor(lambda sl: self.grad.reshape(-1)[sl].fill(0), self.grad.size, self.grad.size)

    def __repr__(self) -> str:
        return f"Parameter(name={self.name!r}, shape={tuple(self.data.shape)}, dtype={self.data.dtype})"
