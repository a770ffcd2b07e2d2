"""Custom metadata of objects through the mount (what xattrs are stored as), for
:class:`~aisfs.namespace.Namespace`: reads by a fresh HEAD, merges and removals that keep the
metadata cache and listings right. Names and value encoding are ``xattrs``' (pure); this module
does the remote calls.

Concurrency: trio thread only, in the FUSE handlers' tasks; caches change only after the awaited
remote call returned.

Invariants: custom metadata itself is never cached (xattrs must read what was set); a change
drops the object's cached stat and mtime (``aisfs.mtime`` may have changed, the version not), a
merge also its parent's cached listing. Nothing inside an archive is changed (EROFS).
``CustomMetadata`` keeps no state of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import xattrs
from .inodes import Inode
from .listings import parent_of
from .metacache import stat_of
from .objects import ObjectProps

if TYPE_CHECKING:
    from .namespace import Namespace


class CustomMetadata:
    def __init__(self, ns: Namespace) -> None:
        self.ns = ns

    async def object_props(self, inode: Inode) -> ObjectProps:
        """A fresh HEAD (custom metadata is not cached: xattrs must read what was set)."""
        props = await self.ns.aio.head_object(inode.bucket, inode.key)
        self.ns.cache.note_stat(inode.bucket, inode.key, stat_of(props))
        return props

    async def set_custom(self, inode: Inode, update: dict[str, bytes]) -> None:
        """Merge keys into the object's custom metadata, refusing what AIS would drop."""
        self.ns.refuse_in_archive(inode, "set xattrs of")
        props = await self.ns.aio.head_object(inode.bucket, inode.key)
        xattrs.check_size({**props.custom, **update})
        await self.ns.aio.set_custom(inode.bucket, inode.key, update)
        self.ns.cache.stats.pop(inode.path)
        self.ns.cache.mtimes.forget(inode.path)  # aisfs.mtime may have changed, the version not
        self.ns.dir_listings.forget(inode.bucket, parent_of(inode.key)[0])

    async def remove_custom(self, inode: Inode, key: str) -> bool:
        """Drop one key (AIS deletes keys only by replacing the whole map)."""
        self.ns.refuse_in_archive(inode, "remove xattrs of")
        props = await self.ns.aio.head_object(inode.bucket, inode.key)
        if key not in props.custom:
            return False
        rest = {k: v for k, v in props.custom.items() if k != key}
        await self.ns.aio.set_custom(inode.bucket, inode.key, rest, replace=True)
        self.ns.cache.stats.pop(inode.path)
        self.ns.cache.mtimes.forget(inode.path)
        return True
