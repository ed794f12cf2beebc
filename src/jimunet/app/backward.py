"""The backward pass of one image, block by block: what ``jimunet serve``'s backward view shows.

``backward_view(model, x, target)`` runs a ``Sequential`` forward (evaluation mode, layers in
list order) and back from the loss ``SoftmaxCrossEntropy(logits, target)``, keeping every
block's dL/dY, dL/dX and, for Conv2D and Dense, dL/dW — jimunet's own ``backward`` of each
layer, nothing recomputed here. ``gradcheck_cell`` checks one number of those against a
central finite difference of the loss on a float64 copy of the model, and ``sgd_steps`` takes
plain SGD steps on one image and target (on a copy: the served model never changes).

Each block also carries its forward and backward formulas as the README's block table writes
them, and for Conv2D the algorithm its forward pass ran (im2col, or Winograd with its tile).

Example:
    >>> import numpy as np, jimunet as jn
    >>> from jimunet.app.backward import backward_view, gradcheck_cell
    >>> m = jn.models.mnist_cnn(rng=0)
    >>> x = np.zeros((28, 28, 1), np.float32)
    >>> view = backward_view(m, x, target=3)
    >>> len(view.grads) == len(m.layers) + 1, view.weight_grads[0].shape
    (True, (5, 5, 1, 32))
    >>> gradcheck_cell(m, x, 3, block=10, tensor="weight", index=(0, 3))["relative_error"] < 1e-6
    True
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..layers import Conv2D, Dense
from ..losses import SoftmaxCrossEntropy
from ..model import Sequential

TENSORS = ("input", "output", "weight")
MAX_STEPS = 100
FD_EPS = 1e-6  # central difference step in float64: truncation ~eps², rounding ~1e-16/eps

# Forward and backward of each block kind, as the README's table "The blocks, forward and
# backward" writes them. The page shows them in English or Chinese from static/i18n.js ("f.<key>.fw" and
# ".bw", kept equal to these by tests/test_serve_backward.py).
FORMULAS = {
    "Conv2D/im2col": ("cols = im2col(pad(X)), Y = cols·W + b",
                      "dW = colsᵀ·dY, db = Σ dY, dX = Σ_(i,j) shift_(i,j)(dY·W[i,j]ᵀ)"),
    "Conv2D/winograd": ("Winograd F({m}, {k}): each {m} output tile is Aᵀ[(G W Gᵀ) ⊙ (Bᵀ d B)]A",
                        "dX = the same Winograd correlation of pad(dY) with W turned 180°, channels swapped; "
                        "dW = Winograd F({k}, {m}): the input tiles against dY's {m} tiles"),
    "MaxPool2D": ("Y = max over each window", "dY goes to one cell per window: the first maximum"),
    "AvgPool2D": ("Y = mean over each window", "dY/count to every cell of the window"),
    "Dense": ("Y = X·W + b", "dW = Xᵀ·dY, db = Σ dY, dX = dY·Wᵀ"),
    "ReLU": ("Y = max(X, 0)", "dX = dY · [Y > 0]"),
    "Dropout": ("evaluation: Y = X", "evaluation: dX = dY"),
    "Flatten": ("(H, W, C) → (H·W·C)", "dX = dY reshaped back"),
    "BatchNorm": ("evaluation: Y = γ(X − running_mean)/√(running_var + ε) + β",
                  "evaluation: dX = γ·dY/√(running_var + ε)"),
    "GlobalAvgPool2D": ("Y = mean over H and W", "dX = dY/(H·W) to every cell"),
    "loss": ("L = logsumexp(z) − z[target]", "dz = softmax(z) − onehot(target)"),
}


class BackwardUnsupported(ValueError):
    """The model is not a ``Sequential`` (graph models have no single chain of blocks to show)."""


class View:
    """What one forward and backward pass gave: ``loss``, ``probabilities``, ``inputs[i]`` (block
    i's input, ``inputs[-1]`` the logits), ``grads[i]`` (dL/d``inputs[i]``, so block i's dL/dX
    is ``grads[i]`` and its dL/dY is ``grads[i + 1]``), ``weight_grads[i]`` (dL/dW of block i,
    or None) and ``algorithms[i]`` (``(name, tile)`` for Conv2D, else None); one sample each,
    without the batch axis, as NumPy arrays."""

    def __init__(self):
        self.inputs, self.grads, self.weight_grads, self.algorithms = [], [], [], []
        self.loss, self.probabilities = None, None


def _check_model(model):
    if not isinstance(model, Sequential):
        raise BackwardUnsupported("the backward view shows a Sequential model's chain of blocks; this model is a "
                                  f"{type(model).__name__}")


def _forward(layers, x):
    """Every intermediate result of ``layers`` on batch ``x`` (list order, evaluation mode)."""
    outs = [x]
    for layer in layers:
        outs.append(layer.forward(outs[-1], training=False))
    return outs


def _loss(logits, target):
    loss_fn = SoftmaxCrossEntropy()
    value = loss_fn.forward(logits, np.array([target]))
    return loss_fn, value


def backward_view(model, x, target: int) -> View:
    """Forward ``x`` (one scaled sample ``(H, W, C)``) through ``model``, then back from the
    cross-entropy against ``target``; the served model's parameter gradients are zeroed after."""
    _check_model(model)
    layers = model.layers
    dtype = layers[0].parameters()[0].data.dtype if layers[0].parameters() else np.float32
    outs = _forward(layers, np.asarray(x, dtype=dtype)[None])
    view = View()
    loss_fn, value = _loss(outs[-1], target)
    view.loss = float(to_numpy(value))
    logits = np.asarray(to_numpy(outs[-1]), dtype=np.float64)[0]
    e = np.exp(logits - logits.max())
    view.probabilities = e / e.sum()
    for layer in layers:
        layer.zero_grad()
    grads, g = [None] * (len(layers) + 1), loss_fn.backward()
    grads[-1] = g
    wgrads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        g = layers[i].backward(g)
        grads[i] = g
        if isinstance(layers[i], (Conv2D, Dense)):
            wgrads[i] = np.array(to_numpy(layers[i].weight.grad))
    view.algorithms = [layer.last_algorithm if isinstance(layer, Conv2D) else None for layer in layers]
    for layer in layers:
        layer.zero_grad()
    view.inputs = [np.array(to_numpy(o))[0] for o in outs]
    view.grads = [np.array(to_numpy(gr))[0] for gr in grads]
    view.weight_grads = wgrads
    return view


def formula_key(layer, algorithm=None) -> str:
    """The key of ``layer``'s formulas in ``FORMULAS`` (``"Conv2D/winograd"``, ``"Dense"``, ...)."""
    if isinstance(layer, Conv2D):
        return "Conv2D/" + (algorithm[0] if algorithm else "im2col")
    return type(layer).__name__


def formulas(layer, algorithm=None) -> tuple:
    """``(forward, backward)`` of the README's block table for ``layer`` (None for other kinds)."""
    kind = formula_key(layer, algorithm)
    if isinstance(layer, Conv2D):
        if kind == "Conv2D/winograd":
            m, k = "×".join(map(str, algorithm[1])), "×".join(map(str, layer.kernel_size))
            return tuple(f.format(m=m, k=k) for f in FORMULAS[kind])
    return FORMULAS.get(kind)


def _position(shape, index, what):
    """``index`` as a tuple inside ``shape``; ``ValueError`` naming the expected range."""
    try:
        idx = tuple(int(i) for i in index)
    except (TypeError, ValueError):
        raise ValueError(f'"index" must be a list of {len(shape)} integers for {what} of shape '
                         f"{list(shape)}, got {index!r}"[:300]) from None
    if len(idx) != len(shape) or any(not 0 <= i < n for i, n in zip(idx, shape)):
        raise ValueError(f'"index" must be {len(shape)} integers within {what}\'s shape {list(shape)}, '
                         f"got {list(idx)}"[:300])
    return idx


def gradcheck_cell(model, x, target: int, block: int, tensor: str, index) -> dict:
    """Analytic dL/d(one number) from jimunet's backward vs a central finite difference of the
    loss, both on a float64 copy of ``model``. ``tensor``: ``"input"`` (block ``block``'s input
    X), ``"output"`` (its output Y) or ``"weight"`` (its W, Conv2D or Dense); ``index`` a
    position inside that tensor (per sample). ``ValueError`` for a block, tensor or index that
    does not exist."""
    _check_model(model)
    if tensor not in TENSORS:
        raise ValueError(f'"tensor" must be one of {", ".join(TENSORS)}, got {tensor!r}'[:200])
    n = len(model.layers)
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or not 0 <= block < n:
        raise ValueError(f'"block" must be an integer in 0..{n - 1}, got {block!r}'[:200])
    m64 = model.copy().astype(np.float64)
    layers = m64.layers
    view = backward_view(m64, np.asarray(x, np.float64), target)
    if tensor == "weight":
        if view.weight_grads[block] is None:
            raise ValueError(f"block {block} ({layers[block].describe()}) has no weight; Conv2D and Dense do")
        w = layers[block].weight.data
        idx = _position(w.shape, index, f"block {block}'s weight")
        analytic = float(view.weight_grads[block][idx])
        start, base = block, view.inputs[block]
        orig = float(w[idx])

        def f(v):
            w[idx] = v
            try:
                return _loss_from(layers, start, base, target)
            finally:
                w[idx] = orig
    else:
        pos = block if tensor == "input" else block + 1
        base = view.inputs[pos]
        idx = _position(base.shape, index, f"block {block}'s {tensor}")
        analytic = float(view.grads[pos][idx])
        orig, start = float(base[idx]), pos

        def f(v):
            moved = base.copy()
            moved[idx] = v
            return _loss_from(layers, start, moved, target)
    eps = FD_EPS * max(1.0, abs(orig))
    f0, fp, fm = f(orig), f(orig + eps), f(orig - eps)
    numeric = (fp - fm) / (2 * eps)
    denom = max(abs(analytic), abs(numeric))
    rel = 0.0 if denom == 0 else abs(analytic - numeric) / denom
    # The one-sided slopes differ at a kink (a max-pool tie, a ReLU input at exactly 0): there the
    # loss has no derivative, the central difference averages the two, and jimunet's backward
    # follows its rule at every tie (the first maximum, [Y > 0]): they need not agree there.
    left, right = (f0 - fm) / eps, (fp - f0) / eps
    # On a smooth loss the two differ by about eps·L'' only, so a kink is named only where the
    # check disagrees and the slopes differ by more than 1%.
    kink = rel > 1e-6 and abs(right - left) > 1e-2 * max(abs(left), abs(right), 1e-12)
    return {"block": int(block), "tensor": tensor, "index": list(idx), "value": orig, "analytic": analytic,
            "numeric": numeric, "relative_error": rel, "eps": eps, "dtype": "float64", "loss": view.loss,
            "one_sided": [left, right], "kink": bool(kink)}


def _loss_from(layers, start, x, target) -> float:
    """The loss with ``x`` (one sample) fed to ``layers[start]`` onward."""
    y = _forward(layers[start:], np.asarray(x)[None])[-1]
    return float(to_numpy(_loss(y, target)[1]))


def check_lrs(steps, lr) -> list:
    """The learning rate of each step: ``lr`` a number (every step) or a list with one per step."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 0 <= steps <= MAX_STEPS:
        raise ValueError(f'"steps" must be an integer in 0..{MAX_STEPS}, got {steps!r}'[:200])
    lrs = lr if isinstance(lr, list) else [lr] * int(steps)
    if len(lrs) != steps:
        raise ValueError(f'"lr" lists {len(lrs)} learning rates for {steps} steps; give one per step or one '
                         f"number"[:200])
    for v in lrs:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 10:
            raise ValueError(f'a learning rate must be a number in (0, 10], got {v!r}'[:200])
    return [float(v) for v in lrs]


def sgd_steps(model, x, target: int, lrs) -> tuple:
    """``(stepped copy, losses before each step, moves)``: plain SGD ``W ← W − lr·dL/dW`` on the
    one image and target, evaluation mode (no dropout: every run gives the same steps), on a
    copy of ``model``. ``moves[i]``: ``‖ΔW‖ / ‖W‖`` of block i's weight, or None."""
    _check_model(model)
    stepped = model.copy()
    before = [np.array(to_numpy(layer.weight.data), np.float64) if isinstance(layer, (Conv2D, Dense)) else None
              for layer in stepped.layers]
    losses = []
    params = [p for layer in stepped.layers for p in layer.parameters()]
    xb = np.asarray(x, dtype=params[0].data.dtype if params else np.float32)
    for lr in lrs:
        outs = _forward(stepped.layers, xb[None])
        loss_fn, value = _loss(outs[-1], target)
        losses.append(float(to_numpy(value)))
        g = loss_fn.backward()
        for layer in reversed(stepped.layers):  # list order, as the forward above ran
            g = layer.backward(g)
        for layer in stepped.layers:
            for p in layer.parameters():
                p.data -= p.data.dtype.type(lr) * p.grad
                p.zero_grad()
    moves = []
    for layer, w0 in zip(stepped.layers, before):
        if w0 is None:
            moves.append(None)
            continue
        w1 = np.asarray(to_numpy(layer.weight.data), np.float64)
        moves.append(float(np.linalg.norm(w1 - w0) / max(np.linalg.norm(w0), 1e-30)))
    return stepped, losses, moves


__all__ = ["backward_view", "gradcheck_cell", "sgd_steps", "check_lrs", "formulas", "formula_key", "View", "BackwardUnsupported",
           "FORMULAS", "MAX_STEPS", "TENSORS"]
