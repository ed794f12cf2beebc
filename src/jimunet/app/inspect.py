"""Model introspection for ``explain``, the report and the web page.

The steps a model runs (layers of a ``Sequential``, nodes of a graph ``jn.Model``), every
step's output for a batch, the convolution blocks worth showing, and the layer-kind specific
facts (padding, im2col and GEMM sizes, the convolution algorithm that ran, pooling windows).
Layers are told apart by ``isinstance`` against ``jimunet.layers``' classes.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..functional.im2col import im2col
from ..functional.padding import pad_nhwc
from ..layers import GELU, AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, LeakyReLU, MaxPool2D, ReLU, Sigmoid, Tanh

__all__ = ["as_single_image", "model_dtype", "steps", "trace", "conv_blocks", "kind_of", "ACTIVATIONS", "POOLS"]

ACTIVATIONS = (ReLU, GELU, LeakyReLU, Sigmoid, Tanh)
POOLS = (MaxPool2D, AvgPool2D)  # the windowed poolings (GlobalAvgPool2D has no window)


def as_single_image(image, input_shape=None):
    """``image`` as one sample: (H, W) gets a channel axis, (1, H, W, C) loses its batch axis."""
    a = np.asarray(to_numpy(image))
    if input_shape is not None and a.shape == tuple(input_shape):
        return a
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2 and (input_shape is None or len(input_shape) == 3):
        a = a[..., None]
    if input_shape is not None and a.shape != tuple(input_shape):
        raise ValueError(f"image has shape {np.shape(image)}, the model expects {tuple(input_shape)}")
    return a


def model_dtype(model):
    """The dtype of the model's parameters (float32 for a model without any)."""
    params = model.parameters()
    return params[0].data.dtype if params else np.dtype(np.float32)


def kind_of(layer) -> str:
    """The layer's kind as shown to people and in file names: its class name (``"Conv2D"``)."""
    return type(layer).__name__


def steps(model):
    """``[(name, layer, inputs)]`` in the order the model runs: for a ``Sequential`` its layers
    (each reading the one before), for a graph ``jn.Model`` its nodes; ``inputs`` are the
    indices of the steps read, ``-1`` being the model's input, and ``name`` is the node's name
    (None in a Sequential)."""
    if hasattr(model, "graph_steps"):
        index = {name: -1 for name in model.input_names}
        out = []
        for i, (name, layer, ins) in enumerate(model.graph_steps()):
            out.append((name, layer, [index[n] for n in ins]))
            index[name] = i
        return out
    return [(None, layer, [i - 1]) for i, layer in enumerate(model.layers)]


def _run_step(layer, ins, vals, x):
    args = [x if j < 0 else vals[j] for j in ins]
    return layer.forward(args if layer.multi_input else args[0], training=False)


def trace(model, x):
    """Outputs of every step (layer, or node of a graph) for the batch ``x`` in evaluation mode."""
    outs = []
    for _, layer, ins in steps(model):
        outs.append(_run_step(layer, ins, outs, x))
    return outs


def conv_blocks(model):
    """``[(conv_index, shown_index, label)]``: each Conv2D and the step whose output shows it
    (the activation right after it when there is one, else the convolution itself)."""
    blocks = []
    walk = steps(model)
    for i, (_, layer, _) in enumerate(walk):
        if not isinstance(layer, Conv2D):
            continue
        kh, kw = layer.kernel_size
        label = f"Conv2D {layer.in_channels}->{layer.out_channels}, {kh}x{kw}"
        shown = i
        if i + 1 < len(walk) and isinstance(walk[i + 1][1], ACTIVATIONS) and walk[i + 1][2] == [i]:
            shown = i + 1
            label += f" -> {kind_of(walk[i + 1][1])}"
        blocks.append((i, shown, label))
    return blocks


def _block_details(layer, in_shape, x):
    """Layer-kind specific facts: padding, im2col and GEMM sizes, pooling windows."""
    d = {}
    if isinstance(layer, Conv2D):
        pads, (oh, ow) = layer._geometry(in_shape[:2])
        (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
        cin, cout = layer.in_channels, layer.out_channels
        xpad = pad_nhwc(x, pads)
        cols = im2col(xpad, layer.kernel_size, layer.stride, (oh, ow))  # the real thing, one image
        d.update(padding=[list(pads[0]), list(pads[1])], padded_shape=list(xpad.shape[1:]),
                 kernel=[kh, kw], stride=[sh, sw], im2col=list(cols.shape),
                 gemm=[[oh * ow, kh * kw * cin], [kh * kw * cin, cout]])
    elif isinstance(layer, Dense):
        d.update(gemm=[[1, layer.in_features], [layer.in_features, layer.out_features]])
    elif isinstance(layer, POOLS):
        pads, _ = layer._geometry(in_shape[:2])
        d.update(window=list(layer.pool_size), stride=list(layer.stride),
                 padding=[list(pads[0]), list(pads[1])])
    elif isinstance(layer, Dropout):
        d.update(rate=float(getattr(layer, "rate", float("nan"))))
    elif isinstance(layer, BatchNorm):
        d.update(eps=layer.eps, momentum=layer.momentum)
    return d


def _conv_algorithm(layer, in_shape):
    """Which algorithm the Conv2D's forward pass just ran, and its multiplications per image
    next to im2col's (the direct count)."""
    name, tile = layer.last_algorithm
    return {"algorithm": name, "tile": None if tile is None else list(tile),
            "multiplies": int(layer.multiplications(in_shape, (name, tile))),
            "multiplies_im2col": int(layer.multiplications(in_shape, ("im2col", None)))}
