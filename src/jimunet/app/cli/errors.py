"""The command line's one error convention and the helpers its commands share.

A command raises ``UserError(message, code)`` for anything the user can fix; the function a
command registers (``add_command``) prints it as one line, ``jimunet <cmd>: error: message``,
on stderr and returns ``code`` (2, bad usage, unless the command says otherwise). ``main``
handles what is left: file and device errors (2), Ctrl-C/SIGTERM (130/143) and unexpected
errors (1, one line unless ``JIMUNET_DEBUG=1``).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from ...layers.memory import ActivationLimitError, check_network_activations, recorded_input_shape
from ...model import load
from ..modelinfo import ModelInfo, ModelInfoError, model_info

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DEVICE_HELP = "cpu (default) or cuda / cuda:N: an NVIDIA GPU through CuPy (pip install \"jimunet[gpu]\")"


class UserError(Exception):
    """A mistake the user can fix: ``main`` prints ``jimunet <cmd>: error: <message>`` and exits
    with ``code`` (2, bad usage, by default). ``show=False`` only sets the exit code (another
    process of a distributed run says it)."""

    def __init__(self, message: str, code: int = EXIT_USAGE, show: bool = True):
        super().__init__(message)
        self.code, self.show = int(code), show


def interrupted_exit(e: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended: 130, 143."""
    return 128 + int(getattr(e, "signum", signal.SIGINT))


def debug() -> bool:
    """Whether ``JIMUNET_DEBUG`` asks for tracebacks of unexpected errors."""
    return os.environ.get("JIMUNET_DEBUG", "") not in ("", "0")


def add_command(subparsers, name: str, run, **kw) -> argparse.ArgumentParser:
    """The parser of command ``name`` (``subparsers.add_parser(name, **kw)``), set to call ``run(args)``
    with a ``UserError`` turned into its one-line message and exit code."""
    parser = subparsers.add_parser(name, **kw)

    def func(args) -> int:
        try:
            return run(args)
        except UserError as e:
            if e.show:
                print(f"{getattr(args, 'prog', None) or f'jimunet {name}'}: error: {e}", file=sys.stderr)
            return e.code
    func.__name__ = func.__qualname__ = f"run_{name}"
    func.__doc__ = run.__doc__
    parser.set_defaults(func=func)
    return parser


# -- argument types -----------------------------------------------------------------------

def int_at_least(lo):
    """An argparse type: an integer >= ``lo``."""
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


def _number(s) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None


def positive_float(s):
    """An argparse type: a finite number > 0."""
    v = _number(s)
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def non_negative_float(s):
    """An argparse type: a finite number >= 0."""
    v = _number(s)
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {s}")
    return v


# -- model files --------------------------------------------------------------------------

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
    """The number of classes ``model`` scores an image of ``input_shape`` into; UserError if it does not."""
    shape = "x".join(map(str, input_shape))
    if len(model) == 0:
        raise UserError(f"{path}: the model has no layers; expected a classifier of {shape} images")
    try:
        out = model.output_shape(input_shape)
    except ValueError as e:
        what = f"{shape} MNIST image" if tuple(input_shape) == (28, 28, 1) else f"{shape} image"
        raise UserError(f"{path}: the model cannot take a {what}: {e}") from None
    if len(out) != 1 or out[0] < 2:
        raise UserError(f"{path}: the model outputs {out} per image; expected class scores (classes,), with "
                        "at least 2 classes (a classifier ends in a Dense layer)")
    return out[0]


def model_info_of(model, path) -> ModelInfo:
    """``modelinfo.model_info(model)``; a UserError naming the file when its metadata cannot be right."""
    try:
        return model_info(model)
    except ModelInfoError as e:
        raise UserError(f"{path}: {e}") from None


def bound_activations(model, path, info: ModelInfo) -> None:
    """A UserError when one image of ``info.input_shape`` needs too much memory in ``model`` (``load``
    bounds it already for a file that records its input shape; this covers one that does not)."""
    if recorded_input_shape(getattr(model, "metadata", None) or {}) is None:
        try:
            check_network_activations(model, info.input_shape)
        except ActivationLimitError as e:
            raise UserError(f"{path}: {e}") from None


def load_model(path, mnist_classifier: bool = True, device: str = "cpu"):
    """The model saved at ``path``, on ``device``; by default it must classify images of the input
    shape its metadata gives (``modelinfo``: 28x28x1 for a file without one), as evaluate and
    predict need. ``mnist_classifier`` keeps its name for callers; it means "a classifier"."""
    problem = model_path_error(path)
    if problem:
        raise UserError(problem)
    # CheckpointError → usage error in main; the memory one image needs is bounded at load, for the
    # input shape the file records, or here for the one modelinfo gives a file that records none
    model = load(path)
    if mnist_classifier:
        info = model_info_of(model, path)
        bound_activations(model, path, info)
        classes = check_classifier(model, path, info.input_shape)
        if classes != info.num_classes:
            raise UserError(f"{path}: the model scores {classes} classes but its metadata names "
                            f"{info.num_classes} ({', '.join(info.class_names[:3])}, ...)")
    return model.to(device)  # DeviceError → usage error in main


def refuse_overwrite(path, force: bool) -> None:
    """UserError if ``path`` exists and ``--force`` was not given."""
    if os.path.exists(path) and not force:
        raise UserError(f"{path} already exists; choose another name or pass --force to replace it")
