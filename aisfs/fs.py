"""The FUSE adapter: pyfuse3 ``Operations`` that decode arguments and delegate to the layers below
(``openfiles`` for handles and what is open, ``namespace`` for names), then encode the answer.

Only this module, ``fuse_attrs.py`` (the attributes it answers with), ``kernelnotify.py`` (the
kernel's caches) and ``mount.py`` import pyfuse3; it holds no open-file policy. Every handler
goes through :func:`handler`, which maps :mod:`aisfs.errors` to errno and turns any unexpected
exception into EIO with a traceback in the log, so one bad request never takes the mount down,
and reports each operation to the mount's observer.

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
from typing import Any, TypeVar

import pyfuse3

from . import errors, open_reply, xattrs
from .config import MountConfig
from .fuse_attrs import EntryAttrs
from .inodes import Inode
from .namespace import Namespace
from .observer import Observer
from .openfiles import OpenFiles

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


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
            if self.observer is not None:
                self.observer.fuse_op(name, time.monotonic() - started, err)

    return wrapper  # type: ignore[return-value]


# Handler parameters that carry file contents or xattr values: logged by size, never by value.
_DATA_PARAMS = frozenset({"buf", "value"})


# pyfuse3's argument objects whose repr is an address only: left out of log lines.
_OPAQUE_ARGS = (pyfuse3.RequestContext, pyfuse3.ReaddirToken, pyfuse3.EntryAttributes,
                pyfuse3.SetattrFields)


def _brief(args: Sequence[Any], data_args: frozenset[int] = frozenset()) -> str:
    shown = [f"<{len(a)} bytes>" if i in data_args or (
                 isinstance(a, bytes | memoryview) and len(a) >= 256) else repr(a)
             for i, a in enumerate(args) if not isinstance(a, _OPAQUE_ARGS)]
    return "(" + ", ".join(shown[:3]) + ")"


class Operations(pyfuse3.Operations):
    """Invariant: holds no state of its own beyond its collaborators (built by ``mount.py``)."""

    supports_dot_lookup = False
    enable_writeback_cache = False  # the append uploader needs the writes as the app issued them
    enable_acl = False

    def __init__(
        self, config: MountConfig, ns: Namespace, files: OpenFiles,
        observer: Observer | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.ns = ns
        self.table = ns.table
        self.files = files
        self.observer = observer
        self.attrs = EntryAttrs(config, ns)

    # ------------------------------------------------------------------ helpers

    def _inode(self, ino: int) -> Inode:
        try:
            return self.table.get(ino)
        except KeyError:
            raise errors.PosixError(errno.ENOENT, f"unknown inode {ino}") from None

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
                inode, st = await self.ns.lookup(parent, self._existing_name(name))
            except errors.NotFound:
                if self.config.negative_metadata_ttl > 0:
                    return self.attrs.negative()
                raise
        if not inode.is_dir and st is None:
            st = await self.ns.getattr(inode)
        self.table.add_lookup(inode)
        return self.attrs.make(inode, st)

    @handler
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        attr = self.attrs.make(node, await self.files.stat(node))
        if self.files.unlinked(node):
            attr.st_nlink = 0  # type: ignore[assignment]
        return attr

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            try:
                self.files.forget(ino, count)
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
        return pyfuse3.FileHandleT(self.files.open_dir(self._inode(inode)))

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Hand out what has arrived; an empty reply would mean the end of the directory.
        parent, entries = await self.files.dir_entries(fh, start_id)
        children = entries.children
        written = self.files.written_stat if self.files.writers else None
        attr = self.attrs.new()  # one for all entries: readdir_reply copies it at once
        child_inode = self.ns.child_inodes(parent)
        for index in range(start_id, len(children)):
            child = children[index]
            inode = child_inode(child)
            current = written(inode) if written is not None and not child.is_dir else None
            self.attrs.fill(attr, inode, child.stat if current is None else current)
            if not pyfuse3.readdir_reply(token, os.fsencode(child.name), attr, index + 1):
                self.table.drop_if_unused(inode)
                break
            self.table.add_lookup(inode)

    @handler
    async def releasedir(self, fh: int) -> None:
        self.files.release_dir(fh)

    # ------------------------------------------------------------------ files

    @handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        fh, keep_cache = await self.files.open(self._inode(inode), flags)
        if flags & os.O_ACCMODE == os.O_RDONLY:
            open_reply.without_flush(fh, keep_cache)  # nothing to flush at its close
        return self._file_info(fh, flags, keep_cache)

    @handler
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._inode(parent_inode)
        fh, node, st = await self.files.create(parent, self._name(name), flags)
        self.table.add_lookup(node)
        return (self._file_info(fh, flags), self.attrs.make(node, st))

    @staticmethod
    def _file_info(fh: int, flags: int, keep_cache: bool = False) -> pyfuse3.FileInfo:
        # A write-only handle bypasses the kernel's page cache: the bytes go to AIS, caching them
        # here too would only cost a page per 4 KiB written (measured: dd's own CPU for 1 GiB fell
        # from 2-4 s to 0.2 s). Nothing is lost: such a handle can neither read nor mmap.
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep_cache,
                                direct_io=bool(flags & os.O_WRONLY))

    @staticmethod
    def _existing_name(name: bytes) -> str:
        """The name of an entry to find: one that is not UTF-8 names nothing (AIS's object
        names are UTF-8, and so are the names this mount makes): ENOENT, logged at INFO."""
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            exc = errors.PosixError(errno.ENOENT, f"name {name!r} is not UTF-8: no such object")
            exc.log_level = logging.INFO
            raise exc from None

    @staticmethod
    def _xattr_name(name: bytes, err: int) -> str:
        """An xattr name; one that is not UTF-8 cannot be a custom-metadata key: ``err``."""
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(err) from None

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
    async def read(  # type: ignore[override]  # pyfuse3 takes any buffer: no copy
        self, fh: int, off: int, size: int
    ) -> bytes | memoryview:
        return await self.files.read(fh, off, size)

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.files.write(fh, off, buf)

    @handler
    async def flush(self, fh: int) -> None:
        if self.config.read_only:
            # Nothing is ever uploaded: ENOSYS tells the kernel to send no FLUSH from now on,
            # what open_reply's FOPEN_NOFLUSH gives every read-only open where it is installed.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        # close(2) waits for this: the upload result reaches the writer here, not in release.
        await self.files.flush(fh)

    @handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.files.fsync(fh)

    @handler
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
        fh: int | None, ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        st = await self.files.setattr(
            node, fh, attr.st_size if fields.update_size else None,
            attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self.attrs.make(node, st)

    @handler
    async def release(self, fh: int) -> None:
        await self.files.release(fh)

    # ------------------------------------------------------------------ names

    @handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.files.unlink(self._inode(parent_inode), self._existing_name(name))

    @handler
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        node = await self.ns.make_dir(parent, self._name(name))
        self.table.add_lookup(node)
        return self.attrs.make(node, None)

    @handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.ns.remove_dir(self._inode(parent_inode), self._existing_name(name))

    @handler
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
        flags: int, ctx: pyfuse3.RequestContext,
    ) -> None:
        old_parent = self._inode(parent_inode_old)
        new_parent = self._inode(parent_inode_new)
        new_name = self._name(name_new)
        await self.files.rename(old_parent, self._existing_name(name_old), new_parent, new_name,
                                flags)

    @handler
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.ns.refuse_in_archive(self._inode(parent_inode), "symlink in")
        raise errors.PosixError(errno.EPERM, f"symlink {name!r}: AIS objects cannot be links")

    @handler
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.ns.refuse_in_archive(self._inode(new_parent_inode), "link in")
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
        text = self._xattr_name(name, pyfuse3.ENOATTR)
        if text.startswith(xattrs.LOCAL_NAMESPACES):
            # Answered here, without a network call. ENOTSUP rather than ENODATA: ls(1) then
            # remembers that this filesystem has no SELinux labels or ACLs and stops asking for
            # every file (2 FUSE calls per entry of an `ls -l` otherwise).
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        node = self._inode(inode)
        if node.is_dir or node.in_archive:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        props = await self.files.object_props(node)
        if text in xattrs.READ_ONLY:
            return xattrs.read_only_value(text, props)
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
        if node.is_dir or node.in_archive:
            return []
        props = await self.files.object_props(node)
        # ais.* are readable by name but not listed: cp -a and mv would copy them and fail.
        return xattrs.visible_names(props.custom)

    @handler
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        node = self._inode(inode)
        key = xattrs.custom_key(self._xattr_name(name, errno.EINVAL))
        self.ns.refuse_in_archive(node, "setxattr")
        if node.is_dir:
            raise errors.PosixError(errno.EOPNOTSUPP, "directories have no object to hold xattrs")
        await self.files.set_custom(node, {key: xattrs.encode_value(value)})

    @handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._inode(inode)
        text = self._xattr_name(name, pyfuse3.ENOATTR)
        if text.startswith(xattrs.LOCAL_NAMESPACES):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        self.ns.refuse_in_archive(node, "removexattr")
        if node.is_dir:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        if not await self.files.remove_custom(node, xattrs.custom_key(text)):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    # ------------------------------------------------------------------ lifecycle

    async def shutdown(self) -> None:
        """Called once after the FUSE main loop ended: upload what is open for writing (each
        error logged by the handler), then drop every handle."""
        for fh in self.files.write_handles():
            try:
                await self.release(fh)
            except pyfuse3.FUSEError:
                pass  # logged by the handler; the mount is going away
        self.files.close_all()
