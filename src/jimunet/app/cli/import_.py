"""``jimunet import``: a jimunet model from an ONNX file (e.g. one exported by PyTorch)."""
from __future__ import annotations

import os

from ...onnx import load as load_onnx  # the onnx package itself is imported only when importing
from .errors import EXIT_OK, UserError, add_command, refuse_overwrite


def run(args) -> int:
    """Convert ``args.onnx`` to the jimunet model ``args.out``; print its summary and notes."""
    if not os.path.isfile(args.onnx):
        raise UserError(f"{args.onnx}: no such ONNX file")
    refuse_overwrite(args.out, args.force)
    try:
        model = load_onnx(args.onnx)
    except (ImportError, ValueError) as e:  # ONNXError is a ValueError
        raise UserError(str(e)) from None
    info = model.metadata["onnx"]
    model.save(args.out, metadata=model.metadata)
    print(model.summary(info["input_shape"]))
    if info["input_shape"] != info["onnx_input_shape"]:
        print(f"note: the ONNX model takes {info['input_layout']} input {tuple(info['onnx_input_shape'])}; like "
              f"every jimunet model this one takes NHWC {tuple(info['input_shape'])}"
              + (" (x.transpose(0, 2, 3, 1))" if info["input_layout"] == "NCHW" else ""))
    if info["dropped_final_op"]:
        print(f"note: the graph's final {info['dropped_final_op']} was left out: jimunet models output logits "
              "(predict and the loss apply softmax)")
    print(f"wrote {args.out}")
    return EXIT_OK


def register(subparsers):
    """Add ``jimunet import`` to ``subparsers``; returns its parser."""
    m = add_command(subparsers, "import", run, help="build a jimunet model from an ONNX file (e.g. from PyTorch)",
                    description="Convert an ONNX model (one chain of Conv, MaxPool, AveragePool, Gemm/MatMul, "
                    "Relu, LeakyRelu, Sigmoid, Tanh, Flatten/Reshape, Transpose, Dropout, Identity and a "
                    "final Softmax) to a jimunet .npz, converting layouts exactly. The result takes NHWC input "
                    "and can be evaluated, explained and trained further.")
    m.add_argument("onnx", metavar="IN.onnx", help="the ONNX model")
    m.add_argument("out", metavar="OUT.npz", help="the jimunet model to write (not replaced unless --force)")
    m.add_argument("--force", action="store_true", help="replace OUT.npz if it exists")
    return m
