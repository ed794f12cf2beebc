"""Data-parallel training over MPI: a small communicator on top of mpi4py.

Synchronous data parallelism needs a few collective operations, and this module gives
exactly those, on the job ``mpiexec`` started (``MPI.COMM_WORLD``):

- ``allgather_(send, recv, counts)``: every rank's array, concatenated, on every rank (the
  exact reduction's two per step: the per-sample layers' output, then the per-block
  weight-gradient sums with the stop flags, ``gather_block_sums``; see ``BlockLayout``);
- ``allreduce_(buf)``: sum a flat array over all ranks, in place (the "allreduce"
  reduction's gradients: ONE call per training step over ``GradientBuffer.flat``, which
  every parameter's ``.grad`` views);
- ``broadcast_state(tree)``: rank 0's weights, optimizer state, RNG states and counters to
  every rank (a nested dict of arrays and JSON values; no pickles);
- ``broadcast_json(obj)``: rank 0's settings, to check that every rank runs the same recipe.

mpi4py is imported only by ``init()``, so ``import jimunet`` never needs MPI.

Example (run with ``mpiexec -n 2 python script.py``)::

    import jimunet as jn
    comm = jn.distributed.init()
    print(comm.rank, comm.size, comm.shard(64))   # 0 2 slice(0, 32, None) / 1 2 slice(32, 64, None)
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from .parallel import BLOCKS, add_blocks_in_order, split
from .serialization import pack, unpack

__all__ = ["init", "Communicator", "GradientBuffer", "BlockLayout", "BatchSync", "gather_block_sums",
           "DistributedError", "INSTALL_HINT", "launched_by_mpiexec"]

INSTALL_HINT = ("pip install 'jimunet[mpi]' (mpi4py and the Open MPI wheel, which provides mpiexec), then start "
                "every process with: mpiexec -n N python -m jimunet train --distributed")


class DistributedError(RuntimeError):
    """MPI is missing or unusable, or the ranks of a job disagree."""


def launched_by_mpiexec() -> int:
    """The number of processes ``mpiexec`` started in this job (1 when not started by one).

    Read from the environment Open MPI (``OMPI_COMM_WORLD_SIZE``), MPICH/Hydra
    (``PMI_SIZE``) and PMIx launchers (``PMIX_SIZE``) give each process, without importing MPI.
    """
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        try:
            return max(1, int(os.environ[name]))
        except (KeyError, ValueError):
            continue
    return 1


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"distributed training needs mpi4py and an MPI library, and mpi4py could not be "
                               f"imported ({e}); {INSTALL_HINT}") from None
    except RuntimeError as e:  # mpi4py present but its MPI library failed to load or start
        raise DistributedError(f"MPI could not start ({e}); {INSTALL_HINT}") from None
    return MPI


class Communicator:
    """The processes of one MPI job: ``rank`` (0-based), ``size``, ``local_size`` (on this host).

    Build with ``init()``. Every collective method must be called by every rank in the same
    order, as with any MPI program.
    """

    def __init__(self, mpi_comm, MPI):
        self._comm, self._MPI = mpi_comm, MPI
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        try:
            node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
            self.local_size = node.Get_size()
            node.Free()
        except Exception:  # pragma: no cover - an MPI without shared-memory split
            self.local_size = 1

    def __repr__(self):
        return f"Communicator(rank={self.rank}, size={self.size})"

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``range(n)`` (shares differ in length by at most one)."""
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    def allreduce_(self, buf: np.ndarray, op: str = "sum") -> np.ndarray:
        """Reduce ``buf`` (a contiguous NumPy array) over all ranks in place (``op``: "sum",
        "max" or "min"); returns it."""
        if not (isinstance(buf, np.ndarray) and buf.flags.c_contiguous):
            raise ValueError("allreduce_: expected a contiguous NumPy array")
        ops = {"sum": self._MPI.SUM, "max": self._MPI.MAX, "min": self._MPI.MIN}
        if op not in ops:
            raise ValueError(f"allreduce_: op must be one of {sorted(ops)}, got {op!r}")
        self._comm.Allreduce(self._MPI.IN_PLACE, buf, op=ops[op])
        return buf

    def allgather_(self, send: np.ndarray, recv: np.ndarray, counts) -> np.ndarray:
        """Concatenate every rank's ``send`` (rank order) into ``recv`` on every rank;
        ``counts[r]``: the number of elements rank ``r`` sends. Returns ``recv``."""
        counts = [int(c) for c in counts]
        if send.size != counts[self.rank] or recv.size != sum(counts) or send.dtype != recv.dtype:
            raise ValueError(f"allgather_: rank {self.rank} sends {send.size} {send.dtype} elements into "
                             f"{recv.size} {recv.dtype}, expected {counts[self.rank]} of {sum(counts)}")
        displs = np.cumsum([0] + counts[:-1]).tolist()
        self._comm.Allgatherv(np.ascontiguousarray(send), [recv, (counts, displs)])
        return recv

    def broadcast_array(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite ``buf`` on every rank with ``root``'s (same shape and dtype everywhere)."""
        self._comm.Bcast(buf, root=root)
        return buf

    def _broadcast_bytes(self, data: bytes | None, root: int = 0) -> bytes:
        n = np.array([len(data) if self.rank == root else 0], np.int64)
        self._comm.Bcast(n, root=root)
        buf = np.frombuffer(data, np.uint8).copy() if self.rank == root else np.empty(int(n[0]), np.uint8)
        self._comm.Bcast(buf, root=root)
        return buf.tobytes()

    def broadcast_json(self, obj=None, root: int = 0):
        """``root``'s ``obj`` (JSON values only) on every rank."""
        text = json.dumps(obj).encode() if self.rank == root else None
        return json.loads(self._broadcast_bytes(text, root).decode())

    def broadcast_state(self, tree=None, root: int = 0):
        """``root``'s ``tree`` (nested dicts/lists of NumPy arrays and JSON values) on every rank.

        Sent as JSON plus one buffer of array bytes: nothing is unpickled.
        """
        if self.rank == root:
            arrays = {}
            skeleton = pack(tree, arrays)
            names = sorted(arrays)
            layout = [[k, arrays[k].dtype.str, list(arrays[k].shape)] for k in names]
            payload = b"".join(np.ascontiguousarray(arrays[k]).tobytes() for k in names)
        else:
            skeleton = layout = payload = None
        skeleton, layout = self.broadcast_json([skeleton, layout], root)
        payload = self._broadcast_bytes(payload, root)
        arrays, offset = {}, 0
        for name, dtype, shape in layout:
            dt = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            arrays[name] = np.frombuffer(payload, dt, count, offset).reshape(shape).copy()
            offset += count * dt.itemsize
        return unpack(skeleton, arrays)

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every process of the job (what a failing rank does so that no rank waits forever)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self._comm.Abort(int(code))


def init() -> Communicator:
    """The communicator of the job this process belongs to (``MPI.COMM_WORLD``).

    Start the processes with ``mpiexec -n N python ...``; a process started without
    ``mpiexec`` is a job of one. Raises ``DistributedError`` (saying what to install) when
    mpi4py or its MPI library is missing.
    """
    MPI = _mpi()
    try:
        return Communicator(MPI.COMM_WORLD, MPI)
    except Exception as e:  # MPI_Init failed (e.g. no launcher it can reach)
        raise DistributedError(f"MPI could not start ({type(e).__name__}: {e}); {INSTALL_HINT}") from None


class BlockLayout:
    """Which samples of a batch of ``n`` each of ``size`` processes takes in an exact
    data-parallel step: the batch's ``parallel.batch_blocks`` (``split(n, BLOCKS)``),
    dealt out as contiguous runs of whole blocks. Every process then computes its blocks
    exactly as one process computes them (the same GEMM shapes), and the per-block sums
    can be added in the one process's order. Needs ``size <= min(n, BLOCKS)``.
    """

    def __init__(self, n: int, size: int):
        self.n, self.size = int(n), int(size)
        blocks = split(self.n, BLOCKS)
        if self.size > len(blocks):
            raise DistributedError(f"exact data-parallel steps deal out the {len(blocks)} blocks of a batch of "
                                   f"{self.n}, so they work with at most {len(blocks)} processes, not "
                                   f"{self.size}; use reduction='allreduce' (--reduction allreduce) for more")
        owned = split(len(blocks), self.size)
        self.blocks = [o.stop - o.start for o in owned]  # blocks per process
        self.samples = [slice(blocks[o.start].start, blocks[o.stop - 1].stop) for o in owned]


def gather_block_sums(comm: Communicator, layout: BlockLayout, pending, extra: np.ndarray) -> np.ndarray:
    """Complete the per-block sums ``parallel.defer_block_sums`` recorded on every process.

    Each process holds the partial results of its own blocks; ONE all-gather gives every
    process all of them, and each sum is then added in block order and finished exactly as
    a single process does it (``parallel.add_blocks_in_order``). ``extra``: a few numbers
    per process sent along (stop flags); returns them, shape ``(size, len(extra))``.
    """
    arrays = [p for partials, _ in pending for p in partials]
    dtypes = {a.dtype for a in arrays} | {extra.dtype}
    if len(dtypes) != 1:
        raise DistributedError(f"exact data-parallel steps need one dtype for every gradient, got "
                               f"{sorted(map(str, dtypes))}")
    mine = layout.blocks[comm.rank]
    for a in arrays:
        if len(a) != mine:
            raise DistributedError(f"a layer summed {len(a)} blocks of this process's share of the batch, but "
                                   f"the share has {mine} blocks")
    sizes = [a[0].size for a in arrays]  # elements per block, the same on every process
    counts = [nb * sum(sizes) + extra.size for nb in layout.blocks]
    send = np.concatenate([a.reshape(-1) for a in arrays] + [extra])
    recv = comm.allgather_(send, np.empty(sum(counts), send.dtype), counts)
    total = sum(layout.blocks)
    full = [np.empty((total, *a.shape[1:]), a.dtype) for a in arrays]
    offset, extras = 0, []
    for rank, nb in enumerate(layout.blocks):
        first = sum(layout.blocks[:rank])
        for f, size in zip(full, sizes):
            f[first:first + nb] = recv[offset:offset + nb * size].reshape(nb, *f.shape[1:])
            offset += nb * size
        extras.append(recv[offset:offset + extra.size])
        offset += extra.size
    k = 0
    for partials, finish in pending:
        sums = full[k:k + len(partials)]
        k += len(partials)
        add_blocks_in_order(sums)
        finish(*(f[0] for f in sums))
    return np.stack(extras)


class BatchSync:
    """What the processes of a data-parallel step exchange for the layers that need statistics
    of the whole batch (``BatchNorm``), handed to them through ``parallel.synced_batch``.

    ``shares[r]``: the samples of the batch that rank ``r`` computes (contiguous, in rank
    order). With ``exact`` (the exact reduction), ``gather`` gives every process the whole
    batch's array, so such a layer computes its statistics with one process's arithmetic on
    one process's numbers: bit-identical. Otherwise (the all-reduce), ``add`` sums a few
    numbers per process (per-channel sums), in rank order on every process, so every process
    gets the same sums, equal to one process's up to float rounding. ``seconds``: the time
    spent in these exchanges (waiting for the slowest rank included); ``exchanges``: how many.
    """

    def __init__(self, comm: Communicator, shares, exact: bool):
        self.comm, self.shares, self.exact = comm, list(shares), bool(exact)
        self.rows = self.shares[comm.rank]  # this process's samples
        self.total = self.shares[-1].stop  # samples in the whole batch
        self.seconds = 0.0
        self.exchanges = 0  # collective calls made (the same on every rank)

    def _allgather(self, send, recv, counts):
        t0 = time.perf_counter()
        self.comm.allgather_(send, recv, counts)
        self.seconds += time.perf_counter() - t0
        self.exchanges += 1
        return recv

    def gather(self, x: np.ndarray) -> np.ndarray:
        """The whole batch's array, of which ``x`` (first axis: samples) is this process's share."""
        mine = self.rows.stop - self.rows.start
        if x.shape[0] != mine:
            raise DistributedError(f"a layer gathered {x.shape[0]} samples, but this process's share of the "
                                   f"batch has {mine}")
        per = int(np.prod(x.shape[1:], dtype=np.int64))
        full = np.empty((self.total, *x.shape[1:]), x.dtype)
        return self._allgather(np.ascontiguousarray(x).reshape(-1), full.reshape(-1),
                               [(s.stop - s.start) * per for s in self.shares])

    def add(self, v: np.ndarray) -> np.ndarray:
        """The sum over the processes of ``v`` (the same shape on each), added in rank order."""
        flat = np.ascontiguousarray(v).reshape(-1)
        parts = np.empty((self.comm.size, flat.size), flat.dtype)
        self._allgather(flat, parts.reshape(-1), [flat.size] * self.comm.size)
        total = parts[0].copy()
        for p in parts[1:]:
            total += p
        return total.reshape(np.shape(v))


class GradientBuffer:
    """One flat array holding every parameter's gradient, so a step needs ONE all-reduce.

    Each ``Parameter.grad`` becomes a view into ``flat``; layers keep adding into their
    gradients as usual. ``extra`` slots after the gradients carry a few per-step numbers
    (the loss, flags) in the same all-reduce.

    Args:
        params: the parameters (all of one dtype).
        extra: number of extra slots.
    """

    def __init__(self, params, extra: int = 0):
        self.params = list(params)
        dtypes = {p.data.dtype for p in self.params}
        if len(dtypes) != 1:
            raise ValueError(f"distributed training needs parameters of one dtype, got {sorted(map(str, dtypes))}")
        if not all(isinstance(p.data, np.ndarray) for p in self.params):
            raise ValueError("distributed training works on NumPy (host) arrays only")
        sizes = [p.size for p in self.params]
        self.size = sum(sizes)
        self.flat = np.zeros(self.size + extra, dtypes.pop())
        self.extra = self.flat[self.size:]
        bounds = np.cumsum([0] + sizes)
        self._views = [self.flat[a:b].reshape(p.shape) for p, a, b in zip(self.params, bounds[:-1], bounds[1:])]
        self.attach()

    @property
    def nbytes(self) -> int:
        return self.flat.nbytes

    def attach(self) -> None:
        """(Re)make each ``grad`` a view into ``flat``, keeping its values (cheap when it already is)."""
        for p, view in zip(self.params, self._views):
            if p.grad is not view:
                view[...] = p.grad
                p.grad = view
