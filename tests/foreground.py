"""Start a command as a terminal's foreground job: ``python tests/foreground.py -m jimunet train ...``.

A test that stops its child with Ctrl-C (SIGINT) or SIGTERM relies on the child's default
dispositions, but a child inherits an *ignored* signal from whoever started the test run: a
non-interactive shell ignores SIGINT in a job it starts with ``&``, and so do ``nohup`` and some
CI runners. This wrapper sets both signals back to their defaults and unblocks them, then
replaces itself (same process id, so the test's ``proc.send_signal`` reaches the command) by
``python ARGS...``, which then starts exactly as a user's foreground process does (Python installs
its KeyboardInterrupt handler for SIGINT only when SIGINT is not ignored).

``FOREGROUND + ["-m", "jimunet", ...]`` is the argv to give ``subprocess.Popen``.
"""
import os
import signal
import sys

FOREGROUND = [sys.executable, os.path.abspath(__file__)]
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(argv):
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    os.execv(sys.executable, [sys.executable, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
