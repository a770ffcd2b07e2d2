"""truncate and utimens of a file, where the handles open for writing on it matter.

Under the open-files layer (``openfiles``), which finds the write handle a change goes through
and answers with the file's attributes after it. The rules kept here:
- A truncate through a write handle, or by name while a handle writes the file, goes to that
  handle's writer (uploaded with its bytes); by name otherwise, a writer of its own truncates the
  object and uploads it at once, and the namespace notes the result, the directory scans drop
  the name's fetched bytes, and the kernel's pages of it are no longer trusted (``unpin``).
- An mtime set while writers hold bytes AIS does not have is stored with their upload;
  otherwise it goes to the object's custom metadata at once.
- A read-only mount refuses a truncate (EROFS); nothing inside an archive changes (EROFS); a
  directory is a prefix, with nothing to store: its changes are accepted without effect.
- The answer is the attributes after the change: the writers' while they hold bytes AIS does
  not have, else the object's.

Invariants: none of its own; it holds only its collaborators.

Concurrency: trio thread only, in the FUSE handlers' tasks; the writers it is handed are
re-read after every ``await`` by their own locks.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Protocol

from . import errors
from .cache import Stat
from .config import MountConfig
from .handles import FileHandle, OpenWriters
from .inodes import Inode
from .namespace import Namespace
from .objects import MTIME_KEY
from .scans import DirectoryScans
from .writer import ObjectWriter


class NewWriter(Protocol):
    """Makes the writer of a truncate by name (``OpenFiles._writer``)."""

    def __call__(self, node: Inode, *, exists: bool | None, size: int,
                 truncate: bool) -> ObjectWriter: ...


class AttrChanges:
    """truncate and utimens of files (see the module docstring)."""

    def __init__(
        self, config: MountConfig, ns: Namespace, writers: OpenWriters, scans: DirectoryScans,
        new_writer: NewWriter, unpin: Callable[[int], None],
    ) -> None:
        self.config = config
        self.ns = ns
        self.writers = writers
        self.scans = scans
        self._new_writer = new_writer
        self._unpin = unpin

    async def apply(
        self, node: Inode, handle: FileHandle | None, size: int | None, mtime_ns: int | None
    ) -> Stat | None:
        """Truncate ``node`` to ``size`` and/or set its mtime, through the write ``handle`` when
        given (else through the node's first writer for a truncate): the attributes after them,
        None for a directory. chmod and chown are accepted without effect (modes and owners come
        from mount options), so cp -p, rsync -a and shutil.copy2 do not fail (README
        "Semantics")."""
        if node.in_archive:
            self.ns.refuse_in_archive(node, "setattr")
        if node.is_dir:
            return None  # directories are prefixes: nothing to store; accepted for cp -a/rsync -a
        writing = handle if handle is not None and handle.writer else None
        if writing is None and size is not None:
            writing = next(iter(self.writers.of(node)), None)
        if size is not None:
            await self._truncate(node, writing, size)
        if mtime_ns is not None:
            await self._set_mtime(node, writing, mtime_ns)
        written = self.writers.stat_of(node) if self.writers else None
        return written if written is not None else (
            await self.ns.object_stat(node.bucket, node.key))

    async def _truncate(self, node: Inode, handle: FileHandle | None, size: int) -> None:
        if self.config.read_only:
            raise errors.PosixError(errno.EROFS, "read-only mount")
        if handle is not None and handle.writer is not None:
            await handle.writer.truncate(size)
            return
        # A truncate by name: a writer of its own, uploaded at once.
        st = await self.ns.object_stat(node.bucket, node.key)
        writer = self._new_writer(node, exists=True, size=st.size, truncate=size == 0)
        try:
            await writer.truncate(size)
            done = await writer.flush()
        finally:
            writer.close()
        if done is not None:
            self.ns.note_written(node.bucket, node.key, done.size, done.mtime_ns, done.version)
            self.scans.changed(node.bucket, node.key)
            self._unpin(node.ino)

    async def _set_mtime(self, node: Inode, handle: FileHandle | None, mtime_ns: int) -> None:
        handles = [handle] if handle is not None else self.writers.of(node)
        dirty = [h.writer for h in handles if h.writer is not None and h.writer.dirty]
        if dirty:
            for writer in dirty:
                writer.pending_mtime_ns = mtime_ns  # stored with the upload
            return
        await self.ns.set_custom(node, {MTIME_KEY: str(mtime_ns).encode()})
