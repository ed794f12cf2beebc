"""A fake full disk for the tests of jimunet's writers: ``full_disk(monkeypatch, under, room)``.

Every file that ``jimunet.serialization.atomic_writer`` opens below ``under`` accepts
``room`` bytes, then its writes fail with ``OSError(ENOSPC)``, as on a file system that
filled up while the file was written (the bytes up to ``room`` reach the temporary file,
so the failure comes midway). Other files are left alone.
"""
import errno
import io
import os

from jimunet import serialization

_real_fdopen = os.fdopen


class _FullFile(io.FileIO):
    room = 0

    def write(self, b):
        b = memoryview(b).cast("B")
        if len(b) > self.room:
            if self.room:
                super().write(b[:self.room])
                self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return super().write(b)


def full_disk(monkeypatch, under, room: int = 0, only: str | None = None) -> list:
    """Make atomic writes below ``under`` (of the files called ``only``, when given) fail after
    ``room`` bytes; returns the list of the temporary files whose writes were cut."""
    under = os.path.realpath(os.fspath(under))
    cut = []

    def fdopen(fd, mode="r", *args, **kwargs):
        path = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        name = os.path.basename(path)
        if mode != "wb" or not path.startswith(under + os.sep) or \
                (only is not None and not (name.startswith(f".{only}.") and name.endswith(".part"))):
            return _real_fdopen(fd, mode, *args, **kwargs)
        raw = _FullFile(fd, "wb", closefd=True)
        raw.room = room
        cut.append(path)
        return io.BufferedWriter(raw, buffer_size=4096)

    monkeypatch.setattr(serialization.os, "fdopen", fdopen)
    return cut
