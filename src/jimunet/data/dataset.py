"""Data sets as the training loop sees them: the ``Dataset`` protocol, ``ArrayDataset`` over
arrays in memory, ``Subset``, the loaders' ``Splits``, and ``Normalize`` (pixels → model input).

A data set gives whole batches (``get_batch``), so that nothing on a hot path loops over samples
in Python: slicing for arrays, a thread pool for image files (``folder.ImageFolder``).

Example:
    >>> import numpy as np
    >>> ds = ArrayDataset(np.zeros((5, 28, 28), np.uint8), np.arange(5))
    >>> len(ds), ds.image_shape, ds.class_names
    (5, (28, 28, 1), ('0', '1', '2', '3', '4'))
    >>> x, y = ds.get_batch(np.array([4, 0]))
    >>> x.shape, y.tolist()
    ((2, 28, 28, 1), [4, 0])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, Tuple, runtime_checkable

import numpy as np

__all__ = ["Dataset", "ArrayDataset", "Subset", "Splits", "Normalize", "is_dataset"]


@runtime_checkable
class Dataset(Protocol):
    """What jimunet needs of a data set of labelled images.

    ``len(ds)``; ``ds[i] -> (image uint8 (H, W, C), label int)``; ``ds.get_batch(indices) ->
    (x (n, H, W, C), y int64 (n,))``, the fast path every batch takes; ``ds.class_names`` (one
    name per label, label ``k`` is ``class_names[k]``) and ``ds.image_shape`` ``(H, W, C)``.
    """

    class_names: Tuple[str, ...]
    image_shape: Tuple[int, int, int]

    def __len__(self) -> int: ...

    def __getitem__(self, i): ...

    def get_batch(self, indices): ...


def is_dataset(obj) -> bool:
    """True for a ``Dataset`` (anything with ``get_batch``), False for arrays."""
    return not hasattr(obj, "shape") and callable(getattr(obj, "get_batch", None))


def _indices(indices, n: int, who: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu" and idx.size:
        raise ValueError(f"{who}: indices must be integers, got {idx.dtype}")
    idx = idx.astype(np.int64, copy=False).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"{who}: indices must lie in [0, {n}), got {int(idx.min())}..{int(idx.max())}")
    return idx


class ArrayDataset:
    """A ``Dataset`` over arrays in memory: images ``x`` and integer labels ``y``.

    Args:
        x: ``(N, H, W, C)`` images (uint8 pixels, or floats: pixels or model inputs, as the
            caller's ``normalize`` expects), or ``(N, H, W)`` grayscale (seen as ``C = 1``, no copy).
        y: ``(N,)`` integer labels, each ``>= 0``.
        class_names: one name per class; default ``"0"``, ``"1"``, ... up to the largest label.

    Example:
        >>> import numpy as np
        >>> ds = ArrayDataset(np.zeros((3, 4, 4, 3), np.uint8), [0, 2, 1], ("cat", "dog", "emu"))
        >>> ds[1][0].shape, ds[1][1], ds.class_names[ds[1][1]]
        ((4, 4, 3), 2, 'emu')
    """

    def __init__(self, x, y, class_names: Sequence[str] | None = None):
        if not hasattr(x, "shape") or x.ndim not in (3, 4):
            raise ValueError(f"ArrayDataset: x must be images (N, H, W, C) or (N, H, W), got shape "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if x.ndim == 3:
            x = x.reshape(x.shape + (1,))
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"ArrayDataset: y must be one label per image, shape ({len(x)},), got {y.shape}")
        if y.size and (y.dtype.kind not in "iu" or y.min() < 0):
            raise ValueError(f"ArrayDataset: labels must be non-negative integers, got {y.dtype} "
                             f"{'' if y.dtype.kind not in 'iu' else f'down to {int(y.min())}'}".rstrip())
        self.x, self.y = x, y.astype(np.int64, copy=False)
        k = int(self.y.max()) + 1 if self.y.size else 0
        if class_names is None:
            class_names = [str(i) for i in range(k)]
        self.class_names = tuple(str(c) for c in class_names)
        if len(self.class_names) < k:
            raise ValueError(f"ArrayDataset: {len(self.class_names)} class names for labels up to {k - 1}")
        self.image_shape = tuple(int(d) for d in x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])

    def get_batch(self, indices):
        idx = _indices(indices, len(self), "ArrayDataset.get_batch")
        return self.x[idx], self.y[idx]

    def __repr__(self):
        return f"ArrayDataset({len(self)} images {self.image_shape} {self.x.dtype}, {len(self.class_names)} classes)"


class Subset:
    """The images of ``dataset`` at ``indices`` (in that order), e.g. a validation split.

    Example:
        >>> import numpy as np
        >>> ds = Subset(ArrayDataset(np.zeros((10, 2, 2), np.uint8), np.arange(10)), np.arange(7, 10))
        >>> len(ds), ds.get_batch([0, 2])[1].tolist()
        (3, [7, 9])
    """

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = _indices(indices, len(dataset), "Subset")
        self.class_names, self.image_shape = dataset.class_names, dataset.image_shape

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[int(self.indices[i])]

    def get_batch(self, indices):
        return self.dataset.get_batch(self.indices[_indices(indices, len(self), "Subset.get_batch")])

    def __repr__(self):
        return f"Subset({len(self)} of {self.dataset!r})"


@dataclass(frozen=True)
class Splits:
    """What a loader returns: the ``train`` and ``test`` data sets and what describes them.

    ``source`` says where the files came from (a path or URL), ``name`` the data set
    (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` or ``"folder"``).
    """

    train: object
    test: object
    class_names: Tuple[str, ...]
    image_shape: Tuple[int, int, int]
    source: str
    name: str


class Normalize:
    """Pixels → model input, per channel and in pixel units: ``(x - mean) / std`` as float32.

    Applied to a whole batch (any leading shape; the last axis is the channel). ``mean`` and
    ``std`` are one number for every channel, or one per channel.

    Example:
        >>> import numpy as np
        >>> Normalize.mnist()(np.array([[0, 255]], np.uint8)).tolist()
        [[-0.5, 0.5]]
        >>> Normalize([125.0, 0, 0], [2.0, 1, 1])(np.full((1, 3), 127, np.uint8)).tolist()
        [[1.0, 127.0, 127.0]]
        >>> Normalize.from_dict(Normalize.mnist().to_dict())
        Normalize(mean=(127.5,), std=(255.0,))
    """

    def __init__(self, mean, std):
        m = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        s = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if m.ndim != 1 or s.ndim != 1 or not m.size or not s.size:
            raise ValueError(f"Normalize: mean and std must be numbers or lists of numbers, got {mean!r}, {std!r}")
        if not (np.isfinite(m).all() and np.isfinite(s).all()) or (s <= 0).any():
            raise ValueError(f"Normalize: mean must be finite and std finite and positive, got {mean!r}, {std!r}")
        if m.size != s.size and 1 not in (m.size, s.size):
            raise ValueError(f"Normalize: {m.size} means but {s.size} standard deviations")
        self.mean, self.std = tuple(float(v) for v in m), tuple(float(v) for v in s)

    @classmethod
    def mnist(cls) -> "Normalize":
        """``(x - 127.5) / 255``: exactly ``images.preprocess``, the digit models' scaling."""
        return cls(127.5, 255.0)

    @property
    def channels(self) -> int:
        """The channel count it fits (1 when it fits any)."""
        return max(len(self.mean), len(self.std))

    def __call__(self, x, dtype=np.float32):
        x = np.asarray(x)
        if self.channels > 1 and (x.ndim == 0 or x.shape[-1] != self.channels):
            raise ValueError(f"Normalize: expected images with {self.channels} channels (last axis), got shape "
                             f"{x.shape}")
        t = np.dtype(dtype).type
        # float32 constants, as preprocess's dtype(127.5) and dtype(255): the same IEEE operations
        # element by element, so the MNIST numbers stay bit-identical.
        mean = np.asarray(self.mean, dtype=t) if len(self.mean) > 1 else t(self.mean[0])
        std = np.asarray(self.std, dtype=t) if len(self.std) > 1 else t(self.std[0])
        return (x.astype(t) - mean) / std

    def to_dict(self) -> dict:
        """``{"mean": [...], "std": [...]}`` (JSON), for model metadata."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d) -> "Normalize":
        """Inverse of ``to_dict``; ValueError naming what is wrong."""
        if not isinstance(d, dict) or "mean" not in d or "std" not in d:
            raise ValueError(f"Normalize: expected a dict with 'mean' and 'std', got {d!r}")
        try:
            return cls(d["mean"], d["std"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"Normalize: bad 'mean'/'std' {d!r} ({e})") from None

    @classmethod
    def estimate(cls, dataset, samples: int = 10_000, rng=0, batch_size: int = 500) -> "Normalize":
        """Per-channel mean and std in pixel units of up to ``samples`` images of ``dataset``.

        The images are a seeded random choice (all of them when there are fewer).
        """
        n = len(dataset)
        if n == 0:
            raise ValueError("Normalize.estimate: the data set is empty")
        idx = np.sort(np.random.default_rng(rng).permutation(n)[:samples]) if n > samples else np.arange(n)
        total = total_sq = 0.0
        count = 0
        for i in range(0, len(idx), batch_size):
            xb = np.asarray(dataset.get_batch(idx[i:i + batch_size])[0], dtype=np.float64)
            xb = xb.reshape(-1, xb.shape[-1])
            total, total_sq, count = total + xb.sum(0), total_sq + (xb * xb).sum(0), count + len(xb)
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
        return cls(mean.tolist(), np.where(std > 0, std, 1.0).tolist())

    def __eq__(self, other):
        return isinstance(other, Normalize) and (self.mean, self.std) == (other.mean, other.std)

    def __hash__(self):
        return hash((self.mean, self.std))

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"
