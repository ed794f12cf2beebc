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

Waiting: every collective is started nonblocking and waited for by ``Communicator._wait``,
which polls it with pauses that grow with the time already waited (up to 10 ms), so a rank
that waits for a slow or paused one uses next to no CPU (a blocking MPI call spins). After
``timeout`` seconds of silence (``JIMUNET_MPI_TIMEOUT``, default ``DEFAULT_TIMEOUT_S``; 0:
no limit) the waiting rank asks the others who is there (a roll call on a separate
communicator, answered by every rank that is waiting too) and raises ``DistributedTimeout``
naming the ranks that did not answer; ``jimunet train`` then ends the job.

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

__all__ = ["init", "Communicator", "GradientBuffer", "BlockLayout", "gather_block_sums", "DistributedError",
           "DistributedTimeout", "INSTALL_HINT", "launched_by_mpiexec", "DEFAULT_TIMEOUT_S", "TIMEOUT_ENV",
           "timeout_from_env"]

INSTALL_HINT = ("pip install 'jimunet[mpi]' (mpi4py and the Open MPI wheel, which provides mpiexec), then start "
                "every process with: mpiexec -n N python -m jimunet train --distributed")


DEFAULT_TIMEOUT_S = 300.0  # a rank silent for this long in a collective ends the job
TIMEOUT_ENV = "JIMUNET_MPI_TIMEOUT"
_SPIN_S = 0.001  # poll without pausing this long first: ranks in step meet within it
_MAX_PAUSE_S = 0.01  # the longest pause between two polls
_ROLL_CALL_EVERY_S = 0.1  # how often a waiting rank looks for another rank's roll call
_ASK, _ANSWER = 1, 2  # the roll call's tags


class DistributedError(RuntimeError):
    """MPI is missing or unusable, or the ranks of a job disagree."""


class DistributedTimeout(DistributedError):
    """A collective did not complete within the communicator's ``timeout``; ``silent``: the
    ranks that did not answer the roll call (paused, hung, or busy for longer than that)."""

    def __init__(self, message, silent=()):
        super().__init__(message)
        self.silent = list(silent)


def timeout_from_env(default: float = DEFAULT_TIMEOUT_S) -> float | None:
    """``JIMUNET_MPI_TIMEOUT`` in seconds (None: no limit, for 0), else ``default``; DistributedError if it is not
    a number >= 0."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise DistributedError(f"{TIMEOUT_ENV} must be a number of seconds >= 0 (0: wait without limit), "
                               f"got {text!r}")
    return value or None


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
    # Open MPI: a process waiting inside MPI itself (MPI_Init, MPI_Finalize) yields its core.
    os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
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
    order, as with any MPI program. ``timeout``: seconds a collective may wait for the other
    ranks before ``DistributedTimeout`` (None: no limit); see the module docstring.
    """

    def __init__(self, mpi_comm, MPI, timeout: float | None = DEFAULT_TIMEOUT_S):
        self._comm, self._MPI = mpi_comm, MPI
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        self.timeout = timeout
        self._calls = 0  # collectives started, the same count on every rank in step
        self._roll = mpi_comm.Dup() if self.size > 1 else None  # the roll call's own channel
        self._answers: list = []  # send requests of roll-call answers
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

    # -- waiting ---------------------------------------------------------------------------

    def _wait(self, request, what: str) -> None:
        """Wait for the nonblocking collective ``request`` without spinning; DistributedTimeout
        after ``timeout`` seconds (naming the ranks that do not answer a roll call)."""
        self._calls += 1
        if request.Test():
            return
        start = time.monotonic()
        next_look = start + _ROLL_CALL_EVERY_S
        while not request.Test():
            now = time.monotonic()
            waited = now - start
            if waited < _SPIN_S:
                continue
            # Pauses grow with the wait (1% of it): a peer that arrives after t seconds finds
            # this rank at most t/100 later; a paused peer costs this rank ~100 polls a second.
            time.sleep(min(_MAX_PAUSE_S, max(2e-5, waited / 100)))
            if now >= next_look:
                next_look = now + _ROLL_CALL_EVERY_S
                self._answer_roll_calls()
                if self.timeout is not None and waited > self.timeout:
                    self._roll_call(what, waited)

    def _answer_roll_calls(self) -> None:
        """Tell every rank that asked (``_roll_call``) that this one is here, and in which collective."""
        if self._roll is None:
            return
        status = self._MPI.Status()
        while self._roll.Iprobe(source=self._MPI.ANY_SOURCE, tag=_ASK, status=status):
            asker = status.Get_source()
            self._roll.Recv(np.empty(1, np.int64), source=asker, tag=_ASK)
            self._answers.append(self._roll.Isend(np.array([self._calls], np.int64), dest=asker, tag=_ANSWER))
        self._answers = [r for r in self._answers if not r.Test()]

    def _roll_call(self, what: str, waited: float) -> None:
        """Ask every other rank who is there, wait a little for the answers and raise DistributedTimeout."""
        others = [r for r in range(self.size) if r != self.rank]
        asks = [self._roll.Isend(np.array([self._calls], np.int64), dest=r, tag=_ASK) for r in others]
        got = {r: np.zeros(1, np.int64) for r in others}
        pending = {r: self._roll.Irecv(got[r], source=r, tag=_ANSWER) for r in others}
        end = time.monotonic() + min(10.0, max(1.0, self.timeout / 10))
        while pending and time.monotonic() < end:
            self._answer_roll_calls()  # another rank may be calling the roll at the same time
            pending = {r: q for r, q in pending.items() if not q.Test()}
            time.sleep(0.01)
        silent = sorted(pending)
        for q in pending.values():
            q.Cancel()
        del asks  # small messages: sent eagerly, nothing waits for them
        here = f"rank {self.rank} of {self.size} waited {waited:.0f} s in the {what} (collective {self._calls})"
        if silent:
            names = ", ".join(map(str, silent))
            raise DistributedTimeout(
                f"{here} for rank{'s' if len(silent) > 1 else ''} {names}, which did not answer: paused (SIGSTOP), "
                f"hung, or busy for longer than the time limit of {self.timeout:g} s (set it with --mpi-timeout "
                f"SECONDS or {TIMEOUT_ENV}; 0: no limit)", silent)
        where = ", ".join(f"rank {r} in collective {int(got[r][0])}" for r in others)
        raise DistributedTimeout(f"{here}; every rank answered ({where}) but the collective did not complete: "
                                 f"the ranks are not running the same program")

    # -- the collectives -------------------------------------------------------------------

    def allreduce_(self, buf: np.ndarray, op: str = "sum") -> np.ndarray:
        """Reduce ``buf`` (a contiguous NumPy array) over all ranks in place (``op``: "sum",
        "max" or "min"); returns it."""
        if not (isinstance(buf, np.ndarray) and buf.flags.c_contiguous):
            raise ValueError("allreduce_: expected a contiguous NumPy array")
        ops = {"sum": self._MPI.SUM, "max": self._MPI.MAX, "min": self._MPI.MIN}
        if op not in ops:
            raise ValueError(f"allreduce_: op must be one of {sorted(ops)}, got {op!r}")
        self._wait(self._comm.Iallreduce(self._MPI.IN_PLACE, buf, op=ops[op]), "all-reduce")
        return buf

    def allgather_(self, send: np.ndarray, recv: np.ndarray, counts) -> np.ndarray:
        """Concatenate every rank's ``send`` (rank order) into ``recv`` on every rank;
        ``counts[r]``: the number of elements rank ``r`` sends. Returns ``recv``."""
        counts = [int(c) for c in counts]
        if send.size != counts[self.rank] or recv.size != sum(counts) or send.dtype != recv.dtype:
            raise ValueError(f"allgather_: rank {self.rank} sends {send.size} {send.dtype} elements into "
                             f"{recv.size} {recv.dtype}, expected {counts[self.rank]} of {sum(counts)}")
        displs = np.cumsum([0] + counts[:-1]).tolist()
        send = np.ascontiguousarray(send)
        self._wait(self._comm.Iallgatherv(send, [recv, (counts, displs)]), "all-gather")
        return recv

    def broadcast_array(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite ``buf`` on every rank with ``root``'s (same shape and dtype everywhere)."""
        self._wait(self._comm.Ibcast(buf, root=root), f"broadcast from rank {root}")
        return buf

    def _broadcast_bytes(self, data: bytes | None, root: int = 0) -> bytes:
        n = np.array([len(data) if self.rank == root else 0], np.int64)
        self.broadcast_array(n, root)
        buf = np.frombuffer(data, np.uint8).copy() if self.rank == root else np.empty(int(n[0]), np.uint8)
        self.broadcast_array(buf, root)
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
        self._wait(self._comm.Ibarrier(), "barrier")

    def abort(self, code: int = 1) -> None:
        """End every process of the job (what a failing rank does so that no rank waits forever)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self._comm.Abort(int(code))


def init(timeout: float | None = None) -> Communicator:
    """The communicator of the job this process belongs to (``MPI.COMM_WORLD``).

    Start the processes with ``mpiexec -n N python ...``; a process started without
    ``mpiexec`` is a job of one. ``timeout``: seconds a collective may wait for the other
    ranks (default: ``JIMUNET_MPI_TIMEOUT``, else ``DEFAULT_TIMEOUT_S``; 0 or None in the
    variable: no limit). Raises ``DistributedError`` (saying what to install) when mpi4py or
    its MPI library is missing.
    """
    limit = timeout_from_env() if timeout is None else (float(timeout) or None)
    MPI = _mpi()
    try:
        return Communicator(MPI.COMM_WORLD, MPI, limit)
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
