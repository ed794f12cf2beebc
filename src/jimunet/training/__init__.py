"""Training: a small ``Trainer`` (the loop), step strategies, callbacks, evaluation.

    trainer.py     Trainer (epochs, batches, the stop flag) and fit
    strategies.py  how one step runs: LocalStep, AllReduceStep, ExactBlockStep (select_strategy)
    callbacks.py   Callback, CallbackList and the built-in callbacks, in their order
    evaluation.py  evaluate, Evaluation, confusion_matrix, FlipAverage (test-time flip)
    checkpoint.py  checkpoint files (CHECKPOINT_FORMAT)
    errors.py      TrainingDiverged, TrainingInterrupted, Stopped, is_nan_error

Example:
    >>> import numpy as np, jimunet as jn
    >>> from jimunet.training import fit, evaluate
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((64, 4)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int64)
    >>> model = jn.Sequential([jn.layers.Dense(4, 2, rng=0)])
    >>> opt = jn.optim.SGD(model.parameters(), lr=0.5)
    >>> history = fit(model, jn.losses.SoftmaxCrossEntropy(), opt, x, y, epochs=5, batch_size=16,
    ...               x_val=x, y_val=y, rng=0, progress=False, log=False)
    >>> len(history.epochs), evaluate(model, x, y).accuracy > 0.9
    (5, True)
"""
from .callbacks import (Callback, CallbackList, DivergenceCheck, EpochStats, History, Log, ProgressBar,
                        StopBetweenSteps, format_epoch)
from .checkpoint import CHECKPOINT_FORMAT
from .errors import Stopped, TrainingDiverged, TrainingInterrupted, is_nan_error
from .evaluation import Evaluation, FlipAverage, confusion_matrix, evaluate
from .strategies import REDUCTIONS, AllReduceStep, ExactBlockStep, LocalStep, StepStrategy, select_strategy
from .trainer import Trainer, fit

__all__ = ["Trainer", "fit", "evaluate", "Evaluation", "confusion_matrix", "FlipAverage", "Callback", "CallbackList",
           "History", "ProgressBar", "Log", "DivergenceCheck", "StopBetweenSteps", "EpochStats", "format_epoch",
           "TrainingDiverged", "TrainingInterrupted", "Stopped", "is_nan_error", "StepStrategy", "LocalStep",
           "AllReduceStep", "ExactBlockStep", "select_strategy", "REDUCTIONS", "CHECKPOINT_FORMAT"]
