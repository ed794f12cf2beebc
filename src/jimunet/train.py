"""Training and evaluation: a resumable ``Trainer``, ``fit``, ``evaluate`` and the MNIST recipe.

``Trainer`` runs mini-batch SGD epochs over in-memory arrays: learning-rate schedule per
step, seeded shuffling, a tqdm bar per epoch, a per-epoch record (``History``), callbacks,
NaN/inf detection (``TrainingDiverged``) and complete, pickle-free checkpoints (model,
optimizer, RNG streams, counters, history) from which training continues bit-identically.

``train_mnist(config)`` is the TensorFlow sample's recipe (``jimunet train``) on top of it:
data split and scaling, a run directory with ``model.npz``, ``best.npz``,
``checkpoint.npz``, ``metrics.json`` and ``train.log``, resuming and Ctrl-C handling.

Example:
    >>> import numpy as np, jimunet as jn
    >>> from jimunet.train import fit, evaluate
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((64, 4)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int64)
    >>> model = jn.Sequential([jn.layers.Dense(4, 2, rng=0)])
    >>> opt = jn.optim.SGD(model.parameters(), lr=0.5)
    >>> history = fit(model, jn.losses.SoftmaxCrossEntropy(), opt, x, y, epochs=5, batch_size=16,
    ...               x_val=x, y_val=y, rng=0, progress=False, log=False)
    >>> len(history.epochs), evaluate(model, x, y).accuracy > 0.9
    (5, True)
"""
from __future__ import annotations

import math
import os
import platform
import shlex
import signal
import sys
import time
from collections import namedtuple
from dataclasses import dataclass, field

import numpy as np

from ._version import __version__
from .app.rundir import (EpochFiles, RunDir, RunLog, StopSignals, Stopped, new_run_dir, portable_config,
                         set_metrics_status, write_json_atomic)
from .backend import check_device, to_device, to_numpy, xp_of
from .data.images import preprocess
from .recipes import (REDUCTIONS, RESUMABLE_FIELDS, SELF_TEST_EVAL, SELF_TEST_TRAIN, ConfigError, MNISTConfig,
                      build, describe_recipe, fake_data, make_augment)
from .serialization import CheckpointError, load_npz, pack, referenced_arrays, save_npz, unpack

__all__ = ["Trainer", "fit", "evaluate", "Evaluation", "History", "Callback", "TrainingDiverged",
           "TrainingInterrupted", "train_mnist", "TrainResult", "RunLog", "preprocess",
           "write_json_atomic", "CHECKPOINT_FORMAT", "METRICS_FORMAT"]

CHECKPOINT_FORMAT = "jimunet-checkpoint"
METRICS_FORMAT = "jimunet-metrics"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite (or the weights did); training stopped.

    Attributes: ``step`` (0-based global step), ``epoch`` (1-based epoch it happened in),
    ``loss`` (the offending value or None), ``checkpoint`` (path of the last good one or None).
    """

    def __init__(self, message, step, epoch, loss=None, checkpoint=None):
        super().__init__(message)
        self.step, self.epoch, self.loss, self.checkpoint = step, epoch, loss, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM (in ``train_mnist``) or a callback's KeyboardInterrupt stopped training.

    ``epochs_completed`` is the number of whole epochs in the last checkpoint; the
    interrupted epoch's partial work is discarded, and the in-memory model is mid-epoch.
    ``run_dir`` is set by ``train_mnist`` (resume with ``train_mnist(resume=run_dir)``).
    ``signum`` is the signal that stopped it (``signal.SIGINT`` for Ctrl-C and callbacks).
    ``all_ranks``: in a distributed run, whether every process stopped at the same step.
    """

    def __init__(self, message, epochs_completed, step, run_dir=None, signum=signal.SIGINT):
        super().__init__(message)
        self.message, self.epochs_completed, self.step, self.run_dir = message, epochs_completed, step, run_dir
        self.signum = signum
        self.all_ranks = False

    def __str__(self):
        return self.message


# -- evaluation ----------------------------------------------------------------------------

Evaluation = namedtuple("Evaluation", ["accuracy", "error", "confusion"])
Evaluation.__doc__ = """Result of ``evaluate``: ``accuracy`` as a fraction in [0, 1], ``error`` in
PERCENT (``100·(1-accuracy)``, the TF sample's error rate), ``confusion`` an int64
``(classes, classes)`` matrix, rows true class, columns predicted class."""


def evaluate(model, x, y, batch_size: int = 100, num_classes: int | None = None) -> Evaluation:
    """Accuracy, error rate and confusion matrix of ``model`` on ``(x, y)`` (evaluation mode).

    Args:
        model: anything with ``predict(x, batch_size)`` returning logits ``(N, classes)``.
        x: inputs, already preprocessed. y: integer labels ``(N,)``.
        batch_size: images per forward pass (bounds memory; the recipe's 100 keeps its
            published figures; ``Sequential.predict``'s default 200 is ~7% faster on 2 cores).
        num_classes: the confusion matrix has at least this many rows and columns (and at
            least one per model output).

    Returns:
        ``Evaluation(accuracy, error, confusion)`` — unpacks as a tuple.
    """
    y = np.asarray(to_numpy(y)).astype(np.int64)
    if len(x) != len(y):
        raise ValueError(f"evaluate: {len(x)} inputs but {len(y)} labels")
    if len(y) == 0:
        raise ValueError("evaluate: no samples")
    logits = to_numpy(model.predict(x, batch_size=batch_size))
    if logits.ndim != 2:
        raise ValueError(f"evaluate: expected class scores of shape (N, classes) from the model, got "
                         f"{logits.shape}; a classifier ends in a Dense layer")
    k = max(logits.shape[1], num_classes or 0)  # a 20-class model on MNIST: a 20×20 matrix
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"evaluate: labels must lie in 0..{k - 1} (the model has {logits.shape[1]} outputs), "
                         f"got {int(y.min())}..{int(y.max())}")
    pred = logits.argmax(axis=1)
    confusion = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    accuracy = float((pred == y).mean())
    return Evaluation(accuracy, 100.0 * (1.0 - accuracy), confusion)


# -- history and callbacks ----------------------------------------------------------------

@dataclass
class History:
    """What training produced so far.

    Attributes:
        epochs: one dict per completed epoch: ``epoch`` (1-based), ``train_loss`` (mean of the
            epoch's step losses), ``val_error`` (percent, None without validation data),
            ``lr`` (rate of the epoch's last step), ``steps``, ``seconds`` (training plus
            validation), ``images_per_s`` (training only).
        step_loss: the loss of every step, in order (including the L2 term the optimizer's
            weight decay stands for).
        best_epoch, best_val_error: the epoch with the lowest validation error so far.
        wall_time_s: seconds spent in completed epochs (summed over resumed sessions).
        train_seconds: the part of it spent on training steps (for images_per_s).
    """

    epochs: list = field(default_factory=list)
    step_loss: list = field(default_factory=list)
    best_epoch: int | None = None
    best_val_error: float | None = None
    wall_time_s: float = 0.0
    train_seconds: float = 0.0
    images_seen: int = 0

    def state(self) -> dict:
        return {"epochs": [dict(e) for e in self.epochs], "step_loss": np.asarray(self.step_loss, np.float64),
                "best_epoch": self.best_epoch, "best_val_error": self.best_val_error,
                "wall_time_s": self.wall_time_s, "train_seconds": self.train_seconds,
                "images_seen": self.images_seen}

    @classmethod
    def from_state(cls, s: dict) -> "History":
        return cls(epochs=[dict(e) for e in s["epochs"]],
                   step_loss=[float(v) for v in np.asarray(s["step_loss"], np.float64).ravel()],
                   best_epoch=s["best_epoch"], best_val_error=s["best_val_error"],
                   wall_time_s=float(s["wall_time_s"]), train_seconds=float(s["train_seconds"]),
                   images_seen=int(s["images_seen"]))

    @property
    def images_per_s(self) -> float | None:
        return self.images_seen / self.train_seconds if self.train_seconds > 0 else None


class Callback:
    """Hooks called by ``Trainer.fit``; override the ones you need.

    ``on_epoch_end`` runs after the epoch's record is in ``trainer.history`` and its line is
    logged; callbacks run in list order. Raising ``KeyboardInterrupt`` from any hook stops
    training as Ctrl-C would.
    """

    def on_train_begin(self, trainer): ...

    def on_epoch_begin(self, trainer, epoch: int): ...

    def on_step_end(self, trainer, step: int, loss: float): ...

    def on_epoch_end(self, trainer, epoch: int, record: dict): ...

    def on_train_end(self, trainer): ...


def _auto_progress(progress):
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


# -- the trainer ----------------------------------------------------------------------------

class Trainer:
    """Mini-batch training of ``model`` with ``loss_fn`` and ``optimizer``, resumable exactly.

    Args:
        model: a ``Sequential`` (``forward``, ``backward``, ``zero_grad``, ``predict``,
            ``state_dict``, ``rng_states``).
        loss_fn: e.g. ``SoftmaxCrossEntropy()`` (``forward(logits, y)`` → mean, ``backward()``).
        optimizer: e.g. ``SGD``; the reported loss adds ``wd/2·Σp²`` for every param group
            with ``weight_decay`` (the objective that weight decay is the gradient of).
        batch_size: images per step.
        schedule: callable ``step → lr`` (0-based global step), applied before every step;
            None keeps the optimizer's rate.
        shuffle: True: a new permutation of the training set each epoch, from ``rng``; the
            last partial batch is DROPPED (``n // batch_size`` steps per epoch): every step
            then has the same size and weight, as in the TF sample, which never takes a
            partial batch, and with reshuffling a different remainder sits out each epoch, so
            every image is still used. False: the TF sample's fixed walk: global step ``s`` trains on
            ``x[o:o+batch]`` with ``o = (s·batch) % (n - batch)``, and epoch ``e`` covers
            steps ``[e·n//batch, (e+1)·n//batch)``, so 10 epochs are the sample's 8,593 steps.
        rng: the shuffling Generator or an int seed for one.
        callbacks: ``Callback`` objects.
        progress: tqdm bar per epoch on stderr (None: only when stderr is a terminal).
        log: function called with each text line (default ``print``; False: silent).
        eval_batch_size: batch size of the validation passes.
        comm: a ``jimunet.distributed.Communicator`` for data-parallel training: every rank
            runs the same Trainer (same seed, same data, same ``batch_size``, which stays the
            GLOBAL batch) and computes its own contiguous share of each batch, drawing the
            dropout masks one process would draw for those samples; how the shares are
            combined is ``reduction``. Every rank takes the same optimizer step, and stop
            requests travel with the step's collective operations. Call
            ``sync_from_rank0()`` first so that all ranks start from one state. CPU only.
        reduction: how the ranks of ``comm`` combine their work. ``"exact"``: each rank takes
            whole blocks of the batch (``distributed.BlockLayout``) through the layers that
            treat samples on their own (a ``Sequential``'s convolutions, pooling, activations,
            up to the first other layer); one all-gather joins their outputs, the rest of the
            network (the fully connected head) runs on the whole batch on every rank, and one
            all-gather of the convolutions' per-block weight-gradient sums lets every rank add
            them in one process's order: the weights are BIT-IDENTICAL to one process's, on
            any CPU, for up to 8 ranks. ``"allreduce"``: each rank runs the whole network on
            its slice and one all-reduce sums the gradients: scales to any number of ranks,
            matches one process to float rounding only. ``"auto"`` (default): ``"exact"``
            where it applies (a ``Sequential`` model, at most 8 ranks), else ``"allreduce"``.
        augment: optional callable applied to every training batch's images (e.g.
            ``jimunet.data.augment.RandomShift``); its ``state()``/``set_state()``, when it
            has them, go into checkpoints so a resumed run draws the same augmentations.

    Attributes: ``epoch`` (completed epochs), ``step`` (global steps done), ``history``;
    with ``comm``, ``comm_seconds`` (time spent in collective operations, waiting for the
    slowest rank included), ``stop_agreed`` (a rank asked to stop at the last step) and
    ``reduction`` (``"exact"`` or ``"allreduce"``, what ``"auto"`` resolved to).
    """

    # extra slots after the gradients in the all-reduced buffer
    _LOSS, _BAD, _STOP = range(3)

    def __init__(self, model, loss_fn, optimizer, *, batch_size: int = 64, schedule=None, shuffle: bool = True,
                 rng=None, callbacks=(), progress=None, log=None, eval_batch_size: int = 100, comm=None,
                 augment=None, reduction: str = "auto"):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"Trainer: batch_size must be a positive integer, got {batch_size!r}")
        if comm is not None and batch_size < comm.size:
            raise ValueError(f"Trainer: batch_size {batch_size} is smaller than the {comm.size} processes; each "
                             f"process needs at least one sample of every batch")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.batch_size, self.schedule, self.shuffle = int(batch_size), schedule, bool(shuffle)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.callbacks = list(callbacks)
        self.progress, self.eval_batch_size = progress, eval_batch_size
        self.log = (lambda msg: None) if log is False else (log or (lambda msg: print(msg, flush=True)))
        self.epoch, self.step = 0, 0
        self.history = History()
        self.total_epochs = None
        self.comm = comm
        self.reduction = self._resolve_reduction(reduction) if comm is not None else None
        self._grads = None
        self.comm_seconds = 0.0
        self.stop_agreed = False
        self.stop_requested = lambda: False  # set by the caller: has this process been asked to stop?
        self.augment = augment

    def _resolve_reduction(self, reduction):
        from .distributed import BlockLayout, DistributedError
        if reduction not in REDUCTIONS:
            raise ValueError(f"Trainer: reduction must be {', '.join(map(repr, REDUCTIONS[:-1]))} or "
                             f"{REDUCTIONS[-1]!r}, got {reduction!r}")
        if self.model.device != "cpu":
            raise ValueError(f"Trainer: distributed training runs on the CPU (NumPy arrays), not on "
                             f"{self.model.device}")
        if reduction == "allreduce":
            return reduction
        why = None
        if not hasattr(self.model, "per_sample_stages"):
            why = f"it needs a Sequential model, not a {type(self.model).__name__}"
        else:
            try:
                BlockLayout(self.batch_size, self.comm.size)
            except DistributedError as e:
                why = str(e)
        if why is None:
            return "exact"
        if reduction == "exact":
            raise ValueError(f"Trainer: reduction='exact' cannot be used: {why}")
        return "allreduce"

    # -- batches ----------------------------------------------------------------------
    def steps_in_epoch(self, n: int, epoch: int) -> int:
        """Steps of 0-based ``epoch`` for ``n`` training images."""
        bs = self.batch_size
        if self.shuffle:
            return max(1, n // bs)
        return max(1, (epoch + 1) * n // bs - epoch * n // bs) if n >= bs else 1

    def _batches(self, x, y, epoch):
        n, bs = len(x), self.batch_size
        steps = self.steps_in_epoch(n, epoch)
        if self.shuffle:
            perm = self.rng.permutation(n)
            xp = xp_of(x)
            for i in range(steps):
                idx = xp.asarray(perm[i * bs:(i + 1) * bs])  # on the data's device
                yield x[idx], y[idx]
        else:
            for s in range(self.step, self.step + steps):
                o = (s * bs) % (n - bs) if n > bs else 0
                yield x[o:o + bs], y[o:o + bs]

    # -- one step -----------------------------------------------------------------------
    def _penalty(self) -> float:
        total = 0.0
        for g in self.optimizer.param_groups:
            wd = g.get("weight_decay", 0.0)
            if wd:  # one float() per group: on a GPU each is a wait for the device
                xp = xp_of(g["params"][0].data)
                squares = xp.stack([xp.vdot(p.data.ravel(), p.data.ravel()) for p in g["params"]])
                total += 0.5 * wd * float(squares.astype(np.float64).sum())
        return total

    def _diverged(self, what, loss=None):
        epoch = self.epoch + 1
        raise TrainingDiverged(f"training diverged at step {self.step} (epoch {epoch}): {what}; "
                               f"try a lower learning rate", self.step, epoch, loss)

    def _params_finite(self) -> bool:
        return all(bool(xp_of(p.data).isfinite(p.data).all()) for p in self.model.parameters())

    def train_step(self, xb, yb) -> float:
        """One SGD step on a batch; returns the loss (with the weight-decay term)."""
        if self.schedule is not None:
            self.optimizer.set_lr(self.schedule(self.step))
        if self.comm is not None:
            return self._exact_step(xb, yb) if self.reduction == "exact" else self._distributed_step(xb, yb)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            try:
                logits = self.model.forward(xb, training=True)
            except ValueError as e:
                # Layers refuse NaN inputs. With finite data, a NaN inside the network means the
                # weights, or activations that overflowed float range (inf - inf), went bad.
                if not self._params_finite():
                    self._diverged("the weights contain NaN or infinite values")
                if "NaN" in str(e) and bool(xp_of(xb).isfinite(xb).all()):
                    self._diverged(f"the activations overflowed to NaN ({e})")
                raise
            loss = float(self.loss_fn.forward(logits, yb)) + self._penalty()
            if not math.isfinite(loss):
                self._diverged(f"the loss is {loss}", loss)
            self.model.backward(self.loss_fn.backward(), input_grad=False)
            self.optimizer.step()
            self.optimizer.zero_grad()
        return loss

    def _distributed_step(self, xb, yb) -> float:
        """``train_step`` on this rank's slice of the global batch, then one all-reduce.

        Every decision after the all-reduce (NaN, stop) is taken from summed numbers, so all
        ranks take it together; a rank never raises alone while the others wait.
        """
        from .distributed import GradientBuffer
        from .random import batch_shard

        n = len(xb)
        part = self.comm.shard(n)
        m = part.stop - part.start
        if self._grads is None:
            self._grads = GradientBuffer(self.model.parameters(), extra=3)
        grads = self._grads
        grads.attach()  # in case something replaced a .grad since the last step
        stats = grads.extra
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            logits = None
            try:
                with batch_shard(part.start, part.stop, n):
                    logits = self.model.forward(xb[part], training=True)
            except ValueError as e:
                if not self._params_finite():  # the weights are the same on every rank: all stop here
                    self._diverged("the weights contain NaN or infinite values")
                if "NaN" not in str(e) or not bool(xp_of(xb).isfinite(xb[part]).all()):
                    raise
            local = float(self.loss_fn.forward(logits, yb[part])) if logits is not None else math.nan
            if math.isfinite(local):
                # d(mean over the global batch)/d(logits) = (softmax - onehot) / n: the loss's
                # own gradient is the mean over our m samples, so scale it by m / n.
                grad = self.loss_fn.backward()
                grad *= grad.dtype.type(m / n)
                self.model.backward(grad, input_grad=False)
                stats[self._LOSS] = local * m
            stats[self._BAD] = 0.0 if math.isfinite(local) else 1.0
            stats[self._STOP] = 1.0 if self.stop_requested() else 0.0
            t0 = time.perf_counter()
            self.comm.allreduce_(grads.flat)
            self.comm_seconds += time.perf_counter() - t0
            self.stop_agreed = bool(stats[self._STOP] > 0)
            loss = float(stats[self._LOSS]) / n + self._penalty()
            bad = int(stats[self._BAD])
            if bad or not math.isfinite(loss):
                self.optimizer.zero_grad()
                stats[:] = 0.0
                self._diverged(f"the loss or the activations became NaN or infinite on {bad} of {self.comm.size} "
                               f"processes" if bad else f"the loss is {loss}", loss)
            self.optimizer.step()
            self.optimizer.zero_grad()  # zeroes the buffer's gradient part in place
            stats[:] = 0.0
        return loss

    def _exact_step(self, xb, yb) -> float:
        """``train_step`` shared out in whole blocks of the batch, the same numbers as one
        process (see ``reduction``). After the all-gather of the per-sample stages' output,
        every rank holds the same numbers, so every decision (NaN, divergence) is taken by
        all ranks together."""
        from .distributed import BlockLayout, gather_block_sums
        from .parallel import defer_block_sums
        from .random import batch_shard

        n = len(xb)
        layout = BlockLayout(n, self.comm.size)
        part = layout.samples[self.comm.rank]
        k = self.model.per_sample_stages()
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            feats = xb
            if k:
                local = None
                try:
                    with batch_shard(part.start, part.stop, n):
                        local = self.model.forward(xb[part], training=True, stages=slice(0, k))
                except ValueError as e:
                    # Overflowed activations: NaN goes to every rank, whose loss then says so.
                    if "NaN" not in str(e) or not bool(xp_of(xb).isfinite(xb[part]).all()):
                        raise
                if local is None:
                    shape = self.model.stages_output_shape(xb.shape[1:], slice(0, k))
                    dtype = np.result_type(xb.dtype, *(p.data.dtype for p in self.model.parameters()))
                    local = np.full((part.stop - part.start, *shape), np.nan, dtype)
                feats = np.empty((n, *local.shape[1:]), local.dtype)
                t0 = time.perf_counter()
                self.comm.allgather_(local.reshape(-1), feats.reshape(-1),
                                     [(s.stop - s.start) * local[0].size for s in layout.samples])
                self.comm_seconds += time.perf_counter() - t0
            logits = self.model.forward(feats, training=True, stages=slice(k, None))
            loss = float(self.loss_fn.forward(logits, yb)) + self._penalty()
            if not math.isfinite(loss):
                self._diverged(f"the loss is {loss}", loss)
            grad = self.model.backward(self.loss_fn.backward(), input_grad=k > 0, stages=slice(k, None))
            with defer_block_sums() as pending:
                if k:
                    with batch_shard(part.start, part.stop, n):
                        self.model.backward(grad[part], input_grad=False, stages=slice(0, k))
            stop = np.array([1.0 if self.stop_requested() else 0.0], feats.dtype)
            t0 = time.perf_counter()
            flags = gather_block_sums(self.comm, layout, pending, stop)
            self.comm_seconds += time.perf_counter() - t0
            self.stop_agreed = bool(flags.max() > 0)
            self.optimizer.step()
            self.optimizer.zero_grad()
        return loss

    def sync_from_rank0(self) -> None:
        """Give every rank rank 0's complete state (weights, optimizer, RNG streams, counters,
        history): a new run starts from one set of weights, a resumed one from the checkpoint
        that rank 0 read. Collective: every rank calls it."""
        if self.comm is None:
            return
        state = self.comm.broadcast_state(self.state_dict() if self.comm.rank == 0 else None)
        if self.comm.rank != 0:
            self.load_state_dict(state)

    # -- epochs -------------------------------------------------------------------------
    def _call(self, hook, *args):
        for cb in self.callbacks:
            getattr(cb, hook, lambda *a: None)(self, *args)

    def fit(self, x, y, epochs: int, x_val=None, y_val=None) -> History:
        """Train until ``epochs`` epochs are complete (continuing from ``self.epoch``).

        Raises:
            TrainingDiverged: the loss or the weights became NaN/inf (nothing after the
                last completed epoch is kept by the checkpointing callbacks).
            TrainingInterrupted: KeyboardInterrupt (Ctrl-C or a callback) during training.
        """
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"fit: need as many labels as inputs (and at least one), got {len(x)} and {len(y)}")
        if (x_val is None) != (y_val is None):
            raise ValueError("fit: pass both x_val and y_val, or neither")
        self.total_epochs = epochs
        # The data moves to the model's device once, not batch by batch.
        device = self.model.device
        x, y = to_device(x, device), to_device(y, device)
        if x_val is not None:
            x_val = to_device(x_val, device)
        try:
            self._call("on_train_begin")
            while self.epoch < epochs:
                self._run_epoch(x, y, x_val, y_val)
            self._call("on_train_end")
        except KeyboardInterrupt as e:
            if isinstance(e, TrainingInterrupted):
                raise
            raise TrainingInterrupted(f"interrupted during epoch {self.epoch + 1} (step {self.step}); "
                                      f"{self.epoch} epochs were complete", self.epoch, self.step,
                                      signum=getattr(e, "signum", signal.SIGINT)) from None
        return self.history

    def _run_epoch(self, x, y, x_val, y_val):
        epoch = self.epoch  # 0-based index of the epoch being run
        steps = self.steps_in_epoch(len(x), epoch)
        self._call("on_epoch_begin", epoch + 1)
        t0 = time.perf_counter()
        losses, images = [], 0
        bar = None
        if _auto_progress(self.progress):
            from tqdm import tqdm
            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.total_epochs}", unit="step",
                       file=sys.stderr, leave=False, dynamic_ncols=True)
        try:
            for xb, yb in self._batches(x, y, epoch):
                if self.augment is not None:
                    xb = self.augment(xb)
                loss = self.train_step(xb, yb)
                self.step += 1
                images += len(xb)
                losses.append(loss)
                if bar is not None:
                    rate = images / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f"loss={loss:.4f} img/s={rate:.0f}", refresh=False)
                    bar.update(1)
                self._call("on_step_end", self.step - 1, loss)
        finally:
            if bar is not None:
                bar.close()
        train_s = time.perf_counter() - t0
        val_error = None
        if x_val is not None and len(x_val):
            val_error = evaluate(self.model, x_val, y_val, self.eval_batch_size).error
        seconds = time.perf_counter() - t0
        h = self.history
        record = {"epoch": epoch + 1, "train_loss": math.fsum(losses) / len(losses), "val_error": val_error,
                  "lr": float(self.optimizer.lr), "steps": len(losses), "seconds": seconds,
                  "images_per_s": images / train_s if train_s > 0 else None}
        h.epochs.append(record)
        h.step_loss.extend(losses)
        h.wall_time_s += seconds
        h.train_seconds += train_s
        h.images_seen += images
        if val_error is not None and (h.best_val_error is None or val_error < h.best_val_error):
            h.best_epoch, h.best_val_error = epoch + 1, val_error
        self.epoch = epoch + 1
        self.log(format_epoch(record, self.total_epochs))
        self._call("on_epoch_end", epoch + 1, record)

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything training depends on: weights, optimizer, RNG streams, counters, history."""
        rng = {"shuffle": self.rng.bit_generator.state, "model": self.model.rng_states()}
        if hasattr(self.augment, "state"):
            rng["augment"] = self.augment.state()
        return {"model": {k: to_numpy(v).copy() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "rng": rng,
                "epoch": self.epoch, "step": self.step, "history": self.history.state(),
                "batch_size": self.batch_size, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        if int(state["batch_size"]) != self.batch_size or bool(state["shuffle"]) != self.shuffle:
            raise ValueError(f"the checkpoint was made with batch_size={state['batch_size']}, "
                             f"shuffle={state['shuffle']}; this trainer has batch_size={self.batch_size}, "
                             f"shuffle={self.shuffle}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]["shuffle"]
        self.model.set_rng_states(state["rng"]["model"])
        if hasattr(self.augment, "set_state") and "augment" in state["rng"]:
            self.augment.set_state(state["rng"]["augment"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = History.from_state(state["history"])

    def save_checkpoint(self, path, metadata: dict | None = None) -> None:
        """Write ``state_dict()`` (plus JSON ``metadata``) to ``path`` atomically; no pickles."""
        arrays = {}
        tree = pack(self.state_dict(), arrays)
        meta = {"format": CHECKPOINT_FORMAT, "version": 1, "jimunet": __version__,
                "architecture": self.model.get_config(), "state": tree, "metadata": metadata or {}}
        save_npz(path, arrays, meta)

    def load_checkpoint(self, path) -> dict:
        """Restore a ``save_checkpoint`` file; returns its metadata.

        Raises ``CheckpointError`` for a corrupt file or one that does not fit this trainer.
        """
        arrays, meta = load_npz(path, kind=CHECKPOINT_FORMAT, expected=referenced_arrays)
        try:
            self.load_state_dict(unpack(meta["state"], arrays))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: does not fit this model/optimizer ({type(e).__name__}: {e})") from None
        return meta.get("metadata", {})


def format_epoch(record: dict, total=None) -> str:
    val = f"val error {record['val_error']:6.2f}%" if record["val_error"] is not None else "val error    n/a"
    rate = f" ({record['images_per_s']:.0f} img/s)" if record.get("images_per_s") else ""
    of = f"/{total}" if total else ""
    return (f"epoch {record['epoch']:>3}{of}  train loss {record['train_loss']:.4f}  {val}  "
            f"lr {record['lr']:.6f}  {record['seconds']:6.1f} s{rate}")


def fit(model, loss_fn, optimizer, x, y, epochs: int = 1, batch_size: int = 64, schedule=None,
        x_val=None, y_val=None, callbacks=(), shuffle: bool = True, rng=None, progress=None,
        log=None, eval_batch_size: int = 100) -> History:
    """Train ``model`` for ``epochs`` epochs; a one-call front end to ``Trainer`` (see its Args).

    Returns the ``History``. Raises ``TrainingDiverged`` / ``TrainingInterrupted``.
    """
    trainer = Trainer(model, loss_fn, optimizer, batch_size=batch_size, schedule=schedule, shuffle=shuffle,
                      rng=rng, callbacks=callbacks, progress=progress, log=log, eval_batch_size=eval_batch_size)
    return trainer.fit(x, y, epochs, x_val, y_val)


# -- run directory --------------------------------------------------------------------------

def _versions() -> dict:
    return {"jimunet": __version__, "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


class _StopBetweenSteps(Callback):
    """Raises the Ctrl-C or SIGTERM that arrived during a step (or validation) once it is done."""

    def __init__(self, stops):
        self.stops = stops

    def on_step_end(self, trainer, step, loss):
        if trainer.comm is None:
            self.stops.check()
        elif trainer.stop_agreed:  # distributed: the all-reduce says some process was asked to stop
            self.stops.check()  # this one's own signal, if it got one
            raise Stopped(signal.SIGTERM)
        # (a signal that came during the all-reduce waits for the next step's: stopping
        # before the others know would leave them waiting in the all-reduce for ever)

    def on_epoch_end(self, trainer, epoch, record):
        if trainer.comm is None:  # distributed runs stop only where every process agrees: at a step
            self.stops.check()


@dataclass
class TrainResult:
    """What ``train_mnist`` returns."""

    run_dir: str
    model: object
    history: History
    test_accuracy: float
    test_error: float
    confusion: np.ndarray
    metrics: dict


def _load_data(cfg: MNISTConfig, data):
    """``(x_train, y_train), (x_val, y_val), (x_test, y_test)`` as model inputs."""
    if cfg.self_test:
        xt, yt = fake_data(SELF_TEST_TRAIN)
        (xv, yv), (xs, ys) = fake_data(SELF_TEST_EVAL), fake_data(SELF_TEST_EVAL)
        if cfg.train_size is not None:
            xt, yt = xt[:cfg.train_size], yt[:cfg.train_size]
        if cfg.test_size is not None:
            xs, ys = xs[:cfg.test_size], ys[:cfg.test_size]
        return (xt, yt), (xv, yv), (xs, ys)
    if data is None:
        from .datasets import load_mnist
        data = load_mnist(root=cfg.data_dir, download=cfg.download, progress=True)
    (x_all, y_all), (x_test, y_test) = data
    v = cfg.validation_size
    if v >= len(x_all):
        raise ConfigError(f"validation_size {v} leaves no training images (the data has {len(x_all)})")
    n = len(x_all) - v if cfg.train_size is None else cfg.train_size
    if n > len(x_all) - v:
        raise ConfigError(f"train_size {n} exceeds the {len(x_all) - v} training images available")
    t = len(x_test) if cfg.test_size is None else min(cfg.test_size, len(x_test))
    as_labels = lambda a: np.asarray(a).astype(np.int64)  # noqa: E731
    return ((preprocess(x_all[v:v + n]), as_labels(y_all[v:v + n])),
            (preprocess(x_all[:v]), as_labels(y_all[:v])),
            (preprocess(x_test[:t]), as_labels(y_test[:t])))


def _read_checkpoint_config(run_dir) -> MNISTConfig:
    path = os.path.join(os.fspath(run_dir), "checkpoint.npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cannot resume: {path} does not exist")
    _, meta = load_npz(path, kind=CHECKPOINT_FORMAT)
    try:
        # Paths in the file are not used (they are no longer written): where the data lives is
        # the user's say (--data-dir, $JIMUNET_DATA, the default), and a run lives where it is.
        # The device too is this machine's choice (--device): a GPU run resumes on a CPU.
        return MNISTConfig.from_dict({**portable_config(meta["metadata"]["config"]), "device": "cpu"})
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: holds no usable jimunet train configuration ({e})") from None


def load_run_config(run_dir) -> MNISTConfig:
    """The configuration stored in ``run_dir/checkpoint.npz`` (to resume with changes).

    Its ``out`` and ``data_dir`` are None: a run directory holds no paths (see ``jimunet.app.rundir``);
    its ``device`` is ``"cpu"``, whatever device the run used so far.
    """
    return _read_checkpoint_config(run_dir)


def _apply_threads(threads, comm=None):
    from .parallel import set_num_threads
    if threads is not None:
        set_num_threads(int(threads))
    elif comm is not None and comm.local_size > 1:  # processes on one host share its cores
        set_num_threads(max(1, (os.cpu_count() or 1) // comm.local_size))


def train_mnist(config: MNISTConfig | dict | None = None, *, resume=None, callbacks=(), data=None,
                echo: bool = True, comm=None) -> TrainResult:
    """Train the TF sample's network on MNIST with its recipe, writing a run directory.

    Args:
        config: ``MNISTConfig`` (or a dict of its fields); default: the sample's settings.
            With ``resume``, default: the checkpoint's configuration; a given one must match
            it except in ``epochs``, ``data_dir``, ``threads``, ``progress``, ``report``,
            ``download`` (``epochs`` may grow to train longer). The checkpoint's paths are
            never used: ``data_dir`` is the given one (else ``$JIMUNET_DATA``, else the default).
        resume: a run directory holding ``checkpoint.npz``: continue it, wherever it has been
            moved and from any working directory. Resumed training ends bit-identical to an
            uninterrupted run on the same machine (any thread count).
        callbacks: extra ``Callback`` objects (after the one that writes the run directory).
        data: ``((x_train, y_train), (x_test, y_test))`` in ``load_mnist``'s format
            (uint8 pixels), instead of loading MNIST.
        echo: print the log lines (they always go to ``train.log``).
        comm: a ``jimunet.distributed.Communicator``: train data-parallel with every process
            of the MPI job (each calls ``train_mnist`` with the same arguments). Rank 0 takes
            the configuration (and the checkpoint, when resuming), gives it to the others, and
            alone writes the run directory; the others write nothing and return a
            ``TrainResult`` without test results (``run_dir`` None). The weights are those of
            a single process: bit-identical with ``config.reduction`` "exact" (the default
            for the sample network), up to float rounding with "allreduce" (``Trainer``).

    Run directory (``config.out``, default ``runs/<YYYYmmdd-HHMMSS>``):
        ``run.json`` (marker and status), ``checkpoint.npz`` after every epoch (and the initial
        state), ``best.npz`` (lowest validation error), ``model.npz`` (final weights),
        ``metrics.json``, ``train.log``. It must be new, empty or a jimunet run directory, and
        is locked while the run lasts (``jimunet.app.rundir``). Ctrl-C and SIGTERM stop the
        run at the end of the step in progress (when called from the main thread).

    Returns:
        ``TrainResult(run_dir, model, history, test_accuracy, test_error, confusion, metrics)``.

    Raises:
        ConfigError: impossible settings; ``RunDirError`` (a ConfigError): the directory is
            not jimunet's, already holds a run, or is in use (``RunDirBusy``).
        FileNotFoundError / CheckpointError: bad ``resume``.
        TrainingDiverged: NaN/inf loss (checkpoint.npz keeps the last good epoch).
        TrainingInterrupted: Ctrl-C or SIGTERM (``signum``); checkpoint.npz holds the last
            completed epoch.
        MNISTUnavailableError: MNIST could not be loaded.
    """
    if isinstance(config, dict):
        config = MNISTConfig.from_dict(config)
    if comm is not None and comm.rank != 0:
        return _train_mnist_worker(config, list(callbacks), data, comm)
    if resume is not None:
        run_dir = os.fspath(resume)
        saved = _read_checkpoint_config(run_dir)
        if config is None:
            config = saved
        diff = [f"{k} (checkpoint {getattr(saved, k)!r}, given {getattr(config, k)!r})"
                for k in saved.to_dict() if k not in RESUMABLE_FIELDS and getattr(saved, k) != getattr(config, k)]
        if diff:
            raise ConfigError(f"cannot resume {run_dir} with different settings: {'; '.join(diff)}")
        if config.out is not None and not _same_dir(config.out, run_dir):
            raise ConfigError(f"resume writes into the run directory it resumes ({run_dir}), not {config.out}")
        config = config.replace(out=run_dir).validate()
        check_device(config.device)
    else:
        config = (config or MNISTConfig()).validate()
        check_device(config.device)  # before a run directory is made for nothing
        run_dir = config.out or new_run_dir()
        config = config.replace(out=run_dir)
    stops = StopSignals()
    with RunDir.claim(run_dir, resume=resume is not None) as run, stops.installed():
        log = RunLog(run.file("train.log"), echo=echo)
        try:
            return _train_mnist(config, run, resume is not None, list(callbacks), data, log, stops, comm)
        finally:
            log.close()


def _same_dir(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _describe_distributed(trainer, batch, input_shape, n_params) -> str:
    """The log line saying how the processes of a distributed run share each step."""
    from .distributed import BlockLayout
    from .parallel import split
    comm = trainer.comm
    alone = "" if comm.size > 1 else " (a job of one: start N with mpiexec -n N python -m jimunet train --distributed)"
    procs = f"{comm.size} MPI process{'es' if comm.size > 1 else ''}"
    if trainer.reduction == "exact":
        layout = BlockLayout(batch, comm.size)
        share = sorted({s.stop - s.start for s in layout.samples})
        k = trainer.model.per_sample_stages()
        feats = batch * math.prod(trainer.model.stages_output_shape(input_shape, slice(0, k))) * 4 / 1e6
        return (f"distributed: {procs}, exact reduction: each runs the first {k} layers on "
                f"{'-'.join(map(str, share))} images (whole blocks) of every batch of {batch} and the rest of the "
                f"network on the whole batch; per step one all-gather of {feats:.2f} MB of activations and one of the "
                f"per-block weight-gradient sums: the weights are bit-identical to one process's; rank 0 writes "
                f"the run directory{alone}")
    share = sorted({s.stop - s.start for s in split(batch, comm.size)})  # each rank's comm.shard
    return (f"distributed: {procs}, each computing {'-'.join(map(str, share))} images of every batch of {batch}; "
            f"one all-reduce of the gradients ({4 * n_params / 1e6:.1f} MB) per step: the weights equal one "
            f"process's up to float rounding; rank 0 writes the run directory{alone}")


def _make_trainer(cfg, train_size, comm, **kwargs):
    model, loss_fn, optimizer, schedule = build(cfg, train_size=train_size)
    model.to(cfg.device)  # DeviceError (a ValueError) says what to install or check
    return Trainer(model, loss_fn, optimizer, batch_size=cfg.batch_size, schedule=schedule, shuffle=cfg.shuffle,
                   rng=np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(1)[0]),
                   eval_batch_size=cfg.eval_batch_size, comm=comm, augment=make_augment(cfg),
                   reduction=cfg.reduction, **kwargs)


def _train_mnist_worker(config, callbacks, data, comm) -> TrainResult:
    """``train_mnist`` on a rank other than 0: rank 0's recipe and state, no files, no output."""
    own = config or MNISTConfig()
    cfg = MNISTConfig.from_dict(comm.broadcast_json()).replace(data_dir=own.data_dir, threads=own.threads,
                                                                 download=own.download)
    _apply_threads(cfg.threads, comm)
    (x, y), _, _ = _load_data(cfg, data)
    trainer = _make_trainer(cfg, len(x), comm, progress=False, log=False)
    trainer.sync_from_rank0()
    stops = StopSignals()
    trainer.stop_requested = lambda: stops.pending is not None
    trainer.callbacks = [_StopBetweenSteps(stops)] + callbacks
    # Only rank 0 validates and tests (its numbers are the run's): the others would compute
    # the same ones, on the same weights, for nothing.
    try:
        with stops.installed(), stops.deferred():
            trainer.fit(x, y, cfg.epochs)
    except TrainingInterrupted as e:
        e.all_ranks = trainer.stop_agreed
        raise
    return TrainResult(None, trainer.model, trainer.history, None, None, None, None)


def _train_mnist(cfg, run, resuming, callbacks, data, log, stops, comm=None):
    t_start = time.perf_counter()
    run_dir = run.path
    _apply_threads(cfg.threads, comm)
    log(f"{'resuming' if resuming else 'starting'} run {run_dir}  (jimunet {__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()})")
    if run.removed:
        log(f"removed {len(run.removed)} temporary file{'s' if len(run.removed) > 1 else ''} left by a write that "
            f"was cut short: {', '.join(run.removed)}")
    (x, y), (xv, yv), (xs, ys) = _load_data(cfg, data)
    if comm is not None:  # the recipe, once MNIST is here: ranks on this host find it in the cache
        comm.broadcast_json(portable_config(cfg.to_dict()))
    trainer = _make_trainer(cfg, len(x), comm, progress=cfg.progress, log=log)
    model = trainer.model
    if cfg.device != "cpu":
        log(f"device {model.device}")
    cfg_dict = portable_config(cfg.to_dict())
    path = run.file

    def model_meta(trainer, **extra):
        return {"recipe": "mnist", "config": cfg_dict, "epoch": trainer.epoch, "step": trainer.step,
                "preprocess": "(pixels - 127.5) / 255", "input_shape": [28, 28, 1],
                "classes": list(range(10)), **extra}

    def metrics(trainer, status, test=None):
        h = trainer.history
        return {"format": METRICS_FORMAT, "version": 1, "status": status,
                "test_accuracy": None if test is None else test.accuracy,
                "test_error": None if test is None else test.error,
                "confusion_matrix": None if test is None else test.confusion.tolist(),
                "best_epoch": h.best_epoch, "best_val_error": h.best_val_error,
                "epochs_completed": trainer.epoch, "steps": trainer.step,
                "epochs": h.epochs, "step_loss": h.step_loss,
                "wall_time_s": h.wall_time_s, "images_per_s": h.images_per_s,
                "data": {"train": len(x), "validation": len(xv), "test": len(xs),
                         "source": "self-test fake data" if cfg.self_test else "MNIST"},
                "units": {"test_accuracy": "fraction", "test_error": "percent", "val_error": "percent",
                          "best_val_error": "percent", "seconds": "s", "wall_time_s": "s"},
                "versions": _versions(), "config": cfg_dict}

    if resuming:
        trainer.load_checkpoint(path("checkpoint.npz"))
        if trainer.epoch > cfg.epochs:
            raise ConfigError(f"the checkpoint already has {trainer.epoch} epochs; epochs must be >= that, "
                              f"got {cfg.epochs}")
        log(f"resumed from checkpoint.npz: {trainer.epoch} epochs ({trainer.step} steps) done")
    trainer.sync_from_rank0()
    trainer.stop_requested = lambda: stops.pending is not None
    run_cb = EpochFiles(run, cfg_dict, metrics, model_meta)
    trainer.callbacks = [run_cb, _StopBetweenSteps(stops)] + callbacks
    n_params = sum(p.size for p in model.parameters())
    log(f"model mnist_{cfg.model}: {n_params:,} parameters; data: {len(x)} train / {len(xv)} validation / "
        f"{len(xs)} test{' (self-test fake data)' if cfg.self_test else ''}")
    steps = trainer.steps_in_epoch(len(x), trainer.epoch)
    log(describe_recipe(cfg, steps))
    if comm is not None:
        log(_describe_distributed(trainer, cfg.batch_size, x.shape[1:], n_params))
    try:
        with stops.deferred():  # Ctrl-C and SIGTERM wait for the end of the step
            trainer.fit(x, y, cfg.epochs, xv, yv)
        test = evaluate(model, xs, ys, cfg.eval_batch_size, num_classes=10)
        h = trainer.history
        model.save(path("model.npz"), model_meta(trainer, test_accuracy=test.accuracy, test_error=test.error,
                                                 val_error=h.epochs[-1]["val_error"] if h.epochs else None))
        result_metrics = metrics(trainer, "completed", test)
        write_json_atomic(path("metrics.json"), result_metrics)
        run.finish("completed")
    except TrainingDiverged as e:
        e.checkpoint = path("checkpoint.npz")
        done = trainer.history.epochs[-1]["epoch"] if trainer.history.epochs else 0
        e.args = (f"{e}. Stopped; {e.checkpoint} keeps the last good state "
                  f"({f'after epoch {done}' if done else 'the initial weights'}).",)
        log(f"error: {e}", echo=False)  # the caller reports the exception itself
        set_metrics_status(path("metrics.json"), "diverged", lambda: metrics(trainer, "diverged"))
        run.finish("diverged")
        raise
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM, in an epoch or while testing and saving
        stop = e if isinstance(e, TrainingInterrupted) else \
            TrainingInterrupted("", trainer.epoch, trainer.step, signum=getattr(e, "signum", signal.SIGINT))
        _explain_interruption(stop, run, cfg.epochs)
        stop.all_ranks = trainer.stop_agreed  # distributed: every process stops at this step
        log(stop.message)
        set_metrics_status(path("metrics.json"), "interrupted", None)
        run.finish("interrupted")
        if stop is e:
            raise
        raise stop from None
    best = f"; best validation error {h.best_val_error:.2f}% at epoch {h.best_epoch}" if h.best_epoch else ""
    log(f"test error {test.error:.2f}% (accuracy {100 * test.accuracy:.2f}%, {len(xs)} images){best}")
    if comm is not None and h.train_seconds > 0:
        log(f"communication: {trainer.comm_seconds:.1f} s of {h.train_seconds:.1f} s of training steps in this "
            f"session (waiting for the slowest process included)")
    log(f"wrote {run_dir}/: model.npz, best.npz, checkpoint.npz, metrics.json, train.log "
        f"({time.perf_counter() - t_start:.1f} s in this session)")
    if cfg.report:
        _write_report(run_dir, log, cfg.data_dir)
    return TrainResult(run_dir, model, h, test.accuracy, test.error, test.confusion, result_metrics)


def _explain_interruption(e: TrainingInterrupted, run, epochs: int) -> None:
    """Fill in ``e``'s run directory, the epochs kept, and a message that says how to resume."""
    checkpoint = run.file("checkpoint.npz")
    done = _checkpoint_epochs(checkpoint)
    e.run_dir, e.epochs_completed = run.path, done
    how = "interrupted" if e.signum == signal.SIGINT else f"stopped by {signal.Signals(e.signum).name}"
    if done < epochs:
        when, lost = f"during epoch {done + 1}", "the partial epoch is discarded"
    else:
        when, lost = "after the last epoch", "the test evaluation and model.npz are still to do"
    e.message = (f"{how} {when}; {checkpoint} holds the state after {done} complete epochs ({lost}). "
                 f"Resume with:\n    jimunet train --resume {shlex.quote(run.path)}")


def _checkpoint_epochs(path) -> int:
    try:
        _, meta = load_npz(path, kind=CHECKPOINT_FORMAT)
        return int(meta["state"]["epoch"])
    except Exception:  # pragma: no cover - the file is written atomically
        return 0


def _write_report(run_dir, log, data_dir=None):
    try:
        from . import report
    except ImportError:
        return
    write = getattr(report, "write_report", None)
    if write is None:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("hint: pip install 'jimunet[plot]' (matplotlib) to get plots in a report: jimunet report " + run_dir)
        return
    try:
        out = write(run_dir, **({} if data_dir is None else {"data_dir": data_dir}))
        log(f"report: {out}" if isinstance(out, (str, os.PathLike)) else f"report written in {run_dir}")
    except Exception as e:  # never fail a finished training because of the report
        log(f"warning: the report could not be written ({type(e).__name__}: {e})")
