"""ONNX export and import: ``jn.onnx.export(model, path)`` and ``jn.onnx.load(path)``.

Needs the ``onnx`` package (``pip install "jimunet[onnx]"``), imported only when one of
these functions is called, so ``import jimunet`` works without it.

Example:
    >>> import jimunet as jn                                       # doctest: +SKIP
    >>> jn.onnx.export(jn.models.mnist_cnn(), "mnist.onnx")         # NHWC input (N, 28, 28, 1)
    >>> model = jn.onnx.load("from_pytorch.onnx")                   # a jimunet Sequential
"""
from __future__ import annotations

from ._errors import ONNXError

DEFAULT_OPSET = 21
MIN_OPSET = 13


def _require_onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError('jimunet.onnx needs the "onnx" package, which is not installed: '
                          'pip install "jimunet[onnx]"') from e
    return onnx


def to_onnx(model, input_shape=(28, 28, 1), *, layout: str = "NHWC", softmax: bool = False,
            opset: int = DEFAULT_OPSET):
    """The ONNX ``ModelProto`` of a jimunet model (see ``export``), without writing a file."""
    _require_onnx()
    from ._export import to_onnx as build
    return build(model, input_shape, layout=layout, softmax=softmax, opset=opset)


def export(model, path, input_shape=(28, 28, 1), *, layout: str = "NHWC", softmax: bool = False,
           opset: int = DEFAULT_OPSET):
    """Write ``model`` (a ``Sequential``) to an ONNX file that ONNX Runtime and others can run.

    Every layer exports: Conv2D (any stride; ``"same"`` padding becomes TensorFlow's explicit,
    possibly asymmetric pads), MaxPool2D, AvgPool2D, Dense (Gemm), ReLU, LeakyReLU, Sigmoid,
    Tanh, Flatten (in jimunet's NHWC order), Dropout (identity at inference). Weights are
    written as float32 (a float64 model is rounded to float32).

    Args:
        model: a ``jn.Sequential``.
        path: the ``.onnx`` file to write (atomically; an existing file is replaced).
        input_shape: per-sample input shape as jimunet takes it, ``(height, width, channels)``
            (or ``(features,)`` for a model without convolutions).
        layout: ``"NHWC"`` (default): the graph's input is ``(batch, H, W, C)`` like jimunet's;
            ``"NCHW"``: the input is ``(batch, C, H, W)`` like PyTorch's, and a 4-D output is
            NCHW too. The batch dimension is dynamic either way.
        softmax: end the graph with a Softmax, so it outputs probabilities instead of logits.
        opset: ONNX opset version (default 21; at least 13).

    Returns the ``onnx.ModelProto`` written. The graph's nodes are named
    ``jimunet/<layer index>/<layer class>[/helper]``, its weights ``<layer index>.weight`` /
    ``.bias`` (as ``model.state_dict()``), and ``metadata_props`` holds ``jimunet_version``,
    ``architecture`` (the JSON of ``model.get_config()``), ``input_layout`` and ``input_shape``.
    """
    proto = to_onnx(model, input_shape, layout=layout, softmax=softmax, opset=opset)
    from ._export import write
    write(proto, path)
    return proto


def from_onnx(proto, *, dtype="float32", base_dir=None, max_bytes=None, max_activation_bytes=None):
    """A jimunet ``Sequential`` from an ``onnx.ModelProto`` (see ``load``; ``proto`` is not changed).

    ``base_dir`` is the directory external-data files are read from (only files inside it).
    """
    _require_onnx()
    from ._import import from_onnx as build
    return build(proto, dtype=dtype, base_dir=base_dir, max_bytes=max_bytes,
                 max_activation_bytes=max_activation_bytes)


def load(path, *, dtype="float32", max_bytes=None, max_activation_bytes=None):
    """Build a jimunet ``Sequential`` from an ONNX file (e.g. one written by ``torch.onnx.export``).

    The graph must be one chain from its input to its output of: Conv, MaxPool, AveragePool,
    Gemm, MatMul (+ Add as its bias), Relu, LeakyRelu, Sigmoid, Tanh, Flatten, Reshape to
    ``(batch, features)``, Transpose (layout changes that keep the batch axis first),
    Dropout, Identity, and a Softmax at the very end (dropped: jimunet models output logits).
    Weights are converted to jimunet's layouts exactly: OIHW → HWIO, and a Dense layer after
    a flatten of an NCHW tensor gets its rows permuted to read jimunet's NHWC flatten order.

    The returned model takes NHWC input like every jimunet model: an ONNX model whose
    input is NCHW ``(N, C, H, W)`` becomes one that takes ``x.transpose(0, 2, 3, 1)``.
    ``model.metadata["onnx"]`` records the source layout and shapes.

    The file is untrusted, and checked as ``jn.load`` checks a saved model: the file, its
    external data and the weights it makes are bounded by ``max_bytes`` (default
    ``jimunet.serialization.MAX_LOAD_BYTES``, 1 GiB; also one input sample), from the declared
    sizes before anything is read (so is what parsing it would take: at most 1,000,000 protobuf
    messages, 40,000 nodes, counted in the file's bytes); the model is built as ``jn.load`` builds one (each layer's
    arguments checked by its constructor, at most ``MAX_LAYERS`` layers, finite weights in
    ``dtype``, one input sample's intermediate results at most ``max_activation_bytes``,
    default ``MAX_ACTIVATION_BYTES``, 1 GiB). External data is read only from regular,
    non-hidden files inside the model's directory, whose length the tensors they hold cover
    exactly. ``Identity`` nodes of weights (PyTorch's exporter shares equal weights that way)
    are weights.

    Raises ``ONNXError`` naming the node, its op and what is supported, for anything jimunet
    cannot run exactly (dilations, groups, ceil_mode that changes sizes, asymmetric padding
    that is not TensorFlow's "same", a branch, an unknown op), and for corrupt files,
    attributes or constants of the wrong type or shape, non-float or non-finite weights,
    shapes that do not chain, models over the bounds above, and external-data references to
    missing, hidden or mismatched files or to files outside the model's directory.
    """
    _require_onnx()
    from ._import import load as read
    return read(path, dtype=dtype, max_bytes=max_bytes, max_activation_bytes=max_activation_bytes)


__all__ = ["export", "load", "to_onnx", "from_onnx", "ONNXError", "DEFAULT_OPSET"]
