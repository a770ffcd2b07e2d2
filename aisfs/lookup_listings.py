"""Listings for lookups: a directory whose names are looked up one by one gets listed, once for
all of them, instead of one HEAD and LIST per name.

Names looked up in a directory with no cached listing (a data loader opening files by path, a
directory being filled) each cost AIS a HEAD and a LIST; from the third, the directory is listed
in the background, up to LOOKUP_LISTING_LIMIT entries, into the cache of ``listings``. A
cached listing vouches for absent names for the negative metadata TTL only; names missing from
an older one get the directory listed again (from half that TTL on, before it is needed), once
for all of them. Lookups wait for such a listing's first page (the whole of a small directory's),
then ask by name while the rest comes.

Concurrency: trio thread only. A listing for lookups is a task of its own (``spawn``), watching
its directory (``Listings.watching``) and caching what it fetched, with the changes made through
the mount meanwhile replayed, only when its watch is not lost, no stream of the directory is in
flight and no newer listing was cached meanwhile, with no ``await`` between that check and the
write.

Invariants:
- ``background`` maps each directory with a listing for lookups in flight to it (one at a time
  per directory); its entry leaves, and its ``answers`` is set, when the task ends.
- ``cold_lookups`` counts lookups in directories with no cached listing, stream or background
  listing; ``too_big`` holds, for the metadata TTL, directories such a listing found bigger than
  LOOKUP_LISTING_LIMIT, which are not listed for lookups meanwhile.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import trio

from . import errors, listings
from .aisapi import AisApi, Spawn
from .cache import TtlMap
from .config import MountConfig
from .listing import Listing
from .listings import Listings
from .objects import ListEntry

log = logging.getLogger(__name__)

# Lookups of names in one directory without a cached listing before it is listed for them, and
# the most names such a listing fetches (a bigger directory is looked up name by name).
COLD_LOOKUPS_BEFORE_LISTING = 3
LOOKUP_LISTING_LIMIT = 20_000


class _LookupListing:
    """A listing for lookups in flight: ``answers`` is set once lookups need not wait for it
    any more (its first page came and more follow; or it ended)."""

    __slots__ = ("answers",)

    def __init__(self) -> None:
        self.answers = trio.Event()


class LookupListings:
    def __init__(
        self, dir_listings: Listings, aio: AisApi, config: MountConfig, spawn: Spawn,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dir_listings = dir_listings
        self.aio = aio
        self.spawn = spawn
        self.timer = timer
        ttl, neg = config.metadata_ttl, config.negative_metadata_ttl
        self.negative_ttl = neg
        self.cold_lookups: TtlMap[int] = TtlMap(4096, ttl, neg, timer)
        # Directories found bigger than LOOKUP_LISTING_LIMIT: looked up name by name.
        self.too_big: TtlMap[bool] = TtlMap(4096, ttl, neg, timer)
        self.background: dict[tuple[str, str], _LookupListing] = {}

    def note_cold_lookup(self, bucket: str, prefix: str) -> None:
        """Names looked up one by one in a directory whose listing is not cached (a data loader
        opening files by path, a directory being filled): each costs AIS a HEAD and a LIST. From
        the third one, the directory is listed for lookups (see ``for_lookups``)."""
        where = (bucket, prefix)
        if where in self.background or where in self.dir_listings.streams or where in self.too_big:
            return
        count = (self.cold_lookups.get(where) or 0) + 1
        self.cold_lookups.put(where, count)
        if count >= COLD_LOOKUPS_BEFORE_LISTING:
            self.cold_lookups.pop(where)
            self._start_listing_for_lookups(bucket, prefix)

    async def relisted(self, bucket: str, prefix: str, old: Listing) -> Listing | None:
        """A listing of ``prefix`` that vouches for absent names again, for a name missing from
        ``old`` (cached, older than the negative TTL): fetched anew, once for all the names
        looked up meanwhile (a directory being filled looks up every new name before creating
        it). None when the lookup should ask AIS about its name itself: absent names are never
        to be believed (no negative TTL), the directory is too big to list again for every
        negative TTL of lookups, or its new listing takes more than one page (it goes on in the
        background)."""
        if not self.list_again(bucket, prefix, old):
            return None
        if (len(old.children) >= listings.FIRST_PAGE_SIZE
                or not await self.for_lookups(bucket, prefix)):
            return None
        listing = self.dir_listings.cached(bucket, prefix)
        if listing is not None and self.timer() - listing.fetched_at < self.negative_ttl:
            return listing
        return None

    def list_again(self, bucket: str, prefix: str, old: Listing) -> bool:
        """Start listing ``prefix`` anew for lookups of names missing from ``old`` (its cached
        listing), unless that is under way; whether one is under way now. Done already once
        ``old`` is half its negative TTL old, so that a directory being filled gets a listing
        that vouches for absent names before ``old`` stops doing so: its lookups never wait.
        Never for a directory too big to list for every negative TTL of lookups, nor without a
        negative TTL (absent names are never believed)."""
        if self.negative_ttl <= 0 or len(old.children) > LOOKUP_LISTING_LIMIT:
            return False
        if (bucket, prefix) not in self.background:
            self._start_listing_for_lookups(bucket, prefix)
        return True

    async def for_lookups(self, bucket: str, prefix: str) -> bool:
        """When ``prefix`` is being listed for lookups: wait until that answers lookups (after
        its first page: the whole of a small directory's). Whether a listing of ``prefix`` is
        cached then."""
        fetch = self.background.get((bucket, prefix))
        if fetch is None:
            return False
        await fetch.answers.wait()
        return self.dir_listings.cached(bucket, prefix) is not None

    def _start_listing_for_lookups(self, bucket: str, prefix: str) -> None:
        fetch = _LookupListing()
        self.background[(bucket, prefix)] = fetch
        self.spawn(functools.partial(self._list_for_lookups, bucket, prefix, fetch))

    async def _list_for_lookups(self, bucket: str, prefix: str, fetch: _LookupListing) -> None:
        """List ``prefix`` (up to LOOKUP_LISTING_LIMIT entries) and cache it, with the changes
        made here meanwhile. Lookups waiting for it go on after its first page when there are
        more (asking by name meanwhile), else once it is cached."""
        try:
            with self.dir_listings.watching(bucket, prefix) as watch:
                entries: list[ListEntry] = []
                uuid = token = ""
                page_size = listings.FIRST_PAGE_SIZE
                while True:
                    page = await self.aio.list_objects_page(
                        bucket, prefix, page_size=page_size, uuid=uuid, continuation_token=token)
                    entries += page.entries
                    if len(entries) > LOOKUP_LISTING_LIMIT:
                        self.too_big.put((bucket, prefix), True)
                        return
                    if not page.continuation_token:
                        break
                    fetch.answers.set()
                    uuid, token, page_size = page.uuid, page.continuation_token, 0
                entries = await self.dir_listings.without_empty_dirs(bucket, entries)
                # E.g. an opendir's, completed meanwhile.
                newer = self.dir_listings.cached(bucket, prefix)
                if (not watch.lost and (bucket, prefix) not in self.dir_listings.streams
                        and (newer is None or newer.fetched_at < watch.started)):
                    self.dir_listings.cache_listing(bucket, prefix, entries, watch)
        except errors.AisFsError as exc:
            log.info("ais://%s/%s: listing for lookups failed: %s", bucket, prefix, exc)
        except Exception:
            log.exception("ais://%s/%s: listing for lookups failed", bucket, prefix)
        finally:
            del self.background[(bucket, prefix)]
            fetch.answers.set()
