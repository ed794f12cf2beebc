"""Threads for the hot loops, controlled by one setting: ``set_num_threads``.

NumPy's copies and elementwise kernels run on one core but release the GIL, and BLAS is
most efficient on large single-threaded blocks. So jimunet splits work itself: each
thread takes a disjoint block of the batch (``pfor``) or of a matrix product's output
(``pmatmul``), with BLAS held to one thread meanwhile. No block's result depends on
another's, and every output element is computed by the same arithmetic whatever the
split, so results are identical for any number of threads.
"""
from __future__ import annotations

import os
import queue
import threading
from contextlib import contextmanager

from .backend import xp_of

try:  # threadpoolctl is how BLAS is held to one thread inside a parallel region
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - it is a declared dependency
    ThreadpoolController = None

_num_threads = max(1, min(os.cpu_count() or 1, 8))
_workers: "_Workers | None" = None
_controller = None
_lock = threading.Lock()
_local = threading.local()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for jimunet's hot loops (default: the number of cores, up to 8).

    Results are the same for every ``n``; ``n=1`` runs everything on the calling thread.
    """
    global _num_threads, _workers
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads expects a positive int, got {n!r}")
    with _lock:
        if _workers is not None:
            _workers.close()
            _workers = None
        _num_threads = n


def get_num_threads() -> int:
    """The number of threads jimunet uses."""
    return _num_threads


class _Workers:
    """Daemon threads fed through queues: cheaper per call (~10 µs) than an executor's futures."""

    def __init__(self, n: int):
        self.inbox = [queue.SimpleQueue() for _ in range(n)]
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        for q in self.inbox:
            threading.Thread(target=self._loop, args=(q,), daemon=True, name="jimunet").start()

    def _loop(self, inbox):
        _local.inside = True  # a worker never splits its own work again
        while True:
            task = inbox.get()
            if task is None:
                return
            fn, arg = task
            try:
                fn(arg)
                self.done.put(None)
            except BaseException as e:  # handed to the caller, re-raised there
                self.done.put(e)

    def run(self, fn, args):
        """``fn(a)`` for each of ``args``: the first on this thread, the rest on workers."""
        for q, a in zip(self.inbox, args[1:]):
            q.put((fn, a))
        errors = []
        try:
            fn(args[0])
        except BaseException as e:
            errors.append(e)
        for _ in args[1:]:  # always wait for every worker: they write into the caller's buffers
            e = self.done.get()
            if e is not None:
                errors.append(e)
        if errors:
            raise errors[0]

    def close(self):
        for q in self.inbox:
            q.put(None)


def _pool() -> _Workers:
    global _workers
    with _lock:
        if _workers is None:
            _workers = _Workers(_num_threads - 1)
        return _workers


@contextmanager
def _blas_single_thread():
    global _controller
    if ThreadpoolController is None:
        yield
        return
    if _controller is None:
        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield


def _parts(n: int, threads: int):
    """``threads`` contiguous slices covering ``range(n)`` (fewer when n is small)."""
    k = max(1, min(threads, n))
    bounds = [n * i // k for i in range(k + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(k)]


def _active():
    """True when threads should be used: more than one, and not already inside a region."""
    return _num_threads > 1 and not getattr(_local, "inside", False)


def pfor(fn, n: int, work: int | None = None) -> None:
    """Call ``fn(slice)`` for disjoint slices covering ``range(n)``, one per thread.

    ``fn`` must only write to the part of its outputs that its slice selects. ``work``
    (e.g. the number of elements touched) below ~64k runs on this thread alone: waking
    a worker costs more than such a job.
    """
    if not _active() or n < 2 or (work is not None and work < 1 << 16):
        fn(slice(0, n))
        return
    _local.inside = True
    try:
        with _blas_single_thread():
            _pool().run(fn, _parts(n, _num_threads))
    finally:
        _local.inside = False


def pmatmul(a, b, out=None):
    """``a @ b`` for 2-D arrays, its output split across threads by rows (or columns when
    ``a`` has few rows). ``out``, if given, must be C-contiguous of the result's shape."""
    xp = xp_of(a, b)
    m, n = a.shape[0], b.shape[1]
    if out is None:
        out = xp.empty((m, n), dtype=xp.result_type(a.dtype, b.dtype))
    if xp_of(a) is not xp_of(out) or not _active() or m * n * a.shape[1] < 1 << 22:
        xp.matmul(a, b, out=out)
        return out
    if m >= 4 * _num_threads:
        pfor(lambda sl: xp.matmul(a[sl], b, out=out[sl]), m)
    else:
        pfor(lambda sl: xp.matmul(a, b[:, sl], out=out[:, sl]), n)
    return out


__all__ = ["set_num_threads", "get_num_threads", "pfor", "pmatmul"]
