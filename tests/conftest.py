"""What every test relies on: that ``import jimunet`` is this checkout, and signal dispositions.

The tests check the source next to them. An installed copy (``pip install ".[serve]"`` without
``-e`` copies the package into site-packages) would be tested instead without a word, and the tests
that read files next to the package (pyproject.toml, the README) would fail with puzzling errors;
so the run stops before collecting anything, saying what was imported and how to fix it.
"""
import importlib
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
FIX = 'pip install -e ".[test]"'


def checkout_problem():
    """None when ``import jimunet`` is this checkout's ``src/jimunet``, else what is wrong and the fix."""
    try:
        jimunet = importlib.import_module("jimunet")
    except ImportError as e:
        return (f"these tests need jimunet from this checkout ({SRC / 'jimunet'}), but `import jimunet` failed: "
                f"{e}. Install the checkout in editable mode, from {ROOT}: {FIX}")
    found = Path(jimunet.__file__).resolve()
    if found.is_relative_to(SRC.resolve()):
        return None
    return (f"these tests are for the checkout {ROOT}, but `import jimunet` found another copy: {found} "
            f"(a non-editable install, e.g. `pip install \".[serve]\"`, or another checkout on PYTHONPATH), so "
            f"they would test that copy. Install this checkout in editable mode (every install command in the "
            f"README uses -e, so their order does not matter), from {ROOT}: {FIX} (or run the tests with "
            f"PYTHONPATH={SRC})")


def pytest_configure(config):
    problem = checkout_problem()
    if problem:
        raise pytest.UsageError(problem)


@pytest.fixture(scope="session")
def random_cnn_file(tmp_path_factory):
    """An untrained ``mnist_cnn(rng=0)`` saved without metadata, shared by the serving tests; no
    test may change it (one that does writes its own)."""
    import jimunet as jn
    path = tmp_path_factory.mktemp("model") / "random.npz"
    jn.models.mnist_cnn(rng=0).save(path)
    return path


@pytest.fixture
def terminal_signals():
    """SIGINT and SIGTERM in this process as in a terminal's foreground process, for a test that
    sends them to itself; a test run started with ``&`` or nohup ignores SIGINT, and that
    disposition is put back afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for signum, handler in saved.items():
        if handler is not None:  # None: set outside Python, which cannot be put back
            signal.signal(signum, handler)


@pytest.fixture(autouse=True)
def malloc_as_it_was(monkeypatch):
    """``jimunet train`` run inside the test process (``cli.main``) leaves malloc's settings alone:
    ``keep_freed_memory`` is for a process that only trains, not for a test session (its tests:
    test_allocator.py, and the commands the CLI tests start as processes)."""
    from jimunet.app.cli import train
    monkeypatch.setattr(train, "keep_freed_memory", lambda: False)
