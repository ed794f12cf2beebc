"""Command line: ``jimunet train | evaluate | predict`` (and ``report``/``explain`` when present).

Run ``jimunet --help`` or ``python -m jimunet --help``. Exit codes: 0 success, 1 failure
(training diverged, data unavailable, unexpected error), 2 bad usage (arguments, missing
or corrupt files), 130 interrupted (Ctrl-C). Errors are one line, ``jimunet <cmd>: error: ...``;
set ``JIMUNET_DEBUG=1`` to see tracebacks of unexpected errors.
"""
from __future__ import annotations

import argparse
import os
import sys

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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

_TRAIN_FLAGS = ("epochs", "batch_size", "lr", "seed", "train_size", "data_dir", "threads", "shift")


def _cmd_train(args) -> int:
    from .recipes import RESNET_DEFAULTS, ConfigError, MNISTConfig
    from .train import TrainingDiverged, TrainingInterrupted, load_run_config, train_mnist

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
    if args.model == "resnet":
        given = {**RESNET_DEFAULTS, **given}
    if args.resume is not None:
        if not os.path.isdir(args.resume):
            raise UsageError(f"--resume {args.resume}: no such run directory")
        config = load_run_config(args.resume).replace(**given)
    else:
        if args.self_test and "epochs" not in given:
            given["epochs"] = 1  # the sample's self-test runs one epoch
        config = MNISTConfig(**given)
    try:
        train_mnist(config, resume=args.resume)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    except TrainingDiverged as e:
        print(f"{args.prog}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except TrainingInterrupted:
        return EXIT_INTERRUPTED  # the message with the resume command is already printed
    return EXIT_OK


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


def _load_model(path):
    from .model import load
    problem = model_path_error(path)
    if problem:
        raise UsageError(problem)
    model = load(path)  # CheckpointError → usage error in main
    check_classifier(model, path)
    return model


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
    from .train import evaluate

    model = _load_model(args.model)
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

    from .data.images import load_inputs, preprocess
    from .functional.softmax import softmax

    model = _load_model(args.model)
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
        probs = np.asarray(softmax(model.predict(preprocess(x), batch_size=100).astype(np.float64)))
        for i, p in enumerate(probs):
            top = np.argsort(-p, kind="stable")[:args.top]
            name = f if len(x) == 1 else f"{f}[{i}]"
            print(f"{name}: " + "  ".join(f"{int(c)} ({100 * p[c]:.1f}%)" for c in top))
    return EXIT_OK


# -- parser and main ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jimunet", description="jimunet: convolutional networks on NumPy. Train the TensorFlow "
                     "MNIST sample's network, evaluate it, predict digits from images.")
    from . import __version__
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
    t.add_argument("--out", default=None, metavar="DIR", help="run directory (default runs/<YYYYmmdd-HHMMSS>)")
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
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="test accuracy and confusion matrix of a saved model",
                       description="Evaluate a saved model on the 10,000 MNIST test images: accuracy, error rate "
                       "and the confusion matrix (rows: true digit, columns: predicted).")
    e.add_argument("model", metavar="MODEL.npz", help="a model saved by jimunet (e.g. runs/X/model.npz)")
    e.add_argument("--data-dir", default=None, metavar="D", help="MNIST cache directory")
    e.add_argument("--batch-size", type=_int_at_least(1), default=100, metavar="N", help="images per forward "
                   "pass (default 100)")
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
    p.set_defaults(func=_cmd_predict)

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
    prog = f"jimunet {args.command}"
    args.prog = prog
    from .serialization import CheckpointError
    try:
        code = args.func(args)
        return EXIT_OK if code is None else int(code)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (CheckpointError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if _debug():
            raise
        msg = str(e).strip() or type(e).__name__
        if not type(e).__module__.startswith("jimunet"):  # jimunet's own errors say what they are
            msg = f"{type(e).__name__}: {msg}"
        print(f"{prog}: error: {msg} (JIMUNET_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
