# TEMP-SHIM (issue 20 merge): remove
"""Old home of ``jimunet explain``: the feature moved to ``jimunet.app.explain`` (with
``jimunet.app.inspect`` and ``jimunet.app.plotting``). Kept only so that modules not yet
updated still import, and for ``_cli``/``register``, whose new home is ``jimunet.app.cli.explain``.
"""
from __future__ import annotations

import os
import sys

from .app.explain import Explanation, explain, walk  # noqa: F401
from .app.inspect import as_single_image, conv_blocks, kind_of, model_dtype, steps, trace  # noqa: F401
from .app.plotting import (PLOT_HINT, PlotDependencyError, color_scale, draw_channel_grid,  # noqa: F401
                           grid_columns, mosaic, new_figure, require_matplotlib, save_figure, shape_str)
from .data.images import looks_like_pixels  # noqa: F401


# -- command line -----------------------------------------------------------------------------

def _load_image_file(path):
    """``(images, note)``: MNIST-style pixels from a ``.npy`` file or a picture file.

    Uses ``jimunet.data.images.load_inputs``, the reader of ``jimunet predict``: pictures are
    normalised like MNIST digits.
    """
    from .data.images import load_inputs  # part of jimunet; Pillow is imported only for pictures
    try:
        x = load_inputs(path)
    except ImportError as e:  # Pillow missing
        raise ValueError(str(e)) from None
    return x, ""


def _cli(args) -> int:
    from .model import load
    from .models import mnist_cnn
    from .serialization import CheckpointError

    if args.index is not None and args.index < 0:  # counted from 0, as everywhere in jimunet (no wrap-around)
        print(f"jimunet explain: error: --index must be >= 0 (a test image's position, 0..9999), got {args.index}",
              file=sys.stderr)
        return 2
    paths = list(args.paths or [])
    for p in paths:
        if os.path.isdir(p):
            from .cli import model_path_error
            print(f"jimunet explain: error: {model_path_error(p)}", file=sys.stderr)
            return 2
    model_path = next((p for p in paths if p.lower().endswith(".npz")), None)
    files = [p for p in paths if p is not model_path]
    if len(files) > 1 or len(paths) > 2:
        print(f"jimunet explain: error: expected at most a MODEL.npz and one image FILE, got {paths}", file=sys.stderr)
        return 2
    image_file = files[0] if files else None
    if image_file is not None and args.index is not None:
        print("jimunet explain: error: give either --index I or an image FILE, not both", file=sys.stderr)
        return 2
    if model_path is None:
        model = mnist_cnn(rng=0)
        print("model    mnist_cnn(rng=0), freshly initialised: the weights are UNTRAINED, "
              "so the prediction is meaningless")
    else:
        try:
            model = load(model_path)
        except (OSError, CheckpointError) as e:
            print(f"jimunet explain: error: cannot load {model_path}: {e}", file=sys.stderr)
            return 2
        print(f"model    {model_path}")
    label = None
    if image_file is not None:
        try:
            images, _ = _load_image_file(image_file)
        except (OSError, ValueError) as e:
            print(f"jimunet explain: error: {e}", file=sys.stderr)
            return 2
        image = images[0]
        more = f" (the first of {len(images)} images)" if len(images) > 1 else ""
        print(f"image    {image_file}{more}")
    else:
        index = 0 if args.index is None else args.index
        from .datasets import load_mnist

        try:
            _, (x_test, y_test) = load_mnist(root=args.data_dir)
        except Exception as e:  # MNISTUnavailableError, OSError, ...
            print(f"jimunet explain: error: cannot load the MNIST test set ({e}); pass an image FILE (.npy) "
                  f"instead", file=sys.stderr)
            return 1
        if not 0 <= index < len(x_test):
            print(f"jimunet explain: error: --index must be in [0, {len(x_test)}), got {index}", file=sys.stderr)
            return 2
        image, label = x_test[index], int(y_test[index])
        print(f"image    MNIST test image {index} (true label {label})")
    try:
        res = explain(model, image, out_dir=args.out, file=sys.stdout)
    except PlotDependencyError as e:
        print(f"jimunet explain: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"jimunet explain: error: {e}", file=sys.stderr)
        return 1
    if label is not None and res.top:
        print(f"         predicted {res.top[0][0]}, true label {label}: "
              f"{'right' if res.top[0][0] == label else 'WRONG'}")
    if args.out:
        print(f"wrote    {len(res) + 1} PNGs to {args.out}")
    return 0


def register(subparsers):
    """Add ``jimunet explain`` to an argparse ``subparsers`` object; returns the parser."""
    p = subparsers.add_parser(
        "explain", help="walk one image through a model, block by block",
        usage="%(prog)s [MODEL.npz] [--index I | FILE] [--out DIR] [--data-dir D]",
        description="Walk one image through a model and print, per block, the shapes, padding, im2col/GEMM "
                    "sizes, FLOPs and output range, then the softmax top-3. Without MODEL.npz a freshly "
                    "initialised (untrained) mnist_cnn is used; without FILE or --index, MNIST test image 0.")
    p.add_argument("paths", nargs="*", metavar="MODEL.npz, FILE",
                   help="a model saved by jimunet (.npz; default: an untrained mnist_cnn) and/or one image: a "
                        "picture (PNG, JPEG, ...; normalised like MNIST, as jimunet predict does) or a .npy array "
                        "(28x28 or 28x28x1, white digit on black, uint8 0..255 or floats in [0, 1] or [0, 255])")
    p.add_argument("--index", type=int, default=None, metavar="I", help="use MNIST test image I")
    p.add_argument("--out", default=None, metavar="DIR", help="also save every intermediate as a PNG in DIR "
                                                              "(needs matplotlib)")
    p.add_argument("--data-dir", default=None, metavar="D", help="MNIST cache directory (default: "
                                                                 "$JIMUNET_DATA or ~/.cache/jimunet/mnist)")
    p.set_defaults(func=_cli)
    return p
