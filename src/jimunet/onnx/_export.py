"""jimunet ``Sequential`` → ONNX graph (imports ``onnx``; reached through ``jimunet.onnx``)."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .._messages import shown
from .._version import __version__
from ..backend import to_numpy
from ..functional.padding import pad_amounts
from ..layers import AvgPool2D, Conv2D, Dense, Dropout, Flatten, LeakyReLU, MaxPool2D, ReLU, Sigmoid, Tanh
from ..model import Sequential
from ..serialization import atomic_writer
from . import MIN_OPSET, ONNXError, layout as L

_ELEMENTWISE = {ReLU: "Relu", Sigmoid: "Sigmoid", Tanh: "Tanh"}
_SUPPORTED = "Conv2D, MaxPool2D, AvgPool2D, Dense, ReLU, LeakyReLU, Sigmoid, Tanh, Flatten, Dropout"


class _Builder:
    """Collects nodes and initializers; tracks the current tensor (``cur``) and its layout."""

    def __init__(self, layout):
        self.nodes, self.inits = [], []
        self.cur, self.layout = "input", layout

    def weight(self, name, array, what):
        a = np.asarray(to_numpy(array))
        if not np.all(np.isfinite(a)):
            raise ONNXError(f"cannot export {what}: its {name} holds NaN or infinity")
        self.inits.append(numpy_helper.from_array(a.astype(np.float32), name))
        return name

    def node(self, op, inputs, name, doc="", **attrs):
        out = f"{name}/output"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, doc_string=doc, **attrs))
        return out

    def add(self, op, extra_inputs, name, doc="", **attrs):
        """A node reading the current tensor (and ``extra_inputs``); its output becomes current."""
        self.cur = self.node(op, [self.cur, *extra_inputs], name, doc, **attrs)

    def to(self, wanted, prefix):
        """Transpose the current tensor to layout ``wanted`` unless it is in it (or not spatial)."""
        if self.layout is not None and self.layout != wanted:
            perm = L.NHWC_TO_NCHW if wanted == "NCHW" else L.NCHW_TO_NHWC
            self.add("Transpose", [], f"{prefix}/to_{wanted.lower()}", f"layout change to {wanted}", perm=list(perm))
            self.layout = wanted


def _pads(layer, hw, window):
    return L.pads_to_onnx(pad_amounts(hw, window, layer.stride, layer.padding))


def _check_args(model, input_shape, layout, opset):
    """``(layout, per-sample shape)`` after checking the arguments of ``to_onnx``."""
    if not isinstance(model, Sequential):
        raise ONNXError(f"export needs a jimunet Sequential, got {type(model).__name__}")
    layout = str(layout).upper()
    if layout not in ("NHWC", "NCHW"):
        raise ONNXError(f'layout must be "NHWC" or "NCHW", got {shown(layout)}')
    max_opset = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
        raise ONNXError(f"opset must be an int from {MIN_OPSET} to {max_opset} (this onnx package's newest), "
                        f"got {shown(opset)}")
    shape = tuple(input_shape)
    if shape and shape[0] is None:  # a leading batch axis, as summary() accepts
        shape = shape[1:]
    if not shape or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in shape):
        raise ONNXError(f"input_shape must be the per-sample shape, e.g. (28, 28, 1), got {tuple(input_shape)}")
    shape = tuple(int(d) for d in shape)
    if layout == "NCHW" and len(shape) != 3:
        raise ONNXError(f"layout NCHW needs a (height, width, channels) input_shape, got {shape}")
    return layout, shape


def _add_layer(b, i, layer, hw):
    """The ONNX node(s) of layer ``i`` on an input of spatial size ``hw``."""
    name = f"jimunet/{i}/{type(layer).__name__}"
    doc = f"jimunet layer {i}: {layer.describe()}"
    what = f"layer {i} ({layer.describe()})"
    if isinstance(layer, Conv2D):
        b.to("NCHW", name)
        inputs = [b.weight(f"{i}.weight", L.conv_weight_to_onnx(to_numpy(layer.weight.data)), what)]
        if layer.bias is not None:
            inputs.append(b.weight(f"{i}.bias", layer.bias.data, what))
        b.add("Conv", inputs, name, doc, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
              pads=_pads(layer, hw, layer.kernel_size), dilations=[1, 1], group=1)
    elif isinstance(layer, MaxPool2D):
        b.to("NCHW", name)  # ONNX pads MaxPool with -inf: padding never wins, as in jimunet
        b.add("MaxPool", [], name, doc, kernel_shape=list(layer.pool_size), strides=list(layer.stride),
              pads=_pads(layer, hw, layer.pool_size))
    elif isinstance(layer, AvgPool2D):
        b.to("NCHW", name)
        # jimunet divides by the real cells under the window for "same", and for explicit
        # padding only when count_include_pad is False; ONNX's count_include_pad says the same.
        include = isinstance(layer.padding, tuple) and layer.count_include_pad
        b.add("AveragePool", [], name, doc, kernel_shape=list(layer.pool_size), strides=list(layer.stride),
              pads=_pads(layer, hw, layer.pool_size), count_include_pad=int(include))
    elif isinstance(layer, Flatten):
        b.to("NHWC", name)  # jimunet flattens NHWC: h·W·C + w·C + c
        b.add("Flatten", [], name, doc, axis=1)
        b.layout = None
    elif isinstance(layer, Dense):
        inputs = [b.weight(f"{i}.weight", layer.weight.data, what)]  # (in, out): Gemm's B as is
        if layer.bias is not None:
            inputs.append(b.weight(f"{i}.bias", layer.bias.data, what))
        b.add("Gemm", inputs, name, doc)
    elif type(layer) in _ELEMENTWISE:
        b.add(_ELEMENTWISE[type(layer)], [], name, doc)
    elif isinstance(layer, LeakyReLU):
        b.add("LeakyRelu", [], name, doc, alpha=layer.alpha)
    elif isinstance(layer, Dropout):
        # Identity at inference; the ratio travels along so an import can rebuild the layer.
        b.inits.append(numpy_helper.from_array(np.array(layer.rate, np.float32), f"{i}.ratio"))
        b.add("Dropout", [f"{i}.ratio"], name, doc)
    else:
        raise ONNXError(f"cannot export {what}: jimunet.onnx exports {_SUPPORTED}")


def to_onnx(model, input_shape=(28, 28, 1), *, layout="NHWC", softmax=False, opset=21):
    layout, shape = _check_args(model, input_shape, layout, opset)
    rows = model.summary(shape).rows  # checks that the shapes chain; ValueError names the layer
    spatial = len(shape) == 3
    b = _Builder(layout if spatial else None)
    in_dims = ["batch", *((shape[2], shape[0], shape[1]) if layout == "NCHW" else shape)]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, in_dims)
    for i, layer in enumerate(model.layers):
        _add_layer(b, i, layer, shape[:2])
        shape = tuple(rows[i]["output_shape"])

    out_shape = shape
    if len(shape) == 3:  # a spatial output comes back in the input's layout
        b.to(layout, "jimunet/output")
        if layout == "NCHW":
            out_shape = (shape[2], shape[0], shape[1])
    out_name = "logits"
    if softmax:
        if len(shape) != 1:
            raise ONNXError(f"softmax=True needs a (batch, classes) output; this model's output is {('N',) + shape}")
        b.add("Softmax", [], "jimunet/softmax", "probabilities over the classes", axis=-1)
        out_name = "probabilities"
    if b.nodes:  # the last node writes the graph's output
        b.nodes[-1].output[0] = out_name
    else:
        b.nodes.append(helper.make_node("Identity", ["input"], [out_name], name="jimunet/identity"))
    out = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", *out_shape])
    return _model_proto(b, model, inp, out, opset, layout if spatial else "features", in_dims)


def _model_proto(b, model, inp, out, opset, input_layout, in_dims):
    graph = helper.make_graph(b.nodes, "jimunet", [inp], [out], initializer=b.inits,
                              doc_string=f"exported by jimunet {__version__}")
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="jimunet", producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    helper.set_model_props(proto, {
        "jimunet_version": __version__,
        "architecture": json.dumps(model.get_config()),
        "input_layout": input_layout,
        "input_shape": json.dumps(in_dims[1:]),
    })
    total = sum(math.prod(t.dims) * 4 for t in b.inits)
    if total > 1_900_000_000:
        raise ONNXError(f"the model's weights take {total / 1e9:.1f} GB; a single .onnx file holds at most 2 GB")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def write(proto, path):
    """Serialize ``proto`` to ``path`` atomically (readers never see half a file)."""
    with atomic_writer(path) as f:
        f.write(proto.SerializeToString())
