"""The report's HTML: small writing helpers and the page, one function per section.

The page embeds every figure as a base64 ``data:`` URI (one file that opens offline) and
the report's numbers as ``<script type="application/json" id="report-data">``, which
``read_report_data`` reads back.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os

from ..plotting import shape_str
from .data import _first, _num


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


# -- the page ------------------------------------------------------------------------------------

def _header(run, data_name):
    run_name = os.path.basename(os.path.abspath(run.run_dir))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>jimunet report: {_e(run_name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>jimunet run report: {_e(run_name)}</h1>",
             f"<p class='sub'>{_e(os.path.abspath(run.run_dir))} &middot; weights "
             f"{_e(os.path.basename(run.weights_path))}"
             f" &middot; evaluated on {_e(data_name)} &middot; generated "
             f"{_e(_dt.datetime.now().strftime('%Y-%m-%d %H:%M'))}</p>"]
    if run.metrics_problem:
        parts.append(f"<p class='na'>Note: {_e(run.metrics_problem)}; training curves and timings are n/a.</p>")
    return parts


def _timings(metrics):
    """``(best epoch, wall time in s, images per s)`` as metrics.json records them (or None)."""
    return (_first(metrics, "best_epoch"),
            _num(_first(metrics, "wall_time_s", "wall_time", "total_seconds", "train_seconds")),
            _num(_first(metrics, "images_per_s", "images_per_second", "throughput")))


def _cards(run, res, n_test, m_acc, epochs):
    best_epoch, wall, ips = _timings(run.metrics)
    weights = os.path.basename(run.weights_path)
    cards = [
        ("test accuracy (this report)", f"{100 * res.accuracy:.2f}%", f"on {n_test:,} images, {weights}"),
        ("test accuracy (metrics.json)", None if m_acc is None else f"{m_acc:.2f}%", "as logged by training"),
        ("best epoch", best_epoch, "lowest validation error"),
        ("epochs", len(epochs) or _first(run.config, "epochs"), "trained"),
        ("training time", None if wall is None else f"{wall:.1f} s", "wall clock"),
        ("throughput", None if ips is None else f"{ips:,.0f} img/s", "training images per second"),
    ]
    return "<div class='cards'>" + "".join(
        f"<div class='card'><b>{_fmt(v)}</b><span>{_e(t)}<br>{_e(s)}</span></div>" for t, v, s in cards) + "</div>"


def _curves_section(run_dir, figures, epochs, l2):
    parts = ["<h2>Learning curves</h2>",
             _img(os.path.join(run_dir, figures["curves"]["file"]), "learning curves",
                  "Top: the training loss of every step (faint) and its exponential moving average"
                  + (" (it includes the L2 weight-decay term, which the optimizer minimises too)" if l2 else "")
                  + "; dotted lines mark epochs. Bottom: validation error after each epoch (left axis) and the "
                  "learning rate (right axis).")]
    if epochs:
        parts.append(_table(["epoch", "train loss", "validation error", "learning rate", "seconds"],
                            [[_fmt(r["epoch"]), _fmt(r["train_loss"], ".4f"), _fmt(r["val_error_pct"], ".2f", "%"),
                              _fmt(r["lr"], ".3g"), _fmt(r["seconds"], ".1f")] for r in epochs],
                            numeric=(0, 1, 2, 3, 4)))
    return parts


def _filters_section(run_dir, figures, conv):
    if "filters" not in figures:
        return []
    return ["<h2>First-layer filters</h2>",
            _img(os.path.join(run_dir, figures["filters"]["file"]), "first-layer filters",
                 f"The {conv.out_channels} kernels of the first convolution "
                 f"({conv.kernel_size[0]}x{conv.kernel_size[1]}, HWIO weight[:, :, 0, k]), "
                 f"on one colour scale centred at 0 (white). Trained filters look like "
                 f"stroke and edge detectors; untrained ones look like noise.")]


def _features_section(run_dir, figures, feature_figs, true0, pred0):
    if not feature_figs:
        return []
    parts = ["<h2>Feature maps</h2>"]
    for name, label, shape in feature_figs:
        where = "after the activation, before pooling" if "->" in label.split(",")[-1] else \
            "the convolution's output"
        parts.append(_img(os.path.join(run_dir, figures[name]["file"]), f"feature maps {label}",
                          f"Output of {_e(label)} ({_e(shape_str(shape))}, {where}) for test image #0 "
                          f"(true {true0}, predicted {pred0})."))
    return parts


def _errors_section(run_dir, figures, res):
    return ["<h2>Errors: confusion matrix, per-class accuracy, most confident mistakes</h2>",
            _img(os.path.join(run_dir, figures["confusion"]["file"]), "confusion matrix",
                 "Rows: true class, columns: predicted class; the diagonal holds the correct predictions."),
            _img(os.path.join(run_dir, figures["per_class"]["file"]), "per-class accuracy",
                 "Share of each digit's test images classified correctly."),
            _img(os.path.join(run_dir, figures["mistakes"]["file"]), "most confident mistakes",
                 f"{len(res.wrong):,} test images are misclassified; these {len(res.mistakes)} are the ones the "
                 f"model is most sure about.")]


def _model_section(summary):
    srows = [[_e(i), _e(r["layer"]), _e("(N, " + ", ".join(str(d) for d in r["output_shape"]) + ")"),
              _e(f"{r['params']:,}"), _e(f"{r['flops']:,}")] for i, r in enumerate(summary.rows)]
    srows.append(["", "<b>total</b>", "", f"<b>{summary.total_params:,}</b>", f"<b>{summary.total_flops:,}</b>"])
    return ["<h2>Model</h2>",
            f"<p>Input (N, {_e(', '.join(str(d) for d in summary.input_shape))}); FLOPs are per image, "
            f"forward pass (a multiply-add counts 2).</p>",
            _table(["#", "layer", "output shape", "params", "FLOPs"], srows, numeric=(0, 3, 4))]


def _config_section(run, res, report_data, epochs, m_err):
    parts = ["<h2>Configuration and timings</h2>"]
    config = run.config
    if config:
        parts.append(_table(["setting", "value"], [[_e(k), _e(v if isinstance(v, (str, int, float, bool))
                                                              or v is None else json.dumps(v))]
                                                   for k, v in config.items()]))
    else:
        parts.append("<p class='na'>no configuration recorded (n/a)</p>")
    best_epoch, wall, ips = _timings(run.metrics)
    m_acc, same = report_data["metrics_test_accuracy_pct"], report_data["confusion_matrix_matches_metrics"]
    secs = [r["seconds"] for r in epochs if r["seconds"] is not None]
    timing_rows = [["training wall time", _fmt(wall, ".1f", " s")],
                   ["training throughput", _fmt(ips, ",.0f", " images/s")],
                   ["mean epoch time", _fmt(sum(secs) / len(secs) if secs else None, ".1f", " s")],
                   ["test accuracy / error (metrics.json)",
                    _fmt(None if m_acc is None else f"{m_acc:.2f}% / {m_err:.2f}%")],
                   ["best epoch (metrics.json)", _fmt(best_epoch)],
                   ["this report's confusion matrix equals metrics.json's",
                    _fmt(None if same is None else ("yes" if same else "NO (other weights or test images?)"))],
                   [f"prediction of {report_data['num_test']:,} test images (this report)",
                    _fmt(res.predict_s, ".2f", " s")]]
    parts.append(_table(["", "value"], timing_rows))
    versions = _first(run.metrics, "versions")
    if isinstance(versions, dict) and versions:
        parts.append("<h3>Versions</h3>"
                     + _table(["package", "version"], [[_e(k), _e(v)] for k, v in versions.items()]))
    return parts


def _log_section(run_dir):
    log_path = os.path.join(run_dir, "train.log")
    if os.path.exists(log_path):
        try:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = f.readlines()[-40:]
            return [f"<details><summary>train.log (last {len(tail)} lines)</summary>"
                    f"<pre>{_e(''.join(tail))}</pre></details>"]
        except OSError:
            pass
    return []


def page_parts(run, res, report_data, y, epochs, feature_figs, conv, l2, m_err):
    """The page's HTML up to the embedded numbers (``_json_script``) and the closing tags.

    Args:
        run, res: the ``data.Run`` and its ``data.Predictions`` on the test images ``y``.
        report_data: the numbers written to report.json (figures, accuracy from metrics.json, ...).
        epochs: ``data._epoch_rows``; feature_figs: from ``figures.draw_figures``; conv: the first
            Conv2D (its filters are shown); l2: the loss has an L2 term; m_err: metrics.json's
            test error (%).
    """
    run_dir, figures = run.run_dir, report_data["figures"]
    parts = _header(run, report_data["data"])
    parts.append(_cards(run, res, len(y), report_data["metrics_test_accuracy_pct"], epochs))
    parts += _curves_section(run_dir, figures, epochs, l2)
    parts += _filters_section(run_dir, figures, conv)
    names = res.class_names
    parts += _features_section(run_dir, figures, feature_figs, _e(names[int(y[0])]), _e(names[int(res.pred[0])]))
    parts += _errors_section(run_dir, figures, res)
    parts += _model_section(res.summary)
    parts += _config_section(run, res, report_data, epochs, m_err)
    parts += _log_section(run_dir)
    return parts
