"""Walk one image through a model, block by block, and say what each block does to it.

``explain(model, image)`` prints, for every layer of a ``Sequential``: its input and output
shapes, for ``Conv2D`` the padding, the im2col matrix and GEMM it turns into and which
algorithm (im2col or Winograd) ran, with its multiplication count next to im2col's, for
``Dense`` its GEMM, for pooling the window and stride, the FLOPs and the range of the
output; then the softmax top-3. With ``out_dir`` it also draws every intermediate result
(feature maps as grids of channels, vectors as bar plots), which needs matplotlib (the
``plot`` extra); the text part needs NumPy only.

Command line (registered by ``jimunet.cli``)::

    jimunet explain                       # untrained mnist_cnn, test image 0
    jimunet explain runs/X/model.npz --index 7 --out explain-7/
    jimunet explain runs/X/model.npz digit.npy
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from .backend import to_device, to_numpy
from .functional.im2col import im2col
from .functional.softmax import softmax

PLOT_HINT = "pip install 'jimunet[plot]'"

_ACTIVATIONS = ("ReLU", "LeakyReLU", "Sigmoid", "Tanh")


class PlotDependencyError(RuntimeError):
    """matplotlib (the optional ``plot`` extra) is needed for figures but is not installed."""


def require_matplotlib(what: str = "drawing figures"):
    """Import matplotlib for off-screen (Agg) drawing, or raise ``PlotDependencyError``.

    Returns ``(matplotlib, Figure)``. Figures are drawn on ``matplotlib.figure.Figure``
    objects, rendered by the Agg canvas, without pyplot: nothing global changes (no
    backend switch, no open-figure registry), so it works headless and inside notebooks.
    """
    try:
        import matplotlib  # noqa: F401  (checked first: sys.modules["matplotlib"] = None must fail here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotDependencyError(f"{what} needs matplotlib, which is not installed. Install it with:\n"
                                  f"    {PLOT_HINT}") from None
    return matplotlib, Figure


def new_figure(figsize, dpi: int = 100):
    """A pyplot-free Figure with an Agg canvas (``fig.savefig`` then writes PNGs)."""
    _, Figure = require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, dpi: int = 100):
    """Save at exactly ``figsize × dpi`` pixels (no bbox cropping) and return the size."""
    fig.savefig(path, dpi=dpi, facecolor="white")
    w, h = fig.get_size_inches()
    return int(round(w * dpi)), int(round(h * dpi))


# -- preprocessing and tracing ---------------------------------------------------------------

def looks_like_pixels(x) -> bool:
    """True for MNIST pixels 0..255 (integers, or floats above 1); False for model inputs."""
    x = np.asarray(x)
    if x.dtype.kind in "uib":
        return True
    return bool(x.size) and float(np.nanmax(x)) > 1.0


def preprocess(x, dtype=np.float32):
    """Images as model inputs: pixels 0..255 (integer arrays, or floats with values above 1,
    like ``jimunet.data.images.load_digit_image`` returns) become ``(x - 127.5) / 255``, the
    training scaling; other floats are taken as already scaled and only cast to ``dtype``."""
    x = np.asarray(to_numpy(x))
    if looks_like_pixels(x):
        return (x.astype(dtype) - np.asarray(127.5, dtype)) / np.asarray(255, dtype)
    return x.astype(dtype, copy=False)


def as_single_image(image, input_shape=None):
    """``image`` as one sample: (H, W) gets a channel axis, (1, H, W, C) loses its batch axis."""
    a = np.asarray(to_numpy(image))
    if input_shape is not None and a.shape == tuple(input_shape):
        return a
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2 and (input_shape is None or len(input_shape) == 3):
        a = a[..., None]
    if input_shape is not None and a.shape != tuple(input_shape):
        raise ValueError(f"image has shape {np.shape(image)}, the model expects {tuple(input_shape)}")
    return a


def model_dtype(model):
    params = model.parameters()
    return params[0].data.dtype if params else np.dtype(np.float32)


def steps(model):
    """``[(name, layer, inputs)]`` in the order the model runs: for a ``Sequential`` its layers
    (each reading the one before), for a graph ``jn.Model`` its nodes; ``inputs`` are the
    indices of the steps read, ``-1`` being the model's input, and ``name`` is the node's name
    (None in a Sequential)."""
    if hasattr(model, "graph_steps"):
        index = {name: -1 for name in model.input_names}
        out = []
        for i, (name, layer, ins) in enumerate(model.graph_steps()):
            out.append((name, layer, [index[n] for n in ins]))
            index[name] = i
        return out
    return [(None, layer, [i - 1]) for i, layer in enumerate(model.layers)]


def _run_step(layer, ins, vals, x):
    args = [x if j < 0 else vals[j] for j in ins]
    return layer.forward(args if getattr(layer, "multi_input", False) else args[0], training=False)


def trace(model, x):
    """Outputs of every step (layer, or node of a graph) for the batch ``x`` in evaluation mode."""
    outs = []
    for _, layer, ins in steps(model):
        outs.append(_run_step(layer, ins, outs, x))
    return outs


def conv_blocks(model):
    """``[(conv_index, shown_index, label)]``: each Conv2D and the step whose output shows it
    (the activation right after it when there is one, else the convolution itself)."""
    blocks = []
    walk = steps(model)
    for i, (_, layer, _) in enumerate(walk):
        if type(layer).__name__ != "Conv2D":
            continue
        kh, kw = layer.kernel_size
        label = f"Conv2D {layer.in_channels}->{layer.out_channels}, {kh}x{kw}"
        shown = i
        if i + 1 < len(walk) and type(walk[i + 1][1]).__name__ in _ACTIVATIONS and walk[i + 1][2] == [i]:
            shown = i + 1
            label += f" -> {type(walk[i + 1][1]).__name__}"
        blocks.append((i, shown, label))
    return blocks


def shape_str(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


# -- drawing helpers shared with jimunet.report ----------------------------------------------

def mosaic(maps, ncols, gap: int = 1):
    """Tile ``maps`` (H, W, C) into one 2-D array with NaN gaps, ``ncols`` channels per row.

    Returns ``(tiled, positions)``, ``positions[c] = (row0, col0)`` of channel ``c``'s tile.
    """
    h, w, c = maps.shape
    nrows = math.ceil(c / ncols)
    out = np.full((nrows * (h + gap) - gap, ncols * (w + gap) - gap), np.nan, dtype=np.float64)
    pos = []
    for k in range(c):
        r0, c0 = (k // ncols) * (h + gap), (k % ncols) * (w + gap)
        out[r0:r0 + h, c0:c0 + w] = maps[:, :, k]
        pos.append((r0, c0))
    return out, pos


def grid_columns(c: int) -> int:
    """Columns for a channel grid: 8 for 32 or 64 channels, near-square otherwise."""
    if c <= 8:
        return c
    return 8 if c <= 64 else math.ceil(math.sqrt(c))


def color_scale(a):
    """``(cmap, vmin, vmax)``: a sequential map from 0 for non-negative data, else a diverging
    map centred at 0, so that zero looks the same in every panel of a figure."""
    a = np.asarray(a, dtype=np.float64)
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if lo >= 0:
        return "magma", 0.0, hi if hi > 0 else 1.0
    m = max(abs(lo), abs(hi)) or 1.0
    return "RdBu_r", -m, m


def draw_channel_grid(ax, maps, label_color="white", fontsize=7, ncols=None):
    """Draw the channels of ``maps`` (H, W, C) as one tiled image with each channel's index
    in its corner; returns the AxesImage (for a colour bar)."""
    import matplotlib

    h, w, c = maps.shape
    ncols = ncols or grid_columns(c)
    gap = max(1, h // 14)
    tiled, pos = mosaic(maps, ncols, gap)
    cmap_name, vmin, vmax = color_scale(maps)
    cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="white")
    im = ax.imshow(tiled, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if h >= 7:
        for k, (r0, c0) in enumerate(pos):
            ax.text(c0 + 0.3, r0 + 0.3, str(k), color=label_color, fontsize=fontsize, va="top", ha="left",
                    bbox=dict(boxstyle="square,pad=0.1", fc="black", ec="none", alpha=0.55))
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    return im


# -- explain ----------------------------------------------------------------------------------

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


def _block_details(layer, in_shape, x):
    """Layer-kind specific facts: padding, im2col and GEMM sizes, pooling windows."""
    kind = type(layer).__name__
    d = {}
    if kind == "Conv2D":
        pads, (oh, ow) = layer._geometry(in_shape[:2])
        (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
        cin, cout = layer.in_channels, layer.out_channels
        from .functional.padding import pad_nhwc

        xpad = pad_nhwc(x, pads)
        cols = im2col(xpad, layer.kernel_size, layer.stride, (oh, ow))  # the real thing, one image
        d.update(padding=[list(pads[0]), list(pads[1])], padded_shape=list(xpad.shape[1:]),
                 kernel=[kh, kw], stride=[sh, sw], im2col=list(cols.shape),
                 gemm=[[oh * ow, kh * kw * cin], [kh * kw * cin, cout]])
    elif kind == "Dense":
        d.update(gemm=[[1, layer.in_features], [layer.in_features, layer.out_features]])
    elif hasattr(layer, "pool_size"):
        pads, _ = layer._geometry(in_shape[:2])
        d.update(window=list(layer.pool_size), stride=list(layer.stride),
                 padding=[list(pads[0]), list(pads[1])])
    elif kind == "Dropout":
        d.update(rate=float(getattr(layer, "rate", float("nan"))))
    elif kind == "BatchNorm":
        d.update(eps=layer.eps, momentum=layer.momentum)
    return d


def kind_of(layer) -> str:
    return type(layer).__name__


def _conv_algorithm(layer, in_shape):
    """Which algorithm the Conv2D's forward pass just ran, and its multiplications per image
    next to im2col's (the direct count)."""
    name, tile = layer.last_algorithm
    return {"algorithm": name, "tile": None if tile is None else list(tile),
            "multiplies": int(layer.multiplications(in_shape, (name, tile))),
            "multiplies_im2col": int(layer.multiplications(in_shape, ("im2col", None)))}


def _describe_lines(rec):
    """The indented detail lines printed under a block's name."""
    kind, d = rec["kind"], rec["details"]
    many = rec["input_shape"] and isinstance(rec["input_shape"][0], (list, tuple))
    ins = " + ".join(shape_str(s) for s in rec["input_shape"]) if many else shape_str(rec["input_shape"])
    outs = shape_str(rec["output_shape"])
    lines = []
    if rec.get("reads") is not None:
        lines.append("reads    " + ", ".join("input" if j < 0 else f"[{j}]" for j in rec["reads"]))
    lines.append(f"shape    {ins} -> {outs}")
    if kind == "Conv2D":
        (pt, pb), (pl, pr) = d["padding"]
        kh, kw = d["kernel"]
        cin = rec["input_shape"][-1]
        oh, ow = rec["output_shape"][:2]
        (m, k), (_, n) = d["gemm"]
        lines.append(f"padding  top {pt}, bottom {pb}, left {pl}, right {pr} (zeros) -> "
                     f"{shape_str(d['padded_shape'])}")
        lines.append(f"im2col   {d['im2col'][0]} x {d['im2col'][1]}  (rows = {oh}*{ow} output positions, "
                     f"cols = {kh}*{kw}*{cin} window values; stride {d['stride'][0]}x{d['stride'][1]})")
        lines.append(f"GEMM     M x K . K x N = ({m} x {k}) . ({k} x {n}) -> {m} x {n}, "
                     f"reshaped to {outs}  (what im2col runs)")
        if d.get("algorithm") == "winograd":
            (mh, mw), a = d["tile"], (d["tile"][0] + kh - 1) * (d["tile"][1] + kw - 1)
            lines.append(f"algo     winograd F({mh}x{mw}, {kh}x{kw}): {a} products per {mh}x{mw} tile and "
                         f"channel pair; {d['multiplies']:,} multiplies vs im2col's "
                         f"{d['multiplies_im2col']:,} ({d['multiplies_im2col'] / d['multiplies']:.2f}x fewer)")
        elif "algorithm" in d:
            lines.append(f"algo     im2col: {d['multiplies']:,} multiplies")
    elif kind == "Dense":
        (m, k), (_, n) = d["gemm"]
        lines.append(f"GEMM     M x K . K x N = ({m} x {k}) . ({k} x {n}) -> {m} x {n}")
    elif "window" in d:
        (pt, pb), (pl, pr) = d["padding"]
        what = "max" if kind.startswith("Max") else "mean" if kind.startswith("Avg") else "pool"
        lines.append(f"window   {d['window'][0]}x{d['window'][1]} ({what}), stride {d['stride'][0]}x"
                     f"{d['stride'][1]}, padding top {pt}, bottom {pb}, left {pl}, right {pr}")
    elif kind == "Dropout":
        lines.append(f"dropout  rate {d['rate']:g} in training; identity here (evaluation)")
    elif kind == "Flatten":
        lines.append("reshape  C order (h, w, c), no arithmetic")
    elif kind == "BatchNorm":
        lines.append(f"norm     (x - running_mean) / sqrt(running_var + {d['eps']:g}) * gamma + beta per channel "
                     f"(running statistics: evaluation)")
    elif kind == "Add":
        lines.append("add      elementwise sum of the inputs (a shortcut joins here)")
    elif kind == "Concatenate":
        lines.append("concat   inputs joined along the channel axis")
    elif kind == "GlobalAvgPool2D":
        lines.append("mean     over height and width, per channel")
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


def walk(model, image) -> Explanation:
    """The data of ``explain``, printing nothing: one image through every block of ``model``.

    Returns the same ``Explanation`` as ``explain(model, image, file=None)`` (one record per
    layer with shapes, params, FLOPs, value range and ``details``; ``probabilities``, ``top``,
    ``input_record``) plus ``inputs`` (the scaled model input, one sample) and ``outputs``
    (every layer's output for the image, host NumPy arrays without the batch axis). The
    layers run in evaluation mode, one after the other, and keep their usual caches: the
    caller must not run the same model on another thread meanwhile.
    """
    raw = as_single_image(image)
    x = preprocess(raw, model_dtype(model))[None]
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
    graph = hasattr(model, "graph_steps")
    outs, seen = [], set()  # every step's output (on the model's device), the layers met so far
    x_dev = to_device(x, model.device)  # the input on the model's device (x itself on the CPU)
    for i, (node, layer, ins) in enumerate(walk_steps):
        multi = getattr(layer, "multi_input", False)
        args = [x_dev if j < 0 else outs[j] for j in ins]
        cur_shape = [tuple(a.shape[1:]) for a in args] if multi else tuple(args[0].shape[1:])
        details = {} if multi else _block_details(layer, cur_shape, args[0])
        y = _run_step(layer, ins, outs, x_dev)
        outs.append(y)
        if kind_of(layer) == "Conv2D":
            details.update(_conv_algorithm(layer, cur_shape))
        y_np = np.array(to_numpy(y))  # a copy: a layer may reuse its output buffer on the next call
        lo, hi, mean = _stats(y_np)
        shared = id(layer) in seen
        seen.add(id(layer))
        result.append({"index": i, "name": layer.describe(), "kind": type(layer).__name__,
                       "input_shape": [list(s) for s in cur_shape] if multi else list(cur_shape),
                       "output_shape": list(y.shape[1:]),
                       "params": 0 if shared else int(sum(p.size for p in layer.parameters())),
                       "flops": int(layer.flops(cur_shape)), "min": lo, "max": hi, "mean": mean,
                       "zero_fraction": float((y_np == 0).mean()) if type(layer).__name__ == "ReLU" else None,
                       "details": details, "node": node, "reads": ins if graph else None, "shared": shared})
        result.outputs.append(y_np[0])

    out = result.outputs[-1] if result.outputs else np.asarray(x)[0]
    if out.ndim == 1 and out.size >= 2:
        probs = softmax(out.astype(np.float64))
        order = np.argsort(-probs, kind="stable")[:3]
        result.probabilities = probs
        result.top = [(int(k), float(probs[k])) for k in order]
    return result


def explain(model, image, out_dir=None, file=_STDOUT, class_names=None, dpi: int = 100):
    """Walk one image through ``model`` block by block, printing what each block does.

    Args:
        model: a ``jimunet.Sequential`` (any stack of jimunet layers).
        image: one sample, e.g. ``(28, 28, 1)`` (``(28, 28)`` and ``(1, 28, 28, 1)`` work too).
            Pixels 0..255 (uint8, or floats above 1) are scaled as in training,
            ``(x - 127.5) / 255``; floats within [-0.5, 1] are used as they are.
        out_dir: if given, write ``input.png`` and one PNG per layer (``layer-00-Conv2D.png``,
            ...) there: feature maps as grids of channels, vectors as bar plots. Needs
            matplotlib (``pip install 'jimunet[plot]'``); raises ``PlotDependencyError``
            before doing anything if it is missing.
        file: where the text goes (default ``sys.stdout``; ``None``: print nothing).
        class_names: labels for the top-3 (default: the class indices).
        dpi: resolution of the PNGs.

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
        >>> from jimunet.explain import explain
        >>> recs = explain(jn.models.mnist_cnn(rng=0), np.zeros((28, 28, 1), np.uint8), file=None)
        >>> recs[0]["details"]["im2col"], recs[3]["details"]["im2col"]
        ([784, 25], [196, 800])
    """
    if out_dir is not None:
        require_matplotlib("explain --out (saving the intermediate images)")
        os.makedirs(out_dir, exist_ok=True)
    if file is _STDOUT:
        file = sys.stdout
    say = (lambda s="": print(s, file=file)) if file is not None else (lambda s="": None)

    result = walk(model, image)
    inp = result.input_record
    scaled = " (pixels 0..255 scaled by (x - 127.5) / 255)" if inp["scaled"] else ""
    say(f"{model.describe() if hasattr(model, 'describe') else type(model).__name__}: one image, "
        f"evaluation mode")
    say(f"input    {shape_str(inp['shape'])}  min {inp['min']:.4g}  max {inp['max']:.4g}  "
        f"mean {inp['mean']:.4g}{scaled}")
    if out_dir is not None:
        p = os.path.join(out_dir, "input.png")
        _plot_input(result.raw, result.inputs, p, dpi)
        inp["png"] = p

    width = len(str(len(result) - 1))
    for rec, y in zip(result, result.outputs):
        i, node = rec["index"], rec["node"]
        say(f"[{i:>{width}}] {rec['name']}" + (f"  ({node})" if node else ""))
        for line in _describe_lines(rec):
            say(" " * (width + 3) + line)
        if out_dir is not None:
            p = os.path.join(out_dir, f"layer-{i:02d}-{rec['kind']}.png")
            _plot_output(rec, y, p, dpi, last=i == len(result) - 1, class_names=class_names)
            rec["png"] = p

    total = sum(r["flops"] for r in result)
    say(f"total    {total:,} FLOPs, {sum(r['params'] for r in result):,} parameters")
    if result.top:
        names = class_names or [str(k) for k in range(len(result.probabilities))]
        say("top-3    (softmax of the last layer's output)")
        for k, p in result.top:
            say(f"         {names[k]:>5}  {p:7.2%}")
    return result


# -- explain's figures ------------------------------------------------------------------------

def _plot_input(raw, scaled, path, dpi):
    fig = new_figure((3.2, 3.4), dpi)
    ax = fig.add_subplot()
    img = np.asarray(raw)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[-1] == 3:
        ax.imshow(img if img.dtype == np.uint8 else np.clip(scaled + 0.5, 0, 1))
    elif img.ndim == 3:
        img = img[..., 0]
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", interpolation="nearest")
    ax.set_title(f"input {shape_str(scaled.shape)}", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi)


def _plot_output(rec, y, path, dpi, last=False, class_names=None):
    title = f"[{rec['index']}] {rec['name']}\noutput {shape_str(rec['output_shape'])}, " \
            f"min {rec['min']:.3g}, max {rec['max']:.3g}, mean {rec['mean']:.3g}"
    if y.ndim == 3:
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
    elif y.ndim == 1:
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
        ax.set_ylabel("logit" if two and rec["kind"] == "Dense" else "value")
        ax.set_title(title, fontsize=10)
        if small:
            ax.set_xticks(idx)
            if two and class_names:
                ax.set_xticklabels(class_names)
        if two:
            probs = softmax(y.astype(np.float64))
            ax2 = axes[1]
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
        for a in axes:
            a.grid(axis="y", alpha=0.3)
        fig.tight_layout()
    else:
        fig = new_figure((6.0, 2.0), dpi)
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, f"{shape_str(rec['output_shape'])}: no picture for a {y.ndim}-D output",
                ha="center", va="center")
        ax.axis("off")
        ax.set_title(title, fontsize=10)
    save_figure(fig, path, dpi)


# -- command line -----------------------------------------------------------------------------

def _load_image_file(path):
    """``(images, note)``: MNIST-style pixels from a ``.npy`` file or a picture file.

    Uses ``jimunet.data.images.load_inputs``, the reader of ``jimunet predict``: pictures are
    normalised like MNIST digits.
    """
    from .data.images import load_inputs  # part of jimunet; Pillow is imported only for pictures
    try:
        x = load_inputs(path)
    except ImportError as e:  # Pillow missing
        raise ValueError(str(e)) from None
    return x, ""


def _cli(args) -> int:
    from .model import load
    from .models import mnist_cnn
    from .serialization import CheckpointError

    if args.index is not None and args.index < 0:  # counted from 0, as everywhere in jimunet (no wrap-around)
        print(f"jimunet explain: error: --index must be >= 0 (a test image's position, 0..9999), got {args.index}",
              file=sys.stderr)
        return 2
    paths = list(args.paths or [])
    for p in paths:
        if os.path.isdir(p):
            from .cli import model_path_error
            print(f"jimunet explain: error: {model_path_error(p)}", file=sys.stderr)
            return 2
    model_path = next((p for p in paths if p.lower().endswith(".npz")), None)
    files = [p for p in paths if p is not model_path]
    if len(files) > 1 or len(paths) > 2:
        print(f"jimunet explain: error: expected at most a MODEL.npz and one image FILE, got {paths}", file=sys.stderr)
        return 2
    image_file = files[0] if files else None
    if image_file is not None and args.index is not None:
        print("jimunet explain: error: give either --index I or an image FILE, not both", file=sys.stderr)
        return 2
    if model_path is None:
        model = mnist_cnn(rng=0)
        print("model    mnist_cnn(rng=0), freshly initialised: the weights are UNTRAINED, "
              "so the prediction is meaningless")
    else:
        try:
            model = load(model_path)
        except (OSError, CheckpointError) as e:
            print(f"jimunet explain: error: cannot load {model_path}: {e}", file=sys.stderr)
            return 2
        print(f"model    {model_path}")
    label = None
    if image_file is not None:
        try:
            images, _ = _load_image_file(image_file)
        except (OSError, ValueError) as e:
            print(f"jimunet explain: error: {e}", file=sys.stderr)
            return 2
        image = images[0]
        more = f" (the first of {len(images)} images)" if len(images) > 1 else ""
        print(f"image    {image_file}{more}")
    else:
        index = 0 if args.index is None else args.index
        from .datasets import load_mnist

        try:
            _, (x_test, y_test) = load_mnist(root=args.data_dir)
        except Exception as e:  # MNISTUnavailableError, OSError, ...
            print(f"jimunet explain: error: cannot load the MNIST test set ({e}); pass an image FILE (.npy) "
                  f"instead", file=sys.stderr)
            return 1
        if not 0 <= index < len(x_test):
            print(f"jimunet explain: error: --index must be in [0, {len(x_test)}), got {index}", file=sys.stderr)
            return 2
        image, label = x_test[index], int(y_test[index])
        print(f"image    MNIST test image {index} (true label {label})")
    try:
        res = explain(model, image, out_dir=args.out, file=sys.stdout)
    except PlotDependencyError as e:
        print(f"jimunet explain: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"jimunet explain: error: {e}", file=sys.stderr)
        return 1
    if label is not None and res.top:
        print(f"         predicted {res.top[0][0]}, true label {label}: "
              f"{'right' if res.top[0][0] == label else 'WRONG'}")
    if args.out:
        print(f"wrote    {len(res) + 1} PNGs to {args.out}")
    return 0


def register(subparsers):
    """Add ``jimunet explain`` to an argparse ``subparsers`` object; returns the parser."""
    p = subparsers.add_parser(
        "explain", help="walk one image through a model, block by block",
        usage="%(prog)s [MODEL.npz] [--index I | FILE] [--out DIR] [--data-dir D]",
        description="Walk one image through a model and print, per block, the shapes, padding, im2col/GEMM "
                    "sizes, FLOPs and output range, then the softmax top-3. Without MODEL.npz a freshly "
                    "initialised (untrained) mnist_cnn is used; without FILE or --index, MNIST test image 0.")
    p.add_argument("paths", nargs="*", metavar="MODEL.npz, FILE",
                   help="a model saved by jimunet (.npz; default: an untrained mnist_cnn) and/or one image: a "
                        "picture (PNG, JPEG, ...; normalised like MNIST, as jimunet predict does) or a .npy array "
                        "(28x28 or 28x28x1, white digit on black, uint8 0..255 or floats in [0, 1] or [0, 255])")
    p.add_argument("--index", type=int, default=None, metavar="I", help="use MNIST test image I")
    p.add_argument("--out", default=None, metavar="DIR", help="also save every intermediate as a PNG in DIR "
                                                              "(needs matplotlib)")
    p.add_argument("--data-dir", default=None, metavar="D", help="MNIST cache directory (default: "
                                                                 "$JIMUNET_DATA or ~/.cache/jimunet/mnist)")
    p.set_defaults(func=_cli)
    return p
