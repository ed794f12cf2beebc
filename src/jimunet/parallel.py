"""Threads for the hot loops, controlled by one setting: ``set_num_threads``.

NumPy's copies and elementwise kernels run on one core but release the GIL, and BLAS is
most efficient on large single-threaded blocks. So jimunet splits work itself: each
thread takes a disjoint block of the batch (``pfor``) or of a matrix product's output
(``pmatmul``), with BLAS held to one thread meanwhile (through threadpoolctl, which sets
it process-wide for the duration of each region). Splits by sample leave every number's
arithmetic unchanged; products split by columns and reductions over the batch use a fixed
number of blocks, whatever the thread count. So results are bit-identical for any number
of threads (``tests/test_parallel.py`` checks it).

The same fixed blocks make data-parallel processes exact: layers that treat samples on
their own cut the batch with ``batch_blocks`` and add per-block sums with ``sum_blocks``, so
a process given whole blocks of a batch (``jimunet.distributed``) does the arithmetic one
process does for them, and the sums can be completed in one process's order.
"""
from __future__ import annotations

import contextvars
import os
import queue
import threading
from contextlib import contextmanager, nullcontext

import numpy as np

from ._messages import shown
from .backend import xp_of
from .random import current_batch_shard

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
        raise ValueError(f"set_num_threads expects a positive int, got {shown(n)}")
    with _lock:
        if _workers is not None:
            _workers.close()
            _workers = None
        _num_threads = n


def get_num_threads() -> int:
    """The number of threads jimunet uses."""
    return _num_threads


class _Workers:
    """Daemon threads fed through queues: cheaper per call than an executor's futures."""

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


def split(n: int, k: int):
    """``k`` contiguous slices covering ``range(n)`` (fewer when n is small): how ``pfor``
    cuts its range, for callers that keep per-block state (scratch, partial sums)."""
    k = max(1, min(k, n))
    bounds = [n * i // k for i in range(k + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(k)]


# How many blocks ``pfor`` cuts its range into: a constant, so that the blocks, and with
# them the shape of every BLAS call made on a block, are fixed by the problem alone. Some
# CPUs' BLAS kernels round a row of a product differently depending on the product's
# height, so a split that followed the thread count would change the numbers. 8 blocks
# keep up to 8 threads busy and leave each block large enough for an efficient GEMM.
BLOCKS = 8


def thread_slots(n: int) -> list:
    """For each of ``n`` parts that ``pfor(fn, n, blocks=n)`` runs one at a time, the group of
    threads' work it falls in at the current thread count. Parts of one slot never run at the
    same time, so scratch space kept per slot instead of per part serves them all (its
    contents never reach a result, so the numbers stay those of any thread count). The slots
    change with ``set_num_threads``: what keeps them must be made again then."""
    return [g for g, sl in enumerate(_thread_groups(n)) for _ in range(sl.start, sl.stop)]


def _thread_groups(parts: int):
    """The contiguous runs of ``parts`` pieces that ``pfor`` gives its threads, one run each."""
    return split(parts, _num_threads)


def pfor(fn, n: int, work: int | None = None, blocks: int = BLOCKS, like=None, parts=None, blas: bool = True) -> None:
    """Call ``fn(slice)`` once for each of ``blocks`` disjoint slices covering ``range(n)``,
    the slices spread over the threads in contiguous runs.

    The slices depend on ``n``, ``work`` and ``blocks`` only, never on the thread count,
    so ``fn`` sees the same pieces whether one thread or eight run them. ``fn`` must
    only write to the part of its outputs that its slice selects. ``work`` (e.g. the
    number of elements touched) below ~64k makes the whole range one slice: waking a
    worker costs more than such a job. ``like``: an array the work is on; for GPU
    arrays ``fn`` is called once over everything, since the device runs a whole batch
    in parallel and Python-side splitting would only multiply kernel launches.
    ``blas=False``: ``fn`` makes no BLAS call (element-wise work, reductions), so BLAS is
    left as it is: holding it to one thread costs ~15 µs a region, and a ResNet training
    step enters ~140 such regions (the optimizer's, BatchNorm's, the activations').
    """
    if n < 1:
        return
    if like is not None and xp_of(like) is not np:
        fn(slice(0, n))
        return
    small = work is not None and work < 1 << 16
    if parts is None:
        parts = [slice(0, n)] if small else split(n, blocks)
    if len(parts) == 1 and not blas:  # one piece and no BLAS to hold: no region to enter
        fn(parts[0])
        return

    def run(group):
        for part in parts[group]:
            fn(part)
    if getattr(_local, "inside", False):  # already in a region: this thread does it all
        run(slice(None))
        return
    # BLAS runs single-threaded inside every region, also when jimunet runs one thread:
    # multi-threaded BLAS may sum in another order, and results must not depend on threads.
    _local.inside = True
    try:
        with _blas_single_thread() if blas else nullcontext():
            groups = [slice(0, len(parts))] if small else _thread_groups(len(parts))
            if len(groups) == 1:
                run(groups[0])
            else:
                _pool().run(run, groups)
    finally:
        _local.inside = False


def batch_blocks(n: int):
    """The blocks a layer that treats every sample on its own cuts a batch of ``n`` into:
    ``split(n, BLOCKS)``, so each block's arithmetic (every GEMM's shape) is fixed by the
    batch alone.

    Inside ``jimunet.random.batch_shard(start, stop, total)`` with ``n == stop - start``,
    the batch is rows ``start:stop`` of a batch of ``total``: the blocks are then those of
    the whole batch that fall in it, counted from ``start``. A data-parallel process whose
    share is a run of whole blocks so computes its samples exactly as one process would.
    """
    shard = current_batch_shard()
    if shard is None or shard[1] - shard[0] != n:
        return split(n, BLOCKS)
    start, stop, total = shard
    return [slice(max(b.start, start) - start, min(b.stop, stop) - start)
            for b in split(total, BLOCKS) if b.start < stop and b.stop > start]


# A list while per-block sums are collected for an exact data-parallel step (see
# ``defer_block_sums``), else None.
_deferred: contextvars.ContextVar = contextvars.ContextVar("jimunet_deferred_block_sums", default=None)


def sum_blocks(partials, finish) -> None:
    """Add per-block partial results in block order, then call ``finish(*sums)``.

    ``partials``: arrays whose first axis is the block (``partials[k][i]`` is block ``i``'s
    share of sum ``k``); the sums land in ``partials[k][0]``. A fixed order makes the result
    independent of how many threads, or processes, computed the blocks. Inside
    ``defer_block_sums`` and a ``batch_shard`` the blocks are only this process's share:
    the sum is recorded instead, for the caller to complete with every process's blocks.
    """
    pending = _deferred.get()
    if pending is not None and current_batch_shard() is not None:
        pending.append((list(partials), finish))
        return
    add_blocks_in_order(partials)
    finish(*(p[0] for p in partials))


def add_blocks_in_order(partials) -> None:
    """``p[0] += p[i]`` for i = 1, 2, ... for each ``p`` of ``partials``: the one order
    every per-block sum uses."""
    for i in range(1, len(partials[0])):
        for p in partials:
            p[0] += p[i]


@contextmanager
def defer_block_sums():
    """Inside, ``sum_blocks`` calls made within a ``batch_shard`` are recorded, not done: the
    list yielded gets ``(partials, finish)`` for each, in call order. Used by
    ``jimunet.distributed`` to gather every process's blocks before summing them."""
    pending = []
    token = _deferred.set(pending)
    try:
        yield pending
    finally:
        _deferred.reset(token)


# The batch statistics' exchange of the data-parallel step in progress (see ``synced_batch``).
_batch_sync: contextvars.ContextVar = contextvars.ContextVar("jimunet_batch_sync", default=None)


@contextmanager
def synced_batch(sync):
    """Inside, a layer that needs statistics of the whole batch (``BatchNorm``) and computes
    one process's share of it (within ``jimunet.random.batch_shard``) gets ``sync`` from
    ``batch_sync``: the object through which the processes of a data-parallel step exchange
    what such a layer needs (``jimunet.distributed.BatchSync``)."""
    token = _batch_sync.set(sync)
    try:
        yield sync
    finally:
        _batch_sync.reset(token)


def batch_sync(n: int):
    """The ``synced_batch`` exchange when a batch of ``n`` samples is this process's share of a
    data-parallel step's batch (inside ``synced_batch`` and a ``batch_shard`` of ``n`` rows),
    else None: the batch is then the whole batch, as in one process."""
    sync = _batch_sync.get()
    shard = current_batch_shard()
    if sync is None or shard is None or shard[1] - shard[0] != n:
        return None
    return sync


def has_nan(x) -> bool:
    """Whether ``x`` holds a NaN. Each thread sums its block (one cheap pass, no
    temporary); only a non-finite sum calls for the exact elementwise look."""
    xp = xp_of(x)
    if x.size == 0:
        return False
    flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
    non_finite = []

    def block(sl):
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf or overflow is no error here
            if not bool(xp.isfinite(flat[sl].sum())):
                non_finite.append(sl)
    pfor(block, flat.shape[0], x.size, like=x, blas=False)
    return bool(non_finite) and any(bool(xp.isnan(flat[sl]).any()) for sl in non_finite)


_MATMUL_BLOCKS = 4


def pmatmul(a, b, out=None, accumulate: bool = False):
    """``a @ b`` for 2-D arrays (or ``out += a @ b`` with ``accumulate``), the output split
    across threads by rows or by columns. Each thread adds its own block, so accumulating
    into a large gradient needs no full-size temporary."""
    xp = xp_of(a, b)
    m, n = a.shape[0], b.shape[1]
    if out is None:
        if accumulate:
            raise ValueError("pmatmul: accumulate=True needs out")
        out = xp.empty((m, n), dtype=xp.result_type(a.dtype, b.dtype))

    def block(rows, cols):
        if accumulate:
            out[rows, cols] += xp.matmul(a[rows], b[:, cols])
        else:
            xp.matmul(a[rows], b[:, cols], out=out[rows, cols])
    # Split the larger operand, so each thread reads only its share of it (for a batch
    # times a big weight matrix, that is the weight's columns), into pfor's fixed blocks.
    by_rows = a.size >= b.size
    everything = slice(None)
    pfor(lambda part: block(*((part, everything) if by_rows else (everything, part))),
         m if by_rows else n, m * n * a.shape[1] >> 6, blocks=_MATMUL_BLOCKS, like=a)
    return out


def paccumulate_tmatmul(a, b, out, blocks: int = BLOCKS, b_sum_out=None, parts=None):
    """``out += aᵀ @ b`` for tall ``a`` and ``b`` (a reduction over their many rows), and
    ``b_sum_out += b.sum(axis=0)`` in the same pass when given (a bias gradient).

    The rows are cut into a fixed number of blocks, whatever the thread count; each
    block's result lands in its own buffer and the buffers are added in block order,
    so the result does not depend on how many threads computed it. Each thread reads
    only its own rows, the cheapest split when ``aᵀ @ b`` is small. ``parts``: the row
    blocks to use instead (e.g. each sample's rows, see ``batch_blocks``); the sum goes
    through ``sum_blocks``. ``a`` may also be a list of each part's rows (``parts`` then
    required), for operands kept block by block.
    """
    a_parts = a if isinstance(a, list) else None
    if a_parts is not None:
        if parts is None or len(parts) != len(a_parts):
            raise ValueError("paccumulate_tmatmul: a list of row blocks needs parts, one per block")
        a = a_parts[0]
    xp = xp_of(a, b)
    if parts is None:
        parts = split(a.shape[0], blocks)
    blocks = len(parts)
    dtype = xp.result_type(a.dtype, b.dtype)
    partial = xp.empty((blocks, a.shape[1], b.shape[1]), dtype=dtype)
    partial_sum = xp.empty((blocks, b.shape[1]), dtype=b.dtype) if b_sum_out is not None else None

    def run(sl):
        for i in range(sl.start, sl.stop):
            r = parts[i]
            xp.matmul((a[r] if a_parts is None else a_parts[i]).T, b[r], out=partial[i])
            if partial_sum is not None:
                b[r].sum(axis=0, out=partial_sum[i])
    rows = b.shape[0]
    pfor(run, blocks, rows * a.shape[1] * b.shape[1] >> 6, blocks=blocks, like=a)

    def finish(total, total_sum=None):  # the whole sum first, then one add: accumulation stays exact
        xp.add(out, total, out=out)
        if total_sum is not None:
            xp.add(b_sum_out, total_sum, out=b_sum_out)
    sum_blocks([partial] if partial_sum is None else [partial, partial_sum], finish)
    return out


__all__ = ["set_num_threads", "get_num_threads", "pfor", "split", "BLOCKS", "batch_blocks", "pmatmul",
           "paccumulate_tmatmul", "sum_blocks", "add_blocks_in_order", "defer_block_sums", "synced_batch", "batch_sync"]
