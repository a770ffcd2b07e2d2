"""Many directories' listings from one recursive listing, for tree walks (`find`, `du`, `ls -R`).

AIS answers a LIST in ~10 ms however small the directory, so a walk that lists 300 directories
one by one spends 3 s waiting. When a walk is seen (:class:`TreeWalks`), one recursive listing of
the parent directory, starting at the directory being opened, gives every directory below it:
:class:`SubtreeSplitter` turns that listing into the non-recursive listing of each directory,
handed out as soon as the listing has moved past it (AIS lists in name order, so nothing can be
added to a directory afterwards). goofys does the same ("slurp").

:class:`SubtreeScan` is the state of one such listing in flight: which directories it will still
settle, and an event per page for the opens waiting on it.

Concurrency: trio thread only (the splitter is pure and synchronous).

:class:`TreeWalks` spots walks and runs the scans for ``listings``. Invariants: ``scans`` holds
the scans in flight (each is removed, finished, when its task ends); ``refused`` the buckets
that refused a recursive listing from a given name (a bucket with a remote backend), which are
listed one directory at a time from then on. A scan caches a directory's listing with the changes
made through the mount below its prefix since it started replayed (``Listings.watching``), unless
one of them cannot be replayed (a listing dropped), and only when no stream of that directory is
in flight.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import trio

from . import errors
from .aisapi import AisApi, Spawn
from .objects import ListEntry

if TYPE_CHECKING:
    from .listings import Listings, Watch

log = logging.getLogger(__name__)

# A scan's first page is small, so the walk waits little for the directory it opens; then AIS's
# maximum.
SCAN_FIRST_PAGE = 1000
# Names one recursive listing for a tree walk fetches at most (then the walk starts another).
SCAN_LIMIT = 50_000


class SubtreeSplitter:
    """Feed a recursive listing of ``prefix`` (objects in name order); get back each directory
    below ``prefix`` once complete, as its non-recursive entries (objects, and subdirectories as
    ``name/`` entries), in the order a non-recursive listing gives them. ``prefix`` itself is
    not produced: keys directly under it are skipped."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        # The directories the listing is inside of, outermost first, with their entries so far.
        self._open: list[tuple[str, list[ListEntry]]] = []

    def feed(self, entries: list[ListEntry]) -> list[tuple[str, list[ListEntry]]]:
        """The directories this page completed."""
        done: list[tuple[str, list[ListEntry]]] = []
        stack = self._open
        for entry in entries:
            key = entry.name
            if entry.is_dir or not key.startswith(self.prefix):
                continue  # a recursive listing has objects only; and all under the prefix
            while stack and not key.startswith(stack[-1][0]):
                done.append(stack.pop())
            cut = key.rfind("/") + 1  # the key's directory is key[:cut]
            pos = len(stack[-1][0]) if stack else len(self.prefix)
            while pos < cut:  # the directories between the innermost open one and the key
                pos = key.index("/", pos) + 1
                if stack:
                    stack[-1][1].append(ListEntry(key[:pos], True))
                stack.append((key[:pos], []))
            if stack:
                stack[-1][1].append(entry)
        return done

    def finish(self) -> list[tuple[str, list[ListEntry]]]:
        """The listing ended: every directory still open is complete."""
        done = self._open[::-1]
        self._open = []
        return done


class SubtreeScan:
    """A recursive listing of ``prefix`` from ``start`` on, in flight."""

    def __init__(self, bucket: str, prefix: str, start: str) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.start = start  # the listing starts just after this name
        self.position = ""  # the last name listed so far
        self.done = False
        self._progress = trio.Event()

    def will_settle(self, bucket: str, directory: str) -> bool:
        """Whether this listing is still to hand out ``directory`` (a prefix ending in "/"),
        or to pass it (then the directory has no object)."""
        if (self.done or bucket != self.bucket or not directory.startswith(self.prefix)
                or directory < self.start):
            return False
        return self.position <= directory or self.position.startswith(directory)

    def advance(self, position: str | None) -> None:
        if position is not None:
            self.position = position
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    async def progress(self) -> None:
        """Until the next page was handed out, or the listing ended."""
        if not self.done:
            await self._progress.wait()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = trio.Event()


class TreeWalks:
    """Tree walks (find, du, ls -R, cp -r) of one mount, and the scans that list ahead of them."""

    def __init__(self, listings: Listings, aio: AisApi, spawn: Spawn) -> None:
        self.listings = listings
        self.aio = aio
        self.spawn = spawn
        self.scans: list[SubtreeScan] = []
        self.refused: set[str] = set()

    async def walk_ahead(self, bucket: str, prefix: str) -> None:
        """Once a second subdirectory of one listed directory is opened, one recursive listing
        of that directory from here on lists this subdirectory and all that follow it; wait
        until it got this one."""
        listings = self.listings
        scan = next((s for s in self.scans if s.will_settle(bucket, prefix)), None)
        if scan is None:
            if not prefix or bucket in self.refused:
                return
            head, _, name = prefix[:-1].rpartition("/")
            parent = head + "/" if head else ""
            listing = listings.cached(bucket, parent)
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
        while scan.will_settle(bucket, prefix) and listings.cached(bucket, prefix) is None:
            await scan.progress()

    async def _scan(self, scan: SubtreeScan) -> None:
        """Run one recursive listing, caching each directory's listing once it is complete."""
        bucket, prefix = scan.bucket, scan.prefix
        try:
            with self.listings.watching(bucket, prefix, subtree=True) as watch:
                await self._scan_pages(scan, watch)
        except errors.AisFsError as exc:
            self.refused.add(bucket)
            log.warning("ais://%s/%s: recursive listing failed (%s); directories of this bucket "
                        "are listed one by one from now on", bucket, prefix, exc)
        except Exception:
            self.refused.add(bucket)
            log.exception("ais://%s/%s: recursive listing failed", bucket, prefix)
        finally:
            scan.finish()
            self.scans.remove(scan)

    async def _scan_pages(self, scan: SubtreeScan, watch: Watch) -> None:
        listings = self.listings
        bucket, prefix = scan.bucket, scan.prefix
        splitter = SubtreeSplitter(prefix)
        uuid = token = ""
        page_size, listed = SCAN_FIRST_PAGE, 0
        while True:
            page = await self.aio.list_objects_page(
                bucket, prefix, recursive=True, page_size=page_size, uuid=uuid,
                continuation_token=token, start_after=scan.start,
            )
            if watch.lost:
                return  # a listing below was dropped meanwhile: list one by one
            complete = splitter.feed(page.entries)
            if not page.continuation_token:
                complete += splitter.finish()
            elif not complete:
                # A whole page inside one directory: a big one, better streamed by its own
                # listing (its reader stops waiting here); the walk starts another scan after it.
                return
            for directory, entries in complete:
                if (bucket, directory) not in listings.streams:  # else its own is on the way
                    listings.cache_listing(bucket, directory, entries, watch)
                    listings.local.objects_back(bucket, directory)
            listed += len(page.entries)
            scan.advance(page.entries[-1].name if page.entries else None)
            if not page.continuation_token or listed >= SCAN_LIMIT:
                return
            uuid, token, page_size = page.uuid, page.continuation_token, 0
