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
import logging
import os
import stat as statmod
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyfuse3
import trio

from . import errors
from .aio import AsyncAis
from .cache import Stat
from .config import MountConfig
from .inodes import Inode, Kind
from .namespace import Child, Namespace
from .reader import BufferPool, ObjectReader, ReadBudget, Spawn

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
BLOCK_SIZE = 1024 * 1024  # st_blksize: cp and Python size their buffers from it

# Observability hook, set by the mount when metrics are on: observe(op, seconds, errno or 0).
observe: Callable[[str, float, int], None] | None = None


def handler(fn: F) -> F:
    """Map every exception of a FUSE handler to an errno; never let one escape to pyfuse3."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        started = time.monotonic()
        err = 0
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError as exc:
            err = exc.errno
            raise
        except errors.AisFsError as exc:
            err = exc.errno
            log.log(exc.log_level, "%s%s: %s", name, _brief(args), exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            err = exc.errno or errno.EIO
            log.warning("%s%s: %s", name, _brief(args), exc)
            raise pyfuse3.FUSEError(err) from None
        except Exception:
            err = errno.EIO
            log.exception("unexpected error in %s%s; returning EIO", name, _brief(args))
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if observe is not None:
                observe(name, time.monotonic() - started, err)

    return wrapper  # type: ignore[return-value]


def _brief(args: Sequence[Any]) -> str:
    shown = [a if not isinstance(a, bytes | memoryview) or len(a) < 256 else f"<{len(a)} bytes>"
             for a in args if not isinstance(a, pyfuse3.RequestContext)]
    return "(" + ", ".join(repr(a) for a in shown[:3]) + ")"


@dataclass(slots=True)
class DirHandle:
    inode: Inode
    children: list[Child] | None = None


@dataclass(slots=True)
class FileHandle:
    inode: Inode
    reader: ObjectReader | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False  # the append uploader needs the writes as the app issued them
    enable_acl = False

    def __init__(self, config: MountConfig, aio: AsyncAis, spawn: Spawn) -> None:
        super().__init__()
        self.config = config
        self.aio = aio
        self.ns = Namespace(aio, config)
        self.table = self.ns.table
        self.budget = ReadBudget(config.read_ahead_budget)
        self.pool = BufferPool(config.read_part_size, keep=8)
        self.spawn = spawn
        self._handles: dict[int, DirHandle | FileHandle] = {}
        self._next_fh = 1
        # (version, size) each inode's page cache holds, to keep it across opens when unchanged.
        self._cached_version: dict[int, tuple[str, int]] = {}

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
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = pyfuse3.InodeT(inode.ino)
        attr.generation = 0
        attr.entry_timeout = self.config.metadata_ttl
        attr.attr_timeout = self.config.metadata_ttl
        attr.st_uid = self.config.uid
        attr.st_gid = self.config.gid
        attr.st_blksize = BLOCK_SIZE
        if inode.is_dir or st is None:
            attr.st_mode = pyfuse3.ModeT(statmod.S_IFDIR | self.config.dir_mode)
            attr.st_nlink = 2
            attr.st_size = 0
            mtime = self.ns.mount_time_ns
        else:
            attr.st_mode = pyfuse3.ModeT(statmod.S_IFREG | self.config.file_mode)
            attr.st_nlink = 1
            attr.st_size = st.size
            mtime = st.mtime_ns or self.ns.mount_time_ns
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime
        return attr

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
        return self.make_attr(node, await self.ns.getattr(node))

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
        if start_id == 0 or handle.children is None:
            # Offset 0 is the first call or a rewinddir: (re)take the snapshot. Later offsets
            # index into it, so they stay valid however the bucket changes meanwhile.
            handle.children = [child for _, child in await self.ns.list_dir(handle.inode)]
        parent = handle.inode
        for index in range(start_id, len(handle.children)):
            child = handle.children[index]
            inode = self._child_inode(parent, child)
            attr = self.make_attr(inode, child.stat)
            if not pyfuse3.readdir_reply(token, os.fsencode(child.name), attr, index + 1):
                self.table.drop_if_unused(inode)
                break
            self.table.add_lookup(inode)

    def _child_inode(self, parent: Inode, child: Child) -> Inode:
        kind = Kind.DIR if child.is_dir else Kind.FILE
        if parent.kind is Kind.CLUSTER:
            return self.table.child(parent, child.name, "", Kind.DIR)
        return self.table.child(parent, parent.bucket, parent.child_key(child.name, child.is_dir), kind)

    @handler
    async def releasedir(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if isinstance(handle, DirHandle):
            handle.inode.opens -= 1
            self.table.drop_if_unused(handle.inode)

    # ------------------------------------------------------------------ files

    @handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._inode(inode)
        if node.is_dir:
            raise errors.PosixError(errno.EISDIR, f"{node} is a directory")
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            return await self._open_for_write(node, flags, ctx)
        st = await self.ns.object_stat(node.bucket, node.key)
        reader = ObjectReader(
            self.aio, node.bucket, node.key, st.size, st.version, self.config, self.budget,
            self.spawn, self.pool,
        )
        node.opens += 1
        fh = self._new_fh(FileHandle(node, reader))
        # Keep the kernel's pages only when they hold this very version of the object.
        cached = (st.version, st.size)
        keep = bool(st.version) and self._cached_version.get(node.ino) == cached
        self._cached_version[node.ino] = cached
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep)

    async def _open_for_write(
        self, node: Inode, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        raise errors.PosixError(errno.EROFS, f"{node}: writing is not supported by this mount")

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._file(fh)
        if handle.reader is None:
            raise errors.PosixError(errno.EBADF, "file not open for reading")
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
        if handle.reader is not None:
            handle.reader.close()
        handle.inode.opens -= 1
        self.table.drop_if_unused(handle.inode)

    # ------------------------------------------------------------------ lifecycle

    async def shutdown(self) -> None:
        """Called once after the FUSE main loop ended: drop every handle."""
        for fh in list(self._handles):
            handle = self._handles.pop(fh)
            if isinstance(handle, FileHandle) and handle.reader is not None:
                handle.reader.close()


def make_spawn(nursery: trio.Nursery) -> Spawn:
    def spawn(fn: Callable[[], Awaitable[None]]) -> None:
        nursery.start_soon(fn)

    return spawn  # type: ignore[return-value]
