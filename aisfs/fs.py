"""The FUSE adapter: pyfuse3 ``Operations`` that decode arguments and delegate to the layers below.

Only this module (and ``mount.py``) imports pyfuse3. Every handler goes through :func:`handler`,
which maps :mod:`aisfs.errors` to errno and turns any unexpected exception into EIO with a
traceback in the log, so one bad request never takes the mount down.

Lookup counting: +1 for every successful lookup/create/mkdir reply and for every readdirplus
entry the kernel accepted; ``forget`` takes them back (see ``inodes.py``).

Concurrency: pyfuse3 runs handlers as trio tasks on one thread; handlers re-check state after
every ``await``.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import stat as statmod
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3
import trio

from . import errors, xattrs
from .aisapi import AisApi, Spawn
from .budget import MemoryBudget
from .cache import Stat
from .config import MountConfig
from .inodes import Inode, Kind
from .listing import Child, ListingStream
from .namespace import Namespace
from .objects import MTIME_KEY
from .reader import BufferPool, ObjectReader
from .spill import SpillArea
from .writer import ObjectWriter

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
BLOCK_SIZE = 1024 * 1024  # st_blksize: cp and Python size their buffers from it

# Observability hook, set by the mount when metrics are on: observe(op, seconds, errno or 0).
observe: Callable[[str, float, int], None] | None = None


def handler(fn: F) -> F:
    """Map every exception of a FUSE handler to an errno; never let one escape to pyfuse3."""
    name = fn.__name__
    params = list(inspect.signature(fn).parameters)[1:]  # after self
    data_args = frozenset(i for i, param in enumerate(params) if param in _DATA_PARAMS)

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        started = time.monotonic()
        err = 0
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError as exc:
            err = exc.errno
            raise
        except (errors.AisFsError, OSError) as exc:
            err = errors.to_errno(exc)
            level = exc.log_level if isinstance(exc, errors.AisFsError) else logging.WARNING
            log.log(level, "%s%s: %s", name, _brief(args, data_args), exc)
            raise pyfuse3.FUSEError(err) from None
        except Exception:
            err = errno.EIO
            log.exception("unexpected error in %s%s; returning EIO", name, _brief(args, data_args))
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if observe is not None:
                observe(name, time.monotonic() - started, err)

    return wrapper  # type: ignore[return-value]


# Handler parameters that carry file contents or xattr values: logged by size, never by value.
_DATA_PARAMS = frozenset({"buf", "value"})


def _brief(args: Sequence[Any], data_args: frozenset[int] = frozenset()) -> str:
    shown = [f"<{len(a)} bytes>" if i in data_args or (
                 isinstance(a, bytes | memoryview) and len(a) >= 256) else repr(a)
             for i, a in enumerate(args) if not isinstance(a, pyfuse3.RequestContext)]
    return "(" + ", ".join(shown[:3]) + ")"


@dataclass(slots=True)
class DirHandle:
    inode: Inode
    entries: ListingStream | None = None


@dataclass(slots=True, eq=False)
class FileHandle:
    inode: Inode
    reader: ObjectReader | None = None
    writer: ObjectWriter | None = None


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False  # the append uploader needs the writes as the app issued them
    enable_acl = False

    def __init__(self, config: MountConfig, aio: AisApi, spawn: Spawn) -> None:
        super().__init__()
        self.config = config
        self.aio = aio
        self.ns = Namespace(aio, config, spawn)
        self._dir_mode = statmod.S_IFDIR | config.dir_mode
        self._file_mode = statmod.S_IFREG | config.file_mode
        self.table = self.ns.table
        self.read_budget = MemoryBudget(config.read_ahead_budget)
        self.write_budget = MemoryBudget(config.write_buffer_budget)
        self.pool = BufferPool(config.read_part_size,
                               keep=max(4, config.read_ahead_budget // config.read_part_size))
        self.spawn = spawn
        self._handles: dict[int, DirHandle | FileHandle] = {}
        self._next_fh = 1
        # (version, size) each inode's page cache holds, to keep it across opens when unchanged.
        self._cached_version: dict[int, tuple[str, int]] = {}
        self.spill = SpillArea(config.spill_dir, config.spill_max_bytes)
        # Open writers per inode: getattr, lookups and reads of the inode must see their bytes.
        self._writers: dict[int, list[FileHandle]] = {}

    # ------------------------------------------------------------------ helpers

    def _inode(self, ino: int) -> Inode:
        try:
            return self.table.get(ino)
        except KeyError:
            raise errors.PosixError(errno.ENOENT, f"unknown inode {ino}") from None

    def _new_fh(self, handle: DirHandle | FileHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def _file(self, fh: int) -> FileHandle:
        handle = self._handles.get(fh)
        if not isinstance(handle, FileHandle):
            raise errors.PosixError(errno.EBADF, f"bad file handle {fh}")
        return handle

    def make_attr(self, inode: Inode, st: Stat | None) -> pyfuse3.EntryAttributes:
        attr = self._new_attr()
        self._set_attr(attr, inode, st)
        return attr

    def _new_attr(self) -> pyfuse3.EntryAttributes:
        """Attributes with what every entry shares set; the rest comes from ``_set_attr``."""
        config = self.config
        attr = pyfuse3.EntryAttributes()
        attr.entry_timeout = attr.attr_timeout = config.metadata_ttl
        attr.st_uid = config.uid
        attr.st_gid = config.gid
        attr.st_blksize = BLOCK_SIZE
        return attr

    def _set_attr(self, attr: pyfuse3.EntryAttributes, inode: Inode, st: Stat | None) -> None:
        # Called once per entry of every listing: plain ints (no NewType calls) and no reads
        # back from the Cython object keep it cheap. Sets every field that differs between
        # entries, as readdir reuses one object for all.
        attr.st_ino = inode.ino  # type: ignore[assignment]
        if st is None or inode.kind is not Kind.FILE:
            attr.st_mode = self._dir_mode  # type: ignore[assignment]
            attr.st_nlink = 2
            attr.st_size = attr.st_blocks = 0
            mtime = self.ns.mount_time_ns
        else:
            attr.st_mode = self._file_mode  # type: ignore[assignment]
            attr.st_nlink = 1
            attr.st_size = st.size
            attr.st_blocks = (st.size + 511) // 512
            mtime = st.mtime_ns or self.ns.mount_time_ns
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime

    def _negative_entry(self) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = pyfuse3.InodeT(0)  # a negative dentry the kernel caches for entry_timeout
        attr.entry_timeout = self.config.negative_metadata_ttl
        return attr

    # ------------------------------------------------------------------ metadata

    @handler
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        if name == b".":
            inode, st = parent, None
        elif name == b"..":
            inode, st = self._inode(parent.parent), None
        else:
            try:
                inode, st = await self.ns.lookup(parent, os.fsdecode(name))
            except errors.NotFound:
                if self.config.negative_metadata_ttl > 0:
                    return self._negative_entry()
                raise
        if not inode.is_dir and st is None:
            st = await self.ns.getattr(inode)
        self.table.add_lookup(inode)
        return self.make_attr(inode, st)

    @handler
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        pending = self.ns.pending.get(node.path) if not node.is_dir else None
        st = pending() if pending is not None else await self.ns.getattr(node)
        return self.make_attr(node, st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            try:
                self.table.forget(ino, count)
            except Exception:  # forget must never fail: the kernel cannot handle an error here
                log.exception("forget(%d, %d) failed", ino, count)

    @handler
    async def statfs(self, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.StatvfsData:
        # AIS does not report a capacity per bucket; like other object-store filesystems we
        # report a large, constant size so that `df` and space checks in tools pass.
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = data.f_bfree = data.f_bavail = 1 << 40
        data.f_files = data.f_ffree = data.f_favail = 1 << 32
        data.f_namemax = 255
        return data

    # ------------------------------------------------------------------ directories

    @handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        node = self._inode(inode)
        if not node.is_dir:
            raise errors.PosixError(errno.ENOTDIR, f"{node} is not a directory")
        node.opens += 1
        return pyfuse3.FileHandleT(self._new_fh(DirHandle(node)))

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._handles.get(fh)
        if not isinstance(handle, DirHandle):
            raise errors.PosixError(errno.EBADF, f"bad directory handle {fh}")
        if start_id == 0 or handle.entries is None:
            # Offset 0 is the first call or a rewinddir: (re)take the snapshot. Later offsets
            # index into it (it only grows), so they stay valid however the bucket changes.
            entries = await self.ns.open_dir(handle.inode)
            if handle.entries is not None:
                self.ns.close_dir(handle.inode, handle.entries)
            handle.entries = entries
        # Hand out what has arrived; an empty reply would mean the end of the directory.
        await handle.entries.wait_beyond(start_id)
        children = handle.entries.children
        parent = handle.inode
        pending = self.ns.pending
        attr = self._new_attr()  # one for all entries: readdir_reply copies it at once
        for index in range(start_id, len(children)):
            child = children[index]
            inode = self._child_inode(parent, child)
            current = pending.get(inode.path) if pending and not child.is_dir else None
            self._set_attr(attr, inode, current() if current is not None else child.stat)
            if not pyfuse3.readdir_reply(token, os.fsencode(child.name), attr, index + 1):
                self.table.drop_if_unused(inode)
                break
            self.table.add_lookup(inode)

    def _child_inode(self, parent: Inode, child: Child) -> Inode:
        kind = Kind.DIR if child.is_dir else Kind.FILE
        if parent.kind is Kind.CLUSTER:
            return self.table.child(parent, child.name, "", Kind.DIR)
        key = parent.child_key(child.name, child.is_dir)
        return self.table.child(parent, parent.bucket, key, kind)

    @handler
    async def releasedir(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if isinstance(handle, DirHandle):
            if handle.entries is not None:
                self.ns.close_dir(handle.inode, handle.entries)
            handle.inode.opens -= 1
            self.table.drop_if_unused(handle.inode)

    # ------------------------------------------------------------------ files

    @handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._inode(inode)
        if node.is_dir:
            raise errors.PosixError(errno.EISDIR, f"{node} is a directory")
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
        if writing and self.config.read_only:
            raise errors.PosixError(errno.EROFS, "read-only mount")
        # A reader must see what other handles wrote: upload their bytes first.
        await self._flush_writers(node)
        st = self.ns.pending[node.path]() if node.path in self.ns.pending else (
            await self.ns.object_stat(node.bucket, node.key))
        handle = FileHandle(node)
        if writing:
            handle.writer = ObjectWriter(
                self.aio, node.bucket, node.key, self.config, self.spill, self.write_budget,
                self.spawn, exists=True,
                size=st.size, truncate=bool(flags & os.O_TRUNC),
            )
            self._add_writer(handle)
        if not flags & os.O_WRONLY:
            handle.reader = self._reader(node, st)
        node.opens += 1
        fh = self._new_fh(handle)
        # Keep the kernel's pages only when they hold this very version of the object.
        cached = (st.version, st.size)
        keep = not writing and bool(st.version) and self._cached_version.get(node.ino) == cached
        self._cached_version[node.ino] = cached
        return self._file_info(fh, flags, keep)

    def _reader(self, node: Inode, st: Stat) -> ObjectReader:
        return ObjectReader(
            self.aio, node.bucket, node.key, st.size, st.version, self.config, self.read_budget,
            self.spawn, self.pool,
        )

    def _add_writer(self, handle: FileHandle) -> None:
        self._writers.setdefault(handle.inode.ino, []).append(handle)
        self._refresh_pending(handle.inode)

    def _drop_writer(self, handle: FileHandle) -> None:
        handles = self._writers.get(handle.inode.ino, [])
        if handle in handles:
            handles.remove(handle)
        if not handles:
            self._writers.pop(handle.inode.ino, None)
        self._refresh_pending(handle.inode)

    def _refresh_pending(self, node: Inode) -> None:
        """Lookups, listings and getattr show a file from its writers while any of them holds
        bytes AIS does not have yet; otherwise from AIS (and the cache)."""
        handles = [h for h in self._writers.get(node.ino, ()) if h.writer and h.writer.dirty]
        if not handles:
            self.ns.pending.pop(node.path, None)
            return

        def current() -> Stat:
            writers = [h.writer for h in self._writers.get(node.ino, ()) if h.writer]
            mtimes = [w.pending_mtime_ns for w in writers if w.pending_mtime_ns is not None]
            size = max((w.size for w in writers), default=0)
            return Stat(size, mtimes[-1] if mtimes else time.time_ns())

        self.ns.pending[node.path] = current

    async def _flush_writers(self, node: Inode) -> None:
        for handle in list(self._writers.get(node.ino, ())):
            await self._upload(handle)

    async def _upload(self, handle: FileHandle) -> None:
        writer = handle.writer
        if writer is None:
            return
        node = handle.inode
        done = await writer.flush()
        self._refresh_pending(node)
        if done is not None and not writer.discarded:
            self.ns.note_written(node.bucket, node.key, done.size, done.mtime_ns, done.version)
            self._cached_version.pop(node.ino, None)
            self._invalidate_kernel_attrs(node)
            if handle.reader is not None:
                # This handle's reader must follow the object it just replaced.
                handle.reader.close()
                handle.reader = self._reader(node, await self.ns.fresh_stat(node))

    def _invalidate_kernel_attrs(self, node: Inode) -> None:
        """Drop the kernel's cached attributes of ``node`` (from a thread: inside a handler the
        notification can deadlock, design-notes §8.30)."""
        ino = node.ino

        async def invalidate() -> None:
            try:
                await trio.to_thread.run_sync(
                    lambda: pyfuse3.invalidate_inode(pyfuse3.InodeT(ino), attr_only=True)
                )
            except OSError as exc:
                log.debug("invalidate_inode(%d): %s", ino, exc)

        self.spawn(invalidate)

    @handler
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._inode(parent_inode)
        if parent.kind is Kind.CLUSTER:
            raise errors.PosixError(errno.EPERM, "only directories (buckets) live at the root")
        text = self._name(name)
        key = parent.key + text
        known = self.ns.stats.get((parent.bucket, key))
        exists = None if known is None else isinstance(known, Stat)
        node = self.table.child(parent, parent.bucket, key, Kind.FILE)
        handle = FileHandle(node)
        handle.writer = ObjectWriter(
            self.aio, node.bucket, key, self.config, self.spill, self.write_budget, self.spawn,
            exists=exists, size=known.size if isinstance(known, Stat) else 0,
            truncate=True,
        )
        self._add_writer(handle)
        self.ns.stats.pop((node.bucket, key))
        if not flags & os.O_WRONLY:
            handle.reader = self._reader(node, Stat(0, time.time_ns()))
        node.opens += 1
        fh = self._new_fh(handle)
        self.table.add_lookup(node)
        self._cached_version.pop(node.ino, None)
        return (self._file_info(fh, flags), self.make_attr(node, self.ns.pending[node.path]()))

    @staticmethod
    def _file_info(fh: int, flags: int, keep_cache: bool = False) -> pyfuse3.FileInfo:
        # A write-only handle bypasses the kernel's page cache: the bytes go to AIS, caching them
        # here too would only cost a page per 4 KiB written (measured: dd's own CPU for 1 GiB fell
        # from 2-4 s to 0.2 s). Nothing is lost: such a handle can neither read nor mmap.
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep_cache,
                                direct_io=bool(flags & os.O_WRONLY))

    def _name(self, name: bytes) -> str:
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.PosixError(errno.EINVAL, f"name {name!r} is not UTF-8") from None
        if len(name) > 255:
            raise errors.PosixError(errno.ENAMETOOLONG, f"name too long: {text[:40]}...")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            # AIS mangles control characters in object names (scripts/PROTOCOL-CHECKS.md).
            raise errors.PosixError(errno.EINVAL, f"name {text!r} has control characters")
        return text

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._file(fh)
        writer = handle.writer
        if writer is None:
            raise errors.PosixError(errno.EBADF, "file not open for writing")
        was_dirty = writer.dirty
        written = await writer.write(off, buf)
        if not was_dirty:
            self._refresh_pending(handle.inode)
        return written

    @handler
    async def flush(self, fh: int) -> None:
        # close(2) waits for this: the upload result reaches the writer here, not in release.
        handle = self._file(fh)
        if handle.writer is not None and handle.writer.dirty:
            await self._upload(handle)

    @handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._file(fh)
        if handle.writer is not None:
            await self._upload(handle)

    @handler
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
        fh: int | None, ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        if node.is_dir:
            # Directories are prefixes: nothing to store. Accepted so cp -a/rsync -a work.
            return self.make_attr(node, None)
        handle = self._handles.get(fh) if fh is not None else None
        writer_handle = handle if isinstance(handle, FileHandle) and handle.writer else None
        if writer_handle is None and fields.update_size:
            writer_handle = next(iter(self._writers.get(node.ino, ())), None)
        if fields.update_size:
            await self._truncate(node, writer_handle, attr.st_size)
        if fields.update_mtime:
            await self._set_mtime(node, writer_handle, attr.st_mtime_ns)
        # chmod/chown are accepted without effect (modes and owners come from mount options),
        # so cp -p, rsync -a and shutil.copy2 do not fail; see README "Semantics".
        pending = self.ns.pending.get(node.path)
        st = pending() if pending is not None else await self.ns.object_stat(node.bucket, node.key)
        return self.make_attr(node, st)

    async def _truncate(self, node: Inode, handle: FileHandle | None, size: int) -> None:
        if self.config.read_only:
            raise errors.PosixError(errno.EROFS, "read-only mount")
        if handle is not None and handle.writer is not None:
            await handle.writer.truncate(size)
            return
        st = await self.ns.object_stat(node.bucket, node.key)
        writer = ObjectWriter(self.aio, node.bucket, node.key, self.config, self.spill,
                              self.write_budget, self.spawn, exists=True, size=st.size,
                              truncate=size == 0)
        try:
            await writer.truncate(size)
            done = await writer.flush()
        finally:
            writer.close()
        if done is not None:
            self.ns.note_written(node.bucket, node.key, done.size, done.mtime_ns, done.version)
            self._cached_version.pop(node.ino, None)

    async def _set_mtime(self, node: Inode, handle: FileHandle | None, mtime_ns: int) -> None:
        writers = [h.writer for h in self._writers.get(node.ino, ()) if h.writer]
        if handle is not None and handle.writer is not None:
            writers = [handle.writer]
        dirty = [w for w in writers if w.dirty]
        if dirty:
            for w in dirty:
                w.pending_mtime_ns = mtime_ns  # stored with the upload
            return
        await self.ns.set_custom(node, {MTIME_KEY: str(mtime_ns).encode()})

    @handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._inode(parent_inode)
        text = os.fsdecode(name)
        key = parent.key + text
        handles = [h for h in self._writers_by_path(parent.bucket, key)]
        for h in handles:
            assert h.writer is not None
            h.writer.discarded = True  # writes to an unlinked file go nowhere
        inode = await self.ns.remove_file(parent, text, pending=bool(handles))
        self.ns.pending.pop(inode.path, None)
        self._cached_version.pop(inode.ino, None)

    def _writers_by_path(self, bucket: str, key: str) -> list[FileHandle]:
        inode = self.table.find(bucket, key)
        return list(self._writers.get(inode.ino, ())) if inode is not None else []

    @handler
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        node = await self.ns.make_dir(parent, self._name(name))
        self.table.add_lookup(node)
        return self.make_attr(node, None)

    @handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.ns.remove_dir(self._inode(parent_inode), os.fsdecode(name))

    @handler
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
        flags: int, ctx: pyfuse3.RequestContext,
    ) -> None:
        old_parent = self._inode(parent_inode_old)
        new_parent = self._inode(parent_inode_new)
        new_name = self._name(name_new)
        old_key = old_parent.key + os.fsdecode(name_old)
        # Bytes still being written under the old name are uploaded first, then moved.
        for handle in self._writers_by_path(old_parent.bucket, old_key):
            await self._upload(handle)
        await self.ns.rename(old_parent, os.fsdecode(name_old), new_parent, new_name, flags)

    @handler
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise errors.PosixError(errno.EPERM, f"symlink {name!r}: AIS objects cannot be links")

    @handler
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise errors.PosixError(errno.EPERM, f"link {new_name!r}: AIS has no hard links")

    @handler
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if statmod.S_ISREG(mode):
            fi, attr = await self.create(parent_inode, name, mode, os.O_WRONLY, ctx)
            await self.release(fi.fh)
            return attr
        raise errors.PosixError(errno.EPERM, f"mknod {name!r}: AIS holds regular files only")

    # ------------------------------------------------------------------ extended attributes

    @handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        text = os.fsdecode(name)
        if text.startswith(xattrs.LOCAL_NAMESPACES):
            # Answered here, without a network call. ENOTSUP rather than ENODATA: ls(1) then
            # remembers that this filesystem has no SELinux labels or ACLs and stops asking for
            # every file (2 FUSE calls per entry of an `ls -l` otherwise).
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        node = self._inode(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        await self._flush_writers(node)
        props = await self.ns.object_props(node)
        if text in xattrs.READ_ONLY:
            value = {"ais.version": props.version, "ais.checksum": props.checksum,
                     "ais.atime": str(props.atime_ns)}[text]
            return value.encode()
        try:
            key = xattrs.custom_key(text)
        except errors.PosixError:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
        if key not in props.custom:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return xattrs.decode_value(props.custom[key])

    @handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self._inode(inode)
        if node.is_dir:
            return []
        await self._flush_writers(node)
        props = await self.ns.object_props(node)
        # ais.* are readable by name but not listed: cp -a and mv would copy them and fail.
        return xattrs.visible_names(props.custom)

    @handler
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        node = self._inode(inode)
        key = xattrs.custom_key(os.fsdecode(name))
        if node.is_dir:
            raise errors.PosixError(errno.EOPNOTSUPP, "directories have no object to hold xattrs")
        await self._flush_writers(node)
        await self.ns.set_custom(node, {key: xattrs.encode_value(value)})

    @handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._inode(inode)
        text = os.fsdecode(name)
        if text.startswith(xattrs.LOCAL_NAMESPACES):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        if node.is_dir:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        key = xattrs.custom_key(text)
        await self._flush_writers(node)
        if not await self.ns.remove_custom(node, key):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @handler
    async def read(  # type: ignore[override]  # pyfuse3 takes any buffer: no copy
        self, fh: int, off: int, size: int
    ) -> bytes | memoryview:
        handle = self._file(fh)
        if handle.reader is None:
            raise errors.PosixError(errno.EBADF, "file not open for reading")
        writer = handle.writer
        if writer is not None and writer.staged:
            return await writer.read(off, size)
        if writer is not None and writer.dirty:
            await self._upload(handle)  # read what this handle wrote: upload it first
        try:
            return await handle.reader.read(off, size)
        except errors.StaleObject:
            self.ns.invalidate(handle.inode.bucket, handle.inode.key)
            self._cached_version.pop(handle.inode.ino, None)
            raise

    @handler
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
                self._drop_writer(handle)
            handle.inode.opens -= 1
            self.table.drop_if_unused(handle.inode)

    # ------------------------------------------------------------------ lifecycle

    async def shutdown(self) -> None:
        """Called once after the FUSE main loop ended: drop every handle."""
        for fh in list(self._handles):
            handle = self._handles.get(fh)
            if isinstance(handle, FileHandle) and handle.writer is not None:
                try:
                    await self.release(fh)
                except pyfuse3.FUSEError:
                    pass  # logged by the handler; the mount is going away
            elif isinstance(handle, FileHandle) and handle.reader is not None:
                handle.reader.close()
            self._handles.pop(fh, None)


def make_spawn(nursery: trio.Nursery) -> Spawn:
    def spawn(fn: Callable[[], Awaitable[None]]) -> None:
        nursery.start_soon(fn)

    return spawn  # type: ignore[return-value]
