"""The test suite itself: it refuses to test a copy that is not this checkout, and its signal
tests pass however the run is started (a background job, nohup, a CI runner)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def pytest_child(*args, pythonpath, shell_prefix="", timeout=600):
    """``python -m pytest ARGS`` in this checkout, with ``PYTHONPATH`` as given, started by a shell
    that first runs ``shell_prefix`` (e.g. ``trap "" INT``: what a shell does for a job started with ``&``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "JIMUNET_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    script = f'{shell_prefix}\nexec "$0" "$@"'
    return subprocess.run(["/bin/sh", "-c", script, sys.executable, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("init, expected", [
    ("__version__ = '0.1.0'\n", "found another copy: {path}"),
    ("raise ImportError('a broken install')\n", "`import jimunet` failed: a broken install"),
])
def test_the_suite_refuses_a_jimunet_that_is_not_this_checkout(tmp_path, init, expected):
    fake = tmp_path / "site-packages" / "jimunet"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(init)
    r = pytest_child("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_readme.py",
                     pythonpath=[fake.parent], timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert expected.format(path=(fake / "__init__.py").resolve()) in out
    assert f'from {ROOT}: pip install -e ".[test]"' in out
    assert "passed" not in out and "Traceback" not in out and "Error:" not in out.replace("ERROR:", "")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: these tests "), out  # one paragraph


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and /bin/sh")
def test_signal_tests_pass_when_the_test_run_ignores_sigint():
    ignore = 'trap "" INT'  # a non-interactive shell does this for `python -m pytest ... &`
    r = pytest_child("-c", "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)", pythonpath=[SRC],
                     shell_prefix=ignore, timeout=300)
    assert r.stdout.strip() == "True", r  # the setup works: the child inherits the ignore
    # one test that sends Ctrl-C to a `jimunet train` it starts, one that sends it to itself
    tests = ["tests/test_cli.py::test_ctrl_c_saves_a_resumable_checkpoint",
             "tests/test_rundir.py::test_stop_signals_wait_inside_a_step_and_not_elsewhere"]
    r = pytest_child("-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, pythonpath=[SRC], shell_prefix=ignore)
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
