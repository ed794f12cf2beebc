"""Command line: ``jimunet train | evaluate | predict | export | import | serve`` (and ``report``/``explain``).

Run ``jimunet --help`` or ``python -m jimunet --help``. Exit codes: 0 success, 1 failure
(training diverged, data unavailable, unexpected error), 2 bad usage (arguments, missing
or corrupt files, a run directory that is not jimunet's or is in use), 130 interrupted
(Ctrl-C), 143 stopped by SIGTERM (``train`` saves and exits as on Ctrl-C). Errors are one
line, ``jimunet <cmd>: error: ...``; set ``JIMUNET_DEBUG=1`` to see tracebacks of unexpected errors.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _interrupted_exit(e: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended: 130, 143."""
    return 128 + int(getattr(e, "signum", signal.SIGINT))


class UsageError(Exception):
    """Bad input from the user (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: message (see 'prog --help')``."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _int_at_least(lo):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    parse.__name__ = "integer"
    return parse


def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _debug() -> bool:
    return os.environ.get("JIMUNET_DEBUG", "") not in ("", "0")


# -- train ----------------------------------------------------------------------------------

_TRAIN_FLAGS = ("epochs", "batch_size", "lr", "seed", "train_size", "data_dir", "threads", "shift", "device",
                "reduction")


def _cmd_train(args) -> int:
    from .app.recipes import RESNET_DEFAULTS, ConfigError, MNISTConfig
    from .app.training import load_run_config, train_mnist
    from .training import TrainingDiverged, TrainingInterrupted

    comm = _distributed(args)
    given = {k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None}
    if args.no_shuffle:
        given["shuffle"] = False
    if args.self_test:
        given["self_test"] = True
    if args.no_report:
        given["report"] = False
    if args.out is not None:
        given["out"] = args.out
    if args.resume is not None and args.model is not None:
        raise UsageError("--model cannot be combined with --resume (the run keeps its model)")
    if args.reduction is not None and not args.distributed:
        raise UsageError("--reduction chooses how the processes of a --distributed run combine their work; "
                         "add --distributed (and start the processes with mpiexec -n N)")
    if args.model == "resnet":
        given = {**RESNET_DEFAULTS, **given}
    if comm is not None:
        _same_command_as_rank0(comm, {**given, "resume": args.resume})
    if comm is not None and comm.rank != 0:
        config = MNISTConfig(**given)  # only rank 0 reads the run directory; it sends the recipe
    elif args.resume is not None:
        if not os.path.isdir(args.resume):
            raise UsageError(f"--resume {args.resume}: no such run directory")
        config = load_run_config(args.resume).replace(**given)
    else:
        if args.self_test and "epochs" not in given:
            given["epochs"] = 1  # the sample's self-test runs one epoch
        config = MNISTConfig(**given)
    try:
        train_mnist(config, resume=args.resume, comm=comm)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    except TrainingDiverged as e:  # every rank of a distributed run sees it at the same step: rank 0 says it
        args.all_ranks_stopped = True
        if comm is None or comm.rank == 0:
            print(f"{args.prog}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except TrainingInterrupted as e:
        args.all_ranks_stopped = getattr(e, "all_ranks", False)
        return _interrupted_exit(e)  # the message with the resume command is already printed
    return EXIT_OK


def _distributed(args):
    """The MPI communicator for ``--distributed`` (None without it); refuses a bad launch."""
    from . import distributed
    if not args.distributed:
        n = distributed.launched_by_mpiexec()
        if n > 1:
            raise UsageError(f"started by mpiexec as one of {n} processes but without --distributed, so each "
                             f"would train alone; add --distributed to train one model with all of them")
        return None
    try:
        comm = distributed.init()
    except distributed.DistributedError as e:
        raise UsageError(f"--distributed: {e}") from None
    args.comm = comm  # an error on one rank ends the whole job (main): the others must not wait
    if comm.size > 1:
        args.prog = f"{args.prog} [rank {comm.rank} of {comm.size}]"
    return comm


def _same_command_as_rank0(comm, given: dict) -> None:
    """Refuse to start when this rank's settings differ from rank 0's (MPMD launches, typos)."""
    per_host = ("data_dir", "threads")  # may differ between machines
    mine = {k: v for k, v in given.items() if k not in per_host}
    theirs = comm.broadcast_json(mine)
    if comm.rank != 0 and theirs != mine:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        shown = "; ".join(f"{k.replace('_', '-')} {mine.get(k)!r} here, {theirs.get(k)!r} on rank 0" for k in diff)
        raise UsageError(f"this process was started with other settings than rank 0 ({shown}); every process of "
                         f"a distributed run must get the same command line")


# -- evaluate -------------------------------------------------------------------------------

def model_path_error(path) -> str | None:
    """Why ``path`` cannot be a model file (None if it is a file); a run directory gets a hint."""
    if os.path.isfile(path):
        return None
    if os.path.isdir(path):
        inside = [os.path.join(path, n) for n in ("best.npz", "model.npz") if os.path.isfile(os.path.join(path, n))]
        hint = f"; did you mean {' or '.join(inside)}?" if inside else \
            f" (a model file is e.g. {os.path.join(path, 'best.npz')})"
        return f"{path} is a directory, not a model file{hint}"
    return f"{path}: no such model file"


def check_classifier(model, path, input_shape=(28, 28, 1)) -> int:
    """The number of classes ``model`` scores an MNIST image into; UsageError if it does not."""
    if len(model) == 0:
        raise UsageError(f"{path}: the model has no layers; expected a classifier of 28x28x1 images")
    try:
        out = model.output_shape(input_shape)
    except ValueError as e:
        raise UsageError(f"{path}: the model cannot take a 28x28x1 MNIST image: {e}") from None
    if len(out) != 1 or out[0] < 2:
        raise UsageError(f"{path}: the model outputs {out} per image; expected class scores (classes,), with "
                         "at least 2 classes (a classifier ends in a Dense layer)")
    return out[0]


def _load_model(path, mnist_classifier: bool = True, device: str = "cpu"):
    """The model saved at ``path``, on ``device``; by default it must classify 28x28x1 images
    (evaluate, predict)."""
    from .model import load
    problem = model_path_error(path)
    if problem:
        raise UsageError(problem)
    model = load(path)  # CheckpointError → usage error in main
    if mnist_classifier:
        check_classifier(model, path)
    return model.to(device)  # DeviceError → usage error in main


def format_confusion(confusion) -> str:
    """An aligned table: rows the true class, columns the predicted class."""
    k = len(confusion)
    width = max(4, max(len(str(int(v))) for row in confusion for v in row) + 1)
    head = "true\\pred " + "".join(f"{j:>{width}}" for j in range(k)) + f"{'total':>{width + 2}}"
    lines = [head]
    for i, row in enumerate(confusion):
        lines.append(f"{i:>9} " + "".join(f"{int(v):>{width}}" for v in row) + f"{int(sum(row)):>{width + 2}}")
    return "\n".join(lines)


def _cmd_evaluate(args) -> int:
    from .data.images import preprocess
    from .datasets import load_mnist
    from .training import evaluate

    model = _load_model(args.model, device=args.device)
    (_, _), (x, y) = load_mnist(root=args.data_dir)
    # a model of more than 10 classes gets a larger matrix
    res = evaluate(model, preprocess(x), y, batch_size=args.batch_size, num_classes=10)
    meta = getattr(model, "metadata", {}) or {}
    n = meta.get("epoch")
    epochs = f", trained for {n} epoch{'s' if n != 1 else ''}" if isinstance(n, int) else ""
    print(f"model {args.model}{epochs}")
    print(f"MNIST test set: {len(y)} images")
    print(f"accuracy {100 * res.accuracy:.2f}%   error {res.error:.2f}%   ({int(round(len(y) * (1 - res.accuracy)))} "
          f"misclassified)")
    print("confusion matrix (rows: true digit, columns: predicted digit):")
    print(format_confusion(res.confusion))
    return EXIT_OK


# -- predict --------------------------------------------------------------------------------

def _cmd_predict(args) -> int:
    import numpy as np

    from .backend import to_numpy
    from .data.images import load_inputs, preprocess
    from .functional.softmax import softmax

    model = _load_model(args.model, device=args.device)
    batches = []
    for f in args.files:  # read every file first: a bad one fails before any output
        if not os.path.isfile(f):
            raise UsageError(f"{f}: no such file")
        try:
            batches.append((f, load_inputs(f)))
        except ImportError as e:
            raise UsageError(str(e)) from None
        except ValueError as e:
            raise UsageError(str(e)) from None
    for f, x in batches:
        probs = softmax(to_numpy(model.predict(preprocess(x), batch_size=100)).astype(np.float64))
        for i, p in enumerate(probs):
            top = np.argsort(-p, kind="stable")[:args.top]
            name = f if len(x) == 1 else f"{f}[{i}]"
            print(f"{name}: " + "  ".join(f"{int(c)} ({100 * p[c]:.1f}%)" for c in top))
    return EXIT_OK


# -- export / import (ONNX) ----------------------------------------------------------------

def _input_shape(s):
    try:
        dims = tuple(int(v) for v in s.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 28,28,1 (height,width,channels), got {s!r}")
    return dims


def _refuse_overwrite(path, force):
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} already exists; choose another name or pass --force to replace it")


def _dims(value_info) -> str:
    return "(" + ", ".join(d.dim_param or str(d.dim_value) for d in value_info.type.tensor_type.shape.dim) + ")"


def _cmd_export(args) -> int:
    from .onnx import export

    model = _load_model(args.model, mnist_classifier=False)  # any model exports, at its --input-shape
    _refuse_overwrite(args.out, args.force)
    shape = args.input_shape
    if shape is None:  # a model imported from ONNX knows its input; MNIST's otherwise
        shape = ((getattr(model, "metadata", None) or {}).get("onnx") or {}).get("input_shape") or (28, 28, 1)
    try:
        proto = export(model, args.out, tuple(shape), layout=args.layout, softmax=args.softmax, opset=args.opset)
    except (ImportError, ValueError) as e:  # ONNXError, or a model that cannot take --input-shape
        raise UsageError(str(e)) from None
    g = proto.graph
    print(f"wrote {args.out}: ONNX opset {proto.opset_import[0].version}, {len(g.node)} nodes; input "
          f"{g.input[0].name!r} {_dims(g.input[0])} float32 {args.layout}, output {g.output[0].name!r} "
          f"{_dims(g.output[0])}")
    return EXIT_OK


def _cmd_import(args) -> int:
    from .onnx import load

    if not os.path.isfile(args.onnx):
        raise UsageError(f"{args.onnx}: no such ONNX file")
    _refuse_overwrite(args.out, args.force)
    try:
        model = load(args.onnx)
    except (ImportError, ValueError) as e:  # ONNXError is a ValueError
        raise UsageError(str(e)) from None
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


# -- serve ----------------------------------------------------------------------------------

def _port(s):
    v = _int_at_least(0)(s)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535 (0: any free port), got {v}")
    return v


def _cmd_serve(args) -> int:
    from .app import serve
    from .training import TrainingInterrupted

    try:
        serve.require_pillow()
        path = serve.choose_model(args.model, quick=args.quick, data_dir=args.data_dir)
        app = serve.DigitApp.from_file(path, data_dir=args.data_dir)
        return serve.run(app, host=args.host, port=args.port)
    except serve.ServeError as e:
        raise UsageError(str(e)) from None
    except TrainingInterrupted:
        return EXIT_INTERRUPTED


# -- parser and main ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jimunet", description="jimunet: convolutional networks on NumPy. Train the TensorFlow "
                     "MNIST sample's network, evaluate it, predict digits from images.")
    from . import __version__
    from .onnx import DEFAULT_OPSET  # a constant; the onnx package is imported only by export/import
    from .training import REDUCTIONS
    parser.add_argument("--version", action="version", version=f"jimunet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train the MNIST network (the TF sample's recipe)",
                       description="Train the TensorFlow sample's MNIST network with its recipe: 5,000 validation "
                       "images held out, batch 64, SGD momentum 0.9, lr 0.01 x 0.95 per epoch, L2 5e-4 on the "
                       "fully connected layers, dropout 0.5. Writes model.npz, best.npz, checkpoint.npz, "
                       "metrics.json and train.log to the run directory.")
    t.add_argument("--epochs", type=_int_at_least(1), default=None, metavar="N", help="epochs (default 10; "
                   "1 with --self-test)")
    t.add_argument("--batch-size", type=_int_at_least(1), default=None, metavar="N", help="batch size (default 64)")
    t.add_argument("--lr", type=_positive_float, default=None, metavar="LR", help="initial learning rate "
                   "(default 0.01)")
    t.add_argument("--seed", type=_int_at_least(0), default=None, metavar="S", help="seed of the initial weights, "
                   "dropout and shuffling (default 66478)")
    t.add_argument("--train-size", type=_int_at_least(1), default=None, metavar="N", help="train on the first N of "
                   "the 55,000 training images (default all)")
    t.add_argument("--data-dir", default=None, metavar="D", help="MNIST cache directory (default $JIMUNET_DATA or "
                   "~/.cache/jimunet/mnist; downloaded if missing)")
    t.add_argument("--out", default=None, metavar="DIR", help="run directory: new, empty or a "
                   "jimunet run without a checkpoint (default runs/<YYYYmmdd-HHMMSS>)")
    t.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its checkpoint.npz")
    t.add_argument("--no-shuffle", action="store_true", help="walk the data in the sample's fixed order instead "
                   "of reshuffling every epoch")
    t.add_argument("--self-test", action="store_true", help="train on the sample's tiny fake data set (no "
                   "download); must reach 0%% test error")
    t.add_argument("--no-report", action="store_true", help="do not write the HTML report at the end")
    t.add_argument("--threads", type=_int_at_least(1), default=None, metavar="N", help="worker threads "
                   "(jimunet.set_num_threads)")
    t.add_argument("--model", choices=("cnn", "resnet"), default=None, help="cnn: the TF sample's network and "
                   "recipe (default); resnet: jimunet.models.mnist_resnet with BatchNorm, random shifts, SGD "
                   "Nesterov with cosine decay (its own defaults: 10 epochs, batch 128, lr 0.2, shift 2)")
    t.add_argument("--shift", type=_int_at_least(0), default=None, metavar="PX", help="augment training images "
                   "by random shifts of up to PX pixels (default 0; 2 with --model resnet)")
    t.add_argument("--device", default=None, metavar="D", help="cpu (default) or cuda / cuda:N: an NVIDIA GPU "
                   "through CuPy (pip install \"jimunet[gpu]\")")
    t.add_argument("--distributed", action="store_true", help="data-parallel training with every process of an "
                   "MPI job: mpiexec -n N python -m jimunet train --distributed ... (pip install 'jimunet[mpi]'); "
                   "--batch-size stays the global batch, rank 0 writes the run directory")
    t.add_argument("--reduction", choices=REDUCTIONS, default=None, help="with --distributed: "
                   "exact: each process takes whole blocks of every batch through the convolutional layers and "
                   "the fully connected head runs on the whole batch everywhere, so the weights are bit-identical "
                   "to one process's (up to 8 processes); allreduce: each process runs the whole network on its "
                   "slice and one all-reduce sums the gradients (any number of processes, equal to one process "
                   "up to float rounding); auto (default): exact where it applies")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="test accuracy and confusion matrix of a saved model",
                       description="Evaluate a saved model on the 10,000 MNIST test images: accuracy, error rate "
                       "and the confusion matrix (rows: true digit, columns: predicted).")
    e.add_argument("model", metavar="MODEL.npz", help="a model saved by jimunet (e.g. runs/X/model.npz)")
    e.add_argument("--data-dir", default=None, metavar="D", help="MNIST cache directory")
    e.add_argument("--batch-size", type=_int_at_least(1), default=100, metavar="N", help="images per forward "
                   "pass (default 100)")
    e.add_argument("--device", default="cpu", metavar="D", help="cpu (default) or cuda / cuda:N: an NVIDIA GPU "
                   "through CuPy (pip install \"jimunet[gpu]\")")
    e.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="classify digit images (PNG/JPEG/.npy)",
                       description="Print the top classes and their probabilities for each file. Pictures "
                       "(PNG, JPEG, ...; any size, dark digit on light background or the reverse) are converted "
                       "like MNIST: grayscale, cropped, scaled to 20 px, centred by centre of mass in 28x28. "
                       ".npy arrays (28x28, 28x28x1, Nx28x28 or Nx28x28x1) must already be MNIST-like (white "
                       "digit on black): uint8 0..255, or floats in [0, 1] (scaled by 255) or [0, 255].")
    p.add_argument("model", metavar="MODEL.npz", help="a model saved by jimunet")
    p.add_argument("files", nargs="+", metavar="FILE", help="images or .npy arrays")
    p.add_argument("--top", type=_int_at_least(1), default=3, metavar="K", help="classes to show (default 3)")
    p.add_argument("--device", default="cpu", metavar="D", help="cpu (default) or cuda / cuda:N: an NVIDIA GPU "
                   "through CuPy (pip install \"jimunet[gpu]\")")
    p.set_defaults(func=_cmd_predict)

    x = sub.add_parser("export", help="write a saved model as ONNX (for ONNX Runtime, PyTorch, ...)",
                       description="Convert a jimunet model to an ONNX file with a dynamic batch dimension. "
                       "The graph takes float32 NHWC input like jimunet (or NCHW with --layout NCHW) and "
                       "outputs logits (probabilities with --softmax).")
    x.add_argument("model", metavar="MODEL.npz", help="a model saved by jimunet")
    x.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write (not replaced unless --force)")
    x.add_argument("--input-shape", type=_input_shape, default=None, metavar="H,W,C",
                   help="per-sample input shape (default: the one an imported model came with, else 28,28,1)")
    x.add_argument("--layout", choices=("NHWC", "NCHW"), default="NHWC", help="input layout of the graph "
                   "(default NHWC, as jimunet)")
    x.add_argument("--softmax", action="store_true", help="end the graph with a Softmax")
    x.add_argument("--opset", type=_int_at_least(1), default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset (default {DEFAULT_OPSET})")
    x.add_argument("--force", action="store_true", help="replace OUT.onnx if it exists")
    x.set_defaults(func=_cmd_export)

    m = sub.add_parser("import", help="build a jimunet model from an ONNX file (e.g. from PyTorch)",
                       description="Convert an ONNX model (one chain of Conv, MaxPool, AveragePool, Gemm/MatMul, "
                       "Relu, LeakyRelu, Sigmoid, Tanh, Flatten/Reshape, Transpose, Dropout, Identity and a "
                       "final Softmax) to a jimunet .npz, converting layouts exactly. The result takes NHWC input "
                       "and can be evaluated, explained and trained further.")
    m.add_argument("onnx", metavar="IN.onnx", help="the ONNX model")
    m.add_argument("out", metavar="OUT.npz", help="the jimunet model to write (not replaced unless --force)")
    m.add_argument("--force", action="store_true", help="replace OUT.npz if it exists")
    m.set_defaults(func=_cmd_import)

    s = sub.add_parser("serve", help="a local web page: draw a digit, watch every block react",
                       usage="%(prog)s [MODEL.npz] [--host 127.0.0.1] [--port 8000] [--quick] [--data-dir D]",
                       description="Start a local web app (and its JSON API) and print its URL: draw a digit and see "
                       "the 28x28 input the model gets, the class probabilities, the feature maps of the conv "
                       "blocks, the first-layer filters and each block's shapes, im2col/GEMM sizes and FLOPs; load "
                       "any MNIST test image or a random mistake of the model. Ctrl-C stops it.")
    s.add_argument("model", nargs="?", default=None, metavar="MODEL.npz", help="a model saved by jimunet (default: "
                   "the newest runs/*/best.npz)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine "
                   "only; 0.0.0.0 opens it to the network)")
    s.add_argument("--port", type=_port, default=8000, metavar="N", help="port (default 8000; 0 picks a free one)")
    s.add_argument("--quick", action="store_true", help="first train a 1-epoch model (a minute or two; downloads "
                   "MNIST if needed) and serve it")
    s.add_argument("--data-dir", default=None, metavar="D", help="MNIST cache directory for the test images "
                   "(default $JIMUNET_DATA or ~/.cache/jimunet/mnist)")
    s.set_defaults(func=_cmd_serve)

    for name in ("report", "explain"):  # subcommands that live in optional modules
        try:
            module = __import__(f"jimunet.{name}", fromlist=["register"])
        except ImportError:
            continue
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    parser.commands = dict(sub.choices)
    return parser


def main(argv=None) -> int:
    """Entry point of ``jimunet`` / ``python -m jimunet``; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # report them against the subcommand that was given, as its own errors are
        sub = parser.commands.get(getattr(args, "command", None), parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.prog = f"jimunet {args.command}"
    code, failed = _dispatch(args)
    comm = getattr(args, "comm", None)
    if comm is not None and comm.size > 1 and code != EXIT_OK:
        if failed or not getattr(args, "all_ranks_stopped", False):
            # An error, or a stop on this rank alone: the others may be waiting for it in a
            # collective; end every process of the job (the message above names this rank).
            comm.abort(code)
        comm.barrier()  # every rank stopped at the same step: let rank 0 finish writing first
    return code


def _dispatch(args) -> tuple[int, bool]:
    """Run the command: ``(exit code, whether it ended by an exception)``."""
    from .backend import DeviceError
    from .serialization import CheckpointError
    try:
        code = args.func(args)
        return (EXIT_OK if code is None else int(code)), False
    except UsageError as e:
        print(f"{args.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE, True
    except (CheckpointError, DeviceError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        print(f"{args.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE, True
    except KeyboardInterrupt as e:
        print(f"\n{args.prog}: {str(e) or 'interrupted'}", file=sys.stderr)
        return _interrupted_exit(e), True
    except Exception as e:
        if _debug() and getattr(args, "comm", None) is None:
            raise
        msg = str(e).strip() or type(e).__name__
        if not type(e).__module__.startswith("jimunet"):  # jimunet's own errors say what they are
            msg = f"{type(e).__name__}: {msg}"
        print(f"{args.prog}: error: {msg} (JIMUNET_DEBUG=1 shows the traceback)", file=sys.stderr)
        if _debug():
            import traceback
            traceback.print_exc()
        return EXIT_FAILURE, True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
