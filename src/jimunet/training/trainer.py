"""The training loop: ``Trainer`` runs epochs of batches and nothing else; how a step runs is its
strategy (``strategies.py``), everything around the steps its callbacks (``callbacks.py``).

Batches: with ``shuffle`` (the default), a new permutation of the training set each epoch,
from ``rng``; the last partial batch is DROPPED (``n // batch_size`` steps per epoch): every
step then has the same size and weight, as in the TF sample, which never takes a partial
batch, and with reshuffling a different remainder sits out each epoch. Without: the TF
sample's fixed walk: global step ``s`` trains on ``x[o:o+batch]`` with
``o = (s·batch) % (n - batch)``, and epoch ``e`` covers steps ``[e·n//batch, (e+1)·n//batch)``,
so 10 epochs are the sample's 8,593 steps.
"""
from __future__ import annotations

import math
import signal
import time

import numpy as np

from .._messages import shown
from ..backend import to_device, xp_of
from ..data.batching import Prefetcher, transform_batch
from ..data.dataset import is_dataset
from . import checkpoint
from .callbacks import CallbackList, DivergenceCheck, EpochStats, History, Log, ProgressBar, StopBetweenSteps
from .errors import TrainingInterrupted, interrupt_for
from .evaluation import evaluate
from .strategies import select_strategy

__all__ = ["Trainer", "fit"]


class Trainer:
    """Mini-batch training of ``model`` with ``loss_fn`` and ``optimizer``, resumable exactly.

    Args:
        model: a ``Sequential`` or ``Model`` (``forward``, ``backward``, ``predict``,
            ``state_dict``, ``rng_states``). loss_fn: e.g. ``SoftmaxCrossEntropy()``.
        optimizer: e.g. ``SGD``; the reported loss adds ``wd/2·Σp²`` for every param group
            with ``weight_decay`` (the objective that weight decay is the gradient of).
        batch_size: images per step.
        schedule: callable ``step → lr`` (0-based global step), applied before every step.
        shuffle: a new order each epoch (from ``rng``, a Generator or an int seed), the last
            partial batch dropped; False: the TF sample's fixed walk (module docstring).
        callbacks: ``Callback`` objects, after the built-in ones (``Trainer.callback_list``).
        progress: tqdm bar per epoch on stderr (None: only when stderr is a terminal).
        log: function called with each text line (default ``print``; False: silent).
        eval_batch_size: batch size of the validation passes.
        comm, reduction: data-parallel training over a ``jimunet.distributed.Communicator``;
            they only choose the step strategy (``strategies.select_strategy``). Call
            ``sync_from_rank0()`` first so that all ranks start from one state. CPU only.
        augment: optional callable applied to every training batch's images (e.g.
            ``data.augment.RandomShift``); its ``state()``/``set_state()`` go into checkpoints.
        strategy: a ``StepStrategy`` to use instead of the one ``comm``/``reduction`` choose.

    Attributes: ``epoch`` (completed epochs), ``step`` (global steps done), ``history``,
    ``strategy``, ``stop_training`` (set it in a callback to end ``fit`` after this epoch);
    ``comm``, ``reduction`` (None, ``"exact"`` or ``"allreduce"``), ``comm_seconds`` and
    ``stop_agreed`` are the strategy's.
    """

    def __init__(self, model, loss_fn, optimizer, *, batch_size: int = 64, schedule=None, shuffle: bool = True,
                 rng=None, callbacks=(), progress=None, log=None, eval_batch_size: int = 100, comm=None,
                 augment=None, reduction: str = "auto", strategy=None):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"Trainer: batch_size must be a positive integer, got {shown(batch_size)}")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.batch_size, self.schedule, self.shuffle = int(batch_size), schedule, bool(shuffle)
        self.strategy = strategy if strategy is not None else select_strategy(model, self.batch_size, comm, reduction)
        try:
            self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        except TypeError:
            raise ValueError(f"Trainer: rng must be a numpy.random.Generator, an int seed or None, got {shown(rng)}") from None
        self.callbacks = list(callbacks)
        self.progress, self.eval_batch_size, self.augment = progress, eval_batch_size, augment
        self.log = (lambda msg: None) if log is False else (log or (lambda msg: print(msg, flush=True)))
        self.epoch, self.step, self.total_epochs, self.stop_training = 0, 0, None, False
        self.history, self.epoch_stats, self._stop_signum = History(), None, None
        self.normalize, self.prefetch = None, 2  # for a Dataset (set by ``fit``)

    comm = property(lambda self: self.strategy.comm)
    reduction = property(lambda self: self.strategy.reduction)
    comm_seconds = property(lambda self: self.strategy.comm_seconds)
    stop_agreed = property(lambda self: self.strategy.stop_agreed)

    # -- the stop flag ----------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop at the end of the step in progress (``StopBetweenSteps``); safe in a signal handler."""
        if self._stop_signum is None:
            self._stop_signum = signum

    @property
    def stop_requested(self) -> bool:
        return self._stop_signum is not None

    def take_stop(self) -> KeyboardInterrupt:
        """The exception that ends training for the request (SIGTERM: another rank's), which it clears."""
        signum, self._stop_signum = self._stop_signum, None
        return interrupt_for(signal.SIGTERM if signum is None else signum)

    # -- batches and steps --------------------------------------------------------------
    def steps_in_epoch(self, n: int, epoch: int) -> int:
        """Steps of 0-based ``epoch`` for ``n`` training images."""
        bs = self.batch_size
        if self.shuffle:
            return max(1, n // bs)
        return max(1, (epoch + 1) * n // bs - epoch * n // bs) if n >= bs else 1

    def _index_batches(self, n: int, epoch: int):
        """The epoch's batches as index ranges or arrays (draws the permutation when shuffling)."""
        bs = self.batch_size
        steps = self.steps_in_epoch(n, epoch)
        if self.shuffle:
            perm = self.rng.permutation(n)
            return [perm[i * bs:(i + 1) * bs] for i in range(steps)]
        offsets = (((s * bs) % (n - bs) if n > bs else 0) for s in range(self.step, self.step + steps))
        return [slice(o, o + bs) for o in offsets]

    def _batches(self, x, y, epoch):
        """The epoch's training batches (augmented): from arrays, or from a Dataset, fetched ahead
        in a background thread, then augmented and normalised here, in order."""
        batches = self._index_batches(len(x), epoch)
        if is_dataset(x):
            device = self.model.device
            with Prefetcher(x, [np.arange(b.start, b.stop) if isinstance(b, slice) else b for b in batches],
                            self.prefetch) as fetched:
                for xb, yb in fetched:
                    xb = transform_batch(xb, self.augment, self.normalize)
                    yield to_device(xb, device), to_device(np.asarray(yb, np.int64), device)
            return
        xp = xp_of(x)
        for b in batches:
            if not isinstance(b, slice):
                b = xp.asarray(b)  # on the data's device
            xb = x[b]
            yield (self.augment(xb) if self.augment is not None else xb), y[b]

    def train_step(self, xb, yb) -> float:
        """One SGD step on a batch (the strategy's); returns the loss (with the weight-decay term)."""
        if self.schedule is not None:
            self.optimizer.set_lr(self.schedule(self.step))
        return self.strategy.run(self, xb, yb)

    def sync_from_rank0(self) -> None:
        """Give every rank rank 0's complete state (a no-op for one process). Collective."""
        self.strategy.sync(self)

    # -- epochs -------------------------------------------------------------------------
    def callback_list(self) -> CallbackList:
        """The callbacks of ``fit``, in order (see ``callbacks``): built-in, given, the stop check."""
        cbs = [ProgressBar(self.progress), DivergenceCheck(), self.history, Log(self.log), *self.callbacks]
        if not any(isinstance(cb, StopBetweenSteps) for cb in cbs):
            cbs.append(StopBetweenSteps())
        return CallbackList(cbs)

    def fit(self, x, y=None, epochs: int | None = None, x_val=None, y_val=None, *, normalize=None,
            prefetch: int = 2) -> History:
        """Train until ``epochs`` epochs are complete (continuing from ``self.epoch``).

        ``x, y`` are arrays of model inputs and labels, or ``x`` is a ``Dataset`` (``y`` None):
        its batches are fetched ``prefetch`` ahead in a background thread, then augmented, then
        ``normalize``d (``data.Normalize``; None: the images are model inputs already). The
        validation data ``x_val, y_val`` likewise (or ``x_val`` a Dataset). Shuffling and
        augmentation draw the same numbers either way, so a Dataset over the same arrays trains
        to the same weights.

        Example:
            >>> trainer.fit(train_set, epochs=5, x_val=test_set, normalize=Normalize.mnist())  # doctest: +SKIP

        Raises:
            TrainingDiverged: the loss or the weights became NaN/inf (nothing after the
                last completed epoch is kept by the checkpointing callbacks).
            TrainingInterrupted: KeyboardInterrupt (Ctrl-C, ``request_stop`` or a callback).
        """
        if epochs is None:
            raise ValueError("fit: pass the number of epochs (epochs=...)")
        if normalize is not None and not is_dataset(x):
            raise ValueError("fit: normalize applies to a Dataset; arrays are model inputs already")
        if is_dataset(x):
            if y is not None:
                raise ValueError("fit: a Dataset carries its labels; pass y=None (and epochs=... by keyword)")
            if len(x) == 0:
                raise ValueError("fit: the training Dataset is empty")
        elif y is None or len(x) != len(y) or len(x) == 0:
            raise ValueError(f"fit: need as many labels as inputs (and at least one), got {len(x)} and "
                             f"{'none' if y is None else len(y)}")
        if is_dataset(x_val):
            if y_val is not None:
                raise ValueError("fit: a validation Dataset carries its labels; pass y_val=None")
        elif (x_val is None) != (y_val is None):
            raise ValueError("fit: pass both x_val and y_val, or neither")
        self.total_epochs, self.normalize, self.prefetch = epochs, normalize, prefetch
        device = self.model.device  # arrays move to the model's device once, not batch by batch
        if not is_dataset(x):
            x, y = to_device(x, device), to_device(y, device)
        if x_val is not None and not is_dataset(x_val):
            x_val = to_device(x_val, device)
        callbacks = self.callback_list()
        self.stop_training = False
        try:
            callbacks.on_train_begin(self)
            while self.epoch < epochs and not self.stop_training:
                self._run_epoch(callbacks, x, y, x_val, y_val)
            callbacks.on_train_end(self)
        except BaseException as e:
            callbacks.on_train_abort(self, e)
            if not isinstance(e, KeyboardInterrupt) or isinstance(e, TrainingInterrupted):
                raise
            raise TrainingInterrupted(f"interrupted during epoch {self.epoch + 1} (step {self.step}); "
                                      f"{self.epoch} epochs were complete", self.epoch, self.step,
                                      signum=getattr(e, "signum", signal.SIGINT)) from None
        return self.history

    def _run_epoch(self, callbacks, x, y, x_val, y_val):
        epoch = self.epoch  # 0-based index of the epoch being run
        stats = self.epoch_stats = EpochStats(epoch + 1, self.steps_in_epoch(len(x), epoch))
        callbacks.on_epoch_begin(self, epoch + 1)
        stats.t0 = time.perf_counter()
        batches = self._batches(x, y, epoch)
        try:
            for xb, yb in batches:
                loss = self.train_step(xb, yb)
                self.step += 1
                stats.images += len(xb)
                stats.losses.append(loss)
                callbacks.on_step_end(self, self.step - 1, loss)
        finally:
            batches.close()  # now, not when the traceback goes: stops a Dataset's prefetching thread
        stats.train_seconds = time.perf_counter() - stats.t0
        callbacks.on_epoch_steps_end(self, epoch + 1)
        val_error = None
        if x_val is not None and len(x_val):
            normalize = self.normalize if is_dataset(x_val) else None
            val_error = evaluate(self.model, x_val, y_val, self.eval_batch_size, normalize=normalize).error
        losses, train_s = stats.losses, stats.train_seconds
        record = {"epoch": epoch + 1, "train_loss": math.fsum(losses) / len(losses), "val_error": val_error,
                  "lr": float(self.optimizer.lr), "steps": len(losses), "seconds": time.perf_counter() - stats.t0,
                  "images_per_s": stats.images / train_s if train_s > 0 else None}
        self.epoch = epoch + 1
        callbacks.on_epoch_end(self, epoch + 1, record)

    # -- state (checkpoint.py) ------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything training depends on: weights, optimizer, RNG streams, counters, history
        (and the given callbacks' states, when they have any)."""
        return checkpoint.trainer_state(self)

    def load_state_dict(self, state: dict) -> None:
        checkpoint.load_trainer_state(self, state)

    def save_checkpoint(self, path, metadata: dict | None = None) -> None:
        """Write ``state_dict()`` (plus JSON ``metadata``) to ``path`` atomically; no pickles."""
        checkpoint.save_checkpoint(self, path, metadata)

    def load_checkpoint(self, path) -> dict:
        """Restore a ``save_checkpoint`` file; returns its metadata (``CheckpointError`` when it does not fit)."""
        return checkpoint.load_checkpoint(self, path)


def fit(model, loss_fn, optimizer, x, y=None, epochs: int = 1, batch_size: int = 64, schedule=None,
        x_val=None, y_val=None, callbacks=(), shuffle: bool = True, rng=None, progress=None,
        log=None, eval_batch_size: int = 100, augment=None, normalize=None) -> History:
    """Train ``model`` for ``epochs`` epochs; a one-call front end to ``Trainer`` (see its Args;
    ``x`` may be a ``Dataset``, see ``Trainer.fit``).

    Returns the ``History``. Raises ``TrainingDiverged`` / ``TrainingInterrupted``.
    """
    trainer = Trainer(model, loss_fn, optimizer, batch_size=batch_size, schedule=schedule, shuffle=shuffle,
                      rng=rng, callbacks=callbacks, progress=progress, log=log, eval_batch_size=eval_batch_size,
                      augment=augment)
    return trainer.fit(x, y, epochs, x_val, y_val, normalize=normalize)
