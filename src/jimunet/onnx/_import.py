"""ONNX graph → jimunet ``Sequential`` (imports ``onnx``; reached through ``jimunet.onnx``).

The graph is walked from its one input to its one output. Along the way each tensor's
relation to the jimunet activation it holds is tracked (see ``layout``): ONNX's convolutions
see NCHW while jimunet runs NHWC, and a Flatten of an NCHW tensor orders features
channel-major, so the Dense layer reading it gets its rows permuted to NHWC order.
The converters of the single ops are in ``_ops``.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .._messages import shown
from ..functional.padding import pad_amounts
from ..layers import AvgPool2D, Conv2D, Dropout, LeakyReLU, MaxPool2D
from ..layers.base import placeholder_parameters
from ..layers.memory import check_network_activations
from ..model import MAX_LAYERS, Sequential, build_architecture
from . import layout as L
from ._errors import ONNXError
from ._files import (byte_limit, check_counts, check_skeleton, external_tensors, over_budget, read_external,
                     read_model_file)
from ._ops import Attrs, OpConverters, _label, _static_dims

SUPPORTED_OPS = ("Conv", "MaxPool", "AveragePool", "Gemm", "MatMul (+ Add as its bias)", "Relu", "LeakyRelu",
                 "Sigmoid", "Tanh", "Flatten", "Reshape (to (batch, features))", "Transpose (layout changes)",
                 "Dropout", "Identity", "Softmax/LogSoftmax (last node only)", "Constant")
_FLOAT_INPUTS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
_MIN_OPSET = 7
MAX_DIM = 2 ** 31  # largest size of an input axis (as jn.load reads a recorded input shape)


def load(path, dtype="float32", max_bytes=None, max_activation_bytes=None):
    path = os.fspath(path)
    proto, size = read_model_file(path, max_bytes)
    importer = _importer(proto, dtype=dtype, base_dir=os.path.dirname(os.path.abspath(path)), source=path,
                         max_bytes=max_bytes, file_bytes=size)
    del proto  # the importer lets go of it once it has the weights: it is not kept beside the model
    importer.owned = True
    return importer.build(max_activation_bytes)


def from_onnx(proto, dtype="float32", base_dir=None, source="the ONNX model", max_bytes=None,
              max_activation_bytes=None):
    """The model ``proto`` describes; ``proto`` is only read (its external data too, never written)."""
    return _importer(proto, dtype, base_dir, source, max_bytes).build(max_activation_bytes)


def _importer(proto, dtype="float32", base_dir=None, source="the ONNX model", max_bytes=None, file_bytes=None):
    """The ``_Importer`` of ``proto``, after the checks that need no walk (sizes, files, ONNX's checker)."""
    if not isinstance(proto, onnx.ModelProto):
        raise ONNXError(f"expected an onnx.ModelProto, got {type(proto).__name__}")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype not in (np.float32, np.float64):
        raise ONNXError(f"dtype must be float32 or float64, got {shown(dtype)}")
    limit = byte_limit(max_bytes)
    if not proto.HasField("graph") or not proto.graph.node:
        raise ONNXError(f"{source}: not an ONNX model (it holds no graph nodes); it may be truncated or "
                        "not an .onnx file")
    g = proto.graph
    check_counts({"nodes": len(g.node), "initializers": len(g.initializer), "value_info entries": len(g.value_info)},
                 source)
    embedded = proto.ByteSize() if file_bytes is None else file_bytes
    if embedded > limit:
        raise over_budget(f"{source}: the model has", embedded, limit)
    found = external_tensors(proto, base_dir, source, embedded, limit)
    check_skeleton(proto, source)
    return _Importer(proto, dtype, source, read_external(found), limit)


# -- the walk --------------------------------------------------------------------------------

class _Importer(OpConverters):
    def __init__(self, proto, dtype, source, external, limit):
        self.proto, self.graph, self.dtype, self.source = proto, proto.graph, dtype, source
        self.external, self.limit = external, limit   # {initializer name: array}, the byte budget
        self.owned = False  # whether build() may let go of the proto before it builds the model
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if self.opset is None or self.opset < _MIN_OPSET:
            raise ONNXError(f"{source}: needs the default ONNX opset {_MIN_OPSET} or newer, "
                            f"the model imports {self.opset}")
        self.consts = {t.name: t for t in self.graph.initializer}
        self.const_nodes = set()  # Constant nodes, and Identity nodes of constants (PyTorch's shared weights)
        for i, n in enumerate(self.graph.node):
            if n.domain not in ("", "ai.onnx") or not n.output:
                continue
            if n.op_type == "Constant":
                self.consts[n.output[0]] = (n, i)
                self.const_nodes.add(i)
            elif n.op_type == "Identity" and n.input and n.input[0] in self.consts:
                self.consts[n.output[0]] = self.consts[n.input[0]]  # nodes come in topological order
                self.const_nodes.add(i)
        self.layers, self.in_shapes, self.state = [], [], {}
        self.produced = {}  # ONNX tensor name -> its per-sample ONNX shape

    # constants ------------------------------------------------------------------------

    def const(self, name, label):
        """The value of a constant input (initializer or Constant node) as a NumPy array."""
        if name not in self.consts:
            raise ONNXError(f"{label}: its input {name!r} must be a constant (an initializer), but it is "
                            "computed in the graph")
        c = self.consts[name]
        try:
            if isinstance(c, tuple):
                node, i = c
                a = Attrs(node, _label(node, i))
                if isinstance(a.raw("value"), onnx.TensorProto):
                    return numpy_helper.to_array(a.raw("value"))
                for key, dt in (("value_float", np.float32), ("value_floats", np.float32),
                                ("value_int", np.int64), ("value_ints", np.int64)):
                    if isinstance(a.raw(key), (int, float, list)):
                        return np.asarray(a.raw(key), dt)
                raise ONNXError(f"{label}: Constant {name!r} has no value jimunet can read "
                                f"({sorted(a.values)[:5]}; expected value, value_float(s) or value_int(s))")
            if c.name in self.external:
                return self.external[c.name]
            return numpy_helper.to_array(c)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else "unreadable"
            raise ONNXError(f"{label}: constant {name!r} is corrupt ({why}); its data may not match its "
                            "shape and type") from None

    def weight(self, name, label, ndim):
        w = self.const(name, label)
        if w.dtype.kind != "f":
            raise ONNXError(f"{label}: weight {name!r} has dtype {w.dtype}; expected a floating-point tensor")
        if w.ndim != ndim:
            raise ONNXError(f"{label}: weight {name!r} has shape {list(w.shape)}; expected {ndim} dimensions")
        return self.finite(w.astype(np.float64), label, f"weight {name!r}")

    def finite(self, a, label, what):
        """``a``, after checking it is finite also in the model's dtype (a float32 model cannot hold 1e39)."""
        with np.errstate(over="ignore"):
            ok = bool(np.isfinite(a).all()) and bool(np.isfinite(a.astype(self.dtype, copy=False)).all())
        if not ok:
            raise ONNXError(f"{label}: {what} holds NaN or infinity" + (
                f", or values beyond {self.dtype}'s range" if self.dtype != np.float64 else ""))
        return a

    # graph structure --------------------------------------------------------------------

    def chain(self):
        """The nodes from the input to the output, checked to be a single path."""
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        outputs = list(self.graph.output)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ONNXError(f"{self.source}: the graph has {len(inputs)} inputs and {len(outputs)} outputs; "
                            "jimunet models take one input and give one output")
        self.input, self.output = inputs[0], outputs[0]
        compute = [(i, n) for i, n in enumerate(self.graph.node) if i not in self.const_nodes]
        users = defaultdict(list)
        for i, n in compute:
            for t in n.input:
                if t and t not in self.consts:
                    users[t].append((i, n))
        sparse_names = {s.values.name for s in self.graph.sparse_initializer}
        chain, t = [], self.input.name
        while True:
            nxt = users.get(t, [])
            if t == self.output.name:
                if nxt:
                    raise ONNXError(f"{_label(nxt[0][1], nxt[0][0])}: reads the graph's output {t!r}, "
                                    "which makes a branch; jimunet models are one chain")
                break
            if not nxt:
                raise ONNXError(f"{self.source}: tensor {t!r} is used by no node, so the graph's output "
                                f"{self.output.name!r} cannot be reached from its input along one chain")
            if len(nxt) > 1:
                names = ", ".join(_label(n, i) for i, n in nxt)
                raise ONNXError(f"tensor {t!r} feeds {len(nxt)} nodes ({names}): a branch; jimunet models are "
                                "one chain of layers")
            i, n = nxt[0]
            if n.domain not in ("", "ai.onnx"):
                raise ONNXError(f"{_label(n, i)}: op from domain {n.domain!r}; jimunet runs only standard "
                                f"ONNX ops: {', '.join(SUPPORTED_OPS)}")
            sparse = [x for x in n.input if x in sparse_names]
            if sparse:
                raise ONNXError(f"{_label(n, i)}: its input {sparse[0][:80]!r} is a sparse initializer; jimunet reads "
                                "dense initializers only")
            if sum(x == t for x in n.input) > 1 or any(x and x != t and x not in self.consts for x in n.input):
                raise ONNXError(f"{_label(n, i)}: combines two computed tensors (a branch or skip connection); "
                                "jimunet models are one chain of layers")
            for extra in n.output[1:]:
                if extra and (extra in users or extra == self.output.name):
                    raise ONNXError(f"{_label(n, i)}: its extra output {extra!r} is used; jimunet supports "
                                    "only the first output of an op")
            chain.append((i, n))
            if len(chain) > len(compute):
                raise ONNXError(f"{self.source}: the graph has a cycle")
            t = n.output[0]
        on_path = {i for i, _ in chain}
        for i, n in compute:
            if i not in on_path:
                raise ONNXError(f"{_label(n, i)}: not on the path from the graph's input to its output; "
                                "jimunet models are one chain of layers")
        return chain

    def input_view(self, chain, rank):
        """How the graph's 4-D input relates to jimunet's NHWC input (see ``layout``).

        The first Conv/pool reads NCHW, so the Transposes before it tell the input's
        layout; without spatial ops nothing says which axis holds channels, and jimunet
        takes the input exactly as the graph does (``None`` is returned).
        """
        if rank != 4:
            return tuple(range(rank))
        q = L.NHWC
        for i, n in chain:
            if n.op_type == "Transpose":
                q = L.compose(q, self.perm(n, _label(n, i), 4))
            elif n.op_type in ("Conv", "MaxPool", "AveragePool"):
                return L.view_before(q, L.NCHW)
            elif n.op_type not in ("Identity", "Dropout", "Relu", "LeakyRelu", "Sigmoid", "Tanh"):
                break
        return None

    def perm(self, node, label, rank):
        perm = tuple(Attrs(node, label).ints("perm", list(range(rank))[::-1]))
        if sorted(perm) != list(range(rank)) or perm[0] != 0:
            raise ONNXError(f"{label}: perm {list(perm)[:8]} on a {rank}-D tensor moves the batch "
                            "axis; jimunet supports Transpose only as a layout change with the batch axis first")
        return perm

    # building ---------------------------------------------------------------------------

    def build(self, max_activation_bytes=None):
        """The model: the graph walked into layers and weights, then built as ``jn.load`` builds one."""
        input_shape, metadata = self.walk()
        if self.owned:  # nothing refers to the proto any more: its memory returns before the model is built
            self.proto = self.graph = self.consts = self.input = self.output = None
            self.external = {}
        model = self.finish(input_shape, max_activation_bytes)
        model.metadata = metadata
        return model

    def walk(self):
        """``(per-sample input shape, metadata)``, with ``self.layers`` and ``self.state`` filled in."""
        chain = self.chain()
        if self.input.type.WhichOneof("value") != "tensor_type":
            kind = (self.input.type.WhichOneof("value") or "no type").replace("_type", "").replace("_", " ")
            raise ONNXError(f"{self.source}: the input {self.input.name[:80]!r} is a {kind}, not a tensor; jimunet "
                            "models take one float tensor")
        t = self.input.type.tensor_type
        if t.elem_type not in _FLOAT_INPUTS:
            try:
                name = helper.tensor_dtype_to_string(t.elem_type)
            except (KeyError, ValueError):
                name = f"number {t.elem_type}"
            raise ONNXError(f"{self.source}: the input {self.input.name[:80]!r} has element type {name}; jimunet "
                            "models take float tensors")
        dims = _static_dims(self.input)
        if dims is None or len(dims) not in (2, 3, 4) or any(d is None or d < 1 for d in dims[1:]):
            shown = "unknown" if dims is None else f"{dims[:8]}"[:-1] + (", ...]" if len(dims) > 8 else "]")
            raise ONNXError(f"{self.source}: the input {self.input.name[:80]!r} has shape {shown}; jimunet needs "
                            "(batch, features), (batch, d1, d2) or a 4-D image batch with fixed sizes after "
                            "the batch axis")
        sample = math.prod(dims[1:]) * self.dtype.itemsize
        if sample > self.limit or max(dims[1:]) > MAX_DIM:
            raise ONNXError(f"{self.source}: the input {self.input.name!r} has shape (batch, "
                            f"{', '.join(map(str, dims[1:]))}): one sample takes {sample:,} bytes as "
                            f"{self.dtype}, over the limit of {self.limit:,} bytes (and sizes up to {MAX_DIM:,}); "
                            "pass max_bytes=... to import a model for inputs this large")
        self.in_view = self.input_view(chain, len(dims))
        self.view = self.in_view or L.NHWC
        self.cur = self.input.name   # the ONNX tensor that holds the current activation
        jn = [0] * len(dims)
        for i, v in enumerate(self.view):
            jn[v] = dims[i]
        self.shape = tuple(jn[1:])   # jimunet's per-sample shape
        self.order = None            # flatten order (see layout.flatten_order) of a flat tensor
        jn_input_shape = self.shape
        self.dropped = None          # a final Softmax/LogSoftmax left out
        self.produced[self.input.name] = dims[1:]

        k = 0
        while k < len(chain):
            i, node = chain[k]
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None:
                raise ONNXError(f"{_label(node, i)}: jimunet cannot run the op {node.op_type}; supported ops: "
                                f"{', '.join(SUPPORTED_OPS)}")
            if node.input[0] != self.cur:
                raise ONNXError(f"{_label(node, i)}: the computed tensor must be its first input")
            k = handler(node, _label(node, i), chain, k)
            self.cur = chain[k - 1][1].output[0]
            self.produced[self.cur] = self.onnx_shape()

        if self.order is not None:
            raise ONNXError(f"{self.source}: the graph's output is a flatten of an NCHW tensor (channel-major "
                            "order), which jimunet's NHWC Flatten cannot reproduce in the same order; only a "
                            "Gemm/MatMul after it can absorb the reordering")
        self.check_declared_shapes()
        self.adopt_jimunet_config()
        layout = "features"
        if len(dims) == 4:
            layout = "as in the graph" if self.in_view is None else \
                {L.NCHW: "NCHW", L.NHWC: "NHWC"}.get(self.in_view, f"jimunet's NHWC axes {list(self.in_view)}")
        return jn_input_shape, {"onnx": {
            "source": os.path.basename(self.source), "producer": f"{self.proto.producer_name} "
            f"{self.proto.producer_version}".strip(), "opset": self.opset,
            "input_layout": layout, "onnx_input_shape": dims[1:], "input_shape": list(jn_input_shape),
            "dropped_final_op": self.dropped}}

    def finish(self, input_shape, max_activation_bytes=None):
        """The model, built the way ``jn.load`` builds a file's: from the architecture's description
        (each layer's arguments checked by its constructor, the layer count bounded), its memory
        per sample of ``input_shape`` bounded, then ``load_state_dict`` (names, shapes, dtypes,
        finite values, buffers), within the byte budget."""
        total = sum(a.size for a in self.state.values()) * self.dtype.itemsize
        if total > self.limit:
            raise over_budget(f"{self.source}: its weights as {self.dtype} take", total, self.limit)
        try:
            model = build_architecture(Sequential(self.layers).get_config(), self.source)
            check_network_activations(model, input_shape, max_activation_bytes)
            model.load_state_dict(self.state)
            model.summary(input_shape)
        except ValueError as e:  # a CheckpointError, or a value a layer refuses
            raise ONNXError(str(e) if str(e).startswith(self.source) else f"{self.source}: {e}") from None
        self.state = {}
        return model

    def add(self, layer_fn, label, **weights):
        """Append the layer ``layer_fn()`` makes (with placeholder parameters: ``finish`` builds the
        model) and keep its ``weights`` (name: array), cast to the model's dtype, for ``finish``."""
        if len(self.layers) >= MAX_LAYERS:
            raise ONNXError(f"{self.source}: {label} would be layer {len(self.layers) + 1:,}; jimunet models "
                            f"have at most {MAX_LAYERS:,} layers")
        try:
            with placeholder_parameters():
                layer = layer_fn()
            out = tuple(layer.output_shape(self.shape))
        except ValueError as e:
            raise ONNXError(f"{label}: {e}") from None
        for name, w in weights.items():
            if w is not None:
                self.state[f"{len(self.layers)}.{name}"] = np.ascontiguousarray(self.finite(w, label, name), self.dtype)
        self.layers.append(layer)
        self.in_shapes.append(self.shape)
        self.shape = out
        return layer

    def onnx_shape(self):
        if len(self.shape) + 1 != len(self.view):
            return list(self.shape)
        full = (None,) + self.shape
        return [full[v] for v in self.view][1:]

    def check_declared_shapes(self):
        declared = {v.name: v for v in list(self.graph.value_info) + [self.output]}
        for name, have in self.produced.items():
            if name not in declared:
                continue
            dims = _static_dims(declared[name])
            if dims is None:
                continue
            want = dims[1:]
            if len(want) != len(have) or any(w is not None and w != h for w, h in zip(want, have)):
                raise ONNXError(f"{self.source}: the graph declares tensor {name!r} as (batch, "
                                f"{', '.join('?' if w is None else str(w) for w in want)}), but its nodes "
                                f"produce (batch, {', '.join(map(str, have))}): the shapes do not chain")

    # jimunet's own exports carry their architecture: restore details the graph cannot say --

    def adopt_jimunet_config(self):
        """Details a jimunet export records in its metadata (a hint only: anything odd in it is ignored;
        what is adopted is checked again by the layers' constructors in ``finish``)."""
        if self.proto.producer_name != "jimunet":
            return
        props = {p.key: p.value for p in self.proto.metadata_props}
        try:
            arch = json.loads(props.get("architecture", "null"))["layers"]
        except (TypeError, KeyError, ValueError, RecursionError):
            return
        if not isinstance(arch, list) or [c.get("class") if isinstance(c, dict) else None for c in arch] != \
                [type(layer).__name__ for layer in self.layers]:
            return
        for layer, hw, cfg in zip(self.layers, self.in_shapes, arch):
            c = cfg.get("config", {})
            if not isinstance(c, dict):
                continue
            if isinstance(layer, (Conv2D, MaxPool2D, AvgPool2D)) and c.get("padding") == "same":
                window = layer.kernel_size if isinstance(layer, Conv2D) else layer.pool_size
                if pad_amounts(hw[:2], window, layer.stride, "same") == \
                        pad_amounts(hw[:2], window, layer.stride, layer.padding):
                    layer.padding = "same"  # the same pads at this size, and TF's rule at others
            if isinstance(layer, AvgPool2D) and not isinstance(layer.padding, tuple):
                layer.count_include_pad = bool(c.get("count_include_pad", True))  # no effect without padding
            for attr, key in ((Dropout, "rate"), (LeakyReLU, "alpha")):
                v = c.get(key)
                if isinstance(layer, attr) and isinstance(v, float) and math.isfinite(v) and abs(v) < 1e30 and \
                        np.float32(v) == np.float32(getattr(layer, key)):
                    setattr(layer, key, v)  # ONNX stored it as float32
