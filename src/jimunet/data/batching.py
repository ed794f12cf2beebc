"""Batches from a ``Dataset``: ``BatchIterator``, and ``prefetch``, which fetches batches ahead.

Only fetching (``get_batch``: slicing arrays, decoding files) runs in the background thread.
Everything that draws random numbers (the shuffling order, augmentation) runs on the consumer's
thread in batch order, so a seeded run is the same whether or not batches are prefetched, and a
checkpoint taken between epochs resumes exactly.
"""
from __future__ import annotations

import queue
import threading

import numpy as np

from ..backend import xp_of
from ..random import resolve_rng

__all__ = ["BatchIterator", "prefetch", "Prefetcher", "predict_dataset", "transform_batch"]

_DONE = object()


class Prefetcher:
    """Iterates over ``dataset.get_batch(idx)`` for each ``idx`` of ``index_batches``, up to
    ``depth`` batches ahead in a background thread (``depth=0``: no thread, fetched on demand).

    Stopping early is safe: ``close()`` (also at the end of a ``with`` block, when the iterator
    is exhausted, when the consumer raises, or when it is garbage collected) stops the thread
    and waits for it. An error in ``get_batch`` is raised in the consumer, at that batch.
    """

    def __init__(self, dataset, index_batches, depth: int = 2):
        self._dataset, self._batches = dataset, list(index_batches)
        self._depth = int(depth)
        self._pos, self._thread = 0, None
        if self._depth > 0 and len(self._batches) > 1:
            self._queue = queue.Queue(maxsize=self._depth)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._work, name="jimunet-prefetch", daemon=True)
            self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self):
        for idx in self._batches:
            if self._stop.is_set():
                return
            try:
                item = self._dataset.get_batch(idx)
            except BaseException as e:  # noqa: BLE001 -- handed to the consumer, raised there
                self._put((e,))
                return
            if not self._put(item):
                return
        self._put(_DONE)

    def __iter__(self):
        return self

    def __len__(self):
        return len(self._batches)

    def __next__(self):
        if self._thread is None:
            if self._pos >= len(self._batches):
                raise StopIteration
            self._pos += 1
            return self._dataset.get_batch(self._batches[self._pos - 1])
        item = self._queue.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, tuple) and len(item) == 1:
            self.close()
            raise item[0]
        return item

    def close(self) -> None:
        """Stop the background thread and wait for it (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is None:
            self._pos = len(self._batches)
            return
        self._stop.set()
        thread.join()
        self._batches = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass


def prefetch(dataset, index_batches, depth: int = 2) -> Prefetcher:
    """``Prefetcher(dataset, index_batches, depth)``: the raw batches, fetched ahead."""
    return Prefetcher(dataset, index_batches, depth)


def transform_batch(xb, augment=None, normalize=None):
    """A batch of images as the data set gives it → model inputs: ``augment`` (on the pixels, so
    padding is black), then ``normalize`` (None: only cast to float32)."""
    if augment is not None:
        xb = augment(xb)
    return normalize(xb) if normalize is not None else np.asarray(xb, dtype=np.float32)


class BatchIterator:
    """Mini-batches ``(x float32, y int64)`` of a ``Dataset``; each ``iter()`` is one epoch.

    Per batch, in order: ``dataset.get_batch`` (in a background thread, ``prefetch`` batches
    ahead), then ``augment`` on the pixels as the data set gives them (so ``RandomCrop`` pads
    with black), then ``normalize`` (``None``: the images are cast to float32 as they are, for
    data sets that already hold model inputs). With ``shuffle``, each epoch draws a new
    permutation from ``rng`` when it starts.

    Args:
        dataset: a ``Dataset`` (``ArrayDataset``, ``Subset``, ``ImageFolder``...).
        batch_size: images per batch.
        shuffle, rng: a new order each epoch from ``rng`` (Generator or int seed).
        augment: callable on an NHWC batch (``augment.RandomCrop``, ``Compose``...).
        normalize: ``Normalize`` (or any callable) from pixels to model input.
        drop_last: leave out the last, partial batch.
        prefetch: batches fetched ahead (0: none, no thread).

    Example:
        >>> import numpy as np
        >>> from jimunet.data import ArrayDataset, Normalize
        >>> ds = ArrayDataset(np.zeros((10, 28, 28), np.uint8), np.arange(10) % 3)
        >>> it = BatchIterator(ds, 4, shuffle=True, rng=0, normalize=Normalize.mnist())
        >>> [xb.shape[0] for xb, yb in it], len(it)
        ([4, 4, 2], 3)
    """

    def __init__(self, dataset, batch_size: int, *, shuffle: bool = False, rng=None, augment=None,
                 normalize=None, drop_last: bool = False, prefetch: int = 2):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"BatchIterator: batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
            raise ValueError(f"BatchIterator: prefetch must be a non-negative integer, got {prefetch!r}")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.shuffle, self.drop_last, self.prefetch = bool(shuffle), bool(drop_last), int(prefetch)
        self.rng = np.random.default_rng(int(rng)) if isinstance(rng, (int, np.integer)) else resolve_rng(rng)
        self.augment, self.normalize = augment, normalize

    def __len__(self) -> int:
        n, bs = len(self.dataset), self.batch_size
        return n // bs if self.drop_last else -(-n // bs)

    def index_batches(self) -> list:
        """This epoch's indices, batch by batch (draws the permutation when shuffling)."""
        n, bs = len(self.dataset), self.batch_size
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        return [order[i:i + bs] for i in range(0, len(self) * bs, bs)]

    def __iter__(self):
        with Prefetcher(self.dataset, self.index_batches(), self.prefetch) as batches:
            for xb, yb in batches:
                yield self.transform(xb), np.asarray(yb, dtype=np.int64)

    def transform(self, xb):
        """Augmentation, then normalisation, of one batch of images (on the calling thread)."""
        return transform_batch(xb, self.augment, self.normalize)

    def state(self) -> dict:
        """The shuffling generator's state (the augmentation keeps its own)."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def predict_dataset(predict, dataset, batch_size: int, normalize=None, max_activation_bytes=None):
    """``Network.predict`` on a ``Dataset``: ``predict(x, batch_size, max_activation_bytes)`` on
    each batch of its images (fetched ahead in a background thread) through ``normalize``
    (``Normalize``; None: the images are model inputs already), concatenated; labels ignored."""
    if not (hasattr(dataset, "get_batch") and not hasattr(dataset, "shape")):
        raise ValueError("predict: normalize applies to a Dataset; arrays are model inputs already")
    outs = [predict(xb, batch_size, max_activation_bytes) for xb, _ in BatchIterator(dataset, batch_size,
                                                                                      normalize=normalize)]
    if not outs:
        return predict(np.zeros((0,) + tuple(dataset.image_shape), np.float32), batch_size, max_activation_bytes)
    return xp_of(outs[0]).concatenate(outs)
