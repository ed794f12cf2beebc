"""The command line: ``python -m jimunet train | evaluate | predict``, its messages and exit codes."""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jimunet as jn
from jimunet.app import cli
from jimunet.app.cli import train as cli_train
from jimunet.app.cli.errors import UserError, add_command

from foreground import FOREGROUND

HANG = 300  # seconds after which a child that should have stopped is taken to hang


def run(*args, env=None, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if k != "JIMUNET_DEBUG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "jimunet", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    jn.models.mnist_cnn(rng=0).save(path, metadata={"epoch": 0})
    return path


def test_help_lists_the_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("train", "evaluate", "predict"):
        assert cmd in r.stdout
    r = run("train", "--help")
    assert r.returncode == 0 and "--self-test" in r.stdout and "--resume" in r.stdout
    r = run()
    assert r.returncode == 2 and "usage" in r.stderr


def test_self_test_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    r = run("train", "--self-test", "--out", out, "--no-report", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "test error 0.00%" in r.stdout
    assert "epoch   1/1" in r.stdout
    assert (out / "model.npz").is_file() and (out / "checkpoint.npz").is_file()
    assert (out / "train.log").read_text().strip().splitlines() == r.stdout.strip().splitlines()
    m = json.loads((out / "metrics.json").read_text())
    assert m["test_error"] == 0.0 and m["config"]["self_test"] is True and m["config"]["epochs"] == 1


def test_resnet_self_test_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    r = run("train", "--model", "resnet", "--self-test", "--batch-size", "32", "--out", out, "--no-report",
            "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "model mnist_resnet" in r.stdout and "random shifts up to 2 px" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["model"] == "resnet" and m["config"]["lr"] == 0.2 and m["config"]["shift"] == 2
    assert m["config"]["batch_size"] == 32  # a flag given wins over the recipe's default
    assert isinstance(jn.load(out / "model.npz"), jn.Model)
    assert "epoch   1/1" in r.stdout and m["config"]["epochs"] == 1  # a self-test is one epoch, as --help says


def test_self_test_epochs_given_win_for_either_model(monkeypatch):
    seen = []
    monkeypatch.setattr(cli_train, "train_mnist", lambda config, **kw: seen.append(config))
    for model in ("cnn", "resnet"):
        assert cli.main(["train", "--self-test", "--model", model]) == 0
        assert cli.main(["train", "--self-test", "--model", model, "--epochs", "3"]) == 0
        assert cli.main(["train", "--model", model]) == 0
    assert [c.epochs for c in seen] == [1, 3, 10, 1, 3, 10]


def test_train_keeps_freed_memory_for_its_steps(monkeypatch):
    calls = []
    monkeypatch.setattr(cli_train, "keep_freed_memory", lambda: calls.append("kept"))
    monkeypatch.setattr(cli_train, "train_mnist", lambda config, **kw: calls.append("trained"))
    assert cli.main(["train", "--self-test"]) == 0
    assert calls == ["kept", "trained"]


def one_line_error(r, prog):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.parametrize("args,expect", [
    (["--epochs", "-1"], "--epochs: must be >= 1, got -1"),
    (["--epochs", "0"], "--epochs: must be >= 1"),
    (["--epochs", "ten"], "expected an integer"),
    (["--batch-size", "0"], "--batch-size: must be >= 1"),
    (["--lr", "-0.1"], "--lr: must be a positive number"),
    (["--lr", "nan"], "--lr: must be a positive number"),
    (["--train-size", "60000", "--self-test"], "self-test trains on 256 fake images"),  # not cut silently
    (["--train-size", "60000"], "train_size must be <= 55000"),
    (["--resume", "/nonexistent/run"], "no such run directory"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--model", "vgg"], "invalid choice: 'vgg'"),
    (["--shift", "-1"], "--shift: must be >= 0"),
    (["--shift", "15"], "shift must be <= 14 pixels"),
    (["--model", "resnet", "--resume", "."], "--model cannot be combined with --resume"),
])
def test_train_bad_arguments(tmp_path, args, expect):
    if expect is None:
        r = run("train", *args, "--out", tmp_path / "run", "--no-report")
        assert r.returncode == 0, r.stderr
        return
    line = one_line_error(run("train", *args, "--out", tmp_path / "run"), "jimunet train")
    assert expect in line
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_resume_of_a_directory_without_checkpoint(tmp_path):
    line = one_line_error(run("train", "--resume", tmp_path), "jimunet train")
    assert "checkpoint.npz does not exist" in line


def test_model_file_errors(tmp_path, model_file):
    line = one_line_error(run("evaluate", tmp_path / "missing.npz"), "jimunet evaluate")
    assert "no such model file" in line
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    line = one_line_error(run("evaluate", corrupt), "jimunet evaluate")
    assert "corrupt" in line or "not a readable" in line
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(model_file.read_bytes()[:5000])
    one_line_error(run("predict", truncated, tmp_path / "x.npy"), "jimunet predict")
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    line = one_line_error(run("evaluate", other), "jimunet evaluate")
    assert "not one written by jimunet" in line


def test_predict_errors(tmp_path, model_file):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    line = one_line_error(run("predict", model_file, text), "jimunet predict")
    assert "not a readable image" in line
    line = one_line_error(run("predict", model_file, tmp_path / "missing.png"), "jimunet predict")
    assert "no such file" in line
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5)))
    line = one_line_error(run("predict", model_file, tmp_path / "wrong.npy"), "jimunet predict")
    assert "expected an array of shape" in line
    one_line_error(run("predict", model_file), "jimunet predict")  # no FILE


def test_predict_prints_top3_per_image(tmp_path, model_file):
    from PIL import Image, ImageDraw
    im = Image.new("L", (90, 120), 255)
    ImageDraw.Draw(im).line([(45, 10), (45, 110)], fill=0, width=10)
    im.save(tmp_path / "one.png")
    np.save(tmp_path / "two.npy", np.zeros((2, 28, 28, 1), np.uint8))
    r = run("predict", model_file, tmp_path / "one.png", tmp_path / "two.npy")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == [str(tmp_path / "one.png"), f"{tmp_path / 'two.npy'}[0]",
                                                 f"{tmp_path / 'two.npy'}[1]"]
    for ln in lines:
        top = re.findall(r"(\d) \([<>]?(\d+\.\d\d)%\)", ln.split(": ", 1)[1])
        assert len(top) == 3 and len({c for c, _ in top}) == 3
        probs = [float(p) for _, p in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.2
    # the same input twice gives the same answer (evaluation mode: no dropout)
    assert lines[1].split(": ")[1] == lines[2].split(": ")[1]


def test_predict_matches_the_model(tmp_path, model_file):
    """What ``predict`` prints for a .npy digit is the model's own softmax on preprocessed pixels."""
    (_, _), (x, _) = jn.datasets.load_mnist(progress=False)
    np.save(tmp_path / "d.npy", x[0])
    from jimunet.data.images import preprocess
    model = jn.load(model_file)
    logits = model.predict(preprocess(x[:1]))[0].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    best = int(p.argmax())
    r = run("predict", model_file, tmp_path / "d.npy", "--top", "1")
    from jimunet.app.cli.predict import percent
    assert r.returncode == 0 and r.stdout.strip() == f"{tmp_path / 'd.npy'}: {best} ({percent(p[best])})"


def test_evaluate_prints_accuracy_and_confusion_table(model_file, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
    y = np.arange(50, dtype=np.int64) % 10
    monkeypatch.setattr(jn.datasets, "load_mnist", lambda root=None, **kw: ((x, y), (x, y)))
    assert cli.main(["evaluate", str(model_file)]) == 0
    out = capsys.readouterr().out
    m = re.search(r"accuracy (\d+\.\d\d)%\s+error (\d+\.\d\d)%", out)
    assert m and float(m.group(1)) + float(m.group(2)) == pytest.approx(100.0)
    table = out[out.index("true\\pred"):].strip().splitlines()
    assert len(table) == 11
    assert table[0].split()[1:] == [str(i) for i in range(10)] + ["total"]
    rows = [[int(v) for v in ln.split()] for ln in table[1:]]
    assert [r[0] for r in rows] == list(range(10))
    assert all(sum(r[1:-1]) == r[-1] == 5 for r in rows)
    assert len({len(ln) for ln in table[1:]}) == 1  # aligned


def test_unexpected_errors_are_one_line_unless_debugging(monkeypatch, capsys):
    def broken(*a, **k):
        raise OSError("disk on fire")
    monkeypatch.setattr(cli_train, "train_mnist", broken)
    monkeypatch.delenv("JIMUNET_DEBUG", raising=False)
    assert cli.main(["train", "--self-test"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jimunet train: error: disk on fire (JIMUNET_DEBUG=1 shows the traceback)"]
    monkeypatch.setenv("JIMUNET_DEBUG", "1")
    with pytest.raises(OSError, match="disk on fire"):
        cli.main(["train", "--self-test"])


def test_interrupt_and_divergence_exit_codes(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise jn.training.TrainingInterrupted("stopped", 1, 8)
    monkeypatch.setattr(cli_train, "train_mnist", interrupted)
    assert cli.main(["train", "--self-test"]) == 130

    def diverged(*a, **k):
        raise jn.training.TrainingDiverged("training diverged at step 3 (epoch 1): the loss is nan", 3, 1)
    monkeypatch.setattr(cli_train, "train_mnist", diverged)
    assert cli.main(["train", "--self-test"]) == 1
    assert "diverged at step 3" in capsys.readouterr().err


def test_nan_loss_from_the_command_line(tmp_path):
    r = run("train", "--self-test", "--lr", "1e6", "--epochs", "2", "--out", tmp_path / "run", "--no-report")
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and re.search(r"diverged at step \d+ \(epoch 1\)", errors[0])
    assert "Traceback" not in r.stderr
    assert (tmp_path / "run" / "checkpoint.npz").is_file()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery to a child needs POSIX")
def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    # as a terminal starts it, however this test run was started (its SIGINT may be ignored)
    proc = subprocess.Popen([*FOREGROUND, "-m", "jimunet", "train", "--self-test", "--epochs", "500",
                             "--out", str(out), "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + HANG  # bounds a hang; a loaded machine may take minutes
        def epochs_done():  # metrics.json is rewritten (atomically) at the end of every epoch
            try:
                return json.loads((out / "metrics.json").read_text())["epochs_completed"]
            except FileNotFoundError:
                return 0
        while epochs_done() < 1:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"jimunet train --resume {out}" in stdout
    with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
        done = json.loads(z["__meta__"].tobytes())["state"]["epoch"]
    assert done >= 1
    assert json.loads((out / "metrics.json").read_text())["status"] == "interrupted"
    r = run("train", "--resume", out, "--epochs", done + 1)
    assert r.returncode == 0, r.stderr
    assert f"resumed from checkpoint.npz: {done} epochs" in r.stdout
    assert "test error 0.00%" in r.stdout
    assert json.loads((out / "metrics.json").read_text())["epochs_completed"] == done + 1


# --------------------------------------------------------------------------- one error format

@pytest.fixture
def odd_files(tmp_path, model_file):
    """A run directory, models that are not MNIST classifiers, an image too large to read."""
    run_dir = tmp_path / "runs" / "X"
    run_dir.mkdir(parents=True)
    (run_dir / "best.npz").write_bytes(model_file.read_bytes())
    (run_dir / "model.npz").write_bytes(model_file.read_bytes())
    jn.Sequential([]).save(tmp_path / "zero.npz")
    jn.Sequential([jn.layers.Conv2D(1, 2, 3, rng=0)]).save(tmp_path / "conv.npz")
    jn.Sequential([jn.layers.Flatten(), jn.layers.Dense(10, 10, rng=0)]).save(tmp_path / "small_input.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not a zip")
    np.save(tmp_path / "d.npy", np.zeros((28, 28), np.uint8))
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000,
                                                                                          8, 0, 0, 0, 0))
                                        + chunk(b"IEND", b""))
    return tmp_path


@pytest.mark.parametrize("argv,expect", [
    (["train", "--epochs", "0"], "--epochs: must be >= 1"),
    (["train", "--self-test", "--train-size", "100000"],
     "the self-test trains on 256 fake images and tests on 64, so train_size (--train-size) must be <= 256, "
     "got 100000"),
    (["evaluate", "{t}/runs/X"], "{t}/runs/X is a directory, not a model file; did you mean {t}/runs/X/best.npz "
                                 "or {t}/runs/X/model.npz?"),
    (["evaluate", "{t}/runs"], "{t}/runs is a directory, not a model file (a model file is e.g. {t}/runs/best.npz)"),
    (["evaluate", "{t}/zero.npz"], "{t}/zero.npz: the model has no layers"),
    (["evaluate", "{t}/conv.npz"], "{t}/conv.npz: the model outputs (28, 28, 2) per image; expected class scores"),
    (["evaluate", "{t}/small_input.npz"], "the model cannot take a 28x28x1 MNIST image: layer 1 (Dense(10->10))"),
    (["predict", "{t}/zero.npz", "{t}/d.npy"], "the model has no layers"),
    (["predict", "{t}/runs/X", "{t}/d.npy"], "is a directory, not a model file; did you mean"),
    (["predict", "{model}", "{t}/huge.png"], "{t}/huge.png: the image is 12000x12000 (144.0 megapixels)"),
    (["report", "{t}/nope"], "{t}/nope"),
    (["explain", "--index", "-1"], "--index must be >= 0"),
    (["explain", "{t}/runs/X"], "is a directory, not a model file; did you mean {t}/runs/X/best.npz"),
    (["explain", "{t}/corrupt.npz"], "cannot load {t}/corrupt.npz"),
    (["explain", "{model}", "{t}/huge.png"], "megapixels"),
])
def test_every_command_reports_errors_the_same_way(odd_files, model_file, argv, expect, capsys):
    """``jimunet <command>: error: <message>`` on stderr, one line, exit code 2 (bad usage)."""
    fill = {"t": str(odd_files), "model": str(model_file)}
    try:
        code = cli.main([a.format(**fill) for a in argv])
    except SystemExit as e:  # argparse's own errors exit
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"jimunet {argv[0]}: error: "), err
    assert expect.format(**fill) in lines[0]


def test_evaluate_a_model_of_more_classes_than_digits(tmp_path, monkeypatch, capsys):
    """A 20-class model used to fail with "cannot reshape array of size 110 into shape (10,10)";
    the confusion matrix now has a column per model output."""
    jn.Sequential([jn.layers.Flatten(), jn.layers.Dense(784, 20, rng=0)]).save(tmp_path / "m20.npz")
    x = np.random.default_rng(0).integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    y = np.arange(40, dtype=np.int64) % 10
    monkeypatch.setattr(jn.datasets, "load_mnist", lambda root=None, **kw: ((x, y), (x, y)))
    assert cli.main(["evaluate", str(tmp_path / "m20.npz")]) == 0
    out = capsys.readouterr().out
    table = out[out.index("true\\pred"):].strip().splitlines()
    assert table[0].split()[1:] == [str(i) for i in range(20)] + ["total"]
    assert len(table) == 21 and all(int(row.split()[-1]) == (4 if i < 10 else 0) for i, row in enumerate(table[1:]))


def test_one_convention_for_every_command(capsys):
    """Each command is a module with ``register`` and ``run``; a ``UserError`` it raises becomes
    ``jimunet <cmd>: error: ...`` and its exit code."""
    parser = cli.build_parser()
    assert list(parser.commands) == [c.__name__.rsplit(".", 1)[1].rstrip("_") for c in cli.COMMANDS]
    for command in cli.COMMANDS:
        assert callable(command.register) and callable(command.run), command.__name__

    def run(args):
        raise UserError("no can do", 7)
    sub = argparse.ArgumentParser(prog="jimunet").add_subparsers(dest="command")
    add_command(sub, "demo", run)
    args = sub.choices["demo"].parse_args([])
    assert args.func(args) == 7
    assert capsys.readouterr().err == "jimunet demo: error: no can do\n"
    args.prog = "jimunet demo [rank 1 of 2]"
    assert args.func(args) == 7
    assert capsys.readouterr().err == "jimunet demo [rank 1 of 2]: error: no can do\n"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
@pytest.mark.parametrize("args", [["predict", "{model}", "{images}"], ["--help"], ["predict", "--help"]])
def test_output_to_a_reader_that_has_gone_ends_quietly(tmp_path, model_file, args):
    # `jimunet predict ... | head -1`, with head already gone: every write to the pipe fails
    np.save(tmp_path / "x.npy", np.zeros((500, 28, 28, 1), np.uint8))
    argv = [a.format(model=model_file, images=tmp_path / "x.npy") for a in args]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([sys.executable, "-m", "jimunet", *argv], stdout=write_end, stderr=subprocess.PIPE,
                           text=True, timeout=300)
    finally:
        os.close(write_end)
    assert r.stderr == ""  # neither an error line nor Python's "Exception ignored ... BrokenPipeError"
    assert r.returncode == (cli.EXIT_BROKEN_PIPE if args[-1] != "--help" else 0)
