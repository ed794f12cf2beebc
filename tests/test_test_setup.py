"""The test suite itself: it refuses to test a copy that is not this checkout."""
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

