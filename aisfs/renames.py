"""rename(2) through the mount: files, directories (object by object) and archives shown as
directories, for :class:`~aisfs.namespace.Namespace`, whose caches and inode table it updates.

AIS renames one object at a time and only within a bucket: a rename across buckets is EXDEV (so
mv(1) copies), a directory is renamed object by object up to ``--rename-dir-limit`` objects
(EXDEV beyond), and an archive shown as a directory moves only to another archive name.

Concurrency: trio thread only, in the FUSE handlers' tasks. As in the namespace, caches and the
inode table change only after the awaited remote calls returned, with no ``await`` in between.

Invariants: after a rename, the namespace's invariants hold for both names: the metadata cache,
both parents' cached listings, the directories made here and the inode table show the new name
and no longer the old one (or have forgotten both); the old name's parent directory outlives it
as on a disk. ``Renames`` keeps no state of its own.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from . import errors
from .archives import is_archive
from .cache import Stat
from .inodes import MEMBER_SEP, Inode, Kind

if TYPE_CHECKING:
    from .namespace import Namespace


class Renames:
    def __init__(self, ns: Namespace) -> None:
        self.ns = ns

    async def rename(
        self, old_parent: Inode, old_name: str, new_parent: Inode, new_name: str, flags: int
    ) -> None:
        if flags & 2:  # RENAME_EXCHANGE
            raise errors.PosixError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        if old_parent.kind is Kind.CLUSTER or new_parent.kind is Kind.CLUSTER:
            raise errors.PosixError(errno.EPERM, "buckets cannot be renamed through the mount")
        self.ns.refuse_in_archive(old_parent, "rename from")
        self.ns.refuse_in_archive(new_parent, "rename into")
        inode, _ = await self.ns.lookup(old_parent, old_name)
        if old_parent.bucket != new_parent.bucket:
            # rename-obj works within a bucket; EXDEV makes mv(1) copy and delete instead.
            raise errors.PosixError(errno.EXDEV, "rename across buckets")
        try:
            target, _ = await self.ns.lookup(new_parent, new_name)
        except errors.NotFound:
            target = None
        if target is not None:
            if flags & 1:  # RENAME_NOREPLACE
                raise errors.PosixError(errno.EEXIST, f"{target} exists")
        if inode.kind is Kind.ARCHIVE:
            await self._rename_archive(inode, new_parent, new_name, target)
            return
        if target is not None:
            if target.is_dir != inode.is_dir:
                raise errors.PosixError(
                    errno.EISDIR if target.is_dir else errno.ENOTDIR, f"{target} is in the way"
                )
        if inode.is_dir:
            await self._rename_dir(inode, new_parent, new_name, target)
        else:
            await self._rename_file(inode, new_parent, new_parent.key + new_name,
                                    replaces=target is not None)

    async def _rename_file(self, inode: Inode, new_parent: Inode, new_key: str, *,
                           replaces: bool) -> None:
        bucket = inode.bucket
        if new_key != inode.key:
            # AIS's rename onto an existing object may merge the target's custom metadata
            # into the source's (seen when the two live on different targets): the renamed
            # file's xattrs are put back whole.
            custom = (await self.ns.aio.head_object(bucket, inode.key)).custom if replaces else None
            await self.ns.aio.rename_object(bucket, inode.key, new_key)
            if custom is not None:
                await self.ns.aio.set_custom(bucket, new_key, custom, replace=True)
        moved = self.ns.cache.stats.get((bucket, inode.key))
        self.ns.cache.note_gone(bucket, inode.key)
        self.ns.dir_listings.set_child(bucket, inode.key, None, remove=True)
        self.ns.cache.stats.pop((bucket, new_key))
        if isinstance(moved, Stat):
            self.ns.cache.note_stat(bucket, new_key, moved)
            self.ns.dir_listings.set_child(bucket, new_key, moved)
        else:
            self.ns.invalidate(bucket, new_key)
        self.ns.keep_parent(bucket, inode.key)
        self.ns.table.move(inode, new_parent, new_key)

    async def _rename_archive(
        self, inode: Inode, new_parent: Inode, new_name: str, target: Inode | None
    ) -> None:
        """Rename an archive shown as a directory: the object moves (over another archive, as
        a file over a file), and so does everything inside it."""
        new_key = new_parent.key + new_name
        if not is_archive(new_key):
            raise errors.PosixError(
                errno.EINVAL, f"rename {inode!r} to {new_name!r}: not an archive name (it would "
                "turn from a directory into a file; rename it where archives are files)")
        if target is not None and target.kind is not Kind.ARCHIVE:
            raise errors.PosixError(errno.EISDIR if target.is_dir else errno.ENOTDIR,
                                    f"{target} is in the way")
        old_key = inode.key
        assert self.ns.archives is not None
        self.ns.archives.forget(inode.bucket, old_key)
        self.ns.archives.forget(inode.bucket, new_key)
        await self._rename_file(inode, new_parent, new_key, replaces=target is not None)
        self.ns.table.move_prefix(inode.bucket, old_key + MEMBER_SEP, new_key + MEMBER_SEP,
                               new_parent, inode)

    async def _rename_dir(
        self, inode: Inode, new_parent: Inode, new_name: str, target: Inode | None
    ) -> None:
        bucket, old_prefix = inode.bucket, inode.key
        new_prefix = new_parent.key + new_name + "/"
        if new_prefix.startswith(old_prefix):
            raise errors.PosixError(errno.EINVAL, "cannot move a directory into itself")
        if target is not None:
            # rename(2) replaces only an empty directory: no object, no directory made here
            # and no file being written under it.
            page = await self.ns.aio.list_objects_page(bucket, new_prefix, recursive=True,
                                                    page_size=1)
            if (page.entries or self.ns.local.made_under(bucket, new_prefix)
                    or self.ns.pending_under(bucket, new_prefix)):
                raise errors.PosixError(errno.ENOTEMPTY, f"{target} is not empty")
        limit = self.ns.config.rename_dir_limit
        entries = await self.ns.aio.list_all(bucket, old_prefix, recursive=True, limit=limit)
        keys = [e.name for e in entries if not e.is_dir]
        if len(keys) > limit:
            raise errors.PosixError(
                errno.EXDEV,
                f"{inode} holds more than {limit} objects (--rename-dir-limit): renaming it "
                "would move each one; mv copies instead",
            )
        # Object by object: AIS has no prefix rename. A failure midway leaves both prefixes
        # partly filled; the error names the object, and a repeated mv finishes the job.
        for key in keys:
            await self.ns.aio.rename_object(bucket, key, new_prefix + key[len(old_prefix):])
        self.ns.local.rename(bucket, old_prefix, new_prefix)
        self.ns.keep_parent(bucket, old_prefix)
        self.ns.invalidate(bucket, old_prefix)
        self.ns.invalidate(bucket, new_prefix)
        self.ns.cache.forget_under(bucket, (old_prefix, new_prefix))
        self.ns.dir_listings.forget_under(bucket, (old_prefix, new_prefix))
        self.ns.table.move_prefix(bucket, old_prefix, new_prefix, new_parent, inode)
