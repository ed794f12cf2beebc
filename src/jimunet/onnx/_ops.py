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
from . import ONNXError, layout as L


def _attrs(node):
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _label(node, index):
    return f"node {node.name!r} ({node.op_type})" if node.name else f"node #{index} ({node.op_type})"


def _static_dims(value_info):
    """Per-tensor dims (batch included) as ints, or None where symbolic / unknown."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


class OpConverters:
    """Checks of the current tensor and the ``op_*`` converters; mixed into ``_import._Importer``,
    which provides ``add``, ``weight``, ``const``, ``shape``, ``view``, ``input`` and ``onnx_shape``."""

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
        strides = tuple(int(s) for s in a.get("strides", [1, 1]))
        if len(strides) != 2 or min(strides) < 1:
            raise ONNXError(f"{label}: strides {list(strides)}; expected two positive ints")
        dil = [int(d) for d in a.get("dilations", [1, 1])]
        if any(d != 1 for d in dil):
            raise ONNXError(f"{label}: dilations {dil}; jimunet supports only dilations [1, 1]")
        hw = self.shape[:2]
        same = pad_amounts(hw, kernel, strides, "same")
        auto = a.get("auto_pad", "NOTSET")
        if auto == "NOTSET":
            raw = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
            if len(raw) != 4 or min(raw) < 0:
                raise ONNXError(f"{label}: pads {raw}; expected four non-negative ints [top, left, bottom, right]")
            pads = L.pads_from_onnx(raw)
        elif auto == "VALID":
            pads = ((0, 0), (0, 0))
        elif auto == "SAME_UPPER":
            pads = same
        elif auto == "SAME_LOWER":
            pads = tuple((b, t) for t, b in same)
        else:
            raise ONNXError(f"{label}: auto_pad={auto!r}; supported: NOTSET, VALID, SAME_UPPER, SAME_LOWER")
        if int(a.get("ceil_mode", 0)):
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

    # ops: each takes (node, label, chain, k) and returns the index of the next chain node --

    def op_Conv(self, node, label, chain, k):
        self.need_nchw(label)
        a = _attrs(node)
        w = self.weight(node.input[1], label, 4)
        o, c_in, kh, kw = w.shape
        if int(a.get("group", 1)) != 1:
            raise ONNXError(f"{label}: group={a['group']} (a grouped or depthwise convolution); jimunet's Conv2D "
                            "supports group=1 only")
        if c_in != self.shape[2]:
            raise ONNXError(f"{label}: its weight {node.input[1]!r} expects {c_in} input channels, but its input "
                            f"has {self.shape[2]}: the shapes do not chain")
        if "kernel_shape" in a and list(a["kernel_shape"]) != [kh, kw]:
            raise ONNXError(f"{label}: kernel_shape {list(a['kernel_shape'])} disagrees with its weight's "
                            f"{[kh, kw]}")
        padding, strides = self.window(label, (kh, kw), a)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = self.weight(node.input[2], label, 1)
            if bias.shape != (o,):
                raise ONNXError(f"{label}: bias {node.input[2]!r} has shape {list(bias.shape)}, expected [{o}]")
        layer = self.add(lambda: Conv2D(c_in, o, (kh, kw), stride=strides, padding=padding,
                                        use_bias=bias is not None, weight_init="zeros", rng=0,
                                        dtype=self.dtype), label)
        layer.weight.data[...] = L.conv_weight_from_onnx(w)
        if bias is not None:
            layer.bias.data[...] = bias
        return k + 1

    def _pool(self, node, label, k, cls):
        self.need_nchw(label)
        a = _attrs(node)
        kernel = tuple(int(v) for v in a.get("kernel_shape", []))
        if len(kernel) != 2 or min(kernel) < 1:
            raise ONNXError(f"{label}: kernel_shape {list(kernel)}; expected two positive ints")
        padding, strides = self.window(label, kernel, a)
        kwargs = {}
        if cls is AvgPool2D:
            include = bool(int(a.get("count_include_pad", 0)))
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
        layer = self.add(lambda: Dense(n_in, n_out, use_bias=bias is not None, weight_init="zeros", rng=0,
                                       dtype=self.dtype), label)
        layer.weight.data[...] = w
        if bias is not None:
            layer.bias.data[...] = bias

    def _bias(self, name, label, n_out, scale=1.0):
        b = self.const(name, label)
        if b.dtype.kind != "f" or not np.all(np.isfinite(b)):
            raise ONNXError(f"{label}: bias {name!r} must hold finite floats (dtype {b.dtype})")
        if b.size == 1:
            b = np.full(n_out, b.item())
        elif b.shape in ((n_out,), (1, n_out)):
            b = b.reshape(n_out)
        else:
            raise ONNXError(f"{label}: bias {name!r} of shape {list(b.shape)} is not one value per each of "
                            f"the {n_out} outputs")
        return b.astype(np.float64) * scale

    def op_Gemm(self, node, label, chain, k):
        self.need_flat(label)
        a = _attrs(node)
        if int(a.get("transA", 0)):
            raise ONNXError(f"{label}: transA=1 transposes the batch; jimunet supports transA=0")
        w = self.weight(node.input[1], label, 2)
        if int(a.get("transB", 0)):
            w = w.T
        w = w * float(a.get("alpha", 1.0))
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = self._bias(node.input[2], label, w.shape[1], float(a.get("beta", 1.0)))
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
        alpha = float(_attrs(node).get("alpha", 0.01))
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
        a = _attrs(node)
        if self.opset < 12:
            ratio = float(a.get("ratio", 0.5))
        else:
            ratio = float(self.const(node.input[1], label)) if len(node.input) > 1 and node.input[1] else 0.5
            if len(node.input) > 2 and node.input[2] and bool(self.const(node.input[2], label)):
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
        axis = int(_attrs(node).get("axis", 1))
        if axis < 0:
            axis += rank
        if axis != 1:
            raise ONNXError(f"{label}: axis={axis}; jimunet flattens every axis but the batch axis (axis=1)")
        self._flatten(label)
        return k + 1

    def op_Reshape(self, node, label, chain, k):
        target = [int(v) for v in np.asarray(self.const(node.input[1], label)).ravel()]
        n = math.prod(self.shape)
        dims = _static_dims(self.input)
        batch = dims[0] if dims else None
        keep = not int(_attrs(node).get("allowzero", 0))
        first_ok = len(target) == 2 and (target[0] == -1 or (target[0] == 0 and keep) or
                                         (batch is not None and target[0] == batch))
        if first_ok and (target[1] == n or (target[1] == -1 and target[0] != -1)):
            self._flatten(label)
            return k + 1
        raise ONNXError(f"{label}: Reshape to {target}; jimunet supports Reshape only as a flatten to "
                        f"(batch, {n}) (e.g. torch.flatten(x, 1) or nn.Flatten())")

    def op_Transpose(self, node, label, chain, k):
        rank = len(self.shape) + 1
        perm = self.perm(node, chain[k][0], rank)
        if rank > 2:
            self.view = L.compose(self.view, perm)
        return k + 1

    def op_Softmax(self, node, label, chain, k):
        axis = int(_attrs(node).get("axis", -1 if self.opset >= 13 else 1))
        if k != len(chain) - 1 or len(self.shape) != 1 or axis not in (1, -1):
            raise ONNXError(f"{label}: jimunet supports {node.op_type} only as the last node, over the classes "
                            "of a (batch, classes) tensor")
        # jimunet models output logits (the loss and predict apply softmax). Softmax and
        # LogSoftmax of these logits are what the graph gave: the same classes, ranked alike.
        self.dropped = node.op_type
        return k + 1

    op_LogSoftmax = op_Softmax
