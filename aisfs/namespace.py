"""The directory tree over AIS: root → buckets → virtual directories → objects.

Answers lookup, getattr and directory listings from the metadata cache, going to the cluster
(through ``aio``) on a miss. A listing (fetched in the background page by page, see ``listing``)
is cached with every entry's attributes, so ``ls -l`` and ``find`` cost one paged LIST per
directory and no HEAD per entry; lookups answer from it too. Looking a directory up fetches the
first page of its listing: the whole listing of a small directory, the start for the opendir of
a big one. A tree walk gets many directories' listings from one recursive LIST (``subtree``);
names looked up one by one in a directory get it listed in the background.

Name rule: a name that is both an object ``a`` and a prefix ``a/`` is the directory (the object
stays reachable only through other tools), in lookups as in listings.

Concurrency: trio thread only. Every ``await`` may let the world change, so the inode table is
touched only after the awaited remote call returned, with no ``await`` in between. Listing
producers (streams, tree-walk scans, listings for lookups) are tasks of their own (``spawn``);
what they fetched is cached only if no change was made through the mount meanwhile (``changes``
counts them).
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Callable, Iterator

import trio

from . import errors, xattrs
from .aisapi import AisApi, Spawn
from .cache import MISSING, Stat, TtlMap
from .config import MountConfig
from .inodes import Inode, InodeTable, Kind
from .listing import NAME_MAX, Child, Listing, ListingStream, valid_name
from .objects import ListEntry, ListPage, ObjectProps, list_entries
from .subtree import SubtreeScan, SubtreeSplitter

log = logging.getLogger(__name__)

_CACHE_ENTRIES = 200_000
# Cached listings hold this many entries in all (~70 MB); a bigger directory is not cached.
_LISTED_ENTRIES = 250_000
# A listing's first page is small, so its first entries come quickly; then AIS's maximum (which
# costs the cluster less than growing pages: 87 vs 110 CPU-ms for 10,000 names here).
FIRST_PAGE_SIZE = 1000
# Entries of a listing page made and handed to open directories at a time (~2 ms of work).
STREAM_PIECE = 1000
# Names one recursive listing for a tree walk fetches at most (then the walk starts another).
SCAN_LIMIT = 50_000
# Lookups of names in one directory without a cached listing before it is listed for them, and
# the most names such a listing fetches (a bigger directory is looked up name by name).
COLD_LOOKUPS_BEFORE_LISTING = 3
LOOKUP_LISTING_LIMIT = 20_000


def _pieces(page: ListPage) -> Iterator[list[ListEntry]]:
    """A page's entries, made from what AIS sent a piece at a time when not made yet."""
    if not page.raw:
        yield page.entries
    for start in range(0, len(page.raw), STREAM_PIECE):
        yield list_entries(page.raw[start:start + STREAM_PIECE])


def stat_of(props: ObjectProps) -> Stat:
    return Stat(props.size, props.mtime_ns, props.version)


class Namespace:
    def __init__(
        self, aio: AisApi, config: MountConfig, spawn: Spawn,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.aio = aio
        self.config = config
        self.spawn = spawn
        self.timer = timer
        source = config.source
        if source.bucket is None:
            self.table = InodeTable(Kind.CLUSTER)
        else:
            self.table = InodeTable(Kind.DIR, source.bucket, source.prefix)
        ttl, neg = config.metadata_ttl, config.negative_metadata_ttl
        self.stats: TtlMap[Stat] = TtlMap(_CACHE_ENTRIES, ttl, neg, timer)
        self.dirs: TtlMap[bool] = TtlMap(_CACHE_ENTRIES, ttl, neg, timer)
        self.listings: TtlMap[Listing] = TtlMap(_LISTED_ENTRIES, ttl, neg, timer,
                                                sizeof=lambda listing: len(listing.children) + 1)
        self.buckets: TtlMap[tuple[str, ...]] = TtlMap(1, ttl, neg, timer)
        # Listings being fetched, by (bucket, prefix); one that goes stale is dropped from here
        # so that it is not cached when it completes.
        self.streams: dict[tuple[str, str], ListingStream] = {}
        # First pages of listings fetched by lookups, for the opendir that usually follows.
        self.first_pages: TtlMap[ListPage] = TtlMap(64, ttl, neg, timer)
        # Recursive listings in flight for tree walks; buckets that refused one (a bucket with
        # a remote backend cannot list from a given name).
        self.scans: list[SubtreeScan] = []
        self.scans_refused: set[str] = set()
        # Counts changes made through this mount to cached listings: a recursive listing during
        # which one happened is not believed.
        self.changes = 0
        # Lookups in directories without a cached listing, and the listings fetched for them.
        self.cold_lookups: TtlMap[int] = TtlMap(4096, ttl, neg, timer)
        self.background_listings: set[tuple[str, str]] = set()
        # Directories made with mkdir that have no object yet (AIS has no empty directories).
        self.local_dirs: set[tuple[str, str]] = set()
        # Files open for writing here, with their current attributes, whether or not AIS has
        # them yet: lookups and listings must show them at once.
        self.pending: dict[tuple[str, str], Callable[[], Stat]] = {}
        # Directories removed here: AIS keeps listing emptied on-disk directories for a while.
        self.removed_dirs: set[tuple[str, str]] = set()
        self.mount_time_ns = time.time_ns()

    @property
    def root(self) -> Inode:
        return self.table.root

    # ------------------------------------------------------------------ lookups

    async def lookup(self, parent: Inode, name: str) -> tuple[Inode, Stat | None]:
        """The child ``name`` of ``parent`` (no lookup count change), or NotFound."""
        if not valid_name(name):
            if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
                raise errors.PosixError(36, f"name too long: {name[:40]}...")  # ENAMETOOLONG
            raise errors.NotFound(f"invalid name {name!r}")
        if parent.kind is Kind.CLUSTER:
            if name not in await self.bucket_names():
                raise errors.NotFound("no such bucket", 404, f"ais://{name}")
            return self.table.child(parent, name, "", Kind.DIR), None
        is_dir, stat = await self._resolve(parent.bucket, parent.key, name)
        key = parent.child_key(name, is_dir)
        inode = self.table.child(parent, parent.bucket, key, Kind.DIR if is_dir else Kind.FILE)
        return inode, stat

    async def _resolve(self, bucket: str, prefix: str, name: str) -> tuple[bool, Stat | None]:
        """(is_dir, stat) for ``prefix + name``: the directory wins over an object of that name."""
        if (bucket, prefix + name + "/") in self.local_dirs:
            return True, None
        pending = self.pending.get((bucket, prefix + name))
        if pending is not None:
            return False, pending()
        listing = self._listing(bucket, prefix)
        if listing is not None:
            child = listing.by_name.get(name)
            if child is not None:
                return child.is_dir, child.stat
            # Missing from the listing: believed for the negative TTL, as a failed lookup is;
            # later another client may have made it, so AIS is asked.
            if self.timer() - listing.fetched_at < self.config.negative_metadata_ttl:
                raise errors.NotFound("not in listing", 404, f"ais://{bucket}/{prefix}{name}")
        key = prefix + name
        dir_known = self.dirs.get((bucket, key + "/"))
        stat_known = self.stats.get((bucket, key))
        if dir_known is True:
            return True, None
        if dir_known is MISSING and stat_known is not None:
            if stat_known is MISSING:
                raise errors.NotFound("cached as missing", 404, f"ais://{bucket}/{key}")
            return False, stat_known
        if listing is None:
            self._note_cold_lookup(bucket, prefix)
        results: dict[str, object] = {}
        failures: list[errors.AisFsError] = []

        # Both probes at once; their errors are collected here, not raised out of the nursery
        # (that would wrap them in an ExceptionGroup, which no errno mapping understands).
        async def probe_dir() -> None:
            try:
                results["dir"] = await self.dir_exists(bucket, key + "/")
            except errors.AisFsError as exc:
                failures.append(exc)

        async def probe_obj() -> None:
            try:
                results["stat"] = await self.object_stat(bucket, key)
            except errors.NotFound:
                results["stat"] = None
            except errors.AisFsError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe_dir)
            nursery.start_soon(probe_obj)
        if failures:
            raise failures[0]
        if results["dir"]:
            if results["stat"] is not None:
                log.info("ais://%s/%s is both an object and a prefix; showing the directory",
                         bucket, key)
            return True, None
        stat = results["stat"]
        if stat is None:
            raise errors.NotFound("no such object or prefix", 404, f"ais://{bucket}/{key}")
        assert isinstance(stat, Stat)
        return False, stat

    def _note_cold_lookup(self, bucket: str, prefix: str) -> None:
        """Names looked up one by one in a directory whose listing is not cached (a data loader
        opening files by path): each costs AIS a HEAD and a LIST. From the third one, the
        directory's listing is fetched in the background, and the rest are answered from it."""
        where = (bucket, prefix)
        if where in self.background_listings or where in self.streams:
            return
        count = (self.cold_lookups.get(where) or 0) + 1
        self.cold_lookups.put(where, count)
        if count >= COLD_LOOKUPS_BEFORE_LISTING:
            self.cold_lookups.pop(where)
            self.background_listings.add(where)
            self.spawn(functools.partial(self._list_in_background, bucket, prefix))

    async def _list_in_background(self, bucket: str, prefix: str) -> None:
        changes = self.changes
        try:
            entries = await self.aio.list_all(bucket, prefix, limit=LOOKUP_LISTING_LIMIT)
            if len(entries) > LOOKUP_LISTING_LIMIT:
                return
            entries = await self._without_removed_dirs(bucket, entries)
            if (self.changes == changes and (bucket, prefix) not in self.streams
                    and self._listing(bucket, prefix) is None):
                self._cache_listing(bucket, prefix, entries)
        except errors.AisFsError as exc:
            log.info("ais://%s/%s: listing for lookups failed: %s", bucket, prefix, exc)
        except Exception:
            log.exception("ais://%s/%s: listing for lookups failed", bucket, prefix)
        finally:
            self.background_listings.discard((bucket, prefix))

    async def dir_exists(self, bucket: str, prefix: str) -> bool:
        """Whether any object lives under ``prefix`` (which ends with "/")."""
        if (bucket, prefix) in self.local_dirs:
            return True
        if any(b == bucket and k.startswith(prefix) for (b, k) in self.pending):
            return True
        listed = self._listed(bucket, prefix)
        if isinstance(listed, Child) and listed.is_dir:
            return True

        async def fetch() -> bool:
            # The first page of the directory's own listing answers. A small directory's is the
            # whole listing, cached as such (lookups in it need no request then); a big one's
            # is kept for the opendir that usually follows (ls, find, du, cp -r), which starts
            # from there. A page of directories alone is not proof: AIS lists on-disk
            # directories for a while after their objects are gone, so a recursive listing
            # (objects only) decides then.
            changes = self.changes
            page = await self.aio.list_objects_page(bucket, prefix, page_size=FIRST_PAGE_SIZE)
            found = any(not entry.is_dir for entry in page.entries)
            if not found and page.entries:
                probe = await self.aio.list_objects_page(bucket, prefix, recursive=True,
                                                         page_size=1)
                found = bool(probe.entries)
            if not found:
                self.dirs.put_missing((bucket, prefix))
                return False
            self.dirs.put((bucket, prefix), True)
            if page.continuation_token:
                if self.changes == changes:  # else it may miss a change made here meanwhile
                    self.first_pages.put((bucket, prefix), page)
            else:
                entries = await self._without_removed_dirs(bucket, page.entries)
                if self.changes == changes and (bucket, prefix) not in self.streams:
                    self._cache_listing(bucket, prefix, entries)
            return True

        found = await self.dirs.get_or_fetch((bucket, prefix), fetch)
        return found is True

    def _listed(self, bucket: str, key: str) -> Child | None | bool:
        """What a cached listing of ``key``'s parent says: the child, None (not there), or
        False (no cached listing)."""
        head, _, name = key.rstrip("/").rpartition("/")
        listing = self._listing(bucket, head + "/" if head else "")
        if listing is None:
            return False
        child: Child | None = listing.by_name.get(name)
        return child

    async def object_stat(self, bucket: str, key: str) -> Stat:
        """The object's attributes (cached); NotFound when it does not exist."""
        if (bucket, key) not in self.stats:
            listed = self._listed(bucket, key)
            if isinstance(listed, Child) and not listed.is_dir and listed.stat is not None:
                return listed.stat

        async def fetch() -> Stat:
            try:
                props = await self.aio.head_object(bucket, key)
            except errors.NotFound:
                self.stats.put_missing((bucket, key))
                raise
            stat = stat_of(props)
            self.stats.put((bucket, key), stat)
            return stat

        stat = await self.stats.get_or_fetch((bucket, key), fetch)
        if stat is MISSING:
            raise errors.NotFound("cached as missing", 404, f"ais://{bucket}/{key}")
        return stat

    async def fresh_stat(self, inode: Inode) -> Stat:
        """A HEAD that bypasses the cache (used when a file is opened after the TTL)."""
        self.stats.pop(inode.path)
        return await self.object_stat(inode.bucket, inode.key)

    async def getattr(self, inode: Inode) -> Stat | None:
        """The file's stat, or None for directories (which have synthetic attributes)."""
        if inode.is_dir:
            return None
        return await self.object_stat(inode.bucket, inode.key)

    async def bucket_names(self) -> tuple[str, ...]:
        async def fetch() -> tuple[str, ...]:
            names = tuple(await self.aio.list_buckets())
            self.buckets.put("buckets", names)
            return names

        return await self.buckets.get_or_fetch("buckets", fetch)

    # ------------------------------------------------------------------ listings

    async def open_dir(self, inode: Inode) -> ListingStream:
        """A directory's children as they arrive: complete at once from the cache, else from a
        listing fetched page by page in the background (one per directory at a time, shared by
        concurrent opens) and cached when it completes unchanged."""
        if inode.kind is Kind.CLUSTER:
            names = await self.bucket_names()
            return ListingStream.complete([Child(name, True, None) for name in names])
        bucket, prefix = inode.bucket, inode.key
        if (bucket, prefix) not in self.streams and self._listing(bucket, prefix) is None:
            await self._walk_ahead(bucket, prefix)
        # Files being written here show at once, with their current size.
        shown = [Child(key[len(prefix):], False, current())
                 for (b, key), current in self.pending.items()
                 if b == bucket and key.startswith(prefix) and "/" not in key[len(prefix):]]
        cached = self._listing(bucket, prefix)
        if cached is not None:
            self.listings.hits += 1
            hidden = {c.name for c in shown}
            # A copy: the cached list changes in place with what is done through this mount.
            return ListingStream.complete(shown + [c for c in cached.children
                                                   if c.name not in hidden])
        stream = self.streams.get((bucket, prefix))
        if stream is None:
            stream = ListingStream(f"ais://{bucket}/{prefix}", self._local_subdirs(bucket, prefix),
                                   shown)
            self.listings.misses += 1
            self.streams[(bucket, prefix)] = stream
            first = self.first_pages.pop((bucket, prefix))
            self.spawn(lambda: self._fill(stream, bucket, prefix, first))
        stream.readers += 1
        return stream

    def close_dir(self, inode: Inode, stream: ListingStream) -> None:
        """An open directory is done with ``stream``: a fetch nobody reads any more stops (say
        `ls | head` on a directory of a million objects) and is not cached."""
        stream.readers -= 1
        if stream.readers == 0 and not stream.done:
            if self.streams.get(inode.path) is stream:
                del self.streams[inode.path]
            stream.fetching.cancel()

    async def _fill(self, stream: ListingStream, bucket: str, prefix: str,
                    first: ListPage | None) -> None:
        """Fetch the listing page by page into ``stream`` (after ``first``, when a lookup got
        that already); cache it unless it went stale."""
        send, receive = trio.open_memory_channel[ListPage | errors.AisFsError](1)

        async def fetch_pages() -> None:
            # One page ahead of the entries being made: AIS lists the next page meanwhile.
            async with send:
                uuid = token = ""
                page_size = FIRST_PAGE_SIZE
                if first is not None:
                    await send.send(first)
                    if not first.continuation_token:
                        return
                    uuid, token, page_size = first.uuid, first.continuation_token, 0
                while True:
                    try:
                        page = await self.aio.list_objects_page(
                            bucket, prefix, page_size=page_size, uuid=uuid,
                            continuation_token=token, convert=False,
                        )
                    except errors.AisFsError as exc:
                        await send.send(exc)
                        return
                    await send.send(page)
                    if not page.continuation_token:
                        return
                    uuid, token, page_size = page.uuid, page.continuation_token, 0

        try:
            failure: errors.AisFsError | None = None
            with stream.fetching:  # cancelled when no reader is left
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(fetch_pages)
                    async with receive:
                        try:
                            async for item in receive:
                                if isinstance(item, errors.AisFsError):
                                    raise item
                                for n, entries in enumerate(_pieces(item)):
                                    if n:
                                        # Readers hand out the piece before: the kernel and
                                        # `ls` take it in while this one is made.
                                        await trio.lowlevel.checkpoint()
                                    stream.add(
                                        prefix, await self._without_removed_dirs(bucket, entries))
                                if not item.continuation_token:
                                    # Complete before any reader wakes up: none sees the last
                                    # page without the end, and lookups find it cached.
                                    stream.finish()
                                    if self.streams.get((bucket, prefix)) is stream:
                                        del self.streams[(bucket, prefix)]
                                        self._keep_listing(bucket, prefix, stream.listing)
                        except errors.AisFsError as exc:
                            # Raised out of the nursery it would come wrapped in a group.
                            failure = exc
                            nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
        except errors.AisFsError as exc:
            stream.fail(exc)
        except Exception:
            log.exception("listing ais://%s/%s failed", bucket, prefix)
            stream.fail(errors.PosixError(errno.EIO, f"listing ais://{bucket}/{prefix} failed"))
        finally:
            if not stream.done:  # cancelled: no reader left, or the mount is going away
                stream.fail(errors.PosixError(errno.EIO, "listing cancelled"))
            if self.streams.get((bucket, prefix)) is stream:
                del self.streams[(bucket, prefix)]

    def _listing(self, bucket: str, prefix: str) -> Listing | None:
        """The cached complete listing of ``prefix``, if any."""
        listing = self.listings.get((bucket, prefix))
        return listing if isinstance(listing, Listing) else None

    def _local_subdirs(self, bucket: str, prefix: str) -> list[str]:
        """Names of the directories made here (no object yet) directly under ``prefix``."""
        depth = prefix.count("/") + 1
        return sorted(p[len(prefix):-1] for (b, p) in self.local_dirs
                      if b == bucket and p.startswith(prefix) and p.count("/") == depth)

    async def _walk_ahead(self, bucket: str, prefix: str) -> None:
        """Tree walks (find, du, ls -R, cp -r): once a second subdirectory of one listed
        directory is opened, one recursive listing of that directory from here on lists this
        subdirectory and all that follow it (see ``subtree``); wait until it got this one."""
        scan = next((s for s in self.scans if s.will_settle(bucket, prefix)), None)
        if scan is None:
            if not prefix or bucket in self.scans_refused:
                return
            head, _, name = prefix[:-1].rpartition("/")
            parent = head + "/" if head else ""
            listing = self._listing(bucket, parent)
            if listing is None:
                return
            child = listing.by_name.get(name)
            if child is None or not child.is_dir:
                return
            listing.subdirs_listed.add(name)
            if len(listing.subdirs_listed) < 2:
                return
            scan = SubtreeScan(bucket, parent, prefix)
            self.scans.append(scan)
            self.spawn(functools.partial(self._scan, scan))
        while scan.will_settle(bucket, prefix) and self._listing(bucket, prefix) is None:
            await scan.progress()

    async def _scan(self, scan: SubtreeScan) -> None:
        """Run one recursive listing, caching each directory's listing once it is complete."""
        bucket, prefix = scan.bucket, scan.prefix
        changes = self.changes
        splitter = SubtreeSplitter(prefix)
        uuid = token = ""
        page_size, listed = FIRST_PAGE_SIZE, 0
        try:
            while True:
                page = await self.aio.list_objects_page(
                    bucket, prefix, recursive=True, page_size=page_size, uuid=uuid,
                    continuation_token=token, start_after=scan.start,
                )
                if self.changes != changes:
                    return  # it may miss a change made here meanwhile: list one by one
                complete = splitter.feed(page.entries)
                if not page.continuation_token:
                    complete += splitter.finish()
                elif not complete:
                    # A whole page inside one directory: a big one, better streamed by its own
                    # listing (its reader stops waiting here); the walk starts another scan
                    # after it.
                    return
                for directory, entries in complete:
                    if (bucket, directory) not in self.streams:  # else its own is on the way
                        self._cache_listing(bucket, directory, entries)
                        self.removed_dirs.discard((bucket, directory))  # objects are back
                listed += len(page.entries)
                scan.advance(page.entries[-1].name if page.entries else None)
                if not page.continuation_token or listed >= SCAN_LIMIT:
                    return
                uuid, token, page_size = page.uuid, page.continuation_token, 0
        except errors.AisFsError as exc:
            self.scans_refused.add(bucket)
            log.warning("ais://%s/%s: recursive listing failed (%s); directories of this bucket "
                        "are listed one by one from now on", bucket, prefix, exc)
        except Exception:
            self.scans_refused.add(bucket)
            log.exception("ais://%s/%s: recursive listing failed", bucket, prefix)
        finally:
            scan.finish()
            self.scans.remove(scan)

    def _cache_listing(self, bucket: str, prefix: str, entries: list[ListEntry]) -> None:
        """Cache a directory's complete listing got otherwise than by opening it."""
        stream = ListingStream(f"ais://{bucket}/{prefix}", self._local_subdirs(bucket, prefix))
        stream.add(prefix, entries)
        stream.finish()
        self._keep_listing(bucket, prefix, stream.listing)
        self.dirs.put((bucket, prefix), True)

    def _keep_listing(self, bucket: str, prefix: str, listing: Listing) -> None:
        listing.fetched_at = self.timer()
        self.listings.put((bucket, prefix), listing)

    async def _without_removed_dirs(self, bucket: str, entries: list[ListEntry]
                                    ) -> list[ListEntry]:
        """Drop directories removed here that AIS still lists (emptied on-disk directories)."""
        if not self.removed_dirs:
            return entries
        for entry in entries:
            if entry.is_dir and (bucket, entry.name) in self.removed_dirs:
                # Believe the listing only once objects are back under it.
                page = await self.aio.list_objects_page(
                    bucket, entry.name, recursive=True, page_size=1
                )
                if page.entries:
                    self.removed_dirs.discard((bucket, entry.name))
        return [e for e in entries if not (e.is_dir and (bucket, e.name) in self.removed_dirs)]

    # ------------------------------------------------------------------ changes made here

    def invalidate(self, bucket: str, key: str) -> None:
        """Forget what is cached about ``key`` and its parent's listing."""
        self.stats.pop((bucket, key))
        self.dirs.pop((bucket, key if key.endswith("/") else key + "/"))
        parent = key.rstrip("/").rpartition("/")[0]
        self._forget_listing(bucket, parent + "/" if parent else "")
        # Every ancestor directory may have just come into (or gone out of) existence.
        while parent:
            self.dirs.pop((bucket, parent + "/"))
            parent = parent.rpartition("/")[0]

    def note_written(self, bucket: str, key: str, size: int, mtime_ns: int, version: str) -> None:
        """An upload through this mount finished: show its result without asking AIS."""
        stat = Stat(size, mtime_ns, version)
        self.stats.put((bucket, key), stat)
        self.dirs.put_missing((bucket, key + "/"))
        self._set_child(bucket, key, stat)
        parent = key.rpartition("/")[0]
        while parent:
            self.removed_dirs.discard((bucket, parent + "/"))
            self.local_dirs.discard((bucket, parent + "/"))  # it exists in AIS now
            self.dirs.put((bucket, parent + "/"), True)
            parent = parent.rpartition("/")[0]

    def _set_child(self, bucket: str, key: str, stat: Stat | None, *, is_dir: bool = False,
                   remove: bool = False) -> None:
        """Update the cached listing of ``key``'s parent in place (when there is one), so that
        changes made here do not cost a new LIST."""
        head, _, name = key.rstrip("/").rpartition("/")
        parent = head + "/" if head else ""
        # A listing in flight, or a first page kept from a lookup, may miss this change.
        self.changes += 1
        self.streams.pop((bucket, parent), None)
        self.first_pages.pop((bucket, parent))
        listing = self._listing(bucket, parent)
        if listing is None:
            return
        old = listing.by_name.pop(name, None)
        if old is not None:
            listing.children.remove(old)
        if not remove:
            child = Child(name, is_dir, stat)
            listing.by_name[name] = child
            listing.children.append(child)

    def _forget_listing(self, bucket: str, prefix: str) -> None:
        self.changes += 1
        self.listings.pop((bucket, prefix))
        self.streams.pop((bucket, prefix), None)
        self.first_pages.pop((bucket, prefix))

    # ------------------------------------------------------------------ changes made here

    async def make_dir(self, parent: Inode, name: str) -> Inode:
        """mkdir: a bucket at the cluster root; elsewhere a directory kept in this mount until
        it gets its first object (AIS has no empty directories)."""
        try:
            await self.lookup(parent, name)
        except errors.NotFound:
            pass
        else:
            raise errors.PosixError(errno.EEXIST, f"{name} exists")
        if parent.kind is Kind.CLUSTER:
            await self.aio.create_bucket(name)
            self.buckets.clear()
            return self.table.child(parent, name, "", Kind.DIR)
        prefix = parent.key + name + "/"
        self.local_dirs.add((parent.bucket, prefix))
        self.removed_dirs.discard((parent.bucket, prefix))
        # The lookup above found nothing under it: its listing is known to be empty.
        self._keep_listing(parent.bucket, prefix, Listing([], {}))
        self.dirs.put((parent.bucket, prefix), True)
        self._set_child(parent.bucket, prefix, None, is_dir=True)
        return self.table.child(parent, parent.bucket, prefix, Kind.DIR)

    async def remove_dir(self, parent: Inode, name: str) -> None:
        """rmdir: refuses (ENOTEMPTY) while anything is under it; never destroys a bucket that
        holds objects."""
        inode, _ = await self.lookup(parent, name)
        if not inode.is_dir:
            raise errors.PosixError(errno.ENOTDIR, f"{inode} is not a directory")
        bucket, prefix = inode.bucket, inode.key
        page = await self.aio.list_objects_page(bucket, prefix, recursive=True, page_size=1)
        local = [p for (b, p) in self.local_dirs if b == bucket and p.startswith(prefix)
                 and p != prefix]
        if page.entries or local or any(
            b == bucket and k.startswith(prefix) for (b, k) in self.pending
        ):
            raise errors.PosixError(errno.ENOTEMPTY, f"{inode} is not empty")
        if parent.kind is Kind.CLUSTER:
            await self.aio.destroy_bucket(bucket)
            self.buckets.clear()
        else:
            self.local_dirs.discard((bucket, prefix))
            self.removed_dirs.add((bucket, prefix))
            self._forget_listing(bucket, prefix)
            self.dirs.put_missing((bucket, prefix))
            self._set_child(bucket, prefix, None, remove=True)
        self.table.unlink_path(bucket, prefix)

    async def remove_file(self, parent: Inode, name: str, *, pending: bool) -> Inode:
        """unlink: deletes the object (``pending``: it may not be in AIS yet)."""
        inode, _ = await self.lookup(parent, name)
        if inode.is_dir:
            raise errors.PosixError(errno.EISDIR, f"{inode} is a directory")
        try:
            await self.aio.delete_object(inode.bucket, inode.key)
        except errors.NotFound:
            if not pending:
                raise
        self.stats.put_missing((inode.bucket, inode.key))
        self._set_child(inode.bucket, inode.key, None, remove=True)
        self.table.unlink_path(inode.bucket, inode.key)
        self._keep_parent(inode.bucket, inode.key)
        return inode

    def _keep_parent(self, bucket: str, key: str) -> None:
        """The parent directory outlives its last object here until rmdir (as on a disk)."""
        parent = key.rstrip("/").rpartition("/")[0]
        if parent:
            self.local_dirs.add((bucket, parent + "/"))

    async def rename(
        self, old_parent: Inode, old_name: str, new_parent: Inode, new_name: str, flags: int
    ) -> None:
        if flags & 2:  # RENAME_EXCHANGE
            raise errors.PosixError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        if old_parent.kind is Kind.CLUSTER or new_parent.kind is Kind.CLUSTER:
            raise errors.PosixError(errno.EPERM, "buckets cannot be renamed through the mount")
        inode, _ = await self.lookup(old_parent, old_name)
        if old_parent.bucket != new_parent.bucket:
            # rename-obj works within a bucket; EXDEV makes mv(1) copy and delete instead.
            raise errors.PosixError(errno.EXDEV, "rename across buckets")
        try:
            target, _ = await self.lookup(new_parent, new_name)
        except errors.NotFound:
            target = None
        if target is not None:
            if flags & 1:  # RENAME_NOREPLACE
                raise errors.PosixError(errno.EEXIST, f"{target} exists")
            if target.is_dir != inode.is_dir:
                raise errors.PosixError(
                    errno.EISDIR if target.is_dir else errno.ENOTDIR, f"{target} is in the way"
                )
        bucket = inode.bucket
        if not inode.is_dir:
            new_key = new_parent.key + new_name
            if new_key != inode.key:
                await self.aio.rename_object(bucket, inode.key, new_key)
            moved = self.stats.get((bucket, inode.key))
            self.stats.put_missing((bucket, inode.key))
            self._set_child(bucket, inode.key, None, remove=True)
            self.stats.pop((bucket, new_key))
            if isinstance(moved, Stat):
                self.stats.put((bucket, new_key), moved)
                self._set_child(bucket, new_key, moved)
            else:
                self.invalidate(bucket, new_key)
            self._keep_parent(bucket, inode.key)
            self.table.move(inode, new_parent, new_key)
            return
        await self._rename_dir(inode, new_parent, new_name, target)

    async def _rename_dir(
        self, inode: Inode, new_parent: Inode, new_name: str, target: Inode | None
    ) -> None:
        bucket, old_prefix = inode.bucket, inode.key
        new_prefix = new_parent.key + new_name + "/"
        if new_prefix.startswith(old_prefix):
            raise errors.PosixError(errno.EINVAL, "cannot move a directory into itself")
        if target is not None:
            page = await self.aio.list_objects_page(bucket, new_prefix, recursive=True,
                                                    page_size=1)
            if page.entries:
                raise errors.PosixError(errno.ENOTEMPTY, f"{target} is not empty")
        limit = self.config.rename_dir_limit
        entries = await self.aio.list_all(bucket, old_prefix, recursive=True, limit=limit)
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
            await self.aio.rename_object(bucket, key, new_prefix + key[len(old_prefix):])
        for (b, p) in list(self.local_dirs):
            if b == bucket and p.startswith(old_prefix):
                self.local_dirs.discard((b, p))
                self.local_dirs.add((b, new_prefix + p[len(old_prefix):]))
        self.removed_dirs.add((bucket, old_prefix))
        self.removed_dirs.discard((bucket, new_prefix))
        self._keep_parent(bucket, old_prefix)
        self.invalidate(bucket, old_prefix)
        self.invalidate(bucket, new_prefix)
        self.stats.pop_where(lambda k: isinstance(k, tuple) and k[0] == bucket
                             and str(k[1]).startswith((old_prefix, new_prefix)))
        self.dirs.pop_where(lambda k: isinstance(k, tuple) and k[0] == bucket
                            and str(k[1]).startswith((old_prefix, new_prefix)))
        for cache in (self.listings, self.first_pages):
            cache.pop_where(lambda k: isinstance(k, tuple) and k[0] == bucket
                            and str(k[1]).startswith((old_prefix, new_prefix)))
        for b, p in list(self.streams):
            if b == bucket and p.startswith((old_prefix, new_prefix)):
                del self.streams[(b, p)]
        self.table.move_prefix(bucket, old_prefix, new_prefix, new_parent, inode)

    # ------------------------------------------------------------------ custom metadata

    async def object_props(self, inode: Inode) -> ObjectProps:
        """A fresh HEAD (custom metadata is not cached: xattrs must read what was set)."""
        props = await self.aio.head_object(inode.bucket, inode.key)
        self.stats.put(inode.path, stat_of(props))
        return props

    async def set_custom(self, inode: Inode, update: dict[str, bytes]) -> None:
        """Merge keys into the object's custom metadata, refusing what AIS would drop."""
        props = await self.aio.head_object(inode.bucket, inode.key)
        xattrs.check_size({**props.custom, **update})
        await self.aio.set_custom(inode.bucket, inode.key, update)
        self.stats.pop(inode.path)
        self._forget_listing(inode.bucket, inode.key.rpartition("/")[0] + "/"
                             if "/" in inode.key else "")

    async def remove_custom(self, inode: Inode, key: str) -> bool:
        """Drop one key (AIS deletes keys only by replacing the whole map)."""
        props = await self.aio.head_object(inode.bucket, inode.key)
        if key not in props.custom:
            return False
        rest = {k: v for k, v in props.custom.items() if k != key}
        await self.aio.set_custom(inode.bucket, inode.key, rest, replace=True)
        self.stats.pop(inode.path)
        return True
