# TEMP-SHIM (issue 20 merge): remove
"""Old home of ``jimunet report``: the report moved to ``jimunet.app.report``. Kept only so
that modules not yet updated still import, and for ``_cli``/``register``, whose new home is
``jimunet.app.cli.report``.
"""
from __future__ import annotations

import sys

from .app.report import (DPI, FIGURE_SIZES, PLOT_HINT, PlotDependencyError, confusion_matrix,  # noqa: F401
                         loss_axis_range, read_report_data, write_report)


# -- command line ----------------------------------------------------------------------------------

def _cli(args) -> int:
    from .serialization import CheckpointError

    try:
        path = write_report(args.run_dir, out=args.out, data_dir=args.data_dir)
    except PlotDependencyError as e:
        print(f"jimunet report: error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, NotADirectoryError, CheckpointError) as e:  # bad usage, as in jimunet's other commands
        print(f"jimunet report: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"jimunet report: error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # MNISTUnavailableError
        print(f"jimunet report: error: cannot load the test data: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    print(f"      (figures and report.json in {args.run_dir})")
    return 0


def register(subparsers):
    """Add ``jimunet report`` to an argparse ``subparsers`` object; returns the parser."""
    p = subparsers.add_parser(
        "report", help="write an HTML report of a training run",
        description="Write RUN_DIR/report.html: learning curves, first-layer filters, feature maps, confusion "
                    "matrix, per-class accuracy, the most confident mistakes, the model summary, config and "
                    "timings. One self-contained file (images embedded). Needs matplotlib: "
                    f"{PLOT_HINT}")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (runs/<timestamp>/)")
    p.add_argument("--out", default=None, metavar="FILE", help="where to write the HTML (default RUN_DIR/report.html)")
    p.add_argument("--data-dir", default=None, metavar="D", help="MNIST cache directory (default: "
                                                                 "$JIMUNET_DATA or ~/.cache/jimunet/mnist)")
    p.set_defaults(func=_cli)
    return p
