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

import json
import math
import os
import platform
import sys
import time
from collections import namedtuple
from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .backend import to_numpy, xp_of
from .data.images import preprocess
from .recipes import (RESUMABLE_FIELDS, SELF_TEST_EVAL, SELF_TEST_TRAIN, ConfigError, MNISTConfig, build,
                      describe_recipe, fake_data, make_augment)
from .serialization import CheckpointError, atomic_writer, load_npz, pack, referenced_arrays, save_npz, unpack

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
    """Ctrl-C (or a callback's KeyboardInterrupt) stopped training.

    ``epochs_completed`` is the number of whole epochs in the last checkpoint; the
    interrupted epoch's partial work is discarded, and the in-memory model is mid-epoch.
    ``run_dir`` is set by ``train_mnist`` (resume with ``train_mnist(resume=run_dir)``).
    """

    def __init__(self, message, epochs_completed, step, run_dir=None):
        super().__init__(message)
        self.message, self.epochs_completed, self.step, self.run_dir = message, epochs_completed, step, run_dir

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
        batch_size: images per forward pass (bounds memory; ~100 is also the fastest on CPU).
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
        augment: optional callable applied to every training batch's images (e.g.
            ``jimunet.data.augment.RandomShift``); its ``state()``/``set_state()``, when it
            has them, go into checkpoints so a resumed run draws the same augmentations.

    Attributes: ``epoch`` (completed epochs), ``step`` (global steps done), ``history``.
    """

    def __init__(self, model, loss_fn, optimizer, *, batch_size: int = 64, schedule=None, shuffle: bool = True,
                 rng=None, callbacks=(), progress=None, log=None, eval_batch_size: int = 100, augment=None):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"Trainer: batch_size must be a positive integer, got {batch_size!r}")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.batch_size, self.schedule, self.shuffle = int(batch_size), schedule, bool(shuffle)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.callbacks = list(callbacks)
        self.progress, self.eval_batch_size = progress, eval_batch_size
        self.log = (lambda msg: None) if log is False else (log or (lambda msg: print(msg, flush=True)))
        self.epoch, self.step = 0, 0
        self.history = History()
        self.total_epochs = None
        self.augment = augment

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
            for i in range(steps):
                idx = perm[i * bs:(i + 1) * bs]
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
            if wd:
                total += 0.5 * wd * sum(float(xp_of(p.data).vdot(p.data.ravel(), p.data.ravel()))
                                        for p in g["params"])
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
        try:
            self._call("on_train_begin")
            while self.epoch < epochs:
                self._run_epoch(x, y, x_val, y_val)
            self._call("on_train_end")
        except KeyboardInterrupt as e:
            if isinstance(e, TrainingInterrupted):
                raise
            raise TrainingInterrupted(f"interrupted during epoch {self.epoch + 1} (step {self.step}); "
                                      f"{self.epoch} epochs were complete", self.epoch, self.step) from None
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

def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    with atomic_writer(path) as f:
        f.write((json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


class RunLog:
    """Prints each line to stdout and appends it to a log file (``train.log``)."""

    def __init__(self, path=None, echo: bool = True):
        self.path, self.echo = path, echo
        self._f = open(path, "a", buffering=1) if path else None

    def __call__(self, msg: str = "", echo: bool | None = None) -> None:
        if self.echo if echo is None else echo:
            print(msg, flush=True)
        if self._f is not None:
            self._f.write(msg + "\n")

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None


def _versions() -> dict:
    return {"jimunet": __version__, "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def _new_run_dir() -> str:
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    path, i = base, 1
    while os.path.exists(path):
        path, i = f"{base}-{i}", i + 1
    return path


class _RunDirCallback(Callback):
    """Writes checkpoint.npz (+ metrics.json) after every epoch and best.npz on improvement."""

    def __init__(self, run_dir, config, metrics_fn, model_meta_fn):
        self.run_dir, self.config = run_dir, config
        self.metrics_fn, self.model_meta_fn = metrics_fn, model_meta_fn

    def path(self, name):
        return os.path.join(self.run_dir, name)

    def on_train_begin(self, trainer):
        if not os.path.exists(self.path("checkpoint.npz")):  # epoch 0: Ctrl-C in epoch 1 can resume
            trainer.save_checkpoint(self.path("checkpoint.npz"), {"config": self.config})
            write_json_atomic(self.path("metrics.json"), self.metrics_fn(trainer, status="running"))

    def on_epoch_end(self, trainer, epoch, record):
        h = trainer.history
        if h.best_epoch == epoch:
            trainer.model.save(self.path("best.npz"), self.model_meta_fn(trainer, val_error=record["val_error"]))
        trainer.save_checkpoint(self.path("checkpoint.npz"), {"config": self.config})
        write_json_atomic(self.path("metrics.json"), self.metrics_fn(trainer, status="running"))


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
        return MNISTConfig.from_dict(meta["metadata"]["config"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: holds no usable jimunet train configuration ({e})") from None


def load_run_config(run_dir) -> MNISTConfig:
    """The configuration stored in ``run_dir/checkpoint.npz`` (to resume with changes)."""
    return _read_checkpoint_config(run_dir)


def _apply_threads(threads):
    if threads is not None:
        from .parallel import set_num_threads
        set_num_threads(int(threads))


def train_mnist(config: MNISTConfig | dict | None = None, *, resume=None, callbacks=(), data=None,
                echo: bool = True) -> TrainResult:
    """Train the TF sample's network on MNIST with its recipe, writing a run directory.

    Args:
        config: ``MNISTConfig`` (or a dict of its fields); default: the sample's settings.
            With ``resume``, default: the checkpoint's configuration; a given one must match
            it except in ``epochs``, ``data_dir``, ``threads``, ``progress``, ``report``,
            ``download`` (``epochs`` may grow to train longer).
        resume: a run directory holding ``checkpoint.npz``: continue it. Resumed training
            ends bit-identical to an uninterrupted run on the same machine (any thread count).
        callbacks: extra ``Callback`` objects (after the one that writes the run directory).
        data: ``((x_train, y_train), (x_test, y_test))`` in ``load_mnist``'s format
            (uint8 pixels), instead of loading MNIST.
        echo: print the log lines (they always go to ``train.log``).

    Run directory (``config.out``, default ``runs/<YYYYmmdd-HHMMSS>``):
        ``checkpoint.npz`` after every epoch (and the initial state), ``best.npz`` (lowest
        validation error), ``model.npz`` (final weights), ``metrics.json``, ``train.log``.

    Returns:
        ``TrainResult(run_dir, model, history, test_accuracy, test_error, confusion, metrics)``.

    Raises:
        ConfigError: impossible settings. FileNotFoundError / CheckpointError: bad ``resume``.
        TrainingDiverged: NaN/inf loss (checkpoint.npz keeps the last good epoch).
        TrainingInterrupted: Ctrl-C; checkpoint.npz holds the last completed epoch.
        MNISTUnavailableError: MNIST could not be loaded.
    """
    if isinstance(config, dict):
        config = MNISTConfig.from_dict(config)
    if resume is not None:
        run_dir = os.fspath(resume)
        saved = _read_checkpoint_config(run_dir)
        if config is None:
            config = saved
        diff = [f"{k} (checkpoint {getattr(saved, k)!r}, given {getattr(config, k)!r})"
                for k in saved.to_dict() if k not in RESUMABLE_FIELDS and getattr(saved, k) != getattr(config, k)]
        if diff:
            raise ConfigError(f"cannot resume {run_dir} with different settings: {'; '.join(diff)}")
        if config.out is not None and os.path.abspath(config.out) != os.path.abspath(run_dir):
            raise ConfigError(f"resume writes into the run directory it resumes ({run_dir}), not {config.out}")
        config = config.replace(out=run_dir)
    else:
        config = config or MNISTConfig()
        run_dir = config.out or _new_run_dir()
        if os.path.exists(os.path.join(run_dir, "checkpoint.npz")):
            raise ConfigError(f"{run_dir} already holds a run (checkpoint.npz); resume it with "
                              f"--resume {run_dir}, or choose another output directory")
        config = config.replace(out=run_dir)
    config.validate()
    os.makedirs(run_dir, exist_ok=True)
    log = RunLog(os.path.join(run_dir, "train.log"), echo=echo)
    try:
        return _train_mnist(config, run_dir, resume is not None, list(callbacks), data, log)
    finally:
        log.close()


def _train_mnist(cfg, run_dir, resuming, callbacks, data, log):
    t_start = time.perf_counter()
    _apply_threads(cfg.threads)
    log(f"{'resuming' if resuming else 'starting'} run {run_dir}  (jimunet {__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()})")
    (x, y), (xv, yv), (xs, ys) = _load_data(cfg, data)
    model, loss_fn, optimizer, schedule = build(cfg, train_size=len(x))
    cfg_dict = cfg.to_dict()
    path = lambda name: os.path.join(run_dir, name)  # noqa: E731

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

    trainer = Trainer(model, loss_fn, optimizer, batch_size=cfg.batch_size, schedule=schedule,
                      shuffle=cfg.shuffle, rng=np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(1)[0]),
                      progress=cfg.progress, log=log, eval_batch_size=cfg.eval_batch_size,
                      augment=make_augment(cfg))
    if resuming:
        trainer.load_checkpoint(path("checkpoint.npz"))
        if trainer.epoch > cfg.epochs:
            raise ConfigError(f"the checkpoint already has {trainer.epoch} epochs; epochs must be >= that, "
                              f"got {cfg.epochs}")
        log(f"resumed from checkpoint.npz: {trainer.epoch} epochs ({trainer.step} steps) done")
    run_cb = _RunDirCallback(run_dir, cfg_dict, metrics, model_meta)
    trainer.callbacks = [run_cb] + callbacks
    n_params = sum(p.size for p in model.parameters())
    log(f"model mnist_{cfg.model}: {n_params:,} parameters; data: {len(x)} train / {len(xv)} validation / "
        f"{len(xs)} test{' (self-test fake data)' if cfg.self_test else ''}")
    steps = trainer.steps_in_epoch(len(x), trainer.epoch)
    log(describe_recipe(cfg, steps))
    try:
        trainer.fit(x, y, cfg.epochs, xv, yv)
    except TrainingDiverged as e:
        e.checkpoint = path("checkpoint.npz")
        done = trainer.history.epochs[-1]["epoch"] if trainer.history.epochs else 0
        e.args = (f"{e}. Stopped; {e.checkpoint} keeps the last good state "
                  f"({f'after epoch {done}' if done else 'the initial weights'}).",)
        log(f"error: {e}", echo=False)  # the caller reports the exception itself
        _mark_status(path("metrics.json"), "diverged", lambda: metrics(trainer, "diverged"))
        raise
    except TrainingInterrupted as e:
        done = _checkpoint_epochs(path("checkpoint.npz"))
        e.run_dir, e.epochs_completed = run_dir, done
        e.message = (f"interrupted during epoch {done + 1}; {path('checkpoint.npz')} holds the state after "
                     f"{done} complete epochs (the partial epoch is discarded). Resume with:\n"
                     f"    jimunet train --resume {run_dir}")
        log(e.message)
        _mark_status(path("metrics.json"), "interrupted", None)
        raise
    test = evaluate(model, xs, ys, cfg.eval_batch_size, num_classes=10)
    h = trainer.history
    model.save(path("model.npz"), model_meta(trainer, test_accuracy=test.accuracy, test_error=test.error,
                                             val_error=h.epochs[-1]["val_error"] if h.epochs else None))
    result_metrics = metrics(trainer, "completed", test)
    write_json_atomic(path("metrics.json"), result_metrics)
    best = f"; best validation error {h.best_val_error:.2f}% at epoch {h.best_epoch}" if h.best_epoch else ""
    log(f"test error {test.error:.2f}% (accuracy {100 * test.accuracy:.2f}%, {len(xs)} images){best}")
    log(f"wrote {run_dir}/: model.npz, best.npz, checkpoint.npz, metrics.json, train.log "
        f"({time.perf_counter() - t_start:.1f} s in this session)")
    if cfg.report:
        _write_report(run_dir, log)
    return TrainResult(run_dir, model, h, test.accuracy, test.error, test.confusion, result_metrics)


def _checkpoint_epochs(path) -> int:
    try:
        _, meta = load_npz(path, kind=CHECKPOINT_FORMAT)
        return int(meta["state"]["epoch"])
    except Exception:  # pragma: no cover - the file is written atomically
        return 0


def _mark_status(path, status, make=None):
    """Set metrics.json's status (creating it with ``make()`` when missing); never raises."""
    try:
        if os.path.exists(path):
            with open(path) as f:
                m = json.load(f)
            m["status"] = status
        elif make is not None:
            m = make()
        else:
            return
        write_json_atomic(path, m)
    except Exception:  # pragma: no cover - best effort on the way out
        pass


def _write_report(run_dir, log):
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
        out = write(run_dir)
        log(f"report: {out}" if isinstance(out, (str, os.PathLike)) else f"report written in {run_dir}")
    except Exception as e:  # never fail a finished training because of the report
        log(f"warning: the report could not be written ({type(e).__name__}: {e})")
