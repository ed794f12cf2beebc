"""jimunet.app.report: the run report (figures, self-contained HTML, numbers) and its CLI hook."""
import argparse
import base64
import json
import re
import sys

import numpy as np
import pytest

import jimunet as jn
from jimunet.app import report
from jimunet.app.report import (DPI, FIGURE_SIZES, PlotDependencyError, confusion_matrix, read_report_data,
                                write_report)
from jimunet.app.report import data as report_data
from jimunet.data.mnist import MNISTUnavailableError
from jimunet.app.cli.report import register

N_TEST = 300


def _test_data(n=N_TEST):
    """The first ``n`` MNIST test images when they are cached, else deterministic fake digits.

    Only "not cached" falls back: a corrupt cache or a loader bug must fail the tests, not be
    papered over with fake data.
    """
    try:
        _, (x, y) = jn.datasets.load_mnist(download=False, progress=False)
        return x[:n], y[:n]
    except MNISTUnavailableError:
        rng = np.random.default_rng(0)
        y = np.arange(n, dtype=np.int64) % 10
        x = rng.integers(0, 256, (n, 28, 28, 1)).astype(np.uint8)
        return x, y


def _metrics(epochs=3, steps_per_epoch=20):
    rng = np.random.default_rng(1)
    steps = list(2.3 * np.exp(-np.arange(epochs * steps_per_epoch) / 25) + 0.05 + 0.05 * rng.random(epochs * 20))
    return {
        "config": {"epochs": epochs, "batch_size": 64, "lr": 0.01, "seed": 66478, "train_size": 1280,
                   "data_dir": None, "nested": {"a": [1, 2]}},
        "epochs": [{"epoch": e, "train_loss": 1.0 / e, "val_error": 10.0 / e, "lr": 0.01 * 0.95 ** (e - 1),
                    "seconds": 12.5} for e in range(1, epochs + 1)],
        "step_loss": steps, "test_accuracy": 0.91, "test_error": 9.0, "best_epoch": epochs,
        "wall_time_s": 37.5, "images_per_s": 102.4, "versions": {"jimunet": jn.__version__},
        "units": {"test_accuracy": "fraction", "test_error": "percent", "val_error": "percent"},
    }


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A run directory: a freshly initialised mnist_cnn and a synthetic metrics.json."""
    run = tmp_path_factory.mktemp("run")
    model = jn.models.mnist_cnn(rng=0)
    model.save(run / "model.npz", metadata={"epoch": 3})
    (run / "metrics.json").write_text(json.dumps(_metrics()))
    (run / "train.log").write_text("epoch 1 ...\nepoch 2 ...\nepoch 3 <done>\n")
    x, y = _test_data()
    html = write_report(run, data=(x, y))
    return run, html, model, x, y


def test_every_figure_decodes_at_its_stated_pixel_size(mnist_run):
    from PIL import Image

    run, _, _, _, _ = mnist_run
    data = json.loads((run / "report.json").read_text())
    figs = data["figures"]
    assert {"curves", "filters", "features_1", "features_2", "confusion", "per_class", "mistakes"} <= set(figs)
    pngs = sorted(p.name for p in run.glob("*.png"))
    assert pngs == sorted(f["file"] for f in figs.values())
    for name, f in figs.items():
        with Image.open(run / f["file"]) as im:
            im.load()
            assert im.format == "PNG"
            assert im.size == (f["width"], f["height"]), name
            if name in FIGURE_SIZES:
                w, h = FIGURE_SIZES[name]
                assert im.size == (round(w * DPI), round(h * DPI)), name
            # not blank: a figure has ink of several shades
            assert len(np.unique(np.asarray(im.convert("L")))) > 8, name


def test_html_is_self_contained(mnist_run):
    run, html, _, _, _ = mnist_run
    assert html == str(run / "report.html")
    text = (run / "report.html").read_text(encoding="utf-8")
    srcs = re.findall(r"""\bsrc\s*=\s*["']?([^"' >]*)""", text, flags=re.I)
    figs = json.loads((run / "report.json").read_text())["figures"]
    assert len(srcs) == len(figs) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"""(href|src)\s*=\s*["']?(https?:|//|file:)""", text, flags=re.I)
    assert "<link" not in text.lower() and "url(" not in text.lower() and "@import" not in text.lower()
    # each embedded image is byte for byte one of the PNGs
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert embedded == {(run / f["file"]).read_bytes() for f in figs.values()}
    # the sections and tables are there, missing-free values shown
    for s in ("Learning curves", "First-layer filters", "Feature maps", "Errors: confusion matrix", "Model",
              "Configuration and timings", "1,663,370", "24,660,746", "(N, 7, 7, 64)", "Dense(3136-&gt;512)",
              "batch_size", "66478", "37.5 s", "91.00%", "train.log"):
        assert s in text, s


def test_confusion_matrix_in_report_equals_independent_and_train_evaluate(mnist_run):
    run, html, model, x, y = mnist_run
    data = json.loads((run / "report.json").read_text())
    assert read_report_data(html)["confusion_matrix"] == data["confusion_matrix"]
    cm = np.array(data["confusion_matrix"])
    # independently: layer by layer forward, argmax, counted with a loop
    xf = (x.astype(np.float32) - 127.5) / 255
    logits = xf
    for layer in model.layers:
        logits = layer.forward(logits)
    pred = logits.argmax(axis=1)
    expected = np.zeros((10, 10), np.int64)
    for t, p in zip(y, pred):
        expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == len(y) == data["num_test"]
    assert data["accuracy"] == pytest.approx(np.trace(expected) / len(y))
    # ... and equal to jimunet.training.evaluate's confusion matrix
    from jimunet.data.images import preprocess
    from jimunet.training import evaluate

    ev = evaluate(model, preprocess(x), y, num_classes=10)
    np.testing.assert_array_equal(cm, ev.confusion)
    # the mistakes are wrong, sorted by confidence
    probs = [m["prob"] for m in data["mistakes"]]
    assert probs == sorted(probs, reverse=True)
    assert all(y[m["index"]] == m["true"] != m["pred"] == pred[m["index"]] for m in data["mistakes"])
    assert len(data["mistakes"]) == min(16, int((pred != y).sum()))
    acc = [a for a in data["per_class_accuracy"] if a is not None]
    np.testing.assert_allclose(acc, [cm[k, k] / cm[k].sum() for k in range(10) if cm[k].sum()])


def test_confusion_matrix_function():
    rng = np.random.default_rng(3)
    t, p = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    cm = confusion_matrix(t, p, num_classes=4)
    assert cm.dtype == np.int64 and cm.sum() == 50
    for i in range(4):
        for j in range(4):
            assert cm[i, j] == np.sum((t == i) & (p == j))
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0, 4], num_classes=4)
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], num_classes=4)


def test_training_run_end_to_end_writes_a_matching_report(tmp_path):
    """jimunet.app.training writes the run directory and calls write_report itself (self-test data)."""
    from jimunet.app.recipes import MNISTConfig
    from jimunet.app.training import train_mnist

    run = tmp_path / "run"
    res = train_mnist(MNISTConfig(self_test=True, epochs=1, out=str(run), progress=False), echo=False)
    assert (run / "report.html").exists(), (run / "train.log").read_text()
    data = read_report_data(run / "report.html")
    metrics = json.loads((run / "metrics.json").read_text())
    np.testing.assert_array_equal(np.array(data["confusion_matrix"]), res.confusion)
    assert data["confusion_matrix"] == metrics["confusion_matrix"]
    assert data["confusion_matrix_matches_metrics"] is True
    assert data["accuracy"] == pytest.approx(res.test_accuracy)
    assert data["metrics_test_accuracy_pct"] == pytest.approx(100 * res.test_accuracy)


def _small_model():
    return jn.Sequential([jn.layers.Conv2D(1, 4, 3, stride=2, padding="valid", rng=0), jn.layers.Tanh(),
                          jn.layers.AvgPool2D(2), jn.layers.Flatten(), jn.layers.Dense(144, 10, rng=1)])


def test_tolerates_missing_and_renamed_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _small_model().save(run / "best.npz", metadata={"config": {"epochs": 2, "lr": 0.5}})
    (run / "metrics.json").write_text(json.dumps({
        "epochs": [{"epoch": 1, "loss": 0.9, "val_err": 0.2, "learning_rate": 0.5},
                   {"epoch": 2, "loss": 0.5, "val_err": 0.1, "learning_rate": 0.25}],
        "losses": [1.0, 0.8, 0.6, 0.5], "test_acc": 0.88}))
    x, y = _test_data(40)
    html = write_report(run, data=(x, y), out=tmp_path / "elsewhere" / "r.html")
    text = (tmp_path / "elsewhere" / "r.html").read_text()
    data = read_report_data(html)
    assert data["weights"] == "best.npz" and data["num_test"] == 40
    assert "n/a" in text and "88.00%" in text  # fraction read as a fraction
    assert "20.00%" in text and "10.00%" in text  # val_err fractions shown in percent
    assert "features_1" in data["figures"] and "features_2" not in data["figures"]
    assert (run / "report-curves.png").exists() and (run / "report.json").exists()
    # no metrics.json at all: still a report, config from the model's metadata
    (run / "metrics.json").unlink()
    text = open(write_report(run, data=(x, y))).read()
    assert "metrics.json not found" in text and "lr" in text


def test_rates_and_units():
    rows = report_data._epoch_rows({"epochs": [{"epoch": 1, "val_error": 0.8}], "units": {"val_error": "percent"}})
    assert rows[0]["val_error_pct"] == pytest.approx(0.8)  # percent per the units table
    rows = report_data._epoch_rows({"epochs": [{"epoch": 1, "val_error": 0.8}, {"epoch": 2, "val_error": 0.5}]})
    assert rows[1]["val_error_pct"] == pytest.approx(50.0)  # no units: values <= 1 are fractions
    acc, err = report_data._rate_percent({"test_accuracy": 0.99, "test_error": 1.0}, ("test_accuracy",), ("test_error",))
    assert (acc, err) == (pytest.approx(99.0), pytest.approx(1.0))
    acc, err = report_data._rate_percent({"test_error": 0.02}, ("test_accuracy",), ("test_error",))
    assert (acc, err) == (pytest.approx(98.0), pytest.approx(2.0))


def test_without_matplotlib_the_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotDependencyError, match=r"pip install 'jimunet\[plot\]'") as info:
        write_report(tmp_path)
    assert not isinstance(info.value, ImportError)
    parser = argparse.ArgumentParser(prog="jimunet")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(tmp_path)])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "pip install 'jimunet[plot]'" in err and "Traceback" not in err


def test_cli_report(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    _small_model().save(run / "model.npz")
    (run / "metrics.json").write_text(json.dumps(_metrics(epochs=2)))
    x, y = _test_data(30)
    seen = {}

    def fake_load(data_dir, config):
        seen["data_dir"] = data_dir
        return x, y, "30 test images"

    monkeypatch.setattr(report_data, "_load_test_data", fake_load)
    parser = argparse.ArgumentParser(prog="jimunet")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(run), "--out", str(tmp_path / "r.html"), "--data-dir", "/d"])
    assert args.func(args) == 0
    assert "r.html" in capsys.readouterr().out
    assert read_report_data(tmp_path / "r.html")["num_test"] == 30 and seen["data_dir"] == "/d"
    args = parser.parse_args(["report", str(tmp_path / "nope")])
    assert args.func(args) == 2  # a missing directory is bad usage, as in jimunet's other commands
    assert capsys.readouterr().err.startswith(f"jimunet report: error: {tmp_path / 'nope'}")


def test_modules_import_without_matplotlib(monkeypatch, tmp_path):
    import importlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any import of matplotlib now fails
    import jimunet.app

    for name in ("jimunet.app.report", "jimunet.app.report.data", "jimunet.app.report.figures",
                 "jimunet.app.report.html", "jimunet.app.explain", "jimunet.app.inspect", "jimunet.app.plotting"):
        if name in sys.modules:
            if name.count(".") == 2:  # the reimport rebinds the package's attribute: put it back afterwards
                monkeypatch.setattr(jimunet.app, name.rsplit(".", 1)[1], sys.modules[name])
            monkeypatch.delitem(sys.modules, name)
    rep = importlib.import_module("jimunet.app.report")
    ex = importlib.import_module("jimunet.app.explain")
    assert rep.confusion_matrix([1, 0], [1, 1], num_classes=2).tolist() == [[0, 1], [0, 1]]
    # the parts that need no plots work; the plots fail with the install hint, not at import
    recs = ex.explain(_small_model(), np.zeros((28, 28, 1), np.uint8), file=None)
    assert len(recs) == 5
    with pytest.raises(rep.PlotDependencyError, match=r"pip install 'jimunet\[plot\]'"):
        rep.write_report(tmp_path)


def test_loss_axis_leaves_out_the_initial_spike():
    # shaped like the recipe's run: ~11 at the first step, then 1.6-3.6 for thousands of steps
    rng = np.random.default_rng(5)
    n = 4000
    losses = 2.0 + np.exp(-np.arange(n) / 800) + 0.3 * rng.random(n)
    losses[:30] = np.linspace(11.0, 4.0, 30)
    low, high, clipped = report.loss_axis_range(losses)
    settled_max = losses[n // 50:].max()
    assert settled_max <= high < 1.1 * settled_max and low < losses.min()
    assert clipped == int((losses > high).sum()) and 0 < clipped <= 30
    assert np.all(losses[30:] <= high)  # only the first steps are cut off
    # no spike, or too short a run: the whole range is shown
    low, high, clipped = report.loss_axis_range(losses[100:])
    assert clipped == 0 and high >= losses[100:].max() and low <= losses[100:].min()
    low, high, clipped = report.loss_axis_range(losses[:50])
    assert clipped == 0 and high >= 11.0
    assert report.loss_axis_range([]) == (0.0, 1.0, 0)
    assert report.loss_axis_range([2.0, 2.0])[2] == 0


def _small_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    _small_model().save(run / "model.npz")
    (run / "metrics.json").write_text(json.dumps(_metrics(epochs=2)))
    x, y = _test_data(30)
    monkeypatch.setattr(report_data, "_load_test_data", lambda data_dir, config: (x, y, "30 test images"))
    return run


def _files(d):
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}


@pytest.mark.parametrize("only, room", [("report.html", 20_000), (None, 3_000), (None, 0)])
def test_a_full_disk_leaves_every_previous_file_whole_and_names_the_one_it_could_not_write(
        tmp_path, monkeypatch, capsys, only, room):
    from full_disk import full_disk
    from jimunet.app import cli

    run = _small_run(tmp_path, monkeypatch)
    assert cli.main(["report", str(run)]) == 0
    before = _files(run)
    assert len(before["report.html"]) > 20_000
    cut = full_disk(monkeypatch, run, room, only)
    capsys.readouterr()
    assert cli.main(["report", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert cut and len(err) == 1, err
    m = re.fullmatch(r"jimunet report: error: cannot write (.+): No space left on device", err[0])
    assert m, err
    name = m.group(1).rsplit("/", 1)[-1]
    assert m.group(1) == str(run / name) and name == (only or name) and name in before
    after = _files(run)
    assert after[name] == before[name]  # the file it could not write is the previous one, whole
    assert after.keys() == before.keys()  # no temporary file left over
    assert after["report.html"] == before["report.html"]  # the page never goes before its figures


def test_report_out_never_overwrites_a_file_jimunet_did_not_write(tmp_path, monkeypatch, capsys):
    from jimunet.app import cli

    run = _small_run(tmp_path, monkeypatch)
    mine = tmp_path / "notes.html"
    mine.write_text("<p>my notes</p>")
    assert cli.main(["report", str(run), "--out", str(mine)]) == 2
    assert "notes.html exists and is not a report jimunet wrote; it is not overwritten" in capsys.readouterr().err
    assert mine.read_text() == "<p>my notes</p>" and not (run / "report.json").exists()
    assert cli.main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert cli.main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0  # its own report: replaced


def test_a_report_that_cannot_be_written_at_the_end_of_training_is_an_error_naming_it(tmp_path, monkeypatch, capsys):
    from full_disk import full_disk
    from jimunet.app import cli

    run = tmp_path / "run"
    run.mkdir()
    full_disk(monkeypatch, run, 1000, only="report.html")
    assert cli.main(["train", "--self-test", "--threads", "1", "--out", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jimunet train: error: cannot write {run / 'report.html'}: No space left on device; the run is "
                   f"complete (model.npz, metrics.json); write its report later with: jimunet report {run}"]
    assert not (run / "report.html").exists() and not list(run.glob(".report.html.*"))
    assert json.loads((run / "run.json").read_text())["status"] == "completed" and (run / "model.npz").exists()
