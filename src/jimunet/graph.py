"""Branching models in the Keras functional style: ``jn.Input``, symbolic tensors, ``jn.Model``.

Calling a layer on a symbolic tensor (``jn.Input`` or what a layer made of one) records a
node instead of computing; ``jn.Model(inputs, outputs)`` collects the nodes between them
and runs them in topological order. Backward runs them in reverse, and a tensor read by
several nodes receives the sum of their gradients. There is no tape: each layer's own
``backward`` is called, exactly as in ``Sequential``.

A layer object used at several nodes shares its weights. Its per-call state (the caches
its ``backward`` reads, which by the ``Layer`` convention live in attributes whose names
start with an underscore) is kept per node: before a node runs, forward or backward, the
model puts that node's state into the layer, and takes it back out afterwards. So a
shared layer's backward sees the inputs of the call it differentiates, and its parameter
gradients add up over its uses.

Example:
    >>> import numpy as np, jimunet as jn
    >>> inp = jn.Input((8, 8, 1))
    >>> h = jn.layers.Conv2D(1, 4, 3, rng=0)(inp)
    >>> out = jn.layers.ReLU()(jn.layers.Add()([h, jn.layers.Conv2D(1, 4, 1, rng=1)(inp)]))
    >>> model = jn.Model(inp, jn.layers.Dense(4, 2, rng=2)(jn.layers.GlobalAvgPool2D()(out)))
    >>> model.forward(np.zeros((3, 8, 8, 1), np.float32)).shape
    (3, 2)
"""
from __future__ import annotations

import copy
import itertools
from collections import Counter

import numpy as np

from .layers.base import Layer, data_already_checked, from_config
from .model import MAX_LAYERS, Summary, _Network, _shape_str

MAX_NODES = MAX_LAYERS  # a described graph with more nodes is refused before any layer is built
_names = itertools.count()


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
        return f"SymbolicTensor({self.name!r}, shape={_shape_str(self.shape)})"


class _Node:
    """One call of ``layer`` on symbolic ``inputs`` (a list when the layer merges several)."""

    def __init__(self, layer, inputs, multi):
        self.layer, self.inputs, self.multi = layer, inputs, multi
        self.output = None


def Input(shape, name: str | None = None) -> SymbolicTensor:  # noqa: N802 - Keras' name
    """A model input of per-sample ``shape`` (no batch axis), e.g. ``jn.Input((28, 28, 1))``."""
    try:
        dims = tuple(shape)
        ok = len(dims) > 0 and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
                                   for d in dims)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"Input: shape must be a non-empty tuple of positive ints (per sample, no batch axis), "
                         f"got {shape!r}")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"Input: name must be a string, got {type(name).__name__}")
    return SymbolicTensor(dims, None, name or f"input_{next(_names)}", auto=name is None)


def apply_symbolic(layer, x) -> SymbolicTensor:
    """What ``layer(x)`` does for symbolic ``x``: check shapes, record a node, return its output."""
    multi = isinstance(x, (list, tuple))
    ts = list(x) if multi else [x]
    if not all(isinstance(t, SymbolicTensor) for t in ts):
        raise ValueError(f"{layer.describe()}: cannot mix arrays and symbolic tensors (jn.Input) in one call")
    wants_list = getattr(layer, "multi_input", False)
    if wants_list != multi:
        raise ValueError(f"{layer.describe()}: " + ("takes a list of tensors, e.g. layer([a, b])" if wants_list
                                                    else f"takes one tensor, got a list of {len(ts)}"))
    shapes = [t.shape for t in ts]
    try:
        out = layer.output_shape(shapes if multi else shapes[0])
    except ValueError as e:
        got = ", ".join(f"{t.name} {_shape_str(t.shape)}" for t in ts)
        raise ValueError(f"{layer.describe()} cannot take {got}: {e}") from None
    node = _Node(layer, ts, multi)
    node.output = SymbolicTensor(out, node, f"{type(layer).__name__.lower()}_{next(_names)}")
    return node.output


def _holders(layer):
    """The objects whose underscore attributes hold ``layer``'s per-call state (itself and sublayers)."""
    out, stack = [], [layer]
    while stack:
        obj = stack.pop()
        out.append(obj)
        stack.extend(reversed(getattr(obj, "layers", [])))
    return out


def _private_state(layer):
    return [{k: v for k, v in vars(h).items() if k.startswith("_")} for h in _holders(layer)]


def _put_state(layer, state):
    for h, s in zip(_holders(layer), state):
        vars(h).update(s)


def _names_of(tensors, k):
    """Tensor names: a user's own kept, generated ones replaced by ``input``/``input_<i>`` and
    ``<layer>_<node index>``, so the same graph gets the same description in every process."""
    taken = {t.name for t in tensors if not t.auto}
    names = []
    for i, t in enumerate(tensors):
        if not t.auto:
            names.append(t.name)
            continue
        base = ("input" if k == 1 else f"input_{i}") if i < k else f"{type(t.node.layer).__name__.lower()}_{i - k}"
        name, n = base, 1
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        names.append(name)
    return names


class GraphSummary(Summary):
    """``Summary`` of a graph: one row per node, with the tensors it reads."""

    def __str__(self):
        head = ("#", "node", "layer", "inputs", "output shape", "params", "FLOPs")
        body = [(str(i), r["name"], r["layer"], ", ".join(r["inputs"]), _shape_str(r["output_shape"]),
                 f"{r['params']:,}" + (" (shared)" if r.get("shared") else ""), f"{r['flops']:,}")
                for i, r in enumerate(self.rows)]
        total = ("", "total", "", "", "", f"{self.total_params:,}", f"{self.total_flops:,}")
        widths = [max(len(row[c]) for row in [head] + body + [total]) for c in range(7)]
        fmt = lambda row: "  ".join(v.ljust(w) if c < 5 else v.rjust(w)  # noqa: E731
                                    for c, (v, w) in enumerate(zip(row, widths)))
        rule = "-" * len(fmt(head))
        lines = [f"input: {', '.join(_shape_str(s) for s in self.input_shapes)}", fmt(head), rule]
        lines += [fmt(r) for r in body]
        return "\n".join(lines + [rule, fmt(total), "FLOPs are per sample, forward pass."])

    __repr__ = __str__


class Model(_Network):
    """A network of layers joined as a directed acyclic graph (branches, shortcuts, merges).

    Args:
        inputs: a ``jn.Input`` tensor, or a list of them (then ``forward`` takes a list).
        outputs: a symbolic tensor computed from the inputs, or a list (then ``forward``
            returns a list and ``backward`` takes one).

    ``forward``, ``backward``, ``parameters``, ``zero_grad``, ``summary``, ``predict``,
    ``save`` and ``jn.load`` work as for ``Sequential``; ``layers`` lists each layer object
    once, in the order of first use (parameter names are ``"<index>.weight"`` etc.).

    Raises ValueError when an output depends on a tensor that is not computed from the
    given inputs, when an input is not used by any output, or when inputs repeat.

    Example:
        >>> import jimunet as jn
        >>> inp = jn.Input((4,))
        >>> dense = jn.layers.Dense(4, 4, rng=0)        # used twice: one set of weights
        >>> model = jn.Model(inp, dense(jn.layers.ReLU()(dense(inp))))
        >>> len(model.layers), model.summary((4,)).total_params
        (2, 20)
    """

    def __init__(self, inputs, outputs, _layer_order=None):
        self._single_in = not isinstance(inputs, (list, tuple))
        self._single_out = not isinstance(outputs, (list, tuple))
        ins = [inputs] if self._single_in else list(inputs)
        outs = [outputs] if self._single_out else list(outputs)
        for what, ts in (("inputs", ins), ("outputs", outs)):
            if not ts or not all(isinstance(t, SymbolicTensor) for t in ts):
                raise ValueError(f"Model: {what} must be symbolic tensors (made from jn.Input), got "
                                 f"{[type(t).__name__ for t in ts] or 'nothing'}")
        for t in ins:
            if t.node is not None:
                raise ValueError(f"Model: input {t.name} is the output of {t.node.layer.describe()}; model inputs "
                                 f"must be jn.Input tensors")
        if len({id(t) for t in ins}) != len(ins):
            raise ValueError("Model: the same input is given twice")
        pos = {id(t): i for i, t in enumerate(ins)}  # tensor -> index; inputs first, then node outputs
        tensors, nodes = list(ins), []
        for out in outs:
            stack = [(out, False)]
            while stack:  # depth-first post-order: a node comes after every node it reads
                t, expanded = stack.pop()
                if id(t) in pos:
                    continue
                if t.node is None:
                    raise ValueError(f"Model: output {out.name} is not reachable from the inputs "
                                     f"{[i.name for i in ins]}: it depends on input {t.name}, which is not one "
                                     f"of them")
                if expanded:
                    pos[id(t)] = len(tensors)
                    tensors.append(t)
                    nodes.append(t.node)
                    continue
                stack.append((t, True))
                stack.extend((i, False) for i in reversed(t.node.inputs) if id(i) not in pos)
        used = {id(i) for n in nodes for i in n.inputs} | {id(t) for t in outs}
        unused = [t.name for t in ins if id(t) not in used]
        if unused:
            raise ValueError(f"Model: input {', '.join(unused)} is never used to compute the outputs "
                             f"{[o.name for o in outs]}")
        layers = list({id(n.layer): n.layer for n in nodes}.values())  # unique, in order of first use
        if _layer_order is not None:
            if len(_layer_order) != len(layers) or {id(a) for a in _layer_order} != {id(a) for a in layers}:
                raise ValueError("Model: every listed layer must be used by a node")
            layers = list(_layer_order)
        index = {id(layer): i for i, layer in enumerate(layers)}
        self.layers = layers
        self._tensor_names = _names_of(tensors, len(ins))
        self._input_shapes = [t.shape for t in ins]
        self._nodes = [(index[id(n.layer)], [pos[id(i)] for i in n.inputs], n.multi) for n in nodes]
        self._output_ids = [pos[id(t)] for t in outs]
        uses = {}
        for k, (li, _, _) in enumerate(self._nodes):
            uses.setdefault(li, []).append(k)
        # Per-node state of layers used at several nodes (see the module docstring).
        self._contexts = {k: copy.deepcopy(_private_state(layers[li]))
                          for li, ks in uses.items() if len(ks) > 1 for k in ks}
        self._ran = False

    # -- structure ----------------------------------------------------------------------

    def __len__(self):
        return len(self.layers)

    def describe(self):
        return f"Model({len(self.layers)} layers, {len(self._nodes)} nodes)"

    def graph_steps(self):
        """``[(name, layer, [input names])]`` for every node, in the order ``forward`` runs them."""
        k = len(self._input_shapes)
        return [(self._tensor_names[k + i], self.layers[li], [self._tensor_names[t] for t in ins])
                for i, (li, ins, _) in enumerate(self._nodes)]

    @property
    def input_names(self):
        return self._tensor_names[:len(self._input_shapes)]

    @property
    def output_names(self):
        return [self._tensor_names[i] for i in self._output_ids]

    # -- computing ----------------------------------------------------------------------

    def _as_list(self, x, what):
        if self._single_in:
            return [x]
        if not isinstance(x, (list, tuple)) or len(x) != len(self._input_shapes):
            raise ValueError(f"{self.describe()}: expected a list of {len(self._input_shapes)} {what}, got "
                             f"{type(x).__name__}")
        return list(x)

    def _run(self, k, method, arg, flag, training_kw):
        layer = self.layers[self._nodes[k][0]]
        ctx = self._contexts.get(k)
        if ctx is not None:
            _put_state(layer, ctx)
        out = getattr(layer, method)(arg, **{training_kw: flag})
        if ctx is not None:
            self._contexts[k] = _private_state(layer)
        return out

    def forward(self, x, training: bool = False):
        xs = self._as_list(x, "input arrays")
        for a in xs:
            self._check_input(a)  # dtype and NaN, once per input; layers check shapes
        k = len(xs)
        vals = xs + [None] * len(self._nodes)
        with data_already_checked():
            for i, (_, ins, multi) in enumerate(self._nodes):
                arg = [vals[t] for t in ins] if multi else vals[ins[0]]
                vals[k + i] = self._run(i, "forward", arg, training, "training")
        self._ran = True
        outs = [vals[i] for i in self._output_ids]
        return outs[0] if self._single_out else outs

    def backward(self, grad, input_grad: bool = True):
        """Back-propagate ``grad`` (a list for several outputs); ``input_grad=False`` skips dX of the inputs."""
        if not self._ran:
            raise RuntimeError(f"{self.describe()}: backward() called before forward(x, training=...)")
        grads = [grad] if self._single_out else list(grad)
        if len(grads) != len(self._output_ids):
            raise ValueError(f"{self.describe()}: expected {len(self._output_ids)} output gradients, got {len(grads)}")
        k = len(self._input_shapes)
        acc = [None] * (k + len(self._nodes))

        def add(t, g):  # never in place: g may be a view of an array someone else holds
            acc[t] = g if acc[t] is None else acc[t] + g
        for t, g in zip(self._output_ids, grads):
            add(t, g)
        for i in range(len(self._nodes) - 1, -1, -1):
            _, ins, multi = self._nodes[i]
            g, acc[k + i] = acc[k + i], None
            need = input_grad or any(t >= k for t in ins)
            dx = self._run(i, "backward", g, need, "input_grad")
            if need:
                for t, d in zip(ins, dx if multi else [dx]):
                    add(t, d)
        if not input_grad:
            return None
        return acc[0] if self._single_in else acc[:k]

    # -- shapes -------------------------------------------------------------------------

    def summary(self, input_shape=None) -> GraphSummary:
        """Per node: the layer, the tensors it reads, output shape, parameters (counted at a layer's
        first use) and FLOPs, computed by flowing ``input_shape`` (default: the ``jn.Input`` shapes;
        a list for several inputs) through the graph."""
        if input_shape is None:
            shapes = list(self._input_shapes)
        else:
            shapes = [input_shape] if self._single_in else list(input_shape)
            shapes = [tuple(s)[1:] if tuple(s) and tuple(s)[0] is None else tuple(s) for s in shapes]
            if len(shapes) != len(self._input_shapes):
                raise ValueError(f"{self.describe()}: expected {len(self._input_shapes)} input shapes, got {len(shapes)}")
        k = len(shapes)
        vals, rows, seen = shapes + [None] * len(self._nodes), [], set()
        for i, (li, ins, multi) in enumerate(self._nodes):
            layer = self.layers[li]
            arg = [vals[t] for t in ins] if multi else vals[ins[0]]
            try:
                out = tuple(layer.output_shape(arg))
            except ValueError as e:
                raise ValueError(f"node {self._tensor_names[k + i]} ({layer.describe()}) cannot take input "
                                 f"{arg if multi else _shape_str(arg)}: {e}") from None
            rows.append({"name": self._tensor_names[k + i], "layer": layer.describe(), "output_shape": out,
                         "inputs": [self._tensor_names[t] for t in ins], "shared": li in seen,
                         "params": 0 if li in seen else sum(p.size for p in layer.parameters()),
                         "flops": int(layer.flops(arg))})
            seen.add(li)
            vals[k + i] = out
        s = GraphSummary(shapes[0], rows)
        s.input_shapes = shapes
        outs = [vals[t] for t in self._output_ids]
        s.output_shapes = outs
        return s

    def output_shape(self, input_shape):
        s = self.summary(input_shape)
        return s.output_shapes[0] if self._single_out else s.output_shapes

    # -- description --------------------------------------------------------------------

    def get_config(self) -> dict:
        k = len(self._input_shapes)
        names = self._tensor_names
        return {"class": "Model",
                "layers": [{"class": type(layer).__name__, "config": layer.get_config()} for layer in self.layers],
                "inputs": [{"name": names[i], "shape": list(s)} for i, s in enumerate(self._input_shapes)],
                "nodes": [{"name": names[k + i], "layer": li, "inputs": [names[t] for t in ins]}
                          for i, (li, ins, _) in enumerate(self._nodes)],
                "outputs": [names[t] for t in self._output_ids],
                "single_input": self._single_in, "single_output": self._single_out}

    @classmethod
    def from_config(cls, config: dict) -> "Model":
        """Rebuild from ``get_config()``; ValueError (naming the problem) for a malformed graph."""
        if not isinstance(config, dict):
            raise ValueError(f"a graph description must be an object, got {type(config).__name__}")
        specs, inputs, nodes, outputs = (config.get(k) for k in ("layers", "inputs", "nodes", "outputs"))
        for key, v in (("layers", specs), ("inputs", inputs), ("nodes", nodes), ("outputs", outputs)):
            if not isinstance(v, list) or not v:
                raise ValueError(f"the graph's {key!r} must be a non-empty list")
        if len(specs) > MAX_LAYERS or len(nodes) > MAX_NODES:
            raise ValueError(f"the graph has {len(specs):,} layers and {len(nodes):,} nodes; at most "
                             f"{MAX_LAYERS:,} layers and {MAX_NODES:,} nodes are built")
        names = []
        for i, spec in enumerate(inputs):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise ValueError(f"graph input {i} must be an object with a string 'name' and a 'shape'")
            names.append(spec["name"])
        for i, n in enumerate(nodes):
            if not isinstance(n, dict) or not isinstance(n.get("name"), str) or \
                    not isinstance(n.get("layer"), int) or isinstance(n.get("layer"), bool) or \
                    not isinstance(n.get("inputs"), list) or not all(isinstance(r, str) for r in n["inputs"]):
                raise ValueError(f"graph node {i} must be an object with a string 'name', an int 'layer' and a "
                                 f"list of input names 'inputs'")
            if not 0 <= n["layer"] < len(specs):
                raise ValueError(f"graph node {n['name']!r} refers to layer {n['layer']}; the graph has "
                                 f"{len(specs)} layers")
            names.append(n["name"])
        if len(set(names)) != len(names):
            dup = sorted(name for name, count in Counter(names).items() if count > 1)
            raise ValueError(f"the graph names {dup} more than once")
        known = set(names)
        for n in nodes:
            bad = [r for r in n["inputs"] if r not in known]
            if bad:
                raise ValueError(f"graph node {n['name']!r} reads unknown node(s) {bad}")
        bad = [o for o in outputs if not isinstance(o, str) or o not in known]
        if bad:
            raise ValueError(f"the graph's outputs refer to unknown node(s) {bad}")
        used_layers = {n["layer"] for n in nodes}
        if len(used_layers) != len(specs):
            raise ValueError(f"layer(s) {sorted(set(range(len(specs))) - used_layers)} of the graph are used by no node")
        # Kahn's algorithm: what remains when no node is ready lies on a cycle.
        input_names = {spec["name"] for spec in inputs}
        waiting = {n["name"]: {r for r in n["inputs"] if r not in input_names} for n in nodes}
        readers = {}
        for n in nodes:
            for r in set(n["inputs"]):
                readers.setdefault(r, []).append(n["name"])
        by_name = {n["name"]: n for n in nodes}
        ready = [name for name, w in waiting.items() if not w]
        order = []
        while ready:
            name = ready.pop()
            order.append(by_name[name])
            for r in readers.get(name, []):
                waiting[r].discard(name)
                if not waiting[r]:
                    ready.append(r)
        if len(order) != len(nodes):
            cyc = sorted(name for name, w in waiting.items() if w)
            raise ValueError(f"the graph has a cycle through node(s) {cyc[:10]}{' ...' if len(cyc) > 10 else ''}")
        layers = [from_config(s) for s in specs]
        tensors = {spec["name"]: Input(spec.get("shape"), name=spec["name"]) for spec in inputs}
        for n in order:
            layer = layers[n["layer"]]
            args = [tensors[r] for r in n["inputs"]]
            t = layer(args if getattr(layer, "multi_input", False) else (args[0] if len(args) == 1 else args))
            t.name, t.auto = n["name"], False
            tensors[n["name"]] = t
        ins = [tensors[s["name"]] for s in inputs]
        outs = [tensors[o] for o in outputs]
        return cls(ins[0] if config.get("single_input", True) and len(ins) == 1 else ins,
                   outs[0] if config.get("single_output", True) and len(outs) == 1 else outs,
                   _layer_order=layers)


__all__ = ["Input", "Model", "SymbolicTensor", "GraphSummary", "apply_symbolic"]
