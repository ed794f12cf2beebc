"""``jimunet predict``: the top classes of pictures (PNG, JPEG, ...) and ``.npy`` arrays, by class name."""
from __future__ import annotations

import os

import numpy as np

from ...backend import to_numpy
from ...functional.softmax import softmax
from ..pictures import load_pictures
from .errors import DEVICE_HELP, EXIT_OK, UserError, add_command, int_at_least, load_model, model_info_of


def percent(p: float) -> str:
    """A probability as a percentage that tells 99.96% from 100% (and a tiny one from 0%).

    Example:
        >>> percent(0.9996), percent(1.0), percent(0.99999), percent(1e-7), percent(0.0)
        ('99.96%', '100.00%', '>99.99%', '<0.01%', '0.00%')
    """
    s = f"{100 * p:.2f}%"
    if s == "100.00%" and p < 1:
        return ">99.99%"
    if s == "0.00%" and p > 0:
        return "<0.01%"
    return s


def run(args) -> int:
    """Print the ``--top`` classes and their probabilities for every image of every file."""
    model = load_model(args.model, device=args.device)
    info = model_info_of(model, args.model)
    batches = []
    for f in args.files:  # read every file first: a bad one fails before any output
        if not os.path.isfile(f):
            raise UserError(f"{f}: no such file")
        try:
            batches.append((f, load_pictures(f, info)))
        except (ImportError, ValueError) as e:  # Pillow missing; not an image of the model's kind
            raise UserError(str(e)) from None
    for f, x in batches:
        probs = softmax(to_numpy(info.predictor(model).predict(info.normalize(x), batch_size=100)).astype(np.float64))
        for i, p in enumerate(probs):
            top = np.argsort(-p, kind="stable")[:args.top]
            name = f if len(x) == 1 else f"{f}[{i}]"
            print(f"{name}: " + "  ".join(f"{info.class_names[c]} ({percent(p[c])})" for c in top))
    return EXIT_OK


def register(subparsers):
    """Add ``jimunet predict`` to ``subparsers``; returns its parser."""
    p = add_command(subparsers, "predict", run, help="classify pictures (PNG/JPEG/.npy) with a saved model",
                    description="Print the top classes (by name) and their probabilities for each file. For a "
                    "digit model (MNIST), pictures (PNG, JPEG, ...; any size, dark digit on light background or "
                    "the reverse) are converted like MNIST: grayscale, cropped, scaled to 20 px, centred by centre "
                    "of mass in 28x28; .npy arrays (28x28, 28x28x1, Nx28x28 or Nx28x28x1) must already be "
                    "MNIST-like (white digit on black). For any other model, pictures are converted to its colour "
                    "mode and scaled to cover its input size, then centre-cropped, as its training images were; "
                    ".npy arrays must have its input shape (HxWxC or NxHxWxC). Arrays hold uint8 0..255, or "
                    "floats in [0, 1] (scaled by 255) or [0, 255].")
    p.add_argument("model", metavar="MODEL.npz", help="a model saved by jimunet")
    p.add_argument("files", nargs="+", metavar="FILE", help="images or .npy arrays")
    p.add_argument("--top", type=int_at_least(1), default=3, metavar="K", help="classes to show (default 3)")
    p.add_argument("--device", default="cpu", metavar="D", help=DEVICE_HELP)
    return p
