"""Command line: ``jimunet train | evaluate | predict | export | import | serve | report | explain``.

Run ``jimunet --help`` or ``python -m jimunet --help``. Exit codes: 0 success, 1 failure
(training diverged, data unavailable, a file that could not be written (full disk), unexpected
error), 2 bad usage (arguments, missing
or corrupt files, a run directory that is not jimunet's or is in use), 130 interrupted
(Ctrl-C), 143 stopped by SIGTERM (``train`` saves and exits as on Ctrl-C), 141 output cut off by
its reader (``jimunet predict ... | head -1``: quietly, as a Unix tool that gets SIGPIPE). Errors are one
line, ``jimunet <cmd>: error: ...``; set ``JIMUNET_DEBUG=1`` to see tracebacks of unexpected errors.

Each command is one module here with ``register(subparsers)`` (its arguments, through
``errors.add_command``) and ``run(args) -> int``; a user mistake is a ``errors.UserError``.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback

from ..._version import __version__
from ...backend import DeviceError
from ...serialization import CheckpointError, WriteError
from . import evaluate, explain, export, import_, predict, report, serve, train
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UserError, debug, interrupted_exit  # noqa: F401

# 128 + SIGPIPE: how a shell reports a Unix tool whose reader went away
EXIT_BROKEN_PIPE = 141

# a file that could not be written because of the path the user gave (exit 2, not 1)
_BAD_PATH = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)

# the order of ``jimunet --help``
COMMANDS = (train, evaluate, predict, export, import_, serve, report, explain)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: message (see 'prog --help')``."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``jimunet`` parser with every command of ``COMMANDS``; ``parser.commands``: name → parser."""
    parser = _Parser(prog="jimunet", description="jimunet: convolutional networks on NumPy. Train the TensorFlow "
                     "MNIST sample's network, evaluate it, predict digits from images.")
    parser.add_argument("--version", action="version", version=f"jimunet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub)
    parser.commands = dict(sub.choices)
    return parser


def main(argv=None) -> int:
    """Entry point of ``jimunet`` / ``python -m jimunet``; returns the exit code."""
    try:
        try:
            return _main(argv)
        finally:  # also after --help's SystemExit: a reader that has gone shows here, not at exit
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        # The reader of our output has gone (``| head -1``): that ends the command, without a
        # message. What is still buffered for stdout cannot be written either, and Python would
        # report that at exit, so stdout goes to /dev/null from here on.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):  # stdout is not a file (replaced, closed)
            pass
        return EXIT_BROKEN_PIPE


def _main(argv) -> int:
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
    """Run the command: ``(exit code, whether it ended by an exception)``. A ``UserError`` is
    turned into its message and code by the command's own function (``errors.add_command``)."""
    try:
        code = args.func(args)
        return (EXIT_OK if code is None else int(code)), False
    except WriteError as e:  # a full disk, a read-only directory: the file keeps its previous contents
        print(f"{args.prog}: error: {e}", file=sys.stderr)
        return (EXIT_USAGE if e.errno in _BAD_PATH else EXIT_FAILURE), True
    except (CheckpointError, DeviceError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        print(f"{args.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE, True
    except KeyboardInterrupt as e:
        print(f"\n{args.prog}: {str(e) or 'interrupted'}", file=sys.stderr)
        return interrupted_exit(e), True
    except BrokenPipeError:
        raise  # not an error of the command: main ends it quietly
    except Exception as e:
        if debug() and getattr(args, "comm", None) is None:
            raise
        # A user reads the message, not Python's name for it; the traceback is one variable away.
        msg = str(e).strip() or "an unexpected error without a message"
        print(f"{args.prog}: error: {msg} (JIMUNET_DEBUG=1 shows the traceback)", file=sys.stderr)
        if debug():
            traceback.print_exc()
        return EXIT_FAILURE, True


__all__ = ["main", "build_parser", "COMMANDS", "UserError", "interrupted_exit"]
