"""The plotting helpers that the report, ``explain`` and the web page share.

matplotlib (the optional ``plot`` extra: ``pip install 'jimunet[plot]'``) is imported only
inside the functions that draw, so this module, and every module built on it, imports
without it; ``require_matplotlib`` turns its absence into ``PlotDependencyError`` with the
install hint. Figures are pyplot-free ``matplotlib.figure.Figure`` objects on an Agg canvas.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..serialization import atomic_writer

__all__ = ["PLOT_HINT", "PlotDependencyError", "require_matplotlib", "new_figure", "save_figure", "mosaic",
           "grid_columns", "color_scale", "draw_channel_grid", "shape_str"]

PLOT_HINT = "pip install 'jimunet[plot]'"


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
    """Save at exactly ``figsize × dpi`` pixels (no bbox cropping) and return the size.

    Written atomically (``atomic_writer``): ``path`` keeps its previous contents if the write
    fails (``WriteError`` names it).
    """
    with atomic_writer(path) as f:
        fig.savefig(f, dpi=dpi, facecolor="white", format=os.path.splitext(os.fspath(path))[1][1:] or "png")
    w, h = fig.get_size_inches()
    return int(round(w * dpi)), int(round(h * dpi))


def shape_str(shape) -> str:
    """A shape without the batch axis as text: ``(28, 28, 1)`` -> ``"28x28x1"``."""
    return "x".join(str(int(d)) for d in shape)


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
