"""The directory tree over AIS: root → buckets → virtual directories → objects.

Name resolution (lookup, getattr, opendir) and the changes made through the mount (mkdir, rmdir,
unlink; rename and custom metadata through ``renames`` and ``custom_metadata``), over parts built
here: the metadata cache (``metacache``: single names, single-flight, TTL and negative entries),
the directory listings (``listings``: cached, streamed, fetched ahead for tree walks;
``lookup_listings``: fetched for names looked up one by one) and the directories this mount made
or removed (``localdirs``). A name is answered, in this order, by: a directory made here, a file
being written here (``written``), the cached listing of its parent, the metadata cache, and
last by the cluster (a HEAD and the first page of a listing at once).

Name rule: a name that is both an object ``a`` and a prefix ``a/`` is the directory (the object
stays reachable only through other tools), in lookups as in listings.

Archives (``--archives expand``): an object whose name AIS reads as an archive is a directory
(``Kind.ARCHIVE``) unless it is being written here; what is inside comes from its member tree
(``archive_view``) and is read-only: every change there is EROFS. rmdir of the archive deletes
the object, and rename moves it (to another archive name) with everything inside.

Concurrency: trio thread only, in the FUSE handlers' tasks. Every ``await`` may let the world
change, so the inode table and the caches are changed only after the awaited remote call
returned, each change with no ``await`` in between.

Invariants:
- ``written`` (the open-files layer, which this module asks and never tells) knows every file
  open for writing here with bytes AIS does not have yet, and its current attributes, whether
  or not AIS has it at all. Such a file, while its name still leads to its inode, wins over
  every cache in lookups and listings, and keeps its parent directory alive.
- A change made here updates, together: the metadata cache, the parent's cached listing (which
  counts as a change for the listing producers, see ``listings``), the directories made or
  removed here, and the inode table.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

import trio

from . import errors
from .aisapi import AisApi, Spawn
from .archive_view import ArchiveView, children, member_stat
from .archives import ArchiveContents, Member, MemberDir, is_archive
from .cache import MISSING, Stat, TtlMap
from .config import MountConfig
from .custom_metadata import CustomMetadata
from .inodes import MEMBER_SEP, Inode, InodeTable, Kind
from .listing import NAME_MAX, Child, Listing, ListingStream, valid_name
from .listings import Listings
from .localdirs import LocalDirs
from .lookup_listings import LookupListings
from .metacache import MetadataCache
from .objects import ObjectProps
from .renames import Renames
from .written import FilesBeingWritten, NothingWritten, written_under

log = logging.getLogger(__name__)


class Namespace:
    def __init__(
        self, aio: AisApi, config: MountConfig, spawn: Spawn,
        timer: Callable[[], float] = time.monotonic, *,
        written: FilesBeingWritten | None = None,
    ) -> None:
        self.aio = aio
        self.config = config
        self.timer = timer
        source = config.source
        if source.bucket is None:
            self.table = InodeTable(Kind.CLUSTER)
        else:
            self.table = InodeTable(Kind.DIR, source.bucket, source.prefix)
        self.cache = MetadataCache(aio, config, timer)
        self.local = LocalDirs()
        self.dir_listings = Listings(aio, config, spawn, self.cache, self.local, timer)
        self.lookup_listings = LookupListings(self.dir_listings, aio, config, spawn, timer)
        self.archives = (ArchiveView(aio, self.object_stat, self.cache.mtimes,
                                     self.dir_listings.cached, spawn)
                         if config.expand_archives else None)
        # Files open for writing here, with their current attributes (see the invariants).
        self.written: FilesBeingWritten = written if written is not None else NothingWritten()
        self.mount_time_ns = time.time_ns()
        self.renames = Renames(self)
        self.custom = CustomMetadata(self)

    @property
    def root(self) -> Inode:
        return self.table.root

    # The caches by name, for the mount's metrics and for fs.
    @property
    def stats(self) -> TtlMap[Stat]:
        return self.cache.stats

    @property
    def dirs(self) -> TtlMap[bool]:
        return self.cache.dirs

    @property
    def listings(self) -> TtlMap[Listing]:
        return self.dir_listings.listings

    # ------------------------------------------------------------------ files being written
    # The only readers of ``written``.

    def _pending_stat(self, bucket: str, key: str) -> Stat | None:
        inode = self.table.find(bucket, key)
        return self.written.stat_of(inode) if inode is not None else None

    def pending_under(self, bucket: str, prefix: str) -> bool:
        return bool(written_under(self.written, self.table, bucket, prefix))

    def _pending_children(self, bucket: str, prefix: str) -> list[Child]:
        return [Child(inode.key[len(prefix):], False, st)
                for inode, st in written_under(self.written, self.table, bucket, prefix)
                if "/" not in inode.key[len(prefix):]]

    # ------------------------------------------------------------------ lookups

    async def lookup(self, parent: Inode, name: str) -> tuple[Inode, Stat | None]:
        """The child ``name`` of ``parent`` (no lookup count change), or NotFound."""
        if not valid_name(name):
            if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
                raise errors.PosixError(36, f"name too long: {name[:40]}...")  # ENAMETOOLONG
            raise errors.NotFound(f"invalid name {name!r}")
        if parent.kind is Kind.CLUSTER:
            if name not in await self.cache.bucket_names():
                raise errors.NotFound("no such bucket", 404, f"ais://{name}")
            return self.table.child(parent, name, "", Kind.DIR), None
        if parent.kind in (Kind.ARCHIVE, Kind.MEMBER_DIR):
            return await self._lookup_inside(parent, name)
        is_dir, stat = await self._resolve(parent.bucket, parent.key, name)
        key = parent.child_key(name, is_dir)
        inode = self.table.child(parent, parent.bucket, key, self._kind(parent.bucket, key, is_dir))
        return inode, stat

    def _kind(self, bucket: str, key: str, is_dir: bool) -> Kind:
        """What an object or prefix is shown as."""
        if is_dir:
            return Kind.DIR
        if (self.archives is not None and is_archive(key)
                and self._pending_stat(bucket, key) is None):
            return Kind.ARCHIVE
        return Kind.FILE

    def child_inodes(self, parent: Inode) -> Callable[[Child], Inode]:
        """The inode of an entry of ``parent``'s listing (no lookup count change), as a function
        that readdir calls for every entry: what depends on ``parent`` alone is worked out once
        (and, in Python 3.11, a ``Kind.X`` read costs as much as building the key)."""
        table_child, bucket = self.table.child, parent.bucket
        if parent.kind is Kind.CLUSTER:
            return lambda child: table_child(parent, child.name, "", Kind.DIR)
        base = parent.child_key("", False)
        if parent.kind in (Kind.ARCHIVE, Kind.MEMBER_DIR):
            member_dir, member = Kind.MEMBER_DIR, Kind.MEMBER

            def inside(child: Child) -> Inode:
                if child.is_dir:
                    return table_child(parent, bucket, base + child.name + "/", member_dir)
                return table_child(parent, bucket, base + child.name, member)
            return inside
        directory, kind_of = Kind.DIR, self._kind

        def outside(child: Child) -> Inode:
            if child.is_dir:
                return table_child(parent, bucket, base + child.name + "/", directory)
            key = base + child.name
            return table_child(parent, bucket, key, kind_of(bucket, key, False))
        return outside

    # ------------------------------------------------------------------ inside archives

    async def _tree(self, inode: Inode) -> tuple[ArchiveContents, str]:
        """The member tree of the archive ``inode`` is in, and its path inside it."""
        assert self.archives is not None, "archive inodes exist only with --archives expand"
        archive, inner = inode.archive_path
        return await self.archives.tree(inode.bucket, archive), inner

    async def _lookup_inside(self, parent: Inode, name: str) -> tuple[Inode, Stat | None]:
        tree, inner = await self._tree(parent)
        node = tree.find(inner + name)
        if node is None:
            raise errors.NotFound("not in the archive", 404, f"{parent!r}/{name}")
        is_dir = isinstance(node, MemberDir)
        kind = Kind.MEMBER_DIR if is_dir else Kind.MEMBER
        inode = self.table.child(parent, parent.bucket, parent.child_key(name, is_dir), kind)
        return inode, None if isinstance(node, MemberDir) else member_stat(tree, node)

    async def member(self, inode: Inode) -> tuple[ArchiveContents, Member]:
        """A member file's archive (current version) and its entry; NotFound when the current
        version of the archive has no such member."""
        tree, inner = await self._tree(inode)
        node = tree.find(inner)
        if not isinstance(node, Member):
            raise errors.NotFound("no longer in the archive", 404, repr(inode))
        return tree, node

    def refuse_in_archive(self, inode: Inode, what: str) -> None:
        """EROFS for a change inside an archive (``inode``: the target, or its directory)."""
        if inode.in_archive or inode.kind is Kind.ARCHIVE:
            raise errors.PosixError(errno.EROFS, f"{what} {inode!r}: archives are read-only")

    async def _resolve(self, bucket: str, prefix: str, name: str) -> tuple[bool, Stat | None]:
        """(is_dir, stat) for ``prefix + name``: the directory wins over an object of that name."""
        if self.local.is_made(bucket, prefix + name + "/"):
            return True, None
        pending = self._pending_stat(bucket, prefix + name)
        if pending is not None:
            return False, pending
        listing = self.dir_listings.cached(bucket, prefix)
        if listing is not None:
            child = listing.by_name.get(name)
            if child is not None:
                return child.is_dir, child.stat
            # Missing from the listing: believed for the negative TTL, as a failed lookup is;
            # later another client may have made it, so AIS is asked: by a new listing, for
            # this name and the next ones missing from it (a directory being filled).
            age = self.timer() - listing.fetched_at
            if age < self.config.negative_metadata_ttl:
                if age >= self.config.negative_metadata_ttl / 2:
                    self.lookup_listings.list_again(bucket, prefix, listing)  # before it is needed
                raise errors.NotFound("not in listing", 404, f"ais://{bucket}/{prefix}{name}")
            if await self.lookup_listings.relisted(bucket, prefix, listing) is not None:
                # Anew from the top: the name may have been made here while it was listed.
                return await self._resolve(bucket, prefix, name)
        key = prefix + name
        dir_known = self.cache.dirs.get((bucket, key + "/"))
        stat_known = self.cache.stats.get((bucket, key))
        if dir_known is True:
            return True, None
        if dir_known is MISSING and stat_known is not None:
            if stat_known is MISSING:
                raise errors.NotFound("cached as missing", 404, f"ais://{bucket}/{key}")
            return False, stat_known
        if listing is None:
            self.lookup_listings.note_cold_lookup(bucket, prefix)
            if await self.lookup_listings.for_lookups(bucket, prefix):
                return await self._resolve(bucket, prefix, name)  # anew, as above
        return await self._probe(bucket, key)

    async def _probe(self, bucket: str, key: str) -> tuple[bool, Stat | None]:
        """Ask the cluster whether ``key`` is a directory and whether it is an object, both at
        once."""
        is_dir = False
        stat: Stat | None = None
        dir_failed: errors.AisFsError | None = None
        obj_failed: errors.AisFsError | None = None

        # The probes' errors are kept here, not raised out of the nursery (that would wrap
        # them in an ExceptionGroup, which no errno mapping understands).
        async def probe_dir() -> None:
            nonlocal is_dir, dir_failed
            try:
                is_dir = await self.dir_exists(bucket, key + "/")
            except errors.AisFsError as exc:
                dir_failed = exc

        async def probe_obj() -> None:
            nonlocal stat, obj_failed
            try:
                stat = await self.object_stat(bucket, key)
            except errors.NotFound:
                pass
            except errors.AisFsError as exc:
                obj_failed = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe_dir)
            nursery.start_soon(probe_obj)
        if dir_failed is not None and stat is not None:
            # The listing failed, the object answered (while a target is down, AIS fails every
            # listing until the cluster map drops it): the file is served; whether a directory
            # of the same name would win is not known now, and nothing is cached about it.
            log.info("ais://%s/%s: listing failed (%s); showing the object", bucket, key,
                     dir_failed)
            return False, stat
        if obj_failed is not None and is_dir:
            return True, None
        failed = dir_failed or obj_failed
        if failed is not None:
            raise failed
        if is_dir:
            if stat is not None:
                log.info("ais://%s/%s is both an object and a prefix; showing the directory",
                         bucket, key)
            return True, None
        if stat is None:
            raise errors.NotFound("no such object or prefix", 404, f"ais://{bucket}/{key}")
        return False, stat

    async def dir_exists(self, bucket: str, prefix: str) -> bool:
        """Whether any object lives under ``prefix`` (which ends with "/")."""
        if self.local.is_made(bucket, prefix) or self.pending_under(bucket, prefix):
            return True
        listed = self.dir_listings.listed(bucket, prefix)
        if isinstance(listed, Child) and listed.is_dir:
            return True
        return await self.cache.dir_exists(
            bucket, prefix, lambda: self.dir_listings.probe_dir(bucket, prefix))

    async def object_stat(self, bucket: str, key: str) -> Stat:
        """The object's attributes (cached); NotFound when it does not exist."""
        if (bucket, key) not in self.cache.stats:
            listed = self.dir_listings.listed(bucket, key)
            if isinstance(listed, Child) and not listed.is_dir and listed.stat is not None:
                return listed.stat
        return await self.cache.head(bucket, key)

    async def fresh_stat(self, inode: Inode) -> Stat:
        """A HEAD that bypasses the cache (used when a file is opened after the TTL)."""
        self.cache.stats.pop(inode.path)
        return await self.object_stat(inode.bucket, inode.key)

    async def getattr(self, inode: Inode) -> Stat | None:
        """The file's stat, or None for directories (which have synthetic attributes)."""
        if inode.kind is Kind.MEMBER:
            tree, member = await self.member(inode)
            return member_stat(tree, member)
        if inode.is_dir:
            return None
        return await self.object_stat(inode.bucket, inode.key)

    async def bucket_names(self) -> tuple[str, ...]:
        return await self.cache.bucket_names()

    # ------------------------------------------------------------------ open directories

    async def open_dir(self, inode: Inode) -> ListingStream:
        """A directory's children as they arrive (see ``Listings.open_dir``); files being
        written here show at once, with their current size."""
        if inode.kind is Kind.CLUSTER:
            names = await self.cache.bucket_names()
            return ListingStream.complete([Child(name, True, None) for name in names])
        if inode.kind in (Kind.ARCHIVE, Kind.MEMBER_DIR):
            tree, inner = await self._tree(inode)
            node = tree.find(inner.rstrip("/"))
            if not isinstance(node, MemberDir):
                raise errors.NotFound("no longer in the archive", 404, repr(inode))
            return ListingStream.complete(children(tree, node))
        shown = self._pending_children(inode.bucket, inode.key)
        return await self.dir_listings.open_dir(inode.bucket, inode.key, shown)

    def close_dir(self, inode: Inode, stream: ListingStream) -> None:
        """An open directory is done with ``stream``."""
        if inode.kind not in (Kind.ARCHIVE, Kind.MEMBER_DIR):
            self.dir_listings.close_dir(inode.bucket, inode.key, stream)

    # ------------------------------------------------------------------ changes made elsewhere

    def invalidate(self, bucket: str, key: str) -> None:
        """Forget what is cached about ``key`` and its parent's listing (for a key inside an
        archive: about the archive)."""
        key = key.partition(MEMBER_SEP)[0]
        if self.archives is not None:
            self.archives.forget(bucket, key)
        self.cache.stats.pop((bucket, key))
        self.cache.dirs.pop((bucket, key if key.endswith("/") else key + "/"))
        parent = key.rstrip("/").rpartition("/")[0]
        self.dir_listings.forget(bucket, parent + "/" if parent else "")
        # Every ancestor directory may have just come into (or gone out of) existence.
        while parent:
            self.cache.dirs.pop((bucket, parent + "/"))
            parent = parent.rpartition("/")[0]

    def note_written(self, bucket: str, key: str, size: int, mtime_ns: int, version: str) -> None:
        """An upload through this mount finished: show its result without asking AIS."""
        if self.archives is not None:
            self.archives.forget(bucket, key)
        stat = Stat(size, mtime_ns, version)
        self.cache.note_stat(bucket, key, stat)
        self.cache.dirs.put_missing((bucket, key + "/"))
        self.dir_listings.set_child(bucket, key, stat)
        parent = key.rpartition("/")[0]
        while parent:
            self.local.exists_in_ais(bucket, parent + "/")
            self.cache.dirs.put((bucket, parent + "/"), True)
            parent = parent.rpartition("/")[0]

    # ------------------------------------------------------------------ changes made here

    async def make_dir(self, parent: Inode, name: str) -> Inode:
        """mkdir: a bucket at the cluster root; elsewhere a directory kept in this mount until
        it gets its first object (AIS has no empty directories)."""
        self.refuse_in_archive(parent, "mkdir in")
        try:
            await self.lookup(parent, name)
        except errors.NotFound:
            pass
        else:
            raise errors.PosixError(errno.EEXIST, f"{name} exists")
        if parent.kind is Kind.CLUSTER:
            await self.aio.create_bucket(name)
            self.cache.forget_buckets()
            return self.table.child(parent, name, "", Kind.DIR)
        prefix = parent.key + name + "/"
        self.local.make(parent.bucket, prefix)
        # The lookup above found nothing under it: its listing is known to be empty.
        self.dir_listings.keep(parent.bucket, prefix, Listing([], {}))
        self.cache.dirs.put((parent.bucket, prefix), True)
        self.dir_listings.set_child(parent.bucket, prefix, None, is_dir=True)
        return self.table.child(parent, parent.bucket, prefix, Kind.DIR)

    async def remove_dir(self, parent: Inode, name: str) -> None:
        """rmdir: refuses (ENOTEMPTY) while anything is under it; never destroys a bucket that
        holds objects. An archive shown as a directory: deletes the archive object."""
        self.refuse_in_archive(parent, "rmdir in")
        inode, _ = await self.lookup(parent, name)
        if inode.kind is Kind.ARCHIVE:
            await self._remove_object(inode, pending=False)
            log.info("rmdir %r: deleted the archive object", inode)
            return
        if not inode.is_dir:
            raise errors.PosixError(errno.ENOTDIR, f"{inode} is not a directory")
        bucket, prefix = inode.bucket, inode.key
        page = await self.aio.list_objects_page(bucket, prefix, recursive=True, page_size=1)
        if (page.entries or self.local.made_under(bucket, prefix)
                or self.pending_under(bucket, prefix)):
            raise errors.PosixError(errno.ENOTEMPTY, f"{inode} is not empty")
        if parent.kind is Kind.CLUSTER:
            await self.aio.destroy_bucket(bucket)
            self.cache.forget_buckets()
        else:
            self.local.remove(bucket, prefix)
            self.dir_listings.forget(bucket, prefix)
            self.cache.dirs.put_missing((bucket, prefix))
            self.dir_listings.set_child(bucket, prefix, None, remove=True)
        self.table.unlink_path(bucket, prefix)

    async def remove_file(self, parent: Inode, name: str, *, pending: bool) -> Inode:
        """unlink: deletes the object (``pending``: it may not be in AIS yet)."""
        self.refuse_in_archive(parent, "unlink in")
        inode, _ = await self.lookup(parent, name)
        if inode.is_dir:
            raise errors.PosixError(errno.EISDIR, f"{inode} is a directory")
        await self._remove_object(inode, pending=pending)
        return inode

    async def _remove_object(self, inode: Inode, *, pending: bool) -> None:
        try:
            await self.aio.delete_object(inode.bucket, inode.key)
        except errors.NotFound:
            if not pending:
                raise
        self.cache.note_gone(inode.bucket, inode.key)
        self.dir_listings.set_child(inode.bucket, inode.key, None, remove=True)
        if self.archives is not None:
            self.archives.forget(inode.bucket, inode.key)
        self.table.unlink_path(inode.bucket, inode.key)
        self.keep_parent(inode.bucket, inode.key)

    def keep_parent(self, bucket: str, key: str) -> None:
        """The parent directory outlives its last object here until rmdir (as on a disk)."""
        parent = key.rstrip("/").rpartition("/")[0]
        if parent:
            self.local.make(bucket, parent + "/")

    async def rename(
        self, old_parent: Inode, old_name: str, new_parent: Inode, new_name: str, flags: int
    ) -> None:
        """rename(2) (see ``renames``)."""
        await self.renames.rename(old_parent, old_name, new_parent, new_name, flags)

    # ------------------------------------------------------------------ custom metadata

    async def object_props(self, inode: Inode) -> ObjectProps:
        return await self.custom.object_props(inode)

    async def set_custom(self, inode: Inode, update: dict[str, bytes]) -> None:
        await self.custom.set_custom(inode, update)

    async def remove_custom(self, inode: Inode, key: str) -> bool:
        return await self.custom.remove_custom(inode, key)
