"""Spill files: local files that hold staged uploads, with one cap on the bytes of all of them.

A spill file is unlinked as soon as it is made, so nothing is left behind after a crash; its
descriptor keeps the data until it is closed.

Concurrency: accounting (``resize``, ``close``) and ``SpillArea.used`` change on the trio thread
only; ``SpillArea.create`` and the I/O methods ``pwrite``/``pread``/``truncate`` block and run in
worker threads (through ``AsyncAis.run_blocking``), where they touch nothing but the descriptor.
The metrics snapshot reads ``SpillArea.used`` from its own thread (a plain int).
"""

from __future__ import annotations

import errno
import os
import secrets

from . import errors


class SpillArea:
    """The spill directory and the cap on bytes staged by all handles together.

    Invariant: ``used`` is the sum of ``size`` over the spill files made here and not yet
    closed, and never exceeds ``limit`` by a growth (``SpillFile.resize`` refuses that).
    """

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.used = 0

    def create(self) -> SpillFile:
        """A new, empty spill file (blocking: call from a worker thread)."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        name = os.path.join(self.path, f"spill-{os.getpid()}-{secrets.token_hex(8)}")
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(name)  # nothing to clean up after a crash; the fd keeps the data
        return SpillFile(self, fd)


class SpillFile:
    """One staged file's local copy.

    Invariants: ``size`` is what this file counts against its area: the length of the content
    it holds, set by ``resize`` before that content is written there; ``fd`` is -1 once closed,
    and then ``size`` is 0 (given back to the area).
    """

    def __init__(self, area: SpillArea, fd: int) -> None:
        self.area = area
        self.fd = fd
        self.size = 0

    def resize(self, new_size: int) -> None:
        """Count ``new_size`` bytes against the area from now on: ENOSPC if growing to it would
        pass the area's limit; shrinking gives the difference back."""
        grow = new_size - self.size
        if grow > 0 and self.area.used + grow > self.area.limit:
            raise errors.PosixError(
                errno.ENOSPC, f"spill area {self.area.path} is full ({self.area.limit} bytes)"
            )
        self.area.used += grow
        self.size = new_size

    def pwrite(self, off: int, data: bytes | memoryview) -> None:
        """Blocking: call from a worker thread, after ``resize`` made room for the bytes."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, off)
            view = view[n:]
            off += n

    def pread(self, off: int, size: int) -> bytes:
        """Blocking: call from a worker thread."""
        return os.pread(self.fd, size, off)

    def truncate(self, size: int) -> None:
        """Blocking: call from a worker thread, after ``resize(size)``."""
        os.ftruncate(self.fd, size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.area.used -= self.size
            self.size = 0
