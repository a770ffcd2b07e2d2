"""Open files: the handle table, each handle's reader and writer, and the rules between them.

Between the FUSE adapter (``fs``, which decodes requests and maps errors) and the reader, writer
and namespace. The rules kept here:
- Read-your-writes: whoever reads a file sees what every handle wrote to it. Opening it, or
  reading its xattrs, uploads its writers first; a handle reads its own staged bytes from the
  spill file, and uploads its own streamed bytes before reading them.
- A file open for writing shows its writers' size and mtime while one of them holds bytes AIS
  does not have (``handles.OpenWriters``, which the namespace asks).
- After an upload: the namespace notes the result (no HEAD needed), the kernel drops the
  attributes it got while the file was being written (only those given out after the last write
  through a write-only handle: such a write makes the kernel drop them itself), and the
  uploading handle's reader follows the new object.
- Version pinning (``kernelpages``): the kernel keeps a file's pages across opens only when the
  object has the (version, size) it had at the previous open, or whose bytes were put in its
  page cache ahead of the open; any change made here drops the pin.
- Bytes being written under a name are uploaded before the name is renamed; an unlinked file's
  writers upload nothing.
- An unlinked file stays readable through the handles open on it (POSIX's nlink 0): its bytes
  are kept before the object is deleted (``unlinked``).
- truncate and utimens go through the file's write handles when it has some (``attrchanges``).
- A member of an archive (``--archives expand``) opens read-only (``member_open``).
- Directory scans (``scans``): every open of a file for reading alone is reported to them, and
  starts from the bytes a batch fetched for it when there are some; every change made to an
  object here (upload, truncate, unlink, rename) is reported too, so that none of its fetched
  bytes is served after it. A batch's file, or a member an archive-order stream read, goes
  into the kernel's page cache as it arrives (``kernelpages``): its open keeps those pages and
  needs no READ.

Concurrency: trio thread only, in the FUSE handlers' tasks; every ``await`` may let other
handlers run, so handles and pins are changed only with no ``await`` between the check and the
change. The metrics snapshot reads ``len(_handles)`` and the writers' buffered counts from its own
thread (``open_handles``, ``buffered_bytes``: one C-level copy, see ``mount.py``).
"""

from __future__ import annotations

import errno
import logging
import os
import time

from . import errors
from .aisapi import AisApi, Spawn
from .archive_stream import ArchiveStreams
from .archives import ArchiveContents
from .attrchanges import AttrChanges
from .budget import MemoryBudget
from .cache import Stat
from .config import MountConfig
from .handles import DirHandle, FileHandle, OpenWriters
from .inodes import MEMBER_SEP, Inode, Kind
from .kernelpages import KernelCache, KernelPages
from .listing import ListingStream
from .member_open import MemberOpens
from .namespace import Namespace
from .objects import ObjectProps
from .reader import BufferPool, ObjectReader
from .scans import DirectoryScans
from .spill import SpillArea
from .unlinked import UnlinkedFiles
from .writer import ObjectWriter

log = logging.getLogger(__name__)

class OpenFiles:
    """Invariants: ``_handles`` maps every open fh (never reused) to its handle; every file
    handle with a writer is in ``writers`` until released; an inode's ``opens`` counts its
    handles here. ``pages`` pins, per inode, the (version, size) whose pages the kernel may
    still have cached (from the last open, or put there ahead of it); a missing pin means: the
    kernel's pages are not to be trusted."""

    def __init__(
        self, config: MountConfig, aio: AisApi, spawn: Spawn, ns: Namespace,
        writers: OpenWriters, kernel: KernelCache, *, read_budget: MemoryBudget,
        write_budget: MemoryBudget, pool: BufferPool, spill: SpillArea, scans: DirectoryScans,
        archive_streams: ArchiveStreams | None = None,
    ) -> None:
        self.config = config
        self.aio = aio
        self.spawn = spawn
        self.ns = ns
        self.table = ns.table
        self.writers = writers
        self.kernel = kernel
        self.read_budget = read_budget
        self.write_budget = write_budget
        self.pool = pool
        self.spill = spill
        self.scans = scans
        scans.arrived = self._store_pages
        self._members = MemberOpens(config, aio, spawn, ns, read_budget=read_budget, pool=pool,
                                    archive_streams=archive_streams)
        if archive_streams is not None:
            archive_streams.arrived = self._store_member_pages
        self._handles: dict[int, DirHandle | FileHandle] = {}
        self._next_fh = 1
        self.pages = KernelPages(self.table, kernel, self.written_stat)
        # Files created here that AIS may not hold yet (no upload of theirs succeeded): the
        # kernel knows their names from the create, whatever became of the upload.
        self._created: set[int] = set()
        # Unlinked files still open for reading: their bytes, and their attributes then.
        self._unlinked = UnlinkedFiles(config, aio, ns, spill)
        self._attr_changes = AttrChanges(config, ns, writers, scans, self._writer, self._unpin)

    # ------------------------------------------------------------------ handle table

    def _new_fh(self, handle: DirHandle | FileHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        handle.inode.opens += 1
        return fh

    def file(self, fh: int) -> FileHandle:
        handle = self._handles.get(fh)
        if not isinstance(handle, FileHandle):
            raise errors.PosixError(errno.EBADF, f"bad file handle {fh}")
        return handle

    def open_handles(self) -> int:
        return len(self._handles)

    def buffered_bytes(self) -> int:
        """Bytes the writers hold in memory (read from the metrics thread: one C-level copy)."""
        handles = list(self._handles.values())
        return sum(h.writer.buffered for h in handles
                   if isinstance(h, FileHandle) and h.writer is not None)

    def _drop_if_unused(self, node: Inode) -> None:
        self.table.drop_if_unused(node)
        if node.ino not in self.table.by_ino:
            self.pages.unpin(node.ino)  # the kernel's pages of it are gone
            self._created.discard(node.ino)
        if node.opens == 0:
            self._unlinked.discard(node.ino)

    def _unpin(self, ino: int) -> None:
        self.pages.unpin(ino)

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped ``count`` references to ``ino`` (never raises)."""
        self.table.forget(ino, count)
        if ino not in self.table.by_ino:
            self.pages.unpin(ino)

    # ------------------------------------------------------------------ directories

    def open_dir(self, node: Inode) -> int:
        if not node.is_dir:
            raise errors.PosixError(errno.ENOTDIR, f"{node} is not a directory")
        return self._new_fh(DirHandle(node))

    async def dir_entries(self, fh: int, start_id: int) -> tuple[Inode, ListingStream]:
        """The open directory and its listing, with more than ``start_id`` entries unless it has no
        more. Offset 0 is the first call or a rewinddir: the snapshot is (re)taken. Later
        offsets index into it (it only grows), so they stay valid however the bucket changes."""
        handle = self._handles.get(fh)
        if not isinstance(handle, DirHandle):
            raise errors.PosixError(errno.EBADF, f"bad directory handle {fh}")
        if start_id == 0 or handle.entries is None:
            entries = await self.ns.open_dir(handle.inode)
            if handle.entries is not None:
                self.ns.close_dir(handle.inode, handle.entries)
            handle.entries = entries
        await handle.entries.wait_beyond(start_id)
        return handle.inode, handle.entries

    def release_dir(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if isinstance(handle, DirHandle):
            if handle.entries is not None:
                self.ns.close_dir(handle.inode, handle.entries)
            handle.inode.opens -= 1
            self._drop_if_unused(handle.inode)

    # ------------------------------------------------------------------ attributes

    def written_stat(self, node: Inode) -> Stat | None:
        """The attributes a file open for writing shows (see the module docstring), else None."""
        return self.writers.stat_of(node) if self.writers else None

    def unlinked(self, node: Inode) -> bool:
        """Whether ``node`` is an unlinked file still open (nlink 0)."""
        return node.ino in self._unlinked

    async def stat(self, node: Inode) -> Stat | None:
        """getattr: the file's attributes (None for a directory)."""
        if node.is_dir:
            return None
        kept = self._unlinked.stat(node.ino)
        if kept is not None:
            return kept
        written = self.written_stat(node)
        return written if written is not None else await self.ns.getattr(node)

    async def setattr(
        self, node: Inode, fh: int | None, size: int | None, mtime_ns: int | None
    ) -> Stat | None:
        """truncate and utimens (through handle ``fh`` when given): the attributes after them,
        None for a directory (``attrchanges``)."""
        handle = self._handles.get(fh) if fh is not None else None
        return await self._attr_changes.apply(
            node, handle if isinstance(handle, FileHandle) else None, size, mtime_ns)

    # ------------------------------------------------------------------ custom metadata

    async def object_props(self, node: Inode) -> ObjectProps:
        await self._upload_writers(node)
        return await self.ns.object_props(node)

    async def set_custom(self, node: Inode, update: dict[str, bytes]) -> None:
        await self._upload_writers(node)
        await self.ns.set_custom(node, update)

    async def remove_custom(self, node: Inode, key: str) -> bool:
        await self._upload_writers(node)
        return await self.ns.remove_custom(node, key)

    # ------------------------------------------------------------------ open, create, release

    async def open(self, node: Inode, flags: int) -> tuple[int, bool]:
        """Open a file: (fh, whether the kernel may keep its cached pages)."""
        if node.is_dir:
            raise errors.PosixError(errno.EISDIR, f"{node} is a directory")
        if node.kind is Kind.MEMBER:
            return await self._open_member(node, flags)
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
        if writing and self.config.read_only:
            raise errors.PosixError(errno.EROFS, "read-only mount")
        await self._upload_writers(node)  # a reader must see what other handles wrote
        written = self.written_stat(node)
        exists = True
        try:
            st = written if written is not None else (
                await self.ns.object_stat(node.bucket, node.key))
        except errors.NotFound:
            if not (writing and node.ino in self._created):
                raise
            # Created here, its upload failed: the kernel still has the name (and passes no
            # O_CREAT on), the user is creating it again (`>` after a failed close).
            st, exists = Stat(0, time.time_ns()), False
        # Keep the kernel's pages only when they hold this very version of the object.
        pin = (st.version, st.size)
        fetched = None
        if not writing and written is None:
            cached = self.pages.keeps(node.ino, pin)
            fetched = await self.scans.opened(node.bucket, node.key, st, need_bytes=not cached)
            if fetched is not None and self.written_stat(node) is not None:
                self.scans.give_back(fetched)  # a writer of it appeared meanwhile
                fetched = None
        keep = not writing and self.pages.keeps(node.ino, pin)
        handle = FileHandle(node)
        if writing:
            handle.writer = self._writer(node, exists=exists, size=st.size,
                                         truncate=bool(flags & os.O_TRUNC) or not exists)
            self.writers.add(handle)
        if not flags & os.O_WRONLY:
            handle.reader = self._reader(node, st)
            if fetched is not None:
                handle.reader.hold(fetched)
            elif not writing and not keep:
                handle.reader.start()
        fh = self._new_fh(handle)
        self.pages.pin(node.ino, pin)
        return fh, keep

    def _store_pages(self, bucket: str, key: str, size: int, version: str,
                     data: memoryview) -> None:
        """A directory scan fetched ``key`` whole: into the kernel's page cache; once there, the
        scan holds its bytes no more."""
        self.pages.store(bucket, key, (version, size), data,
                         lambda: self.scans.stored(bucket, key))

    def _store_member_pages(self, bucket: str, tree: ArchiveContents, path: str,
                            data: bytearray) -> None:
        """An archive-order stream read the member ``path``: into the kernel's page cache; once
        there, the stream holds it no more."""
        streams = self._members.archive_streams
        assert streams is not None
        self.pages.store(bucket, tree.key + MEMBER_SEP + path, (tree.version, len(data)),
                         memoryview(data), lambda: streams.stored(bucket, tree, path))

    async def _open_member(self, node: Inode, flags: int) -> tuple[int, bool]:
        """Open a file inside an archive: read-only, read out of the archive by AIS."""
        reader, pin = await self._members.reader(node, flags, self.pages.get(node.ino))
        handle = FileHandle(node)
        handle.reader = reader
        fh = self._new_fh(handle)
        keep = self.pages.keeps(node.ino, pin)
        self.pages.pin(node.ino, pin)
        return fh, keep

    async def create(self, parent: Inode, name: str, flags: int) -> tuple[int, Inode, Stat]:
        """Create (or truncate) ``name`` and open it for writing: (fh, inode, attributes)."""
        if parent.kind is Kind.CLUSTER:
            raise errors.PosixError(errno.EPERM, "only directories (buckets) live at the root")
        self.ns.refuse_in_archive(parent, "create in")
        key = parent.key + name
        known = self.ns.stats.get((parent.bucket, key))
        node = self.table.child(parent, parent.bucket, key, Kind.FILE)
        handle = FileHandle(node)
        handle.writer = self._writer(
            node, exists=None if known is None else isinstance(known, Stat),
            size=known.size if isinstance(known, Stat) else 0, truncate=True,
        )
        self.writers.add(handle)
        self._created.add(node.ino)
        self.ns.stats.pop((node.bucket, key))
        if not flags & os.O_WRONLY:
            handle.reader = self._reader(node, Stat(0, time.time_ns()))
        fh = self._new_fh(handle)
        self.pages.unpin(node.ino)
        st = self.writers.stat_of(node)
        assert st is not None  # a created file's writer is dirty: it makes an (empty) object
        return fh, node, st

    def _reader(self, node: Inode, st: Stat) -> ObjectReader:
        return ObjectReader(self.aio, node.bucket, node.key, st.size, st.version, self.config,
                            self.read_budget, self.spawn, self.pool)

    def _writer(self, node: Inode, *, exists: bool | None, size: int,
                truncate: bool) -> ObjectWriter:
        return ObjectWriter(self.aio, node.bucket, node.key, self.config, self.spill,
                            self.write_budget, self.spawn, exists=exists, size=size,
                            truncate=truncate)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if not isinstance(handle, FileHandle):
            return
        try:
            if handle.writer is not None and handle.writer.dirty:
                await self._upload(handle)  # flush() normally did this; errors here are lost
        finally:
            if handle.reader is not None:
                handle.reader.close()
            if handle.writer is not None:
                handle.writer.close()
                self.writers.remove(handle)
            handle.inode.opens -= 1
            self._drop_if_unused(handle.inode)

    def write_handles(self) -> list[int]:
        """The handles open for writing (for the uploads at unmount)."""
        return [fh for fh, h in self._handles.items()
                if isinstance(h, FileHandle) and h.writer is not None]

    def close_all(self) -> None:
        """After the FUSE main loop ended and the writers were released: drop every handle."""
        self.scans.close()
        for handle in self._handles.values():
            if isinstance(handle, FileHandle) and handle.reader is not None:
                handle.reader.close()
        self._handles.clear()

    # ------------------------------------------------------------------ data

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self.file(fh)
        if handle.reader is None:
            raise errors.PosixError(errno.EBADF, "file not open for reading")
        writer = handle.writer
        if writer is not None and writer.staged:
            return await writer.read(off, size)
        kept = await self._unlinked.read(handle.inode.ino, off, size)
        if kept is not None:
            return kept
        if writer is not None and writer.dirty:
            await self._upload(handle)  # read what this handle wrote: upload it first
        try:
            return await handle.reader.read(off, size)
        except errors.StaleObject:
            self.ns.invalidate(handle.inode.bucket, handle.inode.key)
            self.pages.unpin(handle.inode.ino)
            raise

    async def write(self, fh: int, off: int, data: bytes) -> int:
        handle = self.file(fh)
        writer = handle.writer
        if writer is None:
            raise errors.PosixError(errno.EBADF, "file not open for writing")
        written = await writer.write(off, data)
        self.writers.wrote(handle)
        return written

    async def flush(self, fh: int) -> None:
        """close(2) waits for this: the upload's result reaches the writer here."""
        handle = self.file(fh)
        if handle.writer is not None and handle.writer.dirty:
            await self._upload(handle)

    async def fsync(self, fh: int) -> None:
        handle = self.file(fh)
        if handle.writer is not None:
            await self._upload(handle)

    async def _upload_writers(self, node: Inode) -> None:
        """What the write handles of ``node`` hold, into AIS, before another handle or a name
        operation uses the object. A handle whose upload failed is passed over: its error is
        its own (its flush and close report it), and its bytes will not come; the kernel may
        send its release after the next open of the name, or handle both at once."""
        for handle in self.writers.of(node):
            if handle.writer is not None and not handle.writer.failed:
                await self._upload(handle)

    async def _upload(self, handle: FileHandle) -> None:
        writer = handle.writer
        if writer is None:
            return
        node = handle.inode
        try:
            done = await writer.flush()
        except errors.AisFsError:
            if node.ino in self._created:
                # AIS may have no object under the name: the kernel forgets it (a lookup asks
                # again), and an open it still makes of it creates it (see ``open``).
                self.kernel.forget_entry(node.parent, node.key.rpartition("/")[2])
            raise
        if done is not None and not writer.discarded:
            self._created.discard(node.ino)
            self.ns.note_written(node.bucket, node.key, done.size, done.mtime_ns, done.version)
            self.scans.changed(node.bucket, node.key)
            self.pages.unpin(node.ino)
            if self.writers.take_given(node):
                self.kernel.forget_attrs(node.ino)
            if handle.reader is not None:
                # This handle's reader must follow the object it just replaced: the PUT's answer
                # names its version (a FLUSH's does not: then AIS is asked).
                handle.reader.close()
                st = (Stat(done.size, done.mtime_ns, done.version) if done.version
                      else await self.ns.fresh_stat(node))
                handle.reader = self._reader(node, st)

    # ------------------------------------------------------------------ names

    async def unlink(self, parent: Inode, name: str) -> None:
        self.ns.refuse_in_archive(parent, "unlink in")  # before keeping an open member's bytes
        node = self.table.find(parent.bucket, parent.key + name)
        handles = self.writers.of(node) if node is not None else []
        if node is not None and not handles and node.ino not in self._unlinked and any(
            isinstance(h, FileHandle) and h.inode is node and h.reader is not None
            for h in self._handles.values()
        ):
            await self._unlinked.keep(node)
        for handle in handles:
            assert handle.writer is not None
            handle.writer.discarded = True  # writes to an unlinked file go nowhere
        try:
            inode = await self.ns.remove_file(parent, name, pending=bool(handles))
        except BaseException:
            if node is not None:
                self._unlinked.discard(node.ino)
            raise
        self.scans.changed(parent.bucket, parent.key + name)
        self.pages.unpin(inode.ino)

    async def rename(
        self, old_parent: Inode, old_name: str, new_parent: Inode, new_name: str, flags: int
    ) -> None:
        # Bytes still being written under the old name are uploaded first, then moved.
        node = self.table.find(old_parent.bucket, old_parent.key + old_name)
        if node is not None:
            await self._upload_writers(node)
        try:
            await self.ns.rename(old_parent, old_name, new_parent, new_name, flags)
        finally:
            for parent, name in ((old_parent, old_name), (new_parent, new_name)):
                self.scans.changed(parent.bucket, parent.key + name)
                self.scans.changed_under(parent.bucket, parent.key + name + "/")
