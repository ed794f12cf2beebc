"""Branching models in the Keras functional style: ``jn.Input``, symbolic tensors, ``jn.Model``.

Calling a layer on a symbolic tensor (``jn.Input`` or what a layer made of one) records a
node instead of computing; ``jn.Model(inputs, outputs)`` collects the nodes between them
and runs them in topological order. Backward runs them in reverse, and a tensor read by
several nodes receives the sum of their gradients. There is no tape: each layer's own
``backward`` is called, exactly as in ``Sequential``.

A layer object used at several nodes shares its weights and everything else it keeps
(random stream, plans): a shared ``Dropout`` draws each node's mask from its one stream,
in node order. Only its per-call state, ``layer.cache`` (what its ``backward`` reads), is
kept per node: before a node runs, forward or backward, the model puts that node's cache
into the layer, and takes it back out after the forward. So a shared layer's backward
sees the call it differentiates, and its parameter gradients add up over its uses.

The symbolic tensors, nodes and ``Input`` live a level below, in ``jimunet.layers.symbolic``.

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

from collections import Counter

from ._messages import shown
from .layers.activations import fused_relu
from .layers.base import data_already_checked, from_config
from .layers.symbolic import Input, SymbolicTensor, shape_str
from .layers.memory import activation_elements
from .layers.merge import add_arrays
from .model import MAX_LAYERS, Network, Summary, register_network

MAX_NODES = MAX_LAYERS  # a described graph with more nodes is refused before any layer is built


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
        body = [(str(i), r["name"], r["layer"], ", ".join(r["inputs"]), shape_str(r["output_shape"]),
                 f"{r['params']:,}" + (" (shared)" if r.get("shared") else ""), f"{r['flops']:,}")
                for i, r in enumerate(self.rows)]
        total = ("", "total", "", "", "", f"{self.total_params:,}", f"{self.total_flops:,}")
        widths = [max(len(row[c]) for row in [head] + body + [total]) for c in range(7)]
        fmt = lambda row: "  ".join(v.ljust(w) if c < 5 else v.rjust(w)  # noqa: E731
                                    for c, (v, w) in enumerate(zip(row, widths)))
        rule = "-" * len(fmt(head))
        lines = [f"input: {', '.join(shape_str(s) for s in self.input_shapes)}", fmt(head), rule]
        lines += [fmt(r) for r in body]
        return "\n".join(lines + [rule, fmt(total), "FLOPs are per sample, forward pass."])

    __repr__ = __str__


def _sum(a, b):
    """``a + b`` into a new array: the two gradients of a tensor read by two nodes, on the
    threads (``layers.merge.add_arrays``; a 28×28×16 batch of 128 took ~1 ms on one)."""
    if getattr(a, "shape", None) != getattr(b, "shape", None) or a.ndim == 0:
        return a + b
    return add_arrays([a, b])


@register_network
class Model(Network):
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
        self._caches = None  # per node, what its layer's backward needs (see the module docstring)

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

    @property
    def cache(self):
        """The per-node caches of the last forward pass (None before one), in node order."""
        return self._caches

    @cache.setter
    def cache(self, caches):
        self._caches = None if caches is None else list(caches)

    def forward(self, x, training: bool = False, stages: slice = slice(None)):
        """The output for ``x``. ``stages``: run only these nodes of the run order, at cuts that
        one tensor crosses (see ``per_sample_stages``): from such a cut ``x`` is that tensor, and
        up to one the result is that tensor."""
        a, b = self._stage_bounds(stages)
        k = len(self._input_shapes)
        vals = [None] * (k + len(self._nodes))
        if a == 0:
            xs = self._as_list(x, "input arrays")
            for arr in xs:
                self._check_input(arr)  # dtype and NaN, once per input; layers check shapes
            vals[:k] = xs
        else:
            vals[self._cut(a)] = x
        # a new list: a network used at several nodes of a graph keeps one per node
        caches = list(self._caches or [None] * len(self._nodes))
        fused = self._fused()
        with data_already_checked():
            i = a
            while i < b:
                li, ins, multi = self._nodes[i]
                layer = self.layers[li]
                arg = [vals[t] for t in ins] if multi else vals[ins[0]]
                layer.cache = caches[i]  # the cache this call replaces (its buffers may be reused)
                if fused[i] and i + 1 < b:  # this node and the ReLU after it, as one pass
                    relu = self.layers[self._nodes[i + 1][0]]
                    relu.cache = caches[i + 1]
                    vals[k + i] = vals[k + i + 1] = layer.forward_relu(arg, training, relu)
                    caches[i], caches[i + 1] = layer.cache, relu.cache
                    i += 2
                    continue
                vals[k + i] = layer.forward(arg, training=training)
                caches[i] = layer.cache
                i += 1
        self._caches = caches
        if b < len(self._nodes):
            return vals[self._cut(b)]
        outs = [vals[i] for i in self._output_ids]
        return outs[0] if self._single_out else outs

    def backward(self, grad, input_grad: bool = True, stages: slice = slice(None)):
        """Back-propagate ``grad`` (a list for several outputs); ``input_grad=False`` skips dX of the inputs.
        ``stages``: only these nodes, as in ``forward`` (``grad`` is then the cut tensor's, if not the end)."""
        if self._caches is None:
            raise RuntimeError(f"{self.describe()}: backward() called before forward(x, training=...)")
        a, b = self._stage_bounds(stages)
        k = len(self._input_shapes)
        acc = [None] * (k + len(self._nodes))

        def add(t, g):  # never in place: g may be a view of an array someone else holds
            acc[t] = g if acc[t] is None else _sum(acc[t], g)
        if b == len(self._nodes):
            grads = [grad] if self._single_out else list(grad)
            if len(grads) != len(self._output_ids):
                raise ValueError(f"{self.describe()}: expected {len(self._output_ids)} output gradients, got "
                                 f"{len(grads)}")
            for t, g in zip(self._output_ids, grads):
                add(t, g)
        else:
            add(self._cut(b), grad)
        start = self._cut(a) if a else None  # the tensor the first of these nodes read
        for i in range(b - 1, a - 1, -1):
            li, ins, multi = self._nodes[i]
            g, acc[k + i] = acc[k + i], None
            need = input_grad or any(t >= k and t != start for t in ins)
            layer = self.layers[li]
            layer.cache = self._caches[i]
            dx = layer.backward(g, input_grad=need)
            if need:
                for t, d in zip(ins, dx if multi else [dx]):
                    add(t, d)
        if not input_grad:
            return None
        if a:
            return acc[start]
        return acc[0] if self._single_in else acc[:k]

    def _fused(self):
        """Per node: whether it runs together with the ReLU of the next node (``fused_relu``),
        which alone reads its output (the ReLU overwrites it)."""
        k, nodes = len(self._input_shapes), self._nodes
        alone = getattr(self, "_read_alone", None)  # the graph never changes: found once
        if alone is None:
            readers = Counter(t for _, ins, _ in nodes for t in ins)
            readers.update(self._output_ids)
            alone = self._read_alone = [i + 1 < len(nodes) and nodes[i + 1][1] == [k + i] and readers[k + i] == 1
                                        for i in range(len(nodes))]
        return [alone[i] and fused_relu(self.layers[li], self.layers[nodes[i + 1][0]])
                for i, (li, _, _) in enumerate(nodes)]

    # -- stages: where a data-parallel step may split the graph ---------------------------

    def _cut(self, n: int):
        """The one tensor through which nodes ``n:`` depend on the input and nodes ``:n`` (the
        input for ``n == 0``, the output after the last node), or None when there is not one."""
        cuts = getattr(self, "_cuts", None)  # the graph never changes: found once, in one sweep
        if cuts is None:
            k, nodes, out = len(self._input_shapes), self._nodes, self._output_ids[0]
            cuts = [None] * (len(nodes) + 1)
            if k == 1 and self._single_out:
                last, ends = {}, [[] for _ in nodes]  # tensor -> the last node reading it, and back
                for i, (_, ins, _) in enumerate(nodes):
                    for t in ins:
                        last[t] = i
                for t, i in last.items():
                    ends[i].append(t)
                live = {0}  # tensors made before position n and read at or after it
                cuts[0], cuts[-1] = 0, out
                for pos in range(1, len(nodes)):
                    if last.get(k + pos - 1, -1) >= pos:
                        live.add(k + pos - 1)
                    live.difference_update(ends[pos - 1])
                    cuts[pos] = next(iter(live)) if len(live) == 1 and out >= k + pos else None
            self._cuts = cuts
        return cuts[n]

    def _stage_bounds(self, stages: slice):
        a, b, step = stages.indices(len(self._nodes))
        b = max(a, b)
        if (a, b) == (0, len(self._nodes)):
            return a, b
        if step != 1 or self._cut(a) is None or self._cut(b) is None:
            raise ValueError(f"{self.describe()}: stages {a}:{b} do not start and end where one tensor "
                             f"carries everything the other nodes need")
        return a, b

    def per_sample_stages(self) -> int:
        """How many nodes, from the input on in run order, are layers that compute each sample on
        its own (``Layer.per_sample``) and end where one tensor carries all the rest needs. A
        data-parallel process runs these on its share of the batch alone (``ExactBlockStep``)."""
        n = 0
        while n < len(self._nodes) and self.layers[self._nodes[n][0]].per_sample:
            n += 1
        while n > 0 and self._cut(n) is None:
            n -= 1
        return n

    def stages_output_shape(self, input_shape, stages: slice) -> tuple:
        """The per-sample shape of the tensor after nodes ``stages`` (starting at the input)."""
        a, b = self._stage_bounds(stages)
        if a != 0:
            raise ValueError(f"{self.describe()}: stages_output_shape starts at the input, not at node {a}")
        t, k = self._cut(b), len(self._input_shapes)
        if t is None or t < k:
            return tuple(input_shape)
        return tuple(self.summary(input_shape).rows[t - k]["output_shape"])

    # -- shapes -------------------------------------------------------------------------

    def summary(self, input_shape=None) -> GraphSummary:
        """Per node: the layer, the tensors it reads, output shape, parameters (counted at a layer's
        first use) and FLOPs, computed by flowing ``input_shape`` (default: the ``jn.Input`` shapes;
        a list for several inputs) through the graph."""
        if input_shape is None:
            shapes = list(self._input_shapes)
        else:
            shapes = [input_shape] if self._single_in else input_shape
            if not isinstance(shapes, (list, tuple)) or not all(
                    isinstance(s, (list, tuple)) and all(d is None or hasattr(d, "__index__") for d in s) for s in shapes):
                raise ValueError(f"{self.describe()}: expected " + (
                    "a per-sample input shape such as (28, 28, 1)" if self._single_in else
                    f"a list of {len(self._input_shapes)} per-sample input shapes (the model takes a list of "
                    f"inputs)") + f", got {shown(input_shape, 200)}")
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
                                 f"{arg if multi else shape_str(arg)}: {e}") from None
            rows.append({"name": self._tensor_names[k + i], "layer": layer.describe(), "output_shape": out,
                         "inputs": [self._tensor_names[t] for t in ins], "shared": li in seen,
                         "params": 0 if li in seen else sum(p.size for p in layer.parameters()),
                         "flops": int(layer.flops(arg)), "activations": activation_elements(layer, arg, out)})
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
        for key in ("single_input", "single_output"):
            if not isinstance(config.get(key, True), bool):
                raise ValueError(f"the graph's {key!r} must be true or false, got {config[key]!r}"[:200])
        names = []
        for i, spec in enumerate(inputs):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or \
                    not isinstance(spec.get("shape"), list):
                raise ValueError(f"graph input {i} must be an object with a string 'name' and a list 'shape'")
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
        layers = [from_config(s, where=f"graph layer {i}") for i, s in enumerate(specs)]
        tensors = {spec["name"]: Input(spec.get("shape"), name=spec["name"]) for spec in inputs}
        for n in order:
            layer = layers[n["layer"]]
            args = [tensors[r] for r in n["inputs"]]
            t = layer(args if layer.multi_input else (args[0] if len(args) == 1 else args))
            t.name, t.auto = n["name"], False
            tensors[n["name"]] = t
        ins = [tensors[s["name"]] for s in inputs]
        outs = [tensors[o] for o in outputs]
        return cls(ins[0] if config.get("single_input", True) and len(ins) == 1 else ins,
                   outs[0] if config.get("single_output", True) and len(outs) == 1 else outs,
                   _layer_order=layers)


__all__ = ["Input", "Model", "SymbolicTensor", "GraphSummary"]
