"""Keeping the memory of freed arrays for the next training step (glibc's malloc).

glibc hands every block over its mmap threshold (32 MB at most) back to the operating system
when it is freed, and NumPy's large arrays are such blocks. A training loop allocates the same
activations and gradients at every step, so each step faults all their pages in again and the
kernel zeroes every one of them: in the airbench recipe (batch 1024, activations of 60-250 MB)
a quarter to a third of the CPU time went to the system (BENCHMARKS.md, "#23 speed steps",
step 6). After ``keep_freed_memory()`` malloc takes large blocks from its heap as well and
never trims the heap, so the next step reuses pages that are already there. What it costs:
the process keeps the memory of its largest step until it exits, plus some fragmentation
(airbench at batch 1024: a peak of 1,605 MB instead of 1,390). ``jimunet train`` calls it; a
long-lived process that trains once and then does something else should not.
"""
from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD = -1  # <malloc.h>: free heap at the top kept up to this many bytes
_M_MMAP_MAX = -4  # <malloc.h>: how many blocks may be mmapped at once (0: none)
_INT_MAX = 2 ** 31 - 1

#: The same two settings for a process yet to start, as its ``GLIBC_TUNABLES`` environment
#: variable (``benchmarks/bench.py --keep-freed-memory`` gives it to every framework alike).
GLIBC_TUNABLES = f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={_INT_MAX}"


def _glibc():
    """The process's C library if it is glibc, else None."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (AttributeError, ValueError, OSError):  # not a GNU system
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module's text): large blocks
    from the heap (``M_MMAP_MAX`` 0) and no trimming (``M_TRIM_THRESHOLD`` at its maximum).
    Changes no number any computation gives. For the whole process, from now on.

    Returns:
        True when both settings took; False where the C library is not glibc (nothing changes).
    """
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    heap_only = mallopt(_M_MMAP_MAX, 0) == 1  # mallopt returns 1 on success
    never_trimmed = mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    return heap_only and never_trimmed
