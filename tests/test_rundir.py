"""Run directories: one process at a time, never another's files, leftovers, SIGTERM, relocation, trust.

Every run here is the self-test's fake data (or a few fake "MNIST" images), so nothing is
downloaded; every process a test starts is ended by it, also when the test fails.
"""
import ast
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jimunet as jn
from jimunet.app import cli
from jimunet.app.recipes import ConfigError, MNISTConfig
from jimunet.serialization import CheckpointError, load_npz, save_npz
from jimunet.app.training import load_run_config, train_mnist
from jimunet.training import Callback, TrainingInterrupted

SRC = pathlib.Path(jn.__file__).resolve().parents[1]
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="signals and flock are POSIX")
HANG = 300  # seconds after which a child is taken to hang: a bound, never a speed (a loaded machine is slow)


def env():
    """The environment of a child process: this checkout's jimunet, whatever its working directory."""
    e = {k: v for k, v in os.environ.items() if k != "JIMUNET_DEBUG"}
    e["PYTHONPATH"] = os.pathsep.join([str(SRC)] + [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p])
    return e


def jimunet(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "jimunet", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env(), cwd=cwd)


def start_training(out, *extra, **popen):
    """A long self-test run in the background (stopped by the test)."""
    return subprocess.Popen([sys.executable, "-m", "jimunet", "train", "--self-test", "--epochs", "500", "--out",
                             str(out), "--no-report", "--threads", "1", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), **popen)


def wait_for_epochs(proc, out, n=1, timeout=HANG):
    """Wait until the run in ``out`` has written ``n`` epochs to metrics.json (rewritten atomically)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if json.loads((out / "metrics.json").read_text())["epochs_completed"] >= n:
                return
        except FileNotFoundError:
            pass
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    return proc.communicate(timeout=HANG)


def snapshot(directory):
    """Every file's name, size, modification time and content hash."""
    out = {}
    for p in sorted(pathlib.Path(directory).iterdir()):
        st = p.stat()
        out[p.name] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "__meta__"}


def assert_same_arrays(a, b):
    a, b = arrays(a), arrays(b)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def checkpoint_epoch(run):
    return load_npz(run / "checkpoint.npz")[1]["state"]["epoch"]


def self_test(out, **kw):
    return MNISTConfig(**{"self_test": True, "epochs": 2, "out": str(out), "report": False, "progress": False,
                          **kw})


class InterruptAt(Callback):
    """Raise ``exc`` after global step ``step`` (0-based) or at the end of training."""

    def __init__(self, step=None, exc=KeyboardInterrupt):
        self.step, self.exc = step, exc

    def on_step_end(self, trainer, step, loss):
        if step == self.step:
            raise self.exc()

    def on_train_end(self, trainer):
        if self.step is None:
            raise self.exc()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """2 epochs of the self-test, never interrupted (4 steps of 64 per epoch)."""
    run = tmp_path_factory.mktemp("full") / "run"
    train_mnist(self_test(run), echo=False)
    return run


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The same run, interrupted in epoch 2 (its checkpoint holds epoch 1); copy it to use it."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.raises(TrainingInterrupted):
        train_mnist(self_test(run), callbacks=[InterruptAt(step=5)], echo=False)
    return run


# -- 1. one process at a time --------------------------------------------------------------

@POSIX
def test_a_second_process_is_refused_while_a_run_holds_the_directory(tmp_path):
    out = tmp_path / "run"
    first = start_training(out)
    try:
        wait_for_epochs(first, out)
        for args in (["--self-test", "--out", out], ["--resume", out]):
            r = jimunet("train", *args, "--no-report")
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("jimunet train: error: "), r.stderr
            assert f"in use by process {first.pid}" in lines[0] and f"kill {first.pid}" in lines[0]
            assert r.stdout == ""
        assert first.poll() is None  # the first run carries on
    finally:
        stop(first)
    log = (out / "train.log").read_text()
    assert log.count("starting run") == 1 and "resuming" not in log


@POSIX
def test_a_refused_process_touches_no_file(tmp_path):
    from jimunet.app.rundir import RunDir, RunDirBusy

    out = tmp_path / "run"
    with RunDir.claim(out, resume=False):
        (out / ".checkpoint.npz.k3j4h5g6.part").write_bytes(b"a write in progress")  # the holder's, not a leftover
        before = snapshot(out)
        r = jimunet("train", "--self-test", "--out", out, "--no-report")
        assert r.returncode == 2 and f"in use by process {os.getpid()}" in r.stderr, r.stderr
        with pytest.raises(RunDirBusy, match=f"process {os.getpid()}"):
            RunDir.claim(out, resume=False)  # another open file description: refused as well
        assert snapshot(out) == before
    assert not (out / ".jimunet.lock").exists()  # released, and removed by its holder


@POSIX
def test_kill_9_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    proc = start_training(out)
    try:
        wait_for_epochs(proc, out)
        proc.kill()  # SIGKILL: no handler runs, the lock file stays behind
        proc.wait(timeout=HANG)
    finally:
        stop(proc)
    assert json.loads((out / ".jimunet.lock").read_text())["pid"] == proc.pid
    done = checkpoint_epoch(out)
    r = train_mnist(self_test(out, epochs=done + 1), resume=out, echo=False)  # the kernel dropped the lock
    assert len(r.history.epochs) == done + 1 and not (out / ".jimunet.lock").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


# -- 2. never another's files ---------------------------------------------------------------

def test_a_directory_of_the_users_files_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.npz").write_bytes(b"my own model")
    (out / "metrics.json").write_text('{"mine": true}')
    before = snapshot(out)
    assert cli.main(["train", "--self-test", "--out", str(out), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jimunet train: error: ") and "not a jimunet run directory" in err
    assert "--out" in err and "--resume" in err and "metrics.json, model.npz" in err
    assert snapshot(out) == before
    # a run.json that is not jimunet's does not make it one
    (out / "run.json").write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="its run.json is not jimunet's"):
        train_mnist(self_test(out), echo=False)
    # nor is a file a directory
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        train_mnist(self_test(tmp_path / "file"), echo=False)
    assert (tmp_path / "file").read_text() == "x"


def test_empty_and_own_directories_are_accepted(tmp_path, uninterrupted):
    empty = tmp_path / "empty"
    empty.mkdir()
    train_mnist(self_test(empty, epochs=1), echo=False)
    assert json.loads((empty / "run.json").read_text())["status"] == "completed"
    # a run that failed before its first checkpoint leaves a run directory that can be reused
    (empty / "checkpoint.npz").unlink()
    train_mnist(self_test(empty, epochs=1), echo=False)
    # a run directory with a checkpoint is resumed, not overwritten
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        train_mnist(self_test(empty, epochs=1), echo=False)


def test_a_run_directory_from_before_the_marker_is_still_a_run(tmp_path, uninterrupted):
    old = tmp_path / "old"
    old.mkdir()
    for f in ("checkpoint.npz", "metrics.json", "train.log"):
        (old / f).write_bytes((uninterrupted / f).read_bytes())
    with pytest.raises(ConfigError, match="already holds a run"):
        train_mnist(self_test(old), echo=False)
    assert not (old / "run.json").exists()
    train_mnist(self_test(old, epochs=2), resume=old, echo=False)
    assert json.loads((old / "run.json").read_text())["format"] == "jimunet-run"


# -- 3. leftovers of a write that was cut short ----------------------------------------------

def test_leftover_temporary_files_are_removed_on_resume_and_nothing_else(tmp_path, interrupted):
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    # a process killed inside atomic_writer leaves its temporary file with the name it really gets
    code = ("import os, sys; from jimunet.serialization import atomic_writer\n"
            "with atomic_writer(os.path.join(sys.argv[1], 'checkpoint.npz')) as f:\n"
            "    f.write(b'half a checkpoint'); f.flush(); os._exit(9)\n")
    r = subprocess.run([sys.executable, "-c", code, str(run)], env=env(), timeout=HANG)
    assert r.returncode == 9
    leftovers = sorted(p.name for p in run.glob(".checkpoint.npz.*.part"))
    assert len(leftovers) == 1
    (run / ".metrics.json.zz9_Q.part").write_text("{")
    keep = [".checkpoint.npz.part", ".checkpoint.npz.a.part.bak", ".notes.txt.abc.part", "a.part",
            ".report.html.abc.part", "checkpoint.npz.abcdef.part"]
    for name in keep:
        (run / name).write_text("the user's")
    r = train_mnist(self_test(run), resume=run, echo=False)
    assert not list(run.glob(".checkpoint.npz.*.part")) and not (run / ".metrics.json.zz9_Q.part").exists()
    assert all((run / name).read_text() == "the user's" for name in keep)
    assert "removed 2 temporary files left by a write that was cut short" in (run / "train.log").read_text()
    assert len(r.history.epochs) == 2


# -- 4. SIGTERM, and a background job's ignored SIGINT ----------------------------------------

def comparable(m):
    """metrics.json without timings (they differ between runs)."""
    return {"epochs": [{k: v for k, v in e.items() if k not in ("seconds", "images_per_s")} for e in m["epochs"]],
            **{k: m[k] for k in ("step_loss", "test_accuracy", "confusion_matrix", "best_epoch", "steps",
                                 "status", "config")}}


def _ignore_sigint():  # what a non-interactive shell does for `jimunet train ... &`
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # whatever the test run's own SIGTERM is


@POSIX
def test_sigterm_saves_and_the_moved_run_resumes_bit_identically(tmp_path):
    out = tmp_path / "run"
    proc = start_training(out, preexec_fn=_ignore_sigint)
    try:
        wait_for_epochs(proc, out)
        # SIGINT first: were it handled, it would win (Python runs handlers in signal order) and
        # the exit status would be 130. The background job ignores it, as its shell asked.
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=HANG)
    finally:
        stop(proc)
    assert proc.returncode == 143, (proc.returncode, stdout, stderr)
    assert "Traceback" not in stderr
    done = checkpoint_epoch(out)
    assert done >= 1
    assert f"stopped by SIGTERM during epoch {done + 1}" in stdout
    assert f"jimunet train --resume {out}" in stdout
    assert json.loads((out / "metrics.json").read_text())["status"] == "interrupted"
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not (out / ".jimunet.lock").exists() and not (out / "model.npz").exists()

    # 5. move and rename it, then resume it from another working directory
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    out.rename(moved)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = jimunet("train", "--resume", "../elsewhere/renamed", "--epochs", done + 1, "--threads", "1", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert f"resumed from checkpoint.npz: {done} epochs" in r.stdout
    full = tmp_path / "full"
    r = jimunet("train", "--self-test", "--epochs", done + 1, "--out", full, "--no-report", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert_same_arrays(full / "model.npz", moved / "model.npz")
    assert_same_arrays(full / "checkpoint.npz", moved / "checkpoint.npz")  # momentum and RNG states too
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (full, moved))
    assert comparable(a) == comparable(b)


def test_sigterm_after_the_last_epoch_says_what_is_left_and_resumes(tmp_path, uninterrupted):
    from jimunet.app.rundir import Stopped

    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as info:
        train_mnist(self_test(run), callbacks=[InterruptAt(exc=lambda: Stopped(signal.SIGTERM))], echo=False)
    e = info.value
    assert e.signum == signal.SIGTERM and e.epochs_completed == 2
    assert "stopped by SIGTERM after the last epoch" in e.message and "model.npz are still to do" in e.message
    assert cli.interrupted_exit(e) == 143
    train_mnist(resume=run, echo=False)
    assert_same_arrays(uninterrupted / "model.npz", run / "model.npz")


class SignalAt(Callback):
    """Send ``signum`` to this process after global step ``step``, as ``kill`` would."""

    def __init__(self, step, signum):
        self.step, self.signum = step, signum

    def on_step_end(self, trainer, step, loss):
        if step == self.step:
            # only with a handler in place: this process is the test run
            assert signal.getsignal(self.signum) not in (signal.SIG_DFL, signal.SIG_IGN, None)
            os.kill(os.getpid(), self.signum)


@POSIX
@pytest.mark.usefixtures("terminal_signals")  # this process gets the signal, as a foreground run would
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_lets_the_step_in_progress_finish(tmp_path, uninterrupted, signum):
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as info:
        train_mnist(self_test(run), callbacks=[SignalAt(5, signum)], echo=False)
    e = info.value
    # the signal came after step 5 had been checked; step 6 ran to its end, then training stopped
    assert e.signum == signum and e.step == 7 and e.epochs_completed == 1
    assert cli.interrupted_exit(e) == 128 + signum
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are back as they were
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    train_mnist(resume=run, echo=False)
    assert_same_arrays(uninterrupted / "model.npz", run / "model.npz")
    assert_same_arrays(uninterrupted / "checkpoint.npz", run / "checkpoint.npz")


@POSIX
@pytest.mark.usefixtures("terminal_signals")
def test_stop_signals_wait_inside_a_step_and_not_elsewhere():
    from jimunet.app.rundir import StopSignals, Stopped

    def deliver(stops, signum):
        os.kill(os.getpid(), signum)
        for _ in range(100_000):  # Python runs the handler between two bytecodes, soon after
            if stops.pending is not None:
                return

    stops = StopSignals()
    with stops.installed():
        assert signal.getsignal(signal.SIGTERM) == stops._handler
        with pytest.raises(Stopped):
            with stops.deferred():
                deliver(stops, signal.SIGTERM)
                assert stops.pending == signal.SIGTERM  # recorded, not raised: the step goes on
                with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
                    deliver(stops, signal.SIGINT)
            # leaving the step raises what was recorded
        with pytest.raises(Stopped):
            deliver(stops, signal.SIGTERM)  # outside a step: at once
        assert stops.pending is None
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    # an ignored SIGINT (a background job's) is left ignored
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stops.installed():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# -- 5. relocatable ---------------------------------------------------------------------------

def test_a_moved_run_resumes_from_any_working_directory(tmp_path, uninterrupted, monkeypatch):
    run = tmp_path / "a" / "run"
    with pytest.raises(TrainingInterrupted):
        train_mnist(self_test(run), callbacks=[InterruptAt(step=5)], echo=False)  # in epoch 2
    # no file the run reads back holds where it was (train.log is a record for people, never read)
    for f in run.iterdir():
        if f.name != "train.log":
            assert str(tmp_path).encode() not in f.read_bytes(), f.name
    assert load_run_config(run).out is None
    moved = tmp_path / "b" / "renamed"
    moved.parent.mkdir()
    run.rename(moved)
    (tmp_path / "c").mkdir()
    monkeypatch.chdir(tmp_path / "c")
    r = train_mnist(resume="../b/renamed", echo=False)
    assert r.run_dir == "../b/renamed"
    assert_same_arrays(uninterrupted / "model.npz", moved / "model.npz")
    assert_same_arrays(uninterrupted / "checkpoint.npz", moved / "checkpoint.npz")
    # and a different --out is still refused
    with pytest.raises(ConfigError, match="resume writes into the run directory it resumes"):
        train_mnist(self_test(tmp_path / "other", epochs=3), resume="../b/renamed", echo=False)


# -- 6. paths in a file are not trusted -------------------------------------------------------

def fake_mnist(calls):
    """A stand-in for ``load_mnist`` that records where it was asked to look."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (400, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 400)

    def load_mnist(root=None, download=True, progress=True):
        calls.append(root)
        return (x, y), (x[:64], y[:64])
    return load_mnist


def test_a_crafted_checkpoint_cannot_choose_the_data_directory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(jn.datasets, "load_mnist", fake_mnist(calls))
    run = tmp_path / "run"
    cfg = MNISTConfig(epochs=1, batch_size=32, validation_size=64, train_size=128, test_size=64, out=str(run),
                      report=False, progress=False, data_dir=str(tmp_path / "mine"))
    train_mnist(cfg, echo=False)
    assert calls == [str(tmp_path / "mine")]
    # the attacker's copy points the data (and its download) elsewhere
    evil = tmp_path / "evil" / "deep"
    arrs, meta = load_npz(run / "checkpoint.npz")
    meta["metadata"]["config"].update(data_dir=str(evil), out="/somewhere/else")
    save_npz(run / "checkpoint.npz", arrs, meta)
    assert load_run_config(run).data_dir is None and load_run_config(run).out is None
    train_mnist(resume=run, config=load_run_config(run).replace(epochs=2), echo=False)
    assert calls[-1] is None  # load_mnist's own default: $JIMUNET_DATA, else ~/.cache/jimunet/mnist
    mine = tmp_path / "flag"
    assert cli.main(["train", "--resume", str(run), "--epochs", "3", "--data-dir", str(mine), "--no-report"]) == 0
    assert calls[-1] == str(mine)
    assert not (tmp_path / "evil").exists() and not pathlib.Path("/somewhere").exists()


def test_the_report_takes_no_data_directory_from_the_run(tmp_path, monkeypatch):
    from jimunet.app.report import data as report

    calls = []
    monkeypatch.setattr(jn.datasets, "load_mnist", fake_mnist(calls))
    (tmp_path / "theirs").mkdir()
    report._load_test_data(None, {"data_dir": str(tmp_path / "theirs"), "test_size": 5})
    report._load_test_data(str(tmp_path / "mine"), {"data_dir": str(tmp_path / "theirs")})
    assert calls == [None, str(tmp_path / "mine")]


# -- 7. optimizer state of the wrong kind ------------------------------------------------------

@pytest.mark.parametrize("bad,expect", [
    ("a string", "'momentum_buffer' must be a floating-point array of the parameter's shape (5, 5, 1, 32), "
                 "got a value of type str"),
    (np.zeros((5, 5, 1, 32), np.int64), "got an array of dtype int64"),
    (np.zeros((5, 5, 1, 32), bool), "got an array of dtype bool"),
    (np.zeros((3,), np.float32), "has shape (3,), parameter has (5, 5, 1, 32)"),
    (np.full((5, 5, 1, 32), np.nan, np.float32), "contains NaN or infinite values"),
    ("missing", "must hold exactly ['momentum_buffer']; missing ['momentum_buffer']; unexpected ['other']"),
    ("index", "state key '99' is not the index of one of the 8 parameters"),
])
def test_a_checkpoint_with_optimizer_state_of_the_wrong_kind_fails_at_resume(tmp_path, interrupted, bad, expect):
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    arrs, meta = load_npz(run / "checkpoint.npz")
    state = meta["state"]["optimizer"]["state"]
    key = state["0"]["momentum_buffer"]["__array__"]
    if isinstance(bad, np.ndarray):
        arrs[key] = bad
    elif bad == "index":
        state["99"] = state.pop("0")
    else:  # the array is no longer referred to: drop it too, as a crafted file would
        del arrs[key]
        state["0"] = {"other": 1.0} if bad == "missing" else {"momentum_buffer": bad}
    save_npz(run / "checkpoint.npz", arrs, meta)
    with pytest.raises(CheckpointError) as info:
        train_mnist(resume=run, echo=False)
    assert "does not fit this model/optimizer" in str(info.value) and expect in str(info.value)
    r = jimunet("train", "--resume", run)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("jimunet train: error: ") and expect in r.stderr


# -- 8. the framework never imports the application ------------------------------------------

FRAMEWORK = ["backend.py", "parameter.py", "functional", "layers", "losses.py", "optim.py", "model.py", "init.py",
             "parallel.py", "serialization.py", "gradcheck.py", "random.py"]


def test_framework_modules_never_import_the_application():
    root = pathlib.Path(jn.__file__).parent
    files = [f for name in FRAMEWORK for f in ([root / name] if name.endswith(".py") else (root / name).rglob("*.py"))]
    assert len(files) > len(FRAMEWORK)
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module or ''}.{a.name}" for a in node.names]
            for n in names:
                assert not n.strip(".").startswith(("app", "jimunet.app")), (f.name, n)
    code = ("import sys, jimunet, jimunet.optim, jimunet.serialization, jimunet.model, jimunet.parallel\n"
            "assert not [m for m in sys.modules if m.startswith('jimunet.app')], sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0, r.stderr


# -- a full disk ---------------------------------------------------------------------------

def test_a_full_disk_during_training_names_the_file_and_ends_the_run(tmp_path, monkeypatch, capsys):
    from full_disk import full_disk

    run = tmp_path / "run"
    run.mkdir()
    full_disk(monkeypatch, run, 5000, only="checkpoint.npz")
    assert cli.main(["train", "--self-test", "--no-report", "--threads", "1", "--out", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jimunet train: error: cannot write {run / 'checkpoint.npz'}: No space left on device"]
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert sorted(p.name for p in run.iterdir()) == ["run.json", "train.log"]  # no lock, no temporary file


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full (a device that is always full)")
def test_a_log_line_that_cannot_be_written_names_the_log(tmp_path, capsys):
    from jimunet.app.rundir import RunLog
    from jimunet.serialization import WriteError

    log = RunLog("/dev/full", echo=False)
    with pytest.raises(WriteError, match="^cannot write /dev/full: No space left on device$") as info:
        log("a line")
    assert isinstance(info.value, OSError) and info.value.path == "/dev/full"
    log("the lines after it go to the screen only")  # the log is given up: no second error
    log.close()
    # train.log of a run, on a full device: the run ends at once, naming it
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"format": "jimunet-run", "version": 1, "status": "failed"}))
    (run / "train.log").symlink_to("/dev/full")
    assert cli.main(["train", "--self-test", "--no-report", "--threads", "1", "--out", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jimunet train: error: cannot write {run / 'train.log'}: No space left on device"]
    assert json.loads((run / "run.json").read_text())["status"] == "failed" and not (run / ".jimunet.lock").exists()
