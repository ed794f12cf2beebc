"""Walk one image through a model, block by block, and say what each block does to it.

``explain(model, image)`` prints, for every layer of a ``Sequential``: its input and output
shapes, for ``Conv2D`` the padding, the im2col matrix and GEMM it turns into and which
algorithm (im2col or Winograd) ran, with its multiplication count next to im2col's, for
``Dense`` its GEMM, for pooling the window and stride, the FLOPs and the range of the
output; then the softmax top-3. With ``out_dir`` it also draws every intermediate result
(feature maps as grids of channels, vectors as bar plots), which needs matplotlib (the
``plot`` extra); the text part needs NumPy only.

The command line (``jimunet explain``) is built on ``explain``; this module has no
command-line code.

The output directory follows the run directories' rule: jimunet writes only into a new or
empty directory, or one that ``explain`` wrote before (it holds ``explain.json``, which lists
the files explain wrote there), and replaces only files it wrote; anything else is refused
(``OutputDirError``) before any file is written. Every PNG is written atomically.
"""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

from ..backend import to_device, to_numpy
from ..data import Normalize
from ..data.images import looks_like_pixels, preprocess
from ..functional.softmax import softmax
from ..layers import Add, BatchNorm, Concatenate, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU
from .inspect import (POOLS, _block_details, _conv_algorithm, _run_step, as_single_image, kind_of, model_dtype,
                      steps)
from ..serialization import WriteError, atomic_writer, temp_file_pattern
from .plotting import draw_channel_grid, grid_columns, new_figure, require_matplotlib, save_figure, shape_str

__all__ = ["explain", "walk", "Explanation", "OutputDirError", "MARKER"]

MARKER = "explain.json"  # what marks a directory explain wrote, and lists the files it wrote there
_FORMAT = "jimunet-explain"


class OutputDirError(ValueError):
    """An ``out_dir`` that explain may not write into: it holds files jimunet did not write."""


class Explanation(list):
    """The per-block records of ``explain`` (a list of dicts), plus the final prediction:
    ``probabilities`` (softmax of the last output, or None) and ``top`` [(class, prob), ...]."""

    probabilities = None
    top: list = []
    input_record: dict = {}
    inputs = None     # set by walk: the scaled input and every layer's output, one sample
    outputs: list = []


def _stats(a):
    a = np.asarray(a, dtype=np.float64)
    return float(a.min()), float(a.max()), float(a.mean())


# -- the text -----------------------------------------------------------------------------------

_NOTES = (  # one fixed line for the kinds without numbers of their own
    (Flatten, "reshape  C order (h, w, c), no arithmetic"),
    (Add, "add      elementwise sum of the inputs (a shortcut joins here)"),
    (Concatenate, "concat   inputs joined along the channel axis"),
    (GlobalAvgPool2D, "mean     over height and width, per channel"),
)


def _conv_lines(rec, d, outs):
    """Padding, im2col, GEMM and the algorithm of a Conv2D record."""
    (pt, pb), (pl, pr) = d["padding"]
    kh, kw = d["kernel"]
    cin = rec["input_shape"][-1]
    oh, ow = rec["output_shape"][:2]
    (m, k), (_, n) = d["gemm"]
    lines = [f"padding  top {pt}, bottom {pb}, left {pl}, right {pr} (zeros) -> {shape_str(d['padded_shape'])}",
             f"im2col   {d['im2col'][0]} x {d['im2col'][1]}  (rows = {oh}*{ow} output positions, "
             f"cols = {kh}*{kw}*{cin} window values; stride {d['stride'][0]}x{d['stride'][1]})",
             f"GEMM     M x K . K x N = ({m} x {k}) . ({k} x {n}) -> {m} x {n}, "
             f"reshaped to {outs}  (what im2col runs)"]
    if d.get("algorithm") == "winograd":
        (mh, mw), a = d["tile"], (d["tile"][0] + kh - 1) * (d["tile"][1] + kw - 1)
        lines.append(f"algo     winograd F({mh}x{mw}, {kh}x{kw}): {a} products per {mh}x{mw} tile and "
                     f"channel pair; {d['multiplies']:,} multiplies vs im2col's "
                     f"{d['multiplies_im2col']:,} ({d['multiplies_im2col'] / d['multiplies']:.2f}x fewer)")
    elif "algorithm" in d:
        lines.append(f"algo     im2col: {d['multiplies']:,} multiplies")
    return lines


def _kind_lines(rec, layer, outs):
    """The lines that depend on the layer's kind (none for an elementwise activation)."""
    d = rec["details"]
    if isinstance(layer, Conv2D):
        return _conv_lines(rec, d, outs)
    if isinstance(layer, Dense):
        (m, k), (_, n) = d["gemm"]
        return [f"GEMM     M x K . K x N = ({m} x {k}) . ({k} x {n}) -> {m} x {n}"]
    if isinstance(layer, POOLS):
        (pt, pb), (pl, pr) = d["padding"]
        what = "max" if isinstance(layer, MaxPool2D) else "mean"
        return [f"window   {d['window'][0]}x{d['window'][1]} ({what}), stride {d['stride'][0]}x"
                f"{d['stride'][1]}, padding top {pt}, bottom {pb}, left {pl}, right {pr}"]
    if isinstance(layer, Dropout):
        return [f"dropout  rate {d['rate']:g} in training; identity here (evaluation)"]
    if isinstance(layer, BatchNorm):
        return [f"norm     (x - running_mean) / sqrt(running_var + {d['eps']:g}) * gamma + beta per channel "
                f"(running statistics: evaluation)"]
    return [line for cls, line in _NOTES if isinstance(layer, cls)][:1]


def _describe_lines(rec, layer):
    """The indented detail lines printed under a block's name (``layer``: the block's layer)."""
    many = rec["input_shape"] and isinstance(rec["input_shape"][0], (list, tuple))
    ins = " + ".join(shape_str(s) for s in rec["input_shape"]) if many else shape_str(rec["input_shape"])
    outs = shape_str(rec["output_shape"])
    lines = []
    if rec.get("reads") is not None:
        lines.append("reads    " + ", ".join("input" if j < 0 else f"[{j}]" for j in rec["reads"]))
    lines.append(f"shape    {ins} -> {outs}")
    lines += _kind_lines(rec, layer, outs)
    if rec.get("shared"):
        lines.append("shared   the same layer object (weights) as an earlier step")
    if rec["params"]:
        lines.append(f"params   {rec['params']:,}")
    lines.append(f"FLOPs    {rec['flops']:,}")
    extra = f"  ({100 * rec['zero_fraction']:.1f}% exactly 0)" if rec.get("zero_fraction") is not None else ""
    lines.append(f"output   min {rec['min']:.4g}  max {rec['max']:.4g}  mean {rec['mean']:.4g}{extra}")
    return lines


class _Stdout:
    """Default of ``file``: whatever ``sys.stdout`` is at call time (so redirection works)."""

    def __repr__(self):
        return "sys.stdout"


_STDOUT = _Stdout()


def walk(model, image, normalize=None) -> Explanation:
    """The data of ``explain``, printing nothing: one image through every block of ``model``.

    Returns the same ``Explanation`` as ``explain(model, image, file=None)`` (one record per
    layer with shapes, params, FLOPs, value range and ``details``; ``probabilities``, ``top``,
    ``input_record``) plus ``inputs`` (the scaled model input, one sample) and ``outputs``
    (every layer's output for the image, host NumPy arrays without the batch axis). The
    layers run in evaluation mode, one after the other, and keep their usual caches: the
    caller must not run the same model on another thread meanwhile. ``normalize``: the model's
    ``Normalize`` (``modelinfo``) for pixels; None or MNIST's: ``(x - 127.5) / 255``.
    """
    raw = as_single_image(image)
    x = _inputs(raw, normalize, model_dtype(model))[None]
    try:
        in_shape = tuple(model.summary(x.shape[1:]).input_shape)
    except ValueError as e:
        raise ValueError(f"explain: the model cannot take an image of shape {x.shape[1:]}: {e}") from None

    result = Explanation()
    lo, hi, mean = _stats(x)
    result.input_record = {"shape": list(in_shape), "min": lo, "max": hi, "mean": mean,
                           "scaled": looks_like_pixels(raw)}
    result.raw, result.inputs, result.outputs = raw, x[0], []
    walk_steps = steps(model)
    x_dev = to_device(x, model.device)  # the input on the model's device (x itself on the CPU)
    graph = hasattr(model, "graph_steps")
    outs, seen = [], set()  # every step's output (on the model's device), the layers met so far
    for i, (node, layer, ins) in enumerate(walk_steps):
        multi = layer.multi_input
        args = [x_dev if j < 0 else outs[j] for j in ins]
        cur_shape = [tuple(a.shape[1:]) for a in args] if multi else tuple(args[0].shape[1:])
        details = {} if multi else _block_details(layer, cur_shape, args[0])
        y = _run_step(layer, ins, outs, x_dev)
        outs.append(y)
        if isinstance(layer, Conv2D):
            details.update(_conv_algorithm(layer, cur_shape))
        y_np = np.array(to_numpy(y))  # a copy: a layer may reuse its output buffer on the next call
        lo, hi, mean = _stats(y_np)
        shared = id(layer) in seen
        seen.add(id(layer))
        result.append({"index": i, "name": layer.describe(), "kind": kind_of(layer),
                       "input_shape": [list(s) for s in cur_shape] if multi else list(cur_shape),
                       "output_shape": list(y.shape[1:]),
                       "params": 0 if shared else int(sum(p.size for p in layer.parameters())),
                       "flops": int(layer.flops(cur_shape)), "min": lo, "max": hi, "mean": mean,
                       "zero_fraction": float((y_np == 0).mean()) if isinstance(layer, ReLU) else None,
                       "details": details, "node": node, "reads": ins if graph else None, "shared": shared})
        result.outputs.append(y_np[0])

    out = result.outputs[-1] if result.outputs else np.asarray(x)[0]
    if out.ndim == 1 and out.size >= 2:
        probs = softmax(out.astype(np.float64))
        order = np.argsort(-probs, kind="stable")[:3]
        result.probabilities = probs
        result.top = [(int(k), float(probs[k])) for k in order]
    return result


def _inputs(raw, normalize, dtype):
    """One image as the model's input: pixels normalised (MNIST's way unless ``normalize`` says
    otherwise), floats within [0, 1] taken as inputs already."""
    if normalize is None or normalize == Normalize.mnist():
        return preprocess(raw, dtype, auto=True)
    return normalize(raw, dtype) if looks_like_pixels(raw) else np.asarray(raw).astype(dtype, copy=False)


def _scaling(normalize) -> str:
    if normalize is None or normalize == Normalize.mnist():
        return "(x - 127.5) / 255"
    mean, std = (", ".join(f"{v:.4g}" for v in vs) for vs in (normalize.mean, normalize.std))
    return f"(x - mean) / std per channel, mean {mean}, std {std}"


def explain(model, image, out_dir=None, file=_STDOUT, class_names=None, dpi: int = 100, normalize=None):
    """Walk one image through ``model`` block by block, printing what each block does.

    Args:
        model: a ``jimunet.Sequential`` (any stack of jimunet layers).
        image: one sample, e.g. ``(28, 28, 1)`` (``(28, 28)`` and ``(1, 28, 28, 1)`` work too).
            Pixels 0..255 (uint8, or floats above 1) are scaled as in training,
            ``(x - 127.5) / 255``; floats within [-0.5, 1] are used as they are.
        out_dir: if given, write ``input.png`` and one PNG per layer (``layer-00-Conv2D.png``,
            ...) there: feature maps as grids of channels, vectors as bar plots. Needs
            matplotlib (``pip install 'jimunet[plot]'``); raises ``PlotDependencyError``
            before doing anything if it is missing. It must be new, empty, or a directory
            explain wrote (``explain.json``), else ``OutputDirError`` (before anything is
            written); only files explain wrote there are replaced.
        file: where the text goes (default ``sys.stdout``; ``None``: print nothing).
        class_names: labels for the top-3 (default: the class indices).
        dpi: resolution of the PNGs.
        normalize: the model's ``data.Normalize`` for pixels (``modelinfo.model_info(model)
            .normalize``); None: MNIST's ``(x - 127.5) / 255``.

    Returns:
        An ``Explanation``: a list with one dict per layer (``index``, ``name``, ``kind``,
        ``input_shape``, ``output_shape``, ``params``, ``flops``, ``min``, ``max``, ``mean``,
        ``details`` — padding, ``im2col`` shape and ``gemm`` sizes, ``algorithm``, ``tile``,
        ``multiplies`` and ``multiplies_im2col`` (per image) for Conv2D, ``gemm`` for
        Dense, ``window``/``stride``/``padding`` for pooling — and ``png`` when drawn), with
        ``.probabilities`` and ``.top`` (the softmax top-3 as ``[(class, prob), ...]``).
        ``walk`` computes it without printing or drawing.

    Example:
        >>> import numpy as np, jimunet as jn
        >>> from jimunet.app.explain import explain
        >>> recs = explain(jn.models.mnist_cnn(rng=0), np.zeros((28, 28, 1), np.uint8), file=None)
        >>> recs[0]["details"]["im2col"], recs[3]["details"]["im2col"]
        ([784, 25], [196, 800])
    """
    if out_dir is not None:
        require_matplotlib("explain --out (saving the intermediate images)")
        written = _own_files(out_dir)  # refuses a directory that is not explain's before anything is written
    if file is _STDOUT:
        file = sys.stdout
    say = (lambda s="": print(s, file=file)) if file is not None else (lambda s="": None)

    result = walk(model, image, normalize)
    if out_dir is not None:
        _claim(out_dir, written, ["input.png"] + [_png_name(rec) for rec in result])
    inp = result.input_record
    scaled = f" (pixels 0..255 scaled by {_scaling(normalize)})" if inp["scaled"] else ""
    say(f"{model.describe() if hasattr(model, 'describe') else type(model).__name__}: one image, "
        f"evaluation mode")
    say(f"input    {shape_str(inp['shape'])}  min {inp['min']:.4g}  max {inp['max']:.4g}  "
        f"mean {inp['mean']:.4g}{scaled}")
    if out_dir is not None:
        p = os.path.join(out_dir, "input.png")
        _plot_input(result.raw, result.inputs, p, dpi)
        inp["png"] = p

    width = len(str(len(result) - 1))
    layers = [layer for _, layer, _ in steps(model)]
    for rec, y, layer in zip(result, result.outputs, layers):
        i, node = rec["index"], rec["node"]
        say(f"[{i:>{width}}] {rec['name']}" + (f"  ({node})" if node else ""))
        for line in _describe_lines(rec, layer):
            say(" " * (width + 3) + line)
        if out_dir is not None:
            p = os.path.join(out_dir, _png_name(rec))
            _plot_output(rec, layer, y, p, dpi, last=i == len(result) - 1, class_names=class_names)
            rec["png"] = p

    total = sum(r["flops"] for r in result)
    say(f"total    {total:,} FLOPs, {sum(r['params'] for r in result):,} parameters")
    if result.top:
        names = class_names or [str(k) for k in range(len(result.probabilities))]
        say("top-3    (softmax of the last layer's output)")
        width = max(5, *(len(str(names[k])) for k, _ in result.top))
        for k, p in result.top:
            say(f"         {names[k]:>{width}}  {p:7.2%}")
    return result


# -- the output directory ---------------------------------------------------------------------

def _png_name(rec) -> str:
    return f"layer-{rec['index']:02d}-{rec['kind']}.png"


def _own_files(out_dir) -> list:
    """The files explain wrote in ``out_dir`` before (``[]`` for a new or empty directory); raises
    ``OutputDirError`` for a directory explain did not write or for a file in the way."""
    out_dir = os.fspath(out_dir)
    if not os.path.lexists(out_dir):
        return []
    if not os.path.isdir(out_dir):
        raise OutputDirError(f"{out_dir} exists and is not a directory; choose a new or empty directory for --out")
    entries = sorted(os.listdir(out_dir))
    if not entries:
        return []
    try:
        with open(os.path.join(out_dir, MARKER), "rb") as f:
            marker = json.loads(f.read(1 << 20))
        if isinstance(marker, dict) and marker.get("format") == _FORMAT and \
                all(isinstance(n, str) for n in marker.get("files", ())):
            return list(marker.get("files", ()))
    except (OSError, ValueError, RecursionError):
        pass
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise OutputDirError(f"{out_dir} is not empty ({shown}) and is not a directory jimunet explain wrote (no "
                         f"{MARKER} of its own); jimunet writes only into a new or empty directory or one of its "
                         f"own, so that none of your files is overwritten. Choose a new or empty directory for --out")


def _claim(out_dir, written: list, names: list) -> None:
    """Refuse a file in the way (one explain did not write); then record ``names`` in the marker."""
    out_dir = os.fspath(out_dir)
    foreign = [n for n in names if n not in written and os.path.lexists(os.path.join(out_dir, n))]
    if foreign:
        raise OutputDirError(f"{out_dir} holds {', '.join(foreign)}, which jimunet explain did not write; it is "
                             f"not overwritten. Choose a new or empty directory for --out")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise WriteError(out_dir, e) from None
    leftovers = [temp_file_pattern(n) for n in names]
    for entry in os.listdir(out_dir):  # temporary files of an earlier explain that was cut short
        if any(p.fullmatch(entry) for p in leftovers):
            try:
                os.unlink(os.path.join(out_dir, entry))
            except OSError:
                pass
    files = sorted(set(written) | set(names))
    with atomic_writer(os.path.join(out_dir, MARKER)) as f:
        f.write((json.dumps({"format": _FORMAT, "version": 1, "files": files}, indent=1) + "\n").encode())


# -- explain's figures ------------------------------------------------------------------------

def _plot_input(raw, scaled, path, dpi):
    fig = new_figure((3.2, 3.4), dpi)
    ax = fig.add_subplot()
    img = np.asarray(raw)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[-1] == 3:
        if looks_like_pixels(img):
            ax.imshow(np.clip(img, 0, 255).astype(np.uint8), interpolation="nearest")
        else:
            lo, hi = float(img.min()), float(img.max())
            ax.imshow((img - lo) / (hi - lo if hi > lo else 1.0), interpolation="nearest")
    elif img.ndim == 3:
        img = img[..., 0]
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", interpolation="nearest")
    ax.set_title(f"input {shape_str(scaled.shape)}", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi)


def _plot_output(rec, layer, y, path, dpi, last=False, class_names=None):
    """One step's output ``y`` (one sample) as a PNG: a channel grid, a bar plot or a note."""
    title = f"[{rec['index']}] {rec['name']}\noutput {shape_str(rec['output_shape'])}, " \
            f"min {rec['min']:.3g}, max {rec['max']:.3g}, mean {rec['mean']:.3g}"
    if y.ndim == 3:
        fig = _plot_maps(title, y, dpi)
    elif y.ndim == 1:
        fig = _plot_vector(title, isinstance(layer, Dense), y, dpi, last, class_names)
    else:
        fig = new_figure((6.0, 2.0), dpi)
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, f"{shape_str(rec['output_shape'])}: no picture for a {y.ndim}-D output",
                ha="center", va="center")
        ax.axis("off")
        ax.set_title(title, fontsize=10)
    save_figure(fig, path, dpi)


def _plot_maps(title, y, dpi):
    h, w, c = y.shape
    ncols = grid_columns(c)
    nrows = math.ceil(c / ncols)
    aspect = (nrows * h) / (ncols * w)
    fig = new_figure((9.0, min(12.0, max(2.6, 8.0 * aspect + 1.3))), dpi)
    ax = fig.add_subplot()
    im = draw_channel_grid(ax, y)
    ax.set_title(title + "\none tile per channel (index in the corner), shared colour scale", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02).ax.tick_params(labelsize=8)
    fig.tight_layout()
    return fig


def _plot_vector(title, dense, y, dpi, last, class_names):
    """Bars of a vector; the last layer's output (``last``) also gets its softmax below."""
    n = y.size
    small = n <= 64
    two = last and n >= 2
    fig = new_figure((9.0, 5.6 if two else 3.4), dpi)
    axes = [fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)] if two else [fig.add_subplot()]
    ax = axes[0]
    idx = np.arange(n)
    colors = np.where(y >= 0, "#c0392b", "#2c7bb6")
    ax.bar(idx, y, width=0.8 if small else 1.0, color=colors, linewidth=0)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlim(-0.7 if small else -0.5, n - 0.3 if small else n - 0.5)
    ax.set_xlabel("class" if two else "index")
    ax.set_ylabel("logit" if two and dense else "value")
    ax.set_title(title, fontsize=10)
    if small:
        ax.set_xticks(idx)
        if two and class_names:
            ax.set_xticklabels(class_names)
    if two:
        _plot_softmax(axes[1], y, idx, small, class_names)
    for a in axes:
        a.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_softmax(ax2, y, idx, small, class_names):
    probs = softmax(y.astype(np.float64))
    best = int(np.argmax(probs))
    ax2.bar(idx, probs, width=0.8 if small else 1.0,
            color=["#27ae60" if k == best else "#7f8c8d" for k in idx])
    ax2.set_ylim(0, 1.08)
    ax2.set_ylabel("probability")
    ax2.set_xlabel("class")
    ax2.set_title("softmax of this output (the top-3 comes from it)", fontsize=10)
    if small:
        ax2.set_xticks(idx)
        if class_names:
            ax2.set_xticklabels(class_names)
        for k in idx:
            if probs[k] >= 0.01:
                ax2.text(k, probs[k] + 0.02, f"{probs[k]:.2f}", ha="center", fontsize=8)
