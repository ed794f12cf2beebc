"""How one training step runs: a strategy object, chosen once when the ``Trainer`` is made.

``LocalStep``: one process runs the whole batch. ``AllReduceStep`` and ``ExactBlockStep``:
every rank of a ``jimunet.distributed.Communicator`` runs the same ``Trainer`` (same seed, same
data, same ``batch_size``, which stays the GLOBAL batch) and computes its own contiguous share
of each batch, drawing the dropout masks one process would draw for those samples; every rank
takes the same optimizer step, and stop requests travel with the step's collective operations.
CPU only. ``select_strategy`` is the choice the ``Trainer``'s ``comm``/``reduction`` make:

- ``"exact"`` (``ExactBlockStep``): each rank takes whole blocks of the batch
  (``distributed.BlockLayout``) through the layers that treat samples on their own (a
  ``Sequential``'s or a ``jn.Model``'s convolutions, pooling, activations, merges, BatchNorm,
  up to the first other layer, at a point one tensor crosses); one all-gather joins their
  outputs, the rest of the network (the fully connected head) runs on the whole batch on
  every rank, and one all-gather of the convolutions' per-block weight-gradient sums lets
  every rank add them in one process's order. A BatchNorm layer among the first layers
  all-gathers its input (forward) and output gradient (backward) and computes its batch
  sums on the whole batch as one process does. The weights and BatchNorm's running
  statistics are BIT-IDENTICAL to one process's, on any CPU, for up to 8 ranks.
- ``"allreduce"`` (``AllReduceStep``): each rank runs the whole network on its slice and one
  all-reduce sums the gradients; BatchNorm layers add their per-channel sums over the ranks
  (a few numbers per layer), so they normalise with the whole batch's statistics: scales to
  any number of ranks, matches one process to float rounding only.
- ``"auto"``: ``"exact"`` where it applies (a ``Sequential`` or ``jn.Model``, at most 8 ranks),
  else ``"allreduce"``.

A strategy's ``run(trainer, xb, yb)`` does forward, loss, backward and the optimizer step and
returns the loss (with the weight-decay term); the learning rate is already set. A new way to
run a step is a subclass of ``StepStrategy`` passed as ``Trainer(strategy=...)``.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .._messages import shown
from ..backend import all_finite, xp_of
from ..distributed import BatchSync, BlockLayout, DistributedError, GradientBuffer, gather_block_sums
from ..parallel import defer_block_sums, split, synced_batch
from ..random import batch_shard
from .errors import WEIGHTS_NOT_FINITE, diverged, is_nan_error, state_finite

__all__ = ["REDUCTIONS", "StepStrategy", "LocalStep", "AllReduceStep", "ExactBlockStep", "select_strategy",
           "weight_decay_penalty"]

REDUCTIONS = ("auto", "exact", "allreduce")


def weight_decay_penalty(optimizer) -> float:
    """``wd/2·Σp²`` over every param group with ``weight_decay`` (what weight decay is the gradient of)."""
    total = 0.0
    for g in optimizer.param_groups:
        wd = g.get("weight_decay", 0.0)
        if wd:  # one float() per group: on a GPU each is a wait for the device
            xp = xp_of(g["params"][0].data)
            squares = xp.stack([xp.vdot(p.data.ravel(), p.data.ravel()) for p in g["params"]])
            total += 0.5 * wd * float(squares.astype(np.float64).sum())
    return total


class StepStrategy:
    """How one step runs. Attributes: ``comm`` (None for one process), ``reduction`` (None,
    ``"exact"`` or ``"allreduce"``), ``comm_seconds`` (time in collective operations, waiting
    for the slowest rank included), ``stop_agreed`` (a rank asked to stop at the last step)."""

    comm = None
    reduction = None
    stops_between_epochs = True  # may a stop request end training at an epoch's end?

    def __init__(self):
        self.comm_seconds = 0.0
        self.stop_agreed = False

    def run(self, trainer, xb, yb) -> float:
        raise NotImplementedError

    def stop_now(self, trainer) -> bool:
        """Whether training ends after the step just done (on every rank together)."""
        return trainer.stop_requested

    def sync(self, trainer) -> None:
        """Give every rank rank 0's complete state (collective; nothing to do for one process)."""


class LocalStep(StepStrategy):
    """The whole batch in this process."""

    def run(self, trainer, xb, yb) -> float:
        model, loss_fn = trainer.model, trainer.loss_fn
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            try:
                logits = model.forward(xb, training=True)
            except ValueError as e:
                # Layers refuse NaN inputs. With finite data, a NaN inside the network means the
                # weights, or activations that overflowed float range (inf - inf), went bad.
                if not state_finite(model):
                    raise diverged(trainer.step, trainer.epoch + 1, WEIGHTS_NOT_FINITE)
                if is_nan_error(e) and all_finite([xb]):
                    raise diverged(trainer.step, trainer.epoch + 1, f"the activations overflowed to NaN ({e})")
                raise
            loss = float(loss_fn.forward(logits, yb)) + weight_decay_penalty(trainer.optimizer)
            if not math.isfinite(loss):
                raise diverged(trainer.step, trainer.epoch + 1, f"the loss is {loss}", loss)
            model.backward(loss_fn.backward(), input_grad=False)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()
        return loss


class _Distributed(StepStrategy):
    stops_between_epochs = False  # distributed runs stop only where every process agrees: at a step
    _exchange = None  # the step's BatchSync while it runs

    def __init__(self, comm):
        super().__init__()
        self.comm = comm

    def stop_now(self, trainer) -> bool:
        return self.stop_agreed

    def sync(self, trainer) -> None:
        state = self.comm.broadcast_state(trainer.state_dict() if self.comm.rank == 0 else None)
        if self.comm.rank != 0:
            trainer.load_state_dict(state)

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.comm_seconds += time.perf_counter() - t0
        return out

    def run(self, trainer, xb, yb) -> float:
        # BatchNorm layers of a process's share get the whole batch's statistics through this
        self._exchange = sync = BatchSync(self.comm, self._shares(len(xb)), exact=self.reduction == "exact")
        try:
            with synced_batch(sync):
                return self._run(trainer, xb, yb)
        finally:
            self.comm_seconds += sync.seconds
            self._exchange = None

    def _shares(self, n: int):
        """Every rank's samples of a batch of ``n``, in rank order."""
        raise NotImplementedError

    def _run(self, trainer, xb, yb) -> float:
        raise NotImplementedError


class AllReduceStep(_Distributed):
    """``LocalStep`` on this rank's slice of the global batch, then one all-reduce.

    Every decision after the all-reduce (NaN, stop) is taken from summed numbers, so all
    ranks take it together; a rank never raises alone while the others wait.
    """

    reduction = "allreduce"
    _LOSS, _BAD, _STOP = range(3)  # extra slots after the gradients in the all-reduced buffer

    def __init__(self, comm):
        super().__init__(comm)
        self._grads = None

    def _local_loss(self, trainer, xb, yb, part):
        """This rank's mean loss on its slice (NaN when the activations overflowed), backward done."""
        n, model = len(xb), trainer.model
        logits = None
        try:
            with batch_shard(part.start, part.stop, n):
                logits = model.forward(xb[part], training=True)
        except ValueError as e:
            if not state_finite(model):  # the weights are the same on every rank: all stop here
                raise diverged(trainer.step, trainer.epoch + 1, WEIGHTS_NOT_FINITE)
            if not is_nan_error(e) or not all_finite([xb[part]]):
                raise
        local = float(trainer.loss_fn.forward(logits, yb[part])) if logits is not None else math.nan
        bad = not math.isfinite(local)
        exchange = self._exchange
        if exchange is not None and exchange.exchanges:
            # BatchNorm's backward exchanges its sums too: every rank runs it, or none does
            bad = bool(exchange.add(np.array([1.0 if bad else 0.0]))[0] > 0)
        if not bad:
            # d(mean over the global batch)/d(logits) = (softmax - onehot) / n: the loss's
            # own gradient is the mean over our m samples, so scale it by m / n.
            grad = trainer.loss_fn.backward()
            grad *= grad.dtype.type((part.stop - part.start) / n)
            model.backward(grad, input_grad=False)
        return local

    def _shares(self, n: int):
        return split(n, self.comm.size)  # comm.shard(n) of every rank

    def _run(self, trainer, xb, yb) -> float:
        n = len(xb)
        part = self.comm.shard(n)
        if self._grads is None:
            self._grads = GradientBuffer(trainer.model.parameters(), extra=3)
        grads = self._grads
        grads.attach()  # in case something replaced a .grad since the last step
        stats = grads.extra
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            local = self._local_loss(trainer, xb, yb, part)
            if math.isfinite(local):
                stats[self._LOSS] = local * (part.stop - part.start)
            stats[self._BAD] = 0.0 if math.isfinite(local) else 1.0
            stats[self._STOP] = 1.0 if trainer.stop_requested else 0.0
            self._timed(self.comm.allreduce_, grads.flat)
            self.stop_agreed = bool(stats[self._STOP] > 0)
            loss = float(stats[self._LOSS]) / n + weight_decay_penalty(trainer.optimizer)
            bad = int(stats[self._BAD])
            if bad or not math.isfinite(loss):
                trainer.optimizer.zero_grad()
                stats[:] = 0.0
                raise diverged(trainer.step, trainer.epoch + 1,
                               f"the loss or the activations became NaN or infinite on {bad} of {self.comm.size} "
                               f"processes" if bad else f"the loss is {loss}", loss)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()  # zeroes the buffer's gradient part in place
            stats[:] = 0.0
        return loss


class ExactBlockStep(_Distributed):
    """``LocalStep`` shared out in whole blocks of the batch, the same numbers as one process.

    After the all-gather of the per-sample stages' output, every rank holds the same numbers,
    so every decision (NaN, divergence) is taken by all ranks together.
    """

    reduction = "exact"

    def _features(self, trainer, xb, layout, part, k):
        """The per-sample stages' output for the whole batch: this rank's blocks, all-gathered."""
        n, model = len(xb), trainer.model
        local = None
        try:
            with batch_shard(part.start, part.stop, n):
                local = model.forward(xb[part], training=True, stages=slice(0, k))
        except ValueError as e:
            # Overflowed activations: NaN goes to every rank, whose loss then says so.
            if not is_nan_error(e) or not all_finite([xb[part]]):
                raise
        if local is None:
            shape = model.stages_output_shape(xb.shape[1:], slice(0, k))
            dtype = np.result_type(xb.dtype, *(p.data.dtype for p in model.parameters()))
            local = np.full((part.stop - part.start, *shape), np.nan, dtype)
        feats = np.empty((n, *local.shape[1:]), local.dtype)
        self._timed(self.comm.allgather_, local.reshape(-1), feats.reshape(-1),
                    [(s.stop - s.start) * local[0].size for s in layout.samples])
        return feats

    def _shares(self, n: int):
        return BlockLayout(n, self.comm.size).samples

    def _run(self, trainer, xb, yb) -> float:
        n, model = len(xb), trainer.model
        layout = BlockLayout(n, self.comm.size)
        part = layout.samples[self.comm.rank]
        k = model.per_sample_stages()
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            feats = self._features(trainer, xb, layout, part, k) if k else xb
            logits = model.forward(feats, training=True, stages=slice(k, None))
            loss = float(trainer.loss_fn.forward(logits, yb)) + weight_decay_penalty(trainer.optimizer)
            if not math.isfinite(loss):
                raise diverged(trainer.step, trainer.epoch + 1, f"the loss is {loss}", loss)
            grad = model.backward(trainer.loss_fn.backward(), input_grad=k > 0, stages=slice(k, None))
            with defer_block_sums() as pending:
                if k:
                    with batch_shard(part.start, part.stop, n):
                        model.backward(grad[part], input_grad=False, stages=slice(0, k))
            stop = np.array([1.0 if trainer.stop_requested else 0.0], feats.dtype)
            flags = self._timed(gather_block_sums, self.comm, layout, pending, stop)
            self.stop_agreed = bool(flags.max() > 0)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()
        return loss


def select_strategy(model, batch_size: int, comm=None, reduction: str = "auto") -> StepStrategy:
    """The strategy ``Trainer(comm=..., reduction=...)`` stands for (see the module docstring).

    Raises ``ValueError`` for an unknown ``reduction``, a model off the CPU, a batch smaller
    than the number of processes, or ``"exact"`` where it cannot be used (saying why).
    """
    if comm is None:
        return LocalStep()
    if batch_size < comm.size:
        raise ValueError(f"Trainer: batch_size {batch_size} is smaller than the {comm.size} processes; each "
                         f"process needs at least one sample of every batch")
    if reduction not in REDUCTIONS:
        raise ValueError(f"Trainer: reduction must be {', '.join(map(repr, REDUCTIONS[:-1]))} or "
                         f"{REDUCTIONS[-1]!r}, got {shown(reduction)}")
    if model.device != "cpu":
        raise ValueError(f"Trainer: distributed training runs on the CPU (NumPy arrays), not on {model.device}")
    if reduction == "allreduce":
        return AllReduceStep(comm)
    why = None
    if not hasattr(model, "per_sample_stages"):
        why = f"it needs a Sequential or jn.Model network, not a {type(model).__name__}"
    else:
        try:
            BlockLayout(batch_size, comm.size)
        except DistributedError as e:
            why = str(e)
    if why is None:
        return ExactBlockStep(comm)
    if reduction == "exact":
        raise ValueError(f"Trainer: reduction='exact' cannot be used: {why}")
    return AllReduceStep(comm)
