"""Softmax cross-entropy, fused with the softmax for a stable value and a simple gradient."""
from __future__ import annotations

import numpy as np

from .backend import xp_of
from .functional.softmax import log_softmax


class SoftmaxCrossEntropy:
    """Mean over the batch of ``-log softmax(logits)[label]``.

    The value is computed from log-softmax after subtracting the row maximum, so logits of
    magnitude 1e4 give finite losses; the gradient is ``(softmax - onehot) / N``, the mean's,
    so no layer divides by the batch size. (The ai-edu tutorial prints the mean too, but its
    softmax layer sends back ``A - Y``, the summed loss's gradient, and every layer divides its
    ``dW`` and ``dB`` by the batch size itself.)

    With ``label_smoothing`` ε > 0 the target is ``(1-ε)·onehot + ε/K`` (Szegedy et al. 2016,
    PyTorch's ``CrossEntropyLoss(label_smoothing=ε)``): the loss adds ``ε·mean_k(-log p_k)`` to
    ``(1-ε)·CE`` and the gradient is ``(softmax - target) / N``. ε = 0 runs the plain
    formula's exact float operations.

    Shape:
        logits ``(N, K)`` float; labels ``(N,)`` integer class ids in ``[0, K)``.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> loss_fn = jn.losses.SoftmaxCrossEntropy()
        >>> round(float(loss_fn.forward(np.zeros((2, 10)), np.array([3, 7]))), 4)
        2.3026
        >>> loss_fn.backward().shape
        (2, 10)
        >>> round(float(jn.losses.SoftmaxCrossEntropy(0.2).forward(np.zeros((2, 10)), np.array([3, 7]))), 4)
        2.3026
    """

    def __init__(self, label_smoothing: float = 0.0):
        ok = isinstance(label_smoothing, (int, float, np.floating)) and not isinstance(label_smoothing, bool)
        if not ok or not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"SoftmaxCrossEntropy: label_smoothing must be a number in [0, 1), "
                             f"got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self._cache = None

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        """Mean cross-entropy (a 0-d array of the logits' dtype)."""
        xp = xp_of(logits)
        if not hasattr(logits, "ndim") or logits.ndim != 2 or logits.dtype.kind != "f":
            raise ValueError("SoftmaxCrossEntropy: expected float logits of shape (batch, classes), got "
                             f"{getattr(logits, 'dtype', type(logits).__name__)} array of shape "
                             f"{tuple(getattr(logits, 'shape', ()))}")
        labels = xp.asarray(labels)
        n, k = logits.shape
        if labels.shape != (n,):
            hint = " (pass class ids, not one-hot rows)" if labels.shape == (n, k) else ""
            raise ValueError(f"SoftmaxCrossEntropy: expected labels of shape ({n},) for logits {tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}{hint}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"SoftmaxCrossEntropy: expected integer class ids, got dtype {labels.dtype}")
        if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"SoftmaxCrossEntropy: labels must lie in [0, {k}), got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        if n == 0:
            raise ValueError("SoftmaxCrossEntropy: empty batch")
        logp = log_softmax(logits)
        self._cache = (logp, labels)
        nll = -logp[xp.arange(n), labels].mean()
        eps = self.label_smoothing
        if eps == 0.0:
            return nll
        return (1.0 - eps) * nll + eps * -logp.mean(axis=1).mean()

    def backward(self):
        """Gradient w.r.t. the logits of the last ``forward``: ``(softmax - onehot) / N``."""
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy: backward() called before forward(logits, labels)")
        logp, labels = self._cache
        xp = xp_of(logp)
        n = logp.shape[0]
        grad = xp.exp(logp)
        eps = self.label_smoothing
        if eps:
            grad -= eps / logp.shape[1]
        grad[xp.arange(n), labels] -= 1.0 - eps
        grad /= n
        return grad


def l2_loss(params) -> float:
    """``Σ sum(p²)/2`` over the given parameters (TensorFlow's ``tf.nn.l2_loss``)."""
    return float(sum(float((p.data.astype(np.float64) ** 2).sum()) for p in params) / 2.0)
