"""``jimunet explain``: walk one image through a model block by block (``jimunet.app.explain``) from the command line.

::

    jimunet explain                       # untrained mnist_cnn, test image 0
    jimunet explain runs/X/model.npz --index 7 --out explain-7/
    jimunet explain runs/X/model.npz digit.npy
"""
from __future__ import annotations

import os
import sys

from ...model import load
from ...models import mnist_cnn
from ...serialization import CheckpointError
from ..explain import MARKER, OutputDirError, explain
from ..pictures import load_pictures
from ..plotting import PlotDependencyError
from ..testdata import TestDataError, test_set
from .errors import EXIT_FAILURE, EXIT_OK, UserError, add_command, bound_activations, model_info_of, \
    model_path_error


def run(args) -> int:
    """Print the walk of one image (a FILE, MNIST test image ``--index`` or 0) through the model."""
    model_path, image_file = _paths(args)
    model = _model(model_path)
    info = model_info_of(model, model_path or "mnist_cnn")
    image, label = _image(args, image_file, info)
    try:
        res = explain(model, image, out_dir=args.out, file=sys.stdout, class_names=list(info.class_names),
                      normalize=info.normalize)
    except OutputDirError as e:
        raise UserError(str(e)) from None
    except (PlotDependencyError, ValueError) as e:
        raise UserError(str(e), EXIT_FAILURE) from None
    if label is not None and res.top:
        names = info.class_names
        print(f"         predicted {names[res.top[0][0]]}, true label {names[label]}: "
              f"{'right' if res.top[0][0] == label else 'WRONG'}")
    if args.out:
        print(f"wrote    {len(res) + 1} PNGs and {MARKER} to {args.out}")
    return EXIT_OK


def _paths(args) -> tuple:
    """``(MODEL.npz or None, image FILE or None)`` from the positional arguments; UserError if they do not fit."""
    if args.index is not None and args.index < 0:  # counted from 0, as everywhere in jimunet (no wrap-around)
        raise UserError(f"--index must be >= 0 (a test image's position, 0..9999), got {args.index}")
    paths = list(args.paths or [])
    for p in paths:
        if os.path.isdir(p):
            raise UserError(model_path_error(p))
    model_path = next((p for p in paths if p.lower().endswith(".npz")), None)
    files = [p for p in paths if p is not model_path]
    if len(files) > 1 or len(paths) > 2:
        raise UserError(f"expected at most a MODEL.npz and one image FILE, got {paths}")
    image_file = files[0] if files else None
    if image_file is not None and args.index is not None:
        raise UserError("give either --index I or an image FILE, not both")
    return model_path, image_file


def _model(model_path):
    """The model at ``model_path``, or an untrained ``mnist_cnn`` without one; says which."""
    if model_path is None:
        print("model    mnist_cnn(rng=0), freshly initialised: the weights are UNTRAINED, "
              "so the prediction is meaningless")
        return mnist_cnn(rng=0)
    try:
        model = load(model_path)
    except (OSError, CheckpointError) as e:
        raise UserError(f"cannot load {model_path}: {e}") from None
    bound_activations(model, model_path, model_info_of(model, model_path))  # the memory of one image
    print(f"model    {model_path}")
    return model


def _image(args, image_file, info) -> tuple:
    """``(image, true label or None)``: the first image of ``image_file``, else a test image of the
    model's data set."""
    if image_file is not None:
        try:
            images = load_pictures(image_file, info)  # as jimunet predict reads them
        except (OSError, ValueError, ImportError) as e:  # ImportError: Pillow missing
            raise UserError(str(e)) from None
        more = f" (the first of {len(images)} images)" if len(images) > 1 else ""
        print(f"image    {image_file}{more}")
        return images[0], None
    index = 0 if args.index is None else args.index
    try:
        test = test_set(info, data_dir=args.data_dir)
        x_test, y_test = test.pixels()
    except TestDataError as e:
        raise UserError(f"{e}; pass an image FILE instead") from None
    except Exception as e:  # MNISTUnavailableError, OSError, ...
        raise UserError(f"cannot load the {info.describe_dataset()} test set ({e}); pass an image FILE (.npy) "
                        f"instead", EXIT_FAILURE) from None
    if not 0 <= index < len(x_test):
        raise UserError(f"--index must be in [0, {len(x_test)}), got {index}")
    label = int(y_test[index])
    print(f"image    {test.title} test image {index} (true label {info.class_names[label]})")
    return x_test[index], label


def register(subparsers):
    """Add ``jimunet explain`` to an argparse ``subparsers`` object; returns the parser."""
    p = add_command(
        subparsers, "explain", run, help="walk one image through a model, block by block",
        usage="%(prog)s [MODEL.npz] [--index I | FILE] [--out DIR] [--data-dir D]",
        description="Walk one image through a model and print, per block, the shapes, padding, im2col/GEMM "
                    "sizes, FLOPs and output range, then the softmax top-3. Without MODEL.npz a freshly "
                    "initialised (untrained) mnist_cnn is used; without FILE or --index, test image 0 of the "
                    "model's data set (MNIST for a model without that information).")
    p.add_argument("paths", nargs="*", metavar="MODEL.npz, FILE",
                   help="a model saved by jimunet (.npz; default: an untrained mnist_cnn) and/or one image: a "
                        "picture (PNG, JPEG, ...; read as jimunet predict reads it) or a .npy array of the model's "
                        "input shape (28x28 or 28x28x1 for a digit model, white digit on black; uint8 0..255 or "
                        "floats in [0, 1] or [0, 255])")
    p.add_argument("--index", type=int, default=None, metavar="I", help="use test image I of the model's data set")
    p.add_argument("--out", default=None, metavar="DIR", help="also save every intermediate as a PNG in DIR "
                   "(needs matplotlib): a new or empty directory, or one jimunet explain wrote (its PNGs are "
                   "replaced; no other file is ever overwritten)")
    p.add_argument("--data-dir", default=None, metavar="D", help="the data set's cache directory (default: "
                                                                 "$JIMUNET_DATA or ~/.cache/jimunet/mnist for MNIST)")
    return p
