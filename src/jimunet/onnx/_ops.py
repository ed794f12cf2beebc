"""The ONNX op converters of the importer (``_import._Importer``): one method per op.

Each ``op_<Type>(node, label, chain, k)`` appends the jimunet layer(s) for node ``k`` of
the chain (through ``self.add``, which also tracks the current tensor's shape and its
layout ``self.view``, see ``layout``) and returns the index of the next chain node.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

from ..functional.padding import pad_amounts
from ..layers import AvgPool2D, Conv2D, Dense, Dropout, Flatten, LeakyReLU, MaxPool2D, ReLU, Sigmoid, Tanh
from . import layout as L
from ._errors import ONNXError


class Attrs:
    """A node's attributes, each read with the type and length its op needs.

    ``Attrs(node, label).ints("strides", [1, 1], 2)``: the value, or the default when absent;
    ``ONNXError`` naming the node and attribute when it has another type (e.g. a float for an
    int, a tensor, a list of the wrong length) or cannot be decoded.
    """

    def __init__(self, node, label):
        self.label, self.values = label, {}
        for a in node.attribute:
            try:
                v = helper.get_attribute_value(a)
                v = v.decode() if isinstance(v, bytes) else v
            except (ValueError, TypeError, UnicodeDecodeError):
                raise ONNXError(f"{label}: attribute {a.name[:80]!r} cannot be read (type {a.type})") from None
            self.values[a.name] = v

    def __contains__(self, name):
        return name in self.values

    def raw(self, name, default=None):
        return self.values.get(name, default)

    def _bad(self, name, expected):
        v = self.values[name]
        shown = repr(v)[:80] if isinstance(v, (int, float, str, list)) else f"a {type(v).__name__}"
        return ONNXError(f"{self.label}: attribute {name!r} must be {expected}, got {shown}")

    def int(self, name, default):
        v = self.values.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._bad(name, "an int")
        return v

    def ints(self, name, default, length=None):
        v = self.values.get(name, default)
        if not isinstance(v, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in v) or \
                (length is not None and len(v) != length):
            raise self._bad(name, "a list of ints" if length is None else f"a list of {length} ints")
        return [int(i) for i in v]

    def float(self, name, default):
        v = self.values.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self._bad(name, "a float")
        return float(v)

    def str(self, name, default):
        v = self.values.get(name, default)
        if not isinstance(v, str):
            raise self._bad(name, "a string")
        return v


def _label(node, index):
    op = node.op_type[:40]
    return f"node {node.name[:80]!r} ({op})" if node.name else f"node #{index} ({op})"


def _static_dims(value_info):
    """Per-tensor dims (batch included) as ints, or None where symbolic / unknown."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


class OpConverters:
    """Checks of the current tensor and the ``op_*`` converters; mixed into ``_import._Importer``,
    which provides ``add``, ``weight``, ``finite``, ``const``, ``perm``, ``shape``, ``view``, ``input``
    and ``onnx_shape``."""

    def need_nchw(self, label):
        if len(self.shape) != 3:
            raise ONNXError(f"{label}: needs a 4-D (batch, channels, height, width) tensor, but gets one of "
                            f"per-sample shape {list(self.onnx_shape())}")
        if self.view != L.NCHW:
            raise ONNXError(f"{label}: reads its input as NCHW, but that tensor holds jimunet's NHWC axes "
                            f"{list(self.view)}; jimunet supports layouts where convolutions see "
                            "(batch, channels, height, width)")

    def need_flat(self, label):
        if len(self.shape) != 1:
            raise ONNXError(f"{label}: needs a (batch, features) tensor, but gets one of per-sample shape "
                            f"{list(self.onnx_shape())}; jimunet's Dense reads flat features (add a Flatten)")

    def window(self, label, kernel, a):
        """jimunet padding (``"valid"``, ``"same"`` or a pair) and strides of a Conv/pool node's attributes."""
        strides = tuple(a.ints("strides", [1, 1], 2))
        if min(strides) < 1:
            raise ONNXError(f"{label}: strides {list(strides)}; expected two positive ints")
        dil = a.ints("dilations", [1, 1], 2)
        if any(d != 1 for d in dil):
            raise ONNXError(f"{label}: dilations {dil}; jimunet supports only dilations [1, 1]")
        hw = self.shape[:2]
        same = pad_amounts(hw, kernel, strides, "same")
        auto = a.str("auto_pad", "NOTSET")
        if auto == "NOTSET":
            raw = a.ints("pads", [0, 0, 0, 0], 4)
            if min(raw) < 0:
                raise ONNXError(f"{label}: pads {raw}; expected four non-negative ints [top, left, bottom, right]")
            pads = L.pads_from_onnx(raw)
        elif auto == "VALID":
            pads = ((0, 0), (0, 0))
        elif auto == "SAME_UPPER":
            pads = same
        elif auto == "SAME_LOWER":
            pads = tuple((b, t) for t, b in same)
        else:
            raise ONNXError(f"{label}: auto_pad={auto[:40]!r}; supported: NOTSET, VALID, SAME_UPPER, SAME_LOWER")
        if a.int("ceil_mode", 0):
            for n, (p0, p1), k, s in zip(hw, pads, kernel, strides):
                if (n + p0 + p1 - k) % s:
                    raise ONNXError(f"{label}: ceil_mode=1 rounds this output size up; jimunet's pools round "
                                    "down (ceil_mode=0), so the output would differ")
        if pads == ((0, 0), (0, 0)):
            return "valid", strides
        if pads[0][0] == pads[0][1] and pads[1][0] == pads[1][1]:
            return (pads[0][0], pads[1][0]), strides
        if pads == same:
            return "same", strides
        raise ONNXError(f"{label}: asymmetric pads {L.pads_to_onnx(pads)} ([top, left, bottom, right]) that are "
                        f"not TensorFlow's 'same' for a {hw[0]}x{hw[1]} input; jimunet supports symmetric "
                        "padding and 'same' (the smaller half before)")

    def scalar(self, name, label, what, kinds):
        """The one value of constant input ``name`` (a Dropout ratio, training_mode)."""
        v = np.asarray(self.const(name, label))
        if v.size != 1 or v.dtype.kind not in kinds:
            raise ONNXError(f"{label}: its {what} input {name!r} must be a single "
                            f"{'boolean' if kinds == 'b' else 'number'}, got {v.dtype} of shape {list(v.shape)}")
        return v.reshape(()).item()

    # ops: each takes (node, label, chain, k) and returns the index of the next chain node --

    def op_Conv(self, node, label, chain, k):
        self.need_nchw(label)
        a = Attrs(node, label)
        w = self.weight(node.input[1], label, 4)
        o, c_in, kh, kw = w.shape
        if a.int("group", 1) != 1:
            raise ONNXError(f"{label}: group={a.raw('group')} (a grouped or depthwise convolution); jimunet's "
                            "Conv2D supports group=1 only")
        if c_in != self.shape[2]:
            raise ONNXError(f"{label}: its weight {node.input[1]!r} expects {c_in} input channels, but its input "
                            f"has {self.shape[2]}: the shapes do not chain")
        if "kernel_shape" in a and a.ints("kernel_shape", None) != [kh, kw]:
            raise ONNXError(f"{label}: kernel_shape {a.raw('kernel_shape')} disagrees with its weight's {[kh, kw]}")
        padding, strides = self.window(label, (kh, kw), a)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = self.weight(node.input[2], label, 1)
            if bias.shape != (o,):
                raise ONNXError(f"{label}: bias {node.input[2]!r} has shape {list(bias.shape)}, expected [{o}]")
        self.add(lambda: Conv2D(c_in, o, (kh, kw), stride=strides, padding=padding, use_bias=bias is not None,
                                dtype=self.dtype), label, weight=L.conv_weight_from_onnx(w), bias=bias)
        return k + 1

    def _pool(self, node, label, k, cls):
        self.need_nchw(label)
        a = Attrs(node, label)
        kernel = tuple(a.ints("kernel_shape", [], 2) if "kernel_shape" in a else ())
        if len(kernel) != 2 or min(kernel) < 1:
            raise ONNXError(f"{label}: kernel_shape {list(kernel)}; expected two positive ints")
        padding, strides = self.window(label, kernel, a)
        kwargs = {}
        if cls is AvgPool2D:
            include = bool(a.int("count_include_pad", 0))
            if padding == "same" and include:
                raise ONNXError(f"{label}: count_include_pad=1 with asymmetric ('same') padding; jimunet's "
                                "'same' average pool divides by the real cells under each window only")
            kwargs["count_include_pad"] = include
        self.add(lambda: cls(kernel, strides, padding, **kwargs), label)
        return k + 1

    def op_MaxPool(self, node, label, chain, k):
        return self._pool(node, label, k, MaxPool2D)  # ONNX pads MaxPool with -inf, as jimunet does

    def op_AveragePool(self, node, label, chain, k):
        return self._pool(node, label, k, AvgPool2D)

    def _dense(self, label, w, bias):
        """A Dense layer from an ONNX ``(in, out)`` weight reading the current flat tensor."""
        n_in, n_out = w.shape
        if n_in != self.shape[0]:
            raise ONNXError(f"{label}: its weight expects {n_in} input features, but its input has "
                            f"{self.shape[0]}: the shapes do not chain")
        w = L.dense_rows_from_onnx(w, self.order)
        self.order = None
        self.add(lambda: Dense(n_in, n_out, use_bias=bias is not None, dtype=self.dtype), label, weight=w, bias=bias)

    def _bias(self, name, label, n_out, scale=1.0):
        b = self.const(name, label)
        if b.dtype.kind != "f":
            raise ONNXError(f"{label}: bias {name!r} must hold floats, got dtype {b.dtype}")
        if b.size == 1:
            b = np.full(n_out, b.item())
        elif b.shape in ((n_out,), (1, n_out)):
            b = b.reshape(n_out)
        else:
            raise ONNXError(f"{label}: bias {name!r} of shape {list(b.shape)} is not one value per each of "
                            f"the {n_out} outputs")
        with np.errstate(over="ignore", invalid="ignore"):
            return self.finite(b.astype(np.float64) * scale, label, f"bias {name!r}" + (
                f" times beta={scale:g}" if scale != 1.0 else ""))

    def op_Gemm(self, node, label, chain, k):
        self.need_flat(label)
        a = Attrs(node, label)
        if a.int("transA", 0):
            raise ONNXError(f"{label}: transA=1 transposes the batch; jimunet supports transA=0")
        w = self.weight(node.input[1], label, 2)
        if a.int("transB", 0):
            w = w.T
        alpha = a.float("alpha", 1.0)
        if alpha != 1.0:
            with np.errstate(over="ignore", invalid="ignore"):
                w = self.finite(w * alpha, label, f"weight {node.input[1]!r} times alpha={alpha:g}")
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = self._bias(node.input[2], label, w.shape[1], a.float("beta", 1.0))
        self._dense(label, w, bias)
        return k + 1

    def op_MatMul(self, node, label, chain, k):
        self.need_flat(label)
        w = self.weight(node.input[1], label, 2)
        bias, step = None, 1
        if k + 1 < len(chain) and chain[k + 1][1].op_type == "Add":  # MatMul + Add = Dense with bias
            add = chain[k + 1][1]
            other = [x for x in add.input if x != node.output[0]]
            if len(other) == 1:
                bias, step = self._bias(other[0], _label(add, chain[k + 1][0]), w.shape[1]), 2
        self._dense(label, w, bias)
        return k + step

    def op_Add(self, node, label, chain, k):
        raise ONNXError(f"{label}: jimunet supports Add only as the bias right after a MatMul")

    def op_Relu(self, node, label, chain, k):
        self.add(ReLU, label)
        return k + 1

    def op_LeakyRelu(self, node, label, chain, k):
        alpha = Attrs(node, label).float("alpha", 0.01)
        self.add(lambda: LeakyReLU(alpha), label)
        return k + 1

    def op_Sigmoid(self, node, label, chain, k):
        self.add(Sigmoid, label)
        return k + 1

    def op_Tanh(self, node, label, chain, k):
        self.add(Tanh, label)
        return k + 1

    def op_Identity(self, node, label, chain, k):
        return k + 1

    def op_Dropout(self, node, label, chain, k):
        a = Attrs(node, label)
        if self.opset < 12:
            ratio = a.float("ratio", 0.5)
        else:
            ratio = 0.5
            if len(node.input) > 1 and node.input[1]:
                ratio = float(self.scalar(node.input[1], label, "ratio", "f"))
            if len(node.input) > 2 and node.input[2] and self.scalar(node.input[2], label, "training_mode", "b"):
                raise ONNXError(f"{label}: training_mode=True drops values at inference; jimunet's Dropout is "
                                "the identity at inference")
        if not 0.0 <= ratio < 1.0:
            raise ONNXError(f"{label}: ratio {ratio}; expected a drop probability in [0, 1)")
        if ratio > 0:
            self.add(lambda: Dropout(ratio), label)
        return k + 1

    def _flatten(self, label):
        if len(self.shape) > 1:
            self.order = L.flatten_order(self.shape, self.view)
            self.add(Flatten, label)
            self.view = (0, 1)

    def op_Flatten(self, node, label, chain, k):
        rank = len(self.shape) + 1
        axis = Attrs(node, label).int("axis", 1)
        if axis < 0:
            axis += rank
        if axis != 1:
            raise ONNXError(f"{label}: axis={axis}; jimunet flattens every axis but the batch axis (axis=1)")
        self._flatten(label)
        return k + 1

    def op_Reshape(self, node, label, chain, k):
        shape = np.asarray(self.const(node.input[1], label))
        if shape.dtype.kind not in "iu" or shape.ndim != 1:
            raise ONNXError(f"{label}: its shape input {node.input[1]!r} must be a 1-D int64 tensor, got "
                            f"{shape.dtype} of shape {list(shape.shape)}")
        target = [int(v) for v in shape[:8]]
        n = math.prod(self.shape)
        dims = _static_dims(self.input)
        batch = dims[0] if dims else None
        keep = not Attrs(node, label).int("allowzero", 0)
        first_ok = len(shape) == 2 and (target[0] == -1 or (target[0] == 0 and keep) or
                                        (batch is not None and target[0] == batch))
        if first_ok and (target[1] == n or (target[1] == -1 and target[0] != -1)):
            self._flatten(label)
            return k + 1
        raise ONNXError(f"{label}: Reshape to {target}{' ...' if len(shape) > 8 else ''}; jimunet supports "
                        f"Reshape only as a flatten to (batch, {n}) (e.g. torch.flatten(x, 1) or nn.Flatten())")

    def op_Transpose(self, node, label, chain, k):
        rank = len(self.shape) + 1
        perm = self.perm(node, label, rank)
        if rank > 2:
            self.view = L.compose(self.view, perm)
        return k + 1

    def op_Softmax(self, node, label, chain, k):
        axis = Attrs(node, label).int("axis", -1 if self.opset >= 13 else 1)
        if k != len(chain) - 1 or len(self.shape) != 1 or axis not in (1, -1):
            raise ONNXError(f"{label}: jimunet supports {node.op_type} only as the last node, over the classes "
                            "of a (batch, classes) tensor")
        # jimunet models output logits (the loss and predict apply softmax). Softmax and
        # LogSoftmax of these logits are what the graph gave: the same classes, ranked alike.
        self.dropped = node.op_type
        return k + 1

    op_LogSoftmax = op_Softmax
