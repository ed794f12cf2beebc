"""Compose docs/report-example.png (the README's picture) from a run's report figures.

    python -m jimunet train                  # writes runs/<timestamp>/ and its report
    python docs/make_report_example.py runs/<timestamp> [docs/report-example.png]

Top row: the learning curves and the confusion matrix; then the first conv block's feature
maps and the most confident mistakes, each scaled to the same width. Needs Pillow.
"""
from __future__ import annotations

import os
import sys

from PIL import Image

WIDTH = 1400
GAP = 16


def _scaled(im, width=None, height=None):
    if width is not None:
        height = round(im.height * width / im.width)
    else:
        width = round(im.width * height / im.height)
    return im.resize((width, height), Image.LANCZOS)


def compose(run_dir, out):
    def load(name):
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            raise SystemExit(f"{path}: not found; write the report first (jimunet report {run_dir})")
        return Image.open(path).convert("RGB")

    curves, confusion = load("report-curves.png"), load("report-confusion.png")
    # the top row: both at one height, together WIDTH wide
    h = round((WIDTH - GAP) / (curves.width / curves.height + confusion.width / confusion.height))
    top = [_scaled(curves, height=h), _scaled(confusion, height=h)]
    rows = [top] + [[_scaled(load(name), width=WIDTH)] for name in ("report-features-1.png", "report-mistakes.png")]
    heights = [max(im.height for im in row) for row in rows]
    canvas = Image.new("RGB", (WIDTH, sum(heights) + GAP * (len(rows) - 1)), "white")
    y = 0
    for row, rh in zip(rows, heights):
        x = 0
        for im in row:
            canvas.paste(im, (x, y))
            x += im.width + GAP
        y += rh + GAP
    canvas.save(out, optimize=True)  # full colour: a 256-colour palette bands the colour bars
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    print(compose(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else os.path.join(os.path.dirname(__file__),
                                                                                   "report-example.png")))
