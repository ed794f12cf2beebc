"""``jimunet report``: the HTML report of a training run (``write_report``) from the command line."""
from __future__ import annotations

from ...serialization import CheckpointError
from ..plotting import PLOT_HINT, PlotDependencyError
from ..report import write_report
from .errors import EXIT_FAILURE, EXIT_OK, UserError, add_command


def run(args) -> int:
    """Write the report of ``args.run_dir`` and say where it is."""
    try:
        path = write_report(args.run_dir, out=args.out, data_dir=args.data_dir)
    except PlotDependencyError as e:
        raise UserError(str(e), EXIT_FAILURE) from None
    except FileExistsError as e:  # --out names a file jimunet did not write
        raise UserError(str(e)) from None
    except (FileNotFoundError, NotADirectoryError, CheckpointError) as e:  # bad usage, as in jimunet's other commands
        raise UserError(str(e)) from None
    except ValueError as e:
        raise UserError(str(e), EXIT_FAILURE) from None
    except RuntimeError as e:  # MNISTUnavailableError
        raise UserError(f"cannot load the test data: {e}", EXIT_FAILURE) from None
    print(f"wrote {path}")
    print(f"      (figures and report.json in {args.run_dir})")
    return EXIT_OK


def register(subparsers):
    """Add ``jimunet report`` to an argparse ``subparsers`` object; returns the parser."""
    p = add_command(
        subparsers, "report", run, help="write an HTML report of a training run",
        description="Write RUN_DIR/report.html: learning curves, first-layer filters, feature maps, confusion "
                    "matrix, per-class accuracy, the most confident mistakes, the model summary, config and "
                    "timings. One self-contained file (images embedded). Needs matplotlib: "
                    f"{PLOT_HINT}")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (runs/<timestamp>/)")
    p.add_argument("--out", default=None, metavar="FILE", help="where to write the HTML (default RUN_DIR/report.html); an existing "
                   "file is replaced only if it is a jimunet report")
    p.add_argument("--data-dir", default=None, metavar="D", help="the cache directory of the model's data set "
                   "(default: $JIMUNET_DATA or ~/.cache/jimunet/mnist for MNIST)")
    return p
