"""Run directories of ``jimunet train``: recognising one, holding it, cleaning it, ending a run.

Layout (every file is jimunet's; all but ``train.log`` are written atomically, so a full disk
leaves the previous version whole and ``WriteError`` names the file; ``train.log`` is appended
line by line, and a line that cannot be written names it too)::

    run.json        the marker, written before anything else:
                    {"format": "jimunet-run", "version": 1, "status": ..., "jimunet": "0.1.0"}
                    status: "running", then "completed", "interrupted", "diverged" or "failed"
    .jimunet.lock   present while a process holds the run; text: that process's pid and host
    checkpoint.npz, best.npz, model.npz, metrics.json, train.log, report.html   (see run_callbacks.py)

What is a run directory: one whose ``run.json`` says ``"format": "jimunet-run"``. A directory
from before the marker existed is accepted for ``--resume`` through its ``checkpoint.npz``
(and gets the marker then). A new run starts only in a directory that does not exist, is
empty (jimunet's own lock and temporary files aside), or is a run directory without a
checkpoint; jimunet writes into no other directory, so no file that jimunet did not write is
ever overwritten.

One process at a time: the holder keeps an exclusive ``flock`` on ``.jimunet.lock`` for the
run's life and removes the file as it lets go. The kernel drops the lock when the process
ends, however it ends (``kill -9`` included), so a lock is never stale: a lock file left
behind by a killed process is simply taken over. A second process gets ``RunDirBusy``
(naming the holder's pid) before it writes anything.

Leftovers: ``atomic_writer`` writes through ``.NAME.XXXXXXXX.part`` files; a process killed
mid-write leaves one. The next holder of the lock removes those of the run's own files
(``ATOMIC_FILES``) and nothing else.

Relocatable: no file in a run directory holds a path (the stored configuration keeps ``out``
and ``data_dir`` empty, see ``portable_config``), so a run directory can be moved or renamed
and resumed from any working directory; the data location always comes from the user.

Signals (``StopSignals``): SIGTERM (what ``kill``, systemd and batch schedulers send) stops
a run exactly as Ctrl-C does: the step in progress finishes, the checkpoint of the last
complete epoch stays, the message says how to resume, and ``jimunet train`` exits with
status 143 (130 for Ctrl-C). A SIGINT the process inherited as ignored (a background job of
a non-interactive shell, which asks for exactly that) stays ignored; SIGTERM works either way.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import threading
import time

import numpy as np

from .._version import __version__
from ..serialization import META_KEY, WriteError, atomic_writer, temp_file_pattern
from ..training.checkpoint import CHECKPOINT_FORMAT
from ..training.errors import Stopped, interrupt_for
from .recipes import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    import msvcrt

__all__ = ["RunDir", "RunDirError", "RunDirBusy", "Stopped", "StopSignals", "RunLog", "new_run_dir",
           "portable_config", "write_json_atomic", "set_metrics_status", "MARKER", "LOCK", "RUN_FORMAT",
           "ATOMIC_FILES"]

MARKER = "run.json"
LOCK = ".jimunet.lock"
RUN_FORMAT = "jimunet-run"
CHECKPOINT = "checkpoint.npz"
# The files a run writes through atomic_writer: their leftover temporaries are removed.
ATOMIC_FILES = (CHECKPOINT, "best.npz", "model.npz", "metrics.json", MARKER)
_TEMP_PATTERNS = tuple(temp_file_pattern(name) for name in ATOMIC_FILES)


class RunDirError(ConfigError):
    """A directory that a run may not use: not jimunet's, already holding a run, or busy."""


class RunDirBusy(RunDirError):
    """Another process holds the run directory (``pid`` and ``host`` when it said so)."""

    def __init__(self, message, pid=None, host=None):
        super().__init__(message)
        self.pid, self.host = pid, host


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    with atomic_writer(path) as f:
        f.write((json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


class RunLog:
    """Prints each line to stdout and appends it to a log file (``train.log``).

    The log is the one file of a run that is appended to, not replaced: each line is written
    and flushed whole, and a line that cannot be written (a full disk) raises ``WriteError``
    naming the file (the lines before it stay; the last one may be cut short). After that
    the file is given up, so the lines that report the failure still reach the screen.
    """

    def __init__(self, path=None, echo: bool = True):
        self.path, self.echo = path, echo
        try:
            self._f = open(path, "a", buffering=1, encoding="utf-8") if path else None
        except OSError as e:
            raise WriteError(path, e) from None

    def __call__(self, msg: str = "", echo: bool | None = None) -> None:
        if self.echo if echo is None else echo:
            print(msg, flush=True)
        if self._f is not None:
            try:
                self._f.write(msg + "\n")
            except OSError as e:
                self._give_up()
                raise WriteError(self.path, e) from None

    def _give_up(self):
        f, self._f = self._f, None
        with contextlib.suppress(OSError):
            f.close()

    def close(self):
        if self._f is not None:
            try:
                self._f.close()
            except OSError as e:  # the last buffered line could not be written
                self._f = None
                raise WriteError(self.path, e) from None
            self._f = None


def set_metrics_status(path, status, make=None) -> None:
    """Set metrics.json's status (creating it with ``make()`` when missing); never raises."""
    try:
        if os.path.exists(path):
            with open(path) as f:
                m = json.load(f)
            m["status"] = status
        elif make is not None:
            m = make()
        else:
            return
        write_json_atomic(path, m)
    except Exception:  # pragma: no cover - best effort on the way out
        pass


def portable_config(config: dict) -> dict:
    """``config`` as stored in a run directory's files: without the paths of this machine (an image
    folder's path becomes ``"folder"``)."""
    data = config.get("data", "mnist")
    return {**config, "out": None, "data_dir": None,
            **({"data": "folder"} if data not in ("mnist", "fashion-mnist", "cifar10") else {})}


def new_run_dir(parent="runs") -> str:
    """Create and return ``parent/<YYYYmmdd-HHMMSS>`` (``-1``, ``-2``... when taken)."""
    os.makedirs(parent, exist_ok=True)
    base = os.path.join(parent, time.strftime("%Y%m%d-%H%M%S"))
    path, i = base, 1
    while True:
        try:
            os.mkdir(path)  # atomic: two runs started in the same second get different directories
            return path
        except FileExistsError:
            path, i = f"{base}-{i}", i + 1


def _is_leftover(entry: str) -> bool:
    return any(p.fullmatch(entry) for p in _TEMP_PATTERNS)


def _marker(path) -> tuple[str, dict | None]:
    """``("ours", marker)``, ``("missing", None)`` or ``("foreign", None)`` for ``path/run.json``."""
    try:
        with open(os.path.join(path, MARKER), "rb") as f:
            text = f.read(1 << 16)
        marker = json.loads(text)
    except FileNotFoundError:
        return "missing", None
    except (OSError, ValueError, RecursionError):
        return "foreign", None
    if isinstance(marker, dict) and marker.get("format") == RUN_FORMAT:
        return "ours", marker
    return "foreign", None


def _is_jimunet_checkpoint(path) -> bool:
    """Whether ``path`` is a jimunet checkpoint (reads only its small JSON member)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z[META_KEY].tobytes())
        return isinstance(meta, dict) and meta.get("format") == CHECKPOINT_FORMAT
    except Exception:  # anything unreadable is not one
        return False


def _check_new_run(path, locked: bool) -> None:
    """Raise unless a new run may start in the existing directory ``path``.

    Before the lock (``locked=False``) only what is not jimunet's is refused, so that a
    directory in use is reported as such; under the lock, a run already there is refused too.
    """
    if not os.path.isdir(path):
        raise RunDirError(f"{path} exists and is not a directory; choose another output directory")
    entries = [e for e in os.listdir(path) if e != LOCK and not _is_leftover(e)]
    if not entries:
        return
    state, _ = _marker(path)
    if state == "ours" or (state == "missing" and _is_jimunet_checkpoint(os.path.join(path, CHECKPOINT))):
        if locked and CHECKPOINT in entries:  # without one, the run stopped before writing anything to keep
            raise RunDirError(f"{path} already holds a run ({CHECKPOINT}); resume it with --resume {path}, "
                              f"or choose another output directory")
        return
    shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    why = "its run.json is not jimunet's" if state == "foreign" else "it has no run.json"
    raise RunDirError(f"{path} is not empty ({shown}) and is not a jimunet run directory ({why}); jimunet "
                      f"writes only into a new or empty directory or a run directory of its own, so that "
                      f"nothing there is overwritten. Choose a new or empty directory with --out, or continue "
                      f"a jimunet run with --resume DIR")


# -- the lock ------------------------------------------------------------------------------

def _try_lock(fd) -> None:
    """Take the exclusive lock on ``fd`` without waiting; OSError when another process has it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # pragma: no cover - Windows: lock one byte far past the text, which stays readable
        os.lseek(fd, 1 << 30, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


def _holder(fd) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0) if hasattr(os, "pread") else b"")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _lock(path) -> int:
    """Hold ``path/.jimunet.lock``; returns its descriptor. Raises ``RunDirBusy`` when another process does."""
    lock_path = os.path.join(path, LOCK)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _try_lock(fd)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if fcntl is not None and e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirError(f"cannot lock {lock_path}: {e}") from None
            pid, host = holder.get("pid"), holder.get("host")
            who = f"process {pid}" if pid else "another process"
            if pid and host and host != socket.gethostname():
                who += f" on {host}"
            raise RunDirBusy(f"{path} is in use by {who} (it holds {lock_path}); wait for that run to end "
                             f"or stop it (kill {pid or 'PID'}), or choose another directory", pid, host) from None
        # The previous holder removes the file as it lets go: if it did so between our open and
        # our lock, we hold a file nobody else will ever look at. Start again with the new one.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n"
    os.ftruncate(fd, 0)
    os.write(fd, text.encode())
    return fd


# -- the run directory ---------------------------------------------------------------------

class RunDir:
    """A run directory held by this process; get one with ``RunDir.claim`` (a context manager).

    Attributes: ``path`` (as given: relative paths stay relative), ``removed`` (leftover
    temporary files removed when it was claimed), ``status`` (as in ``run.json``).
    """

    def __init__(self, path, fd):
        self.path, self._fd = os.fspath(path), fd
        self.removed: list[str] = []
        self.status = "running"

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @classmethod
    def claim(cls, path, *, resume: bool) -> "RunDir":
        """Lock ``path`` for a run, clean its leftovers and mark it ``running``.

        ``resume=False``: ``path`` must not exist, be empty, or be a run directory without a
        checkpoint (it is created when missing). ``resume=True``: ``path`` must be an existing
        run directory (the caller has checked its checkpoint). Nothing is written before the
        checks pass and the lock is held.

        Raises:
            RunDirError: the directory is not jimunet's, or already holds a run (new runs).
            RunDirBusy: another process holds it.
        """
        path = os.fspath(path)
        if resume:
            if _marker(path)[0] == "foreign":
                raise RunDirError(f"{path}/{MARKER} is not jimunet's run marker; jimunet will not overwrite it")
        elif os.path.lexists(path):
            _check_new_run(path, locked=False)
        else:
            os.makedirs(path, exist_ok=True)  # (made by someone else meanwhile: checked under the lock)
        run = cls(path, _lock(path))
        try:
            if not resume:
                _check_new_run(path, locked=True)  # now that no other process can start a run here
            run._remove_leftovers()
            run._write_marker()
        except BaseException:
            run._unlock()
            raise
        return run

    def _remove_leftovers(self) -> None:
        for entry in sorted(os.listdir(self.path)):
            full = self.file(entry)
            if _is_leftover(entry) and os.path.isfile(full) and not os.path.islink(full):
                with contextlib.suppress(OSError):  # one that cannot go stays: it is harmless
                    os.unlink(full)
                    self.removed.append(entry)

    def _write_marker(self) -> None:
        write_json_atomic(self.file(MARKER), {"format": RUN_FORMAT, "version": 1, "status": self.status,
                                              "jimunet": __version__})

    def finish(self, status: str) -> None:
        """Record how the run ended in ``run.json`` (best effort: never raises)."""
        self.status = status
        with contextlib.suppress(Exception):
            self._write_marker()

    def _unlock(self) -> None:
        if self._fd is None:
            return
        # Remove the file while still holding it (see _lock): a finished run leaves no lock file.
        if fcntl is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.file(LOCK))
        os.close(self._fd)  # closing the descriptor releases the lock
        self._fd = None

    def release(self, status: str | None = None) -> None:
        """Record ``status`` (when still ``running``) and let the directory go."""
        if self._fd is None:
            return
        if status is not None and self.status == "running":
            self.finish(status)
        self._unlock()

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None:
            status = "completed"
        else:
            status = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
        self.release(status)
        return False


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM as requests to stop a run, honoured between training steps.

    While ``installed()``, both raise a ``KeyboardInterrupt`` (``Stopped`` for SIGTERM) in the
    main thread, as Python does for Ctrl-C, except inside ``deferred(to)``: there a signal is
    only recorded and handed to ``to`` (``Trainer.request_stop``: its ``StopBetweenSteps``
    callback raises it after the step in progress), and ``check()`` (and leaving ``deferred``)
    raises one nobody took. So the step in progress finishes (weights, optimizer and worker
    threads are never left half-way), and a second signal still stops at once.

    Only what still has its usual behaviour is taken over: SIGINT with Python's handler (one
    inherited as ignored, as a shell's background job has it, stays ignored) and SIGTERM with
    its default action; and only in the main thread, the one where Python runs handlers.
    """

    def __init__(self):
        self.pending: int | None = None
        self._deferring = False
        self._to = None

    def _handler(self, signum, frame):
        if self._deferring and self.pending is None:
            self.pending = signum
            if self._to is not None:
                self._to(signum)
            return
        raise interrupt_for(signum)

    def check(self) -> None:
        """Raise the signal that arrived since the last check, if one did."""
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise interrupt_for(signum)

    @contextlib.contextmanager
    def deferred(self, to=None):
        """Record signals instead of raising them (and hand each to ``to(signum)`` when given);
        one that arrived is raised on leaving, unless the block ended by raising."""
        self._deferring, self._to = True, to
        try:
            yield self
            self._deferring = False
            self.check()
        finally:
            self._deferring, self._to = False, None

    @contextlib.contextmanager
    def installed(self):
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum, usual in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(signum) is usual:
                    previous[signum] = signal.signal(signum, self._handler)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
