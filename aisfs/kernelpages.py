"""What the kernel's page cache holds of each file, as far as this mount knows: the pins, and
files put there ahead of their open.

A pin is the (version, size) of the object whose pages the kernel may hold for an inode: an open
of the file keeps the kernel's pages only when the object still has that (version, size); any
change made through the mount unpins it (``openfiles``). Besides what reads left there, a file
fetched whole before its open (a directory scan's batch, an archive-order stream) is put into
the page cache with FUSE's store notification and pinned once stored, so that its open keeps
those pages and no READ comes for it: one FUSE round trip less per small file.

Concurrency: trio thread only; the stores themselves run in a helper thread (``KernelCache``).
Invariant: a pin is set only for a version the kernel was given or read whole, and never while
the mount writes the file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .cache import Stat
from .inodes import Inode, InodeTable


class KernelCache(Protocol):
    """The kernel's caches, as the FUSE adapter reaches them."""

    def forget_attrs(self, ino: int) -> None:
        """Drop the cached attributes of ``ino`` soon (never blocks, never raises)."""
        ...

    def forget_entry(self, parent_ino: int, name: str) -> None:
        """Drop the cached entry ``name`` of directory ``parent_ino`` soon (never blocks,
        never raises)."""
        ...

    def store(self, ino: int, data: memoryview, done: Callable[[bool], None]) -> None:
        """Put ``data`` in the page cache of ``ino`` soon; ``done(stored)`` after (never
        blocks, never raises)."""
        ...


class KernelPages:
    def __init__(self, table: InodeTable, kernel: KernelCache,
                 written: Callable[[Inode], Stat | None]) -> None:
        self.table = table
        self.kernel = kernel
        self.written = written  # a file's writers' attributes while the mount writes it
        self._pins: dict[int, tuple[str, int]] = {}
        self.files_stored = 0  # files put in the page cache ahead of their open (metrics)

    def get(self, ino: int) -> tuple[str, int] | None:
        return self._pins.get(ino)

    def keeps(self, ino: int, pin: tuple[str, int]) -> bool:
        """Whether an open of the object at ``pin`` may keep the kernel's pages of ``ino``."""
        return bool(pin[0]) and self._pins.get(ino) == pin

    def pin(self, ino: int, pin: tuple[str, int]) -> None:
        self._pins[ino] = pin

    def unpin(self, ino: int) -> None:
        self._pins.pop(ino, None)

    def store(self, bucket: str, key: str, pin: tuple[str, int], data: memoryview,
              then: Callable[[], None] | None = None) -> None:
        """Put the whole content of ``key``, fetched ahead of its open, in the kernel's page
        cache: only for a file the kernel knows, that nothing here has open or is writing, of a
        known version; pinned (and ``then`` called) once stored, if nothing opened, changed or
        forgot it meanwhile."""
        node = self.table.find(bucket, key)
        if (node is None or node.opens or not pin[0] or self._pins.get(node.ino) == pin
                or self.written(node) is not None):
            return

        def done(stored: bool) -> None:
            if stored and node.opens == 0 and self.table.find(bucket, key) is node and (
                    self.written(node) is None):
                self._pins[node.ino] = pin
                self.files_stored += 1
                if then is not None:
                    then()

        self.kernel.store(node.ino, data, done)
