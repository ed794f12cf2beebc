"""Evaluating a classifier: ``evaluate`` → ``Evaluation(accuracy, error, confusion)``, the one
``confusion_matrix`` (the report's numbers and ``metrics.json``'s come from it), and
``FlipAverage``, test-time flip for any model."""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from ..backend import to_numpy, xp_of
from ..data.batching import BatchIterator, predict_dataset
from ..data.dataset import is_dataset

__all__ = ["evaluate", "Evaluation", "confusion_matrix", "FlipAverage"]

Evaluation = namedtuple("Evaluation", ["accuracy", "error", "confusion"])
Evaluation.__doc__ = """Result of ``evaluate``: ``accuracy`` as a fraction in [0, 1], ``error`` in
PERCENT (``100·(1-accuracy)``, the TF sample's error rate), ``confusion`` an int64
``(classes, classes)`` matrix, rows true class, columns predicted class."""


def confusion_matrix(y_true, y_pred, num_classes: int = 10) -> np.ndarray:
    """Counts ``C[t, p]`` of samples of true class ``t`` predicted as ``p`` (rows: truth).

    Args:
        y_true, y_pred: integer class ids of equal length, each in ``[0, num_classes)``.
        num_classes: size of the square matrix.

    Returns:
        int64 array ``(num_classes, num_classes)``; ``C.sum() == len(y_true)`` and the
        accuracy is ``trace(C) / C.sum()``.

    Example:
        >>> confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], num_classes=3)
        array([[1, 0, 0],
               [0, 1, 1],
               [0, 0, 1]])
    """
    t = np.asarray(to_numpy(y_true)).ravel()
    p = np.asarray(to_numpy(y_pred)).ravel()
    if t.shape != p.shape:
        raise ValueError(f"confusion_matrix: y_true has {t.size} labels, y_pred {p.size}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.dtype.kind not in "iu" and not np.all(a == np.round(a))):
            raise ValueError(f"confusion_matrix: {name} must hold integer class ids")
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} has ids outside [0, {num_classes})")
    t, p = t.astype(np.int64), p.astype(np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def evaluate(model, x, y=None, batch_size: int = 100, num_classes: int | None = None, *,
             normalize=None) -> Evaluation:
    """Accuracy, error rate and confusion matrix of ``model`` on ``(x, y)`` (evaluation mode).

    Args:
        model: anything with ``predict(x, batch_size)`` returning logits ``(N, classes)``
            (and ``predict(dataset, batch_size, normalize=...)`` for a Dataset).
        x: inputs, already preprocessed, with y: integer labels ``(N,)``; or a ``Dataset``
            (``y`` None), whose images ``normalize`` (``data.Normalize``; None: they are model
            inputs already) turns into model inputs batch by batch.
        batch_size: images per forward pass (bounds memory; the recipe's 100 keeps its
            published figures; ``Sequential.predict``'s default 200 is ~7% faster on 2 cores).
        num_classes: the confusion matrix has at least this many rows and columns (and at
            least one per model output).

    Returns:
        ``Evaluation(accuracy, error, confusion)`` — unpacks as a tuple.

    Example:
        >>> evaluate(model, test_set, normalize=Normalize.mnist()).accuracy  # doctest: +SKIP
        0.9921
    """
    if is_dataset(x):
        if y is not None:
            raise ValueError("evaluate: a Dataset carries its labels; pass y=None")
        if len(x) == 0:
            raise ValueError("evaluate: no samples")
        logits, labels = [], []
        # The same chunks as predict(arrays) takes, so a Dataset over arrays gives the same numbers.
        for xb, yb in BatchIterator(x, batch_size, normalize=normalize):
            logits.append(to_numpy(model.predict(xb, batch_size=batch_size)))
            labels.append(yb)
        logits, y = np.concatenate(logits), np.concatenate(labels)
    else:
        if normalize is not None:
            raise ValueError("evaluate: normalize applies to a Dataset; arrays are model inputs already")
        if y is None:
            raise ValueError("evaluate: pass the labels y with the inputs x")
        y = np.asarray(to_numpy(y)).astype(np.int64)
        if len(x) != len(y):
            raise ValueError(f"evaluate: {len(x)} inputs but {len(y)} labels")
        if len(y) == 0:
            raise ValueError("evaluate: no samples")
        logits = to_numpy(model.predict(x, batch_size=batch_size))
    if logits.ndim != 2:
        raise ValueError(f"evaluate: expected class scores of shape (N, classes) from the model, got "
                         f"{logits.shape}; a classifier ends in a Dense layer")
    k = max(logits.shape[1], num_classes or 0)  # a 20-class model on MNIST: a 20×20 matrix
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"evaluate: labels must lie in 0..{k - 1} (the model has {logits.shape[1]} outputs), "
                         f"got {int(y.min())}..{int(y.max())}")
    pred = logits.argmax(axis=1)
    accuracy = float((pred == y).mean())
    return Evaluation(accuracy, 100.0 * (1.0 - accuracy), confusion_matrix(y, pred, k))


class FlipAverage:
    """Test-time flip: ``model``'s class scores for each image averaged with its scores for the
    image's mirror image (left and right swapped).

    Mirrored clothes, animals and vehicles are still the same class, so a model trained on random
    flips sees two views of each test image; averaging their logits removes some of the noise of
    either alone (on the same weights: +0.95 points on CIFAR-10, +0.14 on Fashion-MNIST, mean of 3
    seeds; BENCHMARKS.md). Digits are not symmetric: never for MNIST.

    With ``shift`` > 0 it also averages the views of the image moved by ``shift`` pixels
    diagonally, one each way (each pixel taken from ``(shift, shift)`` further down and right,
    and from as far up and left; the border repeated), and their mirror images: 6 views in all,
    airbench's translated test-time views. On Fashion-MNIST, chosen on the validation images,
    ``shift=1`` gave another +0.2 points on the test images (BENCHMARKS.md).

    It has ``predict`` like a model, so ``evaluate(FlipAverage(model), x, y)`` and everything
    else that takes a predictor work unchanged. An image and its mirror image get bit-identical
    scores without shifts (``(a + b) / 2`` is ``(b + a) / 2`` in floating point).

    Example:
        >>> import numpy as np, jimunet as jn
        >>> m = jn.models.mnist_cnn(rng=0)
        >>> x = np.random.default_rng(0).standard_normal((3, 28, 28, 1)).astype(np.float32)
        >>> tta = FlipAverage(m)
        >>> bool((tta.predict(x) == tta.predict(x[:, :, ::-1])).all())
        True
    """

    MAX_SHIFT = 4

    def __init__(self, model, shift: int = 0):
        if not callable(getattr(model, "predict", None)):
            raise TypeError(f"FlipAverage: expected a model with a predict method, got {type(model).__name__}")
        if not isinstance(shift, (int, np.integer)) or isinstance(shift, bool) or not 0 <= shift <= self.MAX_SHIFT:
            raise ValueError(f"FlipAverage: shift must be an integer from 0 to {self.MAX_SHIFT} pixels, got {shift!r}")
        self.model, self.shift = model, int(shift)

    def describe(self) -> str:
        """What each image's scores are averaged over, for a log line."""
        if not self.shift:
            return "each averaged with its mirror image"
        return (f"each averaged over 6 views: itself and moved {self.shift} px diagonally both ways, and their "
                f"mirror images")

    def predict(self, x, batch_size: int = 200, max_activation_bytes: int | None = None, *, normalize=None):
        """Mean of ``model.predict(x)`` and ``model.predict(x mirrored)``; ``x`` images ``(N, H, W, C)``
        or a ``data.Dataset`` with ``normalize`` (as ``Sequential.predict``)."""
        if is_dataset(x) or normalize is not None:
            return predict_dataset(self.predict, x, batch_size, normalize, max_activation_bytes)
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"FlipAverage: expected images of shape (N, height, width, channels), got shape "
                             f"{getattr(x, 'shape', None)}")
        kw = {"batch_size": batch_size, "max_activation_bytes": max_activation_bytes}
        views = [x] + ([_moved(x, self.shift), _moved(x, -self.shift)] if self.shift else [])
        total = None
        for v in views:
            pair = self.model.predict(v, **kw) + self.model.predict(v[:, :, ::-1], **kw)
            total = pair if total is None else total + pair
        return total / (2 * len(views))

    def __repr__(self) -> str:
        return f"FlipAverage({self.model!r}{f', shift={self.shift}' if self.shift else ''})"


def _moved(x, d: int):
    """``x`` (NHWC) with each pixel taken from ``(d, d)`` further down and right, the border repeated."""
    xp = xp_of(x)
    a = abs(d)
    h, w = x.shape[1:3]
    padded = xp.pad(x, ((0, 0), (a, a), (a, a), (0, 0)), mode="edge")
    return xp.ascontiguousarray(padded[:, a + d:a + d + h, a + d:a + d + w])
