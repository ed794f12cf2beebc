"""Callbacks of ``jimunet train`` that write its run directory (see ``rundir``) and end a run.

``RunFiles`` is a ``Trainer`` callback (checkpoint.npz, metrics.json and best.npz during
training) that also answers two events of the run that ``train_mnist`` sends after training:
``on_test_end(trainer, test)`` (model.npz, the final metrics.json, run.json's status) and
``on_run_stopped(trainer, status)`` ("diverged" or "interrupted"). ``RunSummary`` and
``ReportAtEnd`` answer ``on_run_end(trainer, test)``: the closing log lines, then the report.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from .._version import __version__
from ..model import load
from ..serialization import CheckpointError, WriteError
from ..training import Callback
from . import report
from .rundir import CHECKPOINT, set_metrics_status, write_json_atomic

__all__ = ["RunFiles", "RunSummary", "ReportAtEnd", "METRICS_FORMAT", "versions"]

METRICS_FORMAT = "jimunet-metrics"
UNITS = {"test_accuracy": "fraction", "test_error": "percent", "val_error": "percent", "best_val_error": "percent",
         "seconds": "s", "wall_time_s": "s"}


def versions() -> dict:
    return {"jimunet": __version__, "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


class RunFiles(Callback):
    """checkpoint.npz and metrics.json after every epoch (and before the first, so that a run
    stopped in epoch 1 can resume), best.npz when validation improves; model.npz, the final
    metrics.json and run.json's status when the run ends.

    Args: ``run`` (a ``RunDir``), ``config`` (the portable configuration dict, stored in every
    checkpoint), ``sizes`` (``{"train": n, "validation": n, "test": n}``), ``source`` (where
    the images came from, for metrics.json), ``data_meta`` (what the model is for: input shape,
    class names, normalisation, data set; ``modelinfo.model_metadata``), stored in best.npz,
    model.npz and every checkpoint.
    """

    def __init__(self, run, config: dict, sizes: dict, source: str, data_meta: dict | None = None):
        self.run, self.config, self.sizes, self.source = run, config, sizes, source
        self.data_meta = data_meta or {}
        self.final_metrics = None

    def model_meta(self, trainer, **extra) -> dict:
        classes = len(self.data_meta.get("class_names", range(10)))
        return {"recipe": "mnist", "config": self.config, "epoch": trainer.epoch, "step": trainer.step,
                **({"preprocess": "(pixels - 127.5) / 255"} if self.data_meta.get("dataset", {}).get("name", "mnist")
                   in ("mnist", "fashion-mnist") else {}),
                "input_shape": [28, 28, 1], "classes": list(range(classes)), **self.data_meta, **extra}

    def metrics(self, trainer, status, test=None) -> dict:
        h = trainer.history
        return {"format": METRICS_FORMAT, "version": 1, "status": status,
                "test_accuracy": None if test is None else test.accuracy,
                "test_error": None if test is None else test.error,
                "confusion_matrix": None if test is None else test.confusion.tolist(),
                "best_epoch": h.best_epoch, "best_val_error": h.best_val_error,
                "epochs_completed": trainer.epoch, "steps": trainer.step,
                "epochs": h.epochs, "step_loss": h.step_loss,
                "wall_time_s": h.wall_time_s, "images_per_s": h.images_per_s,
                "data": {**self.sizes, "source": self.source}, "units": UNITS,
                "versions": versions(), "config": self.config}

    def on_train_begin(self, trainer):
        if not os.path.exists(self.run.file(CHECKPOINT)):
            self._save(trainer)

    def on_epoch_end(self, trainer, epoch, record):
        if trainer.history.best_epoch == epoch:
            trainer.model.save(self.run.file("best.npz"), self.model_meta(trainer, val_error=record["val_error"]))
        self._save(trainer)

    def _save(self, trainer):
        trainer.save_checkpoint(self.run.file(CHECKPOINT), {"config": self.config, **self.data_meta})
        write_json_atomic(self.run.file("metrics.json"), self.metrics(trainer, status="running"))

    def on_test_end(self, trainer, test):
        epochs = trainer.history.epochs
        trainer.model.save(self.run.file("model.npz"),
                           self.model_meta(trainer, test_accuracy=test.accuracy, test_error=test.error,
                                           val_error=epochs[-1]["val_error"] if epochs else None))
        self.final_metrics = self.metrics(trainer, "completed", test)
        write_json_atomic(self.run.file("metrics.json"), self.final_metrics)
        self.run.finish("completed")

    def on_run_stopped(self, trainer, status):
        """``status`` "diverged" (metrics.json made if missing) or "interrupted"."""
        make = (lambda: self.metrics(trainer, status)) if status == "diverged" else None
        set_metrics_status(self.run.file("metrics.json"), status, make)
        self.run.finish(status)


class RunSummary(Callback):
    """The closing lines of train.log: the test error of model.npz and of best.npz (each named:
    they are different weights), the time spent communicating, the files and the times.

    ``test_on(model)`` evaluates a model on the run's test images as the run did (for best.npz);
    ``test_views``: what it averages each image's scores over, when more than the image (the lines say so).
    The training time is metrics.json's ``wall_time_s``, the figure the report shows.
    """

    def __init__(self, run_dir, log, t_start: float, test_on=None, test_views: str = ""):
        self.run_dir, self.log, self.t_start, self.test_on = run_dir, log, t_start, test_on
        self.test_views = test_views

    def on_run_end(self, trainer, test):
        h = trainer.history
        last = h.epochs[-1]["epoch"] if h.epochs else trainer.epoch
        flipped = f", {self.test_views}" if self.test_views else ""
        self.log(f"test error {test.error:.2f}% (accuracy {100 * test.accuracy:.2f}%, "
                 f"{int(test.confusion.sum())} images{flipped}): model.npz, the weights after the last epoch ({last})")
        if h.best_epoch:
            self.log(self._best_line(trainer, h, last))
        if trainer.comm is not None and h.train_seconds > 0:
            self.log(f"communication: {trainer.comm_seconds:.1f} s of {h.train_seconds:.1f} s of training steps in "
                     f"this session (waiting for the slowest process included)")
        self.log(f"wrote {self.run_dir}/: model.npz, best.npz, checkpoint.npz, metrics.json, train.log "
                 f"(training time {h.wall_time_s:.1f} s, the report's figure: the epochs alone, all sessions; "
                 f"{time.perf_counter() - self.t_start:.1f} s in this session with loading and testing)")

    def _best_line(self, trainer, h, last) -> str:
        what = (f"best.npz, the weights of epoch {h.best_epoch} (the lowest validation error, "
                f"{h.best_val_error:.2f}%)")
        if h.best_epoch == last:
            return f"{what}: the same weights as model.npz"
        if self.test_on is None:
            return what
        try:
            model = load(os.path.join(self.run_dir, "best.npz"))
        except (FileNotFoundError, CheckpointError) as e:  # e.g. a run directory copied without it
            return f"{what}: not tested ({e})"
        best = self.test_on(model.to(trainer.model.device))
        return f"test error of {what}: {best.error:.2f}% (accuracy {100 * best.accuracy:.2f}%)"


class ReportAtEnd(Callback):
    """``jimunet report``'s report.html once the run is complete. A report that cannot be drawn is
    a warning; one that cannot be written (a full disk) raises ``WriteError``: the run is complete,
    but ``jimunet train`` exits with an error naming the file (the previous one stays whole)."""

    def __init__(self, run_dir, log, data_dir=None):
        self.run_dir, self.log, self.data_dir = run_dir, log, data_dir

    def on_run_end(self, trainer, test):
        try:
            import matplotlib  # noqa: F401 - optional
        except ImportError:
            self.log("hint: pip install 'jimunet[plot]' (matplotlib) to get plots in a report: jimunet report "
                     + self.run_dir)
            return
        try:
            out = report.write_report(self.run_dir, **({} if self.data_dir is None else {"data_dir": self.data_dir}))
            self.log(f"report: {out}" if isinstance(out, (str, os.PathLike)) else f"report written in {self.run_dir}")
        except WriteError as e:
            e.note = (f"the run is complete (model.npz, metrics.json); write its report later with: jimunet report "
                      f"{self.run_dir}")
            raise
        except Exception as e:  # never fail a finished training because of a figure
            self.log(f"warning: the report could not be written ({str(e) or 'no details'})")
