"""Everything the training loop does besides running steps, as callbacks in a defined order.

A callback is any object with some of the hooks below (subclass ``Callback`` for no-op
defaults and ``state_dict``); ``CallbackList`` calls them in list order, each with the trainer
first. Raising ``KeyboardInterrupt`` from a hook stops training as Ctrl-C would.

Hooks, in the order the ``Trainer`` calls them:
    on_train_begin(trainer)
    on_epoch_begin(trainer, epoch)            1-based epoch about to run
    on_step_end(trainer, step, loss)          0-based global step just done, its loss
    on_epoch_steps_end(trainer, epoch)        after the epoch's last step, before validation
    on_epoch_end(trainer, epoch, record)      the epoch's record (``History.epochs``' entry)
    on_train_end(trainer)
    on_train_abort(trainer, error)            instead of on_train_end when ``fit`` raises

The ``Trainer``'s list (``Trainer.callback_list``): ``ProgressBar``, ``DivergenceCheck``,
``History`` (``trainer.history``), ``Log``, then the callbacks it was given, in their order,
then ``StopBetweenSteps`` unless one was given (put it after the callbacks that must run
before a stop, as ``train_mnist`` puts it after the one that writes the checkpoint).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from .errors import WEIGHTS_NOT_FINITE, diverged, state_finite

__all__ = ["Callback", "CallbackList", "EpochStats", "ProgressBar", "DivergenceCheck", "History", "Log",
           "StopBetweenSteps", "format_epoch", "HOOKS"]

HOOKS = ("on_train_begin", "on_epoch_begin", "on_step_end", "on_epoch_steps_end", "on_epoch_end", "on_train_end",
         "on_train_abort")


class Callback:
    """Hooks called by ``Trainer.fit``; override the ones you need (see the module docstring).

    ``on_epoch_end`` runs after the epoch's record is in ``trainer.history`` and its line is
    logged; callbacks run in list order. Raising ``KeyboardInterrupt`` from any hook stops
    training as Ctrl-C would. ``state_dict()`` (a dict of JSON values and arrays; ``{}``:
    nothing to keep) goes into the trainer's checkpoints when not empty, and comes back
    through ``load_state_dict`` when one is loaded.
    """

    def on_train_begin(self, trainer): ...

    def on_epoch_begin(self, trainer, epoch: int): ...

    def on_step_end(self, trainer, step: int, loss: float): ...

    def on_epoch_steps_end(self, trainer, epoch: int): ...

    def on_epoch_end(self, trainer, epoch: int, record: dict): ...

    def on_train_end(self, trainer): ...

    def on_train_abort(self, trainer, error: BaseException): ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class CallbackList:
    """Callbacks called in order (``call(hook, trainer, *args)`` or ``on_<hook>(...)``); a
    callback without a hook is skipped for it. ``state_dict()``: ``{key: state}`` of those
    whose state is not empty (key: the class name, ``#2``, ``#3``... for repeats)."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self):
        return len(self.callbacks)

    def call(self, hook: str, trainer, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(trainer, *args)

    def on_train_begin(self, trainer):
        self.call("on_train_begin", trainer)

    def on_epoch_begin(self, trainer, epoch):
        self.call("on_epoch_begin", trainer, epoch)

    def on_step_end(self, trainer, step, loss):
        self.call("on_step_end", trainer, step, loss)

    def on_epoch_steps_end(self, trainer, epoch):
        self.call("on_epoch_steps_end", trainer, epoch)

    def on_epoch_end(self, trainer, epoch, record):
        self.call("on_epoch_end", trainer, epoch, record)

    def on_train_end(self, trainer):
        self.call("on_train_end", trainer)

    def on_train_abort(self, trainer, error):
        self.call("on_train_abort", trainer, error)

    def _keyed(self):
        seen = {}
        for cb in self.callbacks:
            name = type(cb).__name__
            seen[name] = seen.get(name, 0) + 1
            yield (name if seen[name] == 1 else f"{name}#{seen[name]}"), cb

    def state_dict(self) -> dict:
        states = {key: getattr(cb, "state_dict", dict)() for key, cb in self._keyed()}
        return {key: s for key, s in states.items() if s}

    def load_state_dict(self, state: dict) -> None:
        for key, cb in self._keyed():
            if key in state and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(state[key])


@dataclass
class EpochStats:
    """The epoch in progress (``trainer.epoch_stats``): its 1-based number, planned steps, the
    losses so far, images seen, start time and (once the steps are done) training seconds."""

    epoch: int
    steps: int
    losses: list = field(default_factory=list)
    images: int = 0
    t0: float = field(default_factory=time.perf_counter)
    train_seconds: float = 0.0


def _auto_progress(progress):
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


class ProgressBar(Callback):
    """A tqdm bar per epoch on stderr (``enabled`` None: only when stderr is a terminal)."""

    def __init__(self, enabled=None):
        self.enabled, self._bar = enabled, None

    def on_epoch_begin(self, trainer, epoch):
        if _auto_progress(self.enabled):
            self._bar = tqdm(total=trainer.epoch_stats.steps, desc=f"epoch {epoch}/{trainer.total_epochs}",
                             unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)

    def on_step_end(self, trainer, step, loss):
        if self._bar is not None:
            stats = trainer.epoch_stats
            rate = stats.images / max(time.perf_counter() - stats.t0, 1e-9)
            self._bar.set_postfix_str(f"loss={loss:.4f} img/s={rate:.0f}", refresh=False)
            self._bar.update(1)

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_steps_end(self, trainer, epoch):
        self._close()

    def on_train_abort(self, trainer, error):
        self._close()


class DivergenceCheck(Callback):
    """After each epoch's steps, before validation and before any checkpoint is written: every
    parameter and buffer must be finite, else ``TrainingDiverged``. (Each step checks its loss,
    and the weights when a layer refuses NaN; this catches what no loss showed, e.g. BatchNorm's
    running statistics.)"""

    def on_epoch_steps_end(self, trainer, epoch):
        if not state_finite(trainer.model):
            raise diverged(trainer.step - 1, epoch, WEIGHTS_NOT_FINITE)


@dataclass
class History(Callback):
    """What training produced so far; the callback that records each epoch (``trainer.history``).

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

    def on_epoch_end(self, trainer, epoch, record):
        stats = trainer.epoch_stats
        self.epochs.append(record)
        self.step_loss.extend(stats.losses)
        self.wall_time_s += record["seconds"]
        self.train_seconds += stats.train_seconds
        self.images_seen += stats.images
        val_error = record["val_error"]
        if val_error is not None and (self.best_val_error is None or val_error < self.best_val_error):
            self.best_epoch, self.best_val_error = epoch, val_error

    def state(self) -> dict:
        return {"epochs": [dict(e) for e in self.epochs], "step_loss": np.asarray(self.step_loss, np.float64),
                "best_epoch": self.best_epoch, "best_val_error": self.best_val_error,
                "wall_time_s": self.wall_time_s, "train_seconds": self.train_seconds,
                "images_seen": self.images_seen}

    state_dict = state

    def load_state_dict(self, s: dict) -> None:
        self.epochs = [dict(e) for e in s["epochs"]]
        self.step_loss = [float(v) for v in np.asarray(s["step_loss"], np.float64).ravel()]
        self.best_epoch, self.best_val_error = s["best_epoch"], s["best_val_error"]
        self.wall_time_s, self.train_seconds = float(s["wall_time_s"]), float(s["train_seconds"])
        self.images_seen = int(s["images_seen"])

    @classmethod
    def from_state(cls, s: dict) -> "History":
        h = cls()
        h.load_state_dict(s)
        return h

    @property
    def images_per_s(self) -> float | None:
        return self.images_seen / self.train_seconds if self.train_seconds > 0 else None


def format_epoch(record: dict, total=None) -> str:
    """The log line of an epoch's record."""
    val = f"val error {record['val_error']:6.2f}%" if record["val_error"] is not None else "val error    n/a"
    rate = f" ({record['images_per_s']:.0f} img/s)" if record.get("images_per_s") else ""
    of = f"/{total}" if total else ""
    return (f"epoch {record['epoch']:>3}{of}  train loss {record['train_loss']:.4f}  {val}  "
            f"lr {record['lr']:.6f}  {record['seconds']:6.1f} s{rate}")


class Log(Callback):
    """One line per epoch (``format_epoch``) to ``log`` (a function of one string)."""

    def __init__(self, log):
        self.log = log

    def on_epoch_end(self, trainer, epoch, record):
        self.log(format_epoch(record, trainer.total_epochs))


class StopBetweenSteps(Callback):
    """Ends training at the end of the step during which ``trainer.request_stop(signum)`` was
    called (a signal handler may call it), or at the end of the epoch when the request came
    during validation, by raising that signal's ``KeyboardInterrupt``. In a distributed run
    only at a step, where the step's collective operation says some process asked: every
    process stops at the same step (a request that came during the collective waits for the
    next step's: stopping before the others know would leave them waiting for ever)."""

    def on_step_end(self, trainer, step, loss):
        if trainer.strategy.stop_now(trainer):
            raise trainer.take_stop()

    def on_epoch_end(self, trainer, epoch, record):
        if trainer.strategy.stops_between_epochs and trainer.stop_requested:
            raise trainer.take_stop()
