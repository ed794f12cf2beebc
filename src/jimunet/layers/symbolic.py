"""Symbolic tensors and the nodes that make them: what calling a layer on ``jn.Input`` records.

Below ``Layer`` (as Keras keeps ``KerasTensor`` and ``Node`` below its ``Layer``): calling a
layer on a ``SymbolicTensor`` runs ``apply_symbolic``, which checks the shapes and records
one ``Node``; ``jimunet.graph.Model`` (a level above) collects the nodes between inputs and
outputs and runs them. Nothing here computes on arrays.
"""
from __future__ import annotations

import itertools

import numpy as np

from .._messages import shown
from ..functional.padding import MAX_SIZE

_names = itertools.count()


def shape_str(shape) -> str:
    """A per-sample shape with its batch axis, for messages and summaries: ``(N, 28, 28, 1)``."""
    return "(" + ", ".join(["N"] + [str(d) for d in shape]) + ")"


class SymbolicTensor:
    """A placeholder for the output of an input or a layer in a graph being defined.

    Attributes: ``shape`` (per sample, no batch axis), ``name``, ``node`` (the call that
    makes it; None for a ``jn.Input``).
    """

    is_symbolic = True

    def __init__(self, shape, node, name, auto=True):
        self.shape, self.node, self.name = tuple(int(d) for d in shape), node, name
        self.auto = auto  # a generated name: ``Model`` replaces it by one fixed by the graph alone

    def __repr__(self):
        return f"SymbolicTensor({self.name!r}, shape={shape_str(self.shape)})"


class Node:
    """One call of ``layer`` on symbolic ``inputs`` (a list when the layer merges several);
    ``output`` is the ``SymbolicTensor`` it makes."""

    def __init__(self, layer, inputs, multi):
        self.layer, self.inputs, self.multi = layer, inputs, multi
        self.output = None


def is_symbolic(x) -> bool:
    """True for a symbolic tensor, or a non-empty list or tuple holding one."""
    if isinstance(x, (list, tuple)):
        return any(isinstance(t, SymbolicTensor) for t in x)
    return isinstance(x, SymbolicTensor)


def Input(shape, name: str | None = None) -> SymbolicTensor:  # noqa: N802 - Keras' name
    """A model input of per-sample ``shape`` (no batch axis), e.g. ``jn.Input((28, 28, 1))``."""
    try:
        dims = tuple(shape)
        ok = 0 < len(dims) <= 8 and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and
                                        0 < d <= MAX_SIZE for d in dims)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"Input: shape must be a tuple of 1 to 8 positive ints (per sample, no batch axis), "
                         f"got {shown(shape)}")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"Input: name must be a string, got {type(name).__name__}")
    return SymbolicTensor(dims, None, name or f"input_{next(_names)}", auto=name is None)


def apply_symbolic(layer, x) -> SymbolicTensor:
    """What ``layer(x)`` does for symbolic ``x``: check shapes, record a node, return its output."""
    multi = isinstance(x, (list, tuple))
    ts = list(x) if multi else [x]
    if not all(isinstance(t, SymbolicTensor) for t in ts):
        raise ValueError(f"{layer.describe()}: cannot mix arrays and symbolic tensors (jn.Input) in one call")
    wants_list = layer.multi_input
    if wants_list != multi:
        raise ValueError(f"{layer.describe()}: " + ("takes a list of tensors, e.g. layer([a, b])" if wants_list
                                                    else f"takes one tensor, got a list of {len(ts)}"))
    shapes = [t.shape for t in ts]
    try:
        out = layer.output_shape(shapes if multi else shapes[0])
    except ValueError as e:
        got = ", ".join(f"{t.name} {shape_str(t.shape)}" for t in ts)
        raise ValueError(f"{layer.describe()} cannot take {got}: {e}") from None
    node = Node(layer, ts, multi)
    node.output = SymbolicTensor(out, node, f"{type(layer).__name__.lower()}_{next(_names)}")
    return node.output


__all__ = ["Input", "Node", "SymbolicTensor", "apply_symbolic", "is_symbolic", "shape_str"]
