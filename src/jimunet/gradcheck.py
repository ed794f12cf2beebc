"""Numerical gradient check for any layer or model, in float64.

For a fixed random upstream gradient ``g`` the scalar ``f = Σ g·forward(x)`` is
differentiated two ways: by the layer's ``backward`` and by central differences
``(f(θ+εv) - f(θ-εv)) / 2ε`` along random directions ``v`` (and, optionally, along every
coordinate), for the input and every parameter. Random layers (Dropout) have their
Generator rewound before each evaluation, so every evaluation sees the same mask.
"""
from __future__ import annotations

import copy

import numpy as np

from .backend import to_numpy


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


class GradcheckResult:
    """``ok``, the worst relative error, and one line per checked quantity."""

    def __init__(self, ok, max_error, lines):
        self.ok, self.max_error, self.lines = ok, max_error, lines

    def __bool__(self):
        return self.ok

    def __str__(self):
        return "\n".join(self.lines + [f"max relative error {self.max_error:.3g}: {'OK' if self.ok else 'FAIL'}"])


def _generators(module):
    layers = getattr(module, "layers", [module])
    return [l.rng for l in layers if isinstance(getattr(l, "rng", None), np.random.Generator)]


def gradcheck(layer, x, *, training: bool = False, eps: float = 1e-6, rtol: float = 1e-5,
              atol: float = 1e-8, directions: int = 4, elementwise: bool = False, seed: int = 0,
              raise_exception: bool = True) -> GradcheckResult:
    """Check ``layer.backward`` against finite differences, in float64.

    The layer is deep-copied and cast to float64; yours is left untouched.

    Args:
        layer: any object with ``forward(x, training)``, ``backward(grad)`` and
            ``parameters()`` (a layer or a ``Sequential``).
        x: an input batch (converted to float64).
        training: passed to ``forward`` (Dropout masks are held fixed).
        eps: finite-difference step.
        rtol, atol: pass when ``|num - ana| <= atol + rtol·max(|num|, |ana|)``.
        directions: random directions per quantity.
        elementwise: also check every coordinate one by one (use on tiny shapes).
        seed: seed for the directions and the upstream gradient.
        raise_exception: raise ``GradcheckError`` on failure (else return the result).

    Returns:
        ``GradcheckResult`` (truthy when every check passed).

    Example:
        >>> import numpy as np, jimunet as jn
        >>> bool(jn.gradcheck(jn.layers.Conv2D(2, 3, 3, stride=2), np.random.rand(2, 5, 5, 2)))
        True
    """
    rng = np.random.default_rng(seed)
    layer = copy.deepcopy(layer)
    layer.astype(np.float64)
    x = np.array(to_numpy(x), dtype=np.float64)
    gens = _generators(layer)
    states = [g.bit_generator.state for g in gens]

    def f(inp):
        for g, s in zip(gens, states):
            g.bit_generator.state = s
        return float((layer.forward(inp, training=training) * upstream).sum())

    for g, s in zip(gens, states):
        g.bit_generator.state = s
    y = layer.forward(x, training=training)
    upstream = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(upstream.copy())
    params = layer.parameters()
    analytic = [("input", x, to_numpy(dx))] + [(f"parameter {i} ({p.name}, shape {p.data.shape})", p.data,
                                                 to_numpy(p.grad).copy()) for i, p in enumerate(params)]
    lines, worst, ok = [], 0.0, True
    for label, target, grad in analytic:
        dirs = [rng.standard_normal(target.shape) for _ in range(directions)]
        if elementwise:
            for k in range(target.size):
                e = np.zeros(target.size)
                e[k] = 1.0
                dirs.append(e.reshape(target.shape))
        for v in dirs:
            saved = target.copy()
            if target is x:
                num = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
            else:
                target += eps * v
                fp = f(x)
                target[...] = saved - eps * v
                fm = f(x)
                target[...] = saved
                num = (fp - fm) / (2 * eps)
            ana = float((grad * v).sum())
            err = abs(num - ana) / max(abs(num), abs(ana), atol / rtol)
            worst = max(worst, err)
            if abs(num - ana) > atol + rtol * max(abs(num), abs(ana)):
                ok = False
                lines.append(f"{label}: numerical {num:.10g} vs analytic {ana:.10g} (relative error {err:.3g})")
    lines.insert(0, f"gradcheck of {getattr(layer, 'describe', lambda: type(layer).__name__)()} on input "
                    f"{tuple(x.shape)}: {len(analytic)} quantities")
    result = GradcheckResult(ok, worst, lines)
    if raise_exception and not ok:
        raise GradcheckError(str(result))
    return result
