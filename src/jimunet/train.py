# TEMP-SHIM (issue 20 merge): remove
"""Moved: the engine to ``jimunet.training``, the MNIST application to ``jimunet.app.training``;
this file only keeps the old import path working until the merge."""
from .app.rundir import RunLog, write_json_atomic  # noqa: F401
from .app.run_callbacks import METRICS_FORMAT  # noqa: F401
from .app.training import TrainResult, load_run_config, train_mnist  # noqa: F401
from .data.images import preprocess  # noqa: F401
from .training import (CHECKPOINT_FORMAT, Callback, Evaluation, History, Trainer, TrainingDiverged,  # noqa: F401
                       TrainingInterrupted, evaluate, fit, format_epoch)
