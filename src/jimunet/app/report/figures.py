"""The report's figures: one PNG each, drawn with matplotlib (imported only when drawing).

``draw_figures`` draws them all into the run directory: learning curves, first-layer filters,
feature maps of up to four convolution blocks, the confusion matrix, per-class accuracy and
the most confident mistakes; each ``_fig_*`` function draws one and returns its size in pixels.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ...backend import to_numpy
from ...layers import Conv2D
from ..inspect import conv_blocks, model_dtype, trace
from ..plotting import draw_channel_grid, grid_columns, new_figure, save_figure
from .data import _num, model_inputs

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


# -- drawing helpers ------------------------------------------------------------------------------

def _ema(values, span):
    """Bias-corrected exponential moving average (TensorBoard-style smoothing)."""
    beta = 1.0 - 2.0 / (span + 1.0)
    out, s = np.empty(len(values)), 0.0
    for t, v in enumerate(values, 1):
        s = beta * s + (1.0 - beta) * v
        out[t - 1] = s / (1.0 - beta ** t)
    return out


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


# -- the figures ---------------------------------------------------------------------------------

def _fig_curves(path, step_loss, epochs, l2=False):
    fig = new_figure(FIGURE_SIZES["curves"], DPI)
    ax1, ax2 = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    losses = np.array([v for v in (_num(s) for s in step_loss) if v is not None])
    what = "cross-entropy + L2 term" if l2 else "cross-entropy"
    if losses.size:
        _draw_step_losses(ax1, losses, len(epochs), what)
    else:
        ax1.text(0.5, 0.5, "no per-step losses in metrics.json", ha="center", va="center",
                 transform=ax1.transAxes, fontsize=11, color="gray")
    ax1.set_xlabel("training step", fontsize=10)
    if not ax1.get_ylabel():
        ax1.set_ylabel(f"training loss\n({what})", fontsize=10)
    ax1.set_title("Training loss per step", fontsize=12)
    _style_axes(ax1)
    _draw_epochs(ax2, epochs)
    fig.tight_layout()
    return save_figure(fig, path, DPI)


def _draw_step_losses(ax1, losses, n_ep, what):
    """Every step's loss, its moving average, the axis range and the epoch boundaries."""
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


def _draw_epochs(ax2, epochs):
    """The validation error after each epoch (left axis) and the learning rate (right axis)."""
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
        handles += _draw_lr(ax2, ep, lr)
    if handles:
        ax2.legend(handles=handles, fontsize=9, loc="upper right")
    ax2.set_title("Validation error and learning rate per epoch", fontsize=12)
    _style_axes(ax2)


def _draw_lr(ax2, ep, lr):
    ax3 = ax2.twinx()
    xs = [e for e, v in zip(ep, lr) if v is not None]
    ys = [v for v in lr if v is not None]
    handles = ax3.plot(xs, ys, "s--", color="#2ca02c", lw=1.5, ms=4, label="learning rate")
    ax3.set_ylabel("learning rate", fontsize=10, color="#2ca02c")
    ax3.tick_params(labelsize=9)
    if min(ys) > 0 and max(ys) / min(ys) > 10:
        ax3.set_yscale("log")
    else:
        ax3.set_ylim(0, max(ys) * 1.15 if max(ys) > 0 else 1)
    return handles


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


def _show_image(ax, image):
    """One test image as every view shows it: grayscale white on black, colour as it is (pixels
    0..255, or model inputs stretched to their own range)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 3:
        if img.dtype.kind in "ui" or (img.size and img.min() >= 0 and img.max() > 1):
            shown = np.clip(img, 0, 255).astype(np.uint8)
        else:
            lo, hi = float(img.min()), float(img.max())
            shown = (img - lo) / (hi - lo if hi > lo else 1.0)
        ax.imshow(shown, interpolation="nearest")
    else:
        ax.imshow(img[..., 0] if img.ndim == 3 else img, cmap="gray", interpolation="nearest")


def _tick_labels(ax, labels, fontsize):
    """Class names under the columns, slanted when they are words rather than digits."""
    long = max((len(str(t).split("\n")[0]) for t in labels), default=0) > 2
    ax.set_xticklabels(labels, fontsize=fontsize, rotation=35 if long else 0, ha="right" if long else "center",
                       rotation_mode="anchor")


def _fig_features(path, raw_image, maps, label, title_index, pred, true):
    size = _feature_size(maps)
    fig = new_figure(size, DPI)
    gs = fig.add_gridspec(1, 3, width_ratios=[1.4, 8.0, 0.18], wspace=0.06)
    ax0 = fig.add_subplot(gs[0, 0])
    _show_image(ax0, raw_image)
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
    _tick_labels(ax, class_names, 10)
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
    ax.axhline(overall, color="black", ls="--", lw=1, zorder=2)
    top = 100.0 + (100.0 - floor) * 0.1
    for i, (a, n) in enumerate(zip(acc, support)):
        if np.isfinite(a):
            # over the dashed line, on a white box: the line never crosses a label
            ax.text(i, a + (100.0 - floor) * 0.015, f"{a:.1f}", ha="center", va="bottom", fontsize=8.5, zorder=3,
                    bbox=dict(facecolor="white", edgecolor="none", pad=0.6))
    ax.set_ylim(floor, top)
    ax.set_xticks(idx)
    _tick_labels(ax, [f"{c}\n(n={int(s)})" for c, s in zip(class_names, support)], 8.5)
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
    words = max((len(class_names[m[k]]) for m in mistakes for k in ("true", "pred")), default=1)
    for k, m in enumerate(mistakes[:ncols * nrows]):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        _show_image(ax, x[m["index"]])
        true, pred = class_names[m["true"]], class_names[m["pred"]]
        # words (CIFAR-10's "automobile") leave no room for "true"/"pred" in a tile: the title says it
        what = f"true {true} \u2192 pred {pred}" if words <= 2 else f"{true} \u2192 {pred}"
        ax.set_title(f"{what}\np = {m['prob']:.3f}   #{m['index']}", fontsize=9.5 if words <= 8 else 7.5,
                     color="#b00000", pad=3)
        ax.set_xticks([])
        ax.set_yticks([])
    arrow = "" if words <= 2 else "; true \u2192 predicted"
    fig.suptitle("Most confident mistakes: test images the model gets wrong with the highest probability "
                 f"(p = probability of the predicted class{arrow})", fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.82, bottom=0.01, wspace=0.08, hspace=0.42)
    return save_figure(fig, path, DPI)


# -- all of them ---------------------------------------------------------------------------------

def _draw(figures, run_dir, name, filename, draw, *args):
    """Draw one figure into ``run_dir`` and record its file and size in ``figures``."""
    path = os.path.join(run_dir, filename)
    w, h = draw(path, *args)
    figures[name] = {"file": filename, "width": w, "height": h}
    return path


def first_conv(model):
    """The model's first Conv2D layer (None without one): its filters are drawn."""
    return next((layer for layer in model.layers if isinstance(layer, Conv2D)), None)


def _feature_figures(figures, run_dir, model, x, y, pred, class_names=None, normalize=None):
    """Feature maps of test image 0 after each of the first four conv blocks (64 channels at
    most); returns ``[(figure name, block label, maps shape)]``."""
    feature_figs = []
    names = list(class_names) if class_names is not None else [str(k) for k in range(int(max(pred.max(), y.max())) + 1)]
    blocks = conv_blocks(model)
    if blocks:
        sample = 0
        outs = trace(model, model_inputs(x[sample:sample + 1], normalize, model_dtype(model)))
        for b, (_, shown, label) in enumerate(blocks[:4], 1):
            maps = np.asarray(to_numpy(outs[shown]))[0]
            if maps.ndim != 3:
                continue
            maps = maps[:, :, :64]
            name = f"features_{b}"
            _draw(figures, run_dir, name, f"report-features-{b}.png", _fig_features, x[sample], maps,
                  f"Block {b}: {label}", sample, names[int(pred[sample])], names[int(y[sample])])
            feature_figs.append((name, label, maps.shape))
    return feature_figs


def draw_figures(run_dir, model, x, y, res, step_loss, epochs, l2):
    """Every figure of the report, drawn into ``run_dir``.

    Args:
        res: the ``data.Predictions`` of ``model`` on ``(x, y)``.
        step_loss, epochs, l2: the per-step losses, per-epoch rows and whether the loss has
            an L2 term, as ``data`` reads them from metrics.json.

    Returns:
        ``(figures, feature_figs)``: ``{name: {"file", "width", "height"}}`` in drawing order,
        and ``[(name, block label, maps shape)]`` of the feature-map figures.
    """
    figures = {}
    _draw(figures, run_dir, "curves", "report-curves.png", _fig_curves, step_loss, epochs, l2)
    conv = first_conv(model)
    if conv is not None:
        _draw(figures, run_dir, "filters", "report-filters.png", _fig_filters, conv)
    feature_figs = _feature_figures(figures, run_dir, model, x, y, res.pred, res.class_names, res.normalize)
    _draw(figures, run_dir, "confusion", "report-confusion.png", _fig_confusion, res.cm, res.class_names)
    _draw(figures, run_dir, "per_class", "report-per-class.png", _fig_per_class, res.cm, res.class_names)
    _draw(figures, run_dir, "mistakes", "report-mistakes.png", _fig_mistakes, x, res.mistakes, res.class_names)
    return figures, feature_figs
