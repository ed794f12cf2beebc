"""``jimunet import``: a jimunet model from an ONNX file (e.g. one exported by PyTorch)."""
from __future__ import annotations

import os
import tempfile

from ...model import load
from ...onnx import load as load_onnx  # the onnx package itself is imported only when importing
from .errors import EXIT_OK, UserError, add_command, refuse_overwrite


def _check_paths(args):
    if not args.onnx:
        raise UserError("IN.onnx is empty; expected the path of an ONNX file")
    if not os.path.isfile(args.onnx):
        raise UserError(f"{args.onnx}: no such ONNX file")
    if not args.out:
        raise UserError("OUT.npz is empty; expected the name of the .npz file to write")
    if os.path.isdir(args.out) or args.out.endswith(("/", os.sep)):
        raise UserError(f"{args.out}: a directory; expected the name of the .npz file to write")
    refuse_overwrite(args.out, args.force)


def _import_checked(onnx_path, out):
    """The model of ``onnx_path`` as ``jn.load`` reads it back from ``out``, written only after that
    read: jimunet never writes a model it cannot load (the file is checked under a temporary
    name next to ``out``; the imported model is let go before it is read back)."""
    try:
        model = load_onnx(onnx_path)
    except (ImportError, ValueError) as e:  # ONNXError is a ValueError
        raise UserError(str(e)) from None
    directory = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".npz", dir=directory)
        os.close(fd)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    try:
        model.save(tmp, metadata=model.metadata)
        model = None
        model = load(tmp)
        os.replace(tmp, out)
        return model
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    except ValueError as e:  # what jn.load (or save) refuses
        why = str(e)[len(tmp) + 2:] if str(e).startswith(f"{tmp}: ") else str(e)
        raise UserError(f"{out} not written: jn.load would refuse the model: {why.replace(tmp, out)}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run(args) -> int:
    """Convert ``args.onnx`` to the jimunet model ``args.out``; print its summary and notes."""
    _check_paths(args)
    model = _import_checked(args.onnx, args.out)
    info = model.metadata["onnx"]
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
