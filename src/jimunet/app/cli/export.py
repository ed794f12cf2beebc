"""``jimunet export``: a saved model as an ONNX file (for ONNX Runtime, PyTorch, ...)."""
from __future__ import annotations

import argparse

from ...layers.memory import recorded_input_shape
from ...onnx import DEFAULT_OPSET, export  # the onnx package itself is imported only when exporting
from .errors import EXIT_OK, UserError, add_command, int_at_least, load_model, refuse_overwrite


def input_shape(s):
    """An argparse type: a per-sample shape like ``28,28,1`` or ``28x28x1``."""
    try:
        dims = tuple(int(v) for v in s.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 28,28,1 (height,width,channels), got {s!r}")
    return dims


def _dims(value_info) -> str:
    return "(" + ", ".join(d.dim_param or str(d.dim_value) for d in value_info.type.tensor_type.shape.dim) + ")"


def run(args) -> int:
    """Write ``args.model`` as ONNX to ``args.out`` and say what the graph takes and gives."""
    model = load_model(args.model, mnist_classifier=False)  # any model exports, at its --input-shape
    refuse_overwrite(args.out, args.force)
    shape = args.input_shape
    if shape is None:  # a trained model records its input, one imported from ONNX too; MNIST's otherwise
        shape = recorded_input_shape(getattr(model, "metadata", None) or {}) or (28, 28, 1)
    try:
        proto = export(model, args.out, tuple(shape), layout=args.layout, softmax=args.softmax, opset=args.opset)
    except (ImportError, ValueError) as e:  # ONNXError, or a model that cannot take --input-shape
        raise UserError(str(e)) from None
    g = proto.graph
    print(f"wrote {args.out}: ONNX opset {proto.opset_import[0].version}, {len(g.node)} nodes; input "
          f"{g.input[0].name!r} {_dims(g.input[0])} float32 {args.layout}, output {g.output[0].name!r} "
          f"{_dims(g.output[0])}")
    return EXIT_OK


def register(subparsers):
    """Add ``jimunet export`` to ``subparsers``; returns its parser."""
    x = add_command(subparsers, "export", run, help="write a saved model as ONNX (for ONNX Runtime, PyTorch, ...)",
                    description="Convert a jimunet model to an ONNX file with a dynamic batch dimension. "
                    "The graph takes float32 NHWC input like jimunet (or NCHW with --layout NCHW) and "
                    "outputs logits (probabilities with --softmax).")
    x.add_argument("model", metavar="MODEL.npz", help="a model saved by jimunet")
    x.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write (not replaced unless --force)")
    x.add_argument("--input-shape", type=input_shape, default=None, metavar="H,W,C",
                   help="per-sample input shape (default: the one the model file records, trained or imported, "
                   "else 28,28,1)")
    x.add_argument("--layout", choices=("NHWC", "NCHW"), default="NHWC", help="input layout of the graph "
                   "(default NHWC, as jimunet)")
    x.add_argument("--softmax", action="store_true", help="end the graph with a Softmax")
    x.add_argument("--opset", type=int_at_least(1), default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset (default {DEFAULT_OPSET})")
    x.add_argument("--force", action="store_true", help="replace OUT.onnx if it exists")
    return x
