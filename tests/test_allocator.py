"""``keep_freed_memory``: a freed large array's pages serve the next one (glibc)."""
import os
import subprocess
import sys

import pytest

from jimunet import allocator

# Allocates, fills and frees a 64 MB array, then does it again, and prints the page faults of
# the second time. Without the setting glibc unmaps the first array, so the second one faults
# every page in again (32 huge pages, or 16,384 small ones).
_SCRIPT = """
import resource, sys
import numpy as np
import jimunet as jn
if sys.argv[1] == "keep":
    assert jn.keep_freed_memory()
a = np.ones(16 << 20, np.float32); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(16 << 20, np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode, **extra_env):
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update(PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), **extra_env)
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="a glibc setting: this C library is not glibc")
def test_the_second_array_reuses_the_first_ones_pages():
    default, kept = _faults("default"), _faults("keep")
    assert default >= 32, default  # the setting's effect is only visible if the default faults
    assert kept < default / 4, (kept, default)
    # the same settings given to a process yet to start (bench.py --keep-freed-memory)
    assert _faults("default", GLIBC_TUNABLES=allocator.GLIBC_TUNABLES) < default / 4


def test_elsewhere_it_changes_nothing_and_says_so(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.keep_freed_memory() is False
