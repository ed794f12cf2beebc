"""``jimunet serve``: the local web page (``jimunet.app.serve``, ``jimunet.app.server``) from the command line."""
from __future__ import annotations

import argparse

from ...training import TrainingInterrupted
from ..serve import DigitApp, ServeError, choose_model, require_pillow
from ..server import run as serve_forever
from .errors import EXIT_INTERRUPTED, UserError, add_command, int_at_least


def port(s):
    """An argparse type: a port number 0..65535 (0: any free port)."""
    v = int_at_least(0)(s)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535 (0: any free port), got {v}")
    return v


def run(args) -> int:
    """Serve the chosen model until Ctrl-C or SIGTERM."""
    try:
        require_pillow()
        path = choose_model(args.model, quick=args.quick, data_dir=args.data_dir)
        app = DigitApp.from_file(path, data_dir=args.data_dir)
        return serve_forever(app, host=args.host, port=args.port)
    except ServeError as e:
        raise UserError(str(e)) from None
    except TrainingInterrupted:  # --quick's training was stopped; it said so
        return EXIT_INTERRUPTED


def register(subparsers):
    """Add ``jimunet serve`` to ``subparsers``; returns its parser."""
    s = add_command(subparsers, "serve", run, help="a local web page: draw a digit, watch every block react",
                    usage="%(prog)s [MODEL.npz] [--host 127.0.0.1] [--port 8000] [--quick] [--data-dir D]",
                    description="Start a local web app (and its JSON API) and print its URL: draw a digit and "
                    "see the 28x28 input the model gets, the class probabilities, the feature maps of the conv "
                    "blocks, the first-layer filters and each block's shapes, im2col/GEMM sizes and FLOPs; load "
                    "any MNIST test image or a random mistake of the model. Ctrl-C stops it.")
    s.add_argument("model", nargs="?", default=None, metavar="MODEL.npz", help="a model saved by jimunet (default: "
                   "the newest runs/*/best.npz)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine "
                   "only; 0.0.0.0 opens it to the network)")
    s.add_argument("--port", type=port, default=8000, metavar="N", help="port (default 8000; 0 picks a free one)")
    s.add_argument("--quick", action="store_true", help="first train a 1-epoch model (a minute or two; downloads "
                   "MNIST if needed) and serve it")
    s.add_argument("--data-dir", default=None, metavar="D", help="MNIST cache directory for the test images "
                   "(default $JIMUNET_DATA or ~/.cache/jimunet/mnist)")
    return s
