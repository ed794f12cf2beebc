"""``Parameter``: a trainable array and the gradient accumulated for it."""
from __future__ import annotations

import numpy as np

from .backend import to_device, xp_of
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

    @classmethod
    def placeholder(cls, shape, dtype, name: str = "") -> "Parameter":
        """A parameter of this shape and dtype that takes no memory (a read-only zero view).

        Used while rebuilding a model from a file, whose weights replace it (``assign``).
        """
        p = cls.__new__(cls)
        p.data = p.grad = np.broadcast_to(np.zeros((), dtype), tuple(shape))
        p.name = name
        return p

    @property
    def is_placeholder(self) -> bool:
        return isinstance(self.data, np.ndarray) and not self.data.flags.writeable and \
            all(s == 0 for s in self.data.strides)

    def assign(self, value) -> None:
        """Set the values from ``value`` (same shape), keeping this Parameter's dtype.

        A placeholder gets its own new arrays; otherwise the values are copied in place, so
        anything holding ``data`` (an optimizer's state, a view) sees them.
        """
        xp = xp_of(self.data)
        if self.is_placeholder:
            # placeholders exist only on the host; C order, as every array jimunet makes
            self.data = np.array(value, dtype=self.data.dtype, order="C")
            self.grad = np.zeros_like(self.data)
        else:
            self.data[...] = xp.asarray(value)

    def to(self, device) -> "Parameter":
        """Move ``data`` and ``grad`` to ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``); returns self."""
        self.data, self.grad = to_device(self.data, device), to_device(self.grad, device)
        return self

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self) -> int:
        return int(self.data.size)

    def zero_grad(self) -> None:
        pfor(lambda sl: self.grad.reshape(-1)[sl].fill(0), self.grad.size, self.grad.size, like=self.grad, blas=False)

    def __repr__(self) -> str:
        return f"Parameter(name={self.name!r}, shape={tuple(self.data.shape)}, dtype={self.data.dtype})"
