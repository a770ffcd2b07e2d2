"""Directory listings: cached, being fetched, and fetched ahead for lookups and tree walks.

A directory's listing is fetched in the background page by page (a ``ListingStream``, shared
by concurrent opens) and cached with every entry's attributes once complete, so ``ls -l`` and
``find`` cost one paged LIST per directory and no HEAD per entry; lookups answer from it too.
Other producers fill the same cache: a lookup of a directory fetches the first page of its
listing (the whole of a small directory's, the start of a big one's for the opendir that
follows), a tree walk gets many directories' listings from one recursive LIST (``subtree``),
and names looked up one by one in a directory get it listed in the background
(``lookup_listings``, which relies on the cache, streams and watches here).

Changes made through the mount while a producer fetches are not lost: the producer watches the
directories it lists (a :class:`Watch`) and replays what was changed there onto what it fetched
before caching it, so a directory being written to still gets its listing cached.

Concurrency: trio thread only. Producers (a stream's fill, a tree walk's scan, a listing for
lookups) are tasks of their own (``spawn``); they write only their stream, and the cache once
complete, with no ``await`` between the staleness check and the write. Changes made through the
mount (``set_child``, ``forget``) run in FUSE handlers, synchronously.

Invariants:
- ``watches`` holds a :class:`Watch` for every producer in flight that does not own a
  registered stream (a lookup's first page, a listing for lookups, a tree walk's scan); every
  change made through the mount to a directory it covers is recorded in it (``set_child``), or
  makes it ``lost`` (a listing dropped: ``forget``, ``forget_under``). A producer caches what it
  fetched only when its watch is not lost, with the recorded changes replayed onto it.
- ``streams[d]`` is the stream whose completion is cached as ``d``'s listing, and the one new
  opens of ``d`` join. A change to ``d``, its last reader leaving, or a rename takes it out: then
  it still serves its readers but is not cached. It leaves at the latest when its producer ends.
- ``first_pages[d]`` is the first page of ``d``'s listing, fetched with no change to ``d``
  since; the next open of ``d`` takes it (it is popped, so used at most once).
- A cached ``Listing`` is the directory's truth for the metadata TTL: changes made here update
  it in place (``set_child``), so opens hand out copies of its children.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import trio

from . import errors
from .aisapi import AisApi, Spawn
from .cache import Stat, TtlMap
from .config import MountConfig
from .listing import Child, Listing, ListingStream, valid_name
from .localdirs import LocalDirs
from .metacache import MetadataCache
from .objects import ListEntry, ListPage, list_entries
from .subtree import TreeWalks

log = logging.getLogger(__name__)

# Cached listings hold this many entries in all (~70 MB); a bigger directory is not cached.
LISTED_ENTRIES = 250_000
# A listing's first page is small, so its first entries come quickly; then AIS's maximum (which
# costs the cluster less than growing pages: 87 vs 110 CPU-ms for 10,000 names here).
FIRST_PAGE_SIZE = 1000
# Names under a directory listed beside an object of its name that are looked up, at most, to
# tell a real directory from what an object a//b makes.
PROBE_NAMES = 8
# Entries of a listing page made and handed to open directories at a time (~2 ms of work).
STREAM_PIECE = 1000

_Send = trio.MemorySendChannel[ListPage | errors.AisFsError]


def _pieces(page: ListPage) -> Iterator[list[ListEntry]]:
    """A page's entries, made from what AIS sent a piece at a time when not made yet."""
    if not page.raw:
        yield page.entries
    for start in range(0, len(page.raw), STREAM_PIECE):
        yield list_entries(page.raw[start:start + STREAM_PIECE])


def parent_of(key: str) -> tuple[str, str]:
    """(the parent directory's prefix, the name) of an object key or a directory prefix."""
    head, _, name = key.rstrip("/").rpartition("/")
    return (head + "/" if head else ""), name


@dataclass(eq=False, slots=True)
class Watch:
    """The changes made through the mount, since a producer started, to the listing of
    ``prefix`` (with ``subtree``: of every directory at or below it).

    Invariants: ``changed`` maps (directory, name) to the entry as last changed here, None when
    removed; ``lost``: a listing it covers was dropped (changed elsewhere, renamed, removed),
    which cannot be replayed; ``started`` is when the producer started (the namespace's clock).
    """

    bucket: str
    prefix: str
    subtree: bool
    started: float
    changed: dict[tuple[str, str], Child | None] = field(default_factory=dict)
    lost: bool = False

    def covers(self, bucket: str, directory: str) -> bool:
        return bucket == self.bucket and (
            directory == self.prefix or (self.subtree and directory.startswith(self.prefix)))

    def replay(self, directory: str, listing: Listing) -> None:
        """Apply the changes recorded for ``directory`` to its ``listing``."""
        for (where, name), child in self.changed.items():
            if where == directory:
                _put_child(listing, name, child)


def _put_child(listing: Listing, name: str, child: Child | None) -> None:
    """Replace (or, with None, remove) the entry ``name`` of ``listing``."""
    old = listing.by_name.pop(name, None)
    if old is not None:
        listing.children.remove(old)
    if child is not None:
        listing.by_name[name] = child
        listing.children.append(child)


class Listings:
    def __init__(
        self, aio: AisApi, config: MountConfig, spawn: Spawn, cache: MetadataCache,
        local: LocalDirs, timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.aio = aio
        self.spawn = spawn
        self.cache = cache
        self.local = local
        self.timer = timer
        ttl, neg = config.metadata_ttl, config.negative_metadata_ttl
        self.listings: TtlMap[Listing] = TtlMap(LISTED_ENTRIES, ttl, neg, timer,
                                                sizeof=lambda listing: len(listing.children) + 1)
        self.streams: dict[tuple[str, str], ListingStream] = {}
        self.first_pages: TtlMap[ListPage] = TtlMap(64, ttl, neg, timer)
        self.watches: list[Watch] = []
        self.walks = TreeWalks(self, aio, spawn)

    # ------------------------------------------------------------------ the cache

    def cached(self, bucket: str, prefix: str) -> Listing | None:
        """The cached complete listing of ``prefix``, if any."""
        listing = self.listings.get((bucket, prefix))
        return listing if isinstance(listing, Listing) else None

    def listed(self, bucket: str, key: str) -> Child | None | bool:
        """What a cached listing of ``key``'s parent says: the child, None (not there), or
        False (no cached listing)."""
        parent, name = parent_of(key)
        listing = self.cached(bucket, parent)
        if listing is None:
            return False
        child: Child | None = listing.by_name.get(name)
        return child

    def cache_listing(self, bucket: str, prefix: str, entries: list[ListEntry],
                      watch: Watch) -> None:
        """Cache a directory's complete listing got otherwise than by opening it, with the
        changes made here since ``watch`` started."""
        stream = ListingStream(f"ais://{bucket}/{prefix}", self.local.made_children(bucket, prefix))
        stream.add(prefix, entries)
        stream.finish()
        listing = stream.listing
        watch.replay(prefix, listing)
        old = self.cached(bucket, prefix)
        if old is not None:
            listing.subdirs_listed = old.subdirs_listed  # a tree walk's progress stays
        self.keep(bucket, prefix, listing, watch.started)
        self.cache.dirs.put((bucket, prefix), True)

    def keep(self, bucket: str, prefix: str, listing: Listing,
             fetched_at: float | None = None) -> None:
        """Cache ``listing``, which shows the cluster as of ``fetched_at`` (default: now)."""
        listing.fetched_at = self.timer() if fetched_at is None else fetched_at
        self.listings.put((bucket, prefix), listing)

    @contextlib.contextmanager
    def watching(self, bucket: str, prefix: str, *, subtree: bool = False) -> Iterator[Watch]:
        """Record the changes made here to ``prefix``'s listing (and, with ``subtree``, to those
        of the directories below it) while a producer fetches it."""
        watch = Watch(bucket, prefix, subtree, self.timer())
        self.watches.append(watch)
        try:
            yield watch
        finally:
            self.watches.remove(watch)

    async def without_empty_dirs(self, bucket: str, entries: list[ListEntry]
                                 ) -> list[ListEntry]:
        """Drop directories AIS lists with no object under them: the emptied on-disk
        directories of directories removed here, and the directory ``a/`` beside an object
        ``a`` that an object ``a//b`` makes (AIS stores it as the file a/b, lists the directory,
        and lists a/b in it, a name no request finds): the object ``a`` stays a file then."""
        dirs = [e for e in entries if e.is_dir]
        if not dirs:
            return entries
        objects: set[str] | None = None
        empty: set[str] = set()
        for entry in dirs:
            if self.local.is_removed(bucket, entry.name):
                # Believe the listing only once objects are back under it.
                page = await self.aio.list_objects_page(bucket, entry.name, recursive=True,
                                                        page_size=1)
                if page.entries:
                    self.local.objects_back(bucket, entry.name)
                else:
                    empty.add(entry.name)
                continue
            if not valid_name(entry.name[:-1].rpartition("/")[2]):
                continue  # skipped anyway
            if objects is None:
                objects = {e.name for e in entries if not e.is_dir}
            if entry.name[:-1] in objects and not await self._holds_objects(bucket, entry.name):
                empty.add(entry.name)
        if not empty:
            return entries
        return [e for e in entries if not (e.is_dir and e.name in empty)]

    async def _holds_objects(self, bucket: str, prefix: str) -> bool:
        """Whether a listed object under ``prefix`` really exists (asked by HEAD, as AIS lists
        the names of a//b-like objects as they lie on its disks); more than a few listed names,
        none found: assumed so."""
        page = await self.aio.list_objects_page(bucket, prefix, recursive=True,
                                                page_size=PROBE_NAMES)
        for entry in page.entries:
            try:
                await self.aio.head_object(bucket, entry.name)
                return True
            except errors.NotFound:
                pass
        return bool(page.continuation_token)

    # ------------------------------------------------------------------ changes made here

    def set_child(self, bucket: str, key: str, stat: Stat | None, *, is_dir: bool = False,
                  remove: bool = False) -> None:
        """Update the cached listing of ``key``'s parent in place (when there is one), so that
        changes made here do not cost a new LIST."""
        parent, name = parent_of(key)
        child = None if remove else Child(name, is_dir, stat)
        # A stream in flight, or a first page kept from a lookup, may miss this change; other
        # producers replay it.
        for watch in self.watches:
            if watch.covers(bucket, parent):
                watch.changed[(parent, name)] = child
        self.streams.pop((bucket, parent), None)
        self.first_pages.pop((bucket, parent))
        listing = self.cached(bucket, parent)
        if listing is not None:
            _put_child(listing, name, child)

    def forget(self, bucket: str, prefix: str) -> None:
        """Drop what is cached or being fetched of ``prefix``'s listing."""
        for watch in self.watches:
            if watch.covers(bucket, prefix):
                watch.lost = True
        self.listings.pop((bucket, prefix))
        self.streams.pop((bucket, prefix), None)
        self.first_pages.pop((bucket, prefix))

    def forget_under(self, bucket: str, prefixes: tuple[str, ...]) -> None:
        """Drop every listing of a directory at or below one of ``prefixes`` (a rename)."""
        for watch in self.watches:
            if watch.bucket == bucket and (watch.prefix.startswith(prefixes) or (
                    watch.subtree and any(p.startswith(watch.prefix) for p in prefixes))):
                watch.lost = True

        def under(key: object) -> bool:
            return isinstance(key, tuple) and key[0] == bucket and str(key[1]).startswith(prefixes)

        self.listings.pop_where(under)
        self.first_pages.pop_where(under)
        for where in [w for w in self.streams if under(w)]:
            del self.streams[where]

    # ------------------------------------------------------------------ directory probes

    async def probe_dir(self, bucket: str, prefix: str) -> bool:
        """Whether objects live under ``prefix``, from the first page of its own listing.

        A small directory's first page is the whole listing, cached as such (lookups in it
        need no request then); a big one's is kept for the opendir that usually follows (ls,
        find, du, cp -r), which starts from there. A page of directories alone is not proof:
        AIS lists on-disk directories for a while after their objects are gone, so a recursive
        listing (objects only) decides then.
        """
        with self.watching(bucket, prefix) as watch:
            page = await self.aio.list_objects_page(bucket, prefix, page_size=FIRST_PAGE_SIZE)
            found = any(not entry.is_dir for entry in page.entries)
            if not found and page.entries:
                probe = await self.aio.list_objects_page(bucket, prefix, recursive=True,
                                                         page_size=1)
                found = bool(probe.entries)
            if not found:
                return False
            if page.continuation_token:
                # A stream starting from it could not replay a change made here meanwhile.
                if not watch.changed and not watch.lost:
                    self.first_pages.put((bucket, prefix), page)
            else:
                entries = await self.without_empty_dirs(bucket, page.entries)
                if not watch.lost and (bucket, prefix) not in self.streams:
                    self.cache_listing(bucket, prefix, entries, watch)
        return True

    # ------------------------------------------------------------------ open directories

    async def open_dir(self, bucket: str, prefix: str, shown: list[Child]) -> ListingStream:
        """A directory's children as they arrive, ``shown`` first (files being written here,
        hiding listed objects of their names): complete at once from the cache, else from a
        listing fetched page by page in the background (one per directory at a time, shared by
        concurrent opens) and cached when it completes unchanged."""
        if (bucket, prefix) not in self.streams and self.cached(bucket, prefix) is None:
            await self.walks.walk_ahead(bucket, prefix)
        cached = self.cached(bucket, prefix)
        if cached is not None:
            self.listings.hits += 1
            hidden = {c.name for c in shown}
            # A copy: the cached list changes in place with what is done through this mount.
            return ListingStream.complete(shown + [c for c in cached.children
                                                   if c.name not in hidden])
        stream = self.streams.get((bucket, prefix))
        if stream is None:
            stream = ListingStream(f"ais://{bucket}/{prefix}",
                                   self.local.made_children(bucket, prefix), shown)
            self.listings.misses += 1
            self.streams[(bucket, prefix)] = stream
            first = self.first_pages.pop((bucket, prefix))
            self.spawn(lambda: self._fill(stream, bucket, prefix, first))
        stream.readers += 1
        return stream

    def close_dir(self, bucket: str, prefix: str, stream: ListingStream) -> None:
        """An open directory is done with ``stream``: a fetch nobody reads any more stops (say
        `ls | head` on a directory of a million objects) and is not cached."""
        stream.readers -= 1
        if stream.readers == 0 and not stream.done:
            if self.streams.get((bucket, prefix)) is stream:
                del self.streams[(bucket, prefix)]
            stream.fetching.cancel()

    async def _fill(self, stream: ListingStream, bucket: str, prefix: str,
                    first: ListPage | None) -> None:
        """Fetch the listing page by page into ``stream`` (after ``first``, when a lookup got
        that already); cache it unless it went stale."""
        try:
            with stream.fetching:  # cancelled when no reader is left
                await self._receive_pages(stream, bucket, prefix, first)
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

    async def _receive_pages(self, stream: ListingStream, bucket: str, prefix: str,
                             first: ListPage | None) -> None:
        """Make entries of each page as it comes, while the next one is fetched; raises the
        listing's error."""
        send, receive = trio.open_memory_channel[ListPage | errors.AisFsError](1)
        failure: errors.AisFsError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._fetch_pages, send, bucket, prefix, first)
            async with receive:
                try:
                    async for item in receive:
                        if isinstance(item, errors.AisFsError):
                            raise item
                        await self._add_page(stream, bucket, prefix, item)
                except errors.AisFsError as exc:
                    # Raised out of the nursery it would come wrapped in a group.
                    failure = exc
                    nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _add_page(self, stream: ListingStream, bucket: str, prefix: str,
                        page: ListPage) -> None:
        for n, entries in enumerate(_pieces(page)):
            if n:
                # Readers hand out the piece before: the kernel and `ls` take it in while this
                # one is made.
                await trio.lowlevel.checkpoint()
            stream.add(prefix, await self.without_empty_dirs(bucket, entries))
        if not page.continuation_token:
            # Complete before any reader wakes up: none sees the last page without the end,
            # and lookups find it cached.
            stream.finish()
            if self.streams.get((bucket, prefix)) is stream:
                del self.streams[(bucket, prefix)]
                self.keep(bucket, prefix, stream.listing)

    async def _fetch_pages(self, send: _Send, bucket: str, prefix: str,
                           first: ListPage | None) -> None:
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
