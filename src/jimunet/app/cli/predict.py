"""``jimunet predict``: the top classes of digit pictures (PNG, JPEG, ...) and ``.npy`` arrays."""
from __future__ import annotations

import os

import numpy as np

from ...backend import to_numpy
from ...data.images import load_inputs, preprocess
from ...functional.softmax import softmax
from .errors import DEVICE_HELP, EXIT_OK, UserError, add_command, int_at_least, load_model


def run(args) -> int:
    """Print the ``--top`` classes and their probabilities for every image of every file."""
    model = load_model(args.model, device=args.device)
    batches = []
    for f in args.files:  # read every file first: a bad one fails before any output
        if not os.path.isfile(f):
            raise UserError(f"{f}: no such file")
        try:
            batches.append((f, load_inputs(f)))
        except (ImportError, ValueError) as e:  # Pillow missing; not an image of digits
            raise UserError(str(e)) from None
    for f, x in batches:
        probs = softmax(to_numpy(model.predict(preprocess(x), batch_size=100)).astype(np.float64))
        for i, p in enumerate(probs):
            top = np.argsort(-p, kind="stable")[:args.top]
            name = f if len(x) == 1 else f"{f}[{i}]"
            print(f"{name}: " + "  ".join(f"{int(c)} ({100 * p[c]:.1f}%)" for c in top))
    return EXIT_OK


def register(subparsers):
    """Add ``jimunet predict`` to ``subparsers``; returns its parser."""
    p = add_command(subparsers, "predict", run, help="classify digit images (PNG/JPEG/.npy)",
                    description="Print the top classes and their probabilities for each file. Pictures "
                    "(PNG, JPEG, ...; any size, dark digit on light background or the reverse) are converted "
                    "like MNIST: grayscale, cropped, scaled to 20 px, centred by centre of mass in 28x28. "
                    ".npy arrays (28x28, 28x28x1, Nx28x28 or Nx28x28x1) must already be MNIST-like (white "
                    "digit on black): uint8 0..255, or floats in [0, 1] (scaled by 255) or [0, 255].")
    p.add_argument("model", metavar="MODEL.npz", help="a model saved by jimunet")
    p.add_argument("files", nargs="+", metavar="FILE", help="images or .npy arrays")
    p.add_argument("--top", type=int_at_least(1), default=3, metavar="K", help="classes to show (default 3)")
    p.add_argument("--device", default="cpu", metavar="D", help=DEVICE_HELP)
    return p
