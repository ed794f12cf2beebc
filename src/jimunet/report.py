"""A one-file HTML report of a training run: curves, filters, feature maps, errors, summary.

``write_report(run_dir)`` reads what a training run left in its directory (``model.npz`` or
``best.npz``, ``metrics.json``, ``train.log``), predicts the MNIST test set with the model,
draws PNG figures into the run directory and writes ``report.html``, which embeds every
figure as a base64 ``data:`` URI so it opens offline and can be mailed as one file. The
numbers behind it (confusion matrix, per-class accuracy, worst mistakes) also go to
``report.json`` and into the HTML as ``<script type="application/json" id="report-data">``.

Drawing needs matplotlib (``pip install 'jimunet[plot]'``); this module imports without it.
``confusion_matrix`` needs NumPy only.

Command line (``jimunet.app.cli.report``)::

    jimunet report runs/20240101-120000 [--out report.html] [--data-dir D]
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import time

import numpy as np

from .backend import to_numpy
from .explain import (PLOT_HINT, PlotDependencyError, conv_blocks, draw_channel_grid, grid_columns,  # noqa: F401
                      model_dtype, new_figure, preprocess, require_matplotlib, save_figure, shape_str, trace)
from .functional.softmax import softmax

__all__ = ["write_report", "confusion_matrix", "PlotDependencyError", "PLOT_HINT", "FIGURE_SIZES", "DPI"]

DPI = 100
# Figure sizes in inches (pixels = inches × DPI). Feature-map figures depend on the channel
# count and are recorded, like every figure, in report.json's "figures".
FIGURE_SIZES = {
    "curves": (10.0, 7.0),
    "filters": (10.0, 5.0),
    "confusion": (7.0, 6.2),
    "per_class": (8.0, 4.2),
    "mistakes": (12.0, 4.6),
}
MAX_MISTAKES = 16
PREDICT_CHUNK = 1000


# -- numbers ------------------------------------------------------------------------------------

def confusion_matrix(y_true, y_pred, num_classes: int = 10) -> np.ndarray:
    """Counts ``C[t, p]`` of samples of true class ``t`` predicted as ``p`` (rows: truth).

    Args:
        y_true, y_pred: integer class ids of equal length, each in ``[0, num_classes)``.
        num_classes: size of the square matrix.

    Returns:
        int64 array ``(num_classes, num_classes)``; ``C.sum() == len(y_true)`` and the
        accuracy is ``trace(C) / C.sum()``.

    Example:
        >>> confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], num_classes=3)
        array([[1, 0, 0],
               [0, 1, 1],
               [0, 0, 1]])
    """
    t = np.asarray(to_numpy(y_true)).ravel()
    p = np.asarray(to_numpy(y_pred)).ravel()
    if t.shape != p.shape:
        raise ValueError(f"confusion_matrix: y_true has {t.size} labels, y_pred {p.size}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.dtype.kind not in "iu" and not np.all(a == np.round(a))):
            raise ValueError(f"confusion_matrix: {name} must hold integer class ids")
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} has ids outside [0, {num_classes})")
    t, p = t.astype(np.int64), p.astype(np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


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


def _ema(values, span):
    """Bias-corrected exponential moving average (TensorBoard-style smoothing)."""
    beta = 1.0 - 2.0 / (span + 1.0)
    out, s = np.empty(len(values)), 0.0
    for t, v in enumerate(values, 1):
        s = beta * s + (1.0 - beta) * v
        out[t - 1] = s / (1.0 - beta ** t)
    return out


def _predict(model, x, chunk=PREDICT_CHUNK):
    """Softmax probabilities for ``x`` (uint8 or preprocessed), ``chunk`` images at a time."""
    dtype = model_dtype(model)
    parts = []
    for i in range(0, len(x), chunk):
        logits = model.predict(preprocess(x[i:i + chunk], dtype), batch_size=min(chunk, 250))
        parts.append(softmax(np.asarray(to_numpy(logits), dtype=np.float64)))
    return np.concatenate(parts) if parts else np.zeros((0, 10))


# -- figures --------------------------------------------------------------------------------------

def _style_axes(ax):
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=9)


def loss_axis_range(losses, settle_fraction: float = 0.02, min_steps: int = 100):
    """``(low, high, clipped)``: the loss axis limits and how many of the first steps lie above.

    A freshly initialised network starts at a loss several times its later values (the
    recipe's first step: 10.9, then 1.6–3.6 for the rest of the run); an axis scaled to that
    spike squeezes the useful part of the curve into a sliver. So when the first steps rise
    more than 25% above the highest loss after the first ``settle_fraction`` of the run, the
    axis stops at that later maximum and ``clipped`` counts the steps cut off (the plot says so).
    Runs shorter than ``min_steps`` are shown whole.
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.size == 0:
        return 0.0, 1.0, 0
    lo, hi = float(losses.min()), float(losses.max())
    top = hi
    if losses.size >= min_steps:
        settled = float(losses[max(1, int(losses.size * settle_fraction)):].max())
        if hi > 1.25 * settled:
            top = settled
    pad = 0.04 * (top - lo) if top > lo else 0.05 * abs(top) or 1.0
    low, high = lo - pad, top + pad
    return low, high, int((losses > high).sum())


def _fig_curves(path, step_loss, epochs, l2=False):
    fig = new_figure(FIGURE_SIZES["curves"], DPI)
    ax1, ax2 = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    losses = np.array([v for v in (_num(s) for s in step_loss) if v is not None])
    n_ep = len(epochs)
    what = "cross-entropy + L2 term" if l2 else "cross-entropy"
    if losses.size:
        steps = np.arange(1, losses.size + 1)
        span = max(2, min(200, losses.size // 25))
        ax1.plot(steps, losses, color="#1f77b4", alpha=0.3, lw=0.8, label="loss of each step")
        ax1.plot(steps, _ema(losses, span), color="#1f77b4", lw=2.0, label=f"moving average (EMA, span {span})")
        low, high, clipped = loss_axis_range(losses)
        if clipped:
            ax1.set_ylim(low, high)
            last = int(np.nonzero(losses > high)[0].max()) + 1
            peak = "" if losses.argmax() == 0 else f", peaks at {losses.max():.3g}"
            ax1.text(0.015, 0.04, f"axis cut at {high:.3g}: {clipped} of the first {last} steps lie above it\n"
                                  f"(the loss starts at {losses[0]:.3g}{peak})",
                     transform=ax1.transAxes, ha="left", va="bottom", fontsize=8.5, color="dimgray",
                     bbox=dict(facecolor="white", edgecolor="none", alpha=0.8))
        elif losses.min() > 0 and losses.max() / losses.min() > 20:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax1.set_yscale("log")
            ax1.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax1.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax1.yaxis.set_minor_formatter(NullFormatter())
            ax1.set_ylabel(f"training loss, log scale\n({what})", fontsize=10)
        ax1.set_xlim(0, losses.size + 1)
        if n_ep:
            per = losses.size / n_ep
            for k in range(1, n_ep):
                ax1.axvline(k * per, color="gray", lw=0.7, ls=":")
            from matplotlib.ticker import MaxNLocator

            top = ax1.secondary_xaxis("top", functions=(lambda s: s / per, lambda e: e * per))
            top.xaxis.set_major_locator(MaxNLocator(integer=True))
            top.set_xlabel("epoch (dotted lines: epoch boundaries)", fontsize=9)
            top.tick_params(labelsize=9)
        ax1.legend(fontsize=9, loc="upper right")
    else:
        ax1.text(0.5, 0.5, "no per-step losses in metrics.json", ha="center", va="center",
                 transform=ax1.transAxes, fontsize=11, color="gray")
    ax1.set_xlabel("training step", fontsize=10)
    if not ax1.get_ylabel():
        ax1.set_ylabel(f"training loss\n({what})", fontsize=10)
    ax1.set_title("Training loss per step", fontsize=12)
    _style_axes(ax1)

    ep = [r["epoch"] for r in epochs]
    err = [r["val_error_pct"] for r in epochs]
    lr = [r["lr"] for r in epochs]
    handles = []
    if any(v is not None for v in err):
        xs = [e for e, v in zip(ep, err) if v is not None]
        ys = [v for v in err if v is not None]
        handles += ax2.plot(xs, ys, "o-", color="#d62728", lw=2, ms=5, label="validation error")
        ax2.annotate(f"{ys[-1]:.2f}%", (xs[-1], ys[-1]), textcoords="offset points", xytext=(6, 6),
                     fontsize=9, color="#d62728")
        if min(ys) > 0 and max(ys) / min(ys) > 20:
            ax2.set_yscale("log")
    else:
        ax2.text(0.5, 0.5, "no validation error in metrics.json", ha="center", va="center",
                 transform=ax2.transAxes, fontsize=11, color="gray")
    ax2.set_xlabel("epoch", fontsize=10)
    ax2.set_ylabel("validation error (%)", fontsize=10, color="#d62728")
    if ep and all(isinstance(e, (int, float)) for e in ep):
        lo_e, hi_e = min(ep), max(ep)
        ax2.set_xlim(lo_e - 0.5, hi_e + 0.5)
        if hi_e - lo_e <= 20:
            ax2.set_xticks(sorted(set(int(e) for e in ep)))
    if any(v is not None for v in lr):
        ax3 = ax2.twinx()
        xs = [e for e, v in zip(ep, lr) if v is not None]
        ys = [v for v in lr if v is not None]
        handles += ax3.plot(xs, ys, "s--", color="#2ca02c", lw=1.5, ms=4, label="learning rate")
        ax3.set_ylabel("learning rate", fontsize=10, color="#2ca02c")
        ax3.tick_params(labelsize=9)
        if min(ys) > 0 and max(ys) / min(ys) > 10:
            ax3.set_yscale("log")
        else:
            ax3.set_ylim(0, max(ys) * 1.15 if max(ys) > 0 else 1)
    if handles:
        ax2.legend(handles=handles, fontsize=9, loc="upper right")
    ax2.set_title("Validation error and learning rate per epoch", fontsize=12)
    _style_axes(ax2)
    fig.tight_layout()
    return save_figure(fig, path, DPI)


def _fig_filters(path, conv):
    import matplotlib

    w = np.asarray(to_numpy(conv.weight.data), dtype=np.float64)  # (kh, kw, cin, cout)
    kh, kw, cin, cout = w.shape
    shown = w[:, :, 0, :]  # first input channel (the only one for MNIST)
    ncols = grid_columns(cout)
    nrows = math.ceil(cout / ncols)
    fig = new_figure(FIGURE_SIZES["filters"], DPI)
    m = float(np.abs(shown).max()) or 1.0
    gs = fig.add_gridspec(nrows, ncols + 1, width_ratios=[1] * ncols + [0.12], wspace=0.15, hspace=0.35)
    cmap = matplotlib.colormaps["RdBu_r"]
    im = None
    for k in range(cout):
        ax = fig.add_subplot(gs[k // ncols, k % ncols])
        im = ax.imshow(shown[:, :, k], cmap=cmap, vmin=-m, vmax=m, interpolation="nearest")
        ax.set_title(f"#{k}", fontsize=9, pad=2)
        ax.set_xticks([])
        ax.set_yticks([])
    cax = fig.add_subplot(gs[:, ncols])
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("weight (0 = white)", fontsize=9)
    cb.ax.tick_params(labelsize=8)
    note = "" if cin == 1 else f" (input channel 0 of {cin})"
    fig.suptitle(f"First-layer filters: {cout} kernels of {kh}x{kw}{note}; red = positive, blue = negative, "
                 f"shared scale", fontsize=11)
    fig.subplots_adjust(left=0.02, right=0.93, top=0.86, bottom=0.03)
    return save_figure(fig, path, DPI)


def _feature_size(maps):
    h, w, c = maps.shape
    ncols = grid_columns(c)
    nrows = math.ceil(c / ncols)
    aspect = (nrows * h) / (ncols * w)
    return 12.0, round(min(11.0, max(3.5, 8.0 * aspect + 1.4)), 1)


def _fig_features(path, raw_image, maps, label, title_index, pred, true):
    size = _feature_size(maps)
    fig = new_figure(size, DPI)
    gs = fig.add_gridspec(1, 3, width_ratios=[1.4, 8.0, 0.18], wspace=0.06)
    ax0 = fig.add_subplot(gs[0, 0])
    img = np.asarray(raw_image)
    ax0.imshow(img[..., 0] if img.ndim == 3 else img, cmap="gray", interpolation="nearest")
    ax0.set_title(f"input: test #{title_index}\ntrue {true}, predicted {pred}", fontsize=10)
    ax0.set_xticks([])
    ax0.set_yticks([])
    ax = fig.add_subplot(gs[0, 1])
    im = draw_channel_grid(ax, maps, fontsize=7)
    h, w, c = maps.shape
    ax.set_title(f"{label}: {c} channels of {h}x{w} (index in each tile's corner, shared colour scale)",
                 fontsize=11)
    cax = fig.add_subplot(gs[0, 2])
    cb = fig.colorbar(im, cax=cax)
    cb.ax.tick_params(labelsize=8)
    cb.set_label("activation", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.95, top=0.92, bottom=0.03)
    # put the colour bar right beside the (aspect-locked) image, just as tall
    ax.apply_aspect()
    pos = ax.get_position()
    cpos = cax.get_position()
    cax.set_position([pos.x1 + 0.012, pos.y0, cpos.width, pos.height])
    return save_figure(fig, path, DPI)


def _annotate_color(value, norm, cmap):
    r, g, b, _ = cmap(norm(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _fig_confusion(path, cm, class_names):
    import matplotlib
    from matplotlib.colors import LogNorm

    k = cm.shape[0]
    fig = new_figure(FIGURE_SIZES["confusion"], DPI)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="white")
    vmax = max(int(cm.max()), 2)
    norm = LogNorm(vmin=1, vmax=vmax)
    masked = np.ma.masked_where(cm == 0, cm)
    im = ax.imshow(masked, cmap=cmap, norm=norm, interpolation="nearest")
    fs = 9 if k <= 10 else 7
    for t in range(k):
        for p in range(k):
            v = int(cm[t, p])
            color = "#bbbbbb" if v == 0 else _annotate_color(v, norm, cmap)
            ax.text(p, t, str(v), ha="center", va="center", fontsize=fs, color=color,
                    fontweight="bold" if t == p else "normal")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(class_names, fontsize=10)
    ax.set_yticklabels(class_names, fontsize=10)
    ax.set_xlabel("predicted class", fontsize=11)
    ax.set_ylabel("true class", fontsize=11)
    total, right = int(cm.sum()), int(np.trace(cm))
    ax.set_title(f"Confusion matrix: {total - right} errors in {total:,} test images\n"
                 f"(counts; colour on a log scale, 0 left white)", fontsize=11)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label("count (log scale)", fontsize=9)
    cb.ax.tick_params(labelsize=8)
    fig.tight_layout()
    return save_figure(fig, path, DPI)


def _fig_per_class(path, cm, class_names):
    support = cm.sum(axis=1)
    acc = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan) * 100
    overall = 100.0 * np.trace(cm) / max(cm.sum(), 1)
    fig = new_figure(FIGURE_SIZES["per_class"], DPI)
    ax = fig.add_subplot()
    idx = np.arange(len(acc))
    finite = acc[np.isfinite(acc)]
    lo = float(finite.min()) if finite.size else 0.0
    floor = 0.0 if lo < 60 else max(0.0, 5 * math.floor((lo - 2) / 5))
    colors = ["#d62728" if np.isfinite(a) and a < overall else "#1f77b4" for a in acc]
    ax.bar(idx, np.nan_to_num(acc - floor, nan=0.0), bottom=floor, color=colors, width=0.7)
    ax.axhline(overall, color="black", ls="--", lw=1)
    top = 100.0 + (100.0 - floor) * 0.1
    for i, (a, n) in enumerate(zip(acc, support)):
        if np.isfinite(a):
            ax.text(i, a + (100.0 - floor) * 0.015, f"{a:.1f}", ha="center", va="bottom", fontsize=8.5)
    ax.set_ylim(floor, top)
    ax.set_xticks(idx)
    ax.set_xticklabels([f"{c}\n(n={int(s)})" for c, s in zip(class_names, support)], fontsize=8.5)
    ax.set_xlabel("true class (number of test images)", fontsize=10)
    ax.set_ylabel("accuracy (%)", fontsize=10)
    note = f"; the axis starts at {floor:g}%" if floor > 0 else ""
    ax.set_title(f"Per-class accuracy on {int(cm.sum()):,} test images\n"
                 f"dashed: overall accuracy {overall:.2f}%; red: classes below it{note}", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(labelsize=9)
    fig.tight_layout()
    return save_figure(fig, path, DPI)


def _fig_mistakes(path, x, mistakes, class_names):
    fig = new_figure(FIGURE_SIZES["mistakes"], DPI)
    ncols, nrows = 8, 2
    if not mistakes:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no mistakes on these test images", ha="center", va="center", fontsize=14)
        ax.axis("off")
    for k, m in enumerate(mistakes[:ncols * nrows]):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        img = np.asarray(x[m["index"]])
        img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
        ax.imshow(img, cmap="gray_r", interpolation="nearest")
        ax.set_title(f"true {class_names[m['true']]} \u2192 pred {class_names[m['pred']]}\n"
                     f"p = {m['prob']:.3f}   #{m['index']}", fontsize=9.5, color="#b00000", pad=3)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Most confident mistakes: test images the model gets wrong with the highest probability "
                 "(p = probability of the predicted class)", fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.82, bottom=0.01, wspace=0.08, hspace=0.42)
    return save_figure(fig, path, DPI)


# -- HTML ----------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:24px auto;
padding:0 16px;color:#222;line-height:1.45}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:34px}
.sub{color:#666;margin-top:0}table{border-collapse:collapse;margin:8px 0;font-size:14px}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left}th{background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:130px}
.card b{display:block;font-size:22px}.card span{color:#666;font-size:13px}
img{max-width:100%;height:auto;border:1px solid #eee}figure{margin:10px 0}
figcaption{color:#555;font-size:14px}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
.na{color:#999}
"""


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v, spec=None, unit=""):
    if v is None:
        return '<span class="na">n/a</span>'
    if spec and isinstance(v, (int, float)):
        return _e(format(v, spec)) + unit
    return _e(v) + unit


def _img(path, alt, caption):
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return (f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _table(header, rows, numeric=()):
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>")
    return "".join(out) + "</table>"


def _json_script(data) -> str:
    text = json.dumps(data, indent=1).replace("</", "<\\/")
    return f'<script type="application/json" id="report-data">\n{text}\n</script>'


def read_report_data(html_path) -> dict:
    """The JSON embedded in a ``report.html`` (confusion matrix, per-class accuracy, ...)."""
    with open(html_path, encoding="utf-8") as f:
        text = f.read()
    start = text.index('<script type="application/json" id="report-data">')
    start = text.index(">", start) + 1
    return json.loads(text[start:text.index("</script>", start)].replace("<\\/", "</"))


# -- the report ----------------------------------------------------------------------------------

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


def _load_test_data(data_dir, config):
    """``(x_test, y_test, description)`` matching the run: the MNIST test set (its first
    ``test_size`` images when the run used fewer), or the self-test fake data."""
    n = _first(config, "test_size")
    n = int(n) if isinstance(n, (int, float)) and n > 0 else None
    if _first(config, "self_test"):
        from .recipes import fake_data

        x, y = fake_data(64)
        x, y = x[:n], y[:n]
        return x, y, f"the self-test fake data ({len(x)} images)"
    from .datasets import load_mnist

    # Never a path from the run's files: they could send the download anywhere (and jimunet
    # no longer writes paths there). The data lives where the user says, or the default.
    _, (x_test, y_test) = load_mnist(root=data_dir)
    if n is not None and n < len(x_test):
        return x_test[:n], y_test[:n], f"the first {n:,} MNIST test images (the run's test_size)"
    return x_test, y_test, f"the MNIST test set ({len(x_test):,} images)"


def write_report(run_dir, data=None, out=None, weights=None, data_dir=None, num_mistakes: int = MAX_MISTAKES):
    """Write ``report.html`` (self-contained) and its PNG figures for a training run.

    Args:
        run_dir: a run directory as written by ``jimunet train`` (``model.npz`` or ``best.npz``,
            ``metrics.json``; missing metrics are shown as n/a).
        data: ``(x_test, y_test)`` to evaluate on (uint8 ``(N, 28, 28, 1)`` images are scaled
            as in training; floats are used as they are). Default: the MNIST test set.
        out: path of the HTML file (default ``run_dir/report.html``). Figures and
            ``report.json`` always go into ``run_dir``.
        weights: file in ``run_dir`` to report on (default ``model.npz``, else ``best.npz``).
        data_dir: MNIST cache directory when ``data`` is None.
        num_mistakes: how many of the most confident mistakes to show (at most 16).

    Returns:
        The path of ``report.html``.

    Raises:
        PlotDependencyError: matplotlib is not installed (message: ``pip install 'jimunet[plot]'``).
        FileNotFoundError: no weights in ``run_dir``.

    Example:
        >>> from jimunet.report import write_report
        >>> write_report("runs/20240101-120000")  # doctest: +SKIP
        'runs/20240101-120000/report.html'
    """
    require_matplotlib("jimunet report")
    t_start = time.perf_counter()
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: not a directory")
    from .model import load

    weights_path = _pick_weights(run_dir, weights)
    model = load(weights_path)
    metrics, metrics_problem = _load_metrics(run_dir)
    config = _first(metrics, "config", default=None)
    if config is None:  # fall back on what was saved with the weights
        meta = getattr(model, "metadata", None) or {}
        config = meta.get("config", meta) if isinstance(meta, dict) else {}
    if not isinstance(config, dict):
        config = {"config": config}

    if data is None:
        x, y, data_name = _load_test_data(data_dir, config)
    else:
        x, y = data
        data_name = f"{len(x):,} test images passed to write_report"
    x = np.asarray(to_numpy(x))
    y = np.asarray(to_numpy(y)).astype(np.int64).ravel()
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"write_report: need as many labels as images, and at least one (got {len(x)} images, "
                         f"{len(y)} labels)")
    input_shape = tuple(x.shape[1:])
    summary = model.summary(input_shape)
    out_shape = summary.output_shape
    num_classes = int(max(out_shape[-1] if out_shape else 10, y.max() + 1))
    class_names = [str(k) for k in range(num_classes)]

    # -- predictions
    t0 = time.perf_counter()
    probs = _predict(model, x)
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

    # -- figures
    figures = {}

    def fig(name, filename, draw, *args):
        path = os.path.join(run_dir, filename)
        w, h = draw(path, *args)
        figures[name] = {"file": filename, "width": w, "height": h}
        return path

    epochs = _epoch_rows(metrics)
    step_loss = _first(metrics, "step_loss", "step_losses", "train_step_loss", "losses", default=[]) or []
    if not isinstance(step_loss, list):
        step_loss = []
    l2 = (_num(_first(config, "weight_decay", "l2")) or 0) > 0
    fig("curves", "report-curves.png", _fig_curves, step_loss, epochs, l2)

    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    if convs:
        fig("filters", "report-filters.png", _fig_filters, convs[0])
    feature_figs = []
    blocks = conv_blocks(model)
    if blocks:
        sample = 0
        outs = trace(model, preprocess(x[sample:sample + 1], model_dtype(model)))
        for b, (_, shown, label) in enumerate(blocks[:4], 1):
            maps = np.asarray(to_numpy(outs[shown]))[0]
            if maps.ndim != 3:
                continue
            maps = maps[:, :, :64]
            name = f"features_{b}"
            fig(name, f"report-features-{b}.png", _fig_features, x[sample], maps, f"Block {b}: {label}",
                sample, int(pred[sample]), int(y[sample]))
            feature_figs.append((name, label, maps.shape))
    fig("confusion", "report-confusion.png", _fig_confusion, cm, class_names)
    fig("per_class", "report-per-class.png", _fig_per_class, cm, class_names)
    fig("mistakes", "report-mistakes.png", _fig_mistakes, x, mistakes, class_names)

    # -- numbers for machines
    m_acc, m_err = _rate_percent(metrics, ("test_accuracy", "test_acc", "accuracy"),
                                 ("test_error", "test_err", "error"))
    m_cm = _first(metrics, "confusion_matrix", "confusion", "test_confusion")
    try:
        m_cm = None if m_cm is None else np.asarray(m_cm, dtype=np.int64)
    except (TypeError, ValueError):
        m_cm = None
    same_as_training = None if m_cm is None or m_cm.shape != cm.shape else bool(np.array_equal(m_cm, cm))
    report_data = {
        "format": "jimunet-report", "version": 1,
        "run_dir": os.path.abspath(run_dir), "weights": os.path.basename(weights_path),
        "data": data_name, "num_test": int(len(y)), "num_classes": num_classes,
        "accuracy": accuracy, "error": 1.0 - accuracy,
        "confusion_matrix": cm.tolist(), "per_class_accuracy": per_class,
        "mistakes": mistakes, "figures": figures,
        "metrics_test_accuracy_pct": m_acc, "predict_seconds": predict_s,
        "confusion_matrix_matches_metrics": same_as_training,
    }
    json_path = os.path.join(run_dir, "report.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(report_data, f, indent=1)

    # -- HTML
    run_name = os.path.basename(os.path.abspath(run_dir))
    best_epoch = _first(metrics, "best_epoch")
    wall = _num(_first(metrics, "wall_time_s", "wall_time", "total_seconds", "train_seconds"))
    ips = _num(_first(metrics, "images_per_s", "images_per_second", "throughput"))
    cards = [
        ("test accuracy (this report)", f"{100 * accuracy:.2f}%", f"on {len(y):,} images, {os.path.basename(weights_path)}"),
        ("test accuracy (metrics.json)", None if m_acc is None else f"{m_acc:.2f}%", "as logged by training"),
        ("best epoch", best_epoch, "lowest validation error"),
        ("epochs", len(epochs) or _first(config, "epochs"), "trained"),
        ("training time", None if wall is None else f"{wall:.1f} s", "wall clock"),
        ("throughput", None if ips is None else f"{ips:,.0f} img/s", "training images per second"),
    ]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>jimunet report: {_e(run_name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>jimunet run report: {_e(run_name)}</h1>",
             f"<p class='sub'>{_e(os.path.abspath(run_dir))} &middot; weights {_e(os.path.basename(weights_path))}"
             f" &middot; evaluated on {_e(data_name)} &middot; generated "
             f"{_e(_dt.datetime.now().strftime('%Y-%m-%d %H:%M'))}</p>"]
    if metrics_problem:
        parts.append(f"<p class='na'>Note: {_e(metrics_problem)}; training curves and timings are n/a.</p>")
    parts.append("<div class='cards'>" + "".join(
        f"<div class='card'><b>{_fmt(v)}</b><span>{_e(t)}<br>{_e(s)}</span></div>" for t, v, s in cards) + "</div>")

    parts.append("<h2>Learning curves</h2>")
    parts.append(_img(os.path.join(run_dir, figures["curves"]["file"]), "learning curves",
                      "Top: the training loss of every step (faint) and its exponential moving average"
                      + (" (it includes the L2 weight-decay term, which the optimizer minimises too)" if l2 else "")
                      + "; dotted lines mark epochs. Bottom: validation error after each epoch (left axis) and the learning "
                      "rate (right axis)."))
    if epochs:
        parts.append(_table(["epoch", "train loss", "validation error", "learning rate", "seconds"],
                            [[_fmt(r["epoch"]), _fmt(r["train_loss"], ".4f"), _fmt(r["val_error_pct"], ".2f", "%"),
                              _fmt(r["lr"], ".3g"), _fmt(r["seconds"], ".1f")] for r in epochs],
                            numeric=(0, 1, 2, 3, 4)))

    if "filters" in figures:
        c0 = convs[0]
        parts.append("<h2>First-layer filters</h2>")
        parts.append(_img(os.path.join(run_dir, figures["filters"]["file"]), "first-layer filters",
                          f"The {c0.out_channels} kernels of the first convolution "
                          f"({c0.kernel_size[0]}x{c0.kernel_size[1]}, HWIO weight[:, :, 0, k]), "
                          f"on one colour scale centred at 0 (white). Trained filters look like "
                          f"stroke and edge detectors; untrained ones look like noise."))
    if feature_figs:
        parts.append("<h2>Feature maps</h2>")
        for name, label, shape in feature_figs:
            where = "after the activation, before pooling" if "->" in label.split(",")[-1] else \
                "the convolution's output"
            parts.append(_img(os.path.join(run_dir, figures[name]["file"]), f"feature maps {label}",
                              f"Output of {_e(label)} ({_e(shape_str(shape))}, {where}) for test image #0 "
                              f"(true {int(y[0])}, predicted {int(pred[0])})."))

    parts.append("<h2>Errors: confusion matrix, per-class accuracy, most confident mistakes</h2>")
    parts.append(_img(os.path.join(run_dir, figures["confusion"]["file"]), "confusion matrix",
                      "Rows: true class, columns: predicted class; the diagonal holds the correct predictions."))
    parts.append(_img(os.path.join(run_dir, figures["per_class"]["file"]), "per-class accuracy",
                      "Share of each digit's test images classified correctly."))
    parts.append(_img(os.path.join(run_dir, figures["mistakes"]["file"]), "most confident mistakes",
                      f"{len(wrong):,} test images are misclassified; these {len(mistakes)} are the ones the "
                      f"model is most sure about."))

    parts.append("<h2>Model</h2>")
    srows = [[_e(i), _e(r["layer"]), _e("(N, " + ", ".join(str(d) for d in r["output_shape"]) + ")"),
              _e(f"{r['params']:,}"), _e(f"{r['flops']:,}")] for i, r in enumerate(summary.rows)]
    srows.append(["", "<b>total</b>", "", f"<b>{summary.total_params:,}</b>", f"<b>{summary.total_flops:,}</b>"])
    parts.append(f"<p>Input (N, {_e(', '.join(str(d) for d in summary.input_shape))}); FLOPs are per image, "
                 f"forward pass (a multiply-add counts 2).</p>")
    parts.append(_table(["#", "layer", "output shape", "params", "FLOPs"], srows, numeric=(0, 3, 4)))

    parts.append("<h2>Configuration and timings</h2>")
    if config:
        parts.append(_table(["setting", "value"], [[_e(k), _e(v if isinstance(v, (str, int, float, bool))
                                                              or v is None else json.dumps(v))]
                                                   for k, v in config.items()]))
    else:
        parts.append("<p class='na'>no configuration recorded (n/a)</p>")
    secs = [r["seconds"] for r in epochs if r["seconds"] is not None]
    timing_rows = [["training wall time", _fmt(wall, ".1f", " s")],
                   ["training throughput", _fmt(ips, ",.0f", " images/s")],
                   ["mean epoch time", _fmt(sum(secs) / len(secs) if secs else None, ".1f", " s")],
                   ["test accuracy / error (metrics.json)",
                    _fmt(None if m_acc is None else f"{m_acc:.2f}% / {m_err:.2f}%")],
                   ["best epoch (metrics.json)", _fmt(best_epoch)],
                   ["this report's confusion matrix equals metrics.json's",
                    _fmt(None if same_as_training is None else ("yes" if same_as_training else
                                                                "NO (other weights or test images?)"))],
                   [f"prediction of {len(y):,} test images (this report)", _fmt(predict_s, ".2f", " s")]]
    parts.append(_table(["", "value"], timing_rows))
    versions = _first(metrics, "versions")
    if isinstance(versions, dict) and versions:
        parts.append("<h3>Versions</h3>" + _table(["package", "version"], [[_e(k), _e(v)] for k, v in versions.items()]))
    log_path = os.path.join(run_dir, "train.log")
    if os.path.exists(log_path):
        try:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = f.readlines()[-40:]
            parts.append(f"<details><summary>train.log (last {len(tail)} lines)</summary>"
                         f"<pre>{_e(''.join(tail))}</pre></details>")
        except OSError:
            pass
    report_data["report_seconds"] = time.perf_counter() - t_start
    parts.append(_json_script(report_data))
    parts.append("</body></html>")

    out = os.fspath(out) if out is not None else os.path.join(run_dir, "report.html")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return out
