"""A one-file HTML report of a training run: curves, filters, feature maps, errors, summary.

``write_report(run_dir)`` reads what a training run left in its directory (``model.npz`` or
``best.npz``, ``metrics.json``, ``train.log``), predicts its data set's test images with the model,
draws PNG figures into the run directory and writes ``report.html``, which embeds every
figure as a base64 ``data:`` URI so it opens offline and can be mailed as one file. The
numbers behind it (confusion matrix, per-class accuracy, worst mistakes) also go to
``report.json`` and into the HTML as ``<script type="application/json" id="report-data">``.

Reading the run is ``data``, drawing ``figures``, writing HTML ``html``. Drawing needs
matplotlib (``pip install 'jimunet[plot]'``); this package imports without it.
``confusion_matrix`` needs NumPy only.
"""
from __future__ import annotations

import json
import os
import time

from ...serialization import WriteError, atomic_writer
from ..plotting import PLOT_HINT, PlotDependencyError, require_matplotlib
from . import data as _data
from .data import MAX_MISTAKES, confusion_matrix
from .figures import DPI, FIGURE_SIZES, draw_figures, first_conv, loss_axis_range
from .html import _json_script, page_parts, read_report_data

__all__ = ["write_report", "read_report_data", "confusion_matrix", "PlotDependencyError", "PLOT_HINT",
           "FIGURE_SIZES", "DPI", "loss_axis_range"]


def _report_data(run, data_name, y, res, figures, m_acc):
    """The numbers for machines: report.json, and the JSON embedded in the page."""
    return {
        "format": "jimunet-report", "version": 1,
        "run_dir": os.path.abspath(run.run_dir), "weights": os.path.basename(run.weights_path),
        "data": data_name, "num_test": int(len(y)), "num_classes": res.num_classes,
        "accuracy": res.accuracy, "error": 1.0 - res.accuracy,
        "confusion_matrix": res.cm.tolist(), "per_class_accuracy": res.per_class,
        "mistakes": res.mistakes, "figures": figures,
        "metrics_test_accuracy_pct": m_acc, "predict_seconds": res.predict_s,
        "confusion_matrix_matches_metrics": _data.metrics_confusion_matches(run.metrics, res.cm),
    }


_MARK = b'<script type="application/json" id="report-data">'


def _refuse_foreign(out) -> None:
    """FileExistsError if ``out`` exists and is not a report jimunet wrote (it would be overwritten)."""
    if not os.path.lexists(out):
        return
    try:
        with open(out, "rb") as f:
            ours = os.path.isfile(out) and _MARK in f.read(64 << 20)
    except OSError:
        ours = False
    if not ours:
        raise FileExistsError(f"{out} exists and is not a report jimunet wrote; it is not overwritten. Choose "
                              f"another file for --out (or remove it)")


def write_report(run_dir, data=None, out=None, weights=None, data_dir=None, num_mistakes: int = MAX_MISTAKES):
    """Write ``report.html`` (self-contained) and its PNG figures for a training run.

    Args:
        run_dir: a run directory as written by ``jimunet train`` (``model.npz`` or ``best.npz``,
            ``metrics.json``; missing metrics are shown as n/a).
        data: ``(x_test, y_test)`` to evaluate on (pixels are normalised as in training;
            floats within [0, 1] are used as they are). Default: the test set of the model's
            data set (``modelinfo``; MNIST for a model without that information).
        out: path of the HTML file (default ``run_dir/report.html``); an existing file is
            replaced only if it is a report jimunet wrote (else ``FileExistsError``). Figures
            and ``report.json`` always go into ``run_dir``.
        weights: file in ``run_dir`` to report on (default ``model.npz``, else ``best.npz``).
        data_dir: the data set's cache directory when ``data`` is None.
        num_mistakes: how many of the most confident mistakes to show (at most 16).

    Returns:
        The path of ``report.html``.

    Every file is written atomically: a write that fails (a full disk) leaves the previous
    version whole and raises ``WriteError`` (an OSError) naming the file.

    Raises:
        PlotDependencyError: matplotlib is not installed (message: ``pip install 'jimunet[plot]'``).
        FileNotFoundError: no weights in ``run_dir``.
        WriteError: a file could not be written.

    Example:
        >>> from jimunet.app.report import write_report
        >>> write_report("runs/20240101-120000")  # doctest: +SKIP
        'runs/20240101-120000/report.html'
    """
    require_matplotlib("jimunet report")
    if out is not None:
        _refuse_foreign(os.fspath(out))  # before any work
    t_start = time.perf_counter()
    run = _data.read_run(run_dir, weights)
    x, y, data_name = _data.read_data(data, data_dir, run.config, run.info)
    res = _data.predict_run(run.model, x, y, num_mistakes, run.info)
    epochs, l2 = _data._epoch_rows(run.metrics), _data.has_l2(run.config)
    figures, feature_figs = draw_figures(run.run_dir, run.model, x, y, res, _data.step_losses(run.metrics),
                                         epochs, l2)
    m_acc, m_err = _data.metrics_test_rates(run.metrics)
    report_data = _report_data(run, data_name, y, res, figures, m_acc)
    with atomic_writer(os.path.join(run.run_dir, "report.json")) as f:
        f.write(json.dumps(report_data, indent=1).encode())

    parts = page_parts(run, res, report_data, y, epochs, feature_figs, first_conv(run.model), l2, m_err)
    report_data["report_seconds"] = time.perf_counter() - t_start
    parts.append(_json_script(report_data))
    parts.append("</body></html>")

    out = os.fspath(out) if out is not None else os.path.join(run.run_dir, "report.html")
    _refuse_foreign(out)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    except OSError as e:
        raise WriteError(out, e) from None
    with atomic_writer(out) as f:  # a full disk leaves the previous report whole (WriteError names the file)
        f.write("\n".join(parts).encode("utf-8"))
    return out
