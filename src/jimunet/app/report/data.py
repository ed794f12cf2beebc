"""Reading a training run for the report: its metrics, its weights, the test data, the predictions.

``read_run`` finds the weights (``model.npz``, else ``best.npz``) and ``metrics.json``
(tolerating missing, renamed and differently scaled keys), ``test_set`` the images to
evaluate on, and ``predict_run`` the model's predictions, confusion matrix, per-class
accuracy and most confident mistakes. NumPy only: nothing here draws.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from ... import datasets
from ...backend import to_numpy
from ...data import Normalize
from ...data.images import looks_like_pixels, preprocess
from ...functional.softmax import softmax
from ...model import load
from ...training import confusion_matrix
from ..inspect import model_dtype
from ..modelinfo import ModelInfo, model_info
from ..recipes import fake_data
from ..testdata import test_set
from ..traindata import fixed_order

MAX_MISTAKES = 16
PREDICT_CHUNK = 1000


# -- numbers ------------------------------------------------------------------------------------

def _first(d, *keys, default=None):
    """The value of the first of ``keys`` present (and not None) in dict ``d``."""
    if not isinstance(d, dict):
        return default
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return default


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _unit(metrics, key):
    """``"percent"``, ``"fraction"`` or None, from metrics.json's ``units`` table."""
    units = _first(metrics, "units", default={})
    u = str(units.get(key, "")).lower() if isinstance(units, dict) else ""
    return "percent" if u in ("percent", "%", "pct") else "fraction" if u in ("fraction", "ratio") else None


def _as_percent(values, unit=None, name=""):
    """Rates as percentages. With a known ``unit`` that decides; otherwise fractions (every
    value <= 1) are scaled by 100 unless the key's name says it is a percentage."""
    vals = [_num(v) for v in values]
    known = [v for v in vals if v is not None]
    if not known or unit == "percent":
        return vals
    if unit != "fraction" and ("pct" in name or "percent" in name or max(known) > 1.0):
        return vals
    return [None if v is None else 100.0 * v for v in vals]


def _rate_percent(metrics, acc_keys, err_keys):
    """(accuracy %, error %) from whichever of the keys exist, using metrics.json's ``units``
    when it has them (jimunet train writes test_accuracy as a fraction, test_error in percent)."""
    acc_key = next((k for k in acc_keys if _num(metrics.get(k)) is not None), None)
    err_key = next((k for k in err_keys if _num(metrics.get(k)) is not None), None)
    acc = None if acc_key is None else _as_percent([metrics[acc_key]], _unit(metrics, acc_key), acc_key)[0]
    err = None if err_key is None else _num(metrics[err_key])
    if err is not None:
        u = _unit(metrics, err_key)
        if u == "fraction" or (u is None and acc is None and err <= 1.0):
            err *= 100.0
        elif u is None and acc is not None:  # units unknown: take the reading that agrees with acc
            err = err * 100.0 if abs(100.0 * err + acc - 100.0) < abs(err + acc - 100.0) else err
    if acc is None and err is not None:
        acc = 100.0 - err
    if err is None and acc is not None:
        err = 100.0 - acc
    return acc, err


def _epoch_rows(metrics):
    """Normalised per-epoch records: epoch, train_loss, val_error (%), lr, seconds."""
    raw = _first(metrics, "epochs", "history", default=[]) or []
    if isinstance(raw, dict):  # {"train_loss": [...], "val_error": [...]} column style
        n = max((len(v) for v in raw.values() if isinstance(v, list)), default=0)
        raw = [{k: (v[i] if isinstance(v, list) and i < len(v) else None) for k, v in raw.items()} for i in range(n)]
    rows = []
    for i, e in enumerate(r for r in raw if isinstance(r, dict)):
        rows.append({
            "epoch": _first(e, "epoch", default=i + 1),
            "train_loss": _num(_first(e, "train_loss", "loss", "mean_loss")),
            "val_error": _num(_first(e, "val_error", "val_err", "validation_error", "valid_error")),
            "val_accuracy": _num(_first(e, "val_accuracy", "val_acc", "validation_accuracy")),
            "lr": _num(_first(e, "lr", "learning_rate")),
            "seconds": _num(_first(e, "seconds", "time_s", "time", "wall_s", "duration_s")),
        })
    errs = [r["val_error"] for r in rows]
    if not any(v is not None for v in errs):  # derive from accuracy if that is what was logged
        key = next((k for k in ("val_accuracy", "val_acc", "validation_accuracy")
                    if any(isinstance(e, dict) and k in e for e in raw)), "")
        accs = _as_percent([r["val_accuracy"] for r in rows], _unit(metrics, key), key)
        errs = [None if a is None else 100.0 - a for a in accs]
    else:
        key = next((k for k in ("val_error", "val_err", "validation_error", "valid_error")
                    if any(isinstance(e, dict) and k in e for e in raw)), "")
        errs = _as_percent(errs, _unit(metrics, key), key)
    for r, v in zip(rows, errs):
        r["val_error_pct"] = v
    return rows


def model_inputs(x, normalize, dtype):
    """``x`` (pixels, or model inputs already) as the model's inputs: pixels are normalised with
    the model's ``normalize`` (MNIST's: ``preprocess(auto=True)``, as always); floats within
    [0, 1] or [-0.5, 0.5] are taken as inputs (``looks_like_pixels``)."""
    if normalize is None or normalize == Normalize.mnist():
        return preprocess(x, dtype, auto=True)
    x = np.asarray(x)
    return normalize(x, dtype) if looks_like_pixels(x) else x.astype(dtype, copy=False)


def _predict(model, x, normalize=None, chunk=PREDICT_CHUNK, predictor=None):
    """Softmax probabilities for ``x`` (pixels or model inputs), ``chunk`` images at a time, from
    ``predictor`` (default ``model``; ``ModelInfo.predictor``: as the model was tested)."""
    dtype = model_dtype(model)
    predictor = model if predictor is None else predictor
    parts = []
    for i in range(0, len(x), chunk):
        logits = predictor.predict(model_inputs(x[i:i + chunk], normalize, dtype), batch_size=min(chunk, 250))
        parts.append(softmax(np.asarray(to_numpy(logits), dtype=np.float64)))
    return np.concatenate(parts) if parts else np.zeros((0, 10))


def _load_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        return {}, "metrics.json not found"
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
        return (m, None) if isinstance(m, dict) else ({}, "metrics.json is not a JSON object")
    except (OSError, ValueError) as e:
        return {}, f"metrics.json could not be read ({e})"


def _pick_weights(run_dir, weights):
    if weights is not None:
        path = weights if os.path.isabs(weights) or os.path.exists(weights) else os.path.join(run_dir, weights)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such weights file")
        return path
    for name in ("model.npz", "best.npz"):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{run_dir}: no model.npz or best.npz in this directory; is it a training run "
                            f"directory (runs/<timestamp>/)?")


def _load_test_data(data_dir, config, info: ModelInfo | None = None):
    """``(x_test, y_test, description)`` matching the run: the test set of the model's data set
    (``info``; MNIST without) or its first ``test_size`` images when the run used fewer, or the
    self-test fake data."""
    n = _first(config, "test_size")
    n = int(n) if isinstance(n, (int, float)) and n > 0 else None
    if _first(config, "self_test"):
        x, y = fake_data(64)
        x, y = x[:n], y[:n]
        return x, y, f"the self-test fake data ({len(x)} images)"
    # Never a path from the run's files: they could send the download anywhere (and jimunet
    # no longer writes paths there). The data lives where the user says, or the default.
    if info is not None and info.dataset_name != "mnist":
        test = test_set(info, data_dir=data_dir)
        x_test, y_test = test.pixels()
        title = test.title
        if n is not None and n < len(x_test):  # the run's test images: the same choice as training's
            keep = np.sort(fixed_order(len(x_test), test.name)[:n])
            return x_test[keep], y_test[keep], f"{n:,} {title} test images (the run's test_size)"
    else:
        _, (x_test, y_test) = datasets.load_mnist(root=data_dir)  # looked up now: tests replace it
        title = "MNIST"
    if n is not None and n < len(x_test):
        return x_test[:n], y_test[:n], f"the first {n:,} {title} test images (the run's test_size)"
    return x_test, y_test, f"the {title} test set ({len(x_test):,} images)"


# -- a run, the data, the predictions -----------------------------------------------------------

@dataclass
class Run:
    """What a training run left in its directory, as the report reads it."""

    run_dir: str
    weights_path: str
    model: object
    metrics: dict
    metrics_problem: str | None   # why metrics.json is missing or unreadable (None: it is fine)
    config: dict
    info: ModelInfo | None = None  # what the model is for (modelinfo)


def read_run(run_dir, weights=None) -> Run:
    """The run in ``run_dir``: its weights (``weights``, else ``model.npz``, else ``best.npz``),
    metrics.json and configuration (from metrics.json, else saved with the weights)."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: not a directory")
    weights_path = _pick_weights(run_dir, weights)
    model = load(weights_path)
    metrics, metrics_problem = _load_metrics(run_dir)
    config = _first(metrics, "config", default=None)
    if config is None:  # fall back on what was saved with the weights
        meta = getattr(model, "metadata", None) or {}
        config = meta.get("config", meta) if isinstance(meta, dict) else {}
    if not isinstance(config, dict):
        config = {"config": config}
    return Run(run_dir, weights_path, model, metrics, metrics_problem, config, model_info(model))


def read_data(data, data_dir, config, info: ModelInfo | None = None):
    """``(x, y, description)``: ``data`` (``(x, y)``) when given, else the run's test data."""
    if data is None:
        other = info is not None and info.dataset_name != "mnist"
        x, y, data_name = _load_test_data(data_dir, config, info) if other else _load_test_data(data_dir, config)
    else:
        x, y = data
        data_name = f"{len(x):,} test images passed to write_report"
    x = np.asarray(to_numpy(x))
    y = np.asarray(to_numpy(y)).astype(np.int64).ravel()
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"write_report: need as many labels as images, and at least one (got {len(x)} images, "
                         f"{len(y)} labels)")
    return x, y, data_name


@dataclass
class Predictions:
    """The model on the test set: what the report's numbers and figures show."""

    summary: object           # model.summary(input shape)
    num_classes: int
    class_names: list
    probs: np.ndarray         # softmax probabilities (N, classes)
    pred: np.ndarray          # predicted classes (N,)
    cm: np.ndarray            # confusion matrix, rows true class
    per_class: list           # accuracy of each class (None for a class without images)
    accuracy: float
    wrong: np.ndarray         # indices of the misclassified images
    mistakes: list            # the most confident mistakes, as dicts
    predict_s: float          # seconds the prediction took
    normalize: object = None  # the model's Normalize (pixels → inputs)


def predict_run(model, x, y, num_mistakes=MAX_MISTAKES, info: ModelInfo | None = None) -> Predictions:
    """Predict ``x`` and count: confusion matrix, per-class accuracy, the most confident mistakes
    (classes named by ``info``, else by number)."""
    summary = model.summary(tuple(x.shape[1:]))
    out_shape = summary.output_shape
    num_classes = int(max(out_shape[-1] if out_shape else 10, y.max() + 1))
    t0 = time.perf_counter()
    normalize = info.normalize if info is not None else None
    probs = _predict(model, x, normalize, predictor=info.predictor(model) if info is not None else None)
    predict_s = time.perf_counter() - t0
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(y, pred, num_classes)
    support = cm.sum(axis=1)
    per_class = [float(cm[k, k] / support[k]) if support[k] else None for k in range(num_classes)]
    accuracy = float(np.trace(cm) / cm.sum())
    wrong = np.flatnonzero(pred != y)
    conf = probs[wrong, pred[wrong]]
    order = wrong[np.argsort(-conf, kind="stable")][:max(0, min(num_mistakes, MAX_MISTAKES))]
    mistakes = [{"index": int(i), "true": int(y[i]), "pred": int(pred[i]), "prob": float(probs[i, pred[i]]),
                 "prob_true": float(probs[i, y[i]])} for i in order]
    names = list(info.class_names) if info is not None else []
    names += [str(k) for k in range(len(names), num_classes)]
    return Predictions(summary, num_classes, names[:num_classes], probs, pred, cm, per_class,
                       accuracy, wrong, mistakes, predict_s, normalize)


def step_losses(metrics) -> list:
    """The per-step training losses recorded in metrics.json (under any of their names)."""
    step_loss = _first(metrics, "step_loss", "step_losses", "train_step_loss", "losses", default=[]) or []
    return step_loss if isinstance(step_loss, list) else []


def has_l2(config) -> bool:
    """Whether the run's loss includes an L2 weight-decay term."""
    return (_num(_first(config, "weight_decay", "l2")) or 0) > 0


def metrics_test_rates(metrics):
    """``(accuracy %, error %)`` on the test set as metrics.json records them (None: not recorded)."""
    return _rate_percent(metrics, ("test_accuracy", "test_acc", "accuracy"), ("test_error", "test_err", "error"))


def metrics_confusion_matches(metrics, cm):
    """Whether metrics.json's confusion matrix equals ``cm`` (None: none recorded, or another shape)."""
    m_cm = _first(metrics, "confusion_matrix", "confusion", "test_confusion")
    try:
        m_cm = None if m_cm is None else np.asarray(m_cm, dtype=np.int64)
    except (TypeError, ValueError):
        m_cm = None
    return None if m_cm is None or m_cm.shape != cm.shape else bool(np.array_equal(m_cm, cm))
