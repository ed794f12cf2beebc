"""How training ends early: ``TrainingDiverged``, ``TrainingInterrupted``, ``Stopped``, and the
one test for a layer's refusal of NaN input (``is_nan_error``) and the one divergence test
(``state_finite``, ``diverged``)."""
from __future__ import annotations

import signal

from ..backend import all_finite

__all__ = ["TrainingDiverged", "TrainingInterrupted", "Stopped", "is_nan_error", "diverged", "interrupt_for",
           "state_finite", "WEIGHTS_NOT_FINITE"]

WEIGHTS_NOT_FINITE = "the weights contain NaN or infinite values"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite (or the weights did); training stopped.

    Attributes: ``step`` (0-based global step), ``epoch`` (1-based epoch it happened in),
    ``loss`` (the offending value or None), ``checkpoint`` (path of the last good one or None).
    """

    def __init__(self, message, step, epoch, loss=None, checkpoint=None):
        super().__init__(message)
        self.step, self.epoch, self.loss, self.checkpoint = step, epoch, loss, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM (in ``train_mnist``), ``Trainer.request_stop`` or a callback's
    KeyboardInterrupt stopped training.

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


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGTERM) arrived; handled wherever Ctrl-C's ``KeyboardInterrupt`` is."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception a stop request raises: Ctrl-C's ``KeyboardInterrupt`` for SIGINT, else ``Stopped``."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)


def is_nan_error(error: BaseException) -> bool:
    """Whether ``error`` is a layer refusing an input that holds NaN (layers say "NaN" in it)."""
    return "NaN" in str(error)


def diverged(step: int, epoch: int, what: str, loss=None) -> TrainingDiverged:
    """The ``TrainingDiverged`` for 0-based global ``step`` in 1-based ``epoch``, saying ``what``."""
    return TrainingDiverged(f"training diverged at step {step} (epoch {epoch}): {what}; try a lower learning rate",
                            step, epoch, loss)


def state_finite(model) -> bool:
    """Whether every parameter AND buffer (e.g. BatchNorm's running statistics) of ``model`` is
    finite (one value read back from a device)."""
    return all_finite(model.state_dict().values())
